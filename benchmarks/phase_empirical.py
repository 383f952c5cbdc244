"""Empirical minority-collapse phase diagram against the theory (target: 400 grid points in <= 2 minutes).

Run: python benchmarks/phase_empirical.py [--depth 3] [--lambdas 20] [--sizes 20] [--steps 3000] [--out DIR]

Trains one UFM per (lambda, n) point (bias-free MSE, majority classes [200, 100], two minority classes of size
n, lambda_W = lambda_H = lambda, the paper's SGD from a random start, width 16), batched per n
(init N(0, 1/width); nclab.report.empirical), then writes DIR/phase_empirical.{png,pdf}: the closed-form diagram
(nclab.report.phase) with every run on top and the empirical boundary. Prints the wall time, the agreement
with the theory (share of points in the same state) and PASS/FAIL for the time target.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from nclab.report.empirical import empirical_phase_figure, empirical_phase_grid
from nclab.report.figures import save_figure
from nclab.report.phase import phase_grid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--lambdas", type=int, default=20, help="grid points in lambda (log-spaced in [1e-4, 1e-1])")
    ap.add_argument("--sizes", type=int, default=20, help="minority sizes (log-spaced in [1, 200])")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--out", default="phase-empirical")
    ap.add_argument("--target", type=float, default=120.0, help="seconds for the whole grid")
    args = ap.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {platform.platform()}, {os.cpu_count()} cpus, load average {load:.1f}")
    lambdas = np.geomspace(1e-4, 1e-1, args.lambdas)
    sizes = np.geomspace(1, 200, args.sizes).round().astype(int)
    t0 = time.perf_counter()
    grid = empirical_phase_grid(depth=args.depth, lambdas=lambdas, sizes=sizes, steps=args.steps, width=args.width)
    total = time.perf_counter() - t0
    _, _, theory = phase_grid(grid["majority"], grid["minority_classes"], args.depth, lambdas=lambdas,
                              sizes=grid["sizes"])
    agree = float((theory == grid["states"]).mean())
    t1 = time.perf_counter()
    paths = save_figure(empirical_phase_figure(grid), os.path.join(args.out, "phase_empirical"))
    draw = time.perf_counter() - t1
    ok = total <= args.target
    print(f"M={args.depth}: {grid['runs']} grid points x {args.steps} SGD steps in {total:.1f} s "
          f"({total / grid['runs'] * 1e3:.0f} ms/point), figure {draw:.1f} s -> {paths[0]}; same state as the theory "
          f"at {agree:.0%} of the points [{'PASS' if ok else 'FAIL'} <= {args.target:g} s]")


if __name__ == "__main__":
    main()
