"""nclab.metrics against a slow, obvious float64 implementation and against analytic fixtures."""

import numpy as np
import pytest
import torch

from nclab.metrics import ClassStats, deep_head_metrics, nc_metrics


# --- slow reference: loops over samples, dense pinv by eigenvalue clipping -------------------------
def ref_metrics(H, y, K, W=None, b=None, rtol=1e-6, mode="weighted", within="pooled", target="etf"):
    H = np.asarray(H, dtype=np.float64)
    classes = [k for k in range(K) if (y == k).sum() > 0]
    Ke, N, D = len(classes), len(y), H.shape[1]
    mu = {k: H[y == k].sum(0) / (y == k).sum() for k in classes}
    n = {k: int((y == k).sum()) for k in classes}
    if mode == "weighted":
        muG = sum(n[k] * mu[k] for k in classes) / N
    else:
        muG = sum(mu[k] for k in classes) / Ke
    Sw = np.zeros((D, D))
    per_class_sw = {k: np.zeros((D, D)) for k in classes}
    for i in range(N):
        d = H[i] - mu[y[i]]
        per_class_sw[y[i]] += np.outer(d, d)
    if within == "pooled":
        Sw = sum(per_class_sw.values()) / N
    else:
        Sw = sum(per_class_sw[k] / n[k] for k in classes) / Ke
    Sb = sum(np.outer(mu[k] - muG, mu[k] - muG) for k in classes) / Ke
    lam, V = np.linalg.eigh(Sb)
    keep = lam > rtol**2 * lam.max()
    Sb_pinv = (V[:, keep] / lam[keep]) @ V[:, keep].T
    out = {"nc1": np.trace(Sw @ Sb_pinv) / Ke, "nc1_trace": np.trace(Sw) / np.trace(Sb), "rank": keep.sum()}
    var = {k: np.trace(per_class_sw[k]) / n[k] for k in classes}
    pairs = [(k, l) for a, k in enumerate(classes) for l in classes[a + 1:]]
    out["cdnv"] = np.mean([(var[k] + var[l]) / (2 * np.sum((mu[k] - mu[l]) ** 2)) for k, l in pairs])
    M = np.array([mu[k] - muG if target == "etf" else mu[k] for k in classes])
    G = np.eye(Ke) - 1 / Ke if target == "etf" else np.eye(Ke)
    G = G / np.linalg.norm(G)

    def gd(A):
        g = A @ A.T
        return np.linalg.norm(g / np.linalg.norm(g) - G)

    def cv(A):
        r = np.linalg.norm(A, axis=1)
        return r.std() / r.mean()

    def ang(A):
        ref = -1 / (Ke - 1) if target == "etf" else 0.0
        c = [A[i] @ A[j] / np.linalg.norm(A[i]) / np.linalg.norm(A[j]) for i in range(Ke) for j in range(i + 1, Ke)]
        return np.mean(np.abs(np.array(c) - ref))

    # equinorm_h is the CV of ||mu_k - mu_G|| whatever the target (issue 14: one formula per name)
    out.update(nc2_h=gd(M), equinorm_h=cv(np.array([mu[k] - muG for k in classes])), equiangular_h=ang(M))
    if W is not None:
        Wk = np.asarray(W, dtype=np.float64)[classes]
        out.update(nc2_w=gd(Wk), equinorm_w=cv(Wk), equiangular_w=ang(Wk))
        X = Wk @ M.T
        out["nc3"] = np.linalg.norm(X / np.linalg.norm(X) - G)
        out["nc3_dual"] = np.linalg.norm(Wk / np.linalg.norm(Wk) - M / np.linalg.norm(M))
        bb = np.zeros(Ke) if b is None else np.asarray(b, dtype=np.float64)[classes]
        mism = 0
        for i in range(N):
            ncc = np.argmin([np.sum((H[i] - mu[k]) ** 2) for k in classes])
            mism += ncc != np.argmax(Wk @ H[i] + bb)
        out["nc4"] = mism / N
        if b is not None:
            pi = np.array([n[k] for k in classes]) / N
            out["bias_collapse"] = np.linalg.norm(Wk @ (sum(n[k] * mu[k] for k in classes) / N) + bb - pi) \
                / np.linalg.norm(pi)
    return out


def random_data(seed, K=5, D=12, counts=(30, 10, 25, 7, 40), sigma=0.3, offset=0.0):
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.full(c, k) for k, c in enumerate(counts)])
    rng.shuffle(y)
    mu = rng.standard_normal((K, D)) + offset
    H = mu[y] + sigma * rng.standard_normal((len(y), D))
    W = rng.standard_normal((K, D))
    b = rng.standard_normal(K)
    return H, y, W, b


def check_close(m, ref, rel=1e-9):
    for k, v in ref.items():
        if k == "rank":
            assert m.info["rank"] == v
        else:
            assert m[k] == pytest.approx(v, rel=rel, abs=1e-12), k


