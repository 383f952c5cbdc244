"""nclab.ufm.snapshot beyond the other suites (mutation testing, scripts/mutation.py snapshot): every column of a
ReLU row against a slow numpy forward pass and the definitions (ReluSnapshotter docstring), the degenerate
rows (zero features, zero layer, overflow), and shared_objective in float64 from float32 inputs."""

import math
import warnings

import numpy as np
import pytest
import torch

from nclab.theory import make_problem, predict
from nclab.ufm.dnc import Reference, References
from nclab.ufm.snapshot import ReluSnapshotter, Snapshotter, shared_objective

COUNTS, WIDTHS, LAM_W, LAM_H = [2, 3, 2], [4, 4, 3], [0.01, 0.02, 0.03], 0.005
F_DNC, F_LOW = 0.5, 0.3


def _refs(grams):
    """Reference configurations given by their objectives and layer Grams (what ReluSnapshotter reads)."""
    def ref(name, f, g):
        return Reference(name, f, name, np.zeros(0), H1=np.zeros((3, 3)), weights=[], bias=None, layer_grams=g)
    return References(dnc=ref("dnc", F_DNC, grams), lowrank=ref("lowrank", F_LOW, []))


def _rank(a, rtol=1e-3):
    s = np.linalg.svd(a, compute_uv=False)
    return int((s > rtol * s[0]).sum()) if s[0] > 0 else 0


def _unit(a):
    with np.errstate(invalid="ignore"):  # a zero matrix has no direction: NaN
        return a / np.linalg.norm(a)


def _nc1(feats, y, K):
    """tr(Sigma_W Sigma_B^+)/K of features (d, N): the definition with a dense pseudo-inverse."""
    n = np.bincount(y, minlength=K).astype(float)
    mu = np.stack([feats[:, y == k].mean(1) for k in range(K)])  # (K, d)
    mc = mu - n @ mu / n.sum()
    dev = feats - mu[y].T
    sw = dev @ dev.T / len(y)
    return float(np.trace(sw @ np.linalg.pinv(mc.T @ mc / K, rcond=1e-10)) / K)


def reference_relu_row(W, H, b, grams):
    y = np.repeat(np.arange(3), COUNTS)
    N, K = len(y), 3
    feats = [H]
    for w in W[:-1]:
        feats.append(np.maximum(w @ feats[-1], 0.0))
    Z = W[-1] @ feats[-1] + (0.0 if b is None else b[:, None])
    loss = 0.5 * np.sum((Z - np.eye(K)[:, y]) ** 2) / N
    f = loss + sum(0.5 * lam * np.sum(w * w) for lam, w in zip(LAM_W, W)) + 0.5 * LAM_H * np.sum(H * H)
    row = {"objective": f, "loss": loss, "gap": f - F_LOW, "rel_gap": (f - F_LOW) / F_LOW, "f_dnc": F_DNC,
           "f_lowrank": F_LOW, "gap_dnc": f - F_DNC, "gap_lowrank": f - F_LOW}
    for j, (h, w) in enumerate(zip(feats, W)):
        mu = np.stack([h[:, y == k].mean(1) for k in range(K)])  # (K, d_j)
        row[f"nc1_L{j + 1}"] = _nc1(h, y, K)
        row[f"nc2_h_L{j + 1}"] = math.nan if j == 0 else float(np.linalg.norm(_unit(mu @ mu.T) - _unit(grams[j])))
        row[f"nc3_L{j + 1}"] = float(np.linalg.norm(_unit(w.T @ w) - _unit(mu.T @ mu)))
        row[f"rank_means_L{j + 1}"] = _rank(mu)
        row[f"rank_w_L{j + 1}"] = _rank(w)
    return row


@pytest.fixture(scope="module")
def relu_case():
    g = np.random.default_rng(11)
    p = make_problem(counts=COUNTS, depth=3, widths=WIDTHS, lambda_w=LAM_W, lambda_h=LAM_H, bias=True)
    # a DNC Gram at every layer, layer 1 included: nc2_h_L1 is NaN all the same (DNC does not fix it there)
    grams = [(lambda a: a @ a.T)(g.normal(size=(3, 3))) for _ in range(3)]
    # W_1 has singular values 1, 0.5, 2e-3, 5e-4: numerical rank 3 at rtol 1e-3 (one value on each side)
    q1, _ = np.linalg.qr(g.normal(size=(4, 4)))
    q2, _ = np.linalg.qr(g.normal(size=(4, 4)))
    W = [q1 @ np.diag([1.0, 0.5, 2e-3, 5e-4]) @ q2, g.normal(size=(3, 4)), g.normal(size=(3, 3))]
    H = g.normal(size=(4, 7)) + np.repeat(g.normal(size=(4, 3)) * 2, COUNTS, axis=1)
    b = g.normal(size=3)
    return p, grams, W, H, b


