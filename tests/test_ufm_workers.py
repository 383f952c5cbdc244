"""simulate_batch across worker processes (nclab.ufm.workers): the same folders and results as one process,
errors and Ctrl-C reaching the caller, the automatic choice of workers."""

import csv
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from click.testing import CliRunner

from nclab.cli import cli
from nclab.environment import usable_cores
from nclab.results import RunLockedError, RunStore
from nclab.ufm import make_config, workers
from nclab.ufm.batched import simulate_batch

LAMS = (5e-4, 1e-3, 2e-3)


def tiny(seed, steps=300, **kw):
    lam = LAMS[seed % 3]
    return make_config(counts=[6, 5, 4], depth=2, widths=8, lambda_w=lam, lambda_h=lam, steps=steps,
                       snapshot_every=50, seed=seed, **kw)


def rows(run_dir):
    with open(pathlib.Path(run_dir) / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_two_workers_write_the_folders_and_results_of_one_process(tmp_path):
    cfgs = [tiny(s) for s in range(8)]
    one = simulate_batch(cfgs, [tmp_path / f"one/r{i}" for i in range(8)], workers=1)
    two = simulate_batch(cfgs, [tmp_path / f"two/r{i}" for i in range(8)], workers=2)
    assert [pathlib.Path(r.run_dir).name for r in two] == [f"r{i}" for i in range(8)]  # input order
    assert [r.extra.get("workers") for r in one + two] == [None] * 8 + [2] * 8  # how they were trained
    for a, b in zip(one, two):
        assert b.status == a.status == "complete" and b.step == a.step == 300
        assert sorted(os.listdir(b.run_dir)) == sorted(os.listdir(a.run_dir))
        ra, rb = rows(a.run_dir), rows(b.run_dir)
        assert [r["step"] for r in rb] == [r["step"] for r in ra] and len(ra) == 7
        for x, y in zip(ra, rb):  # every metric of every row, to round-off
            for k in x:
                if x[k] not in ("", "nan") and k != "seconds":
                    assert float(y[k]) == pytest.approx(float(x[k]), rel=1e-10, abs=1e-14), k
        for wa, wb in zip(a.weights, b.weights):
            np.testing.assert_allclose(wb, wa, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(b.H, a.H, rtol=1e-10, atol=1e-14)
        assert json.loads((pathlib.Path(b.run_dir) / "config.json").read_text())["config"]["seed"] == a.config.seed


def test_a_workers_error_is_raised_in_the_caller(tmp_path):
    cfgs = [tiny(s, steps=100) for s in range(8)]
    outs = [tmp_path / f"r{i}" for i in range(8)]
    held = RunStore(outs[6])
    held.lock()  # this process holds run 6's folder
    try:
        with pytest.raises(RunLockedError, match=r"r6 is in use by another nclab process"):
            simulate_batch(cfgs, outs, workers=2)
    finally:
        held.unlock()
    assert json.loads((outs[0] / "summary.json").read_text())["status"] == "complete"  # the other share ran


def test_ctrl_c_stops_every_worker_at_a_checkpoint(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        from nclab.ufm import make_config
        from nclab.ufm.batched import simulate_batch
        cfgs = [make_config(counts=[6, 5, 4], depth=2, widths=8, steps=10**8, snapshot_every=50, seed=s,
                            checkpoint_every=50) for s in range(8)]
        try:
            simulate_batch(cfgs, [r"{tmp_path}/r%d" % i for i in range(8)], workers=2)
        except KeyboardInterrupt:
            sys.exit(130)
    """)  # no __main__ guard: workers are subprocesses, nothing re-imports this script
    p = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ, TMPDIR=str(tmp_path)))
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"r{i}/checkpoint.pt").is_file() for i in (0, 7)):  # both workers' runs started
        assert p.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=60) == 130
    for i in range(8):
        summary = json.loads((tmp_path / f"r{i}/summary.json").read_text())
        assert summary["status"] == "interrupted" and summary["step"] > 0
        assert int(rows(tmp_path / f"r{i}")[-1]["step"]) == summary["step"]  # checkpoint = last recorded row
    left = subprocess.run(["pgrep", "-f", f"nclab._worker {tmp_path}"], capture_output=True, text=True)
    assert left.stdout.strip() == ""  # the job files lie under TMPDIR = tmp_path: this matches only its workers
    assert not list(tmp_path.glob("nclab-workers-*"))  # the temporary folder is gone


def test_plan_chooses_workers_by_work_cores_and_callback(monkeypatch):
    monkeypatch.setattr("nclab.environment.idle_cores", lambda sample=0.0: 2)
    small = [tiny(s) for s in range(8)]
    assert workers.estimated_seconds(small) < workers.WORKER_MIN_SECONDS
    assert workers.plan(small, 0) == [list(range(8))]  # seconds of work: one process
    big = [tiny(s, steps=10**6) for s in range(9)] + [tiny(9, optimizer="lbfgs")]
    assert workers.estimated_seconds(big[:9]) == pytest.approx(9 * 10**6 * (3e-9 * (8 * 15 + 64 + 24 + 3) + 5e-6))
    plans = workers.plan(big, 0)
    assert len(plans) == 2 and sorted(sum(plans, [])) == list(range(10))
    assert sorted(len(p) for p in plans) == [5, 5]  # shares 4 + 5 runs, the L-BFGS run on the smaller one
    assert workers.plan(big, 0, callback=print) == [list(range(10))]
    assert workers.plan(small[:7], 2) == [list(range(7))]  # fewer than 2 x MIN_SHARE runs: one process
    # batches of different shapes (a preset's depths) are units of their own, dealt by estimated time: the
    # longest (M = 4, then 3) to different workers, then each next one to the worker with the least so far
    depths = [make_config(counts=[6, 5, 4], depth=M, widths=8, steps=10**6, seed=M) for M in (1, 2, 3, 4)]
    est = [workers.estimated_seconds([c]) for c in depths]
    assert est == sorted(est)
    assert workers.plan(depths, 2) == [[0, 3], [1, 2]]
    with pytest.raises(ValueError, match="a callback needs workers=1"):
        workers.plan(small, 2, callback=print)
    with pytest.raises(ValueError, match="workers must be >= 0"):
        workers.plan(small, -1)


def test_idle_cores_sampled_from_proc_stat(monkeypatch):
    """Over the sample, 2 cores: 150 of 400 jiffies idle (+ 50 iowait) -> 1 core busy -> 1 idle of 2."""
    import io

    from nclab import environment

    def two_cpus(a, b):  # /proc/stat with the total line and the per-CPU lines (the ones read)
        return f"cpu  0 0 0 0 0 0 0 0 0 0\ncpu0 {a}\ncpu1 {b}\nintr 0\n"

    lines = iter([two_cpus("50 0 50 500 0 0 0 0 0 0", "50 0 50 500 0 0 0 0 0 0"),
                  two_cpus("125 0 75 575 25 0 0 0 0 0", "125 0 75 575 25 0 0 0 0 0")])
    monkeypatch.setattr(environment, "open", lambda path: io.StringIO(next(lines)), raising=False)
    monkeypatch.setattr(environment.time, "sleep", lambda s: None)
    monkeypatch.setattr(environment.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(environment, "usable_cores", lambda: 2)
    busy, cores = environment._busy_cores(0.1)
    assert busy == pytest.approx(1.0) and cores == 2
    lines = iter([two_cpus("100 0 100 1000 0 0 0 0 0 0", "0 0 0 0 0 0 0 0 0 0"),
                  two_cpus("100 0 100 1400 0 0 0 0 0 0", "0 0 0 400 0 0 0 0 0 0")])
    assert environment.idle_cores(sample=0.1) == 2  # all idle, whatever the load average says
    monkeypatch.setattr(environment, "open", lambda path: (_ for _ in ()).throw(OSError("no /proc")), raising=False)
    monkeypatch.setattr(environment.os, "getloadavg", lambda: (1.2, 0, 0))
    assert environment.idle_cores(sample=0.1) == 1  # unreadable: the load average (2 - 1.2 + 0.5 -> 1)


def test_nclab_cores_caps_the_usable_cores(monkeypatch):
    monkeypatch.setenv("NCLAB_CORES", "1")
    assert usable_cores() == 1
    monkeypatch.setenv("NCLAB_CORES", "zero")
    with pytest.raises(ValueError, match="NCLAB_CORES must be a positive integer, got 'zero'"):
        usable_cores()


def test_cli_seeds_with_workers(tmp_path):
    out = tmp_path / "seeds"
    args = ["simulate", "--counts", "6,5,4", "-M", "2", "--width", "8", "--steps", "200", "--no-figures"]
    r = CliRunner().invoke(cli, args + ["--seeds", "0-7", "--workers", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    for s in range(8):
        assert json.loads((out / f"seed-{s}/summary.json").read_text())["step"] == 200
    r = CliRunner().invoke(cli, args + ["--workers", "2", "--out", str(tmp_path / "one")])
    assert r.exit_code == 2 and "--workers shares the runs of --seeds" in r.output


def test_a_worker_interrupted_alone_is_an_error_and_bad_predictions_are_refused(tmp_path):
    """A worker stopped by a SIGINT its caller did not get: the caller raises (no None results), naming the
    runs; the other worker's runs finish."""
    import threading

    cfgs = [tiny(s, steps=3000, checkpoint_every=50) for s in range(8)]
    outs = [tmp_path / f"r{i}" for i in range(8)]

    def interrupt_one_worker():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if (tmp_path / "r0/checkpoint.pt").is_file():  # the first worker is training
                kids = subprocess.run(["pgrep", "-f", f"nclab._worker {tmp_path}/.*/job-0"],
                                      capture_output=True, text=True).stdout.split()
                if kids:
                    os.kill(int(kids[0]), signal.SIGINT)
                    return
            time.sleep(0.05)

    threading.Thread(target=interrupt_one_worker, daemon=True).start()
    env = dict(os.environ)
    os.environ["TMPDIR"] = str(tmp_path)
    try:
        import tempfile

        tempfile.tempdir = None  # read TMPDIR again
        with pytest.raises(RuntimeError, match=r"a worker process was interrupted \(runs .*r0, .*r3\)"):
            simulate_batch(cfgs, outs, workers=2)
    finally:
        os.environ.clear()
        os.environ.update(env)
        tempfile.tempdir = None
    assert json.loads((outs[0] / "summary.json").read_text())["status"] == "interrupted"
    assert json.loads((outs[7] / "summary.json").read_text())["status"] == "complete"
    with pytest.raises(ValueError, match="2 predictions for 8 configs"):
        simulate_batch(cfgs, workers=2, predictions=[None, None])


def test_the_automatic_rule_counts_only_the_steps_a_resume_has_left(tmp_path, monkeypatch):
    """Finished folders cost nothing and interrupted ones their remaining steps (summary.json's step)."""
    monkeypatch.setattr("nclab.environment.idle_cores", lambda sample=0.0: 2)
    big = [tiny(s, steps=300_000) for s in range(8)]
    assert workers.estimated_seconds(big) >= workers.WORKER_MIN_SECONDS
    outs = [tmp_path / f"r{i}" for i in range(8)]
    for i, out in enumerate(outs[:7]):  # 7 finished or nearly finished, 1 fresh
        out.mkdir()
        status = "complete" if i < 4 else "interrupted"
        (out / "summary.json").write_text(json.dumps({"status": status, "step": 300_000 if i < 4 else 299_000}))
    done = workers.steps_done(outs, resume=True)
    assert done == [10**18] * 4 + [299_000] * 3 + [0]
    left = [0] * 4 + [1000] * 3 + [300_000]
    assert workers.estimated_seconds(big, left) == pytest.approx(workers.estimated_seconds(big[7:]) * 303_000 / 300_000)
    assert workers.plan(big, 0, done=done) == [list(range(8))]  # ~one run's work left: one process
    assert len(workers.plan(big, 0)) == 2 and workers.steps_done(outs, resume=False) is None
    (outs[0] / "summary.json").write_text("{broken")
    assert workers.steps_done(outs, resume=True)[0] == 0  # unreadable: counted as not started


def test_imbalanced_ce_runs_come_back_from_workers():
    """The imbalanced-CE prediction inside each result pickles (its class is made lazily; a worker sent back
    "RuntimeError: NoneType: None" before, found by running the CE phase benchmark)."""
    import pickle

    cfgs = [make_config(counts=[6, 5, 2], depth=1, widths=8, lambda_w=1e-3, lambda_h=1e-3, loss="ce", steps=100,
                        snapshot_every=50, seed=s) for s in range(8)]
    one, two = simulate_batch(cfgs, workers=1), simulate_batch(cfgs, workers=2)
    for a, b in zip(one, two):
        assert type(b.prediction._ce).__name__ == "ImbalancedCEPrediction" and b.prediction.ce["certified"]
        assert b.final["objective"] == pytest.approx(a.final["objective"], rel=1e-12, abs=0)
    assert pickle.loads(pickle.dumps(one[0].prediction)).objective == one[0].prediction.objective
