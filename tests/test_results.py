"""RunStore: atomic JSON/torch writes, the metrics table (append, torn lines, truncation)."""

import json
import math
import os

import torch

from nclab.results import RunStore, atomic_write_json, config_diff


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


def test_failed_write_leaves_old_file(tmp_path):
    path = tmp_path / "c.json"
    atomic_write_json(path, {"v": 1})

    class Boom:
        def tolist(self):
            raise RuntimeError("boom")

    try:
        atomic_write_json(path, {"v": Boom()})
    except RuntimeError:
        pass
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]


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