def test_relu_row_matches_the_definitions(relu_case):
    p, grams, W, H, b = relu_case
    snap = ReluSnapshotter(p, _refs(grams))
    row = snap([torch.tensor(w) for w in W], torch.tensor(H), torch.tensor(b))
    ref = reference_relu_row(W, H, b, grams)
    assert set(row) == set(ref)
    assert row["rank_w_L1"] == 3
    for k, v in ref.items():
        if math.isnan(v):
            assert math.isnan(row[k]), k
        elif k.startswith("rank"):
            assert row[k] == v, k
        else:
            assert row[k] == pytest.approx(v, rel=1e-9, abs=1e-12), k


def test_relu_row_float32_inputs_are_measured_in_float64(relu_case):
    p, grams, W, H, b = relu_case
    W32, H32, b32 = [w.astype(np.float32) for w in W], H.astype(np.float32), b.astype(np.float32)
    row = ReluSnapshotter(p, _refs(grams))([torch.tensor(w) for w in W32], torch.tensor(H32), torch.tensor(b32))
    ref = reference_relu_row([w.astype(float) for w in W32], H32.astype(float), b32.astype(float), grams)
    assert row["objective"] == pytest.approx(ref["objective"], rel=1e-13)
    assert row["nc1_L3"] == pytest.approx(ref["nc1_L3"], rel=1e-9)


def test_relu_row_degenerate_points(relu_case):
    p, grams, W, H, b = relu_case
    snap = ReluSnapshotter(p, _refs(grams))
    # zero features: no class-mean spread at any layer (NC1 undefined), zero means (alignment undefined)
    row = snap([torch.tensor(w) for w in W], torch.zeros(4, 7, dtype=torch.float64), torch.tensor(b))
    for j in (1, 2, 3):
        assert math.isnan(row[f"nc1_L{j}"]) and math.isnan(row[f"nc3_L{j}"]) and row[f"rank_means_L{j}"] == 0
    assert math.isnan(row["nc2_h_L2"])  # zero class-mean Gram
    assert [row[f"rank_w_L{j}"] for j in (1, 2, 3)] == [3, 3, 3]
    # a zero last layer: W_3 has rank 0 and no alignment; the means above it are untouched
    ws = [torch.tensor(W[0]), torch.tensor(W[1]), torch.zeros(3, 3, dtype=torch.float64)]
    row = snap(ws, torch.tensor(H), torch.tensor(b))
    ref = reference_relu_row(W[:2] + [np.zeros((3, 3))], H, b, grams)
    assert row["rank_w_L3"] == 0 and math.isnan(row["nc3_L3"])
    assert row["nc3_L2"] == pytest.approx(ref["nc3_L2"], rel=1e-9)
    assert row["objective"] == pytest.approx(ref["objective"], rel=1e-12)
    # no references (imbalanced classes): f_dnc, gaps and nc2_h are NaN, the rest is still measured
    row = ReluSnapshotter(p, References(dnc=None, lowrank=None, reason="test"))(
        [torch.tensor(w) for w in W], torch.tensor(H), torch.tensor(b))
    assert all(math.isnan(row[k]) for k in ("f_dnc", "f_lowrank", "gap", "rel_gap", "gap_dnc", "nc2_h_L2"))
    assert row["rank_means_L1"] == ref["rank_means_L1"]


def test_relu_rel_gap_divides_by_the_best_reference_magnitude(relu_case):
    p, grams, W, H, b = relu_case
    refs = _refs(grams)
    refs.lowrank.objective = -0.25  # a negative best reference: the gap is relative to |f_best|
    row = ReluSnapshotter(p, refs)([torch.tensor(w) for w in W], torch.tensor(H), torch.tensor(b))
    assert row["gap"] == pytest.approx(row["objective"] + 0.25, rel=1e-15)
    assert row["rel_gap"] == pytest.approx(row["gap"] / 0.25, rel=1e-15)
    refs.lowrank.objective = 0.0  # f_best = 0: the gap itself, scaled by 1e300 (never a division by zero)
    row = ReluSnapshotter(p, refs)([torch.tensor(w) for w in W], torch.tensor(H), torch.tensor(b))
    assert row["rel_gap"] == row["objective"] / 1e-300


def test_relu_row_at_overflow_keeps_only_the_objective_columns(relu_case):
    p, grams, W, H, b = relu_case
    ws = [torch.full((4, 4), 1e200, dtype=torch.float64)] + [torch.tensor(w) for w in W[1:]]
    row = ReluSnapshotter(p, _refs(grams))(ws, torch.tensor(H), torch.tensor(b))
    assert row["objective"] == math.inf and row["gap_dnc"] == math.inf
    assert set(row) == {"objective", "gap", "rel_gap", "loss", "f_dnc", "f_lowrank", "gap_dnc", "gap_lowrank"}


