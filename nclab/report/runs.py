"""Finding and reading run directories (read-only): what ``nclab runs`` lists and ``nclab report`` shows.

A run directory is any folder with a ``config.json`` of the form ``{"nclab_version", "kind", "config"}``
(nclab.results). Everything else in it is optional: a run still in progress has no ``summary.json`` yet,
a train run has no ``prediction.json`` unless its trainer wrote one. Metric columns follow one naming
scheme for every run kind (:mod:`nclab.report.columns`); older runs are read too (the equal end-to-end and
layer-1 columns are filled from each other, nothing else is assumed): the x axis is ``step`` or ``epoch``,
NC metrics are recognised by name (``nc1*``, ``nc2*``, ``nc3*``, ``nc4*``, ``rel_gap``, ``balance*``),
everything else numeric is shown as it is.

Nothing in a run folder can stop a listing or a report: a file that cannot be read (binary, not UTF-8,
valid JSON that is not an object, permission denied) is left out and named in ``Run.problems``, which
``nclab runs`` and ``nclab report`` print as warnings.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import pathlib
import re
from dataclasses import dataclass, field

import numpy as np

from nclab.report import columns as colnames
from nclab.results import CONFIG, ENVIRONMENT, METRICS, SUMMARY, WEIGHTS, RunStore

X_KEYS = ("epoch", "step", "iteration", "iter")  # train rows have both epoch and step: epoch wins
NC_FAMILIES = ("nc1", "nc2", "nc3", "nc4")
LAYER_SUFFIX = re.compile(r"^(?P<base>.+?)[_./-](?:L|layer|l)(?P<layer>\d+)$")  # nc1_L3, nc3.layer2, nc1_l1
PER_CLASS = re.compile(r"^(?P<base>[a-z]_norm)_(?P<k>\d+)$")  # w_norm_0, h_norm_12
DEPTH_KEYS = {"widths", "depth", "head_depth", "M"}  # the depth is one label field, "M", whatever the kind calls it
LABEL_ORDER = ("dataset", "arch", "backbone", "model", "M", "counts", "classes", "per_class", "loss", "bias",
               "lambda_w", "lambda_h", "weight_decay", "optimizer", "lr", "steps", "epochs", "seed")
BOOKKEEPING = {"snapshot_every", "checkpoint_every", "threads", "device", "progress", "out", "tensorboard",
               "num_workers", "workers", "log_every", "eval_every", "track_every", "eval_batch_size",
               "class_counts"}  # change what is recorded, not the result (class_counts: compared as "counts")
COLLAPSE_TOL = 1e-3  # a learned class norm below this fraction of the largest one counts as collapsed
HEAD_WEIGHT = re.compile(r"(?:^|\.)head\.linears\.(\d+)\.weight$")  # W_j of a train run's state_dict (0-based)
TARGET_NAMES = {"etf": "simplex ETF target", "of": "orthogonal frame target"}


@dataclass
class Run:
    """One run directory, read once.

    Attributes
    ----------
    path : Path of the run directory
    kind : str, e.g. "ufm-simulation" or "train"
    version : str, nclab version that wrote it
    config : dict, the run's configuration (config.json["config"])
    summary : dict, summary.json ({} while running, after a crash, or when unreadable)
    rows : list of dict, metrics.csv (numbers parsed, empty cells None, columns of nclab.report.columns)
    prediction : dict or None, prediction.json (nclab.predict(...).to_dict())
    environment : dict or None, environment.json
    problems : list of str, files that could not be read and were left out (one line each, naming the file)
    """

    path: pathlib.Path
    kind: str
    version: str
    config: dict
    summary: dict = field(default_factory=dict)
    rows: list = field(default_factory=list)
    prediction: dict | None = None
    environment: dict | None = None
    problems: list = field(default_factory=list)
    cache: dict = field(default_factory=dict, repr=False, compare=False)  # derived values (learned Grams)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def status(self) -> str:
        """summary.json's status; "incomplete" when there is none (running, or killed hard)."""
        return str(self.summary.get("status") or "incomplete")

    @property
    def columns(self) -> list[str]:
        if "columns" not in self.cache:
            self.cache["columns"] = list(dict.fromkeys(k for r in self.rows for k in r)) if self.rows else []
        return self.cache["columns"]

    @property
    def x_key(self) -> str | None:
        """The table's x axis: ``epoch`` if present, else ``step`` (first of X_KEYS present)."""
        return next((k for k in X_KEYS if k in self.columns), None)

    @property
    def final(self) -> dict:
        """The last metrics row (summary.json's ``final`` when the table is empty)."""
        if self.rows:
            return self.rows[-1]
        final = self.summary.get("final")
        return colnames.with_aliases(dict(final)) if isinstance(final, dict) else {}

    @property
    def depth(self) -> int | None:
        cfg = self.config
        if isinstance(cfg.get("widths"), list) and cfg["widths"]:
            return len(cfg["widths"])
        for key in ("depth", "head_depth", "M"):
            if isinstance(cfg.get(key), int) and not isinstance(cfg.get(key), bool):
                return cfg[key]
        widths = _get(self.prediction, "problem", "widths")
        return len(widths) if isinstance(widths, list) and widths else None

    @property
    def counts(self) -> list[int] | None:
        """Samples per class: the config's, else the subset a train run drew (summary.json), else the
        prediction's problem; None when unknown."""
        for source in (self.config.get("counts"), self.config.get("class_counts"), self.summary.get("counts"),
                       _get(self.prediction, "problem", "counts")):
            counts = _int_list(source)
            if counts:
                return counts
        return None

    @property
    def num_classes(self) -> int | None:
        counts = self.counts
        if counts:
            return len(counts)
        k = self.config.get("classes")
        return k if isinstance(k, int) and not isinstance(k, bool) and k > 0 else None


