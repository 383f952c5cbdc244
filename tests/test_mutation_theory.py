"""nclab.theory beyond the other suites (mutation testing, scripts/mutation.py theory): the exact one-line messages
of the objective's argument checks, float labels, the scalar root against its defining equation, byte formatting
and the per-layer shapes of a prediction."""

import re

import numpy as np
import pytest
import torch

from nclab.theory import labels_from_counts, make_problem, predict, ufm_objective, ufm_objective_torch
from nclab.theory.problem import check_int
from nclab.theory.resources import available_memory, check_memory, format_bytes
from nclab.theory.scalar import F, a_star, larger_root, solve_modes_log, x_star

W2 = [torch.ones(3, 2, dtype=torch.float64), torch.ones(2, 3, dtype=torch.float64)]
H2 = torch.ones(2, 4, dtype=torch.float64)
Y2 = torch.tensor([0, 1, 0, 1])


def _raises(exc, text, fn, *args, **kw):
    """fn(*args, **kw) raises exc with exactly the message text."""
    with pytest.raises(exc, match="^" + re.escape(text) + "$"):
        fn(*args, **kw)


def _mse(W, H, y, lam_w, lam_h):
    """1/(2N) ||W_M..W_1 H - Y||^2 + sum lam_j/2 ||W_j||^2 + lam_H/2 ||H||^2 in float64 numpy."""
    Z = H
    for w in W:
        Z = w @ Z
    Y = np.eye(W[-1].shape[0])[:, y]
    return (0.5 * np.sum((Z - Y) ** 2) / H.shape[1] + sum(0.5 * lam * np.sum(w * w) for lam, w in zip(lam_w, W))
            + 0.5 * lam_h * np.sum(H * H))


# ------------------------------------------------------------------------------------------ argument checks
def test_weight_and_feature_messages():
    _raises(ValueError, "weights[0] (W_1) must be a 2-D tensor, got Tensor of shape (3,)",
            ufm_objective_torch, [torch.ones(3)], H2, Y2, 0.1, 0.1)
    _raises(ValueError, "weights[1] (W_2) must be a 2-D tensor, got ndarray",
            ufm_objective_torch, [W2[0], np.ones((2, 3))], H2, Y2, 0.1, 0.1)
    _raises(TypeError, "weights[0] must be a floating-point tensor, got torch.int64",
            ufm_objective_torch, [torch.ones(3, 2, dtype=torch.int64), W2[1]], H2, Y2, 0.1, 0.1)
    _raises(ValueError, "H must be a 2-D tensor (d x N), got ndarray",
            ufm_objective_torch, W2, np.ones((2, 4)), Y2, 0.1, 0.1)
    _raises(ValueError, "weights must be a non-empty sequence of 2-D arrays W_1..W_M",
            ufm_objective, "ab", np.ones((2, 4)), [0, 1, 0, 1], 0.1, 0.1)
    _raises(ValueError, "bias must be a numeric array",
            ufm_objective, [np.ones((2, 2))], np.ones((2, 4)), [0, 1, 0, 1], 0.1, 0.1, bias=["x", "y"])


@pytest.mark.parametrize("lam_w, lam_h, text", [
    (0.1, float("inf"), "lambda_h must be a finite number >= 0, got inf"),
    (0.1, -1.0, "lambda_h must be a finite number >= 0, got -1.0"),
    (0.1, True, "lambda_h must be a number >= 0, got True"),
    ("abc", 0.1, "lambda_w must be a number >= 0, got 'abc'"),
    ([0.1, -0.2], 0.1, "lambda_w must be a finite number >= 0, got -0.2"),
    ([0.1], 0.1, "lambda_w has 1 values for 2 layers"),
])
def test_decay_messages(lam_w, lam_h, text):
    _raises(ValueError, text, ufm_objective_torch, W2, H2, Y2, lam_w, lam_h)


def test_scalar_and_per_layer_decays_agree_with_the_definition():
    g = np.random.default_rng(0)
    W = [g.normal(size=(3, 2)), g.normal(size=(2, 3))]
    H = g.normal(size=(2, 4))
    y = np.array([0, 1, 1, 0])
    args = ([torch.tensor(w) for w in W], torch.tensor(H), torch.tensor(y))
    assert float(ufm_objective_torch(*args, 0.1, 0.2)) == pytest.approx(_mse(W, H, y, [0.1, 0.1], 0.2), rel=1e-14)
    assert float(ufm_objective_torch(*args, torch.tensor(0.3, dtype=torch.float64), 0.2)) == pytest.approx(
        _mse(W, H, y, [0.3, 0.3], 0.2), rel=1e-14)
    assert float(ufm_objective_torch(*args, [0.1, 0.4], 0.2)) == pytest.approx(
        _mse(W, H, y, [0.1, 0.4], 0.2), rel=1e-14)


