#!/usr/bin/env bash
# session 25, call E (built from 078e93b + dK/dV written in the dtype by the main kernel when
# there is one query head a key head, no bwd_gqa_kernel pass): gpu_test_bwd; the backward at
# N 4096 (d 64, 128) and PyTorch's, interleaved twice.
set -u
T0=$SECONDS
mkdir -p /tmp/fdb && tar -C /tmp/fdb -xJf .devcarry/b.tar.xz
B=/tmp/fdb/bin; FD=$B/flashdrift
export LD_LIBRARY_PATH="/tmp/fdb/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export FD_TEST_DATA="$PWD/tests/data" FD_SOURCE_DIR="$PWD"
R=$OUT/rE; mkdir -p $R
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $R/gpu.txt
t() { echo "$1 rc=$2 $((SECONDS-T0))s" >> $R/times.txt; }
( sleep 170; while :; do pkill -f 'flashdrift|bench_torch|gpu_test'; sleep 2; done ) & WD=$!
timeout 60 $B/gpu_test_bwd --verbose --jobs 1 > $R/gpu_test_bwd.log 2>&1; t gpu_test_bwd $?
for i in 1 2; do
  timeout 30 $FD bench --backward --repeats 10 --n 4096 --d 64,128 --only cuda-flash-bwd,cuda-flash-bwd-det --csv $R/fd$i.csv > $R/fd$i.log 2>&1; t fd$i $?
  timeout 30 env -u LD_LIBRARY_PATH python3 scripts/bench_torch.py --backward $R/torch$i.csv 10 4096 > $R/torch$i.log 2>&1; t torch$i $?
done
kill $WD 2>/dev/null
cat $R/times.txt
grep -hE "Synthesis|FAIL|Failed|failed" $R/gpu_test_bwd.log | head
for i in 1 2; do grep -E "^cuda" $R/fd$i.log; grep -E "torch-flash-bwd.* 4096 " $R/torch$i.log; done
cd $OUT && tar -cJf rE.tar.xz rE && rm -rf rE; ls -la $OUT
