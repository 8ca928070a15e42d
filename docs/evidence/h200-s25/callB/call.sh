#!/usr/bin/env bash
# session 25, call B (the binaries of call A): cuda-flash-sm90 with FlashAttention-3's ping-pong between consumer
# warpgroups (named barriers; FD_SM90_SCHED=pingpong, the new default) against each at its own
# pace (free): the replay sweep, compute-
# sanitizer through the test binary, and the bench against PyTorch's FA2 and cuDNN in one run.
set -u
T0=$SECONDS
mkdir -p /tmp/fdb && tar -C /tmp/fdb -xJf .devcarry/b.tar.xz
B=/tmp/fdb/bin; FD=$B/flashdrift
export LD_LIBRARY_PATH="/tmp/fdb/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export FD_TEST_DATA="$PWD/tests/data" FD_SOURCE_DIR="$PWD"
R=$OUT/rB; mkdir -p $R
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $R/gpu.txt
t() { echo "$1 rc=$2 $((SECONDS-T0))s" >> $R/times.txt; }
( sleep 560; while :; do pkill -f 'flashdrift|bench_torch|gpu_test|compute-sanitizer'; sleep 2; done ) & WD=$!
S="--repeats 10 --n 4096,16384 --d 64,128 --only cuda-flash-sm90,cuda-flash-sm90-bc128"
FD_SM90_SCHED=pingpong timeout 70 $FD bench $S --csv $R/pp1.csv > $R/pp1.log 2>&1; t pp1 $?
FD_SM90_SCHED=free timeout 70 $FD bench $S --csv $R/free1.csv > $R/free1.log 2>&1; t free1 $?
timeout 100 env -u LD_LIBRARY_PATH python3 scripts/bench_torch.py $R/torch_fwd.csv 10 16384 > $R/torch_fwd.log 2>&1; t torch_fwd $?
FD_SM90_SCHED=pingpong timeout 70 $FD bench $S --csv $R/pp2.csv > $R/pp2.log 2>&1; t pp2 $?
FD_SM90_SCHED=free timeout 70 $FD bench $S --csv $R/free2.csv > $R/free2.log 2>&1; t free2 $?
timeout 100 $FD run cases/replay.json --backend cuda-flash-sm90,cpu-flash --out $R/replay_sm90 --jobs 16 --quiet > $R/replay_sm90.log 2>&1; t replay_sm90 $?
for tool in racecheck synccheck memcheck; do
  timeout 60 compute-sanitizer --tool $tool --error-exitcode 9 --kernel-name kns=flash_fwd_sm90_kernel $B/gpu_test_cuda --jobs 1 --filter 'gpu_cuda/sm90_replay*' > $R/san_$tool.log 2>&1; t san_$tool $?
done
kill $WD 2>/dev/null
cat $R/times.txt
for n in pp1 free1 pp2 free2; do echo "== $n"; grep -E "^cuda" $R/$n.log; done
grep -E "^torch" $R/torch_fwd.log | grep -vE " 1024 "
tail -1 $R/replay_sm90.log
for tool in racecheck synccheck memcheck; do echo "== $tool"; tail -2 $R/san_$tool.log; done
python3 - $R <<'PY'
import json, os, sys, collections
R = sys.argv[1]
try:
    r = json.load(open(os.path.join(R, "replay_sm90", "report.json")))
    cs = r["cases"]; v = collections.Counter(c["verdict"] for c in cs)
    m = [0, 0, 0]
    for c in cs:
        rp = c.get("replay") or {}
        if isinstance(rp, dict) and "identical" in rp:
            m[0] += rp["identical"]; m[1] += rp.get("elements", 0); m[2] += 1
    print("replay_sm90", len(cs), dict(v), "replay identical/elements/cases", m)
except Exception as e: print("replay parse", e)
PY
cd $OUT && tar -cJf rB.tar.xz rB && rm -rf rB; ls -la $OUT