def test_float_labels_are_class_indices_when_integral():
    g = np.random.default_rng(1)
    W, H = [g.normal(size=(2, 2))], g.normal(size=(2, 4))
    ref = _mse(W, H, np.array([0, 1, 1, 0]), [0.1], 0.2)
    assert ufm_objective(W, H, np.array([0.0, 1.0, 1.0, 0.0]), 0.1, 0.2) == pytest.approx(ref, rel=1e-14)
    _raises(ValueError, "labels must be integers (class indices), got fractional or non-finite values",
            ufm_objective, W, H, [0.0, 0.5, 1.0, 0.0], 0.1, 0.2)
    # an integral float beyond K is a class index out of range, not a non-integer
    _raises(ValueError, "labels must lie in [0, K) = [0, 2), got values in [0, 200]",
            ufm_objective, W, H, [0.0, 200.0, 1.0, 0.0], 0.1, 0.2)
    with pytest.raises(ValueError, match="^labels must be integers, got "):
        ufm_objective(W, H, [0.0, 1e30, 1.0, 0.0], 0.1, 0.2)


def test_labels_from_counts_bounds_each_count():
    assert labels_from_counts([2, 0, 1]).tolist() == [0, 0, 2]
    with pytest.raises(ValueError, match="every class count"):
        labels_from_counts([2**53 + 1])


# ------------------------------------------------------------------------------------------ scalar functions
def test_f_names_its_argument():
    _raises(ValueError, "x must be numbers >= 0 (inf allowed), got [-1.0]", F, [-1.0], [0.1], 2)
    assert F([2.0], [0.1], 3)[0] == pytest.approx(1 / 9 + 3 * 0.1 * 2, rel=1e-15)


@pytest.mark.parametrize("M", [2, 4])
def test_larger_root_solves_its_equation(M):
    # h(x) = x^(M-1) / (1 + x^M)^2 (F'(x) = 0 <=> h(x) = a); pick roots x0 > x*(M) and recover them
    x0 = x_star(M) * np.array([1.5, 4.0, 30.0])
    a = x0 ** (M - 1) / (1 + x0**M) ** 2
    assert (a < a_star(M)).all()
    assert np.allclose(larger_root(a, M), x0, rtol=1e-12)
    rough = larger_root(a, M, iters=2)  # two bisection steps: inside the bracket, not yet the root
    assert (rough >= x_star(M)).all() and not np.allclose(rough, x0, rtol=1e-3)


# ------------------------------------------------------------------------------------------ messages, shapes
@pytest.mark.parametrize("n, text", [(0, "0 bytes"), (1023, "1023 bytes"), (1536, "1.5 KiB"), (5 * 2**20, "5 MiB"),
                                     (3 * 2**60, "3 EiB"), (2**70, "1.02e+03 EiB")])
def test_format_bytes(n, text):
    assert format_bytes(n) == text


def test_layer_shapes_follow_the_widths():
    p = predict(counts=[2, 2], depth=3, widths=[4, 5, 3], lambda_w=0.01, lambda_h=0.01)
    assert [lay["shape"] for lay in p.layers] == [[5, 4], [3, 5], [2, 3]]


@pytest.mark.parametrize("M", [2, 3])
def test_solve_modes_log_flags_the_tie_at_the_threshold(M):
    la = np.log(np.array([a_star(M), 0.9 * a_star(M), 1.1 * a_star(M)]))
    lx, fmin, tie = solve_modes_log(la, M)
    assert tie.tolist() == [True, False, False]
    assert fmin[2] == 1.0 and lx[2] == -np.inf  # beyond a*: zero is the minimizer, F(0) = 1
    x = np.exp(lx[1])  # below a*: a nonzero x with F_a(x) = 1/(1 + x^M) + M a x < 1
    assert fmin[1] == pytest.approx(1 / (1 + x**M) + M * 0.9 * a_star(M) * x, rel=1e-12) and fmin[1] < 1
    _raises(ValueError, "log a must be a number or +inf (a > 0)", solve_modes_log, np.array([0.0, np.nan]), M)


def test_problem_to_dict_names_every_setting():
    p = make_problem(counts=[3, 2], depth=2, widths=[4, 3], lambda_w=[0.1, 0.2], lambda_h=0.05, bias=True)
    assert p.to_dict() == {"counts": [3, 2], "widths": [4, 3], "lambda_w": [0.1, 0.2], "lambda_h": 0.05,
                           "bias": True, "loss": "mse"}


