"""Issue 14 part 1: theory output that carries structure (no dense K x K unless asked), the bias path through
the secular equation, CE beyond the search's K, counts from a file, grams written as .npy."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from nclab import predict
from nclab.cli import cli
from nclab.theory.structure import gram_from_dict


def dense_bias_reference(counts, pred):
    """WWt, HtH, WH, margins from a dense eigh of D - n n^T/N (the obvious O(K^3) way)."""
    n = np.asarray(counts, dtype=np.float64)
    N, K = n.sum(), n.size
    mu, U = np.linalg.eigh(np.diag(n) - np.outer(n, n) / N)
    o = np.argsort(-mu, kind="stable")
    mu, U = mu[o], U[:, o]
    m = pred._mse
    Ua, s, c = U[:, m.active], m.s[m.active], m.c
    E = np.eye(K) - np.outer(n / N, np.ones(K))
    WWt = (Ua * s) @ Ua.T
    HtH = E.T @ (Ua * (s / (s + c) ** 2)) @ Ua.T @ E
    WH = (Ua * (s / (s + c))) @ Ua.T @ E
    Z = WH + (n / N)[:, None]
    own = np.diag(Z).copy()
    Z[np.arange(K), np.arange(K)] = -np.inf
    return mu, WWt, HtH, WH, own - Z.max(0)


@pytest.mark.parametrize("counts", [[200, 100, 50, 50], [5, 5, 5, 3, 3, 1], [7, 7, 7, 7],
                                    [10, 9, 8, 7, 6, 5, 5, 5, 2, 2, 2, 2], [1000, 999, 3, 2, 1]])
@pytest.mark.parametrize("M", [1, 3])
@pytest.mark.parametrize("lam", [1e-4, 2e-3, 2e-2])
def test_bias_secular_path_equals_dense_eigendecomposition(counts, M, lam):
    p = predict(counts, depth=M, lambda_w=lam, lambda_h=lam, bias=True)
    mu, WWt, HtH, WH, margin = dense_bias_reference(counts, p)
    known = np.isfinite(p._mse.mu)
    np.testing.assert_allclose(p._mse.mu[known], mu[known], rtol=1e-12, atol=1e-9)
    sc = max(1.0, np.abs(WWt).max())
    np.testing.assert_allclose(p.WWt, WWt, atol=1e-10 * sc)
    np.testing.assert_allclose(p.HtH, HtH, atol=1e-10 * sc)
    np.testing.assert_allclose(p.WH, WH, atol=1e-10 * sc)
    np.testing.assert_allclose(p.classes["margin"], margin, atol=1e-10)
    d = json.loads(json.dumps(p.to_dict(dense=False)))
    for name in ("WWt", "HtH", "WH"):
        np.testing.assert_allclose(gram_from_dict(d, name), getattr(p, name), atol=1e-12 * sc)
    for j in range(1, M + 1):
        for name in ("mean_gram", "partial_gram", "nc3_scale"):
            ref = p.layers[j - 1][name]
            np.testing.assert_allclose(gram_from_dict(d, name, j), ref, atol=1e-9 * max(1.0, np.abs(ref).max()))


def test_bias_construct_attains_objective():
    from nclab.theory import ufm_objective

    p = predict([9, 9, 5, 5, 5, 2], depth=2, widths=[8, 8], lambda_w=1e-3, lambda_h=1e-3, bias=True)
    W, H, b = p.construct()
    from nclab.theory import labels_from_counts

    f = ufm_objective(W, H, labels_from_counts(p.problem.counts), p.problem.lambda_w, p.problem.lambda_h, bias=b)
    assert f == pytest.approx(p.objective, rel=1e-9)


@pytest.mark.parametrize("bias", [False, True])
def test_large_K_is_linear_and_structured(bias, monkeypatch):
    monkeypatch.setenv("NCLAB_MEMORY_LIMIT", "400M")  # a dense 20,000 x 20,000 float64 is 3.2 GB
    K = 20000
    n = np.maximum(5, np.round(500 * 0.01 ** (np.arange(K) / (K - 1)))).astype(int)
    p = predict(n, depth=3, widths=2 * K, lambda_w=1e-6, lambda_h=1e-6, bias=bias)
    c = p.classes
    assert len(c["w_norm"]) == K and np.isfinite(c["w_norm"]).all()
    d = p.to_dict()
    assert not d["dense"] and "WWt" not in d and len(json.dumps(d)) < 60 * 40 * K
    with pytest.raises(ValueError, match="memory"):
        p.gram("WWt")
    with pytest.raises(ValueError, match="memory"):
        p.construct()


def test_small_K_json_keeps_the_dense_grams():
    d = predict([200, 100, 50, 50], depth=3).to_dict()
    assert d["dense"] and np.asarray(d["WWt"]).shape == (4, 4)
    assert np.asarray(d["layers"][1]["mean_gram"]).shape == (4, 4)
    np.testing.assert_array_equal(gram_from_dict(d, "WWt"), np.asarray(d["WWt"]))


@pytest.mark.parametrize("K,M,bias", [(6, 3, False), (8, 2, True), (5, 1, False)])
def test_ce_structure_matches_dense(K, M, bias):
    p = predict(classes=K, per_class=2, depth=M, loss="ce", lambda_w=5e-3, lambda_h=5e-3, bias=bias, seed=1)
    d = json.loads(json.dumps(p.to_dict(dense=False)))
    for name in ("WWt", "HtH", "WH"):
        ref = getattr(p, name)
        np.testing.assert_allclose(gram_from_dict(d, name), ref, atol=1e-9 * max(1.0, np.abs(ref).max()))
    for j in range(1, M + 1):
        for name in ("mean_gram", "partial_gram"):
            ref = p.layers[j - 1][name]
            np.testing.assert_allclose(gram_from_dict(d, name, j), ref, atol=1e-9 * max(1.0, np.abs(ref).max()))


@pytest.mark.parametrize("M", [1, 3])
def test_ce_without_search_equals_structured_candidates_of_the_dense_path(M):
    kw = dict(classes=40, per_class=1, depth=M, loss="ce", lambda_w=1e-2, lambda_h=1e-2)
    a = predict(**kw, search=False)
    assert not a._ce.search["run"] and a.objective <= np.log(40)
    # the same problem above the search's K: no dense matrix, the structured best, the limit said
    big = predict(**{**kw, "classes": 1000})
    assert big._ce.Z is None and not big._ce.search["run"] and big._ce.search["max_K"] == 128
    assert len(big.classes["margin"]) == 1000
    if M >= 2:
        assert any("largest K the low-rank search handles" in n for n in big._ce.notes)
    with pytest.raises(ValueError, match="handles K <= 128"):
        predict(**{**kw, "classes": 1000}, search=True)


def test_ce_etf_at_large_K_is_the_etf():
    p = predict(classes=50000, per_class=1, loss="ce", lambda_w=1e-7, lambda_h=1e-7, widths=50000)
    assert p.geometry == "simplex ETF" and p.ce["etf_proven"]
    m = np.asarray(p.classes["margin"])
    assert np.allclose(m, p._ce.etf_z)


def test_counts_file_text_and_npy(tmp_path):
    (tmp_path / "c.txt").write_text("# counts\n200\n100, 50\n50\n")
    np.save(tmp_path / "c.npy", np.array([200, 100, 50, 50]))
    ref = CliRunner().invoke(cli, ["predict", "--counts", "200,100,50,50", "-M", "3", "--json"]).output
    for f in ("c.txt", "c.npy"):
        r = CliRunner().invoke(cli, ["predict", "--counts-file", str(tmp_path / f), "-M", "3", "--json"])
        assert r.exit_code == 0, r.output
        assert json.loads(r.output)["objective"] == json.loads(ref)["objective"]
    (tmp_path / "bad.txt").write_text("3\nx\n")
    r = CliRunner().invoke(cli, ["predict", "--counts-file", str(tmp_path / "bad.txt")])
    assert r.exit_code == 2 and r.output.startswith("error:") and "line 2" in r.output
    r = CliRunner().invoke(cli, ["predict", "--counts-file", str(tmp_path / "c.txt"), "--counts", "3,4"])
    assert r.exit_code == 2 and "not both" in r.output


def test_grams_dir_writes_npy(tmp_path):
    r = CliRunner().invoke(cli, ["predict", "--counts", "20,10,5", "-M", "2", "--bias", "--grams", str(tmp_path / "g")])
    assert r.exit_code == 0, r.output
    p = predict([20, 10, 5], depth=2, bias=True)
    np.testing.assert_array_equal(np.load(tmp_path / "g" / "WH.npy"), p.WH)
    np.testing.assert_array_equal(np.load(tmp_path / "g" / "layer2_partial_gram.npy"), p.layers[1]["partial_gram"])


def test_large_K_text_table_is_grouped_and_json_small():
    K = 1000
    counts = ",".join(str(v) for v in np.maximum(5, np.round(500 * 0.01 ** (np.arange(K) / (K - 1)))).astype(int))
    r = CliRunner().invoke(cli, ["predict", "--counts", counts, "-M", "3", "--lambda-w", "1e-4", "--lambda-h", "1e-4"])
    assert r.exit_code == 0, r.output
    assert "one row per run" in r.output and len(r.output.splitlines()) < 80
    r = CliRunner().invoke(cli, ["predict", "--counts", counts, "-M", "6", "--json", "--width", "2000"])
    assert r.exit_code == 0 and len(r.output) < 1_000_000


def test_theory_and_predict_do_not_import_torch():
    """nclab predict starts like bare numpy + scipy (issue 12/14): torch is imported only where it is used."""
    import subprocess
    import sys

    code = ("import sys; import nclab.theory; from nclab.cli.predict import predict_cmd; "
            "predict_cmd(['--counts', '3,2', '--json'], standalone_mode=False); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
