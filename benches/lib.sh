# Shared by the benchmark scripts (sourced).

# Removes a scratch dir the benchmark's contree runs used. A run's supervisor goes on after
# the run has ended (it gives its scratch dir back, and keeps the store: see docs/store.md),
# so the last ones may still write there for a moment: retry until the dir is gone.
remove_dir() {
    for _ in $(seq 1 100); do
        rm -rf "$@" 2>/dev/null && return
        sleep 0.1
    done
    rm -rf "$@"
}

# Makes WORK, the benchmark's scratch dir named NAME: under $CONTREE_BENCH_DIR (default
# /var/tmp), or under target/ when that is tmpfs (the store's disk is what a run uses).
bench_workdir() {
    local base=${CONTREE_BENCH_DIR:-/var/tmp}
    case "$(stat -f -c %T "$base" 2>/dev/null || echo unknown)" in
        tmpfs | ramfs) base=$ROOT/target ;;
    esac
    mkdir -p "$base"
    WORK=$(mktemp -d "$base/$1.XXXXXX")
}

# Sets C, a private copy of the binary in $WORK: BIN if given, else a fresh release build.
# A rebuild of target/ mid-benchmark must not swap the binary under a running supervisor
# (it re-executes current_exe()).
bench_binary() {
    C=$WORK/contree
    if [ -n "${1:-}" ]; then
        cp "$1" "$C"
    else
        printf '\n=== %s\n' "cargo build --release"
        cargo build --release
        cp target/release/contree "$C"
    fi
    "$C" --version
}
