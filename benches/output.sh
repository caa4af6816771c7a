#!/usr/bin/env bash
# Output throughput at the sizes the API allows, each next to a plain pipe of the same bytes
# measured in this same invocation (see docs/benchmarks.md, "Output throughput"):
#
#   1. `run -T 10485760 -- head -c 10M /dev/zero | cat`: every byte recorded and shown;
#      start-up aside (the median of `run -- true | cat` is subtracted);
#   2. `run -- head -c 1G /dev/zero | cat` with the default -T: 64 KiB kept and shown, the
#      rest counted and dropped; start-up included.
#
#   bash benches/output.sh
#
# Knobs (environment):
#   RUNS=7             timed rounds (the median is used; one more round warms up)
#   CONTREE_BIN        benchmark this binary instead of building target/release/contree
#   CONTREE_BENCH_DIR  where the scratch directory goes (default /var/tmp; not tmpfs: the
#                      recorded output goes through the on-disk event log)
#
# Needs root (or whatever `contree run` needs) and cargo.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
RUNS=${RUNS:-7}

say() { printf '\n=== %s\n' "$*"; }

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_workdir contree-output-bench
trap 'remove_dir "$WORK"' EXIT

say "machine: $(date -u '+%Y-%m-%d %H:%M UTC'); nproc $(nproc); kernel $(uname -r)"
echo "uptime before: $(uptime)"

bench_binary "${CONTREE_BIN:-}"
export CONTREE_HOME=$WORK/home
export CONTREE_SESSION=bench
"$C" use host >/dev/null

RUN="$C run -D --no-network -t 600"
NAMES=("pipe 10M" "run -T 10M, 10M" "run -- true" "pipe 1G" "run default -T, 1G")
CMDS=(
    "head -c 10M /dev/zero | cat > /dev/null"
    "$RUN -T 10485760 -- head -c 10M /dev/zero | cat > /dev/null"
    "$RUN -- true | cat > /dev/null"
    "head -c 1G /dev/zero | cat > /dev/null"
    "$RUN -- head -c 1G /dev/zero 2>/dev/null | cat > /dev/null"
)
for i in "${!NAMES[@]}"; do printf '%d: %s\n   %s\n' "$i" "${NAMES[$i]}" "${CMDS[$i]}"; done

# Every round runs each case once, the order rotating, so drift hits all cases alike.
# Round 0 warms up.
for round in $(seq 0 "$RUNS"); do
    for k in "${!CMDS[@]}"; do
        i=$(((round + k) % ${#CMDS[@]}))
        t0=$(date +%s%N)
        sh -c "${CMDS[$i]}"
        t1=$(date +%s%N)
        [ "$round" -eq 0 ] || echo "$(((t1 - t0) / 1000))" >>"$WORK/case$i"
    done
done
median() { sort -n "$WORK/case$1" | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
ms() { awk -v u="$1" 'BEGIN { printf "%.1f ms", u / 1000 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
verdict() { awk -v r="$1" 'BEGIN { print (r + 0 >= 0.7) ? "PASS" : "MISS" }'; }

p10=$(median 0)
r10=$(median 1)
start=$(median 2)
p1g=$(median 3)
r1g=$(median 4)
# Start-up aside: what the 10 MiB run took beyond a run of `true`.
r10_net=$((r10 > start ? r10 - start : 1))
q10=$(ratio "$p10" "$r10_net")
q1g=$(ratio "$p1g" "$r1g")

say "summary (median of $RUNS rounds; ratio = throughput vs the plain pipe, target >= 0.7x)"
printf '%-40s %12s %12s %8s %6s\n' "case" "contree" "pipe" "ratio" "result"
printf '%-40s %12s %12s %8s %6s\n' "10 MiB, -T 10485760 (start-up aside)" "$(ms "$r10_net")" "$(ms "$p10")" "${q10}x" "$(verdict "$q10")"
printf '%-40s %12s %12s %8s %6s\n' "1 GiB, default -T" "$(ms "$r1g")" "$(ms "$p1g")" "${q1g}x" "$(verdict "$q1g")"
echo "(run -- true, subtracted above: $(ms "$start"); the 10 MiB run whole: $(ms "$r10"))"
echo "uptime after: $(uptime)"
