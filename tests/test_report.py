"""Run listing, figures and the HTML report page, from small stored runs (L-BFGS, a few steps each)."""

import base64
import io
import json
import os
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from click.testing import CliRunner

import nclab
from nclab.cli import cli
from nclab.report import build_report, find_runs, load_run
from nclab.report import runs as runlib
from nclab.report.figures import metric_panels
from nclab.report.page import fmt
from nclab.report.phase import MINORITY_COLLAPSED, NOT_COLLAPSED, TRIVIAL, phase_grid, phase_state
from nclab.results import RunStore
from nclab.ufm import make_config

SMALL = dict(widths=6, lambda_w=5e-3, lambda_h=5e-3, optimizer="lbfgs", snapshot_every=20, seed=1)


def fake_train_run(path):
    """A run directory as ``nclab train`` writes it (columns of nclab.experiments), without its prediction."""
    store = RunStore(path)
    store.write_config({"dataset": "digits", "arch": "mlp", "counts": None, "depth": 2, "loss": "mse", "bias": True,
                        "epochs": 4, "optimizer": "sgd"}, kind="train", version=nclab.__version__)
    rows = []
    for e in range(5):
        row = {"epoch": e, "step": 3 * e, "lr": 0.01, "train_loss": 1.0 / (e + 1), "objective": 1.0 / (e + 1),
               "rel_gap": None, "train_acc": 0.6 + 0.1 * e}
        for j in (1, 2):
            row.update({f"nc1_L{j}": 10.0 ** (-j * e), f"nc2_h_L{j}": 0.5 ** e, f"nc2_w_L{j}": 0.4 ** e,
                        f"nc3_L{j}": 0.3 ** e})
        rows.append({**row, "nc3": 0.2 ** e, "test_acc": 0.5 + 0.1 * e, "test_loss": 1.0})
    store.append_rows(rows)
    store.write_json("summary.json", {"status": "complete", "message": "4 epochs", "counts": [30, 20, 10],
                                      "final": rows[-1]})


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """gof/depth-1, gof/depth-2 (imbalanced, bias-free), etf (balanced with bias), train (a fake net run)."""
    root = tmp_path_factory.mktemp("runs")
    for M in (1, 2):
        nclab.simulate(make_config([8, 4, 2, 2], depth=M, steps=60, **SMALL), out=root / "gof" / f"depth-{M}")
    nclab.simulate(make_config(classes=3, per_class=4, depth=2, bias=True, steps=400, **SMALL), out=root / "etf")
    fake_train_run(root / "train")
    (root / "notes").mkdir()  # a folder without runs is skipped, not an error
    return root


@pytest.fixture(scope="module")
def report(root, tmp_path_factory):
    path = build_report([root], tmp_path_factory.mktemp("page") / "sub" / "report.html")
    return path, path.read_text()


class Page(HTMLParser):
    """Collects <img> sources, tables (as lists of body rows) and every src/href of the page."""

    def __init__(self):
        super().__init__()
        self.images, self.tables, self.links = [], [], []
        self._in_body = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.links += [v for k, v in attrs if k in ("src", "href") and v]
        if tag == "img":
            self.images.append(a.get("src", ""))
        elif tag == "table":
            self.tables.append([])
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.tables[-1].append([])

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._in_body = False

    def handle_data(self, data):
        if self._in_body and self.tables and self.tables[-1]:
            self.tables[-1][-1].append(data)


def parse(text):
    page = Page()
    page.feed(text)
    return page


# ---------------------------------------------------------------------------------------------- finding runs
def test_find_runs_recurses_in_natural_order(root):
    found = find_runs([root])
    assert [p.relative_to(root).as_posix() for p in found] == ["etf", "gof/depth-1", "gof/depth-2", "train"]
    assert find_runs(root / "etf") == [root / "etf"]  # a run directory is itself, its figures/ are not runs
    assert find_runs([root / "gof", root / "gof" / "depth-1"]) == found[1:3]  # no duplicates


@pytest.mark.parametrize("case", ["missing", "empty", "file", "foreign"])
def test_find_runs_rejects_what_is_not_a_run(tmp_path, case):
    path = tmp_path / "x"
    if case == "empty":
        path.mkdir()
    elif case == "file":
        path.write_text("hello")
    elif case == "foreign":
        path.mkdir()
        (path / "config.json").write_text('{"lr": 1}')
    with pytest.raises(ValueError, match=str(path)):
        find_runs([path])


