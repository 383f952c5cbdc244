"""nclab.experiments.tracking: the target a train run measures against (choose_target) and every column of
HeadTracker against a slow recomputation with explicit per-layer features and a dense pseudo-inverse."""

import math

import numpy as np
import pytest
import torch

from nclab.experiments.config import make_train_config
from nclab.experiments.tracking import HeadTracker, choose_target
from nclab.metrics import ClassStats
from nclab.results import RunStore
from nclab.theory import predict


def cfg(**kw):
    return make_train_config(**{"counts": [4, 3, 2], "depth": 2, **kw})


# ---------------------------------------------------------------------------------------------- choose_target
@pytest.mark.parametrize("bias", [True, False])
def test_ce_measures_against_the_simplex_etf(bias):
    name, pred, note = choose_target(cfg(loss="ce", bias=bias, lambda_w=[1e-3], lambda_h=1e-3), [4, 3, 2], [5, 5])
    assert (name, pred) == ("etf", None) and note.startswith("CE")


@pytest.mark.parametrize("bias, named", [(True, "etf"), (False, "of")])
@pytest.mark.parametrize("decays", [dict(lambda_h=0.0), dict(lambda_w=[0.0, 1e-3], lambda_h=1e-3)])
def test_no_decay_no_theory(bias, named, decays):
    name, pred, note = choose_target(cfg(loss="mse", bias=bias, **decays), [4, 3, 2], [5, 5])
    assert (name, pred) == (named, None) and "no theory" in note


def test_explicit_target_wins():
    assert choose_target(cfg(target="of", bias=True), [4, 3, 2], [5, 5]) == ("of", None, "chosen by the config")


@pytest.mark.parametrize("bias, named", [(True, "etf"), (False, "of")])
def test_zero_minimizer_falls_back_to_the_named_frame(bias, named):
    """Decays so large that the global minimizer is W = 0, H = 0 (theory.md: lambda product above the threshold)."""
    c = cfg(loss="mse", bias=bias, lambda_w=[1.0], lambda_h=1.0)
    pred = predict([4, 3, 2], depth=2, widths=[5, 5], lambda_w=[1.0, 1.0], lambda_h=1.0, bias=bias)
    assert np.linalg.norm(pred.WWt) == 0  # independent check that this really is the zero solution
    name, got, note = choose_target(c, [4, 3, 2], [5, 5])
    assert (name, got) == (named, None) and "zero" in note


def test_non_unique_grams_fall_back_to_the_named_frame():
    """Balanced bias-free classes through a width-2 bottleneck: any 2 of the 4 classes can be the active ones,
    so only the spectrum of the Grams is determined."""
    c = make_train_config(counts=[5, 5, 5, 5], depth=2, loss="mse", bias=False, lambda_w=[1e-3], lambda_h=1e-3)
    pred = predict([5, 5, 5, 5], depth=2, widths=[2, 2], lambda_w=1e-3, lambda_h=1e-3, bias=False)
    assert not pred.gram_unique
    name, got, note = choose_target(c, [5, 5, 5, 5], [2, 2])
    assert (name, got) == ("of", None) and "not unique" in note


@pytest.mark.parametrize("bias", [True, False])
def test_auto_mse_uses_the_prediction_of_the_runs_own_problem(bias):
    c = cfg(loss="mse", bias=bias, lambda_w=[1e-3, 2e-3], lambda_h=3e-3)
    name, pred, note = choose_target(c, [4, 3, 2], [6, 5])
    ref = predict([4, 3, 2], depth=2, widths=[6, 5], lambda_w=[1e-3, 2e-3], lambda_h=3e-3, bias=bias)
    assert name == "theory" and note == f"nclab.predict: {ref.geometry}"
    assert pred.objective == ref.objective and np.array_equal(pred.WWt, ref.WWt)
    assert list(pred.problem.widths) == [6, 5] and list(pred.problem.counts) == [4, 3, 2]


# ---------------------------------------------------------------------------------------------- HeadTracker
def _nd(a, b):
    return float(np.linalg.norm(a / np.linalg.norm(a) - b / np.linalg.norm(b)))


