"""The scalar problem behind every MSE mode: F_a(x) = 1/(1 + x^M) + M a x on x >= 0 (theory.md sec. 2).

A mode with target eigenvalue mu and a = N kappa / mu contributes mu/(2N) * min_x F_a(x). Everything
here is vectorized over modes and float64; the nonzero minimizer is found by bracketed bisection on
log h(x) = log a, h(x) = x^(M-1)/(1+x^M)^2, inside [x*, a^(-1/(M+1))] where h is strictly decreasing,
and then *compared with x = 0* (for M >= 2 zero is always a strict local minimum).
"""

from __future__ import annotations

import numpy as np

from nclab.theory.problem import MAX_INT, check_int


def _depth(M) -> int:
    return check_int(M, "depth M", 1, MAX_INT)


def _as_a(a, name: str = "a", low_ok: bool = False) -> np.ndarray:
    """``a`` as a float64 array of values > 0 (>= 0 with ``low_ok``; +inf allowed: a zero-weight mode)."""
    what = ">= 0" if low_ok else "> 0"
    try:
        arr = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name} must be numbers {what}, got {a!r}") from None
    if np.isnan(arr).any() or (arr < 0).any() or (not low_ok and (arr == 0).any()):
        raise ValueError(f"{name} must be numbers {what} (inf allowed), got {a!r}")
    return arr


def a_star(M: int) -> float:
    """Threshold a*(M): the nonzero branch beats x = 0 iff a < a*(M) (tie at equality)."""
    M = _depth(M)
    if M == 1:
        return 1.0
    return (M - 1) ** ((M - 1) / M) / M**2


def x_star(M: int) -> float:
    """Location (M-1)^(1/M) of the nonzero minimizer exactly at a = a*(M) (0 for M = 1)."""
    M = _depth(M)
    return 0.0 if M == 1 else (M - 1) ** (1.0 / M)


def h_max(M: int) -> float:
    """Peak of h(x) = x^(M-1)/(1+x^M)^2: a positive stationary point exists iff a <= h_max."""
    M = _depth(M)
    if M == 1:
        return 1.0
    xp = ((M - 1) / (M + 1)) ** (1.0 / M)
    return xp ** (M - 1) / (1 + xp**M) ** 2


def F(x: np.ndarray, a: np.ndarray, M: int) -> np.ndarray:
    """F_a(x) = 1/(1 + x^M) + M a x, elementwise (x >= 0, a >= 0)."""
    M = _depth(M)
    x, a = _as_a(x, "x", low_ok=True), _as_a(a, low_ok=True)
    if not (np.isfinite(x).all() and np.isfinite(a).all()):
        raise ValueError("F needs finite x and a")
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + x**M) + M * a * x


def _larger_log_root(la: np.ndarray, M: int, iters: int = 200) -> np.ndarray:
    """log of the larger root of h(x) = a, given la = log a (-inf..inf), NaN where a >= a*(M) (M >= 2).

    Bisection in t = log x on [log x*, -la/(M+1)]: h(x*) = a* > a and h(x) < x^(-M-1) <= a at the upper
    end, and h is decreasing on the bracket, so the root is unique there. Working with log a keeps
    a = N kappa / mu meaningful far outside float64 (lambda = 5e-324 gives a ~ 1e-650).
    """
    ok = la < np.log(a_star(M))
    la_ok = np.where(ok, la, 0.0)
    lo = np.full(la.shape, np.log(x_star(M)))
    hi = np.maximum(np.where(ok, -la_ok / (M + 1), lo), lo)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        # log h(e^t) - log a, computed stably: (M-1) t - 2 log(1 + e^{M t}) - log a
        g = (M - 1) * mid - 2.0 * np.logaddexp(0.0, M * mid) - la_ok
        lo = np.where(g > 0, mid, lo)
        hi = np.where(g > 0, hi, mid)
        if np.all(hi - lo <= 4e-16 * np.maximum(1.0, np.abs(hi))):
            break
    return np.where(ok, 0.5 * (lo + hi), np.nan)


def larger_root(a: np.ndarray, M: int, iters: int = 200) -> np.ndarray:
    """Larger root of h(x) = a for 0 < a < a*(M) (M >= 2), elementwise; one ValueError for other a.

    See :func:`_larger_log_root` (bisection in log x, stops at float64 resolution).
    """
    M = _depth(M)
    if M < 2:
        raise ValueError("larger_root needs depth M >= 2 (for M = 1 the root is a^(-1/2) - 1)")
    a = _as_a(a)
    if (a >= a_star(M)).any():
        raise ValueError(f"larger_root needs every a < a*(M) = {a_star(M):.6g} (beyond it zero is the minimizer)")
    with np.errstate(divide="ignore", over="ignore"):
        return np.exp(_larger_log_root(np.log(a), M, iters))


def solve_modes_log(log_a: np.ndarray, M: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`solve_modes` from log a (any float, -inf..inf): returns (log x, min F, tie), log x = -inf
    where the minimizer is x = 0. Exact in the tails where a or x themselves leave float64."""
    la = np.asarray(log_a, dtype=np.float64)
    if np.isnan(la).any() or (la == -np.inf).any():
        raise ValueError("log a must be a number or +inf (a > 0)")
    with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
        if M == 1:
            on = la < 0.0
            la1 = np.where(on, la, -1.0)
            # x = a^(-1/2) - 1, log x = -la/2 + log(1 - a^(1/2)); min F = 2 sqrt(a) - a
            lx = np.where(on, -0.5 * la1 + np.log1p(-np.exp(0.5 * la1)), -np.inf)
            ra = np.exp(0.5 * la1)
            Fmin = np.where(on, ra * (2.0 - ra), 1.0)
            return lx, Fmin, np.zeros(la.shape, dtype=bool)
        ast = a_star(M)
        lx = _larger_log_root(la, M)
        has = np.isfinite(lx)
        lxs = np.where(has, lx, 0.0)
        # F(x) = 1/(1 + x^M) + M a x, with a x = exp(la + lx) (finite: la + lx ~ la M/(M+1))
        Fx = np.where(has, np.exp(-np.logaddexp(0.0, M * lxs)) + M * np.exp(np.where(has, la, 0.0) + lxs), 1.0)
        # Compare the nonzero stationary point with zero explicitly (the published code does not).
        better = has & (Fx < 1.0)
        tie = np.abs(np.expm1(la - np.log(ast))) <= 1e-12
        return np.where(better, lx, -np.inf), np.where(better, Fx, 1.0), tie


def solve_modes(a: np.ndarray, M: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Global minimizer of F_a over x >= 0 for each a (a may be +inf for a zero-weight mode).

    Returns
    -------
    x : ndarray, the global minimizer (0 where zero wins or ties; see ``tie``)
    Fmin : ndarray, min F_a = F_a(x)
    tie : ndarray of bool, True where x = 0 and a nonzero x attain the minimum together
        (a == a*(M) for M >= 2, to 1e-12 relative); there the minimizer is not unique.
    """
    M = _depth(M)
    a = _as_a(a)
    with np.errstate(divide="ignore", over="ignore"):
        lx, Fmin, tie = solve_modes_log(np.log(a), M)
        return np.exp(lx), Fmin, tie
