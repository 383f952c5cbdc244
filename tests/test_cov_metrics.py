"""Branches of nclab.metrics that the other suites leave out: validation messages at the public boundary,
the memory probes, one-pass statistics without second moments, degenerate duality, the large-K projector
and compare_to_theory with partial predictions; values against float64 numpy references from the
definitions (metrics.md), never against nclab itself."""

import io
import math
import os

import numpy as np
import pytest
import torch

from nclab.metrics import (
    ClassStats,
    SecondPass,
    capture_inputs,
    compare_to_theory,
    compute_metrics,
    deep_head_metrics,
    linear_head,
    load_dump,
    nc1,
    nc_metrics,
    stats_head_metrics,
)
from nclab.metrics import _checks as C
from nclab.metrics.compare import gram_error
from nclab.metrics.report import DeepHeadMetrics, _projector, json_ready


# ------------------------------------------------------------------------------------------ references
def _data(K=3, D=4, n=5, seed=0, spread=0.3):
    """(N, D) features around K random means, labels grouped by class, float64."""
    g = np.random.default_rng(seed)
    mu = g.normal(size=(K, D)) * 3
    y = np.repeat(np.arange(K), n)
    return mu[y] + spread * g.normal(size=(K * n, D)), y


def _centred_means(x, y, K):
    n = np.bincount(y, minlength=K).astype(float)
    mu = np.stack([x[y == k].mean(0) for k in range(K)])
    return mu - (n @ mu) / n.sum(), mu, n


def _unit(a):
    return a / np.linalg.norm(a)


class DenseGram:
    """A structured target/scale (nclab.theory TiledGram interface) backed by a dense matrix."""

    def __init__(self, g):
        self.g = np.asarray(g, dtype=np.float64)
        self.shape = self.g.shape

    def tile(self, ia, ib):
        return self.g[np.ix_(ia, ib)]

    def diagonal(self):
        return np.diag(self.g)

    def fro(self):
        return float(np.linalg.norm(self.g))

    def apply(self, h):
        return self.g @ h


# ------------------------------------------------------------------------------------------ _checks
@pytest.mark.parametrize("text, expected", [("2G", 2 * 2**30), ("512 KiB", 512 * 1024), ("4096", 4096)])
def test_memory_limit_env_parses_units(monkeypatch, text, expected):
    monkeypatch.setenv("NCLAB_MEMORY_LIMIT", text)
    assert C.available_memory() == expected


@pytest.mark.parametrize("text", ["0", "-3M", "inf"])
def test_memory_limit_env_must_be_positive_and_finite(monkeypatch, text):
    monkeypatch.setenv("NCLAB_MEMORY_LIMIT", text)
    with pytest.raises(ValueError, match="NCLAB_MEMORY_LIMIT must be a positive number of bytes"):
        C.available_memory()


def test_memory_limit_env_is_for_the_cpu_only(monkeypatch):
    monkeypatch.setenv("NCLAB_MEMORY_LIMIT", "1K")
    if not torch.cuda.is_available():  # no CUDA: the GPU figure cannot be read, so nothing is refused on it
        assert C.available_memory("cuda") == 1 << 62
    assert C.available_memory("cuda") != 1024
    with pytest.raises(ValueError, match=r"x would need 2 KB, more than the 1 KB of memory available"):
        C.check_memory(2048, "x")


def test_check_memory_names_the_gpu(monkeypatch):
    monkeypatch.setattr(C, "available_memory", lambda device=None: 1024)
    with pytest.raises(ValueError, match="of GPU available"):
        C.check_memory(4096, "y", "cuda")


def test_available_memory_falls_back_to_physical_pages(monkeypatch):
    monkeypatch.delenv("NCLAB_MEMORY_LIMIT", raising=False)
    monkeypatch.setattr(C, "open", lambda *a, **k: io.StringIO("MemTotal: 100 kB\n"), raising=False)
    monkeypatch.setattr(os, "sysconf", {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 10}.__getitem__)
    assert C.available_memory() == 40960  # no MemAvailable line: page size x physical pages

    def no_file(*a, **k):
        raise OSError("no /proc")

    def no_sysconf(name):
        raise ValueError(name)

    monkeypatch.setattr(C, "open", no_file, raising=False)
    monkeypatch.setattr(os, "sysconf", no_sysconf)
    assert C.available_memory() == 1 << 62  # nothing known: refuse nothing


