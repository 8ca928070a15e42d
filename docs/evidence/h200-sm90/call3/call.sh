#!/usr/bin/env bash
# session 23, call 3: the Hopper kernel after the V-pitch fix (head dims 65..96): sm90 test, every GPU test
# of gpu_test_cuda, the replay sweep, sanitizers on the sm90 and backward kernels, the GPU smoke cases.
set -u
T0=$SECONDS
mkdir -p /tmp/fdb && tar -C /tmp/fdb -xJf .devcarry/b.tar.xz
mkdir -p .devcarry/lib && cp -a /tmp/fdb/lib/. .devcarry/lib/
B=/tmp/fdb/bin; FD=$B/flashdrift
export LD_LIBRARY_PATH="$PWD/.devcarry/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export FD_TEST_DATA="$PWD/tests/data" FD_SOURCE_DIR="$PWD"
R=$OUT/r3; mkdir -p $R
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $R/gpu.txt; git log --oneline -1 > $R/commit.txt 2>/dev/null
t() { echo "$1 rc=$2 $((SECONDS-T0))s" >> $R/times.txt; }
( sleep 400; while :; do pkill -f 'flashdrift|gpu_test_|compute-sanitizer'; sleep 2; done ) & WD=$!
timeout 40 $B/gpu_test_cuda --verbose --jobs 1 --filter 'gpu_cuda/sm90*' > $R/test_sm90.log 2>&1; t test_sm90 $?
timeout 70 $FD run cases/replay.json --backend cuda-flash-sm90,cpu-flash --out $R/replay_sm90 --jobs 16 --quiet > $R/replay_sm90.log 2>&1; t replay_sm90 $?
timeout 100 $B/gpu_test_cuda --jobs 2 > $R/gpu_test_cuda.log 2>&1; t gpu_test_cuda $?
for tool in memcheck racecheck; do
  timeout 45 compute-sanitizer --tool $tool --kernel-name kns=sm90 --error-exitcode 9 $FD run cases/replay.json --filter q203k203-d96-fp16 --backend cuda-flash-sm90 --out $R/san_sm90_$tool --jobs 4 --quiet > $R/san_sm90_$tool.log 2>&1; t san_sm90_$tool $?
  timeout 45 compute-sanitizer --tool $tool --kernel-name kns=flash_bwd --error-exitcode 9 $FD run cases/backward.json --filter q160k288-d128-fp16-none --backend cuda-flash --out $R/san_bwd_$tool --jobs 4 --quiet > $R/san_bwd_$tool.log 2>&1; t san_bwd_$tool $?
done
timeout 60 $FD run cases/gpu-smoke.json --out $R/gpu_smoke --jobs 16 --quiet > $R/gpu_smoke.log 2>&1; t gpu_smoke $?
kill $WD 2>/dev/null
cat $R/times.txt; grep -h "Synthesis\|differ" $R/test_sm90.log $R/gpu_test_cuda.log | head; grep -h "ERROR SUMMARY\|RACECHECK SUMMARY\|Filter" $R/san_*.log; tail -1 $R/gpu_smoke.log
python3 - $R <<'PY'
import json, os, sys, collections
R = sys.argv[1]
for rn in ("replay_sm90", "gpu_smoke"):
  try:
    r = json.load(open(os.path.join(R, rn, "report.json")))
    cs = r["cases"]; v = collections.Counter(c["verdict"] for c in cs)
    ident = sum(c.get("replay", {}).get("identical", 0) for c in cs); el = sum(c.get("replay", {}).get("elements", 0) for c in cs)
    ran = collections.Counter(b for c in cs for b, x in c["backends"].items() if not x.get("skipped"))
    print(rn, len(cs), dict(v), f"replay {ident}/{el}", dict(ran))
  except Exception as ex: print(rn, ex)
PY
cd $OUT && tar -cJf r3.tar.xz r3 && rm -rf r3 && split -b 15M r3.tar.xz r3.tar.xz. && rm r3.tar.xz; ls -la $OUT
