#!/usr/bin/env bash
# contree benchmarks: every figure is printed next to a baseline measured in this same
# invocation, so ratios stay meaningful on a busy or slow machine. See docs/benchmarks.md.
#
#   bash benches/run.sh
#
# Knobs (environment):
#   BENCH_RUNS=50        timed runs for the sandbox start-up comparison (>= 30)
#   VERSION_RUNS=100     timed runs for `contree --version` vs `true`
#   ATTACH_RUNS=5        timed runs per case of the 10,000-file attachment benchmark
#   CONTREE_BENCH_DIR    where the scratch directory goes (default /var/tmp; it must not be
#                        tmpfs, the benchmarks are about the disk the store lives on)
#   HASH_SIZE=1G         size of the file hashed (head -c syntax)
#   BENCH_ONLY=startup   run only benchmark 1 (sandbox start-up)
#   BENCH_ONLY=rootless  run only benchmark 1b (rootless start-up against bwrap, same user)
#   BENCH_USER=contree-rl-sub  the ordinary user of benchmark 1b (made when missing, with
#                        subordinate ids, as tests/cli/rootless.rs makes it)
#   BENCH_BIN=PATH       measure this binary instead of a fresh release build
#
# Needs root (or whatever `contree run` needs on this machine), cargo, hyperfine, bwrap,
# pasta and openssl (slirp4netns for an extra row); missing tools are installed with
# apt-get.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

BENCH_RUNS=${BENCH_RUNS:-50}
VERSION_RUNS=${VERSION_RUNS:-100}
ATTACH_RUNS=${ATTACH_RUNS:-5}
HASH_SIZE=${HASH_SIZE:-1G}

say() { printf '\n=== %s\n' "$*"; }

