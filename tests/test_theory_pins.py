"""Numbers of nclab.theory pinned to full precision by independent computations: scalar minimizations of the
closed-form CE families (scipy, tight tolerance), the ETF threshold as a 1-D maximization, the CE decision
between structured candidates that are close to tied, construct() through a numpy objective written here,
and Prediction.classes from the constructed matrices."""

import math

import numpy as np
import pytest
from scipy.optimize import brentq, minimize_scalar

from nclab.theory import predict
from nclab.theory.ce import etf_threshold, solve_ce
from nclab.theory.problem import make_problem


def scalar_min(f, hi=400.0):
    """Global minimum over t in (0, hi] of a smooth 1-D function: a dense log grid, then a bounded polish."""
    ts = np.geomspace(1e-8, hi, 40001)
    vals = np.array([f(t) for t in ts])
    i = int(np.argmin(vals))
    r = minimize_scalar(f, bounds=(ts[max(i - 1, 0)], ts[min(i + 1, len(ts) - 1)]), method="bounded",
                        options={"xatol": 1e-15})
    return min(float(r.fun), float(vals[i]))


def polygon(K, M, g):
    """Regular K-gon: logits (2t/K) cos(2 pi (j - k)/K), two singular values t."""
    p, c = 2 / (M + 1), np.cos(2 * np.pi * np.arange(K) / K)
    return scalar_min(lambda t: np.log(np.exp(2 * t / K * c).sum()) - 2 * t / K + (M + 1) * g * t**p)


def cross(K, M, g):
    """Cross-polytope (K even): own logit t/2, antipode -t/2, others 0; K/2 singular values t."""
    p = 2 / (M + 1)
    return scalar_min(lambda t: np.log(np.exp(t / 2) + np.exp(-t / 2) + K - 2) - t / 2
                      + 0.5 * (M + 1) * g * (K / 2) * t**p)


def etf(K, M, g):
    p = 2 / (M + 1)
    return min(math.log(K), scalar_min(lambda t: np.log1p((K - 1) * np.exp(-t)) + 0.5 * (M + 1) * g * (K - 1) * t**p))


def table_problem(K, M, gamma, bias=False):
    return make_problem([1] * K, widths=[K] * M, lambda_w=gamma, lambda_h=gamma, bias=bias, loss="ce")


def test_k6_m4_polygon_objective_to_full_precision():
    """theory.md quotes 1.58; the regular hexagon's value is 1.5870249018708..."""
    s = solve_ce(table_problem(6, 4, 0.1))
    want = polygon(6, 4, 0.1)
    assert want == pytest.approx(1.5870249018708, abs=1e-12)
    assert s.best_structure == "regular polygon" and s.objective == pytest.approx(want, rel=1e-12)
    assert s.etf_objective == math.log(6) == etf(6, 4, 0.1)


@pytest.mark.parametrize("K", [3, 4, 5, 6])
@pytest.mark.parametrize("M", [1, 2, 3, 4])
def test_etf_threshold_to_full_precision(K, M):
    """gamma_c = sup_t (log K - log(1 + (K-1) e^-t)) / ((M+1)/2 (K-1) t^p): the ETF scalar beats zero iff gamma is
    below it (for M = 1 the sup is the limit t -> 0, 1/K)."""
    if M == 1:
        want = 1 / K
    else:
        p = 2 / (M + 1)
        ratio = lambda t: -(math.log(K) - math.log1p((K - 1) * math.exp(-t))) / (0.5 * (M + 1) * (K - 1) * t**p)  # noqa
        want = -scalar_min(ratio, hi=60.0)
    assert etf_threshold(K, M) == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("K,M,bias,gamma,name", [
    (3, 3, False, 0.01, "simplex ETF"), (4, 1, True, 0.1, "simplex ETF"), (4, 2, False, 0.03, "cross-polytope"),
    (4, 3, False, 0.001, "cross-polytope"), (5, 2, False, 0.1, "regular polygon"),
    (5, 3, False, 0.001, "regular polygon"), (6, 2, False, 0.001, "cross-polytope"),
    (6, 2, True, 0.01, "cross-polytope"), (6, 3, False, 0.1, "regular polygon"),
])
def test_scan_table_closed_form_entries_to_full_precision(K, M, bias, gamma, name):
    """The scan table's entries whose structure has a closed form: the value and the change against the ETF."""
    s = solve_ce(table_problem(K, M, gamma, bias))
    want = {"simplex ETF": etf, "cross-polytope": cross, "regular polygon": polygon}[name](K, M, gamma)
    assert s.best_structure == name and s.objective == pytest.approx(want, rel=1e-11)
    assert s.etf_objective == pytest.approx(etf(K, M, gamma), rel=1e-11)


