"""`nclab predict`: output contract and one clear error line (exit 2) for every kind of bad input."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from nclab import predict
from nclab.cli import cli


def run(*args):
    return CliRunner().invoke(cli, ["predict", *args])


def test_default_summary_is_the_paper_imbalanced_setting():
    r = run("--depth", "3")
    assert r.exit_code == 0, r.output
    assert "general orthogonal frame" in r.output
    assert "200" in r.output and "minority collapse" in r.output


def test_json_contract():
    r = run("--counts", "200,100,50,50", "--depth", "3", "--json")
    assert r.exit_code == 0
    d = json.loads(r.output)
    for key in ("objective", "objective_zero", "WWt", "HtH", "WH", "gram_unique", "active", "bias", "layers"):
        assert key in d
    assert np.asarray(d["WWt"]).shape == (4, 4) and len(d["layers"]) == 3
    p = predict([200, 100, 50, 50], depth=3)
    assert d["objective"] == p.objective
    np.testing.assert_array_equal(np.asarray(d["HtH"]), p.HtH)
    assert d["problem"]["counts"] == [200, 100, 50, 50]


def test_python_api_matches_cli_options():
    r = run("--classes", "3", "--per-class", "5", "--widths", "8,2", "--lambda-w", "1e-3,4e-3", "--bias", "--json")
    d = json.loads(r.output)
    p = predict(classes=3, per_class=5, widths=[8, 2], lambda_w=[1e-3, 4e-3], bias=True)
    assert d["objective"] == p.objective and d["bias"] == p.bias.tolist()
    assert p.to_dict()["objective"] == p.objective


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--counts", "10,0,5"], "positive integer"),
        (["--counts", "10,-3"], "positive integer"),
        (["--counts", "10,2.5"], "integers"),
        (["--counts", "10,abc"], "integers"),
        (["--counts", "10"], "K = 2"),
        (["--classes", "1", "--per-class", "4"], "K = 2"),
        (["--lambda-w", "0"], "lambda_w"),
        (["--lambda-w", "-1e-3"], "lambda_w"),
        (["--lambda-w", "nan"], "lambda_w"),
        (["--lambda-h", "inf"], "lambda_h"),
        (["--lambda-w", "x"], "--lambda-w"),
        (["--depth", "0"], "depth"),
        (["--depth", "3", "--widths", "4,4"], "widths"),
        (["--depth", "2", "--lambda-w", "1e-3,1e-3,1e-3"], "lambda_w"),
        (["--widths", "4,0"], "width"),
        (["--width", "3", "--widths", "3,3"], "not both"),
        (["--counts", "3,2", "--loss", "ce"], "not supported"),
        (["--counts", "3,2", "--classes", "2"], "not both"),
    ],
)
def test_bad_input_one_line_exit_2(args, fragment):
    r = CliRunner().invoke(cli, ["predict", *args])
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") or "Error:" in r.output, r.output
    assert fragment in r.output
    assert "Traceback" not in r.output


junk = st.one_of(
    st.integers(-5, 5).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(alphabet="0123456789.,-eanif", min_size=0, max_size=8),
)


@settings(max_examples=60, deadline=None)
@given(counts=junk, lam=junk, depth=st.integers(-2, 4))
def test_arbitrary_input_never_tracebacks(counts, lam, depth):
    r = CliRunner().invoke(cli, ["predict", "--counts", counts, "--lambda-w", lam, "--depth", str(depth)])
    assert r.exit_code in (0, 2), r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
