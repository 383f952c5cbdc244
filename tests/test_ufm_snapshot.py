"""Every column of a UFM metrics row (nclab.ufm.snapshot) against a slow numpy recomputation from the
definitions (module docstring, metrics.md), at random points and at the theory's minimizer; L-BFGS without
progress and --stop-rel-gap."""

import math

import numpy as np
import pytest
import torch

from nclab.theory import predict
from nclab.ufm import simulate
from nclab.ufm.snapshot import Snapshotter

CASES = {  # name -> predict() arguments (Grams unique, so every column is a plain Gram comparison)
    "gof-imbalanced": dict(counts=[5, 3, 2], depth=3, widths=[4, 5, 3], lambda_w=[2e-3, 1e-3, 3e-3], lambda_h=2e-3,
                           bias=False),
    "etf-bias": dict(counts=[3, 3, 3, 3], depth=2, widths=[6, 5], lambda_w=1e-3, lambda_h=1e-3, bias=True),
    "mse-bias-imbalanced": dict(counts=[4, 2, 2], depth=2, widths=[4, 3], lambda_w=1e-3, lambda_h=5e-3, bias=True),
    "ce-bias": dict(counts=[2, 2, 2], depth=2, widths=[3, 3], lambda_w=1e-2, lambda_h=1e-2, bias=True, loss="ce"),
}


def _nd(a, b):
    return float(np.linalg.norm(a / np.linalg.norm(a) - b / np.linalg.norm(b)))


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def reference_row(pred, W, H, b):
    """The row by the definitions, with explicit per-layer features and a dense pseudo-inverse."""
    p = pred.problem
    K, M, N = p.K, p.M, p.N
    counts = np.asarray(p.counts, dtype=float)
    y = np.repeat(np.arange(K), p.counts)
    Y = np.eye(K)[:, y]
    Z = H
    for w in W:
        Z = w @ Z
    if b is not None:
        Z = Z + b[:, None]
    if p.loss == "mse":
        data = 0.5 * ((Z - Y) ** 2).sum() / N
    else:
        data = float(np.mean(np.log(np.exp(Z).sum(0)) - Z[y, np.arange(N)]))
    reg = 0.5 * sum(lam * (w**2).sum() for lam, w in zip(p.lambda_w, W)) + 0.5 * p.lambda_h * (H**2).sum()
    f = data + reg
    gap = f - pred.objective
    row = {"objective": f, "loss": data, "gap": gap, "rel_gap": gap / abs(pred.objective)}
    feats, parts = [H], []
    for w in W[:-1]:
        feats.append(w @ feats[-1])  # H_j, the input of layer j (d_j, N)
    for j in range(M):
        P = np.eye(W[j].shape[1])
        for w in W[j:]:
            P = w @ P
        parts.append(P)  # W_M..W_j (K, d_j)
    for j in range(M):
        Hj = feats[j]
        mu = np.stack([Hj[:, y == k].mean(1) for k in range(K)])  # (K, d_j)
        mu_g = counts @ mu / N
        Sw = sum(np.outer(Hj[:, i] - mu[y[i]], Hj[:, i] - mu[y[i]]) for i in range(N)) / N
        Sb = sum(np.outer(mu[k] - mu_g, mu[k] - mu_g) for k in range(K)) / K
        row[f"nc1_L{j + 1}"] = float(np.trace(Sw @ np.linalg.pinv(Sb, rcond=1e-10, hermitian=True)) / K)
        hb = mu - mu_g if p.bias else mu
        lay = pred.layers[j]
        if j > 0:
            row[f"nc2_w_L{j + 1}"] = _nd(parts[j] @ parts[j].T, lay["partial_gram"])
            row[f"nc2_h_L{j + 1}"] = _nd(hb @ hb.T, lay["mean_gram"])
        C = np.asarray(lay["nc3_scale"])
        row[f"nc3_L{j + 1}"] = _nd(parts[j], C @ hb)
        if j == 0:
            hb1 = hb
    Wf = parts[0]
    G = {"WWt": Wf @ Wf.T, "HtH": hb1 @ hb1.T, "WH": Wf @ hb1.T}
    for key, col in (("WWt", "nc2_w"), ("HtH", "nc2_h"), ("WH", "nc3")):
        target = np.asarray(getattr(pred, key))
        row[col], row[f"err_{key}"] = _nd(G[key], target), _rel(G[key], target)
    row["nc2_w_L1"], row["nc2_h_L1"] = row["nc2_w"], row["nc2_h"]
    wn, hn = np.linalg.norm(Wf, axis=1), np.linalg.norm(hb1, axis=1)
    wn_star, hn_star = np.sqrt(np.diag(pred.WWt)), np.sqrt(np.diag(pred.HtH))
    row["w_norm_err"] = float(np.abs(wn - wn_star).max() / wn_star.max())
    row["h_norm_err"] = float(np.abs(hn - hn_star).max() / hn_star.max())
    for k in range(K):
        row[f"w_norm_{k}"], row[f"h_norm_{k}"] = wn[k], hn[k]
    lam = p.lambda_w
    row["balance_H"] = _rel(lam[0] * W[0].T @ W[0], p.lambda_h * H @ H.T)
    for j in range(M - 1):
        row[f"balance_L{j + 1}"] = _rel(lam[j + 1] * W[j + 1].T @ W[j + 1], lam[j] * W[j] @ W[j].T)
    if b is not None and p.loss == "mse":
        row["bias_err"] = _rel(b, np.asarray(pred.bias))
    return row