@pytest.mark.parametrize("n, text", [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KB"), (3 * 2**30, "3 GB"),
                                     (5 * 2**50, "5 PB"), (2**70, "1024 EB")])
def test_human_bytes(n, text):
    assert C.human_bytes(n) == text


def test_as_tensor_refuses_complex_tensors_and_uint64_beyond_int64():
    with pytest.raises(ValueError, match="features must be real numbers, got dtype torch.complex64"):
        C.as_tensor(torch.zeros(2, dtype=torch.complex64), "features")
    with pytest.raises(ValueError, match=r"labels has values too large for int64 \(18446744073709551615\)"):
        C.as_tensor(np.array([1, 2**64 - 1], dtype=np.uint64), "labels")
    t = C.as_tensor(np.array([0, 3, 2**40], dtype=np.uint64), "labels")
    assert t.dtype == torch.int64 and t.tolist() == [0, 3, 2**40]


def test_features_and_labels_validation_messages():
    with pytest.raises(ValueError, match="features must be real numbers, got dtype torch.bool"):
        C.check_features(torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"labels must have shape \(N,\), got shape \(2, 3\)"):
        C.check_labels(np.zeros((2, 3), dtype=int), 6, None, "cpu")
    y, K = C.check_labels(np.array([[0], [2], [1]]), 3, None, "cpu")  # a column vector is accepted
    assert y.tolist() == [0, 2, 1] and K == 3
    with pytest.raises(ValueError, match="W must be real numbers, got dtype torch.bool"):
        C.check_matrix(torch.ones(2, 2, dtype=torch.bool), "W")
    with pytest.raises(ValueError, match="bias contains NaN or inf"):
        C.check_vector([0.0, float("nan")], "bias", 2)


# ------------------------------------------------------------------------------------------ report
def test_json_ready_converts_numpy_scalars_and_arrays():
    out = json_ready({1: np.array([1.5, np.nan]), "i": np.int64(3), "b": np.bool_(True),
                      "t": (np.float32(np.inf), 2)})
    assert out == {"1": [1.5, None], "i": 3, "b": True, "t": [None, 2]}
    assert type(out["i"]) is int and type(out["b"]) is bool


def test_nc1_matches_the_definition():
    x, y = _data(K=3, D=4, n=6)
    M, mu, n = _centred_means(x, y, 3)
    sw = sum(np.outer(d, d) for d in x - mu[y]) / len(y)
    sb = M.T @ M / 3
    assert nc1(x, y) == pytest.approx(np.trace(sw @ np.linalg.pinv(sb)) / 3, rel=1e-9)


def test_first_moments_only_give_nc2_and_say_why_the_rest_is_missing():
    x, y = _data(K=3, D=4, n=5)
    stats = ClassStats(3, moments="none").update(torch.as_tensor(x), torch.as_tensor(y))
    m = compute_metrics(stats, target="etf")
    M, _, _ = _centred_means(x, y, 3)
    etf = np.eye(3) - 1 / 3
    assert m["nc2_h"] == pytest.approx(np.linalg.norm(_unit(M @ M.T) - _unit(etf)), rel=1e-9)
    for k in ("nc1", "nc1_trace", "cdnv"):
        assert math.isnan(m[k])
    assert "within-class scatter" in m.reasons["nc1"]
    assert m.reasons["cdnv"].startswith("needs within-class variances")
    assert math.isnan(m.info["trace_sw"]) and "variance" not in m.per_class


def test_compute_metrics_refuses_foreign_stats_and_second_pass():
    x, y = _data()
    a = ClassStats(3).update(torch.as_tensor(x), torch.as_tensor(y))
    b = ClassStats(3).update(torch.as_tensor(x), torch.as_tensor(y))
    with pytest.raises(TypeError, match="stats must be a ClassStats, got dict"):
        compute_metrics({})
    with pytest.raises(ValueError, match="second must be a SecondPass of these stats"):
        compute_metrics(a, second=SecondPass(b))


