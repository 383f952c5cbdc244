"""Imbalanced cross-entropy, M = 1 (nclab.theory.ce_imbalanced): certificate, full-model descent, collapse."""

from __future__ import annotations

import math

import numpy as np
import pytest
from descent import perturb

import nclab
from nclab.theory.ce_imbalanced import (
    class_groups,
    collapse_ratio_closed_form,
    construct_ce_imbalanced,
    minority_collapse_threshold,
    solve_ce_imbalanced,
    solve_grouped_counts,
)
from nclab.theory.objective import labels_from_counts, ufm_objective
from nclab.theory.problem import make_problem


def ce_problem(counts, lam=5e-4, lam_h=None, bias=False, width=None):
    K = len(counts)
    return make_problem(counts, widths=width or max(K, 4), lambda_w=lam, lambda_h=lam if lam_h is None else lam_h,
                        bias=bias, loss="ce")


SETTINGS = [
    ([200, 100, 50, 50], 5e-4, False),
    ([200, 100, 50, 50], 5e-4, True),
    ([30, 10, 3], 1e-2, False),
    ([30, 10, 3], 1e-2, True),
    ([50, 50, 5, 5, 5], 3e-2, False),  # minority rows merge (n = 5 <= N^2 lambda^2 = 11.9)
    ([50, 50, 5, 5, 5], 3e-2, True),
    ([50, 50, 5, 5, 5], 1e-2, False),  # not merged (5 > 1.32)
    ([7, 6, 5, 4, 3, 2, 1], 3e-2, True),
]


@pytest.mark.parametrize("counts,lam,bias", SETTINGS)
def test_certificate_and_construct(counts, lam, bias):
    p = ce_problem(counts, lam, bias=bias)
    s = solve_ce_imbalanced(p)
    assert s.certified and s.rel_gap <= 1e-10
    assert s.lower_bound <= s.objective + 1e-15
    assert s.objective <= s.objective_zero + 1e-12
    # centred logits, symmetric Grams, Z = W Hbar
    assert np.allclose(s.Z.sum(axis=0), 0, atol=1e-10 * np.abs(s.Z).max())
    assert np.allclose(s.WWt, s.WWt.T) and np.allclose(s.HtH, s.HtH.T)
    # the explicit point attains the objective under the shared objective (float64)
    weights, H, b = construct_ce_imbalanced(p, s)
    f = ufm_objective(weights, H, labels_from_counts(p.counts), p.lambda_w, p.lambda_h, b, "ce")
    assert f == pytest.approx(s.objective, rel=1e-12)
    W = weights[0]
    Hbar = H[:, np.cumsum([0] + list(p.counts[:-1]))]
    assert np.allclose(W @ W.T, s.WWt, atol=1e-10 * np.abs(s.WWt).max())
    assert np.allclose(Hbar.T @ Hbar, s.HtH, atol=1e-10 * np.abs(s.HtH).max())
    assert np.allclose(W @ Hbar, s.Z, atol=1e-10 * np.abs(s.Z).max())
    assert np.allclose(s.w_norms, np.linalg.norm(W, axis=1))


@pytest.mark.parametrize("K,n,lam,bias", [(4, 10, 5e-4, False), (4, 10, 5e-4, True), (7, 3, 1e-2, False),
                                          (5, 2, 0.2, False), (3, 20, 1e-3, True)])
def test_balanced_equals_nclab_etf(K, n, lam, bias):
    p = ce_problem([n] * K, lam, bias=bias)
    s = solve_ce_imbalanced(p)
    # search=False: at M = 1 the balanced answer is the proven ETF (or zero), no search needed
    ref = nclab.predict([n] * K, depth=1, widths=max(K, 4), lambda_w=lam, lambda_h=lam, bias=bias, loss="ce",
                        search=False)
    assert s.certified
    assert s.objective == pytest.approx(ref.objective, rel=1e-11)
    assert np.allclose(s.Z, ref.WH, atol=1e-7 * max(np.abs(ref.WH).max(), 1e-3))


@pytest.mark.parametrize("counts,lam,bias", [([6, 3, 2, 2], 1e-2, False), ([6, 3, 2, 2], 1e-2, True),
                                             ([8, 2, 2, 2], 4e-2, False), ([5, 4, 1], 2e-2, True)])
def test_full_model_descent_never_below(counts, lam, bias):
    """Independent check: L-BFGS on the full (W, H, b) model in float64 from random starts and from the
    constructed point plus noise never goes below the certified value, and reaches it."""
    p = ce_problem(counts, lam, bias=bias)
    s = solve_ce_imbalanced(p)
    from test_ce_imbalanced_deep import full_descent  # numpy, analytic gradient: ~10x faster than autograd

    vals = [full_descent(p, seed=seed, scale=0.5, maxiter=5000) for seed in range(3)]
    vals.append(full_descent(p, perturb(construct_ce_imbalanced(p, s), 1e-2, seed=1), maxiter=5000))
    f = s.objective
    assert min(vals) >= f - 1e-10 * abs(f)
    assert min(vals) <= f + 1e-7 * abs(f)


