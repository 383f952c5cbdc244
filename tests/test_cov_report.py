"""Branches of nclab.report the other tests do not reach (issue 15): damaged or sparse run folders (each a named
warning or a plain fallback, never a traceback), weights files in other formats, labels of runs that collide,
and figure variants (legend placement, colours, empty panels, forked drawing without fork)."""

import json
import pathlib
import zipfile

import matplotlib
import numpy as np
import pytest
import torch

from nclab.report import figures
from nclab.report import runs as runlib
from nclab.results import RunStore

matplotlib.use("Agg")


def make_run(path, config, *, kind="ufm-simulation", rows=None, summary=None, files=None):
    """A run folder written with RunStore, as nclab writes one; ``files``: extra {name: bytes or JSON object}."""
    store = RunStore(path)
    store.write_config(config, kind=kind, version="0.0-test")
    if rows:
        store.append_rows(rows)
    if summary is not None:
        store.write_json("summary.json", summary)
    for name, value in (files or {}).items():
        p = pathlib.Path(path) / name
        p.write_bytes(value if isinstance(value, bytes) else json.dumps(value).encode())
    return pathlib.Path(path)


def mem_run(config=None, rows=None, kind="ufm-simulation", name="r", **kw):
    """A Run object without a folder (figures only read its fields)."""
    return runlib.Run(path=pathlib.Path("/runs") / name, kind=kind, version="0", config=config or {},
                      rows=rows or [], **kw)


# ---------------------------------------------------------------------------------------------- run fields
def test_depth_counts_and_classes_fall_back_in_order():
    # depth: config keys that are not ints (a string, a bool) are skipped; then the prediction's widths
    r = mem_run({"depth": "3", "M": True}, prediction={"problem": {"widths": [5, 5, 5, 5]}})
    assert r.depth == 4
    assert mem_run({"depth": "3"}).depth is None
    # counts: non-numeric entries make a source unusable; nothing usable -> None, then classes from the config
    r = mem_run({"counts": ["a", 2], "classes": 5})
    assert r.counts is None and r.num_classes == 5
    assert mem_run({"classes": True}).num_classes is None and mem_run({"classes": 0}).num_classes is None
    assert mem_run({}, summary={"counts": [3, 2.0]}).counts == [3, 2]


def test_key_params_and_progress_of_sparse_configs():
    assert runlib.key_params(mem_run({"classes": 5, "loss": "ce"})) == {"K": "5", "loss": "ce"}
    assert runlib.key_params(mem_run({"steps": 10})) == {"steps": "10"}  # no K, no M
    assert runlib.progress(mem_run({"steps": 10})) == "-"  # nothing done yet (no rows, no summary)
    assert runlib.progress(mem_run({}, summary={"step": 7})) == "7 steps"  # no budget configured


# ---------------------------------------------------------------------------------------------- damaged folders
def test_load_run_refuses_a_folder_without_config(tmp_path):
    with pytest.raises(ValueError, match="is not a run directory"):
        runlib.load_run(tmp_path)


def test_damaged_files_are_named_problems(tmp_path):
    path = make_run(tmp_path / "a", {"steps": 5}, summary={"status": "complete", "final": [1, 2]})
    (path / "environment.json").mkdir()  # present but not readable as a file: is_file() is False -> absent
    (path / "prediction.json").write_bytes(b"[1, 2]")
    run = runlib.load_run(path)
    assert run.summary == {"status": "complete"} and run.final == {} and run.rows == []
    assert run.environment is None and run.prediction is None
    assert any("its 'final' entry is not an object; left out" in p for p in run.problems)
    assert any("prediction.json: valid JSON but not an object (a list); left out" in p for p in run.problems)
    assert len(run.problems) == 2


def test_an_unreadable_json_file_is_a_problem(tmp_path, monkeypatch):
    path = make_run(tmp_path / "a", {"steps": 5}, files={"summary.json": {"status": "complete"}})
    real = pathlib.Path.read_bytes

    def refuse(self):
        if self.name == "summary.json":
            raise PermissionError(13, "Permission denied")
        return real(self)

    monkeypatch.setattr(pathlib.Path, "read_bytes", refuse)
    run = runlib.load_run(path)
    assert run.summary == {}
    assert run.problems == [f"{path / 'summary.json'}: cannot be read (Permission denied); left out"]


