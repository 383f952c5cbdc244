"""MSE closed forms against long float64 descent on the full model, thresholds, published-code bugs."""

import numpy as np
import pytest
from descent import descend, perturb
from scipy.optimize import minimize_scalar

from nclab import predict
from nclab.theory import labels_from_counts, ufm_objective
from nclab.theory.scalar import F, a_star, h_max, solve_modes, x_star


def attained(pred):
    Ws, H, b = pred.construct()
    p = pred.problem
    return ufm_objective(Ws, H, labels_from_counts(p.counts), p.lambda_w, p.lambda_h, b)


# ---------------------------------------------------------------- scalar problem (theory.md sec. 2)

@pytest.mark.parametrize(
    "M,ast,hmax,xs",
    [(2, 0.25, 0.324760, 1.0), (3, 0.176378, 0.279982, 1.259921), (4, 0.142469, 0.266301, 1.316074),
     (5, 0.121257, 0.260273, 1.319508), (6, 0.106212, 0.257075, 1.307660)],
)
def test_threshold_table(M, ast, hmax, xs):
    assert a_star(M) == pytest.approx(ast, abs=1e-6)
    assert h_max(M) == pytest.approx(hmax, abs=1e-6)
    assert x_star(M) == pytest.approx(xs, abs=1e-6)


@pytest.mark.parametrize("M", [1, 2, 3, 6, 9])
def test_scalar_minimum_matches_dense_search(M):
    a = np.concatenate([np.geomspace(1e-6, 2 * a_star(M), 40), [a_star(M) * (1 - 1e-9)]])
    x, Fmin, _ = solve_modes(a, M)
    for ai, xi, fi in zip(a, x, Fmin):
        grid = np.concatenate([[0.0], np.geomspace(1e-4, 10 * max(1.0, ai ** (-1 / (M + 1))), 20001)])
        vals = F(grid, ai, M)
        k = 1 + int(np.argmin(vals[1:]))  # best nonzero grid point, refined, then compared with x = 0
        lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, grid.size - 1)]
        ref = min(1.0, minimize_scalar(lambda t, ai=ai: F(t, ai, M), bounds=(lo, hi), method="bounded",
                                       options={"xatol": 1e-14}).fun)
        assert fi <= ref + 1e-13 and fi == pytest.approx(ref, rel=1e-10, abs=1e-13)
        assert F(xi, ai, M) == pytest.approx(fi, rel=1e-14)


def test_discontinuous_transition_at_a_star():
    M = 3
    x_below, _, _ = solve_modes(np.array([a_star(M) * (1 - 1e-10)]), M)
    x_above, _, _ = solve_modes(np.array([a_star(M) * (1 + 1e-10)]), M)
    assert x_below[0] == pytest.approx(x_star(M), rel=1e-4)  # jumps from x* ...
    assert x_above[0] == 0.0  # ... to zero


# ---------------------------------------------------------------- closed form vs full-model descent

SETTINGS = {
    # name: (kwargs, descend from a random start?)
    "balanced-of-M1": (dict(counts=[3, 3, 3], depth=1, widths=4, lambda_w=0.05, lambda_h=0.05), True),
    "balanced-of-M2": (dict(counts=[3, 3, 3], depth=2, widths=4, lambda_w=0.02, lambda_h=0.02), True),
    "balanced-of-M3-trivial": (dict(counts=[2, 2, 2], depth=3, widths=3, lambda_w=0.2, lambda_h=0.2), True),
    "balanced-etf-bias-M2": (dict(counts=[3, 3, 3, 3], depth=2, widths=4, lambda_w=0.02, lambda_h=0.02,
                                  bias=True), True),
    "balanced-etf-bias-M3": (dict(counts=[2, 2, 2], depth=3, widths=4, lambda_w=0.02, lambda_h=0.02,
                                  bias=True), False),
    "gof-M1": (dict(counts=[6, 3, 2, 1], depth=1, widths=5, lambda_w=0.03, lambda_h=0.03), True),
    "gof-M2-minority": (dict(counts=[8, 4, 2, 1], depth=2, widths=5, lambda_w=0.03, lambda_h=0.03), False),
    "gof-M3": (dict(counts=[6, 3, 2], depth=3, widths=4, lambda_w=0.01, lambda_h=0.01), False),
    "bottleneck-gof": (dict(counts=[6, 4, 3, 2], depth=3, widths=[5, 2, 4], lambda_w=0.005,
                            lambda_h=0.005), False),
    "bottleneck-balanced-bias": (dict(counts=[2, 2, 2, 2], depth=2, widths=[4, 2], lambda_w=0.01,
                                      lambda_h=0.01, bias=True), False),
    "per-layer-lambdas": (dict(counts=[5, 3, 2], depth=3, widths=[4, 3, 5], lambda_w=[0.002, 0.03, 0.01],
                               lambda_h=0.004), False),
    "imbalanced-bias-M2": (dict(counts=[6, 3, 2, 1], depth=2, widths=4, lambda_w=0.02, lambda_h=0.02,
                                bias=True), False),
    "imbalanced-bias-M1": (dict(counts=[5, 2, 1], depth=1, widths=3, lambda_w=0.02, lambda_h=0.03,
                                bias=True), True),
}


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_closed_form_against_descent(name):
    kw, random_start = SETTINGS[name]
    pred = predict(**kw)
    f_star = pred.objective
    assert attained(pred) == pytest.approx(f_star, rel=1e-12)
    # from the predicted minimizer plus noise: never below f*, comes back to it
    starts = [perturb(pred.construct(), 0.05, seed=s) for s in range(2)]
    values = [descend(pred.problem, st) for st in starts]
    if random_start:
        values += [descend(pred.problem, seed=s) for s in range(2)]
    tol = 1e-9 * max(abs(f_star), 1e-3)
    assert min(values) >= f_star - tol, (values, f_star)
    assert min(values) <= f_star + tol, (values, f_star)
    if random_start and pred.problem.M == 1:
        # M = 1 has no spurious local minima: every random start reaches f*. For M >= 2 zero is a
        # strict local minimum of every mode, so random starts may stall (never below f*, checked above).
        assert max(values) <= f_star + 1e-7, (values, f_star)


