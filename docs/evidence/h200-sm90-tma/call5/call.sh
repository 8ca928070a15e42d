#!/usr/bin/env bash
# session 24, call 5 (flashdrift): the backward with the bulk dQ (now the default, issued one
# barrier later) against new, and PyTorch's backward, in one run; then the default sweep on the
# GPU with --backend auto (cuda-flash-sm90 included on an sm_90).
set -u
T0=$SECONDS
mkdir -p /tmp/fdb && tar -C /tmp/fdb -xJf .devcarry/b.tar.xz
mkdir -p .devcarry/lib && cp -a /tmp/fdb/lib/. .devcarry/lib/
B=/tmp/fdb/bin; FD=$B/flashdrift
export LD_LIBRARY_PATH="$PWD/.devcarry/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export FD_TEST_DATA="$PWD/tests/data" FD_SOURCE_DIR="$PWD"
R=$OUT/r5; mkdir -p $R
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $R/gpu.txt
t() { echo "$1 rc=$2 $((SECONDS-T0))s" >> $R/times.txt; }
( sleep 400; while :; do pkill -f 'flashdrift|bench_torch'; sleep 2; done ) & WD=$!
timeout 60 $FD bench --backward --repeats 5 --n 1024,4096 --d 128 --only cuda-flash-bwd,cuda-flash-bwd-det --csv $R/bwd_bulk.csv > $R/bwd_bulk.log 2>&1; t bwd_bulk $?
FD_BWD_VARIANT=new timeout 60 $FD bench --backward --repeats 5 --n 1024,4096 --d 128 --only cuda-flash-bwd --csv $R/bwd_new.csv > $R/bwd_new.log 2>&1; t bwd_new $?
timeout 60 env -u LD_LIBRARY_PATH python3 scripts/bench_torch.py --backward $R/torch_bwd.csv 5 4096 > $R/torch_bwd.log 2>&1; t torch_bwd $?
timeout 250 $FD run cases/default.json --out $R/default --jobs 16 --quiet > $R/default.log 2>&1; t default $?
kill $WD 2>/dev/null
cat $R/times.txt
for n in bwd_bulk bwd_new; do echo "== $n"; grep -E "^cuda" $R/$n.log; done
grep -E "torch-flash-bwd.*128" $R/torch_bwd.log
tail -2 $R/default.log
python3 - $R <<'PY'
import json, os, sys, collections
R = sys.argv[1]
try:
    r = json.load(open(os.path.join(R, "default", "report.json")))
    cs = r["cases"]; v = collections.Counter(c["verdict"] for c in cs)
    ran = collections.Counter(b for c in cs for b, x in c.get("backends", {}).items() if isinstance(x, dict) and not x.get("skipped"))
    m = [0, 0]
    for c in cs:
        rp = c.get("replay") or {}
        if isinstance(rp, dict) and "identical" in rp: m[0] += rp["identical"]; m[1] += rp.get("elements", 0)
    print("default", len(cs), dict(v), "ran", dict(ran), "replay", m)
except Exception as e: print("default parse", e)
PY
cd $OUT && tar -cJf r5.tar.xz r5 && rm -rf r5; ls -la $OUT
