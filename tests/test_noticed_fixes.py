"""Regression tests for small defects noticed in earlier sessions (one test group per defect)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nclab.theory import make_problem
from nclab.theory.ce_imbalanced import DENSE_MAX_K, solve_ce_imbalanced


# --- 1. large-K rank of solve_ce_imbalanced: relative, not absolute, singular-value cut -------------------------
def test_large_k_rank_uses_a_relative_cut_at_large_counts():
    """K = 2049 > DENSE_MAX_K, two equal-count groups with counts ~1e10 (B ~ 1e5): the rounding-level singular
    value of B (~1e-11) passed the old absolute 1e-12 cut and the rank read K, impossible for centred logits.

    Expected rank, from the group structure: Z maps the within-group zero-sum vectors (dimension K - G) to
    alpha_g times themselves and the span of the group indicators into itself by C_gh = m_h a_gh + [g = h] alpha_h,
    two orthogonal invariant pieces, so rank Z = (K - G) [every alpha_g != 0] + rank C (dense SVD, relative tol)."""
    m, n = np.array([1025, 1024]), np.array([10**10, 3 * 10**9])
    counts = [int(n[0])] * int(m[0]) + [int(n[1])] * int(m[1])
    K = len(counts)
    assert K > DENSE_MAX_K
    sol = solve_ce_imbalanced(make_problem(counts, widths=K, lambda_w=5e-14, lambda_h=5e-14, loss="ce"))
    a, alpha = np.asarray(sol.groups["a"]), np.asarray(sol.groups["alpha"])
    assert sol.certified and np.all(np.abs(alpha) > 1.0)
    C = m[None, :] * a + np.diag(alpha)
    assert np.allclose(m @ C, 0.0, atol=1e-9 * np.abs(C).max())  # centred: 1^T Z = 0 (so rank C <= G - 1)
    expected = (K - len(m)) + int(np.linalg.matrix_rank(C))
    assert expected == K - 1
    assert sol.rank == expected


# --- 2. construct_ce memory estimate: the class means Hbar (d x K) counted once -----------------------------------
def _construct_ce_bytes(K: int, d: int, N: int) -> int:
    """By hand, M = 1: W_1 (K x d) + H (d x N) + Hbar (d x K) + U and V^T (K x r each, r = min(K, d)), float64."""
    r = min(K, d)
    return 8 * (K * d + d * N + d * K + 2 * K * r)


@pytest.mark.parametrize("K, d, n", [(3, 40, 5), (4, 16, 2)])
def test_construct_ce_memory_check_counts_each_array_once(monkeypatch, K, d, n):
    import nclab.theory.resources as resources
    from nclab.theory.ce import construct_ce, solve_ce

    pr = make_problem([n] * K, widths=[d], lambda_w=0.01, lambda_h=0.01, loss="ce")
    sol = solve_ce(pr, search=False)
    need = _construct_ce_bytes(K, d, n * K)
    # budget just above the true need but below need + 8 d K (the old estimate, Hbar twice): must build
    monkeypatch.setattr(resources, "available_memory", lambda: math.ceil((need + 4 * d * K) / resources.FRACTION))
    W, H, _ = construct_ce(pr, sol)
    assert [w.shape for w in W] == [(K, d)] and H.shape == (d, n * K)
    # budget just below the true need: both estimates refuse, with the one-line message
    monkeypatch.setattr(resources, "available_memory", lambda: math.floor((need - 8) / resources.FRACTION))
    with pytest.raises(ValueError, match=r"^the explicit minimizer \(W_1\.\.W_M and H of "):
        construct_ce(pr, sol)


# --- 3. Snapshotter NC1 of a layer with tiny weights: power-of-two rescaled layer features -------------------------
def _nc1_dense(feats: np.ndarray, labels: np.ndarray, K: int) -> float:
    """Reference: NC1 = tr(Sigma_W Sigma_B^+)/K of features (N, D) in float64, weighted global mean."""
    N = feats.shape[0]
    means = np.stack([feats[labels == k].mean(axis=0) for k in range(K)])
    centred = feats - means[labels]
    sw = centred.T @ centred / N
    counts = np.bincount(labels, minlength=K)
    mb = means - counts @ means / N
    sb = mb.T @ mb / K
    return float(np.trace(sw @ np.linalg.pinv(sb, rcond=1e-10, hermitian=True)) / K)


def test_snapshot_nc1_of_deep_layers_survives_tiny_weights():
    """W_1, W_2 ~ 1e-200: H_3 = W_2 W_1 H ~ 1e-400 underflows in float64 and nc1_L3 read NaN; NC1 is scale
    invariant, so it must equal the value at the unscaled weights (and the dense reference)."""
    import torch

    from nclab.theory import labels_from_counts, predict
    from nclab.ufm.snapshot import Snapshotter

    counts = [3, 2, 4]
    p = make_problem(counts, widths=[5, 4, 6], lambda_w=1e-3, lambda_h=1e-3, depth=3)
    snap = Snapshotter(predict(p))
    rng = np.random.default_rng(0)
    W = [rng.standard_normal((4, 5)), rng.standard_normal((6, 4)), rng.standard_normal((3, 6))]
    H = rng.standard_normal((5, sum(counts)))
    tiny = [W[0] * 1e-200, W[1] * 1e-200, W[2]]
    normal = snap([torch.tensor(w) for w in W], torch.tensor(H))
    scaled = snap([torch.tensor(w) for w in tiny], torch.tensor(H))
    labels = np.asarray(labels_from_counts(counts))
    feats = [H, W[0] @ H, W[1] @ W[0] @ H]  # H_j (d_j, N) at the unscaled weights
    for j in range(3):
        ref = _nc1_dense(feats[j].T, labels, len(counts))
        assert np.isfinite(scaled[f"nc1_L{j + 1}"])
        assert scaled[f"nc1_L{j + 1}"] == pytest.approx(normal[f"nc1_L{j + 1}"], rel=1e-10)
        assert normal[f"nc1_L{j + 1}"] == pytest.approx(ref, rel=1e-10)


# --- 4. report: a weights.pt in torch's legacy (non-zip) format is read without mmap -----------------------------
def _ufm_run(path, counts):
    from nclab.results import RunStore

    RunStore(path).write_config({"counts": counts}, kind="ufm-simulation", version="0.0-test")
    return path


def test_legacy_torch_weights_are_read_and_a_corrupt_file_is_named(tmp_path):
    import torch

    from nclab.report import runs as runlib

    rng = np.random.default_rng(3)
    W1, W2, H = rng.standard_normal((4, 3)), rng.standard_normal((3, 4)), rng.standard_normal((3, 6))
    labels = np.array([0, 0, 1, 1, 2, 2])
    state = {"weights": [torch.tensor(W1), torch.tensor(W2)], "H": torch.tensor(H), "labels": torch.tensor(labels)}
    legacy = _ufm_run(tmp_path / "legacy", [2, 2, 2])
    torch.save(state, legacy / "weights.pt", _use_new_zipfile_serialization=False)
    run = runlib.load_run(legacy)
    grams = runlib.learned_grams(run)
    # by hand: W = W_2 W_1 (K x d), class means of the columns of H (bias-free: uncentred)
    W = W2 @ W1
    means = np.stack([H[:, labels == k].mean(axis=1) for k in range(3)])
    assert run.problems == [] and grams is not None and grams["source"] == "weights.pt"
    for got, ref in zip((grams["WWt"], grams["HtH"], grams["WH"]), (W @ W.T, means @ means.T, W @ means.T)):
        np.testing.assert_allclose(got, ref, rtol=1e-12)
    # a damaged file (a legacy file cut short): no Grams, and the report names the file
    broken = _ufm_run(tmp_path / "broken", [2, 2, 2])
    (broken / "weights.pt").write_bytes((legacy / "weights.pt").read_bytes()[:200])
    run = runlib.load_run(broken)
    assert runlib.learned_grams(run) is None
    assert run.problems == [f"{broken / 'weights.pt'}: not readable as nclab weights; learned Grams left out"]


# --- 5. human_bytes: every size, no dead branch, no exponent ------------------------------------------------------
@pytest.mark.parametrize("n, text", [
    (0, "0 B"), (1023, "1023 B"), (1024, "1 KB"), (1.5 * 2**30, "1.5 GB"),
    (1023 * 2**10, "1023 KB"),  # 1023 KiB: was '1.02e+03 KB'
    (10**18, "888 PB"),  # 1e18 / 2^50 = 888.18
    (10**21, "867 EB"),  # 1e21 / 2^60 = 867.36
    (2**61, "2 EB"), (2**71, "2048 EB"),  # beyond the largest unit: whole numbers, no exponent
])
def test_human_bytes_exact_strings(n, text):
    from nclab.metrics._checks import human_bytes

    assert human_bytes(n) == text


# --- 6. phase figures: the legend ("minority rows merged", ...) lies inside the figure ----------------------------
def _legend_inside(fig) -> list:
    """[(legend labels, inside?)] for every legend, measured by the Agg renderer against the figure's box."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    out = []
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is not None:
            e = legend.get_window_extent(renderer)
            inside = box.x0 <= e.x0 and e.x1 <= box.x1 and box.y0 <= e.y0 and e.y1 <= box.y1
            out.append(([t.get_text() for t in legend.get_texts()], inside))
    return out


