"""Finding and reading run directories (read-only): what ``nclab runs`` lists and ``nclab report`` shows.

A run directory is any folder with a ``config.json`` of the form ``{"nclab_version", "kind", "config"}``
(nclab.results). Everything else in it is optional: a run still in progress has no ``summary.json`` yet,
a train run has no ``prediction.json`` unless its trainer wrote one. Metric columns are never assumed:
the x axis is ``step`` or ``epoch``, NC metrics are recognised by name (``nc1*``, ``nc2*``, ``nc3*``,
``nc4*``, ``rel_gap``, ``balance*``), everything else numeric is shown as it is.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
from dataclasses import dataclass, field

import numpy as np

from nclab.results import CONFIG, ENVIRONMENT, SUMMARY, WEIGHTS, RunStore

X_KEYS = ("epoch", "step", "iteration", "iter")  # train rows have both epoch and step: epoch wins
NC_FAMILIES = ("nc1", "nc2", "nc3", "nc4")
LAYER_SUFFIX = re.compile(r"^(?P<base>.+?)[_./-](?:L|layer|l)(?P<layer>\d+)$")  # nc1_L3, nc3.layer2, nc1_l1
PER_CLASS = re.compile(r"^(?P<base>[a-z]_norm)_(?P<k>\d+)$")  # w_norm_0, h_norm_12
DEPTH_KEYS = {"widths", "depth", "head_depth", "M"}  # the depth is one label field, "M", whatever the kind calls it
LABEL_ORDER = ("counts", "classes", "per_class", "lambda_w", "lambda_h",
               "weight_decay", "bias", "loss", "optimizer", "lr", "steps", "epochs", "seed")
BOOKKEEPING = {"snapshot_every", "checkpoint_every", "threads", "device", "progress", "out", "tensorboard",
               "num_workers", "workers", "log_every", "eval_every"}  # change what is recorded, not the result
COLLAPSE_TOL = 1e-3  # a learned class norm below this fraction of the largest one counts as collapsed


@dataclass
class Run:
    """One run directory, read once.

    Attributes
    ----------
    path : Path of the run directory
    kind : str, e.g. "ufm-simulation" or "train"
    version : str, nclab version that wrote it
    config : dict, the run's configuration (config.json["config"])
    summary : dict, summary.json ({} while running or after a crash)
    rows : list of dict, metrics.csv (numbers parsed, empty cells None)
    prediction : dict or None, prediction.json (nclab.predict(...).to_dict())
    environment : dict or None, environment.json
    """

    path: pathlib.Path
    kind: str
    version: str
    config: dict
    summary: dict = field(default_factory=dict)
    rows: list = field(default_factory=list)
    prediction: dict | None = None
    environment: dict | None = None
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
        return list(self.rows[0]) if self.rows else []

    @property
    def x_key(self) -> str | None:
        """The table's x axis: ``epoch`` if present, else ``step`` (first of X_KEYS present)."""
        return next((k for k in X_KEYS if k in self.columns), None)

    @property
    def final(self) -> dict:
        """The last metrics row (summary.json's ``final`` when the table is empty)."""
        return self.rows[-1] if self.rows else dict(self.summary.get("final") or {})

    @property
    def depth(self) -> int | None:
        cfg = self.config
        if isinstance(cfg.get("widths"), list):
            return len(cfg["widths"])
        for key in ("depth", "head_depth", "M"):
            if isinstance(cfg.get(key), int):
                return cfg[key]
        if self.prediction:
            return len(self.prediction.get("problem", {}).get("widths", [])) or None
        return None

    @property
    def counts(self) -> list[int] | None:
        cfg = self.config
        for key in ("counts", "class_counts"):
            if isinstance(cfg.get(key), list) and cfg[key]:
                return [int(v) for v in cfg[key]]
        if isinstance(self.summary.get("counts"), list):
            return [int(v) for v in self.summary["counts"]]  # train runs: the subset actually drawn
        if self.prediction:
            return list(self.prediction.get("problem", {}).get("counts", [])) or None
        return None


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


def _optional_json(store: RunStore, name: str):
    if not store.has(name):
        return None
    try:
        return store.read_json(name)
    except (OSError, ValueError):
        return None  # unreadable extras are shown as missing, never fatal


def load_run(path) -> Run:
    """Read one run directory (raises ValueError if it is not one)."""
    path = pathlib.Path(path)
    doc = _read_config(path)
    if doc is None:
        raise ValueError(f"{path} is not a run directory (no nclab config.json)")
    store = RunStore(path)
    return Run(path=path, kind=str(doc["kind"]), version=str(doc.get("nclab_version", "?")), config=doc["config"],
               summary=_optional_json(store, SUMMARY) or {}, rows=store.read_rows(),
               prediction=_optional_json(store, "prediction.json"),
               environment=_optional_json(store, ENVIRONMENT))


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


def headline_columns(columns, limit: int = 8) -> list[str]:
    """The columns worth a glance, in order: rel_gap, accuracies, per NC family its columns without a layer
    suffix and the first layer of per-layer ones that have no such column, then objective and losses."""
    cols = [c for c in columns if c not in X_KEYS and not PER_CLASS.match(c)]
    out = [c for c in ("rel_gap",) if c in cols]
    out += [c for c in cols if "acc" in c.lower()]
    for fam in NC_FAMILIES:
        members = [c for c in cols if family_of(c) == fam]
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
    return json.dumps(value, sort_keys=True)


