"""Review probes of the fitted thread policy (nclab.environment.fitted_threads, others_idle_cores, pinned_threads):
nesting, exceptions and thread changes inside, concurrent Python threads, /proc/stat edge cases (counters going
backwards, own CPU time above the wall time, affinity changes, missing CPU lines, short lines, NCLAB_CORES),
values at 1 vs 2 threads against a float64 numpy reference, a trainer's rows, and `nclab measure`.

torch's thread count is per OS thread once a thread has used torch (OpenMP's nthreads ICV): the probes check what
each thread sees, not a process-wide number."""

import csv
import io
import json
import threading

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from nclab import environment as env
from nclab.metrics import ClassStats, SecondPass, deep_head_metrics, nc_metrics


@pytest.fixture
def two_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def _data(N=600, D=16, K=4, seed=0):
    """Balanced labels (so the weighted and unweighted global means agree), well-separated means."""
    rng = np.random.default_rng(seed)
    y = np.arange(N) % K
    H = 3 * rng.standard_normal((K, D))[y] + rng.standard_normal((N, D))
    W = rng.standard_normal((K, D))
    return H, y, W


def _nc1_reference(H, y, K):
    """tr(Sigma_W Sigma_B^+)/K in float64 numpy, straight from the definition (metrics.md)."""
    mu = np.stack([H[y == k].mean(0) for k in range(K)])
    mu_g = H.mean(0)
    R = H - mu[y]
    sigma_w = R.T @ R / len(H)
    sigma_b = (mu - mu_g).T @ (mu - mu_g) / K
    return float(np.trace(sigma_w @ np.linalg.pinv(sigma_b, rcond=1e-10, hermitian=True)) / K)


# (1) nesting, exceptions, thread changes inside, concurrent threads


def test_nested_calls_exception_and_a_thread_change_inside_restore_the_callers_threads(monkeypatch, two_threads):
    calls = []
    monkeypatch.setattr(env, "others_idle_cores", lambda: calls.append(1) or 1)
    H, y, W = _data()
    seen = []
    real_mm = torch.mm

    def spy(*a, **k):
        seen.append(torch.get_num_threads())
        return real_mm(*a, **k)

    monkeypatch.setattr(torch, "mm", spy)
    nc_metrics(H, y, W)  # nc_metrics -> ClassStats.update, SecondPass.update, compute_metrics: nested fitted calls
    assert seen and set(seen) == {1} and torch.get_num_threads() == 2
    assert len(calls) == 1  # the inner calls see one thread already: nothing more to measure
    with pytest.raises(ValueError):
        nc_metrics(H, y[:-1], W)  # refused inside the fitted section
    assert torch.get_num_threads() == 2

    def raising(*a, **k):
        raise RuntimeError("inside a product")

    monkeypatch.setattr(torch, "mm", raising)
    with pytest.raises(RuntimeError, match="inside a product"):
        nc_metrics(H, y, W)
    assert torch.get_num_threads() == 2

    def changes_threads(*a, **k):  # a callback that sets the threads mid-call
        torch.set_num_threads(3)
        return real_mm(*a, **k)

    monkeypatch.setattr(torch, "mm", changes_threads)
    nc_metrics(H, y, W)
    assert torch.get_num_threads() == 2  # the caller's setting, not the callback's or the cut

    def gen():  # a generator suspended inside a fitted section does not leak the cut to its consumer
        with env.fitted_threads():
            yield torch.get_num_threads()

    g = gen()
    assert next(g) == 1
    g.close()
    assert torch.get_num_threads() == 2


