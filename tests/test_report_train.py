"""The report for real-network (train) runs, the shared metric names, legends, log axes, and bad run files.

Small runs only: a few L-BFGS steps of the UFM and a few full-batch epochs of an MLP on the bundled digits.
"""

import json
import math
import os

import numpy as np
import pytest
from click.testing import CliRunner

import nclab
from nclab.cli import cli
from nclab.experiments import train
from nclab.experiments import trainer as trainer_mod
from nclab.report import build_report, load_run
from nclab.report import columns as colnames
from nclab.report import figures as figlib
from nclab.report import runs as runlib
from nclab.report.page import theory_row
from nclab.results import RunStore
from nclab.ufm import make_config
from nclab.ufm.snapshot import Snapshotter

TRAIN = dict(dataset="digits", arch="mlp", mlp_depth=1, mlp_width=16, width=16, bias=False, loss="mse",
             lambda_w=5e-4, lambda_h=5e-4, batch_size=0, test_per_class=5, threads=1, seed=0)
IMBALANCED = [40, 40, 40, 40, 40, 40, 40, 40, 6, 6]


def with_grams(monkeypatch):
    """Until experiments/trainer.py calls ``tracker.save`` itself: write grams.json after the outputs."""
    original = trainer_mod._write_outputs

    def write(t, store):
        original(t, store)
        t.tracker.save(store, epoch=t.rows[-1]["epoch"] if t.rows else None)

    monkeypatch.setattr(trainer_mod, "_write_outputs", write)


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    """train/depth-3 (imbalanced digits, 3-layer head, 8 epochs), train/depth-1 (80 epochs: a 10x longer
    x range), ufm/depth-2 (L-BFGS)."""
    root = tmp_path_factory.mktemp("runs")
    mp = pytest.MonkeyPatch()
    with_grams(mp)
    try:
        train(counts=IMBALANCED, depth=3, epochs=8, out=root / "train" / "depth-3", **TRAIN)
        train(counts=IMBALANCED, depth=1, epochs=80, track_every=8, out=root / "train" / "depth-1", **TRAIN)
    finally:
        mp.undo()
    nclab.simulate(make_config([8, 4, 2, 2], depth=2, widths=6, lambda_w=5e-3, lambda_h=5e-3, optimizer="lbfgs",
                               steps=60, snapshot_every=20, seed=1), out=root / "ufm" / "depth-2")
    return root


# ---------------------------------------------------------------------------------------------- the names
def test_every_kind_writes_the_shared_columns(runs_root):
    for name, M in (("train/depth-3", 3), ("ufm/depth-2", 2)):
        run = load_run(runs_root / name)
        cols = set(run.columns)
        need = {"nc2_w", "nc2_h", "nc3", "nc1_L1"} | {colnames.layer_column(b, j) for b in colnames.PER_LAYER
                                                     for j in range(1, M + 1)}
        need |= {f"w_norm_{k}" for k in range(run.num_classes)} | {f"h_norm_{k}" for k in range(run.num_classes)}
        assert need <= cols, (name, sorted(need - cols))
        for row in run.rows:  # end to end == layer 1, by definition (columns.py)
            assert row["nc2_w"] == row["nc2_w_L1"] and row["nc2_h"] == row["nc2_h_L1"]
    raw = RunStore(runs_root / "train" / "depth-3").read_rows()[-1]  # written by the tracker, not aliased
    assert raw["nc2_w"] == raw["nc2_w_L1"] and math.isfinite(raw["nc2_h"]) and math.isfinite(raw["w_norm_err"])


def test_nc1_is_undefined_at_the_zero_solution():
    """All class means equal (here: zero): NC1 is NaN, not a perfect 0; no numpy warning leaks."""
    import torch

    pred = nclab.predict([20, 10, 5, 5], depth=2, widths=6, lambda_w=2e-2, lambda_h=2e-2)
    with np.errstate(all="raise"):
        row = Snapshotter(pred)([torch.zeros(6, 6), torch.zeros(4, 6)], torch.zeros(6, 40))
    assert math.isnan(row["nc1_L1"]) and math.isnan(row["nc1_L2"])


def test_old_rows_get_the_shared_names():
    old_ufm = colnames.with_aliases({"nc2_w": 0.1, "nc2_h": 0.2, "nc1_L1": 0.0, "h_norm_0": 0.0, "h_norm_1": 0.0})
    assert old_ufm["nc2_w_L1"] == 0.1 and old_ufm["nc2_h_L1"] == 0.2 and math.isnan(old_ufm["nc1_L1"])
    old_train = colnames.with_aliases({"nc2_w_L1": 0.3, "nc2_h_L1": None, "nc1_L1": 0.0})
    assert old_train["nc2_w"] == 0.3 and old_train.get("nc2_h") is None and old_train["nc1_L1"] == 0.0