def random_point(pred, seed):
    p = pred.problem
    rng = np.random.default_rng(seed)
    dims = list(p.widths) + [p.K]
    W = [rng.standard_normal((dims[j + 1], dims[j])) for j in range(p.M)]
    H = rng.standard_normal((dims[0], p.N))
    b = rng.standard_normal(p.K) if p.bias else None
    return W, H, b


def snap_row(pred, W, H, b, dtype=torch.float64):
    t = lambda a: None if a is None else torch.tensor(a, dtype=dtype)  # noqa: E731
    return Snapshotter(pred)([t(w) for w in W], t(H), t(b))


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_every_column_matches_the_definition_at_random_points(name, seed):
    pred = predict(**CASES[name])
    assert pred.gram_unique
    W, H, b = random_point(pred, seed)
    row, ref = snap_row(pred, W, H, b), reference_row(pred, W, H, b)
    assert set(row) == set(ref)
    for key, want in ref.items():
        assert row[key] == pytest.approx(want, rel=1e-9, abs=1e-12), key
    assert row["balance_L1"] > 0.1 and row["balance_H"] > 0.1 and row["gap"] > 0  # a random point is not balanced


@pytest.mark.parametrize("name", sorted(CASES))
def test_minimizer_row_is_zero_where_the_theory_says(name):
    """At the constructed global minimizer: gap 0, layers balanced (theory.md 1.1-1.2), every Gram and norm equal
    to the prediction; then one layer scaled by 2 breaks exactly the balance columns that touch it."""
    pred = predict(**CASES[name])
    W, H, b = pred.construct()
    row = snap_row(pred, W, H, b)
    assert abs(row["rel_gap"]) < 1e-12
    zero = [k for k in row if k.startswith(("balance_", "nc2_", "nc3", "err_")) or k.endswith("norm_err")]
    zero += ["bias_err"] if b is not None and pred.problem.loss == "mse" else []
    assert ("bias_err" in row) == (b is not None and pred.problem.loss == "mse")  # CE: no predicted bias to compare
    for key in zero:
        assert row[key] < 1e-7, (key, row[key])
    for key in ("nc1_L1", "nc1_L2"):
        assert row[key] < 1e-20
    M = pred.problem.M
    W2 = [w.copy() for w in W]
    W2[1] = 2 * W2[1]
    row2 = snap_row(pred, W2, H, b)
    ref2 = reference_row(pred, W2, H, b)
    assert row2["balance_H"] < 1e-7  # W_1 and H are untouched
    assert row2["balance_L1"] == pytest.approx(ref2["balance_L1"], rel=1e-12) and row2["balance_L1"] > 0.5
    if M > 2:
        assert row2["balance_L2"] == pytest.approx(ref2["balance_L2"], rel=1e-12) and row2["balance_L2"] > 0.5
    # ||4 A - A|| / ||A|| = 3 for balance_L1 (W_2^T W_2 scaled by 4), hand-derived
    assert row2["balance_L1"] == pytest.approx(3.0, rel=1e-6)


