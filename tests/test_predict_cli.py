"""`nclab predict`: output contract and one clear error line (exit 2) for every kind of bad input."""

import json
import shlex

import click
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
        (["--lambda-h", "x"], "--lambda-h"),
        (["--lambda-h", "1e-3,1e-3"], "--lambda-h"),
        (["--counts", "3,,4"], "empty item"),
        (["--counts", "3,4,"], "empty item"),
        (["--counts", ""], "empty"),
        (["--lambda-w", "1e-3,,1e-3"], "empty item"),
        (["--widths", "4,,4"], "empty item"),
        (["--depth", "x"], "--depth"),
        (["--loss", "foo"], "--loss"),
        (["--bogus"], "--bogus"),
        (["--depth", str(10**20)], "depth"),
        (["--counts", f"3,{10**20}"], "class count"),
        (["-K", str(10**12), "-n", "1"], "memory"),
        (["-K", "21", "-n", "2", "--grams"], "--json"),
        (["-K", "100000", "-n", "1", "--grams", "/tmp/nclab-grams-never-written"], "memory"),
        (["--lambda-w", "5e-324", "-M", "30"], "float64"),
        (["--lambda-w", "x"], "--lambda-w"),
        (["--depth", "0"], "depth"),
        (["--depth", "3", "--widths", "4,4"], "widths"),
        (["--depth", "2", "--lambda-w", "1e-3,1e-3,1e-3"], "lambda_w"),
        (["--widths", "4,0"], "width"),
        (["--width", "3", "--widths", "3,3"], "not both"),
        (["--counts", ",".join(map(str, range(1, 131))), "--loss", "ce", "-M", "2"], "K <= 128"),
        (["--counts", "3,2", "--classes", "2"], "not both"),
    ],
)
def test_bad_input_one_line_exit_2(args, fragment):
    r = CliRunner().invoke(cli, ["predict", *args])
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, r.output
    assert lines[0].startswith("error: "), r.output
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


def test_lambda_h_is_a_float_option_and_lambda_w_a_list():
    from nclab.cli.predict import predict_cmd

    types = {p.name: p.type for p in predict_cmd.params}
    assert types["lambda_h"] == click.FLOAT
    assert types["lambda_w"] == click.STRING
    r = run("--lambda-h", "1e-3", "--lambda-w", "1e-3,2e-3", "--json")
    d = json.loads(r.output)
    assert d["problem"]["lambda_h"] == 1e-3 and d["problem"]["lambda_w"] == [1e-3, 2e-3]


def test_problem_kwargs_accepts_cli_strings_and_numbers():
    from nclab.cli.predict import problem_kwargs

    a = problem_kwargs("3,2", None, None, None, None, None, "1e-3", "2e-3", "mse", False)
    b = problem_kwargs("3,2", None, None, None, None, None, "1e-3", 2e-3, "mse", False)
    assert a == b and a["lambda_h"] == 2e-3 and a["lambda_w"] == 1e-3 and a["counts"] == [3, 2]


def help_examples() -> list[str]:
    r = CliRunner().invoke(cli, ["predict", "--help"])
    assert r.exit_code == 0
    return [line.strip() for line in r.output.splitlines() if line.strip().startswith("nclab predict")]


def test_help_has_examples():
    assert len(help_examples()) >= 5


@pytest.mark.parametrize("line", help_examples())
def test_every_help_example_works_as_written(line):
    args = shlex.split(line.split("#")[0])[1:]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, (line, r.output)
    assert "Traceback" not in r.output and "nan" not in r.output.lower().replace("nan", "", 0).split("nclab")[0]
    if "--json" in args:
        json.loads(r.output, parse_constant=lambda c: pytest.fail(f"bare {c} in --json output"))


