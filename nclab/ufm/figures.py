"""Figures from run directories (never from a model): metrics against step, learned vs predicted norms.

Matplotlib with the Agg backend (no display needed); every figure is written as PNG and PDF.
"""

from __future__ import annotations

import pathlib

import numpy as np

from nclab.results import RunStore

PANELS = [
    ("rel_gap", "relative gap (f - f*)/|f*|"),
    ("nc1_L1", "NC1 of H (layer-1 input)"),
    ("nc2_w", "NC2: W W^T vs predicted"),
    ("nc2_h", "NC2: class means vs predicted"),
    ("nc3", "NC3: W Hbar vs predicted"),
    ("balance", "balancedness (max over layers)"),
]


def _load(run_dir) -> dict:
    store = RunStore(run_dir)
    cfg = store.read_config()["config"]
    rows = store.read_rows()
    pred = store.read_json("prediction.json") if store.has("prediction.json") else None
    return {"dir": pathlib.Path(run_dir), "config": cfg, "rows": rows, "prediction": pred,
            "label": f"M = {len(cfg['widths'])}"}


def _column(rows, key) -> np.ndarray:
    if key == "balance":
        keys = [k for k in rows[0] if k.startswith("balance")] if rows else []
        vals = [[r.get(k) for k in keys] for r in rows]
        return np.array([max((abs(v) for v in vs if v is not None), default=np.nan) for vs in vals], dtype=float)
    return np.array([np.nan if r.get(key) is None else abs(float(r[key])) for r in rows], dtype=float)


def _save(fig, path: pathlib.Path) -> list[pathlib.Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in ("png", "pdf"):
        p = path.with_suffix(f".{ext}")
        fig.savefig(p, dpi=130, bbox_inches="tight")
        out.append(p)
    return out


def plot_metrics(runs: list[dict], path: pathlib.Path, title: str = "") -> list[pathlib.Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 7), sharex=True)
    floor = 1e-18  # exact zeros (e.g. NC1 of collapsed float64 features) are drawn at this floor
    for ax, (key, label) in zip(axes.ravel(), PANELS):
        for run in runs:
            if not run["rows"]:
                continue
            steps = np.array([r["step"] for r in run["rows"]], dtype=float)
            vals = _column(run["rows"], key)
            if np.all(np.isnan(vals)):
                continue
            ax.plot(steps, np.maximum(vals, floor), label=run["label"], lw=1.4)
        ax.set_yscale("log")
        ax.set_title(label, fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("step")
    axes[0, 0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    paths = _save(fig, path)
    plt.close(fig)
    return paths


def plot_norms(runs: list[dict], path: pathlib.Path, title: str = "") -> list[pathlib.Path]:
    """Final per-class ||w_k|| and ||h_k|| against the prediction (sqrt of the Grams' diagonals)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for ax, (prefix, gram, label) in zip(axes, [("w_norm_", "WWt", "classifier rows ||w_k||"),
                                                ("h_norm_", "HtH", "class means ||h_k||")]):
        hi = 0.0
        for run in runs:
            if not run["rows"] or run["prediction"] is None:
                continue
            last = run["rows"][-1]
            K = len(run["config"]["counts"])
            learned = np.array([last.get(f"{prefix}{k}") or 0.0 for k in range(K)], dtype=float)
            predicted = np.sqrt(np.clip(np.diag(np.array(run["prediction"][gram], dtype=float)), 0, None))
            ax.scatter(predicted, learned, label=run["label"], s=30, alpha=0.8)
            for k in range(K):
                ax.annotate(str(k), (predicted[k], learned[k]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
            hi = max(hi, float(np.max(predicted, initial=0)), float(np.max(learned, initial=0)))
        hi = hi * 1.08 if hi > 0 else 1.0
        ax.plot([0, hi], [0, hi], "k--", lw=0.8, label="learned = predicted")
        ax.set_xlim(0, hi)
        ax.set_ylim(0, hi)
        ax.set_xlabel("predicted")
        ax.set_ylabel("learned (last snapshot)")
        ax.set_title(label, fontsize=10)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    paths = _save(fig, path)
    plt.close(fig)
    return paths


def plot_runs(run_dirs, out_dir, *, title: str = "") -> list[pathlib.Path]:
    """Both figures for a set of runs (e.g. one per depth): ``metrics.{png,pdf}``, ``norms.{png,pdf}``."""
    runs = [_load(d) for d in run_dirs]
    out_dir = pathlib.Path(out_dir)
    return plot_metrics(runs, out_dir / "metrics", title) + plot_norms(runs, out_dir / "norms", title)