def test_an_empty_metrics_file_is_an_empty_table(tmp_path):
    path = make_run(tmp_path / "a", {"steps": 5})
    (path / "metrics.csv").write_bytes(b"")
    run = runlib.load_run(path)
    assert run.rows == [] and run.problems == [] and run.x_key is None


# ---------------------------------------------------------------------------------------------- labels
def test_labels_of_identical_configs_fall_back_to_folders():
    a, b = mem_run({"M": 2}, name="x"), mem_run({"M": 2}, name="y")
    c = mem_run({"M": 2}, kind="train", name="z")
    # kinds differ but no field does: the two equal ufm runs are told apart by folder only
    assert runlib.run_labels([a, b, c]) == ["x", "y", "z"]
    d = mem_run({"M": 3}, name="w")
    labels = runlib.run_labels([a, b, d])
    assert labels == ["M = 2 (x)", "M = 2 (y)", "M = 3 (w)"]  # every label gets its folder once two collide


def test_labels_take_at_most_max_fields_when_they_already_differ():
    runs = [mem_run({"lr": lr, "seed": s, "steps": st, "epochs": e}, name=f"r{i}")
            for i, (lr, s, st, e) in enumerate([(0.1, 1, 10, 1), (0.2, 2, 20, 2), (0.3, 3, 30, 3)])]
    labels = runlib.run_labels(runs, max_fields=1)
    assert labels == ["lr = 0.1", "lr = 0.2", "lr = 0.3"]


# ---------------------------------------------------------------------------------------------- norms
def test_class_norms_without_a_known_class_count():
    final = {"step": 1, "w_norm_0": 2.0, "w_norm_1": 1e-5, "w_norm_2": 1.0, "h_norm_0": 1.0}
    run = mem_run({}, rows=[final])
    norms = runlib.learned_norms(run)
    np.testing.assert_array_equal(norms["w"], [2.0, 1e-5, 1.0])
    assert norms["h"] is None  # h_norm_1, h_norm_2 missing
    assert runlib.learned_collapsed(run) == [1]  # 1e-5 <= 1e-3 * 2
    assert runlib.predicted_collapsed(run) is None  # no prediction


def test_mismatched_predicted_norms_and_no_norms_at_all():
    run = mem_run({"counts": [2, 2, 2]}, prediction={"classes": {"w_norm2": [1, 1, 1], "h_norm2": [1, 1]}})
    assert runlib.predicted_norms(run) is None
    assert runlib._vector([[1.0]], None) is None and runlib._vector("x", None) is None
    assert runlib._matrix(np.zeros((2, 3))) is None and runlib._matrix([["a"]]) is None
    assert runlib.learned_collapsed(mem_run({}, name="none")) is None  # no norms, no grams, no weights


# ---------------------------------------------------------------------------------------------- weights and Grams
def ufm_state(seed=0):
    g = torch.Generator().manual_seed(seed)
    W1, W2 = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)
    H = torch.randn(3, 6, generator=g, dtype=torch.float64)
    return {"weights": [W1, W2], "H": H, "labels": torch.tensor([0, 0, 1, 1, 2, 2])}


def grams_by_hand(state):
    W = (state["weights"][1] @ state["weights"][0]).numpy()
    H, y = state["H"].numpy(), state["labels"].numpy()
    means = np.stack([H[:, y == k].mean(1) for k in range(3)])
    return W @ W.T, means @ means.T, W @ means.T