# ---------------------------------------------------------------- tools
need=()
command -v hyperfine >/dev/null || need+=(hyperfine)
command -v bwrap >/dev/null || need+=(bubblewrap)
command -v pasta >/dev/null || need+=(passt)
command -v openssl >/dev/null || need+=(openssl)
if ((${#need[@]})); then
    say "installing ${need[*]}"
    SUDO=
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

HF=(hyperfine -N)
[ -t 1 ] || HF+=(--style basic)

# ---------------------------------------------------------------- scratch space
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_workdir contree-bench
cleanup() {
    # Attachment runs leave ~10,000 blobs per home; deleting them takes a few seconds.
    remove_dir "$WORK" ${RL_CLEAN:+"$RL_CLEAN"}
}
trap cleanup EXIT

# ---------------------------------------------------------------- machine
load1() { cut -d' ' -f1 /proc/loadavg; }
LOAD_BEFORE=$(load1)
MACHINE="$(date -u '+%Y-%m-%d %H:%M UTC'); nproc $(nproc); kernel $(uname -r); CPU $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
say "machine: $MACHINE"
echo "uptime before: $(uptime)"
echo "scratch: $WORK ($(stat -f -c %T "$WORK"))"

# ---------------------------------------------------------------- build
bench_binary "${BENCH_BIN:-}"
# Benchmark 1b runs the copy as an ordinary user: the scratch dir must be searchable.
chmod 711 "$WORK"

export CONTREE_HOME=$WORK/home
export CONTREE_SESSION=bench
"$C" use host

# ---------------------------------------------------------------- helpers
# csv_get FILE ROW COLUMN: a cell of hyperfine's --export-csv (ROW counts from 1).
csv_get() {
    awk -F, -v row="$2" -v col="$3" '
        NR == 1 { for (i = 1; i <= NF; i++) h[$i] = i; next }
        NR == row + 1 { print $(h[col]) }' "$1"
}
ms() { awk -v s="$1" 'BEGIN { printf "%.2f", s * 1000 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
# verdict RATIO OP LIMIT: PASS when "RATIO OP LIMIT" holds (OP is <= or >=).
verdict() {
    awk -v r="$1" -v op="$2" -v t="$3" 'BEGIN {
        if (r == "n/a" || r == "") { print "n/a"; exit }
        ok = (op == "<=") ? (r + 0 <= t + 0) : (r + 0 >= t + 0)
        print ok ? "PASS" : "MISS" }'
}

ROWS=()
BWRAP_CMD="bwrap --ro-bind / / --proc /proc --dev /dev --unshare-all true"
row() { ROWS+=("$(printf '%-36s|%16s|%24s|%8s|%8s|%6s' "$@")"); }

if [ "${BENCH_ONLY:-}" != rootless ]; then
# ---------------------------------------------------------------- 1. sandbox start-up
say "1. sandbox start-up: contree run vs bwrap (median of $BENCH_RUNS runs)"
# The build above leaves dirty pages; their writeback would land in the first runs.
sync
BWRAP=$BWRAP_CMD
START=(
    -n "contree run -D --no-network -- true" "$C run -D --no-network -- true"
    -n "contree run -D -- true" "$C run -D -- true"
    -n "contree run --no-network -- true" "$C run --no-network -- true"
    -n "bwrap ... --unshare-all true" "$BWRAP"
)
# The fallback stack, for information: a PATH where slirp4netns is the only stack.
if SLIRP=$(command -v slirp4netns); then
    mkdir -p "$WORK/slirp-only"
    ln -s "$SLIRP" "$WORK/slirp-only/slirp4netns"
    START+=(-n "contree run -D -- true (slirp4netns)" "env PATH=$WORK/slirp-only $C run -D -- true")
fi
if "${HF[@]}" --warmup 5 --runs "$BENCH_RUNS" --export-csv "$WORK/start.csv" "${START[@]}"; then
    o=$(csv_get "$WORK/start.csv" 1 median)
    d=$(csv_get "$WORK/start.csv" 2 median)
    s=$(csv_get "$WORK/start.csv" 3 median)
    b=$(csv_get "$WORK/start.csv" 4 median)
    ro=$(ratio "$o" "$b")
    rd=$(ratio "$d" "$b")
    rs=$(ratio "$s" "$b")
    echo "no network / bwrap = ${ro}x (target <= 1.5x): $(verdict "$ro" '<=' 1.5)"
    echo "network    / bwrap = ${rd}x (target <= 2x):   $(verdict "$rd" '<=' 2)"
    echo "snapshot   / bwrap = ${rs}x (target <= 2x):   $(verdict "$rs" '<=' 2)"
    row "run -D --no-network -- true" "$(ms "$o") ms" "bwrap $(ms "$b") ms" "${ro}x" "<= 1.5x" "$(verdict "$ro" '<=' 1.5)"
    row "run -D -- true (network, pasta)" "$(ms "$d") ms" "bwrap $(ms "$b") ms" "${rd}x" "<= 2x" "$(verdict "$rd" '<=' 2)"
    row "run --no-network -- true (snapshot)" "$(ms "$s") ms" "bwrap $(ms "$b") ms" "${rs}x" "<= 2x" "$(verdict "$rs" '<=' 2)"
    if [ -n "$SLIRP" ]; then
        l=$(csv_get "$WORK/start.csv" 5 median)
        rl=$(ratio "$l" "$b")
        row "run -D -- true (slirp4netns)" "$(ms "$l") ms" "bwrap $(ms "$b") ms" "${rl}x" "-" "info"
    fi
else
    echo "start-up benchmark FAILED"
    row "run -D / run (vs bwrap)" "failed" "" "" "" "ERROR"
fi

fi # not BENCH_ONLY=rootless

# ---------------------------------------------------------------- 1b. rootless start-up
# The same disposable run without network, by an ordinary user (docs/rootless.md), against
# bwrap run by that same user (an unprivileged user namespace too).
if [ -z "${BENCH_ONLY:-}" ] || [ "${BENCH_ONLY:-}" = rootless ]; then
    RL_USER=${BENCH_USER:-contree-rl-sub}
    if ! id -u "$RL_USER" >/dev/null 2>&1; then
        useradd --system --no-create-home --shell /usr/sbin/nologin "$RL_USER"
    fi
    for f in /etc/subuid /etc/subgid; do
        if ! grep -q "^$RL_USER:" "$f" 2>/dev/null; then
            end=$(awk -F: '{ e = $2 + $3; if (e > m) m = e } END { print (m > 100000 ? m : 100000) }' "$f" 2>/dev/null || echo 100000)
            echo "$RL_USER:$(( (end + 65535) / 65536 * 65536 )):65536" >>"$f"
        fi
    done
    # The user's home as a user's is: in a directory the host image masks (/home is; /tmp
    # stands in for it here). A store under an unmasked directory (/var/tmp, the scratch
    # dir) splits that directory into a view per entry, which costs a run more mounts.
    RL_HOME=$(mktemp -d /tmp/contree-rl-bench.XXXXXX)
    RL_CLEAN=$RL_HOME
    chown "$RL_USER:" "$RL_HOME"
    AS=(setpriv --reuid="$(id -u "$RL_USER")" --regid="$(id -g "$RL_USER")" --clear-groups
        env -u CONTREE_HOME HOME="$RL_HOME" CONTREE_SESSION=bench)
    say "1b. rootless start-up as $RL_USER: contree run vs bwrap (median of $BENCH_RUNS runs)"
    "${AS[@]}" "$C" use host
    "${AS[@]}" "$C" run -D --no-network -- true
    RL_START=(
        -n "rootless contree run -D --no-network -- true" "${AS[*]} $C run -D --no-network -- true"
        -n "rootless bwrap ... --unshare-all true" "${AS[*]} $BWRAP_CMD"
        -n "rootless env (the wrapper alone)" "${AS[*]} true"
    )
    if "${HF[@]}" --warmup 5 --runs "$BENCH_RUNS" --export-csv "$WORK/rootless.csv" "${RL_START[@]}"; then
        o=$(csv_get "$WORK/rootless.csv" 1 median)
        b=$(csv_get "$WORK/rootless.csv" 2 median)
        w=$(csv_get "$WORK/rootless.csv" 3 median)
        ro=$(ratio "$o" "$b")
        echo "rootless no network / rootless bwrap = ${ro}x (target <= 1.5x): $(verdict "$ro" '<=' 1.5); setpriv+env alone $(ms "$w") ms in both"
        row "rootless run -D --no-network -- true" "$(ms "$o") ms" "bwrap $(ms "$b") ms" "${ro}x" "<= 1.5x" "$(verdict "$ro" '<=' 1.5)"
    else
        echo "rootless start-up benchmark FAILED"
        row "rootless run -D --no-network" "FAILED" "-" "-" "<= 1.5x" "FAIL"
    fi
fi

if [ -z "${BENCH_ONLY:-}" ]; then
# ---------------------------------------------------------------- 2. CLI start
say "2. contree --version vs true (median of $VERSION_RUNS runs)"
if "${HF[@]}" --warmup 10 --runs "$VERSION_RUNS" --export-csv "$WORK/version.csv" \
    -n "contree --version" "$C --version" "true"; then
    v=$(csv_get "$WORK/version.csv" 1 median)
    t=$(csv_get "$WORK/version.csv" 2 median)
    rv=$(ratio "$v" "$t")
    echo "contree --version: $(ms "$v") ms, true: $(ms "$t") ms, ${rv}x"
    row "contree --version" "$(ms "$v") ms" "true $(ms "$t") ms" "${rv}x" "-" "info"
else
    echo "version benchmark FAILED"
    row "contree --version" "failed" "" "" "" "ERROR"
fi

# ---------------------------------------------------------------- 3. SHA-256
say "3. SHA-256 of a $HASH_SIZE file: contree::attach::sha256_file vs openssl dgst -sha256"
BIG=$WORK/big.bin
head -c "$HASH_SIZE" /dev/urandom >"$BIG"
SIZE=$(stat -c %s "$BIG")
cargo bench --bench hash --no-run
warm() { cat "$BIG" >/dev/null; cat "$BIG" >/dev/null; }
warm
hash_out=$(CONTREE_BENCH_FILE=$BIG cargo bench --bench hash 2>/dev/null) || hash_out=
printf '%s\n' "$hash_out"
cmbps=$(printf '%s\n' "$hash_out" | sed -n 's/^RESULT .* mbps=\([0-9.]*\) .*/\1/p')
cdigest=$(printf '%s\n' "$hash_out" | sed -n 's/^RESULT .* digest=\([0-9a-f]*\).*/\1/p')
warm
if "${HF[@]}" --warmup 1 --runs 3 --export-csv "$WORK/openssl.csv" "openssl dgst -sha256 $BIG" \
    && [ -n "$cmbps" ]; then
    omin=$(csv_get "$WORK/openssl.csv" 1 min)
    ombps=$(awk -v n="$SIZE" -v s="$omin" 'BEGIN { printf "%.1f", n / s / 1e6 }')
    odigest=$(openssl dgst -sha256 -r "$BIG" | cut -d' ' -f1)
    [ "$odigest" = "$cdigest" ] && same="digests agree" || same="DIGESTS DIFFER: $cdigest vs $odigest"
    rh=$(ratio "$cmbps" "$ombps")
    echo "contree: $cmbps MB/s, openssl: $ombps MB/s (best of 3), ${rh}x (target >= 0.9x): $(verdict "$rh" '>=' 0.9); $same"
    row "sha256 $HASH_SIZE (best of 3)" "$cmbps MB/s" "openssl $ombps MB/s" "${rh}x" ">= 0.9x" "$(verdict "$rh" '>=' 0.9)"
else
    echo "hash benchmark FAILED"
    row "sha256 $HASH_SIZE" "failed" "" "" "" "ERROR"
fi
rm -f "$BIG"

# ---------------------------------------------------------------- 4. attachments
say "4. attaching a 10,000-file tree: first run (empty CONTREE_HOME) vs unchanged re-run"
TREE=$WORK/tree
mkdir -p "$TREE" "$WORK/trash"
# 100 directories x 100 files of 300 random bytes. Names avoid the default excludes
# (dot-names, build, dist, ...).
for d in $(seq -w 0 99); do
    mkdir "$TREE/d$d"
    head -c 30000 /dev/urandom | (cd "$TREE/d$d" && split -b 300 -d -a 2 - f)
done
echo "tree: $(find "$TREE" -type f | wc -l) files, $(du -sh "$TREE" | cut -f1)"

FIRST=$WORK/first-home
# Each timed "first" run gets an empty CONTREE_HOME: the previous one is moved aside
# (deleting 10,000 blobs would take longer than the run), then `sync` so dirty pages
# of the previous run are not flushed during this one.
cat >"$WORK/fresh-home.sh" <<EOF
#!/bin/sh
set -e
if [ -d "$FIRST" ]; then mv "$FIRST" "\$(mktemp -d "$WORK/trash/h.XXXXXX")/"; fi
CONTREE_HOME="$FIRST" CONTREE_SESSION=bench "$C" use host >/dev/null
sync
EOF
chmod +x "$WORK/fresh-home.sh"
# --no-network: the figure is about attachments, not the network stack's start-up.
ATTACH="$C run -D --no-network -F $TREE:/t -- true"
if CONTREE_HOME=$FIRST "${HF[@]}" --runs "$ATTACH_RUNS" --prepare "$WORK/fresh-home.sh" \
    --export-csv "$WORK/attach-first.csv" --command-name "first: run -D -F TREE:/t -- true" "$ATTACH" \
    && CONTREE_HOME=$FIRST "${HF[@]}" --warmup 1 --runs "$ATTACH_RUNS" --prepare sync \
        --export-csv "$WORK/attach-rerun.csv" \
        --command-name "re-run: run -D -F TREE:/t -- true" "$ATTACH" \
        --command-name "floor: run -D --no-network -- true" "$C run -D --no-network -- true"; then
    f=$(csv_get "$WORK/attach-first.csv" 1 median)
    r=$(csv_get "$WORK/attach-rerun.csv" 1 median)
    fl=$(csv_get "$WORK/attach-rerun.csv" 2 median)
    ra=$(ratio "$r" "$f")
    rf=$(ratio "$fl" "$f")
    echo "first: $(ms "$f") ms, re-run: $(ms "$r") ms, ${ra}x (target <= 0.1x): $(verdict "$ra" '<=' 0.1); floor (no attachment): $(ms "$fl") ms"
    row "attach 10k files: re-run" "$(ms "$r") ms" "first $(ms "$f") ms" "${ra}x" "<= 0.1x" "$(verdict "$ra" '<=' 0.1)"
    row "  floor: run -D --no-network" "$(ms "$fl") ms" "first $(ms "$f") ms" "${rf}x" "-" "info"
else
    echo "attachment benchmark FAILED"
    row "attach 10k files" "failed" "" "" "" "ERROR"
fi

fi # BENCH_ONLY

# ---------------------------------------------------------------- summary
LOAD_AFTER=$(load1)
say "summary"
echo "machine: $MACHINE"
echo "load average (1 min): before $LOAD_BEFORE, after $LOAD_AFTER"
echo "times are hyperfine medians; MB = 10^6 bytes"
echo
printf '%-36s|%16s|%24s|%8s|%8s|%6s\n' "measure" "value" "baseline" "ratio" "target" "result"
printf '%s\n' "------------------------------------+----------------+------------------------+--------+--------+------"
printf '%s\n' "${ROWS[@]}"
if awk -v a="$LOAD_BEFORE" -v b="$LOAD_AFTER" -v n="$(nproc)" 'BEGIN { exit !(a > 1 || b > 1) }'; then
    echo
    echo "note: load average above 1 around the run: the machine was busy, figures are noisy"
fi
