"""Reference configurations of the deep ReLU UFM: deep neural collapse (DNC) and low-rank codes.

The model (``activation="relu"``, :func:`nclab.ufm.model.ufm_objective`) is the deep unconstrained features
model of Sukenik, Mondelli, Lampert (NeurIPS 2023, "Deep Neural Collapse Is Provably Optimal for the Deep
Unconstrained Features Model"; NeurIPS 2024, "Neural Collapse versus Low-rank Bias: Is Deep Neural Collapse
Really Optimal?"): free features H_1 = H, H_{j+1} = ReLU(W_j H_j) for j = 1..M-1, logits W_M H_M (+ b), no
hidden biases, weight decay on every W_j and on H. The papers use MSE without a bias; nclab also runs CE and
the last-layer bias.

No closed form is known, so :func:`references` builds two explicit families of parameters and optimizes their
few free numbers with scipy (L-BFGS-B on the exact objective, several starts); each reported value is the
objective of an explicit configuration (an upper bound on the global minimum), recomputed by the shared
objective on the full N-sample parameters. Balanced classes (n per class) and widths >= K only (else NaN,
with the reason). Class means are enough: taking every sample of a class equal to one feature never raises
the objective, and the objective of such parameters is that of the class-mean problem with weight n on H.

* **DNC**: every layer is class-symmetric: H_1 = x_0 I + y_0 J/K and W_j = x_j I + y_j J/K on the first K
  coordinates (J = 1 1^T), bias b = beta 1. This holds the DNC geometry (collapsed classes, equinorm and
  equiangular class means at every layer: an orthogonal frame after each ReLU, rows of W_j aligned with the
  means) and the zero solution. 2(M+1) (+1) scalars. Bias-free MSE: its optimum is the deep linear optimum
  (the orthogonal frame is non-negative, so the ReLU is inactive): f_dnc = ``nclab.predict(...).objective``
  (tested).
* **Low-rank codes**: the classes are split into t "triples", s "singles" and q "dropped" classes, each block in
  its own coordinates. A single is one coordinate through every layer (a scalar chain, DNC-like). A triple
  (classes a, b, c) lives in TWO coordinates through H_1..H_{M-1} (after a ReLU: a, c on the two axes, b on
  the diagonal, the pattern gradient descent finds) and is decoded by the last ReLU into three coordinates
  of H_M (rows like (1, -1), (-1, 1), (1, 1)), which W_M maps to the three outputs. A dropped class has zero
  features. So the class means have rank 2t + s < K in layers 1..M-1 and W_1..W_{M-1} have rank <= 2t + s.
  Free numbers: the single chain (M+1), the triple's small blocks (2x3 H, 2x2 per middle layer, 3x2 decoder,
  3x3 output: 21 + 4(M-2)), all shared by the blocks of a kind, plus a class-centring of H_1 and of W_M and
  the bias. Candidates (t, q) in {(t_max, 0), (t_max, K - 3 t_max), (1, 0), (0, 1), (0, K)} (the extreme
  points: for bias-free MSE the blocks decouple and the value is linear in t and q); ``f_lowrank`` is the
  best. It needs M >= 2 for a triple (M = 1 has no ReLU: only dropped classes).

Checked here (tests/test_dnc.py): K = 2 (no triple fits): descent from random starts ends at the DNC
configuration with f = f_dnc. K >= 3, depth M >= 4 (lambda = 5e-3, n = 1): the triple code beats DNC (e.g.
K = 4, M = 5: 0.0562 vs 0.0598, -6%), and descent from random starts goes below f_dnc with class-mean rank
< K in the middle layers, as the 2024 paper states for several classes and layers. At M <= 3 the triple code
does not beat DNC at these lambdas.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
import torch

RANK_RTOL = 1e-3  # numerical rank: singular values > RANK_RTOL * the largest (0 for a zero matrix)


def numerical_rank(a, rtol: float = RANK_RTOL) -> int:
    """Number of singular values of ``a`` above ``rtol`` times the largest (0 for a zero or empty matrix)."""
    a = np.asarray(a, dtype=np.float64)
    if a.size == 0:
        return 0
    s = np.linalg.svd(a, compute_uv=False)
    if not np.all(np.isfinite(s)) or s[0] == 0:
        return 0
    return int((s > rtol * s[0]).sum())


# ------------------------------------------------------------------------------------------ class-mean problem
def mean_objective(H1, weights, bias, *, n: int, lambda_w, lambda_h: float, loss: str) -> torch.Tensor:
    """The objective of parameters whose samples all sit at their class mean: H1 (d, K) class means, weights
    W_1..W_M, bias (K,) or None; equal to the full objective with H = H1 repeated n times per class (one sample
    per class with the feature decay scaled by n)."""
    from nclab.theory import ufm_objective_torch

    K = H1.shape[1]
    return ufm_objective_torch(list(weights), H1, torch.arange(K), list(lambda_w), n * lambda_h, bias, loss,
                               activation="relu")


def _minimize(fun, starts, *, maxiter: int = 4000, polish: int = 20):
    """Best L-BFGS-B result of ``fun`` (torch function of a float64 vector) over ``starts``: (value, x)."""
    from nclab.theory.resources import single_thread_blas

    def f(x):
        xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        val = fun(xt)
        (g,) = torch.autograd.grad(val, xt)
        v = float(val.detach())
        if not math.isfinite(v):
            return 1e300, np.zeros_like(x)
        return v, g.numpy()

    # thousands of tiny products: extra torch and BLAS threads only spin against each other (a CE reference
    # took 17.7 s with 2 threads on 2 loaded cores, 3.2 s with one)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with single_thread_blas():
            return _minimize_starts(f, starts, maxiter, polish)
    finally:
        torch.set_num_threads(threads)


def _minimize_starts(f, starts, maxiter: int, polish: int):
    from scipy.optimize import minimize

    opts = dict(maxiter=maxiter, maxfun=4 * maxiter, ftol=1e-16, gtol=1e-12, maxcor=20)
    best = (math.inf, None)
    for x0 in starts:
        r = minimize(f, np.asarray(x0, dtype=np.float64), jac=True, method="L-BFGS-B", options=opts)
        if r.fun < best[0]:
            best = (float(r.fun), np.asarray(r.x))
    # polish: the line search stops early at the ReLU kinks; restarting from the best point moves on
    for _ in range(polish):
        r = minimize(f, best[1], jac=True, method="L-BFGS-B", options=opts)
        if not r.fun < best[0] - 1e-15 * abs(best[0]):
            break
        best = (float(r.fun), np.asarray(r.x))
    return best


# ------------------------------------------------------------------------------------------ the two families
def _sym(x, y, K):
    eye = torch.eye(K, dtype=torch.float64)
    return x * eye + y * torch.ones(K, K, dtype=torch.float64) / K


def dnc_params(x: torch.Tensor, K: int, M: int, bias: bool):
    """Class-symmetric parameters from 2(M+1) (+1) scalars: H1 (K, K), W_j (K, K), bias."""
    H1 = _sym(x[0], x[1], K)
    ws = [_sym(x[2 + 2 * j], x[3 + 2 * j], K) for j in range(M)]
    b = x[2 * (M + 1)] * torch.ones(K, dtype=torch.float64) if bias else None
    return H1, ws, b


@dataclass(frozen=True)
class Layout:
    """Block layout of a low-rank code: t triples, s singles, q dropped classes (3t + s + q = K)."""

    K: int
    M: int
    t: int
    q: int

    @property
    def s(self) -> int:
        return self.K - 3 * self.t - self.q

    @property
    def hidden_rank(self) -> int:
        """Rank of the class means in layers 1..M-1 (and of W_1..W_{M-1})."""
        return 2 * self.t + self.s

    def describe(self) -> str:
        parts = [f"{self.t} triple{'s' * (self.t != 1)} (rank 2 each)"] if self.t else []
        parts += [f"{self.s} single{'s' * (self.s != 1)}"] if self.s else []
        parts += [f"{self.q} dropped"] if self.q else []
        return " + ".join(parts) or "empty"

    def num_scalars(self, bias: bool) -> int:
        return (self.M + 1) + (21 + 4 * (self.M - 2) if self.t else 0) + 2 + int(bias)


def lowrank_params(x: torch.Tensor, lay: Layout, bias: bool):
    """Parameters (hidden width K, H1 (K, K), W_j (K, K), bias) of a low-rank code from its free numbers."""
    K, M, t, s = lay.K, lay.M, lay.t, lay.s
    f64 = dict(dtype=torch.float64)
    i = 0

    def take(m):
        nonlocal i
        out = x[i : i + m]
        i += m
        return out

    chain = take(M + 1)  # single: h, w_1..w_M
    if t:
        TH = take(6).view(2, 3)
        Tmid = [take(4).view(2, 2) for _ in range(M - 2)]
        Tdec = take(6).view(3, 2)
        Tout = take(9).view(3, 3)
    a1, aout = take(1)[0], take(1)[0]
    b = take(1)[0] * torch.ones(K, **f64) if bias else None
    # block-diagonal matrices in coordinates ordered "triples first, then singles": features H_1..H_{M-1}
    # ("hidden"): triple i -> 2i, 2i+1, single k -> 2t + k; H_M after the decoder (M >= 2 with triples):
    # triple i -> 3i..3i+2, single k -> 3t + k; classes: triple i -> 3i..3i+2, single k -> 3t + k, dropped last;
    # everything padded with zeros to K x K (hidden width K)
    def mat(block, scal):
        parts = [block] * t + ([scal * torch.eye(s, **f64)] if s else [])
        A = torch.block_diag(*parts) if parts else torch.zeros(0, 0, **f64)
        return torch.nn.functional.pad(A, (0, K - A.shape[1], 0, K - A.shape[0]))

    empty = torch.zeros(0, 0, **f64)
    H1 = mat(TH if t else empty, chain[0])
    H1 = H1 - a1 * H1.sum(dim=1, keepdim=True) / K  # class-centring of the free features
    ws = []
    for j in range(M):
        if not t:
            block = empty
        elif j == M - 1:
            block = Tout
        elif j == M - 2:
            block = Tdec
        else:
            block = Tmid[j]
        ws.append(mat(block, chain[j + 1]))
    ws[-1] = ws[-1] - aout * ws[-1].sum(dim=0, keepdim=True) / K  # class-centring of the classifier rows
    return H1, ws, b


# ------------------------------------------------------------------------------------------ results
@dataclass
class Reference:
    """One optimized reference configuration (class-mean level, hidden width K).

    objective : its objective (recomputed by the shared objective on the full parameters)
    structure : words; scalars : the optimized free numbers; layer_ranks / weight_ranks : numerical ranks of
    the class means H_j (post-activation) and of W_j; layer_grams : uncentred K x K class-mean Grams per layer
    """

    name: str
    objective: float
    structure: str
    scalars: np.ndarray
    H1: np.ndarray
    weights: list
    bias: np.ndarray | None
    layer_ranks: list = field(default_factory=list)
    weight_ranks: list = field(default_factory=list)
    layer_grams: list = field(default_factory=list)

    def construct(self, widths, counts):
        """Explicit full parameters (weights W_j (d_{j+1}, d_j), H (d, N), bias) for these widths and counts:
        the class-mean configuration on the first K coordinates, zeros elsewhere."""
        K = self.H1.shape[1]
        dims = list(widths) + [K]
        if min(dims) < K:
            raise ValueError(f"the reference configurations need every width >= K = {K}, got {list(widths)}")
        ws = []
        for j, W in enumerate(self.weights):
            full = np.zeros((dims[j + 1], dims[j]))
            full[: W.shape[0], : W.shape[1]] = W
            ws.append(full)
        H1 = np.zeros((dims[0], K))
        H1[:K] = self.H1
        labels = np.repeat(np.arange(K), np.asarray(counts))
        return ws, H1[:, labels], None if self.bias is None else self.bias.copy()

    def to_dict(self) -> dict:
        return {"name": self.name, "objective": self.objective, "structure": self.structure,
                "scalars": [float(v) for v in self.scalars], "layer_ranks": self.layer_ranks,
                "weight_ranks": self.weight_ranks}


@dataclass
class References:
    """f_dnc and f_lowrank of a problem (see the module docstring); ``reason`` says why one is missing."""

    dnc: Reference | None
    lowrank: Reference | None
    reason: str = ""
    candidates: list = field(default_factory=list)  # (structure, objective) of every low-rank candidate

    @property
    def f_dnc(self) -> float:
        return self.dnc.objective if self.dnc is not None else math.nan

    @property
    def f_lowrank(self) -> float:
        return self.lowrank.objective if self.lowrank is not None else math.nan

    @property
    def f_best(self) -> float:
        vals = [v for v in (self.f_dnc, self.f_lowrank) if math.isfinite(v)]
        return min(vals) if vals else math.nan

    @property
    def lowrank_beats_dnc(self) -> bool:
        return bool(self.f_lowrank < self.f_dnc)

    def to_dict(self) -> dict:
        return {"f_dnc": self.f_dnc, "f_lowrank": self.f_lowrank, "f_best": self.f_best,
                "lowrank_beats_dnc": self.lowrank_beats_dnc, "reason": self.reason,
                "dnc": None if self.dnc is None else self.dnc.to_dict(),
                "lowrank": None if self.lowrank is None else self.lowrank.to_dict(),
                "candidates": [{"structure": s, "objective": v} for s, v in self.candidates]}


def _forward_grams(H1, ws):
    Z, grams, ranks = H1, [], []
    for j, W in enumerate(ws):
        grams.append(Z.T @ Z)
        ranks.append(numerical_rank(Z))
        Z = W @ Z
        if j < len(ws) - 1:
            Z = np.maximum(Z, 0.0)
    return grams, ranks


def _reference(name, structure, x, build, problem) -> Reference:
    with torch.no_grad():
        H1, ws, b = build(torch.as_tensor(x, dtype=torch.float64))
    H1 = H1.numpy().copy()
    ws = [w.numpy().copy() for w in ws]
    b = None if b is None else b.numpy().copy()
    grams, ranks = _forward_grams(H1, ws)
    ref = Reference(name=name, objective=math.nan, structure=structure, scalars=np.asarray(x), H1=H1, weights=ws,
                    bias=b, layer_ranks=ranks, weight_ranks=[numerical_rank(w) for w in ws], layer_grams=grams)
    ref.objective = full_objective(problem, *ref.construct(problem.widths, problem.counts))
    return ref


def full_objective(problem, weights, H, bias=None) -> float:
    """The shared ReLU objective (:func:`nclab.ufm.model.ufm_objective`) of full parameters, float64."""
    from nclab.theory import labels_from_counts
    from nclab.ufm.model import ufm_objective

    f64 = lambda a: None if a is None else torch.as_tensor(np.asarray(a), dtype=torch.float64)  # noqa: E731
    y = torch.as_tensor(labels_from_counts(problem.counts))
    with torch.no_grad():
        return float(ufm_objective([f64(w) for w in weights], f64(H), y, problem.lambda_w, problem.lambda_h,
                                   f64(bias), problem.loss, problem.K, "relu"))


def _chain_scale(problem) -> float:
    """Starting magnitude of every factor of a chain: the deep linear theory's per-layer scale when it is
    nontrivial, else 1."""
    try:
        from nclab.theory import predict
        from nclab.theory.problem import make_problem

        p = problem
        lin = predict(make_problem(p.counts, widths=list(p.widths), lambda_w=list(p.lambda_w), lambda_h=p.lambda_h,
                                   bias=False, loss="mse"))
        s = float(np.max(np.linalg.eigvalsh(np.asarray(lin.gram("WWt")))))
        if s > 0:
            return s ** (1.0 / (2 * p.M))
    except Exception:  # noqa: BLE001 -- only a starting point
        pass
    return 1.0


def _dnc(problem, scale) -> Reference:
    K, M, n, bias = problem.K, problem.M, problem.counts[0], problem.bias
    lam = list(problem.lambda_w)

    def fun(x):
        return mean_objective(*dnc_params(x, K, M, bias), n=n, lambda_w=lam, lambda_h=problem.lambda_h,
                              loss=problem.loss)

    nx = 2 * (M + 1) + int(bias)
    rng = np.random.default_rng(0)
    starts = []
    for c in (scale, 2 * scale, 1.0):
        x0 = np.zeros(nx)
        x0[0 : 2 * (M + 1) : 2] = c
        if bias:
            x0[-1] = 1.0 / K
        starts.append(x0)
    starts.append(starts[0] + 0.1 * scale * rng.normal(size=nx))
    _, x = _minimize(fun, starts)
    return _reference("dnc", "class-symmetric (DNC: orthogonal frame after every ReLU)", x,
                      lambda v: dnc_params(v, K, M, bias), problem)


def _sym_triple(z: torch.Tensor, M: int) -> torch.Tensor:
    """The triple's general block entries from its a <-> c symmetric form, 10 + 2(M-2) numbers:
    H: columns (a, b, c) = (alpha, gamma), (beta, beta), (gamma, alpha); middle layers [[p, q], [q, p]];
    decoder rows u (1, -1), w (1, 1), u (-1, 1) (so b, on the diagonal, meets the kink of the first and last
    row exactly: the objective is smooth in this form); output rows (x, y, z), (v, r, v), (z, y, x)."""
    al, be, ga = z[0], z[1], z[2]
    parts = [torch.stack([al, be, ga, ga, be, al])]
    for j in range(M - 2):
        pp, qq = z[3 + 2 * j], z[4 + 2 * j]
        parts.append(torch.stack([pp, qq, qq, pp]))
    i = 3 + 2 * (M - 2)
    u, w = z[i], z[i + 1]
    parts.append(torch.stack([u, -u, w, w, -u, u]))
    x, y, zz, v, r = (z[i + 2 + k] for k in range(5))
    parts.append(torch.stack([x, y, zz, v, r, v, zz, y, x]))
    return torch.cat(parts)


def _sym_triple_start(M: int, scale: float, c: float) -> np.ndarray:
    """A symmetric triple that decodes exactly: a, c on the two axes, b on the diagonal, all factors ~ scale."""
    h = np.array([1.0, c]) * scale ** (M - 1)  # H_{M-1}: a = (h0, 0), b = (h1, h1), c = (0, h0)
    u = w = scale
    F = np.array([[u * h[0], 0.0, 0.0], [w * h[0], 2 * w * h[1], w * h[0]], [0.0, 0.0, u * h[0]]])  # cols a, b, c
    out = np.linalg.inv(F)  # rows: classes a, b, c; cols: decoded coordinates
    head = [scale, c * scale, 0.0] + [scale, 0.0] * (M - 2) + [u, w]
    return np.array(head + [out[0, 0], out[0, 1], out[0, 2], out[1, 0], out[1, 1]])


def _lowrank(problem, lay: Layout, scale: float, dnc: Reference) -> tuple[float, np.ndarray]:
    """Best free numbers of a layout, the triples in their a <-> c symmetric form (smooth; freeing every block
    entry from there gained < 1e-5 relative in the settings tried, at 3x the time)."""
    K, M, n, bias = problem.K, problem.M, problem.counts[0], problem.bias
    lam = list(problem.lambda_w)

    def fun(x):
        return mean_objective(*lowrank_params(x, lay, bias), n=n, lambda_w=lam, lambda_h=problem.lambda_h,
                              loss=problem.loss)

    # single chain from the DNC optimum's diagonal (x_j + y_j / K), else the linear scale
    diag = [float(dnc.scalars[2 * j] + dnc.scalars[2 * j + 1] / K) for j in range(M + 1)]
    chain = np.abs(diag) if all(abs(v) > 1e-8 for v in diag) else np.full(M + 1, scale)
    tail = [0.0, 0.0] + ([1.0 / K] if bias else [])
    if not lay.t:
        return _minimize(fun, [np.concatenate([chain, tail])])
    nt = 10 + 2 * (M - 2)

    def expand(z):
        return torch.cat([z[: M + 1], _sym_triple(z[M + 1 : M + 1 + nt], M), z[M + 1 + nt :]])

    starts = [np.concatenate([chain, _sym_triple_start(M, s_mul * scale, c), tail])
              for s_mul, c in ((1.0, 0.7), (2.0, 0.5), (0.5, 0.9))]
    fs, zs = _minimize(lambda z: fun(expand(z)), starts)
    with torch.no_grad():
        return fs, expand(torch.as_tensor(zs, dtype=torch.float64)).numpy()


def _candidates(K: int, M: int) -> list[Layout]:
    tmax = K // 3 if M >= 2 else 0
    pairs = {(tmax, 0), (tmax, K - 3 * tmax), (min(1, tmax), 0), (0, 1), (0, K)}
    return [Layout(K, M, t, q) for t, q in sorted(pairs) if (t, q) != (0, 0) and 3 * t + q <= K]


@functools.lru_cache(maxsize=64)
def references(problem) -> References:
    """DNC and best low-rank reference configurations of a problem under the ReLU model (cached)."""
    K, counts = problem.K, problem.counts
    if len(set(counts)) != 1:
        return References(None, None, "reference configurations are built for balanced classes only")
    if min(problem.widths) < K:
        return References(None, None, f"reference configurations need every width >= K = {K}")
    scale = _chain_scale(problem)
    dnc = _dnc(problem, scale)
    best, cands = None, []
    for lay in _candidates(K, problem.M):
        _, x = _lowrank(problem, lay, scale, dnc)
        ref = _reference("lowrank", f"low-rank code: {lay.describe()}; hidden rank {lay.hidden_rank}", x,
                         lambda v, lay=lay: lowrank_params(v, lay, problem.bias), problem)
        cands.append((ref.structure, ref.objective))
        if best is None or ref.objective < best.objective:
            best = ref
    return References(dnc, best, "", cands)


def reduced_problem(problem):
    """The same problem with one sample per class and lambda_H scaled by n (same class-mean objective / value
    per class): handy for fast descent checks. Balanced counts only."""
    from nclab.theory.problem import make_problem

    n = problem.counts[0]
    return make_problem([1] * problem.K, widths=list(problem.widths), lambda_w=list(problem.lambda_w),
                        lambda_h=problem.lambda_h * n, bias=problem.bias, loss=problem.loss)


__all__ = ["RANK_RTOL", "numerical_rank", "mean_objective", "Layout", "Reference", "References", "references",
           "dnc_params", "lowrank_params", "full_objective", "reduced_problem"]