def reference(target, pred, counts, W, h, y, bias):
    """The module docstring's columns, recomputed with explicit layer features."""
    K, M, N = len(counts), len(W), len(y)
    counts = np.asarray(counts, dtype=float)
    etf = (np.eye(K) - 1 / K) / math.sqrt(K - 1)
    of = np.eye(K) / math.sqrt(K)
    center = bias if target == "theory" else target == "etf"
    row, feats = {}, [h]
    for w in W[:-1]:
        feats.append(feats[-1] @ w.T)  # (N, d_j)
    parts = []
    for j in range(M):
        P = np.eye(W[j].shape[1])
        for w in W[j:]:
            P = w @ P
        parts.append(P)
    for j in range(M):
        x = feats[j]
        mu = np.stack([x[y == k].mean(0) for k in range(K)])
        mu_g = counts @ mu / N
        Sw = (x - mu[y]).T @ (x - mu[y]) / N
        Sb = (mu - mu_g).T @ (mu - mu_g) / K
        row[f"nc1_L{j + 1}"] = float(np.trace(Sw @ np.linalg.pinv(Sb, rcond=1e-10, hermitian=True)) / K)
        hm = mu - mu_g if center else mu
        if target == "theory":
            lay = pred.layers[j]
            gw, gh, C = lay["partial_gram"], lay["mean_gram"], np.asarray(lay["nc3_scale"])
        else:
            gw = gh = etf if target == "etf" else of
            C = np.eye(K)
        row[f"nc2_w_L{j + 1}"] = _nd(parts[j] @ parts[j].T, gw)
        row[f"nc2_h_L{j + 1}"] = _nd(hm @ hm.T, gh)
        row[f"nc3_L{j + 1}"] = _nd(parts[j], C @ hm)
        if j == 0:
            hm1 = hm
    row["nc2_w"], row["nc2_h"] = row["nc2_w_L1"], row["nc2_h_L1"]
    g_wh = np.asarray(pred.WH) if target == "theory" else (etf if target == "etf" else of)
    row["nc3"] = _nd(parts[0] @ hm1.T, g_wh)
    wn, hn = np.linalg.norm(parts[0], axis=1), np.linalg.norm(hm1, axis=1)
    if target == "theory":
        ws, hs = np.sqrt(np.diag(pred.WWt)), np.sqrt(np.diag(pred.HtH))
        row["w_norm_err"] = float(np.abs(wn - ws).max() / ws.max())
        row["h_norm_err"] = float(np.abs(hn - hs).max() / hs.max())
    for k in range(K):
        row[f"w_norm_{k}"], row[f"h_norm_{k}"] = wn[k], hn[k]
    return row, {"WWt": parts[0] @ parts[0].T, "HtH": hm1 @ hm1.T, "WH": parts[0] @ hm1.T}


def data(counts, dims, seed):
    rng = np.random.default_rng(seed)
    K = len(counts)
    y = np.repeat(np.arange(K), counts)
    h = 2 * rng.standard_normal((K, dims[0]))[y] + 0.3 * rng.standard_normal((len(y), dims[0]))
    W = [rng.standard_normal((dims[j + 1], dims[j])) for j in range(len(dims) - 1)]
    return h, y, W


@pytest.mark.parametrize("target, bias", [("etf", True), ("of", False), ("theory", True), ("theory", False)])
def test_every_column_matches_the_recomputation(tmp_path, target, bias):
    counts, dims = [6, 4, 3], [5, 4, 4, 3]  # M = 3
    h, y, W = data(counts, dims, seed=1)
    pred = predict(counts, depth=3, widths=dims[:-1], lambda_w=1e-3, lambda_h=1e-3, bias=bias) \
        if target == "theory" else None
    tracker = HeadTracker(target, pred, counts, 3, bias)
    stats = ClassStats(3).update(torch.tensor(h), torch.tensor(y))
    row = tracker(stats, [torch.tensor(w, dtype=torch.float32 if i else torch.float64) for i, w in enumerate(W)])
    W32 = [w if i == 0 else torch.tensor(w, dtype=torch.float32).double().numpy() for i, w in enumerate(W)]
    ref, grams = reference(target, pred, counts, W32, h, y, bias)
    assert list(row) == tracker.columns() and set(row) == set(ref)
    for key, want in ref.items():
        assert row[key] == pytest.approx(want, rel=1e-9, abs=1e-12), key
    tracker.save(RunStore(tmp_path), epoch=7)
    doc = RunStore(tmp_path).read_json("grams.json")
    assert doc["epoch"] == 7 and doc["target"] == target and doc["centered"] == (bias if target == "theory"
                                                                                   else target == "etf")
    for key, g in grams.items():
        assert np.allclose(doc[key], g, rtol=1e-12, atol=1e-12), key
    assert len(doc["layers"]) == 3 and [lay["layer"] for lay in doc["layers"]] == [1, 2, 3]


