#!/usr/bin/env bash
# 1000 consecutive snapshotting runs in one session: is the thousandth as fast as the first?
# Each run writes one new file, so every run adds a layer and the chain must be flattened
# along the way. Prints the mean wall time of the first and the last SAMPLE runs and their
# ratio against the target (late ≤ 1.2 × early).
#
#   bash benches/long_session.sh            # RUNS=1000 SAMPLE=50 by default
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-1000}
SAMPLE=${SAMPLE:-50}

cargo build --release --quiet
bin=${CARGO_TARGET_DIR:-$PWD/target}/release/contree
home=$(mktemp -d)
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
trap 'remove_dir "$home"' EXIT
export CONTREE_HOME=$home CONTREE_SESSION=bench-long
"$bin" use host >/dev/null

times=()
for i in $(seq 1 "$RUNS"); do
  start=$EPOCHREALTIME
  "$bin" run -- sh -c "mkdir -p /data && echo $i > /data/f$i" >/dev/null
  end=$EPOCHREALTIME
  times+=("$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", (b - a) * 1000 }')")
done
count=$("$bin" run -- sh -c "ls /data | wc -l")
[ "$count" = "$RUNS" ] || { echo "expected $RUNS files, found $count" >&2; exit 1; }

printf '%s\n' "${times[@]}" | awk -v n="$RUNS" -v s="$SAMPLE" '
  { t[NR] = $1 }
  END {
    for (i = 1; i <= s; i++) early += t[i];
    for (i = n - s + 1; i <= n; i++) late += t[i];
    early /= s; late /= s;
    ratio = late / early;
    printf "runs 1-%d: %.2f ms mean; runs %d-%d: %.2f ms mean; ratio %.2f (target <= 1.20): %s\n",
      s, early, n - s + 1, n, late, ratio, (ratio <= 1.2 ? "PASS" : "MISS");
  }'
