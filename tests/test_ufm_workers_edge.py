"""Edge cases of simulate_batch(..., workers=N) (nclab.ufm.workers): resumed, overwritten and in-memory runs,
mixed batches with L-BFGS, a worker's error, the CLI and the automatic choice. Each check compares the workers'
results with a one-process run (workers=1) of the same configs, or with the folder's files."""

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
from nclab.ufm import batched, make_config, workers
from nclab.ufm.batched import simulate_batch


def tiny(seed, steps=300, **kw):
    kw.setdefault("depth", 2)
    return make_config(counts=[6, 5, 4], widths=8, lambda_w=1e-3 * (1 + seed % 3), lambda_h=1e-3, steps=steps,
                       snapshot_every=50, checkpoint_every=50, seed=seed, **kw)


def rows(run_dir):
    with open(pathlib.Path(run_dir) / "metrics.csv") as f:
        return list(csv.DictReader(f))


def same_rows(got, want):
    """Metrics rows (dicts of floats or csv strings) equal to round-off, wall-clock columns aside."""
    assert [float(r["step"]) for r in got] == [float(r["step"]) for r in want]
    for x, y in zip(want, got):
        for k in x:
            if k == "seconds" or x[k] in ("", "nan", None):
                continue
            assert float(y[k]) == pytest.approx(float(x[k]), rel=1e-10, abs=1e-14), k


