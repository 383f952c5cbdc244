"""Grids of experiments: a TOML sweep file -> one run directory per grid point, run in parallel, resumable.

A sweep file::

    kind = "simulate"            # or "train" (nclab.experiments.train)
    name = "depths"              # optional; default: the file's stem
    [base]                       # fixed options: any keyword of make_config / make_train_config
    counts = [200, 100, 50, 50]
    optimizer = "lbfgs"
    steps = 300
    [grid]                       # cartesian product, in file order (the last key varies fastest)
    depth = [1, 3, 6]
    lambda_w = [5e-4, 1e-3]
    seed = [0, 1]
    [[runs]]                     # optional explicit runs (base + this table), after the grid
    name = "wide"                # optional run-directory name
    depth = 3
    widths = 256

Output folder::

    OUT/sweep.json               manifest: the spec and every run's status (rewritten atomically)
    OUT/depth=3,lambda_w=0.001,seed=1/   a run directory (nclab.results layout)
    OUT/report.html              one report for the whole sweep (when nclab.report is available)

Every run's config is built before anything runs, so a bad option fails at once, naming its run. Runs whose
summary says they finished (complete, converged, diverged) are skipped; any other run is started with
``resume=True``, so re-running an interrupted sweep completes it. A failing run is recorded, not fatal.

Simulate runs of one shape (:func:`nclab.ufm.batched.batch_key`: K, N, widths, bias, loss, SGD or Adam, steps,
schedule, intervals; seeds, lambdas, lr, init and counts may differ) are batched: each worker trains its share of
such a group as one :func:`nclab.ufm.batched.simulate_batch` (``batch=False`` / ``--no-batch``: one by one). Every
run folder is as an unbatched run writes it (metrics equal to round-off); ``sweep.json`` records ``batch``, the
number of runs trained together.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import hashlib
import inspect
import itertools
import json
import multiprocessing
import os
import pathlib
import re
import signal
import time
import traceback
import typing
from collections.abc import Callable
from dataclasses import dataclass, field

from nclab.environment import die_with_parent as _die_with_parent
from nclab.results import CONFIG, SUMMARY, atomic_write_json, config_diff

KINDS = ("simulate", "train")
BACKENDS = ("local", "ray")
FINISHED = ("complete", "converged", "diverged", "finished")  # summary statuses that need no more work
TOP_KEYS = ("kind", "name", "description", "base", "grid", "runs")
MANIFEST = "sweep.json"
_SAFE = re.compile(r"[^A-Za-z0-9._,=+-]")


# ---------------------------------------------------------------------------------------------- the spec
@dataclass(frozen=True)
class SweepSpec:
    """A parsed, structurally checked sweep file (options are checked by :func:`expand_sweep`)."""

    kind: str  # "simulate" or "train"
    name: str  # sweep name (default output folder runs/<name>)
    base: dict  # options shared by every run
    grid: dict  # option -> list of values (cartesian product, insertion order)
    runs: tuple = ()  # explicit runs: dicts of options over base (key "name": the run-directory name)
    description: str = ""
    source: str | None = None  # the file it came from

    def to_dict(self) -> dict:
        return {"kind": self.kind, "name": self.name, "description": self.description, "base": self.base,
                "grid": self.grid, "runs": [dict(r) for r in self.runs], "source": self.source}

    @classmethod
    def from_dict(cls, d: dict, *, source: str | None = None, default_name: str = "sweep") -> SweepSpec:
        where = f"{source}: " if source else ""
        if not isinstance(d, dict):
            raise ValueError(f"{where}a sweep must be a table of kind, name, base, grid, runs")
        unknown = [k for k in d if k not in TOP_KEYS]
        if unknown:
            raise ValueError(f"{where}unknown top-level key(s) {unknown}; a sweep has {', '.join(TOP_KEYS)} "
                             "(options go under [base], [grid] or [[runs]])")
        kind = d.get("kind", "simulate")
        if kind not in KINDS:
            raise ValueError(f"{where}kind must be \"simulate\" or \"train\", got {kind!r}")
        name = d.get("name", default_name)
        if not isinstance(name, str) or not name.strip() or _SAFE.search(name) or name.startswith("."):
            raise ValueError(f"{where}name must be a folder name (letters, digits, . _ - = , +), got {name!r}")
        base, grid, runs = d.get("base", {}), d.get("grid", {}), d.get("runs", [])
        if not isinstance(base, dict):
            raise ValueError(f"{where}[base] must be a table of options, got {base!r}")
        if not isinstance(grid, dict):
            raise ValueError(f"{where}[grid] must be a table of option = [values], got {grid!r}")
        for key, values in grid.items():
            if not isinstance(values, list):
                raise ValueError(f"{where}grid value of {key!r} must be a list of values, got {values!r} "
                                 f"(write {key} = [{_toml(values)}])")
            if not values:
                raise ValueError(f"{where}grid value of {key!r} is an empty list: the grid would have no runs")
            dups = [v for i, v in enumerate(values) if _hashable(v) in map(_hashable, values[:i])]
            if dups:
                raise ValueError(f"{where}grid value of {key!r} repeats {dups[0]!r}")
            if key in base:
                raise ValueError(f"{where}{key!r} is both in [base] and in [grid]; keep it in one")
        if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
            raise ValueError(f"{where}runs must be an array of tables ([[runs]] entries)")
        if not grid and not runs:
            raise ValueError(f"{where}the sweep is empty: [grid] has no parameters and there is no [[runs]] entry "
                             "(e.g. [grid] seed = [0, 1, 2])")
        return cls(kind=kind, name=name, base=dict(base), grid=dict(grid), runs=tuple(dict(r) for r in runs),
                   description=str(d.get("description", "")), source=source)


@dataclass(frozen=True)
class SweepRun:
    """One expanded run: its directory name, the options that vary, all options, the validated config."""

    name: str
    params: dict  # what distinguishes this run (its grid point or [[runs]] entry)
    options: dict  # base + params (+ threads = 1): keyword arguments of make_config / make_train_config
    config: object = field(repr=False, compare=False, default=None)


def _hashable(v):
    return json.dumps(v, sort_keys=True, default=str)


def _toml(v) -> str:
    return json.dumps(v, default=str) if not isinstance(v, bool) else str(v).lower()


def load_sweep(path) -> SweepSpec:
    """Read a sweep file (TOML) into a :class:`SweepSpec`; every problem is one ``ValueError``."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise ValueError("reading sweep files needs Python >= 3.11 or the tomli package "
                             "(pip install tomli)") from None
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"sweep file {str(path)!r} does not exist" if not path.exists()
                         else f"sweep file {str(path)!r} is not a file")
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not valid TOML (not UTF-8 text)") from None
    return SweepSpec.from_dict(doc, source=str(path), default_name=_SAFE.sub("_", path.stem) or "sweep")


