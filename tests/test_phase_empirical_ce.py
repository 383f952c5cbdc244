"""Empirical CE phase diagram (nclab.report.empirical, loss="ce"): trained runs against the exact M = 1 states."""

from __future__ import annotations

import numpy as np
import pytest

from nclab.report.empirical import (
    GAP_TOL,
    UNKNOWN,
    ce_state,
    compare_with_theory,
    empirical_boundary,
    empirical_phase_figure,
    empirical_phase_grid,
)
from nclab.report.phase import MINORITY_COLLAPSED, NOT_COLLAPSED, TRIVIAL

MAJORITY = (200, 100)


def _exact_state(n: int, lam: float) -> int:
    """Hand-derived M = 1 CE state (no bias, two minority classes of n): zero is optimal iff
    ||[sqrt(n_k)/N (1/K - e_k)]_k||_2 <= lam, else the minority rows merge iff n <= N^2 lam^2."""
    counts = np.array([*MAJORITY, n, n], dtype=float)
    K, N = counts.size, counts.sum()
    gam0 = (np.sqrt(counts) / N)[None, :] * (np.full(K, 1.0 / K)[:, None] - np.eye(K))
    if np.linalg.norm(gam0, 2) <= lam:
        return TRIVIAL
    return MINORITY_COLLAPSED if n <= N * N * lam * lam else NOT_COLLAPSED


def test_ce_state_reads_merged_apart_trivial_from_the_rows():
    W = np.array([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0], [-1.0, -1.0 + 1e-7]])  # minority rows 1e-7 / 2 apart
    assert ce_state(W, 2, 1e-5, 1e-3)[0] == MINORITY_COLLAPSED
    W[3, 1] += 1e-3  # now 5e-4 of the largest row norm apart: more than rtol
    state, dist = ce_state(W, 2, 1e-5, 1e-3)
    assert state == NOT_COLLAPSED and dist == pytest.approx(np.hypot(0, 1e-3 + 1e-7) / 2.0)
    assert ce_state(W * 1e-4, 2, 1e-5, 1e-3)[0] == TRIVIAL  # every row norm <= 2e-4
    assert ce_state(np.full((4, 2), np.nan), 2, 1e-5, 1e-3)[0] == UNKNOWN


def test_depth_one_ce_grid_agrees_with_the_exact_states_and_reports_runs_above_the_prediction():
    lambdas = np.array([1e-4, 1e-2, 1e-1])
    sizes = np.array([2, 100])
    # 300 steps: enough away from the thresholds (lambda >= 1e-2), not at lambda = 1e-4 (large logits)
    grid = empirical_phase_grid(depth=1, lambdas=lambdas, sizes=sizes, steps=300, loss="ce")
    expected = np.array([[_exact_state(int(n), float(lam)) for lam in lambdas] for n in sizes])
    # every point is >= 2x away from its threshold: the runs land in the exact state
    assert expected.tolist() == [[NOT_COLLAPSED, MINORITY_COLLAPSED, TRIVIAL], [NOT_COLLAPSED] * 2 + [TRIVIAL]]
    assert grid["states"].tolist() == expected.tolist()
    gaps = grid["rel_gaps"]
    assert np.all(gaps >= -1e-12)  # the certified optimum is a lower bound on every run's objective
    assert np.all(gaps[:, 1:] <= GAP_TOL) and np.all(gaps[:, 0] > GAP_TOL)
    cmp = compare_with_theory(grid)
    assert cmp["agree"] == 1.0 and cmp["disagree"] == [] and cmp["theory"].tolist() == expected.tolist()
    # the two unconverged runs are listed, with their gap, not dropped
    assert sorted((p["n"], p["lambda"], p["outcome"]) for p in cmp["above"]) == [
        (2, 1e-4, "descending"), (100, 1e-4, "descending")]
    assert cmp["outcomes"] == {"descending": 2, "reached": 4}
    n, b = empirical_boundary(grid)
    assert n.tolist() == [2, 100] and b.tolist() == [1e-2, 1e-1]
    fig = empirical_phase_figure(grid)
    ax = fig.axes[0]
    assert any(line.get_label() == "empirical boundary" for line in ax.lines)
    rings = [line for line in ax.lines if line.get_markeredgecolor() == "r"]
    assert sorted((float(r.get_xdata()[0]), float(r.get_ydata()[0])) for r in rings) == [(1e-4, 2.0), (1e-4, 100.0)]


def test_unknown_loss_is_refused():
    with pytest.raises(ValueError, match="loss"):
        empirical_phase_grid(depth=1, lambdas=[1e-2], sizes=[2], steps=10, loss="hinge")
