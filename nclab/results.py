"""The run directory: one folder per run, every file written atomically.

Layout::

    run/
      config.json        {"nclab_version", "kind", "config": {...}}  -- what defines the run
      environment.json   nclab.environment.environment() at the start (and resumes, appended)
      metrics.csv        one row per snapshot; header from the first row
      summary.json       status, final metrics, timings (rewritten at the end / on interrupt)
      checkpoint.pt      latest resumable state (torch.save to a temp file, then os.replace)
      weights.pt         final (or last good) parameters
      + any extra JSON (e.g. prediction.json) via write_json

JSON and checkpoints go to a temporary file in the same folder, are flushed, and replace the target with
``os.replace`` (atomic on POSIX): a reader never sees half a file. Metric rows are appended with one
``write`` of complete lines; a torn last line (a crash mid-write) is ignored on reading, and a resume
rewrites the table (temp file + ``os.replace``) truncated to the checkpoint.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import pathlib
import shutil
import tempfile

CONFIG, ENVIRONMENT, METRICS, SUMMARY, CHECKPOINT, WEIGHTS = (
    "config.json", "environment.json", "metrics.csv", "summary.json", "checkpoint.pt", "weights.pt",
)


def _jsonable(obj):
    """Replace non-finite floats by None (strict JSON) and numpy scalars/arrays by Python values."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):
        return _jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


def atomic_write_bytes(path: pathlib.Path, data: bytes) -> None:
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; give the file the mode open() would
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: pathlib.Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(_jsonable(obj), indent=2) + "\n").encode())


def _format(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float):
        return repr(v)  # shortest round-trip repr: reading back gives the same float
    return str(v)


def _parse(v: str):
    if v == "":
        return None
    try:
        return int(v)
    except ValueError:
        pass
    try:
        return float(v)
    except ValueError:
        return v


class RunStore:
    """One run directory (created on demand). Paths are attributes; nothing is cached in memory
    except the metrics header.

    Parameters
    ----------
    path : str or Path, the run directory
    """

    def __init__(self, path):
        self.path = pathlib.Path(path)
        self._header: list[str] | None = None

    # ---------------------------------------------------------------- paths and state
    def file(self, name: str) -> pathlib.Path:
        return self.path / name

    def exists(self) -> bool:
        """True when the folder already holds a run (its config.json)."""
        return self.file(CONFIG).is_file()

    def create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    def clear(self) -> None:
        """Remove the files of a previous run (only those a run writes; other files are left alone)."""
        if not self.path.is_dir():
            return
        for name in (CONFIG, ENVIRONMENT, METRICS, SUMMARY, CHECKPOINT, WEIGHTS):
            p = self.file(name)
            if p.exists():
                p.unlink()
        for p in self.path.glob("*.json"):
            p.unlink()
        fig = self.path / "figures"
        if fig.is_dir():
            shutil.rmtree(fig)

    # ---------------------------------------------------------------- JSON documents
    def write_json(self, name: str, obj) -> None:
        self.create()
        atomic_write_json(self.file(name), obj)

    def read_json(self, name: str):
        with open(self.file(name)) as fh:
            return json.load(fh)

    def write_config(self, config: dict, *, kind: str, version: str) -> None:
        self.write_json(CONFIG, {"nclab_version": version, "kind": kind, "config": config})

    def read_config(self) -> dict:
        return self.read_json(CONFIG)

    def write_environment(self, env: dict) -> None:
        """Record the environment; on a resume the earlier records are kept under "previous"."""
        doc = dict(env)
        if self.file(ENVIRONMENT).is_file():
            old = self.read_json(ENVIRONMENT)
            doc["previous"] = old.pop("previous", []) + [old]
        self.write_json(ENVIRONMENT, doc)

    # ---------------------------------------------------------------- metrics table
    def append_rows(self, rows: list[dict]) -> None:
        """Append complete CSV lines (one write call). The header is fixed by the first row ever written."""
        if not rows:
            return
        self.create()
        path = self.file(METRICS)
        if self._header is None:
            if path.is_file() and path.stat().st_size > 0:
                with open(path, newline="") as fh:
                    self._header = next(csv.reader(fh))
            else:
                self._header = list(rows[0].keys())
                rows = [dict(zip(self._header, self._header))] + rows  # the header line itself
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        for r in rows:
            w.writerow([_format(r.get(k)) for k in self._header])
        with open(path, "a", newline="") as fh:
            fh.write(buf.getvalue())
            fh.flush()

    def read_rows(self) -> list[dict]:
        """All complete rows (a torn last line is dropped); numbers parsed, empty cells -> None."""
        path = self.file(METRICS)
        if not path.is_file():
            return []
        text = path.read_text()
        if text and not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]  # torn last line
        reader = csv.reader(io.StringIO(text))
        try:
            header = next(reader)
        except StopIteration:
            return []
        return [{k: _parse(v) for k, v in zip(header, line)} for line in reader if len(line) == len(header)]

    def truncate_rows(self, max_step: int, key: str = "step") -> list[dict]:
        """Keep the rows with ``row[key] <= max_step`` (rewrite via temp file + os.replace); returns them."""
        rows = [r for r in self.read_rows() if r.get(key) is not None and r[key] <= max_step]
        path = self.file(METRICS)
        if not path.is_file():
            return rows
        with open(path, newline="") as fh:
            header = next(csv.reader(fh), None)
        if header is None:
            return rows
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        for r in rows:
            w.writerow([_format(r.get(k)) for k in header])
        atomic_write_bytes(path, buf.getvalue().encode())
        self._header = header
        return rows

    # ---------------------------------------------------------------- tensors
    def save_torch(self, name: str, obj) -> None:
        import torch

        self.create()
        buf = io.BytesIO()
        torch.save(obj, buf)
        atomic_write_bytes(self.file(name), buf.getvalue())

    def load_torch(self, name: str, map_location="cpu"):
        import torch

        return torch.load(self.file(name), map_location=map_location, weights_only=False)

    def has(self, name: str) -> bool:
        return self.file(name).is_file()