def test_save_before_a_call_writes_nothing(tmp_path):
    HeadTracker("etf", None, [2, 2], 1, True).save(RunStore(tmp_path / "r"))
    assert not (tmp_path / "r" / "grams.json").exists()


def test_at_the_minimizer_theory_columns_vanish():
    counts = [6, 4, 3]
    pred = predict(counts, depth=2, widths=[4, 4], lambda_w=1e-3, lambda_h=1e-3, bias=False)
    W, H, _ = pred.construct()
    y = np.repeat(np.arange(3), counts)
    row = HeadTracker("theory", pred, counts, 2, False)(ClassStats(3).update(H.T, y), [torch.tensor(w) for w in W])
    for key in ("nc2_w", "nc2_h", "nc3", "nc2_w_L2", "nc2_h_L2", "nc3_L1", "nc3_L2", "w_norm_err", "h_norm_err"):
        assert row[key] < 1e-7, (key, row[key])
    assert row["nc1_L1"] < 1e-20 and row["nc1_L2"] < 1e-20
    ws = np.sqrt(np.diag(pred.WWt))
    assert [row[f"w_norm_{k}"] for k in range(3)] == pytest.approx(ws, rel=1e-9)


def test_equal_class_means_give_nan_nc1_and_nan_norm_error():
    """No between-class spread: NC1 undefined (NaN, not perfect); a zero prediction: norm errors NaN."""
    counts = [2, 2]
    pred = predict(counts, depth=1, widths=2, lambda_w=10.0, lambda_h=10.0, bias=False)  # the zero solution
    assert np.linalg.norm(pred.WWt) == 0
    h = np.array([[1.0, 2.0], [3.0, 4.0], [2.0, 3.0], [2.0, 3.0]])  # both classes have mean (2, 3)
    y = np.array([0, 0, 1, 1])
    row = HeadTracker("theory", pred, counts, 1, False)(ClassStats(2).update(h, y), [torch.eye(2)])
    assert math.isnan(row["nc1_L1"]) and math.isnan(row["w_norm_err"]) and math.isnan(row["h_norm_err"])


# ---------------------------------------------------------------------------------------------- mutation-found gaps
def test_notes_word_for_word_and_a_small_nonzero_minimizer():
    ce = choose_target(cfg(loss="ce"), [4, 3, 2], [5, 5])[2]
    assert ce == "CE: the simplex ETF (nclab.predict covers balanced CE only as a candidate search)"
    assert choose_target(cfg(lambda_h=0.0), [4, 3, 2], [5, 5])[2] == ("no theory without weight and feature decay; "
                                                                        "the named frame is used")
    # decays just below the zero-solution threshold: ||W W^T|| = 0.93 < 1 is still a (nonzero) theory target
    c = cfg(loss="mse", bias=True, lambda_w=[0.1], lambda_h=0.1)
    name, pred, note = choose_target(c, [4, 3, 2], [5, 5])
    assert 0 < np.linalg.norm(pred.WWt) < 1 and name == "theory" and note == f"nclab.predict: {pred.geometry}"


def test_two_classes_small_weights_and_cross_grams(tmp_path):
    """K = 2 (rank 1 is enough for NC1), weights with row norms below 1, and grams.json's cross Grams."""
    counts, dims = [5, 3], [3, 3, 2]
    h, y, W = data(counts, dims, seed=2)
    W = [0.01 * w for w in W]
    tracker = HeadTracker("of", None, counts, 2, False)
    row = tracker(ClassStats(2).update(h, y), [torch.tensor(w) for w in W])
    ref, _ = reference("of", None, counts, W, h, y, False)
    for key, want in ref.items():
        assert row[key] == pytest.approx(want, rel=1e-9, abs=1e-15), key
    assert math.isfinite(row["nc1_L1"]) and math.isfinite(row["nc1_L2"]) and max(row["w_norm_0"], row["w_norm_1"]) < 1
    tracker.save(RunStore(tmp_path), epoch=1)
    doc = RunStore(tmp_path).read_json("grams.json")
    mu = np.stack([h[y == k].mean(0) for k in range(2)])
    assert np.allclose(doc["layers"][0]["cross_gram"], (W[1] @ W[0]) @ mu.T, rtol=1e-12)
    assert np.allclose(doc["layers"][1]["cross_gram"], W[1] @ (mu @ W[0].T).T, rtol=1e-12)
