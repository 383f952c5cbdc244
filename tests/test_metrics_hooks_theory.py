"""Deep heads inside a model (forward hooks) and comparison with a closed-form prediction."""

import numpy as np
import pytest
import torch
from torch import nn

from nclab.metrics import (
    ClassStats,
    capture_inputs,
    compare_to_theory,
    deep_head_metrics,
    linear_head,
    model_head_metrics,
    nc_metrics,
)


def make_model(K=4, d=8):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, d), nn.ReLU(), nn.Dropout(0.5), nn.Linear(d, d, bias=False),
                         nn.Linear(d, K))


def loader(K=4, n=240, bs=50):
    g = torch.Generator().manual_seed(1)
    y = torch.arange(n) % K
    x = torch.randn(K, 5, generator=g)[y] + 0.3 * torch.randn(n, 5, generator=g)
    return [(x[i:i + bs], y[i:i + bs]) for i in range(0, n, bs)]


@pytest.mark.parametrize("two_pass", [True, False])
def test_model_head_metrics_pairs_layers_with_partial_products(two_pass):
    model, data = make_model(), loader()
    model.train()
    got = model_head_metrics(model, data, ["3", "4"], 4, two_pass=two_pass)
    assert model.training  # mode restored
    assert not model[3]._forward_pre_hooks and not model[4]._forward_pre_hooks
    with torch.no_grad():
        model.eval()
        x = torch.cat([b[0] for b in data])
        y = torch.cat([b[1] for b in data])
        h = model[1](model[0](x))
    ws, b = linear_head(model, ["3", "4"])
    ref = deep_head_metrics(h, y, ws, b)
    for j in range(2):
        for k, v in ref[j].values.items():
            if two_pass or k not in ("nc4", "accuracy", "ncc_accuracy"):
                # float32 activations: the one-pass stream's scatter product runs in float32 (ClassStats default)
                assert got[j][k] == pytest.approx(v, rel=1e-7 if two_pass else 1e-6, abs=1e-12), (j, k)


