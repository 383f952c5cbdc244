"""Minority-collapse phase diagram from the closed-form minimizer (bias-free MSE, all decays equal to lambda).

The majority classes keep their sizes; the minority classes (all of the same size n) shrink. For every
(lambda, n) on a grid the closed-form minimizer (nclab.theory's solve_mse, what ``nclab.predict`` wraps)
says which classes keep a nonzero classifier row and class mean: all of them, all but the minority
(minority collapse, theory.md sec. 3c), or none (the trivial solution). A point is one solve (~0.3 ms); the
state only grows with lambda, so each row of the grid needs O(log L) solves and a 4-depth diagram takes
a fraction of a second.
"""

from __future__ import annotations

import numpy as np

from nclab.theory.mse import solve_mse
from nclab.theory.problem import make_problem

NOT_COLLAPSED, MINORITY_COLLAPSED, TRIVIAL = 0, 1, 2
STATE_NAMES = {NOT_COLLAPSED: "minority classes active", MINORITY_COLLAPSED: "minority collapsed",
               TRIVIAL: "trivial (all zero)"}
DEFAULT_MAJORITY = (200, 100)  # the paper's imbalanced setting [200, 100, 50, 50], minority = the two 50s
DEFAULT_DEPTHS = (1, 2, 3, 6)


def phase_state(majority, n_minority: int, minority_classes: int, depth: int, lam: float) -> int:
    """NOT_COLLAPSED, MINORITY_COLLAPSED or TRIVIAL for one point (lambda_w = lambda_h = lam): which classes
    the closed-form minimizer (nclab.theory.solve_mse, what nclab.predict wraps) keeps active."""
    counts = list(majority) + [int(n_minority)] * minority_classes
    width = max(64, len(counts))  # no bottleneck: only the thresholds decide
    problem = make_problem(counts, depth=depth, widths=width, lambda_w=lam, lambda_h=lam)
    sol = solve_mse(problem)
    active = np.zeros(len(counts), dtype=bool)
    active[sol.mode_class] = sol.active  # bias-free: one mode per class (nclab.theory.predict.Prediction)
    if not active.any():
        return TRIVIAL
    return MINORITY_COLLAPSED if not active[len(majority):].all() else NOT_COLLAPSED


def phase_grid(majority=DEFAULT_MAJORITY, minority_classes: int = 2, depth: int = 3, *, lambdas=None, sizes=None):
    """States on a grid.

    Parameters
    ----------
    majority : sequence of ints, sizes of the classes that stay fixed
    minority_classes : int, how many classes share the varied size n
    depth : int, M
    lambdas : 1-D array, default 61 values log-spaced in [1e-4, 1e-1]
    sizes : 1-D int array, default ~40 log-spaced sizes in [1, max(majority)]

    Returns
    -------
    lambdas : ndarray (L,), sizes : ndarray (S,), states : int ndarray of shape (S, L)
    """
    lambdas = np.geomspace(1e-4, 1e-1, 61) if lambdas is None else np.asarray(lambdas, dtype=float)
    top = max(majority) if len(majority) else 100
    sizes = np.unique(np.geomspace(1, top, 40).round().astype(int)) if sizes is None else np.asarray(sizes, int)
    order = np.argsort(lambdas)
    states = np.empty((len(sizes), len(lambdas)), dtype=int)
    hints: dict = {}  # where the previous row switched: neighbouring rows switch nearby (a guess, checked)
    for i, n in enumerate(sizes):
        states[i, order] = _row(majority, int(n), minority_classes, depth, lambdas[order], hints)
    return lambdas, sizes, states