def test_minority_collapse_exact_threshold():
    """Classes of equal count n merge iff n <= N^2 lambda_W lambda_H (with or without bias)."""
    lam = 1e-2
    for n_min, bias in [(5, False), (5, True), (30, False), (30, True)]:
        counts = [100, 100] + [n_min] * 3
        p = ce_problem(counts, lam, bias=bias)
        s = solve_ce_imbalanced(p)
        expect = n_min <= p.N ** 2 * lam * lam
        assert s.collapse_count == pytest.approx(p.N ** 2 * lam * lam)
        assert ([2, 3, 4] in s.merged) == expect, (n_min, bias, s.merged)
        assert not s.notes
        if expect:  # merged rows and merged class means
            assert np.ptp(s.WWt[2:, 2:]) <= 1e-6 * s.WWt.max()
            assert np.ptp(s.HtH[2:, 2:]) <= 1e-6 * s.HtH.max()
            assert s.rank == 2
        else:
            assert s.rank == 4


@pytest.mark.parametrize("bias", [False, True])
def test_threshold_bisection_matches_closed_form(bias):
    r = minority_collapse_threshold(100, 2, 3, 1.5e-2, 1e-2, bias=bias)
    assert r["ratio"] == pytest.approx(r["ratio_closed_form"], rel=1e-4)
    rho = r["ratio_closed_form"]
    N = 100 * (2 + 3 * rho)
    assert rho * 100 == pytest.approx(N * N * 1.5e-2 * 1e-2, rel=1e-12)
    # both sides of the threshold, directly
    below = solve_grouped_counts([100, 0.98 * rho * 100], [2, 3], 1.5e-2, 1e-2, bias)
    above = solve_grouped_counts([100, 1.02 * rho * 100], [2, 3], 1.5e-2, 1e-2, bias)
    assert below["merged"][1] and not above["merged"][1]
    assert below["rel_gap"] <= 1e-10 and above["rel_gap"] <= 1e-10


def test_hong_ling_statements():
    """Checked statements of Hong & Ling (arXiv 2309.09725), M = 1: NC1 (by the reduction: construct() gives
    class-constant features), class means are not an ETF under imbalance (angles depend on the counts),
    and a sharp minority-collapse threshold in the two-cluster setting (above)."""
    p = ce_problem([100, 100, 20, 20], 5e-3)
    s = solve_ce_imbalanced(p)
    cos = s.HtH / np.outer(s.h_norms, s.h_norms)
    assert abs(cos[0, 1] - cos[2, 3]) > 1e-3  # majority pair and minority pair at different angles
    assert s.h_norms[0] != pytest.approx(s.h_norms[2], rel=1e-3)
    assert s.w_norms[0] > s.w_norms[2]  # majority classifier rows are longer


def test_distinct_counts_K100_certified():
    rng = np.random.default_rng(0)
    counts = [int(c) for c in rng.integers(5, 500, size=100)]
    for bias in (False, True):
        s = solve_ce_imbalanced(ce_problem(counts, 5e-4, bias=bias, width=100))
        assert s.certified and s.rel_gap <= 1e-10
        assert s.solver["seconds"] < 30  # about 0.2-0.8 s on an idle core; loose for a loaded CI machine


def test_grouping_and_large_K():
    n, m, idx = class_groups([5, 7, 5, 2])
    assert list(n) == [7, 5, 2] and list(m) == [1, 2, 1] and list(n[idx]) == [5, 7, 5, 2]
    counts = [50] * 1500 + [5] * 1500
    p = make_problem(counts, widths=3000, lambda_w=3e-5, lambda_h=3e-5, loss="ce")
    s = solve_ce_imbalanced(p)
    assert s.certified and s.Z is None and s.WWt is None
    assert s.merged and len(s.merged[0]) == 1500  # 5 <= N^2 lambda^2 = 6.1 < 50: minority merged
    assert s.w_norms.shape == (3000,)


def test_refusals():
    with pytest.raises(ValueError, match="M = 1"):
        solve_ce_imbalanced(make_problem([3, 2], depth=2, widths=4, loss="ce"))
    with pytest.raises(ValueError, match="rank-constrained"):
        solve_ce_imbalanced(make_problem([3, 2, 1, 1], widths=2, loss="ce"))
    with pytest.raises(ValueError, match="loss 'ce'"):
        solve_ce_imbalanced(make_problem([3, 2], widths=4))
    with pytest.raises(TypeError):
        solve_ce_imbalanced([3, 2])
    with pytest.raises(ValueError):
        minority_collapse_threshold(100, 2, 1, 1e-2, 1e-2)
    assert collapse_ratio_closed_form(100, 2, 3, 1.0, 1.0) == math.inf


