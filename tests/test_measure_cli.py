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
    # nc3 (W Hbar) is one number for the whole head: printed once, not repeated in every layer column
    assert "\nnc3 " not in r.output and "whole head (the same at every layer): nc3" in r.output
    assert "\nnc3_dual" in r.output  # the per-layer self-duality stays per layer


@pytest.mark.parametrize("name, msg", [("nolabels.npz", "no labels"), ("nan.npz", "NaN or inf"),
                                       ("x.txt", "unsupported"), ("missing.npz", "no such file")])
def test_errors_exit_2(dump, name, msg):
    d, *_ = dump
    r = CliRunner().invoke(measure_cmd, [str(d / name)])
    assert r.exit_code == 2 and msg in r.output and "Traceback" not in r.output


# ------------------------------------------------------------------------------ issue 9: every input boundary
@pytest.mark.parametrize("tol", ["0", "-1e-6", "nan", "inf", "1", "2", "1e-300"])
def test_tolerance_is_validated(dump, tol):
    d, *_ = dump
    r = CliRunner().invoke(measure_cmd, [str(d / "one.npz"), "--tol", tol])
    assert r.exit_code == 2 and r.output.startswith("error: --tol must") and "Traceback" not in r.output


def _bad_files(d):
    good = (d / "one.npz").read_bytes()
    (d / "trunc.npz").write_bytes(good[: len(good) // 2])
    (d / "random.pt").write_bytes(np.random.default_rng(0).bytes(300))
    (d / "empty.pt").write_bytes(b"")
    torch.save(torch.nn.Linear(2, 2).state_dict(), d / "foreign.pt")
    torch.save([1, 2, 3], d / "list.pt")
    torch.save(torch.nn.Linear(2, 2), d / "module.pt")
    H = torch.randn(6, 3)
    torch.save({"H": H.to_sparse(), "y": torch.arange(6) % 2}, d / "sparse.pt")
    torch.save({"H": H, "y": (torch.arange(6) % 2).to_sparse()}, d / "sparse_y.pt")
    torch.save({"H": H, "y": torch.arange(6) % 2, "W": torch.randn(2, 3).to_sparse()}, d / "sparse_w.pt")
    torch.save({"H": "abc", "y": torch.arange(6) % 2}, d / "strings.pt")
    np.savez(d / "objarr.npz", H=np.array(["a", "b"]), y=np.array([0, 1]))
    np.save(d / "single.npy", np.zeros(3))
    (d / "single.npy").rename(d / "single.npz")
    return ["trunc.npz", "random.pt", "empty.pt", "foreign.pt", "list.pt", "module.pt", "sparse.pt",
            "sparse_y.pt", "sparse_w.pt", "strings.pt", "objarr.npz", "single.npz"]


def test_bad_files_give_one_line_naming_the_file(dump):
    d, *_ = dump
    for name in _bad_files(d):
        r = CliRunner().invoke(measure_cmd, [str(d / name)])
        lines = r.output.strip().splitlines()
        assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (name, r.output)
        assert name in lines[0] and "Traceback" not in r.output, (name, r.output)


def test_json_is_strict(dump):
    d, H, y, W, _ = dump
    np.savez(d / "equal.npz", H=np.ones((6, 5)), y=np.arange(6) % 3, W=W)  # all means equal: NC1 undefined
    r = CliRunner().invoke(measure_cmd, [str(d / "equal.npz"), "--json"])
    assert r.exit_code == 0, r.output
    assert "NaN" not in r.stdout and "Infinity" not in r.stdout
    out = json.loads(r.stdout, parse_constant=lambda c: pytest.fail(f"bare {c} in --json"))
    assert out["values"]["nc1"] is None and "Sigma_B = 0" in out["reasons"]["nc1"]


def test_extreme_scales_give_the_right_answer(dump):
    d, H, y, W, _ = dump
    ref = nc_metrics(H, y, W)
    for s in (1e100, 1e155, 1e-200, 1e300):
        np.savez(d / "scaled.npz", H=H * s, y=y, W=W)
        r = CliRunner().invoke(measure_cmd, [str(d / "scaled.npz"), "--json"])
        assert r.exit_code == 0, (s, r.output)
        v = json.loads(r.stdout)["values"]
        for k in ("nc1", "nc1_trace", "cdnv", "nc2_h", "nc2_w", "nc3", "nc3_dual", "equinorm_h", "nc4"):
            assert v[k] == pytest.approx(ref[k], rel=1e-9), (s, k)


# ------------------------------------------------------------------------------ issue 10/14: one target
def test_target_choices_are_trains():
    from nclab.cli.train import train_cmd
    from nclab.experiments.config import CHOICES

    mine = next(p for p in measure_cmd.params if p.name == "target").type.choices
    theirs = next(p for p in train_cmd.params if p.name == "target").type.choices
    assert list(mine) == list(theirs) == list(CHOICES["target"])


@pytest.mark.parametrize("name, bias", [("one.npz", True), ("free.npz", False)])
def test_cli_default_equals_api_default(dump, name, bias):
    d, H, y, W, _ = dump
    np.savez(d / "free.npz", H=H, y=y, W=W)
    out = json.loads(CliRunner().invoke(measure_cmd, [str(d / name), "--json"]).stdout)
    api = nc_metrics(H, y, W, np.ones(3) if bias else None)
    assert out["target"] == ("etf" if bias else "of") == api.info["target"]
    for k, v in api.values.items():
        assert out["values"][k] == pytest.approx(v, rel=1e-12, abs=1e-15), k


def test_imbalanced_bias_free_dump_is_compared_with_the_gof(tmp_path):
    from nclab.theory import labels_from_counts, predict

    counts = [30, 20, 10, 10]
    pred = predict(counts, depth=2, widths=6, lambda_w=1e-3, lambda_h=1e-3)
    weights, Hm, _ = pred.construct()  # the minimizer: H (d, N), W_1, W_2
    y = labels_from_counts(counts)
    np.savez(tmp_path / "gof.npz", H=Hm.T, y=y, W1=weights[0], W2=weights[1])
    r = CliRunner().invoke(measure_cmd, [str(tmp_path / "gof.npz"), "--json", "--lambda-w", "1e-3",
                                         "--lambda-h", "1e-3"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["target"] == "theory" and "general orthogonal frame" in out["target_note"]
    for lay in out["layers"]:
        for k in ("nc2_h", "nc2_w", "nc3", "nc3_dual"):
            assert lay["values"][k] < 1e-6, k
    # against OF only (the old behaviour) the same minimizer is far from its target
    of = json.loads(CliRunner().invoke(measure_cmd, [str(tmp_path / "gof.npz"), "--json", "--target", "of"]).stdout)
    assert of["layers"][0]["values"]["nc2_h"] > 1e-2
    # without the decays: the named frame, and the output says what to give
    r = CliRunner().invoke(measure_cmd, [str(tmp_path / "gof.npz")])
    assert "target=of" in r.output and "--lambda-w and --lambda-h" in r.output