def test_two_python_threads_computing_metrics_at_once(monkeypatch, two_threads):
    """Each thread computes with the cut inside and finds its own setting after; results equal a lone call."""
    monkeypatch.setattr(env, "others_idle_cores", lambda: 1)
    H, y, W = _data(N=2000)
    ref = nc_metrics(H, y, W).values
    barrier = threading.Barrier(2)
    out, errors = {}, []

    def work(name, threads):
        try:
            torch.get_num_threads()  # torch's first use in a thread sets it to the process's last set_num_threads
            torch.set_num_threads(threads)
            barrier.wait()
            vals = [nc_metrics(H, y, W).values for _ in range(5)]
            out[name] = (vals, torch.get_num_threads())
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    ts = [threading.Thread(target=work, args=(f"t{i}", t)) for i, t in enumerate((2, 1))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    assert out["t0"][1] == 2 and out["t1"][1] == 1 and torch.get_num_threads() == 2
    for vals, _ in out.values():
        for v in vals:
            for k, x in ref.items():
                assert v[k] == pytest.approx(x, rel=1e-12, abs=1e-15, nan_ok=True), k


# (2) others_idle_cores on edge cases of /proc/stat


@pytest.fixture
def clock(monkeypatch):
    """Fake clock, process CPU time, load average and /proc/stat text (per-CPU lines: user nice system idle ...)."""
    state = {"now": 100.0, "cpu": 0.0, "text": "", "affinity": {0, 1}}
    monkeypatch.setattr(env.time, "monotonic", lambda: state["now"])
    monkeypatch.setattr(env.time, "process_time", lambda: state["cpu"])
    monkeypatch.setattr(env, "open", lambda *a, **k: io.StringIO(state["text"]), raising=False)
    monkeypatch.setattr(env.os, "sched_getaffinity", lambda pid: set(state["affinity"]))
    monkeypatch.setattr(env.os, "getloadavg", lambda: (1.2, 0.0, 0.0))  # load average: 1 idle core of 2
    monkeypatch.setattr(env, "_LAST_STAT", None)
    monkeypatch.delenv("NCLAB_CORES", raising=False)
    return state


def _stat(*cpus):
    """/proc/stat text: cpus = (cpu index, busy jiffies, idle jiffies) per line."""
    lines = [f"cpu{i} {busy} 0 0 {idle} 0 0 0 0 0 0" for i, busy, idle in cpus]
    return "cpu  0 0 0 0 0 0 0 0 0 0\n" + "\n".join(lines) + "\nintr 0\n"


def test_counters_going_backwards_and_own_cpu_above_the_wall_time(clock):
    clock["text"] = _stat((0, 1000, 1000), (1, 1000, 1000))
    assert env.others_idle_cores() == 1  # first call: the load average
    clock.update(now=101.0, text=_stat((0, 500, 900), (1, 500, 900)))  # counters reset (wrap): no division
    assert env.others_idle_cores() == 1  # the load average again
    clock.update(now=102.0, text=_stat((0, 500, 1000), (1, 500, 1000)))  # all idle since the reset
    assert env.others_idle_cores() == 2
    # idle counted down while the total grew (iowait can go backwards): not more than all cores busy
    clock.update(now=103.0, text=_stat((0, 700, 900), (1, 700, 900)))
    assert env.others_idle_cores() == 1
    # this process used 4 CPU seconds in 1 s of wall time (threads; accounting skew): never above the cores
    clock.update(now=104.0, cpu=4.0, text=_stat((0, 800, 900), (1, 800, 900)))
    assert env.others_idle_cores() == 2
    clock.update(now=105.0, text=_stat((0, 800, 900), (1, 800, 900)))  # no jiffies passed: no division
    assert env.others_idle_cores() == 1


def test_missing_cpu_lines_and_short_lines(clock):
    clock["text"] = _stat((0, 1000, 1000))  # CPU 1 offline: no line; counted over CPU 0 alone
    assert env._read_stat() == (2000, 1000, 1)
    clock["text"] = "cpu  1 2 3 4\ncpu0 1 2 3 4\ncpu1 1 2 3 4\n"  # 4 fields (very old kernels): unreadable
    assert env._read_stat() is None
    assert env.others_idle_cores() == 1  # the load average, no exception
    clock["text"] = "cpu  1 2 3 4 5 6 7\ncpu0 1 2 3 4 5 6 7\ncpu1 1 2 3 4 5 6 7\nintr 0\n"  # 7 fields (2.6.11)
    assert env._read_stat() == (56, 18, 2)


def test_an_affinity_change_to_other_cpus_of_the_same_count_is_not_a_delta(clock):
    """CPUs {0, 1} then {0, 2}: the sums come from different CPUs, so their difference is no load. Here CPU 0 was
    busy with another process the whole second and CPU 2 idle: 1 idle core, not 2."""
    clock["text"] = _stat((0, 5000, 2500), (1, 5000, 0), (2, 5000, 5000))
    env.others_idle_cores()
    clock.update(now=101.0, affinity={0, 2}, text=_stat((0, 5100, 2500), (1, 5100, 0), (2, 5000, 5100)))
    got = env.others_idle_cores()
    clock.update(now=102.0, text=_stat((0, 5200, 2500), (1, 5200, 0), (2, 5000, 5200)))
    assert got == 1 and env.others_idle_cores() == 1  # measured on CPUs 0 and 2 from now on


def test_nclab_cores_caps_the_threads_not_the_cores_others_use(clock, monkeypatch):
    """4 CPUs, another job busy on 2 of them, NCLAB_CORES=2: 2 cores are idle and 2 may be used -> 2 (not
    2 - 2 busy elsewhere = 1)."""
    monkeypatch.setenv("NCLAB_CORES", "2")
    clock["affinity"] = {0, 1, 2, 3}
    clock["text"] = _stat((0, 0, 1000), (1, 0, 1000), (2, 0, 1000), (3, 0, 1000))
    env.others_idle_cores()
    clock.update(now=101.0, text=_stat((0, 100, 1000), (1, 100, 1000), (2, 0, 1100), (3, 0, 1100)))
    assert env.others_idle_cores() == 2
    clock.update(now=102.0, text=_stat((0, 200, 1000), (1, 200, 1000), (2, 100, 1100), (3, 0, 1200)))
    assert env.others_idle_cores() == 1  # 3 busy elsewhere: 1 idle
    monkeypatch.setenv("NCLAB_CORES", "1")
    clock.update(now=103.0, text=_stat((0, 200, 1100), (1, 200, 1100), (2, 100, 1200), (3, 0, 1300)))
    assert env.others_idle_cores() == 1  # all idle, but capped


def test_a_trainer_pinning_in_one_thread_does_not_pin_another_threads_metrics(monkeypatch, two_threads):
    """pinned_threads is about the trainer's own metrics: a direct call in another Python thread is fitted."""
    monkeypatch.setattr(env, "others_idle_cores", lambda: 1)
    inside, release, seen = threading.Event(), threading.Event(), []

    def trainer():
        with env.pinned_threads():
            inside.set()
            release.wait(10)

    def direct():
        torch.set_num_threads(2)
        with env.fitted_threads():
            seen.append(torch.get_num_threads())

    t = threading.Thread(target=trainer)
    t.start()
    inside.wait(10)
    try:
        d = threading.Thread(target=direct)
        d.start()
        d.join()
    finally:
        release.set()
        t.join()
    assert seen == [1]
    with env.fitted_threads():
        assert torch.get_num_threads() == 1  # the trainer's thread has left: not pinned here either


# (3) values at 1 vs 2 threads


def test_values_with_the_cut_agree_with_two_threads_and_a_numpy_reference(monkeypatch, two_threads):
    H, y, W = _data(N=10_000, D=64, K=5, seed=1)
    W1 = np.random.default_rng(2).standard_normal((64, 64))
    got = {}
    for idle in (1, 2):
        monkeypatch.setattr(env, "others_idle_cores", lambda idle=idle: idle)
        st = ClassStats(5)
        for i in range(0, len(H), 2500):
            st.update(H[i:i + 2500], y[i:i + 2500])
        second = SecondPass(st, W)
        for i in range(0, len(H), 2500):
            second.update(H[i:i + 2500], y[i:i + 2500])
        deep = deep_head_metrics(H, y, [W1, W])
        got[idle] = (nc_metrics(H, y, W).values, st.compute(W, second=second).values,
                     [layer.values for layer in deep.layers])
        assert torch.get_num_threads() == 2
    ref = _nc1_reference(H, y, 5)
    for idle in (1, 2):
        assert got[idle][0]["nc1"] == pytest.approx(ref, rel=1e-12)
        assert got[idle][1]["nc1"] == pytest.approx(ref, rel=1e-12)
        assert got[idle][2][0]["nc1"] == pytest.approx(ref, rel=1e-12)
    for one, two in zip(got[1][:2] + tuple(got[1][2]), got[2][:2] + tuple(got[2][2])):
        for k, v in two.items():
            assert one[k] == pytest.approx(v, rel=1e-12, abs=1e-15, nan_ok=True), k


# (5) a trainer's rows do not depend on the load


def test_a_runs_metrics_csv_does_not_depend_on_the_idle_cores(monkeypatch, tmp_path, two_threads):
    import nclab.metrics.stats as stats_module
    from nclab.ufm import make_config, simulate

    seen = []
    real_check = stats_module.check_features

    def spy(*a, **k):  # called inside ClassStats.update's fitted section, at every snapshot
        seen.append(torch.get_num_threads())
        return real_check(*a, **k)

    monkeypatch.setattr(stats_module, "check_features", spy)
    rows = {}
    for idle in (1, 2):
        monkeypatch.setattr(env, "others_idle_cores", lambda idle=idle: idle)
        cfg = make_config(classes=3, per_class=5, depth=2, widths=6, steps=200, snapshot_every=20, init_std=0.3,
                          lambda_w=1e-2, lambda_h=1e-2, threads=2)
        simulate(cfg, out=tmp_path / f"idle{idle}", _trainer=True)  # the Trainer: its Snapshotter uses ClassStats
        with open(tmp_path / f"idle{idle}" / "metrics.csv", newline="") as f:
            table = list(csv.reader(f))
        drop = [i for i, name in enumerate(table[0]) if "second" in name or name in ("time", "wall")]
        rows[idle] = [[c for i, c in enumerate(r) if i not in drop] for r in table]
        assert torch.get_num_threads() == 2
    assert seen and set(seen) == {2}  # the trainer's 2 threads at every snapshot
    assert len(rows[1]) == 12 and rows[1] == rows[2]


# (6) nclab measure


def test_measure_cli_on_an_npz_with_the_cut(monkeypatch, tmp_path, two_threads):
    from nclab.cli.measure import measure_cmd

    H, y, W = _data(N=300, D=8, K=3, seed=3)
    np.savez(tmp_path / "f.npz", H=H, y=y, W=W)
    outs = {}
    for idle in (1, 2):
        monkeypatch.setattr(env, "others_idle_cores", lambda idle=idle: idle)
        r = CliRunner().invoke(measure_cmd, [str(tmp_path / "f.npz")])
        j = CliRunner().invoke(measure_cmd, [str(tmp_path / "f.npz"), "--json"])
        assert r.exit_code == 0 and j.exit_code == 0, r.output + j.output
        outs[idle] = (r.output, json.loads(j.output))
        assert torch.get_num_threads() == 2
    assert outs[1][0] == outs[2][0]
    assert outs[1][1]["values"]["nc1"] == pytest.approx(_nc1_reference(H, y, 3), rel=1e-12)
    bad = CliRunner().invoke(measure_cmd, [str(tmp_path / "missing.npz")])
    assert bad.exit_code == 2 and "error:" in bad.output
