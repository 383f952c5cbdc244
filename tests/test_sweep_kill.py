"""``kill -9`` of ``nclab sweep``: no process of the sweep survives it (workers, resource tracker), nothing
keeps its stdout open, and the same command again gives every run exactly the uninterrupted result."""

import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import pytest

from nclab.experiments.sweep import expand_sweep, load_sweep

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux)")

# 4 runs of ~1 s each (SGD on a tiny UFM), a metrics row every 500 steps, a checkpoint every 5000
GRID = """kind = "simulate"
name = "kill"
[base]
classes = 3
per_class = 2
widths = 4
lambda_w = 0.01
lambda_h = 0.01
init_std = 0.5
optimizer = "sgd"
steps = 20000
snapshot_every = 500
checkpoint_every = 5000
[grid]
depth = [1, 2]
seed = [0, 1]
"""


def processes() -> dict[int, tuple[int, int, str]]:
    """Live (not zombie) processes: pid -> (parent pid, process group, command line)."""
    found = {}
    for d in pathlib.Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # ended meanwhile
            continue
        if fields[0] not in ("Z", "X"):
            found[int(d.name)] = (int(fields[1]), int(fields[2]), cmd[:120])
    return found


def group_pids(pgid: int) -> list[tuple[int, str]]:
    """Live processes of process group ``pgid``: (pid, command line)."""
    return [(pid, cmd) for pid, (_, pg, cmd) in processes().items() if pg == pgid]


def descendants(root: int) -> dict[int, str]:
    """``root`` and every live process below it: pid -> command line."""
    procs, found = processes(), {root}
    grew = True
    while grew:
        below = {pid for pid, (ppid, _, _) in procs.items() if ppid in found} - found
        found |= below
        grew = bool(below)
    return {pid: procs[pid][2] for pid in found if pid in procs}


def still_alive(pids) -> dict[int, str]:
    procs = processes()
    return {pid: procs[pid][2] for pid in pids if pid in procs}


def rows(path: pathlib.Path) -> int:
    try:
        return len(path.read_text().splitlines()) - 1
    except OSError:
        return 0


def sweep_cmd(path, out):
    return [sys.executable, "-m", "nclab", "sweep", str(path), "--out", str(out), "--workers", "2", "--no-report"]


def test_kill_9_of_a_sweep_leaves_no_process_and_the_rerun_gives_the_uninterrupted_result(tmp_path):
    path, out = tmp_path / "grid.toml", tmp_path / "D"
    path.write_text(GRID)
    runs = expand_sweep(load_sweep(path))
    proc = subprocess.Popen(sweep_cmd(path, out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)  # its own process group: what the sweep started is in it
    output, eof = [], threading.Event()

    def read():  # EOF on the pipe: no process holds the sweep's stdout/stderr any more
        output.append(proc.stdout.read())
        eof.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:  # both workers are writing rows
            if sum(rows(out / r.name / "metrics.csv") >= 3 for r in runs) >= 2:
                break
            time.sleep(0.02)
        assert proc.poll() is None, b"".join(output).decode()
        busy = group_pids(proc.pid)
        assert len(busy) >= 3, busy  # the sweep, its 2 workers (and multiprocessing's resource tracker)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 5
        while group_pids(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert group_pids(proc.pid) == [], f"left behind after kill -9: {group_pids(proc.pid)}"
        assert eof.wait(5), "the sweep's stdout is still held open"
    finally:
        for pid, _ in group_pids(proc.pid):  # only if the assertion above failed: don't leak them
            os.kill(pid, signal.SIGKILL)
    unfinished = [r.name for r in runs if rows(out / r.name / "metrics.csv") < 41]
    assert unfinished, "every run finished before the kill; the test proves nothing"

    res = subprocess.run(sweep_cmd(path, out), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "4/4 runs finished" in res.stdout, res.stdout

    from nclab.ufm import simulate

    steps = "\n".join(str(s) for s in range(0, 20001, 500))
    for run in runs:
        simulate(run.config, out=tmp_path / "ref" / run.name)  # the same run, never interrupted
        got = (out / run.name / "metrics.csv").read_text()
        assert [line.split(",")[0] for line in got.splitlines()[1:]] == steps.split("\n"), run.name
        want = (tmp_path / "ref" / run.name / "metrics.csv").read_text()
        diff = [(a, b) for a, b in zip(got.splitlines(), want.splitlines()) if a != b]
        assert got == want, f"{run.name}: {len(diff)} rows differ, first: {diff[:1]}"


@pytest.mark.parametrize("pdeathsig", [True, False])
def test_a_worker_ends_with_its_parent(tmp_path, pdeathsig):
    """Both mechanisms alone end a worker when its parent is killed: Linux's parent-death signal, and the
    watch thread that polls the parent pid (the fallback elsewhere, and for a parent that died early)."""
    worker = ("import os, sys, time\nfrom nclab.experiments.sweep import _die_with_parent\n"
              f"_die_with_parent(os.getppid(), pdeathsig={pdeathsig})\n"
              "print(os.getpid(), flush=True)\ntime.sleep(60)\n")
    parent = ("import subprocess, sys, time\n"
              f"subprocess.Popen([sys.executable, '-c', {worker!r}])\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        pid = int(proc.stdout.readline())
        assert {p for p, _ in group_pids(proc.pid)} == {proc.pid, pid}
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 3
        while group_pids(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert group_pids(proc.pid) == []
    finally:
        for p, _ in group_pids(proc.pid):
            os.kill(p, signal.SIGKILL)
