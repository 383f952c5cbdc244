"""Cross-entropy with any class counts, M = 1: a certified solver of the convex reduced problem.

Reduction (exact, R = min(K, d) >= K - 1). NC1 holds (each h_i solves a strictly convex problem given W, b),
so H repeats the class means Hbar (d x K) n_k times and ||H||^2 = ||Hbar D^(1/2)||^2, D = diag(n). With
A = W Hbar D^(1/2) = Z D^(1/2) the factorization lemma (theory.md sec. 1.1, two factors W and Hbar D^(1/2))
gives min lambda_W/2 ||W||^2 + lambda_H/2 ||Hbar D^(1/2)||^2 = mu ||A||_*, mu = sqrt(lambda_W lambda_H), so

    f* = min_{Z, b}  sum_k pi_k CE(Z e_k + b, k) + mu ||Z D^(1/2)||_*,      pi_k = n_k / N,

a convex K x K problem in the class logits Z (= the sample-level nuclear norm ||W H||_*, whose columns repeat
Z e_k n_k times). Balanced counts give mu sqrt(n) ||Z||_* = gamma ||Z||_*, the M = 1 case of ``ce.py``.
Shifting a column of Z by a constant leaves CE unchanged and P = I - 1 1^T/K can only shrink the nuclear
norm, so the optimum has 1^T Z = 0 (rank <= K - 1). CE is strictly convex in the centred logits, so the
optimal Z (and with it every Gram) is unique.

Symmetry. Classes with equal counts are exchangeable, so the unique optimum is invariant under permutations
inside each group of equal counts: with G groups (sizes m_g, counts n_g) the block (g, h) of Z is
a_gh 1 1^T + [g = h] alpha_h I. Z D^(1/2) then maps the zero-sum vectors of group h to alpha_h sqrt(n_h)
times themselves (singular value |alpha_h| sqrt(n_h), multiplicity m_h - 1) and acts on the span of the group
indicators by the G x G matrix B_gh = sqrt(m_g m_h n_h) a_gh + [g = h] sqrt(n_h) alpha_h. The problem becomes

    min  sum_h (m_h n_h/N) CE_h(a, alpha, b) + mu (||B||_* + sum_h (m_h - 1) sqrt(n_h) |alpha_h|),

of size G x G (G = K for all-distinct counts). It is solved by L-BFGS on a Burer-Monteiro factorization
(B = U V^T, sqrt(n_h) alpha_h = x_h y_h with the penalty mu/2 (||U||^2 + ||V||^2 + sum (m_h-1)(x_h^2+y_h^2)),
whose minimum over factorizations is the nuclear norm), then certified by a dual point.

Certificate (Fenchel dual). With CE(u, k) = max_{p in simplex} <p - e_k, u> + Ent(p),

    dual:  max_P  sum_k pi_k Ent(p_k)   s.t.  ||Gam(P)||_2 <= mu,  [bias: sum_k pi_k (p_k - e_k) = 0],
    Gam(P) = [sqrt(n_k)/N (p_k - e_k)]_k  (the gradient of the data term in A).

From the primal softmax P: (bias) mix every p_k with a common distribution w by a tiny weight s so the
bias constraint holds, then mix with the one-hot e_k by t = min(1, mu/||Gam||_2) so the norm constraint holds
(both keep the group symmetry; ||Gam||_2 = max(||Gam_B||_2, |beta_h|) over the same decomposition). Every
feasible P gives a lower bound, the primal point (centred, nuclear norm by SVD) an upper bound; their
difference is the reported ``gap``. ``certified`` means rel_gap <= tol (default 1e-10), to float64 rounding.

Minority collapse (exact, from the certificate). At alpha_h = 0 the own and same-group logits of a group-h
sample are equal, so the within-group block of Gam is -sqrt(n_h)/N whatever the other variables are: the
optimality condition for alpha_h = 0 is sqrt(n_h)/N <= mu. Hence the m_h >= 2 classes of count n_h have
merged classifier rows (and merged class means) **iff n_h <= N^2 lambda_W lambda_H**, with or without bias.
Balanced counts: n <= K^2 n^2 lambda_W lambda_H, i.e. gamma >= 1/K, the ETF's trivial threshold.

M >= 2 (:func:`solve_ce_imbalanced_deep`): the same reduction with M+1 factors gives the penalty
(M+1)/2 gamma' sum_i sigma_i(Z D^(1/2))^(2/(M+1)), gamma' = (prod_j lambda_j lambda_H)^(1/(M+1)) (a Schatten
quasi-norm, nonconvex): a multi-start search over ranks reports the best value found, never certified.

Scope: the grouped problem has G = number of distinct counts; G <= MAX_DISTINCT_COUNTS (K is unbounded when
the counts repeat; dense K x K outputs up to DENSE_MAX_K).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize
from scipy.special import xlogy

from nclab.theory.ce import _Factored
from nclab.theory.problem import Problem
from nclab.theory.resources import single_thread_blas

#: default target of the relative duality gap
GAP_RTOL = 1e-10
#: relative size below which two classifier rows (or class means) count as merged
MERGE_RTOL = 1e-6
#: largest K for which the dense K x K Grams are formed
DENSE_MAX_K = 2048
#: largest number of distinct class counts (the solver runs on G x G factors: about 1 s at G = 100)
MAX_DISTINCT_COUNTS = 512


# ---------------------------------------------------------------------------------------------
# the grouped reduced problem
# ---------------------------------------------------------------------------------------------
def class_groups(counts: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Groups of equal counts: (n_g, m_g, index) with counts == n_g[index]; n_g sorted decreasingly."""
    c = np.asarray(counts, dtype=np.float64)
    vals, inv, mult = np.unique(-c, return_inverse=True, return_counts=True)
    return -vals, mult.astype(np.int64), inv.ravel()


