"""Fuzz of ``nclab predict`` and the public ``nclab.theory`` API (issue 9).

Every input, hand-picked (the tables) or drawn by hypothesis, must end in one of two ways:

* a result: exit status 0 (CLI) or a return value (API) with no NaN or infinity presented as a value;
* a clean refusal: exit status 2 with exactly one line ``error: ...`` (CLI), or a ValueError/TypeError (API).

Anything else -- a traceback, another exception type, a NaN/inf shown as a result, or a call running
longer than ``HANG_S`` seconds -- fails the test. The figures (inputs tried, results, clean errors,
tracebacks, hangs) are collected in ``FIGURES`` and printed by the last test (``pytest -s`` shows them).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import signal
from collections import Counter

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nclab.cli import cli
from nclab.theory import Prediction, Problem, labels_from_counts, make_problem, predict, scalar, ufm_objective
from nclab.theory import ce as ce_mod
from nclab.theory import mse as mse_mod

HANG_S = 20
FIGURES: Counter = Counter()
# a number token that is NaN or infinite, as Python, numpy or click would print it
_BAD_TOKEN = re.compile(r"(?<![A-Za-z_])[-+]?(nan|inf|infinity)(?![A-Za-z_])", re.IGNORECASE)


class Hang(Exception):
    pass


@contextlib.contextmanager
def deadline(seconds: float = HANG_S):
    """Raise Hang if the block runs longer than ``seconds`` (SIGALRM; main thread on Unix)."""

    def on_alarm(signum, frame):
        raise Hang(f"no answer within {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ------------------------------------------------------------------------------------------------ CLI
def check_cli(args: list[str]) -> None:
    FIGURES["cli inputs"] += 1
    try:
        with deadline():
            r = CliRunner().invoke(cli, ["predict", *args])
    except Hang:
        FIGURES["cli hangs"] += 1
        pytest.fail(f"hang: nclab predict {args}")
    out = r.output
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        FIGURES["cli tracebacks"] += 1
        pytest.fail(f"nclab predict {args}: {type(r.exception).__name__}: {r.exception}\n{out}")
    assert "Traceback" not in out, (args, out)
    if r.exit_code == 0:
        FIGURES["cli results"] += 1
        if "--json" in args:
            def bad_constant(c):
                pytest.fail(f"bare {c} in --json output of {args}")

            d = json.loads(out, parse_constant=bad_constant)
            assert math.isfinite(d["objective"]), args
        else:
            # the symbols part has no numbers that can be NaN; the values must all be finite
            values = out.split("\nsymbols:")[0]
            assert not _BAD_TOKEN.search(values), (args, out)
    else:
        FIGURES["cli clean errors"] += 1
        lines = [line for line in out.strip().splitlines() if line.strip()]
        assert r.exit_code == 2, (args, out)
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, out)


CLI_TABLE = [
    [],
    ["--counts", "3,,4"], ["--counts", "3,4,"], ["--counts", ","], ["--counts", ""], ["--counts", " "],
    ["--counts", "3"], ["--counts", "0,3"], ["--counts", "-3,3"], ["--counts", "2.5,3"], ["--counts", "nan,3"],
    ["--counts", "inf,3"], ["--counts", "1e400,3"], ["--counts", f"{10**20},3"], ["--counts", "1e15,1e15"],
    ["--counts", "abc"], ["--counts", "3;4"], ["--counts", "0x10,3"], ["--counts", "3,4", "-K", "2"],
    ["-K", "0", "-n", "3"], ["-K", "1", "-n", "3"], ["-K", "3"], ["-n", "3"], ["-K", "3", "-n", "0"],
    ["-K", str(10**12), "-n", "1"], ["-K", "100000", "-n", "1"], ["-K", "100000", "-n", "1", "--json"],
    ["-K", "100000", "-n", "1", "--bias"], ["-K", "100000", "-n", "1", "--loss", "ce"],
    ["-K", "21", "-n", "2", "--grams"], ["-K", "3", "-n", str(10**20)], ["-K", "x", "-n", "3"],
    ["--depth", "0"], ["--depth", "-1"], ["--depth", str(10**20)], ["--depth", "1e3"], ["--depth", "nan"],
    ["--depth", "3", "--widths", "4,4"], ["--widths", "4,0"], ["--widths", "4,,4"], ["--widths", f"{10**20}"],
    ["--width", "0"], ["--width", "3", "--widths", "3,3"], ["--width", "1", "-M", "3"],
    ["--lambda-w", "0"], ["--lambda-w", "-1e-3"], ["--lambda-w", "nan"], ["--lambda-w", "inf"],
    ["--lambda-w", "5e-324"], ["--lambda-w", "1.7e308"], ["--lambda-w", "1e400"], ["--lambda-w", "x"],
    ["--lambda-w", "1e-3,,1e-3"], ["--lambda-w", "1e-3,1e-3,1e-3", "-M", "2"], ["--lambda-w", ""],
    ["--lambda-w", "5e-324", "-M", "3"], ["--lambda-w", "5e-324", "-M", "30"], ["--lambda-w", "1.7e308", "-M", "3"],
    ["--lambda-w", "5e-324,1.7e308,1", "-M", "3"], ["--lambda-w", "5e-324", "--lambda-h", "5e-324"],
    ["--lambda-h", "0"], ["--lambda-h", "nan"], ["--lambda-h", "inf"], ["--lambda-h", "5e-324"],
    ["--lambda-h", "1.7e308"], ["--lambda-h", "5e-324", "-M", "3", "--bias"], ["--lambda-h", "1e-3,1e-3"],
    ["--lambda-h", "x"], ["--lambda-w", "5e-324", "--bias", "--json"], ["--lambda-h", "1.7e308", "--json"],
    ["--loss", "foo"], ["--loss", "ce"], ["--loss", "ce", "-K", "3", "-n", "4", "--lambda-w", "5e-324"],
    ["--loss", "ce", "-K", "3", "-n", "4", "--lambda-h", "1.7e308", "--json"],
    ["--loss", "ce", "-K", "3", "-n", "4", "--seed", "-1"], ["--seed", "x"], ["--bogus"], ["extra"],
    ["-K", "4", "-n", "10", "--bias", "--grams"], ["-K", "4", "-n", "10", "--grams", "--json"],
    ["--counts", "200,100,50,50", "-M", "3", "--lambda-w", "2e-2", "--lambda-h", "2e-2", "--bias", "--grams"],
]


@pytest.mark.parametrize("args", CLI_TABLE, ids=lambda a: " ".join(a)[:60] or "(none)")
def test_cli_table(args):
    check_cli(args)


_junk = st.one_of(
    st.sampled_from(["", " ", ",", "0", "-1", "1", "2", "3", "nan", "inf", "-inf", "1e308", "1.7e308", "5e-324",
                     "1e400", "abc", "3,,4", "3,4,", "2.5", "1e-3,2e-3", "4,4,4", "99999999999999999999",
                     "0x10", "1_000", "+3", "mse", "ce", "--json"]),
    st.integers(-3, 40).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(alphabet="0123456789.,-+eEnaif ", max_size=10),
)
_option = st.sampled_from(["--counts", "--classes", "--per-class", "--depth", "--widths", "--width", "--lambda-w",
                           "--lambda-h", "--loss", "--seed"])
_flag = st.sampled_from(["--bias", "--no-bias", "--json", "--grams"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pairs=st.lists(st.tuples(_option, _junk), max_size=4), flags=st.lists(_flag, max_size=2))
def test_cli_fuzz(pairs, flags):
    args = [x for pair in pairs for x in pair] + flags
    if "--loss" in args and "ce" in args:  # keep the CE search small: the fuzz is about input handling
        args += ["--classes", "3", "--per-class", "2"] if "--counts" not in args else []
    check_cli(args)


# ------------------------------------------------------------------------------------------------ API
def _finite(value) -> bool:
    if isinstance(value, Prediction):
        d = value.to_dict()
        json.dumps(d, allow_nan=False)  # raises ValueError on NaN/inf: a test failure below
        return True
    if isinstance(value, (tuple, list)):
        return all(_finite(v) for v in value)
    if isinstance(value, (Problem, type(None), str)):
        return True
    if isinstance(value, torch.Tensor):
        value = value.detach().numpy()
    arr = np.asarray(value)
    return arr.dtype.kind not in "fc" or bool(np.isfinite(arr).all())


def check_api(name: str, fn) -> None:
    FIGURES["api inputs"] += 1
    try:
        with deadline():
            out = fn()
    except (ValueError, TypeError) as exc:
        FIGURES["api clean errors"] += 1
        assert str(exc), f"{name}: empty message"
        return
    except Hang:
        FIGURES["api hangs"] += 1
        pytest.fail(f"hang: {name}")
    except Exception as exc:  # noqa: BLE001 - the point of the test
        FIGURES["api tracebacks"] += 1
        pytest.fail(f"{name}: {type(exc).__name__}: {exc}")
    try:
        ok = _finite(out)
    except ValueError as exc:
        ok = False, exc
    assert ok is True, f"{name}: NaN/inf in the result"
    FIGURES["api results"] += 1


BAD = [None, "x", "3", [], [[]], {}, float("nan"), float("inf"), -1, 0, 10**20, 1e308, 5e-324, True, 2.5,
       object(), np.array([1, 2]), torch.tensor(3), complex(1, 1), b"3", [3, None], [[3, 2], [1]]]


def _api_cases():
    cases = []
    for v in BAD:
        r = repr(v)[:30]
        cases += [
            (f"predict({r})", lambda v=v: predict(v)),
            (f"predict(classes={r}, per_class=2)", lambda v=v: predict(classes=v, per_class=2)),
            (f"predict(classes=3, per_class={r})", lambda v=v: predict(classes=3, per_class=v)),
            (f"predict(depth={r})", lambda v=v: predict([3, 2], depth=v)),
            (f"predict(widths={r})", lambda v=v: predict([3, 2], widths=v)),
            (f"predict(lambda_w={r})", lambda v=v: predict([3, 2], lambda_w=v)),
            (f"predict(lambda_h={r})", lambda v=v: predict([3, 2], lambda_h=v)),
            (f"predict(bias={r})", lambda v=v: predict([3, 2], bias=v)),
            (f"predict(loss={r})", lambda v=v: predict([3, 2], loss=v)),
            (f"predict(seed={r}, ce)", lambda v=v: predict([3, 3], loss="ce", seed=v)),
            (f"predict([3, {r}])", lambda v=v: predict([3, v])),
            (f"a_star({r})", lambda v=v: scalar.a_star(v)),
            (f"x_star({r})", lambda v=v: scalar.x_star(v)),
            (f"h_max({r})", lambda v=v: scalar.h_max(v)),
            (f"solve_modes(0.1, {r})", lambda v=v: scalar.solve_modes(np.array([0.1]), v)),
            (f"solve_modes({r}, 2)", lambda v=v: scalar.solve_modes(v, 2)),
            (f"larger_root({r}, 3)", lambda v=v: scalar.larger_root(v, 3)),
            (f"F({r}, 0.1, 2)", lambda v=v: scalar.F(v, 0.1, 2)),
            (f"etf_threshold(3, {r})", lambda v=v: ce_mod.etf_threshold(3, v)),
            (f"etf_threshold({r}, 2)", lambda v=v: ce_mod.etf_threshold(v, 2)),
            (f"etf_scalar(3, 2, {r})", lambda v=v: ce_mod.etf_scalar(3, 2, v)),
            (f"reduced_objective({r})", lambda v=v: ce_mod.reduced_objective(v, None, 0.01, 2)),
            (f"ce_gamma({r})", lambda v=v: ce_mod.ce_gamma(v)),
            (f"solve_ce({r})", lambda v=v: ce_mod.solve_ce(v)),
            (f"solve_mse({r})", lambda v=v: mse_mod.solve_mse(v)),
            (f"Prediction({r})", lambda v=v: Prediction(v)),
            (f"labels_from_counts({r})", lambda v=v: labels_from_counts(v)),
            (f"make_problem({r})", lambda v=v: make_problem(v)),
            (f"ufm_objective(lambda_w={r})",
             lambda v=v: ufm_objective([np.ones((2, 3))], np.ones((3, 4)), [0, 1, 0, 1], v, 1e-3)),
            (f"ufm_objective(H={r})", lambda v=v: ufm_objective([np.ones((2, 3))], v, [0, 1, 0, 1], 1e-3, 1e-3)),
            (f"ufm_objective(weights={r})", lambda v=v: ufm_objective(v, np.ones((3, 4)), [0, 1, 0, 1], 1e-3, 1e-3)),
            (f"ufm_objective(labels={r})",
             lambda v=v: ufm_objective([np.ones((2, 3))], np.ones((3, 4)), v, 1e-3, 1e-3)),
        ]
    p = predict([3, 2])
    cases += [
        ("predict(Problem with lambda 0)", lambda: predict(Problem((3, 2), (4,), (0.0,), 1e-3))),
        ("predict(Problem with K = 1)", lambda: predict(Problem((3,), (4,), (1e-3,), 1e-3))),
        ("Prediction(problem, both)", lambda: Prediction(p.problem, mse=p._mse, ce=p._mse)),
        ("Prediction(problem, mse='x')", lambda: Prediction(p.problem, mse="x")),
        ("construct_ce(problem, 'x')", lambda: ce_mod.construct_ce(make_problem([2, 2], loss="ce"), "x")),
        ("predict(widths=2**60).construct()", lambda: predict([3, 2], widths=2**50).construct()),
        ("predict([2**52, 2**52]).construct()", lambda: predict([2**52, 2**52]).construct()),
        ("ufm_objective(labels out of range)",
         lambda: ufm_objective([np.ones((2, 3))], np.ones((3, 4)), [0, 1, 5, 1], 1e-3, 1e-3)),
        ("ufm_objective(labels fractional)",
         lambda: ufm_objective([np.ones((2, 3))], np.ones((3, 4)), [0, 1, 0.5, 1], 1e-3, 1e-3)),
        ("ufm_objective(shapes)", lambda: ufm_objective([np.ones((2, 4))], np.ones((3, 4)), [0, 1, 0, 1], 1e-3, 1e-3)),
        ("ufm_objective(labels length)",
         lambda: ufm_objective([np.ones((2, 3))], np.ones((3, 4)), [0, 1], 1e-3, 1e-3)),
        ("ufm_objective(overflow)",
         lambda: ufm_objective([np.ones((2, 3))], np.ones((3, 4)), [0, 1, 0, 1], 1.7e308, 1e-3)),
        ("ufm_objective(loss='x')",
         lambda: ufm_objective([np.ones((2, 3))], np.ones((3, 4)), [0, 1, 0, 1], 1e-3, 1e-3, loss="x")),
        ("ufm_objective(bias shape)",
         lambda: ufm_objective([np.ones((2, 3))], np.ones((3, 4)), [0, 1, 0, 1], 1e-3, 1e-3, bias=np.ones(3))),
    ]
    for M in (1, 3):
        for key in ("lambda_w", "lambda_h"):
            for lam in (5e-324, 1e-300, 1.7e308):
                for bias in (False, True):
                    cases.append((f"predict(M={M}, {key}={lam}, bias={bias})",
                                  lambda M=M, key=key, lam=lam, bias=bias: predict([200, 100, 50, 50], depth=M,
                                                                                   bias=bias, **{key: lam})))
        cases.append((f"predict(M={M}, both 5e-324)",
                      lambda M=M: predict([200, 100, 50, 50], depth=M, lambda_w=5e-324, lambda_h=5e-324)))
        cases.append((f"predict(M={M}, ce, 5e-324)",
                      lambda M=M: predict([4, 4, 4], depth=M, lambda_w=5e-324, loss="ce")))
    return cases


API_CASES = _api_cases()


def test_api_table():
    for name, fn in API_CASES:
        check_api(name, fn)


_number = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-5, 10**6),
    st.sampled_from([10**20, 2**53, 2**53 + 1, 5e-324, 1.7e308, "3", "x", None, True]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    counts=st.one_of(st.lists(_number, max_size=5), _number),
    depth=st.one_of(st.none(), _number),
    widths=st.one_of(st.none(), _number, st.lists(_number, max_size=3)),
    lambda_w=st.one_of(_number, st.lists(_number, max_size=3)),
    lambda_h=_number,
    bias=st.one_of(st.booleans(), _number),
)
def test_api_fuzz(counts, depth, widths, lambda_w, lambda_h, bias):
    check_api(
        f"predict({counts!r}, depth={depth!r}, widths={widths!r}, lambda_w={lambda_w!r}, lambda_h={lambda_h!r})",
        lambda: predict(counts, depth=depth, widths=widths, lambda_w=lambda_w, lambda_h=lambda_h, bias=bias),
    )


@settings(max_examples=60, deadline=None)
@given(M=_number, a=st.one_of(_number, st.lists(_number, max_size=3)), K=_number, gamma=_number)
def test_scalar_fuzz(M, a, K, gamma):
    check_api(f"solve_modes({a!r}, {M!r})", lambda: scalar.solve_modes(a, M))
    check_api(f"a_star({M!r})", lambda: scalar.a_star(M))
    check_api(f"etf_scalar({K!r}, {M!r}, {gamma!r})", lambda: ce_mod.etf_scalar(K, M, gamma))
    check_api(f"etf_threshold({K!r}, {M!r})", lambda: ce_mod.etf_threshold(K, M))


def test_zz_figures(capsys):
    """Print the figures of this run (inputs tried, results, clean errors, tracebacks, hangs)."""
    f = FIGURES
    tried = f["cli inputs"] + f["api inputs"]
    with capsys.disabled():
        print(
            f"\nfuzz figures: {tried} inputs tried (CLI {f['cli inputs']}, API {f['api inputs']}); "
            f"results {f['cli results'] + f['api results']}, "
            f"clean errors {f['cli clean errors'] + f['api clean errors']}, "
            f"tracebacks {f['cli tracebacks'] + f['api tracebacks']}, hangs {f['cli hangs'] + f['api hangs']}"
        )
    assert f["cli tracebacks"] + f["api tracebacks"] + f["cli hangs"] + f["api hangs"] == 0