def test_text_output_defines_its_symbols_and_says_why():
    out = run("--counts", "200,100,50,50", "-M", "3", "--lambda-w", "2e-2", "--lambda-h", "2e-2").output
    assert "2 of 4 classes collapse (minority collapse): classes 2, 3" in out
    assert "below n_thr" in out and "44.9% below n_thr" in out
    for symbol in ("n_k ", "||w_k||", "||h_k||", "own logit", "margin", "n_thr", "a_k ", "a*(M)", "kappa", "x*",
                   "h_max"):
        assert f"\n  {symbol}" in out, symbol
    table = out[out.index("class     n_k"):out.index("symbols:")]
    assert table.count("collapsed") == 2 and table.count("kept") == 2
    # norms are printed unsquared, as the report's norms figure shows them
    p = predict([200, 100, 50, 50], depth=3, lambda_w=2e-2, lambda_h=2e-2)
    assert f"{np.sqrt(p.classes['w_norm2'][0]):.5g}" in table


def test_bias_table_does_not_call_every_class_active():
    out = run("--counts", "200,100,50,50", "-M", "3", "--lambda-w", "2e-2", "--lambda-h", "2e-2", "--bias").output
    assert "rank-1 classifier" in out and "1 of 3 kept" in out
    assert out.count("not separated") == 2 and "mu_i" in out and "b*" in out


def test_grams_flag_prints_the_three_grams():
    out = run("-K", "4", "-n", "10", "--bias", "--grams").output
    assert "WWt = W W^T" in out and "HtH = Hbar^T Hbar" in out and "WH = W Hbar" in out
    p = predict(classes=4, per_class=10, bias=True)
    assert f"{p.WWt[0, 0]:.5f}" in out


def test_large_K_summary_needs_no_dense_matrix(monkeypatch):
    monkeypatch.setenv("NCLAB_MEMORY_LIMIT", "200M")
    r = run("-K", "100000", "-n", "1")
    assert r.exit_code == 0, r.output
    assert "0-99999" in r.output and "collapsed" in r.output
    r = run("-K", "20000", "-n", "1", "--json")  # the structure, O(K): no K x K matrix (issue 14)
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert not d["dense"] and "WWt" not in d and d["structure"]["basis"]["kind"] == "diagonal"
    r = run("-K", "20000", "-n", "1", "--grams", "/tmp/nclab-grams-never-written")
    assert r.exit_code == 2 and "memory" in r.output and "GiB" in r.output


@pytest.mark.parametrize("lam", ["5e-324", "1.7e308"])
@pytest.mark.parametrize("which", ["--lambda-w", "--lambda-h"])
@pytest.mark.parametrize("depth", ["1", "3"])
def test_extreme_decays_give_finite_answers(lam, which, depth):
    r = run("--counts", "200,100,50,50", "-M", depth, which, lam, "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output, parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert np.isfinite(d["objective"]) and 0 <= d["objective"] <= 0.5
    assert all(v is not None and np.isfinite(v) for v in d["classes"]["w_norm"] + d["classes"]["h_norm"])
    text = run("--counts", "200,100,50,50", "-M", depth, which, lam).output
    assert " nan" not in text and " inf" not in text


@pytest.mark.parametrize("args,header", [
    (["-K", "4", "-n", "1"], "(closed form; theory.md)"),
    (["-K", "4", "-n", "1", "--loss", "ce"], "global minimizer of the deep linear UFM (proven at M = 1"),
    (["--counts", "5,3", "--loss", "ce"], "global minimizer of the deep linear UFM (certified convex solve"),
    (["-K", "4", "-n", "1", "--loss", "ce", "-M", "3"], "best point found for the deep linear UFM (search, not cert"),
    (["--counts", "5,3", "--loss", "ce", "-M", "2"], "best point found for the deep linear UFM (search, not cert"),
])
def test_first_line_says_what_the_answer_is_worth(args, header):
    """A closed form, a certified solve, a proof, or only the best point a search found: never "closed form"
    for a numerical search."""
    r = CliRunner().invoke(cli, ["predict", *args, "--lambda-w", "1e-3", "--lambda-h", "1e-3"])
    assert r.exit_code == 0, r.output
    first = r.output.splitlines()[0]
    assert header in first, first
    assert ("closed form" in first) == ("--loss" not in args)
