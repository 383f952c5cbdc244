"""Time the certified imbalanced-CE solver (M = 1) against generic methods on the same problem.

python benchmarks/ce_imbalanced.py                      # table
python benchmarks/ce_imbalanced.py --json               # machine-readable
python benchmarks/ce_imbalanced.py --cvx-time-limit 60  # seconds per cvxpy solve (default 60)

Second table: the generic convex solver Hong & Ling's public code uses (cvxpy on the K x K program
min sum_k (n_k/N) CE(Z e_k + b, k) + mu ||Z D^(1/2)||_*, log_sum_exp + normNuc, i.e. exponential cones and an
SDP), with its interior-point solver CLARABEL (K <= 30: it took 52 s at K = 30 on 2 shared cores) and with SCS
(first order; cvxpy's default for such problems in their pinned cvxpy 1.3), under a time limit. cvxpy is not a
dependency of nclab: ``pip install cvxpy`` for this table; without it a skip line is printed.

Settings: long-tailed counts n_k = round(n_max rho^k) (K = 10, 100), and a step imbalance (K = 100, two count
values), with and without bias, lambda_W = lambda_H = 5e-4. The generic method is scipy's L-BFGS-B on the
class-level factor model (W: K x K, Hbar: K x K, b; NC1 already applied, so it is the cheapest honest
generic formulation), float64, analytic gradient, tight tolerances, from a seeded random start; for K = 10
also on the full sample-level model (H with N columns). Reported: seconds, value, and the generic value's
relative distance to the certified one (negative would mean the generic method went below: never seen).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
from scipy.optimize import minimize

from nclab.theory.ce_imbalanced import solve_ce_imbalanced
from nclab.theory.problem import make_problem
from nclab.theory.resources import single_thread_blas

LAM = 5e-4


def counts_longtail(K, n_max=500, n_min=5):
    rho = (n_min / n_max) ** (1.0 / (K - 1))
    return [max(1, round(n_max * rho**k)) for k in range(K)]


def generic(problem, *, sample_level=False, seed=0, maxiter=100000):
    """L-BFGS-B on W (K x d), H (d x K or d x N), b: (1/N) sum CE + lambda_W/2 ||W||^2 + lambda_H/2 ||H||^2."""
    K, d = problem.K, problem.widths[0]
    n = np.asarray(problem.counts, dtype=np.float64)
    N = float(n.sum())
    lw, lh = problem.lambda_w[0], problem.lambda_h
    if sample_level:
        cols = np.repeat(np.arange(K), problem.counts)
        wcol = np.full(cols.size, 1.0 / N)
        hw = np.ones(cols.size)
    else:
        cols = np.arange(K)
        wcol = n / N
        hw = n  # ||H||^2 = sum_k n_k ||h_k||^2
    C = cols.size
    Y = np.zeros((K, C))
    Y[cols, np.arange(C)] = 1.0
    rng = np.random.default_rng(seed)
    x0 = np.concatenate([0.1 * rng.standard_normal(K * d), 0.1 * rng.standard_normal(d * C),
                         np.zeros(K) if problem.bias else np.zeros(0)])

    def fg(x):
        W = x[: K * d].reshape(K, d)
        H = x[K * d : K * d + d * C].reshape(d, C)
        L = W @ H
        if problem.bias:
            L = L + x[K * d + d * C :][:, None]
        mx = L.max(axis=0)
        E = np.exp(L - mx)
        S = E.sum(axis=0)
        ce = mx + np.log(S) - L[cols, np.arange(C)]
        val = float(wcol @ ce) + 0.5 * lw * float(np.sum(W * W)) + 0.5 * lh * float(np.sum(hw * np.sum(H * H, axis=0)))
        G = (E / S - Y) * wcol
        gW = G @ H.T + lw * W
        gH = W.T @ G + lh * H * hw
        parts = [gW.ravel(), gH.ravel()] + ([G.sum(axis=1)] if problem.bias else [])
        return val, np.concatenate(parts)

    t = time.perf_counter()
    res = minimize(fg, x0, jac=True, method="L-BFGS-B",
                   options={"maxiter": maxiter, "maxfun": 2 * maxiter, "ftol": 1e-16, "gtol": 1e-12, "maxcor": 20})
    return float(res.fun), time.perf_counter() - t, int(res.nit)


def timed_solve(p):
    """nclab's certified solve and its best time of three."""
    times = []
    for _ in range(3):
        t = time.perf_counter()
        s = solve_ce_imbalanced(p)
        times.append(time.perf_counter() - t)
    return s, min(times)


