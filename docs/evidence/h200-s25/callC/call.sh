#!/usr/bin/env bash
# session 25, call C (binaries built from 078e93b: the early bulk dQ placement with threads 0..63
# issuing, the sm90 ping-pong the default): gpu_test_bwd; the backward bench (every shape) with
# PyTorch's backward; the side-by-side forward bench (every kernel) with PyTorch's FA2 and cuDNN;
# the default sweep on the GPU (--backend auto).
set -u
T0=$SECONDS
mkdir -p /tmp/fdb && tar -C /tmp/fdb -xJf .devcarry/b.tar.xz
B=/tmp/fdb/bin; FD=$B/flashdrift
export LD_LIBRARY_PATH="/tmp/fdb/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export FD_TEST_DATA="$PWD/tests/data" FD_SOURCE_DIR="$PWD"
R=$OUT/rC; mkdir -p $R
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $R/gpu.txt
t() { echo "$1 rc=$2 $((SECONDS-T0))s" >> $R/times.txt; }
( sleep 570; while :; do pkill -f 'flashdrift|bench_torch|gpu_test'; sleep 2; done ) & WD=$!
timeout 100 $B/gpu_test_bwd --verbose --jobs 1 > $R/gpu_test_bwd.log 2>&1; t gpu_test_bwd $?
timeout 130 $FD bench --backward --repeats 5 --csv $R/bench_bwd.csv > $R/bench_bwd.log 2>&1; t bench_bwd $?
timeout 60 env -u LD_LIBRARY_PATH python3 scripts/bench_torch.py --backward $R/torch_bwd.csv 5 16384 > $R/torch_bwd.log 2>&1; t torch_bwd $?
timeout 170 $FD bench --csv $R/bench_all.csv --repeats 10 > $R/bench_all.log 2>&1; t bench_all $?
timeout 40 env -u LD_LIBRARY_PATH python3 scripts/bench_torch.py $R/torch_fwd.csv 10 16384 > $R/torch_fwd.log 2>&1; t torch_fwd $?
timeout 140 $FD run cases/default.json --out $R/default --jobs 16 --quiet > $R/default.log 2>&1; t default $?
kill $WD 2>/dev/null
cat $R/times.txt
grep -hE "Synthesis|FAIL|Failed|bulk case" $R/gpu_test_bwd.log | head -12
grep -E " 4096 +128 " $R/bench_bwd.log; grep -E "torch-flash-bwd.* 4096 +128 " $R/torch_bwd.log
grep -E " 4096 +128 " $R/bench_all.log; grep -E "^torch.* 4096 +128 " $R/torch_fwd.log
tail -2 $R/default.log
python3 - $R <<'PY'
import json, os, sys, collections
R = sys.argv[1]
try:
    r = json.load(open(os.path.join(R, "default", "report.json")))
    cs = r["cases"]; v = collections.Counter(c["verdict"] for c in cs)
    ran = collections.Counter(b for c in cs for b, x in c.get("backends", {}).items() if isinstance(x, dict) and not x.get("skipped"))
    print("default", len(cs), dict(v), "ran", dict(ran))
except Exception as e: print("default parse", e)
PY
mv $R/default/summary.md $R/default.summary.md 2>/dev/null; rm -rf $R/default
cd $OUT && tar -cJf rC.tar.xz rC && rm -rf rC; ls -la $OUT
