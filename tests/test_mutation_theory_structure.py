"""nclab.theory.structure beyond the other suites (mutation testing, scripts/mutation.py theory): the secular basis
and its TiledGram (tiles, diagonal, fro, apply) against the dense Gram built by hand from numpy.linalg.eigh of
D - n n^T/N, Newton's convergence on the secular equation, the memory refusals (count of dense matrices, the
advice), integer multiplicities and indices, the rank-1 code margins, the JSON round trip and the descriptions."""

import json
import re

import numpy as np
import pytest

from nclab.theory import predict
from nclab.theory.structure import (
    DiagonalBasis,
    LowRankBasis,
    ProjectorBasis,
    SecularBasis,
    TiledGram,
    ZeroBasis,
    _secular,
    basis_from_dict,
    gram_from_dict,
    tiled_gram,
)

# distinct counts 7 > 5 > 3 > 2 > 1: roots in the gaps 0 (5, 7), 2 (2, 3), 3 (1, 2); blocks of three 5s and two 2s
COUNTS = np.array([5, 5, 5, 3, 2, 2, 7, 1], dtype=np.float64)
GAPS = [0, 2, 3]
BLOCKS = [[0, 1, 2], [4, 5]]
VALUES = np.array([1.7, 0.6, 2.3, 0.9, 1.3])  # 3 roots, then 2 blocks
SIDES = [("u", "u", False, False), ("v", "v", True, True), ("u", "v", False, True)]


def _dense_by_hand(counts, gaps, blocks, f, left_E, right_E):
    """(K, K) sum_roots f_r l_r r_r^T + sum_blocks f_b (I - 1 1^T/b), l_r = q_r (- (q_r . n/N) 1 when centred),
    q_r the eigh eigenvector of D - n n^T/N whose eigenvalue lies in the gap (c_{g+1}, c_g)."""
    n = np.asarray(counts, dtype=np.float64)
    N, K = n.sum(), n.size
    w, Q = np.linalg.eigh(np.diag(n) - np.outer(n, n) / N)
    cg = np.unique(n)[::-1]
    out = np.zeros((K, K))
    for fr, g in zip(f, gaps):
        sel = np.flatnonzero((w > cg[g + 1] + 1e-9) & (w < cg[g] - 1e-9))
        assert sel.size == 1
        q = Q[:, sel[0]]
        centred = q - (q @ n / N)
        out += fr * np.outer(centred if left_E else q, centred if right_E else q)
    for b, fb in zip(blocks, f[len(gaps):]):
        out[np.ix_(b, b)] += fb * (np.eye(len(b)) - 1.0 / len(b))
    return out


@pytest.mark.parametrize("sides", SIDES)
def test_secular_gram_tiles_diagonal_fro_and_apply_match_the_dense_gram(sides):
    basis = SecularBasis(COUNTS, GAPS, BLOCKS)
    want = _dense_by_hand(COUNTS, GAPS, BLOCKS, VALUES, sides[2], sides[3])
    G = TiledGram(basis, VALUES, *sides)
    K = COUNTS.size
    np.testing.assert_allclose(G.tile(np.arange(K), np.arange(K)), want, atol=1e-12)
    ia, ib = np.array([6, 2, 4, 0, 3]), np.array([5, 1, 2, 7, 4, 0])  # rows in, out of and across blocks
    np.testing.assert_allclose(G.tile(ia, ib), want[np.ix_(ia, ib)], atol=1e-12)
    np.testing.assert_allclose(G.diagonal(), np.diag(want), atol=1e-12)
    np.testing.assert_allclose(basis.diag(VALUES, *sides), np.diag(want), atol=1e-12)
    assert G.fro() == pytest.approx(np.linalg.norm(want), rel=1e-12)
    X = np.random.default_rng(0).standard_normal((K, 3))
    np.testing.assert_allclose(G.apply(X), want @ X, atol=1e-12)


def test_secular_tile_of_rows_outside_every_block():
    # rows 3, 6, 7 are in no block: the tile is the rank-r1 part alone
    basis = SecularBasis(COUNTS, GAPS, BLOCKS)
    want = _dense_by_hand(COUNTS, GAPS, BLOCKS, VALUES, False, False)
    ia = np.array([3, 6, 7])
    np.testing.assert_allclose(TiledGram(basis, VALUES).tile(ia, ia), want[np.ix_(ia, ia)], atol=1e-12)


def test_newton_finds_the_secular_roots_in_a_few_steps():
    # safeguarded Newton converges quadratically: 12 steps give the eigh eigenvalues to 1e-10 (bisection alone
    # would still be ~gap/2^13 away)
    n = COUNTS
    basis = SecularBasis(n, [], [])
    origin, sign, tau, _ = _secular(basis.cg, basis.mg, n.sum(), [0, 1, 2, 3], iters=12)
    w = np.linalg.eigvalsh(np.diag(n) - np.outer(n, n) / n.sum())
    want = np.sort(w[(w > 0.5) & ~np.isin(np.round(w, 9), n)])[::-1]  # the 4 non-count eigenvalues above 0
    np.testing.assert_allclose(origin + sign * tau, want, rtol=1e-10)