def test_weights_the_numpy_reader_refuses_are_read_through_torch(tmp_path):
    """A zip weights.pt holding more than plain tensors (here a torch.dtype): the numpy reader refuses it,
    torch.load reads it, and the Grams are those of the stored state."""
    state = ufm_state()
    path = make_run(tmp_path / "a", {"counts": [2, 2, 2]})
    torch.save({**state, "dtype": torch.float64}, path / "weights.pt")
    with pytest.raises(ValueError, match="torch.float64 is not a plain tensor"):
        runlib.read_tensors(path / "weights.pt")
    run = runlib.load_run(path)
    g = runlib.learned_grams(run)
    for got, ref in zip((g["WWt"], g["HtH"], g["WH"]), grams_by_hand(state)):
        np.testing.assert_allclose(got, ref, rtol=1e-12)
    assert run.problems == []


def test_legacy_torch_format_is_read_without_mmap(tmp_path):
    """torch's pre-1.6 (non-zip) format: not a zip for the numpy reader (ValueError), and torch.load cannot
    memory-map it: it is read whole, and the Grams are those of the stored state."""
    state = ufm_state()
    path = make_run(tmp_path / "a", {"counts": [2, 2, 2]})
    torch.save(state, path / "weights.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match="not a zip archive"):
        runlib.read_tensors(path / "weights.pt")
    run = runlib.load_run(path)
    g = runlib.learned_grams(run)
    for got, ref in zip((g["WWt"], g["HtH"], g["WH"]), grams_by_hand(state)):
        np.testing.assert_allclose(got, ref, rtol=1e-12)
    assert run.problems == []


def test_foreign_weights_are_a_problem_or_nothing(tmp_path):
    path = make_run(tmp_path / "a", {"counts": [2, 2, 2]}, files={"weights.pt": b"not a checkpoint"})
    run = runlib.load_run(path)
    assert runlib.learned_grams(run) is None
    assert run.problems == [f"{path / 'weights.pt'}: not readable as nclab weights; learned Grams left out"]
    # readable, but neither a UFM state nor a state_dict: no Grams and no problem
    other = make_run(tmp_path / "b", {"counts": [2, 2, 2]})
    torch.save({"something": torch.zeros(2)}, other / "weights.pt")
    run = runlib.load_run(other)
    assert runlib.learned_grams(run) is None and run.problems == []


def test_grams_json_without_a_valid_wwt_falls_back_to_the_weights(tmp_path):
    state = ufm_state(1)
    path = make_run(tmp_path / "a", {"counts": [2, 2, 2]}, files={"grams.json": {"WWt": [[1, 2, 3]], "epoch": 3}})
    torch.save(state, path / "weights.pt")
    g = runlib.learned_grams(runlib.load_run(path))
    assert g["source"] == "weights.pt"
    np.testing.assert_allclose(g["WWt"], grams_by_hand(state)[0], rtol=1e-12)


def test_parameters_are_read_as_their_tensors(tmp_path):
    W = torch.nn.Parameter(torch.arange(6, dtype=torch.float32).reshape(2, 3))
    torch.save({"p": W}, tmp_path / "w.pt")
    np.testing.assert_array_equal(runlib.read_tensors(tmp_path / "w.pt")["p"], np.arange(6).reshape(2, 3))


def test_read_tensors_refuses_archives_it_cannot_trust(tmp_path):
    with zipfile.ZipFile(tmp_path / "plain.zip", "w") as z:
        z.writestr("x/readme.txt", "hello")
    with pytest.raises(ValueError, match="not a torch zip archive"):
        runlib.read_tensors(tmp_path / "plain.zip")
    torch.save({"a": torch.ones(2)}, tmp_path / "w.pt")
    with zipfile.ZipFile(tmp_path / "w.pt") as src, zipfile.ZipFile(tmp_path / "big.pt", "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            dst.writestr(item, b"big\n" if item.endswith("/byteorder") else data)
    with pytest.raises(ValueError, match="big-endian tensors"):
        runlib.read_tensors(tmp_path / "big.pt")


def test_head_grams_need_every_layer_from_zero():
    w = np.ones((2, 2))
    assert runlib._head_grams({"head.linears.1.weight": w}) is None
    assert runlib._head_grams({"backbone.0.weight": w}) is None
    W0, W1 = np.array([[1.0, 0.0], [0.0, 2.0]]), np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    g = runlib._head_grams({"m.head.linears.1.weight": W1, "m.head.linears.0.weight": W0})
    np.testing.assert_allclose(g["WWt"], (W1 @ W0) @ (W1 @ W0).T)


def test_reference_grams_of_a_named_target_frame():
    run = mem_run({"counts": [3, 3, 3]}, summary={"target": "etf"})
    grams, name = runlib.reference_grams(run)
    assert name == "simplex ETF target"
    etf = np.eye(3) - 1.0 / 3
    g = grams["WWt"]
    np.testing.assert_allclose(g / np.linalg.norm(g), etf / np.linalg.norm(etf), atol=1e-12)
    assert runlib.reference_grams(mem_run({"counts": [3, 3, 3]})) is None


# ---------------------------------------------------------------------------------------------- figure parts
def test_colours_are_distinct_and_follow_tab20_then_viridis():
    c15 = figures._colors(15)
    tab20 = matplotlib.colormaps["tab20"]
    assert c15[:10] == [tab20(i) for i in range(0, 20, 2)] and c15[10] == tab20(1)
    c30 = figures._colors(30)
    vir = matplotlib.colormaps["viridis"]
    assert c30[0] == vir(0.0) and c30[-1] == vir(1.0) and len(set(c30)) == 30


def test_panel_titles_and_power_labels():
    assert figures.panel_title("nc2_w_L3") == "NC2: W W^T vs predicted, layer 3"
    assert figures.panel_title("custom_metric") == "custom_metric"
    assert figures._power_label(0.0) == "" and figures._power_label(float("nan")) == ""
    assert figures._layer_columns(20) == [1, 3, 6, 8, 10, 13, 15, 18, 20]  # round(linspace(1, 20, 9)), half to even
    assert figures._layer_columns(4) == [1, 2, 3, 4]


def curves_run(name, M, cols, values, steps=(0, 1, 2)):
    return mem_run({"M": M}, rows=[{"step": s, **{c: v for c, v in zip(cols, values[i])}}
                                   for i, s in enumerate(steps)], name=name)


@pytest.fixture(scope="module")
def many_runs():
    return [curves_run(f"run{i:02d}", 1, ["nc1"], [[1.0 / (i + 1 + s)] for s in range(3)]) for i in range(26)]


def test_more_runs_than_a_legend_holds_get_a_note_instead(many_runs):
    fig = figures.metrics_figure(many_runs)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert "26 runs\n(no legend)" in texts and not fig.legends
    assert not any(ax.get_legend() for ax in fig.axes)


def test_wide_legends_go_below_the_panels():
    long = "x" * 120
    runs = [curves_run(f"{long}{i}", 1, ["nc1", "nc2_w", "nc3"], [[0.5, 0.4, 0.3]] * 3) for i in range(3)]
    fig = figures.metrics_figure(runs, labels=[f"{long} {i}" for i in range(3)])
    assert fig.get_figwidth() <= figures.MAX_WIDTH + 1e-9
    assert len(fig.legends) == 1 and [t.get_text() for t in fig.legends[0].texts] == [f"{long} {i}" for i in range(3)]


def test_figures_with_nothing_to_draw_are_none(tmp_path):
    nan_run = curves_run("a", 2, ["nc1", "nc1_L1", "nc1_L2"], [[float("nan")] * 3] * 3)
    assert figures.metrics_figure([nan_run]) is None
    assert figures.layer_metrics_figure([nan_run]) is None
    # plot_runs writes only the figures that exist: a run without rows has neither
    path = make_run(tmp_path / "empty", {"steps": 5})
    assert figures.plot_runs([path], tmp_path / "out") == []


def test_layer_figure_marks_a_layer_no_run_recorded():
    """Layer 1 of nc3 not recorded in any run, layer 2 recorded: the first panel says so, the row is still
    on a log axis; a run whose curve is all NaN draws nothing."""
    a = curves_run("a", 2, ["nc1_L1", "nc1_L2", "nc3_L2"], [[0.5, 0.4, 0.3]] * 3)
    b = curves_run("b", 2, ["nc1_L1", "nc3_L2"], [[0.5, float("nan")]] * 3)
    fig = figures.layer_metrics_figure([a, b], labels=["a", "b"])
    titled = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    nc3_1 = titled["NC3: W_M..W_j vs means of H_j, j = 1"]
    assert [t.get_text() for t in nc3_1.texts] == ["not recorded"] and not nc3_1.lines
    nc3_2 = titled["NC3: W_M..W_j vs means of H_j, j = 2"]
    assert [ln.get_label() for ln in nc3_2.lines if not ln.get_label().startswith("_")] == ["a"]
    assert nc3_2.get_yscale() == "log"


def test_layers_figure_skips_a_run_without_final_values():
    a = curves_run("a", 2, ["nc1_L1", "nc1_L2"], [[0.5, 0.25]] * 3)
    b = curves_run("b", 2, ["nc1_L1", "nc1_L2"], [[float("nan")] * 2] * 3)
    fig = figures.layers_figure([a, b], labels=["a", "b"])
    lines = [ln for ax in fig.axes for ln in ax.lines if ln.get_label() in ("a", "b")]
    assert [ln.get_label() for ln in lines] == ["a"]
    np.testing.assert_array_equal(lines[0].get_ydata(), [0.5, 0.25])


def test_phase_marks_skip_runs_with_unequal_decays():
    counts = [200, 100, 5, 5]
    equal = mem_run({"counts": counts, "depth": 2, "lambda_w": 1e-3, "lambda_h": 1e-3}, name="eq")
    unequal = mem_run({"counts": counts, "depth": 2, "lambda_w": [1e-3, 2e-3], "lambda_h": 1e-3}, name="neq")
    setup = figures.phase_setup([equal, unequal])
    assert [m[4] for m in setup["marks"]] == ["eq"] and setup["depths"] == [2]


def _tiny(i):
    import matplotlib.figure

    fig = matplotlib.figure.Figure(figsize=(1, 1))
    fig.add_subplot().plot([0, 1], [0, i])
    return fig


def test_render_all_without_fork_draws_in_this_process(monkeypatch):
    import multiprocessing

    jobs = [(lambda i=i: _tiny(i), 20, ("png",)) for i in range(4)]
    serial = figures.render_all(jobs, processes=1)
    assert all(r["png"].startswith(b"\x89PNG") for r in serial)

    def no_fork(method):
        raise ValueError(method)

    monkeypatch.setattr(multiprocessing, "get_context", no_fork)
    done = []
    assert figures.render_all(jobs, processes=2, on_done=done.append) == serial
    assert done == [1, 2, 3, 4]

    class NoPool:
        def Pool(self, n):  # noqa: N802 -- multiprocessing's name
            raise OSError("fork refused")

    monkeypatch.setattr(multiprocessing, "get_context", lambda method: NoPool())
    assert figures.render_all(jobs, processes=2) == serial and figures._PENDING == []


def test_render_all_forked_reports_progress():
    jobs = [(lambda i=i: _tiny(i), 20, ("png",)) for i in range(4)]
    done = []
    out = figures.render_all(jobs, processes=2, on_done=done.append)
    assert out == figures.render_all(jobs, processes=1) and done == [1, 2, 3, 4]


def test_accuracy_panel_draws_only_runs_that_recorded_it():
    a = curves_run("a", 1, ["nc1", "train_acc"], [[0.5, 0.2], [0.4, 0.6], [0.3, 0.9]])
    b = curves_run("b", 1, ["nc1", "train_acc"], [[0.5, float("nan")]] * 3)
    fig = figures.metrics_figure([a, b], labels=["a", "b"])
    acc = next(ax for ax in fig.axes if ax.get_title().startswith("accuracy"))
    assert [ln.get_label() for ln in acc.lines] == ["a"]
    np.testing.assert_array_equal(acc.lines[0].get_ydata(), [0.2, 0.6, 0.9])


def test_legend_of_unlabelled_curves_is_not_drawn():
    import matplotlib.figure

    fig = matplotlib.figure.Figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1])  # no label
    figures._legend(fig, [ax], 1)
    assert ax.get_legend() is None and not fig.legends and not ax.texts
