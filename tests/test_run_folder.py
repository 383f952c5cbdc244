"""The run folder as a small database: one writer (OS lock), resume from the folder alone, every corrupt file
named (or rebuilt from the checkpoint), temp files of interrupted writes removed, --overwrite that deletes only
nclab's files, bad output paths refused in one line. Kill -9 of a real process, then resume: identical bytes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner

from nclab import simulate
from nclab.cli import cli
from nclab.results import RunFolderError, RunLock, RunLockedError, RunStore, open_run

KW = dict(counts=[3, 2, 2], depth=2, widths=4, lambda_w=0.01, lambda_h=0.01, init_std=0.5, steps=400,
          snapshot_every=50, checkpoint_every=100, optimizer="sgd", lr=0.1)
CLI_RUN = ["simulate", "--counts", "3,2,2", "-M", "2", "--width", "4", "--lambda-w", "0.01", "--lambda-h", "0.01",
           "--init-std", "0.5", "--steps", "400", "--snapshot-every", "50", "--checkpoint-every", "100",
           "--no-figures"]


def run_cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def interrupted(out, at=250, **kw):
    """A run stopped (checkpointed) at step ``at``."""
    def stop(row):
        if row["step"] == at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        simulate(**{**KW, **kw}, out=out, callback=stop)


def same_run(a, b):
    assert (a / "metrics.csv").read_bytes() == (b / "metrics.csv").read_bytes()
    wa, wb = torch.load(a / "weights.pt"), torch.load(b / "weights.pt")
    assert wa["step"] == wb["step"] and torch.equal(wa["H"], wb["H"])
    assert all(torch.equal(x, y) for x, y in zip(wa["weights"], wb["weights"]))


# ------------------------------------------------------------------------------------------- resume contract
def test_resume_with_only_out_continues_the_saved_config(tmp_path):
    full = tmp_path / "full"
    assert run_cli(*CLI_RUN, "--out", full).exit_code == 0
    part = tmp_path / "part"
    interrupted(part)
    r = run_cli("simulate", "--out", part, "--resume", "--no-figures")  # the README's second command
    assert r.exit_code == 0, r.output
    assert "complete at step 400" in r.output
    same_run(full, part)
    # an execution-only setting may change; a result-defining one is refused with the field named
    assert run_cli("simulate", "--out", part, "--resume", "--threads", "2", "--no-figures").exit_code == 0
    r = run_cli("simulate", "--out", part, "--resume", "--seed", "3", "--lambda-h", "0.02", "--no-figures")
    assert r.exit_code == 2 and "seed: 0 -> 3" in r.output and "lambda_h: 0.01 -> 0.02" in r.output
    assert "Traceback" not in r.output


def test_resume_of_a_multi_depth_folder_finds_its_runs(tmp_path):
    args = ["simulate", "--counts", "3,2", "--width", "3", "--depths", "1,2", "--steps", "60", "--snapshot-every",
            "20", "--no-figures", "--out", tmp_path]
    assert run_cli(*args).exit_code == 0
    r = run_cli("simulate", "--out", tmp_path, "--resume", "--no-figures")
    assert r.exit_code == 0 and "M = 1" in r.output and "M = 2" in r.output


def test_train_resume_with_only_out(tmp_path):
    base = ["train", "--dataset", "digits", "--counts", "20,20,20", "--epochs", "3", "--test-per-class", "0",
            "--width", "8", "--mlp-depth", "1", "--batch-size", "30", "--out", tmp_path / "t"]
    r = run_cli(*base)
    assert r.exit_code == 0, r.output
    before = (tmp_path / "t" / "metrics.csv").read_bytes()
    r = run_cli("train", "--out", tmp_path / "t", "--resume", "--threads", "1")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "t" / "metrics.csv").read_bytes() == before
    r = run_cli("train", "--out", tmp_path / "t", "--resume", "--epochs", "5")
    assert r.exit_code == 2 and "epochs: 3 -> 5" in r.output


def test_missing_config_next_to_a_checkpoint_is_refused(tmp_path):
    interrupted(tmp_path / "r")
    (tmp_path / "r" / "config.json").unlink()
    for resume in (True, False):
        with pytest.raises(RunFolderError, match="checkpoint.pt.*no config.json"):
            simulate(**KW, out=tmp_path / "r", resume=resume)
    assert simulate(**KW, out=tmp_path / "r", overwrite=True).status == "complete"


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_config_or_checkpoint_is_named_with_the_way_out(tmp_path, damage):
    for name in ("config.json", "checkpoint.pt"):
        out = tmp_path / name
        interrupted(out)
        path = out / name
        data = path.read_bytes()
        path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00\xffnot this", "empty": b""}[damage])
        r = run_cli("simulate", "--out", out, "--resume", "--no-figures")
        assert r.exit_code == 2, r.output
        assert str(path) in r.output and "--overwrite" in r.output
        assert "Traceback" not in r.output and "Aborted" not in r.output
        assert len(r.output.strip().splitlines()) == 1


def test_truncated_metrics_csv_is_rebuilt_from_the_checkpoint_no_gap(tmp_path):
    simulate(**KW, out=tmp_path / "full")
    part = tmp_path / "part"
    interrupted(part)
    csv = part / "metrics.csv"
    csv.write_bytes(csv.read_bytes()[:120])  # cut in the middle of the second row
    simulate(**KW, out=part, resume=True)
    same_run(tmp_path / "full", part)


@pytest.mark.parametrize("name", ["summary.json", "weights.pt", "metrics.csv"])
def test_finished_run_with_a_damaged_file_is_rebuilt_with_a_warning(tmp_path, name):
    ref = simulate(**KW, out=tmp_path / "ref")
    out = tmp_path / "r"
    simulate(**KW, out=out)
    path = out / name
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])
    with pytest.warns(UserWarning, match=name):
        again = simulate(**KW, out=out, resume=True)
    assert again.step == ref.step and again.final["objective"] == ref.final["objective"]
    same_run(tmp_path / "ref", out)
    assert json.loads((out / "summary.json").read_text())["status"] == "complete"


def test_temp_files_of_interrupted_writes_are_removed_on_open(tmp_path):
    interrupted(tmp_path)
    junk = [tmp_path / ".checkpoint.pt.a1b2c3d4.tmp", tmp_path / ".summary.json.zz_9yy8x.tmp"]
    for p in junk:
        p.write_bytes(b"x" * 1000)
    (tmp_path / "my.tmp").write_text("mine")  # not an atomic-write temp name: kept
    with pytest.warns(UserWarning, match="temporary file"):
        simulate(**KW, out=tmp_path, resume=True)
    assert not any(p.exists() for p in junk) and (tmp_path / "my.tmp").exists()


def test_overwrite_deletes_only_nclab_files(tmp_path):
    simulate(**KW, out=tmp_path)
    (tmp_path / "notes.json").write_text('{"mine": 1}')
    (tmp_path / "README.txt").write_text("mine")
    simulate(**KW, out=tmp_path, overwrite=True)
    assert json.loads((tmp_path / "notes.json").read_text()) == {"mine": 1}
    assert (tmp_path / "README.txt").exists() and (tmp_path / "prediction.json").exists()


@pytest.mark.parametrize("case", ["parent-is-file", "too-long", "empty"])
def test_bad_out_paths_give_one_line(tmp_path, case):
    (tmp_path / "f").write_text("a file")
    out = {"parent-is-file": str(tmp_path / "f" / "run"), "too-long": str(tmp_path / ("x" * 300)), "empty": ""}[case]
    for cmd in (CLI_RUN, ["train", "--dataset", "digits", "--counts", "5,5", "--epochs", "1"]):
        r = run_cli(*cmd, "--out", out)
        assert r.exit_code == 2, r.output
        assert r.output.startswith("error:") and "Traceback" not in r.output
    with pytest.raises(ValueError):
        simulate(**KW, out=out)


# ------------------------------------------------------------------------------------------------ one writer
def test_second_writer_is_refused_with_the_holders_pid(tmp_path):
    code = (f"import time\nfrom nclab.results import RunLock\nwith RunLock({str(tmp_path)!r}):\n"
            "    print('locked', flush=True)\n    time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            simulate(**KW, out=tmp_path)
        r = run_cli(*CLI_RUN, "--out", tmp_path)
        assert r.exit_code == 2 and f"pid {holder.pid}" in r.output
    finally:
        holder.kill()
        holder.wait()
    # the kernel released the lock of the dead holder: the folder is usable at once
    assert simulate(**KW, out=tmp_path).status == "complete"


def test_lock_is_held_for_the_whole_run_and_released_after(tmp_path):
    seen = []

    def probe(row):
        with pytest.raises(RunLockedError):
            open_run(tmp_path, {}, kind="x", resume=True, overwrite=False, finished=())
        seen.append(row["step"])

    simulate(**KW, out=tmp_path, callback=probe)
    assert seen[-1] == 400
    with RunLock(tmp_path):
        pass


def test_two_concurrent_cli_writers_one_runs_one_is_refused(tmp_path):
    cmd = [sys.executable, "-m", "nclab", *CLI_RUN[:-1], "--steps", "20000", "--no-figures", "--out", str(tmp_path)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs
    refused = next(err for p, (_, err) in zip(procs, outs) if p.returncode == 2)
    assert "in use by another nclab process" in refused or "already holds" in refused


# ------------------------------------------------------------------------------------------------- kill -9
def test_kill_9_then_resume_gives_the_uninterrupted_bytes(tmp_path):
    args = [*CLI_RUN[:-1], "--steps", "30000", "--snapshot-every", "100", "--checkpoint-every", "500", "--no-figures"]
    assert run_cli(*args, "--out", tmp_path / "full").exit_code == 0
    part = tmp_path / "part"
    p = subprocess.Popen([sys.executable, "-m", "nclab", *args, "--out", str(part)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not (part / "checkpoint.pt").exists():
        time.sleep(0.02)
    time.sleep(0.1)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert (part / "checkpoint.pt").exists()
    r = run_cli("simulate", "--out", part, "--resume", "--no-figures")
    assert r.exit_code == 0, r.output
    same_run(tmp_path / "full", part)
    assert not [n for n in os.listdir(part) if n.endswith(".tmp")]


def test_store_read_rows_names_a_binary_metrics_file(tmp_path):
    (tmp_path / "metrics.csv").write_bytes(b"\xff\xfe\x00\x81" * 10)
    with pytest.raises(RunFolderError, match="metrics.csv"):
        RunStore(tmp_path).read_rows()


def test_append_after_a_torn_line_drops_it_instead_of_gluing(tmp_path):
    store = RunStore(tmp_path)
    store.append_rows([{"step": 0, "x": 1.0}, {"step": 1, "x": 2.0}])
    with open(tmp_path / "metrics.csv", "a") as fh:
        fh.write("5,0.12")  # a crash in the middle of a row
    RunStore(tmp_path).append_rows([{"step": 9, "x": 3.0}])
    assert [r["step"] for r in RunStore(tmp_path).read_rows()] == [0, 1, 9]


def test_append_after_a_torn_header_writes_the_header_again(tmp_path):
    (tmp_path / "metrics.csv").write_text("step,x")  # torn before its newline
    store = RunStore(tmp_path)
    store._header = ["step", "x"]
    store.append_rows([{"step": 0, "x": 1.5}])
    assert RunStore(tmp_path).read_rows() == [{"step": 0, "x": 1.5}]


def test_a_refused_run_leaves_no_empty_folder(tmp_path, monkeypatch):
    """A run refused after its folder was opened (dataset missing, CUDA absent) removes the folder it created,
    which held only its lock; a folder that existed before is kept."""
    import torch

    from nclab.cli import cli
    from nclab.ufm import make_config, simulate

    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["train", "--dataset", "mnist", "--data-root", str(tmp_path / "none")])
    assert r.exit_code == 2 and "does not exist" in r.output
    assert not (tmp_path / "runs").exists()  # the default runs/train-<time> and the runs/ it created: gone
    if not torch.cuda.is_available():
        cfg = make_config(classes=2, per_class=2, depth=1, widths=3, steps=10, device="cuda")
        with pytest.raises(ValueError, match="CUDA is not available"):
            simulate(cfg, out=tmp_path / "sim" / "a" / "b")
        assert not (tmp_path / "sim").exists()
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "note.txt").write_text("mine")
        with pytest.raises(ValueError, match="CUDA is not available"):
            simulate(cfg, out=tmp_path / "other" / "run")
        assert sorted(os.listdir(tmp_path / "other")) == ["note.txt"]  # only what the call created is removed
        (tmp_path / "kept").mkdir()
        with pytest.raises(ValueError, match="CUDA is not available"):
            simulate(cfg, out=tmp_path / "kept")
        assert (tmp_path / "kept").is_dir()