def _as_spec(spec_or_path) -> SweepSpec:
    if isinstance(spec_or_path, SweepSpec):
        return spec_or_path
    if isinstance(spec_or_path, dict):
        return SweepSpec.from_dict(spec_or_path)
    if isinstance(spec_or_path, (str, os.PathLike)):
        return load_sweep(spec_or_path)
    raise ValueError(f"a sweep is a SweepSpec, a dict or a path to a TOML file, got {type(spec_or_path).__name__}")


# ---------------------------------------------------------------------------------------------- expansion
def _entry_points(kind: str):
    """(make_config, run) of a kind, imported lazily (``train`` lives in another module of this package)."""
    if kind == "simulate":
        from nclab.ufm import make_config, simulate

        return make_config, simulate
    try:
        import nclab.experiments as pkg

        train, make = getattr(pkg, "train", None), getattr(pkg, "make_train_config", None)
        if inspect.ismodule(train):  # nclab/experiments/train.py without a re-export
            train, make = getattr(train, "train", None), make or getattr(train, "make_train_config", None)
    except ImportError:
        train = make = None
    if not callable(train) or not callable(make):
        raise ValueError('kind = "train" needs nclab.experiments.train and make_train_config, which this '
                         'installation of nclab does not have')
    return make, train


def _option_names(make) -> set[str] | None:
    """Keyword names a config builder accepts: its parameters, and with ``**options`` the fields of the
    dataclass it returns (None: unknown, left to the builder's own check)."""
    params = inspect.signature(make).parameters.values()
    names = {p.name for p in params if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        try:
            ret = typing.get_type_hints(make).get("return")
        except Exception:
            return None
        if not dataclasses.is_dataclass(ret):
            return None
        names |= {f.name for f in dataclasses.fields(ret)}
    return names


def _check_names(keys, accepted: set[str] | None, kind: str, where: str) -> None:
    if accepted is None:
        return
    for key in keys:
        if key not in accepted:
            close = difflib.get_close_matches(key, sorted(accepted), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown {kind} parameter {key!r} in {where}{hint} (accepted: "
                             f"{', '.join(sorted(accepted))})")


def _fmt(v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return repr(v)  # shortest round trip: 0.001, 1e-05
    if isinstance(v, (list, tuple)):
        return "_".join(_fmt(x) for x in v)
    if isinstance(v, dict):
        return "_".join(f"{k}-{_fmt(x)}" for k, x in v.items())
    return str(v)


def run_name(params: dict) -> str:
    """Readable, deterministic directory name: ``depth=3,lambda_w=0.001,seed=1`` (unsafe characters -> _;
    names over 120 characters are cut and end in a hash of the full name)."""
    name = _SAFE.sub("_", ",".join(f"{k}={_fmt(v)}" for k, v in params.items()))
    if len(name) > 120:
        name = name[:110] + "~" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return name


def expand_sweep(spec) -> list[SweepRun]:
    """Every run of a sweep, each with its config built (validated) up front.

    Parameters
    ----------
    spec : SweepSpec, dict (the TOML document) or path of a sweep file

    Returns
    -------
    list of SweepRun, grid points first (file order, the last grid key fastest), then the [[runs]] entries.
    Raises one ``ValueError`` naming the offending run for any bad option.
    """
    spec = _as_spec(spec)
    make, _ = _entry_points(spec.kind)
    accepted = _option_names(make)
    _check_names(spec.base, accepted, spec.kind, "[base]")
    _check_names(spec.grid, accepted, spec.kind, "[grid]")
    points = []
    if spec.grid:
        keys = list(spec.grid)
        points += [(None, dict(zip(keys, values))) for values in itertools.product(*spec.grid.values())]
    for i, entry in enumerate(spec.runs, 1):
        entry = dict(entry)
        name = entry.pop("name", None)
        _check_names(entry, accepted, spec.kind, f"[[runs]] entry {i}")
        if name is not None and (not isinstance(name, str) or not name or _SAFE.search(name) or name[0] == "."):
            raise ValueError(f"[[runs]] entry {i}: name must be a folder name (letters, digits, . _ - = , +), "
                             f"got {name!r}")
        points.append((name or (run_name(entry) if entry else f"run-{i}"), entry))
    points = [(name or run_name(params), params) for name, params in points]
    names = [name for name, _ in points]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ValueError(f"two runs would share the run directory {name!r}; give the [[runs]] entries "
                             "distinct names")
    runs, seen_configs = [], {}
    for name, params in points:
        options = {**spec.base, **params}
        if accepted is not None and "threads" in accepted and "threads" not in options:
            options["threads"] = 1  # one thread per run: the workers are the parallelism
        try:
            config = make(**options)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"run {name}: {exc}") from None
        key = _hashable(config.to_dict()) if hasattr(config, "to_dict") else None
        if key is not None and key in seen_configs:
            raise ValueError(f"runs {seen_configs[key]!r} and {name!r} have the same configuration")
        if key is not None:
            seen_configs[key] = name
        runs.append(SweepRun(name=name, params=params, options=options, config=config))
    return runs


# ---------------------------------------------------------------------------------------------- one run
_STOP = None  # in a local worker: the sweep's stop Event (set on Ctrl-C in the parent)
def _init_worker(stop_event, parent_pid: int | None = None) -> None:
    global _STOP
    if parent_pid is not None:
        _die_with_parent(parent_pid)
    _STOP = stop_event
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; a run's own handler takes over in a run
    import torch

    torch.set_num_threads(1)


LOCK_WAIT = 5.0  # seconds a run waits for its folder's lock (a killed sweep's worker may still be ending)


def _lock_error():
    """nclab.results.RunLockedError (another live process writes the run folder), or None where missing."""
    import nclab.results

    return getattr(nclab.results, "RunLockedError", None)


def _stop_check(row) -> None:
    if _STOP is not None and _STOP.is_set():
        raise KeyboardInterrupt  # the trainer stops at this snapshot boundary, checkpointed


def _run_one(kind: str, options: dict, run_dir: str, lock_wait: float = LOCK_WAIT) -> dict:
    """Run (or resume) one run in this process; never raises for a failing run. A run folder locked by another
    process is waited for up to ``lock_wait`` seconds, then recorded as failed (``locked``)."""
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    out = {"status": "failed", "message": "", "step": None}
    locked = _lock_error()
    try:
        make, run = _entry_points(kind)
        config = make(**options)
        deadline = time.monotonic() + lock_wait
        while True:
            try:
                r = run(config, out=run_dir, resume=True, callback=_stop_check)
                break
            except Exception as exc:  # a stale writer that is ending: wait a little for its lock
                if locked is None or not isinstance(exc, locked) or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        out.update(status=getattr(r, "status", None), message=getattr(r, "message", "") or "",
                   step=getattr(r, "step", None))
    except KeyboardInterrupt:
        started = (pathlib.Path(run_dir) / CONFIG).is_file()
        out.update(status="interrupted" if started else "pending", message="interrupted; rerun the sweep to continue")
    except Exception as exc:
        if locked is not None and isinstance(exc, locked):  # another process writes this run: not ours to touch
            out.update(status="failed", locked=True, message=str(exc))
        else:
            out.update(status="failed", message=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
    summary = pathlib.Path(run_dir) / SUMMARY
    if summary.is_file() and out["status"] != "failed":
        try:
            s = json.loads(summary.read_text())
            out["status"] = s.get("status") or out["status"]
            out["step"] = s.get("step", out["step"])
        except (OSError, ValueError):
            pass
    out["seconds"] = time.perf_counter() - t0
    return out


# ---------------------------------------------------------------------------------------------- batches
MIN_BATCH = 2  # a worker's share of a compatible group trains as one batch from this many runs


def batch_groups(runs: list[SweepRun], workers: int) -> list[list[int]]:
    """Indices into ``runs``, one list per job: simulate runs the batched engine can train together
    (:func:`nclab.ufm.batched.batch_key`, SGD or Adam, the linear UFM) are grouped, and each group is split
    into at most ``workers`` near-equal chunks (the workers still run in parallel); a chunk smaller than
    :data:`MIN_BATCH`, and every other run, is a job of its own. Jobs keep the runs' order."""
    from nclab.ufm.batched import batch_key

    groups: dict = {}
    for i, run in enumerate(runs):
        cfg = run.config
        ok = getattr(cfg, "optimizer", None) in ("sgd", "adam") and getattr(cfg, "activation", None) == "identity"
        groups.setdefault(batch_key(cfg) if ok else ("single", i), []).append(i)
    jobs = []
    for members in groups.values():
        n = min(workers, len(members))
        for c in range(n):
            chunk = members[c * len(members) // n : (c + 1) * len(members) // n]
            jobs += [chunk] if len(chunk) >= MIN_BATCH else [[i] for i in chunk]
    return sorted(jobs)


def _batch_stop_check(index, row) -> None:
    _stop_check(row)


def _run_batch(options_list: list, run_dirs: list, lock_wait: float = LOCK_WAIT) -> list[dict]:
    """Run (or resume) compatible simulate runs as one batch (:func:`nclab.ufm.batched.simulate_batch`), each
    in its own folder as if run alone; one outcome dict per run (``batch``: how many trained together). If the
    batch cannot start or fails (a locked folder, an unusable checkpoint...), the runs go one by one through
    :func:`_run_one`, so each failure is recorded for its own run."""
    import torch

    from nclab.ufm import make_config
    from nclab.ufm.batched import simulate_batch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    outs = [{"status": "failed", "message": "", "step": None, "batch": len(run_dirs)} for _ in run_dirs]
    try:
        configs = [make_config(**o) for o in options_list]
        res = simulate_batch(configs, run_dirs, resume=True, callback=_batch_stop_check, workers=1)
        for out, r in zip(outs, res):
            out.update(status=r.status, message=r.message or "", step=r.step)
    except KeyboardInterrupt:
        for out, run_dir in zip(outs, run_dirs):
            started = (pathlib.Path(run_dir) / CONFIG).is_file()
            out.update(status="interrupted" if started else "pending",
                       message="interrupted; rerun the sweep to continue")
            summary = pathlib.Path(run_dir) / SUMMARY
            try:  # a run that finished in the batch before the interrupt stays finished
                s = json.loads(summary.read_text()) if summary.is_file() else {}
            except (OSError, ValueError):
                s = {}
            if s.get("status") in FINISHED:
                out.update(status=s["status"], step=s.get("step"), message=s.get("message", ""))
            elif started:
                out["step"] = s.get("step")
    except Exception:  # one by one: each run's own failure (or success) is recorded
        return [dict(_run_one("simulate", o, d, lock_wait), batch=1) for o, d in zip(options_list, run_dirs)]
    seconds = time.perf_counter() - t0
    for out in outs:
        out["seconds"] = seconds / len(outs)  # the run's share of the batch
    return outs


# ---------------------------------------------------------------------------------------------- the sweep
@dataclass
class SweepResult:
    """Outcome of :func:`run_sweep`.

    Attributes
    ----------
    out : Path, the sweep folder (``sweep.json`` in it)
    spec : SweepSpec
    runs : list of dict, one manifest entry per run: name, dir, params, status, reused, step, seconds, message
    report : Path of the sweep's HTML report, or None
    report_message : str, what happened to the report
    dry_run : bool, nothing was run or written
    """

    out: pathlib.Path
    spec: SweepSpec
    runs: list
    report: pathlib.Path | None = None
    report_message: str = ""
    dry_run: bool = False

    @property
    def failed(self) -> list[str]:
        return [r["name"] for r in self.runs if r["status"] == "failed"]

    @property
    def finished(self) -> list[str]:
        return [r["name"] for r in self.runs if r["status"] in FINISHED]

    @property
    def ok(self) -> bool:
        return not self.dry_run and len(self.finished) == len(self.runs) and not self.report_message.startswith(
            "report failed")


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _plan(runs: list[SweepRun], out: pathlib.Path) -> list[dict]:
    """Manifest entries; a run directory holding another config is an error, found before anything runs."""
    import nclab.results

    identity = getattr(nclab.results, "identity", lambda config: config)  # the fields that define the result
    entries = []
    for run in runs:
        d = out / run.name
        entry = {"name": run.name, "dir": run.name, "params": run.params, "status": "pending", "reused": False,
                 "step": None, "seconds": None, "message": ""}
        if (d / CONFIG).is_file():
            try:
                old = json.loads((d / CONFIG).read_text()).get("config", {})
            except (OSError, ValueError) as exc:
                raise ValueError(f"{d / CONFIG} is unreadable ({exc}); remove the run directory") from None
            new = json.loads(json.dumps(run.config.to_dict())) if hasattr(run.config, "to_dict") else old
            diff = config_diff(identity(old), identity(new))  # e.g. threads may differ: same result
            if diff:
                raise ValueError(f"{d} holds a run with another config ({'; '.join(diff)}); use another --out "
                                 "or remove that run directory")
        if (d / SUMMARY).is_file():
            try:
                s = json.loads((d / SUMMARY).read_text())
            except (OSError, ValueError):
                s = {}
            if s.get("status") in FINISHED:
                entry.update(status=s["status"], reused=True, step=s.get("step"), message=s.get("message", ""))
            elif s.get("status"):
                entry.update(status=s["status"], step=s.get("step"))
        entries.append(entry)
    return entries


def run_sweep(
    spec_or_path,
    out=None,
    *,
    workers: int | None = None,
    backend: str = "local",
    report: bool = True,
    dry_run: bool = False,
    address: str | None = None,
    callback: Callable[[dict, int, int], None] | None = None,
    batch: bool = True,
) -> SweepResult:
    """Run every run of a sweep that is not finished yet; then one report for the whole sweep.

    Parameters
    ----------
    spec_or_path : SweepSpec, dict (a parsed sweep file) or path of a TOML sweep file
    out : sweep folder, default ``runs/<sweep name>`` (the same folder on a rerun resumes the sweep)
    workers : parallel runs, default min(CPU count, runs to do); each run uses one thread
    backend : "local" (worker processes, spawned) or "ray" (one Ray task per run; needs ``ray``)
    report : build ``out/report.html`` with ``nclab.report.build_report`` (skipped if that is missing)
    dry_run : validate and plan only; nothing is run or written
    address : Ray cluster address (default: $RAY_ADDRESS, else a local Ray with ``workers`` CPUs). The sweep
        folder must then be on a file system every node sees.
    callback : called as ``callback(entry, done, total)`` after each run ends (entry: its manifest dict)
    batch : simulate runs of one shape (K, N, widths, bias, loss, SGD or Adam, steps, schedule, snapshot and
        checkpoint intervals; seeds, lambdas, lr, init and counts may differ) are trained together by the batched
        engine (:func:`nclab.ufm.batched.simulate_batch`), each worker taking a share of a group as one batch;
        each run folder is as an unbatched run writes it (objective equal to round-off). The manifest entry's
        ``batch`` is the number of runs trained together. False: every run on its own.

    Returns
    -------
    SweepResult. Ctrl-C stops the running runs at their next snapshot (checkpointed), records them in
    ``sweep.json`` and re-raises KeyboardInterrupt; the same call again completes the sweep.

    Notes
    -----
    The local backend spawns its workers (no fork: safe with torch threads and CUDA), so a script that calls
    ``run_sweep`` must do it under ``if __name__ == "__main__":``.
    """
    from nclab import __version__

    spec = _as_spec(spec_or_path)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    if backend == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ValueError("--backend ray needs the ray package, which is not installed (pip install ray); "
                             "or use the local backend") from None
    runs = expand_sweep(spec)
    out = pathlib.Path(out if out is not None else pathlib.Path("runs") / spec.name)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {out} exists and is not a directory")
    if out.is_dir() and any(p.name != ".lock" for p in out.iterdir()) and not (out / MANIFEST).is_file():
        if not any((out / r.name).is_dir() for r in runs):
            raise ValueError(f"output {out} is a non-empty folder that holds no sweep; choose another --out")
    entries = _plan(runs, out)
    result = SweepResult(out=out, spec=spec, runs=entries, dry_run=dry_run)
    if dry_run:
        return result
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot write the sweep to {out}: {exc.strerror or exc}") from None
    with _sweep_lock(out):  # one sweep process per folder (its runs are locked by the runs themselves)
        result.runs = entries = _plan(runs, out)  # again: another sweep may have finished runs meanwhile
        manifest = {"nclab_version": __version__, "name": spec.name, "kind": spec.kind, "spec": spec.to_dict(),
                    "backend": backend, "workers": None, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "updated": None, "runs": entries, "report": None}

        def save() -> None:
            manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            atomic_write_json(out / MANIFEST, manifest)

        try:
            save()
        except OSError as exc:
            raise ValueError(f"cannot write the sweep to {out}: {exc.strerror or exc}") from None

        todo = [(run, e) for run, e in zip(runs, entries) if e["status"] not in FINISHED]
        wanted = workers or _cpu_count()
        if batch and spec.kind == "simulate":
            job_runs = [[todo[i] for i in job] for job in batch_groups([run for run, _ in todo], wanted)]
        else:
            job_runs = [[t] for t in todo]
        n_workers = max(1, min(wanted, len(job_runs) or 1))
        manifest["workers"] = n_workers
        finished_before = len(entries) - len(todo)
        done = [finished_before]

        def record(entry: dict, res: dict) -> None:
            entry.pop("traceback", None)
            entry.pop("locked", None)
            entry.update({k: res[k] for k in ("status", "step", "seconds", "message", "batch") if k in res})
            for key in ("traceback", "locked"):
                if res.get(key):
                    entry[key] = res[key]
            done[0] += 1
            save()
            if callback is not None:
                callback(entry, done[0], len(entries))

        if todo:
            jobs = [(spec.kind, [run.options for run, _ in job], [str((out / run.name).resolve()) for run, _ in job],
                     [entry for _, entry in job]) for job in job_runs]
            try:
                if backend == "local":
                    _run_local(jobs, n_workers, record)
                else:
                    _run_ray(jobs, n_workers, address, record)
            except KeyboardInterrupt:
                for entry in entries:
                    if entry["status"] in ("pending", "running"):
                        entry["status"] = "interrupted" if (out / entry["dir"] / CONFIG).is_file() else "pending"
                save()
                raise
        if report:
            run_dirs = [out / e["dir"] for e in entries if e["status"] in FINISHED]
            result.report, result.report_message = _build_report(run_dirs, out)
            manifest["report"] = result.report.name if result.report is not None else None
            save()
    return result


@contextlib.contextmanager
def _sweep_lock(out: pathlib.Path):
    """Hold ``out/.lock`` (nclab.results.RunLock) while a sweep writes its folder: a second sweep on the same
    folder is refused with the holder's pid. Released by the kernel when the sweep process dies."""
    import nclab.results

    lock = getattr(nclab.results, "RunLock", None)
    if lock is None:  # an nclab without run locks
        yield
        return
    locked = getattr(nclab.results, "RunLockedError", ())
    try:
        held = lock(out)
        held.__enter__()
    except locked as exc:
        raise ValueError(f"sweep folder {exc}") from None
    try:
        yield
    finally:
        held.__exit__(None, None, None)


def _run_local(jobs: list, workers: int, record: Callable) -> None:
    """A pool of spawned worker processes. Ctrl-C (anywhere in here) sets a shared Event that stops every
    run at its next snapshot (checkpointed) and cancels the runs not started; the runs still going are
    waited for and recorded, then KeyboardInterrupt is re-raised. A second Ctrl-C stops waiting."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    pool, futures, interrupted, hard = None, {}, False, False
    try:
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                   initargs=(stop, os.getpid()))
        for kind, options, run_dirs, entries in jobs:
            if len(entries) == 1:
                fut = pool.submit(_run_one, kind, options[0], run_dirs[0], LOCK_WAIT)
            else:
                fut = pool.submit(_run_batch, options, run_dirs, LOCK_WAIT)
            futures[fut] = entries
            for entry in entries:
                entry["status"] = "running"
        pending = set(futures)
        while pending:
            try:
                wait(pending, return_when=FIRST_COMPLETED)
                for f in [f for f in pending if f.done()]:
                    if f.cancelled():
                        for entry in futures[f]:
                            entry["status"] = "pending"
                    else:
                        _record_job(futures[f], f.result, record)
                    pending.discard(f)
            except KeyboardInterrupt:
                if interrupted:
                    hard = True
                    raise
                interrupted = True
                stop.set()
                for f in pending:
                    f.cancel()
    except KeyboardInterrupt:
        if not interrupted:  # while the pool was being set up
            interrupted = True
            stop.set()
        else:
            hard = True
    finally:
        if pool is not None:
            pool.shutdown(wait=not hard, cancel_futures=True)
    if interrupted:
        raise KeyboardInterrupt


def _same(x):
    return x


def _record_job(entries: list, result: Callable, record: Callable) -> None:
    """Record a job's outcome for each of its runs (``result()``: a dict, or a list for a batch)."""
    try:
        res = result()
    except Exception as exc:  # a worker died (BrokenProcessPool), or the result did not pickle
        res = {"status": "failed", "message": f"{type(exc).__name__}: {exc}"}
    outcomes = res if isinstance(res, list) else [res] * len(entries)
    for entry, outcome in zip(entries, outcomes):
        record(entry, {"batch": len(entries), **outcome})


def _run_ray(jobs: list, workers: int, address: str | None, record: Callable) -> None:
    """One Ray task (1 CPU) per run; on Ctrl-C the tasks are cancelled (a run checkpoints on the interrupt)."""
    import ray

    started = False
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        started = True
    try:
        one = ray.remote(num_cpus=1, max_retries=0)(_run_one)
        many = ray.remote(num_cpus=1, max_retries=0)(_run_batch)
        refs = {}
        for kind, options, run_dirs, entries in jobs:
            gpu = str(options[0].get("device", "cpu")).startswith("cuda")  # Ray hides GPUs from tasks without one
            task = one if len(entries) == 1 else many
            task = task.options(num_gpus=1) if gpu else task
            ref = (task.remote(kind, options[0], run_dirs[0], LOCK_WAIT) if len(entries) == 1
                   else task.remote(options, run_dirs, LOCK_WAIT))
            refs[ref] = entries
            for entry in entries:
                entry["status"] = "running"
        pending = list(refs)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                _record_job(refs[ready[0]], functools.partial(ray.get, ready[0]), record)
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref)  # a running run gets a KeyboardInterrupt: it checkpoints and returns
            ready, _ = ray.wait(pending, num_returns=len(pending), timeout=60)  # a 2nd Ctrl-C stops waiting
            for ref in ready:
                try:
                    res = ray.get(ref)
                except Exception:  # cancelled before it started
                    continue
                _record_job(refs[ref], functools.partial(_same, res), record)
            raise
    finally:
        if started:
            ray.shutdown()


def _build_report(run_dirs: list, out: pathlib.Path):
    """(path or None, message): one report page for the finished runs, if nclab.report is available."""
    if not run_dirs:
        return None, "report skipped: no finished runs"
    try:
        from nclab.report import build_report
    except ImportError:
        return None, "report skipped: nclab.report.build_report is not available in this installation"
    path = out / "report.html"
    try:
        made = build_report([pathlib.Path(d) for d in run_dirs], path)
    except Exception as exc:
        return None, f"report failed: {type(exc).__name__}: {exc}"
    if isinstance(made, (str, os.PathLike)):
        path = pathlib.Path(made)
    return path, f"report: {path}"


__all__ = ["SweepSpec", "SweepRun", "SweepResult", "load_sweep", "expand_sweep", "run_sweep", "run_name"]