def _row(majority, n: int, minority_classes: int, depth: int, lambdas: np.ndarray, hints=None,
         state_fn=None) -> np.ndarray:
    """States along increasing lambdas with O(log L) solves. The set of active classes only shrinks as
    lambda grows (class k is active iff n_k > n_thr = N kappa / a*(M), and kappa = (N lambda^(M+1))^(1/M)
    grows with lambda; the rank budget is fixed), so "some minority class collapsed" and "all collapsed"
    each switch on once: two searches find where. ``hints`` {level: index} starts each search where the
    previous row switched, galloping out from there (2 solves when the switch did not move); the result
    never depends on the hint, only the number of solves does. ``state_fn`` (default :func:`phase_state`) has
    phase_state's signature (the CE diagram passes :func:`ce_phase_state` bound to its bias)."""
    cache: dict[int, int] = {}
    hints = {} if hints is None else hints
    L = len(lambdas)

    def state(i: int) -> int:
        if i not in cache:
            fn = phase_state if state_fn is None else state_fn
            cache[i] = fn(majority, n, minority_classes, depth, float(lambdas[i]))
        return cache[i]

    def at_least(i: int, level: int) -> bool:  # virtual ends: state(-1) below every level, state(L) above
        return i >= L or (i >= 0 and state(i) >= level)

    def first_at_least(level: int) -> int:
        lo, hi = 0, L  # the answer lies in [lo, hi]
        guess = hints.get(level)
        if guess is not None:
            step = 1
            if at_least(guess, level):  # the switch is at guess or to its left
                hi = guess
                while hi - step >= 0 and at_least(hi - step, level):
                    hi, step = hi - step, step * 2
                lo = max(hi - step + 1, 0)
            else:  # strictly to its right
                lo = guess + 1
                while lo + step - 1 < L and not at_least(lo + step - 1, level):
                    lo, step = lo + step, step * 2
                hi = min(lo + step - 1, L)
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if at_least(mid, level) else (mid + 1, hi)
        hints[level] = lo
        return lo

    row = np.full(L, NOT_COLLAPSED)
    row[first_at_least(MINORITY_COLLAPSED):] = MINORITY_COLLAPSED
    row[first_at_least(TRIVIAL):] = TRIVIAL
    return row


def split_counts(counts) -> tuple[list[int], int, int] | None:
    """(majority sizes, minority size, number of minority classes) of an imbalanced count list; None if
    balanced."""
    counts = [int(c) for c in counts]
    low = min(counts)
    majority = [c for c in counts if c != low]
    if not majority:
        return None
    return majority, low, len(counts) - len(majority)


# ---------------------------------------------------------------------------------------------------------------
# cross-entropy: the minority classes' classifier rows merge (they are not zeroed as under MSE)
# ---------------------------------------------------------------------------------------------------------------
CE_STATE_NAMES = {NOT_COLLAPSED: "minority rows apart", MINORITY_COLLAPSED: "minority rows merged",
                  TRIVIAL: "trivial (all zero)"}
#: the M >= 2 diagram runs one rank search per point: a coarser default grid than M = 1's exact one
CE_DEEP_GRID = (14, 12)  # lambdas, sizes


def ce_phase_state(majority, n_minority: float, minority_classes: int, depth: int, lam: float,
                   bias: bool = False) -> int:
    """NOT_COLLAPSED, MINORITY_COLLAPSED (the minority classes' classifier rows and class means merge) or
    TRIVIAL (W Hbar = 0) of the CE minimizer, lambda_W = lambda_H = lam, ``minority_classes`` >= 2 classes of
    ``n_minority`` samples (a real number is allowed).

    M = 1, exact (certified; nclab.theory.ce_imbalanced): zero is optimal iff ||Gam0||_2 <= lam with
    Gam0 = [sqrt(n_k)/N (p0 - e_k)]_k, p0 = uniform (no bias) or n/N (bias: the optimal b at zero logits);
    else the minority rows merge iff n <= N^2 lam^2. M >= 2: the rank search's best point (best found, not
    certified): zero, merged rows (relative distance <= DEEP_MERGE_RTOL) or apart.
    """
    from nclab.theory.ce_imbalanced import _deep_search, _rows_merged, deep_ranks

    counts = np.asarray(list(majority) + [float(n_minority)] * minority_classes, dtype=np.float64)
    K, N = counts.size, float(counts.sum())
    if depth == 1:
        p0 = counts / N if bias else np.full(K, 1.0 / K)
        gam0 = (np.sqrt(counts) / N)[None, :] * (p0[:, None] - np.eye(K))
        if np.linalg.norm(gam0, 2) <= lam:
            return TRIVIAL
        return MINORITY_COLLAPSED if n_minority <= N * N * lam * lam else NOT_COLLAPSED
    (_, Z, _), _, _ = _deep_search(counts, depth, lam, bias, deep_ranks(K, K), 1, 0)
    if not np.any(Z):
        return TRIVIAL
    members = np.arange(len(majority), K)
    return MINORITY_COLLAPSED if _rows_merged(counts, depth, Z, members) else NOT_COLLAPSED


