"""nc_metrics' first pass in float32 products (ClassStats._narrow_sums): class means against float64 sums
written from the definition, and every case that must fall back to the float64 path."""

import numpy as np
import pytest
import torch

from nclab.metrics import ClassStats, nc_metrics
from nclab.metrics.stats import F64


def features(N=6000, D=48, K=6, noise=1e-5, scale=1.0, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, K, (N,), generator=g)
    mu = scale * torch.randn(K, D, generator=g, dtype=F64)
    x = (mu[y] + scale * noise * torch.randn(N, D, generator=g, dtype=F64)).to(dtype)
    return x, y


def exact_means(x, y, K):
    """float64 class means of the features as stored (numpy, one class at a time)."""
    xn, yn = x.to(F64).numpy(), y.numpy()
    return np.stack([xn[yn == k].sum(0) / max(1, (yn == k).sum()) for k in range(K)])


def first_pass(x, y, K, **kw):
    s = ClassStats(K, moments="none", **kw)
    s._update(x, y)  # one batch, as nc_metrics' first pass gives it
    return s


@pytest.fixture
def taken(monkeypatch):
    """The results of every ClassStats._narrow_sums call (True: the float32 path ran)."""
    calls, original = [], ClassStats._narrow_sums

    def spy(self, *args):
        calls.append(original(self, *args))
        return calls[-1]

    monkeypatch.setattr(ClassStats, "_narrow_sums", spy)
    return calls


def spread(x, y, K):
    m = exact_means(x, y, K)
    return float(np.abs(x.to(F64).numpy() - m[y.numpy()]).max())


@pytest.mark.parametrize("noise", [1e-5, 1.0, 100.0])
def test_float32_means_within_1e7_of_the_spread(noise, taken):
    x, y = features(noise=noise)
    s = first_pass(x, y, 6)
    assert taken == [True]
    assert np.abs(s.means.numpy() - exact_means(x, y, 6)).max() <= 1e-7 * spread(x, y, 6)


def test_float32_means_of_several_batches_and_half_features(taken):
    x, y = features(N=18000, noise=1e-3)
    y[:6000] = y[:6000] % 3  # classes 3-5 first seen in the second batch: shifted by their first sample there
    s = ClassStats(6, moments="none")
    for i in range(0, 18000, 6000):  # batches above SUB_ELEMS / D rows: the summing path
        s._update(x[i:i + 6000], y[i:i + 6000])
    assert np.abs(s.means.numpy() - exact_means(x, y, 6)).max() <= 1e-7 * spread(x, y, 6)
    h = x.to(torch.float16)
    assert np.abs(first_pass(h, y, 6).means.numpy() - exact_means(h, y, 6)).max() <= 1e-7 * spread(h, y, 6)
    assert taken == [True] * 4


def test_float64_paths_unchanged(taken):
    """gemm_dtype=float64 and float64 features: the float64 copy path, exact to round-off of the means."""
    x, y = features(noise=1e-5)
    ref = exact_means(x, y, 6)
    for s in (first_pass(x, y, 6, gemm_dtype=torch.float64), first_pass(x.to(F64), y, 6)):
        np.testing.assert_allclose(s.means.numpy(), ref, rtol=1e-15, atol=0)
    assert taken == [False, False]


def test_tiny_huge_and_bad_features_take_the_float64_path(taken):
    x, y = features(noise=1e-2, scale=2.0 ** -110)  # below the 2^-100 guard: float64 sums, exact
    np.testing.assert_allclose(first_pass(x, y, 6).means.numpy(), exact_means(x, y, 6), rtol=1e-13, atol=0)
    # a column of +-3e38 in class 0: x - c overflows float32, so the float64 path sums it (300 rows of 2048:
    # above SUB_ELEMS / D rows, the summing path)
    x, y = features(N=300, D=2048, K=2)
    x[y == 0, 5] = torch.tensor([3e38, -3e38]).repeat(300)[: int((y == 0).sum())]
    np.testing.assert_allclose(first_pass(x, y, 2).means.numpy(), exact_means(x, y, 2), rtol=1e-15, atol=1e-15)
    x, y = features(N=2100, D=256, K=2)
    x[2099, 1] = float("nan")  # past the rows scanned for the scale: the float32 sums meet it, then float64 does
    with pytest.raises(ValueError, match="features contain NaN or inf"):
        first_pass(x, y, 2)
    assert taken == [False] * 3
    s = first_pass(*features(K=17), 17)  # more classes than the one-hot GEMMs serve
    assert taken[-1] is False and s.means.shape == (17, 48)


def test_nc_metrics_collapsed_regime_matches_float64():
    """The whole two-pass nc_metrics on float32 features, collapsed (noise 1e-5): the float32 products agree
    with the same features in float64 to 1e-6 (issue 12's accuracy goal)."""
    x, y = features(N=8000, D=64, K=5, noise=1e-5, seed=3)
    W = torch.randn(5, 64, dtype=F64, generator=torch.Generator().manual_seed(4))
    fast, ref = nc_metrics(x, y, W), nc_metrics(x.to(F64), y, W)
    for k in ("nc1", "nc1_trace", "cdnv"):
        assert fast[k] == pytest.approx(ref[k], rel=1e-6, abs=0), k


