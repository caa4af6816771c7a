#!/usr/bin/env bash
# `contree build` figures: a 10-step Dockerfile on the built-in `host` image (FROM, seven
# RUNs, two COPYs), built from nothing, then rebuilt from the cache; and the same steps done
# one by one with `contree run` (`run -- sh -c CMD` for a RUN, `run -F SRC:DEST -- true`
# for a COPY), the baseline of a first build. Everything is measured in this invocation.
#
#   cargo build --release && CONTREE_BIN=target/release/contree bash benches/build.sh
#
# Knobs (environment):
#   CONTREE_BIN=target/release/contree   the binary measured (a private copy is run)
#   FIRST_RUNS=5      first builds (each on a new context dir: a cold cache) and baselines
#   CACHED_RUNS=10    fully cached rebuilds
#   CONTREE_BENCH_DIR where the scratch directory goes (default /var/tmp; not tmpfs: the
#                     figures are about the disk the store lives on)
# Needs root (or whatever `contree run` needs here) and pasta for the runs' network.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BIN=${CONTREE_BIN:-target/release/contree}
FIRST_RUNS=${FIRST_RUNS:-5}
CACHED_RUNS=${CACHED_RUNS:-10}

say() { printf '\n=== %s\n' "$*"; }

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_workdir contree-build-bench
trap 'remove_dir "$WORK"' EXIT
# A private copy: a rebuild of target/release mid-benchmark must not swap the binary
# under a running supervisor.
C=$WORK/contree
cp "$BIN" "$C"
export CONTREE_HOME=$WORK/home
export CONTREE_SESSION=bench

MACHINE="$(date -u '+%Y-%m-%d %H:%M UTC'); nproc $(nproc); kernel $(uname -r); CPU $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
say "machine: $MACHINE"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
"$C" --version

# ---------------------------------------------------------------- the Dockerfile
RUNS_CMDS=(
    "mkdir -p /opt/app && echo 1 > /opt/app/one"
    "echo 2 > /opt/app/two"
    "cat /opt/app/one /opt/app/two > /opt/app/both"
    "mkdir -p /opt/app/lib && seq 1 1000 > /opt/app/lib/numbers"
    "wc -l /opt/app/lib/numbers > /opt/app/count"
    "ls /opt/app > /opt/app/listing"
    "rm /opt/app/two"
)
CTX=$WORK/ctx
mkdir -p "$CTX/conf"
head -c 65536 /dev/urandom > "$CTX/blob.bin"
for i in $(seq 1 20); do echo "setting$i=$i" > "$CTX/conf/$i.conf"; done
{
    echo "FROM host"
    for i in 0 1 2; do echo "RUN ${RUNS_CMDS[$i]}"; done
    echo "COPY blob.bin /opt/app/blob.bin"
    for i in 3 4 5; do echo "RUN ${RUNS_CMDS[$i]}"; done
    echo "COPY conf/ /opt/app/conf/"
    echo "RUN ${RUNS_CMDS[6]}"
} > "$CTX/Dockerfile"
STEPS=$(grep -c . "$CTX/Dockerfile")
IMAGE_STEPS=$((STEPS - 1))
echo "Dockerfile ($STEPS steps):"
sed 's/^/    /' "$CTX/Dockerfile"

now() { date +%s%N; }
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
msf() { awk -v n="$1" 'BEGIN { printf "%.1f", n / 1e6 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "n/a" }'; }

# Warm the store (the host mask, spare scratch dirs, the page cache) and the binary.
"$C" use host >/dev/null
for _ in 1 2 3; do "$C" run -D -- true >/dev/null; done

# ---------------------------------------------------------------- first builds
say "first build, $FIRST_RUNS times (each in a new context dir: nothing cached)"
first=()
for r in $(seq 1 "$FIRST_RUNS"); do
    cp -a "$CTX" "$WORK/ctx-$r"
    t0=$(now)
    "$C" build "$WORK/ctx-$r" >/dev/null 2>"$WORK/first-$r.err"
    t1=$(now)
    first+=($((t1 - t0)))
    echo "  build $r: $(msf $((t1 - t0))) ms ($(grep -c 'Using cache' "$WORK/first-$r.err" || true) cache hits)"