def test_coinciding_means_make_cdnv_infinite_reported_as_nan():
    # classes 0 and 1 share the mean 0 with nonzero spread: (var_0 + var_1) / ||mu_0 - mu_1||^2 = inf
    x = np.array([[1, 0], [-1, 0], [0, 1], [0, -1], [5, 1], [5, -1]], dtype=float)
    y = np.array([0, 0, 1, 1, 2, 2])
    m = nc_metrics(x, y)
    assert math.isnan(m["cdnv"]) and m.reasons["cdnv"] == "two class means coincide (CDNV infinite)"


def test_opposite_duality_has_zero_mean_cosine():
    # K = 2, equal counts: centred means +-e1; w_0 along u_0 (cos 1), w_1 against u_1 (cos -1): mean 0
    x = np.array([[1.0, 0.0], [-1.0, 0.0]])
    y = np.array([0, 1])
    W = np.array([[1.0, 0.0], [1.0, 0.0]])
    m = nc_metrics(x, y, W, target="etf")
    assert m.per_class["unc3"] == [1.0, -1.0]
    assert math.isnan(m["unc3"]) and m.reasons["unc3"] == "the mean cosine of w_k and mu_k - mu_G is 0"


def test_nc3_scale_shape_is_checked():
    x, y = _data()
    W = np.random.default_rng(1).normal(size=(3, 4))
    with pytest.raises(ValueError, match=r"nc3_scale must be 3 x 3, got shape \(2, 2\)"):
        nc_metrics(x, y, W, nc3_scale=np.eye(2))
    y4 = y.copy()  # class 3 has no samples: a structured scale cannot be restricted
    with pytest.warns(UserWarning, match="dropping 1 class"):
        with pytest.raises(ValueError, match="a structured nc3_scale needs every class to have samples"):
            nc_metrics(x, y4, np.vstack([W, W[:1]]), num_classes=4, nc3_scale=DenseGram(np.eye(4)))


def test_structured_nc3_scale_matches_the_dense_formula():
    x, y = _data(K=3, D=4, n=4)
    W = np.random.default_rng(2).normal(size=(3, 4))
    S = np.array([[2.0, 0.1, 0.0], [0.1, 1.0, 0.2], [0.0, 0.2, 3.0]])
    m = nc_metrics(x, y, W, target="of", nc3_scale=DenseGram(S))
    _, mu, _ = _centred_means(x, y, 3)  # "of": uncentred means
    assert m["nc3_dual"] == pytest.approx(np.linalg.norm(_unit(W) - _unit(S @ mu)), rel=1e-9)


@pytest.mark.parametrize("W, msg", [
    (np.ones(4), r"weights must be a matrix, got shape \(4,\)"),
    (np.ones((3, 5)), "weights has 5 columns, expected 4"),
    (np.ones((2, 4)), r"weights must have one row per class \(3\)"),
    (torch.ones(3, 4, dtype=torch.bool), "weights must be real numbers, got dtype torch.bool"),
    (np.full((3, 4), np.nan), "weights contains NaN or inf"),
])
def test_classifier_validation(W, msg):
    x, y = _data()
    stats = ClassStats(3).update(torch.as_tensor(x), torch.as_tensor(y))
    with pytest.raises(ValueError, match=msg):
        compute_metrics(stats, W)


def test_tile_and_structured_target_validation():
    x, y = _data()
    with pytest.raises(ValueError, match="tile must be a positive integer"):
        nc_metrics(x, y, tile=0)
    with pytest.raises(ValueError, match=r"structured target Gram of shape \(2, 2\) does not cover the classes"):
        nc_metrics(x, y, target=DenseGram(np.eye(2)))
    with pytest.raises(ValueError, match="target Gram is zero"):
        nc_metrics(x, y, target=DenseGram(np.zeros((3, 3))))


