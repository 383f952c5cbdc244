"""Fuzz of the metrics API (ClassStats, nc_metrics, deep_head_metrics, the functional helpers) and of
`nclab measure`: hypothesis plus a table of hand-picked bad inputs.

Contract (issue 9): a bad input gives a clean error -- ValueError/TypeError in the API, one `error:` line
and exit status 2 in the CLI -- never another exception, a traceback, a hang, or a NaN/inf presented as a
result (a NaN value always comes with its reason). Valid inputs of any finite scale give the metrics of the
unscaled data. The last test prints the figures (inputs tried, clean errors, results, tracebacks, hangs).
"""

from __future__ import annotations

import json
import math
import signal
import warnings
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nclab.cli.measure import measure_cmd
from nclab.metrics import (
    ClassStats,
    DeepHeadMetrics,
    NCMetrics,
    cdnv,
    collapsed_classes,
    compare_to_theory,
    deep_head_metrics,
    equiangularity,
    equinorm,
    gram_distance,
    load_dump,
    nc1_from_scatter,
    nc1_projector,
    nc3,
    nc3_dual,
    nc_metrics,
    partial_products,
    target_gram,
)

FIG = {"inputs": 0, "clean_errors": 0, "results": 0, "tracebacks": 0, "hangs": 0}
PROBLEMS: list[str] = []
TIMEOUT_S = 10.0
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


class Hang(Exception):
    pass


@contextmanager
def time_limit(seconds: float):
    def handler(signum, frame):
        raise Hang()

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _check_result(r, what: str) -> None:
    """Every presented value is finite, or NaN with its reason; NC1 is never negative."""
    layers = r.layers if isinstance(r, DeepHeadMetrics) else [r] if isinstance(r, NCMetrics) else []
    for m in layers:
        for k, v in m.values.items():
            if math.isinf(v) or (math.isnan(v) and not m.reasons.get(k)):
                PROBLEMS.append(f"{what}: {k} = {v} without a reason")
        if m.values.get("nc1", 0) < 0:
            PROBLEMS.append(f"{what}: nc1 < 0")
    if isinstance(r, float) and math.isinf(r):
        PROBLEMS.append(f"{what}: returned {r}")


def api(fn, what: str = "api"):
    """Run one API call under the contract; count it."""
    FIG["inputs"] += 1
    try:
        with time_limit(TIMEOUT_S), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = fn()
    except (ValueError, TypeError) as exc:
        FIG["clean_errors"] += 1
        if not str(exc):
            PROBLEMS.append(f"{what}: {type(exc).__name__} without a message")
        return None
    except Hang:
        FIG["hangs"] += 1
        PROBLEMS.append(f"{what}: hang (> {TIMEOUT_S} s)")
        return None
    except Exception as exc:  # anything else is a traceback for the user
        FIG["tracebacks"] += 1
        PROBLEMS.append(f"{what}: {type(exc).__name__}: {exc}")
        return None
    FIG["results"] += 1
    _check_result(r, what)
    return r


