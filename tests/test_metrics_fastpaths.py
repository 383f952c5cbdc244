"""Fast paths of nclab.metrics (issue 12) against slow float64 references written out here.

Few classes use one-hot GEMMs for per-class sums and centring, many classes (> ONEHOT_MAX_K) index_add_;
nc_metrics works in cache-sized steps; gemm_dtype=None runs the scatter GEMM in float32 on deviations from
float64 references and falls back to float64 when float32 squares would overflow or lose precision.
"""

import numpy as np
import pytest
import torch
from slow_metrics import slow_stats

from nclab.metrics import ClassStats, nc_metrics
from nclab.metrics import stats as stats_mod


def collapsed_float32(K: int, D: int, per_class: int, seed: int):
    """Labels (shuffled, per_class each) and float32 features: class means of norm ~1 plus noise 1e-5."""
    rng = np.random.default_rng(seed)
    mu = rng.standard_normal((K, D)) / np.sqrt(D)
    y = rng.permutation(np.repeat(np.arange(K), per_class))
    return y, (mu[y] + 1e-5 * rng.standard_normal((len(y), D))).astype(np.float32)


def slow_nc(H, y, W=None, b=None):
    """NC1 = tr(Sigma_W Sigma_B^+)/K (pinv), nc1_trace, and NC4 / accuracies by explicit argmin/argmax."""
    H = np.asarray(H, dtype=np.float64)
    kept = np.unique(y)
    K = len(kept)
    n, means, m2, S = slow_stats(H, y, int(y.max()) + 1)
    n, means, m2 = n[kept], means[kept], m2[kept]
    mu_g = (n / n.sum()) @ means
    Mc = means - mu_g
    Sb = Mc.T @ Mc / K
    out = {"nc1": np.trace(S / len(y) @ np.linalg.pinv(Sb, rcond=1e-10)) / K,
           "nc1_trace": (m2.sum() / len(y)) / np.trace(Sb)}
    if W is not None:
        ncc = kept[np.argmin(((H[:, None, :] - means[None]) ** 2).sum(2), 1)]
        am = kept[np.argmax(H @ W[kept].T + b[kept], 1)]
        out.update(nc4=np.mean(ncc != am), accuracy=np.mean(am == y), ncc_accuracy=np.mean(ncc == y))
    return out


def data(K, D, n, rng, noise=0.3, offset=2.0):
    means = rng.standard_normal((K, D)) + offset
    y = rng.integers(0, K, n)
    return means[y] + noise * rng.standard_normal((n, D)), y


@pytest.mark.parametrize("K", [5, stats_mod.ONEHOT_MAX_K + 6])  # one-hot GEMMs / index_add_
@pytest.mark.parametrize("moments", ["scatter", "trace", "none"])
def test_streamed_statistics_equal_the_class_loops(K, moments, monkeypatch):
    monkeypatch.setattr(stats_mod, "SUB_ELEMS", 1024)  # small cache-sized steps: several per batch
    rng = np.random.default_rng(K)
    D = 12
    H, y = data(K, D, 40 * K, rng)
    y[y == 3] = 2  # an empty class
    # batches larger than one cache-sized step, so the none/trace paths take several steps per update
    step = stats_mod.SUB_ELEMS // D
    s = ClassStats(K, moments=moments)
    for lo in range(0, len(y), step + 7):
        s.update(H[lo:lo + step + 7], y[lo:lo + step + 7])
    counts, means, m2, S = slow_stats(H, y, K)
    np.testing.assert_array_equal(s.counts.numpy(), counts)
    np.testing.assert_allclose(s.means.numpy(), means, rtol=1e-13, atol=1e-13)
    if moments != "none":
        np.testing.assert_allclose(s.m2.numpy(), m2, rtol=1e-11)
    if moments == "scatter":
        np.testing.assert_allclose(s.scatter.numpy(), S, rtol=1e-10, atol=1e-11 * np.abs(S).max())


