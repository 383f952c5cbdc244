"""nclab.theory.predict / nclab.theory.mse beyond the other suites (mutation testing, scripts/mutation.py theory):
objective_zero and the layer regularizers against the constructed point, the messages of the float64 and memory
refusals, the CE branches of Prediction (merged rows, minority threshold, layer values, missing Grams), the keys
and values of to_dict, the thresholds table and the geometry name of an imbalanced setting, all from hand-derived
numbers (theory.md sec. 2-3) or the constructed matrices."""

import math
import re
import warnings

import numpy as np
import pytest

import nclab
from nclab.theory import labels_from_counts, make_problem, predict, ufm_objective
from nclab.theory.mse import geometry_name, solve_mse, thresholds
from nclab.theory.predict import Prediction


# ------------------------------------------------------------------------------------------ MSE values
@pytest.mark.parametrize("bias", [False, True])
def test_objective_zero_is_the_objective_at_zero_weights_and_features(bias):
    """f(W = 0, H = 0, b = n/N): 1/2 bias-free, tr(D - n n^T/N)/(2N) with the optimal bias."""
    counts = [5, 3, 2]
    pred = predict(counts, depth=2, widths=4, lambda_w=1e-2, lambda_h=1e-2, bias=bias)
    N = sum(counts)
    weights = [np.zeros((4, 4)), np.zeros((3, 4))]
    b = np.asarray(counts, float) / N if bias else None
    at_zero = ufm_objective(weights, np.zeros((4, N)), labels_from_counts(counts), 1e-2, 1e-2, bias=b)
    hand = 0.5 if not bias else sum(n * (1 - n / N) for n in counts) / (2 * N)
    assert at_zero == pytest.approx(hand, rel=1e-12)
    assert pred.objective_zero == pytest.approx(hand, rel=1e-12)


def test_layer_regularizer_is_half_decay_times_squared_frobenius_norm_with_repeated_eigenvalues():
    """regularizer of layer j = lambda_j/2 ||W_j||_F^2 of the constructed W_j; equal counts with a bias give a
    block eigenvalue of multiplicity 2, which must count twice."""
    counts, lam = [6, 2, 2, 2], [1e-3, 4e-3]
    pred = predict(counts, depth=2, widths=6, lambda_w=lam, lambda_h=2e-3, bias=True)
    assert pred.structure["basis"].mult.max() >= 2
    weights, H, b = pred.construct()
    for j, W in enumerate(weights):
        assert pred.layers[j]["regularizer"] == pytest.approx(0.5 * lam[j] * float(np.sum(W * W)), rel=1e-9)
    # and the point attains the predicted objective
    assert ufm_objective(weights, H, labels_from_counts(counts), lam, 2e-3, bias=b) == pytest.approx(
        pred.objective, rel=1e-9)


def test_solution_arrays_are_float64():
    sol = solve_mse(make_problem([3, 2, 2], widths=[4], lambda_w=1e-2, lambda_h=1e-2))
    assert sol.mu.dtype == np.float64 and sol.mu.tolist() == [3.0, 2.0, 2.0]
    modes = predict([3, 2, 2], lambda_w=1e-2, lambda_h=1e-2).to_dict()["modes"]
    assert all(type(v) is float for v in modes["mu"])


def test_far_beyond_the_threshold_solves_without_overflow_warnings():
    """a = N kappa / mu ~ e^1380 does not fit float64: a = inf, every mode zero, f* = f_0 = 1/2, and no warning."""
    problem = make_problem([3, 2], widths=[4], lambda_w=1e300, lambda_h=1e300)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sol = solve_mse(problem)
    assert np.all(np.isinf(sol.a)) and not sol.active.any()
    assert sol.objective == sol.objective_zero == 0.5


# ------------------------------------------------------------------------------------------ refusals
def test_overflowing_structure_names_the_quantity_and_its_size():
    # lambda_1 tiny, lambda_2,3 huge: sigma_1^2 ~ e^616, so the class means entering layer 2 overflow
    with pytest.raises(ValueError, match=r"^the optimal per-layer class-mean Grams exceed float64 \(~1e\d+\) for "
                                         r"lambda_w = \[5e-324, 1e\+200, 1e\+200\], lambda_H = 1e-300, M = 3"):
        predict([3, 2], widths=4, lambda_w=[5e-324, 1e200, 1e200], lambda_h=1e-300)
    # lambda_1 huge: sigma_1^2 ~ e^-920 and W_3 W_2 ~ e^920 while W_3 W_2 W_1 fits
    with pytest.raises(ValueError, match=r"^the optimal partial products W_M\.\.\.W_j exceed float64 \(~1e\d+\)"):
        predict([3, 2], widths=4, lambda_w=[1e300, 1e-300, 1e-300], lambda_h=1e-100)


