"""--tensorboard mirrors every metrics row of a run into TensorBoard scalars."""

import math

import pytest

import nclab
from nclab.results import RunStore


def test_tensorboard_scalars_match_metrics_table(tmp_path):
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator", reason="tensorboard not installed")
    out = tmp_path / "run"
    nclab.simulate(classes=3, per_class=5, depth=2, optimizer="lbfgs", steps=40, snapshot_every=10, out=out,
                   tensorboard=True)
    rows = RunStore(out).read_rows()
    acc = event_accumulator.EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"nc/objective", "nc/rel_gap", "nc/nc1_L1"} <= set(tags)
    for key in ("objective", "rel_gap", "nc1_L1"):
        events = acc.Scalars(f"nc/{key}")
        assert [e.step for e in events] == [r["step"] for r in rows]
        for e, r in zip(events, rows):
            assert math.isclose(e.value, r[key], rel_tol=1e-6)  # event files store float32


def test_tensorboard_needs_an_output_directory():
    with pytest.raises(ValueError, match="output directory"):
        nclab.simulate(classes=3, per_class=5, depth=1, optimizer="lbfgs", steps=5, tensorboard=True)


def test_train_tensorboard_has_one_scalar_per_tracked_epoch(tmp_path):
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator", reason="tensorboard not installed")
    from click.testing import CliRunner

    from nclab.cli import cli

    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["train", "--preset", "cpu-mlp-balanced", "--dataset", "digits", "--counts",
                                 ",".join(["8"] * 10), "--test-per-class", "2", "--epochs", "2", "--track-every", "1",
                                 "--out", str(out), "--tensorboard", "--no-progress"])
    assert r.exit_code == 0, r.output
    rows = RunStore(out).read_rows()
    acc = event_accumulator.EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    events = acc.Scalars("nc/nc1_L1")
    assert [e.step for e in events] == [r["epoch"] for r in rows]
    assert all(math.isclose(e.value, r["nc1_L1"], rel_tol=1e-6) for e, r in zip(events, rows))
