"""Structured K x K Grams: what a minimizer's Grams are made of, without the K x K matrices.

Every Gram nclab predicts (W W^T, Hbar^T Hbar, W Hbar and, per layer j, the class-mean Gram, the partial
product Gram P_j P_j^T and the NC3 scale C_j) is ``L diag(f) R^T`` over one *basis* of modes, with values f
per mode (theory.md sec. 3-4). The basis is one of

* ``diagonal`` (bias-free MSE): mode i is the class indicator e_{class[i]}; every Gram is diagonal.
* ``diagonal plus rank one`` (MSE with a bias): the eigenvectors of T = D - n n^T/N. Classes with equal
  n_k form groups; a group of m classes gives the eigenvalue n_g with multiplicity m - 1 (eigenspace: vectors
  supported on the group summing to zero, a "block"), and the secular equation
  1 = (1/N) sum_k n_k^2/(n_k - mu) has one root in each gap between consecutive distinct counts, with
  eigenvector v(k) = n_k/(n_k - mu) (normalized), constant on each group. Roots are found by safeguarded
  Newton in O(G) per step (G distinct counts), so the whole spectrum costs O(G^2) at worst and only the
  roots that are needed are computed. A block cut by the rank budget keeps the first q + 1 classes of the
  group (an arbitrary but deterministic choice: the Grams are not unique there). Centring E = I - ybar 1^T
  maps v to v - (v . ybar) 1 and leaves blocks unchanged.
* ``projector`` (balanced CE, structured codes): one mode, a projector Pi named by the code: simplex ETF
  I - 1 1^T/K, cross-polytope (classes 2i, 2i+1 antipodal), regular polygon (2/K) A A^T, rank-1 code u u^T.
* ``low rank`` (CE search result, small K only): explicit U, V (K x r), Z = U diag(z) V^T.

Per layer j the values follow from the HtH values h and the layer singular values sigma_l (balanced layers):
mean_gram_j = h prod_{l<j} sigma_l^2 (sides of HtH), partial_gram_j = prod_{l>=j} sigma_l^2 (sides of WWt),
nc3_scale_j = sqrt(partial_gram_j / mean_gram_j) (sides of WH without centring).
:func:`gram_from_dict` rebuilds any dense Gram from a prediction's JSON (``nclab predict --json``).
"""

from __future__ import annotations

import math

import numpy as np

#: layer Gram -> (the top-level Gram whose sides it uses, left centred, right centred)
LAYER_GRAMS = {"mean_gram": (True, True), "partial_gram": (False, False), "nc3_scale": (False, False)}
#: top-level Gram -> (left side, right side, left centred, right centred)
GRAMS = {"WWt": ("u", "u", False, False), "HtH": ("v", "v", True, True), "WH": ("u", "v", False, True)}
LAYER_SIDES = {"mean_gram": ("v", "v", True, True), "partial_gram": ("u", "u", False, False),
               "nc3_scale": ("u", "v", False, False)}


def check_dense(K: int, count: int, what: str, advice: str = "") -> None:
    """Refuse ``count`` dense K x K float64 matrices that cannot fit (before allocating)."""
    from nclab.theory.resources import check_memory

    check_memory(8.0 * count * K * K, f"{what} ({count} dense {K:,} x {K:,} float64)", advice)


def helmert(b: int) -> np.ndarray:
    """Orthonormal basis (b, b-1) of the vectors in R^b summing to zero; column q spans the first q+2 entries."""
    out = np.zeros((b, b - 1))
    for j in range(1, b):
        out[:j, j - 1] = 1.0 / math.sqrt(j * (j + 1))
        out[j, j - 1] = -j / math.sqrt(j * (j + 1))
    return out


