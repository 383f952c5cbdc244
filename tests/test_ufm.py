"""UFM trainer: the hand-written gradient is the shared objective's, and training reaches nclab.predict."""

import numpy as np
import pytest
import torch
from descent import perturb

from nclab import predict, simulate
from nclab.theory import make_problem
from nclab.ufm import UFM, Trainer, make_config
from nclab.ufm.snapshot import Snapshotter, shared_objective

GRAD_SETTINGS = {
    "mse": dict(counts=[3, 4, 2], widths=[5], lambda_w=0.01, lambda_h=0.02),
    "mse-bias-deep": dict(counts=[3, 4, 2], widths=[5, 3, 6], lambda_w=[0.01, 0.02, 0.03], lambda_h=0.02, bias=True),
    "mse-bottleneck": dict(counts=[2, 2, 3, 1], widths=[6, 2, 5, 4], lambda_w=0.01, lambda_h=0.01),
    "ce": dict(counts=[3, 3, 3], widths=[4, 4], lambda_w=0.01, lambda_h=0.02, loss="ce"),
    "ce-bias": dict(counts=[2, 2, 2, 2], widths=[3, 5, 4], lambda_w=0.01, lambda_h=0.02, loss="ce", bias=True),
}


@pytest.mark.parametrize("name", sorted(GRAD_SETTINGS))
def test_manual_gradient_equals_autograd_of_shared_objective(name):
    m = UFM(make_problem(**GRAD_SETTINGS[name]), dtype=torch.float64)
    m.init_(seed=3, std=0.7)
    f_manual = float(m.gradient_(with_loss=True))
    g_manual = m.grad.clone()
    f_auto = float(m.autograd_loss())
    g_auto = m.grad.clone()
    assert f_manual == pytest.approx(f_auto, rel=1e-13)
    scale = float(g_auto.abs().max())
    assert float((g_manual - g_auto).abs().max()) <= 1e-12 * scale
    m.gradient_()  # without the value: the same gradient
    assert torch.equal(m.grad, g_manual)


def test_manual_sgd_iterates_equal_torch_optim_sgd():
    cfg = make_config([3, 2, 4], widths=[5, 4], lambda_w=[0.01, 0.03], lambda_h=0.02, bias=True, steps=300,
                      snapshot_every=300, init_std=0.5, lr=0.1, momentum=0.9)
    trainer = Trainer(cfg)
    start = trainer.model.flat.clone()
    trainer.run()
    # the reference: torch.optim.SGD on autograd of the shared objective
    ref = UFM(cfg.problem, dtype=torch.float64)
    x = start.clone().requires_grad_(True)
    opt = torch.optim.SGD([x], lr=0.1, momentum=0.9)
    for _ in range(300):
        opt.zero_grad()
        ref.objective(x).backward()
        opt.step()
    diff = float((trainer.model.flat - x.detach()).abs().max())
    assert diff <= 1e-11 * float(x.detach().abs().max()), diff


def test_snapshot_objective_is_the_shared_definition():
    pred = predict([4, 3, 2], depth=3, widths=[5, 4, 3], lambda_w=[0.01, 0.02, 0.005], lambda_h=0.01, bias=True)
    m = UFM(pred.problem)
    m.init_(seed=1, std=0.5)
    row = Snapshotter(pred)(m.weights, m.H, m.bias)
    assert row["objective"] == pytest.approx(shared_objective(pred, m.weights, m.H, m.bias), rel=1e-14)


# ------------------------------------------------------------------ float64 L-BFGS reaches the prediction

LBFGS_SETTINGS = {
    # name: (problem kwargs, init_std)
    "balanced-of": (dict(classes=3, per_class=3, depth=2, widths=5, lambda_w=0.01, lambda_h=0.01), 0.5),
    "balanced-etf-bias": (dict(classes=4, per_class=2, depth=3, widths=6, lambda_w=0.005, lambda_h=0.005,
                               bias=True), 0.5),
    "imbalanced-gof": (dict(counts=[6, 3, 2, 1], depth=2, widths=6, lambda_w=0.005, lambda_h=0.005), 0.5),
    "imbalanced-gof-M1": (dict(counts=[6, 3, 2, 1], depth=1, widths=5, lambda_w=0.02, lambda_h=0.02), 0.5),
    "bottleneck": (dict(counts=[6, 4, 3, 2], depth=3, widths=[6, 2, 5], lambda_w=0.003, lambda_h=0.003), 0.5),
    "per-layer-lambdas": (dict(counts=[5, 3, 2], depth=3, widths=[6, 4, 5], lambda_w=[0.002, 0.01, 0.005],
                               lambda_h=0.004), 0.5),
    "ce-etf-global": (dict(classes=3, per_class=2, depth=2, widths=4, lambda_w=0.01, lambda_h=0.01, loss="ce"), 0.5),
    "ce-etf-bias-M1": (dict(classes=4, per_class=2, depth=1, widths=5, lambda_w=0.01, lambda_h=0.01, loss="ce",
                            bias=True), 0.5),
    "imbalanced-bias": (dict(counts=[6, 3, 2, 1], depth=2, widths=5, lambda_w=0.005, lambda_h=0.005, bias=True), 0.5),
}