def test_too_large_weights_message_lists_distinct_decays():
    with pytest.raises(ValueError, match=re.escape("(lambda_w = [1e+200, 4.94066e-324, 4.94066e-324], lambda_H = "
                                                   "1e+300, M = 3); use larger weight decays")):
        solve_mse(make_problem([3, 2], widths=[4] * 3, lambda_w=[1e200, 5e-324, 5e-324], lambda_h=1e300))


def test_dense_refusals_name_the_matrices_and_the_way_out():
    big = predict(classes=100_000, per_class=1)
    with pytest.raises(ValueError, match=r"^the dense prediction \(Grams WWt, HtH, WH and 3 per layer: 6 matrices "
                                         r"of 100,000 x 100,000\) would need .*; the structured prediction "
                                         r"\(dense=False, the default above K = 32\) needs no K x K matrix$"):
        big.to_dict(dense=True)
    sol = solve_mse(make_problem(classes=200_000, per_class=1, widths=[4]))
    with pytest.raises(ValueError, match=r"^the K x K eigenvector matrix \(1 dense 200,000 x 200,000 float64\)"):
        sol.eigvecs()


def test_prediction_needs_exactly_one_solution():
    problem = make_problem([2, 1], widths=[2])
    with pytest.raises(TypeError, match=re.escape("give exactly one of mse= (an MSESolution) or ce= (a CESolution); "
                                                  "see nclab.predict")):
        Prediction(problem)


# ------------------------------------------------------------------------------------------ CE branches
def test_certified_ce_reports_merged_minority_rows_and_the_exact_threshold():
    """counts [30, 2, 2], lambda = 0.05: N^2 lambda^2 = 2.89 >= 2, so classes 1 and 2 merge; the threshold is the
    smaller root of x = (30 + 2x)^2 lambda^2, i.e. 0.01 x^2 - 0.7 x + 2.25 = 0."""
    pred = predict([30, 2, 2], loss="ce", lambda_w=0.05, lambda_h=0.05)
    assert pred.ce["merged"] == [[1, 2]] and all(type(k) is int for k in pred.ce["merged"][0])
    assert pred.thresholds["collapse_count"] == pytest.approx(34**2 * 0.05**2, rel=1e-12)
    thr = pred.thresholds["minority_count_threshold"]
    assert thr["threshold"] == pytest.approx((0.7 - math.sqrt(0.49 - 0.09)) / 0.02, rel=1e-9)
    assert thr["classes"] == [1, 2] and thr["merged_now"] is True
    out = pred.to_dict(dense=False)
    # the threshold lives in thresholds only, the dense Grams only with dense=True
    assert "minority_threshold" not in out and "WWt" not in out and "HtH" not in out
    assert out["thresholds"]["minority_count_threshold"]["classes"] == [1, 2]


def test_deep_ce_merged_rows_and_layer_values_from_the_singular_values():
    """M = 2: layer j's mean_gram = HtH values * prod_{l<j} sigma_l^2, partial_gram = prod_{l>=j} sigma_l^2."""
    pred = predict([30, 2, 2], loss="ce", depth=2, lambda_w=0.05, lambda_h=0.05)
    assert pred.ce["merged"] == [[1, 2]] and all(type(k) is int for k in pred.ce["merged"][0])
    st = pred.structure
    hth, sig2 = np.asarray(st["values"]["HtH"]), np.asarray(st["sigma"]) ** 2
    np.testing.assert_allclose(st["layers"][0]["mean_gram"], hth, rtol=1e-12)
    np.testing.assert_allclose(st["layers"][1]["mean_gram"], hth * sig2[0], rtol=1e-12)
    np.testing.assert_allclose(st["layers"][0]["partial_gram"], sig2[0] * sig2[1], rtol=1e-12)


def test_zero_ce_solution_has_no_nc3_scale():
    """Everything collapsed (lambda = 5): W_j = 0, so P_j = C_j Hbar_j^T defines no C_j."""
    pred = predict([30, 2, 2], loss="ce", lambda_w=5.0, lambda_h=5.0)
    assert pred.geometry == "zero"
    assert pred.gram("nc3_scale", 1) is None
    assert np.array_equal(pred.gram("partial_gram", 1), np.zeros((3, 3)))