def second_passes(x, y, K, W=None):
    """The float32 second pass as nc_metrics runs it (_same_data: m2 from class sums) and the per-row one."""
    from nclab.metrics import SecondPass

    s = first_pass(x, y, K)
    out = []
    for same in (True, False):
        sp = SecondPass(s, W, _same_data=same)
        assert sp.narrow(x)
        sp._update(x, y)
        out.append(sp)
    return s, out


@pytest.mark.parametrize("noise", [1e-5, 0.3])
def test_same_data_m2_from_class_sums_equals_per_row_and_float64(noise):
    """m2_k = sum ||x - mu_k||^2: from class sums (sum ||t||^2 - n ||delta||^2) it equals the per-row float32
    path and a float64 sum written from the definition; q is the same in both modes. Rows with t = 0 exactly,
    tiny (< 2^-50) and huge (>= 2^60) deviations take the float64 redo path in both."""
    x, y = features(N=9000, D=40, K=5, noise=noise, seed=7)
    m = exact_means(x, y, 5)
    x[y == 0] = torch.from_numpy(m[0]).to(torch.float32)  # class 0 collapsed exactly: t = 0 rows...
    x[np.flatnonzero(y.numpy() == 1)[:3]] = (torch.from_numpy(m[1]) + 2.0 ** -60).to(torch.float32)  # ... tiny
    x[np.flatnonzero(y.numpy() == 2)[0], 3] = 2.0 ** 70  # ... a huge one, and class 3 at 2^-55 (every row tiny)
    g = torch.Generator().manual_seed(8)
    x[y == 3] = (2.0 ** -55 * (torch.randn(40, generator=g, dtype=F64)
                               + 1e-4 * torch.randn(int((y == 3).sum()), 40, generator=g, dtype=F64))).to(torch.float32)
    _, (same, rows) = second_passes(x, y, 5)
    xm, ym, mu = x.to(F64).numpy(), y.numpy(), exact_means(x, y, 5)
    ref = np.array([((xm[ym == k] - mu[k]) ** 2).sum() for k in range(5)])
    np.testing.assert_allclose(same.m2.numpy(), ref, rtol=1e-6, atol=0)
    np.testing.assert_allclose(rows.m2.numpy(), ref, rtol=1e-6, atol=0)
    np.testing.assert_allclose(same.m2.numpy()[1:], rows.m2.numpy()[1:], rtol=1e-9)
    assert same.m2[0] == rows.m2[0] == 0.0  # exact collapse stays an exact zero
    np.testing.assert_allclose(same.q.numpy(), rows.q.numpy(), rtol=1e-7)  # float32 GEMMs of other widths


def _feats(N, D, K, noise, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, K, (N,), generator=g)
    mu = torch.randn(K, D, generator=g, dtype=F64)
    return (mu[y] + noise * torch.randn(N, D, generator=g, dtype=F64)).float(), y


def test_long_float32_sums_and_outlier_first_samples_stay_accurate():
    """Found by review: one float32 sum over 140,003 rows of D = 4 put 1.6e-6 into NC1, and a first sample
    100 away from a class of spread 1e-4 (the old reference) 1.4e-5 into the equiangularity; both now within
    1e-7 of the same features in float64."""
    x, y = _feats(140003, 4, 5, 1.0, 140003)
    assert nc_metrics(x, y)["nc1"] == pytest.approx(nc_metrics(x.double(), y)["nc1"], rel=2e-7, abs=0)
    x, y = _feats(60000, 64, 3, 1e-4, 1)
    for k in range(3):  # each class's first sample: a far outlier
        x[int((y == k).nonzero()[0])] += 100.0
    fast, ref = nc_metrics(x, y), nc_metrics(x.double(), y)
    for key in ("nc1", "equiangular_h", "equinorm_h"):
        assert fast[key] == pytest.approx(ref[key], rel=1e-7, abs=0), key


def test_spread_outside_the_means_subspace_redoes_the_second_pass_in_float64():
    """Found by review: within-class spread 1e4 times larger outside the class-mean subspace than inside made the
    float32 projections P^T t cancel (NC1 off by 1.2e-5). SecondPass.narrow_inexact flags it and nc_metrics
    redoes the second pass in float64; isotropic spread of many samples keeps the float32 pass."""
    from nclab.metrics import SecondPass

    g = torch.Generator().manual_seed(5)
    N, D, K = 6000, 32, 4
    Q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=F64))
    y = torch.arange(N) % K
    mu = torch.randn(K, 3, generator=g, dtype=F64)
    other = torch.randn(N, D - 3, generator=g, dtype=F64)
    for k in range(K):
        other[y == k] -= other[y == k].mean(0)
    x = (torch.cat([mu[y] + 1e-4 * torch.randn(N, 3, generator=g, dtype=F64), other], 1) @ Q.T).float()
    stats = first_pass(x, y, K)
    sp = SecondPass(stats, _same_data=True)
    sp._update(x, y)
    assert sp.narrow_inexact()
    assert nc_metrics(x, y)["nc1"] == pytest.approx(nc_metrics(x.double(), y)["nc1"], rel=1e-10, abs=0)
    iso, yi = features(N=20000, D=32, K=4, noise=0.1, seed=2)
    sp = SecondPass(first_pass(iso, yi, 4), _same_data=True)
    sp._update(iso, yi)
    assert not sp.narrow_inexact()
