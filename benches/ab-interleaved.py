#!/usr/bin/env python3
"""Interleaved A/B of one short contree command with two builds: A, B, A, B, ... so a load
that comes and goes (other builds on a shared machine) hits both sides alike, which
hyperfine's one-side-then-the-other runs (benches/ab.sh) do not. Prints both medians and
the median of the pairwise differences.

    python3 benches/ab-interleaved.py /tmp/contree-before target/release/contree
    python3 benches/ab-interleaved.py A B run -D -- true      # another command

Knobs: AB_RUNS=200 pairs; CONTREE_BENCH_DIR=/var/tmp for the two stores. Needs root."""
import os, shutil, statistics, subprocess, sys, tempfile, time

a, b = os.path.realpath(sys.argv[1]), os.path.realpath(sys.argv[2])
args = sys.argv[3:] or ["run", "-D", "--no-network", "--", "true"]
pairs = int(os.environ.get("AB_RUNS", "200"))
work = tempfile.mkdtemp(dir=os.environ.get("CONTREE_BENCH_DIR", "/var/tmp"), prefix="contree-abi.")


def load():
    return " ".join(open("/proc/loadavg").read().split()[:3])


try:
    envs = {}
    for side, binary in (("a", a), ("b", b)):
        env = {"PATH": "/usr/bin:/bin", "CONTREE_HOME": f"{work}/{side}", "CONTREE_SESSION": "bench"}
        subprocess.run([binary, "use", "host"], env=env, check=True, stdout=subprocess.DEVNULL)
        # Warm the store: the host mask, the spare scratch dirs, the page cache.
        for _ in range(5):
            subprocess.run([binary, "run", "--", "true"], env=env, check=True)
        envs[binary] = env

    def once(binary):
        start = time.perf_counter()
        pid = os.posix_spawn(binary, [binary] + args, envs[binary])
        _, status = os.waitpid(pid, 0)
        assert status == 0, f"{binary} {args}: wait status {status}"
        return (time.perf_counter() - start) * 1e3

    for _ in range(10):
        once(a), once(b)
    before = load()
    ta, tb = [], []
    for i in range(pairs):
        # Alternate which side goes first, so neither always follows the other.
        first, second = (a, b) if i % 2 == 0 else (b, a)
        t1, t2 = once(first), once(second)
        ta.append(t1 if first == a else t2)
        tb.append(t2 if first == a else t1)
    ma, mb = statistics.median(ta), statistics.median(tb)
    diff = statistics.median(y - x for x, y in zip(ta, tb))
    print(f"{' '.join(args)}: {pairs} pairs, load average {before} -> {load()}")
    print(f"  A median {ma:.2f} ms, B median {mb:.2f} ms, B/A {mb / ma:.3f}, median of B-A {diff:+.2f} ms")
finally:
    shutil.rmtree(work, ignore_errors=True)
