"""nclab demo end to end as a fast smoke run (the paper's presets shrunk: 200 SGD steps, d = 8, 20 samples; a
2-epoch digits MLP), and the report's content checked against the runs' own files and a recomputation of the
learned objective from the saved weights. The full demo stays the README's main command, not a unit test."""

import html.parser
import json
import math

import numpy as np
import pytest
import torch

import nclab.demo
import nclab.ufm.presets
from nclab.demo import run_demo
from nclab.report import find_runs

UFM = ("paper-balanced-etf", "paper-balanced-of", "paper-imbalanced-gof")


class Tables(html.parser.HTMLParser):
    """Every <table> of the page as a list of rows of cell texts, and every <img alt=...>."""

    def __init__(self):
        super().__init__()
        self.tables, self.alts, self._cell = [], [], None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag == "img":
            self.alts.append(dict(attrs).get("alt", ""))

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append(self._cell.strip())
            self._cell = None


def objective(ckpt, lam_w, lam_h):
    """The UFM objective of saved weights by its definition (bias-free or not, MSE), numpy float64."""
    W = [w.double().numpy() for w in ckpt["weights"]]
    H, y = ckpt["H"].double().numpy(), ckpt["labels"].numpy()
    Z = H
    for w in W:
        Z = w @ Z
    if ckpt["bias"] is not None:
        Z = Z + ckpt["bias"].double().numpy()[:, None]
    Y = np.eye(Z.shape[0])[:, y]
    return (0.5 * ((Z - Y) ** 2).sum() / H.shape[1] + 0.5 * sum(lam_w * (w**2).sum() for w in W)
            + 0.5 * lam_h * (H**2).sum())


@pytest.fixture
def tiny(monkeypatch):
    for name in UFM:
        opts = dict(nclab.ufm.presets.PRESETS[name], steps=200, snapshot_every=50, widths=8)
        opts.update({"per_class": 5} if "per_class" in opts else {"counts": [8, 4, 2, 2]})
        monkeypatch.setitem(nclab.ufm.presets.PRESETS, name, opts)
    monkeypatch.setattr(nclab.demo, "DIGITS_MLP", dict(nclab.demo.DIGITS_MLP, counts=[20] * 10, test_per_class=5))


def test_demo_smoke_run_report_shows_the_runs_numbers(tmp_path, tiny):
    out = tmp_path / "demo"
    lines = []
    page = run_demo(out, depths=(1,), log=lines.append, train_epochs=2)
    assert lines[0].startswith("1/4 theory") and lines[-1].startswith("done in") and page == out / "report.html"
    assert [ln[:3] for ln in lines if ln[1:3] == "/4"] == ["1/4", "2/4", "3/4", "4/4"]
    theory = json.loads((out / "theory.json").read_text())
    assert sorted(theory) == sorted(f"{n}/M=1" for n in UFM)
    assert theory["paper-imbalanced-gof/M=1"]["geometry"] == "general orthogonal frame"
    assert theory["paper-balanced-of/M=1"]["geometry"] == "orthogonal frame"
    assert theory["paper-balanced-etf/M=1"]["geometry"] == "simplex ETF"
    runs = sorted(str(p.relative_to(out)) for p in find_runs([out]))
    assert runs == ["digits-mlp/depth-1"] + [f"ufm/{n}/depth-1" for n in UFM]

    doc = Tables()
    doc.feed(page.read_text())
    # the figures: one NC-metrics plot per run kind, the norms plot, the phase diagram, one Gram plot per run
    assert len(doc.alts) == 8, doc.alts
    assert sum(a.startswith("train: NC metrics") for a in doc.alts) == 1
    assert sum(a.startswith("ufm-simulation: NC metrics") for a in doc.alts) == 1
    assert sum(a.startswith("Learned (last snapshot) against predicted class norms") for a in doc.alts) == 1
    assert sum(a.startswith("Minority-collapse phase diagram") for a in doc.alts) == 1
    assert sorted(a.split(":")[0] for a in doc.alts if "learned and predicted Grams" in a) == runs

    theory_table = next(t for t in doc.tables if t[0][:2] == ["run", "predicted geometry"])
    head = theory_table[0]
    rows = {r[0]: dict(zip(head, r)) for r in theory_table[1:]}
    assert sorted(rows) == runs
    for name in UFM:
        run = out / "ufm" / name / "depth-1"
        summary = json.loads((run / "summary.json").read_text())
        row = rows[f"ufm/{name}/depth-1"]
        f_star = theory[f"{name}/M=1"]["objective"]
        assert summary["prediction"]["objective"] == f_star
        assert row["predicted geometry"] == theory[f"{name}/M=1"]["geometry"]
        assert float(row["f* (predicted)"]) == pytest.approx(f_star, rel=5e-4)  # printed with 4 digits
        # the learned objective, recomputed from the saved weights by the definition
        f = objective(torch.load(run / "weights.pt", weights_only=False), 5e-4, 5e-4)
        assert summary["final"]["objective"] == pytest.approx(f, rel=1e-12)
        assert float(row["f (final)"]) == pytest.approx(f, rel=5e-4)
        gap = float(row["rel. gap (f - f*)/|f*|"])
        assert gap == pytest.approx((f - f_star) / f_star, rel=5e-4) and gap > 0
        assert row["collapsed classes, predicted"] == "none" == row["collapsed, learned"]
        nc = dict(part.split(" ") for part in row["final NC metrics"].split("; "))
        for key, value in nc.items():
            assert float(value) == pytest.approx(summary["final"][key], rel=5e-4), key
    mlp = json.loads((out / "digits-mlp" / "depth-1" / "summary.json").read_text())
    assert rows["digits-mlp/depth-1"]["predicted geometry"] == "simplex ETF"  # MSE with a bias, balanced
    assert float(rows["digits-mlp/depth-1"]["final NC metrics"].split("; ")[0].split(" ")[1]) == pytest.approx(
        mlp["final"]["nc1_L1"], rel=5e-4)
    assert not math.isnan(mlp["final"]["train_acc"])

    # a second run reuses every finished run instead of training again
    lines2 = []
    run_demo(out, depths=(1,), log=lines2.append, train_epochs=2)
    assert [ln for ln in lines2 if "M = 1" in ln] == [ln for ln in lines if "M = 1" in ln]
