"""Automatic checkpoints (checkpoint_every = 0): every 10 snapshots, at most one per NCLAB_CHECKPOINT_SECONDS
(default 10 s). Where checkpoints fall never changes the iterates."""

import pytest
from click.testing import CliRunner

from nclab.ufm import simulate
from nclab.ufm.batched import simulate_batch
from nclab.ufm.config import AUTO_CHECKPOINT_SECONDS, auto_checkpoint_seconds, make_config
from nclab.ufm.trainer import Trainer

KW = dict(classes=3, per_class=2, widths=4, depth=2, steps=300, snapshot_every=10, lambda_w=0.01, lambda_h=0.01)


def test_the_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("NCLAB_CHECKPOINT_SECONDS", raising=False)
    assert auto_checkpoint_seconds() == AUTO_CHECKPOINT_SECONDS == 10.0
    monkeypatch.setenv("NCLAB_CHECKPOINT_SECONDS", " 2.5 ")
    assert auto_checkpoint_seconds() == 2.5
    for bad in ("x", "-1", "nan", "inf"):
        monkeypatch.setenv("NCLAB_CHECKPOINT_SECONDS", bad)
        with pytest.raises(ValueError, match="NCLAB_CHECKPOINT_SECONDS"):
            auto_checkpoint_seconds()


def _count_checkpoints(monkeypatch):
    steps = []
    original = Trainer.checkpoint

    def counting(self):
        steps.append(self.step)
        return original(self)

    monkeypatch.setattr(Trainer, "checkpoint", counting)
    return steps


@pytest.mark.parametrize("batched", [False, True])
def test_time_gated_checkpoints_leave_the_run_unchanged(tmp_path, monkeypatch, batched):
    steps = _count_checkpoints(monkeypatch)
    tables = {}
    for gap in ("0", "1e6"):
        monkeypatch.setenv("NCLAB_CHECKPOINT_SECONDS", gap)
        steps.clear()
        out = tmp_path / f"gap-{gap}"
        if batched:
            simulate_batch([make_config(**KW, seed=s) for s in (0, 1)], [out / "s0", out / "s1"])
            tables[gap] = [(out / s / "metrics.csv").read_bytes() for s in ("s0", "s1")]
            # every 10 snapshots (steps 100 and 200) for each run, then the end
            intermediate = [s for s in steps if s < KW["steps"]]
            assert intermediate == ([100, 100, 200, 200] if gap == "0" else []), steps
        else:
            simulate(out=out, **KW)
            tables[gap] = [(out / "metrics.csv").read_bytes()]
            intermediate = [s for s in steps if s < KW["steps"]]
            assert intermediate == ([100, 200] if gap == "0" else []), steps
        assert (out / ("s0" if batched else "") / "checkpoint.pt").is_file()  # the end always checkpoints
    assert tables["0"] == tables["1e6"]


def test_an_explicit_interval_ignores_the_time_gate(tmp_path, monkeypatch):
    steps = _count_checkpoints(monkeypatch)
    monkeypatch.setenv("NCLAB_CHECKPOINT_SECONDS", "1e6")
    simulate(out=tmp_path / "r", checkpoint_every=150, **KW)
    assert [s for s in steps if s < KW["steps"]] == [150]


def test_a_bad_interval_is_one_error_line(tmp_path, monkeypatch):
    from nclab.cli import cli

    monkeypatch.setenv("NCLAB_CHECKPOINT_SECONDS", "soon")
    r = CliRunner().invoke(cli, ["simulate", "-K", "3", "-n", "2", "--steps", "20", "--out", str(tmp_path / "r")])
    assert r.exit_code == 2, r.output
    assert r.output.strip().splitlines() == [
        "error: NCLAB_CHECKPOINT_SECONDS must be a number of seconds >= 0, got 'soon'"], r.output
    assert not (tmp_path / "r").exists()  # refused before the run folder was made
    with pytest.raises(ValueError, match="NCLAB_CHECKPOINT_SECONDS"):
        simulate_batch([make_config(**KW)], [tmp_path / "b"])
    assert not (tmp_path / "b").exists()
