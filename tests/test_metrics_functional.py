"""The public functions of nclab.metrics.functional against hand-derived values and dense definitions, and the
collapsed-class flags of nc_metrics (per class and by label, with dropped classes)."""

import math

import numpy as np
import pytest

from nclab.metrics import (
    bias_collapse,
    cdnv,
    collapsed_classes,
    equiangularity,
    equinorm,
    gram_distance,
    nc1_from_scatter,
    nc1_projector,
    nc3,
    nc3_dual,
    nc_metrics,
    target_gram,
)
from nclab.metrics.functional import default_center, exp2, global_mean, named_target, normalized_distance, unit


def etf_rows(K):
    """K unit vectors in R^K with pairwise cosine -1/(K-1): the centred standard basis, normalized."""
    a = np.eye(K) - 1 / K
    return a / np.linalg.norm(a, axis=1, keepdims=True)


@pytest.mark.parametrize("scale", [1.0, 1e-300, 1e300, 3.0])
def test_exp2_and_unit(scale):
    a = np.array([[0.3, -2.0], [1.5, 0.0]]) * scale
    k = exp2(a)
    assert 0.5 <= np.abs(np.ldexp(a, -k)).max() < 1 and np.array_equal(unit(a), np.ldexp(a, -k))
    assert exp2(np.zeros(3)) == 0 and exp2(np.zeros(0)) == 0 and np.array_equal(unit(np.zeros(2)), np.zeros(2))
    assert exp2(np.array([1.0])) == 1 and exp2(np.array([0.5])) == 0 and exp2(np.array([0.75])) == 0


def test_global_mean_weighted_and_uniform():
    means = np.array([[0.0, 0.0], [3.0, 6.0]])
    assert np.allclose(global_mean(means, [2, 1]), [1.0, 2.0])  # (2 * 0 + 1 * 3) / 3
    assert np.allclose(global_mean(means, [2, 1], mode="uniform"), [1.5, 3.0])
    assert np.allclose(global_mean(means), [1.5, 3.0])
    with pytest.raises(ValueError):
        global_mean(means, [0, 0])


@pytest.mark.parametrize("K", [2, 3, 5])
def test_target_grams(K):
    etf = target_gram("etf", K)
    assert np.allclose(etf, (np.eye(K) - 1 / K) / math.sqrt(K - 1), atol=1e-15)
    assert np.allclose(target_gram("OF", K), np.eye(K) / math.sqrt(K), atol=1e-15)
    g = np.diag(np.arange(1.0, K + 1))
    assert np.allclose(target_gram(g, K), g / np.linalg.norm(g))
    assert np.allclose(target_gram(np.diag(np.arange(1.0, 8)), K, classes=list(range(K))),
                       g / np.linalg.norm(g))  # rows/columns of the kept classes of a full-range Gram
    with pytest.raises(ValueError):
        target_gram(np.zeros((K, K)), K)
    with pytest.raises(ValueError):
        target_gram("gof", K)


def test_named_target_and_default_center():
    assert named_target("auto", np.ones((2, 2)), np.ones(2)) == "etf"
    assert named_target("auto", None, None) == "etf"
    assert named_target("AUTO", np.ones((2, 2)), None) == "of"
    assert named_target("of", None, np.ones(2)) == "of"
    assert default_center("ETF") and not default_center("of") and not default_center(np.eye(2))


def test_normalized_distance_by_hand():
    assert normalized_distance(np.eye(2), 5 * np.eye(2)) == 0
    assert normalized_distance(np.eye(2), -np.eye(2)) == pytest.approx(2.0, rel=1e-15)
    # orthogonal unit directions: sqrt(2)
    assert normalized_distance(np.array([[1.0, 0]]), np.array([[0, 3.0]])) == pytest.approx(math.sqrt(2), rel=1e-15)
    assert math.isnan(normalized_distance(np.zeros((2, 2)), np.eye(2)))
    assert math.isnan(normalized_distance(np.eye(2), np.zeros((2, 2))))


def test_gram_distance_by_hand():
    K = 3
    assert gram_distance(etf_rows(K) * 7, "etf") == pytest.approx(0, abs=1e-15)
    # centring the standard basis gives the ETF: 0 with centring, sqrt(2 - 4/sqrt(6)) without (hand-derived)
    assert gram_distance(np.eye(K), "etf") == pytest.approx(0, abs=1e-15)
    assert gram_distance(np.eye(K), "etf", center=False) == pytest.approx(math.sqrt(2 - 4 / math.sqrt(6)), rel=1e-14)
    assert gram_distance(np.eye(K), "of") == pytest.approx(0, abs=1e-15)
    # weighted centring: with counts the global mean moves, the centred rows are no longer an ETF
    a = np.eye(K)
    mu = np.array([2, 1, 1]) / 4 @ a
    c = a - mu
    want = normalized_distance(c @ c.T, (np.eye(K) - 1 / K))
    assert want > 0.05 and gram_distance(a, "etf", counts=[2, 1, 1]) == pytest.approx(want, rel=1e-13)
    with pytest.raises(TypeError):
        gram_distance(a, "etf", center="yes")


