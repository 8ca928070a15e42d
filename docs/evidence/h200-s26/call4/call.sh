#!/usr/bin/env bash
# session 26, call 4: cuda-flash with FA2's 128 x 128 tile at head dim 64 (cuda-flash-bc128)
# against key tile 64 and PyTorch, interleaved; the side-by-side bench (every kernel) and
# PyTorch's FA2 and cuDNN; gpu_test_cuda (key_tile_128_replay_bit_identical, the fast path
# with bc 128); compute-sanitizer on those two tests.
set -u
T0=$SECONDS
mkdir -p /tmp/fdb && tar -C /tmp/fdb -xJf .devcarry/b.tar.xz
B=/tmp/fdb/bin; FD=$B/flashdrift
export LD_LIBRARY_PATH="/tmp/fdb/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export FD_TEST_DATA="$PWD/tests/data" FD_SOURCE_DIR="$PWD"
R=$OUT/r4; mkdir -p $R
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $R/gpu.txt
t() { echo "$1 rc=$2 $((SECONDS-T0))s" >> $R/times.txt; }
( sleep 400; while :; do pkill -f 'flashdrift|bench_torch|gpu_test|compute-sanitizer'; sleep 2; done ) & WD=$!
fdb() { timeout 60 $FD bench --repeats 10 --n 4096,16384 --d 64 --only cuda-flash,cuda-flash-bc128 --csv $R/d64_$1.csv > $R/d64_$1.log 2>&1; t d64_$1 $?; }
tb() { timeout 60 env -u LD_LIBRARY_PATH python3 scripts/bench_torch.py $R/torch$1.csv 10 16384 > $R/torch$1.log 2>&1; t torch$1 $?; }
timeout 60 $B/gpu_test_cuda --jobs 1 > $R/gpu_test_cuda.log 2>&1; t gpu_test_cuda $?
fdb a; tb 1; fdb b
timeout 150 $FD bench --csv $R/bench_all.csv --repeats 10 > $R/bench_all.log 2>&1; t bench_all $?
tb 2
F='gpu_cuda/key_tile_128_replay_bit_identical'
for tool in memcheck synccheck racecheck; do
  timeout 40 compute-sanitizer --tool $tool $B/gpu_test_cuda --filter "$F" --jobs 1 > $R/san_$tool.log 2>&1; t san_$tool $?
done
kill $WD 2>/dev/null
cat $R/times.txt
grep -hE "Synthesis|Failed|fail" $R/gpu_test_cuda.log | head
for tool in memcheck synccheck racecheck; do grep -hE "ERROR SUMMARY|RACECHECK SUMMARY|Synthesis" $R/san_$tool.log; done
python3 - $R <<'PY'
import os, sys
R = sys.argv[1]
def rd(f):
    d = {}
    if not os.path.exists(f): return d
    for l in open(f):
        p = l.strip().split(",")
        if len(p) < 8 or p[0] == "backend" or p[0].startswith("#"): continue
        d[(p[0], p[1], int(p[4]), int(p[5]), int(p[6]))] = float(p[-1])
    return d
a, b, A = rd(R + "/d64_a.csv"), rd(R + "/d64_b.csv"), rd(R + "/bench_all.csv")
t1, t2 = rd(R + "/torch1.csv"), rd(R + "/torch2.csv")
print("d64: shape | bc64 a b | bc128 a b | torch1 | bc128/torch1 (a, b)")
for k in sorted(k for k in a if k[0] == "cuda-flash"):
    s = k[1:]; k2 = ("cuda-flash-bc128",) + s; tt = t1.get(("torch-flash",) + s, 0)
    print(s, "%.1f %.1f | %.1f %.1f | %.1f | %.3f %.3f" % (a[k], b.get(k, 0), a.get(k2, 0), b.get(k2, 0), tt, a.get(k2, 0) / tt if tt else 0, b.get(k2, 0) / tt if tt else 0))
print("side by side: shape | flash flash128 sm90 sm90-128 std | torch cudnn | best flash/torch")
for k in sorted(k for k in A if k[0] == "cuda-flash"):
    s = k[1:]; g = lambda n: A.get((n,) + s, 0); tt = t2.get(("torch-flash",) + s, 0); cd = t2.get(("torch-cudnn",) + s, 0)
    best = max(g("cuda-flash"), g("cuda-flash-bc128"))
    print(s, "%.1f %.1f %.1f %.1f %.1f | %.1f %.1f | %.3f" % (g("cuda-flash"), g("cuda-flash-bc128"), g("cuda-flash-sm90"), g("cuda-flash-sm90-bc128"), g("cuda-standard"), tt, cd, best / tt if tt else 0))
PY
cd $OUT && tar -cJf r4.tar.xz r4 && rm -rf r4; ls -la $OUT