@pytest.mark.parametrize("bias", [False, True])
def test_prediction_adapter(bias):
    """as_ce_solution feeds nclab's Prediction unchanged: Grams, structure, per-class table, JSON, construct."""
    import json

    from nclab.theory.ce_imbalanced import as_ce_solution
    from nclab.theory.predict import Prediction

    p = ce_problem([50, 50, 5, 5, 5], 3e-2, bias=bias, width=6)
    c = as_ce_solution(p)
    pred = Prediction(p, ce=c)
    assert pred.objective == c.objective and c.certified
    # bias-free rank K - 1 - 2 = 2; with a bias the two majority classes alone span Z (rank 1), the merged
    # minority cluster is separated by the bias (like the balanced rank-1 code of theory.md sec. 4)
    assert pred.geometry == f"certified optimum (rank {1 if bias else 2}, merged classifier rows)"
    st = pred.structure
    assert np.allclose(pred.WWt, st["basis"].dense(st["values"]["WWt"], "u", "u"))
    assert np.allclose(pred.HtH, st["basis"].dense(st["values"]["HtH"], "v", "v"))
    assert np.allclose(pred.WH, st["basis"].dense(st["values"]["WH"], "u", "v"))
    doc = pred.to_dict()
    json.dumps(doc)
    assert doc["certified"] and doc["rel_gap"] <= 1e-10 and doc["merged"] == [[2, 3, 4]]
    weights, H, b = construct_ce_imbalanced(p, c)
    f = ufm_objective(weights, H, labels_from_counts(p.counts), p.lambda_w, p.lambda_h, b, "ce")
    assert f == pytest.approx(pred.objective, rel=1e-12)
    Hbar = H[:, [0, 50, 100, 105, 110]]
    assert np.allclose(weights[0], c.layers[0]["nc3_scale"] @ Hbar.T)  # NC3 form W = C Hbar^T
    assert c.etf_objective >= c.objective  # the scaled ETF is feasible, hence never better


DEEP = [([6, 3, 2, 2], 2, 1e-2, False), ([6, 3, 2, 2], 3, 1e-2, True), ([8, 4, 2, 2, 1], 2, 5e-3, False),
        ([10, 10, 3, 3], 2, 2e-2, True)]


@pytest.mark.parametrize("counts,M,lam,bias", DEEP)
def test_deep_best_found_never_beaten(counts, M, lam, bias):
    """M >= 2 (not certified): the best-found value is attained by construct(), and long float64 descent on
    the full model (random starts and construct() plus noise) never goes below it."""
    from nclab.theory.ce_imbalanced import construct_ce_imbalanced_deep, solve_ce_imbalanced_deep

    K = len(counts)
    p = make_problem(counts, depth=M, widths=[max(K, 4)] * M, lambda_w=lam, lambda_h=lam, bias=bias, loss="ce")
    r = solve_ce_imbalanced_deep(p)
    assert r["certified"] is False and r["objective"] <= r["objective_zero"]
    weights, H, b = construct_ce_imbalanced_deep(p, r)
    f = ufm_objective(weights, H, labels_from_counts(p.counts), p.lambda_w, p.lambda_h, b, "ce")
    assert f == pytest.approx(r["objective"], rel=1e-12)
    # the numpy full-model descent of test_ce_imbalanced_deep (analytic gradient: ~10x faster than autograd)
    from test_ce_imbalanced_deep import full_descent

    vals = [full_descent(p, seed=s, scale=0.5, maxiter=3000) for s in range(3)]
    vals.append(full_descent(p, perturb((weights, H, b), 1e-2, seed=2), maxiter=3000))
    assert min(vals) >= r["objective"] - 1e-10 * abs(r["objective"])


def test_deep_low_rank_winner_and_balanced_agreement():
    """Low-rank winners: imbalanced [6, 3, 2, 2] at M = 2 is rank 2 < K - 1; balanced settings agree with
    nclab's balanced CE search (cross-polytope at K = 4, M = 3)."""
    from nclab.theory.ce_imbalanced import solve_ce_imbalanced_deep

    p = make_problem([6, 3, 2, 2], depth=2, widths=4, lambda_w=1e-2, lambda_h=1e-2, loss="ce")
    assert solve_ce_imbalanced_deep(p)["rank"] == 2
    for counts, M, lam in [([4] * 4, 3, 1e-2), ([5] * 6, 2, 3e-2)]:
        p = make_problem(counts, depth=M, widths=max(len(counts), 4), lambda_w=lam, lambda_h=lam, loss="ce")
        r = solve_ce_imbalanced_deep(p)
        ref = nclab.predict(p)
        assert r["objective"] == pytest.approx(ref.objective, rel=1e-10)
        assert r["rank"] == ref.ce["best_rank"]


def test_too_many_distinct_counts_refused():
    p = make_problem(list(range(1, 602)), widths=601, loss="ce")
    with pytest.raises(ValueError, match="distinct class counts"):
        solve_ce_imbalanced(p)