def _tiny_grid(loss: str) -> dict:
    from nclab.report.phase import MINORITY_COLLAPSED, NOT_COLLAPSED, TRIVIAL

    states = np.array([[NOT_COLLAPSED, MINORITY_COLLAPSED, TRIVIAL], [NOT_COLLAPSED, NOT_COLLAPSED, TRIVIAL]])
    return {"loss": loss, "depth": 1, "majority": [200, 100], "minority_classes": 2,
            "lambdas": np.array([1e-4, 1e-2, 1e-1]), "sizes": np.array([2, 100]), "states": states,
            "outcomes": [["descending", "reached", "reached"], ["reached"] * 3]}


@pytest.mark.parametrize("rc", [{"legend.fontsize": "medium", "font.size": 10.0}, {"legend.fontsize": "x-large"}])
@pytest.mark.parametrize("which", ["ce", "mse", "empirical-ce", "empirical-mse"])
def test_phase_figure_legends_fit_inside_the_figure(rc, which):
    """Built under matplotlib's default rc (as the report page builds them) or a larger legend font, the
    legends of the CE phase figure and of both empirical figures stay inside the figure when drawn."""
    import matplotlib

    from nclab.report.empirical import empirical_phase_figure
    from nclab.report.phase import ce_phase_figure

    with matplotlib.rc_context(rc):
        if which == "ce":
            fig = ce_phase_figure(depths=[1], lambdas=np.geomspace(1e-4, 1e-1, 4), sizes=np.array([1, 10, 100]),
                                  marks=[(1, 1e-3, 10, "run")])
        elif which == "mse":
            from nclab.report.figures import phase_figure

            fig = phase_figure(depths=[1], lambdas=np.geomspace(1e-4, 1e-1, 4), sizes=np.array([1, 10, 100]),
                               marks=[(1, 1e-3, 10, True, "run")])
        else:
            grid = _tiny_grid(which.split("-")[1])
            fig = empirical_phase_figure(grid, theory_lambdas=np.geomspace(1e-4, 1e-1, 4),
                                         theory_sizes=np.array([2, 10, 100]))
        legends = _legend_inside(fig)
    assert len(legends) == 1
    labels, inside = legends[0]
    assert "minority rows merged" in labels or "minority collapsed" in labels
    assert inside, labels
