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
    ``U`` is None: bias-free the eigenvectors are the class indicators (``mode_class[i]`` is the class of
    mode i); with a bias they are held in structured form by ``basis`` (structure.SecularBasis: secular roots
    and blocks of equal counts), see :meth:`eigvecs`. With a bias, ``mu`` is NaN for eigenvalues that were
    not computed because they cannot matter (beyond the rank budget or below the threshold, many groups).
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
    basis: object = None  # with a bias: structure.SecularBasis of the active modes (no K x K matrix)

    def eigvecs(self) -> np.ndarray:
        """The active eigenvectors as a dense K x r matrix, columns in the order of ``mu`` (built on demand;
        bias-free: class indicators)."""
        K = self.problem.K
        if self.mode_class is not None:
            _check_dense(K, 1, "the K x K eigenvector matrix")
            return np.eye(K)[:, self.mode_class[self.active]]
        # the basis lists roots first, then blocks; put each column at its mode's place in eigen-order (mu)
        Q, mode = self.basis.vectors()
        offset = np.arange(mode.size) - np.searchsorted(mode, mode)  # column index within its mode
        out = np.empty_like(Q)
        out[:, self.basis.first[mode] + offset] = Q
        return out


def _check_dense(K: int, count: int, what: str, advice: str = "") -> None:
    from nclab.theory.resources import check_memory

    check_memory(8.0 * count * K * K, f"{what} ({count} dense {K:,} x {K:,} float64)", advice)


def _check_problem(problem) -> Problem:
    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be an nclab.theory.Problem (see make_problem), got {type(problem).__name__}")
    return problem


def solve_mse(problem: Problem) -> MSESolution:
    """Solve the MSE problem (bias-free or with bias, any counts, depth, widths, lambdas).

    Bias-free the cost is O(K log K) time and O(K) memory (no K x K matrix); with a bias the target Gram
    D - n n^T/N is diagonal plus rank one: its eigenvalues come from the secular equation (O(G) per root, G
    distinct class counts, only the roots that matter), again O(K) memory.
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

    basis = None
    if problem.bias:
        mu, bias_modes = _bias_spectrum(n, N, problem.rank_budget, float(np.log(N) + log_kappa - np.log(a_star(M))))
        mode_class = None
    else:
        mode_class = np.argsort(-n, kind="stable")
        mu = n[mode_class]
        bias_modes = None
    U = None

    known = np.isfinite(mu)  # with a bias, eigenvalues that cannot matter are not computed (NaN)
    with np.errstate(divide="ignore", invalid="ignore"):
        la = np.where(known & (mu > 0), np.log(N) + log_kappa - np.log(np.where(known & (mu > 0), mu, 1.0)), np.inf)
    ula, inv = np.unique(la, return_inverse=True)  # equal counts share one scalar problem: solve each once
    lx, Fmin, tie = (v[inv.reshape(-1)] for v in solve_modes_log(ula, M))
    eligible = np.isfinite(lx)
    if bias_modes is not None:
        eligible = np.where(known, eligible, bias_modes["eligible"])
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

    if bias_modes is None:
        objective = float(np.sum(mu * Fmin) / (2 * N))
        objective_zero = float(np.sum(mu) / (2 * N))
    else:  # tr T = sum_k n_k (1 - n_k/N); inactive modes keep F = 1
        trace = float(np.sum(n * (1.0 - n / N)))
        objective = float((trace - np.sum(np.where(active, mu * (1.0 - Fmin), 0.0))) / (2 * N))
        objective_zero = trace / (2 * N)
        basis = _bias_basis(n, bias_modes, int(active.sum()))

    notes = []
    n_elig = int(eligible.sum())
    if n_elig > R and known[R] and abs(mu[R - 1] - mu[R]) <= _TIE_RTOL * mu[0]:
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
        log_a=la, log_x=lx, log_s=ls, log_c=log_c, log_kappa=log_kappa, basis=basis,
    )


#: with a bias, every secular root is computed when there are at most this many distinct class counts
ALL_ROOTS_MAX_GROUPS = 4096


def _bias_spectrum(n: np.ndarray, N: float, R: int, log_mu_thr: float):
    """Eigenvalues of T = D - n n^T/N, descending, without a K x K matrix (structure.py).

    Returns mu (K,) (NaN where a root was not computed: it is then beyond the rank budget or below the
    threshold and never active) and a dict: per eigenmode ``kind`` (0 block, 1 root, 2 the zero root),
    ``group``/``gap`` index, ``eligible`` for the uncomputed roots, and the groups.
    """
    from nclab.theory.structure import _secular

    K = n.size
    neg, inv, mg = np.unique(-n, return_inverse=True, return_counts=True)
    cg, inv = -neg, inv.reshape(-1)
    G = cg.size
    # order: block 0 (c_0, m_0 - 1 times), root in gap 0, block 1, root in gap 1, ..., block G-1, zero root
    kind = np.empty(K, dtype=np.int8)
    ref = np.empty(K, dtype=np.int64)
    pos = 0
    for g in range(G):
        b = int(mg[g]) - 1
        kind[pos:pos + b], ref[pos:pos + b] = 0, g
        pos += b
        kind[pos], ref[pos] = (1, g) if g < G - 1 else (2, g)
        pos += 1
    mu = np.full(K, np.nan)
    blk = kind == 0
    mu[blk] = cg[ref[blk]]
    mu[kind == 2] = 0.0
    roots = np.flatnonzero(kind == 1)
    gap = ref[roots]
    thr = np.exp(log_mu_thr) if log_mu_thr < 700 else np.inf
    if G <= ALL_ROOTS_MAX_GROUPS:
        need = np.ones(roots.size, dtype=bool)
    else:  # roots that may be active or are shown, and the one straddling the threshold
        need = ((roots < R + 8) & (cg[gap] > thr)) | ((cg[gap + 1] < thr) & (thr < cg[gap]))
    o, sgn, tau, _ = _secular(cg, mg.astype(np.float64), N, gap[need])
    mu[roots[need]] = o + sgn * tau
    eligible = np.zeros(K, dtype=bool)
    eligible[roots] = cg[gap + 1] >= thr  # only read where mu is NaN
    solved = np.zeros((3, G))  # (origin, sign, tau) per gap, for the basis
    solved[:, gap[need]] = o, sgn, tau
    return mu, {"kind": kind, "ref": ref, "eligible": eligible, "cg": cg, "mg": mg, "group_of": inv,
                "solved": solved}


def _bias_basis(n: np.ndarray, modes: dict, r: int):
    """SecularBasis of the first r eigenmodes (a block cut by the rank budget keeps its first q + 1 classes)."""
    from nclab.theory.structure import SecularBasis

    kind, ref = modes["kind"][:r], modes["ref"][:r]
    gaps = ref[kind == 1]
    order = np.argsort(modes["group_of"], kind="stable")
    starts = np.concatenate([[0], np.cumsum(modes["mg"])])
    q = np.bincount(ref[kind == 0], minlength=modes["cg"].size)
    blocks = [order[starts[g]:starts[g] + q[g] + 1] for g in np.flatnonzero(q)]
    # block modes appear in eigen-order interleaved with roots; the basis lists roots first, then blocks
    basis = SecularBasis(n, gaps, blocks, roots=modes["solved"][:, gaps])
    pos_blk = np.flatnonzero(kind == 0)
    _, first_blk = np.unique(ref[pos_blk], return_index=True)
    basis.first = np.concatenate([np.flatnonzero(kind == 1), pos_blk[first_blk]]).astype(np.int64)
    return basis


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
