"""The cross-entropy minority-collapse phase diagram (nclab.report.phase.ce_*) and its place in the report."""

from __future__ import annotations

import numpy as np
import pytest

from nclab.report import phase
from nclab.theory.ce_imbalanced import solve_grouped_counts


def certified_state(majority, n, m, lam, bias):
    """The state read off the certified M = 1 solver's point (not the closed-form criteria)."""
    counts = list(majority) + [n]
    sizes = [1] * len(majority) + [m]
    r = solve_grouped_counts(counts, sizes, lam, lam, bias, snap=False)
    scale = max(float(np.max(np.abs(r["a"]))), float(np.max(np.abs(r["alpha"]))))
    if scale <= 1e-7:
        return phase.TRIVIAL
    return phase.MINORITY_COLLAPSED if r["merged"][-1] else phase.NOT_COLLAPSED


@pytest.mark.parametrize("bias", [False, True])
def test_m1_states_agree_with_the_certified_solver(bias):
    """Points on both sides of both M = 1 boundaries (merge: n = N^2 lambda^2; zero: ||Gam0||_2 = lambda),
    each 3% away from it, against the state of the certified solver's optimum."""
    majority, m = (200, 100), 2
    checked = set()
    for n in (3.0, 20.0, 60.0):
        N = 300 + m * n
        # merge boundary in lambda at this n: n = N^2 lam^2
        lam_merge = np.sqrt(n) / N
        counts = np.asarray([200, 100, n, n])
        p0 = counts / counts.sum() if bias else np.full(4, 0.25)
        lam_zero = np.linalg.norm((np.sqrt(counts) / N)[None, :] * (p0[:, None] - np.eye(4)), 2)
        for lam in (lam_merge / 1.03, lam_merge * 1.03, lam_zero / 1.03, lam_zero * 1.03):
            s = phase.ce_phase_state(majority, n, m, 1, lam, bias)
            assert s == certified_state(majority, n, m, lam, bias), (n, lam)
            checked.add(s)
    assert checked == {phase.NOT_COLLAPSED, phase.MINORITY_COLLAPSED, phase.TRIVIAL}


def test_deep_row_search_equals_the_brute_force_row():
    """M = 2: the row search (O(log L) searches, assumes the state only grows with lambda) gives the same row
    as one search per point; and the merge switch of tests/test_ce_imbalanced_deep.py (n = 40 merged, 43 apart
    at lambda = 0.02, checked there by full-model descent) is in the diagram's state."""
    lambdas = np.geomspace(3e-3, 1e-1, 7)
    lam, n, states = phase.ce_phase_grid((200, 100), 2, 2, lambdas=lambdas, sizes=[10])
    brute = [phase.ce_phase_state((200, 100), 10, 2, 2, x) for x in lambdas]
    assert states[0].tolist() == brute and brute[0] == phase.NOT_COLLAPSED and brute[-1] == phase.TRIVIAL
    assert phase.ce_phase_state((200, 100), 40, 2, 2, 0.02) == phase.MINORITY_COLLAPSED
    assert phase.ce_phase_state((200, 100), 43, 2, 2, 0.02) == phase.NOT_COLLAPSED


def write_run(folder, loss, widths):
    """A run folder as ``nclab simulate`` starts it (config.json: what the report reads the setting from)."""
    import json

    folder.mkdir()
    config = {"counts": [20, 10, 5, 5], "widths": widths, "lambda_w": [1e-2] * len(widths), "lambda_h": 1e-2,
              "bias": False, "loss": loss, "optimizer": "lbfgs", "steps": 20}
    (folder / "config.json").write_text(json.dumps({"nclab_version": "0.1.0", "kind": "ufm-simulation",
                                                    "config": config}))


def test_report_draws_the_ce_diagram_only_for_ce_runs(tmp_path):
    from nclab.report import page
    from nclab.report.runs import load_run

    write_run(tmp_path / "ce", "ce", [4, 4])
    write_run(tmp_path / "mse", "mse", [4])
    ce_run, mse_run = load_run(tmp_path / "ce"), load_run(tmp_path / "mse")
    assert phase.ce_phase_setup([mse_run]) is None
    setup = phase.ce_phase_setup([mse_run, ce_run])
    assert setup["depths"] == [1, 2] and setup["majority"] == [20, 10] and setup["minority_classes"] == 2
    assert setup["marks"] == [(2, 1e-2, 5, ce_run.name)]
    names = [job[0] for job in page.figure_jobs([mse_run, ce_run], phase_diagram=True)]
    assert "phase" in names and "phase-ce" in names
    assert "phase-ce" not in [job[0] for job in page.figure_jobs([mse_run], phase_diagram=True)]
    fig = phase.ce_phase_figure([1], [20, 10], 2, lambdas=np.geomspace(1e-3, 1e-1, 8), sizes=[1, 3, 10])
    assert len(fig.axes) == 1 and fig.axes[0].get_title() == "M = 1 (exact)"