def config_diff(old: dict, new: dict) -> list[str]:
    """Human-readable differences between two config dicts (``field: old -> new``)."""
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


class TensorBoardLogger:
    """Mirror metric rows into TensorBoard event files under ``run_dir/tensorboard`` (optional extra).

    A callable for the trainers' ``callback``: every finite numeric column of a row becomes a scalar
    ``nc/<column>``, at the row's ``epoch`` (real networks) or else its ``step`` (UFM). The CSV stays the record;
    this is a view of it. Needs the ``tensorboard`` package (``pip install nclab[tensorboard]``).
    """

    def __init__(self, run_dir):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # torch raises ImportError when the tensorboard package is missing
            raise ValueError("--tensorboard needs the tensorboard package: pip install tensorboard") from exc
        self.writer = SummaryWriter(log_dir=str(pathlib.Path(run_dir) / "tensorboard"))

    def __call__(self, row: dict) -> None:
        step = row.get("epoch", row.get("step"))  # real networks are tracked per epoch
        step = int(step) if isinstance(step, (int, float)) and math.isfinite(step) else None
        for key, value in row.items():
            if key in ("step", "epoch") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                self.writer.add_scalar(f"nc/{key}", value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_run(out, config: dict, *, kind: str, resume: bool, overwrite: bool, finished: tuple[str, ...]):
    """Apply the resume/overwrite rules of every trainer to the run directory ``out``.

    Returns ``(store, checkpoint or None, done)``: ``done`` is True when ``resume`` finds a run of this
    config whose summary status is one of ``finished`` (load it, don't re-run). A run of another config
    or kind is refused unless ``overwrite``; an existing run is refused unless ``resume`` or ``overwrite``.
    """
    store = RunStore(out)
    if store.path.exists() and not store.path.is_dir():
        raise ValueError(f"{store.path} exists and is not a directory")
    if not store.exists():
        return store, None, False
    old = store.read_config()
    diff = config_diff(old.get("config", {}), config)
    if old.get("kind", kind) != kind:
        diff.insert(0, f"kind: {old.get('kind')!r} -> {kind!r}")
    if overwrite:
        store.clear()
        return store, None, False
    if not resume:
        what = f"a run with another config ({'; '.join(diff)})" if diff else "a run with this config"
        raise ValueError(f"{store.path} already holds {what}; pass --resume to continue it or "
                         "--overwrite to replace it")
    if diff:
        raise ValueError(f"{store.path} holds a run with another config ({'; '.join(diff)}); "
                         "use --overwrite to replace it, or another output directory")
    if store.has(SUMMARY) and store.read_json(SUMMARY).get("status") in finished:
        return store, None, True
    return store, (store.load_torch(CHECKPOINT) if store.has(CHECKPOINT) else None), False
