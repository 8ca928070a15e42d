#!/usr/bin/env bash
# session 23, call 4: gpu_test_bwd (the FAST variant's test included) and racecheck on the backward kernels
# through the test binary (both variants), after flashdrift's racecheck run ended in an internal sanitizer error.
set -u
T0=$SECONDS
mkdir -p /tmp/fdb && tar -C /tmp/fdb -xJf .devcarry/b.tar.xz
mkdir -p .devcarry/lib && cp -a /tmp/fdb/lib/. .devcarry/lib/
B=/tmp/fdb/bin
export LD_LIBRARY_PATH="$PWD/.devcarry/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export FD_TEST_DATA="$PWD/tests/data" FD_SOURCE_DIR="$PWD"
R=$OUT/r4; mkdir -p $R
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $R/gpu.txt
t() { echo "$1 rc=$2 $((SECONDS-T0))s" >> $R/times.txt; }
( sleep 330; while :; do pkill -f 'gpu_test_|compute-sanitizer'; sleep 2; done ) & WD=$!
timeout 150 $B/gpu_test_bwd --verbose --jobs 1 > $R/gpu_test_bwd.log 2>&1; t gpu_test_bwd $?
for v in new old; do
  FD_BWD_QUICK=1 FD_BWD_VARIANT=$v timeout 80 compute-sanitizer --tool racecheck --error-exitcode 9 $B/gpu_test_bwd --jobs 1 --filter 'gpu_bwd/deterministic_bitwise_vs_replay' > $R/race_$v.log 2>&1; t race_$v $?
done
FD_BWD_QUICK=1 FD_BWD_VARIANT=new timeout 60 compute-sanitizer --tool memcheck --error-exitcode 9 $B/gpu_test_bwd --jobs 1 --filter 'gpu_bwd/deterministic_bitwise_vs_replay' > $R/mem_new.log 2>&1; t mem_new $?
kill $WD 2>/dev/null
cat $R/times.txt; grep -h "Synthesis\|old\|new\|ms" $R/gpu_test_bwd.log | head -20; grep -h "SUMMARY\|Internal\|Synthesis" $R/race_*.log $R/mem_new.log
cd $OUT && tar -cJf r4.tar.xz r4 && rm -rf r4; ls -la $OUT