class _Grouped:
    """The reduced problem over (a, alpha, b) for groups (n_g, m_g); see the module docstring."""

    def __init__(self, n, m, mu: float, bias: bool):
        self.n = np.asarray(n, dtype=np.float64)
        self.m = np.asarray(m, dtype=np.float64)
        self.G = self.n.size
        self.N = float(np.sum(self.m * self.n))
        self.K = float(np.sum(self.m))
        self.mu = float(mu)
        self.bias = bool(bias)
        self.w = self.m * self.n / self.N  # weight of group h's samples
        self.c = np.sqrt(np.outer(self.m, self.m * self.n))  # B_gh = c_gh a_gh + [g=h] sqrt(n_h) alpha_h
        self.multi = self.m >= 2
        # logit-difference weights: row g of column h counts classes of group g other than the own class
        self.wt = self.m[:, None] - np.eye(self.G)

    # -- the data term at (a, alpha, b) --
    def logits(self, a, alpha, b):
        """D[g, h]: logit of a group-g class (not the own one) minus the own logit, for a group-h sample."""
        ell = a + (b[:, None] if b is not None else 0.0)
        own = np.diag(ell) + alpha
        return ell - own[None, :]

    def data(self, a, alpha, b):
        """(loss, S, D) with S_h = sum_g wt_gh e^(D_gh), CE_h = log(1 + S_h) (stable for large and small S)."""
        D = self.logits(a, alpha, b)
        wt = self.wt
        mx = np.max(np.where(wt > 0, D, -np.inf), axis=0)
        mx = np.where(np.isfinite(mx), mx, 0.0)
        mpos = np.maximum(mx, 0.0)
        E = np.where(wt > 0, wt * np.exp(np.minimum(D - mpos[None, :], 0.0)), 0.0)
        rest = E.sum(axis=0)
        ce = np.where(mpos > 0, mpos + np.log(np.exp(-mpos) + rest), np.log1p(rest))
        return float(np.sum(self.w * ce)), ce, D

    def probs(self, D):
        """Per-class probabilities of a group-h sample: Q[g, h] (one class of group g, not the own one) and
        r_h = 1 - P_own (computed as the sum of the others, no cancellation)."""
        wt = self.wt
        mx = np.max(np.where(wt > 0, D, -np.inf), axis=0)
        mx = np.where(np.isfinite(mx), mx, 0.0)
        mpos = np.maximum(mx, 0.0)
        num = np.where(wt > 0, np.exp(np.minimum(D - mpos[None, :], 0.0)), 0.0)  # e^(D - mpos)
        den = np.exp(-mpos) + np.sum(wt * num, axis=0)  # (1 + S) e^(-mpos)
        Q = num / den[None, :]
        r = np.sum(wt * Q, axis=0)
        return Q, r

    def B_of(self, a, alpha):
        return self.c * a + np.diag(np.sqrt(self.n) * alpha)

    def penalty(self, a, alpha):
        s = np.linalg.svd(self.B_of(a, alpha), compute_uv=False)
        return self.mu * (float(np.sum(s)) + float(np.sum((self.m - 1) * np.sqrt(self.n) * np.abs(alpha))))

    def center(self, a, alpha, b):
        """P Z (column means removed: CE unchanged, nuclear norm not larger) and b - mean(b)."""
        col = (self.m @ a + alpha) / self.K
        a = a - col[None, :]
        if b is not None:
            b = b - float(self.m @ b) / self.K
        return a, alpha, b

    # -- Burer-Monteiro parameterization --
    def unpack(self, x):
        G = self.G
        U = x[: G * G].reshape(G, G)
        V = x[G * G : 2 * G * G].reshape(G, G)
        i = 2 * G * G
        xs, ys = x[i : i + G], x[i + G : i + 2 * G]
        b = x[i + 2 * G :] if self.bias else None
        return U, V, xs, ys, b

    def point(self, x):
        U, V, xs, ys, b = self.unpack(x)
        s = np.where(self.multi, xs * ys, 0.0)
        alpha = s / np.sqrt(self.n)
        a = (U @ V.T - np.diag(s)) / self.c
        return a, alpha, b

    def fg(self, x):
        U, V, xs, ys, b = self.unpack(x)
        s = np.where(self.multi, xs * ys, 0.0)
        alpha = s / np.sqrt(self.n)
        a = (U @ V.T - np.diag(s)) / self.c
        loss, _, D = self.data(a, alpha, b)
        Q, r = self.probs(D)
        # dL/d ell_gh (ell = a + b): w_h (m_g Q_gh - [g=h] (1 - P_same... )) written with the own class apart
        dl = self.w[None, :] * (self.wt * Q)
        dl[np.diag_indices(self.G)] -= self.w * r  # own logit: w_h (P_own - 1) = -w_h r_h
        dalpha = -self.w * r
        dB = dl / self.c
        ds = (-np.diag(dl) / np.diag(self.c) + dalpha / np.sqrt(self.n)) * self.multi
        mu = self.mu
        gU = dB @ V + mu * U
        gV = dB.T @ U + mu * V
        wm = (self.m - 1) * self.multi
        gx = ds * ys + mu * wm * xs
        gy = ds * xs + mu * wm * ys
        val = loss + 0.5 * mu * (float(np.sum(U * U) + np.sum(V * V)) + float(np.sum(wm * (xs * xs + ys * ys))))
        parts = [gU.ravel(), gV.ravel(), gx, gy]
        if self.bias:
            parts.append(dl.sum(axis=1))
        return val, np.concatenate(parts)

    def start(self, rng):
        """Balanced-ETF-like start: Z = z (I - 1 1^T/K) at the balanced optimal scale, factored."""
        K = self.K
        gam = self.mu * math.sqrt(self.N / K)
        z = math.log(1.0 / gam - (K - 1)) if gam * K < 1 else 1.0
        z = max(z, 1.0)
        a = np.full((self.G, self.G), -z / K)
        alpha = np.full(self.G, z)
        a[np.diag_indices(self.G)] += np.where(self.multi, 0.0, z)
        alpha = np.where(self.multi, alpha, 0.0)
        B = self.B_of(a, alpha)
        Ub, sb, Vbt = np.linalg.svd(B)
        U = Ub * np.sqrt(sb) + 1e-3 * rng.standard_normal(B.shape)
        V = Vbt.T * np.sqrt(sb) + 1e-3 * rng.standard_normal(B.shape)
        t = np.sqrt(np.abs(np.sqrt(self.n) * alpha))
        parts = [U.ravel(), V.ravel(), t, t]
        if self.bias:
            parts.append(np.log(self.n / self.N))
        return np.concatenate(parts)

    # -- the certificate --
    def certificate(self, a, alpha, b):
        """(primal, dual, ||Gam||_2 before scaling, bias residual repaired) at a centred primal point."""
        loss, _, D = self.data(a, alpha, b)
        primal = loss + self.penalty(a, alpha)
        Q, r = self.probs(D)  # per-class probabilities, own = 1 - r
        m, n, N = self.m, self.n, self.N
        own = 1.0 - r
        s = 0.0
        if self.bias:
            # class-level mixture q_g (one class of group g) over all samples, target n_g/N
            qg = (n * (own + (m - 1) * np.diag(Q)) + (self.w * N * Q).sum(axis=1) - m * n * np.diag(Q)) / N
            target = n / N
            s = max(0.0, 1.0 - float(np.min(target / qg)))
            if s > 0:
                wv = (target - (1.0 - s) * qg) / s
                wv = np.maximum(wv, 0.0)
                tot = float(m @ wv)
                # s at rounding level (~1e-16): the numerator is noise and can clip to all zeros; the residual is
                # then rounding-sized and any distribution will do (found by the Hong & Ling sweep k_A = 3)
                wv = wv / tot if tot > 0 and math.isfinite(tot) else target.copy()
                Q = (1.0 - s) * Q + s * wv[:, None]
                r = (1.0 - s) * r + s * (1.0 - wv)
                own = 1.0 - r
        # Gam in the group decomposition: block (g,h) = c_gh 1 1^T + [g=h] beta_h I
        sq = np.sqrt(n)
        cmat = (sq / N)[None, :] * Q  # column h: class of group g (not own)
        beta = sq / N * (own - 1.0 - np.diag(Q))
        GB = np.sqrt(np.outer(m, m)) * cmat + np.diag(beta)
        gnorm = float(np.linalg.norm(GB, 2))
        if np.any(self.multi):
            gnorm = max(gnorm, float(np.max(np.abs(beta[self.multi]))))
        t = 1.0 if gnorm <= self.mu else self.mu / gnorm
        # entropy of p_t = (1 - t) e_own + t p
        Qt, rt = t * Q, t * r
        ent_other = -np.sum(self.wt * xlogy(Qt, Qt), axis=0)
        ent_own = -(1.0 - rt) * np.log1p(-rt)
        dual = float(np.sum(self.w * (ent_other + ent_own)))
        return primal, dual, gnorm, s


def _solve_grouped(n, m, mu, bias, *, tol=GAP_RTOL, seed=0, max_newton=40, snap=True, lbfgs_iters=300):
    """L-BFGS on the Burer-Monteiro form, then Newton-CG steps (Hessian-vector products by central differences
    of the exact gradient) until the certified relative gap is below ``tol`` or stops improving.

    L-BFGS stalls where the objective no longer resolves its progress (the gap is first order in the gradient,
    the objective second order), which Newton does not need: it drives the gradient itself to rounding level.
    """
    prob = _Grouped(n, m, mu, bias)
    rng = np.random.default_rng(seed)
    x = prob.start(rng)
    res = minimize(prob.fg, x, jac=True, method="L-BFGS-B",
                   options={"maxiter": lbfgs_iters, "maxfun": 2 * lbfgs_iters, "ftol": 0.0, "gtol": 1e-8,
                            "maxcor": 10})
    iters = int(res.nit)
    x = _refactor(prob, *prob.center(*prob.point(res.x)))

    def evaluate(x):
        a, alpha, b = prob.center(*prob.point(x))
        primal, dual, gnorm, s = prob.certificate(a, alpha, b)
        return (max(primal - dual, 0.0), primal, dual, a, alpha, b, gnorm, s)

    best = evaluate(x)
    fx = prob.fg(x)[0]
    newton = 0
    for newton in range(1, max_newton + 1):
        if best[0] <= tol * max(abs(best[1]), 1e-300):
            newton -= 1
            break
        d = _newton_dir(prob, x)
        step, accepted = 1.0, False
        for _ in range(30):  # backtracking: accept a lower gap or a lower objective
            x_new = x + step * d
            f_new = prob.fg(x_new)[0]
            cand = evaluate(x_new)
            if cand[0] < best[0] or f_new < fx:
                accepted = True
                break
            step *= 0.5
        if not accepted:
            break
        x = _refactor(prob, cand[3], cand[4], cand[5])
        fx = prob.fg(x)[0]
        if cand[0] < best[0]:
            best = cand
    if snap:
        # exact minority collapse (module doc): alpha_g = 0 iff n_g <= N^2 mu^2; snap the rounding residue
        zero = prob.multi & (prob.n <= prob.N**2 * mu * mu)
        if np.any(zero & (best[4] != 0)):
            alpha0 = np.where(zero, 0.0, best[4])
            a0, alpha0, b0 = prob.center(best[3], alpha0, best[5])
            primal, dual, gnorm, s = prob.certificate(a0, alpha0, b0)
            cand = (max(primal - dual, 0.0), primal, dual, a0, alpha0, b0, gnorm, s)
            if cand[0] <= max(best[0], tol * abs(primal)):
                best = cand
        # zero logits are optimal iff the data gradient at Z = 0 has ||Gam||_2 <= mu; the solver then ends at
        # rounding-level logits (~1e-15) that read as a rank-2 code: keep the exact zero point when it certifies
        b0 = None if not bias else np.log(prob.n / prob.N) - float(prob.m @ np.log(prob.n / prob.N)) / prob.K
        z0 = (np.zeros((prob.G, prob.G)), np.zeros(prob.G), b0)
        primal, dual, gnorm, s = prob.certificate(*z0)
        if gnorm <= mu and max(primal - dual, 0.0) <= max(best[0], tol * abs(primal)):
            best = (max(primal - dual, 0.0), primal, dual, *z0, gnorm, s)
    gap, primal, dual, a, alpha, b, gnorm, s = best
    return prob, dict(a=a, alpha=alpha, b=b, primal=primal, dual=dual, gap=gap, gnorm=gnorm,
                      bias_repair=s, iterations=iters, newton=newton)


