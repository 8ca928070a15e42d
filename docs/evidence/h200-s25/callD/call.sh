#!/usr/bin/env bash
# session 25, call D (the binaries of call C, built from 078e93b): the backward at N 4096, d 128
# and PyTorch's backward, interleaved five times, for the spread of both sides of the ratio.
set -u
T0=$SECONDS
mkdir -p /tmp/fdb && tar -C /tmp/fdb -xJf .devcarry/b.tar.xz
B=/tmp/fdb/bin; FD=$B/flashdrift
export LD_LIBRARY_PATH="/tmp/fdb/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
R=$OUT/rD; mkdir -p $R
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $R/gpu.txt
t() { echo "$1 rc=$2 $((SECONDS-T0))s" >> $R/times.txt; }
( sleep 330; while :; do pkill -f 'flashdrift|bench_torch'; sleep 2; done ) & WD=$!
for i in 1 2 3 4 5; do
  timeout 40 $FD bench --backward --repeats 10 --n 4096 --d 128 --only cuda-flash-bwd --csv $R/fd$i.csv > $R/fd$i.log 2>&1; t fd$i $?
  timeout 40 env -u LD_LIBRARY_PATH python3 scripts/bench_torch.py --backward $R/torch$i.csv 10 4096 > $R/torch$i.log 2>&1; t torch$i $?
done
kill $WD 2>/dev/null
cat $R/times.txt
for i in 1 2 3 4 5; do grep -E "^cuda" $R/fd$i.log; grep -E "torch-flash-bwd.* 4096 +128 " $R/torch$i.log; done
cd $OUT && tar -cJf rD.tar.xz rD && rm -rf rD; ls -la $OUT
