"""Mutation survivors of nclab.theory.ce_imbalanced: M = 1 certified solve (objective, certificate fields, snapped
minority collapse, exact threshold), the Prediction adapters (as_ce_solution, as_ce_solution_deep: values,
candidates, notes), the M >= 2 search helpers (ranks, restarts, reduced objective, ETF reference) and the input
checks. Expectations are numpy float64 from the definitions or hand-solved roots (K <= 5, fast)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nclab.theory import ce_imbalanced as cei
from nclab.theory.problem import make_problem


def ce_problem(counts, lam=5e-4, bias=False, M=1, width=None):
    K = len(counts)
    return make_problem(counts, widths=[width or max(K, 4)] * M, lambda_w=lam, lambda_h=lam, bias=bias, loss="ce")


def np_reduced_value(counts, M, gam, Z, b):
    """g(Z, b) = sum_k pi_k CE(Z e_k + b, k) + (M+1)/2 gam sum sigma(Z D^(1/2))^(2/(M+1)), plain numpy."""
    n = np.asarray(counts, float)
    L = Z + (0.0 if b is None else b[:, None])
    ce = np.log(np.exp(L).sum(axis=0)) - np.diag(L)
    s = np.linalg.svd(Z * np.sqrt(n)[None, :], compute_uv=False)
    return float(n @ ce / n.sum() + 0.5 * (M + 1) * gam * np.sum(s ** (2.0 / (M + 1))))


# ---------------------------------------------------------------- M = 1: certified solve
def test_solution_fields_bias_free():
    """groups['a'] rebuilds Z; bias-free solve reports bias_repair 0.0; zero value log K."""
    p = ce_problem([30, 10, 3], 1e-2)
    s = cei.solve_ce_imbalanced(p)
    n, m, idx = cei.class_groups(p.counts)
    a, alpha = s.groups["a"], s.groups["alpha"]
    assert np.allclose(a[np.ix_(idx, idx)] + np.diag(alpha[idx]), s.Z, atol=1e-14)
    assert s.solver["bias_repair"] == 0.0
    assert s.objective_zero == pytest.approx(math.log(3), rel=1e-15)


def test_zero_value_with_bias_is_entropy_of_class_frequencies():
    counts = [30, 10, 3, 3]
    s = cei.solve_ce_imbalanced(ce_problem(counts, 1e-2, bias=True))
    pi = np.asarray(counts, float) / sum(counts)
    assert s.objective_zero == pytest.approx(float(-np.sum(pi * np.log(pi))), rel=1e-12)


@pytest.mark.parametrize("bias", [False, True])
def test_merged_minority_has_exactly_zero_within_group_logits(bias):
    """n = 5 <= N^2 lambda^2 = 11.9: the minority's alpha is snapped to exactly 0 and still certified."""
    p = ce_problem([50, 50, 5, 5, 5], 3e-2, bias=bias)
    s = cei.solve_ce_imbalanced(p)
    n, m, idx = cei.class_groups(p.counts)
    g = int(np.flatnonzero(n == 5)[0])
    assert s.groups["alpha"][g] == 0.0
    assert s.certified and s.lower_bound <= s.objective + 1e-15


def test_count_exactly_at_the_collapse_threshold_raises_no_disagreement_note():
    """counts [24, 4, 4], lambda = 1/16: N^2 lambda^2 = 4 = n exactly (merged, boundary included)."""
    p = ce_problem([24, 4, 4], 1.0 / 16)
    s = cei.solve_ce_imbalanced(p)
    assert s.collapse_count == 4.0
    assert not any("disagrees" in t for t in s.notes)
    assert s.merged == [[1, 2]]


