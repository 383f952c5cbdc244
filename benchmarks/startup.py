"""Benchmark: CLI start-up against bare Python (target: <= 3x ``python -c "import numpy, scipy"``).

Run: python benchmarks/startup.py [--repeats 7]

Each command runs in a fresh interpreter, the commands interleaved round-robin in one run (so machine load
hits all alike), median wall time per command. The CLI runs as ``python -m nclab`` (the same code as the
``nclab`` script). Also reports which heavy modules (torch, matplotlib) each command loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

BASE = ["-c", "import numpy, scipy"]
PROBE = ("import runpy, sys, json\nsys.argv = ['nclab'] + {args!r}\ntry:\n    runpy.run_module('nclab', "
         "run_name='__main__')\nexcept SystemExit:\n    pass\nsys.stdout.flush()\n"
         "sys.stderr.write(json.dumps([m for m in ('torch', 'matplotlib') if m in sys.modules]))")
COMMANDS = {
    "nclab --help": ["--help"],
    "nclab predict": ["predict", "--counts", "200,100,50,50", "-M", "3"],
    "nclab runs": ["runs", "--json", "EMPTY"],  # an empty folder: start-up, not a scan
}


def wall(argv: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, *argv], capture_output=True, text=True)
    return time.perf_counter() - t0, out.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--target", type=float, default=3.0, help="PASS when every command is <= target x bare")
    args = ap.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {platform.platform()}, {os.cpu_count()} cpus, load average {load:.1f}, python "
          f"{platform.python_version()}")
    empty = tempfile.mkdtemp(prefix="nclab-startup-")
    runs = {"bare python -c 'import numpy, scipy'": BASE}
    runs.update({name: ["-c", PROBE.format(args=[empty if x == "EMPTY" else x for x in a])]
                 for name, a in COMMANDS.items()})
    times: dict[str, list[float]] = {k: [] for k in runs}
    heavy: dict[str, list[str]] = {}
    for argv in runs.values():  # warm the file cache once
        wall(argv)
    for _ in range(args.repeats):
        for name, argv in runs.items():
            t, err = wall(argv)
            times[name].append(t)
            if name in COMMANDS:
                try:
                    heavy[name] = json.loads(err.strip().splitlines()[-1])
                except (ValueError, IndexError):
                    heavy[name] = ["?"]
    base = statistics.median(times[next(iter(runs))])
    ok = True
    for name, ts in times.items():
        med = statistics.median(ts)
        line = f"{name:40s} median {med * 1e3:7.0f} ms (min {min(ts) * 1e3:5.0f} ms) = {med / base:4.2f}x bare"
        if name in COMMANDS:
            good = med <= args.target * base and not heavy.get(name)
            ok &= good
            line += (f", imports {', '.join(heavy[name]) or 'neither torch nor matplotlib'} "
                     f"[{'PASS' if good else 'FAIL'} <= {args.target:g}x, no torch]")
        print(line)
    os.rmdir(empty)
    print("PASS" if ok else "FAIL")


if __name__ == "__main__":
    main()