# ------------------------------------------------------------------------------------------ to_dict
def test_to_dict_keys_and_mode_table():
    """counts [2, 5, 3], M = 2, lambda = 1e-2: every class active; modes sorted by count (class 1, 2, 0);
    s = c x^M with c = N lambda_H, so log x = (log s - log c) / M."""
    counts, lam_h, M = [2, 5, 3], 1e-2, 2
    pred = predict(counts, depth=M, widths=4, lambda_w=1e-2, lambda_h=lam_h)
    out = pred.to_dict()
    assert out["nclab_version"] == nclab.__version__
    assert out["active_per"] == "class"
    assert [lay["layer"] for lay in out["layers"]] == [1, 2]
    text = out["structure"]["layers"]
    assert "partial_gram = prod_{l>=j} sigma_l^2" in text
    # the function the text points to exists under that name
    module, fn = re.search(r"(nclab\.theory\.structure)\.(\w+) builds them", text).groups()
    assert callable(getattr(__import__(module, fromlist=[fn]), fn))
    modes = out["modes"]
    assert modes["class"] == [1, 2, 0]
    assert all(modes["active"])
    np.testing.assert_allclose(modes["log_x"], (np.log(modes["s"]) - np.log(sum(counts) * lam_h)) / M, rtol=1e-12)
    with_bias = predict(counts, depth=M, widths=4, lambda_w=1e-2, lambda_h=lam_h, bias=True).to_dict()
    assert with_bias["active_per"] == "mode" and with_bias["modes"]["class"] is None


# ------------------------------------------------------------------------------------------ thresholds, geometry
def test_imbalanced_geometry_names_collapsed_and_cut_classes():
    """M = 1: a*(1) = 1, n_thr = N kappa = N^2 lambda_W lambda_H = 19^2 (2/19)^2 = 4: class 2 (n = 1) collapses;
    width 1 keeps one of the two eligible classes (10 > 8), the other is cut by the rank budget."""
    lam = 2 / 19
    problem = make_problem([10, 8, 1], widths=[1], lambda_w=lam, lambda_h=lam)
    sol = solve_mse(problem)
    th = thresholds(problem, sol)
    assert th["n_threshold"] == pytest.approx(4.0, rel=1e-12)
    assert th["modes_active"] == 1 and th["modes_cut_by_rank"] == 1 and th["classes_collapsed"] == 2
    assert geometry_name(problem, sol) == (
        "general orthogonal frame (1 minority classes collapsed, 1 classes cut by the rank budget)")


def test_rank_cut_tie_tolerance_is_inclusive():
    """A gap of exactly 1e-12 mu_1 at the rank cut counts as a tie: counts [1e12, 5, 4], width 2 cuts between
    5 and 4 (both above n_thr), 5 - 4 = 1 = 1e-12 * 1e12."""
    sol = solve_mse(make_problem([10**12, 5, 4], widths=[2], lambda_w=1e-12, lambda_h=1e-12))
    assert sol.eligible.all() and sol.active.tolist() == [True, True, False]
    assert not sol.gram_unique and "rank budget R = 2 cuts through" in sol.uniqueness_note


def test_bias_with_many_distinct_counts_computes_the_root_straddling_the_threshold():
    """K = 4100 distinct counts 1..4100 (more than ALL_ROOTS_MAX_GROUPS groups): only the roots that may matter
    are computed. Rank budget 2, threshold between count 3999 and the secular root in (3999, 4000): that root is
    mode 100 (far beyond the budget) but decides eligibility, so it must be computed, equal to the root of
    1 = sum_k n_k^2 / (N (n_k - mu)) found here by bisection, and counted eligible (101 eligible modes)."""
    n = np.arange(1, 4101, dtype=np.float64)
    N = float(n.sum())
    lo, hi = 3999.0, 4000.0
    for _ in range(100):  # the secular function increases from -inf to +inf on the gap
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if np.sum(n * n / (n - mid)) / N < 1.0 else (lo, mid)
    root = 0.5 * (lo + hi)
    n_thr = 0.5 * (3999.0 + root)
    lam = math.sqrt(n_thr) / N  # M = 1: a*(1) = 1, n_thr = N kappa = N^2 lambda_W lambda_H
    problem = make_problem(list(range(1, 4101)), widths=[2], lambda_w=lam, lambda_h=lam, bias=True)
    sol = solve_mse(problem)
    assert sol.mu[100] == pytest.approx(root, rel=1e-12)
    assert int(sol.eligible.sum()) == 101 and int(sol.active.sum()) == 2
    assert thresholds(problem, sol)["modes_cut_by_rank"] == 99