# ---------------------------------------------------------------- M = 1: Prediction adapter
def test_as_ce_solution_values_regularizer_candidates_and_texts():
    counts, lam = [30, 10, 3, 3], 1e-2
    p = ce_problem(counts, lam, bias=True)
    c = cei.as_ce_solution(p)
    sqn = np.sqrt(np.asarray(counts, float))
    sv = np.linalg.svd(c.Z * sqn[None, :], compute_uv=False)
    sv = sv[sv > 1e-12 * sv[0]]
    mu = lam  # sqrt(lam * lam)
    assert c.regularizer == pytest.approx(0.5 * mu * sv.sum(), rel=1e-12)
    assert np.allclose(c.values["HtH"], sv, rtol=1e-12)  # cw = 1 here: pin with unequal lambdas below
    # ETF candidate: phi(z) = log(1 + (K-1) e^-z) + c z, c = mu ||P D^(1/2)||_*; z* solves phi'(z) = 0
    K = len(counts)
    P = np.eye(K) - 1.0 / K
    cc = mu * np.linalg.svd(P * sqn[None, :], compute_uv=False).sum()
    z = c.etf_z
    assert (K - 1) * math.exp(-z) / (1 + (K - 1) * math.exp(-z)) == pytest.approx(cc, rel=1e-10)
    assert c.etf_objective == pytest.approx(math.log1p((K - 1) * math.exp(-z)) + cc * z, rel=1e-12)
    assert c.candidates["simplex ETF"] == {"objective": c.etf_objective, "rank": K - 1, "scale": z}
    best = c.candidates[c.best_structure]
    assert best["objective"] == c.objective and best["scale"] == pytest.approx(sv[0], rel=1e-12)
    assert c.candidates["zero"]["objective"] == c.objective_zero
    assert c.search == {"run": False, "note": "M = 1: convex; certified solver (no search needed)"}
    assert c.uniqueness_note.startswith("the value and the centred logits P(Z e_k + b) are unique")
    assert np.allclose(c.w_norms, np.sqrt(np.diag(c.WWt)), atol=1e-12)
    assert not c.etf_is_global


def test_as_ce_solution_hth_values_use_the_lambda_ratio():
    lam_w, lam_h = 4e-2, 1e-2
    p = make_problem([30, 10, 3], widths=4, lambda_w=lam_w, lambda_h=lam_h, loss="ce")
    c = cei.as_ce_solution(p)
    sv = np.linalg.svd(c.Z * np.sqrt([30.0, 10.0, 3.0])[None, :], compute_uv=False)
    sv = sv[sv > 1e-12 * sv[0]]
    cw = math.sqrt(lam_h / lam_w)
    assert np.allclose(c.values["HtH"], sv / cw, rtol=1e-12)
    assert np.allclose(c.values["WWt"], sv * cw, rtol=1e-12)


def test_balanced_counts_make_the_etf_global():
    c = cei.as_ce_solution(ce_problem([5, 5, 5], 1e-2))
    assert c.etf_is_global


def test_zero_optimum_candidates_have_zero_scale_and_rank():
    c = cei.as_ce_solution(ce_problem([6, 3, 3], 1.0))
    assert c.best_structure == "zero" and c.best_rank == 0
    assert c.candidates["zero"] == {"objective": c.objective_zero, "rank": 0, "scale": 0.0}
    assert c.candidates["simplex ETF"]["rank"] == 0 and c.etf_z == 0.0


def test_exact_minority_threshold_is_the_smaller_root():
    """x = (N_r + m x)^2 lambda^2 with N_r = 40, m = 2, lambda = 1e-2, solved by hand (smaller root)."""
    c = cei.as_ce_solution(ce_problem([30, 10, 3, 3], 1e-2))
    mu2, m, Nr = 1e-4, 2.0, 40.0
    qa, qb, qc = mu2 * m * m, 2 * mu2 * m * Nr - 1, mu2 * Nr * Nr
    root = (-qb - math.sqrt(qb * qb - 4 * qa * qc)) / (2 * qa)
    doc = c.minority_threshold
    assert doc["threshold"] == pytest.approx(root, rel=1e-12)
    assert doc["note"] == ("exact (M = 1): merged iff x <= (N_r + m x)^2 lambda_W lambda_H, N_r the other classes' "
                           "samples")
    assert cei._threshold_text({"threshold": 0.0}) == "the minority rows stay apart down to 1e-6 of the current count"


# ---------------------------------------------------------------- grouped counts and the two-cluster threshold
def test_grouped_counts_accept_two_classes_and_name_the_inputs():
    r = cei.solve_grouped_counts([5.0], [2], 1e-2, 1e-2)
    assert r["rel_gap"] <= 1e-10
    with pytest.raises(ValueError, match="counts and sizes must be equal-length"):
        cei.solve_grouped_counts([5.0], [1], 1e-2, 1e-2)


def test_minority_collapse_threshold_single_majority_class_and_solve_count():
    out = cei.minority_collapse_threshold(100, 1, 2, 1e-3, 1e-3, rtol=0.2)
    assert out["solves"] >= 2
    lo, hi = out["bracket"]
    assert hi - lo <= 0.2 * hi
    with pytest.raises(ValueError, match="k_minor >= 2"):
        cei.minority_collapse_threshold(100, 1, 1, 1e-3, 1e-3)


