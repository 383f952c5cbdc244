"""Input checks of nclab.metrics._checks and ClassStats' storage contract that mutation testing (issue 15) found
unpinned.

The exact one-line messages users read (argument names, the device's own reason), NCLAB_MEMORY_LIMIT's binary
suffixes, the label-size boundary max(2^16, 16 n) of check_labels, vectors given as (1, ..., n) arrays, and
ClassStats: int64 counts, statistics on the requested device, the scale boundary 2^+-300 (SAFE_EXP), exact
rescaling of earlier statistics when larger features arrive, all-zero batches, and the float64 batch copy.
References are float64 class loops written out here or hand-derived numbers.
"""

import numpy as np
import pytest
import torch
from slow_metrics import slow_stats

from nclab.metrics import ClassStats
from nclab.metrics import _checks as checks
from nclab.metrics import functional as fn
from nclab.metrics import stats as stats_mod


# ------------------------------------------------------------------------------------------ messages
def test_classstats_moments_message_names_the_argument():
    with pytest.raises(ValueError, match="^moments must be one of 'scatter', 'trace', 'none', got 'full'$"):
        ClassStats(3, moments="full")


def test_meta_device_is_refused_with_its_reason():
    # the reason is the first line of torch's (or our) exception, not its repr (currently shown in quotes)
    msg = "^device 'meta' is not usable here: '?meta tensors hold no numbers'?$"
    with pytest.raises(ValueError, match=msg):
        checks.check_device("meta")
    with pytest.raises(ValueError, match=msg):
        ClassStats(3, device="meta")


def test_fraction_must_be_below_one():
    means = np.eye(3)
    assert fn.collapsed_classes(means, rtol=0.999).tolist() == [False, False, False]
    for bad in (1.0, 1.5):
        with pytest.raises(ValueError, match=rf"^rtol must satisfy 0 <= rtol < 1, got {bad}$"):
            fn.collapsed_classes(means, rtol=bad)


def test_counts_must_be_a_vector_but_may_carry_unit_axes():
    rng = np.random.default_rng(0)
    means = rng.standard_normal((6, 2))
    counts = np.arange(1.0, 7.0)
    want = (counts[:, None] * means).sum(0) / counts.sum()
    got = fn.global_mean(means, counts.reshape(1, 1, 6))
    np.testing.assert_allclose(got, want, rtol=1e-14)
    with pytest.raises(ValueError, match=r"^counts must be a vector, got shape \(2, 3\)$"):
        fn.global_mean(means, counts.reshape(2, 3))


def test_global_mean_refuses_negative_counts_with_the_exact_message():
    with pytest.raises(ValueError, match="^counts must be non-negative with a positive sum$"):
        fn.global_mean(np.eye(2), [3.0, -1.0])


# ------------------------------------------------------------------------------------------ memory limit
@pytest.mark.parametrize("text, nbytes", [("512", 512), ("3K", 3 * 2**10), ("2M", 2 * 2**20), ("1.5G", 3 * 2**29),
                                          ("2T", 2 * 2**40), ("4TiB", 4 * 2**40), ("1tb", 2**40)])
def test_memory_limit_suffixes_are_binary(monkeypatch, text, nbytes):
    monkeypatch.setenv("NCLAB_MEMORY_LIMIT", text)
    assert checks.available_memory() == nbytes


# ------------------------------------------------------------------------------------------ labels
def test_largest_label_boundary_is_max_of_2_16_and_16_n():
    # n <= 4096: the bound is 2^16 classes, so label 2^16 - 1 is the largest accepted
    y, K = checks.check_labels(np.array([0, 2**16 - 1]), 2, None, "cpu")
    assert K == 2**16 and y.dtype == torch.int64
    with pytest.raises(ValueError, match="^largest label is 65536 for 2 samples: pass num_classes explicitly$"):
        checks.check_labels(np.array([0, 2**16]), 2, None, "cpu")
    # n = 8192: the bound is 16 n = 131072 classes
    n = 8192
    labels = np.zeros(n, dtype=np.int64)
    labels[-1] = 16 * n - 1
    assert checks.check_labels(labels, n, None, "cpu")[1] == 16 * n
    labels[-1] = 16 * n
    with pytest.raises(ValueError, match=f"^largest label is {16 * n} for {n} samples: pass num_classes explicitly$"):
        checks.check_labels(labels, n, None, "cpu")


