"""The deep ReLU UFM (activation="relu"): identity unchanged, gradient, rank columns, old run folders."""

from __future__ import annotations

import json
import pathlib
import platform

import numpy as np
import pytest
import torch

from nclab.theory import labels_from_counts, make_problem
from nclab.ufm import make_config, simulate
from nclab.ufm.dnc import RANK_RTOL
from nclab.ufm.model import UFM, ufm_objective

DATA = pathlib.Path(__file__).parent / "data" / "relu_identity"

# the golden files were written by nclab before the activation existed (commit 57f1aa4's nclab.ufm)
GOLDEN = {
    "sgd": dict(classes=3, per_class=4, depth=3, widths=6, lambda_w=0.01, lambda_h=0.01, steps=300, snapshot_every=50,
                init_std=0.3),
    "adam_ce_bias": dict(classes=3, per_class=4, depth=2, widths=5, lambda_w=0.01, lambda_h=0.01, steps=200,
                         snapshot_every=50, optimizer="adam", lr=0.01, loss="ce", bias=True, init_std=0.3),
}


def _same_environment() -> bool:
    env = json.loads((DATA / "environment.json").read_text())
    return env["torch"] == torch.__version__ and env["machine"] == platform.machine() and \
        env["numpy"] == np.__version__


@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_identity_equals_runs_before_the_activation(case, tmp_path):
    simulate(out=tmp_path / "run", activation="identity", _trainer=True, **GOLDEN[case])  # the Trainer path
    got = (tmp_path / "run" / "metrics.csv").read_bytes()
    want = (DATA / f"metrics_{case}.csv").read_bytes()
    if _same_environment():
        assert got == want  # bitwise: same bytes as the code before the activation existed
    else:  # another BLAS / torch: the same numbers to round-off
        a = np.genfromtxt(tmp_path / "run" / "metrics.csv", delimiter=",", names=True)
        b = np.genfromtxt(DATA / f"metrics_{case}.csv", delimiter=",", names=True)
        for name in b.dtype.names:
            np.testing.assert_allclose(a[name], b[name], rtol=1e-9, atol=1e-12)


def test_identity_default_and_config():
    cfg = make_config(classes=2, per_class=2, depth=2, widths=3)
    assert cfg.activation == "identity" and cfg.to_dict()["activation"] == "identity"
    assert make_config(classes=2, per_class=2, depth=2, widths=3, activation="relu").activation == "relu"
    with pytest.raises(ValueError, match="activation"):
        make_config(classes=2, per_class=2, depth=2, widths=3, activation="tanh")


@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("M", [1, 2, 4])
def test_relu_gradient_matches_autograd(loss, bias, M):
    p = make_problem(counts=[3, 2, 4], depth=M, widths=[5, 4, 6, 3][:M], lambda_w=[0.01 * (j + 1) for j in range(M)],
                     lambda_h=0.02, bias=bias, loss=loss)
    m = UFM(p, activation="relu")
    m.init_(7, 0.7)
    f = m.gradient_(with_loss=True)
    g = m.grad.clone()
    fa = m.autograd_loss()
    assert float(abs(f - fa)) <= 1e-14 * abs(float(fa))
    torch.testing.assert_close(g, m.grad, rtol=0, atol=1e-13 * float(m.grad.abs().max()))
    # the autograd path differentiates THE definition: compare with finite differences of ufm_objective
    ws, H, b = m.unpack(m.flat)
    y = torch.as_tensor(labels_from_counts(p.counts))
    x = m.flat.clone()
    i = int(torch.argmax(m.grad.abs()))
    e = 1e-6
    vals = []
    for s in (e, -e):
        x2 = x.clone()
        x2[i] += s
        w2, h2, b2 = m.unpack(x2)
        vals.append(float(ufm_objective(w2, h2, y, p.lambda_w, p.lambda_h, b2, loss, p.K, "relu")))
    assert abs((vals[0] - vals[1]) / (2 * e) - float(g[i])) <= 1e-6 * max(1.0, abs(float(g[i])))