def describe(run: Run) -> dict:
    """What ``nclab runs --json`` prints for one run (JSON-ready)."""
    return {"path": str(run.path), "kind": run.kind, "nclab_version": run.version, "status": run.status,
            "message": run.summary.get("message", ""), "progress": progress(run), "params": key_params(run),
            "headline": headline_columns(run.columns or list(run.final)), "final": run.final, "config": run.config}


def varying_fields(runs: list[Run]) -> list[str]:
    """Config fields whose values differ between the runs (the sweep axes), problem fields first. The depth
    is ``"M"`` (from widths or depth, whatever the kind calls it); fields that only change what is recorded
    (snapshot_every, threads, ...) are left out."""
    if len(runs) < 2:
        return []
    keys = {k for r in runs for k in r.config} - BOOKKEEPING - DEPTH_KEYS
    varying = [k for k in keys if len({_canonical(r.config.get(k)) for r in runs}) > 1]
    order = {k: i for i, k in enumerate(LABEL_ORDER)}
    depth = ["M"] if len({r.depth for r in runs}) > 1 else []
    return depth + sorted(varying, key=lambda k: (order.get(k, len(order)), k))


def run_labels(runs: list[Run], max_fields: int = 3) -> list[str]:
    """One legend label per run: the varying config fields (``M = 3``, ``lambda_w = 0.001``; at most
    ``max_fields``), else the folder name."""
    fields = varying_fields(runs)[:max_fields]
    labels = []
    for r in runs:
        parts = [f"M = {r.depth}" if k == "M" else f"{k} = {_short(r.config.get(k))}" for k in fields]
        labels.append(", ".join(parts) or r.name)
    if len(set(labels)) < len(labels):  # e.g. the same config twice: tell them apart by folder
        labels = [f"{lab} ({r.name})" for lab, r in zip(labels, runs)]
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
def learned_norms(run: Run) -> dict | None:
    """Final per-class ||w_k|| and ||h_k|| (from the w_norm_k/h_norm_k columns, else weights.pt Grams)."""
    K = len(run.counts or [])
    last = run.final
    if K and all(f"w_norm_{k}" in last and f"h_norm_{k}" in last for k in range(K)):
        return {"w": np.array([numeric(last[f"w_norm_{k}"]) or 0.0 for k in range(K)]),
                "h": np.array([numeric(last[f"h_norm_{k}"]) or 0.0 for k in range(K)])}
    grams = learned_grams(run)
    if grams is None:
        return None
    return {"w": np.sqrt(np.clip(np.diag(grams["WWt"]), 0, None)),
            "h": np.sqrt(np.clip(np.diag(grams["HtH"]), 0, None))}


def predicted_norms(run: Run) -> dict | None:
    classes = (run.prediction or {}).get("classes")
    if not classes or "w_norm2" not in classes:
        return None
    return {"w": np.sqrt(np.clip(np.asarray(classes["w_norm2"], dtype=float), 0, None)),
            "h": np.sqrt(np.clip(np.asarray(classes["h_norm2"], dtype=float), 0, None))}


def collapsed_classes(norms: np.ndarray) -> list[int]:
    """Classes whose norm is below COLLAPSE_TOL of the largest (all of them if every norm is 0)."""
    top = float(np.max(norms, initial=0.0))
    return [k for k, v in enumerate(norms) if v <= COLLAPSE_TOL * top or top == 0.0]


def learned_grams(run: Run) -> dict | None:
    """K x K Grams W W^T, Hbar^T Hbar, W Hbar of the final parameters of a UFM run (weights.pt with
    ``weights``, ``H``, ``labels``), or of ``grams.json`` when a run stores them itself; None otherwise
    (e.g. a network's state_dict). Read once per Run (cached).

    Class means are centred by the sample-weighted global mean when the problem has a bias (as the
    theory's Grams are), uncentred otherwise.
    """
    if "grams" not in run.cache:
        run.cache["grams"] = _read_grams(run)
    return run.cache["grams"]


def _read_grams(run: Run) -> dict | None:
    store = RunStore(run.path)
    doc = _optional_json(store, "grams.json") or {}
    if all(k in doc for k in ("WWt", "HtH", "WH")):
        return {k: np.asarray(doc[k], dtype=float) for k in ("WWt", "HtH", "WH")}
    if not store.has(WEIGHTS):
        return None
    import torch

    try:  # memory-mapped: a large network checkpoint is not read just to find it holds no features
        state = torch.load(store.file(WEIGHTS), map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # noqa: BLE001 -- a foreign or damaged file: no Grams, not a failed report
        return None
    if not isinstance(state, dict) or not {"weights", "H", "labels"} <= set(state):
        return None
    W = state["weights"][0].double().numpy()
    for w in state["weights"][1:]:
        W = w.double().numpy() @ W  # W_M .. W_1, (K, d)
    H = state["H"].double().numpy()  # (d, N)
    labels = state["labels"].numpy()
    K = W.shape[0]
    counts = np.bincount(labels, minlength=K).astype(float)
    means = np.stack([H[:, labels == k].mean(axis=1) if counts[k] else np.zeros(H.shape[0]) for k in range(K)])
    if run.config.get("bias"):
        means = means - (counts @ means) / counts.sum()
    return {"WWt": W @ W.T, "HtH": means @ means.T, "WH": W @ means.T}