@pytest.mark.parametrize("name", ["etf-bias", "ce-bias"])
def test_float32_parameters_are_measured_in_float64(name):
    """float32 tensors (a float32 run) are converted to float64 before any product: the row equals the float64
    reference of the same (rounded) values to 1e-9, far below float32's 1e-7."""
    pred = predict(**CASES[name])
    W, H, b = random_point(pred, 3)
    r32 = lambda a: None if a is None else a.astype(np.float32).astype(np.float64)  # noqa: E731
    row = snap_row(pred, W, H, b, dtype=torch.float32)
    ref = reference_row(pred, [r32(w) for w in W], r32(H), r32(b))
    for key, want in ref.items():
        assert row[key] == pytest.approx(want, rel=1e-9, abs=1e-12), key


def test_non_unique_grams_compare_sorted_spectra():
    """A width-2 bottleneck over 4 balanced classes: only the spectrum of the Grams is determined, so nc2/nc3 and
    the err columns compare sorted singular values (shape distance and relative error of the vectors)."""
    pred = predict([3, 3, 3, 3], depth=2, widths=[2, 2], lambda_w=1e-3, lambda_h=1e-3, bias=False)
    assert not pred.gram_unique
    W, H, b = random_point(pred, 4)
    row = snap_row(pred, W, H, b)
    y = np.repeat(np.arange(4), 3)
    Wf = W[1] @ W[0]
    mu = np.stack([H[:, y == k].mean(1) for k in range(4)])
    spec = lambda g: np.sort(np.linalg.svd(g, compute_uv=False))[::-1]  # noqa: E731
    for col, err, g, key in (("nc2_w", "err_WWt", Wf @ Wf.T, "WWt"), ("nc2_h", "err_HtH", mu @ mu.T, "HtH"),
                             ("nc3", "err_WH", Wf @ mu.T, "WH")):
        a, t = spec(g), spec(np.asarray(getattr(pred, key)))
        assert row[col] == pytest.approx(_nd(a, t), rel=1e-9), col
        assert row[err] == pytest.approx(np.linalg.norm(a - t) / np.linalg.norm(t), rel=1e-9), err
    P2, m2 = W[1], mu @ W[0].T
    lay = pred.layers[1]
    assert row["nc2_w_L2"] == pytest.approx(_nd(spec(P2 @ P2.T), spec(lay["partial_gram"])), rel=1e-9)
    assert row["nc2_h_L2"] == pytest.approx(_nd(spec(m2 @ m2.T), spec(lay["mean_gram"])), rel=1e-9)
    Wz, Hz, _ = pred.construct()
    zero = snap_row(pred, Wz, Hz, None)
    assert zero["nc2_w"] < 1e-9 and zero["err_WWt"] < 1e-9 and zero["err_HtH"] < 1e-9


def test_objective_and_loss_by_hand_on_a_tiny_ce_point():
    """CE, K = 2, M = 1, one sample per class, W = I, H = [[1, 0], [0, 1]]: logits identity, so the data term is
    log(e + 1) - 1 per sample; the regularizer is (lambda_w + lambda_h)/2 * 2."""
    pred = predict([1, 1], depth=1, widths=2, lambda_w=0.1, lambda_h=0.2, bias=False, loss="ce")
    row = snap_row(pred, [np.eye(2)], np.eye(2), None)
    data = math.log(math.e + 1) - 1
    assert row["loss"] == pytest.approx(data, rel=1e-14)
    assert row["objective"] == pytest.approx(data + 0.1 + 0.2, rel=1e-14)
    assert row["gap"] == pytest.approx(row["objective"] - pred.objective, rel=1e-14)


