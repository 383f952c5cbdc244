"""Cross-entropy, balanced classes: candidates and a low-rank search for the deep linear UFM (theory.md 4).

Reduction (exact; n = N/K samples per class). NC1 holds, and the factorization lemma (sec. 1.1) applied
to the M+1 factors W_M, ..., W_1, Hbar with weights lambda_M, ..., lambda_1, n lambda_H gives

    min f = min_{Z, b}  g(Z, b),
    g(Z, b) = (1/K) sum_k CE(Z e_k + b, k) + (M+1)/2 * gamma * sum_i sigma_i(Z)^p,
    p = 2/(M+1),  gamma = (prod_j lambda_j * n * lambda_H)^(1/(M+1)),  rank Z <= R = min(K, widths),

with Z = W Hbar (K x K logits of the class means) and b = 0 when there is no bias. Any (Z, b) is
attained by the full model (balanced factors, :func:`construct_ce`), so every value reported here is
an exact feasible value of the full objective, i.e. an upper bound on its global minimum.

What is computed:

* the **simplex-ETF candidate** Z = z P (P = I - 1 1^T/K): a 1-D problem solved in closed form
  (M = 1) or by a bracketed root of z^(1-p)/(e^z + K - 1) = gamma (M >= 2), compared with z = 0;
* the **zero** solution, g = log K;
* closed-form **code families**, each a 1-D problem in the common singular value ``scale`` of Z:
  cross-polytope (even K >= 4, rank K/2), regular polygon (K >= 4, rank 2; K = 4 is the square,
  i.e. the K = 4 cross-polytope; K = 3 would be the ETF), and with a bias the rank-1 code (two
  antipodal classes, the other K - 2 classes at zero and separated by the bias alone);
* a seeded **multi-start L-BFGS search** of g over every rank r <= min(R, K - 1), parameterized as
  Z = G_{M+1} ... G_1 with (gamma/2) ||G_i||_F^2 on each factor (equal to the spectral penalty at
  balanced factorizations, and never below it). Starts: the structured candidates of rank <= r and
  ``restarts`` random points; loose tolerances while exploring, then the 3 best distinct points are
  polished to float64 resolution from balanced factors. Every search value is the exact g of an explicit
  rank <= r point (Z projected onto 1-perp, SVD truncated where that lowers g).

Two values count as equal within TIE_RTOL (1e-8 relative). Timing: K <= 10 typically 0.05-1 s on one
core; above K = 32 the search is shrunk (see ``search["note"]``).

For M = 1 the ETF is the proven global minimizer when R >= K - 1 (Jensen, theory.md sec. 4). For
M >= 2 nothing is proven: ``objective`` is the best value found, and the ETF is often beaten by
low-rank codes, which is reported (``etf_is_global``) rather than assumed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import brentq, minimize

from nclab.theory.problem import MAX_INT, Problem, check_int
from nclab.theory.resources import single_thread_blas
from nclab.theory.structure import LowRankBasis, ProjectorBasis, ZeroBasis

#: relative tolerance under which two objective values count as equal (ties, "ETF is global")
TIE_RTOL = 1e-8
#: relative singular-value cutoff below which a direction of Z counts as zero
_SV_RTOL = 1e-9
#: above this K the search is shrunk to a few ranks and one random start per rank
_LARGE_K = 32
#: above this K the polygon's logit sum uses the Bessel series (O(1) per scale instead of O(K))
_BESSEL_K = 512
#: the largest K the low-rank search handles: it runs L-BFGS on dense K x K factors (about a minute at
#: K = 96 on 2 cores, growing like K^3); beyond it only the structured candidates are compared
CE_SEARCH_MAX_K = 128
#: scales beyond this are never optimal for any realistic gamma (CE < e^-400 there); keeps exp() finite
_SCALE_CAP = 800.0

ETF, ZERO, CROSS, POLYGON, RANK1 = "simplex ETF", "zero", "cross-polytope", "regular polygon", "rank-1 code"
_PREFERENCE = (ETF, CROSS, POLYGON, RANK1)  # tie order among structured candidates


# ---------------------------------------------------------------------------------------------
# argument checks (public functions raise one ValueError/TypeError naming the argument)
# ---------------------------------------------------------------------------------------------
def _check_problem(problem) -> Problem:
    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be an nclab.theory.Problem (see make_problem), got {type(problem).__name__}")
    return problem


def _check_KM(K, M) -> tuple[int, int]:
    # q(z) and psi(z) are evaluated in float64: K beyond 2^53 is not representable anyway
    return check_int(K, "the number of classes K", 2, MAX_INT), check_int(M, "depth M", 1, 10**6)


def _check_gamma(gamma) -> float:
    try:
        g = float(gamma)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"gamma must be a number > 0, got {gamma!r}") from None
    if not (math.isfinite(g) and g > 0):
        raise ValueError(f"gamma must be a finite number > 0, got {gamma!r}")
    return g


# ---------------------------------------------------------------------------------------------
# scalars
# ---------------------------------------------------------------------------------------------
def ce_gamma(problem: Problem) -> float:
    """gamma = (prod_j lambda_j * n * lambda_H)^(1/(M+1)), n = samples per class (balanced)."""
    _check_problem(problem)
    n = problem.counts[0]
    logs = sum(math.log(v) for v in problem.lambda_w) + math.log(n) + math.log(problem.lambda_h)
    return math.exp(logs / (problem.M + 1))


def _etf_phi(z: float, K: int, M: int, gamma: float) -> float:
    """phi(z) = log(1 + (K-1) e^-z) + (M+1)/2 gamma (K-1) z^(2/(M+1))."""
    p = 2.0 / (M + 1)
    return math.log1p((K - 1) * math.exp(-z)) + 0.5 * (M + 1) * gamma * (K - 1) * z**p


def _log_q(z: float, K: int, M: int) -> float:
    """log of q(z) = z^(1-p) / (e^z + K - 1), the ETF stationarity function (q = gamma)."""
    p = 2.0 / (M + 1)
    return (1 - p) * math.log(z) - np.logaddexp(z, math.log(K - 1))


def _q_peak(K: int, M: int) -> float:
    """Maximizer z_p of q (M >= 2): root of (1-p)/z = 1/(1 + (K-1) e^-z), left side minus right decreasing.

    Bracket: at z = (1-p)/2 the difference is >= 2 - 1 > 0; at z = (1-p) K it is < 0.
    """
    p = 2.0 / (M + 1)
    d = lambda z: (1 - p) / z - 1.0 / (1.0 + (K - 1) * math.exp(-z))  # noqa: E731
    return brentq(d, 0.5 * (1 - p), (1 - p) * K, xtol=1e-15, rtol=1e-15, maxiter=500)


def etf_scalar(K: int, M: int, gamma: float) -> tuple[float, float]:
    """Optimal ETF scale z >= 0 and its value phi(z) (phi(0) = log K); z = 0 where zero wins or ties.

    M = 1: phi is convex, z = log(1/gamma - (K-1)) if gamma < 1/K. M >= 2: z = 0 is a strict local
    minimum; the nonzero local minimum is the larger root of q(z) = gamma (q unimodal with peak z_p),
    found by brentq on log q - log gamma in [z_p, hi] with hi doubled until q(hi) < gamma, and kept
    only if phi(root) < log K.
    """
    K, M = _check_KM(K, M)
    gamma = _check_gamma(gamma)
    logK = math.log(K)
    if M == 1:
        if gamma * K < 1.0:
            z = math.log(1.0 / gamma - (K - 1))
            return z, _etf_phi(z, K, M, gamma)
        return 0.0, logK
    zp = _q_peak(K, M)
    lg = math.log(gamma)
    if _log_q(zp, K, M) <= lg:  # no positive stationary point
        return 0.0, logK
    hi = max(2.0 * zp, 1.0)
    while _log_q(hi, K, M) >= lg:
        hi *= 2.0
    z = brentq(lambda t: _log_q(t, K, M) - lg, zp, hi, xtol=1e-15, rtol=1e-15, maxiter=500)
    val = _etf_phi(z, K, M, gamma)
    return (z, val) if val < logK else (0.0, logK)


def etf_threshold(K: int, M: int) -> float:
    """gamma_c(K, M): the ETF candidate beats zero iff gamma < gamma_c (tie at equality).

    M = 1: 1/K. M >= 2: on the nonzero branch gamma = q(z), and phi(z) - log K becomes
    psi(z) = log(1 + (K-1) e^-z) - log K + (M+1)/2 (K-1) z/(e^z + K - 1); its root above the peak z_p
    of q (psi(z_p) > 0 > psi(+inf) = -log K) gives gamma_c = q(z_c). This is the threshold of the ETF
    *candidate*; for M >= 2 the true problem can stay nontrivial above it (see ``solve_ce``).
    """
    K, M = _check_KM(K, M)
    if M == 1:
        return 1.0 / K
    zp = _q_peak(K, M)

    def psi(z):
        return (
            math.log1p((K - 1) * math.exp(-z))
            - math.log(K)
            + 0.5 * (M + 1) * (K - 1) * z / (math.exp(z) + K - 1)
        )

    if psi(zp) <= 0:  # not expected; the whole nonzero branch beats zero then
        return math.exp(_log_q(zp, K, M))
    hi = 2.0 * zp
    while psi(hi) > 0:
        hi *= 2.0
    zc = brentq(psi, zp, hi, xtol=1e-15, rtol=1e-15, maxiter=500)
    return math.exp(_log_q(zc, K, M))


# ---------------------------------------------------------------------------------------------
# the reduced objective g(Z, b)
# ---------------------------------------------------------------------------------------------
def _mean_ce(Z: np.ndarray, b: np.ndarray | None) -> float:
    """(1/K) sum_k CE(Z e_k + b, k), computed from the gaps d_j = L_jk - L_kk with log1p where the own
    logit is the largest, so tiny losses (large margins) keep their relative accuracy."""
    L = Z if b is None else Z + b[:, None]
    K = L.shape[0]
    D = L - np.diag(L)[None, :]
    off = ~np.eye(K, dtype=bool)
    m = np.max(np.where(off, D, -np.inf), axis=0)
    mpos = np.maximum(m, 0.0)
    rest = np.sum(np.where(off, np.exp(D - mpos), 0.0), axis=0)
    ce = np.where(m > 0, mpos + np.log(np.exp(-mpos) + rest), np.log1p(rest))
    return float(np.mean(ce))


def reduced_objective(Z: np.ndarray, b: np.ndarray | None, gamma: float, M: int) -> float:
    """g(Z, b) = (1/K) sum_k CE(Z e_k + b, k) + (M+1)/2 gamma sum_i sigma_i(Z)^(2/(M+1)), all sigma_i.

    Note that for M >= 2 tiny singular values still cost gamma sigma^p with p < 1 (1e-16^(1/2) = 1e-8),
    so rounding noise in Z matters at the 1e-8 level; :func:`_truncate` removes it.
    """
    try:
        Z = np.asarray(Z, dtype=np.float64)
        b = None if b is None else np.asarray(b, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("Z and b must be numeric arrays") from None
    if Z.ndim != 2 or Z.shape[0] != Z.shape[1] or Z.shape[0] < 2:
        raise ValueError(f"Z must be a K x K matrix with K >= 2, got shape {Z.shape}")
    if b is not None and b.shape != (Z.shape[0],):
        raise ValueError(f"b must have shape ({Z.shape[0]},), got {b.shape}")
    if not np.isfinite(Z).all() or (b is not None and not np.isfinite(b).all()):
        raise ValueError("Z and b must be finite")
    gamma = _check_gamma(gamma)
    M = check_int(M, "depth M", 1, 10**6)
    sig = np.linalg.svd(np.asarray(Z, dtype=np.float64), compute_uv=False)
    return _mean_ce(Z, b) + 0.5 * (M + 1) * gamma * float(np.sum(sig ** (2.0 / (M + 1))))


def _truncate(Z: np.ndarray, b: np.ndarray | None, gamma: float, M: int, max_rank: int):
    """Best truncation of the SVD of Z (top-k directions, k <= max_rank) for g; returns (value, Z_k, k)."""
    U, s, Vt = np.linalg.svd(Z)
    p = 2.0 / (M + 1)
    best = None
    for k in range(0, min(max_rank, len(s)) + 1):
        if k > 0 and s[k - 1] <= 0:
            break
        Zk = (U[:, :k] * s[:k]) @ Vt[:k]
        val = _mean_ce(Zk, b) + 0.5 * (M + 1) * gamma * float(np.sum(s[:k] ** p))
        if best is None or val < best[0]:
            best = (val, Zk, k)
    return best


def _spectral(Z: np.ndarray):
    """Compact SVD of Z keeping singular values above _SV_RTOL * max (exact structures: rounding only)."""
    U, s, Vt = np.linalg.svd(Z)
    if s.size == 0 or s[0] <= 0:
        return U[:, :0], s[:0], Vt[:0]
    k = int(np.sum(s > _SV_RTOL * s[0]))
    return U[:, :k], s[:k], Vt[:k]


def _clean_value(Z: np.ndarray, b: np.ndarray | None, gamma: float, M: int):
    """(value, Z') with Z' = the compact-SVD reconstruction of Z (what :func:`construct_ce` builds)."""
    U, s, Vt = _spectral(Z)
    Zc = (U * s) @ Vt
    val = _mean_ce(Zc, b) + 0.5 * (M + 1) * gamma * float(np.sum(s ** (2.0 / (M + 1))))
    return val, Zc


# ---------------------------------------------------------------------------------------------
# code families: 1-D problems in the common singular value sigma of Z
# ---------------------------------------------------------------------------------------------
def _min_scale(c, dc, m: int, K: int, M: int, gamma: float) -> tuple[float, float]:
    """Global minimizer over sigma >= 0 of phi(sigma) = c(sigma) + (M+1)/2 gamma m sigma^p, c(0) = log K.

    Only sigma with (M+1)/2 gamma m sigma^p < log K can beat zero, which bounds the range. Local minima
    are bracketed by sign changes (- to +) of dphi/dlog(sigma) on a 1200-point log grid over 14
    decades below that bound and refined with brentq; the best is compared with phi(0) = log K.
    """
    p = 2.0 / (M + 1)
    logK = math.log(K)
    w = 0.5 * (M + 1) * gamma * m
    smax = min((logK / w) ** (1.0 / p), _SCALE_CAP)
    t = np.linspace(math.log(smax) - 32.0, math.log(smax), 1200)

    def dphi_dt(tt):
        s = np.exp(tt)
        return s * dc(s) + gamma * m * s**p

    def phi(s):
        return float(c(np.asarray([s]))[0]) + w * s**p

    d = dphi_dt(t)
    best = (0.0, logK)
    for i in np.nonzero((d[:-1] < 0) & (d[1:] >= 0))[0]:
        root = brentq(lambda tt: float(dphi_dt(np.asarray([tt]))[0]), t[i], t[i + 1], xtol=1e-14, rtol=1e-15)
        s = math.exp(root)
        val = phi(s)
        if val < best[1]:
            best = (s, val)
    return best


def _cross_polytope(K: int):
    """Even K: classes 2i, 2i+1 at +-e_i (i < K/2); Z = (sigma/2) Q Q^T, Q^T Q = 2 I, multiplicity K/2.

    A class-(2i) sample has logits sigma/2 (own), -sigma/2 (partner), 0 (others).
    """
    def Zf(s):
        Q = np.zeros((K, K // 2))
        i = np.arange(K // 2)
        Q[2 * i, i], Q[2 * i + 1, i] = 1.0, -1.0
        return 0.5 * s * Q @ Q.T

    def c(s):
        return np.log1p(np.exp(-s) + (K - 2) * np.exp(-s / 2))

    def dc(s):
        e1, e2 = np.exp(-s), np.exp(-s / 2)
        return -(e1 + 0.5 * (K - 2) * e2) / (1 + e1 + (K - 2) * e2)

    return c, dc, K // 2, Zf, K // 2


def _polygon(K: int):
    """Classes at angles 2 pi k/K in a plane: Z = (2 sigma/K) A A^T, A = [cos, sin] (K x 2), A^T A = K/2 I."""
    th = 2 * np.pi * np.arange(K) / K
    g = np.cos(th[1:]) - 1.0  # logit gaps (in units of 2 sigma/K) to the other classes

    def Zf(s):
        A = np.stack([np.cos(th), np.sin(th)], axis=1)
        return (2 * s / K) * A @ A.T

    if K > _BESSEL_K:
        # sum_j exp(a (cos theta_j - 1)) = K e^-a I_0(a) + 2 K sum_m e^-a I_mK(a) with a = 2 sigma/K; the
        # aliasing terms are below 1e-19 relative for K > 512 at the scales that can beat zero (a <= 1600/K)
        from scipy.special import ive

        def c(s):
            a = 2 * np.asarray(s, dtype=np.float64) / K
            return np.log(K * ive(0, a))

        def dc(s):
            a = 2 * np.asarray(s, dtype=np.float64) / K
            return (2.0 / K) * (ive(1, a) / ive(0, a) - 1.0)

        return c, dc, 2, Zf, 2

    def c(s):
        s = np.asarray(s)[:, None]
        return np.log1p(np.exp(2 * s / K * g).sum(axis=1))

    def dc(s):
        s = np.asarray(s)[:, None]
        e = np.exp(2 * s / K * g)
        return (2.0 / K) * (e * g).sum(axis=1) / (1.0 + e.sum(axis=1))

    return c, dc, 2, Zf, 2


def _rank1_beta(s: np.ndarray, K: int) -> np.ndarray:
    """Optimal bias u = e^(beta - sigma/2) of the rank-1 code (classes 3..K at zero get bias beta).

    Stationarity in beta is the quadratic (K-2) u^2 + (4-K) a u - A a = 0, a = e^(-sigma/2),
    A = 1 + e^(-sigma); returns its positive root (written without cancellation).
    """
    a, A = np.exp(-s / 2), 1.0 + np.exp(-s)
    disc = np.sqrt((4 - K) ** 2 * a**2 + 4 * (K - 2) * A * a)
    if K < 4:
        return 2 * A * a / ((4 - K) * a + disc)
    return ((K - 4) * a + disc) / (2 * (K - 2))


def _rank1_code(K: int):
    """Bias only: classes 1, 2 at +-1 on one axis, classes 3..K at zero; Z = sigma u u^T, u = (e1 - e2)/sqrt2.

    Class 1 logits (sigma/2, -sigma/2, beta, ..., beta), class j >= 3 logits (0, 0, beta, ..., beta);
    beta is optimized exactly (a quadratic), and by the envelope theorem dc/dsigma is the partial derivative.
    """

    def c(s):
        s = np.asarray(s, dtype=np.float64)
        u = _rank1_beta(s, K)
        emb = np.exp(-s / 2) / u  # e^(-beta)
        return (2 * np.log1p(np.exp(-s) + (K - 2) * u) + (K - 2) * np.log(2 * emb + K - 2)) / K

    def dc(s):
        s = np.asarray(s, dtype=np.float64)
        u = _rank1_beta(s, K)
        e1 = np.exp(-s)
        return (2.0 / K) * (-(e1 + 0.5 * (K - 2) * u)) / (1 + e1 + (K - 2) * u)

    uvec = np.zeros(K)
    uvec[0], uvec[1] = 1 / math.sqrt(2), -1 / math.sqrt(2)

    def bias(s):
        beta = math.log(float(_rank1_beta(np.asarray([s]), K)[0])) + s / 2
        b = np.zeros(K)
        b[2:] = beta
        return b - b.mean()

    return c, dc, 1, (lambda s: s * np.outer(uvec, uvec)), 1, bias


# ---------------------------------------------------------------------------------------------
# numerical search of the reduced problem, factorized Z = G_{M+1} ... G_1
# ---------------------------------------------------------------------------------------------
class _Factored:
    """g with Z = F[M] ... F[0] (F[0]: r x K, F[1..M-1]: r x r, F[M]: K x r) and (gamma/2) sum ||F_i||^2."""

    #: L-BFGS iterations of an exploring (not polishing) run
    explore_maxiter = 500

    def __init__(self, K: int, M: int, r: int, gamma: float, bias: bool):
        self.K, self.M, self.r, self.gamma, self.bias = K, M, r, gamma, bias
        self.shapes = [(r, K)] + [(r, r)] * (M - 1) + [(K, r)]
        self.sizes = [a * b for a, b in self.shapes]
        self.eye = np.eye(K)

    def unpack(self, x):
        F, i = [], 0
        for sh, n in zip(self.shapes, self.sizes):
            F.append(x[i : i + n].reshape(sh))
            i += n
        return F, (x[i:] if self.bias else None)

    def pack(self, F, b):
        parts = [f.ravel() for f in F] + ([b] if self.bias else [])
        return np.concatenate(parts)

    def product(self, F):
        Z = F[0]
        for f in F[1:]:
            Z = f @ Z
        return Z

    def fg(self, x):
        F, b = self.unpack(x)
        pre = [F[0]]
        for f in F[1:]:
            pre.append(f @ pre[-1])
        L = pre[-1] if b is None else pre[-1] + b[:, None]
        mx = L.max(axis=0)
        E = np.exp(L - mx)
        S = E.sum(axis=0)
        K = self.K
        val = float(np.mean(mx + np.log(S) - np.diag(L)))
        D = (E / S - self.eye) / K
        grads = [None] * len(F)
        A = None  # F[M] ... F[i+1]
        for i in range(len(F) - 1, -1, -1):
            left = D if A is None else A.T @ D
            grads[i] = left @ (self.eye if i == 0 else pre[i - 1].T) + self.gamma * F[i]
            A = F[i] if A is None else A @ F[i]
        val += 0.5 * self.gamma * sum(float(np.sum(f * f)) for f in F)
        g = [gr.ravel() for gr in grads] + ([D.sum(axis=1)] if self.bias else [])
        return val, np.concatenate(g)

    def balanced(self, Z, rng=None, noise=0.0):
        """Balanced factors of (a rank <= r) Z via its SVD, optionally perturbed."""
        U, s, Vt = np.linalg.svd(Z)
        r, M = self.r, self.M
        s = s[:r] ** (1.0 / (M + 1))
        F = [s[:, None] * Vt[:r]] + [np.diag(s) for _ in range(M - 1)] + [U[:, :r] * s]
        if rng is not None and noise > 0:
            F = [f + noise * rng.standard_normal(f.shape) for f in F]
        return F

    def run(self, x0, *, polish=False):
        """L-BFGS-B: loose tolerances to explore, tight ones (float64 resolution) to polish."""
        ftol, gtol, maxiter = (1e-16, 1e-13, 20000) if polish else (1e-11, 1e-7, self.explore_maxiter)
        res = minimize(
            self.fg,
            x0,
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": maxiter, "maxfun": 2 * maxiter, "ftol": ftol, "gtol": gtol, "maxcor": 20},
        )
        return res.x


def _search(problem, gamma, ranks, restarts, seed, starts, n_polish=3):
    """Multi-start L-BFGS over each rank, then a tight polish of the ``n_polish`` best distinct points.

    Every point is projected (Z <- P Z: CE unchanged, singular values do not grow) and its SVD truncated
    where that lowers g, so values are exact g values of rank <= r points. Returns
    ({r: best explored value}, (value, Z, b) of the best point or None).
    """
    K, M, bias = problem.K, problem.M, problem.bias
    P = np.eye(K) - 1.0 / K
    per_rank, found = {}, []
    zref = max(etf_scalar(K, M, gamma)[0], 2.0)

    def finish(fac, x, r):
        F, b = fac.unpack(x)
        Z = P @ fac.product(F)
        b = None if b is None else b - b.mean()
        val, Zk, _ = _truncate(Z, b, gamma, M, r)
        return val, Zk, b

    for r in ranks:
        fac = _Factored(K, M, r, gamma, bias)
        rng = np.random.default_rng([seed, r])
        x0s = []
        for Zs, bs in starts:
            if np.linalg.matrix_rank(Zs) <= r:
                x0s.append(fac.pack(fac.balanced(Zs, rng, 1e-3), bs if bias else None))
        for _ in range(restarts):
            Z0 = P @ rng.standard_normal((K, r)) @ rng.standard_normal((r, K))
            U, _, Vt = np.linalg.svd(Z0)
            Z0 = (U[:, :r] * (zref * rng.uniform(0.2, 1.5, size=r))) @ Vt[:r]
            b0 = 0.5 * rng.standard_normal(K) if bias else None
            x0s.append(fac.pack(fac.balanced(Z0, rng, 0.05), b0))
        for x0 in x0s:
            val, Z, b = finish(fac, fac.run(x0), r)
            per_rank[r] = min(per_rank.get(r, np.inf), val)
            found.append((val, Z, b))
    if not found:
        return per_rank, None
    found.sort(key=lambda t: t[0])
    chosen = []
    for item in found:
        if all(abs(item[0] - c[0]) > 1e-9 * abs(c[0]) for c in chosen):
            chosen.append(item)
        if len(chosen) == n_polish:
            break
    best = None
    for val, Z, b in chosen:
        k = int(np.linalg.matrix_rank(Z, tol=_SV_RTOL * max(np.linalg.norm(Z, 2), 1e-300)))
        if k > 0:
            fac = _Factored(K, M, k, gamma, bias)
            v2, Z2, b2 = finish(fac, fac.run(fac.pack(fac.balanced(Z), b), polish=True), k)
            if v2 < val:
                val, Z, b = v2, Z2, b2
        if best is None or val < best[0]:
            best = (val, Z, b)
    return per_rank, best


# ---------------------------------------------------------------------------------------------
# result
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CESolution:
    """Result of :func:`solve_ce` (balanced CE). Arrays are float64; ``to_dict`` is JSON-ready.

    Attributes
    ----------
    objective : float, f_star: the best value found of the full objective (= g at (Z, bias)). Exact
        global minimum for M = 1 with R >= K - 1 (the ETF, proven); otherwise an upper bound that
        the search did not improve on.
    objective_zero : float, log K (all W_j = 0, H = 0)
    gamma : float, (prod lambda_j * n * lambda_H)^(1/(M+1))
    etf_z, etf_objective : float, scale and value of the ETF candidate (z = 0, value log K where the
        candidate is trivial); computed even if the widths forbid it (see ``etf_feasible``)
    etf_feasible : bool, R >= K - 1 (the rank budget allows the ETF)
    etf_gamma_c : float, the ETF candidate beats zero iff gamma < etf_gamma_c
    etf_is_global : bool, the (feasible) ETF candidate attains ``objective`` to TIE_RTOL relative.
        For M >= 2 True means only that nothing better was found.
    etf_proven : bool, M == 1 and R >= K - 1 (Jensen bound; the ETF is the global minimizer)
    best_structure : str, "simplex ETF", "cross-polytope", "regular polygon", "rank-1 code", "zero",
        or "rank-r code" (r a number) for a search point that beats every structured candidate
    best_rank : int, rank of Z
    candidates : dict name -> {"objective", "rank", "scale"} for the feasible structured candidates
        (scale = the common nonzero singular value of Z; 0 where the family's best is the zero point)
    search : dict, what the numerical search covered (ranks, restarts, best value per rank, note)
    Z, WH : ndarray (K, K), logits of the class means W Hbar (Z == WH)
    bias : ndarray (K,) (centred, b is defined up to multiples of 1) or None
    WWt : ndarray (K, K), gamma^M/prod lambda_j (Z Z^T)^(M/(M+1))  (rows of W = W_M..W_1)
    HtH : ndarray (K, K), gamma/(n lambda_H) (Z^T Z)^(1/(M+1))      (class means Hbar)
    gram_unique : bool. The value is unique; the point is not in general: any code other than the ETF
        can be permuted over the classes (different Grams, same value), and at ties (thresholds)
        several structures attain the value. True only when the best is the ETF or zero and no other
        candidate ties; for M >= 2 even that is "no other minimizer known", not a proof.
    uniqueness_note : str, the reason in words
    active : list of bool, class k has a nonzero mean h_k or a nonzero classifier row w_k
    layers : list of M dicts (j = 1..M): ``sigma`` (nonzero singular values of W_j),
        ``mean_gram`` (Hbar_j^T Hbar_j), ``partial_gram`` (P_j P_j^T, P_j = W_M..W_j), ``nc3_scale``
        (C_j, K x K, with P_j = C_j Hbar_j^T; None for the zero solution), ``regularizer``
        (lambda_j/2 ||W_j||^2, the same for every layer and for the features)
    notes : list of str, caveats in words
    """

    problem: Problem
    objective: float
    objective_zero: float
    gamma: float
    etf_z: float
    etf_objective: float
    etf_feasible: bool
    etf_gamma_c: float
    etf_is_global: bool
    etf_proven: bool
    best_structure: str
    best_rank: int
    candidates: dict
    search: dict
    Z: np.ndarray
    bias: np.ndarray | None
    WWt: np.ndarray
    HtH: np.ndarray
    WH: np.ndarray
    gram_unique: bool
    uniqueness_note: str
    active: list
    layers: list
    notes: list = field(default_factory=list)
    basis: object = None  # structure.Basis of Z = U diag(z) V^T (no K x K matrix)
    values: dict = None  # per-mode values of WWt, HtH, WH over basis
    sigma: np.ndarray = None  # (M, modes) singular values of W_j per mode
    regularizer: float = 0.0  # lambda_j/2 ||W_j||^2, the same for every layer and the features

    def to_dict(self) -> dict:
        def conv(v):
            if isinstance(v, np.ndarray):
                return v.tolist()
            if isinstance(v, dict):
                return {str(k): conv(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [conv(x) for x in v]
            if isinstance(v, (np.floating, np.integer, np.bool_)):
                return v.item()
            return v

        skip = ("problem", "basis", "values", "sigma")
        out = {k: conv(getattr(self, k)) for k in self.__dataclass_fields__ if k not in skip}
        out["problem"] = self.problem.to_dict()
        return out


def _structure(problem: Problem, gamma: float, Z: np.ndarray) -> dict:
    """Grams and per-layer quantities of the balanced factorization of Z (theory.md sec. 1.1, 4)."""
    M, n = problem.M, problem.counts[0]
    lam = problem.lambda_w
    U, z, Vt = _spectral(Z)
    s = z ** (1.0 / (M + 1))  # shared singular values of the M+1 balanced factors, up to the alphas
    alpha = [math.sqrt(gamma / lj) for lj in lam]  # W_j = alpha_j diag(s) (chained)
    alpha_h = math.sqrt(gamma / (n * problem.lambda_h))
    V = Vt.T

    def gram(Q, d):
        return (Q * d) @ Q.T

    WWt = gram(U, (math.prod(alpha) * s**M) ** 2)
    HtH = gram(V, (alpha_h * s) ** 2)
    layers = []
    for j in range(1, M + 1):
        beta = alpha_h * math.prod(alpha[: j - 1])  # Hbar_j = E_j diag(beta s^j) V^T
        pi = math.prod(alpha[j - 1 :])  # P_j = U diag(pi s^(M-j+1)) E_j^T
        layers.append(
            {
                "sigma": alpha[j - 1] * s,
                "mean_gram": gram(V, (beta * s**j) ** 2),
                "partial_gram": gram(U, (pi * s ** (M - j + 1)) ** 2),
                "nc3_scale": (U * (pi / beta * s ** (M + 1 - 2 * j))) @ Vt if z.size else None,
                "regularizer": 0.5 * gamma * float(np.sum(s**2)),
            }
        )
    hnorm = np.linalg.norm(V * z, axis=1)
    wnorm = np.linalg.norm(U * z, axis=1)
    tol = 1e-6 * (z[0] if z.size else 1.0)
    active = [bool(a > tol or w > tol) for a, w in zip(hnorm, wnorm)]
    return {"WWt": WWt, "HtH": HtH, "layers": layers, "active": active, "rank": int(z.size)}


def solve_ce(problem: Problem, *, seed: int = 0, restarts: int | None = None, search: bool | None = None
             ) -> CESolution:
    """Balanced cross-entropy: ETF candidate, zero, code families and a low-rank search (module doc).

    Parameters
    ----------
    problem : Problem with loss "ce" and equal class counts
    seed : int, seeds the random starts of the search (the result is deterministic given the seed)
    restarts : random starts per rank (default 3 for K <= 10, 2 for K <= 32, 1 above, where the search
        also covers only ranks 1, 2, 3, K/2 and K - 1 within the budget). 0 keeps only the structured starts.
    search : run the low-rank search; default None = for M >= 2 and K <= CE_SEARCH_MAX_K (128). For M = 1 the
        ETF is proven and the search only checks it. True beyond CE_SEARCH_MAX_K is refused with the reason.
        Without the search nothing K x K is formed: the result is the best structured candidate, in O(K).
    """
    _check_problem(problem)
    if problem.loss != "ce":
        raise ValueError(f"solve_ce needs loss 'ce', got {problem.loss!r}")
    seed = check_int(seed, "seed", 0, 2**63 - 1)
    if not problem.balanced:
        raise ValueError(
            "CE with unequal class counts is not supported: the reduction to the K x K problem "
            "(theory.md sec. 4) needs equal n_k, and no reduction is known for imbalanced CE"
        )
    K, M, R = problem.K, problem.M, problem.rank_budget
    from nclab.theory.resources import check_memory

    if search is not None and not isinstance(search, (bool, np.bool_)):
        raise ValueError(f"search must be true, false or None, got {search!r}")
    if search and K > CE_SEARCH_MAX_K:
        raise ValueError(
            f"the CE low-rank search handles K <= {CE_SEARCH_MAX_K} classes (it runs L-BFGS on dense K x K "
            f"factors: about a minute at K = 96 on 2 cores, growing like K^3); K = {K:,} is beyond it. Without "
            "the search the structured candidates (ETF, cross-polytope, polygon, rank-1) are compared in O(K)"
        )
    dense = K <= CE_SEARCH_MAX_K
    if search is None:
        search = dense
    if dense:
        # L-BFGS over M + 1 factors of up to K x K (history of 10 pairs), SVDs and Grams of K x K
        check_memory(8.0 * K * K * (40 + 25 * (M + 1)), f"the CE search for K = {K:,} classes, M = {M}")
    if restarts is None:
        restarts = 3 if K <= 10 else (2 if K <= _LARGE_K else 1)
    restarts = check_int(restarts, "restarts", 0, 10**6)
    gamma = ce_gamma(problem)
    logK = math.log(K)
    rtol = TIE_RTOL
    notes = []

    # ETF candidate
    etf_z, etf_val = etf_scalar(K, M, gamma)
    etf_feasible = R >= K - 1
    points = {}  # name -> (value, Z or its builder Z(scale), b, rank, scale), exact structured points
    zeros_b = np.zeros(K) if problem.bias else None
    if etf_feasible and etf_z > 0:
        points[ETF] = (etf_val, (lambda z: z * (np.eye(K) - 1.0 / K)), zeros_b, K - 1, etf_z)
    elif not etf_feasible:
        notes.append(f"the simplex ETF needs rank K - 1 = {K - 1} but the widths allow only R = {R}")

    # code families
    fams = []
    if K % 2 == 0 and K >= 4:
        fams.append((CROSS, _cross_polytope(K), None))
    if K >= 4:
        fams.append((POLYGON, _polygon(K), None))
    if problem.bias and K >= 3:
        c, dc, m, Zf, rk, bf = _rank1_code(K)
        fams.append((RANK1, (c, dc, m, Zf, rk), bf))
    trivial = []
    for name, (c, dc, m, Zf, rk), bf in fams:
        if rk > R:
            notes.append(f"{name} needs rank {rk} > R = {R}; skipped")
            continue
        s, val = _min_scale(c, dc, m, K, M, gamma)
        if s > 0:
            b = bf(s) if bf is not None else zeros_b
            points[name] = (val, Zf, b, rk, s)
        else:
            trivial.append(name)

    # exact values (the compact-SVD reconstruction is what the full model is built from); without dense
    # matrices (K > CE_SEARCH_MAX_K) the 1-D problems' values are the exact values of Z = scale * Pi
    cands = {}
    for name, (val, Zf, b, rk, s) in list(points.items()):
        if dense:
            Z = Zf if isinstance(Zf, np.ndarray) else Zf(s)
            val, Zc = _clean_value(Z, b, gamma, M)
            points[name] = (val, Zc, b, rk, s)
        cands[name] = {"objective": val, "rank": rk, "scale": s}
    for name in trivial:
        cands[name] = {"objective": logK, "rank": 0, "scale": 0.0}
    if etf_feasible and etf_z == 0:
        cands[ETF] = {"objective": logK, "rank": 0, "scale": 0.0}
    cands[ZERO] = {"objective": logK, "rank": 0, "scale": 0.0}

    # numerical search
    rmax = min(R, K - 1)
    if not search:
        ranks, per_rank, sbest = [], {}, None
        note = ("not run: " + (f"K = {K:,} > {CE_SEARCH_MAX_K}, the largest K the low-rank search handles (dense "
                               "K x K factors)" if not dense else "search=False")
                + "; the best structured candidate is reported")
        if M >= 2:
            notes.append(f"low-rank search {note}")
        starts = []
    else:
        if K <= _LARGE_K:
            ranks = list(range(1, rmax + 1))
            note = "all ranks 1..min(R, K-1)"
        else:
            ranks = sorted({r for r in (1, 2, 3, K // 2, K - 1) if 1 <= r <= rmax})
            note = f"K > {_LARGE_K}: search shrunk to ranks {ranks} with {restarts} random start(s) each"
            notes.append(note)
        starts = [(Z, b) for (_, Z, b, _, _) in points.values()]
        with single_thread_blas():  # thousands of small products: BLAS threads only spin (9x slower under load)
            per_rank, sbest = _search(problem, gamma, ranks, restarts, seed, starts)
    search = {
        "ranks": ranks,
        "restarts": restarts,
        "structured_starts": len(starts),
        "seed": seed,
        "complete": bool(search) and K <= _LARGE_K,
        "run": bool(search),
        "max_K": CE_SEARCH_MAX_K,
        "note": note,
        "best_per_rank": {int(r): float(v) for r, v in per_rank.items()},
    }

    # decide
    etf_proven = bool(M == 1 and etf_feasible)
    cbest_val = min(v[0] for v in points.values()) if points else logK
    floor = min(cbest_val, logK)
    if etf_proven:  # Jensen: the ETF (or zero, where gamma >= 1/K) is the global minimizer
        if sbest is not None and sbest[0] < etf_val - 1e-9 * abs(etf_val):
            notes.append(f"search value {sbest[0]!r} is below the proven optimum {etf_val!r} (rounding)")
        best_name = ETF if ETF in points else ZERO
    elif sbest is not None and sbest[0] < floor - rtol * abs(floor):
        best_name = "search"
    elif points and cbest_val < logK - rtol * logK:
        near = [
            nm for nm in _PREFERENCE if nm in points and points[nm][0] <= cbest_val + rtol * abs(cbest_val)
        ]
        best_name = near[0]
    else:
        best_name = ZERO
    if best_name == "search":
        exact, Z = _clean_value(sbest[1], sbest[2], gamma, M)
        best_name, best_val, best_Z, best_b = f"rank-{_spectral(Z)[1].size} code", exact, Z, sbest[2]
    elif best_name == ZERO:
        best_val, best_Z, best_b = logK, (np.zeros((K, K)) if dense else None), zeros_b
    else:
        best_val, best_Z, best_b = points[best_name][0], points[best_name][1], points[best_name][2]
        if not dense:
            best_Z = None

    if best_Z is not None:
        st = _structure(problem, gamma, best_Z)
    if best_name == ZERO:
        basis, zvals = ZeroBasis(K), np.zeros(0)
    elif best_name in _PREFERENCE:
        basis, zvals = ProjectorBasis(K, best_name), np.asarray([points[best_name][4]])
    else:
        U, zvals, Vt = _spectral(best_Z)
        basis = LowRankBasis(U, Vt.T)
    values, sig, reg = _struct_values(problem, gamma, zvals, basis.mult)
    if best_Z is None:
        act = basis.diag(np.ones(basis.nmodes)) > 0 if basis.nmodes else np.zeros(K, dtype=bool)
        st = {"WWt": None, "HtH": None, "layers": None, "active": [bool(a) for a in act],
              "rank": int(basis.mult.sum())}
    etf_is_global = bool(etf_feasible and etf_val <= best_val + rtol * abs(best_val))

    # uniqueness
    ties = sorted(
        nm
        for nm, cd in cands.items()
        if nm != best_name
        and cd["rank"] != st["rank"]
        and abs(cd["objective"] - best_val) <= rtol * abs(best_val)
    )
    if best_name in (ETF, ZERO) and not ties:
        gram_unique = True
        unote = (
            "the ETF is the unique minimizer (M = 1, Jensen)"
            if etf_proven and best_name == ETF
            else f"best known point is the permutation-invariant {best_name}; no other candidate ties"
            + ("" if M == 1 else " (for M >= 2 not a proof of uniqueness)")
        )
    else:
        gram_unique = False
        unote = (
            f"ties at the optimal value: {best_name} and {', '.join(ties)}"
            if ties
            else f"the {best_name} is not invariant under class permutations: permuted copies attain the "
            "same value with different Grams"
        )
    if M >= 2:
        notes.append(
            "M >= 2: no proof of global optimality; objective is the best value found "
            "(an exact feasible value, hence an upper bound)"
        )
        if not etf_is_global and etf_feasible:
            notes.append(
                f"the simplex ETF (value {etf_val:.10g}) is NOT the global minimizer: {best_name} is lower "
                f"by {100 * (etf_val - best_val) / etf_val:.3g}%"
            )

    return CESolution(
        problem=problem,
        objective=float(best_val),
        objective_zero=logK,
        gamma=gamma,
        etf_z=float(etf_z),
        etf_objective=float(etf_val),
        etf_feasible=bool(etf_feasible),
        etf_gamma_c=etf_threshold(K, M),
        etf_is_global=etf_is_global,
        etf_proven=etf_proven,
        best_structure=best_name,
        best_rank=st["rank"],
        candidates=cands,
        search=search,
        Z=best_Z,
        bias=None if best_b is None else np.asarray(best_b, dtype=np.float64),
        WWt=st["WWt"],
        HtH=st["HtH"],
        WH=None if best_Z is None else best_Z.copy(),
        gram_unique=gram_unique,
        uniqueness_note=unote,
        active=st["active"],
        layers=st["layers"],
        notes=notes,
        basis=basis,
        values=values,
        sigma=sig,
        regularizer=reg,
    )


def _struct_values(problem: Problem, gamma: float, z: np.ndarray, mult: np.ndarray):
    """Per-mode values of WWt, HtH, WH and per-layer singular values for Z of singular values z (balanced
    factors, theory.md sec. 1.1 and 4): s = z^(1/(M+1)), sigma_j = sqrt(gamma/lambda_j) s."""
    M, n = problem.M, problem.counts[0]
    s = np.asarray(z, dtype=np.float64) ** (1.0 / (M + 1))
    alpha = np.asarray([math.sqrt(gamma / lj) for lj in problem.lambda_w])
    alpha_h = math.sqrt(gamma / (n * problem.lambda_h))
    values = {"WWt": (float(np.prod(alpha)) * s**M) ** 2, "HtH": (alpha_h * s) ** 2,
              "WH": np.asarray(z, dtype=np.float64)}
    sigma = alpha[:, None] * s[None, :]
    return values, sigma, 0.5 * gamma * float(np.sum(mult * s**2))


def construct_ce(problem: Problem, solution: CESolution):
    """Explicit balanced W_1..W_M (W_j: d_{j+1} x d_j), H (d x N) and b attaining ``solution.objective``.

    With the compact SVD Z = U diag(z) V^T (rank r <= R) and s = z^(1/(M+1)): Hbar = E_1 diag(a_H s) V^T,
    W_j = E_{j+1} diag(a_j s) E_j^T (j < M), W_M = U diag(a_M s) E_M^T, where E_j are the first r
    coordinate vectors of R^(d_j), a_j = sqrt(gamma/lambda_j), a_H = sqrt(gamma/(n lambda_H)); every
    sample of class k gets the feature h_k.
    """
    _check_problem(problem)
    if not isinstance(solution, CESolution):
        raise TypeError(f"solution must be a CESolution (from solve_ce), got {type(solution).__name__}")
    K, M, n = problem.K, problem.M, problem.counts[0]
    _check_construct_memory(problem)
    gamma = ce_gamma(problem)
    if solution.Z is not None:
        U, z, Vt = _spectral(np.asarray(solution.Z, dtype=np.float64))
    else:  # structured (large K): Z = scale * Pi, Pi = Q Q^T
        U, mode = solution.basis.vectors()
        z, Vt = np.asarray(solution.values["WH"])[mode], U.T
    r = z.size
    s = z ** (1.0 / (M + 1))
    dims = list(problem.widths) + [K]
    weights = []
    for j in range(M):
        a = math.sqrt(gamma / problem.lambda_w[j])
        W = np.zeros((dims[j + 1], dims[j]))
        if j == M - 1:
            W[:, :r] = U * (a * s)
        else:
            W[:r, :r] = np.diag(a * s)
        weights.append(W)
    Hbar = np.zeros((dims[0], K))
    Hbar[:r] = (math.sqrt(gamma / (n * problem.lambda_h)) * s)[:, None] * Vt
    H = np.repeat(Hbar, n, axis=1)
    b = None if solution.bias is None else np.array(solution.bias, dtype=np.float64)
    return weights, H, b


def _check_construct_memory(problem: Problem) -> None:
    """Refuse building W_1..W_M and H (d x N) when they cannot fit."""
    from nclab.theory.resources import check_memory

    dims = list(problem.widths) + [problem.K]
    n_weights = sum(float(dims[j + 1]) * dims[j] for j in range(problem.M))
    basis = 2.0 * problem.K * min(problem.K, problem.rank_budget)  # the active eigenvectors, K x r (twice)
    # peak = all of these at once, when H is repeated from the class means Hbar (d x K, counted once); the r x K
    # temporary that fills Hbar is gone by then and is never larger than H (d x N)
    check_memory(8.0 * (n_weights + float(dims[0]) * problem.N + float(dims[0]) * problem.K + basis),
                 f"the explicit minimizer (W_1..W_M and H of {dims[0]:,} x {problem.N:,})")
