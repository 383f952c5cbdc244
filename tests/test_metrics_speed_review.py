"""Adversarial review of three speed changes in nclab.metrics (issue 12 follow-ups):

1. pairwise: for K <= D the norms ||R R^T||_F / ||W H'^T||_F come from K x K blocks (gram_norm, cross_norm).
2. stats: rows shifted by their class's reference through _minus_rows (gather + one subtraction).
3. SecondPass._narrow: bias and ||mu_j||^2 folded into the per-class tables, NCC columns written in place,
   max/min(dim).indices for the first extremum.

Every number is checked against an independent float64 (or exact rational) reference."""

from decimal import Decimal, getcontext
from fractions import Fraction

import numpy as np
import pytest
import torch
from slow_metrics import slow_stats

from nclab.metrics import ClassStats, _checks, nc_metrics
from nclab.metrics import pairwise as pw
from nclab.metrics import stats as stats_mod

pytestmark = pytest.mark.filterwarnings("ignore:dropping")


# ------------------------------------------------------------------------------------------ references
def exact_fro(A, B, off_a=None, off_b=None) -> float:
    """||(A + off_a)(B + off_b)^T||_F in exact rational arithmetic, rounded once to float (no overflow or
    underflow of the squares, whatever the magnitudes)."""
    def rows(M, off):
        M = np.asarray(M, dtype=np.float64)
        o = [Fraction(0)] * M.shape[1] if off is None else [Fraction(float(v)) for v in off]
        return [[Fraction(float(v)) + w for v, w in zip(r, o)] for r in M]

    ra, rb = rows(A, off_a), rows(B, off_b)
    s = Fraction(0)
    for a in ra:
        for b in rb:
            g = sum((x * y for x, y in zip(a, b)), Fraction(0))
            s += g * g
    if s == 0:
        return 0.0
    getcontext().prec = 40
    return float((Decimal(s.numerator) / Decimal(s.denominator)).sqrt())


def ref_n4(H1, y1, H2, y2, W, b):
    """[seen, ncc != argmax, ncc right, argmax right] over H2 with the class means of (H1, y1): explicit argmax of
    H W^T + b and argmin of squared distances to the means, over the non-empty classes, numpy's first-index rule."""
    H1, H2 = np.asarray(H1, dtype=np.float64), np.asarray(H2, dtype=np.float64)
    kept = np.unique(y1)
    means = np.stack([H1[y1 == k].mean(0) for k in kept])
    ncc = kept[np.argmin(((H2[:, None, :] - means[None]) ** 2).sum(2), 1)]
    logits = H2 @ np.asarray(W, dtype=np.float64)[kept].T
    if b is not None:
        logits = logits + np.asarray(b, dtype=np.float64)[kept]
    am = kept[np.argmax(logits, 1)]
    return [len(y2), int((ncc != am).sum()), int((ncc == y2).sum()), int((am == y2).sum())]


# ------------------------------------------------------------------------------------------ 1. pairwise norms
@pytest.mark.parametrize("K,D", [(1, 5), (5, 5), (6, 9), (7, 4)])  # K = 1, K == D (blocks), K < D, K > D (Grams)
@pytest.mark.parametrize("tile", [1, 2, 64])
@pytest.mark.parametrize("source", ["mixed", "float32"])
def test_block_norms_match_exact_rationals(K, D, tile, source):
    """gram_norm / cross_norm, with and without the offset (uncentred rows), over one and several tiles, on rows
    whose magnitudes span 1e-150 .. 1e150 within one matrix (Gram entries up to 1e300: their squares overflow)
    and on float32 sources (converted per block): within 1e-12 of the exact rational value; both the K x K block
    route and the D x D Gram route (grams=True); the caller's tensors are never modified."""
    rng = np.random.default_rng(K * 100 + D * 10 + tile)
    R, W, off = rng.standard_normal((K, D)), rng.standard_normal((K, D)), rng.standard_normal(D)
    if source == "mixed":
        R *= 10.0 ** rng.uniform(-150, 150, (K, 1))
        W *= 10.0 ** rng.uniform(-150, 150, (K, 1))
        R[0] *= 1e150 / np.abs(R[0]).max()  # the extremes present in every matrix
        W[-1] *= 1e-150 / np.abs(W[-1]).max()
        off *= 1e140
        rsrc = torch.from_numpy(R.copy())
    else:
        rsrc = torch.from_numpy(R.astype(np.float32))
    wsrc = torch.from_numpy(W.copy())
    Rn = rsrc.double().numpy()
    keep_r, keep_w = rsrc.clone(), wsrc.clone()
    offset = torch.from_numpy(off)
    for grams in (None, True):
        for o in (None, offset):
            sr = pw.Rows(rsrc).summary(tile, o, grams)
            sw = pw.Rows(wsrc).summary(tile, None, grams)
            shifted = o is not None
            if grams is None:
                assert (sr["gram"] is None) == (K <= D)
            on = None if o is None else off
            assert pw.gram_norm(sr, shifted) == pytest.approx(exact_fro(Rn, Rn, on, on), rel=1e-12, abs=0)
            assert pw.cross_norm(sw, sr, shifted) == pytest.approx(exact_fro(W, Rn, None, on), rel=1e-12, abs=0)
    assert torch.equal(rsrc, keep_r) and torch.equal(wsrc, keep_w)


