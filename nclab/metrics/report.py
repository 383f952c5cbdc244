"""All NC metrics in one call: NCMetrics (one layer) and DeepHeadMetrics (per layer of a deep head).

Features are rows: `features` (N, D), `labels` (N,). For a d x N feature matrix H pass H.T (a view).
A classifier W is (K, D) (rows w_k); a deep head is W_1..W_M with W_j (d_{j+1}, d_j), W_M (K, d_M).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from nclab.metrics import functional as F
from nclab.metrics._checks import (
    F64,
    check_choice,
    check_features,
    check_fraction,
    check_gemm_dtype,
    check_labels,
    check_matrix,
    check_memory,
    check_rtol,
    check_vector,
)
from nclab.metrics.pairwise import BLOCKS, Rows, Target, check_tile, cross_distance, row_pairs, sweep
from nclab.metrics.pairwise import _blocks as _pairwise_blocks
from nclab.metrics.stats import NARROW, ONEHOT_MAX_K, ClassStats, SecondPass, fitted, ldexp_

SCALARS = {  # name -> one-line meaning (for tables and docs)
    "nc1": "tr(Sigma_W Sigma_B^+)/K",
    "nc1_trace": "tr(Sigma_W)/tr(Sigma_B)",
    "cdnv": "mean_{k<l} (var_k+var_l)/(2||mu_k-mu_l||^2)",
    "nc2_h": "||M M^T/||.|| - G|| means",
    "nc2_w": "||W W^T/||.|| - G|| classifier",
    "equinorm_h": "CV of ||mu_k - mu_G||",
    "equinorm_w": "CV of ||w_k||",
    "equiangular_h": "mean |cos - cos*| means",
    "equiangular_w": "mean |cos - cos*| classifier",
    "nc3": "||W Hbar/||.|| - G||",
    "nc3_dual": "||W/||W|| - C Hbar^T/||.|| ||",
    "nc4": "NCC != argmax(Wh+b) fraction",
    "bias_collapse": "||W mu_G + b - n/N|| / ||n/N||",
    "accuracy": "argmax(Wh+b) == y fraction",
    "ncc_accuracy": "nearest centre == y fraction",
    "equiangular_std_h": "std over pairs of cos(u_k, u_l)",
    "equiangular_std_w": "std over pairs of cos(w_k, w_l)",
    "gnc2_h": "var over pairs of log 1/||u_k - u_l||",
    "gnc2_mean_h": "mean over pairs of log 1/||u_k - u_l||",
    "unc3": "CV over classes of cos(w_k, u_k)",
}


@dataclass
class NCMetrics:
    """NC metrics of one layer.

    values : name -> float (NaN when undefined; `reasons[name]` says why). See SCALARS.
    per_class : name -> list over the non-empty classes (`info["classes"]` gives their labels):
        count, nc1 (contribution; they sum to nc1), variance (1/n_k sum ||h_i - mu_k||^2),
        mean_norm (||mu_k - mu_G|| for ETF targets, ||mu_k|| otherwise), weight_norm (||w_k||), unc3
        (cos(w_k, u_k), u_k = (mu_k - mu_G)/||mu_k - mu_G||), collapsed.
    info : N, D, K, K_eff, classes, dropped, rank (of the centred means used by NC1), rtol, singular
        values, target, center, global_mean, within, collapsed (labels), trace_sw, trace_sb, layer, tile (classes
        per block of the pairwise metrics), nc3_method ("exact" tile by tile, or D x D Grams above K = 4,096).
    Every name has one formula: docs/metrics.md.
    """

    values: dict = field(default_factory=dict)
    per_class: dict = field(default_factory=dict)
    reasons: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def __getitem__(self, name: str) -> float:
        return self.values[name]

    def to_dict(self) -> dict:
        """JSON-ready dict (NaN stays NaN, with its reason; see json_ready for strict JSON)."""
        return {"values": dict(self.values), "reasons": dict(self.reasons), "per_class": self.per_class,
                "info": self.info}

    def table(self) -> str:
        rows = [f"{'metric':<15} {'value':>12}  meaning"]
        for k, v in self.values.items():
            note = self.reasons.get(k, SCALARS.get(k, ""))
            rows.append(f"{k:<15} {_fmt(v):>12}  {note}")
        return "\n".join(rows)


@dataclass
class DeepHeadMetrics:
    """Per-layer metrics of a deep head: layers[j-1] pairs the input features of layer j with the
    partial product W_M..W_j (layers[0] is the head input with the end-to-end classifier).

    nc3 (W_M..W_j times the layer-j means is W Hbar at every j), accuracy and bias_collapse (the logits are
    the same at every layer) are one value for the whole head: `table()` prints them once (SHARED)."""

    layers: list
    SHARED = ("nc3", "accuracy", "bias_collapse")

    def __getitem__(self, j: int) -> NCMetrics:
        return self.layers[j]

    def __len__(self) -> int:
        return len(self.layers)

    def to_dict(self) -> dict:
        return {"layers": [m.to_dict() for m in self.layers]}

    def shared(self) -> list:
        """The SHARED metrics that are indeed one value at every layer here (the same target for each)."""
        out = []
        for k in self.SHARED:
            v = [m.values.get(k, math.nan) for m in self.layers]
            if k in self.layers[0].values and (all(math.isnan(x) for x in v) or all(
                    math.isclose(x, v[0], rel_tol=1e-9, abs_tol=1e-12) for x in v)):
                out.append(k)
        return out

    def table(self) -> str:
        shared = self.shared() if len(self.layers) > 1 else []
        names = [k for k in self.layers[0].values if k not in shared]
        head = f"{'metric':<15}" + "".join(f"{'layer ' + str(j + 1):>13}" for j in range(len(self.layers)))
        rows = [head] + [f"{k:<15}" + "".join(f"{_fmt(m.values.get(k, math.nan)):>13}" for m in self.layers)
                         for k in names]
        if shared:
            rows.append("whole head (the same at every layer): " + ", ".join(
                f"{k} {_fmt(self.layers[0].values[k])}" for k in shared))
        return "\n".join(rows)


def _fmt(v) -> str:
    return "nan" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.4e}"


def json_ready(obj):
    """A copy with every non-finite float replaced by None (strict JSON: null, never a bare NaN token)."""
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_ready(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


WITHIN = ("pooled", "class_mean")


def _check_options(rtol, global_mean, within, center, collapse_rtol) -> float:
    check_choice(within, "within", WITHIN)
    check_choice(global_mean, "global_mean", F.GLOBAL_MEANS)
    check_fraction(collapse_rtol, "collapse_rtol")
    if center is not None and not isinstance(center, (bool, np.bool_)):
        raise TypeError(f"center must be True, False or None, got {center!r}")
    return check_rtol(rtol)


@fitted
def compute_metrics(stats: ClassStats, weights=None, bias=None, *, second: SecondPass | None = None,
                    target="auto", center: bool | None = None, nc3_scale=None, rtol: float = F.DEFAULT_RTOL,
                    global_mean: str = "weighted", within: str = "pooled",
                    collapse_rtol: float = F.DEFAULT_COLLAPSE_RTOL, target_w=None, target_wh=None,
                    tile: int | None = None, _w_exp: int = 0) -> NCMetrics:
    """Every NC metric from class statistics (and a second pass, if any) plus the classifier.

    Parameters
    ----------
    stats : ClassStats after all updates (all_reduce'd if distributed).
    weights : (K, D) classifier or partial product, optional. bias : (K,), optional.
    second : SecondPass over the same data, optional: gives per-class NC1 and NC4; with it, NC1 uses the
        second pass's rtol and global_mean.
    target : "auto" (default: etf with a bias or without weights, else of, the theory's frame for a balanced
        setting), "etf", "of" or a (K, K) Gram (e.g. nclab.predict's, for imbalanced bias-free data).
    target_w, target_wh : the Grams the classifier (NC2 W) and W Hbar (NC3) are compared with, default the
        same as `target` (a deep head's theory has one per layer: partial_gram and WH).
    center : centre the class means by mu_G for NC2/NC3; default None = only for "etf".
    nc3_scale : (K, K) C of nc3_dual (theory's scaling), default identity.
    rtol : relative tolerance on singular values of the centred means for Sigma_B^+, default 1e-6
        (float64 epsilon <= rtol < 1).
    global_mean : "weighted" (default, paper: mu_G = sum_k n_k mu_k / N) or "uniform" (mean of means).
    within : "pooled" (default, paper: Sigma_W = (1/N) sum_i (h_i - mu_{y_i})(...)^T) or "class_mean"
        ((1/K) sum_k Sigma_W^k, needs a second pass or m2 for the trace version).
    collapse_rtol : a class is collapsed when its mean norm and classifier-row norm are <= this times the
        largest, default 1e-3 (0 <= collapse_rtol < 1).
    tile : classes per block of the pairwise metrics (pairwise.py), default from the memory available
        (all K up to 2048). No K x K matrix is ever held: memory is O(K D + tile^2).

    Formulas: NC1 = tr(Sigma_W Sigma_B^+)/K with Sigma_B = (1/K) sum_k (mu_k - mu_G)(mu_k - mu_G)^T
    computed in K-space (functional.nc1_projector), never negative; nc1_trace = tr(Sigma_W)/tr(Sigma_B);
    the rest as in functional.py. Classes without samples are dropped with a warning (K_eff everywhere).
    Every value is finite or NaN with its reason in `reasons`; metrics are computed on power-of-two
    rescaled data (scale-invariant), so any finite input gives the right value.
    """
    if not isinstance(stats, ClassStats):
        raise TypeError(f"stats must be a ClassStats, got {type(stats).__name__}")
    if second is not None and not isinstance(second, SecondPass):
        raise TypeError(f"second must be a SecondPass or None, got {type(second).__name__}")
    rtol = _check_options(rtol, global_mean, within, center, collapse_rtol)
    if second is not None:
        if second.stats is not stats:
            raise ValueError("second must be a SecondPass of these stats (stats.second_pass(...))")
        rtol, global_mean = second.rtol, second.global_mean
    target = F.named_target(target, weights, bias)
    target_w = target if target_w is None else F.named_target(target_w, weights, bias)
    target_wh = target if target_wh is None else F.named_target(target_wh, weights, bias)
    K = stats.num_classes
    kept = stats.kept()
    Ke = len(kept)
    counts_all = stats.counts.cpu().numpy()
    dropped = np.flatnonzero(counts_all == 0).tolist()
    if dropped:  # stacklevel 3: the line that called compute_metrics, past the @fitted wrapper
        warnings.warn(f"dropping {len(dropped)} class(es) without samples: {dropped[:10]}"
                      f"{' ...' if len(dropped) > 10 else ''}; metrics use K_eff = {Ke}", stacklevel=3)
    if Ke < 2:
        raise ValueError(f"need at least 2 classes with samples, got {Ke}")
    n = counts_all[kept].astype(np.float64)
    N = n.sum()
    dev = stats.device
    D = int(stats.dim)
    # class means (K_eff, D) as stored (divided by 2^scale_exp, within 2^+-300: no square overflows); never
    # copied whole when every class has samples (read block by block below)
    means_t = stats._means if Ke == K else stats._means[torch.as_tensor(kept, device=dev)]
    m2 = None
    if second is not None:
        m2 = second.m2.cpu().numpy()[kept]
    elif stats._m2 is not None:
        m2 = stats._m2.cpu().numpy()[kept]
    vals, why, per = {}, {}, {"label": kept.tolist(), "count": n.astype(int).tolist()}
    wmode = "weighted" if global_mean == "weighted" else "uniform"
    tile = check_tile(tile, Ke, dev)
    if second is not None:
        s, rank, mu_g = second.singular_values, second.rank, second.mu_g
        p = None
    else:
        p, s, rank, mu_g = _projector(means_t, n, rtol, wmode, tile)
    mu_t = torch.as_tensor(np.asarray(mu_g, dtype=np.float64), device=dev)
    C = Rows(means_t, sub=mu_t)  # centred means mu_k - mu_G, block by block
    # tiles of the sweep; the projector's QR (_projector: blocks of max(tile, 4 D) rows, never more than the
    # K rows and their R factor); D x D Grams only where K > D (pairwise.Rows.summary: K <= D reads K x K blocks)
    rows = min(max(tile, 4 * D), Ke + min(Ke, D))
    grams = 4.0 * D * D if Ke > D else 0.0
    check_memory(8.0 * (BLOCKS * tile * tile + 4.0 * rows * D + grams + 16.0 * Ke),
                 f"the pairwise metrics of {Ke} classes (tiles of {tile} x {tile})", dev)
    if center is None:
        center = F.default_center(target)
    offset = None if center else mu_t  # the rows compared with the target: centred, or the means themselves
    sc = C.summary(tile, offset)
    trace_sb = float(sc["sq"].sum()) / Ke

    # NC1 (K-space) and its trace version
    nc1, contrib = math.nan, [math.nan] * Ke
    if rank == 0:
        why["nc1"] = "all class means are equal (Sigma_B = 0)"
    elif second is not None:
        q = second.q.cpu().numpy()[kept]
        c = q / N if within == "pooled" else q / (Ke * n)
        contrib, nc1 = c.tolist(), max(float(c.sum()), 0.0)
    elif stats._scatter is not None and within == "pooled":
        nc1 = F.nc1_from_scatter(stats._scatter.cpu().numpy(), p, int(N))
        why["nc1_per_class"] = "per-class NC1 needs a second pass"
    else:
        why["nc1"] = "needs the within-class scatter (moments='scatter', pooled) or a second pass"
    vals["nc1"] = nc1
    per["nc1"] = contrib
    if m2 is not None:
        trace_sw = float(m2.sum() / N) if within == "pooled" else float((m2 / n).mean())
        vals["nc1_trace"] = trace_sw / trace_sb if trace_sb > 0 else math.nan
        if trace_sb == 0:
            why["nc1_trace"] = "all class means are equal (tr Sigma_B = 0)"
        var = m2 / n
        vals["cdnv"] = math.nan  # filled by the pairwise sweep below
        per["variance"] = stats.true_units(var, 2).tolist()
    else:
        trace_sw = math.nan
        vals["nc1_trace"] = vals["cdnv"] = math.nan
        why["nc1_trace"] = why["cdnv"] = "needs within-class variances (moments='trace'/'scatter' or a second pass)"

    # pairwise metrics, tile by tile on the statistics' device (pairwise.py): no K x K matrix, no K x D copy
    var_t = None
    if m2 is not None:
        var_t = torch.as_tensor(m2 / n, device=dev)
    ph = sweep(C, _target(target, Ke, kept, dev), tile, sc, offset=offset, variances=var_t, uniformity=True)
    cn = np.sqrt(sc["sq"].cpu().numpy())  # ||mu_k - mu_G||
    hn = cn if center else np.sqrt(sc["sq_off"].cpu().numpy())  # norms of the rows compared with the target
    vals["nc2_h"] = ph["distance"]
    vals["equinorm_h"] = _cv(cn)  # always the CV of ||mu_k - mu_G|| (one formula per name)
    vals["equiangular_h"] = ph["equiangular"]
    vals["equiangular_std_h"] = ph["equiangular_std"]
    vals["gnc2_h"], vals["gnc2_mean_h"] = ph["gnc2"], ph["gnc2_mean"]
    if math.isinf(ph["gnc2"]):
        why["gnc2_h"] = why["gnc2_mean_h"] = "two centred class means point the same way (log 1/0)"
    if m2 is not None:
        vals["cdnv"] = ph["cdnv"]
        if math.isinf(vals["cdnv"]):
            why["cdnv"] = "two class means coincide (CDNV infinite)"
    per["mean_norm"] = stats.true_units(hn, 1).tolist()
    _impossible(why, "nc2_h", target, Ke, D)

    # classifier: NC2, NC3, bias, NC4, uniform duality
    wn = None
    if weights is not None:
        wsrc = _weights(weights, K, D, dev)
        if Ke < K:
            wsrc = wsrc[torch.as_tensor(kept, device=wsrc.device)]
        Wr = Rows(wsrc, shift=0, device=dev)
        kw = _max_exp(Wr, tile)
        Wr.shift = kw if abs(kw) > 300 else 0  # rescaled by a power of two only where squares could overflow
        sw = Wr.summary(tile)  # finite: _max_exp refused NaN/inf, and float64 squares of entries < 2^301 fit
        pw = sweep(Wr, _target(target_w, Ke, kept, dev), tile, sw)
        wn = np.sqrt(sw["sq"].cpu().numpy())
        vals["nc2_w"] = pw["distance"]
        vals["equinorm_w"] = _cv(wn)
        vals["equiangular_w"] = pw["equiangular"]
        vals["equiangular_std_w"] = pw["equiangular_std"]
        _impossible(why, "nc2_w", target_w, Ke, D)
        vals["nc3"], nc3_method = cross_distance(Wr, C, sw, sc, _target(target_wh, Ke, kept, dev), tile, offset)
        _impossible(why, "nc3", target_wh, Ke, D)
        nw = math.sqrt(max(float(sw["sq"].sum()), 0.0))
        nh = math.sqrt(max(float(sc["sq"].sum() if center else sc["sq_off"].sum()), 0.0))
        dots, dual = row_pairs(Wr, C, tile, offset, nw, nh)
        if nc3_scale is not None and hasattr(nc3_scale, "apply"):  # structured C (nclab.theory TiledGram)
            if Ke < K or nc3_scale.shape[0] != K:
                raise ValueError("a structured nc3_scale needs every class to have samples (and K x K)")
            check_memory(8.0 * 3 * Ke * D, f"nc3_dual with a structured {Ke} x {Ke} scale", dev)
            hm = (C.block(0, Ke) + (0.0 if offset is None else offset)).cpu().numpy()
            vals["nc3_dual"] = F.normalized_distance(Wr.block(0, Ke).cpu().numpy(), nc3_scale.apply(hm))
            del hm
        elif nc3_scale is not None:
            scale = check_matrix(nc3_scale, "nc3_scale")
            scale = scale[np.ix_(kept, kept)] if scale.shape[0] == K and K != Ke else scale
            if scale.shape != (Ke, Ke):
                raise ValueError(f"nc3_scale must be {K} x {K}, got shape {scale.shape}")
            check_memory(8.0 * 3 * Ke * D, f"nc3_dual with an explicit {Ke} x {Ke} scale", dev)
            hm = C.block(0, Ke) + (0.0 if offset is None else offset)
            wu = Wr.block(0, Ke)
            vals["nc3_dual"] = F.normalized_distance(wu.cpu().numpy(), F.unit(scale) @ hm.cpu().numpy())
        else:
            vals["nc3_dual"] = math.sqrt(dual) if nw > 0 and nh > 0 else math.nan
        # uniform duality: CV over classes of cos(w_k, u_k), u_k = (mu_k - mu_G)/||mu_k - mu_G||
        okd = (wn > 0) & (cn > 0)
        cosd = np.where(okd, dots.cpu().numpy() / np.where(okd, wn * cn, 1.0), np.nan)
        per["unc3"] = cosd.tolist()
        cv = cosd[okd]
        vals["unc3"] = float(cv.std() / cv.mean()) if cv.size and cv.mean() != 0 else math.nan
        if not cv.size:
            why["unc3"] = "no class with both a nonzero classifier row and a nonzero centred mean"
        elif cv.mean() == 0:
            why["unc3"] = "the mean cosine of w_k and mu_k - mu_G is 0"
        elif cv.size < Ke:
            why["unc3"] = f"over the {cv.size} classes with nonzero w_k and mu_k - mu_G (of {Ke})"
        with np.errstate(over="ignore", under="ignore"):
            per["weight_norm"] = np.ldexp(wn, Wr.shift + _w_exp).tolist()
        if bias is not None:
            w = check_matrix(weights, "weights", cols=D)[kept]
            b = check_vector(bias, "bias", K)[kept]
            vals["bias_collapse"] = F._bias_collapse(w, b, mu_g if wmode == "weighted" else
                                                     F.global_mean(means_t.cpu().numpy(), n),
                                                     stats.scale_exp + _w_exp, n)
            del w
            if math.isinf(vals["bias_collapse"]):
                why["bias_collapse"] = "W mu_G + b exceeds the float64 range"
        if second is not None and second.w is not None:
            seen, mism, ncc_ok, am_ok = second.n4.cpu().tolist()
            vals["nc4"] = mism / seen if seen else math.nan
            vals["accuracy"] = am_ok / seen if seen else math.nan
            vals["ncc_accuracy"] = ncc_ok / seen if seen else math.nan
        else:
            vals["nc4"] = math.nan
            why["nc4"] = "needs a second pass over the samples with the classifier"
    vals = {k: float(v) for k, v in vals.items()}
    for k, v in vals.items():
        if not math.isfinite(v):
            vals[k] = math.nan  # never inf: NaN with its reason
            if k not in why:
                why[k] = "undefined: zero vectors (e.g. collapsed classes or zero classifier)"
    col = hn <= collapse_rtol * hn.max()
    if wn is not None:
        col &= wn <= collapse_rtol * wn.max()
    per["collapsed"] = col.tolist()
    info = {"N": int(N), "D": D, "K": K, "K_eff": Ke, "classes": kept.tolist(),
            "dropped": dropped, "rank": rank, "rtol": rtol, "singular_values": stats.true_units(s, 1).tolist(),
            "target": _target_name(target), "center": bool(center),
            "global_mean": global_mean, "within": within, "collapsed": kept[col].tolist(),
            "trace_sw": float(stats.true_units(trace_sw, 2)), "trace_sb": float(stats.true_units(trace_sb, 2)),
            "tile": tile}
    if weights is not None:
        info["nc3_method"] = nc3_method
    return NCMetrics(vals, per, why, info)


def _cv(norms: np.ndarray) -> float:
    """std / mean (population std) of per-class norms; NaN if all are zero."""
    m = norms.mean()
    return float(norms.std() / m) if m > 0 else math.nan


def _weights(weights, K: int, D: int, device) -> torch.Tensor:
    """The classifier (K, D) as a tensor, not copied (numpy arrays are wrapped; blocks are converted later)."""
    from nclab.metrics._checks import as_tensor

    w = as_tensor(weights, "weights")
    if w.ndim != 2:
        raise ValueError(f"weights must be a matrix, got shape {tuple(w.shape)}")
    if w.shape[1] != D:
        raise ValueError(f"weights has {w.shape[1]} columns, expected {D} (shape {tuple(w.shape)})")
    if w.shape[0] != K:
        raise ValueError(f"weights must have one row per class ({K}), got shape {tuple(w.shape)}")
    if w.dtype == torch.bool:
        raise ValueError(f"weights must be real numbers, got dtype {w.dtype}")
    return w


def _max_exp(rows: Rows, tile: int) -> int:
    """Exponent of the largest |entry| of the rows (0 if all zero); ValueError on NaN/inf."""
    top = 0.0
    for a0, a1 in _pairwise_blocks(rows.K, max(tile, 1)):
        b = rows.source[a0:a1]
        m = float(b.abs().max()) if b.numel() else 0.0
        if not math.isfinite(m):
            raise ValueError("weights contains NaN or inf")
        top = max(top, m)
    return F.exp2(top)


def _projector(means: torch.Tensor, n: np.ndarray, rtol: float, mode: str, tile: int):
    """nc1_projector of the class means without a K x D copy when K > D: mu_G, then a blockwise QR
    (R of the stacked blocks, D x D), then the SVD of R: the singular values and right vectors of the
    centred means. Small K: functional.nc1_projector as it is."""
    K, D = int(means.shape[0]), int(means.shape[1])
    if K <= D or K * D <= 1 << 20:
        return F.nc1_projector(means.cpu().numpy(), n, rtol=rtol, mode=mode)
    w = torch.as_tensor(n / n.sum() if mode == "weighted" else np.full(K, 1.0 / K), device=means.device)
    mu = w @ means  # (D,)
    step = max(tile, 4 * D)
    R = torch.zeros(0, D, dtype=F64, device=means.device)
    for a0 in range(0, K, step):
        R = torch.linalg.qr(torch.cat([R, means[a0:a0 + step] - mu]), mode="r")[1]
    _, s, vt = (t.cpu().numpy() for t in torch.linalg.svd(R, full_matrices=False))  # torch's threads, not BLAS's
    r = min(int((s > rtol * s[0]).sum()), K - 1) if s.size and s[0] > 0 else 0
    return vt[:r].T / s[:r], s, r, mu.cpu().numpy()


def _target(target, Ke: int, kept, device) -> Target:
    """A pairwise.Target: named ones are generated tile by tile; an explicit Gram is normalized and sliced."""
    if isinstance(target, str) and target.lower() in ("etf", "of"):
        F.check_num_classes(Ke, "K")
        return Target(target.lower(), Ke, device)
    if hasattr(target, "tile") and hasattr(target, "diagonal") and hasattr(target, "shape"):
        shape = tuple(target.shape)
        if len(shape) != 2 or shape[0] != shape[1] or shape[0] <= int(np.max(kept)):
            raise ValueError(f"structured target Gram of shape {tuple(target.shape)} does not cover the classes")
        return Target(target, Ke, device, kept)  # structured (nclab.theory TiledGram): read tile by tile
    return Target(F.target_gram(target, Ke, kept), Ke, device)


def _impossible(why: dict, name: str, target, K: int, D: int) -> None:
    """Say in `reasons` when the target geometry cannot exist in D dimensions (the value is still the distance)."""
    if not isinstance(target, str) or name in why:
        return
    t = target.lower()
    if t == "etf" and K > D + 1:
        why[name] = (f"K = {K} > D + 1 = {D + 1}: a simplex ETF cannot exist in D dimensions (the distance cannot "
                     "reach 0); gnc2_h, the hyperspherical uniformity, measures the geometry instead")
    elif t == "of" and K > D:
        why[name] = (f"K = {K} > D = {D}: an orthogonal frame cannot exist in D dimensions (the distance cannot "
                     "reach 0); gnc2_h, the hyperspherical uniformity, measures the geometry instead")


def _target_name(target) -> str:
    return target if isinstance(target, str) else "explicit Gram"


def _prepared(features, labels, num_classes):
    x = check_features(features)
    y, K = check_labels(labels, x.shape[0], num_classes, x.device)
    return x, y, K


def _chunk_rows(D: int) -> int:
    return max(1, (1 << 20) // D)  # ~8 MB of float64 per chunk: stays in cache, buffer reused


def _one_shot(x, y, K, weights, bias, rtol, global_mean, exp: int = 0, w_exp: int = 0, gemm_dtype=None,
              **options) -> NCMetrics:
    """x: features divided by 2^exp; weights: the classifier divided by 2^w_exp."""
    stats = ClassStats(K, moments="none", device=x.device, gemm_dtype=gemm_dtype)
    step = _chunk_rows(x.shape[1])
    buf = torch.empty(min(step, x.shape[0]), x.shape[1], dtype=F64, device=x.device)
    # float32 products (ClassStats._narrow_sums, SecondPass._narrow) chunk by themselves: fewer, larger batches
    wide = max(step, 1 << 16) if x.dtype in NARROW and exp == 0 and K <= ONEHOT_MAX_K else step
    for i in range(0, x.shape[0], wide):
        stats._update(x[i:i + wide], y[i:i + wide], buf, exp)
    second = SecondPass(stats, weights, bias, rtol=rtol, global_mean=global_mean, _w_exp=w_exp, _same_data=True)
    if second.narrow(x, exp):
        # 8,192 rows: the float64 per-row results (rows x (r + 2K) numbers) stay in cache and their buffers are
        # reused (batches of 65,536 rows were slower with a classifier, timed with benchmarks/metrics.py)
        step = max(step, 1 << 13)
    for i in range(0, x.shape[0], step):
        second._update(x[i:i + step], y[i:i + step], buf, exp)
    if second.narrow(x, exp) and second.narrow_inexact():  # rare: spread far outside the means' subspace
        second.reset()
        second._wide = True
        step = buf.shape[0]
        for i in range(0, x.shape[0], step):
            second._update(x[i:i + step], y[i:i + step], buf, exp)
    return compute_metrics(stats, weights, bias, second=second, _w_exp=w_exp, **options)


@fitted
def nc_metrics(features, labels, weights=None, bias=None, *, num_classes: int | None = None, target="auto",
               rtol: float = F.DEFAULT_RTOL, global_mean: str = "weighted", gemm_dtype: torch.dtype | None = None,
               **options) -> NCMetrics:
    """All NC metrics of features (N, D) with labels (N,) and optionally a classifier W (K, D), bias (K,).

    Two passes over `features` (float64 class means, then centred K-space projections), no D x D matrix:
    cost about N D (K + r) multiply-adds. num_classes default max(labels) + 1. target default "auto" (the
    same default as ``nclab measure``): etf with a bias or without W, else of. gemm_dtype None (default):
    float32 and half features with at most 16 classes make both passes' products in float32 on rows shifted
    by their class's mean (the first pass: the mean so far; the second: the final one) rounded to float32 or the
    features' dtype, with float64 accumulation and corrections, and a float64 redo of a second pass whose
    rounding estimate (SecondPass.narrow_inexact) exceeds 1e-7 (issue 12: faster than float64 products, `python
    benchmarks/metrics.py` times both; relative error ~1e-8, exact zeros for exactly collapsed features);
    torch.float64: every product in float64 (the same bits as float64 features give).
    Other options (center, nc3_scale, target_w, target_wh, within, collapse_rtol) as in compute_metrics.

    Example: ``m = nc_metrics(H, y, W, b, target="etf"); m["nc1"], m.reasons, m.to_dict()``
    """
    rtol = _check_options(rtol, global_mean, options.get("within", "pooled"), options.get("center"),
                          options.get("collapse_rtol", F.DEFAULT_COLLAPSE_RTOL))
    gemm_dtype = None if gemm_dtype is None else check_gemm_dtype(gemm_dtype)
    x, y, K = _prepared(features, labels, num_classes)
    return _one_shot(x, y, K, weights, bias, rtol, global_mean, target=target, gemm_dtype=gemm_dtype, **options)


def nc1(features, labels, *, num_classes: int | None = None, rtol: float = F.DEFAULT_RTOL,
        global_mean: str = "weighted", within: str = "pooled") -> float:
    """NC1 = tr(Sigma_W Sigma_B^+)/K of features (N, D), labels (N,) (see compute_metrics)."""
    return nc_metrics(features, labels, num_classes=num_classes, rtol=rtol, global_mean=global_mean,
                      within=within)["nc1"]


def _check_weights(weights) -> list:
    if isinstance(weights, (np.ndarray, torch.Tensor)) and getattr(weights, "ndim", 0) == 3:
        weights = list(weights)
    if not isinstance(weights, (list, tuple)) or len(weights) == 0:
        raise ValueError("weights must be a non-empty list [W_1, ..., W_M]")
    ws = []
    for j, w in enumerate(weights):
        w = check_matrix(w, f"W_{j + 1}")
        if j and w.shape[1] != ws[-1].shape[0]:
            raise ValueError(f"W_{j + 1} has shape {tuple(w.shape)} but W_{j} has {ws[-1].shape[0]} outputs")
        ws.append(w)
    return ws


def scaled_partial_products(weights) -> list:
    """[(P_j', e_j)] with W_M..W_j = P_j' 2^e_j, every P_j' rescaled to entries below 1 (no overflow)."""
    ws = _check_weights(weights)
    p, e = F.unit(ws[-1]), F.exp2(ws[-1])
    out = [(p, e)]
    for w in reversed(ws[:-1]):
        p = p @ F.unit(w)
        k = F.exp2(p)
        p, e = np.ldexp(p, -k), e + F.exp2(w) + k
        out.append((p, e))
    return out[::-1]


def partial_products(weights) -> list:
    """[W_M..W_1, W_M..W_2, ..., W_M] (float64 tensors) for weights [W_1..W_M], W_j (d_{j+1}, d_j)."""
    dev = weights[0].device if isinstance(weights, (list, tuple)) and weights \
        and isinstance(weights[0], torch.Tensor) else "cpu"
    with np.errstate(over="ignore", under="ignore"):
        return [torch.as_tensor(np.ldexp(p, e), device=dev) for p, e in scaled_partial_products(weights)]


def _per_layer(value, M: int, name: str = "target") -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != M:
            raise ValueError(f"{name} list must have one entry per layer ({M}), got {len(value)}")
        return list(value)
    return [value] * M


@fitted
def deep_head_metrics(features, labels, weights, bias=None, *, num_classes: int | None = None, target="auto",
                      nc3_scale=None, target_w=None, target_wh=None, rtol: float = F.DEFAULT_RTOL,
                      global_mean: str = "weighted", **options) -> DeepHeadMetrics:
    """Metrics at every layer of a deep linear head, pairing layer-j inputs with W_M..W_j.

    Parameters
    ----------
    features : (N, d_1) head input H_1 (rows are samples; pass H.T for a d x N matrix).
    labels : (N,). weights : list [W_1, ..., W_M], W_j (d_{j+1}, d_j), W_M (K, d_M). bias : (K,) or None.
    target, target_w, target_wh, nc3_scale : one value for all layers or a list of M (e.g. the theory's
        per-layer mean_gram, partial_gram and nc3_scale, and its WH).
    Layer-j features H_j = H_{j-1} W_{j-1}^T are formed in float64 on the features' device (rescaled by
    powers of two, so deep products never overflow).
    """
    rtol = _check_options(rtol, global_mean, options.get("within", "pooled"), options.get("center"),
                          options.get("collapse_rtol", F.DEFAULT_COLLAPSE_RTOL))
    ws = _check_weights(weights)
    x, y, K = _prepared(features, labels, num_classes)
    parts = scaled_partial_products(ws)
    dims = [int(p.shape[1]) for p, _ in parts]
    if dims[0] != x.shape[1]:
        raise ValueError(f"W_1 has {dims[0]} columns but features have dimension {x.shape[1]}")
    if parts[0][0].shape[0] != K:
        raise ValueError(f"W_{len(ws)} has {parts[0][0].shape[0]} rows, expected one per class ({K})")
    M = len(ws)
    targets, scales = _per_layer(target, M), _per_layer(nc3_scale, M, "nc3_scale")
    tws, twhs = _per_layer(target_w, M, "target_w"), _per_layer(target_wh, M, "target_wh")
    check_memory(8.0 * 2 * x.shape[0] * max(dims), f"float64 layer features ({x.shape[0]} x {max(dims)})", x.device)
    h = x.to(F64, copy=True)
    if not torch.isfinite(h).all():
        raise ValueError("features contain NaN or inf")
    ex = F.exp2(float(h.abs().max()))
    ldexp_(h, -ex)  # h = H_j / 2^ex, entries below 1
    layers = []
    for j in range(M):
        if j > 0:
            w = ws[j - 1]
            h = h @ torch.as_tensor(F.unit(w), device=h.device).T  # (N, d_{j+1})
            k = F.exp2(float(h.abs().max()))
            ldexp_(h, -k)
            ex += F.exp2(w) + k
        with warnings.catch_warnings():
            if j > 0:
                warnings.simplefilter("ignore")  # the empty-class warning is given once
            m = _one_shot(h, y, K, parts[j][0], bias, rtol, global_mean, exp=ex, w_exp=parts[j][1],
                          target=targets[j], target_w=tws[j], target_wh=twhs[j], nc3_scale=scales[j], **options)
        m.info["layer"] = j + 1
        layers.append(m)
    return DeepHeadMetrics(layers)
