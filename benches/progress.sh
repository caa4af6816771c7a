#!/usr/bin/env bash
# Progress bars: what they cost small runs (system calls of every process, `strace -f -c`)
# and how long a big attachment leaves the terminal with nothing new (`script -T` timings).
#
#   CONTREE_BIN=target/release/contree BASE_BIN=/path/to/older/contree bash benches/progress.sh
#
# BASE_BIN (optional) is measured the same way, for comparison. BIG_TREE (default
# /usr/share) is the directory attached in the second part. Needs strace and util-linux
# `script`; run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

bins=("${CONTREE_BIN:-target/release/contree}")
[ -n "${BASE_BIN:-}" ] && bins+=("$BASE_BIN")
big=${BIG_TREE:-/usr/share}
scratch=$(mktemp -d /var/tmp/contree-progress.XXXXXX)
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
trap 'remove_dir "$scratch"' EXIT

# The calls of one command, as "total statx ioctl clone" (strace -c rows: calls in column 4).
calls() {
  strace -f -c -o "$scratch/c.txt" "$@" >/dev/null
  awk '{n[$NF]=$4} END {printf "%s %s %s %s\n", n["total"], n["statx"]+0, n["ioctl"]+0, n["clone"]+n["clone3"]}' "$scratch/c.txt"
}

for bin in "${bins[@]}"; do
  bin=$(realpath "$bin")
  export CONTREE_HOME="$scratch/home" CONTREE_SESSION=bench
  rm -rf "$CONTREE_HOME"
  "$bin" use host >/dev/null
  "$bin" run -D -- true
  echo "== $bin"
  echo "small runs: calls total / statx / ioctl / clone, three runs each"
  for i in 1 2 3; do echo "  run -D -- true:           $(calls "$bin" run -D -- true)"; done
  for i in 1 2 3; do
    echo "new $i $RANDOM" >"$scratch/new$i"
    echo "  run -D -F NEW:/f -- true: $(calls "$bin" run -D -F "$scratch/new$i:/f" -- true)"
  done
  for i in 1 2 3; do echo "  same file again:          $(calls "$bin" run -D -F "$scratch/new1:/f" -- true)"; done

  rm -rf "$CONTREE_HOME"
  "$bin" use host >/dev/null
  sync
  start=$(date +%s.%N)
  script -q -T "$scratch/timing" -ec "$bin run -D -F $big:/big -- true" "$scratch/typescript" >/dev/null
  took=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { print e - s }')
  # Silences: the delays before each output, and from the last output to the exit.
  awk -v tree="$big" -v took="$took" '{t+=$1; if ($1>m) m=$1} END {
    if (took-t > m) m=took-t
    printf "first run -D -F %s:/big on a terminal: %.1f s, longest silence %.2f s\n", tree, took, m}' "$scratch/timing"
  echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
done
