"""nclab.experiments: config validation, each backbone through the trainer, the run directory, exact resume,
divergence and Ctrl-C, the per-sample objective scaling, and metrics against a slow direct computation."""

import json
import os
import signal

import numpy as np
import pytest
import torch

from nclab.experiments import TrainConfig, load_model, load_toml, make_train_config, train
from nclab.experiments.data import epoch_batches, shard
from nclab.experiments.objective import batch_loss
from nclab.theory import predict, ufm_objective_torch

# a tiny float64 MLP run on the embedded digits: 3 classes, 33 samples, 3 batches per epoch
TINY = dict(dataset="digits", counts=[12, 11, 10], test_per_class=4, arch="mlp", mlp_depth=2, width=8, depth=3,
            batch_size=12, epochs=6, dtype="float64", threads=1, lr=0.01, lambda_w=1e-3, lambda_h=1e-3)


def same_weights(a, b):
    wa, wb = torch.load(a / "weights.pt"), torch.load(b / "weights.pt")
    assert wa["epoch"] == wb["epoch"] and wa["state_dict"].keys() == wb["state_dict"].keys()
    assert all(torch.equal(wa["state_dict"][k], wb["state_dict"][k]) for k in wa["state_dict"])


# ------------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize("options, match", [
    (dict(epochs=0), "epochs must be an integer >= 1"),
    (dict(optimizer="lbfgs"), "optimizer must be one of sgd, adam"),
    (dict(dataset="imagenet"), "dataset must be one of"),
    (dict(counts=[5]), "counts needs 2 to 10 classes"),
    (dict(counts=[5, 0]), "every entry of counts must be an integer >= 1"),
    (dict(depth=3, lambda_w=[1e-3, 1e-3]), "lambda_w needs one value or one per head layer"),
    (dict(lambda_h=-1), "lambda_h must be >= 0"),
    (dict(lr=float("nan")), "learning rate lr must be finite"),
    (dict(schedule="step"), "needs step_size"),
    (dict(schedule="multistep"), "needs milestones"),
    (dict(milestones=[5, 3]), "milestones must be increasing"),
    (dict(arch="vgg16"), "vgg16 needs inputs of at least 32x32"),
    (dict(device="gpu"), "device must be"),
    (dict(bias="yes"), "bias must be true or false"),
    (dict(widht=3), "unknown key.*did you mean 'width'"),
    (dict(preset="nope"), "unknown preset"),
    (dict(counts=[3, 3], per_class=4), "counts or per_class"),
])
def test_bad_options_are_one_clear_error(options, match):
    with pytest.raises(ValueError, match=match):
        make_train_config(**options)


def test_config_round_trip_presets_and_toml(tmp_path):
    cfg = make_train_config(**TINY)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.replace(depth=2).lambda_w == (1e-3, 1e-3)
    p = make_train_config(preset="cpu-mlp-balanced", depth=6, optimizer="sgd")
    assert p.dataset == "fashion-mnist" and p.depth == 6 and len(p.lambda_w) == 6 and p.lr == 0.01
    toml = tmp_path / "run.toml"
    toml.write_text('preset = "cpu-mlp-imbalanced"\nepochs = 7\n[model]\ndepth = 1\nbias = true\n')
    opts = load_toml(toml)
    assert opts == {"preset": "cpu-mlp-imbalanced", "epochs": 7, "depth": 1, "bias": True}
    c = make_train_config(**opts)
    assert c.counts[0] == 25 and c.epochs == 7 and c.depth == 1 and c.bias
    toml.write_text("epochs = 7\nlearning_rate = 0.1\n")
    with pytest.raises(ValueError, match="unknown key.*learning_rate"):
        load_toml(toml)
    toml.write_text("epochs = \n")
    with pytest.raises(ValueError, match="invalid TOML"):
        load_toml(toml)


