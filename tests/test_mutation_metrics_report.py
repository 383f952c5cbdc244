"""Mutation-killing tests for nclab/metrics/pairwise.py (Target) and nclab/metrics/report.py (issue 15).

Covers: the named targets generated tile by tile (pairwise.Target.tile/cos), the text tables of NCMetrics and
DeepHeadMetrics, the K-space projector's rank rule (small K and the blockwise-QR path for large K x D), the
argument checks of deep_head_metrics (messages name the argument; options first; memory estimate) and the
power-of-two exponents of a deep head (classifier with a bias far from unit norm: NC4/accuracy and per-class
variances at every layer), and partial_products under numpy's underflow trap.
Every expectation is numpy float64 from the definitions or a hand-written string.
"""

import math

import numpy as np
import pytest
import torch

from nclab.metrics.pairwise import Target
from nclab.metrics.report import (
    DeepHeadMetrics,
    NCMetrics,
    _projector,
    compute_metrics,
    deep_head_metrics,
    partial_products,
)
from nclab.metrics.stats import ClassStats

# --- pairwise.Target: named targets generated tile by tile ---------------------------------------------------

def _named_gram(name: str, K: int) -> np.ndarray:
    """The normalized K x K target Gram: (I - 1 1^T/K)/sqrt(K - 1) (etf) or I/sqrt(K) (of)."""
    g = np.eye(K) - 1.0 / K if name == "etf" else np.eye(K)
    return g / np.linalg.norm(g)


@pytest.mark.parametrize("name", ["etf", "of"])
def test_named_target_tiles_are_slices_of_the_normalized_gram(name):
    K = 7
    t = Target(name, K, torch.device("cpu"))
    G = _named_gram(name, K)
    for a0, a1, b0, b1 in [(0, 3, 0, 3), (0, 3, 3, 7), (3, 7, 0, 3), (2, 5, 1, 6), (0, 7, 0, 7)]:
        tile = t.tile(a0, a1, b0, b1)
        assert tile.dtype == torch.float64
        np.testing.assert_allclose(tile.numpy(), G[a0:a1, b0:b1], rtol=1e-15, atol=1e-16)


@pytest.mark.parametrize("name, cos_star", [("etf", -1.0 / 6.0), ("of", 0.0)])
def test_named_target_cosines_are_the_constant_cos_star_in_float64(name, cos_star):
    t = Target(name, 7, torch.device("cpu"))
    c, ok = t.cos(1, 4, 2, 7)
    assert c.shape == (3, 5) and ok.shape == (3, 5)
    assert c.dtype == torch.float64  # -1/6 rounded to float32 would differ from the float64 -1/6
    assert bool((c == cos_star).all())
    assert ok.dtype == torch.bool and bool(ok.all())


# --- tables ---------------------------------------------------------------------------------------------------

def test_nc_metrics_table_gives_the_reason_else_the_meaning_else_nothing():
    m = NCMetrics(values={"nc1": 0.5, "nc3": math.nan, "custom": 2.0}, reasons={"nc3": "no classifier"})
    assert m.table().splitlines() == [
        "metric                 value  meaning",
        "nc1               5.0000e-01  tr(Sigma_W Sigma_B^+)/K",
        "nc3                      nan  no classifier",
        "custom            2.0000e+00  ",
    ]


def test_deep_head_table_numbers_layers_from_one_and_prints_shared_metrics_once():
    layers = [NCMetrics(values={"nc1": 0.5, "nc3": 2.0, "accuracy": 1.0}),
              NCMetrics(values={"nc1": 0.25, "nc3": 2.0, "accuracy": 1.0})]
    assert DeepHeadMetrics(layers).table().splitlines() == [
        "metric               layer 1      layer 2",
        "nc1               5.0000e-01   2.5000e-01",
        "whole head (the same at every layer): nc3 2.0000e+00, accuracy 1.0000e+00",
    ]


# --- the K-space projector's rank: small K (functional.nc1_projector) and large K x D (blockwise QR) --------

def _ref_nc1(H, y, K, mode):
    """NC1 = tr(Sigma_W Sigma_B^+)/K in float64 from the definitions (pooled Sigma_W)."""
    n = np.array([(y == k).sum() for k in range(K)], dtype=np.float64)
    mu = np.array([H[y == k].mean(0) for k in range(K)])
    mu_g = n @ mu / n.sum() if mode == "weighted" else mu.mean(0)
    d = H - mu[y]
    sw = d.T @ d / len(y)
    sb = (mu - mu_g).T @ (mu - mu_g) / K
    return np.trace(sw @ np.linalg.pinv(sb, rcond=1e-10, hermitian=True)) / K