def _get(doc, *keys):
    for k in keys:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(k)
    return doc


def _int_list(value) -> list[int] | None:
    if not isinstance(value, list) or not value:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        return None
    return [int(v) for v in value]


# ---------------------------------------------------------------------------------------------- finding
def _natural_key(path: pathlib.Path):
    """depth-2 before depth-10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def _read_config(path: pathlib.Path) -> dict | None:
    """config.json if it is an nclab run config, else None."""
    try:
        doc = json.loads((path / CONFIG).read_text())
    except (OSError, ValueError):
        return None
    if isinstance(doc, dict) and isinstance(doc.get("config"), dict) and "kind" in doc:
        return doc
    return None


def is_run_dir(path) -> bool:
    path = pathlib.Path(path)
    return path.is_dir() and _read_config(path) is not None


def find_runs(paths) -> list[pathlib.Path]:
    """Run directories given or found (recursively) under ``paths``, sorted naturally, without duplicates.

    A folder that holds a run is not searched further (its ``figures/`` or ``tensorboard/`` are not runs);
    hidden folders are skipped.

    Parameters
    ----------
    paths : str, Path, or a sequence of them

    Raises
    ------
    ValueError : a path that does not exist, or is neither a run directory nor contains one
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: list[pathlib.Path] = []
    for given in paths:
        root = pathlib.Path(given)
        if not root.exists():
            raise ValueError(f"{root}: no such directory")
        if not root.is_dir():
            raise ValueError(f"{root} is not a directory (give a run directory or a folder of runs)")
        if (root / CONFIG).is_file() and _read_config(root) is None:
            raise ValueError(f"{root / CONFIG} is not an nclab run config (expected keys kind, config)")
        here = []
        for dirpath, dirnames, _ in os.walk(root):
            d = pathlib.Path(dirpath)
            if _read_config(d) is not None:
                here.append(d)
                dirnames[:] = []
            else:
                dirnames[:] = [n for n in dirnames if not n.startswith(".")]
        if not here:
            raise ValueError(f"{root} is not a run directory and contains no runs (no nclab config.json found)")
        found += here
    unique = {p.resolve(): p for p in found}
    return sorted(unique.values(), key=_natural_key)