@pytest.mark.parametrize("K", [6, stats_mod.ONEHOT_MAX_K + 4])  # one GEMM + K x K table / raw-row logits
def test_nc_metrics_in_several_steps_match_the_slow_reference(K, monkeypatch):
    monkeypatch.setattr(stats_mod, "SUB_ELEMS", 1024)  # small cache-sized steps: several per batch
    rng = np.random.default_rng(1)
    D = 16
    step = stats_mod.SUB_ELEMS // D
    H, _ = data(K, D, 5 * step + 23, rng, noise=1.0)  # several steps in one chunk of nc_metrics
    y = rng.permutation(np.arange(len(H)) % K)  # every class present (K_eff = K)
    H = H + 3 * rng.standard_normal((K, D))[y]
    W, b = rng.standard_normal((K, D)), rng.standard_normal(K)
    ref = slow_nc(H, y, W, b)
    m = nc_metrics(torch.from_numpy(H), y, W, b, num_classes=K)
    for k, v in ref.items():
        assert m[k] == pytest.approx(v, rel=1e-9, abs=1e-15), k
    assert sum(m.per_class["nc1"]) == pytest.approx(ref["nc1"], rel=1e-9)


def test_second_pass_float32_features_keep_the_collapsed_regime():
    """nc_metrics on float32 features with noise 1e-5 (centring in float64 after the one-hot gather)."""
    K, D = 8, 256
    y, H32 = collapsed_float32(K, D, 300, seed=2)
    ref = slow_nc(H32, y)
    m = nc_metrics(torch.from_numpy(H32), y)
    assert m["nc1"] == pytest.approx(ref["nc1"], rel=1e-6)
    assert m["nc1_trace"] == pytest.approx(ref["nc1_trace"], rel=1e-6)


@pytest.mark.parametrize("scale", [1e-30, 1e25])
def test_float32_gemm_falls_back_where_squares_leave_float32(scale):
    """Deviations whose squares underflow (1e-30: 1e-60) or overflow (1e25: 1e50) float32 go to the float64
    path: the statistics equal the class loops (a float32 GEMM would give zeros or inf)."""
    rng = np.random.default_rng(3)
    H, y = data(4, 6, 400, rng)
    H32 = (H * scale).astype(np.float32)
    s = ClassStats(4, gemm_dtype=None)
    for lo in range(0, len(y), 100):
        s.update(torch.from_numpy(H32[lo:lo + 100]), y[lo:lo + 100])
    _, means, m2, S = slow_stats(H32, y, 4)
    np.testing.assert_allclose(s.means.numpy(), means, rtol=1e-12)
    np.testing.assert_allclose(s.m2.numpy(), m2, rtol=1e-10)
    np.testing.assert_allclose(s.scatter.numpy(), S, rtol=1e-9, atol=1e-10 * np.abs(S).max())


def test_float32_gemm_rejects_nan_after_the_first_batch():
    """Later float32 batches are not scanned for their exponent: NaN must still be refused."""
    rng = np.random.default_rng(4)
    H, y = data(3, 5, 60, rng)
    H32 = torch.from_numpy(H.astype(np.float32))
    for gemm in (None, torch.float64):
        s = ClassStats(3, gemm_dtype=gemm).update(H32[:30], y[:30])
        bad = H32[30:].clone()
        bad[4, 2] = float("nan")
        with pytest.raises(ValueError, match="NaN or inf"):
            s.update(bad, y[30:])
    s = ClassStats(3, moments="none").update(H32[:30], y[:30])
    bad[4, 2] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        s.update(bad, y[30:])


def test_reduced_matmul_precision_is_overridden_and_restored(monkeypatch):
    """With torch.set_float32_matmul_precision('medium') (TF32 / bfloat16 matmuls allowed on GPUs and some
    CPUs) the float32 path's shift and its one-hot class sums run at 'highest' precision (an inexact product
    would break the collapsed regime); the user's setting is restored afterwards, and NC1 stays within 1e-6 of
    float64."""
    from nclab.metrics import stats as st

    K, D = 6, 64
    y, H32 = collapsed_float32(K, D, 200, seed=5)
    ref = slow_nc(H32, y)
    seen = []

    def spy(fn):
        def call(*args, **kw):
            if args[0].dtype == torch.float32:  # float64 products ignore the setting
                seen.append((fn.__name__, torch.get_float32_matmul_precision()))
            return fn(*args, **kw)
        return call

    monkeypatch.setattr(st, "_minus_rows", spy(st._minus_rows))
    monkeypatch.setattr(st, "_by_class", spy(st._by_class))
    prev = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        s = ClassStats(K, gemm_dtype=None)
        for lo in range(0, len(y), 250):
            s.update(torch.from_numpy(H32[lo:lo + 250]), y[lo:lo + 250])
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(prev)
    assert [n for n, _ in seen].count("_minus_rows") == 5  # one shift per update
    assert {p for _, p in seen} == {"highest"}
    assert s.compute()["nc1"] == pytest.approx(ref["nc1"], rel=1e-6)