def test_equinorm_and_equiangularity_by_hand():
    v = np.array([[1.0, 0], [0, 2.0], [3.0, 0]])
    assert equinorm(v) == pytest.approx(math.sqrt(2 / 3) / 2, rel=1e-14)  # population std of 1, 2, 3 over mean 2
    assert math.isnan(equinorm(np.zeros((2, 2))))
    assert equiangularity(np.eye(3), "etf") == pytest.approx(0.5, rel=1e-15)  # |0 - (-1/2)| for every pair
    assert equiangularity(np.eye(3), "of") == 0 and equiangularity(etf_rows(4), "etf") == pytest.approx(0, abs=1e-15)
    # a zero vector drops its pairs: only the pair (0, 1) is left, cos 0 against -1/2
    assert equiangularity(np.array([[1.0, 0], [0, 1.0], [0, 0]]), "etf") == pytest.approx(0.5, rel=1e-15)
    g = np.array([[1.0, 0.5, 0], [0.5, 1.0, 0], [0, 0, 0]])  # explicit Gram with a collapsed third class
    assert equiangularity(np.array([[1.0, 0], [0, 1.0], [1.0, 1.0]]), g) == pytest.approx(0.5, rel=1e-15)
    assert math.isnan(equiangularity(np.zeros((3, 2)), "etf"))


def test_cdnv_by_hand():
    mean, mat = cdnv(np.array([[0.0, 0], [2.0, 0], [0, 4.0]]), [1.0, 3.0, 5.0])
    pairs = {(0, 1): (1 + 3) / (2 * 4), (0, 2): (1 + 5) / (2 * 16), (1, 2): (3 + 5) / (2 * 20)}
    for (k, l), v in pairs.items():
        assert mat[k, l] == pytest.approx(v, rel=1e-14) and mat[l, k] == mat[k, l]
    assert np.all(np.diag(mat) == 0) and mean == pytest.approx(np.mean(list(pairs.values())), rel=1e-14)
    m2, mat2 = cdnv(np.array([[1.0, 1.0], [1.0, 1.0], [0, 0]]), [1.0, 0.0, 0.0])
    assert mat2[0, 1] == np.inf and math.isfinite(mat2[0, 2])
    _, mat3 = cdnv(np.array([[1.0, 1.0], [1.0, 1.0]]), [0.0, 0.0])
    assert math.isnan(mat3[0, 1])
    with pytest.raises(ValueError):
        cdnv(np.eye(2), [1.0, -1.0])


def test_nc3_and_nc3_dual_by_hand():
    H = etf_rows(4)
    assert nc3(H, H, "etf") == pytest.approx(0, abs=1e-15)
    assert nc3(3 * H, H / 5, "etf") == pytest.approx(0, abs=1e-15)
    assert nc3(-H, H, "etf") == pytest.approx(2, rel=1e-14)
    assert nc3_dual(2 * H, H) == pytest.approx(0, abs=1e-15)
    C = np.diag([1.0, 2.0, 3.0, 4.0])
    assert nc3_dual(C @ H, H, scale=C) == pytest.approx(0, abs=1e-15)
    want = np.linalg.norm(H / np.linalg.norm(H) - C @ H / np.linalg.norm(C @ H))
    assert want > 0.1 and nc3_dual(H, H, scale=C) == pytest.approx(want, rel=1e-13)
    with pytest.raises(ValueError):
        nc3(H, H[:, :2])
    with pytest.raises(ValueError):
        nc3_dual(H, H[:, :2])


def test_bias_collapse_by_hand():
    W, mu = np.array([[1.0, 0], [0, 1.0]]), np.array([0.2, 0.3])
    pi = np.array([3, 1]) / 4
    assert bias_collapse(W, pi - W @ mu, mu, [3, 1]) == pytest.approx(0, abs=1e-16)
    assert bias_collapse(W, np.zeros(2), mu, [3, 1]) == pytest.approx(
        np.linalg.norm(W @ mu - pi) / np.linalg.norm(pi), rel=1e-14)
    assert bias_collapse(np.zeros((2, 2)), np.zeros(2), mu, [1, 1]) == pytest.approx(1.0, rel=1e-15)
    with pytest.raises(ValueError):
        bias_collapse(W, np.zeros(2), mu, [0, 0])