@pytest.mark.parametrize("text, expected", [("2G", 2 * 2**30), ("512 KiB", 512 * 1024), ("1.5m", 3 * 2**19),
                                            ("4096", 4096), ("1", 1)])
def test_memory_limit_env(monkeypatch, text, expected):
    monkeypatch.setenv("NCLAB_MEMORY_LIMIT", text)
    assert available_memory() == expected


@pytest.mark.parametrize("text, msg", [
    ("lots", "NCLAB_MEMORY_LIMIT must be a number of bytes (e.g. 2G), got 'lots'"),
    ("0", "NCLAB_MEMORY_LIMIT must be a positive number of bytes, got '0'"),
    ("inf", "NCLAB_MEMORY_LIMIT must be a positive number of bytes, got 'inf'"),
])
def test_memory_limit_env_messages(monkeypatch, text, msg):
    monkeypatch.setenv("NCLAB_MEMORY_LIMIT", text)
    _raises(ValueError, msg, available_memory)


def test_depth_message():
    _raises(ValueError, "depth M must be a positive integer, got 0", a_star, 0)


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_relu_objective_applies_relu_between_layers_only(loss):
    g = np.random.default_rng(2)
    W = [g.normal(size=(4, 3)), g.normal(size=(3, 4)), g.normal(size=(2, 3))]
    H, y = g.normal(size=(3, 5)), np.array([0, 1, 1, 0, 1])
    Z = W[2] @ np.maximum(W[1] @ np.maximum(W[0] @ H, 0), 0)  # no ReLU on the logits
    data = (0.5 * np.sum((Z - np.eye(2)[:, y]) ** 2) / 5 if loss == "mse"
            else np.mean(np.log(np.exp(Z).sum(0)) - Z[y, np.arange(5)]))
    f = data + 0.5 * (0.1 * sum(np.sum(w * w) for w in W) + 0.2 * np.sum(H * H))
    val = ufm_objective_torch([torch.tensor(w) for w in W], torch.tensor(H), torch.tensor(y), 0.1, 0.2, None, loss,
                              activation="relu")
    assert float(val) == pytest.approx(f, rel=1e-13)


@pytest.mark.parametrize("kw, text", [
    ({}, "give the class counts, or both the number of classes and the samples per class"),
    ({"classes": "x", "per_class": 2}, "the number of classes must be a positive integer, got 'x'"),
    ({"classes": 1, "per_class": 2}, "need at least K = 2 classes, got 1"),
    ({"counts": [[1], [2, 3]]}, "counts must be one number or a flat list of numbers, got [[1], [2, 3]]"),
    ({"counts": [2, 2], "widths": [0, 2], "depth": 2}, "every width must be a positive integer, got 0"),
    ({"counts": [2, 2], "widths": [True, 2], "depth": 2}, "every width must be a positive integer, got True"),
    ({"counts": [2, 2], "loss": "hinge"}, "loss must be 'mse' or 'ce', got 'hinge'"),
])
def test_make_problem_messages(kw, text):
    _raises(ValueError, text, make_problem, **kw)


def test_make_problem_reads_float_counts_and_default_widths():
    assert make_problem(counts=[2.0, 3.0]).counts == (2, 3)  # integral floats: the slow, per-count path
    p = make_problem(counts=[2, 2], depth=2)  # no widths: every layer gets the default width
    assert len(p.widths) == 2 and len(set(p.widths)) == 1 and p.widths[0] >= 2
    _raises(ValueError, "foo must be a positive integer, got 'x'", check_int, "x", "foo")
    _raises(ValueError, "foo must be an integer >= 0, got 2.5", check_int, 2.5, "foo", 0)


def test_check_memory_message_without_advice(monkeypatch):
    monkeypatch.setenv("NCLAB_MEMORY_LIMIT", "1K")
    _raises(ValueError, "the thing would need about 977 KiB of memory, more than the 819 bytes this machine can give "
            "(80% of the available memory)", check_memory, 1e6, "the thing")


@pytest.mark.parametrize("counts", [[True, 2], [3, False], (2, np.True_)])
def test_a_bool_is_not_a_class_count(counts):
    """numpy's array of [True, 2] is [1, 2]; the count check must see the bool before that."""
    with pytest.raises(ValueError, match="every class count must be a positive integer"):
        make_problem(counts=counts)
    assert list(make_problem(counts=np.array([1, 2])).counts) == [1, 2]  # integer arrays keep the fast path