def test_columns_are_recognised_by_name(root):
    train = load_run(root / "train")
    assert train.x_key == "epoch" and train.counts == [30, 20, 10] and train.depth == 2
    # an old train run (only nc2_w_L{j}, nc2_h_L{j}): read with the shared end-to-end names
    assert runlib.headline_columns(train.columns) == ["rel_gap", "train_acc", "test_acc", "nc1_L1", "nc2_w",
                                                      "nc2_h", "nc3", "objective"]
    assert train.final["nc2_w"] == train.final["nc2_w_L1"] and train.final["nc2_h"] == train.final["nc2_h_L1"]
    assert metric_panels(train.columns, with_gap=False) == ["nc1_L1", "nc2_w", "nc2_h", "nc3", "train_loss",
                                                            "test_loss", "accuracy"]
    assert runlib.per_layer_columns(["nc1_L1", "nc1_L2", "nc3_L1", "w_norm_0"]) == {
        "nc1": [(1, "nc1_L1"), (2, "nc1_L2")], "nc3": [(1, "nc3_L1")]}
    ufm = load_run(root / "gof" / "depth-2")
    assert ufm.x_key == "step"
    assert metric_panels(ufm.columns) == ["rel_gap", "nc1_L1", "nc2_w", "nc2_h", "nc3", "balance"]


def test_labels_name_the_field_that_differs(root):
    runs = [load_run(p) for p in find_runs(root / "gof")]
    assert runlib.run_labels(runs) == ["M = 1", "M = 2"]
    assert runlib.key_params(runs[1]) == {"K": "4", "counts": "8,4,2,2", "M": "2", "loss": "mse", "bias": "False",
                                          "lambda_w": "2x0.005", "lambda_h": "0.005", "optimizer": "lbfgs",
                                          "steps": "60"}


def test_learned_grams_match_the_prediction(root):
    """The converged balanced-with-bias run: centred class means give the predicted simplex ETF Grams."""
    run = load_run(root / "etf")
    learned = runlib.learned_grams(run)
    for key in ("WWt", "HtH", "WH"):
        target = np.asarray(run.prediction[key])
        assert np.linalg.norm(learned[key] - target) < 1e-4 * np.linalg.norm(target), key
    norms = runlib.learned_norms(run)
    assert np.allclose(norms["w"], runlib.predicted_norms(run)["w"], rtol=1e-4)


def test_phase_grid_has_the_three_phases():
    lam, n, states = phase_grid((100, 100), 2, 3, lambdas=[1e-4, 1e-2, 1.0], sizes=[2, 100])
    assert states.shape == (2, 3)
    assert (states[:, 0] == NOT_COLLAPSED).all()  # small decay: every class active
    assert states[0, 1] == MINORITY_COLLAPSED and states[1, 1] == NOT_COLLAPSED
    assert (states[:, 2] == TRIVIAL).all()  # large decay: the zero solution
    lam, n, states = phase_grid((9, 5), 1, 2, lambdas=np.geomspace(1e-3, 1, 9)[::-1], sizes=[1, 3, 5, 8])
    brute = [[phase_state((9, 5), size, 1, 2, x) for x in lam] for size in n]
    assert (states == brute).all() and len(np.unique(states)) == 3  # the binary search along lambda is exact


# ---------------------------------------------------------------------------------------------- the page
def test_report_embeds_decodable_figures(report):
    import matplotlib.image

    _, text = report
    page = parse(text)
    # metrics, per-layer trajectories and final per-layer metrics per kind (ufm, train), norms, phase diagram,
    # one Gram figure per UFM run (the fake train run stores no weights)
    assert len(page.images) == 3 * 2 + 2 + 3
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        pixels = matplotlib.image.imread(io.BytesIO(base64.b64decode(src.split(",", 1)[1])), format="png")
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100 and pixels.std() > 0.01  # not blank
    assert not [link for link in page.links if not link.startswith(("data:", "#"))]  # self-contained
    assert "<link" not in text and "@import" not in text


