"""Benchmark: closed-form prediction for K = 1000 imbalanced classes, M = 6 (target <= 10 ms).

Run: python benchmarks/theory.py
Baseline for comparison: the published code solves a sympy equation per class, 0.06-0.15 s each
(performance.md), i.e. 60-150 s for K = 1000.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from nclab import predict


def best_time(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    print(f"machine: {platform.platform()}, {os.cpu_count()} cpus, torch threads {torch.get_num_threads()}")
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 2000, size=args.classes).tolist()
    # equal lambdas chosen so that the minority-collapse threshold n_thr = N kappa / a*(M) sits at the
    # median class size: half the classes collapse, half keep a mode (both branches are exercised)
    from nclab.theory.scalar import a_star

    N, M = sum(counts), args.depth
    lam = (float(np.median(counts)) * a_star(M) / N) ** (M / (M + 1)) / N ** (1 / (M + 1))
    kw = dict(depth=M, widths=2048, lambda_w=lam, lambda_h=lam)
    predict(counts, **kw)  # warm-up (imports, caches)
    best, med = best_time(lambda: predict(counts, **kw), args.repeat)
    p = predict(counts, **kw)
    print(f"predict K={args.classes} imbalanced, M={args.depth}: best {best * 1e3:.2f} ms, median {med * 1e3:.2f} ms "
          f"({int(p.active.sum())} active, {args.classes - int(p.active.sum())} collapsed)")
    bestb, medb = best_time(lambda: predict(counts, **kw, bias=True), max(3, args.repeat // 4))
    print(f"predict K={args.classes} imbalanced with bias (eigh of T), M={args.depth}: best {bestb * 1e3:.2f} ms")
    bestg, _ = best_time(lambda: predict(counts, **kw).WWt, 5)
    print(f"predict + dense K x K Gram WWt: best {bestg * 1e3:.2f} ms")
    published = 0.06 * args.classes
    print(f"published sympy approach (0.06-0.15 s per class): >= {published:.0f} s "
          f"-> speed-up >= {published / best:,.0f}x")
    print(f"target <= 10 ms: {'PASS' if best <= 0.010 else 'FAIL'}")


if __name__ == "__main__":
    main()