def test_batches_and_shards_cover_every_sample_once():
    parts = epoch_batches(17, 8, seed=3, epoch=2)
    assert [len(b) for b in parts] == [6, 6, 5]
    assert sorted(np.concatenate(parts).tolist()) == list(range(17))
    assert not np.array_equal(np.concatenate(parts), np.concatenate(epoch_batches(17, 8, seed=3, epoch=3)))
    assert [shard(9, r, 4) for r in range(4)] == [(0, 3), (3, 5), (5, 7), (7, 9)]


# ------------------------------------------------------------------------------------------------ backbones
@pytest.mark.parametrize("arch, extra", [
    ("mlp", dict(mlp_depth=2)),
    ("resnet18", dict()),
    ("vgg16", dict(size=32)),
])
def test_one_epoch_of_each_backbone(arch, extra):
    r = train(dataset="digits", counts=[3, 3], test_per_class=2, arch=arch, width=8, depth=2, epochs=1, batch_size=6,
              threads=1, **extra)
    assert r.status == "complete" and [row["epoch"] for row in r.history] == [0, 1]
    assert all(np.isfinite(r.final[k]) for k in ("objective", "nc1_L1", "nc1_L2", "nc2_w_L2", "nc3_L2", "nc3"))
    assert r.final["test_acc"] is not None and r.model.head.depth == 2


# ------------------------------------------------------------------------------------------------ run directory
def test_run_directory_and_reuse(tmp_path):
    out = tmp_path / "run"
    r = train(**TINY, out=out)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "environment.json", "metrics.csv", "summary.json", "checkpoint.pt", "weights.pt",
            "prediction.json"} <= names
    doc = json.loads((out / "config.json").read_text())
    assert doc["kind"] == "train" and doc["nclab_version"] and doc["config"]["counts"] == [12, 11, 10]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["target"] == "theory" and summary["num_train"] == 33
    assert len((out / "metrics.csv").read_text().strip().splitlines()) == 1 + 7  # header + epochs 0..6
    cfg, net = load_model(out)
    assert cfg == r.config
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), r.model.state_dict().values()))
    again = train(**TINY, out=out, resume=True)  # finished: loaded, not re-run
    assert again.extra.get("reused") and again.final == pytest.approx(r.final, nan_ok=True)
    with pytest.raises(ValueError, match="--resume"):
        train(**TINY, out=out)
    with pytest.raises(ValueError, match="another config"):
        train(**dict(TINY, epochs=7), out=out, resume=True)


@pytest.mark.parametrize("optimizer, extra", [
    ("adam", dict(schedule="cosine")),
    ("sgd", dict(schedule="multistep", milestones=[3], batch_norm=True)),
])
def test_interrupted_run_resumes_to_identical_result(tmp_path, optimizer, extra):
    kw = dict(TINY, optimizer=optimizer, checkpoint_every=2, **extra)
    train(**kw, out=tmp_path / "full")

    def stop(row):
        if row["epoch"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(**kw, out=tmp_path / "part", callback=stop)
    summary = json.loads((tmp_path / "part" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["epoch"] == 3
    resumed = train(**kw, out=tmp_path / "part", resume=True)
    assert resumed.status == "complete" and resumed.epoch == 6
    same_weights(tmp_path / "full", tmp_path / "part")
    assert (tmp_path / "full" / "metrics.csv").read_bytes() == (tmp_path / "part" / "metrics.csv").read_bytes()


def test_crash_between_checkpoints_resumes_from_last_checkpoint(tmp_path):
    kw = dict(TINY, checkpoint_every=2)
    train(**kw, out=tmp_path / "full")

    def crash(row):
        if row["epoch"] == 5:  # rows up to 5 written, last checkpoint at 4
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError):
        train(**kw, out=tmp_path / "part", callback=crash)
    assert torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=False)["epoch"] == 4
    train(**kw, out=tmp_path / "part", resume=True)
    same_weights(tmp_path / "full", tmp_path / "part")
    assert (tmp_path / "full" / "metrics.csv").read_bytes() == (tmp_path / "part" / "metrics.csv").read_bytes()


def test_ctrl_c_stops_at_the_epoch_boundary_checkpointed(tmp_path):
    def ctrl_c(row):
        if row["epoch"] == 2:
            os.kill(os.getpid(), signal.SIGINT)  # the handler only sets a flag: the epoch finishes

    with pytest.raises(KeyboardInterrupt):
        train(**TINY, out=tmp_path / "r", callback=ctrl_c)
    assert torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)["epoch"] == 2
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["status"] == "interrupted"


