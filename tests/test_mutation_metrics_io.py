"""nclab.metrics io / compare / hooks beyond the other suites (mutation testing, scripts/mutation.py metrics):
what load_dump reads (stacked weights, the run's setting, the one-line messages naming the file and the key),
how compare_to_theory chooses to centre the means and checks its prediction, gram_error against a zero Gram,
linear_head on a module without a bias attribute, and stats_head_metrics' per-layer options."""

import re

import numpy as np
import pytest
import torch
from torch import nn

from nclab.metrics import ClassStats, SecondPass, compare_to_theory, linear_head, load_dump, stats_head_metrics
from nclab.metrics.compare import gram_error

K, D = 3, 4
Y = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2])  # imbalanced: weighted and uniform global means differ


def _features(seed=0):
    """(N, D) float64 features: random class means plus noise, a different spread per class."""
    rng = np.random.default_rng(seed)
    spread = np.array([0.1, 0.5, 1.0])[Y][:, None]
    return rng.standard_normal((K, D))[Y] + 3.0 + spread * rng.standard_normal((len(Y), D))


def _raises(exc, text, fn, *args, **kw):
    """fn(*args, **kw) raises exc with exactly the message text."""
    with pytest.raises(exc, match="^" + re.escape(text) + "$"):
        fn(*args, **kw)


# ------------------------------------------------------------------------------------------------ load_dump
def test_load_dump_reads_stacked_weights_and_the_setting(tmp_path):
    H, W = _features(), np.arange(2 * D * D, dtype=np.float64).reshape(2, D, D)
    path = tmp_path / "d.npz"
    np.savez(path, H=H, y=Y, weights=W, loss="ce", counts=np.array([2, 3, 4]), lambda_h=0.5)
    got = load_dump(path)
    assert len(got["weights"]) == 2
    np.testing.assert_array_equal(got["weights"][1], W[1])
    assert got["setting"] == {"loss": "ce", "counts": [2, 3, 4], "lambda_h": 0.5}
    assert got["bias"] is None


def test_load_dump_rejects_counts_beyond_int64(tmp_path):
    path = tmp_path / "d.pt"
    torch.save({"H": torch.ones(2, 2), "y": torch.tensor([0, 1]), "counts": [1, 2 ** 63]}, path)
    _raises(ValueError, f"{path}: unreadable setting (counts): counts must be whole numbers, got "
            "[1.0, 9.223372036854776e+18]", load_dump, path)


@pytest.mark.parametrize("counts", [[np.nan, 3.0], [2.5, 3.0], [1e20, 3.0]])
def test_load_dump_rejects_float_counts_that_are_not_whole_numbers(tmp_path, counts):
    """Float counts in an .npz must be finite whole numbers: a cast to int64 would turn NaN or 1e20 into -2^63."""
    path = tmp_path / "d.npz"
    np.savez(path, H=np.ones((2, 2)), y=np.array([0, 1]), counts=np.array(counts))
    _raises(ValueError, f"{path}: unreadable setting (counts): counts must be whole numbers, got {counts}",
            load_dump, path)
    np.savez(path, H=np.ones((2, 2)), y=np.array([0, 1]), counts=np.array([2.0, 3.0]))
    assert load_dump(path)["setting"] == {"counts": [2, 3]}


def test_load_dump_messages_name_the_file_and_the_key(tmp_path):
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    _raises(ValueError, f"cannot read {empty}: the file is empty", load_dump, empty)
    keys = tmp_path / "keys.npz"
    np.savez(keys, a=np.ones(2), b=np.ones(2))
    _raises(ValueError, f"{keys}: no features (expected key 'H' or 'features'; found ['a', 'b'])", load_dump, keys)
    pt = tmp_path / "d.pt"
    for extra, key in (({"y": []}, "labels"), ({"y": torch.tensor([0, 1]), "b": [True, False]}, "bias"),
                       ({"y": torch.tensor([0, 1]), "W": ["w"]}, "W1")):
        torch.save({"H": torch.ones(2, 2), **extra}, pt)
        _raises(ValueError, f"{pt}: {key} must be an array or tensor, got list", load_dump, pt)


# ------------------------------------------------------------------------------------------ compare_to_theory
def _mean_gram(H, centred):
    """K x K Gram of the class means, centred by the sample-weighted global mean if asked (numpy float64)."""
    m = np.stack([H[Y == k].mean(0) for k in range(K)])
    if centred:
        m = m - (np.bincount(Y)[:, None] * m).sum(0) / len(Y)
    return m @ m.T


class _Problem:
    def __init__(self, bias):
        self.bias = bias


