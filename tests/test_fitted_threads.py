"""Torch threads fitted to the cores other processes leave idle (nclab.environment.fitted_threads), and the metrics
entry points that use it. The effect on speed is measured by `python benchmarks/metrics.py --loaded`."""

import numpy as np
import pytest
import torch

from nclab import environment as env
from nclab.metrics import ClassStats, SecondPass, nc_metrics


@pytest.fixture
def clock(monkeypatch):
    """A fake clock, process CPU time and /proc/stat: set state["stat"] = (total, idle) jiffies of 2 CPUs."""
    state = {"now": 100.0, "cpu": 10.0, "stat": (10_000, 5_000), "reads": 0}

    def read():
        state["reads"] += 1
        return state["stat"] + (2,)

    monkeypatch.setattr(env.time, "monotonic", lambda: state["now"])
    monkeypatch.setattr(env.time, "process_time", lambda: state["cpu"])
    monkeypatch.setattr(env, "_read_stat", read)
    monkeypatch.setattr(env, "_LAST_STAT", None)
    monkeypatch.setattr(env, "usable_cores", lambda: 2)
    monkeypatch.setattr(env.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(env.os, "getloadavg", lambda: (1.7, 0.0, 0.0))
    return state


def test_others_idle_cores_leave_out_this_process(clock):
    assert env.others_idle_cores() == 1  # first call: the load average (2 - 1.7 + 0.5 -> 0.8 -> at least 1)
    # one second later: both cores were busy (200 jiffies, none idle), 2 s of them this process's: 2 idle
    clock.update(now=101.0, cpu=12.0, stat=(10_200, 5_000))
    assert env.others_idle_cores() == 2
    reads = clock["reads"]
    clock.update(now=101.3, cpu=12.3)
    assert env.others_idle_cores() == 2 and clock["reads"] == reads  # within 0.5 s: the value found last
    # the next second: both busy again, only 1 s of it ours -> another process holds a core
    clock.update(now=102.0, cpu=13.0, stat=(10_400, 5_000))
    assert env.others_idle_cores() == 1
    # half a core idle, this process idle: 1.5 busy elsewhere -> 2 - 1.5 + 0.5 = 1
    clock.update(now=103.0, cpu=13.0, stat=(10_600, 5_050))
    assert env.others_idle_cores() == 1
    clock.update(now=104.0, cpu=13.0, stat=(10_800, 5_250))  # all idle
    assert env.others_idle_cores() == 2


def test_others_idle_cores_without_proc_stat(clock, monkeypatch):
    monkeypatch.setattr(env, "_read_stat", lambda: None)
    monkeypatch.setattr(env.os, "getloadavg", lambda: (0.2, 0.0, 0.0))
    assert env.others_idle_cores() == 2


def test_fitted_threads_cuts_and_restores(monkeypatch):
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(env, "others_idle_cores", lambda: 1)
        with env.fitted_threads():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), env.fitted_threads():
            raise RuntimeError("inside")
        assert torch.get_num_threads() == 2  # restored on an exception too
        monkeypatch.setattr(env, "others_idle_cores", lambda: 8)
        with env.fitted_threads():
            assert torch.get_num_threads() == 2  # never raised above the caller's setting

        def not_called():
            raise AssertionError("one thread: nothing to measure")

        torch.set_num_threads(1)
        monkeypatch.setattr(env, "others_idle_cores", not_called)
        with env.fitted_threads():
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(old)


def test_metrics_entry_points_run_with_the_fitted_threads(monkeypatch):
    """Every public pass (ClassStats.update, SecondPass.update, compute, nc_metrics) runs its products with the
    idle cores' threads, and the values do not depend on the thread count."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 600)
    H = torch.from_numpy(rng.standard_normal((4, 32))[y] + 0.3 * rng.standard_normal((600, 32)))
    W = torch.from_numpy(rng.standard_normal((4, 32)))
    seen = []
    real_mm = torch.mm

    def spy(*args, **kw):
        seen.append(torch.get_num_threads())
        return real_mm(*args, **kw)

    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(env, "others_idle_cores", lambda: 2)
        ref = nc_metrics(H, y, W)
        monkeypatch.setattr(env, "others_idle_cores", lambda: 1)
        monkeypatch.setattr(torch, "mm", spy)
        got = nc_metrics(H, y, W)
        stats = ClassStats(4).update(H, torch.from_numpy(y))
        second = SecondPass(stats, W).update(H, torch.from_numpy(y))
        streamed = stats.compute(W, second=second)
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(old)
    for k, v in ref.values.items():
        assert got[k] == pytest.approx(v, rel=1e-12, abs=1e-15, nan_ok=True), k
        assert streamed[k] == pytest.approx(v, rel=1e-9, abs=1e-12, nan_ok=True), k


def test_trainers_pin_their_threads(monkeypatch):
    """Inside a trainer's torch_threads the metrics keep the trainer's threads (rows independent of the load)."""
    from nclab.ufm.trainer import torch_threads

    old = torch.get_num_threads()
    monkeypatch.setattr(env, "others_idle_cores", lambda: 1)
    try:
        with torch_threads(2):
            with env.fitted_threads():
                assert torch.get_num_threads() == 2
        torch.set_num_threads(2)
        with env.fitted_threads():
            assert torch.get_num_threads() == 1  # outside a trainer: fitted
    finally:
        torch.set_num_threads(old)


def test_proc_stat_counts_only_the_cpus_this_process_may_use(monkeypatch):
    """On a shared node, other jobs' work on other cores is not this process's load: /proc/stat's per-CPU lines
    are summed over the affinity mask (here CPU 1 of 0-2: its 200 busy jiffies of 300, 1 core)."""
    import io

    text = ("cpu  900 0 0 600 0 0 0 0 0 0\n"
            "cpu0 300 0 0 0 0 0 0 0 0 0\ncpu1 200 0 0 100 0 0 0 0 0 0\ncpu2 400 0 0 500 0 0 0 0 0 0\n"
            "intr 1 2 3\n")
    monkeypatch.setattr(env, "open", lambda *a, **k: io.StringIO(text), raising=False)
    monkeypatch.setattr(env.os, "sched_getaffinity", lambda pid: {1})
    assert env._read_stat() == (300, 100, 1)
    monkeypatch.setattr(env.os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert env._read_stat() == (1500, 600, 3)
    monkeypatch.setattr(env, "open", lambda *a, **k: io.StringIO("intr 1\n"), raising=False)
    assert env._read_stat() is None