def test_divergence_stops_and_keeps_the_last_good_model(tmp_path):
    r = train(**dict(TINY, optimizer="sgd", lr=1e6, momentum=0.0), out=tmp_path / "d")
    assert r.status == "diverged" and "non-finite" in r.message and "Lower the learning rate" in r.message
    assert all(np.isfinite(row["objective"]) for row in r.history)
    assert r.epoch == r.history[-1]["epoch"]
    w = torch.load(tmp_path / "d" / "weights.pt")
    assert w["epoch"] == r.epoch and all(torch.isfinite(t).all() for t in w["state_dict"].values())
    assert json.loads((tmp_path / "d" / "summary.json").read_text())["status"] == "diverged"


# ------------------------------------------------------------------------------------------------ objective
@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_minibatch_losses_average_to_the_full_batch_ufm_objective(loss):
    """sum_B |B|/N loss_B == loss on the whole set == the UFM objective of the head-input features,
    for values and gradients; and P shards of a batch average to the batch's loss."""
    g = torch.Generator().manual_seed(0)
    N, d, K, lam_w, lam_h = 23, 5, 3, [1e-2, 2e-2], 3e-2
    h = torch.randn(N, d, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.arange(N) % K
    ws = [torch.randn(4, d, generator=g, dtype=torch.float64, requires_grad=True),
          torch.randn(K, 4, generator=g, dtype=torch.float64, requires_grad=True)]
    b = torch.randn(K, generator=g, dtype=torch.float64, requires_grad=True)
    params = [h, *ws, b]

    def loss_of(idx, batch, world=1):
        z = h[idx] @ ws[0].T @ ws[1].T + b
        return batch_loss(z, h[idx], y[idx], ws, loss=loss, lambda_w=lam_w, lambda_h=lam_h, n_total=N, batch=batch,
                          world=world)[0]

    full = loss_of(torch.arange(N), N)
    ref = ufm_objective_torch(ws, h.T, y, lam_w, lam_h, b, loss, K)
    assert full.item() == pytest.approx(ref.item(), rel=1e-13)
    g_full = torch.autograd.grad(full, params)
    parts = [torch.as_tensor(p) for p in epoch_batches(N, 7, seed=0, epoch=0)]  # 6, 6, 6, 5
    mixed = sum(len(p) / N * loss_of(p, len(p)) for p in parts)
    assert mixed.item() == pytest.approx(full.item(), rel=1e-13)
    for a, c in zip(torch.autograd.grad(mixed, params), g_full):
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-14)
    p = parts[-1]  # 5 samples on 2 processes: shards of 3 and 2, DDP averages the two gradients
    two = 0.5 * (loss_of(p[:3], 5, world=2) + loss_of(p[3:], 5, world=2))
    assert two.item() == pytest.approx(loss_of(p, 5).item(), rel=1e-13)


# ------------------------------------------------------------------------------------------------ metrics
def slow_nc1(H, y, K):
    """tr(Sigma_W Sigma_B^+)/K from explicit D x D matrices (eigen-pseudo-inverse, relative tolerance)."""
    mu = np.stack([H[y == k].mean(0) for k in range(K)])
    n = np.bincount(y, minlength=K)
    mu_g = n @ mu / n.sum()
    C = H - mu[y]
    Sw = C.T @ C / len(y)
    Sb = (mu - mu_g).T @ (mu - mu_g) / K
    e, V = np.linalg.eigh(Sb)
    keep = e > 1e-12 * e.max()
    Sb_pinv = (V[:, keep] / e[keep]) @ V[:, keep].T
    return float(np.trace(Sw @ Sb_pinv)) / K