def _newton_dir(prob: _Grouped, x, cg_iters: int | None = None):
    """d with H d = -g solved by conjugate gradients (gauge directions of U V^T are in the null space of H
    and orthogonal to g, so CG stays in the range); stops at negative curvature or a small residual."""
    g = prob.fg(x)[1]
    gn = float(np.linalg.norm(g))
    if gn == 0:
        return np.zeros_like(x)
    xs = max(float(np.linalg.norm(x)), 1.0)

    def hvp(v):
        vn = float(np.linalg.norm(v))
        eps = 1e-6 * xs / vn
        return (prob.fg(x + eps * v)[1] - prob.fg(x - eps * v)[1]) / (2 * eps)

    d = np.zeros_like(x)
    r = -g
    p = r.copy()
    rr = float(r @ r)
    for _ in range(cg_iters or min(x.size, 400)):
        Hp = hvp(p)
        pHp = float(p @ Hp)
        if pHp <= 0:
            break
        al = rr / pHp
        d += al * p
        r -= al * Hp
        rr_new = float(r @ r)
        if math.sqrt(rr_new) <= 1e-3 * gn:
            break
        p = r + (rr_new / rr) * p
        rr = rr_new
    return d if np.any(d) else -g


def _refactor(prob: _Grouped, a, alpha, b):
    B = prob.B_of(a, alpha)
    U, s, Vt = np.linalg.svd(B)
    t = np.sqrt(np.abs(np.sqrt(prob.n) * alpha))
    sg = np.sign(alpha)
    parts = [(U * np.sqrt(s)).ravel(), (Vt.T * np.sqrt(s)).ravel(), t, sg * t]
    if prob.bias:
        parts.append(b)
    return np.concatenate(parts)


# ---------------------------------------------------------------------------------------------
# result
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImbalancedCESolution:
    """Result of :func:`solve_ce_imbalanced` (M = 1, any counts). Arrays are float64.

    Attributes
    ----------
    problem : Problem
    objective : float, f* = the primal value of the returned point (an upper bound on the global minimum)
    lower_bound : float, the dual value (a lower bound on the global minimum)
    gap, rel_gap : float, objective - lower_bound (>= 0) and gap / objective
    certified : bool, rel_gap <= tol
    objective_zero : float, value at W = 0, H = 0 (b optimal with bias)
    mu : float, sqrt(lambda_W lambda_H), weight of ||Z D^(1/2)||_*
    Z, WH : ndarray (K, K), class logits W Hbar (centred: 1^T Z = 0); None above DENSE_MAX_K
    bias : ndarray (K,) (mean 0) or None
    WWt, HtH : ndarray (K, K), Grams of the classifier rows and of the class means (balanced factorization)
    w_norms, h_norms : ndarray (K,), ||w_k|| and ||h_k||
    rank : int, rank of Z
    merged : list of lists of class indices whose classifier rows (and class means) coincide
    collapse_count : float, N^2 lambda_W lambda_H: a group of >= 2 classes with equal count n merges iff
        n <= collapse_count (exact, see the module docstring)
    groups : dict, the equal-count groups: counts n_g, sizes m_g, alpha_g (within-group logit gap; 0 = merged)
    solver : dict, iterations, rounds, seconds, ||Gam||_2 / mu, bias repair weight
    notes : list of str
    """

    problem: Problem
    objective: float
    lower_bound: float
    gap: float
    rel_gap: float
    certified: bool
    objective_zero: float
    mu: float
    Z: np.ndarray | None
    WH: np.ndarray | None
    bias: np.ndarray | None
    WWt: np.ndarray | None
    HtH: np.ndarray | None
    w_norms: np.ndarray
    h_norms: np.ndarray
    rank: int
    merged: list
    collapse_count: float
    groups: dict
    solver: dict
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        out = {}
        for k in self.__dataclass_fields__:
            v = getattr(self, k)
            if k == "problem":
                v = v.to_dict()
            elif isinstance(v, np.ndarray):
                v = v.tolist()
            elif isinstance(v, dict):
                v = {kk: (vv.tolist() if isinstance(vv, np.ndarray) else vv) for kk, vv in v.items()}
            out[k] = v
        return out


def _check(problem) -> Problem:
    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be an nclab.theory.Problem (see make_problem), got {type(problem).__name__}")
    if problem.loss != "ce":
        raise ValueError(f"solve_ce_imbalanced needs loss 'ce', got {problem.loss!r}")
    if problem.M != 1:
        raise ValueError(f"solve_ce_imbalanced is the M = 1 certified solver; got depth M = {problem.M}")
    if problem.rank_budget < problem.K - 1:
        raise ValueError(
            f"the width d = {problem.widths[0]} is below K - 1 = {problem.K - 1}: the problem is rank-constrained "
            "(not convex) and the certified solver does not apply"
        )
    return problem


def _zero_value(n, m, bias: bool) -> float:
    """Value at Z = 0: log K bias-free; with bias the optimal b = log(pi) gives the entropy of pi."""
    n, m = np.asarray(n, float), np.asarray(m, float)
    K, N = float(m.sum()), float(m @ n)
    if not bias:
        return math.log(K)
    pi = n / N
    return float(-np.sum(m * xlogy(pi, pi)))


def solve_ce_imbalanced(problem: Problem, *, tol: float = GAP_RTOL, seed: int = 0) -> ImbalancedCESolution:
    """Certified global minimizer of the M = 1 UFM with cross-entropy and any class counts (module doc)."""
    _check(problem)
    t0 = time.perf_counter()
    lam_w, lam_h = problem.lambda_w[0], problem.lambda_h
    mu = math.sqrt(lam_w * lam_h)
    n, m, idx = class_groups(problem.counts)
    if n.size > MAX_DISTINCT_COUNTS:
        raise ValueError(f"{n.size:,} distinct class counts: the certified solver handles at most "
                         f"{MAX_DISTINCT_COUNTS} (it works on G x G factors, G = distinct counts)")
    with single_thread_blas():
        prob, res = _solve_grouped(n, m, mu, problem.bias, tol=tol, seed=seed)
    K, N = problem.K, problem.N
    a, alpha, b = res["a"], res["alpha"], res["b"]
    primal, dual, gap = res["primal"], res["dual"], res["gap"]
    rel = gap / max(abs(primal), 1e-300)
    notes = []
    collapse = N * N * lam_w * lam_h
    # merged within groups: exact iff n_g <= collapse (certificate); numerically alpha ~ 0
    scale_alpha = max(float(np.max(np.abs(alpha))), float(np.max(np.abs(a))), 1e-300)
    group_merged = [bool(mg >= 2 and abs(al) <= MERGE_RTOL * scale_alpha) for mg, al in zip(m, alpha)]
    Z = WWt = HtH = None
    bias_full = None if b is None else b[idx].astype(np.float64)
    if K <= DENSE_MAX_K:
        Z = a[np.ix_(idx, idx)] + np.diag(alpha[idx])
        sqn = np.sqrt(np.asarray(problem.counts, dtype=np.float64))
        U, s, Vt = np.linalg.svd(Z * sqn[None, :])
        keep = s > 1e-12 * max(s[0], 1e-300) if s.size and s[0] > 0 else np.zeros(s.size, bool)
        U, s, Vt = U[:, keep], s[keep], Vt[keep]
        WWt = math.sqrt(lam_h / lam_w) * (U * s) @ U.T
        HtH = math.sqrt(lam_w / lam_h) * ((Vt.T * s) @ Vt) / np.outer(sqn, sqn)
        rank = int(s.size)
        wn = np.sqrt(np.maximum(np.diag(WWt), 0.0))
        hn = np.sqrt(np.maximum(np.diag(HtH), 0.0))
        merged = _merged_sets(WWt, wn)
    else:
        notes.append(f"K = {K:,} > {DENSE_MAX_K}: the dense Grams are not formed")
        # norms from the group decomposition: ||w_k||^2 = e_k^T WWt e_k (within-group + indicator parts)
        wn, hn = _group_norms(prob, a, alpha, idx, lam_w, lam_h)
        # singular values of Z D^(1/2): those of B and |alpha_h| sqrt(n_h) (module doc); the cut is relative to
        # the largest, as in the dense branch (an absolute cut reads rounding noise as rank at large counts)
        sb = np.linalg.svd(prob.B_of(a, alpha), compute_uv=False)
        s_max = max(float(np.max(sb)), float(np.max(np.abs(alpha) * np.sqrt(prob.n))))
        rank_b = int(np.sum(sb > 1e-12 * s_max)) if s_max > 0 else 0
        rank = rank_b + int(np.sum((m - 1) * (np.abs(alpha) > MERGE_RTOL * scale_alpha)))
        merged = [list(np.nonzero(idx == g)[0]) for g in range(len(m)) if group_merged[g]]
    for g in range(len(m)):
        if m[g] >= 2 and group_merged[g] != bool(n[g] <= collapse):
            notes.append(f"group of count {n[g]:g}: numerical merge {group_merged[g]} disagrees with the exact "
                         f"threshold n <= {collapse:.6g} (near the threshold)")
    sol = ImbalancedCESolution(
        problem=problem, objective=float(primal), lower_bound=float(dual), gap=float(gap), rel_gap=float(rel),
        certified=bool(rel <= tol), objective_zero=_zero_value(n, m, problem.bias), mu=mu,
        Z=Z, WH=None if Z is None else Z.copy(), bias=bias_full, WWt=WWt, HtH=HtH,
        w_norms=wn, h_norms=hn, rank=rank, merged=merged, collapse_count=float(collapse),
        groups={"counts": n, "sizes": m, "alpha": alpha, "merged": group_merged, "a": a},
        solver={"iterations": res["iterations"], "newton": res["newton"], "seconds": time.perf_counter() - t0,
                "gamma_norm_over_mu": res["gnorm"] / mu, "bias_repair": res["bias_repair"],
                "method": "L-BFGS on the Burer-Monteiro form of the grouped problem, Fenchel dual certificate"},
        notes=notes,
    )
    return sol