@pytest.mark.parametrize("name", sorted(LBFGS_SETTINGS))
def test_lbfgs_from_random_start_reaches_prediction(name):
    kw, std = LBFGS_SETTINGS[name]
    pred = predict(**kw)
    assert pred.gram_unique
    if pred.problem.loss == "ce":
        assert pred.ce["etf_is_global"] and pred.geometry == "simplex ETF"
    r = simulate(**kw, optimizer="lbfgs", steps=3000, snapshot_every=500, init_std=std, seed=0,
                 prediction=pred)
    f = r.final
    assert r.status in ("converged", "complete")
    assert abs(f["rel_gap"]) <= 1e-8, f["rel_gap"]
    for key in ("err_WWt", "err_HtH", "err_WH"):
        assert f[key] <= 1e-5, (key, f[key])
    assert f["nc1_L1"] <= 1e-10
    # independent check of the final point with the numpy Grams
    W = r.weights[-1]
    for Wj in reversed(r.weights[:-1]):
        W = W @ Wj
    np.testing.assert_allclose(W @ W.T, pred.WWt, atol=1e-5 * np.abs(pred.WWt).max())


@pytest.mark.parametrize("M,side", [(2, "below"), (3, "below"), (3, "above")])
def test_near_threshold_from_predicted_minimizer_plus_noise(M, side):
    """Near a*(M) (M >= 2) random starts may stop in the zero-mode local minimum: start from the
    predicted minimizer plus noise instead (documented in nclab.ufm)."""
    from nclab.theory.scalar import a_star

    counts = [8, 5, 3]
    N = sum(counts)
    factor = 0.97 if side == "below" else 1.03  # class 3 just above / below the collapse threshold
    lam = (3 * factor * a_star(M) / N) ** (M / (M + 1)) / N ** (1 / (M + 1))
    pred = predict(counts, depth=M, widths=4, lambda_w=lam, lambda_h=lam)
    assert bool(pred.active[2]) is (side == "below")
    cfg = make_config(counts, depth=M, widths=4, lambda_w=lam, lambda_h=lam, optimizer="lbfgs", steps=3000,
                      snapshot_every=1000)
    trainer = Trainer(cfg, prediction=pred)
    trainer.model.set_(*perturb(pred.construct(), 0.02, seed=1))
    trainer.run()
    f = trainer.rows[-1]
    assert abs(f["rel_gap"]) <= 1e-8 and f["err_WWt"] <= 1e-5 and f["err_HtH"] <= 1e-5


def test_sgd_paper_settings_collapse_qualitatively():
    """The paper's optimizer (SGD, momentum 0.9, lr 0.1, init N(0, 0.1^2), lambda 5e-4), small problem."""
    r = simulate(classes=4, per_class=5, depth=3, widths=16, steps=3000, snapshot_every=100)
    first, last = r.history[0], r.final
    assert last["rel_gap"] < 0.05 and last["rel_gap"] < 1e-3 * first["rel_gap"]
    for key in ("nc1_L1", "nc1_L3", "nc3"):
        assert last[key] < 1e-4 * first[key], key
    for key in ("nc2_w", "nc2_h", "err_WWt"):
        assert last[key] < 3e-2 * first[key], key
    assert len(r.history) == 31 and [row["step"] for row in r.history[:2]] == [0, 100]


def test_adam_schedules_float32_and_seeds():
    kw = dict(classes=3, per_class=2, depth=2, widths=4, lambda_w=0.01, lambda_h=0.01, init_std=0.5, steps=400,
              snapshot_every=200)
    a = simulate(**kw, optimizer="adam", lr=3e-2, schedule="cosine")
    assert a.final["rel_gap"] < 1e-4 * a.history[0]["rel_gap"]
    b = simulate(**kw, optimizer="adam", lr=3e-2, schedule="cosine")
    assert all(np.array_equal(x, y) for x, y in zip(a.weights, b.weights))  # seeded: reproducible
    c = simulate(**kw, optimizer="adam", lr=3e-2, schedule="cosine", seed=1)
    assert not np.array_equal(a.H, c.H)
    s = simulate(**kw, schedule="step", milestones=[100, 300], gamma=0.5, dtype="float32")
    assert s.final["rel_gap"] < 0.5 and s.weights[0].dtype == np.float64  # returned as float64 copies
    from nclab.ufm.trainer import lr_at

    assert [lr_at(s.config, t) for t in (0, 99, 100, 299, 300)] == [0.1, 0.1, 0.05, 0.05, 0.025]
    assert lr_at(a.config, 0) == 3e-2 and lr_at(a.config, 400) == pytest.approx(0.0, abs=1e-18)


def test_autograd_fallback_gives_same_run():
    kw = dict(counts=[3, 2, 2], depth=2, widths=4, lambda_w=0.01, lambda_h=0.01, init_std=0.5, steps=200,
              snapshot_every=100, bias=True)
    fast = simulate(**kw, gradient="manual")
    slow = simulate(**kw, gradient="autograd")
    np.testing.assert_allclose(fast.H, slow.H, rtol=0, atol=1e-12)


def test_divergence_stops_and_keeps_last_good_snapshot(tmp_path):
    r = simulate(classes=3, per_class=2, depth=3, widths=4, lr=50.0, init_std=0.5, steps=2000, snapshot_every=10,
                 out=tmp_path / "run")
    assert r.status == "diverged" and "non-finite" in r.message
    assert r.step < 2000 and r.step == r.final["step"]
    assert np.isfinite(r.final["objective"])
    assert all(np.isfinite(w).all() for w in r.weights) and np.isfinite(r.H).all()
    rows = r.history
    assert rows[-1]["step"] == r.step and all(np.isfinite(row["objective"]) for row in rows)
    import json

    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["step"] == r.step
