"""``nclab sweep``: a real Ctrl-C and a resume give 4 complete runs and one report; bad sweep files fail
with one line each, before anything runs; a failing run is recorded, not fatal."""

import json
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from nclab.cli import cli
from nclab.experiments.sweep import expand_sweep, load_sweep, run_sweep
from nclab.results import RunStore

TINY = """
[base]
classes = 3
per_class = 2
widths = 4
lambda_w = 0.01
lambda_h = 0.01
init_std = 0.5
"""
# 4 runs of ~0.5 s each (SGD on a tiny UFM), a snapshot (a chance to stop) every ~15 ms
FOUR = 'kind = "simulate"\nname = "four"\n' + TINY + """optimizer = "sgd"
steps = 30000
snapshot_every = 1000
[grid]
depth = [1, 2]
seed = [0, 1]
"""


def write(tmp_path, text, name="sweep.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


RUNS = ["depth=1,seed=0", "depth=1,seed=1", "depth=2,seed=0", "depth=2,seed=1"]  # FOUR's run directories


def statuses(out):
    """Run name -> the status in its summary.json (None: no summary yet)."""
    got = {}
    for name in RUNS:
        s = out / name / "summary.json"
        got[name] = json.loads(s.read_text())["status"] if s.is_file() else None
    return got


def ctrl_c_default() -> None:
    """In the child before exec: SIGINT to its default, which Python turns into KeyboardInterrupt (under nohup
    or in a background job the test process, and so the child, would inherit it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_interrupted_sweep_resumes_to_four_complete_runs_and_one_report(tmp_path):
    path, out = write(tmp_path, FOUR), tmp_path / "out"
    cmd = [sys.executable, "-m", "nclab", "sweep", str(path), "--out", str(out), "--workers", "2", "--no-report"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=ctrl_c_default)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if any(s == "complete" for s in statuses(out).values()):
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)  # Ctrl-C to the sweep process only: it must stop its workers itself
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, output
    assert "interrupted" in output and "Traceback" not in output
    before = statuses(out)
    done_before = {n for n, s in before.items() if s == "complete"}
    assert 1 <= len(done_before) < 4, before
    assert all(s in ("complete", "interrupted", None) for s in before.values()), before
    manifest = json.loads((out / "sweep.json").read_text())
    assert [e["name"] for e in manifest["runs"]] == RUNS
    assert {e["name"]: e["status"] for e in manifest["runs"]} == {n: s or "pending" for n, s in before.items()}
    started = {n for n in before if (out / n / "config.json").is_file()} - done_before
    rows_before = {n: RunStore(out / n).read_rows() for n in started}

    seen = []
    res = run_sweep(path, out, workers=2, callback=lambda e, i, n: seen.append(e["name"]))
    assert statuses(out) == dict.fromkeys(RUNS, "complete")
    assert res.ok and len(res.finished) == 4 and not res.failed
    assert set(seen) == set(RUNS) - done_before  # finished runs were skipped, the rest run
    assert {e["name"] for e in res.runs if e["reused"]} == done_before
    for n in started:  # resumed from the checkpoint, not restarted: old rows kept, a second environment record
        rows = RunStore(out / n).read_rows()
        assert [r["step"] for r in rows] == list(range(0, 30001, 1000))
        assert rows[: len(rows_before[n])] == rows_before[n]
        if rows_before[n]:
            assert "previous" in json.loads((out / n / "environment.json").read_text())
    if started:  # the resumed run ends exactly where an uninterrupted one does
        from nclab.ufm import simulate

        n = sorted(started)[0]
        cfg = RunStore(out / n).read_config()["config"]
        assert simulate(**cfg).final["objective"] == RunStore(out / n).read_rows()[-1]["objective"]
    assert res.report == out / "report.html" and res.report.stat().st_size > 1000  # an import error fails
    assert json.loads((out / "sweep.json").read_text())["report"] == "report.html"


@pytest.mark.parametrize(
    "text,match",
    [
        ('kind = "simulate"\n[base]\ndetph = 3\n[grid]\nseed = [0, 1]\n',
         "unknown simulate parameter 'detph' in [base]; did you mean 'depth'?"),
        ('[grid]\nsede = [0, 1]\n', "unknown simulate parameter 'sede' in [grid]"),
        ('[base]\nsteps = 10\n[grid]\n', "the sweep is empty"),
        ('[base]\nsteps = 10\n', "the sweep is empty"),
        ('[grid]\ndepth = []\n', "grid value of 'depth' is an empty list"),
        ('[grid]\ndepth = 3\n', "grid value of 'depth' must be a list of values, got 3 (write depth = [3])"),
        ('kind = "predict"\n[grid]\ndepth = [1]\n', 'kind must be "simulate" or "train"'),
        ('steps = 10\n[grid]\ndepth = [1]\n', "unknown top-level key(s) ['steps']"),
        ('[base]\ndepth = 2\n[grid]\ndepth = [1, 3]\n', "'depth' is both in [base] and in [grid]"),
        ('[grid]\ndepth = [1, 1]\n', "grid value of 'depth' repeats 1"),
        ('[base]\ncounts = [4, 2]\n[grid]\nlr = [0.1, -1.0]\n', "run lr=-1.0: learning rate lr must be > 0"),
        ('[grid]\ndepth = [1, 2\n', "not valid TOML"),
        ('[[runs]]\nname = "a"\nseed = 1\n[[runs]]\nname = "a"\nseed = 2\n', "share the run directory 'a'"),
        ('[[runs]]\nsteps = 5\nseed = 1\nbogus = 2\n', "unknown simulate parameter 'bogus' in [[runs]] entry 1"),
    ],
)
def test_bad_sweep_file_is_one_line_and_runs_nothing(tmp_path, text, match):
    path, out = write(tmp_path, text), tmp_path / "out"
    res = CliRunner().invoke(cli, ["sweep", str(path), "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert res.output.startswith("error: ") and len(res.output.strip().splitlines()) == 1, res.output
    assert match in res.output and "Traceback" not in res.output
    assert not out.exists()


def test_bad_paths_are_one_line(tmp_path):
    missing = CliRunner().invoke(cli, ["sweep", str(tmp_path / "nope.toml")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    path = write(tmp_path, TINY + '[grid]\nseed = [0]\n')
    (tmp_path / "afile").write_text("x")
    for out, match in [(tmp_path / "afile", "is a file"), (tmp_path / "afile" / "sub", "cannot write")]:
        res = CliRunner().invoke(cli, ["sweep", str(path), "--out", str(out)])
        assert res.exit_code == 2 and match in res.output and "Traceback" not in res.output, res.output
    import sys

    saved = sys.modules.get("ray")
    sys.modules["ray"] = None  # as if ray were not installed: the message is tested everywhere
    try:
        res = CliRunner().invoke(cli, ["sweep", str(path), "--backend", "ray", "--out", str(tmp_path / "r")])
    finally:
        if saved is None:
            del sys.modules["ray"]
        else:
            sys.modules["ray"] = saved
    assert res.exit_code == 2 and "needs the ray package" in res.output, res.output


def test_expansion_names_dry_run_and_config_conflict(tmp_path):
    base = TINY.replace("lambda_w = 0.01\n", "")
    text = ('kind = "simulate"\n' + base + 'steps = 20\n[grid]\nlambda_w = [5e-4, 1e-3, [0.01, 0.02]]\n'
            '[[runs]]\nname = "wide"\nwidths = 8\n[[runs]]\nseed = 3\nbias = true\n')
    path, out = write(tmp_path, text, "my sweep.toml"), tmp_path / "out"
    spec = load_sweep(path)
    assert spec.name == "my_sweep"
    runs = expand_sweep(spec)
    assert [r.name for r in runs] == ["lambda_w=0.0005", "lambda_w=0.001", "lambda_w=0.01_0.02", "wide",
                                      "seed=3,bias=true"]
    assert runs[2].config.lambda_w == (0.01, 0.02) and runs[3].config.widths == (8,)
    assert all(r.config.threads == 1 for r in runs)  # one thread per run
    res = CliRunner().invoke(cli, ["sweep", str(path), "--out", str(out), "--dry-run"])
    assert res.exit_code == 0 and "5 runs (simulate)" in res.output and "wide  [run]" in res.output, res.output
    assert not out.exists()
    other = runs[0].config.replace(steps=99)  # a run directory holding another config: refused up front
    RunStore(out / runs[0].name).write_config(other.to_dict(), kind="ufm-simulation", version="0")
    res = CliRunner().invoke(cli, ["sweep", str(path), "--out", str(out)])
    assert res.exit_code == 2 and "holds a run with another config (steps: 99 -> 20)" in res.output, res.output
    assert not (out / "sweep.json").exists()


def test_a_failing_run_is_recorded_and_the_rest_finish(tmp_path):
    path, out = write(tmp_path, TINY + 'optimizer = "lbfgs"\nsteps = 20\n[grid]\nseed = [0, 1]\n'), tmp_path / "o"
    broken = expand_sweep(load_sweep(path))[1]  # seed=1: an interrupted run whose checkpoint is garbage
    store = RunStore(out / broken.name)
    store.write_config(broken.config.to_dict(), kind="ufm-simulation", version="0")
    store.write_json("summary.json", {"status": "interrupted", "step": 5})
    (store.path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    res = CliRunner().invoke(cli, ["sweep", str(path), "--out", str(out), "--workers", "1", "--no-report"])
    assert res.exit_code == 1, res.output
    assert "1 run(s) failed: seed=1" in res.output and "seed=0: c" in res.output
    runs = {e["name"]: e for e in json.loads((out / "sweep.json").read_text())["runs"]}
    assert runs["seed=0"]["status"] in ("complete", "converged")
    assert runs["seed=1"]["status"] == "failed" and runs["seed=1"]["message"]


def test_train_sweep(tmp_path):
    text = ('kind = "train"\n[base]\ndataset = "digits"\ncounts = [20, 20, 20]\ntest_per_class = 5\n'
            'mlp_depth = 1\nwidth = 8\nepochs = 2\nbatch_size = 0\n[grid]\nseed = [0, 1]\n')
    res = run_sweep(write(tmp_path, text), tmp_path / "t", workers=2, report=False)
    assert res.ok, res.runs
    for e in res.runs:
        cfg = json.loads((tmp_path / "t" / e["dir"] / "config.json").read_text())
        assert cfg["config"]["seed"] == e["params"]["seed"] and cfg["config"]["threads"] == 1


def test_workers_must_be_positive(tmp_path):
    path = write(tmp_path, '[grid]\nseed = [0]\n')
    res = CliRunner().invoke(cli, ["sweep", str(path), "--workers", "0"])
    assert res.exit_code == 2 and "0" in res.output
    with pytest.raises(ValueError, match="workers must be an integer >= 1"):
        run_sweep(path, tmp_path / "x", workers=0)


def test_one_sweep_per_folder_and_a_locked_run_is_recorded_not_fatal(tmp_path, monkeypatch):
    """The sweep folder and each run folder have one writer: a second sweep on the folder is refused with the
    holder's pid; a run whose folder another process holds waits a little for it, then is recorded as failed
    (locked) while the other runs finish."""
    import os
    import threading

    import nclab.experiments.sweep as sweep_mod
    from nclab.results import RunLock

    path, out = write(tmp_path, TINY + 'optimizer = "lbfgs"\nsteps = 20\n[grid]\nseed = [0, 1, 2]\n'), tmp_path / "o"
    out.mkdir()
    with RunLock(out):  # another sweep (here: this process) holds the folder
        with pytest.raises(ValueError, match=rf"sweep folder .* in use by another nclab process \(pid {os.getpid()}\)"):
            run_sweep(path, out, workers=1, report=False)
        res = CliRunner().invoke(cli, ["sweep", str(path), "--out", str(out)])
        assert res.exit_code == 2 and f"(pid {os.getpid()})" in res.output and "Traceback" not in res.output
    assert not (out / "sweep.json").exists()

    monkeypatch.setattr(sweep_mod, "LOCK_WAIT", 3.0)
    held, brief = RunLock(out / "seed=1"), RunLock(out / "seed=2")
    held.__enter__()
    brief.__enter__()
    threading.Timer(0.5, brief.__exit__, (None, None, None)).start()  # a writer that ends: waited for
    try:
        res = run_sweep(path, out, workers=1, report=False)
    finally:
        held.__exit__(None, None, None)
    by_name = {e["name"]: e for e in res.runs}
    assert res.failed == ["seed=1"], res.runs
    assert by_name["seed=1"]["locked"] and f"in use by another nclab process (pid {os.getpid()})" in by_name[
        "seed=1"]["message"]
    assert "traceback" not in by_name["seed=1"] and not (out / "seed=1" / "metrics.csv").exists()
    assert by_name["seed=0"]["status"] in ("complete", "converged")
    assert by_name["seed=2"]["status"] in ("complete", "converged")
    again = run_sweep(path, out, workers=1, report=False)  # the lock is free now: the rerun completes it
    assert again.ok and "locked" not in {e["name"]: e for e in again.runs}["seed=1"]


def test_a_run_folder_that_differs_only_in_threads_is_the_same_run(tmp_path):
    path, out = write(tmp_path, TINY + 'steps = 20\n[grid]\nseed = [0, 1]\n'), tmp_path / "o"
    run = expand_sweep(load_sweep(path))[0]
    RunStore(out / run.name).write_config(run.config.replace(threads=4).to_dict(), kind="ufm-simulation", version="0")
    res = run_sweep(path, out, dry_run=True)
    assert [e["status"] for e in res.runs] == ["pending", "pending"]
