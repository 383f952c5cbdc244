"""Review of ``nclab.simulate`` through the batched engine (a batch of one, the reduced form H = A Y + P X).

Every check is against an independent expectation: the per-run Trainer (``simulate(cfg, _trainer=True)``), the
uninterrupted run's bytes, or what the process itself observed (threads, stderr). Problems are tiny (K = 3,
N = 9) so the whole file costs a few seconds.
"""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import nclab.ufm.batched as batched
from nclab.cli import cli
from nclab.ufm import make_config
from nclab.ufm.trainer import simulate

BASE = dict(classes=3, per_class=3, depth=2, widths=5, lambda_w=5e-3, lambda_h=5e-3, steps=200, snapshot_every=20,
            lr=0.1)
TIMING = ("train_seconds", "snapshot_seconds", "ms_per_step")


def cfg_of(**kw):
    return make_config(**{**BASE, **kw})


@pytest.fixture
def engine_calls(monkeypatch):
    """Counts _train_group calls: proves a run went through the engine (else we would compare Trainer to
    Trainer)."""
    calls = []
    real = batched._train_group

    def spy(runs, *a, **k):
        calls.append(len(runs))
        return real(runs, *a, **k)

    monkeypatch.setattr(batched, "_train_group", spy)
    return calls


def rel_diff(rows_a, rows_b):
    """Largest relative difference over the float cells of two histories (same keys required)."""
    assert len(rows_a) == len(rows_b)
    worst = 0.0
    for a, b in zip(rows_a, rows_b):
        assert list(a) == list(b)
        for k, x in a.items():
            y = b[k]
            if isinstance(x, float) and np.isfinite(x):
                worst = max(worst, abs(x - y) / max(1.0, abs(y)))
            else:
                assert x == y or (x != x and y != y), (k, x, y)
    return worst


def summary_of(path):
    s = json.loads((path / "summary.json").read_text())
    for k in TIMING:
        s.pop(k)
    return s


def stop_at(step):
    def cb(row):
        if row["step"] == step:
            raise KeyboardInterrupt
    return cb


def interrupt(cfg, out, at, **kw):
    with pytest.raises(KeyboardInterrupt):
        simulate(cfg, out=out, callback=stop_at(at), **kw)


def assert_same_run_bytes(a, b):
    """metrics.csv bytes, weights.pt tensors and summary.json (less its timings) identical."""
    assert (a / "metrics.csv").read_bytes() == (b / "metrics.csv").read_bytes()
    wa, wb = torch.load(a / "weights.pt"), torch.load(b / "weights.pt")
    assert wa["step"] == wb["step"] and torch.equal(wa["H"], wb["H"])
    assert all(torch.equal(x, y) for x, y in zip(wa["weights"], wb["weights"]))
    assert (wa["bias"] is None and wb["bias"] is None) or torch.equal(wa["bias"], wb["bias"])
    assert summary_of(a) == summary_of(b)


# ------------------------------------------------------------------------------ (2) edge configs vs the Trainer
EDGE = {
    "bias": dict(bias=True),
    "imbalanced": dict(classes=None, per_class=None, counts=[4, 2, 3]),
    "depth1": dict(depth=1),
    "depth5": dict(depth=5, lr=0.05),
    "unequal_widths": dict(depth=3, widths=[6, 4, 7]),
    "width_below_K": dict(widths=[2, 4]),
    "N_is_K_plus_1": dict(classes=None, per_class=None, counts=[2, 1, 1]),
    "per_layer_lambda": dict(depth=3, lambda_w=[1e-3, 5e-3, 1e-2]),
    "float32": dict(dtype="float32"),
    "step_schedule": dict(schedule="step", milestones=[60, 120], gamma=0.5),
    "cosine": dict(schedule="cosine"),
    "plain_sgd": dict(momentum=0.0),
    "stop_rel_gap": dict(stop_rel_gap=1e-3, steps=2000),
    "diverged_late": dict(lr=3.0, steps=400, snapshot_every=5),  # non-finite at step 20: the step-15 row kept
    "init_prediction": dict(init="prediction", init_std=1e-3),
    "zero_solution": dict(init_std=1e-12, steps=100),
}


