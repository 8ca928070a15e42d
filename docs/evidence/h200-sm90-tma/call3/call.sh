#!/usr/bin/env bash
# session 24, call 3 (flashdrift only): the replay sweep on cuda-flash-sm90 (TMA default, head dim
# 256 now included); the side-by-side bench (every forward kernel) with PyTorch's FA2 and cuDNN in
# the same run; an A/B of two consumer warpgroups; head dim 256; the backward's bulk dQ variant
# against new, PyTorch's backward in the same run; the backward cases with bulk.
set -u
T0=$SECONDS
mkdir -p /tmp/fdb && tar -C /tmp/fdb -xJf .devcarry/b.tar.xz
mkdir -p .devcarry/lib && cp -a /tmp/fdb/lib/. .devcarry/lib/
B=/tmp/fdb/bin; FD=$B/flashdrift
export LD_LIBRARY_PATH="$PWD/.devcarry/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export FD_TEST_DATA="$PWD/tests/data" FD_SOURCE_DIR="$PWD"
R=$OUT/r3; mkdir -p $R
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $R/gpu.txt
t() { echo "$1 rc=$2 $((SECONDS-T0))s" >> $R/times.txt; }
( sleep 575; while :; do pkill -f 'flashdrift|bench_torch'; sleep 2; done ) & WD=$!
timeout 100 $FD run cases/replay.json --backend cuda-flash-sm90,cpu-flash --out $R/replay_sm90 --jobs 16 --quiet > $R/replay_sm90.log 2>&1; t replay_sm90 $?
FD_SM90_WG=2 timeout 30 $FD bench --repeats 10 --n 4096 --d 128 --dtype fp16 --only cuda-flash-sm90 > $R/tma2.log 2>&1; t tma2 $?
timeout 40 $FD bench --repeats 10 --n 4096,16384 --d 256 --only cuda-flash,cuda-flash-sm90 --csv $R/d256.csv > $R/d256.log 2>&1; t d256 $?
for v in new bulk; do
  FD_BWD_VARIANT=$v timeout 40 $FD bench --backward --repeats 5 --n 4096 --d 128 --only cuda-flash-bwd --csv $R/bwd_$v.csv > $R/bwd_$v.log 2>&1; t bwd_$v $?
done
timeout 100 env -u LD_LIBRARY_PATH python3 scripts/bench_torch.py --backward $R/torch_bwd.csv 5 4096 > $R/torch_bwd.log 2>&1; t torch_bwd $?
FD_BWD_VARIANT=bulk timeout 60 $FD run cases/backward.json --backend cuda-flash,cpu-flash --out $R/bwd_bulk_cases --jobs 16 --quiet > $R/bwd_bulk_cases.log 2>&1; t bwd_bulk_cases $?
timeout 250 $FD bench --csv $R/bench_all.csv --repeats 10 > $R/bench_all.log 2>&1; t bench_all $?
timeout 110 env -u LD_LIBRARY_PATH python3 scripts/bench_torch.py $R/torch_fwd.csv 10 16384 > $R/torch_fwd.log 2>&1; t torch_fwd $?
kill $WD 2>/dev/null
cat $R/times.txt
tail -1 $R/replay_sm90.log
python3 - $R <<'PY'
import json, os, sys, collections
R = sys.argv[1]
for n in ("replay_sm90", "bwd_bulk_cases"):
    try:
        r = json.load(open(os.path.join(R, n, "report.json")))
        cs = r["cases"]; v = collections.Counter(c["verdict"] for c in cs)
        m = [0, 0, 0]
        for c in cs:
            rp = c.get("replay") or {}
            if isinstance(rp, dict) and "identical" in rp:
                m[0] += rp["identical"]; m[1] += rp.get("elements", 0); m[2] += 1
        print(n, len(cs), dict(v), "replay identical/elements/cases", m)
    except Exception as e: print(n, "parse", e)
PY
for n in tma2 d256 bwd_new bwd_bulk; do echo "== $n"; grep -E "^cuda" $R/$n.log; done
grep -E "4096.*128" $R/torch_bwd.log | head -12
grep -E "4096 +128" $R/bench_all.log
grep -E "4096.*128" $R/torch_fwd.log | head -8
cd $OUT && tar -cJf r3.tar.xz r3 && rm -rf r3; ls -la $OUT
