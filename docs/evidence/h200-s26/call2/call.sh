#!/usr/bin/env bash
# session 26, call 2 (built from 9c4b288): the side-by-side forward bench (every kernel) and
# PyTorch's FA2 and cuDNN; cuda-flash and PyTorch once more; the backward (ftz exp2 now) and
# PyTorch's; the default sweep on the GPU; compute-sanitizer on the fast path and the general
# kernel (gpu_test_cuda's fast_path_bit_identical_to_general); gpu_test_fp8.
set -u
T0=$SECONDS
mkdir -p /tmp/fdb && tar -C /tmp/fdb -xJf .devcarry/b.tar.xz
B=/tmp/fdb/bin; FD=$B/flashdrift
export LD_LIBRARY_PATH="/tmp/fdb/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export FD_TEST_DATA="$PWD/tests/data" FD_SOURCE_DIR="$PWD"
R=$OUT/r2; mkdir -p $R
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $R/gpu.txt
t() { echo "$1 rc=$2 $((SECONDS-T0))s" >> $R/times.txt; }
( sleep 570; while :; do pkill -f 'flashdrift|bench_torch|gpu_test|compute-sanitizer'; sleep 2; done ) & WD=$!
timeout 150 $FD bench --csv $R/bench_all.csv --repeats 10 > $R/bench_all.log 2>&1; t bench_all $?
timeout 60 env -u LD_LIBRARY_PATH python3 scripts/bench_torch.py $R/torch_fwd.csv 10 16384 > $R/torch_fwd.log 2>&1; t torch_fwd $?
timeout 60 $FD bench --repeats 10 --n 4096,16384 --d 64,128 --only cuda-flash --csv $R/fd2.csv > $R/fd2.log 2>&1; t fd2 $?
timeout 60 env -u LD_LIBRARY_PATH python3 scripts/bench_torch.py $R/torch2.csv 10 16384 > $R/torch2.log 2>&1; t torch2 $?
timeout 40 $FD bench --backward --repeats 10 --n 4096 --d 64,128 --only cuda-flash-bwd --csv $R/bwd.csv > $R/bwd.log 2>&1; t bwd $?
timeout 40 env -u LD_LIBRARY_PATH python3 scripts/bench_torch.py --backward $R/torch_bwd.csv 10 4096 > $R/torch_bwd.log 2>&1; t torch_bwd $?
timeout 100 $FD run cases/default.json --out $R/default --jobs 16 --quiet > $R/default.log 2>&1; t default $?
F='gpu_cuda/fast_path_bit_identical_to_general'
for tool in memcheck synccheck racecheck; do
  timeout 100 compute-sanitizer --tool $tool $B/gpu_test_cuda --filter "$F" --jobs 1 > $R/san_$tool.log 2>&1; t san_$tool $?
done
timeout 60 $B/gpu_test_fp8 --jobs 1 > $R/gpu_test_fp8.log 2>&1; t gpu_test_fp8 $?
kill $WD 2>/dev/null
cat $R/times.txt
for tool in memcheck synccheck racecheck; do echo "== $tool"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|hazard|Synthesis" $R/san_$tool.log | head -4; done
grep -h Synthesis $R/gpu_test_fp8.log; tail -2 $R/default.log
grep -E " 4096 +128 " $R/bwd.log; grep -E "torch-flash-bwd.* 4096 +128 " $R/torch_bwd.log
python3 - $R <<'PY'
import json, os, sys, collections
R = sys.argv[1]
try:
    r = json.load(open(os.path.join(R, "default", "report.json")))
    cs = r["cases"]; ran = collections.Counter(b for c in cs for b, x in c["backends"].items() if not x.get("skipped"))
    print("default", len(cs), dict(collections.Counter(c["verdict"] for c in cs)), "ran", dict(ran))
except Exception as e: print("default report:", e)
def rd(f):
    d = {}
    if not os.path.exists(f): return d
    for l in open(f):
        p = l.strip().split(",")
        if len(p) < 8 or p[0] == "backend" or p[0].startswith("#"): continue
        d[(p[0], p[1], int(p[4]), int(p[5]), int(p[6]))] = float(p[-1])
    return d
A = rd(os.path.join(R, "bench_all.csv")); T = rd(os.path.join(R, "torch_fwd.csv")); F2 = rd(os.path.join(R, "fd2.csv")); T2 = rd(os.path.join(R, "torch2.csv"))
print(sorted(set(k[0] for k in A)))
for k in sorted(k for k in A if k[0] == "cuda-flash"):
    s = k[1:]; tf = T.get(("torch-flash",) + s, 0); cd = T.get(("torch-cudnn",) + s, 0)
    f2 = F2.get(k, 0); t2 = T2.get(("torch-flash",) + s, 0)
    print(s, "flash %.1f sm90-64 %.1f sm90-128 %.1f std %.1f | torch %.1f cudnn %.1f | %.3f | again %.1f/%.1f %.3f" % (A[k], A.get(("cuda-flash-sm90",) + s, 0), A.get(("cuda-flash-sm90-bc128",) + s, 0), A.get(("cuda-standard",) + s, 0), tf, cd, A[k] / tf if tf else 0, f2, t2, f2 / t2 if t2 else 0))
PY
cd $OUT && tar -cJf r2.tar.xz r2 && rm -rf r2; ls -la $OUT
