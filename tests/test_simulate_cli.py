"""``nclab simulate``: runs, presets with overrides, depths, figures, resume, and one-line errors."""

import json

import pytest
from click.testing import CliRunner

from nclab.cli import cli

SMALL = ["--classes", "3", "--per-class", "2", "--width", "4", "--lambda-w", "0.01", "--lambda-h", "0.01",
         "--init-std", "0.5", "--no-progress"]


def run(*args):
    return CliRunner().invoke(cli, ["simulate", *args])


def test_single_run_writes_run_directory(tmp_path):
    out = tmp_path / "r"
    res = run(*SMALL, "-M", "2", "--optimizer", "lbfgs", "--steps", "500", "--out", str(out), "--no-figures")
    assert res.exit_code == 0, res.output
    assert "rel. gap" in res.output and str(out) in res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] in ("converged", "complete") and abs(summary["final"]["rel_gap"]) < 1e-8


def test_depths_give_one_run_each_and_figures(tmp_path):
    out = tmp_path / "d"
    res = run(*SMALL, "--depths", "1,2", "--steps", "300", "--snapshot-every", "50", "--out", str(out), "--json")
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.output.strip().splitlines()]
    assert [len(json.loads((out / f"depth-{M}" / "config.json").read_text())["config"]["widths"])
            for M in (1, 2)] == [1, 2]
    assert lines[0]["status"] == "complete" and lines[1]["final"]["step"] == 300
    for name in ("metrics.png", "metrics.pdf", "norms.png", "norms.pdf"):
        assert (out / "figures" / name).stat().st_size > 1000


def test_preset_with_overrides_and_resume(tmp_path):
    out = tmp_path / "p"
    args = ["--preset", "paper-imbalanced-gof", "--depths", "1", "--steps", "200", "--width", "8",
            "--counts", "8,4,2,2", "--no-progress", "--no-figures", "--out", str(out)]
    res = run(*args)
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / "depth-1" / "config.json").read_text())["config"]
    assert cfg["counts"] == [8, 4, 2, 2] and cfg["widths"] == [8] and cfg["lr"] == 0.1 and cfg["steps"] == 200
    again = run(*args)
    assert again.exit_code == 2 and "error:" in again.output and "--resume" in again.output
    resumed = run(*args, "--resume")
    assert resumed.exit_code == 0 and "complete at step 200" in resumed.output
    other = run(*args[:-2], "--out", str(out), "--lr", "0.05", "--resume")
    assert other.exit_code == 2 and "another config (lr: 0.1 -> 0.05)" in other.output


@pytest.mark.parametrize(
    "args,match",
    [
        (["--lr", "0"], "lr must be > 0"),
        (["--lr", "-1"], "lr must be > 0"),
        (["--steps", "0"], "steps must be a positive integer"),
        (["--snapshot-every", "0"], "snapshot interval"),
        (["--counts", "5"], "at least K = 2"),
        (["--lambda-w", "0"], "lambda_w must be a finite number > 0"),
        (["--widths", "4,4", "--depth", "3"], "widths has 2 values but depth M = 3"),
        (["--depths", "1,2", "--depth", "2"], "--depth or --depths"),
        (["--resume", "--overwrite"], "--resume or --overwrite"),
        (["--device", "tpu"], "device must be"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, args, match):
    base = ["--steps", "10", "--no-progress", "--no-figures", "--out", str(tmp_path / "x")]
    if "--counts" not in args:
        base += ["--classes", "3", "--per-class", "2"]
    if "--widths" not in args:
        base += ["--width", "4"]
    res = run(*base, *args)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and match in res.output


def test_divergence_exits_nonzero_and_keeps_last_good(tmp_path):
    out = tmp_path / "dv"
    res = run(*SMALL, "-M", "3", "--lr", "50", "--steps", "2000", "--snapshot-every", "10", "--out", str(out),
              "--no-figures")
    assert res.exit_code == 2 and "diverged" in res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["final"]["objective"] is not None


def test_stop_rel_gap_stops_at_the_first_snapshot_below_it(tmp_path):
    """--stop-rel-gap: the same run without it shows where the relative gap first drops below the threshold (the
    gap of each row recomputed here from its objective and the prediction's f*); the stopped run ends there."""
    common = [*SMALL, "-M", "2", "--steps", "3000", "--snapshot-every", "50", "--no-figures", "--json"]
    full = run(*common, "--out", str(tmp_path / "full"))
    assert full.exit_code == 0, full.output
    f_star = json.loads(full.output.strip().splitlines()[-1])["predicted_objective"]
    rows = [line.split(",") for line in (tmp_path / "full" / "metrics.csv").read_text().splitlines()]
    step, obj = rows[0].index("step"), rows[0].index("objective")
    gaps = [(int(r[step]), (float(r[obj]) - f_star) / abs(f_star)) for r in rows[1:]]
    first = next(s for s, g in gaps if s > 0 and g <= 1e-3)
    assert 0 < first < 3000
    res = run(*common, "--stop-rel-gap", "1e-3", "--out", str(tmp_path / "stop"))
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output.strip().splitlines()[-1])
    assert doc["status"] == "converged" and doc["step"] == first and f"at step {first}" in doc["message"]
    assert doc["final"]["rel_gap"] <= 1e-3