@pytest.mark.parametrize("M", [1, 2, 3])
def test_both_sides_of_minority_threshold(M):
    """Class 3 sits just above / just below the collapse threshold n_thr = N kappa / a*(M)."""
    counts = [8, 5, 3]
    N = sum(counts)
    # choose lambda (all equal) so that n_thr = 3 * (1 -+ 2%): N (N lam^(M+1))^(1/M) / a* = n_thr
    for factor, expect_active in [(0.98, True), (1.02, False)]:
        n_thr = 3 * factor
        lam = (n_thr * a_star(M) / N) ** (M / (M + 1)) / N ** (1 / (M + 1))
        pred = predict(counts, depth=M, widths=4, lambda_w=lam, lambda_h=lam)
        assert pred.thresholds["n_threshold"] == pytest.approx(n_thr, rel=1e-10)
        assert bool(pred.active[2]) is expect_active
        assert pred.active[0] and pred.active[1]
        start = pred.construct()
        vals = [descend(pred.problem, perturb(start, 0.03, seed=s)) for s in range(2)]
        assert min(vals) >= pred.objective - 1e-10 and min(vals) <= pred.objective + 1e-10


def test_grams_match_constructed_point():
    pred = predict([5, 3, 2, 2], depth=3, widths=[6, 3, 5], lambda_w=[1e-3, 4e-3, 2e-3], lambda_h=3e-3,
                   bias=True)
    Ws, H, b = pred.construct()
    y = labels_from_counts(pred.problem.counts)
    W = Ws[2] @ Ws[1] @ Ws[0]
    Hbar = np.stack([H[:, y == k].mean(axis=1) for k in range(4)], axis=1)
    np.testing.assert_allclose(W @ W.T, pred.WWt, atol=1e-12)
    np.testing.assert_allclose(Hbar.T @ Hbar, pred.HtH, atol=1e-14)
    np.testing.assert_allclose(W @ Hbar, pred.WH, atol=1e-13)
    # per layer: class-mean Gram, partial products, NC3 scale, singular values, equal regularizers
    Hj = Hbar
    regs = [0.5 * pred.problem.lambda_h * np.sum(H**2)]
    for j, layer in enumerate(pred.layers):
        P = Ws[-1]
        for Wl in reversed(Ws[j:-1]):
            P = P @ Wl
        np.testing.assert_allclose(Hj.T @ Hj, layer["mean_gram"], atol=1e-13)
        np.testing.assert_allclose(P @ P.T, layer["partial_gram"], atol=1e-10)
        np.testing.assert_allclose(layer["nc3_scale"] @ Hj.T, P, atol=1e-9)
        sv = np.linalg.svd(Ws[j], compute_uv=False)
        np.testing.assert_allclose(np.sort(sv[sv > 1e-12]), np.sort(layer["sigma"]), rtol=1e-12)
        regs.append(0.5 * pred.problem.lambda_w[j] * np.sum(Ws[j] ** 2))
        Hj = Ws[j] @ Hj
    np.testing.assert_allclose(regs, regs[0], rtol=1e-10)  # all M+1 regularizers equal


def test_named_geometries():
    assert predict(classes=4, per_class=10, depth=3).geometry == "orthogonal frame"
    etf = predict(classes=4, per_class=10, depth=3, bias=True)
    assert etf.geometry == "simplex ETF"
    P = np.eye(4) - 1 / 4
    np.testing.assert_allclose(etf.WWt / etf.WWt[0, 0] * (3 / 4), P, atol=1e-12)
    np.testing.assert_allclose(etf.bias, 0.25)
    gof = predict([200, 100, 50, 50], depth=3)
    assert gof.geometry == "general orthogonal frame"
    w2 = np.diag(gof.WWt)
    assert w2[0] > w2[1] > w2[2] == w2[3] > 0
    np.testing.assert_allclose(gof.WWt, np.diag(w2), atol=0)


# ---------------------------------------------------------------- the published code's failure modes