def test_collapsed_classes_by_hand():
    means = np.array([[1.0, 0], [0, 2.0], [1e-4, 0], [2e-3, 0]])  # max norm 2, rtol 1e-3 -> threshold 2e-3
    assert collapsed_classes(means).tolist() == [False, False, True, True]  # <= threshold counts
    assert collapsed_classes(means, rtol=1e-5).tolist() == [False, False, False, False]
    W = np.array([[1.0, 0], [0, 1.0], [1e-9, 0], [1.0, 1.0]])  # class 3's classifier row is not collapsed
    assert collapsed_classes(means, W).tolist() == [False, False, True, False]
    assert collapsed_classes(means * 1e-300, W * 1e300).tolist() == [False, False, True, False]


def test_nc_metrics_collapsed_flags_per_class_and_by_label():
    """Minority collapse by construction: classes 1 and 3 have (numerically) zero means and classifier rows."""
    rng = np.random.default_rng(0)
    centers = np.array([[3.0, 0, 0], [1e-6, 0, 0], [0, 3.0, 0], [0, 0, 1e-7]])
    y = np.repeat(np.arange(4), 5)
    H = centers[y] + 1e-9 * rng.standard_normal((20, 3))
    W = np.array([[1.0, 0, 0], [1e-5, 0, 0], [0, 1.0, 0], [0, 0, 0.0]])
    m = nc_metrics(H, y, W, target="of")
    assert m.per_class["collapsed"] == [False, True, False, True] and m.info["collapsed"] == [1, 3]
    m2 = nc_metrics(H, y, W, target="of", collapse_rtol=1e-7)  # a tighter threshold: only class 3
    assert m2.per_class["collapsed"] == [False, False, False, True] and m2.info["collapsed"] == [3]
    W2 = W.copy()
    W2[1] = [0, 0, 2.0]  # class 1's classifier row is large: not collapsed
    assert nc_metrics(H, y, W2, target="of").info["collapsed"] == [3]
    # labels 0, 2, 5, 7 (classes 1, 3, 4, 6 without samples): the flags name the labels
    labels = np.array([0, 2, 5, 7])[y]
    Wfull = np.zeros((8, 3))
    Wfull[[0, 2, 5, 7]] = W
    with pytest.warns(UserWarning):
        m3 = nc_metrics(H, labels, Wfull, target="of")
    assert m3.info["collapsed"] == [2, 7] and m3.per_class["collapsed"] == [False, True, False, True]


@pytest.mark.parametrize("counts", [[4, 4, 4], [9, 3, 2]])
def test_nc1_projector_and_scatter_against_the_dense_definition(counts):
    rng = np.random.default_rng(3)
    K, D = len(counts), 5
    y = np.repeat(np.arange(K), counts)
    H = rng.standard_normal((K, D))[y] + 0.2 * rng.standard_normal((len(y), D))
    N = len(y)
    mu = np.stack([H[y == k].mean(0) for k in range(K)])
    mu_g = np.asarray(counts) @ mu / N
    Sw = (H - mu[y]).T @ (H - mu[y]) / N
    Sb = (mu - mu_g).T @ (mu - mu_g) / K
    want = np.trace(Sw @ np.linalg.pinv(Sb, rcond=1e-10, hermitian=True)) / K
    P, s, r, g = nc1_projector(mu, counts)
    assert r == K - 1 and P.shape == (D, K - 1) and np.allclose(g, mu_g, rtol=1e-13)
    assert np.allclose(s[: K - 1], np.linalg.svd(mu - mu_g, compute_uv=False)[: K - 1], rtol=1e-12)
    S = (H - mu[y]).T @ (H - mu[y])
    assert nc1_from_scatter(S, P, N) == pytest.approx(want, rel=1e-10)
    # uniform global mean: the dense definition with the mean of the means
    Pu, _, _, gu = nc1_projector(mu, counts, mode="uniform")
    Sbu = (mu - mu.mean(0)).T @ (mu - mu.mean(0)) / K
    assert np.allclose(gu, mu.mean(0)) and nc1_from_scatter(S, Pu, N) == pytest.approx(
        np.trace(Sw @ np.linalg.pinv(Sbu, rcond=1e-10, hermitian=True)) / K, rel=1e-10)