def _crossing():
    """gamma where the hexagon and the 6-cross-polytope tie (K = 6, M = 3)."""
    return brentq(lambda g: polygon(6, 3, g) - cross(6, 3, g), 0.06, 0.1, xtol=1e-16, rtol=1e-15)


@pytest.mark.parametrize("delta, expected", [
    (-1e-5, "cross-polytope"),  # the cross-polytope lower by ~1e-6 relative (> TIE_RTOL 1e-8): it wins
    (1e-5, "regular polygon"),  # the polygon lower: it wins
    (1e-9, "cross-polytope"),  # the polygon lower by ~7e-11 relative: a tie, the preference order decides
    (-1e-9, "cross-polytope"),
])
def test_close_to_tied_structured_candidates(delta, expected):
    g = _crossing() * (1 + delta)
    s = solve_ce(table_problem(6, 3, g))
    c, p = cross(6, 3, g), polygon(6, 3, g)
    assert s.best_structure == expected
    assert s.objective == pytest.approx(c if expected == "cross-polytope" else p, rel=1e-12)
    tied = abs(c - p) <= 1e-8 * min(c, p)
    assert tied == (abs(delta) < 1e-7)
    assert ("ties at the optimal value" in s.uniqueness_note) == tied and not s.gram_unique


# ---------------------------------------------------------------------------------------------- construct, classes
def numpy_objective(W, H, b, counts, lam_w, lam_h, loss):
    y = np.repeat(np.arange(len(counts)), counts)
    Z = H
    for w in W:
        Z = w @ Z
    if b is not None:
        Z = Z + b[:, None]
    N = H.shape[1]
    if loss == "ce":
        zmax = Z.max(0)
        data = np.mean(zmax + np.log(np.exp(Z - zmax).sum(0)) - Z[y, np.arange(N)])
    else:
        data = 0.5 * ((Z - np.eye(len(counts))[:, y]) ** 2).sum() / N
    return data + 0.5 * sum(lam * (w**2).sum() for lam, w in zip(lam_w, W)) + 0.5 * lam_h * (H**2).sum()


CONSTRUCT = [
    dict(counts=[2] * 4, depth=1, widths=4, lambda_w=1e-2, lambda_h=1e-2, bias=False, loss="ce"),  # ETF, M = 1
    dict(counts=[1] * 6, depth=4, widths=6, lambda_w=0.1, lambda_h=0.1, bias=False, loss="ce"),  # hexagon
    dict(counts=[3] * 4, depth=2, widths=[5, 4], lambda_w=[1e-2, 3e-3], lambda_h=2e-3, bias=True, loss="ce"),
    dict(counts=[1] * 3, depth=3, widths=3, lambda_w=0.1, lambda_h=0.1, bias=True, loss="ce"),  # rank-1 code region
    dict(counts=[30, 10, 5, 2], depth=3, widths=[6, 5, 4], lambda_w=2e-3, lambda_h=1e-3, bias=False, loss="mse"),
    dict(counts=[30, 10, 5, 2], depth=2, widths=4, lambda_w=1e-3, lambda_h=1e-3, bias=True, loss="mse"),
]


