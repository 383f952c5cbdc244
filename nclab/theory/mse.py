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
from nclab.theory.scalar import a_star, h_max, solve_modes_log, x_star

# relative tolerance for "equal" eigenvalues (ties at the rank cut make Grams non-unique)
_TIE_RTOL = 1e-12


@dataclass
class MSESolution:
    """Per-mode solution of the MSE problem; see :class:`nclab.theory.predict.Prediction`.

    Modes are sorted by target eigenvalue mu, largest first (ties: lower class index first).
    ``U`` (K x K) holds the eigenvectors of T as columns (with a bias); bias-free it is None (the
    eigenvectors are the class indicators: ``mode_class[i]`` is the class of mode i, see :meth:`eigvecs`).
    Everything is computed from logarithms (``log_a``, ``log_x``, ``log_s``), so settings whose a or x
    leave float64 (lambda = 5e-324) still give the right finite Grams.
    """

    problem: Problem
    mu: np.ndarray  # (K,) eigenvalues of the target Gram T
    U: np.ndarray | None  # (K, K) eigenvectors of T (columns), same order; None bias-free
    mode_class: np.ndarray | None  # (K,) class of each mode (bias-free only)
    a: np.ndarray  # (K,) a_i = N kappa / mu_i (inf where mu_i = 0; may over/underflow, see log_a)
    x: np.ndarray  # (K,) global minimizer of F_{a_i} (0 if inactive; may overflow, see log_x)
    s: np.ndarray  # (K,) squared singular values of W_M..W_1 per mode
    F: np.ndarray  # (K,) min F per mode (1 if inactive)
    active: np.ndarray  # (K,) bool, mode nonzero
    eligible: np.ndarray  # (K,) bool, a_i < a*(M): would be nonzero without the rank budget
    objective: float
    objective_zero: float
    gram_unique: bool
    uniqueness_note: str
    c: float  # N lambda_H (inf if beyond float64; see log_c)
    kappa: float  # (N lambda_H prod lambda_j)^(1/M) (see log_kappa)
    log_a: np.ndarray | None = None  # (K,) natural logs (inf where mu_i = 0)
    log_x: np.ndarray | None = None  # (K,) -inf where inactive
    log_s: np.ndarray | None = None  # (K,) -inf where inactive
    log_c: float = 0.0
    log_kappa: float = 0.0

    def eigvecs(self) -> np.ndarray:
        """U as a dense K x K matrix (bias-free: the permuted identity, built on demand)."""
        if self.U is not None:
            return self.U
        K = self.problem.K
        _check_dense(K, 1, "the K x K eigenvector matrix")
        return np.eye(K)[:, self.mode_class]


def _check_dense(K: int, count: int, what: str, advice: str = "") -> None:
    from nclab.theory.resources import check_memory

    check_memory(8.0 * count * K * K, f"{what} ({count} dense {K:,} x {K:,} float64)", advice)


def _check_problem(problem) -> Problem:
    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be an nclab.theory.Problem (see make_problem), got {type(problem).__name__}")
    return problem


