"""Branches of nclab.ufm that the other suites leave out: config round trips and messages, preset overrides,
restarts without a callback, the ReLU references' helpers (rank, minimizer, construct), the ReLU
gradient without its value, a ReLU row at a non-finite point, and a batch mixing biased and bias-free runs.
Expectations are analytic (a quadratic's minimum, ranks of hand-made matrices) or autograd of the shared
objective."""

import json
import math

import numpy as np
import pytest
import torch

from nclab.theory import make_problem, predict
from nclab.ufm.batch_metrics import BatchSnapshotter
from nclab.ufm.config import SimulateConfig, make_config
from nclab.ufm.dnc import Layout, Reference, References, _minimize, numerical_rank, reduced_problem, references
from nclab.ufm.model import UFM, ufm_objective
from nclab.ufm.presets import preset_config, preset_options, run_restarts
from nclab.ufm.snapshot import ReluSnapshotter, Snapshotter

TINY = dict(classes=2, per_class=2, depth=1, widths=3, lambda_w=0.01, lambda_h=0.01)


# ------------------------------------------------------------------------------------------ config
def test_config_dict_round_trip_and_unknown_fields():
    cfg = make_config(counts=[3, 2], depth=2, widths=[4, 3], lambda_w=[0.01, 0.02], steps=7, schedule="cosine")
    back = SimulateConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))  # through JSON: lists, not tuples
    assert back == cfg
    with pytest.raises(ValueError, match=r"unknown config fields: \['colour', 'size'\]"):
        SimulateConfig.from_dict({**cfg.to_dict(), "size": 1, "colour": "red"})


@pytest.mark.parametrize("key, value, msg", [
    ("schedule", "linear", "schedule must be one of constant, cosine, step, got 'linear'"),
    ("gradient", "numeric", "gradient must be one of auto, manual, autograd, got 'numeric'"),
])
def test_config_choice_messages(key, value, msg):
    with pytest.raises(ValueError, match=msg):
        make_config(**TINY, **{key: value})


# ------------------------------------------------------------------------------------------ presets
def test_preset_names_and_count_overrides():
    with pytest.raises(ValueError, match="unknown preset 'paper'; choose one of paper-balanced-of"):
        preset_options("paper")
    cfg = preset_config("paper-balanced-of", 2, counts=[5, 3, 2], steps=3)
    assert cfg.counts == (5, 3, 2) and len(cfg.widths) == 2 and cfg.steps == 3
    cfg = preset_config("paper-imbalanced-gof", 1, classes=3, per_class=2, steps=3)
    assert cfg.counts == (2, 2, 2)


def test_restarts_without_callback_return_the_lowest_objective_first(tmp_path):
    cfg = make_config(**TINY, steps=3, snapshot_every=3, lr=0.05, init_std=0.5, seed=4)
    results = run_restarts(cfg, 3, tmp_path)
    seeds = sorted(r.config.seed for r in results)
    assert seeds == [4, 5, 6]
    objectives = {r.config.seed: r.final["objective"] for r in results}
    best_seed = min(objectives, key=objectives.get)
    assert results[0].config.seed == best_seed
    doc = json.loads((tmp_path / "restarts.json").read_text())
    assert doc["best_seed"] == best_seed and doc["best"] == f"seed-{best_seed}"


# ------------------------------------------------------------------------------------------ dnc helpers
def test_numerical_rank_of_empty_zero_and_known_matrices():
    assert numerical_rank(np.zeros((0, 3))) == 0
    assert numerical_rank(np.zeros((3, 3))) == 0
    a = np.diag([1.0, 0.5, 1e-4])  # the last singular value is below 1e-3 of the largest
    assert numerical_rank(a) == 2 and numerical_rank(a, rtol=1e-5) == 3


def test_minimize_skips_non_finite_values_and_runs_without_polish():
    # f(x) = (x - 1)^2, +inf beyond x = 5: the start at 8 sees only the non-finite value and stays put
    def fun(x):
        return ((x - 1.0) ** 2).sum() + torch.where(x[0] > 5, math.inf, 0.0)

    value, x = _minimize(fun, [[8.0], [3.0]], polish=0)
    assert value == pytest.approx(0.0, abs=1e-12) and x[0] == pytest.approx(1.0, abs=1e-6)
    value, x = _minimize(fun, [[8.0]], polish=0)
    assert value == 1e300 and x[0] == 8.0  # the only start: its non-finite value, reported as 1e300


def test_reference_construct_pads_to_the_widths_and_needs_widths_of_at_least_k():
    H1, W1, W2 = np.array([[1.0, -1.0], [0.5, 2.0]]), np.array([[2.0, 0.0], [0.0, 3.0]]), np.eye(2)
    ref = Reference("dnc", 0.0, "hand-made", np.zeros(0), H1=H1, weights=[W1, W2], bias=None)
    ws, H, b = ref.construct([3, 4], [2, 1])
    assert [w.shape for w in ws] == [(4, 3), (2, 4)] and H.shape == (3, 3) and b is None
    assert np.array_equal(ws[0][:2, :2], W1) and not ws[0][2:].any() and not ws[0][:, 2:].any()
    assert np.array_equal(H[:2], H1[:, [0, 0, 1]]) and not H[2].any()  # class 0 twice, class 1 once
    with pytest.raises(ValueError, match=r"need every width >= K = 2, got \[3, 1\]"):
        ref.construct([3, 1], [2, 1])


