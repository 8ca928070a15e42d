#!/usr/bin/env bash
# session 24, call 2: the Hopper kernel's TMA + producer-warpgroup variant (FD_SM90_LOAD=tma):
# the GPU test against the replay (both load paths, every shape), the replay sweep, the bench
# (2 and 3 consumer warpgroups, key tile 128), an ncu profile, compute-sanitizer.
set -u
T0=$SECONDS
mkdir -p /tmp/fdb && tar -C /tmp/fdb -xJf .devcarry/b.tar.xz
mkdir -p .devcarry/lib && cp -a /tmp/fdb/lib/. .devcarry/lib/
B=/tmp/fdb/bin; FD=$B/flashdrift
export LD_LIBRARY_PATH="$PWD/.devcarry/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export FD_TEST_DATA="$PWD/tests/data" FD_SOURCE_DIR="$PWD"
R=$OUT/r2; mkdir -p $R
t() { echo "$1 rc=$2 $((SECONDS-T0))s" >> $R/times.txt; }
( sleep 540; while :; do pkill -f 'flashdrift|ncu|gpu_test|compute-sanitizer'; sleep 2; done ) & WD=$!
timeout 120 $B/gpu_test_cuda --verbose --jobs 1 --filter 'gpu_cuda/sm90*' > $R/gpu_test_sm90.log 2>&1; t gpu_test_sm90 $?
FD_SM90_LOAD=tma timeout 30 $FD bench --only cuda-flash-sm90 --n 4096 --d 128 --dtype fp16 --causal 0 --repeats 3 > $R/smoke_bench.log 2>&1; t smoke_bench $?
b() { # name env... -- bench args
  local n=$1; shift; env "$@" timeout 100 $FD bench --repeats 10 --n 4096,16384 --dtype fp16 --csv $R/$n.csv > $R/$n.log 2>&1; t $n $?; }
b tma3 FD_SM90_LOAD=tma FD_SM90_WG=3 --only cuda-flash-sm90
b tma2 FD_SM90_LOAD=tma FD_SM90_WG=2 --only cuda-flash-sm90,cuda-flash-sm90-bc128
b cp3 FD_SM90_LOAD=cpasync --only cuda-flash-sm90
FD_SM90_LOAD=tma timeout 200 $FD run cases/replay.json --backend cuda-flash-sm90,cpu-flash --out $R/replay_tma --jobs 16 --quiet > $R/replay_tma.log 2>&1; t replay_tma $?
FD_SM90_LOAD=tma FD_SM90_WG=3 timeout 60 ncu --clock-control none --set full --import-source no -k regex:flash_fwd_sm90 --launch-skip 1 --launch-count 1 \
    -o $R/sm90tma -f $FD bench --repeats 1 --only cuda-flash-sm90 --n 4096 --d 128 --dtype fp16 --causal 0 > $R/ncu.log 2>&1; t ncu $?
ncu -i $R/sm90tma.ncu-rep --page details > $R/sm90tma.details.txt 2>&1
ncu -i $R/sm90tma.ncu-rep --page source --csv --print-source sass > $R/sm90tma.sass.csv 2>&1
for tool in memcheck racecheck synccheck; do
  FD_SM90_LOAD=tma timeout 60 compute-sanitizer --tool $tool --error-exitcode 9 --kernel-name kns=flash_fwd_sm90_kernel $FD run cases/gpu-smoke.json --backend cuda-flash-sm90 --out $R/san_$tool --jobs 16 --quiet > $R/san_$tool.log 2>&1; t san_$tool $?
done
kill $WD 2>/dev/null
cat $R/times.txt
grep -E "Synthesis|FAIL|differ|Tested" $R/gpu_test_sm90.log | head -12
cat $R/smoke_bench.log | tail -2
for n in tma3 tma2 cp3; do echo "== $n"; grep -E "^cuda" $R/$n.log; done
tail -2 $R/replay_tma.log
python3 - $R <<'PY'
import json, os, sys, collections
R = sys.argv[1]
try:
    r = json.load(open(os.path.join(R, "replay_tma", "report.json")))
    cs = r["cases"]; v = collections.Counter(c["verdict"] for c in cs)
    m = [0, 0]
    for c in cs:
        rp = c.get("replay") or {}
        if isinstance(rp, dict) and "identical" in rp: m[0] += rp["identical"]; m[1] += rp.get("elements", 0)
    print("replay_tma", len(cs), dict(v), "replay identical/checked", m)
except Exception as e: print("replay parse", e)
PY
grep -E "Duration|Issue Slots Busy|No Eligible|Registers Per" $R/sm90tma.details.txt | head
grep -h "ERROR SUMMARY\|RACECHECK SUMMARY\|Internal" $R/san_*.log
cd $OUT && tar -cJf r2.tar.xz r2 && rm -rf r2; ls -la $OUT
