"""Branches of nclab.theory the other tests do not reach (issue 15): structured bases checked against the dense
construction, the memory budget's sources and refusal, argument checks, and solver paths that only large K takes
(reached here at small K, compared with a dense reference)."""

import math

import numpy as np
import pytest
import torch

from nclab import predict
from nclab.theory import ce, make_problem, mse, resources, scalar
from nclab.theory import structure as st
from nclab.theory.objective import _check_torch_args, ufm_objective_torch


# ---------------------------------------------------------------------------------------------- dense references
def polygon_projector(K):
    """Pi_kl = (2/K) cos(2 pi (k - l)/K), written entrywise."""
    k = np.arange(K)
    return (2.0 / K) * np.cos(2 * np.pi * (k[:, None] - k[None, :]) / K)


def cross_polytope_projector(K):
    """Blocks [[1/2, -1/2], [-1/2, 1/2]] on the class pairs (2i, 2i+1)."""
    P = np.zeros((K, K))
    for i in range(K // 2):
        P[2 * i:2 * i + 2, 2 * i:2 * i + 2] = [[0.5, -0.5], [-0.5, 0.5]]
    return P


def rank1_projector(K):
    P = np.zeros((K, K))
    P[:2, :2] = [[0.5, -0.5], [-0.5, 0.5]]
    return P


PROJECTORS = {"simplex ETF": lambda K: np.eye(K) - np.ones((K, K)) / K, "cross-polytope": cross_polytope_projector,
              "regular polygon": polygon_projector, "rank-1 code": rank1_projector}


def dense_margins(Z, bias):
    """Own logit minus the best other logit of every class (column k = the logits of class k's mean)."""
    L = Z + (0.0 if bias is None else np.asarray(bias)[:, None])
    own = np.diag(L).copy()
    other = L.copy()
    np.fill_diagonal(other, -np.inf)
    return own - other.max(axis=0)


# ---------------------------------------------------------------------------------------------- structure.py
@pytest.mark.parametrize("name,K", [(name, K) for name in PROJECTORS for K in (2, 6, 7)
                                    if not (name == "cross-polytope" and K % 2 or name == "regular polygon" and K < 3)])
def test_projector_basis_equals_its_dense_projector(name, K):
    ref = PROJECTORS[name](K)
    b = st.ProjectorBasis(K, name)
    np.testing.assert_allclose(b.dense([2.5]), 2.5 * ref, atol=1e-14)
    np.testing.assert_allclose(b.diag([2.5]), 2.5 * np.diag(ref), atol=1e-14)
    Q, mode = b.vectors()
    assert Q.shape[1] == b.rank == np.linalg.matrix_rank(ref) and (mode == 0).all()
    np.testing.assert_allclose(Q.T @ Q, np.eye(b.rank), atol=1e-13)  # orthonormal
    np.testing.assert_allclose(Q @ Q.T, ref, atol=1e-13)
    assert b.to_dict()["rank"] == b.rank


@pytest.mark.parametrize("name,K", [("simplex ETF", 5), ("cross-polytope", 2), ("cross-polytope", 6),
                                    ("regular polygon", 7), ("rank-1 code", 2), ("rank-1 code", 3),
                                    ("rank-1 code", 6)])
def test_projector_margins_equal_dense_logits(name, K):
    z = 1.7
    rng = np.random.default_rng(K)
    # the rank-1 code carries a bias (the classes off the code are told apart by it); the others are balanced
    biases = [None, rng.normal(size=K), np.r_[0.3, -0.2, np.full(K - 2, 0.1)]] if name == "rank-1 code" else [None]
    for bias in biases:
        got = st.ProjectorBasis(K, name).margins(z, bias)
        np.testing.assert_allclose(got, dense_margins(z * PROJECTORS[name](K), bias), atol=1e-13)


def test_unknown_projector_is_refused():
    with pytest.raises(ValueError, match="unknown projector 'hexagon'"):
        st._projector_vectors("hexagon", 6)


def test_low_rank_and_zero_bases_equal_their_dense_forms():
    rng = np.random.default_rng(0)
    U, _ = np.linalg.qr(rng.normal(size=(5, 2)))
    V, _ = np.linalg.qr(rng.normal(size=(5, 2)))
    f = np.array([3.0, 0.5])
    b = st.LowRankBasis(U, V)
    np.testing.assert_allclose(b.dense(f, "u", "v"), U @ np.diag(f) @ V.T, atol=1e-14)
    np.testing.assert_allclose(b.diag(f, "v", "v"), np.diag(V @ np.diag(f) @ V.T), atol=1e-14)
    assert b.vectors("v")[0] is V and list(b.vectors("u")[1]) == [0, 1]
    z = st.ZeroBasis(4)
    assert z.nmodes == 0 and not z.dense([]).any() and z.dense([]).shape == (4, 4)
    assert not z.diag([]).any() and z.vectors()[0].shape == (4, 0)


def test_abstract_basis_methods_are_not_implemented():
    b = st.Basis()
    for call in (lambda: b.dense([1.0]), lambda: b.diag([1.0]), b.vectors, b.to_dict):
        with pytest.raises(NotImplementedError):
            call()


def test_secular_margins_refuse_a_group_grid_too_large_to_tile():
    """G^2 r > 4e9 (G = 63,300 distinct counts, one root): margins give None instead of hours of work."""
    counts = np.arange(1, 63_301)
    b = st.SecularBasis(counts, [0], [])
    assert b.cg.size == 63_300 and b.margins(np.ones(1), None) is None
    small = st.SecularBasis([3, 2, 1], [0], [])
    assert small.margins(np.ones(1), None) is not None


def test_secular_iteration_cap_keeps_the_root_bracketed():
    """With too few Newton/bisection steps the root estimate stays in its half gap (0, gap/2] and improves
    with more steps; the converged root solves the secular equation of the dense matrix."""
    counts = np.array([9.0, 4.0, 4.0, 1.0])
    cg, mg, N = np.array([9.0, 4.0, 1.0]), np.array([1.0, 2.0, 1.0]), counts.sum()
    mu_dense = np.linalg.eigvalsh(np.diag(counts) - np.outer(counts, counts) / N)
    errs = []
    for iters in (1, 2, 200):
        o, s, tau, _ = st._secular(cg, mg, N, [0, 1], iters=iters)
        gap = cg[:2] - cg[1:]
        assert ((tau > 0) & (tau <= gap / 2)).all()
        mu = o + s * tau
        errs.append(np.abs(mu[:, None] - mu_dense[None, :]).min(1).max())
    assert errs[2] < 1e-12 and errs[2] <= errs[1] <= errs[0]


def test_tiled_gram_of_a_dense_basis_reads_the_dense_matrix():
    rng = np.random.default_rng(1)
    U, _ = np.linalg.qr(rng.normal(size=(6, 3)))
    V, _ = np.linalg.qr(rng.normal(size=(6, 3)))
    f = np.array([2.0, 1.0, 0.25])
    ref = U @ np.diag(f) @ V.T
    for basis, sides, dense in [(st.LowRankBasis(U, V), ("u", "v"), ref),
                                (st.ProjectorBasis(6, "regular polygon"), ("u", "u"),
                                 2.0 * polygon_projector(6))]:
        vals = f if isinstance(basis, st.LowRankBasis) else [2.0]
        t = st.TiledGram(basis, vals, *sides)
        ia, ib = np.array([4, 0, 2]), np.array([1, 5])
        np.testing.assert_allclose(t.tile(ia, ib), dense[np.ix_(ia, ib)], atol=1e-14)
        np.testing.assert_allclose(t.diagonal(), np.diag(dense), atol=1e-14)
        assert t.fro() == pytest.approx(math.sqrt((dense**2).sum()), rel=1e-13)
        X = rng.normal(size=(6, 2))
        np.testing.assert_allclose(t.apply(X), dense @ X, atol=1e-13)


def _low_rank_doc():
    """A prediction dict with a low-rank structure written by hand: K = 4, M = 2, two modes."""
    rng = np.random.default_rng(2)
    U, _ = np.linalg.qr(rng.normal(size=(4, 2)))
    V, _ = np.linalg.qr(rng.normal(size=(4, 2)))
    h, sigma = np.array([0.8, 0.3]), [[1.5, 0.5], [2.0, 0.7]]
    doc = {"problem": {"counts": [1, 1, 1, 1]},
           "structure": {"basis": st.LowRankBasis(U, V).to_dict(),
                         "values": {"WWt": [4.0, 1.0], "HtH": h.tolist(), "WH": [2.0, 0.5]}},
           "layers": [{"sigma": s} for s in sigma]}
    return doc, U, V, h, np.asarray(sigma)


def test_gram_from_dict_rebuilds_a_low_rank_structure_by_hand_formula():
    doc, U, V, h, sig = _low_rank_doc()
    np.testing.assert_allclose(st.gram_from_dict(doc, "WH"), U @ np.diag([2.0, 0.5]) @ V.T, atol=1e-14)
    np.testing.assert_allclose(st.gram_from_dict(doc, "HtH"), V @ np.diag(h) @ V.T, atol=1e-14)
    # layer 2: mean Gram h sigma_1^2 (sides of HtH), partial Gram sigma_2^2 (sides of WWt)
    np.testing.assert_allclose(st.gram_from_dict(doc, "mean_gram", 2), V @ np.diag(h * sig[0] ** 2) @ V.T,
                               atol=1e-14)
    np.testing.assert_allclose(st.gram_from_dict(doc, "partial_gram", 2), U @ np.diag(sig[1] ** 2) @ U.T,
                               atol=1e-14)
    t = st.tiled_gram(doc, "partial_gram", 1)  # a dict source with a layer
    np.testing.assert_allclose(t.diagonal(), np.diag(U @ np.diag((sig[0] * sig[1]) ** 2) @ U.T), atol=1e-14)
    np.testing.assert_allclose(st.tiled_gram(doc, "WWt").diagonal(), np.diag(U @ np.diag([4.0, 1.0]) @ U.T),
                               atol=1e-14)


def test_gram_from_dict_reads_zero_and_projector_structures():
    zero = {"problem": {"counts": [2, 2, 2]}, "structure": {"basis": st.ZeroBasis(3).to_dict(), "values": {"WWt": []}},
            "layers": []}
    np.testing.assert_array_equal(st.gram_from_dict(zero, "WWt"), np.zeros((3, 3)))
    proj = {"problem": {"counts": [1] * 5}, "layers": [],
            "structure": {"basis": st.ProjectorBasis(5, "simplex ETF").to_dict(), "values": {"WH": [3.0]}}}
    np.testing.assert_allclose(st.gram_from_dict(proj, "WH"), 3.0 * (np.eye(5) - 1 / 5), atol=1e-14)


def test_gram_from_dict_bad_input_is_one_clear_error():
    doc = _low_rank_doc()[0]
    cases = [({"WWt": 1}, "WWt", None, "no 'structure'"),
             ("not a dict", "WWt", None, "no 'structure'"),
             (doc, "Gram", None, "name must be one of WWt, HtH, WH"),
             (doc, "WWt", 1, "layer Grams are mean_gram"),
             (doc, "mean_gram", 3, r"layer must be 1..2, got 3"),
             (doc, "mean_gram", 0, r"layer must be 1..2, got 0"),
             ({**doc, "structure": {**doc["structure"], "basis": {"kind": "spiral"}}}, "WWt", None,
              "unknown structure kind 'spiral'")]
    for d, name, layer, msg in cases:
        with pytest.raises(ValueError, match=msg):
            st.gram_from_dict(d, name, layer)


# ---------------------------------------------------------------------------------------------- mse.py
def test_mse_eigvecs_are_the_eigenvectors_of_the_target_gram():
    counts = np.array([6, 4, 4, 1])
    N = counts.sum()
    for bias, T in [(False, np.diag(counts).astype(float)), (True, np.diag(counts) - np.outer(counts, counts) / N)]:
        m = predict(counts, depth=2, lambda_w=1e-3, lambda_h=1e-3, bias=bias)._mse
        Q = m.eigvecs()
        mu = m.mu[m.active]
        assert Q.shape == (4, int(m.active.sum())) and Q.shape[1] >= 2
        np.testing.assert_allclose(Q.T @ Q, np.eye(Q.shape[1]), atol=1e-12)
        np.testing.assert_allclose(T @ Q, Q * mu, atol=1e-10)


def test_solve_mse_refuses_a_ce_problem():
    p = make_problem(classes=3, per_class=1, loss="ce")
    with pytest.raises(ValueError, match="solve_mse needs loss 'mse', got 'ce'"):
        mse.solve_mse(p)


def test_a_mode_exactly_at_the_threshold_is_a_noted_tie():
    """M = 2, counts (1, 1), all decays lam: a = N kappa/n = 2 sqrt(2 lam^3) = a*(2) = 1/4 for lam = (1/128)^(1/3)."""
    lam = (scalar.a_star(2) ** 2 / 8) ** (1 / 3)
    p = predict([1, 1], depth=2, lambda_w=lam, lambda_h=lam)
    np.testing.assert_allclose(p._mse.a, [0.25, 0.25], rtol=1e-12)
    assert not p.gram_unique and "sits exactly at the threshold" in p.uniqueness_note
    assert p.objective == pytest.approx(0.5, rel=1e-12)  # zero and the nonzero point tie: F = 1, sum n/(2N)


def test_bias_spectrum_with_few_roots_solved_equals_the_dense_eigendecomposition(monkeypatch):
    """Above ALL_ROOTS_MAX_GROUPS distinct counts only the roots that can matter are solved; forcing that path
    at G = 30 must give the same prediction as a dense eigh of D - n n^T/N."""
    counts = np.r_[np.arange(90, 0, -3), 3]  # 30 distinct counts, one pair
    monkeypatch.setattr(mse, "ALL_ROOTS_MAX_GROUPS", 3)
    for R, lam in [(4, 1e-3), (31, 3e-3)]:
        p = predict(counts, depth=2, widths=[R, 40], lambda_w=lam, lambda_h=lam, bias=True)
        N, K = counts.sum(), counts.size
        mu, Uf = np.linalg.eigh(np.diag(counts) - np.outer(counts, counts) / N)
        mu, Uf = mu[::-1], Uf[:, ::-1]
        m = p._mse
        known = np.isfinite(m.mu)
        assert not known.all()  # the roots that cannot matter were skipped
        np.testing.assert_allclose(m.mu[known], mu[known], rtol=1e-11, atol=1e-9)
        Ua = Uf[:, m.active]
        s, c = m.s[m.active], m.c
        np.testing.assert_allclose(p.WWt, (Ua * s) @ Ua.T, atol=1e-10 * max(1.0, s.max()))
        # objective: (tr T - sum_active mu (1 - F)) / (2N)
        obj = (np.trace(np.diag(counts) - np.outer(counts, counts) / N)
               - np.sum(mu[m.active] * (1 - m.F[m.active]))) / (2 * N)
        assert p.objective == pytest.approx(obj, rel=1e-12)
        assert 0 < int(m.active.sum()) <= R and K == 31 and c > 0


# ---------------------------------------------------------------------------------------------- scalar.py
def test_larger_root_with_few_bisection_steps_stays_within_its_halved_bracket():
    M, a = 3, np.array([0.05, 0.15])
    h = lambda x: x ** (M - 1) / (1 + x**M) ** 2  # noqa: E731
    exact = scalar.larger_root(a, M)
    np.testing.assert_allclose(h(exact), a, rtol=1e-13)
    lo, hi = math.log(scalar.x_star(M)), -np.log(a) / (M + 1)
    for iters in (1, 3):
        rough = scalar.larger_root(a, M, iters=iters)
        err = np.abs(np.log(rough) - np.log(exact))
        assert (err <= (hi - lo) / 2 ** (iters + 1) + 1e-15).all() and (err > 1e-6).any()


def test_scalar_bad_arguments():
    with pytest.raises(ValueError, match="larger_root needs depth M >= 2"):
        scalar.larger_root(np.array([0.1]), 1)
    for bad in (np.nan, -np.inf):
        with pytest.raises(ValueError, match="log a must be a number"):
            scalar.solve_modes_log(np.array([0.0, bad]), 2)


# ---------------------------------------------------------------------------------------------- ce.py
def test_polygon_bessel_form_equals_the_direct_sum_above_512_classes():
    """K > 512: the polygon's loss c(s) and dc/ds come from Bessel functions; both equal the direct sums."""
    K = 600
    c, dc, m, Zf, r = ce._polygon(K)
    assert m == 2 and r == 2
    s = np.array([1.0, 150.0, 900.0])
    g = np.cos(2 * np.pi * np.arange(1, K) / K) - 1.0  # logit gaps in units of 2 s/K
    e = np.exp((2 * s[:, None] / K) * g[None, :])
    np.testing.assert_allclose(c(s), np.log1p(e.sum(1)), rtol=1e-12)
    np.testing.assert_allclose(dc(s), (2.0 / K) * (e * g).sum(1) / (1 + e.sum(1)), rtol=1e-10)
    # and c is the mean CE of the code's logits Z (class 0's column)
    Z = Zf(150.0)
    col = Z[:, 0]
    assert c(np.array([150.0]))[0] == pytest.approx(np.log(np.exp(col - col[0]).sum()), rel=1e-12)


def test_truncation_of_the_zero_matrix_stops_at_rank_zero():
    val, Zk, k = ce._truncate(np.zeros((3, 3)), None, 0.1, 2, 3)
    assert k == 0 and not Zk.any() and val == pytest.approx(math.log(3), rel=1e-15)


def test_reduced_objective_bad_bias_and_non_finite_input():
    Z = np.eye(3)
    with pytest.raises(ValueError, match=r"b must have shape \(3,\), got \(2,\)"):
        ce.reduced_objective(Z, np.zeros(2), 0.1, 1)
    with pytest.raises(ValueError, match="must be finite"):
        ce.reduced_objective(Z, np.array([0.0, np.inf, 0.0]), 0.1, 1)
    with pytest.raises(ValueError, match="must be finite"):
        ce.reduced_objective(np.full((3, 3), np.nan), None, 0.1, 1)


def test_ce_search_flag_must_be_a_bool():
    with pytest.raises(ValueError, match="search must be true, false or None, got 'yes'"):
        predict(classes=3, per_class=1, loss="ce", lambda_w=1e-2, lambda_h=1e-2, search="yes")


def test_ce_construct_of_a_structured_solution_attains_the_objective():
    """K = 130 > CE_SEARCH_MAX_K: no dense Z, the construction goes through the basis' vectors; the objective
    of the built W, H (numpy, by hand) equals the predicted one."""
    K, M, lam = 130, 2, 1e-3
    p = predict(classes=K, per_class=1, depth=M, widths=[K, K], loss="ce", lambda_w=lam, lambda_h=lam)
    assert p._ce.Z is None and p.geometry != "zero"
    weights, H, b = p.construct()
    Z = H
    for W in weights:
        Z = W @ Z
    if b is not None:
        Z = Z + b[:, None]
    labels = np.arange(K)
    zmax = Z.max(0)
    ce_mean = np.mean(zmax + np.log(np.exp(Z - zmax).sum(0)) - Z[labels, np.arange(K)])
    obj = ce_mean + 0.5 * lam * sum((W**2).sum() for W in weights) + 0.5 * lam * (H**2).sum()
    assert obj == pytest.approx(p.objective, rel=1e-9)


# ---------------------------------------------------------------------------------------------- objective.py
def _args():
    W1, W2 = torch.zeros(3, 4, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64)
    return [W1, W2], torch.zeros(4, 5, dtype=torch.float64), torch.tensor([0, 1, 0, 1, 1])


@pytest.mark.parametrize("change,exc,msg", [
    (lambda a: {**a, "activation": "tanh"}, ValueError, "activation must be 'identity' or 'relu', got 'tanh'"),
    (lambda a: {**a, "weights": a["weights"][0]}, ValueError, "weights must be a non-empty sequence"),
    (lambda a: {**a, "weights": []}, ValueError, "weights must be a non-empty sequence"),
    (lambda a: {**a, "weights": [a["weights"][0], a["weights"][1].long()]}, TypeError,
     "weights\\[1\\] must be a floating-point tensor, got torch.int64"),
    (lambda a: {**a, "weights": [a["weights"][0], torch.zeros(2, 2, dtype=torch.float64)]}, ValueError,
     "W_2 has 2 columns but W_1 has 3 rows"),
    (lambda a: {**a, "H": a["H"].long()}, TypeError, "H must be a floating-point tensor, got torch.int64"),
    (lambda a: {**a, "num_classes": 3}, ValueError, "num_classes = 3 but W_M has 2 rows"),
    (lambda a: {**a, "H": torch.zeros(4, 0, dtype=torch.float64), "labels": torch.zeros(0, dtype=torch.long)},
     ValueError, r"H has no columns \(N = 0 samples\)"),
    (lambda a: {**a, "labels": a["labels"].float()}, TypeError, "labels must be an integer tensor, got torch.float32"),
    (lambda a: {**a, "labels": a["labels"] > 0}, TypeError, "labels must be an integer tensor, got torch.bool"),
])
def test_objective_torch_bad_arguments_name_the_argument(change, exc, msg):
    W, H, y = _args()
    kw = change({"weights": W, "H": H, "labels": y, "lambda_w": 0.1, "lambda_h": 0.1})
    with pytest.raises(exc, match=msg):
        ufm_objective_torch(**kw)


def test_objective_torch_relu_matches_the_hand_formula():
    """activation='relu' clips the hidden layer only: 1/(2N)||W2 relu(W1 H) - Y||^2 + decays."""
    g = torch.Generator().manual_seed(0)
    W1, W2 = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(2, 3, generator=g, dtype=torch.float64)
    H, y = torch.randn(4, 5, generator=g, dtype=torch.float64), torch.tensor([0, 1, 0, 1, 1])
    f = float(ufm_objective_torch([W1, W2], H, y, 0.1, 0.2, activation="relu"))
    Wn1, Wn2, Hn = W1.numpy(), W2.numpy(), H.numpy()
    Z = Wn2 @ np.maximum(Wn1 @ Hn, 0.0)
    Y = np.eye(2)[:, y.numpy()]
    ref = 0.5 * ((Z - Y) ** 2).sum() / 5 + 0.05 * ((Wn1**2).sum() + (Wn2**2).sum()) + 0.1 * (Hn**2).sum()
    assert f == pytest.approx(ref, rel=1e-13)


def test_label_values_are_not_read_off_the_cpu():
    """Labels on another device (here 'meta': no values at all) are not synchronized to check their range."""
    W, H, _ = _args()
    labels = torch.empty(5, dtype=torch.long, device="meta")
    lam, K = _check_torch_args(W, H, labels, 0.1, 0.2, None, "mse", None)
    assert K == 2 and lam == [0.1, 0.1]


# ---------------------------------------------------------------------------------------------- resources.py
class FakeFiles:
    """open() replacement for nclab.theory.resources: serves the given paths' texts, else FileNotFoundError."""

    def __init__(self, files):
        self.files = files

    def __call__(self, path, *args, **kwargs):
        import io

        if path not in self.files:
            raise FileNotFoundError(path)
        return io.StringIO(self.files[path])


@pytest.mark.parametrize("files,expect", [
    # MemAvailable (kB) and the cgroup's free room (limit - used): the smaller wins
    ({"/proc/meminfo": "MemTotal: 9 kB\nMemAvailable:    1000 kB\n", "/sys/fs/cgroup/memory.max": "600000\n",
      "/sys/fs/cgroup/memory.current": "100000\n"}, 500000),
    ({"/proc/meminfo": "MemAvailable: 1000 kB\n", "/sys/fs/cgroup/memory.max": "max\n",
      "/sys/fs/cgroup/memory.current": "5\n"}, 1024000),  # no cgroup limit ("max")
    ({"/proc/meminfo": "MemAvailable: lots\n", "/sys/fs/cgroup/memory.max": "300\n",
      "/sys/fs/cgroup/memory.current": "400\n"}, 0),  # unreadable meminfo; a cgroup over its limit has 0 left
    ({"/proc/meminfo": "MemTotal: 5 kB\n", "/sys/fs/cgroup/memory.max": "600000",
      "/sys/fs/cgroup/memory.current": "100000"}, 500000),  # an old kernel without MemAvailable
])
def test_available_memory_takes_the_smallest_known_source(monkeypatch, files, expect):
    monkeypatch.delenv("NCLAB_MEMORY_LIMIT", raising=False)
    monkeypatch.setattr(resources, "open", FakeFiles(files), raising=False)
    assert resources.available_memory() == expect


def test_available_memory_falls_back_to_physical_memory_then_8_gib(monkeypatch):
    monkeypatch.delenv("NCLAB_MEMORY_LIMIT", raising=False)
    monkeypatch.setattr(resources, "open", FakeFiles({}), raising=False)
    pages = {"SC_PHYS_PAGES": 1000, "SC_PAGE_SIZE": 4096}
    monkeypatch.setattr(resources.os, "sysconf", lambda name: pages[name])
    assert resources.available_memory() == 4096 * 1000

    def no_sysconf(name):
        raise ValueError(name)

    monkeypatch.setattr(resources.os, "sysconf", no_sysconf)
    assert resources.available_memory() == 8 * 2**30


@pytest.mark.parametrize("text", ["lots", "0", "-2G", "inf", "nan"])
def test_memory_limit_must_be_a_positive_number(monkeypatch, text):
    monkeypatch.setenv("NCLAB_MEMORY_LIMIT", text)
    with pytest.raises(ValueError, match="NCLAB_MEMORY_LIMIT must be a"):
        resources.available_memory()


def test_memory_refusal_says_what_needs_how_much(monkeypatch):
    monkeypatch.setenv("NCLAB_MEMORY_LIMIT", "1M")  # budget 0.8 MiB = 838,861 bytes
    resources.check_memory(800_000, "fits")
    with pytest.raises(ValueError) as info:
        st.check_dense(400, 1, "a Gram", "ask for less")  # 8 * 400^2 = 1,280,000 bytes = 1.22 MiB
    assert str(info.value) == ("a Gram (1 dense 400 x 400 float64) would need about 1.22 MiB of memory, more than "
                               "the 819 KiB this machine can give (80% of the available memory); ask for less")
