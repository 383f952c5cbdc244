"""nclab.theory.ce behaviours pinned by mutation testing (issue 15): the depth check of reduced_objective,
the JSON dict of a CESolution, and the memory refusal of construct_ce (its size formula and message).

Expectations are hand-derived (K = 2 or 3, M = 1) or literal messages, never the API under test.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from nclab.theory.ce import construct_ce, reduced_objective, solve_ce
from nclab.theory.problem import make_problem


@pytest.mark.parametrize("depth", [0, -3])
def test_reduced_objective_names_the_depth_in_its_error(depth):
    with pytest.raises(ValueError, match=rf"^depth M must be a positive integer, got {depth}$"):
        reduced_objective(np.eye(2), None, 0.1, depth)


def test_solution_dict_is_json_with_the_problem_and_without_per_mode_internals():
    # K = 3, M = 1, n = 2: gamma = sqrt(lambda_w n lambda_h) = sqrt(2e-4) < 1/K, so the ETF z P is the proven
    # minimizer with z = log(1/gamma - (K - 1)) and value log(1 + (K-1) e^-z) + gamma (K - 1) z (theory.md sec. 4)
    pr = make_problem([2, 2, 2], widths=[4], lambda_w=0.01, lambda_h=0.01, loss="ce")
    d = json.loads(json.dumps(solve_ce(pr, search=False).to_dict()))
    gamma = math.sqrt(0.01 * 2 * 0.01)
    z = math.log(1 / gamma - 2)
    assert d["objective"] == pytest.approx(math.log1p(2 * math.exp(-z)) + gamma * 2 * z, rel=1e-12)
    assert d["problem"] == {"counts": [2, 2, 2], "widths": [4], "lambda_w": [0.01], "lambda_h": 0.01,
                            "bias": False, "loss": "ce"}
    # basis/values/sigma are internal per-mode data (the Grams and WH carry the same information)
    assert not {"basis", "values", "sigma"} & set(d)


def test_construct_memory_check_counts_the_feature_matrix_and_names_it(monkeypatch):
    # K = 2, M = 1, d = 64, n = 1000 (N = 2000): bytes = 8 (K d [W_1] + d N [H] + d K [Hbar, class means]
    # + 2 K min(K, R) [eigenvectors]), R = min(K, d) = 2; the budget is 0.8 * NCLAB_MEMORY_LIMIT
    K, d, N = 2, 64, 2000
    need = 8 * (K * d + d * N + d * K + 2 * K * 2)
    pr = make_problem([N // K] * K, widths=[d], lambda_w=0.01, lambda_h=0.01, loss="ce")
    sol = solve_ce(pr, search=False)
    monkeypatch.setenv("NCLAB_MEMORY_LIMIT", str(math.floor(need / 0.8) - 20))
    with pytest.raises(ValueError, match=r"^the explicit minimizer \(W_1\.\.W_M and H of 64 x 2,000\) would need "):
        construct_ce(pr, sol)
    monkeypatch.setenv("NCLAB_MEMORY_LIMIT", str(math.ceil(need / 0.8) + 20))
    W, H, _ = construct_ce(pr, sol)
    assert [w.shape for w in W] == [(K, d)] and H.shape == (d, N)