@pytest.mark.parametrize("mode", ["weighted", "uniform"])
@pytest.mark.parametrize("within", ["pooled", "class_mean"])
@pytest.mark.parametrize("target", ["etf", "of"])
def test_one_shot_matches_reference(mode, within, target):
    H, y, W, b = random_data(1)
    ref = ref_metrics(H, y, 5, W, b, mode=mode, within=within, target=target)
    m = nc_metrics(H, y, W, b, global_mean=mode, within=within, target=target)
    check_close(m, ref)
    assert sum(m.per_class["nc1"]) == pytest.approx(m["nc1"], rel=1e-12)


def test_k_greater_than_d_matches_reference():
    H, y, W, b = random_data(2, K=6, D=3, counts=(5, 6, 7, 8, 9, 10))
    ref = ref_metrics(H, y, 6, W, b)
    m = nc_metrics(H, y, W, b)
    assert m.info["rank"] == 3
    check_close(m, ref)


@pytest.mark.parametrize("moments", ["scatter", "trace"])
def test_streaming_with_merges_equals_one_shot(moments):
    H, y, W, b = random_data(3, offset=5.0)
    one = nc_metrics(H, y, W, b)
    rng = np.random.default_rng(0)
    cuts = np.sort(rng.choice(np.arange(1, len(y)), 6, replace=False))
    parts = [ClassStats(5, moments=moments) for _ in range(3)]
    for i, (lo, hi) in enumerate(zip(np.r_[0, cuts], np.r_[cuts, len(y)])):
        parts[i % 3].update(torch.tensor(H[lo:hi], dtype=torch.float32 if i == 2 else torch.float64), y[lo:hi])
    # batch 2 went in as float32: compare against the same rounding
    H_used = H.copy()
    lo, hi = np.r_[0, cuts][2], np.r_[cuts, len(y)][2]
    H_used[lo:hi] = H[lo:hi].astype(np.float32)
    one = nc_metrics(H_used, y, W, b)
    stats = parts[0].merge(parts[1]).merge(parts[2])
    if moments == "scatter":
        streamed = stats.compute(W, b)
        for k in ("nc1", "nc1_trace", "cdnv", "nc2_h", "nc2_w", "nc3", "bias_collapse"):
            assert streamed[k] == pytest.approx(one[k], rel=1e-10), k
        assert np.isnan(streamed["nc4"]) and "second pass" in streamed.reasons["nc4"]
    second = stats.second_pass(W, b)
    for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(y)]):
        second.update(H_used[lo:hi], y[lo:hi])
    both = stats.compute(W, b, second=second)
    for k, v in one.values.items():
        assert both[k] == pytest.approx(v, rel=1e-10), k
    np.testing.assert_allclose(both.per_class["nc1"], one.per_class["nc1"], rtol=1e-10)


def test_reset_and_scatter_is_centred():
    H, y, *_ = random_data(4, offset=1e4)
    s = ClassStats(5).update(H, y)
    ref = sum(np.outer(h - H[y == yy].mean(0), h - H[y == yy].mean(0)) for h, yy in zip(H, y))
    np.testing.assert_allclose(s.scatter.numpy(), ref, rtol=1e-7, atol=1e-9 * np.abs(ref).max())
    s.reset()
    assert s.num_samples == 0 and float(s.scatter.abs().sum()) == 0


# --- analytic fixtures -------------------------------------------------------------------------------
def etf_means(K, D, rng):
    Q, _ = np.linalg.qr(rng.standard_normal((D, K)))
    E = np.sqrt(K / (K - 1)) * (np.eye(K) - 1 / K)  # unit-norm simplex vectors as rows
    return E @ Q.T  # (K, D)


def plus_minus_samples(means, sigma):
    """Each class: mu_k +- sigma sqrt(D) e_d for every d, so Sigma_W = sigma^2 I exactly."""
    K, D = means.shape
    a = sigma * np.sqrt(D)
    H = np.concatenate([np.concatenate([m + a * np.eye(D), m - a * np.eye(D)]) for m in means])
    y = np.repeat(np.arange(K), 2 * D)
    return H, y


@pytest.mark.parametrize("sigma", [0.0, 1e-3, 0.1])
def test_etf_fixture_known_nc1(sigma):
    K, D = 5, 8
    means = etf_means(K, D, np.random.default_rng(0)) + 3.0  # offset: centring must remove it
    H, y = plus_minus_samples(means, sigma)
    m = nc_metrics(H, y, means - means.mean(0), np.full(K, 1 / K) - (means - means.mean(0)) @ means.mean(0))
    assert m["nc1"] == pytest.approx(sigma**2 * (K - 1) ** 2 / K, rel=1e-10, abs=1e-15)
    assert m["nc1_trace"] == pytest.approx(sigma**2 * D / (1 / K * K), rel=1e-10, abs=1e-15)
    for k in ("nc2_h", "nc2_w", "equinorm_h", "equinorm_w", "equiangular_h", "nc3", "nc3_dual", "bias_collapse"):
        assert abs(m[k]) < 1e-12, k
    assert m["nc4"] == 0 and m["nc1"] >= 0
    assert m.info["rank"] == K - 1


