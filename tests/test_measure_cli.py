"""`nclab measure FILE`: table, --json, per-layer, .npz and .pt, clear errors."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from nclab.cli.measure import measure_cmd
from nclab.metrics import nc_metrics


@pytest.fixture
def dump(tmp_path):
    rng = np.random.default_rng(0)
    K, D, N = 3, 5, 60
    y = np.arange(N) % K
    H = rng.standard_normal((K, D))[y] + 0.1 * rng.standard_normal((N, D))
    W, W1 = rng.standard_normal((K, D)), rng.standard_normal((D, D))
    np.savez(tmp_path / "one.npz", H=H, y=y, W=W, b=np.ones(K))
    np.savez(tmp_path / "deep.npz", features=H, labels=y, W1=W1, W2=W)
    torch.save({"H": torch.tensor(H), "y": torch.tensor(y), "weights": [torch.tensor(W1), torch.tensor(W)]},
               tmp_path / "deep.pt")
    np.savez(tmp_path / "nolabels.npz", H=H)
    np.savez(tmp_path / "nan.npz", H=np.full((4, 2), np.nan), y=np.arange(4) % 2)
    (tmp_path / "x.txt").write_text("hi")
    return tmp_path, H, y, W, W1


def test_table_and_json(dump):
    d, H, y, W, _ = dump
    r = CliRunner().invoke(measure_cmd, [str(d / "one.npz")])
    assert r.exit_code == 0 and "nc1" in r.output and "K_eff=3" in r.output and "target=etf" in r.output
    r = CliRunner().invoke(measure_cmd, [str(d / "one.npz"), "--json", "--target", "of", "--tol", "1e-8"])
    out = json.loads(r.output)
    ref = nc_metrics(H, y, W, np.ones(3), target="of", rtol=1e-8)
    assert out["values"]["nc1"] == pytest.approx(ref["nc1"]) and out["info"]["rtol"] == 1e-8
    assert out["values"]["nc2_h"] == pytest.approx(ref["nc2_h"])


@pytest.mark.parametrize("name", ["deep.npz", "deep.pt"])
def test_per_layer(dump, name):
    d, *_ = dump
    r = CliRunner().invoke(measure_cmd, [str(d / name), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert len(out["layers"]) == 2 and out["layers"][1]["info"]["layer"] == 2
    r = CliRunner().invoke(measure_cmd, [str(d / name), "--per-class"])
    assert "layer 2" in r.output and "per class (layer 2)" in r.output


@pytest.mark.parametrize("name, msg", [("nolabels.npz", "no labels"), ("nan.npz", "NaN or inf"),
                                       ("x.txt", "unsupported"), ("missing.npz", "no such file")])
def test_errors_exit_2(dump, name, msg):
    d, *_ = dump
    r = CliRunner().invoke(measure_cmd, [str(d / name)])
    assert r.exit_code == 2 and msg in r.output and "Traceback" not in r.output