def unit(a):
    return a / np.linalg.norm(a)


@pytest.mark.parametrize("counts, bias", [([11, 11, 11], True), ([14, 8, 5], False)])
def test_metrics_match_a_slow_direct_computation(counts, bias):
    r = train(**dict(TINY, counts=counts, bias=bias, epochs=3))
    net, last = r.model.eval(), r.final
    from nclab.data import load_dataset
    from nclab.experiments.data import _select

    X, y = load_dataset("digits")
    idx = _select(y, counts, 0)
    X, y = X[idx].double(), y[idx].numpy()
    with torch.no_grad():
        h = net.backbone(X).numpy()
    W = [w.detach().numpy() for w in net.head.weights()]
    pred = predict(counts, widths=list(net.head.widths), lambda_w=1e-3, lambda_h=1e-3, bias=bias)
    assert r.target == "theory" and pred.geometry == ("simplex ETF" if bias else "general orthogonal frame")
    K, n = len(counts), np.bincount(y)
    Hj = h
    for j in range(3):
        if j:
            Hj = Hj @ W[j - 1].T  # input of layer j + 1
        assert last[f"nc1_L{j + 1}"] == pytest.approx(slow_nc1(Hj, y, K), rel=1e-8)
        mu = np.stack([Hj[y == k].mean(0) for k in range(K)])
        if bias:
            mu = mu - n @ mu / n.sum()
        P = W[-1]
        for w in reversed(W[j:-1]):
            P = P @ w
        lay = pred.layers[j]
        assert last[f"nc2_h_L{j + 1}"] == pytest.approx(np.linalg.norm(unit(mu @ mu.T) - unit(lay["mean_gram"])))
        assert last[f"nc2_w_L{j + 1}"] == pytest.approx(np.linalg.norm(unit(P @ P.T) - unit(lay["partial_gram"])))
        assert last[f"nc3_L{j + 1}"] == pytest.approx(np.linalg.norm(unit(P) - unit(lay["nc3_scale"] @ mu)))
        if j == 0:
            assert last["nc3"] == pytest.approx(np.linalg.norm(unit(P @ mu.T) - unit(pred.WH)))
    Z = h @ W[0].T @ W[1].T @ W[2].T + (net.head.bias.detach().numpy() if bias else 0)
    assert last["train_acc"] == pytest.approx(np.mean(Z.argmax(1) == y))
    f = ufm_objective_torch([torch.as_tensor(w) for w in W], torch.as_tensor(h.T), torch.as_tensor(y), 1e-3, 1e-3,
                            net.head.bias.detach() if bias else None)
    assert last["objective"] == pytest.approx(float(f), rel=1e-10)
    assert last["rel_gap"] == pytest.approx((float(f) - pred.objective) / pred.objective, rel=1e-9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_run_matches_cpu(tmp_path):
    """The same float64 run on the GPU: the metrics agree with the CPU run to round-off (reductions differ)."""
    cpu = train(**TINY)
    gpu = train(**dict(TINY, device="cuda"), out=tmp_path / "g")
    assert gpu.status == "complete" and next(gpu.model.parameters()).is_cuda
    for a, b in zip(cpu.history, gpu.history):
        for k, v in a.items():
            if v is not None and k != "lr":
                assert b[k] == pytest.approx(v, rel=1e-6, abs=1e-9), (a["epoch"], k)
    cfg, net = load_model(tmp_path / "g", device="cuda")
    assert cfg.device == "cuda" and next(net.parameters()).is_cuda
