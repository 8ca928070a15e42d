#!/usr/bin/env bash
# session 26, call 3: cuda-flash's schedules in one binary (FD_FLASH_SCHED: 0 the default,
# one barrier a tile and query tiles last first; 1 two barriers; 2 launch order; 3 both, i.e.
# call 2's kernel) interleaved with PyTorch; the side-by-side bench (every kernel) with the
# default; gpu_test_cuda, the fast-vs-general test under each schedule, the replay sweep,
# compute-sanitizer on the fast path.
set -u
T0=$SECONDS
mkdir -p /tmp/fdb && tar -C /tmp/fdb -xJf .devcarry/b.tar.xz
B=/tmp/fdb/bin; FD=$B/flashdrift
export LD_LIBRARY_PATH="/tmp/fdb/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export FD_TEST_DATA="$PWD/tests/data" FD_SOURCE_DIR="$PWD"
R=$OUT/r3; mkdir -p $R
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $R/gpu.txt
t() { echo "$1 rc=$2 $((SECONDS-T0))s" >> $R/times.txt; }
( sleep 570; while :; do pkill -f 'flashdrift|bench_torch|gpu_test|compute-sanitizer'; sleep 2; done ) & WD=$!
fdb() { FD_FLASH_SCHED=$1 timeout 60 $FD bench --repeats 10 --n 4096,16384 --d 64,128 --only cuda-flash --csv $R/s$1_$2.csv > $R/s$1_$2.log 2>&1; t s$1_$2 $?; }
tb() { timeout 60 env -u LD_LIBRARY_PATH python3 scripts/bench_torch.py $R/torch$1.csv 10 16384 > $R/torch$1.log 2>&1; t torch$1 $?; }
fdb 0 a; tb 1; fdb 3 a; fdb 1 a; fdb 2 a; tb 2; fdb 0 b
timeout 150 $FD bench --csv $R/bench_all.csv --repeats 10 > $R/bench_all.log 2>&1; t bench_all $?
tb 3
timeout 100 $B/gpu_test_cuda --jobs 1 > $R/gpu_test_cuda.log 2>&1; t gpu_test_cuda $?
F='gpu_cuda/fast_path_bit_identical_to_general'
for s in 1 2 3; do FD_FLASH_SCHED=$s timeout 60 $B/gpu_test_cuda --filter "$F" --jobs 1 > $R/fast_s$s.log 2>&1; t fast_s$s $?; done
timeout 100 $FD run cases/replay.json --backend cuda-flash,cpu-flash --out $R/replay --jobs 16 > $R/replay.log 2>&1; t replay $?
for tool in memcheck synccheck racecheck; do
  timeout 60 compute-sanitizer --tool $tool $B/gpu_test_cuda --filter "$F" --jobs 1 > $R/san_$tool.log 2>&1; t san_$tool $?
done
kill $WD 2>/dev/null
cat $R/times.txt
grep -hE "Synthesis" $R/gpu_test_cuda.log $R/fast_s*.log
for tool in memcheck synccheck racecheck; do grep -hE "ERROR SUMMARY|RACECHECK SUMMARY" $R/san_$tool.log; done
tail -1 $R/replay.log
python3 - $R <<'PY'
import json, os, sys, collections, statistics
R = sys.argv[1]
try:
    r = json.load(open(os.path.join(R, "replay", "report.json")))
    e = sum(c["replay"]["elements"] for c in r["cases"]); i = sum(c["replay"]["identical"] for c in r["cases"])
    print("replay", len(r["cases"]), dict(collections.Counter(c["verdict"] for c in r["cases"])), "identical", i, "of", e)
except Exception as ex: print("replay report:", ex)
def rd(f):
    d = {}
    if not os.path.exists(f): return d
    for l in open(f):
        p = l.strip().split(",")
        if len(p) < 8 or p[0] == "backend" or p[0].startswith("#"): continue
        d[(p[0], p[1], int(p[4]), int(p[5]), int(p[6]))] = float(p[-1])
    return d
S = {n: rd(os.path.join(R, n + ".csv")) for n in ["s0_a", "s3_a", "s1_a", "s2_a", "s0_b"]}
T = [rd(os.path.join(R, "torch%d.csv" % i)) for i in (1, 2, 3)]
A = rd(os.path.join(R, "bench_all.csv"))
print("shape | s0a s3a s1a s2a s0b | torch1 torch2 torch3 | s0a/t1 s0b/t2 all/t3")
for k in sorted(S["s0_a"]):
    s = k[1:]; ts = [t.get(("torch-flash",) + s, 0) for t in T]
    v = [S[n].get(k, 0) for n in ["s0_a", "s3_a", "s1_a", "s2_a", "s0_b"]]
    a = A.get(k, 0)
    print(s, " ".join("%.1f" % x for x in v), "|", " ".join("%.1f" % x for x in ts), "|",
          "%.3f %.3f %.3f" % (v[0] / ts[0] if ts[0] else 0, v[4] / ts[1] if ts[1] else 0, a / ts[2] if ts[2] else 0))
PY
cd $OUT && tar -cJf r3.tar.xz r3 && rm -rf r3; ls -la $OUT
