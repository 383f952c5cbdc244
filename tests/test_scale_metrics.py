"""Issue 14 parts 2 and 4: metrics linear in K (tiles, no K x K matrix) and the field's metrics nclab lacked
(gnc2_h, gnc2_mean_h, equiangular_std_h/w, unc3), each against a slow obvious reference."""

import json
import os
import socket
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from click.testing import CliRunner

from nclab.metrics import ClassStats, deep_head_metrics, nc_metrics

NEW = ("gnc2_h", "gnc2_mean_h", "equiangular_std_h", "equiangular_std_w", "unc3")


def reference(H, y, W, global_mean="weighted"):
    """The new metrics the slow obvious way: loops over classes and pairs, float64."""
    H, W = np.asarray(H, dtype=np.float64), np.asarray(W, dtype=np.float64)
    classes = sorted(set(np.asarray(y).tolist()))
    n = np.array([np.sum(y == k) for k in classes], dtype=np.float64)
    mu = np.array([H[y == k].mean(0) for k in classes])
    muG = (n[:, None] * mu).sum(0) / n.sum() if global_mean == "weighted" else mu.mean(0)
    U = [(m - muG) / np.linalg.norm(m - muG) for m in mu]
    Wk = W[classes]
    pairs = [(a, b) for a in range(len(classes)) for b in range(a + 1, len(classes))]
    logs = np.array([np.log(1.0 / np.linalg.norm(U[a] - U[b])) for a, b in pairs])
    cos_u = np.array([U[a] @ U[b] for a, b in pairs])
    cos_w = np.array([Wk[a] @ Wk[b] / np.linalg.norm(Wk[a]) / np.linalg.norm(Wk[b]) for a, b in pairs])
    dual = np.array([Wk[a] @ U[a] / np.linalg.norm(Wk[a]) for a in range(len(classes))])
    return {"gnc2_h": logs.var(), "gnc2_mean_h": logs.mean(), "equiangular_std_h": cos_u.std(),
            "equiangular_std_w": cos_w.std(), "unc3": dual.std() / dual.mean()}, dual


def data(K, D, counts, sigma=0.3, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.full(c, k) for k, c in enumerate(counts)])
    rng.shuffle(y)
    mu = rng.standard_normal((K, D)) * 2
    H = (mu[y] + sigma * rng.standard_normal((len(y), D))).astype(dtype)
    W = mu + 0.5 * rng.standard_normal((K, D))
    return H, y, W


def etf_means(K, D, rng):
    Q, _ = np.linalg.qr(rng.standard_normal((D, K)))
    P = np.eye(K) - 1.0 / K
    return (P @ Q.T) * 3.0


