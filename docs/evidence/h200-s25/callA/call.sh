#!/usr/bin/env bash
# session 25, call A (binaries built from main 1cb740f + the early bulk placement with a
# measurement switch FD_BWD_BULK_TWO + the sm90 ping-pong): the backward's early bulk placement
# (own barrier right after the dQ step; rows issued by lanes 0..7 of the 8 warps, or with
# FD_BWD_BULK_TWO=1 by threads 0..63) against the landed-in-main 'new' and PyTorch's backward in
# one run; gpu_test_bwd, compute-sanitizer on the atomic bulk path; gpu_test_cuda's sm90 replay test.
set -u
T0=$SECONDS
mkdir -p /tmp/fdb && tar -C /tmp/fdb -xJf .devcarry/b.tar.xz
B=/tmp/fdb/bin; FD=$B/flashdrift
export LD_LIBRARY_PATH="/tmp/fdb/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export FD_TEST_DATA="$PWD/tests/data" FD_SOURCE_DIR="$PWD"
R=$OUT/rA; mkdir -p $R
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $R/gpu.txt
t() { echo "$1 rc=$2 $((SECONDS-T0))s" >> $R/times.txt; }
( sleep 565; while :; do pkill -f 'flashdrift|bench_torch|gpu_test|compute-sanitizer'; sleep 2; done ) & WD=$!
S="--backward --repeats 10 --n 4096 --d 128 --only cuda-flash-bwd"
timeout 60 $FD bench $S --csv $R/spread1.csv > $R/spread1.log 2>&1; t spread1 $?
FD_BWD_BULK_TWO=1 timeout 60 $FD bench $S --csv $R/two1.csv > $R/two1.log 2>&1; t two1 $?
FD_BWD_VARIANT=new timeout 60 $FD bench $S --csv $R/new1.csv > $R/new1.log 2>&1; t new1 $?
timeout 90 env -u LD_LIBRARY_PATH python3 scripts/bench_torch.py --backward $R/torch_bwd.csv 10 4096 > $R/torch_bwd.log 2>&1; t torch_bwd $?
timeout 60 $FD bench $S --csv $R/spread2.csv > $R/spread2.log 2>&1; t spread2 $?
FD_BWD_BULK_TWO=1 timeout 60 $FD bench $S --csv $R/two2.csv > $R/two2.log 2>&1; t two2 $?
timeout 120 $B/gpu_test_bwd --verbose --jobs 1 > $R/gpu_test_bwd.log 2>&1; t gpu_test_bwd $?
FD_BWD_QUICK=1 timeout 100 compute-sanitizer --tool racecheck --error-exitcode 9 $B/gpu_test_bwd --jobs 1 --filter 'gpu_bwd/variant_bulk_vs_new_atomic' > $R/race_bulk.log 2>&1; t race_bulk $?
FD_BWD_QUICK=1 timeout 60 compute-sanitizer --tool synccheck --error-exitcode 9 $B/gpu_test_bwd --jobs 1 --filter 'gpu_bwd/variant_bulk_vs_new_atomic' > $R/sync_bulk.log 2>&1; t sync_bulk $?
FD_BWD_QUICK=1 timeout 60 compute-sanitizer --tool memcheck --error-exitcode 9 $B/gpu_test_bwd --jobs 1 --filter 'gpu_bwd/variant_bulk_vs_new_atomic' > $R/mem_bulk.log 2>&1; t mem_bulk $?
timeout 60 $B/gpu_test_cuda --verbose --jobs 1 --filter 'gpu_cuda/sm90_replay_bit_identical' > $R/gpu_test_sm90.log 2>&1; t gpu_test_sm90 $?
kill $WD 2>/dev/null
cat $R/times.txt
for n in spread1 two1 new1 spread2 two2; do echo "== $n"; grep -E "^cuda" $R/$n.log; done
grep -E "torch-flash-bwd.* 128 " $R/torch_bwd.log
grep -hE "Synthesis|FAIL|differ|ms\)|bulk case|Failed|failed" $R/gpu_test_bwd.log $R/gpu_test_sm90.log | head -30
for n in race_bulk sync_bulk mem_bulk; do echo "== $n"; tail -3 $R/$n.log; done
cd $OUT && tar -cJf rA.tar.xz rA && rm -rf rA; ls -la $OUT
