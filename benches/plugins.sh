#!/usr/bin/env bash
# Plugin benchmarks, each figure next to its baseline measured in this same invocation
# (see docs/benchmarks.md, "Plugins"):
#
#   1. the per-run cost of loading N plugins (N = 1, 5, 20) vs loading none;
#   2. formatting 100 MB of output through a plugin formatter vs the built-in default.
#
#   bash benches/plugins.sh
#
# Knobs (environment):
#   LOAD_RUNS=40          timed runs per case of benchmark 1
#   BIG_RUNS=5            timed runs per case of benchmark 2
#   BIG_BYTES=100000000   output size of benchmark 2 (bytes)
#   CONTREE_BENCH_DIR     where the scratch directory goes (default /var/tmp; not tmpfs)
#
# Needs root (or whatever `contree run` needs), cargo, cc and hyperfine (installed with
# apt-get when missing).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

LOAD_RUNS=${LOAD_RUNS:-40}
BIG_RUNS=${BIG_RUNS:-5}
BIG_BYTES=${BIG_BYTES:-100000000}

say() { printf '\n=== %s\n' "$*"; }

if ! command -v hyperfine >/dev/null; then
    say "installing hyperfine"
    SUDO=
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends hyperfine
fi
HF=(hyperfine -N)
[ -t 1 ] || HF+=(--style basic)

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_workdir contree-plugin-bench
trap 'remove_dir "$WORK"' EXIT

load1() { cut -d' ' -f1 /proc/loadavg; }
LOAD_BEFORE=$(load1)
MACHINE="$(date -u '+%Y-%m-%d %H:%M UTC'); nproc $(nproc); kernel $(uname -r); CPU $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
say "machine: $MACHINE"
echo "scratch: $WORK ($(stat -f -c %T "$WORK"))"

# ---------------------------------------------------------------- build
say "cargo build --release (contree, the JUnit plugin) and cc (the C plugin, 20 times)"
cargo build --release -p contree -p contree-junit
# Private copies: other work rebuilding target/ must not swap them mid-benchmark.
C=$WORK/contree
cp target/release/contree "$C"
cp target/release/libcontree_junit.so "$WORK/junit.so"
"$C" --version
CC=${CC:-cc}
# 20 distinct C plugins (formatters bN-upper, bN-cat; scheme bNhello), -O2 like a release.
mkdir -p "$WORK/c"
for i in $(seq 0 19); do
    "$CC" -O2 -shared -fPIC -std=c11 -I plugins/sdk -DCT_PREFIX="\"b$i\"" \
        -o "$WORK/c/b$i.so" tests/fixtures/plugins/cplugin.c
done
# Directories of 1, 5 and 20 plugins; each contains b0.so, whose formatter the runs use.
for n in 1 5 20; do
    mkdir -p "$WORK/p$n"
    for i in $(seq 0 $((n - 1))); do ln -s "$WORK/c/b$i.so" "$WORK/p$n/b$i.so"; done
done

export CONTREE_HOME=$WORK/home
export CONTREE_SESSION=bench
"$C" use host >/dev/null
"$C" --plugin "$WORK/p20" plugins list | tail -n 3