def test_relu_with_one_layer_is_the_linear_model():
    p = make_problem(counts=[2, 3], depth=1, widths=4, lambda_w=0.1, lambda_h=0.05)
    a, b = UFM(p), UFM(p, activation="relu")
    a.init_(3, 0.5)
    b.init_(3, 0.5)
    torch.testing.assert_close(a.objective(), b.objective(), rtol=1e-15, atol=0)


def _slow_ranks(ws, H, counts, rtol):
    """Class means per layer by an explicit loop over classes, ranks by numpy's matrix_rank with tol."""
    labels = np.repeat(np.arange(len(counts)), counts)
    feats = H
    means_r, w_r = [], []
    for j, W in enumerate(ws):
        if j > 0:
            feats = np.maximum(ws[j - 1] @ feats, 0.0)
        means = np.stack([feats[:, labels == k].mean(axis=1) for k in range(len(counts))], axis=1)
        for a, out in ((means, means_r), (W, w_r)):
            s = np.linalg.svd(a, compute_uv=False)
            out.append(0 if s[0] == 0 else int(np.linalg.matrix_rank(a, tol=rtol * s[0])))
    return means_r, w_r


def test_rank_columns_against_a_slow_recomputation():
    r = simulate(classes=4, per_class=3, depth=4, widths=6, lambda_w=5e-3, lambda_h=5e-3 / 3, activation="relu",
                 optimizer="lbfgs", steps=400, snapshot_every=100, init_std=0.5, seed=1)
    assert len(r.history) >= 2
    means_r, w_r = _slow_ranks(r.weights, r.H, [3] * 4, RANK_RTOL)
    f = r.final
    assert [f[f"rank_means_L{j}"] for j in range(1, 5)] == means_r
    assert [f[f"rank_w_L{j}"] for j in range(1, 5)] == w_r
    # hand-made parameters with known ranks: rank-2 features, a rank-1 layer, the zero matrix
    p = make_problem(classes=3, per_class=2, depth=3, widths=[4, 4, 5], lambda_w=0.1, lambda_h=0.1)
    from nclab.ufm.dnc import references
    from nclab.ufm.snapshot import ReluSnapshotter

    snap = ReluSnapshotter(p, references(p))
    rng = np.random.default_rng(0)
    H = np.zeros((4, 6))
    H[:2] = np.repeat(rng.normal(size=(2, 3)), 2, axis=1)
    ws = [np.abs(rng.normal(size=(4, 4))), np.outer(rng.normal(size=5), rng.normal(size=4)), np.zeros((3, 5))]
    row = snap([torch.tensor(w) for w in ws], torch.tensor(H))
    means_r, w_r = _slow_ranks(ws, H, [2] * 3, RANK_RTOL)
    assert [row[f"rank_means_L{j}"] for j in (1, 2, 3)] == means_r
    assert [row[f"rank_w_L{j}"] for j in (1, 2, 3)] == w_r == [4, 1, 0]
    assert row["rank_means_L1"] == 2


def test_old_run_folders_without_activation_resume(tmp_path):
    opts = dict(classes=2, per_class=2, depth=2, widths=3, lambda_w=0.01, lambda_h=0.01, steps=40,
                snapshot_every=20)
    first = simulate(out=tmp_path / "run", **opts)
    cfg_file = tmp_path / "run" / "config.json"
    doc = json.loads(cfg_file.read_text())
    config = doc.get("config", doc)
    config.pop("activation")
    cfg_file.write_text(json.dumps(doc))
    again = simulate(out=tmp_path / "run", resume=True, **opts)
    assert again.extra.get("reused") and again.final["objective"] == first.final["objective"]
    with pytest.raises(Exception, match="activation"):
        simulate(out=tmp_path / "run", resume=True, activation="relu", **opts)


def test_batched_refuses_relu(tmp_path):
    from nclab.ufm.batched import simulate_batch

    cfg = make_config(classes=2, per_class=2, depth=2, widths=3, activation="relu", steps=10)
    with pytest.raises(ValueError, match="linear UFM only"):
        simulate_batch([cfg], outs=[tmp_path / "a"])