done
FIRST=$(printf '%s\n' "${first[@]}" | median)

# ---------------------------------------------------------------- cached rebuilds
say "fully cached rebuild, $CACHED_RUNS times"
cached=()
for r in $(seq 1 "$CACHED_RUNS"); do
    t0=$(now)
    "$C" build "$WORK/ctx-1" >/dev/null 2>"$WORK/cached.err"
    t1=$(now)
    cached+=($((t1 - t0)))
    hits=$(grep -c 'Using cache' "$WORK/cached.err" || true)
    [ "$hits" -eq "$IMAGE_STEPS" ] || echo "  rebuild $r: only $hits of $IMAGE_STEPS steps cached"
done
CACHED=$(printf '%s\n' "${cached[@]}" | median)

# ---------------------------------------------------------------- the same steps by hand
say "the same steps with contree run, one by one, $FIRST_RUNS times"
byhand=()
for r in $(seq 1 "$FIRST_RUNS"); do
    export CONTREE_SESSION=hand-$r
    t0=$(now)
    "$C" use host >/dev/null
    for i in 0 1 2; do "$C" run -- sh -c "${RUNS_CMDS[$i]}" >/dev/null; done
    "$C" run -F "$CTX/blob.bin:/opt/app/blob.bin" -- true >/dev/null
    for i in 3 4 5; do "$C" run -- sh -c "${RUNS_CMDS[$i]}" >/dev/null; done
    "$C" run -F "$CTX/conf:/opt/app/conf" -- true >/dev/null
    "$C" run -- sh -c "${RUNS_CMDS[6]}" >/dev/null
    t1=$(now)
    byhand+=($((t1 - t0)))
done
export CONTREE_SESSION=bench
BYHAND=$(printf '%s\n' "${byhand[@]}" | median)

# ---------------------------------------------------------------- COPY alone
say "one COPY step: build (no sandbox) vs run -F ... -- true, $FIRST_RUNS times each"
copyb=()
copyr=()
for r in $(seq 1 "$FIRST_RUNS"); do
    d=$WORK/copy-$r
    mkdir -p "$d"
    head -c 65536 /dev/urandom > "$d/blob.bin"
    printf 'FROM host\nCOPY blob.bin /opt/blob.bin\n' > "$d/Dockerfile"
    "$C" build "$d" >/dev/null 2>&1 --no-cache # warm: the FROM step and the digest cache
    printf 'FROM host\nCOPY blob.bin /opt/blob2.bin\n' > "$d/Dockerfile"
    t0=$(now)
    "$C" build "$d" >/dev/null 2>&1
    t1=$(now)
    copyb+=($((t1 - t0)))
    t0=$(now)
    "$C" run -F "$d/blob.bin:/opt/blob3.bin" -- true >/dev/null
    t1=$(now)
    copyr+=($((t1 - t0)))
done
COPYB=$(printf '%s\n' "${copyb[@]}" | median)
COPYR=$(printf '%s\n' "${copyr[@]}" | median)

# ---------------------------------------------------------------- summary
R=$(ratio "$CACHED" "$FIRST")
VERDICT=$(awk -v r="$R" 'BEGIN { print (r != "n/a" && r + 0 <= 0.05) ? "PASS" : "MISS" }')
PER_STEP=$(awk -v f="$FIRST" -v h="$BYHAND" -v n="$IMAGE_STEPS" 'BEGIN { printf "%.1f", (f - h) / n / 1e6 }')
say "summary (medians)"
printf '%-44s %12s\n' "first build ($STEPS steps)" "$(msf "$FIRST") ms"
printf '%-44s %12s\n' "fully cached rebuild" "$(msf "$CACHED") ms"
printf '%-44s %12s   target <= 0.05x: %s\n' "cached / first" "${R}x" "$VERDICT"
printf '%-44s %12s\n' "the same steps with contree run (use + 9 runs)" "$(msf "$BYHAND") ms"
printf '%-44s %12s\n' "first build's overhead per image step" "$PER_STEP ms"
printf '%-44s %12s\n' "a build with one new COPY step (no sandbox)" "$(msf "$COPYB") ms"
printf '%-44s %12s\n' "run -F FILE -- true" "$(msf "$COPYR") ms"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
