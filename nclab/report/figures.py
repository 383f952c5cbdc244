"""Figures from run directories (never from a model), in the style of the paper's plots.

Every builder returns a ``matplotlib.figure.Figure`` (object API, no pyplot state, no display needed)
or None when the runs hold nothing to draw; :func:`save_figure` writes PNG + PDF, :func:`png_bytes`
gives the PNG for the report page.

* :func:`metrics_figure` -- NC metrics against step/epoch on a log scale, one curve per run
  (labelled by the config field that differs: depth, lambda, ...).
* :func:`layers_figure` -- final NC metrics against the layer, one curve per run.
* :func:`norms_figure` -- learned against predicted class norms ||w_k||, ||h_k|| (GOF check).
* :func:`gram_figure` -- learned and predicted K x K Grams (W W^T, Hbar^T Hbar, W Hbar) as heatmaps.
* :func:`phase_figure` -- minority-collapse phase diagram (class size against lambda) for several depths.
* :func:`plot_runs` -- metrics + norms files for a set of run directories (``nclab simulate --depths``).
"""

from __future__ import annotations

import io
import math
import pathlib

import numpy as np
from matplotlib.figure import Figure

from nclab.report import phase
from nclab.report import runs as runlib

STYLE = {"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 7.5,
         "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
         "lines.linewidth": 1.4}
DPI = 110
LINE_STYLES = ("-", "--", ":", "-.")  # the columns sharing a panel (train_acc, test_acc)
LINE_NAMES = {"-": "solid", "--": "dashed", ":": "dotted", "-.": "dash-dot"}
FLOOR = 1e-18  # exact zeros (collapsed float64 features) are drawn at this floor on log axes
TITLES = {
    "rel_gap": "relative gap |f - f*|/|f*|",
    "nc1_L1": "NC1 of H (layer-1 input)",
    "nc2_w": "NC2: W W^T vs predicted",
    "nc2_h": "NC2: class means vs predicted",
    "nc3": "NC3: W Hbar vs predicted",
    "balance": "balancedness (max over layers)",
    "nc1": "NC1 (tr(S_W S_B^+)/K)",
    "train_acc": "train accuracy",
    "test_acc": "test accuracy",
}


def _figure(nrows: int, ncols: int, width: float, height: float):
    """A constrained-layout figure and its axes as a flat array (call inside STYLE, see _styled)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False).ravel()


def _styled(fn):
    """Run a figure builder under STYLE (rc_context must be active while artists are created)."""
    import functools

    import matplotlib

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return fn(*args, **kwargs)

    return wrapper


def _log_y(ax) -> None:
    """Log y axis (call after plotting), at least 2 decades tall (a nearly constant metric looks flat, not
    noisy), without minor ticks beyond 3 decades (metrics span up to 18: they would double the drawing time)."""
    from matplotlib.ticker import NullLocator

    ax.set_yscale("log")
    low, high = ax.get_ylim()
    if 0 < low and high < 100 * low:
        center = math.sqrt(low * high)
        low, high = center / 10, center * 10
        ax.set_ylim(low, high)
    if high > 1e3 * low:
        ax.yaxis.set_minor_locator(NullLocator())


def panel_title(key: str) -> str:
    """``nc2_w_L1`` -> "NC2: W W^T vs predicted, layer 1"; unknown columns keep their name."""
    if key in TITLES:
        return TITLES[key]
    parsed = runlib.layer_of(key)
    if parsed and parsed[0] in TITLES:
        return f"{TITLES[parsed[0]]}, layer {parsed[1]}"
    return key


def _colors(n: int):
    import matplotlib

    if n <= 10:
        return [matplotlib.colormaps["tab10"](i) for i in range(n)]
    return [matplotlib.colormaps["viridis"](i / max(n - 1, 1)) for i in range(n)]


MAX_LEGEND = 24  # more curves than this: no legend (the report's tables name the runs)


def _legend(axes, ncols: int) -> None:
    """One legend for all curves of ``axes``, right of the top-right panel (outside the data)."""
    entries = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if len(entries) > MAX_LEGEND:
        axes[ncols - 1].text(1.02, 1.0, f"{len(entries)} runs\n(no legend)", transform=axes[ncols - 1].transAxes,
                             va="top", fontsize=8)
    elif entries:
        axes[ncols - 1].legend(entries.values(), entries.keys(), loc="upper left", bbox_to_anchor=(1.02, 1.0),
                               ncol=1 if len(entries) <= 12 else 2)


def save_figure(fig: Figure, path) -> list[pathlib.Path]:
    """Write ``path.png`` and ``path.pdf`` (parents created); returns both paths."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in ("png", "pdf"):
        p = path.with_suffix(f".{ext}")
        fig.savefig(p, dpi=DPI)
        out.append(p)
    return out


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- metrics
def metric_panels(columns, with_gap: bool | None = None) -> list[str]:
    """Panel keys for the metrics figure: rel_gap, the NC families (headline columns), balance (max over
    balance_* columns), "accuracy" (every *acc* column in one panel), and the losses of runs without a
    known optimum (``with_gap`` False; default: whether a rel_gap column exists)."""
    cols = list(columns)
    with_gap = "rel_gap" in cols if with_gap is None else with_gap
    wanted = ("rel_gap",) + runlib.NC_FAMILIES
    panels = [c for c in runlib.headline_columns(cols, limit=50) if runlib.family_of(c) in wanted]
    if any(c.startswith("balance") for c in cols):
        panels.append("balance")
    if not with_gap:
        panels += [c for c in ("loss", "train_loss", "test_loss") if c in cols]
    if any("acc" in c.lower() for c in cols):
        panels.append("accuracy")
    return [p for p in dict.fromkeys(panels) if p != "rel_gap" or with_gap][:12]


