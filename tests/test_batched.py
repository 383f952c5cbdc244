"""Batched UFM runs (nclab.ufm.batched): each run's folder as if run alone by nclab.simulate.

Objective equal to 1e-10 relative in float64, every metrics row equal to that tolerance (absolute for values
below 1), the same statuses, files, summary/checkpoint keys; per-run stopping, divergence, resume.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from nclab.cli import cli
from nclab.results import RunStore
from nclab.theory import make_problem, predict
from nclab.ufm import make_config, simulate
from nclab.ufm.batch_metrics import BatchSnapshotter
from nclab.ufm.batched import BatchUFM, run_seeds, simulate_batch
from nclab.ufm.snapshot import Snapshotter
from nclab.ufm.trainer import Trainer

TOL = 1e-10
BASE = dict(classes=3, per_class=5, depth=2, widths=6, steps=300, snapshot_every=50, init_std=0.3, lambda_w=1e-2,
            lambda_h=1e-2)


def close(a, b, tol=TOL) -> bool:
    if a is None or b is None:
        return a is b
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


def same_rows(rows_a, rows_b, tol=TOL):
    assert len(rows_a) == len(rows_b)
    for a, b in zip(rows_a, rows_b):
        assert list(a) == list(b)
        bad = {k: (a[k], b[k]) for k in a if not close(a[k], b[k], tol)}
        assert not bad, (a["step"], bad)


def compare(batch, ref):
    """Batched results against unbatched ones: statuses, rows, files, summaries, checkpoints, weights."""
    for r, s in zip(batch, ref):
        assert (r.status, r.step) == (s.status, s.step), (r.message, s.message)
        assert r.message.split(";")[0] == s.message.split(";")[0]
        same_rows(r.history, s.history)
        if math.isfinite(s.final["objective"]):
            assert abs(r.final["objective"] - s.final["objective"]) <= TOL * abs(s.final["objective"])
        for w, v in zip(r.weights + [r.H], s.weights + [s.H]):
            np.testing.assert_allclose(w, v, rtol=0, atol=1e-9 * max(1.0, np.abs(v).max()))
        if r.run_dir is None:
            continue
        assert sorted(os.listdir(r.run_dir)) == sorted(os.listdir(s.run_dir))
        a, b = RunStore(r.run_dir), RunStore(s.run_dir)
        same_rows(a.read_rows(), b.read_rows())
        sa, sb = a.read_json("summary.json"), b.read_json("summary.json")
        assert list(sa) == list(sb) and (sa["status"], sa["step"], sa["rows"]) == (sb["status"], sb["step"], sb["rows"])
        assert a.read_json("config.json") == b.read_json("config.json")
        assert a.read_json("prediction.json") == b.read_json("prediction.json")
        ca, cb = a.load_torch("checkpoint.pt"), b.load_torch("checkpoint.pt")
        # the batched engine also saves its reduced state (a bitwise resume), nclab.simulate's Trainer does not
        keys = lambda c: sorted(set(c) - {"reduced"})  # noqa: E731
        assert keys(ca) == keys(cb) and ca["step"] == cb["step"] and ca["last_good_step"] == cb["last_good_step"]
        same_rows(ca["rows"], cb["rows"])
        assert sorted(ca["optimizer"]) == sorted(cb["optimizer"])
        if "momentum_buffer" in cb["optimizer"]:
            ma, mb = ca["optimizer"]["momentum_buffer"], cb["optimizer"]["momentum_buffer"]
            scale = max(1.0, float(mb.nan_to_num().abs().max()))
            torch.testing.assert_close(ma, mb, rtol=0, atol=1e-9 * scale, equal_nan=True)
        torch.testing.assert_close(ca["flat"], cb["flat"], rtol=0, atol=1e-9 * max(1.0, float(cb["flat"].abs().max())))
        wa, wb = a.load_torch("weights.pt"), b.load_torch("weights.pt")
        assert sorted(wa) == sorted(wb) and wa["step"] == wb["step"]


def run_both(cfgs, tmp_path, **kw):
    batch = simulate_batch(cfgs, [tmp_path / f"b{i}" for i in range(len(cfgs))], **kw)
    ref = [simulate(c, out=tmp_path / f"s{i}", _trainer=True) for i, c in enumerate(cfgs)]
    return batch, ref


@pytest.mark.parametrize("method", ["reduced", "direct"])
def test_sgd_per_run_seeds_lambdas_lrs(tmp_path, method):
    cfgs = [make_config(**{**BASE, "lambda_w": 1e-2 * (1 + s), "init_std": 0.2 + 0.05 * s}, seed=s,
                        lr=0.05 * (1 + 0.1 * s), momentum=0.9 - 0.1 * (s % 2)) for s in range(4)]
    compare(*run_both(cfgs, tmp_path, method=method))


def test_cache_chunks_give_the_unbatched_runs(tmp_path, monkeypatch):
    """SGD steps swept over the batch in chunks of 2 runs (the cache blocking of large batches, forced here on a
    small one), with runs leaving the batch (stop, divergence) so the chunks are rebuilt: each run as alone.
    Chunks also end where lambda changes (the runs sorted by it: two-pass momentum update); with a different lr
    per run, splitting would triple the chunks, so they stay mixed (three-pass update)."""
    made, lerps = [], []
    real, real_lerp = BatchUFM._chunks, BatchUFM._sgd_lerp

    def chunks(self):
        out = real(self)
        made.append([c.B for c in out])
        return out

    def lerp(self, n, coef, whole):
        lerps.append(self.B)
        return real_lerp(self, n, coef, whole)

    monkeypatch.setattr(BatchUFM, "chunk", 2)
    monkeypatch.setattr(BatchUFM, "_chunks", chunks)
    monkeypatch.setattr(BatchUFM, "_sgd_lerp", lerp)
    # lambdas 2e-2, 1e-2, 1.5e-2, 1e-2 (sorted: 1e-2, 1e-2, 1.5e-2, 2e-2); the second 1e-2 run stops early
    grouped = [make_config(**{**BASE, "lambda_w": 1e-2 * (2, 1, 1.5, 1)[s]}, seed=s, lr=0.1) for s in range(4)]
    grouped[1] = grouped[1].replace(stop_rel_gap=1e-3)
    mixed = [make_config(**BASE, seed=s, lr=0.3 + 0.05 * s) for s in range(5)] + [make_config(**BASE, seed=9, lr=5.0)]
    batch, ref = run_both(grouped, tmp_path / "0", method="reduced")
    compare(batch, ref)
    assert made[0] == [2, 1, 1] and made[-1] == [1, 1, 1] and set(lerps) == {1, 2}
    made.clear()
    lerps.clear()
    batch, ref = run_both(mixed, tmp_path / "1", method="direct")
    compare(batch, ref)
    # 6 runs of 6 lrs: 3 mixed chunks (6 > 1.5 x 3 + 1); after the lr = 5 run diverges, 5 runs in 5 chunks (<= 5.5).
    # lr lambda = 3e-3 to 5e-3 with momentum 0.9 has complex roots: the three-pass update throughout
    assert made == [[2, 2, 2], [1, 1, 1, 1, 1]] and not lerps
    assert batch[-1].status == "diverged"


def test_two_pass_momentum_matches_three_pass():
    """The reparametrized heavy ball (u = p + buf / c) against the plain one, step by step, for SGD with
    momentum and decay (0 for the bias); and the cases it leaves to the plain update."""
    from nclab.ufm.batched import lerp_coefficients

    for lr, mu, lam in [(0.1, 0.9, 5e-4), (0.5, 0.5, 1e-2), (0.1, 0.9, 0.0), (0.02, 0.3, 0.2)]:
        c, beta, scale, w = lerp_coefficients(lr, mu, lam)
        assert abs(lr * mu * c * c + (1 - mu - lr * lam) * c + lam) <= 1e-12
        p = q = 1.0
        buf, u = 0.0, 1.0
        for _ in range(300):
            buf = mu * buf + lam * p + (0.3 * p + 0.1 * p ** 3)
            p -= lr * buf
            u = beta * u + scale * (0.3 * q + 0.1 * q ** 3)
            q += w * (u - q)
            assert abs(p - q) <= 1e-13 * max(1.0, abs(p)) and abs(buf - c * (u - q)) <= 1e-13 * max(1.0, abs(buf))
    assert lerp_coefficients(0.1, 0.0, 1e-3) is None  # no momentum
    assert lerp_coefficients(0.05, 0.99, 1e-3) is None  # complex roots
    assert lerp_coefficients(0.1, 0.05, 1e-3) is None  # a root of 19 / lr: restoring buf would lose bits


def test_bias_and_imbalanced_counts_of_one_n(tmp_path):
    cfgs = [make_config(**{**BASE, "classes": None, "per_class": None, "depth": 3}, counts=c, seed=s, bias=b)
            for s, (c, b) in enumerate([([8, 4, 3], False), ([5, 5, 5], False), ([3, 4, 8], False)])]
    cfgs += [make_config(**BASE, seed=s, bias=True) for s in range(2)]
    compare(*run_both(cfgs, tmp_path))


def test_adam_ce_and_schedules(tmp_path):
    cfgs = [make_config(**BASE, seed=s, optimizer="adam", lr=1e-2 * (1 + s)) for s in range(3)]
    cfgs += [make_config(**BASE, seed=s, loss="ce", bias=True, schedule="cosine") for s in range(2)]
    cfgs += [make_config(**BASE, seed=s, schedule="step", milestones=[120, 220], lr=0.2) for s in range(2)]
    compare(*run_both(cfgs, tmp_path))


def test_per_run_stopping_and_divergence(tmp_path):
    cfgs = [make_config(**BASE, seed=0, lr=0.5),
            make_config(**BASE, seed=1, lr=0.5, stop_rel_gap=1e-3),
            make_config(**BASE, seed=2, lr=5.0),  # diverges
            make_config(**BASE, seed=3, lr=0.5, stop_rel_gap=1e-6)]
    batch, ref = run_both(cfgs, tmp_path)
    assert [r.status for r in batch] == ["complete", "converged", "diverged", "converged"]
    assert batch[1].step < batch[0].step
    compare(batch, ref)


def test_no_folders_mixed_shapes_and_lbfgs_in_input_order():
    cfgs = [make_config(**BASE, seed=0), make_config(**{**BASE, "widths": 5}, seed=1),
            make_config(**{**BASE, "steps": 50}, seed=2, optimizer="lbfgs"), make_config(**BASE, seed=3)]
    batch = simulate_batch(cfgs)
    ref = [simulate(c, _trainer=True) for c in cfgs]
    assert [r.config for r in batch] == cfgs
    compare(batch, ref)


def test_interrupt_and_resume(tmp_path):
    cfgs = [make_config(**{**BASE, "steps": 400, "checkpoint_every": 100}, seed=s) for s in range(3)]
    outs = [tmp_path / f"b{i}" for i in range(3)]
    with pytest.raises(KeyboardInterrupt):
        simulate_batch(cfgs, outs, callback=_stop_run_at(2, 200))
    assert {RunStore(o).read_json("summary.json")["status"] for o in outs} == {"interrupted"}
    # one folder continued alone by nclab.simulate, the others batched
    alone = simulate(cfgs[0], out=outs[0], resume=True)
    rest = simulate_batch(cfgs[1:], outs[1:], resume=True)
    ref = [simulate(c, out=tmp_path / f"s{i}", _trainer=True) for i, c in enumerate(cfgs)]
    compare([alone] + rest, ref)
    again = simulate_batch(cfgs, outs, resume=True)  # finished: loaded, not re-run
    assert all(r.extra.get("reused") for r in again)


def test_resume_of_unbatched_checkpoints(tmp_path):
    cfg = [make_config(**{**BASE, "steps": 400}, seed=s) for s in range(2)]
    for i, c in enumerate(cfg):
        with pytest.raises(KeyboardInterrupt):
            simulate(c, out=tmp_path / f"b{i}", callback=_stop_at(150 + 50 * i), _trainer=True)
    # the two runs stopped at different steps: two batches
    batch = simulate_batch(cfg, [tmp_path / f"b{i}" for i in range(2)], resume=True)
    compare(batch, [simulate(c, out=tmp_path / f"s{i}", _trainer=True) for i, c in enumerate(cfg)])


def _stop_at(step):
    def cb(row):
        if row["step"] == step:
            raise KeyboardInterrupt
    return cb


def _stop_run_at(index, step):
    """simulate_batch callback: Ctrl-C at run ``index``'s row of ``step``."""
    def cb(i, row):
        if i == index and row["step"] == step:
            raise KeyboardInterrupt
    return cb


