"""Benchmark (issue 14): nclab predict at 1,000 to 100,000 classes, against bare `python -c "import numpy, scipy"`.

Run: python benchmarks/theory_scale.py [--quick]

Every case runs in a fresh process (peak memory = its ru_maxrss). Goals:
  K = 1,000 `nclab predict --json`: wall within a few times the bare start-up, output under 1 MB;
  K = 20,000 with and without bias: peak under 1.5 GB;
  K = 100,000, M = 1..6, imbalanced, bias-free and bias: compute <= 2 s, peak <= 1 GB;
  balanced CE (ETF structure) at K = 100,000 likewise; the CE search states its largest K.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

COMPUTE = """
import json, resource, sys, time
import numpy as np
kw = json.loads(sys.argv[1])
K = kw.pop("K")
if kw.pop("imbalanced"):
    counts = np.maximum(5, np.round(500 * 0.01 ** (np.arange(K) / (K - 1)))).astype(int)
else:
    counts = np.full(K, kw.pop("per_class", 10))
from nclab.theory import predict
t0 = time.perf_counter()
p = predict(counts, **kw)
c = p.classes
t1 = time.perf_counter()
d = p.to_dict()
t2 = time.perf_counter()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"compute_s": t1 - t0, "to_dict_s": t2 - t1, "geometry": p.geometry, "peak_mb": peak,
                  "modes": int(p._parts[0].nmodes)}))
"""


def run(cmd, **kw):
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, **kw)
    wall = time.perf_counter() - t0
    if out.returncode:
        raise SystemExit(f"{cmd[:4]} failed: {out.stderr[-2000:]}")
    return out, wall


def peak_of(cmd) -> tuple[float, float, int]:
    """(wall s, peak MB, stdout bytes) of a command, via /usr/bin/time when present."""
    with tempfile.NamedTemporaryFile("r", suffix=".txt") as f:
        timer = ["/usr/bin/time", "-f", "%M", "-o", f.name] if os.path.exists("/usr/bin/time") else []
        out, wall = run(timer + cmd)
        peak = float(f.read().strip().splitlines()[-1]) / 1024 if timer else float("nan")
    return wall, peak, len(out.stdout.encode())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="M = 1, 3, 6 only and fewer repeats")
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()}")
    py = sys.executable
    bare = min(run([py, "-c", "import numpy, scipy"])[1] for _ in range(3))
    print(f"baseline: bare `python -c 'import numpy, scipy'` {bare:.2f} s (best of 3)\n")

    files = {}
    for K in (1000, 100000):
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
            f.write("\n".join(str(int(max(5, round(500 * 0.01 ** (k / (K - 1)))))) for k in range(K)))
            files[K] = f.name
    print("nclab predict --counts-file F --json, imbalanced counts 500..5 (goal at K = 1,000: a few times bare "
          "start-up, < 1 MB)")
    runs = [(1000, ["-M", "3", "--width", "1000"]),
            (1000, ["-M", "6", "--width", "1000", "--lambda-w", "1e-6", "--lambda-h", "1e-6"]),
            (1000, ["-M", "3", "--width", "1000", "--bias"]),
            (100000, ["-M", "6", "--width", "200000", "--lambda-w", "1e-6", "--lambda-h", "1e-6"]),
            (100000, ["-M", "6", "--width", "200000", "--lambda-w", "1e-6", "--lambda-h", "1e-6", "--bias"])]
    for K, extra in runs:
        cmd = [py, "-m", "nclab", "predict", "--counts-file", files[K], *extra, "--json"]
        wall, peak, size = min((peak_of(cmd) for _ in range(2)), key=lambda t: t[0])
        print(f"  K = {K:>7,} {' '.join(extra):60s} {wall:5.2f} s = {wall / bare:4.1f} x bare, peak {peak:5.0f} MB, "
              f"output {size / 1e6:6.2f} MB")
    for f in files.values():
        os.remove(f)

    cases = [("K = 20,000 imbalanced, M = 3", dict(K=20000, imbalanced=True, depth=3, widths=40000,
                                                    lambda_w=1e-6, lambda_h=1e-6, bias=b)) for b in (False, True)]
    Ms = (1, 3, 6) if args.quick else (1, 2, 3, 4, 5, 6)
    cases += [(f"K = 100,000 imbalanced, M = {M}", dict(K=100000, imbalanced=True, depth=M, widths=200000,
                                                        lambda_w=1e-6, lambda_h=1e-6, bias=b))
              for b in (False, True) for M in Ms]
    cases += [(f"K = 100,000 balanced CE, M = {M}", dict(K=100000, imbalanced=False, per_class=10, depth=M,
                                                         widths=100000, lambda_w=1e-7, lambda_h=1e-7, loss="ce"))
              for M in (1, 3)]
    print("\nAPI in a fresh process (compute = predict + per-class table; goals: K = 20,000 peak < 1.5 GB; "
          "K = 100,000 compute <= 2 s, peak <= 1 GB)")
    for name, kw in cases:
        out, _ = run([py, "-c", COMPUTE, json.dumps(kw)], cwd=ROOT)
        r = json.loads(out.stdout)
        goal = (r["peak_mb"] < 1536) if kw["K"] == 20000 else (r["compute_s"] <= 2 and r["peak_mb"] <= 1024)
        print(f"  {name:34s} bias={str(kw.get('bias', False)):5s} compute {r['compute_s']:6.3f} s, to_dict "
              f"{r['to_dict_s']:5.2f} s, peak {r['peak_mb']:6.0f} MB, {r['modes']:6d} modes  "
              f"{'ok' if goal else 'MISSED'}  ({r['geometry'][:50]})")
    from nclab.theory.ce import CE_SEARCH_MAX_K

    print(f"\nCE low-rank search: runs for K <= {CE_SEARCH_MAX_K} (dense K x K factors); beyond it the structured "
          "candidates are compared in O(K) and search=True is refused with that reason")


if __name__ == "__main__":
    main()