# ---------------------------------------------------------------- M >= 2 helpers
def test_deep_ranks_and_restarts_beyond_the_small_k_tables():
    assert cei.deep_ranks(40, 39) == [1, 2, 3, 20, 39]
    assert cei.deep_restarts(13) == 3 and cei.deep_restarts(12) == 6


def test_deep_reduced_objective_matches_numpy_definition():
    rng = np.random.default_rng(0)
    counts = [7, 3, 2]
    Z = rng.standard_normal((3, 3))
    b = rng.standard_normal(3)
    p = make_problem(counts, widths=[4, 4], lambda_w=[1e-2, 4e-2], lambda_h=2e-2, bias=True, loss="ce")
    gam = (1e-2 * 4e-2 * 2e-2) ** (1 / 3)
    assert cei.deep_reduced_objective(p, Z, b) == pytest.approx(np_reduced_value(counts, 2, gam, Z, b), rel=1e-12)


def deep_problem(counts, lam):
    return make_problem(counts, widths=[4, 4], lambda_w=lam, lambda_h=lam, loss="ce")


def test_deep_adapter_values_regularizer_and_uncertified_fields():
    """[12, 3, 3], M = 2, lambda = 1e-2: rank-2 best found; t = z^(1/3), HtH = (gam/lambda_H) t^2,
    reg = gam/2 sum t^2."""
    lam = 1e-2
    p = deep_problem([12, 3, 3], lam)
    r = cei.solve_ce_imbalanced_deep(p)
    assert r["seconds"] >= 0.0
    c = cei.as_ce_solution_deep(p, r)
    gam = lam  # (lam * lam * lam)^(1/3)
    z = np.linalg.svd(np.asarray(r["Z"]) * np.sqrt([12.0, 3.0, 3.0])[None, :], compute_uv=False)
    z = z[z > 1e-9 * z[0]]
    t = z ** (1.0 / 3.0)
    assert np.allclose(c.values["HtH"], gam / lam * t**2, rtol=1e-12)
    assert c.regularizer == pytest.approx(0.5 * gam * float(np.sum(t**2)), rel=1e-12)
    assert c.candidates[c.best_structure]["scale"] == pytest.approx(z[0], rel=1e-12)
    assert c.etf_proven is False and c.gram_unique is False and c.certified is False
    assert math.isnan(c.gap) and math.isnan(c.rel_gap) and math.isnan(c.lower_bound)
    assert c.search["note"] == "best found over ranks [1, 2], not certified"
    assert c.notes[0].startswith("M = 2, imbalanced counts: not certified (the penalty is a Schatten 0.667-quasi-norm")
    assert "over ranks [1, 2] (10 random starts per rank" in c.notes[0]
    no_seconds = {k: v for k, v in r.items() if k != "seconds"}
    assert math.isnan(cei.as_ce_solution_deep(p, no_seconds).solver["seconds"])


def test_deep_etf_reference_is_the_exact_one_dimensional_minimum():
    from scipy.optimize import minimize_scalar

    counts, lam = [12, 6, 3, 3], 1e-2
    c = cei.as_ce_solution_deep(deep_problem(counts, lam))
    P = np.eye(4) - 0.25
    res = minimize_scalar(lambda z: np_reduced_value(counts, 2, lam, z * P, None), bounds=(0.0, 60.0),
                          method="bounded", options={"xatol": 1e-12})
    assert c.etf_z == pytest.approx(res.x, abs=1e-4)  # g is flat at its minimum: z to ~sqrt(eps)
    assert c.etf_objective == pytest.approx(res.fun, rel=1e-12)
    # a rank-2 code beats the ETF-like point here (low-rank bias of depth)
    assert c.best_rank == 2 and c.objective < c.etf_objective
    assert c.notes[-1] == (f"a rank-2 code beats the best rank-(K-1) ETF-like point (value {c.etf_objective:.10g}): "
                           "low-rank bias of depth")
    assert c.search["note"] == "best found over ranks 1..3, not certified"


