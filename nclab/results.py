"""The run directory: one folder per run, every file written atomically.

Layout::

    run/
      config.json        {"nclab_version", "kind", "config": {...}}  -- what defines the run
      environment.json   nclab.environment.environment() at the start (and resumes, appended)
      metrics.csv        one row per snapshot; header from the first row
      summary.json       status, final metrics, timings (rewritten at the end / on interrupt)
      checkpoint.pt      latest resumable state (torch.save to a temp file, then os.replace)
      weights.pt         final (or last good) parameters
      prediction.json    nclab.predict for the run's problem
      .lock              the writer's OS lock (holder pid inside)

One writer at a time: a trainer holds an exclusive ``flock`` on ``.lock`` for the whole run (the kernel
releases it when the process dies, however it dies); a second writer is refused with the holder's pid.
The checkpoint carries the metrics rows written so far, so a resume needs only the checkpoint (and
config.json): a truncated or corrupt metrics.csv, summary.json or weights.pt is rebuilt from it, with a
warning naming the file. A file that cannot be rebuilt (config.json, checkpoint.pt) is named in one error
with the way out.

JSON and checkpoints go to a temporary file in the same folder, are flushed, and replace the target with
``os.replace`` (atomic on POSIX): a reader never sees half a file. Metric rows are appended with one
``write`` of complete lines; a torn last line (a crash mid-write) is ignored on reading, and a resume
rewrites the table (temp file + ``os.replace``) truncated to the checkpoint.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
import pathlib
import re
import shutil
import tempfile
import warnings

try:
    import fcntl
except ImportError:  # Windows: no flock; the folder is not locked there
    fcntl = None

CONFIG, ENVIRONMENT, METRICS, SUMMARY, CHECKPOINT, WEIGHTS = (
    "config.json", "environment.json", "metrics.csv", "summary.json", "checkpoint.pt", "weights.pt",
)
PREDICTION, LOCK = "prediction.json", ".lock"
# Every file and folder a run writes: --overwrite removes these and nothing else (the user's notes stay).
OWNED_FILES = (CONFIG, ENVIRONMENT, METRICS, SUMMARY, CHECKPOINT, WEIGHTS, PREDICTION, "grams.json", "restarts.json")
OWNED_DIRS = ("figures", "tensorboard")
_TEMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")  # atomic_write_bytes' mkstemp names
# Config fields that change how a run executes, not its result: a resume may change them.
EXECUTION_FIELDS = ("threads", "checkpoint_every")


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked (corrupt file, another config, no config, ...)."""


class RunLockedError(RunFolderError):
    """Another live process is writing this run folder."""


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


