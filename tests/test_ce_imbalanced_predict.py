"""nclab.predict / nclab predict / nclab simulate with CE and unequal counts (M = 1: certified)."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from nclab import predict, simulate
from nclab.cli import cli
from nclab.theory import ufm_objective


@pytest.mark.parametrize("bias", [False, True])
def test_simulate_reaches_the_certified_prediction(bias):
    kw = dict(counts=[20, 10, 5, 5], loss="ce", lambda_w=5e-3, lambda_h=5e-3, bias=bias)
    pred = predict(**kw)
    assert pred.ce["certified"] is True and pred.ce["relative_duality_gap"] <= 1e-10
    r = simulate(**kw, optimizer="lbfgs", steps=3000, init_std=0.3)
    assert abs(r.final["rel_gap"]) < 1e-9  # long descent reaches f* and never goes below it
    assert r.final["nc2_w"] < 1e-6 and r.final["nc2_h"] < 1e-6 and r.final["nc3"] < 1e-6


def test_construct_attains_the_objective_and_cli_answers():
    kw = dict(counts=[200, 100, 5, 5], loss="ce", lambda_w=1e-2, lambda_h=1e-2, bias=True)
    pred = predict(**kw)
    ws, H, b = pred.construct()
    labels = np.repeat(np.arange(4), kw["counts"])
    f = ufm_objective(ws, H, labels, [1e-2], 1e-2, bias=b, loss="ce")
    assert abs(f - pred.objective) <= 1e-10 * pred.objective
    res = CliRunner().invoke(cli, ["predict", "--counts", "200,100,5,5", "--loss", "ce", "--lambda-w", "1e-2",
                                   "--lambda-h", "1e-2", "--bias", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert abs(doc["objective"] - pred.objective) < 1e-12
    assert doc["certified"] is True and doc["merged"] == [[2, 3]] and doc["rel_gap"] <= 1e-10
    res = CliRunner().invoke(cli, ["predict", "--counts", "200,100,5,5", "--loss", "ce", "--lambda-w", "1e-2",
                                   "--lambda-h", "1e-2", "--bias"])
    assert "merged here: [[2, 3]]" in res.output and "certified" in res.output


def test_deeper_imbalanced_ce_answers_uncertified():
    """M >= 2 is answered (tests/test_ce_imbalanced_deep.py checks the value) and says it is not certified."""
    pred = predict([20, 10, 5], depth=2, loss="ce")
    assert pred.ce["certified"] is False and pred.ce["duality_gap"] is None and pred.ce["ranks_searched"] == [1, 2]
