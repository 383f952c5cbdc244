"""Reproduce the CE scan table of theory.md sec. 4 (n = 1 per class, every lambda = gamma) and time solve_ce.

python benchmarks/ce_scan.py            # the table rows of theory.md
python benchmarks/ce_scan.py --json     # machine-readable
"""

from __future__ import annotations

import json
import sys
import time

from nclab.theory.ce import solve_ce
from nclab.theory.problem import make_problem

ROWS = [
    (3, 3, False),
    (3, 3, True),
    (3, 4, True),
    (4, 1, False),
    (4, 2, False),
    (4, 2, True),
    (4, 3, False),
    (4, 4, False),
    (5, 2, False),
    (5, 3, False),
    (6, 2, False),
    (6, 2, True),
    (6, 3, False),
    (5, 4, False),
    (6, 4, False),
]
GAMMAS = [0.001, 0.003, 0.01, 0.03, 0.1]


def main() -> None:
    out = []
    for K, M, bias in ROWS:
        cells = []
        for g in GAMMAS:
            pr = make_problem([1] * K, widths=[K] * M, lambda_w=g, lambda_h=g, bias=bias, loss="ce")
            t = time.perf_counter()
            s = solve_ce(pr)
            dt = time.perf_counter() - t
            pct = 100 * (s.objective - s.etf_objective) / s.etf_objective
            cells.append(
                {
                    "gamma": g,
                    "structure": s.best_structure,
                    "rank": s.best_rank,
                    "objective": s.objective,
                    "etf_objective": s.etf_objective,
                    "pct": pct,
                    "seconds": dt,
                }
            )
        out.append({"K": K, "M": M, "bias": bias, "cells": cells})
        if "--json" not in sys.argv:
            row = " | ".join(
                f"{c['structure']}({c['rank']}) {c['pct']:+.2f}% {c['seconds']:.2f}s" for c in cells
            )
            print(f"K={K} M={M} bias={str(bias):5s} {row}", flush=True)
    if "--json" in sys.argv:
        print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