def csv_quote(text: str) -> str:
    """One CSV field as the csv module writes it."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow([text])
    return buf.getvalue()


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


def missing_root(path) -> pathlib.Path | None:
    """The top-most folder of ``path`` (absolute) that does not exist yet (``path`` itself, or an ancestor), None
    if it exists: what :meth:`RunStore.lock` creates and removes again if the run writes nothing there."""
    try:
        path = pathlib.Path(path).absolute()
        if path.exists():
            return None
        top = path
        while not top.parent.exists():
            top = top.parent
        return top
    except (OSError, ValueError, TypeError):  # a name too long, a NUL byte...: open_run says what is wrong
        return None


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
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise RunFolderError(f"{self.path} exists and is not a directory") from None
        except OSError as exc:
            raise RunFolderError(f"cannot create run directory {self.path}: {exc.strerror or exc}") from None

    def clear(self) -> None:
        """Remove the files of a previous run (only those nclab writes; the user's own files stay)."""
        if not self.path.is_dir():
            return
        for name in OWNED_FILES:
            p = self.file(name)
            if p.is_file() or p.is_symlink():
                p.unlink()
        for name in OWNED_DIRS:
            if self.file(name).is_dir():
                shutil.rmtree(self.file(name))
        self.remove_temp_files()

    def remove_temp_files(self) -> list[str]:
        """Delete the temporary files of interrupted atomic writes (``.NAME.XXXXXXXX.tmp``); their names."""
        gone = []
        for p in self.path.iterdir() if self.path.is_dir() else ():
            if _TEMP.match(p.name) and p.is_file():
                p.unlink(missing_ok=True)
                gone.append(p.name)
        return gone

    # ---------------------------------------------------------------- the writer's lock
    def lock(self) -> None:
        """Take the folder's exclusive OS lock for this process (created on demand); RunLockedError if held."""
        if getattr(self, "_lock_fd", None) is not None:
            return
        created = missing_root(self.path)
        self.create()
        try:
            fd = os.open(self.file(LOCK), os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise RunFolderError(f"cannot lock run folder {self.path}: {exc.strerror or exc}") from None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise RunLockedError(f"{self.path} is in use by another nclab process (pid {holder}); wait for "
                                         "it to finish or stop it, or use another output directory") from None
                raise RunFolderError(f"cannot lock run folder {self.path}: {exc.strerror or exc}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd
        self._created = created

    def unlock(self) -> None:
        """Release the lock (also released by the kernel when the process ends). A folder that :meth:`lock` created
        and that still holds nothing but the lock -- a run refused before it wrote anything (a missing dataset,
        CUDA absent) -- is removed first, with the empty parent folders that lock created."""
        fd = getattr(self, "_lock_fd", None)
        if fd is None:
            return
        self._lock_fd = None
        created, self._created = getattr(self, "_created", None), None
        try:
            if created is not None and os.listdir(self.path) == [LOCK]:  # still ours: the lock is held
                os.unlink(self.file(LOCK))
                folder = self.path.absolute()
                while not os.listdir(folder):
                    os.rmdir(folder)
                    if folder == created:
                        break
                    folder = folder.parent
        except OSError:
            pass
        finally:
            os.close(fd)  # closing the last descriptor releases the flock

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
        with open(path, "a+b") as fh:
            end = fh.seek(0, os.SEEK_END)
            if end:  # a torn last line (a crash mid-write) is cut off, not glued to the new row
                fh.seek(end - 1)
                if fh.read(1) != b"\n":
                    fh.seek(0)
                    keep = fh.read().rfind(b"\n") + 1
                    fh.truncate(keep)
                    if keep == 0:  # even the header was torn: write it again
                        buf = io.StringIO(",".join(csv_quote(h) for h in self._header) + "\n" + buf.getvalue())
            fh.seek(0, os.SEEK_END)
            fh.write(buf.getvalue().encode())
            fh.flush()

    def read_rows(self) -> list[dict]:
        """All complete rows (a torn last line is dropped); numbers parsed, empty cells -> None."""
        path = self.file(METRICS)
        if not path.is_file():
            return []
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RunFolderError(f"{path} is unreadable ({_describe(exc)})") from None
        if text and not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]  # torn last line
        reader = csv.reader(io.StringIO(text))
        try:
            header = next(reader)
        except StopIteration:
            return []
        return [{k: _parse(v) for k, v in zip(header, line)} for line in reader if len(line) == len(header)]

    def write_rows(self, rows: list[dict]) -> None:
        """Replace the table by ``rows`` (temp file + os.replace); the header is the first row's keys."""
        self.create()
        buf = io.StringIO()
        header = list(rows[0].keys()) if rows else []
        w = csv.writer(buf, lineterminator="\n")
        if rows:
            w.writerow(header)
        for r in rows:
            w.writerow([_format(r.get(k)) for k in header])
        atomic_write_bytes(self.file(METRICS), buf.getvalue().encode())
        self._header = header or None

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


class RunLock:
    """``with RunLock(path):`` holds the run folder's writer lock (see :meth:`RunStore.lock`)."""

    def __init__(self, path):
        self.store = RunStore(path)

    def __enter__(self) -> RunLock:
        self.store.lock()
        return self

    def __exit__(self, *exc) -> None:
        self.store.unlock()


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


def resume_rows(store: RunStore, ckpt: dict, key: str = "step") -> list[dict]:
    """The metrics rows up to the checkpoint ``ckpt`` (at ``ckpt[key]``), with metrics.csv rewritten to them.

    From the checkpoint's own copy when it has one; else (older checkpoints) from metrics.csv, refused with
    a RunFolderError naming it when rows are missing (no silent gap in the history).
    """
    if ckpt.get("rows") is not None:
        rows = list(ckpt["rows"])
        store.write_rows(rows)
        return rows
    rows = store.truncate_rows(int(ckpt[key]), key=key)
    steps = [r.get(key) for r in rows]
    if not rows or steps[0] != 0 or steps[-1] != ckpt[key] or any(b <= a for a, b in zip(steps, steps[1:])):
        raise RunFolderError(f"{store.file(METRICS)} lacks rows up to the checkpoint ({key} {ckpt[key]}); the "
                             "history cannot be rebuilt: use --overwrite to start over")
    return rows


def depth_run_dirs(out) -> list[pathlib.Path]:
    """The ``out/depth-M`` run folders (with a config.json) of a multi-depth run, by increasing M."""
    root = pathlib.Path(out)
    found = [p for p in root.glob("depth-*") if p.name[6:].isdigit() and (p / CONFIG).is_file()] \
        if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name[6:]))