def test_collapsed_regime_at_d_2048_every_path():
    """D = 2048, float32 features with noise 1e-5 around means of norm ~1: the default stream, the float32 GEMM
    stream (batches of 200) and nc_metrics give NC1 within 1e-6 of a float64 reference (class loops, NC1 from
    the SVD of the centred means: tr(Sigma_W Sigma_B^+)/K = sum_i v_i^T Sigma_W v_i / s_i^2)."""
    K, D, n = 10, 2048, 40
    y, H32 = collapsed_float32(K, D, n, seed=6)
    counts, means, _, S = slow_stats(H32, y, K)
    _, s, vt = np.linalg.svd(means - (counts / counts.sum()) @ means, full_matrices=False)
    v = vt[: K - 1]
    ref = float(np.einsum("id,de,ie->i", v, S / (K * n), v) @ (1 / s[: K - 1] ** 2))
    for gemm in (torch.float64, None):
        st = ClassStats(K, D, gemm_dtype=gemm)
        for lo in range(0, K * n, 200):
            st.update(torch.from_numpy(H32[lo:lo + 200]), y[lo:lo + 200])
        assert st.compute()["nc1"] == pytest.approx(ref, rel=1e-6), gemm
    assert nc_metrics(torch.from_numpy(H32), y)["nc1"] == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize("K", [4, stats_mod.ONEHOT_MAX_K + 2])
def test_steps_of_huge_and_tiny_features_are_rescaled_before_summing(K, monkeypatch):
    """nc_metrics over several steps of float64 features near 2^1021 (class sums of the raw entries would
    overflow) and near 2^-1000: the same NC1 as the unit-scale features (NC1 is scale-invariant)."""
    monkeypatch.setattr(stats_mod, "SUB_ELEMS", 256)
    rng = np.random.default_rng(7)
    H, _ = data(K, 8, 40 * K, rng)
    y = rng.permutation(np.arange(len(H)) % K)
    H = H + 3 * rng.standard_normal((K, 8))[y]
    ref = slow_nc(H, y)
    for e in (1018, -1000):
        m = nc_metrics(np.ldexp(H, e), y)
        for k, v in ref.items():
            assert m[k] == pytest.approx(v, rel=1e-9), (e, k)


# ---------------------------------------------------------------- nc_metrics' float32 second pass (issue 12)
def _spy_narrow(monkeypatch) -> list:
    """Counts the rows that SecondPass._narrow (the float32 second pass) handles."""
    rows, narrow = [], stats_mod.SecondPass._narrow

    def spy(self, x, *args):
        rows.append(x.shape[0])
        return narrow(self, x, *args)

    monkeypatch.setattr(stats_mod.SecondPass, "_narrow", spy)
    return rows


@pytest.mark.parametrize("K", [6, stats_mod.ONEHOT_MAX_K])  # 16: r + 3 K = 63 columns, two float32 GEMMs
@pytest.mark.parametrize("regime", ["collapsed", "noisy"])
def test_float32_second_pass_matches_the_slow_reference(K, regime, monkeypatch):
    """Float32 features: nc_metrics' default second pass (float32 products on rows centred at the float32-
    rounded means, float64 corrections) agrees with class loops in float64 -- NC1, per-class NC1, nc1_trace,
    and the NC4 / accuracy counts exactly -- in several cache-sized steps; gemm_dtype=torch.float64 skips it."""
    monkeypatch.setattr(stats_mod, "SUB_ELEMS", 2048)
    rows = _spy_narrow(monkeypatch)
    rng = np.random.default_rng(K)
    D = 24
    y = rng.permutation(np.arange(40 * K) % K)
    mu = rng.standard_normal((K, D)) + 1.5
    H32 = (mu[y] + (1e-5 if regime == "collapsed" else 0.8) * rng.standard_normal((len(y), D))).astype(np.float32)
    W, b = rng.standard_normal((K, D)), rng.standard_normal(K)
    ref = slow_nc(H32, y, W, b)
    counts, means, m2, _ = slow_stats(H32, y, K)
    m = nc_metrics(torch.from_numpy(H32), y, W, b)
    assert sum(rows) == len(y)
    for k in ("nc1", "nc1_trace"):
        assert m[k] == pytest.approx(ref[k], rel=1e-6, abs=0), k
    for k in ("nc4", "accuracy", "ncc_accuracy"):
        assert m[k] == ref[k], k
    # per-class NC1 = q_k / N with q_k = sum_{i in k} ||P^T (h_i - mu_k)||^2: the class loops' share of S
    mu_g = (counts / counts.sum()) @ means
    Sb = (means - mu_g).T @ (means - mu_g) / K
    pinv = np.linalg.pinv(Sb, rcond=1e-10)
    per = [np.trace((H32[y == k] - means[k]).T @ (H32[y == k] - means[k]) @ pinv) / (K * len(y)) for k in range(K)]
    np.testing.assert_allclose(m.per_class["nc1"], per, rtol=1e-6)
    rows.clear()
    exact = nc_metrics(torch.from_numpy(H32), y, W, b, gemm_dtype=torch.float64)
    assert rows == [] and exact["nc1"] == pytest.approx(ref["nc1"], rel=1e-9, abs=0)


