#!/usr/bin/env bash
# session 23, call 1: the Hopper kernel (cuda-flash-sm90) - tests, replay sweep, sanitizer, bench.
set -u
T0=$SECONDS
mkdir -p /tmp/fdb && tar -C /tmp/fdb -xJf .devcarry/b.tar.xz
mkdir -p .devcarry/lib && cp -a /tmp/fdb/lib/. .devcarry/lib/
B=/tmp/fdb/bin; FD=$B/flashdrift
export LD_LIBRARY_PATH="$PWD/.devcarry/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export FD_TEST_DATA="$PWD/tests/data" FD_SOURCE_DIR="$PWD"
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $R/gpu.txt; git log --oneline -1 > $R/commit.txt 2>/dev/null
t() { echo "$1 rc=$2 $((SECONDS-T0))s" >> $R/times.txt; }
( sleep 540; while :; do pkill -f 'flashdrift|gpu_test_|compute-sanitizer|bench_torch'; sleep 2; done ) & WD=$!
timeout 100 $B/gpu_test_cuda --verbose --jobs 1 --filter 'gpu_cuda/sm90*' > $R/test_sm90.log 2>&1; t test_sm90 $?
timeout 60 $B/gpu_test_cuda --jobs 1 --filter 'gpu_cuda/unsupported*' > $R/test_unsup.log 2>&1; t test_unsup $?
timeout 120 $FD run cases/replay.json --backend cuda-flash-sm90,cpu-flash --out $R/replay_sm90 --jobs 16 --quiet > $R/replay_sm90.log 2>&1; t replay_sm90 $?
timeout 150 $FD bench --csv $R/bench.csv --repeats 10 --max-n 16384 > $R/bench.log 2>&1; t bench $?
timeout 120 env -u LD_LIBRARY_PATH python3 scripts/bench_torch.py $R/torch.csv 10 16384 > $R/torch.log 2>&1; t torch $?
python3 -c "import json,sys; j=json.load(open('cases/replay.json')); j['flash']['bc']=128; j['name']=j.get('name','replay')+'-bc128'; json.dump(j,open('/tmp/replay128.json','w'),indent=1)"
timeout 120 $FD run /tmp/replay128.json --backend cuda-flash-sm90,cpu-flash --out $R/replay_sm90_bc128 --jobs 16 --quiet > $R/replay_sm90_bc128.log 2>&1; t replay_sm90_bc128 $?
FD_SM90_WG=3 timeout 60 $FD bench --only cuda-flash-sm90 --csv $R/bench_wg3.csv --repeats 10 --max-n 16384 > $R/bench_wg3.log 2>&1; t bench_wg3 $?
FD_SM90_PIPE=deep timeout 60 $FD bench --only cuda-flash-sm90 --csv $R/bench_deep.csv --repeats 10 --max-n 16384 > $R/bench_deep.log 2>&1; t bench_deep $?
timeout 60 compute-sanitizer --tool memcheck --error-exitcode 9 $FD run cases/replay.json --filter d128-fp16 --backend cuda-flash-sm90 --out $R/san_mem --jobs 4 --quiet > $R/san_mem.log 2>&1; t san_mem $?
timeout 60 compute-sanitizer --tool racecheck --error-exitcode 9 $FD run cases/replay.json --filter d64-bf16 --backend cuda-flash-sm90 --out $R/san_race --jobs 4 --quiet > $R/san_race.log 2>&1; t san_race $?
kill $WD 2>/dev/null
cat $R/times.txt; grep -h "Synthesis\|sm90\|differ" $R/test_sm90.log | head -30; tail -3 $R/replay_sm90.log; tail -2 $R/san_mem.log $R/san_race.log
python3 - $R <<'PY'
import json, os, sys, collections
R = sys.argv[1]
for n in ("replay_sm90", "replay_sm90_bc128"):
    f = os.path.join(R, n, "report.json")
    try: r = json.load(open(f))
    except Exception as e: print(n, e); continue
    cs = r["cases"]; v = collections.Counter(c["verdict"] for c in cs)
    ident = sum(c.get("replay", {}).get("identical", 0) for c in cs); el = sum(c.get("replay", {}).get("elements", 0) for c in cs)
    ks = collections.Counter(c.get("replay", {}).get("kernel") for c in cs)
    sk = sum(1 for c in cs for b, x in c["backends"].items() if x.get("skipped"))
    print(f"{n}: {len(cs)} cases {dict(v)} replay {ident}/{el} kernels {dict(ks)} skipped-backend-entries {sk}")
PY
python3 - $R <<'PY'
import csv, sys, os
R = sys.argv[1]; t = {}
for fn in ("bench.csv", "torch.csv", "bench_wg3.csv", "bench_deep.csv"):
    try:
        for row in csv.reader(l for l in open(os.path.join(R, fn)) if not l.startswith("#")):
            if row[0] == "backend": continue
            t[(row[0] + ("-wg3" if "wg3" in fn else "-deep" if "deep" in fn else ""), row[1], row[4], row[5], row[6])] = float(row[9])
    except OSError as e: print(e)
keys = sorted({k[1:] for k in t}, key=lambda k: (int(k[1]), int(k[2]), k[0], k[3]))
print("dtype N d causal  flash  sm90  sm90bc128 sm90wg3 sm90deep  std  torch  cudnn  best/torch best/cudnn")
for k in keys:
    g = lambda b: t.get((b,) + k, float('nan'))
    best = max(g("cuda-flash-sm90"), g("cuda-flash-sm90-bc128"), g("cuda-flash-sm90-wg3"), g("cuda-flash-sm90-deep"))
    print(*k, *(f"{g(b):6.1f}" for b in ("cuda-flash", "cuda-flash-sm90", "cuda-flash-sm90-bc128", "cuda-flash-sm90-wg3", "cuda-flash-sm90-deep", "cuda-standard", "torch-flash", "torch-cudnn")), f"{best/g('torch-flash'):.2f}", f"{best/g('torch-cudnn'):.2f}")
PY
cd $OUT && tar -cJf r.tar.xz r && rm -rf r && split -b 15M r.tar.xz r.tar.xz. && rm r.tar.xz; ls -la $OUT