@pytest.mark.parametrize("name", list(EDGE))
def test_engine_run_equals_trainer_run(name, tmp_path, engine_calls):
    cfg = cfg_of(**EDGE[name])
    eng = simulate(cfg, out=tmp_path / "e")
    assert engine_calls == [1]
    ref = simulate(cfg, out=tmp_path / "t", _trainer=True)
    assert engine_calls == [1]  # the reference did not use the engine
    tol = 1e-5 if cfg.dtype == "float32" else 1e-10
    assert (eng.status, eng.step) == (ref.status, ref.step)
    assert eng.message.split(";")[0] == ref.message.split(";")[0]
    assert rel_diff(eng.history, ref.history) <= tol
    for a, b in zip(eng.weights + [eng.H], ref.weights + [ref.H]):
        np.testing.assert_allclose(a, b, rtol=0, atol=tol)
    assert (eng.bias is None) == (ref.bias is None)
    names = sorted(p.name for p in (tmp_path / "e").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "t").iterdir())
    e_csv, t_csv = [(tmp_path / s / "metrics.csv").read_text().splitlines() for s in "et"]
    assert e_csv[0] == t_csv[0] and len(e_csv) == len(t_csv)
    se, st = summary_of(tmp_path / "e"), summary_of(tmp_path / "t")
    assert (se["status"], se["step"], se["rows"]) == (st["status"], st["step"], st["rows"])
    if name == "diverged_late":
        assert eng.status == "diverged" and 0 < eng.step < cfg.steps
    if name == "zero_solution":
        assert eng.status == "suboptimal" and "zero solution" in eng.message


# ------------------------------------------------------------------------------ (1) bitwise resume
@pytest.mark.parametrize("at", [0, 20, 100, 200])
@pytest.mark.parametrize("kw", [dict(depth=3), dict(bias=True, depth=1, schedule="cosine")], ids=["M3", "M1bias"])
def test_callback_interrupt_then_resume_is_bitwise(at, kw, tmp_path):
    cfg = cfg_of(**kw)
    simulate(cfg, out=tmp_path / "ref")
    interrupt(cfg, tmp_path / "r", at)
    ckpt = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == at and ckpt["reduced"]["step"] == at  # the engine's state went with the checkpoint
    simulate(cfg, out=tmp_path / "r", resume=True)
    assert_same_run_bytes(tmp_path / "r", tmp_path / "ref")


def test_interrupt_mid_steps_resumes_from_last_good_bitwise(tmp_path, monkeypatch):
    """A second Ctrl-C inside the steps (engine not synced): the checkpoint is the last recorded snapshot's."""
    cfg = cfg_of()
    simulate(cfg, out=tmp_path / "ref")
    real = batched.BatchUFM.advance

    def advance(self, n, step, factor):
        if step == 100:
            real(self, 7, step, factor)
            raise KeyboardInterrupt
        return real(self, n, step, factor)

    monkeypatch.setattr(batched.BatchUFM, "advance", advance)
    with pytest.raises(KeyboardInterrupt):
        simulate(cfg, out=tmp_path / "r")
    monkeypatch.setattr(batched.BatchUFM, "advance", real)
    assert torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)["step"] == 100
    simulate(cfg, out=tmp_path / "r", resume=True)
    assert_same_run_bytes(tmp_path / "r", tmp_path / "ref")


def test_diverging_run_interrupted_and_resumed_is_bitwise(tmp_path):
    cfg = cfg_of(**EDGE["diverged_late"])
    ref = simulate(cfg, out=tmp_path / "ref")
    assert ref.status == "diverged"
    interrupt(cfg, tmp_path / "r", 10)
    assert simulate(cfg, out=tmp_path / "r", resume=True).status == "diverged"
    assert_same_run_bytes(tmp_path / "r", tmp_path / "ref")


CHILD = """
import os, signal, sys
from nclab.ufm import make_config
from nclab.ufm.trainer import simulate
def cb(row):
    if row["step"] == 100:
        os.kill(os.getpid(), getattr(signal, sys.argv[2]))
try:
    simulate(make_config(**{cfg!r}), out=sys.argv[1], callback=cb)
except KeyboardInterrupt:
    sys.exit(3)
"""


@pytest.mark.parametrize("sig, ckpt_step, rc", [("SIGINT", 100, 3), ("SIGKILL", 80, -9)])
def test_signal_in_subprocess_then_resume_is_bitwise(sig, ckpt_step, rc, tmp_path):
    """SIGINT stops at the snapshot boundary, checkpointed; kill -9 leaves the scheduled checkpoint (every 40 steps,
    the last at 80) and rows past it, which the resume replaces."""
    kw = {**BASE, "checkpoint_every": 40}
    cfg = make_config(**kw)
    simulate(cfg, out=tmp_path / "ref")
    out = tmp_path / "r"
    proc = subprocess.run([sys.executable, "-c", CHILD.format(cfg=kw), str(out), sig], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == rc, proc.stderr
    assert torch.load(out / "checkpoint.pt", weights_only=False)["reduced"]["step"] == ckpt_step
    assert simulate(cfg, out=out, resume=True).status == "complete"
    assert_same_run_bytes(out, tmp_path / "ref")


@pytest.mark.parametrize("first_trainer", [True, False], ids=["trainer_then_engine", "engine_then_trainer"])
def test_folder_resumed_by_the_other_path(first_trainer, tmp_path):
    """A Trainer checkpoint (no reduced state: the engine derives a basis) and an engine checkpoint resumed by the
    Trainer reach the uninterrupted run to round-off."""
    cfg = cfg_of(depth=3, bias=True)
    ref = simulate(cfg, _trainer=True)
    interrupt(cfg, tmp_path / "r", 100, _trainer=first_trainer)
    ckpt = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)
    assert ("reduced" in ckpt) is not first_trainer
    res = simulate(cfg, out=tmp_path / "r", resume=True, _trainer=not first_trainer)
    assert res.status == ref.status and res.step == ref.step
    assert rel_diff(res.history, ref.history) <= 1e-10
    for a, b in zip(res.weights + [res.H, res.bias], ref.weights + [ref.H, ref.bias]):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)