def main() -> None:
    rows = []
    settings = []
    for K in (10, 100):
        for bias in (False, True):
            settings.append((f"long tail 500..5, K={K}", counts_longtail(K), bias))
    for bias in (False, True):
        settings.append(("step 500 x 50 / 5 x 50, K=100", [500] * 50 + [5] * 50, bias))
    for name, counts, bias in settings:
        K = len(counts)
        p = make_problem(counts, widths=K, lambda_w=LAM, lambda_h=LAM, bias=bias, loss="ce")
        s, best = timed_solve(p)
        with single_thread_blas():  # the same BLAS setting for the generic method
            gval, gtime, git = generic(p)
            full = generic(p, sample_level=True) if K <= 10 else None
        row = {
            "setting": name, "K": K, "N": p.N, "bias": bias, "objective": s.objective, "rel_gap": s.rel_gap,
            "certified": s.certified, "rank": s.rank, "merged_sets": len(s.merged),
            "seconds": best, "generic_value": gval, "generic_seconds": gtime, "generic_iterations": git,
            "generic_minus_certified_rel": (gval - s.objective) / abs(s.objective),
        }
        if full is not None:
            row.update(full_value=full[0], full_seconds=full[1],
                       full_minus_certified_rel=(full[0] - s.objective) / abs(s.objective))
        rows.append(row)
    if "--json" in sys.argv:
        print(json.dumps(rows, indent=1))
        return
    print(f"{'setting':32s} {'bias':5s} {'f*':>14s} {'rel gap':>9s} {'ours s':>7s} {'generic s':>9s} "
          f"{'generic - f*':>12s} {'full-model s':>12s} {'full - f*':>10s}")
    for r in rows:
        full_s = f"{r['full_seconds']:12.2f}" if "full_seconds" in r else f"{'-':>12s}"
        full_d = f"{r['full_minus_certified_rel']:10.1e}" if "full_seconds" in r else f"{'-':>10s}"
        print(f"{r['setting']:32s} {str(r['bias']):5s} {r['objective']:14.10f} {r['rel_gap']:9.1e} "
              f"{r['seconds']:7.3f} {r['generic_seconds']:9.2f} {r['generic_minus_certified_rel']:12.1e} "
              f"{full_s} {full_d}")
    worst = max(r["seconds"] for r in rows if r["K"] == 100)
    print(f"\nK = 100 certified in at most {worst:.3f} s (goal 1 s); every generic value >= f*: "
          f"{all(r['generic_minus_certified_rel'] >= -1e-12 for r in rows)}")


def cvx_solve(problem, solver: str, time_limit: float):
    """Hong & Ling's convex program (ana_utils.solve_cvx in their repository, with nclab's free or absent bias
    instead of their l_b ||b||^2) through cvxpy; returns (value, seconds, status)."""
    import cvxpy as cp

    n = np.asarray(problem.counts, dtype=np.float64)
    K, N = n.size, float(n.sum())
    mu = float(np.sqrt(problem.lambda_w[0] * problem.lambda_h))
    Z = cp.Variable((K, K))
    L = Z + cp.Variable((K, 1)) @ np.ones((1, K)) if problem.bias else Z
    ce = cp.log_sum_exp(L, axis=0) - cp.sum(cp.multiply(np.eye(K), L), axis=0)
    prob = cp.Problem(cp.Minimize(cp.sum(cp.multiply(ce, n)) / N + mu * cp.normNuc(Z @ np.diag(np.sqrt(n)))))
    opts = {"time_limit_secs": time_limit} if solver == "SCS" else {"time_limit": time_limit}
    t = time.perf_counter()
    try:
        prob.solve(solver=solver, **opts)
    except Exception as exc:  # cvxpy raises SolverError when a solver stops without a point
        return float("nan"), time.perf_counter() - t, f"failed: {type(exc).__name__}"
    return float(prob.value) if prob.value is not None else float("nan"), time.perf_counter() - t, str(prob.status)


def cvx_table(time_limit: float) -> list[dict] | None:
    try:
        import cvxpy  # noqa: F401
    except ImportError:
        print("skip: cvxpy is not installed (pip install cvxpy): no comparison with Hong & Ling's generic solver")
        return None
    import warnings

    warnings.filterwarnings("ignore", message="Solution may be inaccurate")
    rows = []
    for K in (10, 100):
        for bias in (False, True):
            counts = counts_longtail(K)
            p = make_problem(counts, widths=K, lambda_w=LAM, lambda_h=LAM, bias=bias, loss="ce")
            s, best = timed_solve(p)
            for solver in (("CLARABEL", "SCS") if K <= 30 else ("SCS",)):
                val, sec, status = cvx_solve(p, solver, time_limit)
                rows.append({"K": K, "bias": bias, "objective": s.objective, "lower_bound": s.lower_bound,
                             "rel_gap": s.rel_gap, "seconds": best, "solver": solver, "cvx_value": val,
                             "cvx_seconds": sec, "cvx_status": status,
                             "cvx_minus_certified_rel": (val - s.objective) / abs(s.objective),
                             "cvx_below_lower_bound": bool(val < s.lower_bound - 1e-12 * abs(s.lower_bound))})
    return rows


def print_cvx(rows) -> None:
    print(f"\nagainst cvxpy (Hong & Ling's generic method), long tail 500..5, lambda = {LAM:g}, time limit per solve:")
    print(f"{'K':>4s} {'bias':5s} {'f* (certified)':>15s} {'ours s':>7s} {'solver':9s} {'cvxpy s':>8s} "
          f"{'status':18s} {'cvxpy - f*':>11s} {'speed-up':>8s}")
    for r in rows:
        print(f"{r['K']:4d} {str(r['bias']):5s} {r['objective']:15.11f} {r['seconds']:7.3f} {r['solver']:9s} "
              f"{r['cvx_seconds']:8.2f} {r['cvx_status'][:18]:18s} {r['cvx_minus_certified_rel']:11.1e} "
              f"{r['cvx_seconds'] / r['seconds']:7.0f}x")
    print("every cvxpy value >= nclab's certified lower bound: "
          f"{not any(r['cvx_below_lower_bound'] for r in rows)}")


if __name__ == "__main__":
    limit = 60.0
    if "--cvx-time-limit" in sys.argv:
        limit = float(sys.argv[sys.argv.index("--cvx-time-limit") + 1])
    main()
    cvx_rows = cvx_table(limit)
    if cvx_rows is not None:
        if "--json" in sys.argv:
            print(json.dumps(cvx_rows, indent=1))
        else:
            print_cvx(cvx_rows)