# ------------------------------------------------------------------------------------------ linear UFM
def test_zero_features_leave_balance_h_undefined():
    pred = predict(counts=[2, 2, 2], depth=2, widths=[3, 3], lambda_w=0.01, lambda_h=0.01)
    g = np.random.default_rng(2)
    W = [g.normal(size=(3, 3)), g.normal(size=(3, 3))]
    row = Snapshotter(pred)([torch.tensor(w) for w in W], torch.zeros(3, 6, dtype=torch.float64))
    # ||lam_1 W_1^T W_1 - lam_H H H^T|| / ||lam_H H H^T||: the denominator is 0
    assert math.isnan(row["balance_H"])
    ref = np.linalg.norm(0.01 * W[1].T @ W[1] - 0.01 * W[0] @ W[0].T) / np.linalg.norm(0.01 * W[0] @ W[0].T)
    assert row["balance_L1"] == pytest.approx(ref, rel=1e-12)


def test_shared_objective_is_float64_from_float32_inputs():
    pred = predict(counts=[2, 1, 2], depth=2, widths=[3, 4], lambda_w=[0.01, 0.03], lambda_h=0.02)
    g = np.random.default_rng(5)
    W = [g.normal(size=(4, 3)).astype(np.float32), g.normal(size=(3, 4)).astype(np.float32)]
    H = g.normal(size=(3, 5)).astype(np.float32)
    W64, H64 = [w.astype(float) for w in W], H.astype(float)
    y = np.array([0, 0, 1, 2, 2])
    f_ref = (0.5 * np.sum((W64[1] @ W64[0] @ H64 - np.eye(3)[:, y]) ** 2) / 5
             + 0.5 * (0.01 * np.sum(W64[0] ** 2) + 0.03 * np.sum(W64[1] ** 2) + 0.02 * np.sum(H64 ** 2)))
    f = shared_objective(pred, [torch.tensor(w) for w in W], torch.tensor(H))
    assert f == pytest.approx(f_ref, rel=1e-14)


def _spec_sym(g):
    """Eigenvalues of a symmetric PSD matrix, descending (its singular values)."""
    return np.sort(np.abs(np.linalg.eigvalsh((g + g.T) / 2)))[::-1]


def test_non_unique_grams_are_compared_by_their_spectra():
    # widths 2 < K = 3 with balanced classes: the rank budget cuts through equal modes, only spectra are unique
    pred = predict(counts=[2, 2, 2], depth=2, widths=[2, 2], lambda_w=0.01, lambda_h=0.02)
    assert not pred.gram_unique
    g = np.random.default_rng(8)
    W, H = [g.normal(size=(2, 2)), g.normal(size=(3, 2))], g.normal(size=(2, 6))
    row = Snapshotter(pred)([torch.tensor(w) for w in W], torch.tensor(H))
    y = np.repeat(np.arange(3), 2)
    mu = np.stack([H[:, y == k].mean(1) for k in range(3)])  # bias-free: uncentred means (K, d)
    Wf = W[1] @ W[0]
    measured = {"WWt": Wf @ Wf.T, "HtH": mu @ mu.T}
    for key, col in (("WWt", "nc2_w"), ("HtH", "nc2_h")):
        a, b = _spec_sym(measured[key]), _spec_sym(np.asarray(getattr(pred, key)))
        assert row[col] == pytest.approx(np.linalg.norm(_unit(a) - _unit(b)), rel=1e-9, abs=1e-12), col
        assert row[f"err_{key}"] == pytest.approx(np.linalg.norm(a - b) / np.linalg.norm(b), rel=1e-9), key
    # WH is not symmetric: its singular values are the square roots of the eigenvalues of (WH)^T (WH)
    wh, whs = Wf @ mu.T, np.asarray(pred.WH)
    a, b = np.sqrt(_spec_sym(wh.T @ wh)), np.sqrt(_spec_sym(whs.T @ whs))
    assert row["nc3"] == pytest.approx(np.linalg.norm(_unit(a) - _unit(b)), abs=1e-7)
    assert row["err_WH"] == pytest.approx(np.linalg.norm(a - b) / np.linalg.norm(b), abs=1e-7)
    lay = pred.layers[1]  # layer 2: W_2 against partial_gram, the layer-2 means against mean_gram
    m2 = mu @ W[0].T
    a, b = _spec_sym(W[1] @ W[1].T), _spec_sym(np.asarray(lay["partial_gram"]))
    assert row["nc2_w_L2"] == pytest.approx(np.linalg.norm(_unit(a) - _unit(b)), rel=1e-9, abs=1e-12)
    a, b = _spec_sym(m2 @ m2.T), _spec_sym(np.asarray(lay["mean_gram"]))
    assert row["nc2_h_L2"] == pytest.approx(np.linalg.norm(_unit(a) - _unit(b)), rel=1e-9, abs=1e-12)