# ------------------------------------------------------------------------------------------ model
def test_activation_names_are_checked():
    p = make_problem(**TINY)
    with pytest.raises(ValueError, match="activation must be one of identity, relu, got 'tanh'"):
        UFM(p, activation="tanh")
    with pytest.raises(ValueError, match="activation must be one of identity, relu, got 'gelu'"):
        ufm_objective([torch.eye(2)], torch.eye(2), torch.arange(2), [0.1], 0.1, activation="gelu")


def test_relu_gradient_without_value_matches_autograd():
    p = make_problem(counts=[3, 2, 2], depth=3, widths=[4, 5, 3], lambda_w=[0.01, 0.02, 0.03], lambda_h=0.02,
                     bias=True)
    m = UFM(p, activation="relu")
    m.init_(3, 0.7)
    assert m.gradient_(with_loss=False) is None
    manual = m.grad.clone()
    m.autograd_loss()
    auto = m.grad.numpy()
    assert np.abs(manual.numpy() - auto).max() <= 1e-13 * np.abs(auto).max()


# ------------------------------------------------------------------------------------------ snapshots
def test_relu_row_at_a_non_finite_point_has_only_the_objective_columns():
    p = make_problem(counts=[3, 2], depth=2, widths=3, lambda_w=0.01, lambda_h=0.01)
    refs = references(p)  # imbalanced: no reference configurations, f_dnc = f_lowrank = NaN
    assert refs.dnc is None and "balanced" in refs.reason
    snap = ReluSnapshotter(p, refs)
    ws = [torch.full((3, 3), 1e200, dtype=torch.float64), torch.ones(2, 3, dtype=torch.float64)]
    row = snap(ws, torch.ones(3, 5, dtype=torch.float64))  # ||W_1||^2 overflows: f = inf
    assert row["objective"] == math.inf
    assert set(row) == {"objective", "gap", "rel_gap", "loss", "f_dnc", "f_lowrank", "gap_dnc", "gap_lowrank"}
    assert math.isnan(row["f_dnc"]) and math.isnan(row["rel_gap"])


def test_batch_of_biased_and_bias_free_runs_is_refused():
    common = dict(counts=[2, 2], depth=2, widths=[3, 3], lambda_w=0.01, lambda_h=0.01)
    with_b, without_b = Snapshotter(predict(**common, bias=True)), Snapshotter(predict(**common, bias=False))
    assert with_b.bias_star is not None and without_b.bias_star is None
    with pytest.raises(ValueError, match="runs of one batch must all have a predicted bias or none"):
        BatchSnapshotter([with_b, without_b])


def test_layout_and_reference_summaries():
    lay = Layout(K=7, M=4, t=1, q=2)  # 3 t + s + q = K: s = 2 singles, hidden rank 2 t + s = 4
    assert (lay.s, lay.hidden_rank) == (2, 4)
    assert lay.describe() == "1 triple (rank 2 each) + 2 singles + 2 dropped"
    assert lay.num_scalars(bias=True) == (4 + 1) + (21 + 4 * 2) + 2 + 1
    assert Layout(K=2, M=3, t=0, q=0).num_scalars(bias=False) == 4 + 2
    dnc = Reference("dnc", 0.5, "DNC", np.array([1.0, 2.0]), H1=np.eye(2), weights=[np.eye(2)], bias=None,
                    layer_ranks=[2], weight_ranks=[2])
    low = Reference("lowrank", 0.25, "low", np.array([3.0]), H1=np.eye(2), weights=[np.eye(2)], bias=None)
    d = References(dnc=dnc, lowrank=low, candidates=[("low", 0.25)]).to_dict()
    assert (d["f_dnc"], d["f_lowrank"], d["f_best"], d["lowrank_beats_dnc"]) == (0.5, 0.25, 0.25, True)
    assert d["dnc"] == {"name": "dnc", "objective": 0.5, "structure": "DNC", "scalars": [1.0, 2.0],
                        "layer_ranks": [2], "weight_ranks": [2]}
    assert d["candidates"] == [{"structure": "low", "objective": 0.25}]
    empty = References(dnc=None, lowrank=None, reason="imbalanced").to_dict()
    assert empty["dnc"] is None and math.isnan(empty["f_best"]) and not empty["lowrank_beats_dnc"]


def test_reduced_problem_keeps_one_sample_per_class():
    p = make_problem(classes=3, per_class=4, depth=2, widths=[5, 4], lambda_w=[0.01, 0.02], lambda_h=0.003, bias=True)
    r = reduced_problem(p)
    assert r.counts == (1, 1, 1) and r.widths == p.widths and r.lambda_w == p.lambda_w
    assert r.lambda_h == pytest.approx(0.012, rel=1e-15) and r.bias and r.loss == "mse"
