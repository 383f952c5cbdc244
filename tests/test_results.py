"""RunStore: atomic JSON/torch writes, the metrics table (append, torn lines, truncation)."""

import json
import math
import os

import pytest
import torch

from nclab.results import RunStore, atomic_write_bytes, atomic_write_json, config_diff


def test_json_is_atomic_and_strict(tmp_path):
    store = RunStore(tmp_path / "run")
    store.write_json("a.json", {"x": float("nan"), "y": [1.5, float("inf")], "z": torch.tensor([1, 2]).numpy()})
    doc = json.loads((tmp_path / "run" / "a.json").read_text())
    assert doc == {"x": None, "y": [1.5, None], "z": [1, 2]}
    assert os.listdir(tmp_path / "run") == ["a.json"]  # no temp files left
    mode = os.stat(tmp_path / "run" / "a.json").st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


@pytest.mark.parametrize("stage", ["write", "fsync", "replace"])
def test_failed_write_leaves_old_file(tmp_path, monkeypatch, stage):
    """A failure DURING the write (after the temp file holds data) leaves the old file and no temp file."""
    path = tmp_path / "c.json"
    atomic_write_json(path, {"v": 1})
    seen = []

    def boom(*args, **kwargs):
        seen.extend(p.name for p in tmp_path.iterdir() if p.name != "c.json")  # the temp file exists now
        raise OSError(28, "No space left on device")

    if stage == "write":
        real_fdopen = os.fdopen

        def fdopen(fd, *args, **kwargs):
            fh = real_fdopen(fd, *args, **kwargs)

            class Half:  # writes half of the data to the temp file, then fails
                def __enter__(self):
                    return self

                def __exit__(self, *exc):
                    fh.close()

                def write(self, data):
                    fh.write(data[: len(data) // 2])
                    fh.flush()
                    boom()

            return Half()

        monkeypatch.setattr(os, "fdopen", fdopen)
    else:
        monkeypatch.setattr(os, stage, boom)
    with pytest.raises(OSError, match="No space"):
        atomic_write_json(path, {"v": 2, "pad": "x" * 1000})
    monkeypatch.undo()
    assert len(seen) == 1 and seen[0].startswith(".c.json.") and seen[0].endswith(".tmp")
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]


def test_interrupt_during_write_also_rolls_back(tmp_path, monkeypatch):
    path = tmp_path / "d.bin"
    atomic_write_bytes(path, b"old")

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(path, b"new")
    monkeypatch.undo()
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["d.bin"]


def test_rows_round_trip_exactly_and_torn_line_is_ignored(tmp_path):
    store = RunStore(tmp_path)
    rows = [{"step": i, "x": 1 / 3 + i, "flag": None, "s": "ok"} for i in range(5)]
    store.append_rows(rows[:2])
    store.append_rows(rows[2:])
    back = store.read_rows()
    assert back == rows  # floats round-trip via repr
    with open(tmp_path / "metrics.csv", "a") as fh:
        fh.write("5,0.12")  # a crash in the middle of a line
    assert store.read_rows() == rows
    kept = store.truncate_rows(2)
    assert [r["step"] for r in kept] == [0, 1, 2]
    assert store.read_rows() == rows[:3]
    fresh = RunStore(tmp_path)  # a new process appends with the existing header
    fresh.append_rows([{"x": 9.0, "step": 3, "s": "z"}])
    assert fresh.read_rows()[-1] == {"step": 3, "x": 9.0, "flag": None, "s": "z"}
    assert math.isnan(_nan_row(tmp_path))


def _nan_row(tmp_path):
    store = RunStore(tmp_path / "n")
    store.append_rows([{"step": 0, "v": float("nan")}])
    return store.read_rows()[0]["v"]


def test_torch_save_and_config_helpers(tmp_path):
    store = RunStore(tmp_path / "r")
    assert not store.exists()
    store.write_config({"a": 1, "b": [1, 2]}, kind="test", version="0")
    assert store.exists() and store.read_config()["config"] == {"a": 1, "b": [1, 2]}
    store.save_torch("ck.pt", {"t": torch.arange(3.0)})
    assert torch.equal(store.load_torch("ck.pt")["t"], torch.arange(3.0))
    store.write_environment({"python": "3"})
    store.write_environment({"python": "4"})
    env = store.read_json("environment.json")
    assert env["python"] == "4" and env["previous"] == [{"python": "3"}]
    assert config_diff({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4}) == ["b: 2 -> 3", "c: None -> 4"]
    (tmp_path / "r" / "keep.txt").write_text("user file")
    store.clear()
    assert not store.exists() and (tmp_path / "r" / "keep.txt").exists()


@pytest.mark.parametrize("torn", [
    "5,5.333,,o",  # torn inside the last field: as many fields as the header, last one truncated
    "5,5.333,,",  # torn right after the last separator (empty last field)
    "5,5.33",  # torn inside an earlier field
    "5",
    '5,5.333,,"o',  # torn inside a quoted field
])
def test_torn_last_line_is_dropped_whatever_it_holds(tmp_path, torn):
    store = RunStore(tmp_path)
    rows = [{"step": i, "x": 1 / 3 + i, "flag": None, "s": "ok"} for i in range(5)]
    store.append_rows(rows)
    with open(tmp_path / "metrics.csv", "a") as fh:
        fh.write(torn)  # no newline: the writer died in the middle of its one write()
    assert store.read_rows() == rows
    assert RunStore(tmp_path).read_rows() == rows  # a fresh reader too
    kept = store.truncate_rows(10)  # what a resume does before appending again: the torn bytes are gone
    assert kept == rows and (tmp_path / "metrics.csv").read_text().endswith("\n")


def test_complete_last_line_and_header_only(tmp_path):
    store = RunStore(tmp_path)
    (tmp_path / "metrics.csv").write_text("step,x\n")
    assert store.read_rows() == []
    (tmp_path / "metrics.csv").write_text("step,x\n1,2.5\n2,")  # the complete row stays, the torn one goes
    assert store.read_rows() == [{"step": 1, "x": 2.5}]
    (tmp_path / "metrics.csv").write_text("step,x\n1,2.5\n2,3\n")
    assert store.read_rows() == [{"step": 1, "x": 2.5}, {"step": 2, "x": 3}]
    (tmp_path / "metrics.csv").write_text("")
    assert store.read_rows() == []
    (tmp_path / "metrics.csv").write_text("step,x")  # a torn header: nothing complete
    assert store.read_rows() == []


# ---------------------------------------------------------------------------------------------- the run folder rules
def _open(path, config=None, **kw):
    from nclab.results import open_run

    opts = {"kind": "k", "resume": True, "overwrite": False, "finished": ("complete",), **kw}
    store, ckpt, done = open_run(path, {"a": 1} if config is None else config, **opts)
    store.unlock()
    return ckpt, done


def _run_folder(path, rows=3, summary=None, ckpt=True, ckpt_rows=True):
    store = RunStore(path)
    store.write_config({"a": 1}, kind="k", version="0")
    store.append_rows([{"step": i, "v": float(i)} for i in range(rows)])
    if ckpt:
        doc = {"step": rows - 1}
        if ckpt_rows:
            doc["rows"] = store.read_rows()
        store.save_torch("checkpoint.pt", doc)
    if summary is not None:
        store.write_json("summary.json", summary)
    return store


def test_bools_and_empty_appends(tmp_path):
    store = RunStore(tmp_path)
    store.append_rows([])
    assert not (tmp_path / "metrics.csv").exists() and store.truncate_rows(5) == []
    store.append_rows([{"step": 0, "ok": True, "bad": False}])
    assert (tmp_path / "metrics.csv").read_text() == "step,ok,bad\n0,1,0\n"
    (tmp_path / "metrics.csv").write_text("")
    assert store.read_rows() == [] and store.truncate_rows(5) == []


def test_store_create_clear_and_lock_edge_cases(tmp_path):
    from nclab.results import RunFolderError

    (tmp_path / "f").write_text("x")
    with pytest.raises(RunFolderError, match="not a directory"):
        RunStore(tmp_path / "f").create()
    RunStore(tmp_path / "missing").clear()  # nothing to clear: no error, nothing created
    assert not (tmp_path / "missing").exists()
    store = RunStore(tmp_path / "r")
    (tmp_path / "r" / "figures").mkdir(parents=True)
    (tmp_path / "r" / "figures" / "a.png").write_bytes(b"png")
    store.clear()
    assert not (tmp_path / "r" / "figures").exists()
    store.lock()
    store.lock()  # a second call of the holder is a no-op
    store.unlock()
    store.unlock()  # and so is a second release
    with pytest.raises(RunFolderError, match="cannot create run directory"):
        RunStore(tmp_path / "f" / "sub").lock()
    (tmp_path / "L" / ".lock").mkdir(parents=True)  # the lock file cannot be opened
    with pytest.raises(RunFolderError, match="cannot lock run folder"):
        RunStore(tmp_path / "L").lock()


def test_resume_rows_of_an_old_checkpoint_come_from_metrics_csv(tmp_path):
    from nclab.results import RunFolderError, resume_rows

    store = _run_folder(tmp_path, rows=4, ckpt=False)
    assert [r["step"] for r in resume_rows(store, {"step": 2})] == [0, 1, 2]
    assert [r["step"] for r in store.read_rows()] == [0, 1, 2]  # the table is rewritten to the checkpoint
    with pytest.raises(RunFolderError, match="lacks rows up to the checkpoint"):
        resume_rows(store, {"step": 7})
    assert resume_rows(store, {"step": 1, "rows": [{"step": 0, "v": 9.0}]}) == [{"step": 0, "v": 9.0}]
    assert store.read_rows() == [{"step": 0, "v": 9.0}]


def test_identity_ignores_execution_fields_and_the_cuda_index():
    from nclab.results import identity

    assert identity({"a": 1, "threads": 4, "checkpoint_every": 9, "device": "cuda:1"}) == {"a": 1, "device": "cuda"}
    assert identity({"device": "cpu"}) == {"device": "cpu"}


def test_open_run_rules(tmp_path):
    import warnings

    from nclab.results import RunFolderError

    with pytest.raises(RunFolderError, match="must not be empty"):
        _open("")
    # a config.json that is JSON but not a config, and a run of another kind
    RunStore(tmp_path / "a").write_json("config.json", [1, 2])
    with pytest.raises(RunFolderError, match="corrupt"):
        _open(tmp_path / "a")
    _run_folder(tmp_path / "b")
    with pytest.raises(RunFolderError, match="kind: 'k' -> 'other'"):
        _open(tmp_path / "b", kind="other")
    with pytest.raises(RunFolderError, match="pass --resume"):
        _open(tmp_path / "b", resume=False)
    # a checkpoint that is not a dict
    store = _run_folder(tmp_path / "c")
    store.save_torch("checkpoint.pt", [1, 2])
    with pytest.raises(RunFolderError, match="checkpoint.pt is corrupt"):
        _open(tmp_path / "c")
    # a summary that is not a JSON object, and no checkpoint to rebuild from
    _run_folder(tmp_path / "d", summary=None, ckpt=False).write_json("summary.json", [1])
    with pytest.raises(RunFolderError, match="no checkpoint to rebuild from"):
        _open(tmp_path / "d")
    # rows but no checkpoint yet: starts over, with a warning
    _run_folder(tmp_path / "e", ckpt=False)
    with pytest.warns(UserWarning, match="no checkpoint.pt yet"):
        assert _open(tmp_path / "e") == (None, False)
    # an old checkpoint without its rows: rows come from metrics.csv later (marked None)
    _run_folder(tmp_path / "f", ckpt_rows=False)
    ckpt, done = _open(tmp_path / "f")
    assert ckpt == {"step": 2, "rows": None} and not done
    # a finished run whose summary counts more rows than metrics.csv holds: rebuilt from the checkpoint
    store = _run_folder(tmp_path / "g", summary={"status": "complete", "rows": 5})
    store.save_torch("weights.pt", {"w": 1})
    with pytest.warns(UserWarning, match=r"metrics.csv \(3 of 5 rows\)"):
        ckpt, done = _open(tmp_path / "g")
    assert not done and [r["step"] for r in ckpt["rows"]] == [0, 1, 2]
    store.write_json("summary.json", {"status": "complete", "rows": 3})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _open(tmp_path / "g") == (None, True)  # finished and intact: reused


# ---------------------------------------------------------------------------------------------- mutation-found gaps
def test_torn_line_of_a_one_column_table(tmp_path):
    """One column: a torn line's first byte alone would parse as a row (no field-count filter to hide it)."""
    (tmp_path / "metrics.csv").write_text("step\n0\n1\n12")
    assert RunStore(tmp_path).read_rows() == [{"step": 0}, {"step": 1}]


def test_rewritten_tables_use_bare_newlines(tmp_path):
    store = RunStore(tmp_path)
    store.append_rows([{"step": i, "v": i / 2} for i in range(3)])
    store.truncate_rows(1)
    assert (tmp_path / "metrics.csv").read_bytes() == b"step,v\n0,0.0\n1,0.5\n"
    store.write_rows([{"step": 0, "v": 1.5}])
    assert (tmp_path / "metrics.csv").read_bytes() == b"step,v\n0,1.5\n"


@pytest.mark.parametrize("steps, ok", [
    ([0, 1, 2], True), ([0, 1, 1, 2], False), ([0, 2, 1, 3], False), ([1, 2], False), ([], False), ([0, 1], False),
])
def test_resume_rows_refuses_any_gap_or_disorder(tmp_path, steps, ok):
    from nclab.results import RunFolderError, resume_rows

    store = RunStore(tmp_path)
    (tmp_path / "metrics.csv").write_text("epoch,v\n" + "".join(f"{s},0.5\n" for s in steps))
    last = 2 if steps[-1:] != [3] else 3
    if ok:
        assert [r["epoch"] for r in resume_rows(store, {"epoch": last}, key="epoch")] == steps
    else:
        with pytest.raises(RunFolderError, match=rf"lacks rows up to the checkpoint \(epoch {last}\); the history "
                                                 "cannot be rebuilt: use --overwrite to start over"):
            resume_rows(store, {"epoch": last}, key="epoch")


def test_read_saved_config_kinds_and_messages(tmp_path):
    from nclab.results import RunFolderError, read_saved_config

    assert read_saved_config(tmp_path / "none") is None
    RunStore(tmp_path / "a").write_config({"x": 1}, kind="train", version="0")
    assert read_saved_config(tmp_path / "a", "train") == {"x": 1} == read_saved_config(tmp_path / "a")
    with pytest.raises(RunFolderError) as e:
        read_saved_config(tmp_path / "a", "ufm-simulation")
    assert str(e.value) == (f"{tmp_path / 'a'} holds a 'train' run, not a 'ufm-simulation' run; use --overwrite to "
                            "replace it, or another output directory")
    RunStore(tmp_path / "b").write_json("config.json", {"config": {"x": 2}})  # older runs: no kind recorded
    assert read_saved_config(tmp_path / "b", "train") == {"x": 2}
    RunStore(tmp_path / "c").write_json("config.json", {"kind": "train"})
    with pytest.raises(RunFolderError) as e:
        read_saved_config(tmp_path / "c")
    assert str(e.value) == (f"{tmp_path / 'c' / 'config.json'} is corrupt (ValueError: not an nclab config "
                            "document); use --overwrite to start over (it deletes the run's files)")


def test_unreadable_metrics_and_describe(tmp_path):
    from nclab.results import RunFolderError, _describe

    assert _describe(ValueError("first\nsecond")) == "ValueError: first" and _describe(KeyError()) == "KeyError"
    (tmp_path / "metrics.csv").write_bytes(b"step\n\xff\xfe\n")
    with pytest.raises(RunFolderError, match=r"metrics.csv is unreadable \(UnicodeDecodeError: "):
        RunStore(tmp_path).read_rows()


def test_open_run_messages_word_for_word(tmp_path):
    """The refusals and warnings of open_run are the user's only guide: their exact text."""
    import warnings

    from nclab.results import RunFolderError

    def refused(path, **kw):
        with pytest.raises(RunFolderError) as e:
            _open(path, **kw)
        return str(e.value)

    a = tmp_path / "a"
    _run_folder(a)
    assert refused(a, resume=False) == f"{a} already holds a run with this config; pass --resume to continue it or " \
                                       "--overwrite to replace it"
    assert refused(a, config={"a": 2, "b": 3}, kind="z", resume=False) == (
        f"{a} already holds a run with another config (kind: 'k' -> 'z'; a: 1 -> 2; b: None -> 3); pass --resume "
        "to continue it or --overwrite to replace it")
    assert refused(a, config={"a": 2, "b": 3}) == (f"{a} holds a run with another config (a: 1 -> 2; b: None -> 3); "
                                                   "use --overwrite to replace it, or another output directory")
    # defaults fill fields that older runs did not record, only for fields this config has
    assert _open(a, config={"a": 1, "new": 5}, defaults={"new": 5, "gone": 1}) == (_open(a)[0], False)
    # a config.json without a kind is taken as this kind
    RunStore(tmp_path / "nk").write_json("config.json", {"config": {"a": 1}})
    assert _open(tmp_path / "nk", kind="anything") == (None, False)
    b = tmp_path / "b"
    RunStore(b).save_torch("checkpoint.pt", {"step": 0})
    RunStore(b).append_rows([{"step": 0}])
    assert refused(b) == (f"{b} holds checkpoint.pt, metrics.csv but no config.json, so the run they belong to is "
                          "unknown; restore config.json, or use --overwrite to start over (it deletes them)")
    c = tmp_path / "c"
    _run_folder(c).file("checkpoint.pt").write_bytes(b"not a checkpoint")
    assert refused(c).startswith(f"{c / 'checkpoint.pt'} is corrupt (UnpicklingError: ")
    assert refused(c).endswith("); nothing to resume from: use --overwrite to start over")
    d = tmp_path / "d"
    _run_folder(d, summary={"status": "complete", "rows": 9}, ckpt=False)
    assert refused(d) == (f"{d}: weights.pt (missing); metrics.csv (3 of 9 rows), and no checkpoint to rebuild "
                          "from; use --overwrite to start over")
    e = tmp_path / "e"
    _run_folder(e).write_json("summary.json", ["x"])
    with pytest.warns(UserWarning) as w:
        _open(e)
    assert str(w[0].message) == f"{e}: summary.json (not a JSON object); rebuilding from checkpoint.pt"
    f = tmp_path / "f"
    _run_folder(f)
    for name in (".config.json.abcd1234.tmp", ".summary.json.ABCD_678.tmp"):
        (f / name).write_text("half")
    with pytest.warns(UserWarning) as w:
        _open(f)
    head = f"removed 2 temporary file(s) of an interrupted write in {f}: "
    text = str(w[0].message)
    assert text.startswith(head) and sorted(text[len(head):].split(", ")) == [".config.json.abcd1234.tmp",
                                                                             ".summary.json.ABCD_678.tmp"]
    g = tmp_path / "g"
    _run_folder(g, rows=2, ckpt=False)
    with pytest.warns(UserWarning) as w:
        _open(g)
    assert str(w[0].message) == (f"{g} has metrics rows but no checkpoint.pt yet (stopped before the first "
                                 "checkpoint): starting over from the beginning")
    h = tmp_path / "h"
    _run_folder(h, rows=0, ckpt=False)
    (h / "metrics.csv").write_text("step,v\n")  # a header and no rows: nothing to warn about
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _open(h) == (None, False)
    with pytest.raises(RunFolderError) as e:
        _open(tmp_path / "a" / "config.json")
    assert str(e.value) == f"{tmp_path / 'a' / 'config.json'} exists and is not a directory"


def test_json_layout_lock_file_and_depth_folders(tmp_path):
    import fcntl

    from nclab.results import RunLockedError, depth_run_dirs

    atomic_write_json(tmp_path / "x.json", {"a": [1]})
    assert (tmp_path / "x.json").read_text() == '{\n  "a": [\n    1\n  ]\n}\n'
    store = RunStore(tmp_path / "deep" / "er" / "run")
    store.create()  # parents are created
    store.lock()
    umask = os.umask(0)
    os.umask(umask)
    assert (os.stat(store.file(".lock")).st_mode & 0o777) == 0o666 & ~umask
    assert store.file(".lock").read_text() == f"{os.getpid()}\n"
    store.unlock()
    # a holder that wrote no pid yet: "pid unknown"
    fd = os.open(store.file(".lock"), os.O_RDWR)
    os.ftruncate(fd, 0)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(RunLockedError, match=r"in use by another nclab process \(pid unknown\); wait for it to "
                                                 "finish or stop it, or use another output directory"):
            RunStore(store.path).lock()
    finally:
        os.close(fd)
    assert RunStore(tmp_path / "nothing").remove_temp_files() == []
    for name in ("depth-1", "depth-10", "depth-2", "depth-x", "depth-3"):
        (tmp_path / "m" / name).mkdir(parents=True)
        if name != "depth-3":
            (tmp_path / "m" / name / "config.json").write_text("{}")
    assert [p.name for p in depth_run_dirs(tmp_path / "m")] == ["depth-1", "depth-2", "depth-10"]
    assert depth_run_dirs(tmp_path / "none") == []
    (tmp_path / "file").write_text("x")
    assert depth_run_dirs(tmp_path / "file") == []


def test_environment_history_keeps_every_earlier_record(tmp_path):
    store = RunStore(tmp_path)
    for v in ("1", "2", "3"):
        store.write_environment({"python": v})
    env = store.read_json("environment.json")
    assert env == {"python": "3", "previous": [{"python": "1"}, {"python": "2"}]}
    assert store.write_config({"a": 1}, kind="k", version="9") is None
    assert store.read_config() == {"nclab_version": "9", "kind": "k", "config": {"a": 1}}