def test_hooks_removed_on_error_and_capture_streams():
    model = make_model()
    with pytest.raises(RuntimeError), capture_inputs(model, ["3"]) as feats:
        model(torch.randn(2, 5))
        assert feats["3"].shape == (2, 8)
        raise RuntimeError("boom")
    assert not model[3]._forward_pre_hooks
    with pytest.raises(ValueError, match="no module"), capture_inputs(model, ["nope"]):
        pass
    with pytest.raises(ValueError, match="2-D weight"):
        linear_head(model, ["1"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dtypes(dtype):
    rng = np.random.default_rng(0)
    y = np.arange(60) % 3
    H = torch.tensor(rng.standard_normal((3, 7))[y] + 0.1 * rng.standard_normal((60, 7))).to(dtype)
    ref = nc_metrics(H.double(), y)
    # nc_metrics' second pass runs in float32 for narrow features (issue 12): ~1e-8; float64 products are exact
    assert nc_metrics(H, y)["nc1"] == pytest.approx(ref["nc1"], rel=1e-12 if dtype == torch.float64 else 1e-7)
    assert nc_metrics(H, y, gemm_dtype=torch.float64)["nc1"] == pytest.approx(ref["nc1"], rel=1e-12)
    # the stream's default product runs in the features' own dtype (float32 for half types): float32 accuracy;
    # gemm_dtype=torch.float64 is exact to float64 round-off for every input dtype
    exact = 1e-14 if dtype == torch.float64 else 1e-6
    assert ClassStats(3).update(H, y).compute()["nc1"] == pytest.approx(ref["nc1"], rel=exact)
    assert ClassStats(3, gemm_dtype=torch.float64).update(H, y).compute()["nc1"] == pytest.approx(ref["nc1"], rel=1e-10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(0)
    y = torch.arange(500) % 5
    H = torch.tensor(rng.standard_normal((5, 16)))[y] + 0.1 * torch.randn(500, 16, dtype=torch.float64)
    W = torch.randn(5, 16, dtype=torch.float64)
    a, b = nc_metrics(H, y, W), nc_metrics(H.cuda(), y.cuda(), W.cuda())
    for k, v in a.values.items():
        assert b[k] == pytest.approx(v, rel=1e-9, abs=1e-12), k
    s = ClassStats(5).update(H.cuda().float(), y.cuda())
    assert s.means.is_cuda and s.compute(W)["nc1"] == pytest.approx(nc_metrics(H.float(), y)["nc1"], rel=1e-6)


def test_compare_to_theory_with_plain_arrays():
    rng = np.random.default_rng(3)
    K, d = 4, 6
    means = rng.standard_normal((K, d))
    y = np.repeat(np.arange(K), 5)
    W1, W2 = rng.standard_normal((d, d)), rng.standard_normal((K, d))
    pred = {"WWt": (W2 @ W1) @ (W2 @ W1).T, "HtH": means @ means.T, "WH": W2 @ W1 @ means.T,
            "layers": [{"mean_gram": means @ means.T, "partial_gram": (W2 @ W1) @ (W2 @ W1).T,
                        "nc3_scale": None},
                       {"mean_gram": (means @ W1.T) @ (means @ W1.T).T, "partial_gram": W2 @ W2.T}]}
    out = compare_to_theory(pred, means[y], y, [W1, W2], center=False)
    for key in ("WWt", "HtH", "WH"):
        assert out[key]["rel"] < 1e-12 and out[key]["shape"] < 1e-12
    assert out["h_norms"]["max_rel"] < 1e-12 and out["w_norms"]["max_rel"] < 1e-12
    assert all(v["rel"] < 1e-12 for lay in out["layers"] for k, v in lay.items() if isinstance(v, dict)
               and "rel" in v)
    out2 = compare_to_theory(pred, 2 * means[y], y, [W1, W2], center=False)
    assert out2["HtH"]["rel"] == pytest.approx(3.0) and out2["HtH"]["shape"] < 1e-12


@pytest.mark.parametrize("bias", [False, True])
def test_compare_to_theory_on_constructed_minimizer(bias):
    from nclab import theory

    pred = theory.predict([30, 20, 10, 10], depth=3, widths=8, bias=bias, lambda_w=1e-3, lambda_h=1e-3)
    weights, H, b = pred.construct()
    y = theory.labels_from_counts(pred.problem.counts)
    out = compare_to_theory(pred, H.T, y, weights, b)
    for key in ("WWt", "HtH", "WH"):
        assert out[key]["rel"] < 1e-8, key
    for lay in out["layers"]:
        assert lay["mean_gram"]["rel"] < 1e-8 and lay["partial_gram"]["rel"] < 1e-8
        assert lay["nc3"] < 1e-8
    if bias:
        assert out["bias"] < 1e-8
    dh = deep_head_metrics(H.T, y, weights, b, target=[lay["mean_gram"] for lay in pred.layers])
    assert dh[0]["nc1"] == 0 or dh[0]["nc1"] < 1e-20
    assert dh[0]["nc2_h"] < 1e-8 and dh[2]["nc2_h"] < 1e-8


def test_deep_table_prints_shared_metrics_once_only_when_equal():
    from nclab.metrics import deep_head_metrics

    rng = np.random.default_rng(0)
    y = np.arange(30) % 3
    H = rng.standard_normal((3, 4))[y] + 0.1 * rng.standard_normal((30, 4))
    ws = [rng.standard_normal((4, 4)), rng.standard_normal((3, 4))]
    same = deep_head_metrics(H, y, ws, target="of")
    assert same.shared() == ["nc3", "accuracy"] and "whole head" in same.table() and "\nnc3 " not in same.table()
    per = deep_head_metrics(H, y, ws, target=[np.eye(3), np.diag([1.0, 2.0, 3.0])])  # nc3 target per layer
    assert "nc3" not in per.shared() and "\nnc3 " in per.table()