def test_rows_raise_no_numpy_warnings_where_products_overflow():
    # W_1 and H of size 1e60: the objective is finite (~1e120) but W_1 H overflows in the NC statistics
    pred = predict(counts=[2, 2, 2], depth=2, widths=[3, 3], lambda_w=0.01, lambda_h=0.01)
    g = np.random.default_rng(0)
    W = [g.normal(size=(3, 3)) * 1e60, np.zeros((3, 3))]
    H = g.normal(size=(3, 6)) * 1e60
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        row = Snapshotter(pred)([torch.tensor(w) for w in W], torch.tensor(H))
    f_ref = 0.5 + 0.5 * 0.01 * (np.sum(W[0] ** 2) + np.sum(H ** 2))  # Z = W_2 W_1 H = 0: data term 1/2
    assert row["objective"] == pytest.approx(f_ref, rel=1e-12)
    assert math.isnan(row["nc2_w"])  # the end-to-end classifier is zero


def test_zero_ce_prediction_has_no_nc3_scale():
    # strong decay with CE: the optimum is W = 0, H = 0, which fixes no scale C for nc3_dual (NaN at every layer)
    pred = predict(counts=[2, 2], depth=2, widths=[2, 2], lambda_w=1.0, lambda_h=1.0, loss="ce")
    assert pred.geometry == "zero" and all(lay["nc3_scale"] is None for lay in pred.layers)
    g = np.random.default_rng(4)
    W, H = [g.normal(size=(2, 2)), g.normal(size=(2, 2))], g.normal(size=(2, 4))
    row = Snapshotter(pred)([torch.tensor(w) for w in W], torch.tensor(H))
    assert math.isnan(row["nc3_L1"]) and math.isnan(row["nc3_L2"])
    Z, y = W[1] @ W[0] @ H, np.array([0, 0, 1, 1])
    ce = np.mean(np.log(np.exp(Z).sum(0)) - Z[y, np.arange(4)])
    f = ce + 0.5 * (np.sum(W[0] ** 2) + np.sum(W[1] ** 2) + np.sum(H ** 2))
    assert row["objective"] == pytest.approx(f, rel=1e-12) and row["loss"] == pytest.approx(ce, rel=1e-10)


def test_relu_row_of_two_classes_has_nc1():
    # K = 2: the centred class means have rank 1, enough for NC1
    p = make_problem(counts=[2, 3], depth=2, widths=[3, 3], lambda_w=0.01, lambda_h=0.01)
    g = np.random.default_rng(6)
    W, H = [g.normal(size=(3, 3)), g.normal(size=(2, 3))], g.normal(size=(3, 5)) + np.repeat([[2, -2]] * 3, [2, 3], 1)
    row = ReluSnapshotter(p, References(dnc=None, lowrank=None))([torch.tensor(w) for w in W], torch.tensor(H))
    y = np.array([0, 0, 1, 1, 1])
    assert row["nc1_L1"] == pytest.approx(_nc1(H, y, 2), rel=1e-9)
    assert row["nc1_L2"] == pytest.approx(_nc1(np.maximum(W[0] @ H, 0), y, 2), rel=1e-9)


def test_nc1_of_deep_layers_is_scale_invariant_down_to_tiny_weights():
    # W_1, W_2 of size 1e-160: the layer-3 features (~1e-320) leave float64's normal range, NC1 (scale-invariant)
    # is still that of the unscaled layers (the NC1 projections use unit-norm W_j)
    pred = predict(counts=[2, 2, 2], depth=3, widths=[3, 3, 3], lambda_w=0.01, lambda_h=0.01)
    g = np.random.default_rng(3)
    W, H = [g.normal(size=(3, 3)) for _ in range(3)], g.normal(size=(3, 6))
    ws = [torch.tensor(W[0] * 1e-160), torch.tensor(W[1] * 1e-160), torch.tensor(W[2])]
    row = Snapshotter(pred)(ws, torch.tensor(H))
    y = np.repeat(np.arange(3), 2)
    assert row["nc1_L2"] == pytest.approx(_nc1(W[0] @ H, y, 3), rel=1e-9)
    assert row["nc1_L3"] == pytest.approx(_nc1(W[1] @ W[0] @ H, y, 3), rel=1e-9)