def _series(run: runlib.Run, key: str) -> tuple[np.ndarray, np.ndarray]:
    x_key = run.x_key
    rows = [r for r in run.rows if runlib.finite(r.get(x_key))]
    x = np.array([float(r[x_key]) for r in rows])
    if key == "balance":
        keys = [k for k in run.columns if k.startswith("balance")]
        y = [max((abs(v) for k in keys if (v := runlib.numeric(r.get(k))) is not None), default=math.nan)
             for r in rows]
    else:
        y = [math.nan if (v := runlib.numeric(r.get(key))) is None else v for r in rows]
    return x, np.array(y, dtype=float)


def _finish(fig: Figure, axes, used: int, ncols: int, title: str) -> Figure:
    """Hide the unused panels of a grid, add the shared legend and the title."""
    for ax in axes[used:]:
        ax.set_visible(False)
    _legend(axes, ncols)
    if title:
        fig.suptitle(title)
    return fig


@_styled
def metrics_figure(runs: list[runlib.Run], labels: list[str] | None = None, title: str = "") -> Figure | None:
    """NC metrics against step/epoch (log y), one curve per run (accuracies: one panel, linear, a line
    style per column); None if no run has metric rows."""
    labels = labels or runlib.run_labels(runs)
    pairs = [(r, lab) for r, lab in zip(runs, labels) if r.rows and r.x_key]
    columns = list(dict.fromkeys(c for r, _ in pairs for c in r.columns))
    with_gap = any(runlib.finite(row.get("rel_gap")) for r, _ in pairs for row in r.rows)  # train: needs theory
    acc_columns = [c for c in columns if "acc" in c.lower()]

    def columns_of(panel: str) -> list[str]:
        return acc_columns if panel == "accuracy" else [panel]

    panels = [p for p in metric_panels(columns, with_gap)
              if any(np.isfinite(_series(r, c)[1]).any() for r, _ in pairs for c in columns_of(p))]
    if not panels:
        return None
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = _figure(nrows, ncols, 4.2 * ncols, 2.9 * nrows)
    colors = _colors(len(pairs))
    x_names = " / ".join(sorted({r.x_key for r, _ in pairs}))
    for ax, key in zip(axes, panels):
        for (run, label), color in zip(pairs, colors):
            for col, style in zip(columns_of(key), LINE_STYLES):
                x, y = _series(run, col)
                if np.isfinite(y).any():
                    ax.plot(x, y if key == "accuracy" else np.maximum(np.abs(y), FLOOR), style, color=color,
                            label=label if style == LINE_STYLES[0] else None)
        if key == "accuracy":
            ax.set_title("accuracy (" + ", ".join(f"{LINE_NAMES[s]}: {c}" for c, s in zip(acc_columns, LINE_STYLES))
                         + ")")
        else:
            _log_y(ax)
            ax.set_title(panel_title(key))
        ax.set_xlabel(x_names)
    return _finish(fig, axes, len(panels), ncols, title)