def _merged_sets(WWt, wn) -> list:
    K = wn.size
    scale = max(float(np.max(wn)), 1e-300)
    d2 = wn[:, None] ** 2 + wn[None, :] ** 2 - 2 * WWt
    close = np.sqrt(np.maximum(d2, 0.0)) <= MERGE_RTOL * scale * 10
    seen, out = np.zeros(K, bool), []
    for k in range(K):
        if seen[k]:
            continue
        grp = np.nonzero(close[k] & ~seen)[0]
        seen[grp] = True
        if grp.size >= 2:
            out.append([int(i) for i in grp])
    return out


def _group_norms(prob, a, alpha, idx, lam_w, lam_h):
    """||w_k||, ||h_k|| without K x K matrices: within-group part |alpha| sqrt(n) (1 - 1/m) plus the indicator
    part from the G x G B (WWt = sqrt(lam_h/lam_w) |A|_left, HtH = sqrt(lam_w/lam_h) D^-1/2 |A|_right D^-1/2)."""
    B = prob.B_of(a, alpha)
    U, s, Vt = np.linalg.svd(B)
    L = (U * s) @ U.T
    Rm = (Vt.T * s) @ Vt
    m, n = prob.m, prob.n
    within = np.abs(alpha) * np.sqrt(n) * (1.0 - 1.0 / m)
    w2 = math.sqrt(lam_h / lam_w) * (np.diag(L) / m + within)
    h2 = math.sqrt(lam_w / lam_h) * (np.diag(Rm) / m + within) / n
    return np.sqrt(np.maximum(w2, 0))[idx], np.sqrt(np.maximum(h2, 0))[idx]


def construct_ce_imbalanced(problem: Problem, solution: ImbalancedCESolution):
    """Explicit W (K x d), H (d x N) and b attaining ``solution.objective`` (balanced factorization of
    A = Z D^(1/2) = U S V^T: W = (lambda_H/lambda_W)^(1/4) U S^(1/2), Hbar = (lambda_W/lambda_H)^(1/4)
    S^(1/2) V^T D^(-1/2); every sample of class k gets h_k)."""
    _check(problem)
    if solution.Z is None:
        raise ValueError(f"construct needs the dense logits (K <= {DENSE_MAX_K})")
    lam_w, lam_h = problem.lambda_w[0], problem.lambda_h
    K, d = problem.K, problem.widths[0]
    sqn = np.sqrt(np.asarray(problem.counts, dtype=np.float64))
    U, s, Vt = np.linalg.svd(solution.Z * sqn[None, :])
    r = min(int(np.sum(s > 1e-15 * max(s[0], 1e-300))) if s[0] > 0 else 0, d)
    W = np.zeros((K, d))
    W[:, :r] = (lam_h / lam_w) ** 0.25 * U[:, :r] * np.sqrt(s[:r])
    Hbar = np.zeros((d, K))
    Hbar[:r] = (lam_w / lam_h) ** 0.25 * np.sqrt(s[:r])[:, None] * Vt[:r] / sqn[None, :]
    H = np.repeat(Hbar, np.asarray(problem.counts, dtype=np.int64), axis=1)
    b = None if solution.bias is None else solution.bias.copy()
    return [W], H, b


# ---------------------------------------------------------------------------------------------
# minority collapse
# ---------------------------------------------------------------------------------------------
def solve_grouped_counts(counts, sizes, lambda_w: float, lambda_h: float, bias: bool = False, *,
                         tol: float = GAP_RTOL, seed: int = 0, snap: bool = True) -> dict:
    """The certified solver on groups directly: ``counts`` n_g (real numbers > 0 allowed, for scans),
    ``sizes`` m_g (classes per group). Returns the primal/dual values, gap, a (G x G), alpha (G), b and
    ``merged`` (per group: |alpha_g| <= MERGE_RTOL of the logit scale). ``snap`` sets alpha_g = 0 exactly
    where the collapse criterion n_g <= N^2 lambda_W lambda_H holds (kept only if the gap stays certified);
    snap=False leaves the solver's own point (what the bisection of minority_collapse_threshold uses)."""
    n = np.asarray(counts, dtype=np.float64)
    m = np.asarray(sizes, dtype=np.int64)
    if n.ndim != 1 or n.shape != m.shape or n.size < 1 or np.any(n <= 0) or np.any(m < 1) or m.sum() < 2:
        raise ValueError("counts and sizes must be equal-length lists of positive numbers (at least 2 classes)")
    mu = math.sqrt(float(lambda_w) * float(lambda_h))
    with single_thread_blas():
        _, res = _solve_grouped(n, m, mu, bool(bias), tol=tol, seed=seed, snap=snap)
    res["rel_gap"] = res["gap"] / max(abs(res["primal"]), 1e-300)
    scale = max(float(np.max(np.abs(res["alpha"]))), float(np.max(np.abs(res["a"]))), 1e-300)
    # Z = 0 optimal (the certified lower bound reaches the value at zero): every group's rows are equal (all zero);
    # the point's alpha and a are then rounding noise, whose ratio says nothing
    zv = _zero_value(n, m, bool(bias))
    res["zero"] = bool(res["dual"] >= zv - 1e-12 * max(1.0, abs(zv)))
    res["merged"] = [bool(mg >= 2 and (res["zero"] or abs(al) <= MERGE_RTOL * scale))
                     for mg, al in zip(m, res["alpha"])]
    return res


def collapse_ratio_closed_form(n_major: float, k_major: int, k_minor: int, lambda_w: float, lambda_h: float) -> float:
    """Largest minority/majority count ratio rho = n_B/n_A at which the k_minor >= 2 minority classifier rows
    merge: the smaller root of lambda_W lambda_H (k_A n_A + k_B rho n_A)^2 = rho n_A (merged iff
    n_B <= N^2 lambda_W lambda_H). Returns inf where every ratio merges (no real root: over-regularized)."""
    lam2 = float(lambda_w) * float(lambda_h)
    A, B = k_major * n_major, k_minor * n_major
    # lam2 (A + B rho)^2 - n_A rho = 0  ->  lam2 B^2 rho^2 + (2 lam2 A B - n_A) rho + lam2 A^2 = 0
    qa, qb, qc = lam2 * B * B, 2 * lam2 * A * B - n_major, lam2 * A * A
    disc = qb * qb - 4 * qa * qc
    if disc < 0 or qb >= 0:
        return math.inf
    return 2 * qc / (-qb + math.sqrt(disc))  # smaller root, written without cancellation


def minority_collapse_threshold(n_major: float, k_major: int, k_minor: int, lambda_w: float, lambda_h: float,
                                bias: bool = False, *, rtol: float = 1e-7) -> dict:
    """Minority-collapse threshold of the two-cluster setting (k_major classes of n_major samples, k_minor >= 2
    classes of rho n_major), by bisection over rho on the certified solver's merge decision.

    Returns {"ratio": rho* (bisection), "ratio_closed_form": the exact root (see collapse_ratio_closed_form),
    "bracket": (lo, hi), "solves": number of certified solves}. Rows merge iff rho <= rho*.
    """
    k_major, k_minor = int(k_major), int(k_minor)
    if k_minor < 2 or k_major < 1:
        raise ValueError("need k_major >= 1 and k_minor >= 2 (a single class cannot merge with itself)")

    def merged(rho):
        r = solve_grouped_counts([n_major, rho * n_major], [k_major, k_minor], lambda_w, lambda_h, bias, snap=False)
        return r["merged"][1]

    lo, hi, solves = 0.0, 1.0, 1
    if merged(hi):
        return {"ratio": math.inf, "ratio_closed_form": collapse_ratio_closed_form(n_major, k_major, k_minor,
                                                                                   lambda_w, lambda_h),
                "bracket": (1.0, math.inf), "solves": solves, "note": "minority rows merge even at rho = 1"}
    lo = 1e-12
    while hi - lo > rtol * hi:
        mid = 0.5 * (lo + hi)
        solves += 1
        if merged(mid):
            lo = mid
        else:
            hi = mid
    return {"ratio": 0.5 * (lo + hi), "ratio_closed_form": collapse_ratio_closed_form(n_major, k_major, k_minor,
                                                                                      lambda_w, lambda_h),
            "bracket": (lo, hi), "solves": solves}