def test_block_norms_of_zero_nan_and_inf_rows_as_the_gram_route():
    """Zero rows give 0; a NaN entry gives NaN for ||R R^T|| and 0 for ||W H^T|| (cross_distance then reports
    NaN); an inf entry gives inf / NaN -- the K x K block route answers as the D x D Gram route does."""
    def norms(R, grams):
        s = pw.Rows(R).summary(2, None, grams)
        return pw.gram_norm(s), pw.cross_norm(s, s, False)

    R = torch.zeros(3, 5, dtype=torch.float64)
    assert norms(R, None) == norms(R, True) == (0.0, 0.0)
    R = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    Rn = R.clone()
    Rn[1, 2] = float("nan")
    g, c = norms(Rn, None)
    assert np.isnan(g) and c == 0.0 and np.isnan(norms(Rn, True)[0])
    Ri = R.clone()
    Ri[1, 2] = float("inf")
    for grams in (None, True):
        g, c = norms(Ri, grams)
        assert g == float("inf") and np.isnan(c)


@pytest.mark.parametrize("K,D", [(5, 5), (4, 9), (9, 4)])
@pytest.mark.parametrize("tile", [1, 2, None])
def test_sweep_and_cross_distance_equal_the_dense_definitions(K, D, tile, monkeypatch):
    """NC2 of the means (etf, centred; of, uncentred means: rows + offset) and NC3 through nc_metrics, in one and
    several tiles, K == D / K < D / K > D, and NC3's K > CROSS_TILE_MAX_K closed form (threshold lowered to 2)
    reading its norm from K x K blocks: equal to dense float64 definitions ||G/||G||_F - T||_F."""
    rng = np.random.default_rng(K + 10 * D)
    mu = rng.standard_normal((K, D)) + 1.0
    y = np.arange(20 * K) % K
    H = mu[y] + 0.3 * rng.standard_normal((len(y), D))
    W, b = rng.standard_normal((K, D)), rng.standard_normal(K)
    means = np.stack([H[y == k].mean(0) for k in range(K)])
    mc = means - means.mean(0)
    etf = (np.eye(K) - 1.0 / K) / np.linalg.norm(np.eye(K) - 1.0 / K)
    of = np.eye(K) / np.sqrt(K)

    def dist(G, T):
        return np.linalg.norm(G / np.linalg.norm(G) - T)

    for closed in (False, True):
        if closed:
            monkeypatch.setattr(pw, "CROSS_TILE_MAX_K", 2)
        for tgt, T, rows in (("etf", etf, mc), ("of", of, means)):
            m = nc_metrics(torch.from_numpy(H), y, W, b, target=tgt, tile=tile, center=tgt == "etf")
            assert m["nc2_h"] == pytest.approx(dist(rows @ rows.T, T), rel=1e-9, abs=1e-12)
            tol = dict(rel=1e-7, abs=1e-8) if closed else dict(rel=1e-9, abs=1e-12)  # closed form: ~1e-8 absolute
            assert m["nc3"] == pytest.approx(dist(W @ rows.T, T), **tol)