def test_projector_of_many_classes_matches_the_gram_pseudo_inverse():
    # K > D and K D > 2^20: the blockwise-QR path, 65 blocks of max(tile, 4 D) = 256 rows. Reference: the
    # D x D Gram of the centred means, whose eigenvalues are s^2 and whose pseudo-inverse is P P^T.
    K, D = 16500, 64
    g = np.random.default_rng(3)
    means = g.normal(size=(K, D))
    n = g.integers(1, 5, size=K).astype(float)
    p, s, r, mu = _projector(torch.as_tensor(means), n, 1e-6, "weighted", 64)
    mu_ref = n @ means / n.sum()
    gram = (means - mu_ref).T @ (means - mu_ref)
    assert np.allclose(mu, mu_ref, rtol=0, atol=1e-12)
    assert r == D and np.allclose(np.sort(s ** 2), np.linalg.eigvalsh(gram), rtol=1e-10)
    pinv = np.linalg.pinv(gram)
    assert np.allclose(p @ p.T, pinv, rtol=0, atol=1e-12 * np.abs(pinv).max())


def test_deep_head_shapes_are_checked_and_one_layer_table_has_no_shared_line():
    x, y = _data()
    with pytest.raises(ValueError, match="W_1 has 5 columns but features have dimension 4"):
        deep_head_metrics(x, y, [np.ones((2, 5)), np.ones((3, 2))])
    with pytest.raises(ValueError, match=r"W_2 has 2 rows, expected one per class \(3\)"):
        deep_head_metrics(x, y, [np.ones((2, 4)), np.ones((2, 2))])
    W = np.random.default_rng(4).normal(size=(3, 4))
    one = DeepHeadMetrics([nc_metrics(x, y, W)])
    lines = one.table().splitlines()
    assert len(lines) == 1 + len(one[0].values) and "whole head" not in one.table()


# ------------------------------------------------------------------------------------------ hooks
def test_head_module_selection_is_validated():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got dict"):
        linear_head({}, ["0"])
    with pytest.raises(ValueError, match="names must be a non-empty list of module names, got '0'"):
        linear_head(model, "0")
    with pytest.raises(TypeError, match=r"names must be strings, got \[0\]"):
        with capture_inputs(model, [0]):
            pass
    x, y = _data()
    stats = ClassStats(3).update(torch.as_tensor(x), torch.as_tensor(y))
    with pytest.raises(ValueError, match=r"need a list of one ClassStats per layer \(2\)"):
        stats_head_metrics([stats], [np.ones((2, 4)), np.ones((3, 2))])


# ------------------------------------------------------------------------------------------ io
def test_load_dump_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_dump(tmp_path / "missing.npz")
    (tmp_path / "d.npz").mkdir()
    with pytest.raises(ValueError, match="is a folder, not a dump file"):
        load_dump(tmp_path / "d.npz")
    np.save(tmp_path / "a.npy", np.zeros(3))
    os.replace(tmp_path / "a.npy", tmp_path / "a.npz")
    with pytest.raises(ValueError, match=r"a\.npz: a single \.npy array, not an \.npz archive"):
        load_dump(tmp_path / "a.npz")


def test_load_dump_reads_lists_of_numbers(tmp_path):
    torch.save({"H": torch.eye(3, dtype=torch.float64), "y": [0, 1, 2], "b": [0.5, -1.0, 2.0]}, tmp_path / "d.pt")
    d = load_dump(tmp_path / "d.pt")
    assert isinstance(d["labels"], np.ndarray) and d["labels"].tolist() == [0, 1, 2]
    assert d["bias"].tolist() == [0.5, -1.0, 2.0] and d["weights"] is None


# ------------------------------------------------------------------------------------------ compare
def test_compare_with_only_the_classifier_gram():
    x, y = _data()
    W = np.random.default_rng(5).normal(size=(3, 4))
    P = np.eye(3) - 1 / 3
    out = compare_to_theory({"WWt": P}, x, y, W)
    assert set(out) == {"WWt", "w_norms"}
    G = W @ W.T
    assert out["WWt"]["rel"] == pytest.approx(np.linalg.norm(G - P) / np.linalg.norm(P), rel=1e-12)
    assert out["WWt"]["shape"] == pytest.approx(np.linalg.norm(_unit(G) - _unit(P)), rel=1e-12)
    ref = np.abs(np.sqrt(np.diag(G)) - np.sqrt(np.diag(P)))
    assert out["w_norms"]["max_rel"] == pytest.approx(ref.max() / np.sqrt(np.diag(P)).max(), rel=1e-12)


