"""Streaming class statistics in float64 (torchmetrics-style update / merge / reset / all_reduce).

Features are rows: a batch is `features` (B, D), any real dtype, any device, with integer `labels` (B,).
Everything is accumulated in float64 on the statistics' device (default: the first batch's device).

ClassStats (first pass)             counts (K,), class means (K, D), per-class sums of squared distances
                                    to the class mean m2 (K,), pooled within-class scatter (D, D).
SecondPass (optional second pass)   given final means: per-class NC1 terms q_k = sum_{i in k}
                                    ||P^T (h_i - mu_k)||^2 (no D x D matrix, metrics.md pitfall 11), m2,
                                    and NC4 counts (nearest-class-centre vs classifier argmax).

Batches are centred at their own class means in float64 before any product and merged with Chan's
formulas (no E[x^2] - mu^2): for counts n_a, n_b, means mu_a, mu_b, delta = mu_b - mu_a,
    mu = mu_a + delta n_b/n,   m2 = m2_a + m2_b + (n_a n_b/n)||delta||^2,
    S  = S_a + S_b + sum_k (n_a n_b/n)_k delta_k delta_k^T,
and the batch scatter and that correction are one GEMM: S += A^T A with A = [centred batch; sqrt(c) delta].

Scale: features of any finite magnitude are accepted. While the largest |feature| stays within 2^+-300 the
statistics are the plain sums above (scale_exp = 0). Outside that range every statistic is stored divided
by a power of two, 2^scale_exp for means and 2^(2 scale_exp) for m2 and the scatter (exact; updated when a
larger batch arrives), so no square overflows or underflows. Every NC metric is scale-invariant and is
computed from the stored (scaled) statistics; the attributes means, m2, scatter and the per-class norms
and variances of compute() are in the features' own units.
Inputs that require grad are detached: the statistics never hold an autograd graph.
"""

from __future__ import annotations

import contextlib
import functools
import math

import numpy as np
import torch

from nclab.environment import fitted_threads
from nclab.metrics._checks import (
    F64,
    check_choice,
    check_device,
    check_features,
    check_gemm_dtype,
    check_int,
    check_labels,
    check_matrix,
    check_memory,
    check_num_classes,
    check_rtol,
    check_vector,
)
from nclab.metrics.functional import DEFAULT_RTOL, GLOBAL_MEANS, exp2, nc1_projector

MOMENTS = ("scatter", "trace", "none")
SAFE_EXP = 300  # features within 2^+-SAFE_EXP are accumulated unscaled
NARROW = (torch.float32, torch.float16, torch.bfloat16)
NARROW_TOP = 128  # |x| < 2^128 in these types
ONEHOT_MAX_K = 16  # up to this many classes, per-class sums are one-hot GEMMs (2 K B D flops; index_add_ above)
KEEP_BUF = 1 << 23  # float64 entries (64 MB) of batch buffer kept between updates
SUB_ELEMS = 1 << 18  # entries per step of the GEMM-free passes: 2 MB of float64, stays in cache
NARROW_COLS = 32  # widest float32 thin GEMM of SecondPass._narrow
SUM_ROWS = 256  # rows per float32 class sum in ClassStats._narrow_sums (the sums of sums are float64)


def _f64_copy(x: torch.Tensor, device, buf: torch.Tensor | None) -> torch.Tensor:
    """Our own float64 copy of a batch (detached), into a reused buffer when given (avoids page faults)."""
    x = x.detach()
    if buf is not None and buf.device == torch.device(device) and buf.shape[0] >= x.shape[0] \
            and buf.shape[1] == x.shape[1]:
        return buf[: x.shape[0]].copy_(x)
    return x.to(device=device, dtype=F64, copy=True)


def ldexp_(t: torch.Tensor, k: int) -> torch.Tensor:
    """t *= 2^k in place (exact unless it under/overflows), for any integer k."""
    k = int(k)
    while k:
        step = max(-1000, min(1000, k))
        t.mul_(2.0 ** step)
        k -= step
    return t


def _max_exp(x: torch.Tensor) -> int | None:
    """Exponent of the largest |entry| (None if all zero); ValueError on NaN/inf. One read, no temporary."""
    if not x.numel():
        return None
    lo, hi = torch.aminmax(x)
    m = max(-float(lo), float(hi))
    if not math.isfinite(m):
        raise ValueError("features contain NaN or inf")
    return math.frexp(m)[1] if m > 0 else None


@contextlib.contextmanager
def _exact_f32():
    """float32 matmuls at full float32 precision inside (no TF32 / bfloat16 shortcuts a user may have enabled
    with torch.set_float32_matmul_precision): the one-hot class sums and the projections below must keep
    float32's precision."""
    prev = torch.get_float32_matmul_precision()
    if prev == "highest":
        yield
        return
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(prev)


def fitted(fn):
    """Run ``fn`` with torch's CPU threads cut to the cores other processes leave idle
    (:func:`nclab.environment.fitted_threads`): on a loaded CPU, extra threads stall every parallel op."""

    @functools.wraps(fn)
    def call(*args, **kwargs):
        with fitted_threads():
            return fn(*args, **kwargs)

    return call


def _onehot(y: torch.Tensor, K: int, dtype) -> torch.Tensor | None:
    """(K, B) indicator of the labels, or None when K > ONEHOT_MAX_K (then index_add_ is used instead).

    With few classes a per-class sum is a thin GEMM (2 K B D flops, a few % of H^T H). index_add_ into a handful
    of rows is fast on one thread but collapses with several threads on a busy CPU (measured here: 60 ms vs
    1 ms for 4,096 x 512 at K = 10; it was 40% of nc_metrics' time); above 16 classes the GEMM costs more."""
    if K > ONEHOT_MAX_K:
        return None
    return torch.zeros(K, y.shape[0], dtype=dtype, device=y.device).scatter_(0, y.unsqueeze(0), 1.0)


def _by_class(v: torch.Tensor, y: torch.Tensor, K: int, onehot: torch.Tensor | None) -> torch.Tensor:
    """Per-class sums of the rows of v (B, ...) -> (K, ...), in v's dtype."""
    if onehot is not None:
        return onehot.to(v.dtype) @ v
    return torch.zeros((K,) + tuple(v.shape[1:]), dtype=v.dtype, device=v.device).index_add_(0, y, v)


