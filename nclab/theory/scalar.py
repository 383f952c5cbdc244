"""The scalar problem behind every MSE mode: F_a(x) = 1/(1 + x^M) + M a x on x >= 0 (theory.md sec. 2).

A mode with target eigenvalue mu and a = N kappa / mu contributes mu/(2N) * min_x F_a(x). Everything
here is vectorized over modes and float64; the nonzero minimizer is found by bracketed bisection on
log h(x) = log a, h(x) = x^(M-1)/(1+x^M)^2, inside [x*, a^(-1/(M+1))] where h is strictly decreasing,
and then *compared with x = 0* (for M >= 2 zero is always a strict local minimum).
"""

from __future__ import annotations

import numpy as np


def a_star(M: int) -> float:
    """Threshold a*(M): the nonzero branch beats x = 0 iff a < a*(M) (tie at equality)."""
    if M == 1:
        return 1.0
    return (M - 1) ** ((M - 1) / M) / M**2


def x_star(M: int) -> float:
    """Location (M-1)^(1/M) of the nonzero minimizer exactly at a = a*(M) (0 for M = 1)."""
    return 0.0 if M == 1 else (M - 1) ** (1.0 / M)


def h_max(M: int) -> float:
    """Peak of h(x) = x^(M-1)/(1+x^M)^2: a positive stationary point exists iff a <= h_max."""
    if M == 1:
        return 1.0
    xp = ((M - 1) / (M + 1)) ** (1.0 / M)
    return xp ** (M - 1) / (1 + xp**M) ** 2


def F(x: np.ndarray, a: np.ndarray, M: int) -> np.ndarray:
    """F_a(x) = 1/(1 + x^M) + M a x, elementwise."""
    x = np.asarray(x, dtype=np.float64)
    return 1.0 / (1.0 + x**M) + M * np.asarray(a, dtype=np.float64) * x


def larger_root(a: np.ndarray, M: int, iters: int = 200) -> np.ndarray:
    """Larger root of h(x) = a for a < a*(M) (M >= 2), elementwise; NaN where a >= a*.

    Bisection in log x on [x*, a^(-1/(M+1))]: h(x*) = a* > a and h(x) < x^(-M-1) <= a at the upper
    end, and h is decreasing on the bracket, so the root is unique there. Stops when the bracket
    has shrunk to float64 resolution.
    """
    a = np.asarray(a, dtype=np.float64)
    ok = a < a_star(M)
    la = np.log(np.where(ok, a, 1.0))
    lo = np.full(a.shape, np.log(x_star(M)))
    hi = np.where(ok, -la / (M + 1), lo)
    hi = np.maximum(hi, lo)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        # log h(e^t) - log a, computed stably: (M-1) t - 2 log(1 + e^{M t}) - log a
        g = (M - 1) * mid - 2.0 * np.logaddexp(0.0, M * mid) - la
        lo = np.where(g > 0, mid, lo)
        hi = np.where(g > 0, hi, mid)
        if np.all(hi - lo <= 4e-16 * np.maximum(1.0, np.abs(hi))):
            break
    return np.where(ok, np.exp(0.5 * (lo + hi)), np.nan)


def solve_modes(a: np.ndarray, M: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Global minimizer of F_a over x >= 0 for each a (a may be +inf for a zero-weight mode).

    Returns
    -------
    x : ndarray, the global minimizer (0 where zero wins or ties; see ``tie``)
    Fmin : ndarray, min F_a = F_a(x)
    tie : ndarray of bool, True where x = 0 and a nonzero x attain the minimum together
        (a == a*(M) for M >= 2, to 1e-12 relative); there the minimizer is not unique.
    """
    a = np.asarray(a, dtype=np.float64)
    if M == 1:
        with np.errstate(divide="ignore"):
            x = np.where(a < 1.0, 1.0 / np.sqrt(np.where(a < 1.0, a, 1.0)) - 1.0, 0.0)
        Fmin = np.where(a < 1.0, 2.0 * np.sqrt(np.where(a < 1.0, a, 1.0)) - a, 1.0)
        return x, Fmin, np.zeros(a.shape, dtype=bool)
    ast = a_star(M)
    x = np.nan_to_num(larger_root(a, M), nan=0.0)
    Fx = np.where(x > 0, F(x, np.where(np.isfinite(a), a, 0.0), M), 1.0)
    # Compare the nonzero stationary point with zero explicitly (the published code does not).
    better = (x > 0) & (Fx < 1.0)
    tie = np.abs(a - ast) <= 1e-12 * ast
    x = np.where(better, x, 0.0)
    Fmin = np.where(better, Fx, 1.0)
    return x, Fmin, tie