def published_x(a, M):
    """The official code: largest real root of h(x) = a, clipped at 0, never compared with x = 0."""
    if M == 1:
        return max(a ** -0.5 - 1, 0.0)
    # h(x) = a  <=>  a (1 + x^M)^2 - x^(M-1) = 0 ; polynomial in x
    coeffs = np.zeros(2 * M + 1)
    coeffs[0] += a  # x^(2M)
    coeffs[M] += 2 * a  # x^M
    coeffs[2 * M] += a  # x^0
    coeffs[M + 1] -= 1  # x^(M-1)
    r = np.roots(coeffs)
    real = r[(np.abs(r.imag) < 1e-9) & (r.real > 0)].real  # sympy symbol declared positive
    if real.size == 0:
        raise ValueError("max() arg is an empty sequence")  # what the published script hits
    return max(real.max(), 0.0)


def test_published_code_picks_stationary_point_not_minimum():
    """theory.md 5.1: K=4, n_k=10, M=2, lambda_W=0.05, lambda_H=0.049: code 0.52818 vs f* = 0.5."""
    pred = predict(classes=4, per_class=10, depth=2, lambda_w=0.05, lambda_h=0.049)
    assert pred.objective == pytest.approx(0.5, abs=1e-15)
    assert pred.geometry.startswith("trivial")
    a = 40 * (40 * 0.049 * 0.05**2) ** 0.5 / 10
    x_code = published_x(a, 2)
    assert x_code > 0
    assert 0.5 * F(x_code, a, 2) == pytest.approx(0.52818, abs=1e-5)
    # and descent from the code's point + noise goes no lower than f* (it is a local min)
    val = descend(pred.problem, seed=0)
    assert val >= 0.5 - 1e-12


def test_published_code_crashes_without_root_nclab_does_not():
    """theory.md 5.2: b/n_k > M h_max has no real root; nclab returns collapse instead."""
    M = 3
    lam = 0.2
    counts = [50, 1]
    a_small = 51 * (51 * lam ** (M + 1)) ** (1 / M) / 1
    assert a_small > h_max(M)
    with pytest.raises(ValueError):
        published_x(a_small, M)
    pred = predict(counts, depth=M, lambda_w=lam, lambda_h=lam)
    assert not pred.active[1]
    assert np.isfinite(pred.objective)


def test_balanced_m1_no_negative_root():
    """theory.md 5.3: M = 1 with b > n gives a negative root in the balanced script; nclab gives 0."""
    pred = predict(classes=3, per_class=2, depth=1, lambda_w=1.0, lambda_h=1.0)
    assert np.all(np.isfinite(pred.WWt)) and np.all(pred.WWt == 0) and pred.objective == 0.5


def test_per_layer_lambdas_enter_through_geometric_mean():
    """theory.md 5.4: the value depends on prod lambda_j only; layers rescale."""
    a = predict([5, 3, 2], depth=3, lambda_w=[1e-3, 8e-3, 1e-2], lambda_h=2e-3)
    g = float(np.prod([1e-3, 8e-3, 1e-2]) ** (1 / 3))
    b = predict([5, 3, 2], depth=3, lambda_w=g, lambda_h=2e-3)
    assert a.objective == pytest.approx(b.objective, rel=1e-13)
    np.testing.assert_allclose(a.WWt, b.WWt, rtol=1e-12)
    assert a.layers[0]["sigma"][0] != pytest.approx(b.layers[0]["sigma"][0])


def test_bottleneck_keeps_only_largest_classes():
    """theory.md 5.5: width 2 < K keeps the 2 largest classes, the published code keeps all 4."""
    pred = predict([200, 100, 50, 50], depth=3, widths=[64, 2, 64])
    assert pred.active.tolist() == [True, True, False, False]
    assert np.linalg.matrix_rank(pred.WWt) == 2
    assert pred.gram_unique


def test_bottleneck_tie_flags_non_unique():
    pred = predict(classes=4, per_class=10, depth=2, widths=[8, 2])
    assert not pred.gram_unique and "rank budget" in pred.uniqueness_note
    assert np.linalg.matrix_rank(pred.WWt) == 2


def test_float64_precision():
    """theory.md 5.6: no float32 anywhere: the constructed point attains f* to 1e-13."""
    pred = predict([200, 100, 50, 50], depth=6, widths=16)
    assert pred.WWt.dtype == np.float64
    assert attained(pred) == pytest.approx(pred.objective, rel=1e-13)


def test_matches_published_values_where_code_is_right():
    """Default configuration: all modes active, no bottleneck: s_k = c x_k^M as the code computes."""
    pred = predict([200, 100, 50, 50], depth=3, widths=64, lambda_w=5e-4, lambda_h=5e-4)
    N, M = 400, 3
    for k, n in enumerate([200, 100, 50, 50]):
        bcode = M * N * (N * 5e-4**M * 5e-4) ** (1 / M)
        x = published_x(bcode / n / M, M)
        assert pred.WWt[k, k] == pytest.approx(N * 5e-4 * x**M, rel=1e-9)
