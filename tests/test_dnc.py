"""The papers' statements on the deep ReLU UFM (Sukenik, Mondelli, Lampert, NeurIPS 2023 / 2024), checked with
nclab.ufm.dnc's reference configurations and descent from random starts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nclab.theory import make_problem, predict
from nclab.ufm import simulate
from nclab.ufm.dnc import full_objective, references
from nclab.ufm.presets import preset_config

LAM = 5e-3


def _relu_problem(K, M, n=4, loss="mse", bias=False):
    return make_problem(classes=K, per_class=n, depth=M, widths=8, lambda_w=LAM, lambda_h=LAM / n, loss=loss,
                        bias=bias)


@pytest.mark.parametrize("K,M", [(2, 2), (2, 4), (3, 3), (4, 5)])
def test_dnc_reference_is_the_linear_optimum_for_bias_free_mse(K, M):
    # the orthogonal frame is non-negative: the ReLU is inactive there, so f_dnc = the deep linear optimum
    p = _relu_problem(K, M)
    refs = references(p)
    assert math.isclose(refs.f_dnc, predict(p).objective, rel_tol=1e-9)
    # the value is the objective of explicit full parameters (recomputed by the shared ReLU objective)
    assert refs.f_dnc == full_objective(p, *refs.dnc.construct(p.widths, p.counts))
    # DNC: ranks K at every layer, orthogonal frame after the ReLU
    assert refs.dnc.layer_ranks == [K] * M
    for g in refs.dnc.layer_grams[1:]:
        np.testing.assert_allclose(g / g[0, 0], np.eye(K), atol=1e-7)


@pytest.mark.parametrize("M", [3, 4])
def test_k2_descent_from_random_starts_ends_at_dnc(M):
    """K = 2 (2023 paper): the optimum is DNC. Descent from random starts never goes below f_dnc and the best
    start reaches it, with collapsed classes and orthogonal class means after every ReLU."""
    finals = []
    for seed in range(3):
        r = simulate(preset_config("dnc-k2", M, seed=seed, steps=2000))
        finals.append(r.final)
    f_dnc = finals[0]["f_dnc"]
    assert f_dnc < 0.5 and finals[0]["f_lowrank"] > f_dnc  # nontrivial, no low-rank code does better for K = 2
    gaps = [(f["objective"] - f_dnc) / f_dnc for f in finals]
    assert min(gaps) > -1e-9  # never below
    best = finals[int(np.argmin(gaps))]
    assert min(gaps) < 1e-5
    for j in range(2, M + 1):
        assert best[f"nc1_L{j}"] < 1e-6
        assert best[f"nc2_h_L{j}"] < 1e-2
        assert best[f"rank_means_L{j}"] == 2
    assert best["nc3_L2"] < 1e-2


def test_lowrank_beats_dnc_for_several_classes_and_layers():
    """2024 paper: beyond two classes and two layers DNC is not optimal. K = 4, M = 5: the triple code (class-mean
    rank 3 < K in the hidden layers) beats DNC by > 5 %, and descent from a random start goes below f_dnc with
    class-mean rank < K in the middle layers."""
    p = _relu_problem(4, 5)
    refs = references(p)
    assert refs.lowrank_beats_dnc
    assert refs.f_lowrank < (1 - 0.05) * refs.f_dnc
    assert refs.lowrank.layer_ranks[:4] == [3, 3, 3, 3]
    assert refs.f_lowrank == full_objective(p, *refs.lowrank.construct(p.widths, p.counts))
    r = simulate(preset_config("lowrank-beats-dnc", 5))
    f = r.final
    assert f["objective"] < refs.f_dnc and f["gap_dnc"] < -0.03 * refs.f_dnc
    assert min(f[f"rank_means_L{j}"] for j in (2, 3, 4)) < 4


def test_no_lowrank_gain_at_small_depth():
    # M = 3 at this lambda: the triple code costs more than DNC (the low-rank bias grows with depth)
    refs = references(_relu_problem(4, 3))
    assert refs.f_lowrank > refs.f_dnc


def test_references_for_ce_and_bias_are_explicit_configurations():
    for loss, bias in (("ce", False), ("mse", True)):
        p = _relu_problem(3, 4, loss=loss, bias=bias)
        refs = references(p)
        assert np.isfinite(refs.f_dnc) and np.isfinite(refs.f_lowrank)
        for ref in (refs.dnc, refs.lowrank):
            assert ref.objective == full_objective(p, *ref.construct(p.widths, p.counts))
        f0 = math.log(3) if loss == "ce" else 1 / 3  # the zero solution (the bias fits the class frequencies)
        assert refs.f_dnc <= f0 + 1e-12


def test_references_refuse_imbalanced_and_narrow():
    assert "balanced" in references(make_problem(counts=[3, 2], depth=2, widths=4)).reason
    r = references(make_problem(classes=4, per_class=2, depth=2, widths=3))
    assert math.isnan(r.f_dnc) and "width" in r.reason