def _json_object(store: RunStore, name: str, problems: list) -> dict | None:
    """A JSON object file of the run, or None (missing; unreadable or not an object: noted in ``problems``)."""
    if not store.has(name):
        return None
    path = store.file(name)
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        problems.append(f"{path}: cannot be read ({exc.strerror or exc}); left out")
        return None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        problems.append(f"{path}: not valid JSON ({str(exc).splitlines()[0][:80]}); left out")
        return None
    if not isinstance(doc, dict):
        problems.append(f"{path}: valid JSON but not an object (a {type(doc).__name__}); left out")
        return None
    return doc


def _read_rows(store: RunStore, problems: list) -> list[dict]:
    """metrics.csv as rows with the shared column names (nclab.report.columns); [] when it is missing or
    unreadable (noted in ``problems``)."""
    path = store.file(METRICS)
    if not path.is_file():
        return []
    try:
        data = path.read_bytes()
        if b"\0" in data:
            raise ValueError("binary data (NUL bytes)")
        rows = _parse_table(data.decode("utf-8"))
    except OSError as exc:
        problems.append(f"{path}: cannot be read ({exc.strerror or exc}); the run is shown without metrics")
        return []
    except (ValueError, csv.Error) as exc:  # UnicodeDecodeError is a ValueError
        reason = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else str(exc).splitlines()[0][:80]
        problems.append(f"{path}: not a metrics table ({reason}); the run is shown without metrics")
        return []
    zero_check = [k for k in (rows[0] if rows else ()) if k.startswith("h_norm_") and k[7:].isdigit()]
    return [colnames.with_aliases(r, zero_check) for r in rows]


def _cell(text: str):
    """A metrics cell as RunStore.read_rows parses it (int, float, None for empty, else the text), float
    first: most cells are floats and a failed int() costs an exception each."""
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        return text
    body = text[1:] if text[:1] in "+-" else text
    return int(text) if body.isdigit() else value


def _parse_table(text: str) -> list[dict]:
    """metrics.csv rows with RunStore.read_rows' rules (a torn last line dropped, rows of another length
    skipped), parsed faster (a 301-row table of 40 columns: 5 ms instead of 30)."""
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]  # torn last line
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        return []
    n = len(header)
    return [dict(zip(header, map(_cell, line))) for line in reader if len(line) == n]


def load_run(path) -> Run:
    """Read one run directory (raises ValueError if it is not one); unreadable optional files are left out
    and named in ``Run.problems``."""
    path = pathlib.Path(path)
    doc = _read_config(path)
    if doc is None:
        raise ValueError(f"{path} is not a run directory (no nclab config.json)")
    store, problems = RunStore(path), []
    summary = _json_object(store, SUMMARY, problems) or {}
    if "final" in summary and not isinstance(summary["final"], (dict, type(None))):
        problems.append(f"{store.file(SUMMARY)}: its 'final' entry is not an object; left out")
        summary = {k: v for k, v in summary.items() if k != "final"}
    return Run(path=path, kind=str(doc["kind"]), version=str(doc.get("nclab_version", "?")), config=doc["config"],
               summary=summary, rows=_read_rows(store, problems),
               prediction=_json_object(store, "prediction.json", problems),
               environment=_json_object(store, ENVIRONMENT, problems), problems=problems)


def load_runs(paths) -> list[Run]:
    return [load_run(p) for p in find_runs(paths)]