def test_report_tables_show_runs_theory_and_environment(root, report):
    _, text = report
    page = parse(text)
    assert page.tables and all(rows for rows in page.tables)  # every table has body rows
    runs_table = page.tables[0]
    assert len(runs_table) == 4
    assert [row[0] for row in runs_table] == ["etf", "gof/depth-1", "gof/depth-2", "train"]
    assert "4/4 epochs" in "".join(runs_table[3]) and "dataset=digits arch=mlp K=3" in "".join(runs_table[3])
    run = load_run(root / "gof" / "depth-2")
    assert "general orthogonal frame" in text and "simplex ETF" in text
    assert fmt(run.prediction["objective"]) in text and fmt(run.final["rel_gap"]) in text
    env = json.loads((root / "etf" / "environment.json").read_text())
    assert env["torch"] in text and f"nclab {nclab.__version__}" in text
    assert re.search(r"data-rendered=.pending.", text)  # the browser check flips it (test_report_browser.py)


def test_report_cli_one_run_writes_into_it_and_figure_files(root, tmp_path):
    figures = tmp_path / "figures"
    args = ["report", str(root / "gof" / "depth-1"), "--no-phase-diagram", "--figures-dir", str(figures)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    out = root / "gof" / "depth-1" / "report.html"
    assert str(out) in res.output and len(parse(out.read_text()).images) == 3  # metrics, norms, Grams
    out.unlink()
    for name in ("metrics", "norms", "gram-depth-1"):
        assert (figures / f"{name}.png").stat().st_size > 1000 and (figures / f"{name}.pdf").stat().st_size > 1000


def test_report_cli_bad_input_is_one_line(root, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    cases = [([str(tmp_path / "empty")], "not a run directory and contains no runs"),
             ([str(root / "etf"), "--out", str(tmp_path / "file" / "r.html")], "cannot write the report"),
             ([str(root / "etf"), "--out", str(tmp_path)], "is a directory")]
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "ro").mkdir(mode=0o500)
        cases.append(([str(root / "etf"), "--out", str(tmp_path / "ro" / "r.html")], "cannot write the report"))
    for args, message in cases:
        res = CliRunner().invoke(cli, ["report", *args, "--no-phase-diagram"])
        assert res.exit_code == 2 and message in res.output, res.output
        assert res.output.count("\n") == 1 and res.output.startswith("error: ")


# ---------------------------------------------------------------------------------------------- nclab runs
def test_runs_cli_lists_runs_and_json(root):
    res = CliRunner().invoke(cli, ["runs", str(root)])
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert lines[-1] == "4 run(s)" and len(lines) == 6
    depth2 = next(line for line in lines if "depth-2" in line)
    assert "ufm-simulation" in depth2 and "M=2" in depth2 and "steps" in depth2 and "rel_gap" in depth2
    assert "epochs" in next(line for line in lines if line.split()[0].endswith("train"))
    res = CliRunner().invoke(cli, ["runs", str(root / "gof"), "--json"])
    docs = json.loads(res.output)
    assert [d["params"]["M"] for d in docs] == ["1", "2"]
    assert docs[0]["status"] in ("complete", "converged") and docs[0]["final"]["rel_gap"] < 1


def test_runs_cli_rejects_a_folder_without_runs(tmp_path):
    res = CliRunner().invoke(cli, ["runs", str(tmp_path)])
    assert res.exit_code == 2
    assert res.output == f"error: {tmp_path} is not a run directory and contains no runs (no nclab config.json found)\n"


def test_a_run_in_progress_is_listed_and_reported(tmp_path):
    """No summary.json yet, a torn last metrics line, no weights: listed as incomplete, still reported."""
    store = RunStore(tmp_path / "live")
    store.write_config({"counts": [3, 3], "widths": [4], "steps": 100}, kind="ufm-simulation",
                       version=nclab.__version__)
    store.append_rows([{"step": s, "rel_gap": 10.0 ** -s, "nc1_L1": 0.1 * 10.0 ** -s} for s in range(3)])
    with open(store.file("metrics.csv"), "a") as fh:
        fh.write("3,0.00")  # torn: dropped on reading
    res = CliRunner().invoke(cli, ["runs", str(tmp_path)])
    assert res.exit_code == 0 and "incomplete" in res.output and "2/100 steps" in res.output, res.output
    page = parse(build_report(tmp_path, phase_diagram=False).read_text())
    assert len(page.images) == 1 and ["live", "ufm-simulation", "K=2 counts=2x3 M=1 steps=100", "incomplete",
                                      "2/100 steps"] == page.tables[0][0][:5]
