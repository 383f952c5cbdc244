"""Pairwise NC metrics tile by tile: memory linear in K, exact (no sampling), on the statistics' device.

Every metric over pairs of classes -- Gram distances to a target (NC2 of the means and of the classifier,
NC3), equiangularity (mean |cos - cos*|) and its standard deviation, the CDNV, hyperspherical uniformity --
is a sum over the entries of a K x K matrix built from K x D rows. Here those matrices are never formed:
the rows are cut into tiles of ``tile`` classes and each t x t block is computed (one GEMM), added into
running sums and dropped. Named targets are generated per tile (the ETF Gram is a scaled identity minus a
constant, the OF a scaled identity); an explicit target (the theory's Gram) is sliced. Norms that every
entry is divided by come, for K > D, from D x D Grams (||A A^T||_F = ||A^T A||_F, so each distance is one sweep),
and for K <= D from a first pass over the K x K blocks (:func:`gram_norm`, :func:`cross_norm`: K^2 D, cheaper
than the K D^2 of a D x D Gram and no D x D buffer).

Cost: K^2 D / 2 multiply-adds per symmetric Gram (means, classifier) plus K^2 D for NC3 (W Hbar^T is not
symmetric); float64 throughout. Memory: a few t x t blocks, default t from the memory available
(:func:`default_tile`, at most 512: 2 MiB per block), overridable with ``tile=``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

F64 = torch.float64
#: largest default tile (classes per block): 512 x 512 float64 = 2 MiB per block, three reused blocks stay in
#: cache (measured here: 256-512 fastest on CPU; larger blocks are memory-bound)
MAX_TILE = 512
#: blocks held at once by the sweep (Grams, cosines, masks, temporaries)
BLOCKS = 6


def default_tile(K: int, device=None) -> int:
    """Classes per tile: the whole K when K <= MAX_TILE, else the largest tile whose BLOCKS blocks take at
    most 1/8 of the memory available (not above MAX_TILE, not below 64)."""
    from nclab.metrics._checks import available_memory

    if K <= MAX_TILE:
        return max(K, 1)
    budget = available_memory(device) / 8
    t = int(math.sqrt(budget / (8 * BLOCKS)))
    return max(64, min(MAX_TILE, t))


def check_tile(tile, K: int, device=None) -> int:
    if tile is None:
        return default_tile(K, device)
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 1:
        raise ValueError(f"tile must be a positive integer (classes per block), got {tile!r}")
    return int(min(tile, K))


def _blocks(K: int, t: int):
    return [(a, min(K, a + t)) for a in range(0, K, t)]


class Rows:
    """K x D rows read block by block as float64: (source[a0:a1] - sub) * 2^-shift, on ``device``.

    ``source`` is a tensor of any real dtype (the statistics' means, a float32 classifier) that is never
    copied whole: each block is converted when it is used. ``offset`` (D,) describes the rows that the target
    comparison uses as (these rows + offset) -- e.g. centred means with offset mu_G are the uncentred means.
    :meth:`summary` makes one pass: squared norms (K,), the sum of the rows and the D x D Gram rows^T rows.
    """

    def __init__(self, source: torch.Tensor, sub: torch.Tensor | None = None, shift: int = 0, device=None):
        self.source, self.sub, self.shift = source, sub, int(shift)
        self.device = torch.device(device) if device is not None else source.device
        self.K, self.D = int(source.shape[0]), int(source.shape[1])

    def block(self, a0: int, a1: int, writable: bool = False) -> torch.Tensor:
        """Rows a0..a1 as float64 (a private copy when ``writable`` or when they must be changed)."""
        src = self.source[a0:a1]
        b = src.to(device=self.device, dtype=F64)
        if self.sub is not None:
            return _shift(b - self.sub, self.shift)
        if b is src and (writable or self.shift):
            b = b.clone()
        return _shift(b, self.shift)

    def summary(self, tile: int, offset: torch.Tensor | None = None, grams: bool | None = None) -> dict:
        """One pass: sq (K,) squared norms, sum (D,), gram (D, D) = rows^T rows; with ``offset``, also the
        same for rows + offset (sq_off, gram_off) and dot (K,) = rows . offset. ``grams`` (default: K > D) builds
        the D x D Grams; ``None`` in their place makes :func:`gram_norm` and :func:`cross_norm` read K x K blocks."""
        K, D, dev = self.K, self.D, self.device
        sq = torch.empty(K, dtype=F64, device=dev)
        tot = torch.zeros(D, dtype=F64, device=dev)
        unit_sum = torch.zeros(D, dtype=F64, device=dev)
        grams = K > D if grams is None else bool(grams)
        gram = torch.zeros(D, D, dtype=F64, device=dev) if grams else None
        out = {"rows": self, "offset": offset, "tile": tile}
        if offset is not None:
            sq_off = torch.empty(K, dtype=F64, device=dev)
            dot = torch.empty(K, dtype=F64, device=dev)
            gram_off = torch.zeros(D, D, dtype=F64, device=dev) if grams else None
        for a0, a1 in _blocks(K, max(tile, 1)):
            b = self.block(a0, a1, writable=offset is not None)
            q = torch.einsum("ij,ij->i", b, b)
            sq[a0:a1] = q
            tot += b.sum(0)
            nq = torch.sqrt(q)
            unit_sum += (b * _inv(nq)[:, None]).sum(0)
            if grams:
                gram.addmm_(b.T, b)
            if offset is not None:
                dot[a0:a1] = b @ offset
                b += offset
                sq_off[a0:a1] = torch.einsum("ij,ij->i", b, b)
                if grams:
                    gram_off.addmm_(b.T, b)
        out.update(sq=sq, sum=tot, unit_sum=unit_sum, gram=gram)
        if offset is not None:
            out.update(sq_off=sq_off, dot=dot, gram_off=gram_off)
        return out


def _shift(t: torch.Tensor, k: int) -> torch.Tensor:
    return _ldexp(t, -k) if k else t


def _ldexp(t: torch.Tensor, k: int) -> torch.Tensor:
    while k:
        step = max(-1000, min(1000, k))
        t.mul_(2.0 ** step)
        k -= step
    return t


def fro(m: torch.Tensor) -> float:
    """Frobenius norm without overflow of the squares (scaled by the largest entry)."""
    top = float(m.abs().max()) if m.numel() else 0.0
    if not top > 0 or not math.isfinite(top):
        return top
    return top * float(torch.linalg.matrix_norm(m / top))


def _rows_block(summ: dict, a0: int, a1: int, shifted: bool) -> torch.Tensor:
    """Rows a0..a1 of a summary's Rows, plus its offset when ``shifted``."""
    b = summ["rows"].block(a0, a1)
    return b + summ["offset"] if shifted else b


def _block_norm(sa: dict, sb: dict | None, off_a: bool, off_b: bool, scale_a: float, scale_b: float) -> float:
    """||A' B'^T||_F from K x K blocks (B = A when ``sb`` is None), A' = A / scale_a, B' = B / scale_b with the
    scales the rows' largest norms: entries of A' B'^T <= 1, their squares cannot overflow."""
    A, tile = sa["rows"], sa["tile"]
    same = sb is None
    blocks_a = _blocks(A.K, tile)
    blocks_b = blocks_a if same else _blocks(sb["rows"].K, tile)
    total = 0.0
    for i, (a0, a1) in enumerate(blocks_a):
        ba = _rows_block(sa, a0, a1, off_a) / scale_a  # a new tensor: blocks may be the caller's own rows
        for b0, b1 in (blocks_b[i:] if same else blocks_b):
            bb = ba if same and b0 == a0 else _rows_block(sb or sa, b0, b1, off_b) / scale_b
            g = ba @ bb.T
            total += (1.0 if not same or b0 == a0 else 2.0) * float(torch.linalg.matrix_norm(g)) ** 2
    return math.sqrt(total)


def gram_norm(summ: dict, shifted: bool = False) -> float:
    """||R R^T||_F of a summary's rows R (plus its offset when ``shifted``): from the D x D Gram where the
    summary has one (K > D), else from K x K blocks (K^2 D / 2 multiply-adds)."""
    g = summ["gram_off" if shifted else "gram"]
    if g is not None:
        return fro(g)
    top = float(summ["sq_off" if shifted else "sq"].max()) if summ["rows"].K else 0.0  # max |<r_k, r_l>|
    if not top > 0 or not math.isfinite(top):
        return top
    s = math.sqrt(top)
    return top * _block_norm(summ, None, shifted, shifted, s, s)


class Target:
    """A normalized K x K target Gram, given tile by tile: named ("etf", "of": generated), explicit (a dense
    matrix, normalized: sliced) or structured (an object with ``tile(ia, ib)``, ``diagonal()``, ``fro()``, e.g.
    nclab.theory's TiledGram: read block by block, never formed). ``kept``: the classes the rows stand for."""

    def __init__(self, target, K: int, device, kept=None):
        self.K, self.device = K, device
        self.named = isinstance(target, str)
        self.dense = self.obj = None
        if self.named:
            self.name = target.lower()
            return
        if hasattr(target, "tile") and hasattr(target, "diagonal"):
            self.name = "structured"
            self.obj = target
            self.idx = np.arange(K) if kept is None else np.asarray(kept, dtype=np.int64)
            full = len(self.idx) == target.shape[0]
            if full:
                norm = float(target.fro())
            else:  # the Gram restricted to the kept classes: its norm from a pass over tiles
                norm = 0.0
                for a0, a1 in _blocks(K, 512):
                    for b0, b1 in _blocks(K, 512):
                        norm += float(np.sum(target.tile(self.idx[a0:a1], self.idx[b0:b1]) ** 2))
                norm = math.sqrt(norm)
            if not norm > 0:
                raise ValueError("target Gram is zero")
            self.norm = norm
            d = np.asarray(target.diagonal(), dtype=np.float64)[self.idx] / norm
            self.diag_sqrt = torch.as_tensor(np.sqrt(np.clip(d, 0, None)), device=device)
            return
        self.name = "explicit"
        g = torch.as_tensor(np.asarray(target, dtype=np.float64), device=device)
        self.dense = g  # already normalized to unit Frobenius norm (functional.target_gram)
        self.diag_sqrt = torch.sqrt(torch.clamp(torch.diagonal(g), min=0))

    def tile(self, a0, a1, b0, b1) -> torch.Tensor:
        if self.dense is not None:
            return self.dense[a0:a1, b0:b1]
        if self.obj is not None:
            t = self.obj.tile(self.idx[a0:a1], self.idx[b0:b1]) / self.norm
            return torch.as_tensor(np.asarray(t, dtype=np.float64), device=self.device)
        K = self.K
        eye = (torch.arange(a0, a1, device=self.device)[:, None] == torch.arange(b0, b1, device=self.device)[None, :])
        if self.name == "etf":  # (I - 1 1^T/K) / ||.||_F, ||I - 1 1^T/K||_F = sqrt(K - 1)
            return (eye.to(F64) - 1.0 / K) / math.sqrt(K - 1.0)
        return eye.to(F64) / math.sqrt(K)

    def cos(self, a0, a1, b0, b1):
        """(target cosines cos*_kl, valid mask) on a tile."""
        if not self.named:
            d = self.diag_sqrt
            ok = (d[a0:a1, None] > 0) & (d[None, b0:b1] > 0)
            safe_a = torch.where(d[a0:a1] > 0, d[a0:a1], torch.ones_like(d[a0:a1]))
            safe_b = torch.where(d[b0:b1] > 0, d[b0:b1], torch.ones_like(d[b0:b1]))
            return self.tile(a0, a1, b0, b1) / (safe_a[:, None] * safe_b[None, :]), ok
        val = -1.0 / (self.K - 1) if self.name == "etf" else 0.0
        shape = (a1 - a0, b1 - b0)
        return torch.full(shape, val, dtype=F64, device=self.device), torch.ones(shape, dtype=torch.bool,
                                                                              device=self.device)


def _inv(norms: torch.Tensor) -> torch.Tensor:
    """1/norm where norm > 0, else 0 (a zero row gives cosines 0 and is masked out)."""
    return torch.where(norms > 0, 1.0 / torch.where(norms > 0, norms, torch.ones_like(norms)),
                       torch.zeros_like(norms))


def _diff_sq(R: torch.Tensor, scale: float, target: Target, a0, a1, b0, b1, buf: torch.Tensor) -> float:
    """sum over the block of (R/scale - T)^2, T the normalized target (named: no T block is formed)."""
    X = torch.mul(R, 1.0 / scale, out=buf[: a1 - a0, : b1 - b0])
    if not target.named:
        X -= target.tile(a0, a1, b0, b1)
    else:
        K = target.K
        if target.name == "etf":
            s = math.sqrt(K - 1.0)
            X += 1.0 / (K * s)
            diag_val = 1.0 / s
        else:
            diag_val = 1.0 / math.sqrt(K)
        if a0 == b0:
            X.diagonal().sub_(diag_val)
    v = X.reshape(-1)
    return float(torch.dot(v, v))


def _upper(total: float, diag: float, same: bool) -> float:
    """Sum over the pairs k < l of a block of a symmetric matrix, from its total and its diagonal sum."""
    return 0.5 * (total - diag) if same else total


def _mask_rows(Y: torch.Tensor, ok_a: torch.Tensor, ok_b: torch.Tensor) -> None:
    if not bool(ok_a.all()):
        Y[~ok_a] = 0.0
    if not bool(ok_b.all()):
        Y[:, ~ok_b] = 0.0


def sweep(C: Rows, target: Target | None, tile: int, summ: dict, *, offset: torch.Tensor | None = None,
          variances: torch.Tensor | None = None, uniformity: bool = False) -> dict:
    """One symmetric sweep over the pairs of the rows ``C`` (K, D) (scale-free metrics: any common scale).

    C : the centred rows (class means minus mu_G, or classifier rows); summ = C.summary(tile, offset).
    target : Target of the normalized Gram distance and the equiangularity (cos*) of the rows C + offset
        (offset mu_G: the uncentred means, for OF targets), or None (skip both).
    variances : (K,) per-class variances in the units of C squared, for the CDNV.
    uniformity : accumulate log(1/||u_k - u_l||) over pairs (u_k = C_k/||C_k||).

    Returns: distance (Gram distance to the target), equiangular, equiangular_std (population std over pairs
    of the cosines of C), cdnv (mean over pairs; inf/NaN as the dense definition gives), gnc2 (population
    variance over pairs of log 1/||u_k - u_l||) and gnc2_mean. Blocks of the Gram of C + offset are derived from
    C's by rank-one corrections (no second GEMM). Blocks are computed into three reused buffers (no allocation
    per block: fresh pages cost more than the arithmetic here).
    """
    K, dev = C.K, C.device
    sq = summ["sq"]
    nb = torch.sqrt(sq)
    ib, okb = _inv(nb), nb > 0
    if offset is None:
        nr, gram_norm_ = nb, gram_norm(summ)
    else:
        nr, gram_norm_ = torch.sqrt(summ["sq_off"]), gram_norm(summ, shifted=True)
        av, cc = summ["dot"], float(offset @ offset)
    ir, okr = _inv(nr), nr > 0
    n_ok = float(okb.sum())
    us = summ["unit_sum"]
    m0 = (float(us @ us) - n_ok) / (n_ok * (n_ok - 1)) if n_ok > 1 else 0.0  # mean cos over pairs, exact
    m0 = min(max(m0, -1.0), 1.0 - 1e-12)
    x0 = math.log1p(-m0)
    L0 = -0.5 * (math.log(2.0) + x0)
    cstar = None
    if target is not None and target.named:
        cstar = -1.0 / (K - 1) if target.name == "etf" else 0.0
    t = min(tile, K)
    Gb, Xb, Yb = (torch.empty(t, t, dtype=F64, device=dev) for _ in range(3))
    tot = dict.fromkeys(("sq", "ang", "n_ang", "c1", "c2", "n_c", "l1", "l2", "cd", "n_cd"), 0.0)
    u_inf = cd_inf = cd_nan = False
    blocks = _blocks(K, tile)
    for i, (a0, a1) in enumerate(blocks):
        A = C.block(a0, a1)
        for b0, b1 in blocks[i:]:
            same = a0 == b0
            ta, tb = a1 - a0, b1 - b0
            B = A if same else C.block(b0, b1)
            G = torch.mm(A, B.T, out=Gb[:ta, :tb])  # Gram block of C
            w = 1.0 if same else 2.0  # an off-diagonal block stands for its mirror image too
            X, Y = Xb[:ta, :tb], Yb[:ta, :tb]
            cos_done = False
            if target is not None and gram_norm_ > 0:
                if offset is None:  # the rows are C: their cosines serve the target and the std/uniformity
                    tot["sq"] += w * _diff_sq(G, gram_norm_, target, a0, a1, b0, b1, Xb)
                    torch.mul(G, ib[a0:a1, None], out=Y).mul_(ib[None, b0:b1])  # 0 where a row is zero
                    cos_done = True
                    Z = torch.sub(Y, cstar, out=X) if cstar else X.copy_(Y) if cstar is None else torch.abs(Y, out=X)
                else:  # <c_k + o, c_l + o> = <c_k, c_l> + c_k.o + c_l.o + o.o
                    R = torch.add(G, av[a0:a1, None], out=X).add_(av[None, b0:b1] + cc)
                    tot["sq"] += w * _diff_sq(R, gram_norm_, target, a0, a1, b0, b1, Yb)
                    Z = R.mul_(ir[a0:a1, None]).mul_(ir[None, b0:b1])
                    if cstar:
                        Z -= cstar
                oka, okbb = okr[a0:a1], okr[b0:b1]
                if cstar is None:
                    ct, okt = target.cos(a0, a1, b0, b1)
                    Z -= ct
                    Z.mul_(okt)
                    oka = oka & (target.diag_sqrt[a0:a1] > 0)
                    okbb = okbb & (target.diag_sqrt[b0:b1] > 0)
                _mask_rows(Z, oka, okbb)
                Z.abs_()
                na, nbb = int(oka.sum()), int(okbb.sum())
                tot["ang"] += _upper(float(Z.sum()), float(Z.diagonal().sum()) if same else 0.0, same)
                tot["n_ang"] += na * (na - 1) / 2 if same else na * nbb
            # cosines of the centred rows: equiangular std, uniformity. Sums are taken of (cos - m0) and of
            # (log - L0), m0/L0 the mean cosine (exact, from sum_k u_k) and its log: no cancellation in the
            # variances of nearly equiangular classes
            if not cos_done:
                torch.mul(G, ib[a0:a1, None], out=Y).mul_(ib[None, b0:b1])  # 0 where a row is zero
            oka, okbb = okb[a0:a1], okb[b0:b1]
            na, nbb = int(oka.sum()), int(okbb.sum())
            all_ok = na == a1 - a0 and nbb == b1 - b0
            tot["n_c"] += na * (na - 1) / 2 if same else na * nbb
            Y -= m0
            if not all_ok:
                _mask_rows(Y, oka, okbb)
            dg = Y.diagonal()
            if same:  # the diagonal's (1 - m0)^2 would swamp squares of ~1e-18 if subtracted afterwards
                dg.zero_()
            yv = Y.reshape(-1)  # a copy when Y is a corner of its buffer: after the diagonal is zeroed
            tot["c1"] += _upper(float(Y.sum()), 0.0, same)
            tot["c2"] += _upper(float(torch.dot(yv, yv)), 0.0, same)
            if uniformity:  # log 1/||u_k - u_l|| = -(log 2 + log1p(-cos))/2
                Y += m0
                if same:
                    dg.fill_(0.0)
                Lx = Y.neg_().clamp_(min=-1.0).log1p_()  # Y is not needed after this
                Lx -= x0
                if same:
                    Lx.diagonal().fill_(0.0)
                if not all_ok:
                    _mask_rows(Lx, oka, okbb)
                s1 = float(Lx.sum())
                if math.isinf(s1) or math.isnan(s1):
                    u_inf = True
                else:
                    lv = Lx.reshape(-1)
                    f = 0.5 if same else 1.0
                    tot["l1"] += -0.5 * f * s1  # sum over pairs of (lg - L0), lg = -(log 2 + x)/2
                    tot["l2"] += 0.25 * f * float(torch.dot(lv, lv))
            if variances is not None:  # (var_k + var_l) / (2 ||mu_k - mu_l||^2)
                D2 = torch.mul(G, -2.0, out=X).add_(sq[a0:a1, None]).add_(sq[None, b0:b1]).clamp_(min=0.0)
                if same:
                    D2.diagonal().fill_(math.inf)
                if float(D2.min()) == 0:
                    zero = D2 == 0
                    num0 = (variances[a0:a1, None] + variances[None, b0:b1])[zero]
                    cd_inf |= bool((num0 > 0).any())
                    cd_nan |= bool((num0 == 0).any())
                    D2[zero] = math.inf
                torch.add(variances[a0:a1, None], variances[None, b0:b1], out=Y).div_(D2)
                tot["cd"] += 0.5 * _upper(float(Y.sum()), 0.0, same)
                tot["n_cd"] += ta * (ta - 1) / 2 if same else ta * tb
    out = {}
    if target is not None:
        out["distance"] = math.sqrt(max(tot["sq"], 0.0)) if gram_norm_ > 0 else math.nan
        out["equiangular"] = tot["ang"] / tot["n_ang"] if tot["n_ang"] else math.nan
    n_c = tot["n_c"]
    if n_c:
        m = tot["c1"] / n_c
        out["equiangular_std"] = math.sqrt(max(tot["c2"] / n_c - m * m, 0.0))
        out["cos_mean"] = m0 + m
    else:
        out["equiangular_std"] = out["cos_mean"] = math.nan
    if uniformity:
        if u_inf or not n_c:
            out["gnc2"] = out["gnc2_mean"] = math.inf if u_inf else math.nan
        else:
            m = tot["l1"] / n_c
            out["gnc2_mean"] = L0 + m
            out["gnc2"] = max(tot["l2"] / n_c - m * m, 0.0)
    if variances is not None:
        n_cd = tot["n_cd"]
        out["cdnv"] = math.nan if cd_nan else (math.inf if cd_inf else (tot["cd"] / n_cd if n_cd else math.nan))
    return out


#: above this K, NC3's distance to a named target is computed from D x D Grams (O(K D^2), no K^2 D sweep)
CROSS_TILE_MAX_K = 4096


def _inner_norm(ga: torch.Tensor, gb: torch.Tensor) -> float:
    """sqrt(<ga, gb>_F) for two PSD D x D Grams, scaled so that nothing overflows (= ||A B^T||_F)."""
    ma, mb = float(ga.abs().max()), float(gb.abs().max())
    if not (ma > 0 and mb > 0):
        return 0.0
    return math.sqrt(ma) * math.sqrt(mb) * math.sqrt(max(float(((ga / ma) * (gb / mb)).sum()), 0.0))


def cross_norm(sw: dict, sh: dict, shifted: bool) -> float:
    """||W H'^T||_F (H' = H + offset when ``shifted``) of two summaries: <W^T W, H'^T H'> from their D x D Grams
    where both have them (K > D), else from K x K blocks."""
    gh = sh["gram_off" if shifted else "gram"]
    if sw["gram"] is not None and gh is not None:
        return _inner_norm(sw["gram"], gh)
    ta, tb = float(sw["sq"].max()), float(sh["sq_off" if shifted else "sq"].max())
    if not (ta > 0 and tb > 0):
        return 0.0
    sa, sb = math.sqrt(ta), math.sqrt(tb)
    return sa * sb * _block_norm(sw, sh, False, shifted, sa, sb)


def cross_distance(W: Rows, H: Rows, sw: dict, sh: dict, target: Target, tile: int,
                   offset: torch.Tensor | None = None) -> tuple[float, str]:
    """(|| W H'^T/||W H'^T||_F - T ||_F, method), T normalized, H' = H + offset; sw, sh their summaries.

    K <= CROSS_TILE_MAX_K or an explicit target: exact, tile by tile (K^2 D multiply-adds). Above, for the
    named targets: d^2 = 2 - 2 <W H'^T, T>/||W H'^T||_F with <W H'^T, I> = sum_k w_k.h'_k and
    <W H'^T, 1 1^T> = (1^T W)(H'^T 1): O(K D), rounding ~1e-8 absolute on d (cancellation near 0)."""
    norm = cross_norm(sw, sh, offset is not None)
    if not norm > 0:
        return math.nan, "exact"
    K = W.K
    if K > CROSS_TILE_MAX_K and target.named:
        tr = 0.0
        for a0, a1 in _blocks(K, tile):
            hb = H.block(a0, a1)
            if offset is not None:
                hb = hb + offset
            tr += float(torch.einsum("ij,ij->", W.block(a0, a1) / norm, hb))
        if target.name == "etf":
            hs = sh["sum"] + (0.0 if offset is None else K * offset)
            inner = (tr - float((sw["sum"] / norm) @ hs) / K) / math.sqrt(K - 1.0)
        else:
            inner = tr / math.sqrt(K)
        return math.sqrt(max(2.0 - 2.0 * inner, 0.0)), "D x D Grams (2 - 2 cos; ~1e-8 absolute)"
    t = min(tile, K)
    Gb, Yb = (torch.empty(t, t, dtype=F64, device=W.device) for _ in range(2))
    total = 0.0
    for a0, a1 in _blocks(K, tile):
        wa = W.block(a0, a1)
        for b0, b1 in _blocks(K, tile):
            hb = H.block(b0, b1)
            if offset is not None:
                hb = hb + offset
            G = torch.mm(wa, hb.T, out=Gb[: a1 - a0, : b1 - b0])
            total += _diff_sq(G, norm, target, a0, a1, b0, b1, Yb)
    return math.sqrt(max(total, 0.0)), "exact"


def row_pairs(W: Rows, H: Rows, tile: int, offset: torch.Tensor | None, nw: float, nh: float):
    """Per class w_k . c_k (C = H, centred) and sum_k ||w_k/nw - h'_k/nh||^2 (h' = c + offset): one pass."""
    dots = torch.empty(W.K, dtype=F64, device=W.device)
    dual = 0.0
    for a0, a1 in _blocks(W.K, tile):
        wb, hb = W.block(a0, a1), H.block(a0, a1)
        dots[a0:a1] = torch.einsum("ij,ij->i", wb, hb)
        if offset is not None:
            hb = hb + offset
        if nw > 0 and nh > 0:
            d = wb / nw - hb / nh
            dual += float(torch.einsum("ij,ij->", d, d))
    return dots, dual
