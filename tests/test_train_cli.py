"""``nclab train``: TOML config + flags (flags win), presets, depths, run directories, one-line errors."""

import json

import pytest
from click.testing import CliRunner

from nclab.cli import cli
from nclab.experiments.config import FIELDS

TOML = """
dataset = "digits"
counts = [6, 6, 6]
test_per_class = 2
epochs = 5
threads = 1
[model]
arch = "mlp"
mlp_depth = 2
width = 8
depth = 3
"""


def run(*args):
    return CliRunner().invoke(cli, ["train", *args])


def test_config_file_with_flag_overrides_and_depths(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text(TOML)
    out = tmp_path / "runs"
    res = run("--config", str(cfg), "--epochs", "2", "--batch-size", "9", "--depths", "1,2", "--out", str(out),
              "--json", "--no-progress")
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.output.strip().splitlines()]
    assert [x["status"] for x in lines] == ["complete", "complete"]
    for M in (1, 2):
        config = json.loads((out / f"depth-{M}" / "config.json").read_text())["config"]
        assert config["depth"] == M and config["epochs"] == 2 and config["batch_size"] == 9 and config["width"] == 8
        assert len(config["lambda_w"]) == M
    assert "nc1_L2" in lines[1]["final"] and "nc1_L2" not in lines[0]["final"]


def test_preset_with_overrides_summary_line(tmp_path):
    out = tmp_path / "p"
    res = run("--preset", "cpu-mlp-balanced", "--dataset", "digits", "--per-class", "3", "--test-per-class", "0",
              "--epochs", "1", "--batch-size", "15", "--threads", "1", "--out", str(out), "--no-progress")
    assert res.exit_code == 0, res.output
    assert "M = 3: complete at epoch 1; NC1 (first -> last row) L1" in res.output and str(out) in res.output
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["counts"] == [3] * 10 and config["arch"] == "mlp" and config["width"] == 64


def test_every_config_field_is_a_flag():
    res = run("--help")
    for name in FIELDS:
        assert "--" + name.replace("_", "-") in res.output, name
    listing = run("--list-presets")
    assert listing.exit_code == 0
    assert "cpu-mlp-imbalanced" in listing.output and "paper-resnet18-cifar10" in listing.output


@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "epochs must be an integer >= 1"),
    (["--counts", "3,x"], "every entry of counts must be an integer"),
    (["--dataset", "cifar10"], "cifar10: no root given"),
    (["--dataset", "mnist", "--data-root", "{missing}"], "data folder {missing} does not exist"),
    (["--config", "{missing}.toml"], "config file {missing}.toml does not exist"),
    (["--resume", "--overwrite"], "not both"),
    (["--arch", "vgg16"], "set size = 32"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    missing = str(tmp_path / "missing")  # a path that surely does not exist, on any machine
    args, message = [a.format(missing=missing) for a in args], message.format(missing=missing)
    res = run(*args)
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.output


def test_unknown_toml_key_is_named(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('dataset = "digits"\nepoch = 3\n')
    res = run("--config", str(cfg))
    assert res.exit_code == 2 and "unknown key(s) 'epoch' (did you mean 'epochs'?)" in res.output