class Basis:
    """Common interface: ``nmodes`` structural modes, ``mult`` eigen-multiplicity of each."""

    kind = ""
    K = 0
    mult: np.ndarray

    @property
    def nmodes(self) -> int:
        return int(self.mult.size)

    def dense(self, f, left="u", right="u", left_E=False, right_E=False) -> np.ndarray:
        raise NotImplementedError

    def diag(self, f, left="u", right="u", left_E=False, right_E=False) -> np.ndarray:
        raise NotImplementedError

    def vectors(self, side="u", centred=False) -> tuple[np.ndarray, np.ndarray]:
        """(Q (K, r) orthonormal eigenvectors, mode (r,) structural mode of each column)."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        raise NotImplementedError


class DiagonalBasis(Basis):
    kind = "diagonal"

    def __init__(self, K: int, idx):
        self.K, self.idx = K, np.asarray(idx, dtype=np.int64)
        self.mult = np.ones(self.idx.size, dtype=np.int64)

    def dense(self, f, left="u", right="u", left_E=False, right_E=False):
        check_dense(self.K, 1, "a K x K Gram", "ask for the per-class values (Prediction.classes) instead")
        out = np.zeros((self.K, self.K))
        out[self.idx, self.idx] = f
        return out

    def diag(self, f, left="u", right="u", left_E=False, right_E=False):
        out = np.zeros(self.K)
        out[self.idx] = f
        return out

    def vectors(self, side="u", centred=False):
        check_dense(self.K, 1, "the active eigenvectors")
        return np.eye(self.K)[:, self.idx], np.arange(self.idx.size)

    def to_dict(self):
        return {"kind": self.kind, "class": self.idx.tolist(),
                "description": "mode i is the class indicator e_k, k = class[i]: every Gram is diagonal"}


def _secular(cg, mg, N, which, iters: int = 200):
    """Roots of 1 = (1/N) sum_g m_g c_g^2/(c_g - mu) in the gaps (c_{g+1}, c_g) for the gap indices ``which``.

    c (G,) distinct counts, descending; returns (origin, sign, tau, d) with mu = origin + sign tau, tau in
    (0, gap/2], and d (len(which), G) = c_g - mu computed exactly as (c_g - origin) - sign tau (no loss of
    precision near a pole). Safeguarded Newton on the bracket, vectorized over roots.
    """
    which = np.asarray(which, dtype=np.int64)
    if which.size == 0:
        z = np.zeros(0)
        return z, z, z, np.zeros((0, cg.size))
    w = mg * cg * cg / N  # (G,)
    hi_c, lo_c = cg[which], cg[which + 1]
    gap = hi_c - lo_c
    mid = 0.5 * (hi_c + lo_c)
    fmid = 1.0 - ((w[None, :] / (cg[None, :] - mid[:, None])).sum(1))
    up = fmid > 0  # f decreasing: f(mid) > 0 -> root in the upper half, measure from the upper pole
    origin = np.where(up, hi_c, lo_c)
    sign = np.where(up, -1.0, 1.0)
    base = cg[None, :] - origin[:, None]  # exact integers
    lo, hi = np.zeros(which.size), 0.5 * gap
    x = 0.25 * gap
    for _ in range(iters):
        d = base - sign[:, None] * x[:, None]
        r = w[None, :] / d
        f = 1.0 - r.sum(1)
        df = sign * (r / d).sum(1)  # df/dtau (mu = origin + sign tau; df/dmu = -sum w/d^2)
        df = -df
        # sign of f as a function of tau: f decreasing in mu, so for sign = +1 f decreases in tau
        grow = (f > 0) == (sign > 0)  # root at larger tau
        lo = np.where(grow, x, lo)
        hi = np.where(grow, hi, x)
        with np.errstate(divide="ignore", invalid="ignore"):
            step = x - f / df
        bad = ~np.isfinite(step) | (step <= lo) | (step >= hi)
        new = np.where(bad, 0.5 * (lo + hi), step)
        done = np.abs(new - x) <= 2e-16 * np.maximum(x, 1e-300)
        x = new
        if np.all(done | (hi - lo <= 4e-16 * hi)):
            break
    d = base - sign[:, None] * x[:, None]
    return origin, sign, x, d


class SecularBasis(Basis):
    """Eigenvectors of D - n n^T/N in structured form (see the module docstring)."""

    kind = "diagonal plus rank one"

    def __init__(self, counts, root_gaps, blocks, roots=None):
        """counts (K,); root_gaps: indices g of the roots in (c_{g+1}, c_g) kept as modes; blocks: list of
        class-index arrays (each >= 2 classes of one count group); roots: (origin, sign, tau) of those roots
        when already solved. Modes: the roots, then the blocks."""
        n = np.asarray(counts, dtype=np.float64)
        self.K, self.N = n.size, float(n.sum())
        self.counts = n
        self.cg, inv, mg = np.unique(-n, return_inverse=True, return_counts=True)
        self.cg = -self.cg  # distinct counts, descending
        self.group_of, self.mg = inv.reshape(-1), mg.astype(np.float64)
        self.gaps = np.asarray(root_gaps, dtype=np.int64)
        if roots is None:
            o, s, tau, d = _secular(self.cg, self.mg, self.N, self.gaps)
        else:
            o, s, tau = (np.asarray(v, dtype=np.float64) for v in roots)
            d = (self.cg[None, :] - o[:, None]) - s[:, None] * tau[:, None]
        self.root_mu = o + s * tau
        vt = self.cg[None, :] / d  # (r1, G) unnormalized group values
        norm = np.sqrt((self.mg[None, :] * vt * vt).sum(1))
        self.V = (vt / norm[:, None]).T  # (G, r1)
        self.t = 1.0 / norm  # v . ybar = 1/||v~|| by the secular equation
        self.blocks = [np.asarray(b, dtype=np.int64) for b in blocks]
        self.mult = np.concatenate([np.ones(self.gaps.size, dtype=np.int64),
                                    np.asarray([b.size - 1 for b in self.blocks], dtype=np.int64)])

    def _side(self, E: bool) -> np.ndarray:  # (K, r1)
        L = self.V[self.group_of]
        return L - self.t[None, :] if E else L

    def dense(self, f, left="u", right="u", left_E=False, right_E=False):
        check_dense(self.K, 2, "a K x K Gram", "ask for the per-class values (Prediction.classes) instead")
        f = np.asarray(f, dtype=np.float64)
        r1 = self.gaps.size
        L = self._side(left_E)
        out = (L * f[:r1]) @ (L if left_E == right_E else self._side(right_E)).T
        for b, fb in zip(self.blocks, f[r1:]):
            out[np.ix_(b, b)] += fb * (np.eye(b.size) - 1.0 / b.size)
        return out

    def diag(self, f, left="u", right="u", left_E=False, right_E=False):
        f = np.asarray(f, dtype=np.float64)
        r1 = self.gaps.size
        Vl = self.V - (self.t[None, :] if left_E else 0.0)  # (G, r1)
        Vr = self.V - (self.t[None, :] if right_E else 0.0)
        out = ((Vl * Vr) @ f[:r1])[self.group_of]
        for b, fb in zip(self.blocks, f[r1:]):
            out[b] += fb * (1.0 - 1.0 / b.size)
        return out

    def margins(self, f, bias) -> np.ndarray | None:
        """Own logit minus the best other logit per class, logits (W Hbar)_{jk} + b_j with W Hbar of values f
        (sides u, centred v); computed in group space (G x G, tiled). None if G^2 r would be too slow."""
        f = np.asarray(f, dtype=np.float64)
        r1, G = self.gaps.size, self.cg.size
        if float(G) * G * max(r1, 1) > 4e9:
            return None
        bg = self.cg / self.N  # bias per group (b* = n/N)
        Vl, Vr = self.V * f[None, :r1], self.V - self.t[None, :]
        blk_val = np.zeros(self.K)  # ls_b of the block a class belongs to (0 if none)
        blk_size = np.ones(self.K)
        for b, fb in zip(self.blocks, f[r1:]):
            blk_val[b], blk_size[b] = fb, b.size
        in_blk = blk_val != 0
        # per group: the best other-group logit, and the same-group (off-diagonal) logit A[g, g]
        best_other = np.full(G, -np.inf)
        same = np.empty(G)
        tile = max(1, int(2**24 // max(G, 1)))
        for c0 in range(0, G, tile):
            A = Vl @ Vr[c0:c0 + tile].T + bg[:, None]  # (G, t): rows other group g', columns own group g
            idx = np.arange(c0, min(G, c0 + tile))
            same[idx] = A[idx, idx - c0]
            A[idx, idx - c0] = -np.inf
            best_other[idx] = A.max(axis=0)
        g = self.group_of
        own = same[g] + blk_val * (1.0 - 1.0 / blk_size)
        # other classes of the own group: outside the own block (logit same[g]) or inside it (minus ls_b/b)
        m = self.mg[g]
        n_in = np.where(in_blk, blk_size - 1.0, 0.0)
        n_out = m - 1.0 - n_in
        cand = np.where(n_out > 0, same[g], -np.inf)
        cand = np.maximum(cand, np.where(n_in > 0, same[g] - blk_val / blk_size, -np.inf))
        return own - np.maximum(best_other[g], cand)

    def vectors(self, side="u", centred=False):
        cols = [self._side(centred)]
        mode = [np.arange(self.gaps.size)]
        for i, b in enumerate(self.blocks):
            Q = np.zeros((self.K, b.size - 1))
            Q[b] = helmert(b.size)
            cols.append(Q)
            mode.append(np.full(b.size - 1, self.gaps.size + i))
        return np.concatenate(cols, axis=1), np.concatenate(mode)

    def to_dict(self):
        return {"kind": self.kind, "roots": self.root_mu.tolist(), "blocks": [b.tolist() for b in self.blocks],
                "description": "eigenvectors of D - n n^T/N: first one mode per secular root mu (vector "
                               "v_k = n_k/(n_k - mu), normalized), then one per block of classes of equal n_k "
                               "(projector I - 1 1^T/b on the block, multiplicity b - 1); centred sides use "
                               "v - (v . n/N) 1 (blocks unchanged)"}


def _projector_dense(name: str, K: int) -> np.ndarray:
    if name == "simplex ETF":
        return np.eye(K) - 1.0 / K
    Q, _ = _projector_vectors(name, K)
    return Q @ Q.T


def _projector_vectors(name: str, K: int) -> tuple[np.ndarray, int]:
    if name == "simplex ETF":
        return helmert(K), K - 1
    if name == "cross-polytope":
        Q = np.zeros((K, K // 2))
        i = np.arange(K // 2)
        Q[2 * i, i], Q[2 * i + 1, i] = 1 / math.sqrt(2), -1 / math.sqrt(2)
        return Q, K // 2
    if name == "regular polygon":
        th = 2 * np.pi * np.arange(K) / K
        return np.stack([np.cos(th), np.sin(th)], axis=1) * math.sqrt(2.0 / K), 2
    if name == "rank-1 code":
        Q = np.zeros((K, 1))
        Q[0, 0], Q[1, 0] = 1 / math.sqrt(2), -1 / math.sqrt(2)
        return Q, 1
    raise ValueError(f"unknown projector {name!r}")


class ProjectorBasis(Basis):
    """One mode: the projector of a balanced-CE code (Z = scale * Pi)."""

    kind = "projector"
    DIAG = {"simplex ETF": lambda K: 1.0 - 1.0 / K, "cross-polytope": lambda K: 0.5,
            "regular polygon": lambda K: 2.0 / K}

    def __init__(self, K: int, name: str):
        self.K, self.name = K, name
        self.rank = {"simplex ETF": K - 1, "cross-polytope": K // 2, "regular polygon": 2, "rank-1 code": 1}[name]
        self.mult = np.asarray([self.rank], dtype=np.int64)

    def dense(self, f, left="u", right="u", left_E=False, right_E=False):
        check_dense(self.K, 1, "a K x K Gram", "ask for the per-class values (Prediction.classes) instead")
        return float(np.asarray(f)[0]) * _projector_dense(self.name, self.K)

    def diag(self, f, left="u", right="u", left_E=False, right_E=False):
        f0 = float(np.asarray(f)[0])
        if self.name == "rank-1 code":
            out = np.zeros(self.K)
            out[:2] = 0.5 * f0
            return out
        return np.full(self.K, f0 * self.DIAG[self.name](self.K))

    def margins(self, z: float, bias) -> np.ndarray:
        """Own logit minus the best other logit for Z = z Pi (+ bias)."""
        K, name = self.K, self.name
        if name == "rank-1 code":
            b = np.zeros(K) if bias is None else np.asarray(bias, dtype=np.float64)
            out = np.empty(K)
            rest = b[2:]
            top = float(rest.max()) if rest.size else -np.inf
            out[0] = z / 2 + b[0] - max(-z / 2 + b[1], top)
            out[1] = z / 2 + b[1] - max(-z / 2 + b[0], top)
            if rest.size:
                order = np.argsort(-rest, kind="stable")
                first, second = rest[order[0]], (rest[order[1]] if rest.size > 1 else -np.inf)
                other = np.where(np.arange(rest.size) == order[0], second, first)
                out[2:] = rest - np.maximum(np.maximum(b[0], b[1]), other)
            return out
        if name == "simplex ETF":
            return np.full(K, z)
        if name == "cross-polytope":
            return np.full(K, z / 2 if K > 2 else z)
        return np.full(K, (2 * z / K) * (1 - math.cos(2 * math.pi / K)))

    def vectors(self, side="u", centred=False):
        Q, r = _projector_vectors(self.name, self.K)
        return Q, np.zeros(r, dtype=np.int64)

    def to_dict(self):
        return {"kind": self.kind, "name": self.name, "rank": self.rank,
                "description": {"simplex ETF": "Pi = I - 1 1^T/K",
                                "cross-polytope": "Pi = Q Q^T, Q[:, i] = (e_2i - e_2i+1)/sqrt 2",
                                "regular polygon": "Pi_kl = (2/K) cos(2 pi (k - l)/K)",
                                "rank-1 code": "Pi = u u^T, u = (e_0 - e_1)/sqrt 2"}[self.name]}


class LowRankBasis(Basis):
    """Explicit singular vectors of Z = U diag(z) V^T (the CE search's codes; small K only)."""

    kind = "low rank"

    def __init__(self, U: np.ndarray, V: np.ndarray):
        self.K, self.U, self.V = U.shape[0], U, V
        self.mult = np.ones(U.shape[1], dtype=np.int64)

    def _m(self, side):
        return self.U if side == "u" else self.V

    def dense(self, f, left="u", right="u", left_E=False, right_E=False):
        return (self._m(left) * np.asarray(f)[None, :]) @ self._m(right).T

    def diag(self, f, left="u", right="u", left_E=False, right_E=False):
        return (self._m(left) * self._m(right)) @ np.asarray(f, dtype=np.float64)

    def vectors(self, side="u", centred=False):
        return self._m(side), np.arange(self.U.shape[1])

    def to_dict(self):
        return {"kind": self.kind, "U": self.U.tolist(), "V": self.V.tolist(),
                "description": "Z = U diag(z) V^T (columns of U, V orthonormal)"}


class ZeroBasis(Basis):
    kind = "zero"

    def __init__(self, K: int):
        self.K, self.mult = K, np.zeros(0, dtype=np.int64)

    def dense(self, f, left="u", right="u", left_E=False, right_E=False):
        check_dense(self.K, 1, "a K x K Gram")
        return np.zeros((self.K, self.K))

    def diag(self, f, left="u", right="u", left_E=False, right_E=False):
        return np.zeros(self.K)

    def vectors(self, side="u", centred=False):
        return np.zeros((self.K, 0)), np.zeros(0, dtype=np.int64)

    def to_dict(self):
        return {"kind": self.kind, "description": "every Gram is zero"}


def layer_values(h, sigma, j: int) -> dict:
    """Per-mode values of layer j's (1-based) Grams from the HtH values h and sigma (M, modes)."""
    sig2 = np.asarray(sigma, dtype=np.float64) ** 2
    pre = np.prod(sig2[: j - 1], axis=0) if j > 1 else np.ones(sig2.shape[1])
    post = np.prod(sig2[j - 1:], axis=0)
    mean = np.asarray(h, dtype=np.float64) * pre
    with np.errstate(divide="ignore", invalid="ignore"):
        nc3 = np.where(mean > 0, np.sqrt(post / np.where(mean > 0, mean, 1.0)), 0.0)
    return {"mean_gram": mean, "partial_gram": post, "nc3_scale": nc3}


def basis_from_dict(doc: dict) -> Basis:
    """The basis of a prediction's JSON ``structure`` (see :func:`gram_from_dict`)."""
    st = doc["structure"]
    b, K = st["basis"], len(doc["problem"]["counts"])
    kind = b["kind"]
    if kind == "diagonal":
        return DiagonalBasis(K, b["class"])
    if kind == "diagonal plus rank one":
        counts = doc["problem"]["counts"]
        basis = SecularBasis(counts, [], [np.asarray(x) for x in b["blocks"]])
        # roots: recomputed from their gap (the root in (c_{g+1}, c_g) nearest the stored value)
        cg = basis.cg
        gaps = [int(np.searchsorted(-cg, -float(mu))) - 1 for mu in b["roots"]]
        return SecularBasis(counts, gaps, basis.blocks)
    if kind == "projector":
        return ProjectorBasis(K, b["name"])
    if kind == "low rank":
        return LowRankBasis(np.asarray(b["U"], dtype=np.float64), np.asarray(b["V"], dtype=np.float64))
    if kind == "zero":
        return ZeroBasis(K)
    raise ValueError(f"unknown structure kind {kind!r}")


def gram_from_dict(doc: dict, name: str, layer: int | None = None) -> np.ndarray:
    """Dense K x K Gram ``name`` (WWt, HtH, WH; or with ``layer`` j = 1..M: mean_gram, partial_gram,
    nc3_scale) of a prediction dict (``Prediction.to_dict()`` / ``nclab predict --json``), built from its
    ``structure``; refused before allocating when it cannot fit."""
    if not isinstance(doc, dict) or "structure" not in doc:
        raise ValueError("the prediction has no 'structure' (written by an nclab older than 0.1.0?)")
    basis = basis_from_dict(doc)
    st = doc["structure"]
    vals = st["values"]
    if layer is None:
        if name not in GRAMS:
            raise ValueError(f"name must be one of {', '.join(GRAMS)} (or a layer Gram with layer=j), got {name!r}")
        left, right, le, re_ = GRAMS[name]
        return basis.dense(np.asarray(vals[name], dtype=np.float64), left, right, le, re_)
    if name not in LAYER_SIDES:
        raise ValueError(f"layer Grams are {', '.join(LAYER_SIDES)}, got {name!r}")
    M = len(doc["layers"])
    if not (isinstance(layer, int) and 1 <= layer <= M):
        raise ValueError(f"layer must be 1..{M}, got {layer!r}")
    sigma = [lay["sigma"] for lay in doc["layers"]]
    v = layer_values(vals["HtH"], sigma, layer)[name]
    left, right, le, re_ = LAYER_SIDES[name]
    return basis.dense(v, left, right, le, re_)


class TiledGram:
    """A K x K Gram read tile by tile, never formed: what nclab.metrics takes as a structured target.

    Duck type read by nclab.metrics (a leaf package): ``shape``; ``tile(ia, ib)`` the block of rows ``ia`` and
    columns ``ib`` (integer arrays of classes); ``diagonal()`` (K,); ``fro()`` the Frobenius norm; ``apply(X)``
    G @ X for X (K, D). Diagonal and secular (bias) bases need O(K r) memory; other bases fall back to the
    dense matrix (small K).
    """

    def __init__(self, basis: Basis, f, left="u", right="u", left_E=False, right_E=False):
        self.basis, self.f = basis, np.asarray(f, dtype=np.float64)
        self.sides = (left, right, left_E, right_E)
        self.K = basis.K
        self.shape = (self.K, self.K)
        self._dense = None
        if isinstance(basis, DiagonalBasis):
            self._v = basis.diag(self.f)
        elif isinstance(basis, SecularBasis):
            r1 = basis.gaps.size
            self._fr, self._fb = self.f[:r1], self.f[r1:]
            self._Lg = basis.V - (basis.t[None, :] if left_E else 0.0)  # (G, r1) group values
            self._Rg = basis.V - (basis.t[None, :] if right_E else 0.0)
            self._bid = np.full(self.K, -1, dtype=np.int64)
            self._bsize = np.ones(len(basis.blocks))
            for i, b in enumerate(basis.blocks):
                self._bid[b], self._bsize[i] = i, b.size
        else:
            self._dense = basis.dense(self.f, *self.sides)

    def tile(self, ia, ib) -> np.ndarray:
        ia, ib = np.asarray(ia, dtype=np.int64), np.asarray(ib, dtype=np.int64)
        if self._dense is not None:
            return self._dense[np.ix_(ia, ib)]
        eq = ia[:, None] == ib[None, :]
        if isinstance(self.basis, DiagonalBasis):
            return eq * self._v[ia][:, None]
        g = self.basis.group_of
        out = (self._Lg[g[ia]] * self._fr[None, :]) @ self._Rg[g[ib]].T
        ba, bb = self._bid[ia], self._bid[ib]
        same = (ba[:, None] == bb[None, :]) & (ba[:, None] >= 0)
        if same.any():
            fb = np.where(ba >= 0, self._fb[np.maximum(ba, 0)] if self._fb.size else 0.0, 0.0)
            sz = self._bsize[np.maximum(ba, 0)] if self._bsize.size else np.ones(ia.size)
            out += same * (fb / sz)[:, None] * -1.0
            out += (eq & same) * fb[:, None]
        return out

    def diagonal(self) -> np.ndarray:
        if self._dense is not None:
            return np.diag(self._dense).copy()
        return self.basis.diag(self.f, *self.sides)

    def fro(self) -> float:
        if self._dense is not None:
            return float(np.linalg.norm(self._dense))
        if isinstance(self.basis, DiagonalBasis):
            return float(np.linalg.norm(self._v))
        m = self.basis.mg[:, None]
        LL, RR = (self._Lg * m).T @ self._Lg, (self._Rg * m).T @ self._Rg  # (r1, r1)
        sq = float(self._fr @ (LL * RR) @ self._fr) + float(np.sum(self._fb**2 * (self._bsize - 1)))
        return float(np.sqrt(max(sq, 0.0)))

    def apply(self, X) -> np.ndarray:
        """G @ X for X (K, D), O(K D r)."""
        X = np.asarray(X, dtype=np.float64)
        if self._dense is not None:
            return self._dense @ X
        if isinstance(self.basis, DiagonalBasis):
            return self._v[:, None] * X
        g = self.basis.group_of
        gsum = np.zeros((self.basis.cg.size, X.shape[1]))
        np.add.at(gsum, g, X)
        out = (self._Lg[g] * self._fr[None, :]) @ (self._Rg.T @ gsum)
        for i, b in enumerate(self.basis.blocks):
            out[b] += self._fb[i] * (X[b] - X[b].mean(0))
        return out


def tiled_gram(source, name: str, layer: int | None = None) -> TiledGram:
    """TiledGram of a prediction (nclab.theory.Prediction or its to_dict()): ``WWt``, ``HtH``, ``WH``, or with
    ``layer`` j ``mean_gram``, ``partial_gram``, ``nc3_scale``."""
    if isinstance(source, dict):
        basis = basis_from_dict(source)
        vals = source["structure"]["values"]
        sigma = [lay["sigma"] for lay in source["layers"]]
        lv = None if layer is None else layer_values(vals["HtH"], sigma, layer)
    else:
        basis, vals, _, _ = source._parts
        lv = None if layer is None else source._layer_values(layer)
    if layer is None:
        return TiledGram(basis, vals[name], *GRAMS[name])
    return TiledGram(basis, lv[name], *LAYER_SIDES[name])