def same_result(got, want):
    assert (got.status, got.step, got.config) == (want.status, want.step, want.config)
    same_rows(got.history, want.history)
    for wa, wb in zip(want.weights, got.weights, strict=True):
        np.testing.assert_allclose(wb, wa, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(got.H, want.H, rtol=1e-10, atol=1e-14)


class Interrupt:
    """callback raising KeyboardInterrupt at run ``index``'s row of ``step`` (a Ctrl-C mid-way through a
    snapshot: the runs before it keep that row, the others checkpoint the one before)."""

    def __init__(self, index, step):
        self.index, self.step = index, step

    def __call__(self, i, row):
        if i == self.index and row["step"] == self.step:
            raise KeyboardInterrupt


def test_resume_and_overwrite_with_two_workers_equal_one_process(tmp_path):
    cfgs = [tiny(s) for s in range(8)]
    ref = simulate_batch(cfgs, [tmp_path / f"ref/r{i}" for i in range(8)], workers=1)
    outs = [tmp_path / f"w/r{i}" for i in range(8)]
    done = [0, 1, 5]  # finished before; the others interrupted at steps 150 (2, 3) and 100 (4, 6, 7)
    simulate_batch([cfgs[i] for i in done], [outs[i] for i in done], workers=1)
    part = [2, 3, 4, 6, 7]
    with pytest.raises(KeyboardInterrupt):
        simulate_batch([cfgs[i] for i in part], [outs[i] for i in part], workers=1, callback=Interrupt(1, 150))
    steps = {i: json.loads((outs[i] / "summary.json").read_text())["step"] for i in range(8)}
    assert steps == {0: 300, 1: 300, 2: 150, 3: 150, 4: 100, 5: 300, 6: 100, 7: 100}
    before = {i: (outs[i] / "metrics.csv").stat().st_mtime_ns for i in done}
    partial = {i: (outs[i] / "metrics.csv").read_text() for i in part}  # with each row's wall-clock seconds
    got = simulate_batch(cfgs, outs, resume=True, workers=2)
    for i in range(8):
        assert pathlib.Path(got[i].run_dir) == outs[i]  # input order
        same_result(got[i], ref[i])
        same_rows(rows(outs[i]), rows(ref[i].run_dir))  # no row twice, none missing
        assert json.loads((outs[i] / "summary.json").read_text())["status"] == "complete"
    assert {i: (outs[i] / "metrics.csv").stat().st_mtime_ns for i in done} == before  # loaded, not re-run
    for i in part:  # continued from the checkpoint: the rows before it are kept as written (seconds too)
        assert (outs[i] / "metrics.csv").read_text().startswith(partial[i])
        assert len(rows(outs[i])) == 7
    # overwrite: the finished folders are trained again from step 0, nothing of the old rows kept
    again = simulate_batch(cfgs, outs, overwrite=True, workers=2)
    for i in range(8):
        same_result(again[i], ref[i])
        same_rows(rows(outs[i]), rows(ref[i].run_dir))
    assert all((outs[i] / "metrics.csv").stat().st_mtime_ns > before[i] for i in done)


def test_mixed_batches_and_lbfgs_in_memory_with_given_predictions(tmp_path, monkeypatch):
    import tempfile

    from nclab.theory import predict

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the job and result files go
    monkeypatch.delenv("NCLAB_CORES", raising=False)

    cfgs = []
    for s in range(4):  # interleaved: SGD depth 2, Adam depth 3; an L-BFGS run in the middle
        cfgs += [tiny(s), tiny(10 + s, optimizer="adam", depth=3)]
    cfgs.insert(4, tiny(20, optimizer="lbfgs", steps=20))
    # one worker per batch, the heavier (Adam, depth 3) dealt first; the L-BFGS run on the first of equal sizes
    assert workers.plan(cfgs, 2) == [[1, 3, 6, 8, 4], [0, 2, 5, 7]]
    preds = [predict(c.problem) for c in cfgs]
    one = simulate_batch(cfgs, None, predictions=preds, workers=1)
    two = simulate_batch(cfgs, None, predictions=preds, workers=2)
    for c, p, a, b in zip(cfgs, preds, one, two, strict=True):
        assert b.run_dir is None and b.config == c  # input order
        same_result(b, a)
        assert b.prediction.objective == p.objective and b.prediction.problem == c.problem  # the given one
    assert [r.config.optimizer for r in two] == ["sgd", "adam"] * 2 + ["lbfgs"] + ["sgd", "adam"] * 2
    assert [f for f in os.listdir(tmp_path) if f.startswith("nclab-")] == []  # the job and result files removed
    assert "NCLAB_CORES" not in os.environ  # the workers' share is not this process's


def test_a_folder_of_another_problem_fails_its_worker_and_names_the_folder(tmp_path):
    from nclab.results import RunFolderError

    cfgs = [tiny(s) for s in range(8)]
    ref = simulate_batch(cfgs[:4], None, workers=1)
    outs = [tmp_path / f"r{i}" for i in range(8)]
    other = make_config(counts=[3, 3], depth=2, widths=4, steps=50, snapshot_every=50, seed=6)
    simulate_batch([other], [outs[6]], workers=1)  # run 6's folder holds another problem's run
    held = {f: (outs[6] / f).read_bytes() for f in ("config.json", "metrics.csv", "summary.json")}
    def children():  # this process's children (other tests may have left some of their own running)
        return set(subprocess.run(["pgrep", "-P", str(os.getpid())], capture_output=True, text=True).stdout.split())

    before = children()
    with pytest.raises(RunFolderError, match=rf"^{outs[6]} holds a run with another config \(.*counts"):
        simulate_batch(cfgs, outs, resume=True, workers=2)  # runs 4..7 in the second worker, refused there
    assert children() - before == set()  # no worker outlives the call
    assert {f: (outs[6] / f).read_bytes() for f in held} == held  # the other run is left as it was
    assert not outs[7].exists()  # the worker stopped at run 6: nothing after it was opened
    for i in range(4):  # the first worker's share ran to the end, as in one process
        assert json.loads((outs[i] / "summary.json").read_text())["status"] == "complete"
        assert (outs[i] / "checkpoint.pt").is_file()
        same_rows(rows(outs[i]), ref[i].history)


def test_cli_resumes_an_interrupted_seeds_run_with_workers(tmp_path, monkeypatch):
    args = ["simulate", "--counts", "6,5,4", "-M", "2", "--width", "8", "--steps", "200", "--snapshot-every", "50",
            "--checkpoint-every", "50", "--no-figures", "--seeds", "0-7"]
    ref, out = tmp_path / "ref", tmp_path / "out"
    r = CliRunner().invoke(cli, args + ["--workers", "1", "--out", str(ref)])
    assert r.exit_code == 0, r.output

    real = batched._snapshot_rows

    def ctrl_c_at_100(engine, bsnap, runs, step):  # a Ctrl-C during the snapshot of step 100
        if step == 100:
            raise KeyboardInterrupt
        return real(engine, bsnap, runs, step)

    monkeypatch.setattr(batched, "_snapshot_rows", ctrl_c_at_100)
    r = CliRunner().invoke(cli, args + ["--workers", "1", "--out", str(out)])
    assert r.exit_code == 130 and "rerun the same command with --resume" in r.output
    monkeypatch.undo()
    partial = {s: (out / f"seed-{s}/metrics.csv").read_text() for s in range(8)}
    assert all(json.loads((out / f"seed-{s}/summary.json").read_text())["step"] == 50 for s in range(8))

    r = CliRunner().invoke(cli, args + ["--workers", "2", "--resume", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert sum(line.startswith("M = 2: complete at step 200") for line in r.output.splitlines()) == 8
    for s in range(8):
        assert (out / f"seed-{s}/metrics.csv").read_text().startswith(partial[s])  # continued, not restarted
        same_rows(rows(out / f"seed-{s}"), rows(ref / f"seed-{s}"))

    for bad, message in ((["--seeds", "0-7", "--workers", "-1"], "--workers must be >= 0 (0: automatic), got -1"),
                         (["--workers", "2"], "--workers shares the runs of --seeds between processes; give --seeds "
                                              "(e.g. 0-63)")):
        r = CliRunner().invoke(cli, args[:-2] + bad + ["--out", str(tmp_path / "bad")])
        assert (r.exit_code, r.output) == (2, f"error: {message}\n")
    assert not (tmp_path / "bad").exists()


def test_auto_workers_by_estimated_work_idle_cores_callback_and_device(monkeypatch):
    """A [6,5,4] run of widths (8, 8): 8*15 + 8*8 + 3*8 + 3 = 211 parameters, ~3 ns each + 5 us per step,
    i.e. 5.633 us per run-step: 10 s are 1,775,253 run-steps, 8 runs of >= 221,907 steps."""
    asked = []

    def idle(sample=0.0):
        asked.append(sample)
        return cores

    monkeypatch.setattr("nclab.environment.idle_cores", idle)
    cores = 2
    below, above = [tiny(s, steps=221_000) for s in range(8)], [tiny(s, steps=222_000) for s in range(8)]
    assert workers.plan(below, 0) == [list(range(8))] and asked == []  # too little work: no 0.2 s core sample
    assert workers.plan(above, 0) == [[0, 1, 2, 3], [4, 5, 6, 7]] and asked == [0.2]
    assert workers.plan(above, 0, callback=print) == [list(range(8))]  # its rows arrive in this process
    assert workers.plan(above, 1) == [list(range(8))]
    cores = 1  # every other core busy
    assert workers.plan(above, 0) == [list(range(8))]
    cores = 16  # at least MIN_SHARE = 4 runs per worker: 9 runs -> 2 workers (5 + 4)
    assert sorted(workers.plan(above + [tiny(8, steps=222_000)], 0)) == [[0, 1, 2, 3], [4, 5, 6, 7, 8]]
    lbfgs = [tiny(s, steps=10**7, optimizer="lbfgs") for s in range(8)]
    assert workers.plan(lbfgs, 0) == workers.plan(lbfgs, 2) == [list(range(8))]  # one by one in this process
    gpu = [tiny(s, steps=10**7, device="cuda") for s in range(8)]
    assert workers.plan(gpu, 0) == [list(range(8))]
    with pytest.raises(ValueError, match="workers > 1 trains on the CPU only"):
        workers.plan(gpu, 2)
    with pytest.raises(ValueError, match=r"^workers must be >= 0 \(0: automatic\), got -2$"):
        simulate_batch(below, None, workers=-2)


def test_workers_die_with_a_killed_caller(tmp_path):
    script = textwrap.dedent(f"""
        from nclab.ufm import make_config
        from nclab.ufm.batched import simulate_batch
        cfgs = [make_config(counts=[6, 5, 4], depth=2, widths=8, steps=10**8, snapshot_every=50, seed=s,
                            checkpoint_every=50) for s in range(8)]
        simulate_batch(cfgs, [r"{tmp_path}/r%d" % i for i in range(8)], workers=2)
    """)
    # TMPDIR: the job files a killed caller cannot remove stay in tmp_path, not in /tmp
    p = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ, TMPDIR=str(tmp_path)))
    try:
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"r{i}/checkpoint.pt").is_file() for i in (0, 7)):  # both workers training
            assert p.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        kids = [int(k) for k in subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True,
                                               text=True).stdout.split()]
        assert len(kids) == 2
        for k in kids:  # each worker's share of the idle cores: at least 1, at most half of them
            env = dict(v.split(b"=", 1) for v in pathlib.Path(f"/proc/{k}/environ").read_bytes().split(b"\0") if v)
            assert 1 <= int(env[b"NCLAB_CORES"]) <= max(1, (os.cpu_count() or 1) // 2)
            # and the thread pools of torch, OpenBLAS and MKL to that share (set-up and snapshots run outside the
            # trainer's own thread choice)
            assert {env[k] for k in (b"OMP_NUM_THREADS", b"OPENBLAS_NUM_THREADS", b"MKL_NUM_THREADS")} == \
                {env[b"NCLAB_CORES"]}
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()

    def alive(pid):  # a zombie (state Z) has ended, only not yet been reaped by its new parent
        try:
            return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 5
    while any(alive(k) for k in kids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(k) for k in kids)
