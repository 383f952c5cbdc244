"""Behaviour of nclab.metrics.pairwise (and a few report/stats lines) that mutation testing (issue 15) found unpinned.

The tile-by-tile sweep against dense float64 definitions over all pairs i < j, with several tiles and zero rows
(a zero row is excluded from every cosine statistic), the precision of the equiangular std of nearly equiangular
rows, NC3's "D x D Grams" path for large K (forced with a small CROSS_TILE_MAX_K), the default tile from the
memory available, options checked before any pass over the data, and the caller's np.errstate.
"""

import math

import numpy as np
import pytest
import torch

from nclab.metrics import nc_metrics
from nclab.metrics import pairwise as pw

CPU = torch.device("cpu")


def dense_pairs(R, cstar):
    """Pair statistics of the rows R (K, D) from the definitions, float64 loops over pairs i < j of non-zero rows:
    mean |cos - cstar|, population std and mean of the cosines."""
    R = np.asarray(R, dtype=np.float64)
    ok = [k for k in range(len(R)) if np.linalg.norm(R[k]) > 0]
    cos = np.array([R[i] @ R[j] / (np.linalg.norm(R[i]) * np.linalg.norm(R[j]))
                    for a, i in enumerate(ok) for j in ok[a + 1:]])
    return {"equiangular": np.mean(np.abs(cos - cstar)), "equiangular_std": cos.std(), "cos_mean": cos.mean()}


def etf_gram(K):
    return (np.eye(K) - 1.0 / K) / math.sqrt(K - 1.0)


def run_sweep(R, tile, target="etf", uniformity=False):
    C = pw.Rows(torch.as_tensor(R, dtype=torch.float64))
    tgt = None if target is None else pw.Target(target, C.K, CPU)
    return pw.sweep(C, tgt, tile, C.summary(tile), uniformity=uniformity)


@pytest.mark.parametrize("zero", [0, 4, 6])  # in the first tile, in the middle tile, the last row
def test_sweep_excludes_zero_rows_from_the_cosine_statistics(zero):
    """A zero row (a class mean equal to mu_G, a dead classifier row) has no cosine: every pair with it is left
    out of the equiangularity and its std, whichever tile (row or column of a block) it falls in."""
    rng = np.random.default_rng(3)
    K, D = 7, 5
    R = rng.standard_normal((K, D))
    R[zero] = 0.0
    ref = dense_pairs(R, -1.0 / (K - 1))
    for tile in (3, K):
        out = run_sweep(R, tile)
        assert out["equiangular"] == pytest.approx(ref["equiangular"], rel=1e-12), tile
        assert out["equiangular_std"] == pytest.approx(ref["equiangular_std"], rel=1e-12), tile
        assert out["cos_mean"] == pytest.approx(ref["cos_mean"], rel=1e-12, abs=1e-15), tile
        # the Gram distance still sees every row (the zero row's Gram entries are 0)
        G = R @ R.T
        assert out["distance"] == pytest.approx(np.linalg.norm(G / np.linalg.norm(G) - etf_gram(K)), rel=1e-12)


def test_nc_metrics_leave_a_dead_classifier_row_out_of_the_classifier_angles():
    rng = np.random.default_rng(5)
    K, D = 6, 4
    H = rng.standard_normal((60, D))
    y = np.arange(60) % K
    W = rng.standard_normal((K, D))
    W[2] = 0.0
    ref = dense_pairs(W, 0.0)
    m = nc_metrics(H, y, W, target="of", tile=2)
    assert m["equiangular_w"] == pytest.approx(ref["equiangular"], rel=1e-12)
    assert m["equiangular_std_w"] == pytest.approx(ref["equiangular_std"], rel=1e-12)