# ---------------------------------------------------------------------------------------------- columns
def numeric(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def layer_of(column: str) -> tuple[str, int] | None:
    """(base name, layer) of a per-layer column such as ``nc1_L3``; None otherwise."""
    m = LAYER_SUFFIX.match(column)
    return (m["base"], int(m["layer"])) if m else None


def family_of(column: str) -> str | None:
    """"nc1".."nc4", "rel_gap", "balance" or None, by name."""
    low = column.lower()
    for fam in NC_FAMILIES:
        if re.search(rf"(^|[^a-z0-9]){fam}($|[^0-9])", low):
            return fam
    if low == "rel_gap":
        return "rel_gap"
    if low.startswith("balance"):
        return "balance"
    return None


def _nc_order(column: str) -> tuple:
    """Sort key within an NC family: the shared names first, in the scheme's order (nc2_w before nc2_h)."""
    parsed = layer_of(column)
    base, layer = parsed if parsed else (column, 0)
    known = {b: i for i, b in enumerate(colnames.PER_LAYER)}
    return (known.get(base, len(known)), base, layer)


def headline_columns(columns, limit: int = 8) -> list[str]:
    """The columns worth a glance, in order: rel_gap, accuracies, per NC family its columns without a layer
    suffix and the first layer of per-layer ones that have no such column (nc1_L1: NC1 of H), then objective
    and losses."""
    cols = [c for c in columns if c not in X_KEYS and not PER_CLASS.match(c)]
    out = [c for c in ("rel_gap",) if c in cols]
    out += [c for c in cols if "acc" in c.lower()]
    for fam in NC_FAMILIES:
        members = sorted((c for c in cols if family_of(c) == fam), key=_nc_order)
        out += [c for c in members if layer_of(c) is None]
        for base, layers in per_layer_columns(members).items():  # nc1_L1.., nc2_w_L1..: the head input, layer 1
            if base not in cols:
                out.append(layers[0][1])
    out += [c for c in ("objective", "loss", "train_loss", "test_loss") if c in cols]
    return list(dict.fromkeys(out))[:limit]


def per_layer_columns(columns) -> dict[str, list[tuple[int, str]]]:
    """NC families measured at several layers: base name -> [(layer, column), ...] sorted by layer."""
    out: dict[str, list[tuple[int, str]]] = {}
    for c in columns:
        parsed = layer_of(c)
        if parsed and family_of(parsed[0]) in NC_FAMILIES + ("balance",):
            out.setdefault(parsed[0], []).append((parsed[1], c))
    return {k: sorted(v) for k, v in out.items() if len(v) >= 1}


# ---------------------------------------------------------------------------------------------- describing
def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, list):
        if len(v) == 1:
            return _short(v[0])
        if len(set(map(str, v))) == 1:
            return f"{len(v)}x{_short(v[0])}"
        return ",".join(_short(x) for x in v) if len(v) <= 8 else f"{_short(v[0])},...,{_short(v[-1])} ({len(v)})"
    return str(v)


def key_params(run: Run) -> dict:
    """Ordered short description: classes, depth, loss, bias, decay, optimizer and budget (when known)."""
    cfg, out = run.config, {}
    for key in ("dataset", "backbone", "model", "arch"):
        if key in cfg and cfg[key] is not None:
            out[key] = _short(cfg[key])
    counts = run.counts
    if counts:
        out["K"] = str(len(counts))
        out["counts"] = _short(counts)
    elif cfg.get("classes") is not None:
        out["K"] = _short(cfg["classes"])
    if run.depth is not None:
        out["M"] = str(run.depth)
    for key in ("loss", "bias"):
        if key in cfg:
            out[key] = _short(cfg[key])
    for key in ("lambda_w", "lambda_h", "weight_decay"):
        if key in cfg:
            out[key] = _short(cfg[key])
    if "optimizer" in cfg:
        out["optimizer"] = _short(cfg["optimizer"])
    for key in ("steps", "epochs"):
        if key in cfg:
            out[key] = _short(cfg[key])
    return out


def progress(run: Run) -> str:
    """"200/200 steps" or "12/30 epochs" from the last row and the configured budget."""
    x = run.x_key or ("epoch" if "epochs" in run.config else "step")
    done = run.final.get(x, run.summary.get(x))
    total = run.config.get(f"{x}s")
    if done is None:
        return "-"
    return f"{done}/{total} {x}s" if total is not None else f"{done} {x}s"


def _canonical(value) -> str:
    """A value for comparing runs: a list of equal entries counts as that entry (per-layer lambda_w = [l, l]
    at depth 2 is the same decay as [l] at depth 1; widths [64, 64] as [64]: the depth is compared apart)."""
    if isinstance(value, list) and value and all(v == value[0] for v in value):
        value = value[0]
    return json.dumps(value, sort_keys=True, default=str)


