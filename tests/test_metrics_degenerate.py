"""Degenerate inputs are handled on purpose: clear ValueErrors, dropped empty classes, NaN with reasons."""

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nclab.metrics import ClassStats, deep_head_metrics, gram_distance, nc_metrics


def data(K=4, D=6, n=10, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(K), n)
    H = rng.standard_normal((K, D))[y] + 0.1 * rng.standard_normal((K * n, D))
    return H, y, rng.standard_normal((K, D))


def test_empty_class_dropped_with_warning():
    H, y, W = data()
    y = np.where(y == 2, 3, y)  # class 2 now empty
    with pytest.warns(UserWarning, match="without samples"):
        m = nc_metrics(H, y, W)
    assert m.info["K"] == 4 and m.info["K_eff"] == 3 and m.info["dropped"] == [2]
    assert m.info["classes"] == [0, 1, 3] and len(m.per_class["nc1"]) == 3


def test_non_contiguous_labels_equal_relabelled():
    H, y, W = data()
    relabel = np.array([0, 5, 9, 2])
    with pytest.warns(UserWarning):
        a = nc_metrics(H, relabel[y], np.zeros((10, 6)) + 0 * np.eye(10, 6) + _rows(W, relabel, 10))
    b = nc_metrics(H, y, W)
    for k, v in b.values.items():
        assert a[k] == pytest.approx(v, rel=1e-12, abs=1e-15), k
    assert a.info["classes"] == [0, 2, 5, 9]


def _rows(W, labels, K):
    out = np.zeros((K, W.shape[1]))
    out[labels] = W
    return out


def test_one_sample_class():
    H, y, W = data()
    H, y = np.vstack([H, np.ones((1, 6))]), np.r_[y, 4]
    m = nc_metrics(H, y, np.vstack([W, np.ones(6)]))
    assert m.per_class["variance"][4] == 0 and m.per_class["count"][4] == 1
    assert math.isfinite(m["nc1"]) and m["nc1"] >= 0


def test_k_greater_than_d():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(20), 3)
    m = nc_metrics(rng.standard_normal((60, 3)), y)
    assert m.info["rank"] == 3 and math.isfinite(m["nc1"])


def test_all_features_identical():
    m = nc_metrics(np.ones((12, 5)), np.arange(12) % 3, np.ones((3, 5)))
    assert math.isnan(m["nc1"]) and "equal" in m.reasons["nc1"]
    assert math.isnan(m["nc1_trace"]) and m.info["rank"] == 0
    s = ClassStats(3).update(np.ones((12, 5)), np.arange(12) % 3)
    assert math.isnan(s.compute()["nc1"])


def test_zero_weights_nan_with_reason():
    H, y, _ = data()
    m = nc_metrics(H, y, np.zeros((4, 6)))
    assert math.isnan(m["nc2_w"]) and m.reasons["nc2_w"]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_features(bad):
    H, y, W = data()
    H[3, 2] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        nc_metrics(H, y)
    with pytest.raises(ValueError, match="NaN or inf"):
        ClassStats(4).update(torch.tensor(H, dtype=torch.float32), y)
    with pytest.raises(ValueError, match="NaN or inf"):
        deep_head_metrics(H, y, [W])


@pytest.mark.parametrize("labels, msg", [
    (lambda y: y + 1, r"in \[0, 4\)"),
    (lambda y: y - 1, "non-negative"),
    (lambda y: y + 0.5, "integers"),
    (lambda y: y[:-1], "entries"),
    (lambda y: y.astype(bool), "integers"),
    (lambda y: np.array(["a"] * len(y)), "numeric"),
])
def test_bad_labels(labels, msg):
    H, y, _ = data()
    with pytest.raises(ValueError, match=msg):
        nc_metrics(H, labels(y), num_classes=4)


