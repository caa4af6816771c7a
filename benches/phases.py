#!/usr/bin/env python3
"""Where two builds spend a run's start-up: runs `contree run -D --no-network -- true` with
CONTREE_TRACE=1 alternately with each build and prints the median time between trace points
of the supervisor and the sandbox's init (from the supervisor's log, µs of wall time).

    python3 benches/phases.py /tmp/contree-before target/release/contree [RUNS]

Needs root. The stores go under CONTREE_BENCH_DIR (default /var/tmp)."""
import os, re, shutil, statistics, subprocess, sys, tempfile

builds = {"A": os.path.realpath(sys.argv[1]), "B": os.path.realpath(sys.argv[2])}
runs = int(sys.argv[3]) if len(sys.argv) > 3 else 60
work = tempfile.mkdtemp(dir=os.environ.get("CONTREE_BENCH_DIR", "/var/tmp"), prefix="contree-phases.")
PHASES = [
    ("mounted", "cloned"),
    ("cloned", "init: mounts"),
    ("init: mounts", "init: pivoted"),
    ("init: pivoted", "init: forked"),
    ("init: forked", "init: exec ok"),
    ("supervisor start", "init: all gone"),
]
try:
    seen = {side: {} for side in builds}
    for side, binary in builds.items():
        env = {"PATH": "/usr/bin:/bin", "CONTREE_HOME": f"{work}/{side}", "CONTREE_SESSION": "bench"}
        subprocess.run([binary, "use", "host"], env=env, check=True, stdout=subprocess.DEVNULL)
    for _ in range(runs):
        for side, binary in builds.items():
            env = {"PATH": "/usr/bin:/bin", "CONTREE_HOME": f"{work}/{side}",
                   "CONTREE_SESSION": "bench", "CONTREE_TRACE": "1"}
            subprocess.run([binary, "run", "-D", "--no-network", "--", "true"], env=env,
                           stderr=subprocess.DEVNULL, check=True)
            ops = f"{work}/{side}/store/ops"
            op = max(os.listdir(ops), key=lambda d: os.path.getmtime(os.path.join(ops, d)))
            at = {}
            for line in open(os.path.join(ops, op, "supervisor.log")):
                m = re.match(r"\[TRACE (\S+) \S+\] (.*)", line)
                if m:
                    at[m.group(2)] = float(m.group(1))
            for start, end in PHASES:
                if start in at and end in at:
                    seen[side].setdefault((start, end), []).append((at[end] - at[start]) * 1e6)
    print(f"{runs} runs each, load average now {' '.join(open('/proc/loadavg').read().split()[:3])}")
    for start, end in PHASES:
        key = (start, end)
        if key in seen["A"] and key in seen["B"]:
            ma, mb = statistics.median(seen["A"][key]), statistics.median(seen["B"][key])
            print(f"  {start + ' -> ' + end:38} A {ma:6.0f} us  B {mb:6.0f} us  B-A {mb - ma:+5.0f} us")
finally:
    shutil.rmtree(work, ignore_errors=True)