# ---------------------------------------------------------------------------------------------
# adapter for nclab.predict (Prediction(problem, ce=...))
# ---------------------------------------------------------------------------------------------
_SOLUTION_CLASS = []  # the class below, made once (CESolution is imported lazily)


def __getattr__(name: str):
    """``ImbalancedCEPrediction`` by name, made on first use: pickle finds the class here (a prediction inside a
    result that a worker process sends back, nclab.ufm.workers)."""
    if name == "ImbalancedCEPrediction":
        return _imbalanced_ce_solution_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _imbalanced_ce_solution_class():
    if _SOLUTION_CLASS:
        return _SOLUTION_CLASS[0]
    from nclab.theory.ce import CESolution

    @dataclass(frozen=True)
    class ImbalancedCEPrediction(CESolution):
        """A :class:`nclab.theory.ce.CESolution` for imbalanced counts, M = 1 (certified): the CE fields plus
        the certificate (``certified``, ``gap``, ``rel_gap``, ``lower_bound``), ``merged`` classifier rows,
        ``collapse_count`` (N^2 lambda_W lambda_H), per-class ``w_norms``/``h_norms`` and ``solver``."""

        certified: bool = False
        gap: float = math.nan
        rel_gap: float = math.nan
        lower_bound: float = math.nan
        merged: list = field(default_factory=list)
        collapse_count: float = math.nan
        w_norms: np.ndarray = None
        h_norms: np.ndarray = None
        solver: dict = field(default_factory=dict)
        minority_threshold: dict = None

    ImbalancedCEPrediction.__qualname__ = "ImbalancedCEPrediction"  # importable by name (module __getattr__)
    _SOLUTION_CLASS.append(ImbalancedCEPrediction)
    return ImbalancedCEPrediction


def _etf_candidate(problem: Problem, mu: float) -> tuple[float, float]:
    """Best Z = z (I - 1 1^T/K) with b = 0: phi(z) = log(1 + (K-1) e^-z) + mu z ||P D^(1/2)||_* (convex);
    an upper bound (b = 0 is feasible with a bias too). Returns (z, phi(z))."""
    K = problem.K
    Pm = np.eye(K) - 1.0 / K
    c = mu * float(np.sum(np.linalg.svd(Pm * np.sqrt(np.asarray(problem.counts, float))[None, :], compute_uv=False)))
    if c >= (K - 1) / K:  # phi'(0) = -(K-1)/K + c >= 0
        return 0.0, math.log(K)
    z = math.log((K - 1) * (1 - c) / c)
    return z, math.log1p((K - 1) * math.exp(-z)) + c * z


def as_ce_solution(problem: Problem, sol: ImbalancedCESolution | None = None):
    """The certified M = 1 solution as a ``CESolution`` (subclass ``ImbalancedCEPrediction``), so that
    ``Prediction(problem, ce=as_ce_solution(problem))`` gives every Prediction output (Grams, per-class
    table, layers, to_dict). Grams over ``LowRankBasis(U, D^(-1/2) V)`` with A = Z D^(1/2) = U diag(s) V^T:
    WWt = c U diag(s) U^T, HtH = c^-1 D^-1/2 V diag(s) V^T D^-1/2, WH = Z, c = sqrt(lambda_H/lambda_W)."""
    from nclab.theory.structure import LowRankBasis, ZeroBasis

    _check(problem)
    if sol is None:
        sol = solve_ce_imbalanced(problem)
    if sol.Z is None:
        raise ValueError(f"the Prediction adapter needs the dense logits (K <= {DENSE_MAX_K})")
    K, lam_w, lam_h = problem.K, problem.lambda_w[0], problem.lambda_h
    mu = sol.mu
    sqn = np.sqrt(np.asarray(problem.counts, dtype=np.float64))
    U, s, Vt = np.linalg.svd(sol.Z * sqn[None, :])
    r = int(np.sum(s > 1e-12 * s[0])) if s.size and s[0] > 0 else 0
    U, s, V = U[:, :r], s[:r], Vt[:r].T
    cw = math.sqrt(lam_h / lam_w)
    reg = 0.5 * mu * float(np.sum(s))
    basis = LowRankBasis(U, V / sqn[:, None]) if r else ZeroBasis(K)
    values = {"WWt": cw * s, "HtH": s / cw, "WH": s.copy()}
    sigma = np.sqrt(cw * s)[None, :]
    nc3 = cw * (U @ V.T) * sqn[None, :] if r else None
    layers = [{"sigma": sigma[0].copy(), "mean_gram": sol.HtH.copy(), "partial_gram": sol.WWt.copy(),
               "nc3_scale": nc3, "regularizer": reg}]
    etf_z, etf_val = _etf_candidate(problem, mu)
    tie = abs(etf_val - sol.objective) <= 1e-8 * abs(sol.objective)
    name = "zero" if r == 0 else (f"certified optimum (rank {r}" + (", merged classifier rows)" if sol.merged else ")"))
    scale_w, scale_h = max(float(sol.w_norms.max()), 1e-300), max(float(sol.h_norms.max()), 1e-300)
    active = [bool(w > 1e-6 * scale_w or h > 1e-6 * scale_h) for w, h in zip(sol.w_norms, sol.h_norms)]
    notes = list(sol.notes) + [
        f"M = 1, imbalanced counts: convex reduced problem solved to a certified relative duality gap "
        f"{sol.rel_gap:.2g} (certified: {sol.certified})",
        f"classes of equal count n merge (classifier rows and class means) iff n <= N^2 lambda_W lambda_H = "
        f"{sol.collapse_count:.6g}",
    ]
    if problem.bias:
        unote = ("the value and the centred logits P(Z e_k + b) are unique (CE is strictly convex in them); the "
                 "split of Z and b along row shifts is fixed by the nuclear norm, not proven unique")
    else:
        unote = "the optimum is unique (convex problem, strictly convex in the centred logits; Z = P Z)"
    cls = _imbalanced_ce_solution_class()
    return cls(
        problem=problem, objective=sol.objective, objective_zero=sol.objective_zero,
        gamma=mu * math.sqrt(problem.N / K), etf_z=etf_z, etf_objective=etf_val, etf_feasible=True,
        etf_gamma_c=None, etf_is_global=bool(tie), etf_proven=False, best_structure=name, best_rank=r,
        candidates={name: {"objective": sol.objective, "rank": r, "scale": float(s[0]) if r else 0.0},
                    "simplex ETF": {"objective": etf_val, "rank": K - 1 if etf_z > 0 else 0, "scale": etf_z},
                    "zero": {"objective": sol.objective_zero, "rank": 0, "scale": 0.0}},
        search={"run": False, "note": "M = 1: convex; certified solver (no search needed)"},
        Z=sol.Z.copy(), bias=None if sol.bias is None else sol.bias.copy(), WWt=sol.WWt.copy(),
        HtH=sol.HtH.copy(), WH=sol.Z.copy(), gram_unique=not problem.bias, uniqueness_note=unote, active=active,
        layers=layers, notes=notes, basis=basis, values=values, sigma=sigma, regularizer=reg,
        certified=sol.certified, gap=sol.gap, rel_gap=sol.rel_gap, lower_bound=sol.lower_bound,
        merged=sol.merged, collapse_count=sol.collapse_count, w_norms=sol.w_norms.copy(),
        h_norms=sol.h_norms.copy(), solver=dict(sol.solver), minority_threshold=_exact_threshold_doc(problem, sol),
    )


def _threshold_text(doc: dict) -> str:
    x = doc["threshold"]
    if math.isinf(x):
        return "the minority rows merge at every count up to the largest other count"
    if x == 0:
        return "the minority rows stay apart down to 1e-6 of the current count"
    return f"the minority rows merge iff their count is <= {x:.6g} (other counts fixed)"


def _exact_threshold_doc(problem: Problem, sol) -> dict | None:
    """The M = 1 minority threshold with the other counts fixed (exact root), in the M >= 2 report's form."""
    grp = minority_group(problem.counts)
    if grp is None:
        return None
    members, x0 = grp
    x = minority_threshold_exact(problem.counts, problem.lambda_w[0], problem.lambda_h)
    doc = {"threshold": x, "count": x0, "classes": [int(k) for k in members],
           "merged_now": bool(x0 <= sol.collapse_count), "certified": True,
           "note": "exact (M = 1): merged iff x <= (N_r + m x)^2 lambda_W lambda_H, N_r the other classes' samples"}
    doc["text"] = _threshold_text(doc)
    return doc


# ---------------------------------------------------------------------------------------------
# M >= 2: best found (not certified)
# ---------------------------------------------------------------------------------------------
def deep_gamma(problem: Problem) -> float:
    """gamma' = (prod_j lambda_j * lambda_H)^(1/(M+1)): the penalty is (M+1)/2 gamma' sum sigma_i(Z D^(1/2))^p."""
    logs = sum(math.log(v) for v in problem.lambda_w) + math.log(problem.lambda_h)
    return math.exp(logs / (problem.M + 1))