@_styled
def layers_figure(runs: list[runlib.Run], labels: list[str] | None = None, title: str = "") -> Figure | None:
    """Final value of every per-layer NC metric (nc1_L1..nc1_LM, ...) against the layer, one curve per run;
    None unless some run measures a metric at two or more layers."""
    labels = labels or runlib.run_labels(runs)
    families: dict[str, list] = {}
    for run, label in zip(runs, labels):
        for base, cols in runlib.per_layer_columns(run.columns).items():
            families.setdefault(base, []).append((run, label, cols))
    families = {b: v for b, v in families.items() if any(len(cols) >= 2 for _, _, cols in v)}
    if not families:
        return None
    ncols = min(3, len(families))
    nrows = math.ceil(len(families) / ncols)
    fig, axes = _figure(nrows, ncols, 4.2 * ncols, 2.9 * nrows)
    color_of = dict(zip(labels, _colors(len(labels))))
    for ax, (base, entries) in zip(axes, families.items()):
        for run, label, cols in entries:
            layers = [j for j, _ in cols]
            vals = np.array([runlib.numeric(run.final.get(c)) for _, c in cols], dtype=float)
            ax.plot(layers, np.maximum(np.abs(vals), FLOOR), "o-", ms=3, label=label, color=color_of[label])
        _log_y(ax)
        ax.set_xlabel("layer j (input of W_j)")
        ax.set_title(f"final {base} per layer")
        ax.xaxis.get_major_locator().set_params(integer=True)
    return _finish(fig, axes, len(families), ncols, title)


# ---------------------------------------------------------------------------------------------- theory
@_styled
def norms_figure(runs: list[runlib.Run], labels: list[str] | None = None, title: str = "") -> Figure | None:
    """Learned (last snapshot) against predicted ||w_k|| and ||h_k||; None if no run has both."""
    labels = labels or [None] * len(runs)
    pairs = [(r, lab, runlib.predicted_norms(r), runlib.learned_norms(r)) for r, lab in zip(runs, labels)]
    pairs = [p for p in pairs if p[2] is not None and p[3] is not None and len(p[2]["w"]) == len(p[3]["w"])]
    if not pairs:
        return None
    if None in [p[1] for p in pairs]:  # legend labels among the runs drawn
        pairs = [(r, lab, pr, le) for (r, _, pr, le), lab in zip(pairs, runlib.run_labels([p[0] for p in pairs]))]
    fig, axes = _figure(1, 2, 9.0, 3.9)
    colors = _colors(len(pairs))
    for ax, key, name in zip(axes, ("w", "h"), ("classifier rows ||w_k||", "class means ||h_k||")):
        hi = 0.0
        for (run, label, pred, learned), color in zip(pairs, colors):
            ax.scatter(pred[key], learned[key], s=26, alpha=0.85, label=label, color=color)
            if len(pred[key]) <= 12 and len(pairs) <= 3:
                counts = run.counts or [None] * len(pred[key])
                for k, (px, ly) in enumerate(zip(pred[key], learned[key])):
                    text = f"{k}" if counts[k] is None else f"{k} (n={counts[k]})"
                    ax.annotate(text, (px, ly), fontsize=6.5, xytext=(3, 3), textcoords="offset points")
            hi = max(hi, float(np.max(pred[key], initial=0)), float(np.max(learned[key], initial=0)))
        hi = hi * 1.1 if hi > 0 else 1.0
        ax.plot([0, hi], [0, hi], "k--", lw=0.8, label="learned = predicted")
        ax.set_xlim(0, hi)
        ax.set_ylim(0, hi)
        ax.set_xlabel("predicted (nclab.predict)")
        ax.set_ylabel("learned (last snapshot)")
        ax.set_title(name)
    axes[0].legend(loc="upper left")
    if title:
        fig.suptitle(title)
    return fig


