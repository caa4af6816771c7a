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
