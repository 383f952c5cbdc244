"""Behaviour of nclab.metrics.stats, functional and _checks that mutation testing (issue 15) found unpinned.

Streaming statistics against float64 class loops written out here (float32 features on both sides of
ONEHOT_MAX_K, under a float64 default dtype, merges across scales), the float32 GEMM path's "no float64 copy"
contract, SecondPass with a bias of K_eff entries and its memory estimate, the exact error messages users
read (argument names), and numpy floating-point flags: the functions return their documented values without
warnings or FloatingPointError whatever the caller's np.errstate.
"""

import numpy as np
import pytest
import torch
from slow_metrics import slow_stats

from nclab.metrics import ClassStats
from nclab.metrics import functional as fn
from nclab.metrics import stats as stats_mod


def data(K, D, n, seed, noise=0.3):
    """Features (n, D) float64 around K random means, labels (n,) with every class present."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((K, D)) + 2.0
    y = np.concatenate([np.arange(K), rng.integers(0, K, n - K)])
    return means[y] + noise * rng.standard_normal((n, D)), y


def assert_stats(s, H, y, K, rtol):
    counts, means, m2, S = slow_stats(H, y, K)
    np.testing.assert_array_equal(s.counts.numpy(), counts)
    np.testing.assert_allclose(s.means.numpy(), means, rtol=rtol, atol=rtol * np.abs(means).max())
    np.testing.assert_allclose(s.m2.numpy(), m2, rtol=rtol)
    np.testing.assert_allclose(s.scatter.numpy(), S, rtol=rtol, atol=rtol * np.abs(S).max())


# ------------------------------------------------------------------ first pass: float32 features
@pytest.mark.parametrize("K", [4, stats_mod.ONEHOT_MAX_K + 4])  # one-hot gather / index_select
def test_float32_features_match_the_class_loops_on_both_sides_of_the_onehot_limit(K):
    H, y = data(K, 5, 8 * K, seed=K)
    H32 = H.astype(np.float32)
    s = ClassStats(K).update(torch.from_numpy(H32[:4 * K]), y[:4 * K]).update(torch.from_numpy(H32[4 * K:]),
                                                                             y[4 * K:])
    assert_stats(s, H32, y, K, rtol=1e-5)  # sums of deviations and the scatter GEMM in float32


def test_float32_features_under_a_float64_default_dtype():
    """torch.set_default_dtype(torch.float64), common in scientific code, must not change the float32 path's
    dtypes (its one-hot matrix is float32 to multiply float32 features)."""
    H, y = data(3, 4, 30, seed=1)
    H32 = H.astype(np.float32)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        s = ClassStats(3).update(torch.from_numpy(H32), y)
    finally:
        torch.set_default_dtype(prev)
    assert_stats(s, H32, y, 3, rtol=1e-5)


def test_float32_features_make_no_float64_copy_of_the_batch(monkeypatch):
    """gemm_dtype=None on float32 features: the scatter GEMM in float32 on deviations, no float64 copy of the
    batch (issue 12) -- also for a batch whose deviations are all zero (one sample per class)."""
    copies = []
    f64_copy = stats_mod._f64_copy
    monkeypatch.setattr(stats_mod, "_f64_copy", lambda x, *a: copies.append(x.shape) or f64_copy(x, *a))
    H, y = data(3, 4, 30, seed=2)
    H32 = H.astype(np.float32)
    s = ClassStats(3).update(torch.from_numpy(H32[:3]), y[:3])  # classes 0, 1, 2 once: d = 0
    s.update(torch.from_numpy(H32[3:]), y[3:])
    assert copies == []
    assert_stats(s, H32, y, 3, rtol=1e-5)


def test_moments_none_refuses_nan_in_a_long_float32_batch_with_the_exact_message():
    """moments='none' sums long batches in cache-sized steps; a later float32 batch is not scanned, NaN is
    caught on the class sums with the same message as everywhere."""
    D = 4096
    B = stats_mod.SUB_ELEMS // D + 1  # more rows than one step
    x = torch.ones(B, D, dtype=torch.float32)
    y = np.arange(B) % 2
    s = ClassStats(2, moments="none").update(x, y)
    x[B - 1, 7] = float("nan")
    with pytest.raises(ValueError, match=r"^features contain NaN or inf$"):
        s.update(x, y)


# ------------------------------------------------------------------ merge
def test_merge_into_an_empty_accumulator_copies_the_other():
    H, y = data(3, 4, 30, seed=3)
    other = ClassStats(3).update(H, y)
    s = ClassStats(3).merge(other)  # no dim given: taken from the other
    assert s.dim == 4
    assert_stats(s, H, y, 3, rtol=1e-12)


def test_merge_leaves_the_other_statistics_unchanged():
    """Merging statistics of another scale (features near 2^400 here) rescales a copy of the other's tensors."""
    H, y = data(3, 4, 30, seed=4)
    huge, yh = data(3, 4, 30, seed=5)
    s = ClassStats(3).update(np.ldexp(huge, 400), yh)
    other = ClassStats(3).update(H, y)
    s.merge(other)
    assert_stats(other, H, y, 3, rtol=1e-12)


