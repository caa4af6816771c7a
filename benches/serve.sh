#!/usr/bin/env bash
# `contree serve` benchmarks, each figure next to its baseline measured in this same
# invocation (see docs/benchmarks.md, "Serve"):
#
#   1. `contree run -- true`: local engine vs remote through `contree serve` on loopback;
#   2. the same remote run: our CLI vs the official Python client (contree-cli 0.9.4);
#   3. 50 concurrent `contree run -- true` through the server: throughput, p50/p99 latency;
#   4. `contree run -F TREE:/t -- true` with a 10,000-file tree: first upload, unchanged.
#
#   bash benches/serve.sh
#
# Knobs (environment):
#   RUNS=30               hyperfine runs for 1 and 2
#   CONCURRENT=50         runs started at once for 3
#   TREE_FILES=10000      files in the tree for 4
#   CONTREE_BIN           benchmark this binary instead of building target/release/contree
#   OFFICIAL_PYTHON       python of a venv with contree-cli (default: target/official-cli,
#                         created by .ci/run)
#   CONTREE_BENCH_DIR     where the scratch directory goes (default /var/tmp)
#
# Needs root (or whatever `contree run` needs), cargo, python3 and hyperfine.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

RUNS=${RUNS:-30}
CONCURRENT=${CONCURRENT:-50}
TREE_FILES=${TREE_FILES:-10000}
OFFICIAL_PYTHON=${OFFICIAL_PYTHON:-$ROOT/target/official-cli/bin/python}

say() { printf '\n=== %s\n' "$*"; }

if ! command -v hyperfine >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends hyperfine
fi
HF=(hyperfine --warmup 3 --runs "$RUNS")
[ -t 1 ] || HF+=(--style basic)

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_workdir contree-serve-bench
SERVER_PID=
cleanup() {
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    remove_dir "$WORK"
}
trap cleanup EXIT

say "machine: $(date -u '+%Y-%m-%d %H:%M UTC'); nproc $(nproc); kernel $(uname -r); CPU $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "uptime before: $(uptime)"

bench_binary "${CONTREE_BIN:-}"

# The server, on its own data dir, with one token.
TOKEN=bench-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
echo "$TOKEN bench" >"$WORK/tokens"
CONTREE_HOME=$WORK/server "$C" serve --listen 127.0.0.1:0 --tokens "$WORK/tokens" 2>"$WORK/serve.log" &
SERVER_PID=$!
for _ in $(seq 100); do
    grep -q 'listening on' "$WORK/serve.log" 2>/dev/null && break
    sleep 0.1
done
URL=$(grep -o 'http://[0-9.:]*' "$WORK/serve.log" | head -1)
echo "server: $URL"

# Clients: our CLI local, our CLI remote, the official client; each its own home.
export CONTREE_SESSION=bench CONTREE_NO_UPDATE_CHECK=1
CONTREE_HOME=$WORK/local "$C" use host >/dev/null
CONTREE_HOME=$WORK/ours "$C" auth --token "$TOKEN" --url "$URL" --type jwt -f 2>/dev/null
CONTREE_HOME=$WORK/ours "$C" use host >/dev/null
HAVE_OFFICIAL=0
if [ -x "$OFFICIAL_PYTHON" ] && "$OFFICIAL_PYTHON" -c 'import contree_cli' 2>/dev/null; then
    HAVE_OFFICIAL=1
    CONTREE_HOME=$WORK/official "$OFFICIAL_PYTHON" -m contree_cli auth --token "$TOKEN" --url "$URL" --type jwt -f >/dev/null 2>&1
    CONTREE_HOME=$WORK/official "$OFFICIAL_PYTHON" -m contree_cli use host >/dev/null
else
    echo "official client not found at $OFFICIAL_PYTHON (bash .ci/run installs it): case 2 skipped"
fi

say "1. contree run -- true: local engine vs remote through contree serve (loopback)"
"${HF[@]}" --export-json "$WORK/one.json" -n local "CONTREE_HOME=$WORK/local $C run -- true" \
    -n remote "CONTREE_HOME=$WORK/ours $C run -- true"
python3 - "$WORK/one.json" <<'PY'
import json, sys
r = {x["command"]: x["median"] for x in json.load(open(sys.argv[1]))["results"]}
gap = (r["remote"] - r["local"]) * 1000
print(f"remote - local = {gap:.1f} ms (medians; target <= 10 ms): {'PASS' if gap <= 10 else 'MISS'}")
PY

if [ "$HAVE_OFFICIAL" = 1 ]; then
    say "2. the same remote run: our CLI vs the official Python client"
    "${HF[@]}" -n ours "CONTREE_HOME=$WORK/ours $C run -- true" \
        -n official "CONTREE_HOME=$WORK/official $OFFICIAL_PYTHON -m contree_cli run -- true"
fi

say "3. $CONCURRENT concurrent runs through the server"
# Each run is timed on its own; -D keeps the session out of it (all start from host).
mkdir -p "$WORK/lat"
pids=()
start=$(date +%s%N)
for i in $(seq "$CONCURRENT"); do
    (
        t0=$(date +%s%N)
        CONTREE_HOME=$WORK/ours CONTREE_SESSION=c$i "$C" run --use host -D -- true >/dev/null
        t1=$(date +%s%N)
        echo $(((t1 - t0) / 1000000)) >"$WORK/lat/$i"
    ) &
    pids+=($!)
done
wait "${pids[@]}"
end=$(date +%s%N)
cat "$WORK"/lat/* | python3 -c '
import sys
xs = sorted(int(l) for l in sys.stdin if l.strip())
wall = int(sys.argv[1]) / 1e9
def pct(p):
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]
print(f"runs {len(xs)}  wall {wall:.2f} s  throughput {len(xs) / wall:.1f} runs/s")
print(f"latency ms: p50 {pct(50)}  p99 {pct(99)}  max {xs[-1]}  (p99/p50 {pct(99) / pct(50):.2f})")
' "$((end - start))"

say "4. run -F with a $TREE_FILES-file tree: first upload vs unchanged"
mkdir -p "$WORK/tree"
python3 - "$WORK/tree" "$TREE_FILES" <<'EOF'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i // 100:03d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:05d}.txt"), "w") as f:
        f.write(f"file {i}\n")
EOF
t0=$(date +%s%N)
CONTREE_HOME=$WORK/ours "$C" run -D -F "$WORK/tree:/t" -- true
t1=$(date +%s%N)
CONTREE_HOME=$WORK/ours "$C" run -D -F "$WORK/tree:/t" -- true
t2=$(date +%s%N)
echo "first upload: $(((t1 - t0) / 1000000)) ms   unchanged: $(((t2 - t1) / 1000000)) ms"

echo
echo "uptime after: $(uptime)"
