#!/usr/bin/env bash
# session 23, call 2: the backward's FAST variant (speed of both, replay identity, sanitizer) and the
# Hopper kernel after the padding fix (replay sweep, sm90 test, racecheck on its kernel, ncu).
set -u
T0=$SECONDS
mkdir -p /tmp/fdb && tar -C /tmp/fdb -xJf .devcarry/b.tar.xz
mkdir -p .devcarry/lib && cp -a /tmp/fdb/lib/. .devcarry/lib/
B=/tmp/fdb/bin; FD=$B/flashdrift
export LD_LIBRARY_PATH="$PWD/.devcarry/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export FD_TEST_DATA="$PWD/tests/data" FD_SOURCE_DIR="$PWD"
R=$OUT/r2; mkdir -p $R
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $R/gpu.txt; git log --oneline -1 > $R/commit.txt 2>/dev/null
t() { echo "$1 rc=$2 $((SECONDS-T0))s" >> $R/times.txt; }
( sleep 535; while :; do pkill -f 'flashdrift|gpu_test_|compute-sanitizer|bench_torch|ncu'; sleep 2; done ) & WD=$!
timeout 100 $FD run cases/backward.json --backend cuda-flash,cpu-flash --out $R/bwd_replay --jobs 16 --quiet > $R/bwd_replay.log 2>&1; t bwd_replay $?
for v in old new; do FD_BWD_VARIANT=$v timeout 60 $FD bench --backward --only cuda-flash-bwd,cuda-flash-bwd-det --repeats 5 --max-n 4096 > $R/bench_bwd_$v.log 2>&1; t bench_bwd_$v $?; done
timeout 90 env -u LD_LIBRARY_PATH python3 scripts/bench_torch.py --backward $R/torch_bwd.csv 5 4096 > $R/torch_bwd.log 2>&1; t torch_bwd $?
timeout 40 $B/gpu_test_cuda --verbose --jobs 1 --filter 'gpu_cuda/sm90*' > $R/test_sm90.log 2>&1; t test_sm90 $?
timeout 70 $FD run cases/replay.json --backend cuda-flash-sm90,cpu-flash --out $R/replay_sm90 --jobs 16 --quiet > $R/replay_sm90.log 2>&1; t replay_sm90 $?
timeout 40 $FD bench --only cuda-flash-sm90 --repeats 10 --max-n 4096 > $R/bench_sm90.log 2>&1; t bench_sm90 $?
for tool in memcheck racecheck; do timeout 45 compute-sanitizer --tool $tool --kernel-name regex:flash_bwd --error-exitcode 9 $FD run cases/backward.json --filter q160k288-d128-fp16-none --backend cuda-flash --out $R/san_bwd_$tool --jobs 4 --quiet > $R/san_bwd_$tool.log 2>&1; t san_bwd_$tool $?; done
timeout 40 compute-sanitizer --tool racecheck --kernel-name regex:sm90 --error-exitcode 9 $FD run cases/replay.json --filter d128-fp16-causal_br-p0 --backend cuda-flash-sm90 --out $R/san_sm90_race --jobs 4 --quiet > $R/san_sm90_race.log 2>&1; t san_sm90_race $?
kill $WD 2>/dev/null
cat $R/times.txt; grep -h "Synthesis\|differ" $R/test_sm90.log | head; tail -1 $R/bwd_replay.log $R/replay_sm90.log; grep -h "ERROR SUMMARY\|RACECHECK SUMMARY" $R/san_*.log
grep -h " 4096  128" $R/bench_bwd_*.log $R/bench_sm90.log
python3 - $R <<'PY'
import json, os, sys, collections, csv
R = sys.argv[1]
for rn in ("bwd_replay", "replay_sm90"):
  try:
    r = json.load(open(os.path.join(R, rn, "report.json")))
    cs = r["cases"]; v = collections.Counter(c["verdict"] for c in cs)
    g = collections.Counter(); e = collections.Counter()
    def walk(o):
        if isinstance(o, dict):
            for k, x in o.items():
                if k in ("dq", "dk", "dv") and isinstance(x, dict) and isinstance(x.get("replay"), dict):
                    g[k] += x["replay"].get("identical", 0); e[k] += x["replay"].get("elements", 0)
                else: walk(x)
        elif isinstance(o, list):
            for x in o: walk(x)
    walk(cs)
    ident = sum(c.get("replay", {}).get("identical", 0) for c in cs); el = sum(c.get("replay", {}).get("elements", 0) for c in cs)
    print(rn, len(cs), dict(v), {k: f"{g[k]}/{e[k]}" for k in e}, f"fwd replay {ident}/{el}")
  except Exception as ex: print(rn, ex)
def rd(f, name):
    d = {}
    try:
        for l in open(os.path.join(R, f)):
            p = l.split()
            if len(p) == 7 and p[0] == name: d[(p[1], p[2], p[3], p[4])] = float(p[6])
    except OSError: pass
    return d
o, n, od, nd = rd("bench_bwd_old.log", "cuda-flash-bwd"), rd("bench_bwd_new.log", "cuda-flash-bwd"), rd("bench_bwd_old.log", "cuda-flash-bwd-det"), rd("bench_bwd_new.log", "cuda-flash-bwd-det")
t = {}
try:
    for row in csv.reader(l for l in open(os.path.join(R, "torch_bwd.csv")) if not l.startswith("#")):
        if row[0] != "backend": t[(row[0], row[1], row[4], row[5], row[6])] = float(row[9])
except OSError as ex: print(ex)
print("dtype N d causal | old new old-det new-det | torch-bwd new/torch")
for k in sorted(set(o) | set(n), key=lambda k: (int(k[1]), int(k[2]), k[0], k[3])):
    tb = t.get(("torch-flash-bwd",) + k, float("nan"))
    print(*k, "|", *(f"{x.get(k, float('nan')):6.1f}" for x in (o, n, od, nd)), "|", f"{tb:6.1f}", f"{n.get(k, float('nan')) / tb:.2f}")
PY
cd $OUT && tar -cJf r2.tar.xz r2 && rm -rf r2 && split -b 15M r2.tar.xz r2.tar.xz. && rm r2.tar.xz; ls -la $OUT