def test_merge_of_tiny_statistics_with_one_float32_batch_keeps_the_tiny_class_exact():
    """Class 0 seen only at 2^-400 (float64), class 1 in one float32 batch of order 1: after the merge the
    common scale follows the float32 batch's largest entry, and class 0's m2 (~2^-800) is still exact."""
    tiny, _ = data(2, 4, 20, seed=6, noise=0.01)
    tiny = np.ldexp(tiny, -400)
    s = ClassStats(2).update(tiny, np.zeros(20, dtype=np.int64))
    H32 = data(2, 4, 20, seed=7)[0].astype(np.float32)
    s.merge(ClassStats(2).update(torch.from_numpy(H32), np.ones(20, dtype=np.int64)))
    m2_tiny = slow_stats(np.ldexp(tiny, 400), np.zeros(20, dtype=np.int64), 2)[2][0]  # exact powers of two
    assert np.ldexp(s.m2[0].item(), 800) == pytest.approx(m2_tiny, rel=1e-12)  # approx's abs=1e-12 would hide it
    assert s.m2[1].item() == pytest.approx(slow_stats(H32, np.ones(20, dtype=np.int64), 2)[2][1], rel=1e-5)


# ------------------------------------------------------------------ SecondPass
def ncc_argmax_counts(H, y, kept, W, b):
    """[N, #(NCC != argmax), #(NCC right), #(argmax right)] by explicit loops over the kept classes."""
    means = np.stack([H[y == k].mean(0) for k in kept])
    ncc = kept[np.argmin(((H[:, None, :] - means[None]) ** 2).sum(2), 1)]
    am = kept[np.argmax(H @ W.T + b, 1)]
    return [len(y), int((ncc != am).sum()), int((ncc == y).sum()), int((am == y).sum())]


def test_second_pass_takes_a_bias_of_k_eff_entries():
    """Class 1 has no samples: a bias of K_eff = 2 entries is the kept classes' bias, as is a bias of K = 3
    entries with any value for the dropped class."""
    H, y2 = data(2, 3, 60, seed=8, noise=1.5)
    y = np.where(y2 == 1, 2, 0)
    rng = np.random.default_rng(9)
    W = rng.standard_normal((3, 3))
    b_eff = np.array([0.0, 2.5])  # large enough to move some argmaxes
    kept = np.array([0, 2])
    want = ncc_argmax_counts(H, y, kept, W[kept], b_eff)
    s = ClassStats(3).update(H, y)
    for b in (b_eff, np.array([0.0, 99.0, 2.5])):
        sp = s.second_pass(W, b)
        sp.update(H, y)
        assert sp.n4.tolist() == want
    assert want[1] > 0  # the bias matters


def test_second_pass_refuses_nan_features_with_the_exact_message():
    H, y = data(3, 4, 30, seed=10)
    s = ClassStats(3).update(H, y)
    bad = H.copy()
    bad[5, 1] = np.nan
    for x in (bad, bad.astype(np.float32)):  # float64 steps / float32 products
        with pytest.raises(ValueError, match=r"^features contain NaN or inf$"):
            s.second_pass().update(x, y)


def test_second_pass_global_mean_message_names_the_argument():
    H, y = data(3, 4, 30, seed=11)
    with pytest.raises(ValueError, match=r"^global_mean must be one of 'weighted', 'uniform', got 'median'$"):
        ClassStats(3).update(H, y).second_pass(global_mean="median")


