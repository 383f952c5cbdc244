"""A run that ends away from the global minimum says so (status "suboptimal"), and the remedies work:
starting at the predicted minimizer plus noise, and restarts that keep the best run."""

import json

from click.testing import CliRunner

from nclab import predict, simulate
from nclab.cli import cli

# The example: at lambda = 2e-2, M = 3 the zero solution is a stationary point with f = 0.5 > f*.
HARD = dict(counts=[200, 100, 50, 50], depth=3, widths=64, lambda_w=2e-2, lambda_h=2e-2)


def test_zero_solution_is_reported_not_called_converged():
    pred = predict(**HARD)
    assert pred.objective < pred.objective_zero == 0.5
    r = simulate(**HARD, optimizer="lbfgs", steps=300)
    assert r.final["objective"] == r.final["objective"]  # finite
    assert abs(r.final["objective"] - 0.5) < 1e-9
    assert r.status == "suboptimal" and "zero solution" in r.message and "--init prediction" in r.message


def test_a_converged_run_keeps_its_status_and_an_unfinished_one_says_so():
    ok = simulate(counts=[3, 2], depth=1, widths=3, lambda_w=1e-2, lambda_h=1e-2, optimizer="lbfgs", steps=200)
    assert ok.status in ("converged", "complete") and ok.final["rel_gap"] < 1e-8
    short = simulate(counts=[3, 2], depth=1, widths=3, lambda_w=1e-2, lambda_h=1e-2, steps=5, snapshot_every=5)
    assert short.status == "complete" and "not converged" in short.message


def test_init_prediction_reaches_the_global_minimum(tmp_path):
    r = simulate(**HARD, optimizer="lbfgs", steps=300, init="prediction", init_std=1e-3)
    assert r.status != "suboptimal" and abs(r.final["rel_gap"]) < 1e-10


def test_restarts_keep_the_best_run(tmp_path):
    res = CliRunner().invoke(cli, ["simulate", "--counts", "200,100,50,50", "-M", "3", "--lambda-w", "2e-2",
                                   "--lambda-h", "2e-2", "--optimizer", "lbfgs", "--steps", "300", "--init-std",
                                   "0.5", "--restarts", "2", "--no-figures", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "restarts.json").read_text())
    assert [r["seed"] for r in doc["runs"]] == [0, 1]
    best = min(doc["runs"], key=lambda r: r["objective"])
    assert doc["best"] == best["run_dir"] == f"seed-{doc['best_seed']}"
    assert (tmp_path / doc["best"] / "weights.pt").exists()
