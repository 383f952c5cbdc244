"""Empirical minority-collapse phase diagram against the theory (target: 400 grid points in <= 2 minutes).

Run: python benchmarks/phase_empirical.py [--loss mse|ce] [--depth M] [--lambdas 20] [--sizes 20] [--steps S]
       [--out DIR]

Trains one UFM per (lambda, n) point (bias-free MSE, majority classes [200, 100], two minority classes of size
n, lambda_W = lambda_H = lambda, the paper's SGD from a random start, width 16), batched per n
(init N(0, 1/width); nclab.report.empirical), then writes DIR/phase_empirical.{png,pdf}: the closed-form diagram
(nclab.report.phase) with every run on top and the empirical boundary. Prints the wall time, the agreement
with the theory (share of points in the same state) and PASS/FAIL for the time target.

--loss ce (default depth 1, 3000 steps of SGD lr 4, momentum 0.9: nclab.report.empirical.RUN_CE): the same grid
under cross-entropy, the state read from whether the minority classifier rows merged, drawn over the CE
theory (nclab.report.phase.ce_phase_figure: exact at M = 1, best found at M >= 2) into DIR/phase_empirical_ce_M{M}
.{png,pdf}, next to the MSE figure. Also prints the distribution of the relative gap to the predicted
objective, how many runs ended above it (still descending / at a stationary point) and every disagreement with
its distance to the theory's boundary in grid steps. The time includes the predictions (one per point; at
M >= 2 a rank search each, ~0.14 s, most of the grid's time). Baseline (--sequential K): K points of the grid run
one by one with nclab.ufm.simulate in the same process (objectives checked equal to the batched runs').
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from nclab.report.empirical import compare_with_theory, empirical_phase_figure, empirical_phase_grid
from nclab.report.figures import save_figure
from nclab.report.phase import STATE_NAMES


def distinct_sizes(count: int, top: int = 200) -> np.ndarray:
    """``count`` distinct integers, as log-spaced in [1, top] as rounding allows (rounding a plain geomspace
    repeats 1 and 2, which would count the same runs twice)."""
    k = count
    while True:
        sizes = np.unique(np.geomspace(1, top, k).round().astype(int))
        if sizes.size >= count:
            return sizes
        k += 1


def grid_objective(grid: dict, k: int) -> float:
    return float(grid["objectives"].ravel()[k])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loss", choices=("mse", "ce"), default="mse")
    ap.add_argument("--depth", type=int, default=None, help="M (default 3 for MSE, 1 for CE)")
    ap.add_argument("--lambdas", type=int, default=20, help="grid points in lambda (log-spaced in [1e-4, 1e-1])")
    ap.add_argument("--sizes", type=int, default=20, help="distinct minority sizes (log-spaced in [1, 200])")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--lr", type=float, default=None, help="default: 0.1 (MSE), 4 (CE)")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--out", default="phase-empirical")
    ap.add_argument("--target", type=float, default=120.0, help="seconds for the whole grid")
    ap.add_argument("--sequential", type=int, default=10,
                    help="baseline: this many grid points (middle size, every other lambda) run one by one with "
                         "nclab.ufm.simulate in the same process (0: skip)")
    args = ap.parse_args()
    depth = args.depth if args.depth is not None else (3 if args.loss == "mse" else 1)
    if depth < 1:
        ap.error(f"--depth must be >= 1, got {depth}")
    if args.lambdas < 1 or not 1 <= args.sizes <= 200 or args.steps < 1:
        ap.error("--lambdas and --steps must be >= 1, --sizes in [1, 200]")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {platform.platform()}, {os.cpu_count()} cpus, load average {load:.1f}")
    lambdas = np.geomspace(1e-4, 1e-1, args.lambdas)
    sizes = distinct_sizes(args.sizes)
    t0 = time.perf_counter()
    opts = {} if args.lr is None else {"lr": args.lr}
    grid = empirical_phase_grid(depth=depth, lambdas=lambdas, sizes=sizes, steps=args.steps, width=args.width,
                                loss=args.loss, **opts)
    total = time.perf_counter() - t0
    if args.sequential > 0:
        from nclab.ufm.trainer import simulate

        L = len(lambdas)
        row = len(grid["sizes"]) // 2
        picks = [row * L + j for j in np.linspace(0, L - 1, min(args.sequential, L)).round().astype(int)]
        t1 = time.perf_counter()
        for k in picks:
            seq = simulate(grid["configs"][k])
            if abs(seq.final["objective"] - grid_objective(grid, k)) > 1e-9 * abs(seq.final["objective"]):
                print(f"  note: sequential objective {seq.final['objective']:.12g} differs from the batched run's")
        per = (time.perf_counter() - t1) / len(picks)
        print(f"baseline, same process: {len(picks)} of these points one by one (nclab.ufm.simulate, prediction "
              f"included) {per * 1e3:.0f} ms/point -> {per * grid['runs']:.0f} s for the grid; batched "
              f"{total / grid['runs'] * 1e3:.0f} ms/point ({per * grid['runs'] / total:.1f}x)")
    t1 = time.perf_counter()
    cmp = compare_with_theory(grid)
    theory_s = time.perf_counter() - t1
    name = "phase_empirical" if args.loss == "mse" else f"phase_empirical_ce_M{depth}"
    t1 = time.perf_counter()
    paths = save_figure(empirical_phase_figure(grid), os.path.join(args.out, name))
    draw = time.perf_counter() - t1
    ok = total <= args.target
    print(f"{args.loss.upper()} M={depth}: {grid['runs']} grid points x {args.steps} SGD steps in {total:.1f} s "
          f"({total / grid['runs'] * 1e3:.0f} ms/point), theory {theory_s:.1f} s, figure {draw:.1f} s -> {paths[0]}; "
          f"same state as the theory at {cmp['agree']:.1%} of the points [{'PASS' if ok else 'FAIL'} <= "
          f"{args.target:g} s]")
    q = ", ".join(f"q{int(k * 100)} {v:.2g}" for k, v in cmp["gap_quantiles"].items())
    print(f"relative gap to the predicted objective: {q}; outcomes {cmp['outcomes']}")
    names = {**STATE_NAMES, -1: "diverged"}
    kinds: dict = {}
    for p in cmp["disagree"]:
        kinds.setdefault((names[p["theory"]], names[p["run"]]), []).append(p["from_boundary"])
    for (th, run), steps in sorted(kinds.items()):
        print(f"disagreements theory '{th}' -> run '{run}': {len(steps)} point(s), {min(steps)}-{max(steps)} grid "
              f"step(s) from the theory's boundary")
    for p in cmp["disagree"]:
        print(f"  disagree: n={p['n']:4d} lambda={p['lambda']:.3g} theory '{names[p['theory']]}', run "
              f"'{names[p['run']]}' ({p['from_boundary']} grid step(s) from the theory's boundary; rel gap "
              f"{p['rel_gap']:.2g}, {p['outcome']})")
    above = [p for p in cmp["above"] if p["run"] == p["theory"]]
    print(f"  {len(above)} more point(s) in the theory's state but above the predicted objective"
          + (" (first 8):" if len(above) > 8 else (":" if above else "")))
    for p in above[:8]:
        print(f"    n={p['n']:4d} lambda={p['lambda']:.3g} rel gap {p['rel_gap']:.2g} ({p['outcome']})")


if __name__ == "__main__":
    main()