def identity(config: dict) -> dict:
    """The part of a config that determines the run's result (execution-only fields dropped; ``cuda:N``
    and ``cuda`` are the same device for the result)."""
    out = {k: v for k, v in config.items() if k not in EXECUTION_FIELDS}
    if isinstance(out.get("device"), str) and out["device"].startswith("cuda"):
        out["device"] = "cuda"
    return out


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def read_saved_config(out, kind: str | None = None) -> dict | None:
    """The ``config`` dict saved in run folder ``out`` (None when it holds no config.json).

    Raises RunFolderError naming config.json when it is unreadable, not a config, or of another ``kind``.
    """
    store = RunStore(out)
    if not store.exists():
        return None
    try:
        doc = store.read_json(CONFIG)
        if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
            raise ValueError("not an nclab config document")
    except (OSError, ValueError) as exc:
        raise RunFolderError(f"{store.file(CONFIG)} is corrupt ({_describe(exc)}); use --overwrite to start over "
                             "(it deletes the run's files)") from None
    if kind is not None and doc.get("kind", kind) != kind:
        raise RunFolderError(f"{store.path} holds a {doc.get('kind')!r} run, not a {kind!r} run; use --overwrite to "
                             "replace it, or another output directory")
    return doc["config"]


def _load_checkpoint(store: RunStore):
    try:
        ckpt = store.load_torch(CHECKPOINT)
        if not isinstance(ckpt, dict):
            raise ValueError("not an nclab checkpoint")
        return ckpt
    except Exception as exc:  # torch.load raises EOFError, UnpicklingError, RuntimeError, ... on damage
        raise RunFolderError(f"{store.file(CHECKPOINT)} is corrupt ({_describe(exc)}); nothing to resume from: use "
                             "--overwrite to start over") from None


def _readable(store: RunStore, name: str) -> str | None:
    """None when file ``name`` loads, else why not."""
    try:
        if name.endswith(".json"):
            doc = store.read_json(name)
            if not isinstance(doc, dict):
                return "not a JSON object"
        else:
            store.load_torch(name)
    except Exception as exc:
        return _describe(exc)
    return None