def ce_phase_grid(majority=DEFAULT_MAJORITY, minority_classes: int = 2, depth: int = 1, *, lambdas=None,
                  sizes=None, bias: bool = False):
    """States of :func:`ce_phase_state` on a grid, as :func:`phase_grid` (same defaults at M = 1; at M >= 2
    CE_DEEP_GRID points, one rank search each, O(log L) per row assuming the state only grows with lambda, as
    it does at M = 1). Returns lambdas (L,), sizes (S,), states (S, L)."""
    nl, ns = (61, 40) if depth == 1 else CE_DEEP_GRID
    lambdas = np.geomspace(1e-4, 1e-1, nl) if lambdas is None else np.asarray(lambdas, dtype=float)
    top = max(majority) if len(majority) else 100
    sizes = np.unique(np.geomspace(1, top, ns).round().astype(int)) if sizes is None else np.asarray(sizes, int)
    order = np.argsort(lambdas)
    states = np.empty((len(sizes), len(lambdas)), dtype=int)
    hints: dict = {}

    def fn(maj, n, mc, M, lam):
        return ce_phase_state(maj, n, mc, M, lam, bias)

    for i, n in enumerate(sizes):
        states[i, order] = _row(majority, int(n), minority_classes, depth, lambdas[order], hints, fn)
    return lambdas, sizes, states


def ce_phase_setup(runs) -> dict | None:
    """Arguments of :func:`ce_phase_figure` for a set of runs, or None when no run uses CE: the first imbalanced
    CE run's majority and minority (else the paper's [200, 100] + 2), its bias, M = 1 (exact) and the smallest
    CE run depth >= 2 (best found; one rank search per point, ~3 s), a mark for every CE run with equal decays
    on that setting."""
    from nclab.report import runs as runlib

    ce_runs = [r for r in runs if r.config.get("loss") == "ce"]
    if not ce_runs:
        return None
    majority, minority_classes, bias = list(DEFAULT_MAJORITY), 2, bool(ce_runs[0].config.get("bias"))
    split = [r for r in ce_runs if r.counts and split_counts(r.counts) is not None and split_counts(r.counts)[2] >= 2]
    if split:
        majority, _, minority_classes = split_counts(split[0].counts)
        bias = bool(split[0].config.get("bias"))
    same = [r for r in split if split_counts(r.counts)[0] == majority and split_counts(r.counts)[2] == minority_classes
            and bool(r.config.get("bias")) == bias]
    deep = sorted({r.depth for r in ce_runs if r.depth and r.depth >= 2})[:1]  # ~3 s of searches per deep panel
    depths = [1] + deep
    marks = []
    for r in same:
        lams = [runlib.numeric(v) for v in np.atleast_1d(r.config.get("lambda_w", [])).tolist()]
        lams.append(runlib.numeric(r.config.get("lambda_h")))
        if r.depth not in depths or len(set(lams)) != 1 or lams[0] is None or not lams[0] > 0:
            continue
        marks.append((r.depth, float(lams[0]), split_counts(r.counts)[1], r.name))
    return {"depths": depths, "majority": majority, "minority_classes": minority_classes, "bias": bias,
            "marks": marks}


def ce_phase_figure(depths=(1,), majority=DEFAULT_MAJORITY, minority_classes: int = 2, *, bias: bool = False,
                    marks=(), lambdas=None, sizes=None):
    """CE minority-collapse phase diagram: minority class size n against lambda (= lambda_W = lambda_H), one
    panel per depth; M = 1 exact (certified), M >= 2 from the rank search (titled 'best found').
    ``marks``: (depth, lambda, n, label) of runs drawn on top."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from nclab.report import figures as figlib

    palette = ["#9ecae1", "#fd8d3c", "#bdbdbd"]  # apart, merged, trivial (the MSE diagram's colours)
    cmap = ListedColormap(palette)
    depths = list(depths)
    fig, axes = figlib._grid(1, len(depths), panel=(2.6, 2.6), gap=(0.55, 0.5), legend=1.9, title=True, left=0.7)
    for ax, M in zip(axes, depths):
        lam, n, states = ce_phase_grid(majority, minority_classes, M, lambdas=lambdas if M == 1 else None,
                                       sizes=sizes if M == 1 else None, bias=bias)
        ax.pcolormesh(lam, n, states, cmap=cmap, vmin=-0.5, vmax=2.5, shading="nearest")
        for m_depth, m_lam, m_n, _ in marks:
            if m_depth == M:
                ax.plot([m_lam], [m_n], marker="o", ms=7, mec="k", mfc="none", ls="none")
        figlib.style_phase_axes(ax, n, f"M = {M}" + (" (exact)" if M == 1 else " (best found)"))
    axes[0].set_ylabel(f"minority class size n ({minority_classes} classes)")
    handles = [Patch(color=c, label=CE_STATE_NAMES[s]) for s, c in enumerate(palette)]
    if marks:
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], marker="o", mfc="none", mec="k", ls="none", label="run on this setting"))
    figlib.phase_legend(axes[-1], handles)
    figlib._suptitle(fig, f"Minority collapse (CE{', bias' if bias else ', no bias'}), majority classes "
                     f"{list(majority)}")
    return fig