def test_second_pass_memory_estimate_counts_means_classifier_and_its_right_hand_side(monkeypatch):
    """With a classifier the second pass reserves 8 (5 K_eff D + 2 K_eff 2^20 / D) bytes (the means, the
    classifier, its (D, 2 K_eff) right-hand side with the projector, and a chunk's logits): accepted at exactly
    that limit, refused one byte below."""
    Ke, D = 2, 64
    H, y = data(Ke, D, 20, seed=12)
    s = ClassStats(Ke).update(H, y)
    need = 8 * (5 * Ke * D + 2 * Ke * (1 << 20) // D)  # 529,408 bytes
    monkeypatch.setenv("NCLAB_MEMORY_LIMIT", str(need))
    s.second_pass(np.ones((Ke, D)))
    monkeypatch.setenv("NCLAB_MEMORY_LIMIT", str(need - 1))
    with pytest.raises(ValueError, match=r"^the second pass over 2 classes of dimension 64 would need 517 KB"):
        s.second_pass(np.ones((Ke, D)))


def test_memory_refusal_names_terabytes(monkeypatch):
    """A 2^20 x 2^20 float64 scatter is 8 TB: the refusal says so in the usual units."""
    monkeypatch.setenv("NCLAB_MEMORY_LIMIT", "1G")
    with pytest.raises(ValueError, match=r"would need 8 TB, more than the 1 GB of memory available$"):
        ClassStats(2, dim=1 << 20)


# ------------------------------------------------------------------ functional: messages and values
def test_class_vector_functions_name_their_arguments():
    one = np.ones((1, 3))
    with pytest.raises(ValueError, match=r"^vectors must have at least 2 row\(s\)"):
        fn.gram_distance(one, np.ones((1, 1)), center=False)  # an explicit 1 x 1 target would be accepted
    with pytest.raises(ValueError, match=r"^vectors must have at least 2 row\(s\)"):
        fn.equiangularity(one)
    with pytest.raises(ValueError, match=r"^weights must have at least 2 row\(s\)"):
        fn.nc3(one, one)
    with pytest.raises(ValueError, match=r"^W has 2 rows, expected 3"):
        fn.collapsed_classes(np.eye(3), np.ones((2, 3)))
    p = np.eye(2)
    p[0, 1] = np.nan
    with pytest.raises(ValueError, match=r"^projector contains NaN or inf$"):
        fn.nc1_from_scatter(np.eye(2), p, 3)


def test_collapsed_classes_threshold_is_relative_to_the_largest_norm():
    """||mu_k|| <= rtol max_l ||mu_l||: norms 4, 0.005, 0.003 with rtol 1e-3 -> threshold 0.004."""
    means = np.array([[4.0, 0.0], [0.0, 0.005], [0.003, 0.0]])
    assert fn.collapsed_classes(means, rtol=1e-3).tolist() == [False, False, True]


def test_functions_ignore_the_callers_floating_point_traps():
    """Under np.errstate(all='raise') the documented values come back: NaN equinorm of zero vectors, an
    infinite CDNV (variances 1 around means 2^-1000 apart: (1 + 1) / (2 2^-2000) overflows), and NC1 whose
    value tr(P^T S P) / N = 2 2^-1070 / 3 is subnormal."""
    tiny_s = np.ldexp(np.eye(2), -1070)
    with np.errstate(all="raise"):
        eq = fn.equinorm(np.zeros((3, 2)))
        cd, _ = fn.cdnv(np.array([[0.0], [np.ldexp(1.0, -1000)]]), np.ones(2))
        nc1 = fn.nc1_from_scatter(tiny_s, np.eye(2), 3)
    assert np.isnan(eq)
    assert cd == np.inf
    assert nc1 == np.ldexp(1 / 3, -1069)


def test_global_mean_messages_name_the_option_and_the_counts():
    means = np.eye(3)
    with pytest.raises(ValueError, match=r"^global_mean must be one of "):
        fn.global_mean(means, [1, 2, 3], "median")
    with pytest.raises(ValueError, match=r"^counts "):
        fn.global_mean(means, [1, 2], "weighted")