@pytest.mark.parametrize("kw", CONSTRUCT, ids=lambda kw: f"{kw['loss']}-M{kw['depth']}-b{int(kw['bias'])}")
def test_construct_attains_the_predicted_objective(kw):
    pred = predict(**kw)
    W, H, b = pred.construct()
    p = pred.problem
    assert [w.shape for w in W] == [(d1, d0) for d0, d1 in zip(list(p.widths), list(p.widths[1:]) + [p.K])]
    assert H.shape == (p.widths[0], sum(kw["counts"])) and (b is None) == (not kw["bias"])
    f = numpy_objective(W, H, b, kw["counts"], p.lambda_w, p.lambda_h, kw["loss"])
    assert f == pytest.approx(pred.objective, rel=1e-10)
    if kw["loss"] == "ce":  # not the zero solution (f = log K) in these settings
        assert f < math.log(p.K)
    else:
        assert f < 0.5  # nor the MSE zero solution (f = 1/2)


@pytest.mark.parametrize("kw", CONSTRUCT + [
    dict(counts=[200, 100, 5, 5], depth=2, widths=8, lambda_w=5e-3, lambda_h=5e-3, bias=False, loss="mse"),
    dict(counts=[200, 100, 5, 5], depth=2, widths=8, lambda_w=5e-3, lambda_h=5e-3, bias=True, loss="mse"),
], ids=lambda kw: f"{kw['loss']}-M{kw['depth']}-b{int(kw['bias'])}-{kw['counts'][-1]}")
def test_classes_table_from_the_constructed_matrices(kw):
    pred = predict(**kw)
    W, H, b = pred.construct()
    K, counts = pred.problem.K, kw["counts"]
    y = np.repeat(np.arange(K), counts)
    Wf = W[0]
    for w in W[1:]:
        Wf = w @ Wf
    mu = np.stack([H[:, y == k].mean(1) for k in range(K)])  # (K, d): every sample of a class has its mean
    hb = mu - np.asarray(counts) @ mu / len(y) if kw["bias"] else mu
    logits = Wf @ mu.T + (0 if b is None else b[:, None])  # column k: the logits of a class-k sample
    wn, hn = np.linalg.norm(Wf, axis=1), np.linalg.norm(hb, axis=1)
    own = np.diag(logits)
    other = np.where(np.eye(K, dtype=bool), -np.inf, logits).max(0)
    collapsed = (wn <= 1e-6 * wn.max()) & (hn <= 1e-6 * hn.max())
    c = pred.classes
    assert c["count"] == list(counts)
    scale = max(1.0, float(np.abs(logits).max()))
    # CE found by the search (not a closed-form family): the Grams keep round-off singular values of Z raised to
    # the power 1/(M+1), which construct() drops: the two agree to ~1e-8 only (see the lead's report)
    rtol = 1e-8 if kw["loss"] == "mse" or pred._ce.best_structure in ("simplex ETF", "cross-polytope",
                                                                        "regular polygon") else 1e-6
    assert np.allclose(c["w_norm"], wn, rtol=rtol, atol=1e-10 * wn.max())
    assert np.allclose(c["h_norm"], hn, rtol=rtol, atol=1e-10 * hn.max())
    assert np.allclose(c["w_norm2"], wn**2, rtol=rtol, atol=1e-10 * wn.max() ** 2)
    assert np.allclose(c["logit_own"], own, rtol=rtol, atol=1e-10 * scale)
    if not (kw["loss"] == "mse" and not kw["bias"]):  # bias-free MSE: the margin is the own logit (diagonal Grams)
        assert np.allclose(c["margin"], own - other, rtol=rtol, atol=1e-9 * scale)
    else:
        assert np.allclose(c["margin"], own, rtol=rtol, atol=1e-10 * scale)
        assert np.allclose(logits[~np.eye(K, dtype=bool)], 0, atol=1e-10 * scale)
    assert c["collapsed"] == collapsed.tolist() and c["active"] == (~collapsed).tolist()
    if kw["counts"][-1] == 5 and not kw["bias"]:
        assert collapsed.tolist() == [False, False, True, True]  # minority collapse of the two small classes