def label_value(run: Run, key: str) -> str:
    """How a field reads in a legend: the depth as a number, class counts as drawn (a whole split is named
    by its counts when the run recorded them, else "all"), anything else short."""
    if key == "M":
        return str(run.depth) if run.depth is not None else "?"
    if key == "counts":
        counts = run.counts
        return _short(counts) if counts else "all"
    value = run.config.get(key)
    if isinstance(value, list) and value and all(v == value[0] for v in value):
        value = value[0]  # per-layer lambda_w [l, l, l]: "l", as it is compared
    return _short(value)


def _compared(run: Run, key: str) -> str:
    if key in ("M", "counts"):
        return label_value(run, key)
    return _canonical(run.config.get(key))


def describe(run: Run) -> dict:
    """What ``nclab runs --json`` prints for one run (JSON-ready)."""
    return {"path": str(run.path), "kind": run.kind, "nclab_version": run.version, "status": run.status,
            "message": run.summary.get("message", ""), "progress": progress(run), "params": key_params(run),
            "headline": headline_columns(run.columns or list(run.final)), "final": run.final, "config": run.config,
            "problems": list(run.problems)}


def varying_fields(runs: list[Run]) -> list[str]:
    """Fields whose values differ between the runs (the sweep axes): dataset and architecture, the depth
    ``"M"`` (from widths or depth, whatever the kind calls it), the class counts as drawn, then the other
    config fields; fields that only change what is recorded (snapshot_every, threads, ...) are left out."""
    if len(runs) < 2:
        return []
    keys = ({k for r in runs for k in r.config} - BOOKKEEPING - DEPTH_KEYS) | {"M", "counts"}
    varying = [k for k in keys if len({_compared(r, k) for r in runs}) > 1]
    order = {k: i for i, k in enumerate(LABEL_ORDER)}
    return sorted(varying, key=lambda k: (order.get(k, len(order)), k))


def run_labels(runs: list[Run], max_fields: int = 3) -> list[str]:
    """One distinct legend label per run, from the fields that differ between ``runs`` only (``M = 3``,
    ``dataset = digits``, ...), in LABEL_ORDER: up to ``max_fields`` of them, skipping a field the fields
    already taken determine (the counts of a dataset, lambda_h = lambda_w), more while two labels are
    equal, then the folder (relative to the runs' common parent) if labels still collide. A field a run's
    kind does not have (a UFM run's dataset) is left out of its label; one run: its folder name."""
    fields = varying_fields(runs)
    kinds = len({r.kind for r in runs}) > 1
    if not fields and not kinds:
        return short_paths(runs) if runs else []
    values = {f: [label_value(r, f) if f in ("M", "counts") or f in r.config else None for r in runs] for f in fields}

    values["kind"] = [r.kind for r in runs]

    def determined(field: str, chosen: list[str]) -> bool:
        seen: dict = {}
        chosen = chosen + (["kind"] if kinds else [])
        for i in range(len(runs)):
            key = tuple(values[c][i] for c in chosen)
            if seen.setdefault(key, values[field][i]) != values[field][i]:
                return False
        return bool(chosen)

    def redundant(field: str, chosen: list[str]) -> bool:
        """Says nothing the chosen fields (and the kind) do not: a split's counts once the dataset is named, a
        field equal to a chosen one in every run (lambda_h = lambda_w), a field only one kind has and never
        varies within it (a train run's dataset next to UFM runs)."""
        if field in ("counts", "classes", "per_class") and "dataset" in chosen and determined(field, ["dataset"]):
            return True
        if kinds and None in values[field] and determined(field, []):
            return True
        return any(values[field] == values[c] for c in chosen)

    def make(chosen: list[str]) -> list[str]:
        parts = [[f"{f} = {values[f][i]}" for f in chosen if values[f][i] is not None] for i in range(len(runs))]
        return [", ".join(([r.kind] if kinds else []) + p) or r.kind for p, r in zip(parts, runs)]

    chosen: list[str] = []
    for f in fields:  # the fields that tell runs apart first, then the others while there is room
        if len(chosen) < max_fields or len(set(make(chosen))) < len(runs):
            if not determined(f, chosen) and not redundant(f, chosen):
                chosen.append(f)
    for f in fields:
        if len(chosen) < max_fields and f not in chosen and not redundant(f, chosen):
            chosen.append(f)
    chosen.sort(key=fields.index)
    labels = make(chosen)
    if len(set(labels)) < len(labels):  # e.g. the same config twice: tell them apart by folder
        names = short_paths(runs)
        labels = [f"{lab} ({p})" if lab != r.kind else p for lab, p, r in zip(labels, names, runs)]
        if not chosen:
            labels = names
    return labels