def test_orthogonal_frame_and_gof_fixtures():
    K, D = 4, 6
    rng = np.random.default_rng(1)
    Q, _ = np.linalg.qr(rng.standard_normal((D, K)))
    s = np.array([4.0, 2.0, 1.0, 0.5])
    means_of, means_gof = 2 * Q.T, np.sqrt(s)[:, None] * Q.T
    H, y = plus_minus_samples(means_of, 0.0)
    m = nc_metrics(H, y, means_of, target="of")
    assert m["nc2_h"] < 1e-12 and m["nc3"] < 1e-12 and m["equiangular_w"] < 1e-12 and 0 <= m["nc1"] < 1e-25
    H, y = plus_minus_samples(means_gof, 0.0)
    C = np.diag(1 / s)
    m = nc_metrics(H, y, means_gof * s[:, None] ** 0, target=np.diag(s), nc3_scale=C @ np.diag(s))
    assert m["nc2_h"] < 1e-12 and m["equiangular_h"] < 1e-12 and m["nc3_dual"] < 1e-12
    assert m["equinorm_h"] > 0.1  # GOF means are not equinorm
    assert m.info["center"] is False


def test_collapsed_regime_float32():
    """float32 features, within-class noise 1e-5: NC1 within 1e-6 relative of the float64 answer."""
    K, D, n = 10, 64, 200
    rng = np.random.default_rng(5)
    means = etf_means(K, D, rng) + 0.5 * rng.standard_normal(D)  # non-zero global mean
    y = np.repeat(np.arange(K), n)
    H32 = (means[y] + 1e-5 * rng.standard_normal((K * n, D))).astype(np.float32)
    ref = ref_metrics(H32.astype(np.float64), y, K)
    m = nc_metrics(torch.from_numpy(H32), y)
    assert m["nc1"] == pytest.approx(ref["nc1"], rel=1e-6)
    assert m["nc1_trace"] == pytest.approx(ref["nc1_trace"], rel=1e-6)
    s = ClassStats(K)
    for i in range(0, K * n, 300):
        s.update(torch.from_numpy(H32[i:i + 300]), y[i:i + 300])
    assert s.compute()["nc1"] == pytest.approx(ref["nc1"], rel=1e-6)
    # the naive float32 one-pass E[x^2] - mu^2 is nowhere near (why the engine centres in float64)
    x, x64 = torch.from_numpy(H32), H32.astype(np.float64)
    naive = sum(float(((x[y == k] ** 2).mean(0) - x[y == k].mean(0) ** 2).sum()) for k in range(K)) / K
    exact = sum(x64[y == k].var(0).sum() for k in range(K)) / K
    assert abs(naive / exact - 1) > 0.5


def test_exact_collapse_gives_zero_and_deep_head_layers():
    K, D = 4, 6
    means = etf_means(K, D, np.random.default_rng(2))
    y = np.repeat(np.arange(K), 3)
    H = means[y]
    rng = np.random.default_rng(3)
    ws = [rng.standard_normal((D, D)), rng.standard_normal((5, D)), rng.standard_normal((K, 5))]
    dh = deep_head_metrics(H, y, ws, target="etf")
    assert len(dh) == 3 and [m.info["layer"] for m in dh.layers] == [1, 2, 3]
    # every layer's classifier gives the same logits H W1^T W2^T W3^T; the class means stay distinct, so the
    # nearest class mean is the sample's own class and NC4 is the fraction the random classifier gets wrong
    wrong = float(np.mean((H @ ws[0].T @ ws[1].T @ ws[2].T).argmax(1) != y))
    assert 0 < wrong < 1
    for m in dh.layers:
        assert m["nc1"] < 1e-20 and m["nc4"] == wrong, (m.info["layer"], m["nc1"], m["nc4"])
    # layer 2 equals nc_metrics on the explicitly mapped features with W3 W2
    H2 = H @ ws[0].T
    ref = ref_metrics(H2, y, K, ws[2] @ ws[1])
    for k in ("nc2_h", "nc2_w", "nc3", "nc4"):
        assert dh[1][k] == pytest.approx(ref[k], rel=1e-9, abs=1e-12), k


def test_nc1_never_negative_near_collapse():
    rng = np.random.default_rng(7)
    for sigma in (0.0, 1e-12, 1e-8):
        H, y, W, b = random_data(int(rng.integers(1000)), sigma=sigma)
        s = ClassStats(5).update(torch.tensor(H, dtype=torch.float32), y)
        assert s.compute()["nc1"] >= 0
        assert nc_metrics(H, y)["nc1"] >= 0