def test_compare_layer_with_only_nc3_scale():
    x, y = _data(K=3, D=4)
    g = np.random.default_rng(6)
    W1, W2 = g.normal(size=(5, 4)), g.normal(size=(3, 5))
    S = np.diag([1.0, 2.0, 3.0])
    out = compare_to_theory({"layers": [{"nc3_scale": S}, {"nc3_scale": S}]}, x, y, [W1, W2], center=False)
    _, mu, _ = _centred_means(x, y, 3)
    rows = [(W2 @ W1, mu), (W2, mu @ W1.T)]  # (partial product, layer-j class means)
    assert [set(r) for r in out["layers"]] == [{"nc3"}, {"nc3"}]
    for r, (p, m) in zip(out["layers"], rows):
        assert r["nc3"] == pytest.approx(np.linalg.norm(_unit(p) - _unit(S @ m)), rel=1e-9)


def test_compare_reads_layers_given_as_read_only_mappings():
    """A layer as types.MappingProxyType (a read-only dict) is read as a dict, not silently ignored."""
    import types

    x, y = _data(K=3, D=4)
    g = np.random.default_rng(7)
    W1, W2 = g.normal(size=(5, 4)), g.normal(size=(3, 5))
    S = np.diag([1.0, 2.0, 3.0])
    layers = [types.MappingProxyType({"nc3_scale": S}), types.MappingProxyType({"nc3_scale": S})]
    out = compare_to_theory(types.MappingProxyType({"layers": layers}), x, y, [W1, W2], center=False)
    _, mu, _ = _centred_means(x, y, 3)
    assert out["layers"][0]["nc3"] == pytest.approx(np.linalg.norm(_unit(W2 @ W1) - _unit(S @ mu)), rel=1e-9)


def test_compare_validation_messages():
    x, y = _data()
    W = np.ones((3, 4))
    with pytest.raises(ValueError, match="prediction has none of WWt, HtH, WH, layers"):
        compare_to_theory({"bias": [0, 0, 0]}, x, y, W)
    with pytest.raises(TypeError, match="center must be True, False or None"):
        compare_to_theory({"WWt": np.eye(3)}, x, y, W, center="yes")
    with pytest.raises(ValueError, match=r"end-to-end classifier has shape \(2, 4\), expected \(3, 4\)"):
        compare_to_theory({"WWt": np.eye(3)}, x, y, np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"classes \[3\] have no samples"):
        compare_to_theory({"WWt": np.eye(4)}, x, y, np.ones((4, 4)), num_classes=4)
    with pytest.raises(ValueError, match="prediction has 1 layers, weights give 2"):
        compare_to_theory({"layers": [{}]}, x, y, [np.ones((2, 4)), np.ones((3, 2))])
    with pytest.raises(ValueError, match=r"measured shape \(2, 2\) != predicted shape \(3, 3\)"):
        gram_error(np.eye(2), np.eye(3))


def test_structured_target_restricted_to_the_classes_with_samples():
    # class 3 has no samples: the structured Gram is read tile by tile on the kept classes and renormalized there
    x, y = _data(K=3, D=4, n=4)
    g = np.random.default_rng(9).normal(size=(4, 4))
    G = g @ g.T
    with pytest.warns(UserWarning, match="dropping 1 class"):
        m = nc_metrics(x, y, num_classes=4, target=DenseGram(G))
    _, mu, _ = _centred_means(x, y, 3)  # a Gram target compares uncentred means
    ref = np.linalg.norm(_unit(mu @ mu.T) - _unit(G[:3, :3]))
    assert m["nc2_h"] == pytest.approx(ref, rel=1e-9)