@pytest.mark.parametrize("global_mean", ["weighted", "uniform"])
def test_nc1_from_the_scatter_centres_the_means_by_the_requested_global_mean(global_mean):
    rng = np.random.default_rng(3)
    K, D = 4, 6
    y = np.repeat(np.arange(K), [40, 5, 12, 3])  # very unequal counts: the two global means differ
    H = 3.0 * rng.standard_normal((K, D))[y] + 0.5 * rng.standard_normal((len(y), D))
    stats = ClassStats(K, moments="scatter").update(torch.as_tensor(H), torch.as_tensor(y))
    m = compute_metrics(stats, global_mean=global_mean)
    assert m["nc1"] == pytest.approx(_ref_nc1(H, y, K, global_mean), rel=1e-9)
    other = "uniform" if global_mean == "weighted" else "weighted"
    assert abs(_ref_nc1(H, y, K, other) / _ref_nc1(H, y, K, global_mean) - 1) > 1e-3  # the test can tell


def test_blockwise_projector_keeps_singular_values_above_rtol_times_the_largest():
    # K x D = 65537 x 16 > 2^20: the blockwise QR path. Centred means U diag(s) V^T (U, V orthonormal) with
    # singular values 1, 1e-2, 1e-7: with rtol 1e-6 the rank is 2 (1e-7 < 1e-6 * 1); a threshold relative to
    # the second value (1e-8) would keep 3
    rng = np.random.default_rng(5)
    K, D = 65537, 16
    U = rng.standard_normal((K, 3))
    U -= U.mean(0)  # columns of zero mean: the uniform global mean is mu
    U = np.linalg.qr(U)[0]
    V = np.linalg.qr(rng.standard_normal((D, 3)))[0]
    s_true = np.array([1.0, 1e-2, 1e-7])
    mu = rng.standard_normal(D)
    means = mu + (U * s_true) @ V.T
    p, s, r, mu_g = _projector(torch.as_tensor(means), np.full(K, 2.0), 1e-6, "uniform", 512)
    assert r == 2
    np.testing.assert_allclose(s[:3], s_true, rtol=1e-6)
    assert np.all(s[3:] < 1e-9)  # round-off only
    np.testing.assert_allclose(mu_g, mu, rtol=1e-12, atol=1e-13)
    assert p.shape == (D, 2)


# --- deep_head_metrics: argument checks ------------------------------------------------------------------------

def _deep_data(seed=0, N=60, K=3, d=(4, 5)):
    rng = np.random.default_rng(seed)
    y = np.arange(N) % K
    H = rng.standard_normal((K, d[0]))[y] + 0.8 * rng.standard_normal((N, d[0]))
    W1 = rng.standard_normal((d[1], d[0]))
    W2 = rng.standard_normal((K, d[1]))
    return H, y, W1, W2


def test_deep_head_weights_errors_name_the_argument_and_the_layer():
    H, y, W1, W2 = _deep_data()
    with pytest.raises(ValueError, match=r"^weights must be a non-empty list \[W_1, \.\.\., W_M\]$"):
        deep_head_metrics(H, y, [])
    bad1, bad2 = W1.copy(), W2.copy()
    bad1[0, 0], bad2[1, 1] = np.nan, np.inf
    with pytest.raises(ValueError, match=r"^W_1 contains NaN or inf$"):
        deep_head_metrics(H, y, [bad1, W2])
    with pytest.raises(ValueError, match=r"^W_2 contains NaN or inf$"):
        deep_head_metrics(H, y, [W1, bad2])


def test_deep_head_checks_the_options_before_the_weights():
    H, y, _, _ = _deep_data()
    with pytest.raises(ValueError, match=r"^within must be one of 'pooled', 'class_mean', got 'bogus'$"):
        deep_head_metrics(H, y, [], within="bogus")


def test_deep_head_per_layer_list_error_names_target_wh():
    H, y, W1, W2 = _deep_data()
    with pytest.raises(ValueError, match=r"^target_wh list must have one entry per layer \(2\), got 1$"):
        deep_head_metrics(H, y, [W1, W2], target_wh=["etf"])