def short_paths(runs: list[Run]) -> list[str]:
    """Run folders relative to their common parent (``gof/depth-3``), unique names for tables and files."""
    resolved = [r.path.resolve() for r in runs]
    if len(runs) == 1:
        return [runs[0].name]
    common = pathlib.Path(os.path.commonpath(resolved))
    return [p.relative_to(common).as_posix() or p.name for p in resolved]


def finite(v) -> bool:
    x = numeric(v)
    return x is not None and math.isfinite(x)


# ---------------------------------------------------------------------------------------------- class norms
def _vector(value, K: int | None) -> np.ndarray | None:
    try:
        v = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        return None
    if v.ndim != 1 or (K is not None and len(v) != K) or not np.isfinite(v).all():
        return None
    return v


def _matrix(value, K: int | None = None) -> np.ndarray | None:
    """A finite square matrix (K x K when K is given), else None."""
    if value is None:
        return None
    try:
        m = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        return None
    if m.ndim != 2 or m.shape[0] != m.shape[1] or (K is not None and m.shape[0] != K) or not np.isfinite(m).all():
        return None
    return m


def learned_norms(run: Run) -> dict | None:
    """Final per-class ||w_k|| and ||h_k|| (class means of H, the head input): the w_norm_k/h_norm_k columns,
    else the learned Grams' diagonals. ``"h"`` is None where only the weights are stored (a train run
    written before the tracker recorded class-mean norms: its features are not in the run folder)."""
    last = run.final
    K = run.num_classes
    if K is None:
        K = sum(1 for k in last if PER_CLASS.match(k) and k.startswith("w_norm_")) or None
    if K and all(finite(last.get(f"w_norm_{k}")) for k in range(K)):
        w = np.array([float(last[f"w_norm_{k}"]) for k in range(K)])
        h = np.array([float(last[f"h_norm_{k}"]) for k in range(K)]) \
            if all(finite(last.get(f"h_norm_{k}")) for k in range(K)) else None
        return {"w": w, "h": h}
    grams = learned_grams(run)
    if grams is None or grams.get("WWt") is None:
        return None
    return {"w": np.sqrt(np.clip(np.diag(grams["WWt"]), 0, None)),
            "h": None if grams.get("HtH") is None else np.sqrt(np.clip(np.diag(grams["HtH"]), 0, None))}


def predicted_norms(run: Run) -> dict | None:
    classes = _get(run.prediction, "classes")
    if not isinstance(classes, dict):
        return None
    w2, h2 = _vector(classes.get("w_norm2"), None), _vector(classes.get("h_norm2"), None)
    if w2 is None or h2 is None or len(w2) != len(h2):
        return None
    return {"w": np.sqrt(np.clip(w2, 0, None)), "h": np.sqrt(np.clip(h2, 0, None))}


def collapsed_classes(norms: np.ndarray, scale: float = 0.0) -> list[int]:
    """Classes whose norm is below COLLAPSE_TOL of the largest, or of ``scale`` when that is larger (the
    predicted largest norm: at the zero solution every learned norm is ~1e-11 and all classes collapsed);
    all of them if every norm is 0."""
    top = max(float(np.max(norms, initial=0.0)), float(scale))
    return [k for k, v in enumerate(norms) if v <= COLLAPSE_TOL * top or top == 0.0]


def learned_collapsed(run: Run) -> list[int] | None:
    """Classes whose learned classifier row vanished (||w_k|| against the largest learned or predicted one);
    None when the run stores no classifier norms."""
    learned = learned_norms(run)
    if learned is None:
        return None
    pred = predicted_norms(run)
    scale = float(np.max(pred["w"], initial=0.0)) if pred is not None and len(pred["w"]) == len(learned["w"]) else 0.0
    return collapsed_classes(learned["w"], scale)


