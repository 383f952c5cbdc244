"""Empirical phase diagram (nclab.report.empirical): batched runs on a (lambda, n) grid against the theory."""

from __future__ import annotations

import numpy as np

from nclab.report.empirical import empirical_boundary, empirical_phase_figure, empirical_phase_grid
from nclab.report.phase import MINORITY_COLLAPSED, NOT_COLLAPSED, TRIVIAL, phase_grid


def test_depth_one_grid_agrees_with_theory_away_from_the_thresholds():
    lambdas = np.array([1e-4, 1e-2, 1e-1])
    sizes = np.array([2, 100])
    grid = empirical_phase_grid(depth=1, lambdas=lambdas, sizes=sizes, steps=2000)
    assert grid["states"].shape == (2, 3) and grid["runs"] == 6
    _, _, theory = phase_grid(grid["majority"], 2, 1, lambdas=lambdas, sizes=sizes)
    # far from the thresholds the trained runs land in the predicted state
    assert grid["states"][:, 0].tolist() == theory[:, 0].tolist() == [NOT_COLLAPSED] * 2
    assert grid["states"][:, 2].tolist() == theory[:, 2].tolist() == [TRIVIAL] * 2
    assert grid["states"][0, 1] == theory[0, 1] == MINORITY_COLLAPSED
    n, b = empirical_boundary(grid)
    assert n.tolist() == [2, 100] and b[0] == 1e-2
    fig = empirical_phase_figure(grid)
    assert fig.axes and any(line.get_label() == "empirical boundary" for line in fig.axes[0].lines)
