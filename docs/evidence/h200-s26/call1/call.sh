#!/usr/bin/env bash
# session 26, call 1: cuda-flash with the ldmatrix/cp.async addresses set up once (XOR
# offsets), ex2.approx.ftz (FA2's exp2) in every kernel's hardware exp2. Bench (cuda-flash,
# sm90) and PyTorch interleaved; gpu_test_cuda (new fast_path_bit_identical_to_general),
# the replay sweep, gpu_test_bwd.
set -u
T0=$SECONDS
mkdir -p /tmp/fdb && tar -C /tmp/fdb -xJf .devcarry/b.tar.xz
B=/tmp/fdb/bin; FD=$B/flashdrift
export LD_LIBRARY_PATH="/tmp/fdb/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export FD_TEST_DATA="$PWD/tests/data" FD_SOURCE_DIR="$PWD"
R=$OUT/r1; mkdir -p $R
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $R/gpu.txt
t() { echo "$1 rc=$2 $((SECONDS-T0))s" >> $R/times.txt; }
( sleep 540; while :; do pkill -f 'flashdrift|bench_torch|gpu_test'; sleep 2; done ) & WD=$!
timeout 90 $FD bench --repeats 10 --n 4096,16384 --d 64,128 --only cuda-flash,cuda-flash-sm90 --csv $R/fd1.csv > $R/fd1.log 2>&1; t fd1 $?
timeout 120 env -u LD_LIBRARY_PATH python3 scripts/bench_torch.py $R/torch1.csv 10 16384 > $R/torch1.log 2>&1; t torch1 $?
timeout 90 $FD bench --repeats 10 --n 4096,16384 --d 64,128 --only cuda-flash --csv $R/fd2.csv > $R/fd2.log 2>&1; t fd2 $?
timeout 150 $B/gpu_test_cuda --verbose --jobs 1 > $R/gpu_test_cuda.log 2>&1; t gpu_test_cuda $?
timeout 120 $FD run cases/replay.json --backend cuda-flash,cpu-flash --out $R/replay --jobs 16 > $R/replay.log 2>&1; t replay $?
timeout 90 $B/gpu_test_bwd --jobs 1 > $R/gpu_test_bwd.log 2>&1; t gpu_test_bwd $?
kill $WD 2>/dev/null
cat $R/times.txt
grep -hE "Synthesis|FAIL|Failed|failed" $R/gpu_test_cuda.log $R/gpu_test_bwd.log | head -20
tail -4 $R/replay.log
python3 - $R <<'PY'
import json, os, sys, collections
R = sys.argv[1]
try:
    r = json.load(open(os.path.join(R, "replay", "report.json")))
    cs = r["cases"]; print("replay", len(cs), dict(collections.Counter(c["verdict"] for c in cs)))
except Exception as e: print("replay report:", e)
def rd(f, tag):
    d = {}
    if not os.path.exists(f): return d
    for l in open(f):
        p = l.strip().split(",")
        if len(p) < 8 or not p[0].startswith(tag): continue
        d[(p[0], p[1], int(p[4]), int(p[5]), int(p[6]))] = float(p[-1])
    return d
fd1 = rd(os.path.join(R, "fd1.csv"), "cuda"); fd2 = rd(os.path.join(R, "fd2.csv"), "cuda"); tt = rd(os.path.join(R, "torch1.csv"), "torch")
for k in sorted(fd1):
    if k[0] != "cuda-flash": continue
    tf = tt.get(("torch-flash",) + k[1:]); cd = tt.get(("torch-cudnn",) + k[1:]); s9 = fd1.get(("cuda-flash-sm90",) + k[1:])
    print(k[1:], "flash %.1f / %.1f" % (fd1[k], fd2.get(k, 0)), "torch %.1f" % (tf or 0), "ratio %.3f / %.3f" % (fd1[k] / tf if tf else 0, fd2.get(k, 0) / tf if tf else 0), "sm90 %.1f cudnn %.1f" % (s9 or 0, cd or 0))
PY
cd $OUT && tar -cJf r1.tar.xz r1 && rm -rf r1; ls -la $OUT