@pytest.mark.parametrize("counts,widths,bias", [([5, 5, 5], [6, 2], False), ([8, 4, 3], [6, 6, 6], False),
                                                 ([5, 5, 5, 5], [7], True)])
def test_batch_snapshotter_matches_snapshotter(counts, widths, bias):
    """Random parameters (also non-unique predicted Grams and a bias): the batched rows are the per-run ones."""
    cfgs = [make_config(counts=counts, widths=widths, lambda_w=1e-2 * (1 + s), lambda_h=2e-2, bias=bias, seed=s,
                        init_std=0.5) for s in range(3)]
    trainers = [Trainer(c) for c in cfgs]
    for method in ("direct", "reduced"):
        eng = BatchUFM(trainers, method=method)
        rows = BatchSnapshotter([t.snapshotter for t in trainers]).rows(*eng.stats())
        for t, row in zip(trainers, rows):
            ref = t.snapshotter(t.model.weights, t.model.H, t.model.bias)
            assert list(row) == list(ref)
            bad = {k: (row[k], ref[k]) for k in row if not close(row[k], ref[k], 1e-9)}
            assert not bad, bad


def test_cli_seeds(tmp_path):
    out = tmp_path / "seeds"
    args = ["simulate", "--classes", "3", "--per-class", "5", "-M", "2", "--width", "6", "--steps", "200",
            "--lambda-w", "1e-2", "--lambda-h", "1e-2", "--init-std", "0.3", "--snapshot-every", "50", "--no-figures",
            "--out", str(out)]
    r = CliRunner().invoke(cli, args + ["--seeds", "0-2,5"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["seed-0", "seed-1", "seed-2", "seed-5"]
    ref = simulate(make_config(**{**BASE, "steps": 200}, seed=5), _trainer=True)
    same_rows(RunStore(out / "seed-5").read_rows(), ref.history)
    r = CliRunner().invoke(cli, args + ["--seeds", "0-2,5", "--resume"])
    assert r.exit_code == 0, r.output
    for bad in ("3-1", "x", "1,,2", "-1"):
        r = CliRunner().invoke(cli, args + ["--seeds", bad])
        assert r.exit_code == 2 and r.output.startswith("error:"), (bad, r.output)


def test_run_seeds_depths(tmp_path):
    cfgs = [make_config(**{**BASE, "depth": M, "steps": 100}) for M in (1, 2)]
    res = run_seeds(cfgs, [0, 1], tmp_path, figures=False)
    assert sorted(str(r.run_dir.relative_to(tmp_path)) for r in res) == \
        ["depth-1/seed-0", "depth-1/seed-1", "depth-2/seed-0", "depth-2/seed-1"]


def test_reduced_form_needs_mse_sgd():
    t = Trainer(make_config(**BASE, optimizer="adam"))
    with pytest.raises(ValueError, match="reduced"):
        BatchUFM([t], method="reduced")
    with pytest.raises(ValueError, match="own output folder"):
        simulate_batch([make_config(**BASE)] * 2, ["x", "x"])
    p = predict(make_problem([5, 5, 5], widths=[6, 6], lambda_w=1e-2, lambda_h=1e-2))
    assert Snapshotter(p).unique


def test_threads_follow_the_work_of_one_op(monkeypatch):
    """With 2 idle cores: chunked CPU SGD of the paper config (2 runs of 34,052 float64 parameters per 2 MB chunk:
    64 x 400 x 4 x 2 = 204,800 < 2e6) keeps 1 thread; Adam ops span the batch (x 64 = 6.6e6) and a large SGD run
    (512 x 5,000 x 10 per op) use 2; --threads wins."""
    import nclab.environment
    from nclab.ufm.batched import _threads
    from nclab.ufm.presets import preset_config

    monkeypatch.setattr(nclab.environment, "idle_cores", lambda: 2)
    paper = preset_config("paper-balanced-of", 3)
    assert _threads(paper, 64) == 1
    assert _threads(paper.replace(optimizer="adam", lr=1e-3), 64) == 2
    assert _threads(make_config(classes=10, per_class=500, widths=512, depth=3), 8) == 2
    assert _threads(paper.replace(threads=3), 64) == 3


@pytest.mark.parametrize("depth,bias,method", [(1, True, "reduced"), (3, False, "reduced"), (3, True, "reduced"),
                                               (2, True, "direct")])
def test_two_pass_update_gives_the_unbatched_runs(tmp_path, monkeypatch, depth, bias, method):
    """Runs of equal lr, momentum and lambdas (two groups, interleaved in the input) take the two-pass update,
    for every depth, with and without a bias (its decay 0), reduced and direct: each run as alone."""
    from nclab.ufm.batched import hyper_key

    lerps = []
    real = BatchUFM._sgd_lerp

    def lerp(self, n, coef, whole):
        lerps.append(self.B)
        return real(self, n, coef, whole)

    monkeypatch.setattr(BatchUFM, "_sgd_lerp", lerp)
    cfgs = [make_config(**{**BASE, "depth": depth, "lambda_w": 1e-2 * (1 + s % 2)}, seed=s, bias=bias, lr=0.1)
            for s in range(4)]
    assert len({hyper_key(c) for c in cfgs}) == 2
    compare(*run_both(cfgs, tmp_path, method=method))
    assert set(lerps) == {2}


@pytest.mark.parametrize("case", ["lambdas", "float32", "step schedule"])
def test_fused_three_pass_update_gives_the_unbatched_runs(tmp_path, monkeypatch, case):
    """The fused reduced-form steps with the three-pass update (buf = mu buf + g + lambda p, p -= lr buf): one lr and
    momentum but a lambda per run (a per-run decay tensor: 3 lambdas in one chunk), float32 (no two-pass update),
    or a step schedule (lr changing): each run as alone."""
    kinds = []
    real = BatchUFM._reduced_steps

    def spy(self, n, moms, update):
        kinds.append({type(d).__name__ for *_, d in moms})
        return real(self, n, moms, update)

    monkeypatch.setattr(BatchUFM, "_reduced_steps", spy)
    extra = {"lambdas": {}, "float32": {"dtype": "float32"}, "step schedule": {"schedule": "step",
                                                                             "milestones": [100, 200]}}[case]
    cfgs = [make_config(**{**BASE, "lambda_w": 1e-2 * (1 + s) if case == "lambdas" else 1e-2, "depth": 3},
                        seed=s, lr=0.1, **extra) for s in range(3)]
    if case == "float32":  # a float32 run's own round-off: compare with the unbatched float32 runs loosely
        batch = simulate_batch(cfgs, [tmp_path / f"b{i}" for i in range(3)])
        ref = [simulate(c, out=tmp_path / f"s{i}", _trainer=True) for i, c in enumerate(cfgs)]
        for r, s in zip(batch, ref):
            assert (r.status, r.step) == (s.status, s.step)
            assert abs(r.final["objective"] - s.final["objective"]) <= 1e-5 * abs(s.final["objective"])
            np.testing.assert_allclose(r.H, s.H, rtol=0, atol=1e-4 * np.abs(s.H).max())
    else:
        compare(*run_both(cfgs, tmp_path))
    want = {"lambdas": {"Tensor"}, "float32": {"float"}, "step schedule": {"float"}}[case]
    assert kinds and all(k == want for k in kinds), kinds


def test_batched_resume_continues_bitwise(tmp_path):
    """A batch interrupted at a snapshot and resumed by simulate_batch writes the same metrics.csv bytes as the
    uninterrupted batch: the checkpoint holds the engine's reduced state (basis X, A, P and their buffers), so the
    resumed engine does not derive another basis."""
    cfgs = [make_config(**{**BASE, "steps": 400, "lambda_w": 1e-2 * (1 + s)}, seed=s) for s in range(3)]
    full = simulate_batch(cfgs, [tmp_path / f"f{i}" for i in range(3)])
    outs = [tmp_path / f"p{i}" for i in range(3)]
    with pytest.raises(KeyboardInterrupt):
        simulate_batch(cfgs, outs, callback=_stop_run_at(2, 150))
    ck = RunStore(outs[0]).load_torch("checkpoint.pt")
    assert ck["step"] == 150 and ck["reduced"]["step"] == 150 and ck["reduced"]["X"].shape == (6, 15)
    simulate_batch(cfgs, outs, resume=True)
    for i in range(3):
        assert (outs[i] / "metrics.csv").read_bytes() == (tmp_path / f"f{i}" / "metrics.csv").read_bytes()
        np.testing.assert_array_equal(RunStore(outs[i]).load_torch("weights.pt")["H"], full[i].H)


def test_batch_stopped_at_its_converging_row_resumes_converged(tmp_path):
    """A run interrupted at the very snapshot that meets stop_rel_gap (before the stop check) ends there on a
    batched resume, converged, as the uninterrupted batch did, without training another snapshot."""
    cfgs = [make_config(**{**BASE, "steps": 2000}, seed=s, stop_rel_gap=1e-3 if s == 0 else 0.0) for s in range(2)]
    full = simulate_batch(cfgs, [tmp_path / f"f{i}" for i in range(2)])
    assert full[0].status == "converged" and 0 < full[0].step < 2000
    outs = [tmp_path / f"p{i}" for i in range(2)]
    with pytest.raises(KeyboardInterrupt):
        simulate_batch(cfgs, outs, callback=_stop_run_at(0, full[0].step))
    again = simulate_batch(cfgs, outs, resume=True)
    assert (again[0].status, again[0].step) == (full[0].status, full[0].step)
    for i in range(2):
        assert (outs[i] / "metrics.csv").read_bytes() == (tmp_path / f"f{i}" / "metrics.csv").read_bytes()
