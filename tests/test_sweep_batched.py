"""``nclab sweep`` batches compatible grid points: the runs a worker gets of one shape train as one batch
(nclab.ufm.batched), and every run folder is the one an unbatched sweep writes (rows equal to 1e-10 relative in
float64, the same files, statuses and steps). The batched path is observable: the manifest's ``batch`` field and
the CLI's ``[batch of N]``."""

import json
import math

import pytest
import torch
from click.testing import CliRunner

import nclab.experiments.sweep as sweep_mod
from nclab.cli import cli
from nclab.experiments.sweep import SweepRun, batch_groups, expand_sweep, load_sweep, run_sweep
from nclab.results import RunStore
from nclab.ufm import make_config, simulate

TOL = 1e-10
SMALL = """kind = "simulate"
name = "small"
[base]
classes = 3
per_class = 4
widths = 5
depth = 2
init_std = 0.3
optimizer = "sgd"
steps = 400
snapshot_every = 50
[grid]
lambda_w = [0.01, 0.02]
seed = [0, 1]
"""
NAMES = ["lambda_w=0.01,seed=0", "lambda_w=0.01,seed=1", "lambda_w=0.02,seed=0", "lambda_w=0.02,seed=1"]


def close(a, b) -> bool:
    if isinstance(a, str) or isinstance(b, str) or a is None or b is None:
        return a == b
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= TOL * max(1.0, abs(a), abs(b))


def same_run(got, want) -> None:
    """Two run folders: the same files, config, status and step, every metrics value to TOL."""
    assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in want.iterdir())
    a, b = RunStore(got), RunStore(want)
    assert a.read_config()["config"] == b.read_config()["config"]
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (got, want))
    assert (sa["status"], sa["step"], sa["rows"]) == (sb["status"], sb["step"], sb["rows"])
    ra, rb = a.read_rows(), b.read_rows()
    assert [r["step"] for r in ra] == [r["step"] for r in rb] and [list(r) for r in ra] == [list(r) for r in rb]
    for x, y in zip(ra, rb):
        bad = {k: (x[k], y[k]) for k in x if not close(x[k], y[k])}
        assert not bad, (x["step"], bad)
    wa, wb = (torch.load(d / "weights.pt", weights_only=False) for d in (got, want))
    assert torch.allclose(wa["H"], wb["H"], rtol=0, atol=1e-9) and torch.equal(wa["labels"], wb["labels"])


def test_a_batched_sweep_writes_the_unbatched_run_folders(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(SMALL)
    res = CliRunner().invoke(cli, ["sweep", str(path), "--out", str(tmp_path / "b"), "-j", "1", "--no-report"])
    assert res.exit_code == 0, res.output
    assert res.output.count("[batch of 4]") == 4, res.output  # the batched path was taken, for every run
    manifest = json.loads((tmp_path / "b" / "sweep.json").read_text())
    assert [(e["name"], e["status"], e["batch"]) for e in manifest["runs"]] == [(n, "complete", 4) for n in NAMES]
    for run in expand_sweep(load_sweep(path)):  # what an unbatched sweep runs: nclab.simulate, one by one
        assert run.name in NAMES
        simulate(run.config, out=tmp_path / "u" / run.name)
        same_run(tmp_path / "b" / run.name, tmp_path / "u" / run.name)


@pytest.mark.parametrize("workers,batch,want", [(1, True, [4]), (2, True, [2, 2]), (2, False, [1, 1, 1, 1])])
def test_the_jobs_a_sweep_hands_its_workers(tmp_path, monkeypatch, workers, batch, want):
    path = tmp_path / "s.toml"
    path.write_text(SMALL)
    seen = []

    def fake_local(jobs, n_workers, record):  # the worker pool, without the workers
        seen.extend(len(entries) for _, _, _, entries in jobs)
        assert n_workers == min(workers, len(jobs))

    monkeypatch.setattr(sweep_mod, "_run_local", fake_local)
    run_sweep(path, tmp_path / "o", workers=workers, report=False, batch=batch)
    assert seen == want


class _StopAfter:
    """A stop Event that turns on after ``n`` checks (the sweep's Ctrl-C, ``n`` metrics rows into the batch)."""

    def __init__(self, n):
        self.n = n

    def is_set(self):
        self.n -= 1
        return self.n < 0


def test_a_stopped_batch_resumes_to_the_uninterrupted_runs(tmp_path, monkeypatch):
    runs = expand_sweep(load_sweep_text(tmp_path, SMALL))
    dirs = [str(tmp_path / "o" / r.name) for r in runs]
    options = [r.options for r in runs]
    monkeypatch.setattr(sweep_mod, "_STOP", _StopAfter(4 * 3))  # stop at the first row after steps 0, 50, 100
    first = sweep_mod._run_batch(options, dirs)
    assert [o["status"] for o in first] == ["interrupted"] * 4 and all(o["batch"] == 4 for o in first)
    assert [len(RunStore(d).read_rows()) for d in dirs] == [4, 3, 3, 3]  # each checkpointed at its last row
    monkeypatch.setattr(sweep_mod, "_STOP", None)
    again = sweep_mod._run_batch(options, dirs)
    assert [(o["status"], o["step"]) for o in again] == [("complete", 400)] * 4
    for run in runs:
        simulate(run.config, out=tmp_path / "ref" / run.name)  # never interrupted, never batched
        same_run(tmp_path / "o" / run.name, tmp_path / "ref" / run.name)


def load_sweep_text(tmp_path, text):
    path = tmp_path / "s.toml"
    path.write_text(text)
    return load_sweep(path)


def _runs(**variants):
    base = dict(counts=[2, 2, 2], widths=4, depth=1, steps=10)
    return [SweepRun(name=str(i), params={}, options={}, config=make_config(**{**base, **v}))
            for i, v in enumerate(variants["configs"])]


@pytest.mark.parametrize("workers,want", [
    (1, [[0, 1, 3, 5], [2], [4], [6], [7]]),
    (2, [[0, 1], [2], [3, 5], [4], [6], [7]]),
    (4, [[0], [1], [2], [3], [4], [5], [6], [7]]),
])
def test_batch_groups_by_shape_and_split_over_workers(workers, want):
    runs = _runs(configs=[
        dict(seed=0), dict(seed=1, lambda_w=0.1), dict(depth=2),  # 2: another depth
        dict(seed=2, lr=0.05), dict(optimizer="lbfgs"),  # lr may differ; L-BFGS is never batched
        dict(seed=3, counts=[3, 2, 1]), dict(optimizer="adam"),  # counts of one N join; Adam is its own group
        dict(activation="relu"),  # the ReLU UFM: one by one
    ])
    assert batch_groups(runs, workers) == want


def test_a_locked_run_of_a_batch_is_recorded_and_the_others_finish(tmp_path):
    """A run folder another process holds stops the batch from starting: the runs go one by one, the locked one
    is recorded as failed (locked) after the lock wait, the others complete as unbatched runs."""
    from nclab.results import RunLock

    runs = expand_sweep(load_sweep_text(tmp_path, SMALL))
    dirs = [str(tmp_path / "o" / r.name) for r in runs]
    with RunLock(tmp_path / "o" / runs[2].name):
        got = sweep_mod._run_batch([r.options for r in runs], dirs, lock_wait=0.2)
    assert [(o["status"], o["batch"]) for o in got] == [("complete", 1)] * 2 + [("failed", 1)] + [("complete", 1)]
    assert got[2]["locked"] and "in use by another nclab process" in got[2]["message"]