def test_deep_two_classes_rank_one_ties_the_etf():
    """K = 2: the only nonzero code is rank 1 = the ETF direction, so the search's best equals the ETF value."""
    c = cei.as_ce_solution_deep(deep_problem([10, 2], 1e-2))
    assert c.best_rank == 1 and c.objective < math.log(2) - 0.5
    assert c.etf_is_global


def test_deep_merged_minority_is_named_in_the_structure():
    c = cei.as_ce_solution_deep(deep_problem([12, 3, 3], 0.08))
    assert c.best_structure == "best found (rank 1, merged classifier rows)"
    assert c.merged == [[1, 2]]


def test_deep_zero_optimum_is_merged_everywhere():
    """lambda = 1: Z = 0; the ETF reference sits at z = 0 (rank 0); the zero code merges the minority at every
    count, so the threshold is inf (merged up to the largest other count)."""
    p = deep_problem([6, 3, 3], 1.0)
    c = cei.as_ce_solution_deep(p, threshold_rtol=0.1)
    assert c.best_structure == "zero" and c.best_rank == 0
    assert c.candidates["simplex ETF"]["rank"] == 0
    thr = c.minority_threshold
    assert thr["merged_now"] is True and thr["threshold"] == math.inf and thr["solves"] == 2
    assert thr["text"] == "the minority rows merge at every count up to the largest other count"


def test_deep_threshold_halves_then_bisects_in_log_count():
    """[12, 3, 3], M = 2, lambda = 3e-2: rows apart at x0 = 3; halving 3 -> 1.5 -> ... until merged, then geometric
    bisection to hi/lo <= 1 + rtol: solves = 1 + halvings + ceil(log2(ln 2 / ln(1 + rtol)))."""
    rtol = 0.1
    thr = cei.deep_minority_threshold(deep_problem([12, 3, 3], 3e-2), rtol=rtol, restarts=0)
    lo, hi = thr["bracket"]
    assert thr["merged_now"] is False and hi <= lo * (1 + rtol)
    halvings = math.ceil(math.log2(3.0 / thr["threshold"]))
    assert 3.0 / 2**halvings <= lo < hi <= 3.0 / 2 ** (halvings - 1)
    assert thr["solves"] == 1 + halvings + math.ceil(math.log2(math.log(2) / math.log(1 + rtol)))
    text = cei._threshold_text(thr)
    assert text == f"the minority rows merge iff their count is <= {thr['threshold']:.6g} (other counts fixed)"


def test_deep_threshold_zero_when_rows_stay_apart():
    thr = cei.deep_minority_threshold(deep_problem([12, 3, 3], 1e-4), rtol=0.1, restarts=0)
    assert thr["threshold"] == 0.0 and thr["bracket"][0] == 0.0 and thr["bracket"][1] < 3e-6 * 2


def test_group_norms_equal_the_dense_gram_diagonals():
    """The K > DENSE_MAX_K norm path (_group_norms) against the dense Grams of the same certified point."""
    lam_w, lam_h = 4e-2, 1e-2
    p = make_problem([30, 10, 10, 3, 3, 3], widths=6, lambda_w=lam_w, lambda_h=lam_h, loss="ce")
    s = cei.solve_ce_imbalanced(p)
    n, m, idx = cei.class_groups(p.counts)
    prob = cei._Grouped(n, m, math.sqrt(lam_w * lam_h), False)
    wn, hn = cei._group_norms(prob, s.groups["a"], s.groups["alpha"], idx, lam_w, lam_h)
    assert np.allclose(wn, np.sqrt(np.diag(s.WWt)), rtol=1e-8)
    assert np.allclose(hn, np.sqrt(np.diag(s.HtH)), rtol=1e-8)


@pytest.mark.parametrize("counts,lam", [([7, 6, 5, 4, 3, 2, 1], 3e-2), ([30, 10, 3, 3], 1e-2),
                                        ([9, 9, 9, 4, 4, 2], 2e-2)])
def test_bias_repair_is_the_shortfall_of_the_mean_prediction(counts, lam):
    """With a bias the dual point needs the mean predicted class distribution q = sum_h pi_h softmax(Z e_h + b) to
    match pi; the reported repair is s = max(0, 1 - min_k pi_k / q_k) at the reported point (numpy softmax)."""
    p = make_problem(counts, widths=8, lambda_w=lam, lambda_h=lam, bias=True, loss="ce")
    s = cei.solve_ce_imbalanced(p)
    L = s.Z + s.bias[:, None]
    P = np.exp(L - L.max(axis=0)) / np.exp(L - L.max(axis=0)).sum(axis=0)
    pi = np.asarray(counts, float) / sum(counts)
    q = P @ pi
    expected = max(0.0, 1.0 - float(np.min(pi / q)))
    assert expected > 1e-14  # the repair is active here
    assert s.solver["bias_repair"] == pytest.approx(expected, rel=1e-2)