@pytest.mark.parametrize("centred, prediction_extra", [
    (True, {"bias": np.zeros(K)}),  # no problem: a predicted bias means the problem has one
    (False, {}),
    (True, {"problem": _Problem(True)}),  # the problem's setting wins over the (absent) predicted bias
    (False, {"problem": _Problem(False), "bias": np.zeros(K)}),
])
def test_compare_to_theory_centres_the_means_as_the_problem_says(centred, prediction_extra):
    H, W = _features(), np.random.default_rng(1).standard_normal((K, D))
    out = compare_to_theory({"HtH": _mean_gram(H, centred), **prediction_extra}, H, Y, W)
    assert out["HtH"]["rel"] < 1e-12
    wrong = compare_to_theory({"HtH": _mean_gram(H, not centred), **prediction_extra}, H, Y, W)
    assert wrong["HtH"]["rel"] > 0.1


class _Layer:
    """A layer record that is not a dict: attributes, and a .get like a dict's."""

    def __init__(self, **kw):
        self.__dict__.update(kw)

    def get(self, key, default=None):
        return self.__dict__.get(key, default)


def test_compare_to_theory_checks_the_prediction_layers():
    H, W = _features(), np.random.default_rng(1).standard_normal((K, D))
    text = "prediction.layers must be a list of dicts (mean_gram, partial_gram, nc3_scale)"
    _raises(TypeError, text, compare_to_theory, {"HtH": np.eye(K), "layers": "x"}, H, Y, W)
    _raises(TypeError, text, compare_to_theory, {"HtH": np.eye(K), "layers": [1]}, H, Y, W)
    out = compare_to_theory({"layers": [_Layer(partial_gram=W @ W.T)]}, H, Y, W)
    assert out["layers"][0]["partial_gram"]["rel"] < 1e-12
    _raises(ValueError, "nc3_scale has 4 columns, expected 3 (shape (3, 4))",
            compare_to_theory, {"layers": [{"nc3_scale": np.ones((K, K + 1))}]}, H, Y, W)


def test_gram_error_against_a_zero_or_bad_prediction():
    assert np.isnan(gram_error(np.eye(2), np.zeros((2, 2)))["rel"])
    _raises(ValueError, "predicted Gram contains NaN or inf", gram_error, np.eye(2), np.full((2, 2), np.nan))


# --------------------------------------------------------------------------------------------------- hooks
class _BareLinear(nn.Module):
    """A linear layer with a weight and no bias attribute at all."""

    def __init__(self, d_in, d_out):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d_out, d_in))

    def forward(self, x):
        return x @ self.weight.T


def test_linear_head_without_a_bias_attribute():
    ws, b = linear_head(nn.Sequential(nn.Linear(2, 3), _BareLinear(3, 2)), ["0", "1"])
    assert b is None and [tuple(w.shape) for w in ws] == [(3, 2), (2, 3)]


def _nc1(H, within):
    """tr(Sigma_W Sigma_B^+) / K from the definitions (numpy float64), weighted global mean."""
    n = np.bincount(Y)
    m = np.stack([H[Y == k].mean(0) for k in range(K)])
    mc = m - (n[:, None] * m).sum(0) / len(Y)
    sb = mc.T @ mc / K
    dev = H - m[Y]
    if within == "pooled":
        sw = dev.T @ dev / len(Y)
    else:  # class_mean: (1/K) sum_k Sigma_W^k
        sw = sum(dev[Y == k].T @ dev[Y == k] / n[k] for k in range(K)) / K
    return float(np.trace(sw @ np.linalg.pinv(sb)) / K)


def test_stats_head_metrics_passes_its_options_and_names_per_layer_lists():
    H = _features()
    W = np.random.default_rng(1).standard_normal((K, D))
    h, y, w = torch.tensor(H), torch.tensor(Y), torch.tensor(W)
    stats = [ClassStats(K, gemm_dtype=torch.float64).update(h, y)]
    seconds = [SecondPass(stats[0], w).update(h, y)]  # the class_mean NC1 needs the per-class scatter
    for within in ("pooled", "class_mean"):
        got = stats_head_metrics(stats, [w], seconds=seconds, within=within)
        assert got[0]["nc1"] == pytest.approx(_nc1(H, within), rel=1e-9), within
    assert _nc1(H, "pooled") / _nc1(H, "class_mean") > 1.2  # the option matters on these features
    two = [torch.eye(D, dtype=torch.float64), torch.tensor(W)]
    for option in ("nc3_scale", "target_w", "target_wh"):
        _raises(ValueError, f"{option} list must have one entry per layer (2), got 1",
                stats_head_metrics, stats * 2, two, **{option: [np.eye(K)]})
