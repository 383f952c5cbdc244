"""Imbalanced cross-entropy at depth M >= 2 through nclab.predict / construct / the CLI (best found, not certified).

The independent check is long float64 descent on the FULL deep model (every layer, all N feature columns,
analytic numpy gradient written here, not the reduced problem the search solves) from random starts and from
construct() plus noise: it must never end below the prediction. The settings include low-rank winners (the
best code has rank < K - 1, beating every rank-(K-1) point).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.optimize import minimize

import nclab
from nclab.cli import cli
from nclab.theory.objective import labels_from_counts, ufm_objective
from nclab.theory.problem import make_problem


def full_descent(problem, start=None, *, seed=0, scale=0.5, maxiter=2000):
    """L-BFGS-B on W_1..W_M, H (d x N), b of (1/N) sum CE + sum lambda_j/2 ||W_j||^2 + lambda_H/2 ||H||^2."""
    K, N, M = problem.K, problem.N, problem.M
    y = labels_from_counts(problem.counts)
    Y = np.zeros((K, N))
    Y[y, np.arange(N)] = 1.0
    dims = list(problem.widths) + [K]
    rng = np.random.default_rng(seed)
    if start is None:
        ws = [scale * rng.standard_normal((dims[j + 1], dims[j])) for j in range(M)]
        H = scale * rng.standard_normal((dims[0], N))
        b = scale * rng.standard_normal(K) if problem.bias else None
    else:
        ws, H, b = start
    shapes = [w.shape for w in ws] + [H.shape]
    x0 = np.concatenate([w.ravel() for w in ws] + [H.ravel()] + ([b] if problem.bias else []))

    def fg(x):
        parts, i = [], 0
        for s in shapes:
            parts.append(x[i : i + s[0] * s[1]].reshape(s))
            i += s[0] * s[1]
        ws, H = parts[:M], parts[M]
        pre = [H]
        for w in ws:
            pre.append(w @ pre[-1])
        L = pre[-1] + (x[i:][:, None] if problem.bias else 0.0)
        mx = L.max(axis=0)
        E = np.exp(L - mx)
        S = E.sum(axis=0)
        f = float(np.sum(mx + np.log(S) - L[y, np.arange(N)])) / N
        f += sum(0.5 * lam * float(np.sum(w * w)) for lam, w in zip(problem.lambda_w, ws))
        f += 0.5 * problem.lambda_h * float(np.sum(H * H))
        G = (E / S - Y) / N
        gb = G.sum(axis=1)
        grads = [None] * M
        for j in range(M - 1, -1, -1):
            grads[j] = G @ pre[j].T + problem.lambda_w[j] * ws[j]
            G = ws[j].T @ G
        parts = grads + [G + problem.lambda_h * H] + ([gb] if problem.bias else [])
        return f, np.concatenate([g.ravel() for g in parts])

    res = minimize(fg, x0, jac=True, method="L-BFGS-B",
                   options={"maxiter": maxiter, "maxfun": 2 * maxiter, "ftol": 1e-16, "gtol": 1e-13, "maxcor": 30})
    return float(res.fun)


def noisy(start, eps, seed):
    rng = np.random.default_rng(seed)
    ws, H, b = start
    return ([w + eps * rng.standard_normal(w.shape) for w in ws], H + eps * rng.standard_normal(H.shape),
            None if b is None else b + eps * rng.standard_normal(b.shape))


# (counts, M, lambda, bias): every best code here has rank 2 < K - 1 = 3 (low-rank winners) except [8,4,2,2,1]
SETTINGS = [
    ([12, 6, 3, 3], 2, 1e-2, False),  # the pairing code {0,1},{2,3}: 3 random starts of the search used to miss it
    ([12, 6, 3, 3], 3, 1e-2, True),
    ([10, 10, 3, 3], 2, 2e-2, False),
    ([8, 4, 2, 2, 1], 2, 5e-3, True),
]


def deep_problem(counts, M, lam, bias):
    return make_problem(counts, depth=M, widths=len(counts), lambda_w=lam, lambda_h=lam, bias=bias, loss="ce")


@pytest.mark.parametrize("counts,M,lam,bias", SETTINGS)
def test_full_model_descent_never_below_the_prediction(counts, M, lam, bias):
    p = deep_problem(counts, M, lam, bias)
    pred = nclab.predict(p)
    f = pred.objective
    assert pred.ce["certified"] is False and pred.ce["duality_gap"] is None
    assert pred.ce["ranks_searched"] == list(range(1, len(counts)))
    if len(counts) == 4:  # low-rank winner: strictly better than the best point found at rank K - 1
        assert pred.ce["best_rank"] == 2 and pred.ce["best_per_rank"][3] >= f
    start = pred.construct()
    vals = [full_descent(p, seed=s) for s in range(2)] + [full_descent(p, noisy(start, 0.05, 1))]
    assert min(vals) >= f - 1e-10 * f, (min(vals) - f) / f
    assert vals[-1] <= f + 1e-9 * f  # construct() + noise descends back to the prediction


def test_construct_attains_the_objective_and_the_reported_structure():
    """construct() attains the objective; the Grams, per-layer Grams, singular values and NC3 scales the
    prediction reports are those of the constructed matrices (computed here from them)."""
    p = make_problem([20, 10, 5, 2], depth=3, widths=[6, 5, 4], lambda_w=[5e-3, 1e-2, 2e-3], lambda_h=4e-3,
                     bias=True, loss="ce")
    pred = nclab.predict(p)
    ws, H, b = pred.construct()
    y = labels_from_counts(p.counts)
    f = ufm_objective(ws, H, y, p.lambda_w, p.lambda_h, bias=b, loss="ce")
    assert f == pytest.approx(pred.objective, rel=1e-12)
    Hbar = np.stack([H[:, y == k].mean(axis=1) for k in range(p.K)], axis=1)
    W = ws[2] @ ws[1] @ ws[0]
    scale = float(np.abs(W @ W.T).max())
    np.testing.assert_allclose(pred.WWt, W @ W.T, atol=1e-9 * scale)
    np.testing.assert_allclose(pred.HtH, Hbar.T @ Hbar, atol=1e-9 * float(np.abs(Hbar.T @ Hbar).max()))
    np.testing.assert_allclose(pred.WH, W @ Hbar, atol=1e-9 * float(np.abs(W @ Hbar).max()))
    feats = Hbar
    for j in range(1, 4):
        lay = pred.layers[j - 1]
        P = np.eye(p.K)
        for w in ws[j - 1 :][::-1]:
            P = P @ w  # W_M ... W_j
        sv = np.linalg.svd(ws[j - 1], compute_uv=False)
        np.testing.assert_allclose(np.sort(lay["sigma"])[::-1], sv[: lay["sigma"].size], rtol=1e-9)
        np.testing.assert_allclose(lay["mean_gram"], feats.T @ feats, atol=1e-9 * float(np.abs(feats.T @ feats).max()))
        np.testing.assert_allclose(lay["partial_gram"], P @ P.T, atol=1e-9 * float(np.abs(P @ P.T).max()))
        np.testing.assert_allclose(lay["nc3_scale"] @ feats.T, P, atol=1e-9 * float(np.abs(P).max()))
        feats = ws[j - 1] @ feats
    c = pred.classes
    np.testing.assert_allclose(c["w_norm"], np.linalg.norm(W, axis=1), rtol=1e-9)
    np.testing.assert_allclose(c["h_norm"], np.linalg.norm(Hbar, axis=0), rtol=1e-9)


def test_cli_text_and_json_say_best_found():
    args = ["predict", "--loss", "ce", "--counts", "200,100,50,50", "-M", "3", "--lambda-w", "2e-2", "--lambda-h",
            "2e-2"]
    res = CliRunner().invoke(cli, args + ["--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["certified"] is False and doc["gap"] is None and doc["rel_gap"] is None
    assert doc["search"]["ranks"] == [1, 2, 3]
    assert len(doc["layers"]) == 3 and len(doc["WWt"]) == 4 and doc["geometry"].startswith("best found")
    text = CliRunner().invoke(cli, args).output
    assert "certified: false" in text and "ranks 1, 2, 3" in text and "not a certified optimum" in text
    assert f"f* = {doc['objective']:.10g}" in text  # the same search (seeded): the same value in both outputs
    thr = doc["thresholds"]["minority_count_threshold"]
    assert thr["certified"] is False and thr["classes"] == [2, 3] and thr["bracket"][0] < thr["bracket"][1]
    assert "Minority collapse (best found" in text and f"{thr['threshold']:.6g}" in text


def test_simulate_cli_ends_at_or_above_the_prediction(tmp_path):
    """A short, small full-model run (random init) ends at or above the best-found value and close to it."""
    p = deep_problem([12, 6, 3, 3], 2, 1e-2, False)
    f = nclab.predict(p).objective
    res = CliRunner().invoke(cli, ["simulate", "--loss", "ce", "--counts", "12,6,3,3", "-M", "2", "--width", "4",
                                   "--lambda-w", "1e-2", "--lambda-h", "1e-2", "--optimizer", "lbfgs", "--steps", "400",
                                   "--init-std", "0.3", "--out", str(tmp_path / "run"), "--no-figures", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output.strip().splitlines()[-1])
    assert doc["predicted_objective"] == pytest.approx(f, rel=1e-12)
    end = doc["final"]["objective"]
    assert f - 1e-10 * f <= end <= 1.02 * f


def test_search_false_is_refused():
    with pytest.raises(ValueError, match="search=False"):
        nclab.predict([6, 3, 2, 2], depth=2, loss="ce", search=False)


# ------------------------------------------------------------------ minority collapse with the other counts fixed
def test_threshold_bisection_matches_the_exact_root_at_m1():
    """The bisection (on the rank search, the M >= 2 machinery) run at M = 1 lands on the exact root of
    x = (N_r + m x)^2 lambda^2; hand check: [200, 100, x, x], lambda = 0.02: 0.0016 x^2 - 0.52 x + 36 = 0, x = 100."""
    from nclab.theory.ce_imbalanced import deep_minority_threshold, minority_threshold_exact

    assert minority_threshold_exact([200, 100, 50, 50], 0.02, 0.02) == pytest.approx(100.0, rel=1e-12)
    p = make_problem([200, 100, 50, 50], widths=4, lambda_w=5e-3, lambda_h=5e-3, loss="ce")
    exact = minority_threshold_exact(p.counts, 5e-3, 5e-3)
    r = deep_minority_threshold(p, rtol=1e-3)
    assert r["bracket"][0] <= exact * (1 + 1e-3) and exact <= r["bracket"][1] * (1 + 1e-3)
    doc = nclab.predict(p).thresholds["minority_count_threshold"]
    assert doc["certified"] is True and doc["threshold"] == pytest.approx(exact, rel=1e-12)


def transplant(start, old_counts, new_counts):
    """The same weights and class means, repeated for other class counts."""
    ws, H, b = start
    y = labels_from_counts(old_counts)
    Hbar = np.stack([H[:, y == k].mean(axis=1) for k in range(len(old_counts))], axis=1)
    return ws, np.repeat(Hbar, new_counts, axis=1), b


def test_deep_minority_collapse_switches_at_the_reported_threshold():
    """M = 2, [200, 100, n, n], lambda = 0.02: the reported threshold (~41.7) lies between n = 40 (merged rows
    predicted) and n = 43 (apart). Full-model descent started in the other side's basin (the other prediction's
    matrices, transplanted) ends strictly above each prediction: merging is worse at 43, splitting worse at 40."""
    def prob(n):
        return make_problem([200, 100, n, n], depth=2, widths=4, lambda_w=2e-2, lambda_h=2e-2, loss="ce")

    a40, a43 = nclab.predict(prob(40)), nclab.predict(prob(43))
    thr = a43.thresholds["minority_count_threshold"]
    assert thr["certified"] is False and 40 < thr["threshold"] < 43 and thr["merged_now"] is False
    assert a40.ce["merged"] == [[2, 3]] and a43.ce["merged"] == []
    merged_at_43 = full_descent(prob(43), noisy(transplant(a40.construct(), [200, 100, 40, 40], [200, 100, 43, 43]),
                                                1e-3, 0))
    apart_at_40 = full_descent(prob(40), noisy(transplant(a43.construct(), [200, 100, 43, 43], [200, 100, 40, 40]),
                                               1e-3, 0))
    assert merged_at_43 > a43.objective * (1 + 1e-3) and apart_at_40 > a40.objective * (1 + 1e-3)