CASES = {
    "balanced": (6, 9, [20] * 6, 0.3, np.float64),
    "imbalanced": (7, 10, [40, 25, 12, 9, 5, 3, 2], 0.4, np.float64),
    "K > D + 1": (12, 4, [15, 4, 8, 9, 10, 11, 5, 6, 7, 8, 20, 3], 0.2, np.float64),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("tile", [None, 3])
def test_new_metrics_match_slow_reference(case, tile):
    K, D, counts, sigma, dtype = CASES[case]
    H, y, W = data(K, D, counts, sigma, dtype=dtype)
    ref, dual = reference(H, y, W)
    for target in ("etf", "of"):
        m = nc_metrics(H, y, W, target=target, tile=tile)
        for k in NEW:
            assert m[k] == pytest.approx(ref[k], rel=1e-9, abs=1e-13), (k, target)
        np.testing.assert_allclose(m.per_class["unc3"], dual, rtol=1e-10)
        # streamed (one pass, D x D scatter) == one shot
        s = ClassStats(K).update(H[: len(y) // 2], y[: len(y) // 2]).update(H[len(y) // 2:], y[len(y) // 2:])
        ms = s.compute(W, target=target, tile=tile)
        for k in NEW:
            assert ms[k] == pytest.approx(ref[k], rel=1e-9, abs=1e-13), (k, "stream")


def test_collapsed_float32_against_reference():
    K, D = 8, 16
    rng = np.random.default_rng(3)
    mu = etf_means(K, D, rng)
    y = np.repeat(np.arange(K), 30)
    H = (mu[y] + 1e-5 * rng.standard_normal((len(y), D))).astype(np.float32)
    W = mu * 2.0
    ref, _ = reference(H.astype(np.float64), y, W)
    m = nc_metrics(H, y, W, target="etf")
    for k in NEW:
        assert m[k] == pytest.approx(ref[k], rel=1e-6, abs=1e-10), k
    assert m["equiangular_std_h"] < 1e-5 and m["gnc2_h"] < 1e-9 and abs(m["unc3"]) < 1e-5


def test_K_above_D_plus_1_says_why_and_reports_uniformity():
    K, D, counts, sigma, _ = CASES["K > D + 1"]
    H, y, W = data(K, D, counts, sigma)
    m = nc_metrics(H, y, W, np.zeros(K))  # with a bias: target etf
    assert "simplex ETF cannot exist" in m.reasons["nc2_h"] and "gnc2_h" in m.reasons["nc2_h"]
    assert np.isfinite(m["gnc2_h"]) and np.isfinite(m["nc2_h"])
    m = nc_metrics(H, y, W, target="of")
    assert "orthogonal frame cannot exist" in m.reasons["nc2_w"]


def test_tiles_equal_whole_for_every_metric():
    H, y, W = data(9, 5, [5, 9, 3, 7, 8, 2, 6, 4, 10], 0.5, seed=2)
    b = np.random.default_rng(1).standard_normal(9)
    for target in ("etf", "of", np.diag(np.arange(1.0, 10.0))):
        a = nc_metrics(H, y, W, b, target=target)
        for tile in (1, 2, 4, 5):
            c = nc_metrics(H, y, W, b, target=target, tile=tile)
            for k, v in a.values.items():
                assert c[k] == pytest.approx(v, rel=1e-11, abs=1e-14, nan_ok=True), (k, tile)


def test_no_dense_K_by_K_object_at_large_K(monkeypatch):
    """K = 6,000: a K x K float64 matrix is 288 MB; the metrics run in a 120 MB budget of tiles."""
    K, D = 6000, 8
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(K), 2)
    H = rng.standard_normal((K, D))[y] + 0.1 * rng.standard_normal((2 * K, D))
    W = rng.standard_normal((K, D))
    seen = []
    real_mm = torch.mm

    def spy(a, b, *args, **kw):
        out = real_mm(a, b, *args, **kw)
        seen.append(out.shape[0] * out.shape[1])
        return out

    monkeypatch.setattr(torch, "mm", spy)
    m = ClassStats(K).update(H, y).compute(W, tile=512)
    assert max(seen) <= 512 * 512 and np.isfinite(m["gnc2_h"]) and np.isfinite(m["cdnv"])
    assert m.info["tile"] == 512 and m.info["K_eff"] == K


def test_deep_head_and_json_carry_the_new_metrics():
    H, y, W = data(5, 6, [9, 7, 5, 8, 6], 0.3)
    rng = np.random.default_rng(0)
    W1 = rng.standard_normal((6, 6))
    W2 = rng.standard_normal((5, 6))
    d = deep_head_metrics(H, y, [W1, W2])
    for j, layer in enumerate(d.layers):
        Hj = H if j == 0 else H @ W1.T
        Pj = W2 @ W1 if j == 0 else W2
        ref, _ = reference(Hj, y, Pj)
        for k in NEW:
            assert layer[k] == pytest.approx(ref[k], rel=1e-8, abs=1e-12), (k, j)
    assert all(k in d.table() for k in NEW)


def test_measure_json_has_the_new_metrics(tmp_path):
    from nclab.cli import cli

    H, y, W = data(5, 6, [9, 7, 5, 8, 6], 0.3)
    np.savez(tmp_path / "d.npz", H=H, y=y, W=W)
    r = CliRunner().invoke(cli, ["measure", str(tmp_path / "d.npz"), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    ref, dual = reference(H, y, W)
    for k in NEW:
        assert doc["values"][k] == pytest.approx(ref[k], rel=1e-9, abs=1e-13)
    np.testing.assert_allclose(doc["per_class"]["unc3"], dual, rtol=1e-9)


LARGE_K = 1200  # > 4 tiles of 256: the tiled pairwise path across processes


def _worker(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        H, y, W = data(LARGE_K, 6, [3] * LARGE_K, 0.2, seed=4)
        half = len(y) // 2
        lo, hi = (0, half) if rank == 0 else (half, len(y))
        stats = ClassStats(LARGE_K, dim=6).update(H[lo:hi], y[lo:hi]).all_reduce()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = stats.compute(W, tile=256)
        torch.save(m.values, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or sys.platform == "win32", reason="needs torch.distributed gloo")
def test_distributed_reduction_at_large_K(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    H, y, W = data(LARGE_K, 6, [3] * LARGE_K, 0.2, seed=4)
    ref = ClassStats(LARGE_K).update(H, y).compute(W)
    for r in (0, 1):
        got = torch.load(tmp_path / f"rank{r}.pt")
        for k, v in ref.values.items():
            assert got[k] == pytest.approx(v, rel=1e-8, abs=1e-13, nan_ok=True), k


@pytest.mark.parametrize("kind", ["W", "W+b", "deep", "none"])
def test_cli_and_api_agree_on_the_same_dump(tmp_path, kind):
    """One default everywhere (issue 14, part 3): `nclab measure FILE` == nclab.metrics on the same arrays."""
    from nclab.cli import cli

    H, y, W = data(5, 6, [9, 7, 5, 8, 6], 0.3, seed=7)
    rng = np.random.default_rng(2)
    b = rng.standard_normal(5)
    W1 = rng.standard_normal((6, 6))
    arrays = {"H": H, "y": y}
    if kind == "W":
        arrays["W"] = W
        api = nc_metrics(H, y, W)
    elif kind == "W+b":
        arrays.update(W=W, b=b)
        api = nc_metrics(H, y, W, b)
    elif kind == "deep":
        arrays.update(W1=W1, W2=W)
        api = deep_head_metrics(H, y, [W1, W])
    else:
        api = nc_metrics(H, y)
    np.savez(tmp_path / "d.npz", **arrays)
    r = CliRunner().invoke(cli, ["measure", str(tmp_path / "d.npz"), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    cli_layers = doc["layers"] if "layers" in doc else [doc]
    api_layers = api.layers if hasattr(api, "layers") else [api]
    for got, ref in zip(cli_layers, api_layers):
        for k, v in ref.values.items():
            assert got["values"][k] == pytest.approx(v, rel=1e-12, abs=1e-15, nan_ok=True) or (
                got["values"][k] is None and not np.isfinite(v)), k


@pytest.mark.parametrize("bias", [False, True])
def test_measure_targets_from_a_structured_prediction_json(bias):
    """prediction.json above K = 32 holds the structure only: measure rebuilds the same targets from it."""
    from nclab import predict
    from nclab.cli.measure import _theory_kwargs

    counts = list(range(60, 20, -1))  # K = 40
    p = predict(counts, depth=2, widths=[50, 50], lambda_w=1e-3, lambda_h=1e-3, bias=bias)
    doc = json.loads(json.dumps(p.to_dict()))
    assert not doc["dense"] and "WH" not in doc
    a, b = _theory_kwargs(p, bias), _theory_kwargs(doc, bias)
    for key in ("target", "target_w", "nc3_scale"):
        for x, z in zip(a[key], b[key]):
            np.testing.assert_allclose(x, z, rtol=1e-12, atol=1e-14 * np.abs(x).max())
    np.testing.assert_allclose(a["target_wh"], b["target_wh"], rtol=1e-12, atol=1e-15)


def test_every_printed_metric_is_in_the_convention_table():
    """docs/metrics.md has one row per metric nclab prints (formula, global mean, centring, target, pass)."""
    from nclab.metrics.report import SCALARS

    doc = open(os.path.join(os.path.dirname(__file__), "..", "docs", "metrics.md")).read()
    H, y, W = data(5, 6, [9, 7, 5, 8, 6], 0.3)
    names = set(nc_metrics(H, y, W, np.zeros(5)).values) | set(SCALARS)
    for name in names:
        assert f"| `{name}` |" in doc, name


@pytest.mark.parametrize("bias", [False, True])
def test_structured_theory_targets_equal_dense(bias):
    """The theory's Grams read tile by tile (nclab.theory TiledGram) give the dense targets' values."""
    from nclab import predict
    from nclab.theory.structure import tiled_gram

    counts = [30, 30, 20, 20, 20, 12, 8, 8, 5]
    K = len(counts)
    p = predict(counts, depth=2, widths=[12, 12], lambda_w=1e-3, lambda_h=1e-3, bias=bias)
    rng = np.random.default_rng(5)
    y = np.concatenate([np.full(c, k) for k, c in enumerate(counts)])
    H = rng.standard_normal((K, 12))[y] + 0.3 * rng.standard_normal((len(y), 12))
    W1, W2 = rng.standard_normal((12, 12)), rng.standard_normal((K, 12))
    b = rng.standard_normal(K) if bias else None
    dense = dict(target=[p.gram("mean_gram", j) for j in (1, 2)], target_w=[p.gram("partial_gram", j) for j in (1, 2)],
                 target_wh=p.WH, nc3_scale=[p.gram("nc3_scale", j) for j in (1, 2)], center=bias)
    tiled = dict(target=[tiled_gram(p, "mean_gram", j) for j in (1, 2)],
                 target_w=[tiled_gram(p, "partial_gram", j) for j in (1, 2)], target_wh=tiled_gram(p, "WH"),
                 nc3_scale=[tiled_gram(p, "nc3_scale", j) for j in (1, 2)], center=bias)
    a = deep_head_metrics(H, y, [W1, W2], b, **dense)
    for tile in (None, 4):
        c = deep_head_metrics(H, y, [W1, W2], b, **tiled, tile=tile)
        for la, lc in zip(a.layers, c.layers):
            for k, v in la.values.items():
                assert lc[k] == pytest.approx(v, rel=1e-10, abs=1e-13, nan_ok=True), k
    # a class without samples: the structured target is restricted to the kept classes, as the dense one
    keep = y != 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = nc_metrics(H[keep], y[keep], W2 @ W1, b, num_classes=K, target=p.gram("mean_gram", 1), center=bias)
        c = nc_metrics(H[keep], y[keep], W2 @ W1, b, num_classes=K, target=tiled_gram(p, "mean_gram", 1),
                       center=bias, tile=3)
    for k, v in a.values.items():
        assert c[k] == pytest.approx(v, rel=1e-10, abs=1e-13, nan_ok=True), k


def test_measure_above_512_classes_uses_structured_targets(tmp_path, monkeypatch):
    """nclab measure with the theory's target at K = 600: no K x K target is formed, same values as dense."""
    from nclab import predict
    from nclab.cli import cli, measure

    K = 600
    counts = [60 - k for k in range(20)] + [3] * (K - 20)  # the rank budget R = 16 cuts no tie
    rng = np.random.default_rng(0)
    y = np.concatenate([np.full(c, k) for k, c in enumerate(counts)])
    H = rng.standard_normal((K, 16))[y] + 0.2 * rng.standard_normal((len(y), 16))
    W = rng.standard_normal((K, 16))
    np.savez(tmp_path / "d.npz", H=H, y=y, W=W, lambda_w=1e-6, lambda_h=1e-6)
    r = CliRunner().invoke(cli, ["measure", str(tmp_path / "d.npz"), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["target"] == "theory"
    p = predict(counts, widths=16, lambda_w=1e-6, lambda_h=1e-6)
    ref = nc_metrics(H, y, W, target=p.gram("mean_gram", 1), target_w=p.gram("partial_gram", 1),
                     target_wh=p.WH, nc3_scale=p.gram("nc3_scale", 1), center=False)
    for k, v in ref.values.items():
        assert doc["values"][k] == pytest.approx(v, rel=1e-9, abs=1e-13) or (doc["values"][k] is None and
                                                                         not np.isfinite(v)), k
    assert measure.TILED_TARGET_K < K


@pytest.mark.parametrize("D", [64, 2048])
def test_shifted_stream_in_the_features_dtype_keeps_the_collapsed_regime(D):
    """gemm_dtype=None (issue 12): float32 GEMM of deviations from a float64 reference; float32 features with
    noise 1e-5 agree with the float64 reference to 1e-6, at D = 64 and 2048."""
    K, n = 10, 200
    rng = np.random.default_rng(5)
    means = etf_means(K, D, rng) + 0.5 * rng.standard_normal(D)
    y = np.repeat(np.arange(K), n)
    rng.shuffle(y)
    H32 = (means[y] + 1e-5 * rng.standard_normal((K * n, D))).astype(np.float32)
    ref = nc_metrics(H32.astype(np.float64), y)
    s = ClassStats(K, gemm_dtype=None)
    for i in range(0, K * n, 300):
        s.update(torch.from_numpy(H32[i:i + 300]), y[i:i + 300])
    m = s.compute()
    for k in ("nc1", "nc1_trace", "cdnv"):
        assert m[k] == pytest.approx(ref[k], rel=1e-6), k
    # general (not collapsed) data: the same statistics as the float64 path to float32 accuracy
    H, y2, _ = data(6, 16, [50, 40, 30, 20, 10, 5], 0.5, dtype=np.float32)
    a, b = ClassStats(6).update(H, y2), ClassStats(6, gemm_dtype=None)
    for i in range(0, len(y2), 37):
        b.update(H[i:i + 37], y2[i:i + 37])
    torch.testing.assert_close(b.means, a.means, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(b.scatter, a.scatter, rtol=1e-5, atol=1e-5 * float(a.scatter.abs().max()))
    torch.testing.assert_close(b.m2, a.m2, rtol=1e-6, atol=0)


def test_sizes_that_cannot_fit_are_refused_with_the_memory_needed(monkeypatch):
    monkeypatch.setenv("NCLAB_MEMORY_LIMIT", "64M")
    with pytest.raises(ValueError, match="would need"):
        ClassStats(50000, 1024)  # 50,000 x 1,024 float64 means: 390 MB
    s = ClassStats(3000, 8, moments="trace").update(np.random.default_rng(0).standard_normal((6000, 8)),
                                                    np.repeat(np.arange(3000), 2))
    assert np.isfinite(s.compute(tile=256)["gnc2_h"])  # the pairwise metrics fit in tiles
