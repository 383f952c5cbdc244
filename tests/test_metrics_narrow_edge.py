"""Edge cases of nc_metrics' float32 fast paths (ClassStats._narrow_sums, SecondPass(_same_data=True)._narrow):
float32 / half features against the same features in float64 (the float64 path) and against slow_stats (numpy
loops): chunk boundaries (pass 1 in 65,536 rows, pass 2 in 8,192), late, empty and one-sample classes, exact
collapse, a huge common offset, the overflow and tiny-data fallbacks, bad values late in the data, strided
features, K = 16 / 17 and rank-deficient means. NC4 counts must equal the float64 path exactly."""

import math

import numpy as np
import pytest
import torch
from slow_metrics import slow_stats

from nclab.metrics import ClassStats, nc_metrics
from nclab.metrics.stats import F64


def features(N, D, K, noise, *, offset=0.0, scale=1.0, seed=0, dtype=torch.float32):
    """Labels (N,), features (N, D) = scale (offset + mu_y + noise e) in dtype, a classifier (K, D), bias (K,)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, K, (N,), generator=g)
    mu = offset + torch.randn(K, D, generator=g, dtype=F64)
    x = scale * (mu[y] + noise * torch.randn(N, D, generator=g, dtype=F64))
    return x.to(dtype), y, torch.randn(K, D, generator=g, dtype=F64), torch.randn(K, generator=g, dtype=F64)


def same_as_float64(x, y, W=None, b=None, rel=1e-6, **kw):
    """nc_metrics of x and of x.double() agree to rel (abs 1e-12 only for values that are 0 up to rounding);
    NC4 counts exactly. Returns (fast, reference)."""
    fast, ref = nc_metrics(x, y, W, b, **kw), nc_metrics(x.to(F64), y, W, b, **kw)
    for k, v in ref.to_dict()["values"].items():
        if k == "unc3":  # std / mean of cosines near 0 mean: ill-conditioned, checked on the cosines below
            continue
        if isinstance(v, float) and math.isnan(v):
            assert math.isnan(fast[k]), k
        else:
            assert fast[k] == pytest.approx(v, rel=rel, abs=1e-12 if abs(v) < 1e-10 else 0), k
    cos_fast, cos_ref = (np.array(m.to_dict()["per_class"].get("unc3", []), float) for m in (fast, ref))
    np.testing.assert_allclose(cos_fast, cos_ref, rtol=0, atol=5e-7)
    for k in ("nc4", "accuracy", "ncc_accuracy"):  # counts / N: equal counts give equal floats
        assert fast[k] == ref[k] or (math.isnan(fast[k]) and math.isnan(ref[k])), k
    return fast, ref


def variances_match_slow(m, x, y, K, rel=1e-6):
    """per-class variance m2_k / n_k against the numpy loops (classes with samples only)."""
    counts, _, m2, _ = slow_stats(x.to(F64).numpy(), y.numpy(), K)
    kept = counts > 0
    np.testing.assert_allclose(m.to_dict()["per_class"]["variance"], m2[kept] / counts[kept], rtol=rel, atol=0)


# N < 2048; one pass-1 chunk over several float32 GEMM steps; 3 pass-1 chunks (65,536 rows at D = 16);
# pass 2 in 8,192-row chunks (D >= 128)
@pytest.mark.parametrize("N, D", [(1000, 8), (70001, 8), (140003, 16), (20011, 128)])
@pytest.mark.parametrize("noise", [1e-5, 1e-2, 1.0])
def test_chunk_boundaries_match_float64_and_numpy(N, D, noise):
    x, y, W, b = features(N, D, 5, noise, seed=N)
    fast, _ = same_as_float64(x, y, W, b)
    variances_match_slow(fast, x, y, 5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_features(dtype):
    x, y, W, _ = features(70001, 8, 4, 1e-2, dtype=dtype, seed=2)
    fast, _ = same_as_float64(x, y, W)
    variances_match_slow(fast, x, y, 4)


def test_late_empty_and_one_sample_classes():
    """Classes 3 and 4 first seen in the second pass-1 chunk (rows >= 65,536 at D = 16), class 5 a single last
    sample, classes 6-7 empty (num_classes 8): K_eff = 6 and every metric as in float64."""
    x, y, W, b = features(140000, 16, 5, 1e-3, seed=3)
    order = torch.argsort((y >= 3).to(torch.int8), stable=True)
    x, y = x[order], y[order]
    assert int((y < 3).sum()) > 65536
    y[-1] = 5
    g = torch.Generator().manual_seed(3)
    W8, b8 = torch.randn(8, 16, generator=g, dtype=F64), torch.randn(8, generator=g, dtype=F64)
    with pytest.warns(UserWarning, match="dropping 2 class"):
        fast, _ = same_as_float64(x, y, W8, b8, num_classes=8)
    assert fast.info["K_eff"] == 6 and fast.info["dropped"] == [6, 7]
    variances_match_slow(fast, x, y, 8)
    assert fast.to_dict()["per_class"]["variance"][5] == 0.0  # one sample: no spread, exactly


def test_exact_collapse_gives_exact_zeros():
    """Every sample equals its class's (float32) mean: NC1, its trace form, CDNV and each class's variance are
    exactly 0, not rounding noise."""
    g = torch.Generator().manual_seed(4)
    y = torch.arange(70003) % 3
    x = torch.randn(3, 7, generator=g)[y] + 1e4  # a huge common offset too
    fast, _ = same_as_float64(x, y, torch.randn(3, 7, generator=g, dtype=F64))
    assert fast["nc1"] == fast["nc1_trace"] == fast["cdnv"] == 0.0
    assert fast.to_dict()["per_class"]["variance"] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("offset, noise", [(1e4, 1e-3), (1e3, 1e-4), (100.0, 1e-5)])
def test_huge_common_offset_all_positive(offset, noise):
    """ReLU-like features: |mu| ~ offset, spread ~ noise, every entry positive (deviations near float32's ulp)."""
    x, y, W, _ = features(140000, 4, 4, noise, offset=offset, seed=5)
    assert bool((x > 0).all())
    fast, _ = same_as_float64(x, y, W)
    variances_match_slow(fast, x, y, 4)


@pytest.mark.parametrize("scale", [3e37, 2.0 ** -110])
def test_near_float32_max_and_tiny_fall_back_to_float64(scale):
    """Deviations near float32's max overflow the float32 sums, tiny data is below the 2^-100 guard: both take
    the float64 path and equal it to rounding."""
    x, y, W, b = features(70001, 6, 3, 1.0, scale=scale, seed=6)
    assert bool(torch.isfinite(x).all()) and bool((x != 0).any())
    same_as_float64(x, y, W, b, rel=1e-12)


@pytest.mark.parametrize("row", [3000, 100000])  # after the 2,048-row scale scan; in a later pass-1 chunk
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_bad_values_late_in_the_data_are_reported(row, bad):
    x, y, W, _ = features(120000, 4, 3, 1e-2, seed=7)
    x[row, 1] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        nc_metrics(x, y, W)


def test_non_contiguous_features():
    x, y, W, b = features(70001, 8, 5, 1e-2, seed=8)
    transposed = x.T.contiguous().T
    wide = torch.zeros(70001, 16)
    wide[:, ::2] = x
    for view in (transposed, wide[:, ::2]):
        assert not view.is_contiguous()
        same_as_float64(view, y, W, b)


def test_dtype_changes_between_updates():
    """ClassStats(moments="none") fed float32, float16 and float64 batches: means as numpy computes them."""
    x, y, _, _ = features(30000, 6, 4, 1e-3, seed=9)
    parts = [x[:10000], x[10000:20000].half(), x[20000:].double()]
    s = ClassStats(4, moments="none")
    for i, p in enumerate(parts):
        s.update(p, y[10000 * i:10000 * (i + 1)])
    _, means, _, _ = slow_stats(torch.cat([p.to(F64) for p in parts]).numpy(), y.numpy(), 4)
    np.testing.assert_allclose(s.means.numpy(), means, rtol=1e-12, atol=0)


@pytest.mark.parametrize("K", [16, 17])  # the one-hot float32 paths' boundary
def test_sixteen_and_seventeen_classes(K, monkeypatch):
    taken, original = [], ClassStats._narrow_sums
    monkeypatch.setattr(ClassStats, "_narrow_sums", lambda self, *a: taken.append(original(self, *a)) or taken[-1])
    x, y, W, b = features(70001, 20, K, 1e-4, seed=K)
    fast, _ = same_as_float64(x, y, W, b)
    assert any(taken) == (K <= 16)
    variances_match_slow(fast, x, y, K)


def test_rank_deficient_means_nc4_counts():
    """Five class means in a 2-d subspace (rank 2 < K - 1): the NCC columns cannot come from the projector;
    the NC4 counts still equal the float64 path's, with the means themselves as classifier too."""
    g = torch.Generator().manual_seed(10)
    y = torch.randint(0, 5, (20000,), generator=g)
    mu = torch.randn(5, 2, generator=g, dtype=F64) @ torch.randn(2, 10, generator=g, dtype=F64)
    x = (mu[y] + 0.3 * torch.randn(20000, 10, generator=g, dtype=F64)).float()
    for W in (torch.randn(5, 10, generator=g, dtype=F64), mu):
        fast, _ = same_as_float64(x, y, W, rtol=0.05)  # sample means: rank 2 up to noise ~1e-2
        assert fast.info["rank"] == 2 and 0 < fast["nc4"] < 1  # non-degenerate: some mismatches, not all