csv_get() {
    awk -F, -v row="$2" -v col="$3" '
        NR == 1 { for (i = 1; i <= NF; i++) h[$i] = i; next }
        NR == row + 1 { print $(h[col]) }' "$1"
}
ms() { awk -v s="$1" 'BEGIN { printf "%.2f", s * 1000 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
diff_ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.2f", (a - b) * 1000 }'; }
per() { awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN { printf "%.3f", (a - b) * 1000 / n }'; }
verdict() {
    awk -v r="$1" -v op="$2" -v t="$3" 'BEGIN {
        if (r == "n/a" || r == "") { print "n/a"; exit }
        ok = (op == "<=") ? (r + 0 <= t + 0) : (r + 0 >= t + 0)
        print ok ? "PASS" : "MISS" }'
}
ROWS=()
row() { ROWS+=("$(printf '%-40s|%14s|%24s|%10s|%9s|%6s' "$@")"); }

# ---------------------------------------------------------------- 1. loading N plugins
say "1. per-run cost of loading N plugins: run -D -- true (median of $LOAD_RUNS runs)"
# "none": the default format loads no plugin (loading is lazy). "N": -o b0-cat makes the
# run load every plugin found (to be sure no other one claims the name), N of them.
if "${HF[@]}" --warmup 5 --runs "$LOAD_RUNS" --export-csv "$WORK/load.csv" \
    -n "none: run -D -- true" "$C run -D -- true" \
    -n "1 plugin: -o b0-cat" "$C --plugin $WORK/p1 -o b0-cat run -D -- true" \
    -n "5 plugins: -o b0-cat" "$C --plugin $WORK/p5 -o b0-cat run -D -- true" \
    -n "20 plugins: -o b0-cat" "$C --plugin $WORK/p20 -o b0-cat run -D -- true"; then
    none=$(csv_get "$WORK/load.csv" 1 median)
    i=2
    for n in 1 5 20; do
        m=$(csv_get "$WORK/load.csv" "$i" median)
        r=$(ratio "$m" "$none")
        echo "$n plugin(s): $(ms "$m") ms, $(diff_ms "$m" "$none") ms vs none ($(per "$m" "$none" "$n") ms per plugin), ${r}x"
        row "run -D -- true, $n plugin(s) loaded" "$(ms "$m") ms" "none $(ms "$none") ms" "$(diff_ms "$m" "$none") ms" "-" "info"
        i=$((i + 1))
    done
    m20=$(csv_get "$WORK/load.csv" 4 median)
    p20=$(per "$m20" "$none" 20)
    echo "per plugin (20 loaded): $p20 ms (target <= 1 ms): $(verdict "$p20" '<=' 1)"
    row "  per plugin, from 20 (in a run)" "$p20 ms" "-" "-" "<= 1 ms" "$(verdict "$p20" '<=' 1)"
else
    echo "plugin loading benchmark FAILED"
    row "loading N plugins" "failed" "" "" "" "ERROR"
fi

# The same loads without a sandbox around them: `plugins list` starts, finds and loads
# every plugin and prints a table, nothing else, so the difference is the loading itself.
say "1b. loading alone: contree plugins list, N plugins vs none (median of $((LOAD_RUNS * 2)) runs)"
mkdir -p "$WORK/p0"
if "${HF[@]}" --warmup 10 --runs "$((LOAD_RUNS * 2))" --export-csv "$WORK/list.csv" \
    -n "plugins list: none" "$C --plugin $WORK/p0 plugins list" \
    -n "plugins list: 1" "$C --plugin $WORK/p1 plugins list" \
    -n "plugins list: 5" "$C --plugin $WORK/p5 plugins list" \
    -n "plugins list: 20" "$C --plugin $WORK/p20 plugins list"; then
    none=$(csv_get "$WORK/list.csv" 1 median)
    i=2
    for n in 1 5 20; do
        m=$(csv_get "$WORK/list.csv" "$i" median)
        echo "plugins list, $n plugin(s): $(ms "$m") ms, $(diff_ms "$m" "$none") ms vs none ($(per "$m" "$none" "$n") ms per plugin)"
        row "plugins list, $n plugin(s) loaded" "$(ms "$m") ms" "none $(ms "$none") ms" "$(diff_ms "$m" "$none") ms" "-" "info"
        i=$((i + 1))
    done
    m20=$(csv_get "$WORK/list.csv" 4 median)
    p20=$(per "$m20" "$none" 20)
    echo "per plugin (20 loaded, no sandbox): $p20 ms (target <= 1 ms): $(verdict "$p20" '<=' 1)"
    row "  per plugin, from 20 (no sandbox)" "$p20 ms" "-" "-" "<= 1 ms" "$(verdict "$p20" '<=' 1)"
else
    echo "plugins list benchmark FAILED"
    row "plugins list, N plugins" "failed" "" "" "" "ERROR"
fi

# ---------------------------------------------------------------- 2. formatting 100 MB
MB=$(awk -v b="$BIG_BYTES" 'BEGIN { printf "%g", b / 1e6 }')
say "2. formatting $MB MB of output: plugin formatters vs the built-in default (median of $BIG_RUNS runs)"
# Printable output, so the event log stores it as is; -T keeps all of it.
BIG="yes abcdefghijklmnopqrstuvwxyz0123456789 | head -c $BIG_BYTES"
RUN="run -D -T $BIG_BYTES -- sh -c"
if "${HF[@]}" --warmup 1 --runs "$BIG_RUNS" --export-csv "$WORK/big.csv" \
    -n "built-in default" "$C $RUN '$BIG'" \
    -n "plugin c-cat: C live pass-through" "$C --plugin $WORK/c/b0.so -o b0-cat $RUN '$BIG'" \
    -n "plugin junit: Rust XML at the end" "$C --plugin $WORK/junit.so -o junit $RUN '$BIG'"; then
    d=$(csv_get "$WORK/big.csv" 1 median)
    c=$(csv_get "$WORK/big.csv" 2 median)
    j=$(csv_get "$WORK/big.csv" 3 median)
    rc=$(ratio "$c" "$d")
    rj=$(ratio "$j" "$d")
    tp() { awk -v b="$BIG_BYTES" -v s="$1" 'BEGIN { printf "%.0f", b / s / 1e6 }'; }
    echo "default: $(ms "$d") ms ($(tp "$d") MB/s); c-cat: $(ms "$c") ms, ${rc}x (target <= 1.25x): $(verdict "$rc" '<=' 1.25); junit: $(ms "$j") ms, ${rj}x"
    row "$MB MB through plugin c-cat" "$(ms "$c") ms" "default $(ms "$d") ms" "${rc}x" "<= 1.25x" "$(verdict "$rc" '<=' 1.25)"
    row "$MB MB through plugin junit" "$(ms "$j") ms" "default $(ms "$d") ms" "${rj}x" "-" "info"
else
    echo "formatting benchmark FAILED"
    row "formatting $MB MB" "failed" "" "" "" "ERROR"
fi

# ---------------------------------------------------------------- summary
LOAD_AFTER=$(load1)
say "summary"
echo "machine: $MACHINE"
echo "load average (1 min): before $LOAD_BEFORE, after $LOAD_AFTER"
echo "times are hyperfine medians; MB = 10^6 bytes"
echo
printf '%-40s|%14s|%24s|%10s|%9s|%6s\n' "measure" "value" "baseline" "vs base" "target" "result"
printf '%s\n' "----------------------------------------+--------------+------------------------+----------+---------+------"
printf '%s\n' "${ROWS[@]}"
if awk -v a="$LOAD_BEFORE" -v b="$LOAD_AFTER" 'BEGIN { exit !(a > 1 || b > 1) }'; then
    echo
    echo "note: load average above 1 around the run: the machine was busy, figures are noisy"
fi