def test_few_classes_of_large_dimension_are_not_refused_for_d_by_d_memory(monkeypatch):
    """K = 3 classes of dimension D = 4,096 need a few K x D rows and 3 x 3 blocks (pairwise.py: no D x D
    buffer for K <= D); with 2 GB available nc_metrics must not refuse them for want of D x D Grams."""
    monkeypatch.setattr(_checks, "available_memory", lambda device=None: 2.0 * 2 ** 30)
    rng = np.random.default_rng(3)
    K, D = 3, 4096
    y = np.arange(12) % K
    H = torch.from_numpy(rng.standard_normal((12, D)))
    m = nc_metrics(H, y, rng.standard_normal((K, D)), rng.standard_normal(K))
    assert np.isfinite(m["nc2_h"]) and np.isfinite(m["nc3"])


# ------------------------------------------------------------------------------------------ 2. _minus_rows
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "column_slice"])
@pytest.mark.parametrize("ydtype", [torch.int64, torch.int32])
def test_minus_rows_is_the_plain_subtraction_bitwise(layout, ydtype):
    """_minus_rows(x, table, y, out) equals x - table[y] bit for bit, for a contiguous x, a transposed view and a
    column slice of a wider tensor, int32 or int64 labels, and returns ``out`` itself."""
    rng = np.random.default_rng(1)
    base = torch.from_numpy(rng.standard_normal((64, 16)).astype(np.float32))
    x = {"contiguous": base[:, :8], "transposed": base[:, :8].T.contiguous().T,
         "column_slice": base[:, 4:12]}[layout]
    if layout == "contiguous":
        x = x.contiguous()
    table = torch.from_numpy(rng.standard_normal((5, 8)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 5, 64)).to(ydtype)
    out = torch.empty_like(x)
    d = stats_mod._minus_rows(x, table, y, out)
    assert d.data_ptr() == out.data_ptr()
    ref = (x.numpy().astype(np.float64) - table.numpy().astype(np.float64)[y.long().numpy()]).astype(np.float32)
    assert np.array_equal(d.numpy(), ref)  # one rounding: the float64 difference rounded to float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("K", [5, stats_mod.ONEHOT_MAX_K + 4])  # one-hot / index_add_ per-class sums
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "column_slice"])
def test_shifted_scatter_matches_class_loops(dtype, K, layout):
    """ClassStats(moments='scatter') on float32 / half / bfloat16 features (the _update_shifted GEMM on rows minus
    their class reference), contiguous or not, in two batches (the second shifted by the first's means), with
    K = 5 and K = 20 > ONEHOT_MAX_K: counts exact, means, m2 and scatter as float64 class loops over the same
    (rounded) values."""
    rng = np.random.default_rng(K)
    D, n = 8, 30 * K
    mu = rng.standard_normal((K, D)) * 3 + 1
    y = rng.permutation(np.arange(n) % K)
    full = torch.from_numpy(np.concatenate([mu[y] + 0.4 * rng.standard_normal((n, D)),
                                            rng.standard_normal((n, D))], 1)).to(dtype)
    x = {"contiguous": full[:, :D].contiguous(), "transposed": full[:, :D].T.contiguous().T,
         "column_slice": full[:, 3:3 + D]}[layout]
    Hn = x.to(torch.float64).numpy()
    st = ClassStats(K)
    half = n // 2
    st.update(x[:half], y[:half]).update(x[half:], torch.from_numpy(y[half:]).to(torch.int32))
    assert st.scale_exp == 0
    counts, means, m2, S = slow_stats(Hn, y, K)
    assert np.array_equal(st.counts.numpy(), counts)
    np.testing.assert_allclose(st._means.numpy(), means, rtol=0, atol=1e-6)  # float32 sums of deviations ~0.4
    np.testing.assert_allclose(st._m2.numpy(), m2, rtol=1e-5)
    np.testing.assert_allclose(st._scatter.numpy(), S, rtol=1e-5, atol=1e-5 * np.abs(S).max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("K", [5, stats_mod.ONEHOT_MAX_K + 4])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_and_inf_features_still_raise(dtype, K, bad):
    """A NaN or inf feature (in the first batch or a later one) is a ValueError naming it, in ClassStats.update
    (the shifted scatter GEMM, then the float64 path) and in nc_metrics (the float32 first and second passes)."""
    rng = np.random.default_rng(2)
    y = np.arange(10 * K) % K
    H = torch.from_numpy(rng.standard_normal((10 * K, 6))).to(dtype)
    Hb = H.clone()
    Hb[7, 3] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        ClassStats(K).update(Hb, y)
    with pytest.raises(ValueError, match="NaN or inf"):
        ClassStats(K).update(H, y).update(Hb, y)
    with pytest.raises(ValueError, match="NaN or inf"):
        nc_metrics(Hb, y)
    st = ClassStats(K).update(H, y)
    with pytest.raises(ValueError, match="NaN or inf"):
        st.second_pass(rng.standard_normal((K, 6))).update(Hb, y)


# ------------------------------------------------------------------------------------------ 3. NC4 / accuracies
def _case(name, dtype, rng):
    """(H1, y1, H2, y2, K) for the named data set; H2 is other data from the same classes."""
    D = 10
    if name == "collinear":  # 3 classes, means on a line: rank 1 < K_eff - 1 (exactly: symmetric noise)
        K = 3
        mu = np.outer(np.arange(K) - 1.0, np.round(rng.standard_normal(D) * 16) / 16) + np.round(
            rng.standard_normal(D) * 16) / 16  # multiples of 1/16: exact in float16 too, so the rank stays 1
        e = np.round(rng.standard_normal((40, D)) * 16) / 32
        y = np.repeat(np.arange(K), 80)
        H = mu[y] + np.tile(np.concatenate([e, -e]), (K, 1))
    elif name == "empty":  # K = 6 with class 2 empty
        K = 6
        mu = rng.standard_normal((K, D)) * 1.5
        y = rng.choice([0, 1, 3, 4, 5], 300)
        H = mu[y] + 0.6 * rng.standard_normal((300, D))
    elif name == "many":  # K = 20 > 16: no K x K tables
        K = 20
        mu = rng.standard_normal((K, D)) * 1.5
        y = rng.integers(0, K, 400)
        H = mu[y] + 0.6 * rng.standard_normal((400, D))
    elif name == "many_sparse":  # K = 20, 10 non-empty: the narrow path with ClassStats' K > 16
        K = 20
        mu = rng.standard_normal((K, D)) * 1.5
        y = rng.choice(np.arange(0, K, 2), 300)
        H = mu[y] + 0.6 * rng.standard_normal((300, D))
    elif name in ("tiny", "huge"):  # float32 rows whose squares leave float32: redone in float64
        K = 4
        mu = rng.standard_normal((K, D))
        y = rng.integers(0, K, 300)
        H = (mu[y] + 0.5 * rng.standard_normal((300, D))) * (1e-22 if name == "tiny" else 1e22)
    else:
        raise ValueError(name)
    y2 = rng.choice(np.unique(y), 150)
    f = {"tiny": 1e-22, "huge": 1e22}.get(name, 1.0)
    H2 = (mu[y2] + 0.6 * rng.standard_normal((150, D))) * f
    cast = {"float32": np.float32, "float64": np.float64, "float16": np.float16}[dtype]
    return H.astype(cast), y, H2.astype(cast), y2, K


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("name", ["collinear", "empty", "many", "many_sparse", "tiny", "huge"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_nc4_and_accuracies_equal_explicit_argmax_argmin(dtype, name, with_bias):
    """NC4, accuracy and ncc_accuracy (and SecondPass.n4's counts) equal the explicit float64 argmax of H W^T + b
    and argmin of squared distances to the class means, with and without a bias: through nc_metrics (_same_data:
    the NCC columns written in place), and through ClassStats(...).second_pass(W, b) updated with other data and
    with a subset of the data (t delta^T columns, no in-place NCC), for rank-deficient means, an empty class,
    K = 20 (all / half the classes present), and float32 rows redone in float64 (tiny, huge)."""
    if dtype == "float16" and name in ("tiny", "huge"):
        pytest.skip("outside float16's range")
    rng = np.random.default_rng(["collinear", "empty", "many", "many_sparse", "tiny", "huge"].index(name) + 7)
    H, y, H2, y2, K = _case(name, dtype, rng)
    D = H.shape[1]
    W = rng.standard_normal((K, D))
    b = rng.standard_normal(K) * (np.abs(H).max() if name in ("tiny", "huge") else 1.0) if with_bias else None
    Ht, H2t = torch.from_numpy(H), torch.from_numpy(H2)
    if name == "collinear":
        assert nc_metrics(Ht, y).info["rank"] == 1
    m = nc_metrics(Ht, y, W, b, num_classes=K)
    seen, mism, ncc_ok, am_ok = ref_n4(H, y, H, y, W, b)
    assert (m["nc4"], m["accuracy"], m["ncc_accuracy"]) == (mism / seen, am_ok / seen, ncc_ok / seen)
    st = ClassStats(K).update(Ht, y)
    for Hx, yx in ((H2t, y2), (Ht[:37], y[:37])):
        sp = st.second_pass(W, b)
        sp.update(Hx, yx)
        assert sp.n4.tolist() == ref_n4(H, y, Hx.numpy(), yx, W, b)


def test_first_extremum_on_exact_ties_of_logits_and_centres():
    """Exact ties: two identical classifier rows with equal biases (argmax: the first) and two classes with the
    same samples, so the same mean (argmin over distances: the first) -- through nc_metrics' float32 second pass
    (bias and ||mu_j||^2 folded into the tables, NCC columns in place) and the float64 one, as numpy's first-index
    rule. Unequal class sizes make the first-index rule visible in every count."""
    rng = np.random.default_rng(31)
    K, D = 5, 6
    mu = rng.standard_normal((K, D)) * 2
    sizes = [30, 20, 50, 40, 10]
    y = np.repeat(np.arange(K), sizes)
    H = np.round((mu[y] + 0.5 * rng.standard_normal((len(y), D))) * 64) / 64  # multiples of 1/64: exact sums
    H[y == 3] = np.tile(H[y == 1], (2, 1))  # class 3: class 1's samples twice, the same mean
    W = rng.standard_normal((K, D))
    W[4] = W[2] = mu[2]  # class 2 samples: the tied logits win
    b = rng.standard_normal(K)
    b[4] = b[2]
    for dtype in (np.float32, np.float64):
        Hd = H.astype(dtype)
        means = ClassStats(K).update(torch.from_numpy(Hd), y)._means
        assert torch.equal(means[1], means[3])  # the NCC tie is exact in the statistics too
        ref = ref_n4(Hd, y, Hd, y, W, b)
        assert 0 < ref[3] < ref[0] and ref[2] < ref[0]  # the ties decide some samples
        m = nc_metrics(torch.from_numpy(Hd), y, W, b)
        assert (m["nc4"], m["accuracy"], m["ncc_accuracy"]) == (ref[1] / ref[0], ref[3] / ref[0], ref[2] / ref[0])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])  # the float64 second pass / _narrow
@pytest.mark.parametrize("bias", [False, True])
def test_logits_of_rows_far_smaller_than_their_class_mean(dtype, bias):
    """Outlier rows 1e19 times larger than the rest drag every class mean to ~1e18: the ordinary rows' logits
    (~1) and nearest-centre terms must still be argmax'ed / argmin'ed as for H W^T + b and ||h - mu_k||, not
    as differences of ~1e18 terms (SecondPass._raw_terms_where_cancelled; found by review)."""
    rng = np.random.default_rng(5)
    K, D = 4, 10
    mu = rng.standard_normal((K, D))
    y = rng.integers(0, K, 300)
    H = mu[y] + 0.3 * rng.standard_normal((300, D))
    H[::37] *= 1e19
    H = H.astype(dtype)
    W = rng.standard_normal((K, D))
    b = rng.standard_normal(K) if bias else None
    m = nc_metrics(torch.from_numpy(H), y, W, b)
    ref = ref_n4(H.astype(np.float64), y, H.astype(np.float64), y, W, b)
    assert m["accuracy"] == ref[3] / ref[0]
    assert m["ncc_accuracy"] == ref[2] / ref[0] and m["nc4"] == ref[1] / ref[0]
