"""nclab.theory.ce.solve_ce behaviours pinned by mutation testing (issue 15): argument messages, what the
report says about the search (ranks, restarts, notes, uniqueness), candidate ranks, the regularizer, the
centred bias of a search point, the per-rank best values, the active classes, and the factored CE value at
large logits.

Expectations are hand-derived (ETF in closed form for M = 1, 1-D minimizations written here in numpy/scipy),
definitions from the docstrings, or literal messages, never the API under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

from nclab.theory.ce import _Factored, _structure, etf_threshold, solve_ce
from nclab.theory.problem import make_problem

NO_PROOF = ("M >= 2: no proof of global optimality; objective is the best value found "
            "(an exact feasible value, hence an upper bound)")
NOT_RUN = "not run: search=False; the best structured candidate is reported"


def table_problem(K, M, gamma, bias=False):
    """n = 1 and every lambda = gamma, so gamma = (gamma^M * 1 * gamma)^(1/(M+1)) exactly as given."""
    return make_problem([1] * K, widths=[K] * M, lambda_w=gamma, lambda_h=gamma, bias=bias, loss="ce")


# ---------------------------------------------------------------------------------------------
# argument messages
# ---------------------------------------------------------------------------------------------
def test_threshold_names_the_number_of_classes_in_its_error():
    with pytest.raises(ValueError, match=r"^the number of classes K must be an integer >= 2, got 1$"):
        etf_threshold(1, 2)


def test_imbalanced_counts_are_refused_with_the_reason():
    pr = make_problem([1, 2], widths=[2], loss="ce")
    msg = ("CE with unequal class counts is not supported: the reduction to the K x K problem "
           "(theory.md sec. 4) needs equal n_k, and no reduction is known for imbalanced CE")
    with pytest.raises(ValueError, match=f"^{msg}$".replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        solve_ce(pr)


def test_search_beyond_the_largest_K_is_refused_naming_the_structured_fallback():
    pr = make_problem(classes=129, per_class=1, widths=[4], loss="ce")
    with pytest.raises(ValueError) as info:
        solve_ce(pr, search=True)
    assert str(info.value) == (
        "the CE low-rank search handles K <= 128 classes (it runs L-BFGS on dense K x K factors: about a minute "
        "at K = 96 on 2 cores, growing like K^3); K = 129 is beyond it. Without the search the structured "
        "candidates (ETF, cross-polytope, polygon, rank-1) are compared in O(K)"
    )


def test_seed_accepts_the_whole_int64_range_and_refuses_beyond():
    pr = table_problem(3, 1, 0.01)
    assert solve_ce(pr, seed=2**62, search=False).search["seed"] == 2**62
    with pytest.raises(ValueError, match=r"^seed must be at most 9,223,372,036,854,775,807, got 9223372036854775808$"):
        solve_ce(pr, seed=2**63, search=False)


# ---------------------------------------------------------------------------------------------
# what the report says about the search
# ---------------------------------------------------------------------------------------------
def test_default_restarts_are_two_between_11_and_32_classes_and_reported():
    s = solve_ce(table_problem(12, 1, 0.01), search=False)
    assert s.search["restarts"] == 2
    assert s.search["note"] == NOT_RUN and s.search["run"] is False


def test_skipped_search_is_noted_for_depth_two_with_the_no_proof_caveat():
    s = solve_ce(table_problem(3, 2, 0.01), search=False)
    assert s.search["note"] == NOT_RUN
    assert f"low-rank search {NOT_RUN}" in s.notes
    assert NO_PROOF in s.notes


def test_search_covers_ranks_one_to_K_minus_one_only():
    # widths 4 > K allow R = 3, but a rank-K Z can be centred to rank K - 1 at no cost: ranks 1..K-1
    s = solve_ce(make_problem([1] * 3, widths=[4], lambda_w=0.01, lambda_h=0.01, loss="ce"), restarts=1)
    assert s.search["ranks"] == [1, 2] and set(s.search["best_per_rank"]) == {1, 2}


def test_best_per_rank_is_the_minimum_over_the_starts():
    # K = 6, M = 2, gamma = 1e-3, no random starts: the rank-3 starts are the cross-polytope (rank 3) and the
    # hexagon (rank 2, worse); the rank-3 best must be the cross-polytope's value (1-D problem solved here:
    # logits sigma/2, -sigma/2, 0 x4; penalty (M+1)/2 gamma (K/2) sigma^(2/3))
    K, M, gamma = 6, 2, 1e-3

    def cross(s):
        return math.log1p(math.exp(-s) + (K - 2) * math.exp(-s / 2)) + 1.5 * gamma * (K / 2) * s ** (2 / 3)

    ref = minimize_scalar(cross, bounds=(1.0, 60.0), method="bounded", options={"xatol": 1e-10}).fun
    s = solve_ce(table_problem(K, M, gamma), restarts=0)
    assert s.search["best_per_rank"][3] <= ref * (1 + 1e-7)


# ---------------------------------------------------------------------------------------------
# candidates, uniqueness notes, regularizer
# ---------------------------------------------------------------------------------------------
def test_etf_candidate_has_rank_K_minus_one_and_the_closed_form_regularizer():
    # K = 3, M = 1, n = 2: gamma = sqrt(2e-4) < 1/K; z = log(1/gamma - (K-1)); Z = z P has K - 1 singular values
    # z, balanced factors s = sqrt(z): lambda_j/2 ||W_j||^2 = gamma/2 (K - 1) z
    pr = make_problem([2, 2, 2], widths=[4], lambda_w=0.01, lambda_h=0.01, loss="ce")
    s = solve_ce(pr, search=False)
    gamma = math.sqrt(0.01 * 2 * 0.01)
    z = math.log(1 / gamma - 2)
    etf = s.candidates["simplex ETF"]
    assert etf["rank"] == 2 and etf["scale"] == pytest.approx(z, rel=1e-12)
    assert etf["objective"] == pytest.approx(math.log1p(2 * math.exp(-z)) + gamma * 2 * z, rel=1e-12)
    assert s.regularizer == pytest.approx(0.5 * gamma * 2 * z, rel=1e-12)


def test_trivial_families_and_zero_point_notes():
    # K = 4, M = 1, gamma = 1/2 >= 1/K: every family's slope at scale 0 is -1/2 + gamma m > 0, all trivial
    s = solve_ce(table_problem(4, 1, 0.5), search=False)
    trivial = {"objective": math.log(4), "rank": 0, "scale": 0.0}
    assert s.candidates["cross-polytope"] == trivial and s.candidates["regular polygon"] == trivial
    assert s.best_structure == "zero"
    assert s.uniqueness_note == "best known point is the permutation-invariant zero; no other candidate ties"
    s2 = solve_ce(table_problem(3, 2, 1.0), search=False)
    assert s2.best_structure == "zero"
    assert s2.uniqueness_note == ("best known point is the permutation-invariant zero; no other candidate ties"
                                  " (for M >= 2 not a proof of uniqueness)")


# ---------------------------------------------------------------------------------------------
# search points: centred bias; structure: active classes; factored value at large logits
# ---------------------------------------------------------------------------------------------
def test_search_point_with_bias_reports_a_centred_bias():
    # theory.md sec. 4 scan: K = 4, M = 2, bias, gamma = 0.01 is won by a rank-2 search code; b is defined up to
    # multiples of 1 and reported centred
    s = solve_ce(table_problem(4, 2, 0.01, bias=True))
    assert s.best_structure == "rank-2 code"
    assert abs(float(np.sum(s.bias))) <= 1e-12 * max(1.0, float(np.abs(s.bias).max()))


def test_a_class_with_only_a_classifier_row_or_only_a_mean_is_active():
    # Z = e_0 e_1^T: class 0 has w_0 != 0 and h_0 = 0, class 1 has h_1 != 0 and w_1 = 0
    pr = make_problem([1, 1], widths=[2], lambda_w=0.01, lambda_h=0.01, loss="ce")
    st = _structure(pr, 0.01, np.array([[0.0, 1.0], [0.0, 0.0]]))
    assert st["active"] == [True, True] and st["rank"] == 1


def test_factored_value_is_finite_and_exact_at_large_logits():
    # Z = F1 F0 = [[1000, -1000], [500, -500]]: class 1's logits are (-1000, -500); reference: logsumexp
    gamma = 1e-3
    fac = _Factored(2, 1, 1, gamma, False)
    F0, F1 = np.array([[1000.0, -1000.0]]), np.array([[1.0], [0.5]])
    L = F1 @ F0
    ref = np.mean([logsumexp(L[:, k]) - L[k, k] for k in range(2)]) + 0.5 * gamma * (np.sum(F0**2) + np.sum(F1**2))
    val, grad = fac.fg(fac.pack([F0, F1], None))
    assert val == pytest.approx(ref, rel=1e-14) and np.isfinite(grad).all()
