"""compute_metrics as a user sees it (issue 15, mutation survivors of report._check_options/compute_metrics).

Covers: option errors that name the argument, the empty-class warning pointing at the caller, the memory
estimates (pinned by NCLAB_MEMORY_LIMIT set exactly at the hand-computed figure), the exact `reasons` texts,
per-class outputs and info in the features' units (features beyond 2^300 are stored rescaled), nc3_dual with
explicit and structured scales (numpy float64 from the definition), and unc3/nc3_dual with a zero classifier.
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
import pytest
import torch

from nclab.metrics import ClassStats, compute_metrics

K, D = 3, 4


def _data(k=K, d=D, per=5, seed=0, empty=()):
    """Features (N, d) float64 with well separated class means, labels (N,) skipping the `empty` classes."""
    rng = np.random.default_rng(seed)
    labels = np.array([c for c in range(k) if c not in empty for _ in range(per)])
    centres = rng.normal(size=(k, d)) * 3.0
    x = centres[labels] + rng.normal(size=(labels.size, d))
    return x, labels


def _stats(x, y, k=K, moments="trace"):
    return ClassStats(k, moments=moments).update(torch.as_tensor(x), torch.as_tensor(y))


def _centred_means(x, y, kept):
    """(K_eff, D) mu_k - mu_G with the weighted (sample) global mean, float64."""
    means = np.stack([x[y == c].mean(axis=0) for c in kept])
    return means - x.mean(axis=0)


def _fro_distance(a, b):
    return float(np.linalg.norm(a / np.linalg.norm(a) - b / np.linalg.norm(b)))


# option errors name the argument


def test_option_errors_name_the_argument_and_say_what_is_wrong():
    x, y = _data()
    stats = _stats(x, y)
    W = np.random.default_rng(1).normal(size=(K, D))
    with pytest.raises(ValueError, match=r"^global_mean must be one of 'weighted', 'uniform', got 'median'$"):
        compute_metrics(stats, global_mean="median")
    with pytest.raises(TypeError, match=r"^center must be True, False or None, got 'yes'$"):
        compute_metrics(stats, center="yes")
    other = _stats(x, y)
    foreign = r"^second must be a SecondPass of these stats \(stats\.second_pass\(\.\.\.\)\)$"
    with pytest.raises(ValueError, match=foreign):
        compute_metrics(stats, second=other.second_pass())
    with pytest.raises(ValueError, match=r"^bias has 4 entries, expected 3$"):
        compute_metrics(stats, W, np.zeros(K + 1))


def test_empty_class_warning_points_at_the_caller():
    x, y = _data(k=4, empty=(3,))
    stats = _stats(x, y, k=4)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        compute_metrics(stats)
    msgs = [w for w in rec if "without samples" in str(w.message)]
    assert len(msgs) == 1 and str(msgs[0].message).endswith("metrics use K_eff = 3")
    # stacklevel 2: the line that called compute_metrics (under mutmut a trampoline frame sits in between)
    if "MUTANT_UNDER_TEST" not in os.environ:
        assert msgs[0].filename == __file__


# memory estimates: refused exactly above the documented figure


def test_pairwise_memory_estimate_is_refused_exactly_above_its_formula(monkeypatch):
    x, y = _data()
    stats = _stats(x, y)
    tile = 3
    # 8 (BLOCKS tile^2 + 4 min(max(tile, 4D), K + min(K, D)) D [+ 4 D^2 where K > D] + 16 K_eff) bytes, BLOCKS = 6
    need = 8 * (6 * tile * tile + 4 * min(max(tile, 4 * D), K + min(K, D)) * D + (4 * D * D if K > D else 0)
                + 16 * K)
    monkeypatch.setenv("NCLAB_MEMORY_LIMIT", str(need))
    compute_metrics(stats, tile=tile)  # exactly enough
    monkeypatch.setenv("NCLAB_MEMORY_LIMIT", str(need - 1))
    with pytest.raises(ValueError, match=r"^the pairwise metrics of 3 classes \(tiles of 3 x 3\) would need"):
        compute_metrics(stats, tile=tile)


class _DenseScale:
    """A structured nc3_scale (as nclab.theory's TiledGram offers): shape and apply(H) = S @ H."""

    def __init__(self, s):
        self.s, self.shape = s, s.shape

    def apply(self, h):
        return self.s @ h


def test_nc3_dual_memory_estimate_is_three_k_by_d_matrices(monkeypatch):
    # K_eff D large enough that 24 K D bytes exceed the pairwise estimate at tile 10 (46,400 bytes)
    k, d, tile = 200, 10, 10
    x, y = _data(k=k, d=d, per=2)
    stats = _stats(x, y, k=k, moments="none")
    rng = np.random.default_rng(2)
    W, S = rng.normal(size=(k, d)), rng.normal(size=(k, k))
    need = 8 * 3 * k * d
    assert need > 8 * (6 * tile * tile + 4 * max(tile, 4 * d) * d + 4 * d * d + 16 * k)
    for scale, kind in ((S, "explicit"), (_DenseScale(S), "structured")):
        monkeypatch.setenv("NCLAB_MEMORY_LIMIT", str(need))
        compute_metrics(stats, W, nc3_scale=scale, tile=tile)
        monkeypatch.setenv("NCLAB_MEMORY_LIMIT", str(need - 1))
        with pytest.raises(ValueError, match=rf"^nc3_dual with an? {kind} 200 x 200 scale would need"):
            compute_metrics(stats, W, nc3_scale=scale, tile=tile)


# reasons: exact keys and texts


def test_reasons_say_why_under_their_metric_names():
    x, y = _data()
    m = compute_metrics(_stats(x, y, moments="scatter"))
    assert m.reasons["nc1_per_class"] == "per-class NC1 needs a second pass"

    same = np.array([[1.0, 0], [-1, 0], [0, 1], [0, -1], [2, 0], [-2, 0]])  # every class mean is 0
    m = compute_metrics(_stats(same, np.array([0, 0, 1, 1, 2, 2]), k=3), target="etf")
    assert m.reasons["nc1_trace"] == "all class means are equal (tr Sigma_B = 0)"

    x, y = _data(k=4, d=2)  # K = 4 > D + 1 = 3: no simplex ETF in the plane
    W = np.random.default_rng(3).normal(size=(4, 2))
    m = compute_metrics(_stats(x, y, k=4), W, target="etf")
    assert m.reasons["nc3"].startswith("K = 4 > D + 1 = 3: a simplex ETF cannot exist in D dimensions")

    x, y = _data()
    W = np.random.default_rng(4).normal(size=(K, D))
    W[1] = 0.0
    m = compute_metrics(_stats(x, y), W, target="etf")
    assert m.reasons["unc3"] == "over the 2 classes with nonzero w_k and mu_k - mu_G (of 3)"
    assert math.isnan(m.per_class["unc3"][1])


# per-class outputs and info in the features' units


def test_per_class_norms_and_traces_are_in_the_features_units():
    x, y = _data()
    big = np.ldexp(x, 400)  # beyond 2^300: the statistics store x / 2^400, squares would be 2^800
    W = np.random.default_rng(5).normal(size=(K, D))
    m = compute_metrics(_stats(big, y), W, target="etf")
    c = _centred_means(x, y, range(K))
    np.testing.assert_allclose(m.per_class["mean_norm"], np.ldexp(np.linalg.norm(c, axis=1), 400), rtol=1e-12)
    np.testing.assert_allclose(m.per_class["weight_norm"], np.linalg.norm(W, axis=1), rtol=1e-12)
    trace_sb = (c**2).sum() / K
    trace_sw = sum(((x[y == k] - x[y == k].mean(axis=0)) ** 2).sum() for k in range(K)) / len(y)
    assert m.info["trace_sb"] == pytest.approx(np.ldexp(trace_sb, 800), rel=1e-12)
    assert m.info["trace_sw"] == pytest.approx(np.ldexp(trace_sw, 800), rel=1e-12)
    assert m.info["global_mean"] == "weighted" and m.info["within"] == "pooled"
    assert compute_metrics(_stats(x, y), global_mean="uniform").info["global_mean"] == "uniform"


# nc3_dual and unc3


def test_nc3_dual_with_an_explicit_scale_uses_the_kept_classes_and_centred_means():
    x, y = _data(k=4, empty=(2,))
    kept = [0, 1, 3]
    rng = np.random.default_rng(6)
    W, S = rng.normal(size=(4, D)), rng.normal(size=(4, 4))
    with pytest.warns(UserWarning, match="without samples"):
        m = compute_metrics(_stats(x, y, k=4), W, nc3_scale=S, target="etf")  # etf: centred means
    c = _centred_means(x, y, kept)
    expected = _fro_distance(W[kept], S[np.ix_(kept, kept)] @ c)  # || W/||W|| - C Hbar^T/||.|| ||
    assert m["nc3_dual"] == pytest.approx(expected, rel=1e-12)


def test_zero_classifier_gives_nan_duality_without_numpy_warnings():
    x, y = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "Mean of empty slice" or division by zero on the way
        m = compute_metrics(_stats(x, y), np.zeros((K, D)), target="etf")
    assert math.isnan(m["nc3_dual"]) and math.isnan(m["unc3"])
    assert m.reasons["unc3"] == "no class with both a nonzero classifier row and a nonzero centred mean"
