"""``nclab sweep --backend ray``: a 2-worker local Ray cluster writes the same run directories as the local
backend (the same metrics, bit for bit)."""

import json

import pytest
import ray  # noqa: E402  (in the test extra: a missing ray is a failure, not a skip)

from nclab.experiments.sweep import run_sweep

SPEC = {
    "kind": "simulate",
    "name": "ray2",
    "base": {"classes": 3, "per_class": 2, "widths": 4, "lambda_w": 0.01, "lambda_h": 0.01, "init_std": 0.5,
             "optimizer": "sgd", "steps": 2000, "snapshot_every": 500},
    "grid": {"depth": [1, 2]},
}


def test_two_worker_local_ray_sweep_matches_local_backend(tmp_path):
    assert not ray.is_initialized()
    res = run_sweep(SPEC, tmp_path / "ray", workers=2, backend="ray", report=False)
    assert not ray.is_initialized()  # the sweep started its local Ray and shut it down
    assert res.ok and [e["status"] for e in res.runs] == ["complete", "complete"]
    manifest = json.loads((tmp_path / "ray" / "sweep.json").read_text())
    assert manifest["backend"] == "ray" and manifest["workers"] == 2
    local = run_sweep(SPEC, tmp_path / "local", workers=2, backend="local", report=False)
    assert local.ok
    for name in ("depth=1", "depth=2"):
        a, b = tmp_path / "ray" / name, tmp_path / "local" / name
        assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
        assert (a / "metrics.csv").read_text() == (b / "metrics.csv").read_text()
        assert json.loads((a / "config.json").read_text()) == json.loads((b / "config.json").read_text())
    again = run_sweep(SPEC, tmp_path / "ray", workers=2, backend="ray", report=False)  # all finished: no Ray
    assert all(e["reused"] for e in again.runs)



def test_kill_9_of_a_ray_sweep_stops_its_runs_and_the_rerun_completes_them(tmp_path):
    """A killed driver's runs stop writing (Ray kills the workers of a dead owner, and a run lock refuses a
    second writer anyway), its local Ray's raylet and GCS go, and the same command finishes the sweep with the
    uninterrupted result."""
    import os
    import signal
    import subprocess
    import sys
    import time

    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc (Linux)")
    from test_sweep_kill import GRID, descendants, rows, still_alive, sweep_cmd

    from nclab.experiments.sweep import expand_sweep, load_sweep
    from nclab.ufm import simulate

    path, out = tmp_path / "grid.toml", tmp_path / "D"
    path.write_text(GRID)
    runs = expand_sweep(load_sweep(path))
    cmd = sweep_cmd(path, out) + ["--backend", "ray"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    tree = {}
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if sum(rows(out / r.name / "metrics.csv") >= 3 for r in runs) >= 2:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the sweep ended before runs were in progress"
        tree = descendants(proc.pid)
        tasks = [pid for pid, c in tree.items() if "_run_one" in c]
        assert len(tasks) == 2, tree
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while still_alive(tasks) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not still_alive(tasks), "the runs of a killed driver still run"
        before = {r.name: rows(out / r.name / "metrics.csv") for r in runs}
        time.sleep(1.0)
        assert {r.name: rows(out / r.name / "metrics.csv") for r in runs} == before  # nothing writes any more
        core = {pid: c for pid, c in still_alive(tree).items() if "Agent" not in c}
        assert not core, core  # Ray's agents may linger idle a few minutes (ray-project/ray#52385)
    finally:
        for pid in still_alive(tree):
            os.kill(pid, signal.SIGKILL)
    cut = [r for r in runs if rows(out / r.name / "metrics.csv") < 41]
    assert cut, "nothing was interrupted"

    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0 and "4/4 runs finished" in res.stdout, res.stdout + res.stderr
    for run in cut:  # a resumed run ends exactly as one never interrupted
        simulate(run.config, out=tmp_path / "ref" / run.name)
        ref = tmp_path / "ref" / run.name / "metrics.csv"
        assert (out / run.name / "metrics.csv").read_text() == ref.read_text(), run.name
