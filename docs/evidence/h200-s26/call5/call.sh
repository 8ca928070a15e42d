#!/usr/bin/env bash
# session 26, call 5: after cpu-splitkv's chunking became FA2's (every row splits its
# sequence's tiles alike): gpu_test_cuda (key_tile_128_replay_bit_identical's split-KV
# causal spec), compute-sanitizer on that test, the default sweep on the GPU.
set -u
T0=$SECONDS
mkdir -p /tmp/fdb && tar -C /tmp/fdb -xJf .devcarry/b.tar.xz
B=/tmp/fdb/bin; FD=$B/flashdrift
export LD_LIBRARY_PATH="/tmp/fdb/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export FD_TEST_DATA="$PWD/tests/data" FD_SOURCE_DIR="$PWD"
R=$OUT/r5; mkdir -p $R
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $R/gpu.txt
t() { echo "$1 rc=$2 $((SECONDS-T0))s" >> $R/times.txt; }
( sleep 200; while :; do pkill -f 'flashdrift|gpu_test|compute-sanitizer'; sleep 2; done ) & WD=$!
timeout 60 $B/gpu_test_cuda --jobs 1 > $R/gpu_test_cuda.log 2>&1; t gpu_test_cuda $?
F='gpu_cuda/key_tile_128_replay_bit_identical'
for tool in memcheck racecheck; do
  timeout 40 compute-sanitizer --tool $tool $B/gpu_test_cuda --filter "$F" --jobs 1 > $R/san_$tool.log 2>&1; t san_$tool $?
done
timeout 90 $FD run cases/default.json --out $R/default --jobs 16 --quiet > $R/default.log 2>&1; t default $?
kill $WD 2>/dev/null
cat $R/times.txt
grep -hE "Synthesis|Assertion|differ" $R/gpu_test_cuda.log | head
for tool in memcheck racecheck; do grep -hE "ERROR SUMMARY|RACECHECK SUMMARY|Synthesis" $R/san_$tool.log; done
tail -2 $R/default.log
python3 - $R <<'PY'
import json, os, sys, collections
R = sys.argv[1]
r = json.load(open(os.path.join(R, "default", "report.json"))); cs = r["cases"]
print("default", len(cs), dict(collections.Counter(c["verdict"] for c in cs)))
PY
rm -f $R/default/report.json
cd $OUT && tar -cJf r5.tar.xz r5 && rm -rf r5; ls -la $OUT