def _minus_rows(x: torch.Tensor, table: torch.Tensor, y: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out = x - table[y] (B, D), each entry rounded once as the subtraction: the rows gathered into ``out``,
    then one subtraction (two passes over out, where a one-hot GEMM into a copy of x made three)."""
    torch.index_select(table, 0, y, out=out)
    return torch.sub(x, out, out=out)


def _row_sq(x: torch.Tensor) -> torch.Tensor:
    """Squared row norms (B,) in float64 (one read of x, no (B, D) temporary)."""
    return torch.linalg.vector_norm(x, dim=1).to(F64).square_()


def _class_batch(x: torch.Tensor, y: torch.Tensor, K: int, centre: bool):
    """Counts (K,), means (K, D) of one float64 batch; centres x in place when asked, returns m2 (K,)."""
    nb = torch.bincount(y, minlength=K)  # (K,)
    oh = _onehot(y, K, F64)
    sums = _by_class(x, y, K, oh)  # (K, D)
    if not torch.isfinite(sums).all():
        raise ValueError("features contain NaN or inf")
    mb = sums / nb.clamp(min=1).unsqueeze(1).to(F64)  # (K, D), 0 for absent classes
    m2 = None
    if centre:
        if oh is not None:
            x.addmm_(oh.T, mb, alpha=-1.0)  # x - mb_y in one pass, rounded as the subtraction is
        else:
            x.sub_(mb.index_select(0, y))
        m2 = _by_class(_row_sq(x), y, K, oh)  # (K,)
    return nb, mb, m2


class ClassStats:
    """Streaming first-pass class statistics, all in float64.

    Parameters
    ----------
    num_classes : int, K >= 2 (labels are 0..K-1; classes with no samples are dropped at compute time).
    dim : int or None, feature dimension D (taken from the first batch if None; needed for all_reduce
        on a process that saw no data).
    moments : "scatter" (default: also the D x D within-class scatter, enough for every metric but
        per-class NC1 and NC4), "trace" (only per-class m2: trace metrics and CDNV; NC1 needs a
        SecondPass), "none" (counts and means only).
    device : where the statistics live (default: the first batch's device).
    gemm_dtype : dtype of the per-batch scatter product. None (default): the features' own dtype (float32
        for half types) with no float64 copy of the batch -- rows are shifted by their class's current float64
        mean rounded to that dtype (a class's first sample when it is new), so the GEMM sees only within-class
        deviations; means, m2 and the corrections stay float64 (issue 12: ~1.4x one float32 H^T H on float32
        features, about half the time of a float64 product; NC1 within 1e-6 relative of float64 in the
        collapsed regime, scatter ~3e-7 relative otherwise: the precision the float32 features carry anyway).
        Float64 features take the float64 path (the same bits as torch.float64). torch.float64: the product in float64
        for every input (streams of float32 batches then equal one float64 pass to 1e-10); torch.float32:
        centred in float64, product in float32.

    Attributes: counts (K,) int64, means (K, D) float64, m2 (K,) float64, scatter (D, D) float64 (the
    sum, not divided by N), num_samples, all in the features' units; scale_exp (0 unless features beyond
    2^+-300 were seen: the statistics are then stored divided by 2^scale_exp, resp. its square; `scaled()`
    gives them so, for scale-invariant metrics that must not overflow).
    Sizes that cannot fit (K D + D^2 float64 numbers) are refused before allocating. One float64 batch buffer
    of at most 64 MB is kept between updates (reset() drops it).
    """

    def __init__(self, num_classes: int, dim: int | None = None, *, moments: str = "scatter", device=None,
                 gemm_dtype: torch.dtype | None = None):
        self.moments = check_choice(moments, "moments", MOMENTS)
        self.num_classes = check_num_classes(num_classes)
        self.gemm_dtype = None if gemm_dtype is None else check_gemm_dtype(gemm_dtype)
        self.device = check_device(device)
        self.dim = None if dim is None else check_int(dim, "dim", 1)
        self.reset()

    def reset(self) -> ClassStats:
        """Forget all data (keeps num_classes, dim, device)."""
        self.counts = self._means = self._m2 = self._scatter = None
        self._buf = None
        self.scale_exp, self._top = 0, None  # _top: exponent of the largest |feature| seen, or
        # an upper bound of it (None: only zeros)
        if self.dim is not None:
            self._alloc(self.dim, self.device or torch.device("cpu"))
        return self

    def nbytes(self, dim: int) -> int:
        """Memory of the statistics for feature dimension `dim` (bytes)."""
        K = self.num_classes
        return 8 * (K * (dim + 3) + (dim * dim if self.moments == "scatter" else 0))

    def _alloc(self, dim: int, device) -> None:
        check_memory(self.nbytes(dim) + 8 * 3 * self.num_classes,
                     f"class statistics for K={self.num_classes} classes of dimension {dim} "
                     f"(moments={self.moments!r})", device)
        K, self.dim, self.device = self.num_classes, dim, torch.device(device)
        self.counts = torch.zeros(K, dtype=torch.int64, device=device)
        self._means = torch.zeros(K, dim, dtype=F64, device=device)
        self._m2 = torch.zeros(K, dtype=F64, device=device) if self.moments != "none" else None
        self._scatter = torch.zeros(dim, dim, dtype=F64, device=device) if self.moments == "scatter" else None

    @property
    def means(self) -> torch.Tensor | None:
        """Class means (K, D), float64, in the features' units."""
        return self._true(self._means, 1)

    @property
    def m2(self) -> torch.Tensor | None:
        """Per-class sums of squared distances to the class mean (K,), in the features' units squared."""
        return self._true(self._m2, 2)

    @property
    def scatter(self) -> torch.Tensor | None:
        """Pooled within-class scatter sum (D, D), in the features' units squared (inf where that overflows)."""
        return self._true(self._scatter, 2)

    def _true(self, t, power: int):
        if t is None or not self.scale_exp:
            return t
        return ldexp_(t.clone(), power * self.scale_exp)

    def scaled(self) -> tuple:
        """(means, m2, scatter, scale_exp): the stored statistics, divided by 2^scale_exp (means) and
        2^(2 scale_exp) (m2, scatter). Every scale-invariant metric (NC1, normalized Grams) can use them as they
        are, and they never overflow or underflow; scale_exp is 0 unless features beyond 2^+-300 were seen."""
        return self._means, self._m2, self._scatter, self.scale_exp

    @property
    def num_samples(self) -> int:
        return 0 if self.counts is None else int(self.counts.sum())

    @fitted
    def update(self, features, labels) -> ClassStats:
        """Add a batch: features (B, D), labels (B,) integers in [0, K). Returns self."""
        x = check_features(features, self.dim)
        y, _ = check_labels(labels, x.shape[0], self.num_classes, self.device or x.device)
        self._update(x, y)
        return self

    def _rescale(self, e: int) -> None:
        """Store the statistics divided by 2^e instead of 2^scale_exp (e >= scale_exp)."""
        d = e - self.scale_exp
        if d and self.counts is not None:
            ldexp_(self._means, -d)
            for t in (self._m2, self._scatter):
                if t is not None:
                    ldexp_(t, -2 * d)
        self.scale_exp = e

    def _fit_scale(self, top: int | None) -> None:
        """Choose/raise scale_exp for data whose largest |entry| has exponent `top` (true units)."""
        if top is None:
            return
        if self._top is None:  # nothing but zeros so far: the stored statistics are 0, any scale is exact
            self._rescale(0)
            self.scale_exp = 0 if -SAFE_EXP <= top <= SAFE_EXP else top
        elif top - self.scale_exp > SAFE_EXP:
            self._rescale(top)
        self._top = top if self._top is None else max(self._top, top)

    def _work(self, rows: int, dim: int) -> torch.Tensor:
        """A float64 (rows, dim) buffer, kept between updates up to KEEP_BUF entries (a fresh one per batch costs
        page faults; a larger one would stay allocated next to the statistics)."""
        buf = self._buf
        if buf is None or buf.shape[0] < rows or buf.shape[1] != dim or buf.device != self.device:
            buf = torch.empty(rows, dim, dtype=F64, device=self.device)
            self._buf = buf if rows * dim <= KEEP_BUF else None
        return buf

    def _update(self, x: torch.Tensor, y: torch.Tensor, buf: torch.Tensor | None = None, exp: int = 0) -> None:
        """x: a batch divided by 2^exp (its true values are x 2^exp)."""
        if self.counts is None:
            self._alloc(x.shape[1], self.device or x.device)
        # float64 features take the exact path below (the same bits as gemm_dtype=torch.float64): only narrower
        # features gain from a product in their own dtype
        if (self.gemm_dtype is None and x.dtype != F64 and self.moments == "scatter" and exp == 0
                and self.scale_exp == 0):
            if self._update_shifted(x, y):
                return
        y = y.to(self.device)
        B, D = x.shape
        # the scatter GEMM wants the whole batch; without it, steps of SUB_ELEMS float64 stay in cache
        step = B if self.moments == "scatter" else max(1, SUB_ELEMS // D)
        if buf is None:
            buf = self._work(min(step, B), D)
        narrow = x.dtype in NARROW  # |x| < 2^128: after the first non-zero batch no scan for the scale is needed
        if self.moments == "none" and B > step and (not narrow or exp == 0):
            return self._update_sums(x, y, buf, exp, step)
        for i in range(0, B, step):
            xs = _f64_copy(x[i:i + step], self.device, buf)  # (b, D), our own float64 copy
            if narrow and self._top is not None and self.scale_exp == 0 and exp == 0:
                top = NARROW_TOP  # an upper bound; NaN and inf are caught on the class sums
            else:
                top = _max_exp(xs)
            self._fit_scale(None if top is None else top + exp)
            if exp - self.scale_exp:
                ldexp_(xs, exp - self.scale_exp)
            nb, mb, m2b = _class_batch(xs, y[i:i + step], self.num_classes, self.moments != "none")
            self._merge(nb, mb, m2b, xs if self.moments == "scatter" else None, None)

    def _update_sums(self, x: torch.Tensor, y: torch.Tensor, buf: torch.Tensor, exp: int, step: int) -> None:
        """Counts and means only (the first of nc_metrics' two passes): float64 class sums accumulated over
        cache-sized steps (one-hot GEMMs into one (K, D) accumulator), one scale decision and one merge."""
        if x.dtype in NARROW and self._top is not None and self.scale_exp == 0:
            top = NARROW_TOP  # a bound; NaN and inf are caught on the sums
        elif x.dtype in NARROW and exp == 0:
            # any float32 magnitude is accumulated unscaled: the scan only tells _narrow_sums' tiny-data guard
            # (and all-zero data) apart, and a sample of rows does that
            top = _max_exp(x.detach()[:2048])
        else:
            top = _max_exp(x.detach())
        self._fit_scale(None if top is None else top + exp)
        if self._narrow_sums(x, y, exp):
            return
        K, (B, D) = self.num_classes, x.shape
        oh = _onehot(y, K, F64)  # (K, B) or None
        sums = torch.zeros(K, D, dtype=F64, device=self.device)
        for i in range(0, B, step):
            xs = _f64_copy(x[i:i + step], self.device, buf)
            if exp - self.scale_exp:
                ldexp_(xs, exp - self.scale_exp)  # before summing: sums of entries near 2^1023 must not overflow
            if oh is not None:
                sums.addmm_(oh[:, i:i + step], xs)
            else:
                sums.index_add_(0, y[i:i + step], xs)
        if not torch.isfinite(sums).all():
            raise ValueError("features contain NaN or inf")
        nb = torch.bincount(y, minlength=K)
        self._merge(nb, sums / nb.clamp(min=1).unsqueeze(1).to(F64), None, None, None)

    def _narrow_sums(self, x: torch.Tensor, y: torch.Tensor, exp: int) -> bool:
        """_update_sums of float32 (or half) features with few classes in float32 products, no float64 copy
        (issue 12: half the first pass's time). Each row is shifted by its class's mean so far rounded to the
        features' dtype, so the one-hot GEMM sums only within-class deviations d, whose float32 rounding is relative to
        the deviations, not to the means: sum x = sum d + n c. A step holding a class seen for the first time is
        summed in float64 instead (exactly), which gives that class its first reference; a first sample far from
        the rest (a mislabelled outlier) therefore moves the reference only by its share of the mean. Each
        float32 sum covers at most SUM_ROWS rows (sums over 131,072 rows of D = 4 put 1.6e-6 into NC1). False
        (nothing done) where the float64 path must run: scaled or tiny data (below 2^-100, where float32
        deviations lose bits), products forced to float64, many classes, and sums that are not finite (overflow;
        or NaN/inf features, which the float64 path then reports)."""
        K = self.num_classes
        if not (x.dtype in NARROW and exp == 0 and self.scale_exp == 0 and self.gemm_dtype != F64
                and K <= ONEHOT_MAX_K and self._top is not None and self._top >= -100
                and x.device == torch.device(self.device)):
            return False
        F32, (B, D), dev = torch.float32, x.shape, self.device
        x = x.detach()
        step = max(1, min(1024, 2 * SUB_ELEMS // D))  # <= 2 MB of float32: d stays in cache for its sum
        # the steps that hold a class's first sample (in this batch, for classes without an earlier mean)
        first = torch.full((K,), B, dtype=torch.int64, device=dev).scatter_reduce(
            0, y, torch.arange(B, device=dev), "amin", include_self=True)
        exact = set((first[(first < B) & (self.counts == 0)] // step).tolist())
        oh = _onehot(y, K, F32)  # (K, B): the class sums of each step's deviations
        sums = torch.zeros(K, D, dtype=F64, device=dev)  # this batch's class sums, up to row `done`
        acc = torch.zeros(K, D, dtype=F64, device=dev)  # sums of d = x - c_y since row `done`
        # references on the features' own grid (half features: half values), so that x - c is exact in float32
        # for nearby rows; rounding d to float32 otherwise errs the same way for every row of a coarse grid
        c, done = self._means.to(x.dtype).to(F32), 0
        t = torch.empty(min(step, B), D, dtype=F32, device=dev)

        def fold(upto: int) -> None:  # sums += acc + n c over rows [done, upto)
            n = torch.bincount(y[done:upto], minlength=K).unsqueeze(1).to(F64)
            sums.add_(acc).addcmul_(n, c.to(F64))
            acc.zero_()

        with _exact_f32():
            for k, i in enumerate(range(0, B, step)):
                j = min(i + step, B)
                if k in exact:  # a class seen for the first time: this step's sums in float64, then new references
                    fold(i)
                    sums.addmm_(oh[:, i:j].to(F64), x[i:j].to(F64))  # index_add_ is slow with threads
                    seen = torch.bincount(y[:j], minlength=K).unsqueeze(1)
                    c = torch.where(seen > 0, sums / seen.clamp(min=1).to(F64), self._means).to(x.dtype).to(F32)
                    done = j
                    continue
                xs = x[i:j] if x.dtype == F32 else x[i:j].to(F32)
                d = _minus_rows(xs, c, y[i:j], t[:j - i])  # x - c_y, rounded as subtraction
                # float32 sums of at most SUM_ROWS rows each, added in float64: the rounding of a float32 sum grows
                # with its length (one sum of 140,003 rows put 1.6e-6 into NC1); the blocks cost no measurable time
                full = (j - i) // SUM_ROWS * SUM_ROWS
                if full:
                    nblk = full // SUM_ROWS
                    acc += torch.bmm(oh[:, i:i + full].reshape(K, nblk, SUM_ROWS).transpose(0, 1),
                                     d[:full].view(nblk, SUM_ROWS, D)).sum(0, dtype=F64)
                if full < j - i:
                    acc += oh[:, i + full:j] @ d[full:]
            fold(B)
        if not torch.isfinite(sums).all():
            return False
        nb = torch.bincount(y, minlength=K)
        self._merge(nb, sums / nb.clamp(min=1).unsqueeze(1).to(F64), None, None, None)
        return True

    def _references(self, x: torch.Tensor, y: torch.Tensor, nb: torch.Tensor, dtype) -> torch.Tensor:
        """(K, D) per-class shifts in ``dtype``: the current class mean rounded to it, or for a class seen for the
        first time its first sample in x (B, D); rows of absent classes are never picked."""
        shift = self._means.clone()
        new = (self.counts == 0) & (nb > 0)
        if bool(new.any()):
            B = x.shape[0]
            first = torch.full((self.num_classes,), B, dtype=torch.int64, device=self.device).scatter_reduce(
                0, y, torch.arange(B, device=self.device), "amin", include_self=True)
            shift[new] = x[first[new]].to(F64)
        return shift.to(dtype)

    def _update_shifted(self, x: torch.Tensor, y: torch.Tensor) -> bool:
        """The scatter GEMM in the features' own dtype (issue 12): each row is shifted by a float64 reference of
        its class rounded to the features' dtype -- the current class mean, or for a class seen for the first
        time its first sample -- so the GEMM sees only the within-class deviations d (exact differences in the
        collapsed regime), and everything else is float64:
            mean_b = c + sum d / n_b,  m2_b = sum ||d||^2 - n_b ||mean_b - c||^2,
            S_b = d^T d - n_b (mean_b - c)(mean_b - c)^T, then Chan's merge.
        False (nothing done) when the batch needs the float64 path: entries beyond 2^+-300, or for a float32
        GEMM squared deviations that overflow or fall below 2^-100 (checked on the product's diagonal)."""
        x = x.detach().to(self.device)
        wdt = x.dtype if x.dtype in (torch.float32, F64) else torch.float32  # half types: float32 GEMM
        if x.dtype in NARROW and self._top is not None and self.scale_exp == 0:
            top = NARROW_TOP  # a bound, no scan: the float32 squares are checked on the GEMM's diagonal
        else:
            top = _max_exp(x)
            if top is not None and not -SAFE_EXP <= top <= SAFE_EXP:
                return False
        self._fit_scale(top)
        if self.scale_exp:
            return False
        x = x.to(wdt)
        y = y.to(self.device)
        K = self.num_classes
        nb = torch.bincount(y, minlength=K)
        c = self._references(x, y, nb, wdt)  # the references as the features' dtype sees them ...
        shift = c.to(F64)  # ... and exactly in float64
        oh = _onehot(y, K, wdt)
        with _exact_f32():
            d = _minus_rows(x, c, y, torch.empty_like(x))  # (B, D)
            sd = _by_class(d, y, K, oh).to(F64)  # (K, D) sums of deviations (small: float32 is enough)
            sb = d.T @ d  # the GEMM, in the features' dtype
        top_sq = float(sb.diagonal().max())  # largest column sum of squares (inf/NaN: overflow or bad input)
        if wdt == torch.float32 and not (2.0 ** -100 <= top_sq < math.inf or (top_sq == 0 and not d.any())):
            return False  # overflowed, NaN/inf, or squares that lose precision or underflow: float64 path
        sb = sb.to(F64)
        nbf = nb.to(F64)
        delta = sd / nbf.clamp(min=1).unsqueeze(1)  # mean_b - c, (K, D)
        mb = shift + delta
        m2b = _by_class(_row_sq(d), y, K, oh) - nbf * (delta * delta).sum(1)
        if not (torch.isfinite(mb).all() and torch.isfinite(m2b).all()):
            raise ValueError("features contain NaN or inf")
        e = delta[nb > 0] * nbf[nb > 0].sqrt().unsqueeze(1)
        sb.addmm_(e.T, e, alpha=-1.0)
        self._merge(nb, mb, m2b, None, sb)
        return True

    def _gram_add(self, a: torch.Tensor) -> None:
        """scatter += a^T a, the product in gemm_dtype (float64: addmm_ straight into the statistics)."""
        if self.gemm_dtype == F64:
            self._scatter.addmm_(a.T, a)
        else:
            a = a.to(self.gemm_dtype)
            self._scatter += (a.T @ a).to(F64)

    def _merge(self, nb, mb, m2b, rows, scatter_b) -> None:
        """Chan merge of (nb, mb, m2b, scatter) into self; `rows` are centred samples whose A^T A adds to the
        scatter (their own GEMM: no concatenated copy of the batch), then the between-parts correction."""
        na, n = self.counts.to(F64), (self.counts + nb).to(F64)
        nb64 = nb.to(F64)
        delta = mb - self._means  # (K, D)
        c = na * nb64 / n.clamp(min=1)  # (K,) Chan weights, 0 unless the class is on both sides
        self._means += delta * (nb64 / n.clamp(min=1)).unsqueeze(1)
        if self._m2 is not None:
            self._m2 += m2b + c * (delta * delta).sum(1)
        if self._scatter is not None:
            if scatter_b is not None:
                self._scatter += scatter_b
            if rows is not None:
                self._gram_add(rows)
            both = c > 0
            self._gram_add(delta[both] * c[both].sqrt().unsqueeze(1))  # (K', D)
        self.counts += nb

    def merge(self, other: ClassStats) -> ClassStats:
        """Add another accumulator's data (same K, D; moments must include ours). Returns self."""
        if not isinstance(other, ClassStats):
            raise TypeError(f"merge needs another ClassStats, got {type(other).__name__}")
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge stats with {other.num_classes} and {self.num_classes} classes")
        if other.counts is None:
            return self
        if self.counts is None:
            self._alloc(other.dim, self.device or other.device)
        if other.dim != self.dim:
            raise ValueError(f"cannot merge stats of dimension {other.dim} into {self.dim}")
        need = MOMENTS.index(self.moments)
        if MOMENTS.index(other.moments) > need:
            raise ValueError(f"cannot merge moments={other.moments!r} stats into moments={self.moments!r}")
        d = self.device
        self._fit_scale(other._top)
        sh = other.scale_exp - self.scale_exp  # <= 0 unless other has only zeros
        self._merge(other.counts.to(d), ldexp_(other._means.to(d, copy=True), sh),
                    None if self._m2 is None else ldexp_(other._m2.to(d, copy=True), 2 * sh), None,
                    None if self._scatter is None else ldexp_(other._scatter.to(d, copy=True), 2 * sh))
        return self

    def all_reduce(self, group=None) -> ClassStats:
        """Sum over torch.distributed processes (in place; every process ends with the global stats).

        Exact centred reduction: counts and class sums first, then each process adds
        n_rk (mu_rk - mu_k)(mu_rk - mu_k)^T for its local means before the scatter/m2 are summed.
        """
        import torch.distributed as dist

        if self.counts is None:
            raise ValueError("all_reduce needs the feature dimension: pass dim= to ClassStats")
        none = -(1 << 40)
        tops = torch.tensor([none if self._top is None else self._top, self.scale_exp if self._top is not None
                             else none], dtype=torch.int64, device=self.device)
        dist.all_reduce(tops, op=dist.ReduceOp.MAX, group=group)
        if int(tops[0]) != none:  # a common scale: the largest of the processes' scales
            if self._top is None:
                self.scale_exp = int(tops[1])
            self._rescale(int(tops[1]))
            self._top = int(tops[0])
        counts = self.counts.clone()
        dist.all_reduce(counts, group=group)
        sums = self._means * self.counts.to(F64).unsqueeze(1)
        dist.all_reduce(sums, group=group)
        means = sums / counts.clamp(min=1).to(F64).unsqueeze(1)
        delta = self._means - means  # local minus global, 0 where this process has no samples
        w = self.counts.to(F64)
        if self._m2 is not None:
            self._m2 += w * (delta * delta).sum(1)
            dist.all_reduce(self._m2, group=group)
        if self._scatter is not None:
            a = delta * w.sqrt().unsqueeze(1)
            self._scatter.addmm_(a.T, a)
            dist.all_reduce(self._scatter, group=group)
        self.counts, self._means = counts, means
        return self

    # --- views used by the metrics -------------------------------------------------------------
    def kept(self) -> np.ndarray:
        """Labels of the classes with at least one sample (the K_eff classes every metric uses)."""
        if self.counts is None:
            raise ValueError("no data: call update() first")
        return np.flatnonzero(self.counts.cpu().numpy() > 0)

    def second_pass(self, weights=None, bias=None, *, rtol: float = DEFAULT_RTOL,
                    global_mean: str = "weighted") -> SecondPass:
        """A SecondPass over the same data, using these (final) class means."""
        return SecondPass(self, weights, bias, rtol=rtol, global_mean=global_mean)

    def true_units(self, value, power: int = 1):
        """A statistic (numpy) in the features' own units: value * 2^(power scale_exp)."""
        if not self.scale_exp:
            return value
        with np.errstate(over="ignore", under="ignore"):
            return np.ldexp(value, power * self.scale_exp)

    def compute(self, weights=None, bias=None, *, second: SecondPass | None = None, **options):
        """All NC metrics from these statistics (see nclab.metrics.compute_metrics for the options)."""
        from nclab.metrics.report import compute_metrics

        return compute_metrics(self, weights, bias, second=second, **options)


class SecondPass:
    """Second pass over the data with the class means fixed: per-class NC1 terms, m2 and NC4.

    q_k = sum_{i in k} ||P^T (h_i - mu_k)||^2 with P = V_r S_r^-1 (D, r) from the centred means
    (functional.nc1_projector); NC1 = sum_k q_k / N. Costs N D (r + 2K) multiply-adds, no D x D matrix.
    With a classifier W (K, D) (and bias b) it also counts NC4: samples whose nearest class centre
    (argmin_k ||h - mu_k||) differs from argmax_k (W h + b)_k, both over the non-empty classes.
    """

    def __init__(self, stats: ClassStats, weights=None, bias=None, *, rtol: float = DEFAULT_RTOL,
                 global_mean: str = "weighted", _w_exp: int = 0, _same_data: bool = False):
        if not isinstance(stats, ClassStats):
            raise TypeError(f"stats must be a ClassStats, got {type(stats).__name__}")
        rtol = check_rtol(rtol)
        check_choice(global_mean, "global_mean", GLOBAL_MEANS)
        kept = stats.kept()
        if len(kept) < 2:
            raise ValueError(f"need at least 2 classes with samples, got {len(kept)}")
        self.stats, self.rtol, self.global_mean = stats, rtol, global_mean
        # the caller passes exactly the first pass's samples (nc_metrics): _narrow may then get m2 from class sums
        # (sum_i ||t_i||^2 - n ||delta||^2, as sum_i t_i = n delta) without the GEMM columns t delta^T
        self._same_data = bool(_same_data)
        self.kept = kept
        dev, K = stats.device, stats.num_classes
        Ke, D = len(kept), stats.dim
        self._wide = False  # True: products in float64 even where narrow() would allow float32 (a redo)
        # copies of the means, the classifier and its (D, 2 K_eff) right-hand side, plus a chunk's logits
        check_memory(8.0 * (Ke * D * (1 + (4 if weights is not None else 0)) + (1 << 20) / D * 2 * Ke),
                     f"the second pass over {Ke} classes of dimension {D}", dev)
        means = stats._means[torch.as_tensor(kept, device=dev)]  # (K_eff, D)
        counts = stats.counts.cpu().numpy()[kept]
        p, self.singular_values, self.rank, self.mu_g = nc1_projector(means.cpu().numpy(), counts, rtol=rtol,
                                                              mode=global_mean)
        self.projector = torch.as_tensor(p, device=dev)  # (D, r)
        self.row = torch.full((K,), -1, dtype=torch.int64, device=dev)  # label -> index among kept
        self.row[torch.as_tensor(kept, device=dev)] = torch.arange(len(kept), device=dev)
        self.means_kept = means
        self.w = self.b = None
        self.mu_sq = (means * means).sum(1)  # (K_eff,)
        self.mu_norm = self.mu_sq.sqrt()
        if weights is not None:
            w = check_matrix(weights, "weights", cols=stats.dim)
            if w.shape[0] not in (K, len(kept)):
                raise ValueError(f"weights must have {K} rows (one per class), got shape {w.shape}")
            w = w[kept] if w.shape[0] == K else w
            b = None
            if bias is not None:
                b = check_vector(bias, "bias", None)
                if b.shape[0] not in (K, len(kept)):
                    raise ValueError(f"bias has {b.shape[0]} entries, expected {K}")
                b = b[kept] if b.shape[0] == K else b
            # logits W h + b = 2^(e + kw) W' h' + b with h' the stored (scaled) features: both terms rescaled
            # by one power of two 2^big (argmax unchanged), so neither overflows whatever the magnitudes.
            kw = exp2(w)
            top = stats.scale_exp + _w_exp + kw
            big = max(top, exp2(b)) if b is not None and (b != 0).any() else top
            with np.errstate(under="ignore"):
                self.w = torch.as_tensor(np.ldexp(w, top - kw - big), device=dev)
                if b is not None:
                    self.b = torch.as_tensor(np.ldexp(b, -big), device=dev)
            self.rhs = torch.cat([self.w.T, -2 * means.T], 1)  # (D, 2 K_eff): logits and NCC cross terms
        # few classes: one GEMM per step on the centred rows, [P | W^T | -2 mu^T], plus the (K_eff, 2 K_eff)
        # table mu_k [W^T | -2 mu^T] added back per sample (x = (x - mu_y) + mu_y); many classes: no K x K table
        self.small = len(kept) <= ONEHOT_MAX_K
        self._split = None  # _narrow's float32 means and right-hand side, made at its first batch
        if self.small:
            self.kept_t = torch.as_tensor(kept, device=dev)
            if self.w is not None:
                self.offsets = means @ self.rhs  # (K_eff, 2 K_eff)
                self.rhs = torch.cat([self.projector, self.rhs], 1)  # (D, r + 2 K_eff)
        self.reset()

    def reset(self) -> SecondPass:
        dev, K = self.stats.device, self.stats.num_classes
        self.q = torch.zeros(K, dtype=F64, device=dev)
        self.m2 = torch.zeros(K, dtype=F64, device=dev)
        self.n4 = torch.zeros(4, dtype=torch.int64, device=dev)  # seen, mismatch, ncc right, argmax right
        return self

    @fitted
    def update(self, features, labels) -> SecondPass:
        x = check_features(features, self.stats.dim)
        y, _ = check_labels(labels, x.shape[0], self.stats.num_classes, self.stats.device)
        self._update(x, y)
        return self

    def _update(self, x: torch.Tensor, y: torch.Tensor, buf: torch.Tensor | None = None, exp: int = 0) -> None:
        """x: a batch divided by 2^exp. Steps of SUB_ELEMS float64 entries: each is copied, centred, projected
        and normed while it is in cache; per-sample results (B x (r + 2 K_eff) numbers) are reduced once per
        batch. N D (r + 2 K_eff) multiply-adds in all, nothing D x D-sized. Float32 (and half) features with
        few classes take _narrow instead: the same quantities from float32 products."""
        dev = self.stats.device
        y = y.to(dev)
        r = self.row.index_select(0, y)  # (B,) row among kept classes
        if (r < 0).any():
            raise ValueError("second pass has labels of classes that had no samples in the first pass")
        (B, D), Ke, rk = x.shape, self.means_kept.shape[0], self.projector.shape[1]
        rhs = self.projector if self.w is None or not self.small else self.rhs
        sq = torch.empty(2, B, dtype=F64, device=dev)  # ||h - mu||, ||P^T (h - mu)||
        z_raw = torch.empty(B, 2 * Ke, dtype=F64, device=dev) if self.w is not None and not self.small else None
        oh = _onehot(r, Ke, F64) if self.small else None  # (K_eff, B)
        narrow = self.narrow(x, exp)
        if narrow:
            zz = self._narrow(x.detach(), r, oh, rhs, sq[0])  # sq[0]: squared distances already
            if self.w is not None:
                z_raw = zz[:, rk:]  # _narrow's logit and NCC columns are the raw rows' terms
        else:
            zz = torch.empty(B, rhs.shape[1], dtype=F64, device=dev)  # P^T (h - mu) [| logits and NCC terms]
            step = max(1, SUB_ELEMS // D)
            if buf is None:
                buf = torch.empty(min(step, B), D, dtype=F64, device=dev)
            for i in range(0, B, step):
                j = min(i + step, B)
                xs = _f64_copy(x[i:j], dev, buf)
                if exp - self.stats.scale_exp:
                    ldexp_(xs, exp - self.stats.scale_exp)  # the first pass's scale
                if oh is not None:
                    xs.addmm_(oh[:, i:j].T, self.means_kept, alpha=-1.0)  # x - mu_r, exactly as subtraction rounds
                else:
                    if z_raw is not None:  # many classes: logits and NCC terms on the raw rows, no K x K table
                        torch.mm(xs, self.rhs, out=z_raw[i:j])
                    xs.sub_(self.means_kept.index_select(0, r[i:j]))
                torch.mm(xs, rhs, out=zz[i:j])
                torch.linalg.vector_norm(xs, dim=1, out=sq[0, i:j])
        torch.linalg.vector_norm(zz[:, :rk], dim=1, out=sq[1])
        (sq[1] if narrow else sq).square_()
        if oh is not None:
            qm = oh @ sq.T  # (K_eff, 2)
            self.m2.index_add_(0, self.kept_t, qm[:, 0])
            self.q.index_add_(0, self.kept_t, qm[:, 1])
        else:
            self.m2.index_add_(0, y, sq[0])
            self.q.index_add_(0, y, sq[1])
        if self.w is not None:
            # few classes: x = (x - mu_r) + mu_r, so the raw rows' terms are the centred ones plus table row r
            z = z_raw if z_raw is not None else zz[:, rk:].addmm_(oh.T, self.offsets)
            if not narrow:  # _narrow's tables hold b and ||mu_j||^2 already
                self._add_constants(z)
            logits, scores = z[:, :Ke], z[:, Ke:]
            if self.small:  # (many classes take the raw rows' terms from their own GEMM)
                self._raw_terms_where_cancelled(x, r, exp, sq[0], narrow, logits, scores)
            # nearest class centre: argmin -2 h.mu_j + ||mu_j||^2. max/min(dim) give the first extremum as argmax/
            # argmin do, faster on these narrow rows
            ncc = scores.min(1).indices
            am = logits.max(1).indices
            self.n4 += torch.stack([torch.tensor(B, device=dev), (ncc != am).sum(), (ncc == r).sum(),
                                    (am == r).sum()])
        if not (torch.isfinite(self.q).all() and torch.isfinite(self.m2).all()):
            raise ValueError("features contain NaN or inf")

    def _raw_terms_where_cancelled(self, x, r, exp: int, t_sq, narrow: bool, logits, scores) -> None:
        """Few classes rebuild a row's logits and NCC terms as (x - mu_y) rhs + (mu_y rhs)_y: the sum rounds
        relative to ||x - mu_y|| (the GEMM: float32 in _narrow) and ||mu_y|| (the table), which is far more than
        the terms themselves when ||x|| << ||mu_y|| (rows near the origin, class means dragged away by outliers).
        ||x|| >= | ||x - mu_y|| - ||mu_y|| |, so rows where that gap is not 2^16 times the rounding get their
        terms from the raw row in float64 instead: x rhs (+ b, + ||mu_j||^2). Collapsed or spread-out data have
        none (a few elementwise ops per batch)."""
        eps = 2.0 ** -24 if narrow else 2.0 ** -53
        tn = t_sq.clamp(min=0).sqrt()
        mn = self.mu_norm.index_select(0, r)
        bound = (tn * eps).add_(mn, alpha=4 * 2.0 ** -53).mul_(2.0 ** 16)
        bad = (tn - mn).abs_() < bound
        if not bool(bad.any()):
            return
        idx = bad.nonzero()[:, 0]
        xs = x.index_select(0, idx).to(device=self.stats.device, dtype=F64)
        if exp - self.stats.scale_exp:
            ldexp_(xs, exp - self.stats.scale_exp)  # the first pass's scale, as the table's units
        Ke = self.means_kept.shape[0]
        z = self._add_constants(xs @ self.rhs[:, self.rhs.shape[1] - 2 * Ke:])  # [W^T | -2 mu^T] on the raw rows
        logits[idx] = z[:, :Ke]
        scores[idx] = z[:, Ke:]

    def _add_constants(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, 2 K_eff) = [logits | NCC terms] of raw rows without their constants: adds b and ||mu_j||^2."""
        Ke = self.means_kept.shape[0]
        if self.b is not None:
            z[:, :Ke] += self.b
        z[:, Ke:] += self.mu_sq
        return z

    def narrow(self, x: torch.Tensor, exp: int = 0) -> bool:
        """Whether a batch x (divided by 2^exp) takes the float32 second pass (_narrow): float32 or half
        features, unscaled, few classes, on the statistics' device, products not forced to float64."""
        return (self.small and x.dtype in NARROW and exp == 0 and self.stats.scale_exp == 0
                and self.stats.gemm_dtype != F64 and x.device == self.stats.device and not self._wide)

    def narrow_inexact(self, tol: float = 1e-7) -> bool:
        """After a float32 second pass: whether q (the NC1 terms) may be off by more than ``tol`` relative.
        The float32 GEMM rounds P^T t relative to ||t|| ||P||, not to ||P^T t||: when the within-class spread
        lies mostly outside the class-mean subspace (rho_k = m2_k ||P||_F^2 / q_k large; ~D for isotropic
        spread) the projections cancel. Estimated per class as 2^-23 sqrt(rho_k / n_k) (random rounding of n_k
        rows); spread 1e4 times larger outside the subspace than in it gave 1.2e-5 in NC1 (found by review)."""
        n, q = self.stats.counts.to(F64), self.q
        ok = (q > 0) & (n > 0)
        if not bool(ok.any()):
            return False
        rho = self.m2[ok] * float((self.projector * self.projector).sum()) / q[ok]
        return bool((2.0 ** -23 * torch.sqrt(rho / n[ok]) > tol).any())

    def _narrow(self, x: torch.Tensor, r: torch.Tensor, oh: torch.Tensor, rhs: torch.Tensor,
                norms: torch.Tensor) -> torch.Tensor:
        """The second pass of float32 (or half) features x (B, D) in float32 products (issue 12), with no float64
        copy of the batch. Each class mean is split mu = hi + delta (hi float32, delta float64, |delta| <= 2^-24
        |mu|); t = x - hi_y is formed in float32 (exact in the collapsed regime: the rows are within a factor 2
        of hi) and one float32 GEMM gives [t rhs | t delta^T] (columns scaled by powers of two into float32's
        range), then in float64
            (x - mu_y) rhs = t rhs - (delta rhs)_y,   ||x - mu_y||^2 = ||t||^2 - 2 t.delta_y + ||delta_y||^2.
        Returns zz (B, c) float64 -- P^T (x - mu_y), then with a classifier the raw rows' logit and NCC terms
        x [W^T | -2 mu^T] -- and writes ||x - mu_y||^2 into norms (B,); with _same_data (every sample of the
        first pass comes through here once) ||t||^2 - ||delta_y||^2 instead, whose class sums are the same m2,
        and the GEMM has no t delta^T columns (9 instead of 19 at K = 10). Rows whose float32 squares could
        underflow or overflow (0 < ||t|| < 2^-50, ||t|| >= 2^60, NaN) are redone in float64; rows with t = 0 are
        exact as they are. Relative error ~1e-8, well inside what the float32 features carry."""
        F32, dev = torch.float32, self.stats.device
        rk, Ke, c = self.projector.shape[1], self.means_kept.shape[0], rhs.shape[1]
        if self._split is None:
            hi = self.means_kept.to(F32)
            delta = self.means_kept - hi.to(F64)  # (K_eff, D), float64
            ncc, gemm_rhs = None, rhs
            if c > rk and self.rank == Ke - 1:
                # P spans every mu_j - mu_k: the NCC terms need no GEMM columns of their own,
                # (x - mu_y).(mu_j - mu_G) = (S_r P^T (x - mu_y)) . (V_r^T (mu_j - mu_G)), V_r = P S_r
                s_r = torch.as_tensor(self.singular_values[:rk], dtype=F64, device=dev)
                mu_g = torch.as_tensor(self.mu_g, dtype=F64, device=dev)
                coords = (self.projector * s_r).T @ (self.means_kept - mu_g).T  # (r, K_eff)
                ncc = (-2.0 * s_r[:, None] * coords, self.offsets[:, Ke:])
                gemm_rhs = rhs[:, :rk + Ke]  # [P | W^T]
            # t delta^T columns only where m2 needs them per row (not with _same_data: from class sums below)
            ext = gemm_rhs if self._same_data else torch.cat([gemm_rhs, delta.T], 1)  # (D, c [+ K_eff])
            top = ext.abs().amax(0)  # the columns' largest entries
            col_exp = torch.where(top > 0, torch.frexp(top)[1], 0).to(F64)
            if bool((col_exp.abs() <= 60).all()):
                col_exp.zero_()  # within float32's comfortable range: no scaling (and no pass to undo it)
            # GEMMs of at most NARROW_COLS columns: wider thin products take a much slower MKL path on CPUs
            blocks = (ext * torch.exp2(-col_exp)).to(F32).split(NARROW_COLS, dim=1)
            table = delta @ gemm_rhs  # (K_eff, c)
            if gemm_rhs.shape[1] > rk:  # logit (and NCC) columns: the raw rows' terms, as z_raw, with the bias
                # and ||mu_j||^2 folded in (zz = z - table_y: one op per batch instead of two)
                table[:, rk:] -= self.offsets[:, :gemm_rhs.shape[1] - rk]
                if self.b is not None:
                    table[:, rk:rk + Ke] -= self.b
                if gemm_rhs.shape[1] > rk + Ke:
                    table[:, rk + Ke:] -= self.mu_sq
            if ncc is not None:
                ncc = (ncc[0], ncc[1] + self.mu_sq)
            scale = None if not col_exp.any() else torch.exp2(col_exp)
            self._split = (hi, [b.contiguous() for b in blocks], scale, table, (delta * delta).sum(1), ncc)
        hi, ext32, col_scale, table, delta_sq, ncc = self._split
        B, D = x.shape
        cg = table.shape[1]  # the GEMM's columns before delta's
        step = max(1, 2 * SUB_ELEMS // D)  # 2 MB of float32
        t = torch.empty(min(step, B), D, dtype=F32, device=dev)
        z32 = [torch.empty(B, b.shape[1], dtype=F32, device=dev) for b in ext32]
        n32 = torch.empty(B, dtype=F32, device=dev)
        zero = torch.zeros(B, dtype=torch.bool, device=dev)  # rows with t = 0 exactly
        with _exact_f32():
            for i in range(0, B, step):
                j = min(i + step, B)
                tj = t[:j - i]
                _minus_rows(x[i:j] if x.dtype == F32 else x[i:j].to(F32), hi, r[i:j], tj)
                for b, zb in zip(ext32, z32):
                    torch.mm(tj, b, out=zb[i:j])
                torch.linalg.vector_norm(tj, dim=1, out=n32[i:j])
                tiny = n32[i:j] < 2.0 ** -50
                if bool(tiny.any()):
                    zero[i:j] = tiny & ~tj.any(1)
        nz = sum(b.shape[1] for b in ext32)
        # with the NCC columns from the projections and no delta columns, they go straight after the GEMM's
        extra = c - cg if ncc is not None and nz == cg else 0
        z = torch.empty(B, nz + extra, dtype=F64, device=dev)
        a = 0
        for zb in z32:
            z[:, a:a + zb.shape[1]] = zb
            a += zb.shape[1]
        if col_scale is not None:
            z[:, :nz].mul_(col_scale)
        zz = z[:, :cg].addmm_(oh.T, table, alpha=-1.0)  # - (delta rhs)_y, picked by the float64 one-hot
        if ncc is not None:  # -2 x.mu_j + ||mu_j||^2 up to a per-row constant (argmin is all that reads them)
            if extra:
                full = z
            else:
                full = torch.empty(B, c, dtype=F64, device=dev)
                full[:, :cg] = zz
            # beta 0: the uninitialised columns are never read
            full[:, cg:].addmm_(zz[:, :rk], ncc[0], beta=0.0).addmm_(oh.T, ncc[1])
            zz = full
        if self._same_data:
            # summed over a class (all of its samples pass), ||t||^2 - ||delta_y||^2 gives m2 exactly:
            # sum ||t - delta||^2 = sum ||t||^2 - 2 delta.sum t + n ||delta||^2 and sum t = n delta
            norms.copy_(n32.to(F64).square_().sub_(delta_sq.index_select(0, r)))
        else:
            t_delta = z[:, cg:].gather(1, r.unsqueeze(1)).squeeze(1)  # t . delta_y
            sq = n32.to(F64).square_().sub_(2 * t_delta).add_(delta_sq.index_select(0, r))
            norms.copy_(sq.clamp_(min=0))
        redo = ~(((n32 >= 2.0 ** -50) & (n32 < 2.0 ** 60)) | zero)
        if bool(redo.any()):
            idx = redo.nonzero()[:, 0]
            xs = x.index_select(0, idx).to(F64) - self.means_kept.index_select(0, r.index_select(0, idx))
            zr = xs @ rhs
            if rhs.shape[1] > rk:  # the raw rows' terms with their constants, as the tables above give them
                zr[:, rk:] += self.offsets.index_select(0, r.index_select(0, idx))
                self._add_constants(zr[:, rk:])
            zz[idx] = zr
            ry = r.index_select(0, idx)
            if self._same_data:  # the same class-sum form as the other rows: ||t||^2 - ||delta_y||^2 in float64
                t64 = x.index_select(0, idx).to(F64) - hi.to(F64).index_select(0, ry)
                norms[idx] = (t64 * t64).sum(1) - delta_sq.index_select(0, ry)
            else:
                norms[idx] = (xs * xs).sum(1)
        return zz

    def merge(self, other: SecondPass) -> SecondPass:
        if not isinstance(other, SecondPass):
            raise TypeError(f"merge needs another SecondPass, got {type(other).__name__}")
        if other.q.shape != self.q.shape:
            raise ValueError("cannot merge second passes of different class counts")
        self.q += other.q.to(self.q.device)
        self.m2 += other.m2.to(self.q.device)
        self.n4 += other.n4.to(self.q.device)
        return self

    def all_reduce(self, group=None) -> SecondPass:
        import torch.distributed as dist

        for t in (self.q, self.m2, self.n4):
            dist.all_reduce(t, group=group)
        return self