def test_nc1_projector_rank_rules():
    # two equal class means: rank 1 of K - 1 = 2; the tolerance decides what counts as zero
    mu = np.array([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0]])
    assert nc1_projector(mu, [1, 1, 1])[2] == 1
    mu2 = np.array([[1.0, 0, 0], [1.0 + 1e-8, 0, 0], [0, 1.0, 0]])
    assert nc1_projector(mu2, [1, 1, 1])[2] == 1  # 1e-8 spread < 1e-6 relative: dropped
    assert nc1_projector(mu2, [1, 1, 1], rtol=1e-10)[2] == 2
    assert nc1_projector(np.ones((3, 2)), [1, 1, 1])[2] == 0  # all means equal: no spread
    P = nc1_projector(np.eye(4), [1, 1, 1, 1])[0]
    assert P.shape == (4, 3)  # never more than K - 1 columns (the K-th singular value is round-off)
    assert nc1_from_scatter(np.eye(3), np.zeros((3, 0)), 5) == 0.0
    assert nc1_from_scatter(-np.eye(2), np.eye(2), 1) == 0.0  # clipped at 0
    assert nc1_from_scatter(2 * np.eye(2), np.eye(2), 4) == pytest.approx(1.0)  # tr(P^T S P)/N = 4/4
    with pytest.raises(ValueError):
        nc1_from_scatter(np.ones((2, 3)), np.eye(2), 1)
    with pytest.raises(ValueError):
        nc1_from_scatter(np.eye(2), np.eye(3), 1)
    with pytest.raises(ValueError):
        nc1_from_scatter(np.eye(2), np.full((2, 1), np.nan), 1)


def test_second_pass_merged_equals_one_pass_and_counts_nc4_by_hand():
    """Two second passes over halves, merged, give the NC4/accuracy of one pass; the counts are checked against
    argmax and nearest-class-centre predictions computed here."""
    from nclab.metrics import ClassStats

    rng = np.random.default_rng(5)
    K, D = 3, 4
    y = np.repeat(np.arange(K), 8)
    H = rng.standard_normal((K, D))[y] + 0.8 * rng.standard_normal((len(y), D))
    W, b = rng.standard_normal((K, D)), rng.standard_normal(K)
    stats = ClassStats(K).update(H, y)
    one = stats.second_pass(W, b).update(H, y)
    a, c = stats.second_pass(W, b).update(H[::2], y[::2]), stats.second_pass(W, b).update(H[1::2], y[1::2])
    merged = a.merge(c)
    assert np.array_equal(merged.n4.numpy(), one.n4.numpy())
    assert np.allclose(merged.q.numpy(), one.q.numpy(), rtol=1e-12) and np.allclose(merged.m2.numpy(),
                                                                                    one.m2.numpy(), rtol=1e-12)
    mu = np.stack([H[y == k].mean(0) for k in range(K)])
    am = (H @ W.T + b).argmax(1)
    ncc = ((H[:, None, :] - mu[None]) ** 2).sum(2).argmin(1)
    assert one.n4.tolist() == [len(y), int((ncc != am).sum()), int((ncc == y).sum()), int((am == y).sum())]
    m = stats.compute(W, b, second=merged)
    assert m["nc4"] == pytest.approx(np.mean(ncc != am)) and m["accuracy"] == pytest.approx(np.mean(am == y))
    assert m["ncc_accuracy"] == pytest.approx(np.mean(ncc == y))
    with pytest.raises(TypeError):
        one.merge(stats)
    with pytest.raises(ValueError):
        one.merge(ClassStats(K + 1).update(np.vstack([H, H[:1]]), np.r_[y, K]).second_pass())


def test_nc3_with_fewer_classes_than_dimensions():
    rng = np.random.default_rng(8)
    H = rng.standard_normal((3, 5))
    assert nc3(2 * H, H, np.eye(3) + 0.0) == pytest.approx(normalized_distance(H @ H.T, np.eye(3)), rel=1e-13)


@pytest.mark.parametrize("call, name", [
    (lambda: nc3(np.ones((1, 2)), np.ones((1, 2))), "weights"),
    (lambda: nc3(np.ones((2, 2)), np.ones((1, 2))), "means"),
    (lambda: nc3_dual(np.ones((2, 2)), np.ones((2, 3))), "same shape"),
    (lambda: nc3(np.ones((2, 2)), np.ones((2, 3))), "same shape"),
    (lambda: collapsed_classes(np.ones((2, 2)), rtol=2.0), "rtol"),
    (lambda: collapsed_classes(np.full((2, 2), np.nan)), "means"),
    (lambda: collapsed_classes(np.ones((2, 2)), np.ones((3, 2))), "W"),
    (lambda: nc1_from_scatter(np.eye(2), np.eye(2), 0), "n"),
    (lambda: cdnv(np.ones((1, 2)), [1.0]), "means"),
    (lambda: cdnv(np.eye(2), [1.0]), "variances"),
    (lambda: bias_collapse(np.eye(2), [1.0], np.ones(2), [1, 1]), "bias"),
    (lambda: bias_collapse(np.eye(2), np.ones(2), np.ones(3), [1, 1]), "mean"),
    (lambda: bias_collapse(np.eye(2), np.ones(2), np.ones(2), [1]), "counts"),
    (lambda: target_gram(np.eye(3), 2), "2 x 2"),
    (lambda: equinorm(np.ones((1, 2))), "vectors"),
])
def test_validation_names_the_argument(call, name):
    with pytest.raises(ValueError) as e:
        call()
    assert name in str(e.value), str(e.value)