def predicted_collapsed(run: Run) -> list[int] | None:
    """Classes the prediction sets to zero (``classes.active`` false); None without a prediction."""
    active = _get(run.prediction, "classes", "active")
    if not isinstance(active, list):
        return None
    return [k for k, a in enumerate(active) if not a]


def learned_grams(run: Run) -> dict | None:
    """Learned K x K Grams ``WWt`` (W = W_M..W_1), ``HtH`` (class means of H) and ``WH`` at the end of the
    run, each an array or None, plus ``source`` (where they come from); None when nothing is stored.

    * ``grams.json`` (a train run's tracker writes it: the Grams of its last metrics row),
    * a UFM run's ``weights.pt`` (``weights``, ``H``, ``labels``): all three,
    * a train run's ``weights.pt`` without grams.json (older runs): the network's state_dict gives ``WWt``
      from the head's layers; the class means need the features, which the run folder does not hold.

    Class means are centred by the sample-weighted global mean when the problem has a bias (as the
    theory's Grams are), uncentred otherwise. Read once per Run (cached).
    """
    if "grams" not in run.cache:
        run.cache["grams"] = _read_grams(run)
    return run.cache["grams"]


def _read_grams(run: Run) -> dict | None:
    store = RunStore(run.path)
    doc = _json_object(store, colnames.GRAMS, run.problems) or {}
    if doc:
        grams = {k: _matrix(doc.get(k)) for k in ("WWt", "HtH", "WH")}
        if grams["WWt"] is not None:
            epoch = doc.get("epoch")
            grams["source"] = f"grams.json (epoch {epoch})" if epoch is not None else "grams.json"
            return grams
    if not store.has(WEIGHTS):
        return None
    try:
        state = read_tensors(store.file(WEIGHTS))
    except Exception:  # noqa: BLE001 -- not the plain format: torch itself reads it (or says it is damaged)
        import zipfile

        import torch

        # memory-mapped, tensors only: a large network checkpoint is not read just to find its head; torch's
        # legacy (pre-1.6, non-zip) format cannot be memory-mapped, so it is read whole
        mmap = zipfile.is_zipfile(store.file(WEIGHTS))
        try:
            state = torch.load(store.file(WEIGHTS), map_location="cpu", weights_only=True, mmap=mmap)
        except Exception:  # noqa: BLE001 -- a foreign or damaged file: no Grams, not a failed report
            run.problems.append(f"{store.file(WEIGHTS)}: not readable as nclab weights; learned Grams left out")
            return None
    try:
        if isinstance(state, dict) and {"weights", "H", "labels"} <= set(state):
            return _ufm_grams(state, bool(run.config.get("bias")))
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            return _head_grams(state["state_dict"])
    except (TypeError, ValueError, RuntimeError, IndexError, KeyError, AttributeError):
        run.problems.append(f"{store.file(WEIGHTS)}: unexpected contents; learned Grams left out")
    return None


_STORAGE_DTYPES = {"DoubleStorage": "<f8", "FloatStorage": "<f4", "HalfStorage": "<f2", "LongStorage": "<i8",
                   "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1",
                   "BoolStorage": "?"}