def test_bad_shapes_and_k():
    H, y, W = data()
    for call, msg in [
        (lambda: nc_metrics(H[0], y), "shape"),
        (lambda: nc_metrics(np.zeros((0, 3)), np.zeros(0, int)), "empty"),
        (lambda: nc_metrics(H, np.zeros(len(y), int)), "at least 2 classes"),
        (lambda: nc_metrics(H, y, W[:, :3]), "columns"),
        (lambda: nc_metrics(H, y, W[:3]), "rows"),
        (lambda: nc_metrics(H, y, W, np.ones(3)), "entries"),
        (lambda: nc_metrics(H, y, target="gof"), "target"),
        (lambda: nc_metrics(H, y, target=np.eye(3)), "4 x 4"),
        (lambda: nc_metrics(H, y, within="mean"), "within"),
        (lambda: ClassStats(1), "at least 2"),
        (lambda: ClassStats(4, moments="all"), "moments"),
        (lambda: ClassStats(4, dim=3).update(H, y), "dimension"),
        (lambda: deep_head_metrics(H, y, [np.ones((5, 6)), np.ones((4, 4))]), "W_2"),
        (lambda: gram_distance(np.ones(3)), "matrix"),
    ]:
        with pytest.raises(ValueError, match=msg):
            call()


def test_labels_only_one_class_present():
    H, y, _ = data()
    with pytest.raises(ValueError, match="at least 2 classes with samples"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nc_metrics(H, np.zeros(len(y), int), num_classes=4)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.integers(-3, 8), st.floats(allow_nan=True, allow_infinity=True)), min_size=1,
                max_size=12), st.integers(0, 5))
def test_any_label_array_gives_metrics_or_value_error(labels, k):
    """Hypothesis: arbitrary label arrays never raise anything but ValueError."""
    H = np.random.default_rng(0).standard_normal((len(labels), 3))
    try:
        m = nc_metrics(H, np.array(labels), num_classes=k if k else None)
    except ValueError:
        return
    except UserWarning:
        return
    assert m["nc1"] >= 0 or math.isnan(m["nc1"])


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 6), st.integers(1, 5), st.floats(0, 1e-3), st.integers(0, 10**6))
def test_nc1_nonnegative_property(K, D, sigma, seed):
    rng = np.random.default_rng(seed)
    y = np.arange(3 * K) % K
    H = rng.standard_normal((K, D))[y] + sigma * rng.standard_normal((3 * K, D))
    m = nc_metrics(H.astype(np.float32), y)
    assert m["nc1"] >= 0 or (math.isnan(m["nc1"]) and m.reasons["nc1"])
    streamed = ClassStats(K).update(H, y).compute()
    assert streamed["nc1"] >= 0 or (math.isnan(streamed["nc1"]) and streamed.reasons["nc1"])


@pytest.mark.parametrize("s1, s2", [(1.0, 1.0), (1e200, 1e200), (1e-200, 1e-200), (1e-200, 1.0), (1.0, 1e250)])
def test_extreme_scales_streamed_and_merged(s1, s2):
    """Statistics of any finite magnitude: stored rescaled by a power of two (scale_exp), public attributes in
    the features' units, merge aligns scales, metrics equal those of one ClassStats over all the batches."""
    H, y, W = data()
    order = np.argsort(np.arange(len(y)) % 10, kind="stable")  # both halves hold every class
    H, y, h = H[order], y[order], len(y) // 2
    a = ClassStats(4).update(H[:h] * s1, y[:h])
    b = ClassStats(4).update(H[h:] * s2, y[h:])
    full = ClassStats(4).update(H[:h] * s1, y[:h]).update(H[h:] * s2, y[h:])
    m, f = a.merge(b).compute(W), full.compute(W)
    for k in ("nc1", "nc1_trace", "nc2_h", "nc2_w", "nc3", "cdnv"):
        assert m[k] == pytest.approx(f[k], rel=1e-9) and math.isfinite(f[k]), k
    if s1 == s2:
        ref = ClassStats(4).update(H, y)
        assert f["nc1"] == pytest.approx(ref.compute()["nc1"], rel=1e-9)
        assert np.allclose(full.means.numpy(), ref.means.numpy() * s1, rtol=1e-12, atol=0)
        means, _, scatter, e = full.scaled()
        assert np.isfinite(scatter.numpy()).all() and (e == 0) == (s1 == 1.0)