def test_non_finite_objective_gives_only_the_objective_columns():
    pred = predict(**CASES["etf-bias"])
    W, H, b = random_point(pred, 0)
    W[0][0, 0] = np.inf
    row = snap_row(pred, W, H, b)
    assert set(row) == {"objective", "gap", "rel_gap", "loss"} and not math.isfinite(row["objective"])


# ---------------------------------------------------------------------------------------------- stopping rules
def test_lbfgs_without_progress_stops_converged_with_one_row():
    """Started exactly at the minimizer (init "prediction", no noise) L-BFGS takes no step: status "converged",
    its message says so, and the run holds only the starting row (nothing new to record)."""
    r = simulate(counts=[3, 2], depth=1, widths=3, lambda_w=1e-2, lambda_h=1e-2, optimizer="lbfgs", steps=50,
                 snapshot_every=10, init="prediction", init_std=0.0)
    assert r.status == "converged" and "no further progress" in r.message, (r.status, r.message)
    assert r.step == 0 and len(r.history) == 1 and abs(r.history[0]["rel_gap"]) < 1e-12


def test_lbfgs_stopping_early_inside_a_snapshot_interval_records_the_last_point():
    r = simulate(counts=[3, 2], depth=1, widths=3, lambda_w=1e-2, lambda_h=1e-2, optimizer="lbfgs", steps=5000,
                 snapshot_every=1000, init_std=0.3, seed=0)
    assert r.status == "converged" and "no further progress" in r.message
    assert 0 < r.step < 1000 and [row["step"] for row in r.history] == [0, r.step]
    assert abs(r.final["rel_gap"]) < 1e-10


@pytest.mark.parametrize("stop", [1e-2, 1e-6])
def test_stop_rel_gap_stops_at_the_first_snapshot_below_it(stop):
    kw = dict(counts=[3, 2], depth=2, widths=3, lambda_w=1e-2, lambda_h=1e-2, steps=4000, snapshot_every=50,
              init_std=0.3, seed=0)
    full = simulate(**kw)
    gaps = [(row["step"], row["rel_gap"]) for row in full.history]
    first = next(step for step, g in gaps if step > 0 and g <= stop)
    r = simulate(**kw, stop_rel_gap=stop)
    assert r.status == "converged" and r.step == first, (r.step, first, r.message)
    assert f"at step {first}" in r.message and r.final["rel_gap"] <= stop
    assert [row["step"] for row in r.history] == [s for s, _ in gaps if s <= first]


def test_nc1_two_classes_zero_layers_and_tiny_scales():
    """NC1 per layer: two classes (rank 1 is enough), a zero first layer (no spread after it: NaN, not an
    error), and weights/features at 1e-120 (the zero solution's neighbourhood: NC1 is scale-invariant, so the
    value of the unscaled point, with no underflow)."""
    pred = predict([3, 2], depth=3, widths=[3, 3, 2], lambda_w=1e-3, lambda_h=1e-3, bias=False)
    W, H, b = random_point(pred, 5)
    ref = reference_row(pred, W, H, b)
    row = snap_row(pred, W, H, b)
    for j in (1, 2, 3):
        assert math.isfinite(ref[f"nc1_L{j}"]) and row[f"nc1_L{j}"] == pytest.approx(ref[f"nc1_L{j}"], rel=1e-9)
    tiny = snap_row(pred, [1e-120 * w for w in W], 1e-120 * H, b)
    for j in (1, 2, 3):
        assert tiny[f"nc1_L{j}"] == pytest.approx(ref[f"nc1_L{j}"], rel=1e-9), j
    W0 = [np.zeros_like(W[0])] + W[1:]
    zero = snap_row(pred, W0, H, b)
    assert zero["nc1_L1"] == pytest.approx(ref["nc1_L1"], rel=1e-9)
    assert math.isnan(zero["nc1_L2"]) and math.isnan(zero["nc1_L3"])
    flat = snap_row(pred, W, np.zeros_like(H), b)  # the zero solution itself: every NC1 undefined
    assert all(math.isnan(flat[f"nc1_L{j}"]) for j in (1, 2, 3))