def cli(args, what: str = "cli"):
    """Run `nclab measure ARGS` under the contract; count it."""
    FIG["inputs"] += 1
    try:
        with time_limit(TIMEOUT_S):
            r = CliRunner().invoke(measure_cmd, [str(a) for a in args])
    except Hang:
        FIG["hangs"] += 1
        PROBLEMS.append(f"{what} {args}: hang")
        return None
    if r.exception is not None and not isinstance(r.exception, SystemExit) or "Traceback" in r.output:
        FIG["tracebacks"] += 1
        PROBLEMS.append(f"{what} {args}: {type(r.exception).__name__}: {r.exception}")
        return None
    if r.exit_code == 0:
        FIG["results"] += 1
        if "--json" in args:
            try:
                json.loads(r.stdout, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
            except ValueError as exc:
                PROBLEMS.append(f"{what} {args}: not strict JSON ({exc})")
        elif " inf " in r.stdout or "  inf" in r.stdout:
            PROBLEMS.append(f"{what} {args}: inf presented")
        return r
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    others = [ln for ln in r.output.splitlines() if ln and not ln.startswith(("error:", "warning:"))]
    if r.exit_code == 2 and len(errors) == 1 and not others:
        FIG["clean_errors"] += 1
    else:
        FIG["tracebacks"] += 1
        PROBLEMS.append(f"{what} {args}: exit {r.exit_code}, output {r.output[:300]!r}")
    return r


def _no_problems():
    assert not PROBLEMS, "\n".join(PROBLEMS[:20])


# ------------------------------------------------------------------------------------------ data
RNG = np.random.default_rng(0)
K0, D0, N0 = 4, 6, 40
Y0 = np.arange(N0) % K0
H0 = RNG.standard_normal((K0, D0))[Y0] + 0.3 * RNG.standard_normal((N0, D0))
W0 = RNG.standard_normal((K0, D0))
B0 = RNG.standard_normal(K0)

odd_scalars = st.sampled_from([None, 0, -1, 1, 2, 3.5, float("nan"), float("inf"), -float("inf"), 10**12, 2**70,
                               "3", "x", True, [1], (), {}, 1e-300, 5e-324, 1 - 1e-17, np.float32(1e-7),
                               np.int64(4), torch.tensor(3), 1e308, -0.0])
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
any_float = st.floats(allow_nan=True, allow_infinity=True, width=64)


@st.composite
def arrays(draw, max_n=10, max_d=5):
    n, d = draw(st.integers(0, max_n)), draw(st.integers(0, max_d))
    kind = draw(st.sampled_from(["normal", "finite", "any", "scaled", "int", "f32", "const"]))
    if kind == "normal":
        a = RNG.standard_normal((n, d))
    elif kind == "scaled":
        a = RNG.standard_normal((n, d)) * 10.0 ** draw(st.integers(-320, 308))
    elif kind == "int":
        a = RNG.integers(-5, 5, (n, d))
    elif kind == "f32":
        a = RNG.standard_normal((n, d)).astype(np.float32)
    elif kind == "const":
        a = np.full((n, d), draw(finite))
    else:
        a = np.array(draw(st.lists(finite if kind == "finite" else any_float, min_size=n * d, max_size=n * d)),
                     dtype=np.float64).reshape(n, d)
    return a


@st.composite
def labels_for(draw, n):
    kind = draw(st.sampled_from(["mod", "random", "floats", "neg", "big", "short", "2d"]))
    k = draw(st.integers(1, 6))
    if kind == "mod":
        return np.arange(n) % k
    if kind == "random":
        return RNG.integers(0, k, n)
    if kind == "floats":
        return np.array(draw(st.lists(any_float, min_size=n, max_size=n)))
    if kind == "neg":
        return np.arange(n) % k - 1
    if kind == "big":
        return np.arange(n) % k * 10**draw(st.integers(3, 18))
    if kind == "short":
        return np.arange(max(n - 1, 0)) % k
    return (np.arange(n) % k).reshape(-1, 1)


weird = st.sampled_from([None, "abc", 3, [[1, 2], [3]], {"a": 1}, np.zeros((2, 2, 2)), np.array([1 + 2j, 3j]),
                         np.array([True, False]), torch.zeros(3, 2).to_sparse(), torch.zeros(0),
                         np.array(["a", "b"]), object()])


# ------------------------------------------------------------------------------------------ API fuzz
@FUZZ
@given(data=st.data())
def test_fuzz_nc_metrics(data):
    H = data.draw(st.one_of(arrays(), weird), "H")
    n = H.shape[0] if hasattr(H, "shape") and len(H.shape) else 0
    y = data.draw(st.one_of(labels_for(n), weird), "y")
    d = H.shape[1] if hasattr(H, "shape") and len(H.shape) == 2 else 3
    k = data.draw(st.integers(1, 7))
    W = data.draw(st.sampled_from([None, "ok", "wrong", "nan", "huge", "tiny"]))
    W = {"ok": RNG.standard_normal((k, d)), "wrong": RNG.standard_normal((k, d + 1)), "nan": np.full((k, d), np.nan),
         "huge": RNG.standard_normal((k, d)) * 1e300, "tiny": RNG.standard_normal((k, d)) * 1e-300}.get(W, W)
    b = data.draw(st.sampled_from([None, "ok", "short", "nan"]))
    b = {"ok": RNG.standard_normal(k), "short": np.ones(max(k - 1, 0)), "nan": np.full(k, np.nan)}.get(b, b)
    opts = {}
    for name in data.draw(st.sets(st.sampled_from(["num_classes", "rtol", "target", "global_mean", "within",
                                                    "center", "collapse_rtol"]))):
        opts[name] = data.draw(st.one_of(odd_scalars, st.sampled_from(["etf", "of", "auto", "gof", "weighted",
                                                                        "uniform", "pooled", "class_mean"])))
    api(lambda: nc_metrics(H, y, W, b, **opts), "nc_metrics")
    if isinstance(H, np.ndarray) and H.ndim == 2 and W is not None and not isinstance(W, str):
        api(lambda: deep_head_metrics(H, y, [RNG.standard_normal((d, d)) * 1e200, W], b, **opts), "deep_head")
    _no_problems()


@FUZZ
@given(data=st.data())
def test_fuzz_class_stats(data):
    ctor = {}
    for name in data.draw(st.sets(st.sampled_from(["dim", "moments", "device", "gemm_dtype"]))):
        ctor[name] = data.draw(st.one_of(odd_scalars, st.sampled_from(
            ["scatter", "trace", "none", "cpu", "cuda", "meta", torch.float32, torch.float64, torch.int64,
             torch.float16, torch.bool, 6])))
    K = data.draw(st.one_of(st.integers(2, 6), odd_scalars))
    s = api(lambda: ClassStats(K, **ctor), "ClassStats()")
    if s is None:
        _no_problems()
        return
    for _ in range(data.draw(st.integers(1, 3))):
        H = data.draw(st.one_of(arrays(), weird))
        n = H.shape[0] if hasattr(H, "shape") and len(H.shape) else 0
        y = data.draw(labels_for(n))
        if data.draw(st.booleans()) and isinstance(H, np.ndarray) and H.dtype.kind == "f" and H.size:
            H = torch.tensor(H, requires_grad=True) * 2  # a graph: must be detached
        api(lambda H=H, y=y: s.update(H, y), "update")
    other = data.draw(st.sampled_from([None, "self", 3, "stats"]))
    if other is not None:
        o = s if other == "self" else other if other == 3 else ClassStats(s.num_classes)
        api(lambda: s.merge(o), "merge")
    opts = {}
    for name in data.draw(st.sets(st.sampled_from(["rtol", "target", "collapse_rtol", "second"]))):
        opts[name] = data.draw(odd_scalars)
    W = RNG.standard_normal((s.num_classes, s.dim)) if s.dim and s.num_classes < 100 else None
    api(lambda: s.compute(W, **opts), "compute")
    _no_problems()


@FUZZ
@given(data=st.data())
def test_fuzz_functional(data):
    A = data.draw(st.one_of(arrays(6, 4), weird))
    B = data.draw(st.one_of(arrays(6, 4), weird))
    t = data.draw(st.one_of(st.sampled_from(["etf", "of", "x"]), odd_scalars))
    k = data.draw(st.one_of(st.integers(-1, 6), odd_scalars))
    api(lambda: gram_distance(A, t), "gram_distance")
    api(lambda: target_gram(t, k), "target_gram")
    api(lambda: equinorm(A), "equinorm")
    api(lambda: equiangularity(A, t), "equiangularity")
    api(lambda: cdnv(A, B), "cdnv")
    api(lambda: nc3(A, B, t), "nc3")
    api(lambda: nc3_dual(A, B), "nc3_dual")
    api(lambda: collapsed_classes(A, B, k), "collapsed_classes")
    api(lambda: nc1_projector(A, B, rtol=t if not isinstance(t, str) else 1e-6), "nc1_projector")
    api(lambda: nc1_from_scatter(A, B, k), "nc1_from_scatter")
    api(lambda: partial_products([A, B] if data.draw(st.booleans()) else A), "partial_products")
    _no_problems()


@settings(max_examples=50, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(s=st.integers(-300, 300), bias=st.booleans())
def test_any_finite_scale_gives_the_unscaled_metrics(s, bias):
    ref = nc_metrics(H0, Y0, W0)
    m = api(lambda: nc_metrics(H0 * 10.0 ** s, Y0, W0 * 10.0 ** -s, B0 if bias else None, target="of"), "scaled")
    keys = ("nc1", "nc1_trace", "cdnv", "nc2_h", "nc2_w", "equinorm_h", "equiangular_h", "nc3", "nc3_dual")
    for key in keys:
        assert m[key] == pytest.approx(ref[key], rel=1e-9), (s, key)
    dh = api(lambda: deep_head_metrics(H0 * 10.0 ** s, Y0, [np.eye(D0) * 1e150, W0], target="of"), "scaled deep")
    for key in keys:
        assert dh[1][key] == pytest.approx(ref[key], rel=1e-9), (s, key)
    _no_problems()


# ------------------------------------------------------------------------------------------ hand-picked
HAND = [
    ("num_classes=inf", lambda: ClassStats(float("inf"))),
    ("num_classes=nan", lambda: nc_metrics(H0, Y0, num_classes=float("nan"))),
    ("num_classes=10**9", lambda: ClassStats(10**9, 64)),
    ("num_classes=10**9 measure-like", lambda: nc_metrics(H0, Y0, num_classes=10**9)),
    ("num_classes=10**18", lambda: nc_metrics(H0, Y0, num_classes=10**18)),
    ("labels up to 10**12", lambda: nc_metrics(H0, Y0 * 10**12)),
    ("device=cuda-or-bad", lambda: ClassStats(4, device="nodevice")),
    ("device=int", lambda: ClassStats(4, device=3.5)),
    ("dim=-1", lambda: ClassStats(4, dim=-1)),
    ("dim=1e30", lambda: ClassStats(4, dim=10**15)),
    ("gemm_dtype=int64", lambda: ClassStats(4, gemm_dtype=torch.int64)),
    ("gemm_dtype=str", lambda: ClassStats(4, gemm_dtype="float32")),
    ("merge(3)", lambda: ClassStats(4).merge(3)),
    ("merge other K", lambda: ClassStats(4).update(H0, Y0).merge(ClassStats(3))),
    ("merge other D", lambda: ClassStats(4).update(H0, Y0).merge(ClassStats(4).update(H0[:, :2], Y0))),
    ("second=3", lambda: ClassStats(4).update(H0, Y0).compute(second=3)),
    ("gram_distance empty", lambda: gram_distance(np.zeros((0, 3)))),
    ("target_gram etf 1", lambda: target_gram("etf", 1)),
    ("target_gram etf 0", lambda: target_gram("etf", 0)),
    ("target_gram zero", lambda: target_gram(np.zeros((3, 3)), 3)),
    ("nc1_from_scatter n=0", lambda: nc1_from_scatter(np.eye(3), np.ones((3, 1)), 0)),
    ("nc1_from_scatter empty", lambda: nc1_from_scatter(np.zeros((0, 0)), np.zeros((0, 0)), 1)),
    ("partial_products([])", lambda: partial_products([])),
    ("prediction=5", lambda: compare_to_theory(5, H0, Y0, W0)),
    ("prediction='etf'", lambda: compare_to_theory("etf", H0, Y0, W0)),
    ("prediction layers=5", lambda: compare_to_theory({"layers": 5}, H0, Y0, W0)),
    ("prediction WWt str", lambda: compare_to_theory({"WWt": "x"}, H0, Y0, W0)),
    ("rtol=0", lambda: nc_metrics(H0, Y0, rtol=0)),
    ("rtol=nan", lambda: nc_metrics(H0, Y0, rtol=float("nan"))),
    ("rtol=inf", lambda: nc_metrics(H0, Y0, rtol=float("inf"))),
    ("rtol=1", lambda: nc_metrics(H0, Y0, rtol=1)),
    ("rtol=2", lambda: ClassStats(4).update(H0, Y0).compute(rtol=2)),
    ("collapse_rtol=-1", lambda: nc_metrics(H0, Y0, collapse_rtol=-1)),
    ("sparse features", lambda: nc_metrics(torch.tensor(H0).to_sparse(), Y0)),
    ("sparse csr features", lambda: nc_metrics(torch.tensor(H0).to_sparse_csr(), Y0)),
    ("sparse W", lambda: nc_metrics(H0, Y0, torch.tensor(W0).to_sparse())),
    ("meta tensor", lambda: nc_metrics(torch.empty(4, 3, device="meta"), Y0[:4])),
    ("complex features", lambda: nc_metrics(H0 + 1j, Y0)),
    ("float128 features", lambda: nc_metrics(H0.astype(np.longdouble), Y0)),
    ("uint64 labels", lambda: nc_metrics(H0, Y0.astype(np.uint64))),
    ("features 1e155", lambda: nc_metrics(H0 * 1e155, Y0, W0)),
    ("features 1e-200", lambda: nc_metrics(H0 * 1e-200, Y0, W0)),
    ("features max float", lambda: nc_metrics(np.clip(H0, -1, 1) * 1.7e308, Y0, W0, B0)),
    ("features subnormal", lambda: nc_metrics(H0 * 5e-324, Y0, W0, B0)),
    ("requires grad", lambda: ClassStats(4).update(torch.tensor(H0, requires_grad=True) * 2, Y0).compute()),
    ("deep weights not list", lambda: deep_head_metrics(H0, Y0, W0)),
    ("deep overflowing product", lambda: deep_head_metrics(H0, Y0, [np.eye(D0) * 1e300] * 3 + [W0])),
    ("deep target list wrong length", lambda: deep_head_metrics(H0, Y0, [W0], target=["etf", "of"])),
    ("bias 2-D", lambda: nc_metrics(H0, Y0, W0, np.ones((2, 2)))),
    ("cdnv negative variance", lambda: cdnv(np.eye(3), [-1, 1, 1])),
    ("load_dump(None)", lambda: load_dump(None)),
]


@pytest.mark.parametrize("name, call", HAND, ids=[h[0] for h in HAND])
def test_hand_picked_api_inputs(name, call):
    api(call, name)
    _no_problems()


def test_requires_grad_is_detached_and_cheap():
    x = torch.tensor(H0, requires_grad=True)
    s = ClassStats(4)
    for _ in range(3):
        s.update(x * 2, Y0)  # the README's streaming example on model outputs
    assert not s.means.requires_grad and s.scatter.grad_fn is None
    assert s.compute()["nc1"] == pytest.approx(nc_metrics(H0, Y0)["nc1"], rel=1e-9)


# ------------------------------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    np.savez(d / "good.npz", H=H0, y=Y0, W=W0, b=B0)
    good = (d / "good.npz").read_bytes()
    for cut in (10, 100, len(good) // 2, len(good) - 5):
        (d / f"trunc{cut}.npz").write_bytes(good[:cut])
    (d / "random.pt").write_bytes(RNG.bytes(500))
    (d / "random.npz").write_bytes(RNG.bytes(500))
    (d / "empty.pt").write_bytes(b"")
    (d / "empty.npz").write_bytes(b"")
    torch.save(torch.nn.Linear(2, 2).state_dict(), d / "state_dict.pt")
    torch.save(torch.nn.Linear(2, 2), d / "module.pt")
    torch.save([1, 2], d / "list.pt")
    torch.save({"H": torch.tensor(H0).to_sparse(), "y": torch.tensor(Y0)}, d / "sparse.pt")
    torch.save({"H": torch.tensor(H0), "y": torch.tensor(Y0), "weights": []}, d / "noweights.pt")
    torch.save({1: 2, "H": torch.tensor(H0), "y": torch.tensor(Y0), "W": "x"}, d / "mixedkeys.pt")
    np.savez(d / "huge_k.npz", H=H0, y=Y0 * 10**9)
    np.savez(d / "nan.npz", H=H0 * np.nan, y=Y0)
    np.savez(d / "scaled.npz", H=H0 * 1e155, y=Y0, W=W0)
    np.savez(d / "tiny.npz", H=H0 * 1e-200, y=Y0, W1=np.eye(D0), W2=W0)
    np.savez(d / "one_class.npz", H=H0, y=Y0 * 0)
    np.savez(d / "bad_setting.npz", H=H0, y=Y0, W=W0, lambda_w=np.array(["x"]), lambda_h=1e-3)
    np.savez(d / "gap.npz", H=H0, y=Y0, W1=np.eye(D0), W3=W0)
    (d / "folder").mkdir()
    (d / "run_wrong_kind").mkdir()
    (d / "run_wrong_kind" / "config.json").write_text('{"kind": "simulate", "config": {}}')
    (d / "run_wrong_kind" / "weights.pt").write_bytes(b"x")
    return d


BAD_FILES = ["trunc10.npz", "trunc100.npz", "random.pt", "random.npz", "empty.pt", "empty.npz", "state_dict.pt",
             "module.pt", "list.pt", "sparse.pt", "noweights.pt", "mixedkeys.pt", "huge_k.npz", "nan.npz",
             "one_class.npz", "bad_setting.npz", "gap.npz", "folder", "run_wrong_kind", "missing.npz"]


@pytest.mark.parametrize("name", BAD_FILES)
def test_cli_bad_files(files, name):
    r = cli([files / name], name)
    assert r is not None and r.exit_code == 2 and name in r.output, r.output if r else PROBLEMS
    _no_problems()


@pytest.mark.parametrize("name", ["scaled.npz", "tiny.npz", "good.npz"])
def test_cli_extreme_but_valid_files(files, name):
    r = cli([files / name, "--json"], name)
    assert r is not None and r.exit_code == 0
    _no_problems()


opt_values = st.sampled_from(["0", "-1", "nan", "inf", "1", "1e-6", "1e-300", "x", "", "3", "1e9", "1,2", "2,,3",
                              "1e-3", "etf", "of", "auto", "theory", "100000000000"])


@settings(max_examples=120, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzz_cli_options(files, data):
    name = data.draw(st.sampled_from(["good.npz", "tiny.npz", "scaled.npz", "trunc100.npz"]))
    args = [files / name]
    for flag in data.draw(st.sets(st.sampled_from(["--tol", "--num-classes", "--target", "--lambda-w", "--lambda-h",
                                                    "--depth", "--global-mean", "--within", "--split", "--export",
                                                    "--loss"]), max_size=4)):
        args += [flag, data.draw(opt_values)]
    if data.draw(st.booleans()):
        args.append("--json")
    cli(args, "options")
    _no_problems()


def test_zz_figures(capsys):
    """Runs last (file order): the figures of this fuzz run."""
    with capsys.disabled():
        print(f"\nfuzz figures: {FIG['inputs']} inputs, {FIG['clean_errors']} clean errors, {FIG['results']} results, "
              f"{FIG['tracebacks']} tracebacks, {FIG['hangs']} hangs")
    assert FIG["tracebacks"] == 0 and FIG["hangs"] == 0
    _no_problems()