# ------------------------------------------------------------------------------ (5) a reduced state that does not fit
def _edit(out, change):
    path = out / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=False)
    ckpt["reduced"] = change(ckpt["reduced"])
    torch.save(ckpt, path)


FITLESS = {
    "step_mismatch": lambda r: {**r, "step": r["step"] + 20},
    "X_shape": lambda r: {**r, "X": torch.zeros(r["X"].shape[0] + 1, r["X"].shape[1], dtype=r["X"].dtype)},
    "block_shape": lambda r: {**r, "flat": [torch.zeros(2, 2, dtype=torch.float64)] + r["flat"][1:]},
    "missing_block": lambda r: {**r, "buf": r["buf"][:-1]},
    # malformed: the fix in Trainer.load_checkpoint (these raised KeyError / AttributeError / TypeError)
    "no_buf": lambda r: {k: v for k, v in r.items() if k != "buf"},
    "no_X": lambda r: {k: v for k, v in r.items() if k != "X"},
    "not_a_dict": lambda r: "garbage",
    "numpy_X": lambda r: {**r, "X": r["X"].numpy()},
}


@pytest.mark.parametrize("name", list(FITLESS))
def test_unfit_reduced_state_falls_back_to_a_derived_basis(name, tmp_path):
    cfg = cfg_of()
    ref = simulate(cfg, _trainer=True)
    interrupt(cfg, tmp_path / "r", 100)
    _edit(tmp_path / "r", FITLESS[name])
    res = simulate(cfg, out=tmp_path / "r", resume=True)
    assert res.status == ref.status and rel_diff(res.history, ref.history) <= 1e-10


def test_reduced_state_that_does_not_reproduce_the_parameters_is_not_trusted(tmp_path):
    cfg = cfg_of()
    ref = simulate(cfg, _trainer=True)
    interrupt(cfg, tmp_path / "r", 100)
    # one basis row fewer, blocks cut to match: self-consistent shapes, but P X no longer gives the saved H
    _edit(tmp_path / "r", lambda r: {**r, "X": r["X"][:-1], "flat": r["flat"][:-1] + [r["flat"][-1][:, :-1]],
                                     "buf": r["buf"][:-1] + [r["buf"][-1][:, :-1]]})
    res = simulate(cfg, out=tmp_path / "r", resume=True)
    assert rel_diff(res.history, ref.history) <= 1e-10


# ------------------------------------------------------------------------------ (4) result object, threads_used
@pytest.mark.parametrize("threads", [0, 2])
def test_result_object_and_threads_used(threads, tmp_path, engine_calls):
    cfg = cfg_of(bias=True, threads=threads)
    seen = []
    res = simulate(cfg, out=tmp_path, callback=lambda row: seen.append(torch.get_num_threads()))
    assert engine_calls == [1]
    env = json.loads((tmp_path / "environment.json").read_text())
    assert set(seen) == {env["threads_used"]}  # what the run really used, not a formula's guess
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert res.seconds > 0 and res.snapshot_seconds > 0
    assert res.seconds == summary["train_seconds"] and res.snapshot_seconds == summary["snapshot_seconds"]
    with open(tmp_path / "metrics.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["step"] for r in res.history] == [int(r["step"]) for r in table] == list(range(0, 201, 20))
    assert all(float(t["objective"]) == r["objective"] for t, r in zip(table, res.history))
    assert res.final == res.history[-1] and res.step == 200 and res.status == "complete"
    w = torch.load(tmp_path / "weights.pt")
    assert [a.shape for a in res.weights] == [(5, 5), (3, 5)] and res.H.shape == (5, 9) and res.bias.shape == (3,)
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(res.weights, w["weights"]))
    assert np.array_equal(res.H, w["H"].numpy()) and np.array_equal(res.bias, w["bias"].numpy())


# ------------------------------------------------------------------------------ (3) the CLI
CLI = ["-K", "3", "-n", "3", "-M", "2", "--width", "5", "--lambda-w", "5e-3", "--lambda-h", "5e-3", "--steps", "200",
       "--snapshot-every", "20", "--no-figures"]


