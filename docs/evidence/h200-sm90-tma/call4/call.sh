#!/usr/bin/env bash
# session 24, call 4 (the two GPU test binaries): the Hopper kernel's GPU test (head dim 256, both
# load paths) and the backward's variant tests (bulk dQ, issued one barrier later); racecheck and
# memcheck through the test binaries, on the TMA kernel and on the bulk backward.
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
( sleep 330; while :; do pkill -f 'gpu_test|compute-sanitizer'; sleep 2; done ) & WD=$!
timeout 60 $B/gpu_test_cuda --verbose --jobs 1 --filter 'gpu_cuda/sm90*' > $R/gpu_test_sm90.log 2>&1; t gpu_test_sm90 $?
timeout 100 $B/gpu_test_bwd --verbose --jobs 1 > $R/gpu_test_bwd.log 2>&1; t gpu_test_bwd $?
FD_BWD_QUICK=1 FD_BWD_VARIANT=bulk timeout 60 compute-sanitizer --tool racecheck --error-exitcode 9 $B/gpu_test_bwd --jobs 1 --filter 'gpu_bwd/deterministic_bitwise_vs_replay' > $R/race_bwd_bulk.log 2>&1; t race_bwd_bulk $?
FD_BWD_QUICK=1 FD_BWD_VARIANT=bulk timeout 60 compute-sanitizer --tool memcheck --error-exitcode 9 $B/gpu_test_bwd --jobs 1 --filter 'gpu_bwd/atomic*' > $R/mem_bwd_bulk.log 2>&1; t mem_bwd_bulk $?
for tool in memcheck racecheck synccheck; do
  timeout 70 compute-sanitizer --tool $tool --error-exitcode 9 --kernel-name kns=flash_fwd_sm90_kernel $B/gpu_test_cuda --jobs 1 --filter 'gpu_cuda/sm90_replay*' > $R/san_sm90_$tool.log 2>&1; t san_sm90_$tool $?
done
kill $WD 2>/dev/null
cat $R/times.txt
grep -hE "Synthesis|FAIL|differ|\[----\].*(bulk|new|old|ms)" $R/gpu_test_sm90.log $R/gpu_test_bwd.log | head -24
grep -h "ERROR SUMMARY\|RACECHECK SUMMARY\|Internal" $R/race_*.log $R/mem_*.log $R/san_*.log
cd $OUT && tar -cJf r4.tar.xz r4 && rm -rf r4; ls -la $OUT
