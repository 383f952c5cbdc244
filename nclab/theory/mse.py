"""Closed-form global minimizer of the deep linear UFM with MSE loss (theory.md sections 1-3).

The problem decouples over the eigenmodes of the target Gram T (T = D bias-free, T = D - n n^T/N with
an unregularized bias). Mode i with eigenvalue mu_i carries s_i = c x_i^M (a squared singular value
of W = W_M..W_1), x_i the global minimizer of F_{a_i}, a_i = N kappa / mu_i, and at most
R = min(K, widths) modes are nonzero. Everything is float64 and vectorized over modes: K = 1000
classes take about a millisecond.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nclab.theory.problem import Problem
from nclab.theory.scalar import a_star, h_max, solve_modes, x_star

# relative tolerance for "equal" eigenvalues (ties at the rank cut make Grams non-unique)
_TIE_RTOL = 1e-12


@dataclass
class MSESolution:
    """Per-mode solution of the MSE problem; see :class:`nclab.theory.predict.Prediction`.

    Modes are sorted by target eigenvalue mu, largest first (ties: lower class index first).
    ``U`` (K x K) holds the eigenvectors of T as columns; bias-free, ``U`` is a permutation and
    ``mode_class[i]`` is the class of mode i.
    """

    problem: Problem
    mu: np.ndarray  # (K,) eigenvalues of the target Gram T
    U: np.ndarray  # (K, K) eigenvectors of T (columns), same order
    mode_class: np.ndarray | None  # (K,) class of each mode (bias-free only)
    a: np.ndarray  # (K,) a_i = N kappa / mu_i (inf where mu_i = 0)
    x: np.ndarray  # (K,) global minimizer of F_{a_i} (0 if inactive)
    s: np.ndarray  # (K,) squared singular values of W_M..W_1 per mode
    F: np.ndarray  # (K,) min F per mode (1 if inactive)
    active: np.ndarray  # (K,) bool, mode nonzero
    eligible: np.ndarray  # (K,) bool, a_i < a*(M): would be nonzero without the rank budget
    objective: float
    objective_zero: float
    gram_unique: bool
    uniqueness_note: str
    c: float  # N lambda_H
    kappa: float  # (N lambda_H prod lambda_j)^(1/M)


def solve_mse(problem: Problem) -> MSESolution:
    """Solve the MSE problem (bias-free or with bias, any counts, depth, widths, lambdas)."""
    n = np.asarray(problem.counts, dtype=np.float64)
    K, M, N = problem.K, problem.M, float(problem.N)
    c = N * problem.lambda_h
    kappa = problem.lambda_bar * c ** (1.0 / M)

    if problem.bias:
        T = np.diag(n) - np.outer(n, n) / N
        mu, U = np.linalg.eigh(T)
        order = np.argsort(-mu, kind="stable")
        mu, U = mu[order], U[:, order]
        # T 1 = 0 exactly; round-off leaves ~1e-16 N there, which must not count as a mode.
        mu = np.where(mu > 1e-12 * n.max(), mu, 0.0)
        mode_class = None
    else:
        mode_class = np.argsort(-n, kind="stable")
        mu = n[mode_class]
        U = np.eye(K)[:, mode_class]

    with np.errstate(divide="ignore"):
        a = np.where(mu > 0, N * kappa / np.where(mu > 0, mu, 1.0), np.inf)
    x, Fmin, tie = solve_modes(a, M)
    eligible = x > 0
    R = problem.rank_budget
    active = eligible & (np.arange(K) < R)
    x = np.where(active, x, 0.0)
    Fmin = np.where(active, Fmin, 1.0)
    s = c * x**M

    objective = float(np.sum(mu * Fmin) / (2 * N))
    objective_zero = float(np.sum(mu) / (2 * N))

    notes = []
    n_elig = int(eligible.sum())
    if n_elig > R and abs(mu[R - 1] - mu[R]) <= _TIE_RTOL * mu[0]:
        notes.append(
            f"rank budget R = {R} cuts through modes of equal eigenvalue {mu[R - 1]:g}: any R-dim "
            "subspace of their span is optimal, only the spectra of the Grams are unique"
        )
    if np.any(tie & (np.arange(K) < R)):
        notes.append("a mode sits exactly at the threshold a*(M): zero and the nonzero point tie")
    return MSESolution(
        problem=problem, mu=mu, U=U, mode_class=mode_class, a=a, x=x, s=s, F=Fmin,
        active=active, eligible=eligible, objective=objective, objective_zero=objective_zero,
        gram_unique=not notes, uniqueness_note="; ".join(notes), c=c, kappa=kappa,
    )


def thresholds(problem: Problem, sol: MSESolution) -> dict:
    """Thresholds of theory.md sec. 2-3: a*(M), h_max, x*, and the minority-collapse class size."""
    M, N = problem.M, problem.N
    out = {
        "a_star": a_star(M),
        "h_max": h_max(M),
        "x_star": x_star(M),
        "c": sol.c,
        "kappa": sol.kappa,
        "lambda_bar": problem.lambda_bar,
        "rank_budget": problem.rank_budget,
        # class n_k keeps a nonzero mode (bias-free) iff n_k > n_threshold and within the rank budget
        "n_threshold": N * sol.kappa / a_star(M),
        "modes_active": int(sol.active.sum()),
        "modes_cut_by_rank": int((sol.eligible & ~sol.active).sum()),
    }
    if not problem.bias:
        out["classes_collapsed"] = int((~sol.active).sum())
    return out


def geometry_name(problem: Problem, sol: MSESolution) -> str:
    r, K = int(sol.active.sum()), problem.K
    if r == 0:
        return "trivial (all weights and features zero)"
    if problem.balanced and not problem.bias:
        return "orthogonal frame" if r == K else f"rank-{r} orthogonal projection (bottleneck, not unique)"
    if problem.balanced and problem.bias:
        return "simplex ETF" if r == K - 1 else f"rank-{r} projection inside 1-perp (bottleneck, not unique)"
    if not problem.bias:
        collapsed = K - r
        return "general orthogonal frame" + (f" ({collapsed} minority classes collapsed)" if collapsed else "")
    return f"imbalanced with bias: {r} modes of D - n n^T/N active"
