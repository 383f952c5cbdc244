"""`nclab measure RUN_DIR`: features re-extracted from a trained run equal the trainer's own metrics rows,
the export reads back to the same numbers, and the target is the run's prediction."""

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from nclab.cli.measure import measure_cmd
from nclab.experiments import train

# a tiny float64 bias-free MLP run on the embedded digits, imbalanced: the theory's target is a GOF
TINY = dict(dataset="digits", counts=[12, 11, 10], test_per_class=4, arch="mlp", mlp_depth=2, width=8, depth=3,
            batch_size=12, epochs=2, dtype="float64", threads=1, lr=0.01, lambda_w=1e-3, lambda_h=1e-3, bias=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("measure") / "run"
    r = train(**TINY, out=out)
    assert r.status == "complete" and r.target == "theory"
    return out, r


def _final_row(out):
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    return {k: float(v) for k, v in rows[-1].items() if v not in ("", None)}


def _invoke(*args):
    r = CliRunner().invoke(measure_cmd, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r


def test_run_dir_reproduces_the_trainers_metrics_per_layer(run):
    out, r = run
    doc = json.loads(_invoke(out, "--json").stdout)
    final = _final_row(out)
    assert doc["kind"] == "run" and doc["target"] == "theory" and "general orthogonal frame" in doc["target_note"]
    assert len(doc["layers"]) == 3
    for j, lay in enumerate(doc["layers"], start=1):
        v = lay["values"]
        for mine, theirs in (("nc1", f"nc1_L{j}"), ("nc2_h", f"nc2_h_L{j}"), ("nc2_w", f"nc2_w_L{j}"),
                             ("nc3_dual", f"nc3_L{j}"), ("nc3", "nc3")):
            assert v[mine] == pytest.approx(final[theirs], rel=1e-9, abs=1e-12), (j, mine)
        assert lay["info"]["N"] == 33 and lay["info"]["center"] is False


def test_export_reads_back_to_the_same_numbers_and_test_split(run, tmp_path):
    out, _ = run
    f = tmp_path / "feats.npz"
    a = json.loads(_invoke(out, "--json", "--export", f).stdout)
    z = np.load(f)
    assert {"H", "y", "W1", "W2", "W3", "lambda_w", "lambda_h", "loss", "counts"} <= set(z.files) and "b" not in z.files
    assert z["H"].shape == (33, 8) and z["counts"].tolist() == [12, 11, 10]
    b = json.loads(_invoke(f, "--json").stdout)
    assert b["target"] == "theory" and b["kind"] == "dump"
    for la, lb in zip(a["layers"], b["layers"]):
        for k, v in la["values"].items():
            assert lb["values"][k] == pytest.approx(v, rel=1e-12, abs=1e-15), k
    t = _invoke(out, "--split", "test")
    assert "(test split): N=12" in t.output and "layer 3" in t.output
    assert "whole head (the same at every layer): nc3" in t.output
    assert t.output.count("\nnc3 ") == 0  # nc3 is printed once, not repeated per layer


@pytest.mark.parametrize("args, msg", [
    (["--lambda-w", "1e-3"], "apply to dump files"),
    (["--export", "x.txt"], "must name an .npz"),
    (["--target", "theory"], "Invalid value"),
])
def test_run_dir_bad_flags(run, args, msg):
    out, _ = run
    r = CliRunner().invoke(measure_cmd, [str(out), *args])
    assert r.exit_code == 2 and msg in r.output and "Traceback" not in r.output


def test_not_a_run_folder(tmp_path):
    r = CliRunner().invoke(measure_cmd, [str(tmp_path)])
    assert r.exit_code == 2 and r.output.startswith("error:") and "Traceback" not in r.output
