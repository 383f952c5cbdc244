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


def _row(majority, n: int, minority_classes: int, depth: int, lambdas: np.ndarray, hints=None) -> np.ndarray:
    """States along increasing lambdas with O(log L) solves. The set of active classes only shrinks as
    lambda grows (class k is active iff n_k > n_thr = N kappa / a*(M), and kappa = (N lambda^(M+1))^(1/M)
    grows with lambda; the rank budget is fixed), so "some minority class collapsed" and "all collapsed"
    each switch on once: two searches find where. ``hints`` {level: index} starts each search where the
    previous row switched, galloping out from there (2 solves when the switch did not move); the result
    never depends on the hint, only the number of solves does."""
    cache: dict[int, int] = {}
    hints = {} if hints is None else hints
    L = len(lambdas)

    def state(i: int) -> int:
        if i not in cache:
            cache[i] = phase_state(majority, n, minority_classes, depth, float(lambdas[i]))
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