def test_deep_head_refuses_when_two_float64_copies_of_the_widest_layer_do_not_fit(monkeypatch):
    # N = 2000 rows, widest layer 5: two float64 copies need 16 * 2000 * 5 = 160,000 bytes
    rng = np.random.default_rng(1)
    N, K = 2000, 3
    y = np.arange(N) % K
    H = rng.standard_normal((N, 4))
    W1, W2 = rng.standard_normal((5, 4)), rng.standard_normal((K, 5))
    monkeypatch.setenv("NCLAB_MEMORY_LIMIT", "100000")  # above one copy's 80,000, below two copies
    with pytest.raises(ValueError, match=r"^float64 layer features \(2000 x 5\) would need 156 KB"):
        deep_head_metrics(H, y, [W1, W2])


# --- deep_head_metrics: power-of-two exponents of a classifier far from unit norm, with a bias -------------------

def test_deep_head_exponents_keep_nc4_accuracy_and_per_class_units_at_every_layer():
    H, y, W1, W2 = _deep_data(seed=2)
    H = H + 4.0  # mostly positive features: the layer-2 products exceed 1 and get their own power-of-two rescale
    K = 3
    W1 = np.ldexp(W1, 40)  # far from unit norm: the layer-2 features are ~2^40 times the inputs
    W2 = np.ldexp(W2, -45)  # logits ~2^-5 of the inputs' scale: the bias below changes argmax for some samples
    b = np.array([0.3, -0.2, 0.1])
    m = deep_head_metrics(H, y, [W1, W2], b, target="etf")
    logits = H @ (W2 @ W1).T + b
    pred = logits.argmax(1)
    assert (pred != (H @ (W2 @ W1).T).argmax(1)).any()  # the bias matters: a wrong weight scale would show
    acc = float((pred == y).mean())
    for j, Hj in enumerate([H, H @ W1.T]):
        mu = np.array([Hj[y == k].mean(0) for k in range(K)])
        ncc = ((Hj[:, None, :] - mu[None]) ** 2).sum(-1).argmin(1)
        var = [float(((Hj[y == k] - mu[k]) ** 2).sum(1).mean()) for k in range(K)]
        mu_g = mu.mean(0)  # balanced classes: weighted = uniform
        layer = m[j]
        assert layer["accuracy"] == pytest.approx(acc, abs=0)
        assert layer["nc4"] == pytest.approx(float((ncc != pred).mean()), abs=0)
        np.testing.assert_allclose(layer.per_class["variance"], var, rtol=1e-9)
        np.testing.assert_allclose(layer.per_class["mean_norm"], np.linalg.norm(mu - mu_g, axis=1), rtol=1e-9)
        Wj = W2 @ W1 if j == 0 else W2
        np.testing.assert_allclose(layer.per_class["weight_norm"], np.linalg.norm(Wj, axis=1), rtol=1e-12)


# --- partial_products: underflow is expected, never an error -------------------------------------------------------

def test_partial_products_underflow_quietly_even_under_numpys_underflow_trap():
    rng = np.random.default_rng(4)
    A, B = rng.standard_normal((3, 4)), rng.standard_normal((2, 3))
    W1, W2 = np.ldexp(A, -540), np.ldexp(B, -540)  # W2 W1 ~ 2^-1080: below the smallest subnormal (2^-1074)
    with np.errstate(under="raise"):
        p = partial_products([W1, W2])
    assert len(p) == 2
    np.testing.assert_array_equal(p[1].numpy(), W2)
    with np.errstate(under="ignore"):
        expected = np.ldexp(B @ A, -1080)
    np.testing.assert_array_equal(p[0].numpy(), expected)


@pytest.mark.parametrize("target,K_over_D", [("etf", 1), ("of", 0)])
def test_geometry_that_fits_exactly_in_d_dimensions_gets_no_impossibility_reason(target, K_over_D):
    """A simplex ETF of K = D + 1 vectors spans D dimensions, an orthogonal frame of K = D vectors too: no
    "cannot exist" reason; one class more and the reason is given."""
    from nclab.metrics import nc_metrics

    rng = np.random.default_rng(21)
    D = 4
    for K, said in ((D + K_over_D, False), (D + K_over_D + 1, True)):
        y = np.arange(20 * K) % K
        H = 3 * rng.standard_normal((K, D))[y] + 0.1 * rng.standard_normal((len(y), D))
        m = nc_metrics(H, y, target=target)
        assert ("cannot exist in D dimensions" in m.reasons.get("nc2_h", "")) == said, (K, m.reasons.get("nc2_h"))