#: relative singular-value cutoff of Z D^(1/2) for M >= 2: below it a direction is rounding noise, which the
#: quasi-norm would still charge (1e-16^(1/2) = 1e-8); the reported point is the compact reconstruction
_DEEP_SV_RTOL = 1e-9


def _deep_clean(n, M: int, gam: float, Z: np.ndarray, b, max_rank: int | None = None):
    """(value, Z') with Z' the compact-SVD reconstruction of Z D^(1/2) (cutoff _DEEP_SV_RTOL), truncated
    further to its best top-k (k <= max_rank) for g; value = g(Z', b) over the kept singular values (what
    construct_ce_imbalanced_deep attains)."""
    n = np.asarray(n, dtype=np.float64)
    sq = np.sqrt(n)
    U, s, Vt = np.linalg.svd(Z * sq[None, :])
    k_max = int(np.sum(s > _DEEP_SV_RTOL * s[0])) if s.size and s[0] > 0 else 0
    if max_rank is not None:
        k_max = min(k_max, max_rank)
    pen = 0.5 * (M + 1) * gam
    best = None
    for k in range(k_max + 1):
        Zk = ((U[:, :k] * s[:k]) @ Vt[:k]) / sq[None, :]
        L = Zk if b is None else Zk + b[:, None]
        mx = L.max(axis=0)
        ce = mx + np.log(np.exp(L - mx).sum(axis=0)) - np.diag(L)
        v = float(n @ ce / n.sum()) + pen * float(np.sum(s[:k] ** (2.0 / (M + 1))))
        if best is None or v < best[0]:
            best = (v, Zk)
    return best


class _DeepFactored(_Factored):
    """Weighted CE with A = Z D^(1/2) = F[M] ... F[0] (F[0]: r x K, F[M]: K x r), (gamma'/2) sum ||F_i||^2: the
    balanced search's factorization (ce._Factored: shapes, pack, unpack, balanced starts, L-BFGS runs) with class
    weights n_k / N."""

    explore_maxiter = 1000  # the weighted problem needs longer exploring runs than the balanced one

    def __init__(self, counts, M: int, r: int, gam: float, bias: bool):
        n = np.asarray(counts, dtype=np.float64)
        super().__init__(n.size, M, r, gam, bias)
        self.sq, self.pi = np.sqrt(n), n / n.sum()

    def fg(self, x):
        F, b = self.unpack(x)
        pre = [F[0]]
        for f in F[1:]:
            pre.append(f @ pre[-1])
        L = pre[-1] / self.sq[None, :]
        if b is not None:
            L = L + b[:, None]
        mx = L.max(axis=0)
        E = np.exp(L - mx)
        S = E.sum(axis=0)
        val = float(self.pi @ (mx + np.log(S) - np.diag(L)))
        DL = (E / S - self.eye) * self.pi[None, :]
        D = DL / self.sq[None, :]  # gradient in A
        grads = [None] * len(F)
        Acc = None
        for i in range(len(F) - 1, -1, -1):
            left = D if Acc is None else Acc.T @ D
            grads[i] = left @ (self.eye if i == 0 else pre[i - 1].T) + self.gamma * F[i]
            Acc = F[i] if Acc is None else Acc @ F[i]
        val += 0.5 * self.gamma * sum(float(np.sum(f * f)) for f in F)
        return val, np.concatenate([g.ravel() for g in grads] + ([DL.sum(axis=1)] if self.bias else []))


#: largest K for the M >= 2 search (L-BFGS on dense K x K factors, one run per rank and start)
DEEP_MAX_K = 128
#: up to this K every rank 1..min(R, K-1) is searched; above, ranks 1, 2, 3, K/2, K-1 (as the balanced search)
DEEP_ALL_RANKS_MAX_K = 32