def test_reported_newton_steps_count_the_newton_directions(monkeypatch):
    """solver['newton'] is the number of Newton-CG directions computed (each iteration computes one)."""
    calls = []
    real = cei._newton_dir
    monkeypatch.setattr(cei, "_newton_dir", lambda *a, **k: calls.append(1) or real(*a, **k))
    for counts in ([30, 10, 3, 3], [200, 100, 50, 50]):
        calls.clear()
        s = cei.solve_ce_imbalanced(make_problem(counts, widths=4, lambda_w=1e-2, lambda_h=1e-2, bias=True, loss="ce"))
        assert s.certified and s.solver["newton"] == len(calls)


def test_large_k_rank_counts_small_between_group_logits():
    """K = 2049 > DENSE_MAX_K (2000 classes of 3, 49 of 1), lambda = 1.653e-4: N^2 lambda^2 = 0.9998 < 1, so nothing
    collapses and the rank is K - 1 (1999 + 48 within-group directions + 1 between the groups), although the
    between-group logits are small (singular value of B below 1) this close to the minority collapse."""
    counts = [3] * 2000 + [1] * 49
    lam = 1.653e-4
    assert sum(counts) ** 2 * lam * lam < 1
    s = cei.solve_ce_imbalanced(make_problem(counts, widths=2049, lambda_w=lam, lambda_h=lam, loss="ce"))
    assert s.Z is None and s.certified and s.merged == []
    assert s.rank == 2048


def test_rounding_level_bias_repair_keeps_the_certificate_finite():
    """Hong & Ling's sweep point k_A = 3, n_A = 500, n_B = 100, l = 0.005 with a bias: the repair s is at rounding
    level and its clipped numerator sums to 0; the certificate must stay finite (merged: 100 <= 2200^2 l^2 = 121)."""
    r = cei.solve_grouped_counts([500, 100], [3, 7], 0.005, 0.005, bias=True)
    assert math.isfinite(r["dual"]) and r["rel_gap"] <= 1e-10
    assert r["merged"] == [False, True]  # 500 > 121: the majority rows stay apart


def test_overshooting_newton_directions_are_backtracked(monkeypatch):
    """Newton directions 4x too long (forced): the backtracking line search (lower gap or lower objective) still
    reaches the certified optimum of the unpatched solve."""
    p = make_problem([30, 10, 3, 3], widths=4, lambda_w=1e-2, lambda_h=1e-2, bias=True, loss="ce")
    ref = cei.solve_ce_imbalanced(p)
    real = cei._newton_dir
    monkeypatch.setattr(cei, "_newton_dir", lambda *a, **k: 4.0 * real(*a, **k))
    s = cei.solve_ce_imbalanced(p)
    assert s.certified and s.objective == pytest.approx(ref.objective, rel=1e-9)


@pytest.mark.parametrize("bias", [False, True])
def test_exact_zero_gap_certifies_at_zero_tolerance(bias):
    """Balanced [4, 4, 4, 4], lambda = 1: Z = 0 is optimal and its dual is the entropy of the uniform prediction,
    log 4 = the primal exactly, so certified means rel_gap <= tol holds even for tol = 0."""
    s = cei.solve_ce_imbalanced(ce_problem([4, 4, 4, 4], 1.0, bias=bias), tol=0.0)
    assert s.gap == 0.0 and s.objective == pytest.approx(math.log(4), rel=1e-15)
    assert s.certified


def test_minority_collapse_threshold_is_inf_when_the_closed_form_has_no_root():
    """n_A = 10, k_A = 1, k_B = 2, lambda = 0.15: lambda^2 (10 + 20 rho)^2 >= 10 rho for every rho (discriminant
    1 - 81 < 0), so the minority rows merge at every ratio; the closed form says inf and the bisection must too."""
    assert cei.collapse_ratio_closed_form(10, 1, 2, 0.15, 0.15) == math.inf
    assert cei.minority_collapse_threshold(10, 1, 2, 0.15, 0.15, rtol=0.3)["ratio"] == math.inf