# ------------------------------------------------------------------------------------------ ClassStats storage
def test_counts_are_int64_and_statistics_live_on_the_requested_device():
    with torch.device("meta"):  # a caller's default device must not move the statistics
        s = ClassStats(3, 2, device="cpu")
    assert s.device == torch.device("cpu")
    assert s.counts.dtype == torch.int64 and s.counts.device.type == "cpu"
    assert s.means.device.type == "cpu" and s.m2.device.type == "cpu" and s.scatter.device.type == "cpu"
    H = np.array([[1.0, 2.0], [3.0, 5.0], [-1.0, 0.5], [2.0, 2.0]])
    y = np.array([0, 0, 2, 2])
    s.update(H, y)
    counts, means, m2, S = slow_stats(H, y, 3)
    assert s.counts.dtype == torch.int64 and s.counts.tolist() == [2, 0, 2]
    np.testing.assert_allclose(s.means.numpy(), means, rtol=1e-15)
    np.testing.assert_allclose(s.scatter.numpy(), S, rtol=1e-15)
    lazy = ClassStats(3).update(H, y)
    assert lazy.counts.dtype == torch.int64 and lazy.counts.tolist() == [2, 0, 2]


def test_all_zero_batch_then_data_matches_the_class_loops():
    for moments in ("scatter", "trace"):
        s = ClassStats(2, moments=moments)
        s.update(np.zeros((3, 2)), np.array([0, 1, 1]))
        assert s.counts.tolist() == [1, 2] and not s.means.any()
        H = np.array([[1.0, -2.0], [0.5, 4.0], [3.0, 3.0]])
        s.update(H, np.array([0, 0, 1]))
        Hall = np.vstack([np.zeros((3, 2)), H])
        counts, means, m2, S = slow_stats(Hall, np.array([0, 1, 1, 0, 0, 1]), 2)
        np.testing.assert_allclose(s.means.numpy(), means, rtol=1e-15)
        np.testing.assert_allclose(s.m2.numpy(), m2, rtol=1e-14)


@pytest.mark.parametrize("top, scale", [(-300, 0), (-301, -301), (300, 0), (301, 301)])
def test_scale_exponent_boundary_is_2_to_the_plus_minus_300(top, scale):
    # the largest |feature| 0.75 * 2^top has frexp exponent `top`
    H = np.ldexp(np.array([[0.75, -0.5], [0.25, 0.5], [-0.625, 0.5]]), top)
    y = np.array([0, 1, 1])
    s = ClassStats(2).update(H, y)
    assert s.scale_exp == scale
    counts, means, m2, S = slow_stats(H, y, 2)
    np.testing.assert_array_equal(s.means.numpy(), means)  # dyadic data: exact at every scale


def test_larger_features_rescale_the_earlier_statistics_exactly():
    small = np.array([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]])
    big = np.ldexp(np.array([[1.0, 2.0], [3.0, 5.0]]), 400)
    for moments in ("scatter", "trace"):
        s = ClassStats(2, moments=moments)
        s.update(small, np.array([0, 0, 0]))  # class 0 only at scale 1
        s.update(big, np.array([1, 1]))  # class 1 up to 5 * 2^400: statistics stored divided by 2^scale_exp
        assert s.scale_exp == 403  # frexp exponent of 5 * 2^400
        counts, means, m2, S = slow_stats(np.vstack([small, big]), np.array([0, 0, 0, 1, 1]), 2)
        np.testing.assert_allclose(s.means.numpy(), means, rtol=1e-15)
        np.testing.assert_allclose(s.m2.numpy(), m2, rtol=1e-14)
        if moments == "scatter":
            np.testing.assert_allclose(s.scatter.numpy(), S, rtol=1e-14)