def open_run(out, config: dict, *, kind: str, resume: bool, overwrite: bool, finished: tuple[str, ...],
             defaults: dict | None = None):
    """Lock the run directory ``out`` for this process and apply the resume/overwrite rules of every trainer.

    Returns ``(store, checkpoint or None, done)`` with ``store`` locked (call ``store.unlock()`` when the run
    ends): ``done`` is True when ``resume`` finds a finished run of this config (load it, don't re-run).
    The checkpoint, when resuming, has ``ckpt["rows"]``: the metrics rows up to it (metrics.csv is
    rewritten from them). Refused with a RunFolderError that names the cause: another live writer, a run
    of another config or kind (execution-only fields such as ``threads`` may differ), an existing run
    without ``resume`` or ``overwrite``, run files without config.json, a corrupt config.json or
    checkpoint.pt. Temporary files of interrupted writes are removed. ``defaults``: values of config fields
    that runs of older versions did not record.
    """
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out must be a path (str or os.PathLike), got {type(out).__name__}")
    store = RunStore(out)
    if str(out).strip() == "":
        raise RunFolderError("the run directory must not be empty")
    try:
        if store.path.exists() and not store.path.is_dir():
            raise RunFolderError(f"{store.path} exists and is not a directory")
    except OSError as exc:  # e.g. a name too long
        raise RunFolderError(f"cannot use run directory {store.path}: {exc.strerror or exc}") from None
    store.lock()
    try:
        return _open_locked(store, config, kind=kind, resume=resume, overwrite=overwrite, finished=finished,
                            defaults=defaults or {})
    except BaseException:
        store.unlock()
        raise


def _open_locked(store: RunStore, config: dict, *, kind, resume, overwrite, finished, defaults):
    removed = store.remove_temp_files()
    if removed:
        warnings.warn(f"removed {len(removed)} temporary file(s) of an interrupted write in {store.path}: "
                      f"{', '.join(removed)}", stacklevel=3)
    if overwrite:
        store.clear()
        return store, None, False
    leftovers = [n for n in (CHECKPOINT, METRICS, WEIGHTS, SUMMARY) if store.has(n)]
    if not store.exists():
        if leftovers:
            raise RunFolderError(f"{store.path} holds {', '.join(leftovers)} but no config.json, so the run they "
                                 "belong to is unknown; restore config.json, or use --overwrite to start over (it "
                                 "deletes them)")
        return store, None, False
    old = {**{k: v for k, v in defaults.items() if k in config}, **read_saved_config(store.path)}
    old_kind = store.read_json(CONFIG).get("kind", kind)
    diff = config_diff(identity(old), identity(config))
    if old_kind != kind:
        diff.insert(0, f"kind: {old_kind!r} -> {kind!r}")
    if not resume:
        what = f"a run with another config ({'; '.join(diff)})" if diff else "a run with this config"
        raise RunFolderError(f"{store.path} already holds {what}; pass --resume to continue it or "
                             "--overwrite to replace it")
    if diff:
        raise RunFolderError(f"{store.path} holds a run with another config ({'; '.join(diff)}); use --overwrite to "
                             "replace it, or another output directory")
    ckpt = _load_checkpoint(store) if store.has(CHECKPOINT) else None
    if store.has(SUMMARY):
        bad = _readable(store, SUMMARY)
        summary = None if bad else store.read_json(SUMMARY)
        bad = bad and f"{SUMMARY} ({bad})"
        if summary is not None and summary.get("status") in finished:
            problems = [f"{n} ({why})" for n in (WEIGHTS,) if (why := "missing" if not store.has(n)
                                                             else _readable(store, n))]
            rows = store.read_rows()
            if isinstance(summary.get("rows"), int) and len(rows) != summary["rows"]:
                problems.append(f"{METRICS} ({len(rows)} of {summary['rows']} rows)")
            if not problems:
                return store, None, True
            bad = "; ".join(problems)
        if bad:
            if ckpt is None or "rows" not in ckpt:
                raise RunFolderError(f"{store.path}: {bad}, and no checkpoint to rebuild from; use --overwrite to "
                                     "start over")
            warnings.warn(f"{store.path}: {bad}; rebuilding from {CHECKPOINT}", stacklevel=3)
    if ckpt is None:
        if store.has(METRICS) and store.read_rows():
            warnings.warn(f"{store.path} has metrics rows but no {CHECKPOINT} yet (stopped before the first "
                          "checkpoint): starting over from the beginning", stacklevel=3)
        return store, None, False
    if "rows" not in ckpt:  # a checkpoint of nclab <= 0.1.0: its rows come from metrics.csv
        ckpt["rows"] = None
    return store, ckpt, False
