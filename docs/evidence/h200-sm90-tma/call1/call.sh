#!/usr/bin/env bash
# session 24, call 1: ncu profiles (one launch each, --set full, N=4096 d=128) of the backward's
# 8-warp kernel (fp16 non-causal, bf16 causal), the Hopper forward and cuda-flash; then the checks
# left from session 23: the GPU smoke cases with --backend auto, explain on cuda-flash-sm90, bench's SIGTERM.
set -u
T0=$SECONDS
mkdir -p /tmp/fdb && tar -C /tmp/fdb -xJf .devcarry/b.tar.xz
mkdir -p .devcarry/lib && cp -a /tmp/fdb/lib/. .devcarry/lib/
B=/tmp/fdb/bin; FD=$B/flashdrift
export LD_LIBRARY_PATH="$PWD/.devcarry/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export FD_TEST_DATA="$PWD/tests/data" FD_SOURCE_DIR="$PWD"
R=$OUT/r1; mkdir -p $R
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $R/gpu.txt
t() { echo "$1 rc=$2 $((SECONDS-T0))s" >> $R/times.txt; }
( sleep 520; while :; do pkill -f 'flashdrift|ncu'; sleep 2; done ) & WD=$!
prof() { # name regex bench-args...
  local n=$1 k=$2; shift 2
  timeout 100 ncu --clock-control none --set full --import-source no -k "regex:$k" --launch-skip 1 --launch-count 1 \
    -o $R/$n -f $FD bench --repeats 1 "$@" > $R/$n.log 2>&1; t $n $?
  ncu -i $R/$n.ncu-rep --page details > $R/$n.details.txt 2>&1
  ncu -i $R/$n.ncu-rep --page source --csv --print-source sass > $R/$n.sass.csv 2>&1
}
prof bwd8_f16 flash_bwd_kernel8 --backward --only cuda-flash-bwd --n 4096 --d 128 --dtype fp16 --causal 0
prof bwd8_b16c flash_bwd_kernel8 --backward --only cuda-flash-bwd --n 4096 --d 128 --dtype bf16 --causal 1
prof sm90_f16 flash_fwd_sm90 --only cuda-flash-sm90 --n 4096 --d 128 --dtype fp16 --causal 0
prof fa_f16 flash_fwd_kernel --only cuda-flash --n 4096 --d 128 --dtype fp16 --causal 0
timeout 80 $FD run cases/gpu-smoke.json --backend auto --out $R/smoke_auto --jobs 16 > $R/smoke_auto.log 2>&1; t smoke_auto $?
C=b1h2k1-q64k64-d64-fp16-causal_br-p0-normal-s5
timeout 60 $FD explain cases/gpu-smoke.json --case $C --backend cuda-flash-sm90 > $R/explain_sm90.log 2>&1; t explain_sm90 $?
timeout 60 $FD explain cases/gpu-smoke.json --case $C --backend cuda-flash-sm90 --inject mask_missing > $R/explain_sm90_mask.log 2>&1; t explain_sm90_mask $?
timeout -s TERM 25 $FD bench --csv $R/bench_cut.csv --repeats 10 --max-n 4096 > $R/bench_cut.log 2>&1; t bench_cut $?
kill $WD 2>/dev/null
cat $R/times.txt
for n in bwd8_f16 bwd8_b16c sm90_f16 fa_f16; do echo "== $n"; grep -E "^  [a-zA-Z_]+.*\(|Duration|Compute \(SM\) Throughput|Memory Throughput|Registers Per|Achieved Occupancy|Issue Slots Busy|No Eligible|Warp Cycles Per Issued|Shared Memory Configuration Size|Bank Conflicts|L1/TEX Hit|Executed Ipc A" $R/$n.details.txt | head -16; done
tail -3 $R/smoke_auto.log; grep -E "JUDGED|hypothes|^exit|FAIL|PASS" $R/explain_sm90*.log | head -12; tail -2 $R/bench_cut.log; wc -l $R/bench_cut.csv
python3 - $R <<'PY'
import json, os, sys, collections
R = sys.argv[1]
r = json.load(open(os.path.join(R, "smoke_auto", "report.json")))
cs = r["cases"]; v = collections.Counter(c["verdict"] for c in cs)
ran = collections.Counter(b for c in cs for b, x in c["backends"].items() if not x.get("skipped"))
print("smoke_auto", len(cs), dict(v), "ran", dict(ran))
PY
cd $OUT && tar -cJf r1.tar.xz r1 && rm -rf r1; ls -la $OUT