@_styled
def gram_figure(run: runlib.Run, title: str = "") -> Figure | None:
    """Learned (top) and predicted (bottom) Grams, each divided by its Frobenius norm; None without both."""
    learned = runlib.learned_grams(run)
    pred = run.prediction or {}
    if learned is None or not all(pred.get(k) is not None for k in ("WWt", "HtH", "WH")):
        return None
    names = [("WWt", "W W^T"), ("HtH", "Hbar^T Hbar"), ("WH", "W Hbar")]
    fig, axes = _figure(2, 3, 9.6, 6.0)
    axes = axes.reshape(2, 3)
    image = None
    for col, (key, name) in enumerate(names):
        for row, (source, mat) in enumerate((("learned", learned[key]), ("predicted", np.asarray(pred[key], float)))):
            norm = np.linalg.norm(mat)
            shown = mat / norm if norm > 0 else mat
            ax = axes[row, col]
            image = ax.imshow(shown, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
            ax.set_title(f"{name}, {source}")
            ax.grid(False)
            K = mat.shape[0]
            if K <= 12:
                ax.set_xticks(range(K))
                ax.set_yticks(range(K))
    fig.colorbar(image, ax=axes, shrink=0.7, label="entry / Frobenius norm")
    note = "" if pred.get("gram_unique", True) else " (prediction: only the spectra are unique)"
    fig.suptitle((title or run.name) + note)
    return fig


@_styled
def phase_figure(depths=phase.DEFAULT_DEPTHS, majority=phase.DEFAULT_MAJORITY, minority_classes: int = 2, *,
                 lambdas=None, sizes=None, marks=()) -> Figure:
    """Minority-collapse phase diagram: minority class size n against lambda (= lambda_W = lambda_H),
    coloured by the closed-form minimizer's state, one panel per depth.

    ``marks``: (depth, lambda, n, collapsed_or_None, label) points of runs to draw on top (filled:
    collapsed in the run, hollow: not, cross: unknown).
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    palette = ["#9ecae1", "#fd8d3c", "#bdbdbd"]  # not collapsed, minority collapsed, trivial
    cmap = ListedColormap(palette)
    depths = list(depths)
    fig, axes = _figure(1, len(depths), 3.3 * len(depths), 3.3)
    for ax, M in zip(axes, depths):
        lam, n, states = phase.phase_grid(majority, minority_classes, M, lambdas=lambdas, sizes=sizes)
        ax.pcolormesh(lam, n, states, cmap=cmap, vmin=-0.5, vmax=2.5, shading="nearest")
        for m_depth, m_lam, m_n, collapsed, _ in marks:
            if m_depth != M:
                continue
            face = "k" if collapsed else "none"
            ax.plot([m_lam], [m_n], marker="x" if collapsed is None else "o", ms=7, mec="k", mfc=face, ls="none")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(n.min(), n.max())
        ax.set_yticks([t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000) if n.min() <= t <= n.max()])
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("lambda (= lambda_W = lambda_H)")
        ax.set_title(f"M = {M}")
        ax.grid(False)
    axes[0].set_ylabel(f"minority class size n ({minority_classes} classes)")
    handles = [Patch(color=c, label=phase.STATE_NAMES[s]) for s, c in enumerate(palette)]
    if marks:
        from matplotlib.lines import Line2D

        handles += [Line2D([], [], marker="o", mfc="k", mec="k", ls="none", label="run: minority collapsed"),
                    Line2D([], [], marker="o", mfc="none", mec="k", ls="none", label="run: not collapsed")]
    axes[-1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(f"Minority collapse (bias-free MSE), majority classes {list(majority)}")
    return fig


def phase_setup(runs: list[runlib.Run]) -> dict:
    """Arguments of :func:`phase_figure` for a set of runs: the first imbalanced bias-free MSE run's majority
    classes (else the paper's [200, 100] + two minority classes), its depths plus 1, 3, 6 (at most 4 panels),
    and a mark for every run with equal decays on that setting."""
    majority, minority_classes = list(phase.DEFAULT_MAJORITY), 2
    candidates = [r for r in runs if r.counts and r.config.get("loss", "mse") == "mse" and not r.config.get("bias")
                  and phase.split_counts(r.counts) is not None]
    if candidates:
        majority, _, minority_classes = phase.split_counts(candidates[0].counts)
    run_depths = sorted({r.depth for r in candidates if r.depth})
    depths = sorted(set(run_depths[:4]) | {1, 3, 6})[:4] if run_depths else list(phase.DEFAULT_DEPTHS)
    marks = []
    for r in candidates:
        maj, low, count = phase.split_counts(r.counts)
        lams = list(np.atleast_1d(r.config.get("lambda_w", []))) + [r.config.get("lambda_h")]
        if maj != majority or count != minority_classes or r.depth not in depths or len(set(lams)) != 1:
            continue
        learned = runlib.learned_norms(r)
        collapsed = None if learned is None else bool(set(range(len(maj), len(r.counts))) &
                                                      set(runlib.collapsed_classes(learned["w"])))
        marks.append((r.depth, float(lams[0]), low, collapsed, r.name))
    return {"depths": depths, "majority": majority, "minority_classes": minority_classes, "marks": marks}


# ---------------------------------------------------------------------------------------------- files
def plot_runs(run_dirs, out_dir, *, title: str = "") -> list[pathlib.Path]:
    """``metrics.{png,pdf}`` and ``norms.{png,pdf}`` for a set of run directories (e.g. one per depth)."""
    runs = [runlib.load_run(d) for d in run_dirs]
    labels = runlib.run_labels(runs)
    if len(runs) == 1 and runs[0].depth is not None:
        labels = [f"M = {runs[0].depth}"]
    out_dir = pathlib.Path(out_dir)
    paths = []
    for name, fig in (("metrics", metrics_figure(runs, labels, title)), ("norms", norms_figure(runs, labels, title))):
        if fig is not None:
            paths += save_figure(fig, out_dir / name)
    return paths