def test_float32_second_pass_corrects_means_between_float32_numbers():
    """Each class takes two adjacent float32 values per entry: its float64 mean lies halfway, so the float32-
    rounded centre is off by half an ulp, as large as the deviations themselves. Without the float64 correction
    (||x - mu||^2 = ||t||^2 - 2 t.delta + ||delta||^2) m2 would come out twice the true (ulp/2)^2 per entry."""
    rng = np.random.default_rng(11)
    K, D, n = 3, 8, 50
    lo = (rng.standard_normal((K, D)) + 2).astype(np.float32)
    hi = np.nextafter(lo, np.float32(np.inf))
    y = np.arange(2 * n * K) % K
    H32 = np.where((np.arange(len(y)) // K % 2 == 0)[:, None], lo[y], hi[y])  # n of each value per class
    _, _, m2, _ = slow_stats(H32, y, K)
    np.testing.assert_allclose(m2, (2 * n) * ((hi.astype(np.float64) - lo) / 2) ** 2 @ np.ones(D), rtol=1e-12)
    ref = slow_nc(H32, y)
    m = nc_metrics(torch.from_numpy(H32), y)
    assert m["nc1_trace"] == pytest.approx(ref["nc1_trace"], rel=1e-6, abs=0)
    assert m["nc1"] == pytest.approx(ref["nc1"], rel=1e-6, abs=0)


def test_float32_second_pass_exact_collapse_is_exactly_zero():
    """Rows equal to their class mean in float32: every deviation is 0, so NC1 and nc1_trace are 0.0 exactly."""
    rng = np.random.default_rng(12)
    mu = rng.standard_normal((4, 10)).astype(np.float32)
    y = rng.permutation(np.arange(200) % 4)
    m = nc_metrics(torch.from_numpy(mu[y]), y, rng.standard_normal((4, 10)))
    assert m["nc1"] == 0.0 and m["nc1_trace"] == 0.0 and m["ncc_accuracy"] == 1.0


@pytest.mark.parametrize("spread", [1e-30, 1e25])
def test_float32_second_pass_redoes_rows_whose_squares_leave_float32(spread, monkeypatch):
    """Class 0's rows are scaled by 1e-30 (its deviations' squares, 1e-60, underflow float32) or 1e25 (they
    overflow); the other classes' are of order 1. Those rows are redone in float64: class 0's own NC1 share
    matches the class loops (a float32 square would give 0 or inf) and so do the totals."""
    rows = _spy_narrow(monkeypatch)
    rng = np.random.default_rng(13)
    K, D = 4, 6
    y = rng.permutation(np.arange(400) % K)
    H = 3 * rng.standard_normal((K, D))[y] + rng.standard_normal((len(y), D))
    H[y == 0] *= spread
    H32 = H.astype(np.float32)
    W, b = rng.standard_normal((K, D)), rng.standard_normal(K)
    counts, means, m2, _ = slow_stats(H32, y, K)
    m = nc_metrics(torch.from_numpy(H32), y, W, b)
    assert sum(rows) == len(y)
    ref = slow_nc(H32, y, W, b)
    for k in ("nc4", "accuracy", "ncc_accuracy"):  # the redone rows' logits and NCC terms as well
        assert m[k] == ref[k], k
    assert m["nc1_trace"] == pytest.approx(ref["nc1_trace"], rel=1e-6, abs=0)
    assert m["nc1"] == pytest.approx(ref["nc1"], rel=1e-6, abs=0)
    mu_g = (counts / counts.sum()) @ means
    pinv = np.linalg.pinv((means - mu_g).T @ (means - mu_g) / K, rcond=1e-10)
    d0 = H32[y == 0] - means[0]
    assert m.per_class["nc1"][0] == pytest.approx(np.trace(d0.T @ d0 @ pinv) / (K * len(y)), rel=1e-6, abs=0)
    assert m.per_class["nc1"][0] > 0


def test_float32_second_pass_streamed_in_batches(monkeypatch):
    """The public SecondPass over float16 batches (converted to float32 products) equals the class loops."""
    rows = _spy_narrow(monkeypatch)
    rng = np.random.default_rng(14)
    K, D = 5, 12
    H, y = data(K, D, 300, rng, noise=0.5, offset=1.0)
    H16 = torch.from_numpy(H).to(torch.float16)
    W, b = rng.standard_normal((K, D)), rng.standard_normal(K)
    s = ClassStats(K, moments="none")
    for lo in range(0, len(y), 64):
        s.update(H16[lo:lo + 64], y[lo:lo + 64])
    second = s.second_pass(W, b)
    for lo in range(0, len(y), 64):
        second.update(H16[lo:lo + 64], y[lo:lo + 64])
    m = s.compute(W, b, second=second)
    ref = slow_nc(H16.double().numpy(), y, W, b)
    assert sum(rows) == len(y)
    assert m["nc1"] == pytest.approx(ref["nc1"], rel=1e-6, abs=0)
    assert m["nc4"] == ref["nc4"] and m["accuracy"] == ref["accuracy"]


def test_nc_metrics_gemm_dtype_is_checked():
    H, y = data(3, 4, 30, np.random.default_rng(15))
    with pytest.raises(TypeError, match="gemm_dtype must be a torch dtype"):
        nc_metrics(H, y, gemm_dtype="float64")
    with pytest.raises(ValueError, match="gemm_dtype must be torch.float64 or torch.float32"):
        nc_metrics(H, y, gemm_dtype=torch.int32)


def test_float32_second_pass_nearest_centres_where_the_projector_drops_a_direction(monkeypatch):
    """Classes 1 and 2 differ only by 2e-7 along e_2, below rtol of the means' spread, so the NC1 projector
    drops e_2; samples straddle the midpoint along e_2, so nearest-class-centre decisions depend on it. The
    float32 second pass must still decide as the class loops do (it reads x.mu_j from GEMM columns here: with a
    full-rank projector it may take them from P's projections instead)."""
    rows = _spy_narrow(monkeypatch)
    rng = np.random.default_rng(16)
    means = np.array([[1.0, 0, 0, 0], [-1.0, 0, 0, 0], [-1.0, 2e-7, 0, 0]])
    y = np.repeat(np.arange(3), 60)
    noise = rng.standard_normal((len(y), 4)) * np.array([1e-9, 2e-7, 1e-9, 1e-9])
    H32 = (means[y] + noise).astype(np.float32)
    W, b = rng.standard_normal((3, 4)), rng.standard_normal(3)
    ref = slow_nc(H32, y, W, b)
    assert 0.5 < ref["ncc_accuracy"] < 0.95  # the e_2 decisions matter
    m = nc_metrics(torch.from_numpy(H32), y, W, b)
    assert sum(rows) == len(y) and m.info["rank"] == 1
    for k in ("nc4", "accuracy", "ncc_accuracy"):
        assert m[k] == ref[k], k


@pytest.mark.parametrize("dtype", [np.float32, np.float64])  # _narrow's tables / the float64 second pass
@pytest.mark.parametrize("K", [4, stats_mod.ONEHOT_MAX_K + 3])  # few classes / many (no K x K table)
def test_tied_logits_take_the_first_class_as_argmax_does(dtype, K):
    """W with two equal rows and equal biases ties every sample's logits of classes 1 and 2 exactly: the
    classifier's prediction is the first of them (numpy's and torch's argmax), for every route of NC4."""
    rng = np.random.default_rng(21)
    D = 24
    y = rng.permutation(np.arange(40 * K) % K)
    H = (3 * rng.standard_normal((K, D))[y] + 0.5 * rng.standard_normal((len(y), D))).astype(dtype)
    W = np.zeros((K, D))
    W[1] = W[2] = 1.0  # logits 1 and 2 equal for every sample, the others 0: a tie whenever sum(h) > 0
    b = np.zeros(K)
    m = nc_metrics(torch.from_numpy(H), y, W, b)
    ref = slow_nc(H, y, W, b)
    assert 0 < ref["accuracy"] < 1
    for k in ("nc4", "accuracy", "ncc_accuracy"):
        assert m[k] == ref[k], k