def solve_mse(problem: Problem) -> MSESolution:
    """Solve the MSE problem (bias-free or with bias, any counts, depth, widths, lambdas).

    Bias-free the cost is O(K log K) time and O(K) memory (no K x K matrix); with a bias the K x K
    target Gram is diagonalized (O(K^3) time, refused before allocating when it cannot fit).
    """
    _check_problem(problem)
    if problem.loss != "mse":
        raise ValueError(f"solve_mse needs loss 'mse', got {problem.loss!r}")
    n = np.asarray(problem.counts, dtype=np.float64)
    K, M, N = problem.K, problem.M, float(problem.N)
    log_lam = np.log(np.asarray(problem.lambda_w, dtype=np.float64))
    log_c = float(np.log(N) + np.log(problem.lambda_h))
    log_kappa = float(np.mean(log_lam) + log_c / M)
    with np.errstate(over="ignore", under="ignore"):
        c, kappa = float(np.exp(log_c)), float(np.exp(log_kappa))

    if problem.bias:
        _check_dense(K, 5, "diagonalizing the centred target Gram D - n n^T/N (--bias)")
        T = np.diag(n) - np.outer(n, n) / N
        mu, U = np.linalg.eigh(T)
        del T
        order = np.argsort(-mu, kind="stable")
        mu, U = mu[order], U[:, order]
        # T 1 = 0 exactly; round-off leaves ~1e-16 N there, which must not count as a mode.
        mu = np.where(mu > 1e-12 * n.max(), mu, 0.0)
        mode_class = None
    else:
        mode_class = np.argsort(-n, kind="stable")
        mu = n[mode_class]
        U = None

    with np.errstate(divide="ignore"):
        la = np.where(mu > 0, np.log(N) + log_kappa - np.log(np.where(mu > 0, mu, 1.0)), np.inf)
    lx, Fmin, tie = solve_modes_log(la, M)
    eligible = np.isfinite(lx)
    R = problem.rank_budget
    active = eligible & (np.arange(K) < R)
    lx = np.where(active, lx, -np.inf)
    Fmin = np.where(active, Fmin, 1.0)
    ls = np.where(active, log_c + M * np.where(active, lx, 0.0), -np.inf)
    if np.any(ls > _LOG_MAX):
        big = float(np.max(ls)) / np.log(10)
        raise ValueError(
            f"the optimal weights are too large for float64: the end-to-end classifier W_M...W_1 would have "
            f"squared singular value ~1e{big:.0f} (lambda_w = {_fmt_list(problem.lambda_w)}, lambda_H = "
            f"{problem.lambda_h:g}, M = {M}); use larger weight decays"
        )
    with np.errstate(over="ignore", under="ignore"):
        a, x, s = np.exp(la), np.exp(lx), np.exp(ls)

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
        log_a=la, log_x=lx, log_s=ls, log_c=log_c, log_kappa=log_kappa,
    )


#: largest natural log of a value we present (exp(700) ~ 1e304 leaves headroom for sums and products)
_LOG_MAX = 700.0


def _fmt_list(values) -> str:
    vals = [f"{v:g}" for v in values]
    return vals[0] if len(set(vals)) == 1 else "[" + ", ".join(vals) + "]"


def _finite_or_none(v: float):
    return float(v) if np.isfinite(v) else None


def thresholds(problem: Problem, sol: MSESolution) -> dict:
    """Thresholds of theory.md sec. 2-3: a*(M), h_max, x*, and the minority-collapse class size.

    ``n_threshold`` (and ``c``, ``kappa``) are None where they exceed float64; ``log10_n_threshold``
    is always finite. Bias-free, ``classes_collapsed`` counts the classes with w_k = h_k = 0.
    """
    _check_problem(problem)
    M, N = problem.M, problem.N
    log_nthr = np.log(N) + sol.log_kappa - np.log(a_star(M))
    with np.errstate(over="ignore", under="ignore"):
        nthr = float(np.exp(log_nthr))
    out = {
        "a_star": a_star(M),
        "h_max": h_max(M),
        "x_star": x_star(M),
        "c": _finite_or_none(sol.c),
        "kappa": _finite_or_none(sol.kappa),
        "lambda_bar": problem.lambda_bar,
        "rank_budget": problem.rank_budget,
        # class n_k keeps a nonzero mode (bias-free) iff n_k > n_threshold and within the rank budget
        "n_threshold": _finite_or_none(nthr),
        "log10_n_threshold": float(log_nthr / np.log(10)),
        "modes_active": int(sol.active.sum()),
        "modes_cut_by_rank": int((sol.eligible & ~sol.active).sum()),
    }
    if not problem.bias:
        out["classes_collapsed"] = int((~sol.active).sum())
    return out


def geometry_name(problem: Problem, sol: MSESolution) -> str:
    """Name of the optimal configuration (theory.md sec. 3)."""
    _check_problem(problem)
    r, K = int(sol.active.sum()), problem.K
    if r == 0:
        return "trivial (all weights and features zero)"
    if problem.balanced and not problem.bias:
        return "orthogonal frame" if r == K else f"rank-{r} orthogonal projection (bottleneck, not unique)"
    if problem.balanced and problem.bias:
        return "simplex ETF" if r == K - 1 else f"rank-{r} projection inside 1-perp (bottleneck, not unique)"
    if not problem.bias:
        below, cut = K - int(sol.eligible.sum()), int((sol.eligible & ~sol.active).sum())
        parts = ([f"{below} minority classes collapsed"] if below else []) + (
            [f"{cut} classes cut by the rank budget"] if cut else [])
        return "general orthogonal frame" + (f" ({', '.join(parts)})" if parts else "")
    return (f"imbalanced with bias: rank-{r} classifier ({r} of the {K - 1} eigen-directions of the centred "
            "class-count matrix D - n n^T/N kept)")
