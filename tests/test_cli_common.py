"""Shared CLI helpers (nclab/cli/_common.py) and the one error style of every command (nclab/cli/__init__.py)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from nclab.cli import cli
from nclab.cli._common import check_out_dir, echo_json, parse_float_list, parse_int_list


def exits_2(fn, *args):
    with pytest.raises(SystemExit) as e:
        fn(*args)
    assert e.value.code == 2


def test_list_parsers_accept_lists_and_refuse_empty_items(capsys):
    assert parse_int_list("200, 100,50", "--counts") == [200, 100, 50]
    assert parse_int_list("1e3", "--counts") == [1000]
    assert parse_int_list(None, "--counts") is None
    assert parse_float_list("1e-3,2e-3", "--lambda-w") == [1e-3, 2e-3]
    for text in ("3,,4", "3,4,", ",3", "", " ", ","):
        exits_2(parse_int_list, text, "--counts")
        exits_2(parse_float_list, text, "--lambda-w")
    err = capsys.readouterr().err
    assert "error: --counts must be a comma-separated list of integers" in err and "empty item" in err
    for text in ("3,x", "2.5", "inf", "nan"):
        exits_2(parse_int_list, text, "--counts")
    exits_2(parse_float_list, "1e-3,x", "--lambda-w")


def test_echo_json_is_strict(capsys):
    echo_json({"a": float("nan"), "b": [1.0, float("inf"), -float("inf")], "c": np.float64("nan"),
               "d": np.array([1.0, np.nan]), "e": np.int64(3), "f": (np.bool_(True),)})
    text = capsys.readouterr().out
    d = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert d == {"a": None, "b": [1.0, None, None], "c": None, "d": [1.0, None], "e": 3, "f": [True]}
    assert "NaN" not in text and "Infinity" not in text


def test_check_out_dir_accepts_new_and_existing_folders(tmp_path):
    assert check_out_dir(tmp_path) == tmp_path
    assert check_out_dir(str(tmp_path / "a" / "b")) == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()  # nothing is created


@pytest.mark.parametrize("case", ["empty", "blank", "file", "parent-file", "too-long", "nul", "none"])
def test_check_out_dir_refuses_with_one_clear_message(tmp_path, case):
    f = tmp_path / "f.txt"
    f.write_text("x")
    path = {"empty": "", "blank": "  ", "file": str(f), "parent-file": str(f / "run"),
            "too-long": str(tmp_path / ("x" * 300)), "nul": "a\0b", "none": None}[case]
    with pytest.raises(ValueError) as e:
        check_out_dir(path, "--out")
    msg = str(e.value)
    assert msg.startswith("--out") and "\n" not in msg
    fragment = {"file": "is a file", "parent-file": "is a file", "too-long": "bytes long", "nul": "NUL"}.get(case)
    if fragment:
        assert fragment in msg


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_check_out_dir_refuses_a_read_only_parent(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ValueError, match="permission denied"):
            check_out_dir(ro / "run", "--out")
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize(
    "args",
    [
        ["--bogus"],
        ["bogus"],
        ["predict", "--depth", "x"],
        ["predict", "--loss", "foo"],
        ["predict", "--lambda-h", "x"],
        ["predict", "extra"],
        ["simulate", "--steps", "x"],
        ["train", "--bogus"],
        ["measure"],
        ["report", "--bogus"],
        ["runs", "--bogus"],
        ["sweep", "--bogus"],
        ["demo", "--bogus"],
    ],
)
def test_every_usage_error_is_one_line_starting_error(args):
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    assert "Error:" not in r.output and "Traceback" not in r.output


def test_help_and_version_still_work():
    r = CliRunner().invoke(cli, [])
    assert "Usage:" in r.output and "predict" in r.output
    assert CliRunner().invoke(cli, ["--help"]).exit_code == 0
    r = CliRunner().invoke(cli, ["--version"])
    assert r.exit_code == 0 and "nclab" in r.output