# ---------------------------------------------------------------------------------------------- train runs
def test_train_run_shows_norms_grams_and_collapsed_classes(runs_root):
    run = load_run(runs_root / "train" / "depth-3")
    grams = runlib.learned_grams(run)
    assert grams["source"].startswith("grams.json") and all(grams[k].shape == (10, 10) for k in ("WWt", "HtH", "WH"))
    norms = runlib.learned_norms(run)
    assert norms["w"].shape == (10,) and norms["h"].shape == (10,)
    assert np.allclose(norms["w"] ** 2, np.diag(grams["WWt"]), rtol=1e-9)  # the columns and grams.json agree
    row = theory_row(run, "depth-3")
    assert row[7] != "?" and row[8] != "?"  # collapsed classes, predicted and learned
    assert figlib.gram_figure(run) is not None and figlib.norms_figure([run]) is not None


def test_old_train_run_uses_its_weights(runs_root, tmp_path):
    """A train run without grams.json and per-class columns (older nclab): W W^T from the head's weights in
    weights.pt, class means unknown ("h" None), collapsed classes from ||w_k||."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(runs_root / "train" / "depth-3", old)
    (old / "grams.json").unlink()
    store = RunStore(old)
    rows = [{k: v for k, v in r.items() if not runlib.PER_CLASS.match(k)} for r in store.read_rows()]
    (old / "metrics.csv").unlink()
    RunStore(old).append_rows(rows)
    run = load_run(old)
    grams = runlib.learned_grams(run)
    assert grams["HtH"] is None and grams["source"].startswith("weights.pt")
    new = runlib.learned_grams(load_run(runs_root / "train" / "depth-3"))
    assert np.allclose(grams["WWt"], new["WWt"], rtol=1e-6)
    norms = runlib.learned_norms(run)
    assert norms["h"] is None and theory_row(run, "old")[8] != "?"
    assert figlib.gram_figure(run) is not None and figlib.norms_figure([run]) is not None


def test_report_of_train_runs_has_every_figure(runs_root, tmp_path):
    lines = []
    page = build_report(runs_root / "train", tmp_path / "r.html", figures_dir=tmp_path / "figs", progress=lines.append)
    names = sorted(p.stem for p in (tmp_path / "figs").glob("*.png"))
    assert names == ["gram-depth-1", "gram-depth-3", "layer-metrics", "layers", "metrics", "norms", "phase"]
    assert all((tmp_path / "figs" / f"{n}.pdf").stat().st_size > 1000 for n in names)
    text = page.read_text()
    assert text.count("<img") == len(names) and "collapsed, learned" in text
    assert lines[0].startswith("report: read 2 run(s)") and lines[-1].startswith("report: wrote")
    # the per-layer figure has one column per layer of the deepest run (3) and the four NC rows
    runs = [load_run(runs_root / "train" / d) for d in ("depth-1", "depth-3")]
    fig = figlib.layer_metrics_figure(runs)
    titles = [ax.get_title() for ax in fig.axes]
    assert sum("j = 3" in t for t in titles) == 4 and sum("j = 1" in t for t in titles) == 4


def test_epoch_ranges_10x_apart_share_a_log_x_axis(runs_root):
    runs = [load_run(runs_root / "train" / d) for d in ("depth-1", "depth-3")]  # 80 and 8 epochs
    fig = figlib.metrics_figure(runs)
    assert {ax.get_xscale() for ax in fig.axes if ax.get_visible() and ax.lines} == {"symlog"}
    fig = figlib.metrics_figure(runs[1:])
    assert {ax.get_xscale() for ax in fig.axes if ax.get_visible() and ax.lines} == {"linear"}


# ---------------------------------------------------------------------------------------------- legends
def _fake(path, kind, config, counts=None, rows=None):
    store = RunStore(path)
    store.write_config(config, kind=kind, version=nclab.__version__)
    store.append_rows(rows or [{"epoch": e, "nc1_L1": 1.0 / (e + 1)} for e in range(3)])
    store.write_json("summary.json", {"status": "complete", **({"counts": counts} if counts else {})})
    return load_run(path)


def test_labels_come_from_the_fields_that_differ(tmp_path):
    base = {"arch": "mlp", "depth": 3, "epochs": 60, "loss": "mse", "threads": 1}
    a = _fake(tmp_path / "digits-mlp" / "depth-3", "train", {**base, "dataset": "digits", "counts": None},
              counts=[178] * 10)
    b = _fake(tmp_path / "mlp-bal" / "depth-3", "train", {**base, "dataset": "fashion", "counts": [500] * 10})
    c = _fake(tmp_path / "mlp-bal" / "depth-1", "train", {**base, "dataset": "fashion", "counts": [500] * 10,
                                                          "depth": 1, "threads": 2})
    labels = runlib.run_labels([a, b, c])
    assert labels == ["dataset = digits, M = 3", "dataset = fashion, M = 3", "dataset = fashion, M = 1"]
    assert runlib.run_labels([a, b]) == ["dataset = digits", "dataset = fashion"]
    assert runlib.label_value(a, "counts") == "10x178"  # a whole split: the counts drawn, never "None"
    same = _fake(tmp_path / "again", "train", {**base, "dataset": "digits", "counts": None}, counts=[178] * 10)
    assert runlib.run_labels([a, same]) == ["digits-mlp/depth-3", "again"]  # nothing differs: the folders
    assert runlib.run_labels([a]) == ["depth-3"]
    ufm = _fake(tmp_path / "ufm", "ufm-simulation", {"counts": [3, 3], "widths": [4, 4, 4]})
    assert runlib.run_labels([b, ufm]) == ["train, counts = 10x500", "ufm-simulation, counts = 2x3"]  # kinds named
    fig = figlib.metrics_figure([a, b, c])
    colors = {tuple(line.get_color()) for line in fig.axes[0].lines}
    assert len(colors) == 3  # one colour per run, never shared by equal labels


# ---------------------------------------------------------------------------------------------- log floors
def test_zeros_on_a_log_axis_sit_on_a_labelled_floor_and_nan_is_a_gap(tmp_path):
    rows = [{"step": s, "nc1_L1": v, "nc3": 0.1} for s, v in enumerate([1e-3, 1e-5, 0.0, math.nan, 1e-6])]
    run = _fake(tmp_path / "z", "ufm-simulation", {"counts": [3, 3], "widths": [4]}, rows=rows)
    fig = figlib.metrics_figure([run])
    ax = next(a for a in fig.axes if a.get_title().startswith("NC1"))
    y = ax.lines[0].get_ydata()
    assert y[2] == pytest.approx(1e-7) and math.isnan(y[3])  # one decade below the smallest value; a gap
    assert any("= 0 (exact)" in t.get_text() for t in ax.texts) and "gaps: undefined" in ax.get_title()


def test_phase_diagram_draws_only_the_runs_depths(runs_root):
    runs = [load_run(runs_root / "ufm" / "depth-2")]
    assert figlib.phase_setup(runs)["depths"] == [2]
    assert figlib.phase_setup([])["depths"] == [1, 2, 3, 6]


def test_norms_figure_labels_each_place_once_and_keeps_the_legend_outside(runs_root):
    run = load_run(runs_root / "ufm" / "depth-2")
    fig = figlib.norms_figure([run])
    for ax in fig.axes:
        texts = [t.get_text() for t in ax.texts]
        assert len(texts) == len(set(texts))
    legend = fig.axes[1].get_legend()
    assert legend is not None and legend.get_bbox_to_anchor().x0 > fig.axes[1].get_position().x1 * fig.bbox.width


# ---------------------------------------------------------------------------------------------- bad files
@pytest.fixture()
def bad_root(runs_root, tmp_path):
    import shutil

    root = tmp_path / "bad"
    for name in ("summary", "prediction", "metrics"):
        shutil.copytree(runs_root / "ufm" / "depth-2", root / name)
    (root / "summary" / "summary.json").write_text("[1, 2, 3]")
    (root / "prediction" / "prediction.json").write_text('"a string"')
    (root / "metrics" / "metrics.csv").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe binary")
    return root


def test_bad_run_files_are_named_warnings_not_tracebacks(bad_root, tmp_path):
    res = CliRunner().invoke(cli, ["runs", str(bad_root)])
    assert res.exit_code == 0 and res.exception is None, res.output
    warnings = [line for line in res.output.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 3
    for name in ("summary/summary.json", "prediction/prediction.json", "metrics/metrics.csv"):
        assert any(str(bad_root / name) in w for w in warnings), (name, warnings)
    assert "3 run(s)" in res.output
    res = CliRunner().invoke(cli, ["report", str(bad_root), "--out", str(tmp_path / "r.html"), "-q"])
    assert res.exit_code == 0 and res.exception is None, res.output
    assert sum(line.startswith("warning: ") for line in res.output.splitlines()) == 3
    assert "Warnings" in (tmp_path / "r.html").read_text()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_an_unreadable_metrics_file_is_a_warning(runs_root, tmp_path):
    import shutil

    shutil.copytree(runs_root / "ufm" / "depth-2", tmp_path / "r")
    (tmp_path / "r" / "metrics.csv").chmod(0)
    run = load_run(tmp_path / "r")
    assert run.rows == [] and "cannot be read" in run.problems[0]


def test_figures_dir_that_is_a_file_is_one_line(runs_root, tmp_path):
    (tmp_path / "file").write_text("x")
    for target in (tmp_path / "file", tmp_path / "file" / "sub"):
        res = CliRunner().invoke(cli, ["report", str(runs_root / "ufm"), "--out", str(tmp_path / "r.html"),
                                       "--figures-dir", str(target), "--no-phase-diagram"])
        assert res.exit_code == 2 and res.output.startswith("error: cannot write figures to"), res.output
        assert res.output.count("\n") == 1 and str(target) in res.output


def test_runs_defaults_to_the_current_directory_and_json_is_strict(runs_root, monkeypatch):
    monkeypatch.chdir(runs_root / "ufm")
    res = CliRunner().invoke(cli, ["runs"])
    assert res.exit_code == 0 and "depth-2" in res.output and "1 run(s)" in res.output, res.output
    res = CliRunner().invoke(cli, ["runs", "--json"])
    json.loads(res.output, parse_constant=lambda c: pytest.fail(f"bare {c} in --json"))


def test_report_cli_prints_progress_on_stderr(runs_root, tmp_path):
    res = CliRunner().invoke(cli, ["report", str(runs_root / "ufm"), "--out", str(tmp_path / "r.html"),
                                   "--no-phase-diagram"])
    assert res.exit_code == 0, res.stderr
    assert res.stdout.startswith("report: ") and "read 1 run(s)" in res.stderr and "drew" in res.stderr


def test_collapse_is_judged_against_the_predicted_scale():
    """At the zero solution every learned norm is ~1e-11: all classes collapsed, not "none"."""
    tiny = np.array([1.3e-11, 1.2e-11, 1.1e-11, 7e-12])
    assert runlib.collapsed_classes(tiny) == []  # against themselves they look alike
    assert runlib.collapsed_classes(tiny, scale=6.4) == [0, 1, 2, 3]
    assert runlib.collapsed_classes(np.array([3.0, 2.0, 1e-6, 0.0]), scale=1.0) == [2, 3]


def test_phase_search_from_the_previous_row_is_exact(monkeypatch):
    """The searches start where the previous row switched (a hint); any hint gives the brute-force row."""
    from nclab.report import phase

    rng = np.random.default_rng(0)
    for _ in range(200):
        L = int(rng.integers(1, 20))
        lambdas, hints = np.arange(L, dtype=float), {}
        for _ in range(5):
            a = int(rng.integers(0, L + 1))
            b = int(rng.integers(a, L + 1))
            truth = np.zeros(L, int)
            truth[a:], truth[b:] = phase.MINORITY_COLLAPSED, phase.TRIVIAL
            monkeypatch.setattr(phase, "phase_state", lambda *args, t=truth: int(t[int(args[-1])]))
            assert (phase._row((9,), 1, 1, 1, lambdas, hints) == truth).all()


def test_forked_drawing_gives_the_same_figures_and_survives_a_broken_one(runs_root):
    runs = [load_run(runs_root / "train" / d) for d in ("depth-1", "depth-3")]

    def broken():
        raise RuntimeError("boom")

    jobs = [(lambda: figlib.metrics_figure(runs), 80, ("png",)), (lambda: None, 80, ("png",)),
            (broken, 80, ("png",)), (lambda: figlib.layers_figure(runs), 80, ("png",))]
    serial = figlib.render_all(jobs, processes=1)
    assert serial[1] is None and serial[2] == {"error": "RuntimeError: boom"} and serial[0]["png"][:4] == b"\x89PNG"
    if hasattr(os, "fork"):
        assert figlib.render_all(jobs, processes=2) == serial


def test_weights_are_read_without_torch_exactly(runs_root, tmp_path):
    import torch

    def same(a, b):
        if isinstance(b, torch.Tensor):
            return isinstance(a, np.ndarray) and a.shape == tuple(b.shape) and np.array_equal(a, b.detach().numpy())
        if isinstance(b, dict):
            return list(a) == list(b) and all(same(a[k], b[k]) for k in b)
        if isinstance(b, (list, tuple)):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        return a == b

    for name in ("train/depth-3", "ufm/depth-2"):
        path = runs_root / name / "weights.pt"
        assert same(runlib.read_tensors(path), torch.load(path, weights_only=True))
    x = torch.arange(24, dtype=torch.float64).reshape(4, 6)
    odd = {"t": x.t(), "s": x[1:, 2:], "scalar": torch.tensor(3.5), "empty": torch.zeros(0, 3),
           "b": torch.tensor([True, False]), "i": torch.tensor([1, 2], dtype=torch.int32)}
    torch.save(odd, tmp_path / "odd.pt")
    assert same(runlib.read_tensors(tmp_path / "odd.pt"), odd)
    torch.save({"x": torch.ones(2, dtype=torch.bfloat16)}, tmp_path / "bf16.pt")
    with pytest.raises(ValueError, match="not a plain tensor"):
        runlib.read_tensors(tmp_path / "bf16.pt")  # learned_grams then asks torch.load