def deep_ranks(K: int, R: int) -> list[int]:
    """Ranks the M >= 2 search covers: all of 1..min(R, K-1) up to DEEP_ALL_RANKS_MAX_K classes, else a few."""
    rmax = min(R, K - 1)
    if K <= DEEP_ALL_RANKS_MAX_K:
        return list(range(1, rmax + 1))
    return sorted({r for r in (1, 2, 3, K // 2, K - 1) if 1 <= r <= rmax})


def _m1_start(n: np.ndarray, gam: float, bias: bool):
    """(A = Z D^(1/2), b) of the certified M = 1 optimum with lambda_W = lambda_H = gam (any real counts)."""
    ng, mg, idx = class_groups(n)
    with single_thread_blas():
        _, res = _solve_grouped(ng, mg, gam, bias)
    Z = res["a"][np.ix_(idx, idx)] + np.diag(res["alpha"][idx])
    return Z * np.sqrt(n)[None, :], (None if res["b"] is None else res["b"][idx])


def _deep_search(n, M: int, gam: float, bias: bool, ranks, restarts: int, seed: int, m1_start: bool = True):
    """Best (value, Z, b) of the reduced problem over ``ranks`` for real counts ``n`` (K,), weight ``gam`` per
    factor, and the best value per rank. Starts per rank: the M = 1 optimum (same gam) truncated to rank r
    and ``restarts`` random points; the three best are polished at their own rank."""
    n = np.asarray(n, dtype=np.float64)
    K = n.size
    sq = np.sqrt(n)
    P = np.eye(K) - 1.0 / K
    rng = np.random.default_rng(seed)
    starts = [_m1_start(n, gam, bias)] if m1_start else []
    # pairing code (the cross-polytope of the balanced search on count-sorted pairs): the winner of several
    # small settings that random starts reach only sometimes (e.g. [12, 6, 3, 3], M = 2)
    order = np.argsort(-n, kind="stable")
    if K >= 4:
        A = np.zeros((K, K))
        for i in range(0, K - 1, 2):
            d = np.zeros(K)
            d[order[i]], d[order[i + 1]] = 1.0, -1.0
            A += np.outer(d, d)
        starts.append((3.0 * A * sq[None, :], None))
    b_zero = np.log(n / n.sum()) if bias else None
    b0 = None if b_zero is None else b_zero - b_zero.mean()
    zero_val = _deep_value(n, M, gam, np.zeros((K, K)), b0)
    found, per_rank = [(zero_val, np.zeros((K, K)), b0)], {}

    def finish(fac, x, r):
        F, b = fac.unpack(x)
        A = F[0]
        for f in F[1:]:
            A = f @ A
        Z = P @ (A / sq[None, :])
        b = None if b is None else b - b.mean()
        v, Zk = _deep_clean(n, M, gam, Z, b, r)
        return v, Zk, b

    with single_thread_blas():
        for r in ranks:
            fac = _DeepFactored(n, M, r, gam, bias)
            x0s = [fac.pack(fac.balanced(A, rng, 1e-3), (b if b is not None else b_zero) if bias else None)
                   for A, b in starts]
            for _ in range(restarts):
                A0 = rng.standard_normal((K, r)) @ rng.standard_normal((r, K))
                A0 *= 3.0 * np.sqrt(n.mean()) / max(np.linalg.norm(A0, 2), 1e-300)
                x0s.append(fac.pack(fac.balanced(A0, rng, 0.05), 0.5 * rng.standard_normal(K) if bias else None))
            for x0 in x0s:
                v, Z, b = finish(fac, fac.run(x0), r)
                per_rank[r] = min(per_rank.get(r, np.inf), v)
                found.append((v, Z, b))
        found.sort(key=lambda t: t[0])
        best = found[0]
        for _v, Z, b in found[:3]:
            sv = np.linalg.svd(Z * sq[None, :], compute_uv=False)
            k = int(np.sum(sv > _DEEP_SV_RTOL * sv[0])) if sv[0] > 0 else 0
            if k == 0:
                continue
            fac = _DeepFactored(n, M, k, gam, bias)
            v2, Z2, b2 = finish(fac, fac.run(fac.pack(fac.balanced(Z * sq[None, :]), b), polish=True), k)
            if v2 < best[0]:
                best = (v2, Z2, b2)
    return best, per_rank, zero_val


def _deep_value(n, M, gam, Z, b) -> float:
    """g(Z, b) for real counts n (see deep_reduced_objective)."""
    L = Z if b is None else Z + b[:, None]
    mx = L.max(axis=0)
    ce = mx + np.log(np.exp(L - mx).sum(axis=0)) - np.diag(L)
    s = np.linalg.svd(Z * np.sqrt(n)[None, :], compute_uv=False)
    return float(n @ ce / n.sum()) + 0.5 * (M + 1) * gam * float(np.sum(s ** (2.0 / (M + 1))))


def _deep_check(problem) -> Problem:
    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be an nclab.theory.Problem (see make_problem), got {type(problem).__name__}")
    if problem.loss != "ce":
        raise ValueError(f"solve_ce_imbalanced_deep needs loss 'ce', got {problem.loss!r}")
    if problem.K > DEEP_MAX_K:
        raise ValueError(f"the M >= 2 imbalanced CE search handles K <= {DEEP_MAX_K} classes (L-BFGS on dense K x K "
                         f"factors for every rank searched); K = {problem.K:,} is beyond it")
    return problem


def deep_restarts(K: int) -> int:
    """Random starts per rank of the M >= 2 search: many for small K, where each run is cheap and the
    nonconvex landscape has several basins (3 missed the pairing code of [12, 6, 3, 3] at M = 2)."""
    return 10 if K <= 6 else (6 if K <= 12 else (3 if K <= DEEP_ALL_RANKS_MAX_K else 1))


def solve_ce_imbalanced_deep(problem: Problem, *, restarts: int | None = None, seed: int = 0) -> dict:
    """M >= 2, any counts: a multi-start search of the reduced problem over the ranks of :func:`deep_ranks`
    (factorized A = Z D^(1/2) = F_M ... F_0 with weight gamma' on every factor). The penalty sum sigma^p,
    p = 2/(M+1) < 1, is not convex: the result is the **best found** (an exact feasible value, i.e. an upper
    bound on the global minimum), never certified. Starts per rank: the M = 1 certified optimum's A truncated
    to rank r (when R >= K - 1) and ``restarts`` random points; the best is polished and its exact g reported.

    Returns a dict: objective, certified (False), rank, Z, bias, per_rank (best g per rank), ranks (searched),
    restarts, WWt, HtH (balanced factorization), w_norms, h_norms, merged, note, seconds.
    """
    _deep_check(problem)
    t0 = time.perf_counter()
    K, M, R = problem.K, problem.M, problem.rank_budget
    gam = deep_gamma(problem)
    n = np.asarray(problem.counts, dtype=np.float64)
    sq = np.sqrt(n)
    ranks = deep_ranks(K, R)
    restarts = deep_restarts(K) if restarts is None else int(restarts)
    (val, Z, b), per_rank, zero_val = _deep_search(n, M, gam, problem.bias, ranks, restarts, seed,
                                                   m1_start=R >= K - 1)
    U, s, Vt = np.linalg.svd(Z * sq[None, :])
    keep = s > _DEEP_SV_RTOL * s[0] if s[0] > 0 else np.zeros(s.size, bool)
    U, s, V = U[:, keep], s[keep], Vt[keep].T
    t = s ** (1.0 / (M + 1))
    lam_prod = math.prod(problem.lambda_w)
    WWt = (U * (gam**M / lam_prod * t ** (2 * M))) @ U.T
    HtH = ((V * (gam / problem.lambda_h * t**2)) @ V.T) / np.outer(sq, sq)
    wn, hn = np.sqrt(np.maximum(np.diag(WWt), 0)), np.sqrt(np.maximum(np.diag(HtH), 0))
    return {"objective": float(val), "certified": False, "rank": int(s.size), "Z": Z, "bias": b,
            "per_rank": {int(k): float(v) for k, v in per_rank.items()}, "objective_zero": float(zero_val),
            "WWt": WWt, "HtH": HtH, "w_norms": wn, "h_norms": hn, "merged": _merged_sets(WWt, wn),
            "gamma": gam, "ranks": ranks, "restarts": int(restarts), "seed": int(seed),
            "seconds": time.perf_counter() - t0,
            "note": "M >= 2: nonconvex (Schatten quasi-norm); best value found over the ranks searched, an upper "
                    "bound, not certified"}


def deep_reduced_objective(problem: Problem, Z: np.ndarray, b: np.ndarray | None) -> float:
    """g(Z, b) = sum_k pi_k CE(Z e_k + b, k) + (M+1)/2 gamma' sum_i sigma_i(Z D^(1/2))^(2/(M+1)), any M >= 1:
    the exact minimum of the full objective over the factorizations with class logits Z (NC1 + sec. 1.1)."""
    return _deep_value(np.asarray(problem.counts, dtype=np.float64), problem.M, deep_gamma(problem), Z, b)


def construct_ce_imbalanced_deep(problem: Problem, result: dict):
    """W_1..W_M, H, b attaining ``result["objective"]``: A = Z D^(1/2) = U diag(z) V^T, t = z^(1/(M+1)),
    W_j = E diag(a_j t) E^T (W_M = U diag(a_M t) E^T), Hbar = E diag(a_H t) V^T D^(-1/2),
    a_j = sqrt(gamma'/lambda_j), a_H = sqrt(gamma'/lambda_H)."""
    K, M = problem.K, problem.M
    gam = deep_gamma(problem)
    n = np.asarray(problem.counts, dtype=np.float64)
    sq = np.sqrt(n)
    U, z, Vt = np.linalg.svd(result["Z"] * sq[None, :])
    r = int(np.sum(z > _DEEP_SV_RTOL * z[0])) if z[0] > 0 else 0
    if r > problem.rank_budget:
        raise ValueError(f"rank {r} exceeds the rank budget R = {problem.rank_budget}")
    t = z[:r] ** (1.0 / (M + 1))
    dims = list(problem.widths) + [K]
    weights = []
    for j in range(M):
        a = math.sqrt(gam / problem.lambda_w[j])
        W = np.zeros((dims[j + 1], dims[j]))
        if j == M - 1:
            W[:, :r] = U[:, :r] * (a * t)
        else:
            W[:r, :r] = np.diag(a * t)
        weights.append(W)
    Hbar = np.zeros((dims[0], K))
    Hbar[:r] = (math.sqrt(gam / problem.lambda_h) * t)[:, None] * Vt[:r] / sq[None, :]
    H = np.repeat(Hbar, np.asarray(problem.counts, dtype=np.int64), axis=1)
    b = None if result["bias"] is None else np.array(result["bias"], dtype=np.float64)
    return weights, H, b


def as_ce_solution_deep(problem: Problem, result: dict | None = None, *, seed: int = 0,
                        threshold_rtol: float | None = None):
    """The M >= 2 best-found solution as an ``ImbalancedCEPrediction`` with ``certified = False`` (no gap):
    Grams, per-layer structure and construct() of the balanced factorization of A = Z D^(1/2) = U diag(z) V^T,
    t = z^(1/(M+1)): W_j = a_j diag(t) (chained), Hbar = a_H diag(t) V^T D^(-1/2), a_j = sqrt(gamma'/lambda_j),
    a_H = sqrt(gamma'/lambda_H) (construct_ce_imbalanced_deep builds exactly these). ``threshold_rtol``: width of
    the minority-collapse bisection (:func:`deep_minority_threshold`, ~10 searches); None (default) leaves it to
    ``Prediction.thresholds``, which runs it on first access."""
    from nclab.theory.structure import LowRankBasis, ZeroBasis

    _deep_check(problem)
    if problem.M < 2:
        raise ValueError("as_ce_solution_deep is the M >= 2 search; M = 1 has the certified as_ce_solution")
    r0 = solve_ce_imbalanced_deep(problem, seed=seed) if result is None else result
    K, M = problem.K, problem.M
    gam = r0["gamma"]
    sqn = np.sqrt(np.asarray(problem.counts, dtype=np.float64))
    Z = np.asarray(r0["Z"], dtype=np.float64)
    U, z, Vt = np.linalg.svd(Z * sqn[None, :])
    r = int(np.sum(z > _DEEP_SV_RTOL * z[0])) if z[0] > 0 else 0
    U, z, V = U[:, :r], z[:r], Vt[:r].T
    t = z ** (1.0 / (M + 1))
    a = np.sqrt(gam / np.asarray(problem.lambda_w, dtype=np.float64))  # W_j = a_j diag(t)
    a_h = math.sqrt(gam / problem.lambda_h)
    sigma = a[:, None] * t[None, :]  # (M, r)
    reg = 0.5 * gam * float(np.sum(t**2))  # lambda_j/2 ||W_j||^2, the same for every layer and for H
    Vd = V / sqn[:, None]  # D^(-1/2) V: right side of the class-mean Grams and of Z
    layers = []
    for j in range(1, M + 1):
        beta = a_h * float(np.prod(a[: j - 1]))  # Hbar_j = E diag(beta t^j) V^T D^(-1/2)
        pi = float(np.prod(a[j - 1:]))  # P_j = W_M..W_j = U diag(pi t^(M-j+1)) E^T
        nc3 = (U * (pi / beta * t ** (M + 1 - 2 * j))) @ (V * sqn[:, None]).T if r else None
        layers.append({"sigma": sigma[j - 1].copy(), "mean_gram": (Vd * (beta * t**j) ** 2) @ Vd.T,
                       "partial_gram": (U * (pi * t ** (M - j + 1)) ** 2) @ U.T, "nc3_scale": nc3, "regularizer": reg})
    basis = LowRankBasis(U, Vd) if r else ZeroBasis(K)
    values = {"WWt": float(np.prod(a)) ** 2 * t ** (2 * M), "HtH": a_h**2 * t**2, "WH": z.copy()}
    WWt, HtH = np.asarray(r0["WWt"]), np.asarray(r0["HtH"])
    wn, hn = np.asarray(r0["w_norms"]), np.asarray(r0["h_norms"])
    scale_w, scale_h = max(float(wn.max()), 1e-300), max(float(hn.max()), 1e-300)
    active = [bool(w > 1e-6 * scale_w or h > 1e-6 * scale_h) for w, h in zip(wn, hn)]
    ranks = list(r0["ranks"])
    name = "zero" if r == 0 else f"best found (rank {r}" + (", merged classifier rows)" if r0["merged"] else ")")
    etf_val = _deep_etf(problem, gam)
    ranks_text = (f"ranks {ranks[0]}..{ranks[-1]}" if ranks == list(range(ranks[0], ranks[-1] + 1)) and len(ranks) > 2
                  else f"ranks {ranks}") if ranks else "no rank (R = 0)"
    notes = [f"M = {M}, imbalanced counts: not certified (the penalty is a Schatten {2 / (M + 1):.3g}-quasi-norm, "
             f"nonconvex); the best structure found by a multi-start search over {ranks_text} "
             f"({r0['restarts']} random starts per rank plus the M = 1 optimum), an upper bound on the global "
             "minimum"]
    if etf_val[1] > r0["objective"] * (1 + 1e-8) and r < K - 1:
        notes.append(f"a rank-{r} code beats the best rank-(K-1) ETF-like point (value {etf_val[1]:.10g}): "
                     "low-rank bias of depth")
    per_rank = {int(k): float(v) for k, v in r0["per_rank"].items()}
    thr = deep_minority_threshold(problem, rtol=threshold_rtol, seed=seed) if threshold_rtol else None
    if thr is not None:
        thr["text"] = _threshold_text(thr)
    cls = _imbalanced_ce_solution_class()
    return cls(
        problem=problem, objective=float(r0["objective"]), objective_zero=float(r0["objective_zero"]),
        gamma=gam, etf_z=etf_val[0], etf_objective=etf_val[1], etf_feasible=problem.rank_budget >= K - 1,
        etf_gamma_c=None, etf_is_global=bool(abs(etf_val[1] - r0["objective"]) <= 1e-8 * abs(r0["objective"])),
        etf_proven=False, best_structure=name, best_rank=r,
        candidates={name: {"objective": float(r0["objective"]), "rank": r, "scale": float(z[0]) if r else 0.0},
                    "simplex ETF": {"objective": etf_val[1], "rank": K - 1 if etf_val[0] > 0 else 0,
                                    "scale": etf_val[0]},
                    "zero": {"objective": float(r0["objective_zero"]), "rank": 0, "scale": 0.0}},
        search={"run": True, "ranks": ranks, "restarts": r0["restarts"], "seed": r0.get("seed", seed),
                "best_per_rank": per_rank, "complete": K <= DEEP_ALL_RANKS_MAX_K,
                "note": f"best found over {ranks_text}, not certified"},
        Z=Z.copy(), bias=None if r0["bias"] is None else np.array(r0["bias"], dtype=np.float64), WWt=WWt.copy(),
        HtH=HtH.copy(), WH=Z.copy(), gram_unique=False,
        uniqueness_note="M >= 2 is nonconvex: the best point found, not proven unique (other points may tie)",
        active=active, layers=layers, notes=notes, basis=basis, values=values, sigma=sigma, regularizer=reg,
        certified=False, gap=math.nan, rel_gap=math.nan, lower_bound=math.nan,
        merged=[list(map(int, g)) for g in r0["merged"]], collapse_count=math.nan, w_norms=wn.copy(),
        h_norms=hn.copy(), solver={"seconds": float(r0.get("seconds", math.nan)),
                                   "method": "multi-start L-BFGS over ranks on the factorized reduced problem"},
        minority_threshold=thr,
    )


def _deep_etf(problem: Problem, gam: float) -> tuple[float, float]:
    """Best Z = z (I - 1 1^T/K), b = 0 (1-D golden search of the exact g): a reference point, never the answer."""
    from scipy.optimize import minimize_scalar

    n = np.asarray(problem.counts, dtype=np.float64)
    K, M = problem.K, problem.M
    P = np.eye(K) - 1.0 / K
    b = np.zeros(K) if problem.bias else None

    def g(z):
        return _deep_value(n, M, gam, z * P, b)

    res = minimize_scalar(g, bounds=(0.0, 60.0), method="bounded", options={"xatol": 1e-10})
    z, v = float(res.x), float(res.fun)
    v0 = g(0.0)
    return (0.0, v0) if v0 <= v else (z, v)


# ---------------------------------------------------------------------------------------------
# minority collapse with the other counts fixed: exact at M = 1, bisection on the search at M >= 2
# ---------------------------------------------------------------------------------------------
#: relative distance ||w_i - w_j|| / max_k ||w_k|| below which two classifier rows of the search count as merged
#: (merged rows of the search differ by ~1e-8; at M >= 2 the rows jump apart by ~1e-1 at the threshold)
DEEP_MERGE_RTOL = 1e-4


def minority_group(counts) -> tuple[np.ndarray, float] | None:
    """(indices, count) of the minority: the smallest count held by >= 2 classes; None if no count repeats
    or every class has it (balanced)."""
    n = np.asarray(counts, dtype=np.float64)
    ng, mg, idx = class_groups(n)
    multi = [g for g in range(ng.size) if mg[g] >= 2]
    if not multi or ng.size < 2:
        return None
    g = multi[-1]  # ng is sorted decreasingly
    return np.flatnonzero(idx == g), float(ng[g])


def minority_threshold_exact(counts, lambda_w: float, lambda_h: float) -> float | None:
    """M = 1: the largest count x of the minority group (m classes; the other counts fixed, N_r in all) at which
    its rows merge, from the exact criterion x <= (N_r + m x)^2 lambda_W lambda_H: the smaller root of
    mu^2 m^2 x^2 + (2 mu^2 m N_r - 1) x + mu^2 N_r^2 = 0 (inf: merged at every x). None without a minority."""
    grp = minority_group(counts)
    if grp is None:
        return None
    members, _ = grp
    n = np.asarray(counts, dtype=np.float64)
    m, Nr = float(members.size), float(n.sum() - n[members].sum())
    mu2 = float(lambda_w) * float(lambda_h)
    qa, qb, qc = mu2 * m * m, 2 * mu2 * m * Nr - 1.0, mu2 * Nr * Nr
    disc = qb * qb - 4 * qa * qc
    if disc < 0 or qb >= 0:
        return math.inf
    return 2 * qc / (-qb + math.sqrt(disc))


def _rows_merged(n, M: int, Z: np.ndarray, members) -> bool:
    """Are the classifier rows of ``members`` equal? Rows of W = U diag(t^M) (up to a common factor)."""
    U, s, _ = np.linalg.svd(Z * np.sqrt(n)[None, :])
    if not s.size or s[0] <= 0:
        return True
    r = int(np.sum(s > _DEEP_SV_RTOL * s[0]))
    W = U[:, :r] * s[:r] ** (M / (M + 1.0))
    scale = float(np.max(np.linalg.norm(W, axis=1)))
    d = W[members] - W[members[0]]
    return bool(np.max(np.linalg.norm(d, axis=1)) <= DEEP_MERGE_RTOL * scale)


def deep_minority_threshold(problem: Problem, *, rtol: float = 1e-3, restarts: int = 2, seed: int = 0) -> dict | None:
    """Minority collapse, best found (any M; the certified closed form exists only at M = 1): the largest count
    x of the minority group (:func:`minority_group`; the other counts fixed) at which the search's best point
    has its classifier rows merged, by bisection in log x to relative width ``rtol`` (one search per step,
    ``restarts`` random starts per rank). Bracket: from the current count, up to the largest other count (if
    merged now) or halving down to 1e-6 of it (if not). Assumes one switch in the bracket, as at M = 1.

    Returns None without a minority, else {"threshold", "bracket", "count", "classes", "merged_now", "solves",
    "certified": False, "note"}; threshold = inf when the rows merge up to the largest other count, 0 when they
    stay apart down to 1e-6 of the current count.
    """
    grp = minority_group(problem.counts)
    if grp is None:
        return None
    members, x0 = grp
    n = np.asarray(problem.counts, dtype=np.float64)
    top = float(np.max(np.delete(n, members)))
    gam = deep_gamma(problem)
    ranks = deep_ranks(problem.K, problem.rank_budget)
    solves = 0

    def merged(x):
        nonlocal solves
        solves += 1
        c = n.copy()
        c[members] = x
        (_, Z, _), _, _ = _deep_search(c, problem.M, gam, problem.bias, ranks, restarts, seed,
                                       m1_start=problem.rank_budget >= problem.K - 1)
        return _rows_merged(c, problem.M, Z, members)

    now = merged(x0)
    out = {"count": x0, "classes": [int(k) for k in members], "merged_now": now, "certified": False,
           "note": "best found: bisection on the rank search's merge decision, other counts fixed"}
    if now:
        lo, hi = x0, top
        if hi <= lo or merged(hi):
            return {**out, "threshold": math.inf, "bracket": [lo, math.inf], "solves": solves}
    else:
        hi, lo = x0, 0.5 * x0
        while not merged(lo):
            hi, lo = lo, 0.5 * lo
            if lo < 1e-6 * x0:
                return {**out, "threshold": 0.0, "bracket": [0.0, hi], "solves": solves}
    while hi > lo * (1 + rtol):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if merged(mid) else (lo, mid)
    return {**out, "threshold": math.sqrt(lo * hi), "bracket": [lo, hi], "solves": solves}