def nearly_equiangular(K, D, eps, seed):
    """Rows of a simplex ETF (K, D) plus eps-size noise: cosines -1/(K-1) + O(eps)."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((D, K)))
    return (np.eye(K) - 1.0 / K) @ Q.T + eps * rng.standard_normal((K, D))


def test_equiangular_std_of_nearly_equiangular_rows_keeps_its_digits():
    """Cosines -1/(K-1) + O(1e-9): the sweep sums (cos - mean cos), so the std (~1e-9) has no cancellation
    (summing cos + 1 instead loses it entirely: E[c^2] - E[c]^2 of O(1) numbers is rounding noise at 1e-16).
    Tiles of one class: no diagonal entries enter the sums."""
    K = 6
    R = nearly_equiangular(K, 8, 1e-9, 11)
    ref = dense_pairs(R, -1.0 / (K - 1))
    assert 1e-10 < ref["equiangular_std"] < 1e-8
    out = run_sweep(R, 1, uniformity=True)
    assert out["equiangular_std"] == pytest.approx(ref["equiangular_std"], rel=1e-6)
    assert out["cos_mean"] == pytest.approx(ref["cos_mean"], rel=1e-12)


@pytest.mark.parametrize("tile", [3, 6])
def test_equiangular_std_of_nearly_equiangular_rows_with_diagonal_blocks(tile):
    """Diagonal blocks of several classes (the default tile is K for K <= 512): their diagonal entries,
    (1 - m0)^2 ~ 1.4 each, must not enter the sums at all -- subtracted afterwards they swamp squares ~1e-18
    (the std came out 0.0 at tile 6, 5.6e-9 at tile 3, against 1.5e-9)."""
    K = 6
    R = nearly_equiangular(K, 8, 1e-9, 11)
    ref = dense_pairs(R, -1.0 / (K - 1))
    out = run_sweep(R, tile, uniformity=True)
    assert out["equiangular_std"] == pytest.approx(ref["equiangular_std"], rel=1e-6)
    assert out["cos_mean"] == pytest.approx(ref["cos_mean"], rel=1e-12)


def test_cos_mean_of_parallel_rows_is_one():
    """All rows along one direction: the reference mean cosine is clamped below 1 and the sweep adds back the
    difference, so the mean cosine is 1 (to rounding), not 1 - 2e-12."""
    R = np.outer([1.0, 2.0, 0.5, 3.0, 1.5], [0.6, -0.8, 0.0])
    for tile in (2, 5):
        out = run_sweep(R, tile, target=None)
        assert out["cos_mean"] == pytest.approx(1.0, abs=1e-14), tile
        assert out["equiangular_std"] == pytest.approx(0.0, abs=1e-7), tile


def test_inner_norm_is_the_frobenius_norm_of_the_cross_gram():
    rng = np.random.default_rng(2)
    A, B = rng.standard_normal((5, 3)) * 1e3, rng.standard_normal((5, 3))
    ga, gb = torch.as_tensor(A.T @ A), torch.as_tensor(B.T @ B)
    assert pw._inner_norm(ga, gb) == pytest.approx(np.linalg.norm(A @ B.T), rel=1e-12)
    assert pw._inner_norm(torch.zeros(3, 3, dtype=torch.float64), gb) == 0.0
    assert pw._inner_norm(ga, torch.zeros(3, 3, dtype=torch.float64)) == 0.0


def test_cross_distance_of_a_zero_classifier_is_nan_exact():
    """W H^T = 0 has no direction: NaN, and the method says "exact" (info["nc3_method"] shows it)."""
    K, D = 4, 3
    W = pw.Rows(torch.zeros(K, D, dtype=torch.float64))
    H = pw.Rows(torch.as_tensor(np.random.default_rng(0).standard_normal((K, D))))
    d, method = pw.cross_distance(W, H, W.summary(2), H.summary(2), pw.Target("etf", K, CPU), 2)
    assert math.isnan(d) and method == "exact"


@pytest.mark.parametrize("name", ["etf", "of"])
@pytest.mark.parametrize("with_offset", [False, True])
def test_cross_distance_from_dxd_grams_above_the_threshold(monkeypatch, name, with_offset):
    """Above CROSS_TILE_MAX_K (lowered here to 3) NC3 to a named target comes from D x D Grams; it must equal
    || W H'^T/||W H'^T||_F - T ||_F from the dense K x K matrix (H' = H + offset)."""
    monkeypatch.setattr(pw, "CROSS_TILE_MAX_K", 3)
    rng = np.random.default_rng(7)
    K, D = 7, 4
    Wn, Hn, off = rng.standard_normal((K, D)), rng.standard_normal((K, D)), rng.standard_normal(D)
    W, H = pw.Rows(torch.as_tensor(Wn)), pw.Rows(torch.as_tensor(Hn))
    offset = torch.as_tensor(off) if with_offset else None
    d, method = pw.cross_distance(W, H, W.summary(3), H.summary(3, offset), pw.Target(name, K, CPU), 3, offset)
    Hp = Hn + off if with_offset else Hn
    M = Wn @ Hp.T
    T = etf_gram(K) if name == "etf" else np.eye(K) / math.sqrt(K)
    assert method.startswith("D x D Grams")
    assert d == pytest.approx(np.linalg.norm(M / np.linalg.norm(M) - T), rel=1e-9)


def test_default_tile_takes_an_eighth_of_the_memory_available(monkeypatch):
    """K > MAX_TILE: the largest t whose BLOCKS t x t float64 blocks fit in 1/8 of the memory, within [64, 512]."""
    def expected(avail):  # slow obvious search, then the clamps
        return min(pw.MAX_TILE, max(64, max(t for t in range(1, 2000) if pw.BLOCKS * 8 * t * t <= avail / 8)))

    assert expected(8 * 48 * 300.5 ** 2) == 300  # hand-derived: 48 t^2 <= 48 * 300.5^2
    for avail in (8 * 48 * 300.5 ** 2, 8 * 48 * 30 ** 2, 2.0 ** 40):
        monkeypatch.setattr("nclab.metrics._checks.available_memory", lambda device=None, a=avail: int(a))
        assert pw.default_tile(10_000) == expected(avail), avail
    assert pw.default_tile(7) == 7


def test_nc_metrics_checks_within_before_reading_the_data():
    """A bad option is reported first (one clear message), before any pass over (here inconsistent) data."""
    with pytest.raises(ValueError, match="within must be one of"):
        nc_metrics(np.zeros((3, 2)), [0, 1, 0, 1, 0], within="bogus")


def test_classifier_and_bias_scaling_ignores_the_callers_underflow_flag():
    """SecondPass rescales W and b by one power of two so logits never overflow; entries that underflow to 0
    then (a bias of 1e-300 next to 1e300) are expected, not an error, whatever the caller's np.errstate."""
    rng = np.random.default_rng(4)
    K, D = 4, 3
    H = rng.standard_normal((40, D))
    y = np.arange(40) % K
    W = rng.standard_normal((K, D)) * 1e-20
    b = np.array([1e-300, 1e300, 0.0, 1e-300])
    with np.errstate(under="raise"):
        m = nc_metrics(H, y, W, b)
    assert m["accuracy"] == pytest.approx(np.mean(y == 1))  # the 1e300 bias decides every sample


def _cdnv(R, var, tile):
    C = pw.Rows(torch.as_tensor(R, dtype=torch.float64))
    return pw.sweep(C, None, tile, C.summary(tile), variances=torch.as_tensor(var, dtype=torch.float64))["cdnv"]


def test_cdnv_of_coinciding_means_is_inf_or_nan_pair_by_pair():
    """CDNV = mean over pairs of (var_k + var_l) / (2 ||mu_k - mu_l||^2), as the dense definition gives it: a pair
    of coinciding means with variance is +inf; with no variance, 0/0 = NaN wins over inf. Only the coinciding
    pairs decide (a zero-variance pair elsewhere is a finite 0), in whichever tile they fall."""
    R = np.array([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 3.0], [0, 2.0, 0], [-1.0, 1.0, 1.0]])  # rows 1 and 3 coincide
    var = np.array([0.0, 0.5, 0.0, 0.5, 0.2])
    for tile in (2, 5):
        assert _cdnv(R, var, tile) == math.inf, tile
    var = np.array([0.3, 0.0, 0.3, 0.0, 0.2])  # the coinciding pair has no variance: 0/0
    for tile in (2, 5):
        assert math.isnan(_cdnv(R, var, tile)), tile
    # NaN in the first tile's pair (rows 0, 1), inf in a later tile's pair (rows 3, 4): NaN
    R2 = np.array([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 3.0], [0, 2.0, 0], [0, 2.0, 0]])
    var2 = np.array([0.0, 0.0, 0.1, 0.5, 0.5])
    for tile in (1, 2, 5):
        assert math.isnan(_cdnv(R2, var2, tile)), tile