def test_cli_json_and_resume_through_the_engine(tmp_path, engine_calls):
    cfg = cfg_of()
    simulate(cfg, out=tmp_path / "ref", _trainer=True)
    res = CliRunner().invoke(cli, ["simulate", *CLI, "--no-progress", "--out", str(tmp_path / "a"), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output.strip().splitlines()[-1])
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert (doc["status"], doc["step"], doc["final"]) == (summary["status"], summary["step"], summary["final"])
    ref = summary_of(tmp_path / "ref")
    assert doc["status"] == ref["status"] and abs(doc["final"]["objective"] / ref["final"]["objective"] - 1) < 1e-10
    # an interrupted folder continued by --resume writes the uninterrupted bytes
    interrupt(cfg, tmp_path / "b", 60)
    res = CliRunner().invoke(cli, ["simulate", *CLI, "--no-progress", "--out", str(tmp_path / "b"), "--resume"])
    assert res.exit_code == 0, res.output
    assert "complete at step 200" in res.output
    assert engine_calls == [1, 1, 1]
    assert_same_run_bytes(tmp_path / "b", tmp_path / "a")



def test_cli_progress_bar_shows_loss_and_gap_as_the_trainer_path(tmp_path):
    """The documented bar (step, loss, relative gap), as gradient=manual's Trainer shows it."""
    outs = {}
    for mode in ("auto", "manual"):
        res = CliRunner().invoke(cli, ["simulate", *CLI, "--progress", "--gradient", mode,
                                       "--out", str(tmp_path / mode)])
        assert res.exit_code == 0, res.output
        final = json.loads((tmp_path / mode / "summary.json").read_text())["final"]
        outs[mode] = res.output
        assert f"loss={final['objective']:.6g}" in res.output and f"gap={final['rel_gap']:.2e}" in res.output, mode
    assert "200/200" in outs["auto"]


def test_trainer_checkpoint_of_a_later_step_carries_no_stale_reduced_state(tmp_path):
    """engine (stopped at 60) -> Trainer (stopped at 120) -> engine: the Trainer's checkpoint must not carry the
    step-60 basis, and the chain reaches the uninterrupted run to round-off."""
    cfg = cfg_of(depth=3)
    ref = simulate(cfg, _trainer=True)
    out = tmp_path / "r"
    interrupt(cfg, out, 60)
    with pytest.raises(KeyboardInterrupt):
        simulate(cfg, out=out, resume=True, _trainer=True, callback=stop_at(120))
    assert "reduced" not in torch.load(out / "checkpoint.pt", weights_only=False)
    res = simulate(cfg, out=out, resume=True)
    assert rel_diff(res.history, ref.history) <= 1e-10


def test_callback_error_leaves_the_recorded_steps_weights(tmp_path):
    cfg = cfg_of()

    def boom(row):
        if row["step"] == 100:
            raise RuntimeError("callback failed")

    for name, trainer in (("e", False), ("t", True)):
        with pytest.raises(RuntimeError, match="callback failed"):
            simulate(cfg, out=tmp_path / name, callback=boom, _trainer=trainer)
    we, wt = torch.load(tmp_path / "e" / "weights.pt"), torch.load(tmp_path / "t" / "weights.pt")
    assert summary_of(tmp_path / "e")["status"] == "failed" and we["step"] == wt["step"] == 100
    torch.testing.assert_close(we["H"], wt["H"], rtol=0, atol=1e-10)


def test_tiny_lambda_rows_equal_the_trainers(tmp_path):
    cfg = cfg_of(lambda_w=1e-300, steps=40)
    eng, ref = simulate(cfg), simulate(cfg, _trainer=True)
    assert rel_diff(eng.history, ref.history) <= 1e-10


@pytest.mark.parametrize("trainer", [False, True], ids=["engine", "trainer"])
def test_interrupt_at_the_converging_snapshot_resumes_converged(trainer, tmp_path):
    """Stopped (callback / Ctrl-C) at the very row that meets stop_rel_gap, before the stop check: the resume must
    end there, converged, as the uninterrupted run (it trained one more snapshot, to step 300)."""
    cfg = cfg_of(stop_rel_gap=1e-3, steps=2000)
    ref = simulate(cfg, out=tmp_path / "ref", _trainer=trainer)
    assert ref.status == "converged" and 0 < ref.step < cfg.steps
    interrupt(cfg, tmp_path / "r", ref.step, _trainer=trainer)
    res = simulate(cfg, out=tmp_path / "r", resume=True, _trainer=trainer)
    assert (res.status, res.step) == (ref.status, ref.step)
    assert_same_run_bytes(tmp_path / "r", tmp_path / "ref")