def test_prediction_layer_gram_tiles_match_the_dense_gram():
    p = predict([9, 9, 5, 5, 5, 2], depth=2, widths=[8, 8], lambda_w=1e-3, lambda_h=1e-3, bias=True)
    st = p.structure
    basis, h, sigma = st["basis"], np.asarray(st["values"]["HtH"]), np.asarray(st["sigma"], dtype=np.float64)
    blocks = [b.tolist() for b in basis.blocks]
    K = 6
    for j in (1, 2):
        mean = h * np.prod(sigma[: j - 1] ** 2, axis=0)  # mean_gram_j = h prod_{l<j} sigma_l^2, centred sides
        want = _dense_by_hand([9, 9, 5, 5, 5, 2], basis.gaps.tolist(), blocks, mean, True, True)
        np.testing.assert_allclose(tiled_gram(p, "mean_gram", layer=j).tile(np.arange(K), np.arange(K)), want,
                                   atol=1e-10)
    want = _dense_by_hand([9, 9, 5, 5, 5, 2], basis.gaps.tolist(), blocks, np.asarray(st["values"]["WWt"]),
                          False, False)
    np.testing.assert_allclose(tiled_gram(p, "WWt").tile(np.arange(K), np.arange(K)), want, atol=1e-10)


def _refusal(K):
    return [DiagonalBasis(K, np.arange(K)), SecularBasis(np.full(K, 3.0), [], [np.arange(K)]),
            ProjectorBasis(K, "simplex ETF")]


@pytest.mark.parametrize("which", [0, 1, 2])
def test_dense_refusal_advises_the_per_class_values(monkeypatch, which):
    monkeypatch.setenv("NCLAB_MEMORY_LIMIT", "1000")
    basis = _refusal(50)[which]
    with pytest.raises(ValueError, match=re.escape("; ask for the per-class values (Prediction.classes) instead")
                       + "$"):
        basis.dense(np.ones(basis.nmodes))


def test_memory_check_counts_each_dense_matrix(monkeypatch):
    # budget 0.8 * 150000 = 120000 bytes: one 100 x 100 float64 (80000) fits, two (160000) do not
    monkeypatch.setenv("NCLAB_MEMORY_LIMIT", "150000")
    Q, mode = DiagonalBasis(100, [3, 7]).vectors()
    np.testing.assert_array_equal(Q, np.eye(100)[:, [3, 7]])
    np.testing.assert_array_equal(mode, [0, 1])
    with pytest.raises(ValueError, match=re.escape("a K x K Gram (2 dense 100 x 100 float64) would need about "
                                                   "156 KiB")):
        SecularBasis(np.full(100, 3.0), [], [np.arange(100)]).dense([1.0])


@pytest.mark.parametrize("kw", [{"counts": [9, 7, 5, 2], "bias": True}, {"counts": [9, 7, 5, 2], "bias": False},
                                {"counts": [3, 3, 3], "bias": True}])
def test_multiplicities_are_integers_in_the_json(kw):
    p = predict(kw["counts"], depth=2, bias=kw["bias"])
    mult = json.loads(json.dumps(p.to_dict()))["structure"]["multiplicity"]
    assert mult and all(type(m) is int for m in mult)
    assert np.repeat(np.arange(len(mult)), p.structure["basis"].mult).size == sum(mult)


def test_indices_are_integers_even_when_empty_or_given_as_floats():
    doc = json.loads(json.dumps(predict([3, 3, 3], depth=2, bias=True).to_dict()))  # no roots, one block
    basis = basis_from_dict(doc)
    assert basis.cg[basis.gaps].size == 0
    loaded = SecularBasis([3.0, 3.0, 3.0], [], [np.array([0.0, 1.0, 2.0])])  # e.g. read by np.loadtxt
    np.testing.assert_allclose(loaded.dense([2.0]), 2.0 * (np.eye(3) - 1.0 / 3), atol=1e-15)


def test_vectors_give_one_mode_per_column():
    bases = [ZeroBasis(4), DiagonalBasis(4, [1, 3]), SecularBasis(COUNTS, GAPS, BLOCKS),
             ProjectorBasis(4, "cross-polytope")]
    for basis in bases:
        Q, mode = basis.vectors()
        assert Q.shape == (basis.K, mode.size)
        np.testing.assert_allclose(Q.T @ Q, np.eye(mode.size), atol=1e-12)


def test_rank1_code_margins_match_the_logits():
    K, z = 6, 1.2
    bias = np.array([0.1, -0.2, 0.5, 0.9, -0.3, 0.4])
    u = np.zeros(K)
    u[0], u[1] = 2**-0.5, -(2**-0.5)
    logits = z * np.outer(u, u) + bias[:, None]  # row j: logit of class j, column k: a sample of class k
    want = [logits[k, k] - np.delete(logits[:, k], k).max() for k in range(K)]
    np.testing.assert_allclose(ProjectorBasis(K, "rank-1 code").margins(z, bias), want, atol=1e-15)


def test_low_rank_json_with_integer_entries_reads_float_vectors():
    U, V = [[1, 0], [0, 1], [0, 0]], [[0, 1], [1, 0], [0, 0]]
    doc = {"problem": {"counts": [1, 1, 1]}, "structure": {"basis": {"kind": "low rank", "U": U, "V": V}}}
    basis = basis_from_dict(doc)
    for side in ("u", "v"):
        assert basis.vectors(side)[0].dtype == np.float64
    np.testing.assert_allclose(basis.dense([2.0, 3.0], "u", "v"), np.array(U) @ np.diag([2.0, 3.0]) @ np.array(V).T)


def test_layer_gram_name_message():
    doc = predict([9, 7, 5, 2], depth=2, bias=True).to_dict()
    with pytest.raises(ValueError, match="^" + re.escape("layer Grams are mean_gram, partial_gram, nc3_scale, "
                                                         "got 'WWt'") + "$"):
        gram_from_dict(doc, "WWt", layer=1)


def test_descriptions_name_the_matrices():
    assert "eigenvectors of D - n n^T/N" in SecularBasis(COUNTS, GAPS, BLOCKS).to_dict()["description"]
    low = LowRankBasis(np.eye(3)[:, :2], np.eye(3)[:, :2]).to_dict()["description"]
    assert low.startswith("Z = U diag(z) V^T")
