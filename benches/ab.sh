#!/usr/bin/env bash
# A/B start-up benchmark: the same short runs with two contree binaries, in one invocation,
# interleaved by hyperfine, each on a store of its own. For "what did this change cost":
#
#   cp target/release/contree /tmp/contree-before   # before the change
#   cargo build --release                            # after it
#   bash benches/ab.sh /tmp/contree-before target/release/contree
#
# Knobs: AB_RUNS=60 timed runs per case and binary. Needs root and hyperfine (installed
# with apt-get when missing). The stores go under CONTREE_BENCH_DIR (default /var/tmp):
# not tmpfs, the figures are about the disk a store lives on.
set -euo pipefail
A=$(realpath "${1:?usage: ab.sh BINARY_A BINARY_B}")
B=$(realpath "${2:?usage: ab.sh BINARY_A BINARY_B}")
RUNS=${AB_RUNS:-60}
command -v hyperfine >/dev/null || {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hyperfine >/dev/null
}
base=${CONTREE_BENCH_DIR:-/var/tmp}
WORK=$(mktemp -d "$base/contree-ab.XXXXXX")
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
trap 'remove_dir "$WORK"' EXIT
for side in a b; do
    bin=$A
    [ "$side" = b ] && bin=$B
    CONTREE_HOME=$WORK/$side CONTREE_SESSION=bench "$bin" use host >/dev/null
    # Warm the store: the host mask, the spare scratch dirs, the page cache.
    for _ in 1 2 3; do
        CONTREE_HOME=$WORK/$side CONTREE_SESSION=bench "$bin" run -- true >/dev/null
    done
done
echo "A = $A"
echo "B = $B"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
HF=(hyperfine -N --warmup 5 --runs "$RUNS")
[ -t 1 ] || HF+=(--style basic)
run_case() {
    local name=$1
    shift
    echo
    echo "=== $name"
    "${HF[@]}" \
        -n "A: $name" "env CONTREE_HOME=$WORK/a CONTREE_SESSION=bench $A $*" \
        -n "B: $name" "env CONTREE_HOME=$WORK/b CONTREE_SESSION=bench $B $*"
}
run_case "run -D -- true" run -D -- true
run_case "run -D --no-network -- true" run -D --no-network -- true
run_case "run -- true (snapshotting, no change)" run -- true
run_case "run -- sh -c 'echo x > /root/x' (a new layer each time)" run -- sh -c "'echo x > /root/x'"
run_case "ls /" ls /
echo
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