def read_tensors(path) -> object:
    """A ``torch.save`` file of plain CPU tensors (in dicts, lists, OrderedDicts) read as numpy arrays, without
    importing torch (its import is a fifth of a report's time). Only the zip format's tensor rebuild, the
    storage types above and OrderedDict are accepted; anything else raises ValueError (read it with
    ``torch.load`` then). Tensors are read from the archive only when the pickle refers to them."""
    import pickle
    import zipfile

    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:  # torch's legacy format, or not a torch file at all
        raise ValueError("not a zip archive") from None
    with archive:
        names = archive.namelist()
        pkl = next((n for n in names if n.endswith("/data.pkl")), None)
        if pkl is None:
            raise ValueError("not a torch zip archive")
        prefix = pkl[: -len("data.pkl")]
        if f"{prefix}byteorder" in names and archive.read(f"{prefix}byteorder").strip() != b"little":
            raise ValueError("big-endian tensors")

        class Storage:
            def __init__(self, dtype: str):
                self.dtype = dtype

        def rebuild_tensor(storage, offset, size, stride, *_):
            item = storage.dtype.itemsize
            return np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                                   strides=tuple(st * item for st in stride)).copy()

        def rebuild_parameter(data, *_):
            return data

        class Reader(pickle.Unpickler):
            def find_class(self, module, name):
                if (module, name) == ("collections", "OrderedDict"):
                    import collections

                    return collections.OrderedDict
                if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
                    return rebuild_tensor
                if (module, name) == ("torch._utils", "_rebuild_parameter"):
                    return rebuild_parameter
                if module == "torch" and name in _STORAGE_DTYPES:
                    return Storage(_STORAGE_DTYPES[name])
                raise ValueError(f"{module}.{name} is not a plain tensor")

            def persistent_load(self, pid):
                if not (isinstance(pid, tuple) and pid[0] == "storage" and isinstance(pid[1], Storage)):
                    raise ValueError(f"unknown storage {pid!r}")
                _, kind, key, _, numel = pid
                raw = archive.read(f"{prefix}data/{key}")
                return np.frombuffer(raw, dtype=kind.dtype, count=int(numel))

        with archive.open(pkl) as fh:
            return Reader(fh).load()


def _ufm_grams(state: dict, bias: bool) -> dict:
    weights = [np.asarray(w, dtype=float) for w in state["weights"]]
    W = weights[0]
    for w in weights[1:]:
        W = w @ W  # W_M .. W_1, (K, d)
    H = np.asarray(state["H"], dtype=float)  # (d, N)
    labels = np.asarray(state["labels"]).astype(int)
    K = W.shape[0]
    counts = np.bincount(labels, minlength=K).astype(float)
    means = np.stack([H[:, labels == k].mean(axis=1) if counts[k] else np.zeros(H.shape[0]) for k in range(K)])
    if bias:
        means = means - (counts @ means) / counts.sum()
    return {"WWt": W @ W.T, "HtH": means @ means.T, "WH": W @ means.T, "source": "weights.pt"}


def _head_grams(state_dict: dict) -> dict | None:
    """W W^T of a network's deep linear head (head.linears.{j}.weight in its state_dict)."""
    layers = sorted(((int(m[1]), v) for k, v in state_dict.items() if (m := HEAD_WEIGHT.search(k))),
                    key=lambda t: t[0])
    if not layers or [j for j, _ in layers] != list(range(len(layers))):
        return None
    W = np.asarray(layers[0][1], dtype=float)
    for _, w in layers[1:]:
        W = np.asarray(w, dtype=float) @ W
    return {"WWt": W @ W.T, "HtH": None, "WH": None,
            "source": "weights.pt (head weights only: class means are not stored in this run)"}


MAX_HEATMAP_K = 256  # a K x K heatmap beyond this is unreadable and large


def reference_grams(run: Run) -> tuple[dict, str] | None:
    """The Grams a run is compared with, and their name: the prediction's (nclab.predict), else the named
    frame a train run's tracker used (``summary.json`` target "etf"/"of": only the shape is defined, the
    heatmaps are divided by their norms anyway); None when neither is known."""
    pred = run.prediction or {}
    grams = {k: _matrix(pred.get(k)) for k in ("WWt", "HtH", "WH")}
    if pred.get("dense") is False and (run.num_classes or 0) <= MAX_HEATMAP_K:  # K > 32: structure only
        from nclab.theory.structure import gram_from_dict

        grams = {k: gram_from_dict(pred, k) for k in ("WWt", "HtH", "WH")}
    if all(g is not None for g in grams.values()):
        note = "" if pred.get("gram_unique", True) else " (only the spectra are unique)"
        return grams, "predicted" + note
    target = run.summary.get("target")
    K = run.num_classes
    if target in TARGET_NAMES and K and K >= 2:
        from nclab.metrics import target_gram

        g = target_gram(target, K)
        return {"WWt": g, "HtH": g, "WH": g}, TARGET_NAMES[target]
    return None