# ------------------------------------------------------------------------------------------ the float64 copy
def test_f64_copy_is_a_float64_copy_into_a_buffer_when_it_fits():
    x = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 3  # (3, 4): fewer rows than columns
    want = x.numpy().astype(np.float64)
    fresh = stats_mod._f64_copy(x, "cpu", None)
    assert fresh.dtype == torch.float64
    np.testing.assert_array_equal(fresh.numpy(), want)
    buf = torch.empty(3, 4, dtype=torch.float64)  # rows enough for x, fewer than its columns: reused
    got = stats_mod._f64_copy(x, "cpu", buf)
    assert got.data_ptr() == buf.data_ptr()
    np.testing.assert_array_equal(got.numpy(), want)
    short = torch.empty(2, 2, dtype=torch.float64)  # fewer rows than x (5, 2), as many as its columns: fresh copy
    got = stats_mod._f64_copy(torch.ones(5, 2), "cpu", short)
    assert got.dtype == torch.float64 and got.shape == (5, 2) and bool((got == 1).all())


# ------------------------------------------------------------------------------------------ long batches
def test_one_long_float64_batch_of_dyadic_features_gives_the_exact_scatter():
    # one batch is centred at its own class means at once (one GEMM): features in {0, 1} and classes of 2^16
    # samples make every deviation, product and sum exact, so the scatter equals the integer-arithmetic one;
    # B = 2^17 rows of D = 3 is longer than the GEMM-free passes' step (2^18 / D rows)
    rng = np.random.default_rng(1)
    B, D = 2**17, 3
    H = rng.integers(0, 2, (B, D)).astype(np.float64)
    y = np.repeat([0, 1], B // 2)
    s = ClassStats(2).update(H, y)
    Hi = H.astype(np.int64)
    want = np.zeros((D, D))
    for k in range(2):
        Xk = Hi[y == k]
        sk = Xk.sum(0)
        # X^T X - s s^T / n, with n = 2^16: an integer matrix minus an exact dyadic one
        want += (Xk.T @ Xk).astype(np.float64) - np.outer(sk, sk).astype(np.float64) / len(Xk)
    np.testing.assert_array_equal(s.scatter.numpy(), want)


def test_class_means_of_a_long_scaled_batch_are_one_exact_sum():
    # x is a batch given divided by 2^exp (as nc_metrics' layers pass it): without second moments the class sums
    # are accumulated over the whole batch and divided once, exact for dyadic features and counts 2^16
    rng = np.random.default_rng(2)
    B, D, e = 2**17, 3, 7
    H = rng.integers(-2**20, 2**20, (B, D)).astype(np.float64) / 1024
    y = rng.permutation(np.repeat([0, 1], B // 2))
    s = ClassStats(2, moments="none")
    s._update(torch.from_numpy(H), torch.from_numpy(y), None, e)
    want = np.ldexp(np.array([H[y == k].sum(0) for k in range(2)]) / (B // 2), e)
    np.testing.assert_array_equal(s.means.numpy(), want)
    assert s.counts.tolist() == [B // 2, B // 2]


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")  # deprecated in torch, still a user input
def test_as_tensor_reads_numbers_and_refuses_what_holds_none():
    """Numeric numpy arrays are read (long double as float64), strings refused, a quantized tensor refused by
    its kind."""
    from nclab.metrics._checks import as_tensor

    got = as_tensor(np.array([[1.5, -2.0]]), "H")
    assert got.dtype == torch.float64 and got.tolist() == [[1.5, -2.0]]
    ld = as_tensor(np.array([0.1, 2.0], dtype=np.longdouble), "H")
    assert ld.dtype == torch.float64 and ld.tolist() == [float(np.longdouble(0.1)), 2.0]
    with pytest.raises(ValueError, match=r"^H must be numeric, got dtype <U1$"):
        as_tensor(np.array(["a"]), "H")
    q = torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.quint8)
    with pytest.raises(ValueError, match=r"^H is a quantized tensor: pass one holding numbers$"):
        as_tensor(q, "H")
