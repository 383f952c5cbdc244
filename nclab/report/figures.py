"""Figures from run directories (never from a model), in the style of the paper's plots.

Every builder returns a ``matplotlib.figure.Figure`` (object API, no pyplot state, no display needed,
drawn by the Agg renderer) or None when the runs hold nothing to draw; :func:`render` draws a figure once
into PNG bytes (and PDF when files are asked for), :func:`save_figure` writes PNG + PDF.

* :func:`metrics_figure` -- NC metrics against step/epoch on a log scale, one curve per run (labelled by
  the fields that differ between the runs: dataset, architecture, depth, lambda, ...).
* :func:`layer_metrics_figure` -- the per-layer NC trajectories: one row per metric (NC1, NC2 of
  W_M..W_j, NC2 of the class means, NC3), one column per layer j, one curve per run.
* :func:`layers_figure` -- final NC metrics against the layer, one curve per run.
* :func:`norms_figure` -- learned against predicted class norms ||w_k||, ||h_k|| (GOF check).
* :func:`gram_figure` -- learned and predicted K x K Grams (W W^T, Hbar^T Hbar, W Hbar) as heatmaps.
* :func:`phase_figure` -- minority-collapse phase diagram (class size against lambda) for the runs' depths.
* :func:`plot_runs` -- metrics + norms files for a set of run directories (``nclab simulate --depths``).

Log axes: NaN (undefined, e.g. NC1 where every class mean is equal) is drawn as a gap; an exact 0 is drawn
on a floor one decade below the panel's smallest positive value, marked by a dotted line labelled "= 0".
Runs whose step/epoch ranges differ by 10x or more share a log x axis (symlog: linear below 1).
"""

from __future__ import annotations

import io
import math
import pathlib

import numpy as np
from matplotlib.figure import Figure

from nclab.report import columns as colnames
from nclab.report import phase
from nclab.report import runs as runlib

STYLE = {"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 7.5,
         "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
         "lines.linewidth": 1.4,
         "axes.titley": 1.0, "axes.titlepad": 4.0}  # a fixed title position: no tight-bbox search per panel
DPI = 150  # figure files (--figures-dir, nclab simulate --figures)
INLINE_DPI = 100  # the report page's embedded PNGs (9 pt text at 12.5 px; drawing time hardly depends on it)
LINE_STYLES = ("-", "--", ":", "-.")  # the columns sharing a panel (train_acc, test_acc)
LINE_NAMES = {"-": "solid", "--": "dashed", ":": "dotted", "-.": "dash-dot"}
LOG_X_RATIO = 10  # x ranges differing by this factor or more: log x axis
MAX_LAYER_COLUMNS = 9  # the per-layer figure shows every layer up to M = 9 (the paper's deepest), else 9 of them
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
LAYER_TITLES = {"nc1": "NC1 of H_j", "nc2_w": "NC2 of W_M..W_j", "nc2_h": "NC2 of the class means of H_j",
                "nc3": "NC3: W_M..W_j vs means of H_j"}
MAX_LEGEND = 24  # more curves than this: no legend (the report's tables name the runs)


# ---------------------------------------------------------------------------------------------- layout
LEGEND_ROWS = 16  # entries per legend column right of the panels
MAX_WIDTH = 15.0  # inches; a wider figure gets its legend below the panels instead of right of them


def _entry_width(labels) -> float:
    """Inches one legend entry needs (7.5 pt text and a line sample)."""
    return 0.55 + 0.047 * max((len(str(s)) for s in labels), default=0)


def _grid(nrows: int, ncols: int, *, panel=(3.4, 2.3), gap=(0.75, 0.62), labels=(), legend: float = 0.0,
          title: bool | int = False, left: float = 0.62, bottom: float = 0.48, sharex=False, sharey=False):
    """A figure of nrows x ncols panels of ``panel`` inches with fixed margins (inches; no constrained layout:
    drawing is measured once). Room for the legend of ``labels`` is kept right of the panels (below them
    when that would make the figure wider than MAX_WIDTH), or ``legend`` inches on the right for a legend
    drawn by the caller. Returns (fig, flat axes); :func:`_finish` draws the legend where room was kept."""
    labels = list(labels)
    top = 0.32 + 0.3 * int(title)  # title: a line count (True: one)
    grid_width = left + ncols * panel[0] + (ncols - 1) * gap[0] + 0.15
    where, legend_cols = "none", 1
    if len(labels) > MAX_LEGEND:
        where, legend = "right", max(legend, 0.9)
    elif labels:
        entry = _entry_width(labels)
        legend_cols = math.ceil(len(labels) / LEGEND_ROWS)
        if grid_width + legend_cols * entry + 0.1 <= MAX_WIDTH:
            where, legend = "right", max(legend, legend_cols * entry + 0.1)
        else:
            where = "below"
            legend_cols = max(1, int((grid_width - 0.3) // entry))
            bottom += math.ceil(len(labels) / legend_cols) * 0.165 + 0.3
    right = 0.15 + legend
    width = grid_width - 0.15 + right
    height = bottom + nrows * panel[1] + (nrows - 1) * gap[1] + top
    fig = Figure(figsize=(width, height), dpi=INLINE_DPI)
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                        wspace=gap[0] / panel[0], hspace=gap[1] / panel[1])
    fig.nclab_legend = (where, legend_cols)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=sharex, sharey=sharey).ravel()
    return fig, axes


def _suptitle(fig: Figure, text: str) -> None:
    """The figure title in the top margin kept by _grid (never over the panel titles)."""
    fig.suptitle(text, y=1 - 0.06 / fig.get_figheight(), va="top", fontsize=9.5)


def _styled(fn):
    """Run a figure builder under STYLE (rc_context must be active while artists are created)."""
    import functools

    import matplotlib

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return fn(*args, **kwargs)

    return wrapper


def _legend(fig: Figure, axes, ncols: int) -> None:
    """One legend for all curves of ``axes``, where _grid kept room: right of the top-right panel or below
    the panels (outside the data either way)."""
    entries = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    where, cols = getattr(fig, "nclab_legend", ("right", 1))
    if len(entries) > MAX_LEGEND:
        axes[ncols - 1].text(1.04, 1.0, f"{len(entries)} runs\n(no legend)", transform=axes[ncols - 1].transAxes,
                             va="top", fontsize=8)
    elif entries and where == "below":
        fig.legend(entries.values(), entries.keys(), loc="lower center",
                   bbox_to_anchor=(0.5, 0.02 / fig.get_figheight()),
                   ncol=cols, frameon=False, columnspacing=1.2)
    elif entries:
        axes[ncols - 1].legend(entries.values(), entries.keys(), loc="upper left", bbox_to_anchor=(1.03, 1.0),
                               ncol=math.ceil(len(entries) / LEGEND_ROWS), borderaxespad=0.0)


def _colors(n: int):
    """n distinct colours: tab10, then tab20's strong hues followed by its light ones, then viridis."""
    import matplotlib

    if n <= 10:
        return [matplotlib.colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        order = list(range(0, 20, 2)) + list(range(1, 20, 2))
        return [matplotlib.colormaps["tab20"](order[i]) for i in range(n)]
    return [matplotlib.colormaps["viridis"](i / max(n - 1, 1)) for i in range(n)]


def _finish(fig: Figure, axes, used: int, ncols: int, title: str) -> Figure:
    """Hide the unused panels of a grid, add the shared legend and the title."""
    for ax in axes[used:]:
        ax.set_visible(False)
    _legend(fig, axes, ncols)
    if title:
        _suptitle(fig, title)
    return fig


# ---------------------------------------------------------------------------------------------- drawing
def render(fig: Figure, dpi: int = INLINE_DPI, formats=("png",)) -> dict:
    """Draw ``fig`` once per format; returns {format: bytes} (PNG with fast zlib: ~5% larger, drawn faster)."""
    out = {}
    for fmt in formats:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=dpi, **({"pil_kwargs": {"compress_level": 1}} if fmt == "png" else {}))
        out[fmt] = buf.getvalue()
    return out


_PENDING: list = []  # the jobs handed to forked drawing processes (inherited, never pickled)


def _run_job(job) -> dict | None:
    """Build (if ``job[0]`` is a callable) and draw one figure: {format: bytes}, None when there is nothing to
    draw, {"error": message} when building or drawing failed (the report goes on without it)."""
    make, dpi, formats = job
    try:
        fig = make() if callable(make) else make
        return None if fig is None else render(fig, dpi, formats)
    except Exception as exc:  # noqa: BLE001 -- one broken figure must not cost the whole report
        return {"error": f"{type(exc).__name__}: {exc}"}


def _run_pending(i: int) -> dict | None:
    return _run_job(_PENDING[i])


def render_all(jobs, *, processes: int | None = None, on_done=None) -> list[dict | None]:
    """Build and draw every (figure or zero-argument callable returning one, dpi, formats) job; results in
    order, as :func:`_run_job` gives them. Building and drawing are CPU-bound and the figures independent,
    so up to ``processes`` (default: 2 when this process may use 2 or more CPUs and at least 1.5 of them
    are idle by the load average) forked workers do them
    (Linux, and only while this process runs no other thread: a fork copies no thread and no lock state
    to trust; the runs read by the parent are inherited, only the bytes come back), the costliest jobs
    first as given; one process otherwise, or if the workers cannot start. ``on_done(count)`` after each."""
    import os

    jobs = list(jobs)
    if processes is None:
        try:
            cpus = len(os.sched_getaffinity(0))
            idle = cpus - os.getloadavg()[0]
        except (AttributeError, OSError):  # not Linux
            cpus = idle = 1
        processes = 2 if cpus >= 2 and idle >= 1.5 else 1  # on busy CPUs a second process only adds overhead
    results: list = [None] * len(jobs)
    import threading

    if processes > 1 and len(jobs) >= 4 and threading.active_count() == 1:  # never fork beside other threads
        import multiprocessing

        try:
            ctx = multiprocessing.get_context("fork")
        except ValueError:
            ctx = None
        if ctx is not None:
            _PENDING[:] = jobs
            try:
                with ctx.Pool(processes) as pool:
                    for done, (i, data) in enumerate(enumerate(pool.imap(_run_pending, range(len(jobs)))), 1):
                        results[i] = data
                        if on_done is not None:
                            on_done(done)
                return results
            except OSError:  # no fork (resource limits): draw here
                pass
            finally:
                _PENDING.clear()
    for i, job in enumerate(jobs):
        results[i] = _run_job(job)
        if on_done is not None:
            on_done(i + 1)
    return results


def save_figure(fig: Figure, path, dpi: int = DPI) -> list[pathlib.Path]:
    """Write ``path.png`` and ``path.pdf`` (parents created); returns both paths."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for fmt, data in render(fig, dpi, ("png", "pdf")).items():
        p = path.with_suffix(f".{fmt}")
        p.write_bytes(data)
        out.append(p)
    return out


def png_bytes(fig: Figure, dpi: int = INLINE_DPI) -> bytes:
    return render(fig, dpi)["png"]


def panel_title(key: str) -> str:
    """``nc2_w_L1`` -> "NC2: W W^T vs predicted, layer 1"; unknown columns keep their name."""
    if key in TITLES:
        return TITLES[key]
    parsed = runlib.layer_of(key)
    if parsed and parsed[0] in TITLES:
        return f"{TITLES[parsed[0]]}, layer {parsed[1]}"
    return key


def _log_y(ax) -> None:
    """Log y axis (call after plotting), at least 2 decades tall (a nearly constant metric looks flat, not
    noisy), at most 5 labelled decades and no minor ticks (metrics span up to 18 decades: ticks are most of
    the drawing time)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    ax.set_yscale("log")
    low, high = ax.get_ylim()
    if 0 < low and high < 100 * low:
        center = math.sqrt(low * high)
        low, high = center / 10, center * 10
        ax.set_ylim(low, high)
    ax.yaxis.set_major_locator(LogLocator(base=10, numticks=6))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(_power_label))


_SUPERSCRIPT = str.maketrans("-0123456789", "\u207b\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079")


def _power_label(value: float, _pos=None) -> str:
    """10⁻⁴ as plain text (no mathtext parsing: a quarter of a second saved per report); 2·10⁻⁴ off decades."""
    if not value > 0 or not math.isfinite(value):
        return ""
    exponent = math.floor(math.log10(value) + 1e-9)
    mantissa = value / 10.0 ** exponent
    power = "10" + str(exponent).translate(_SUPERSCRIPT)
    return power if abs(mantissa - 1) < 1e-6 else f"{mantissa:.3g}\u00b7{power}"



def _few_x_ticks(ax) -> None:
    """At most ~5 major x ticks, no minor ones (each tick is a costly artist)."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator, NullLocator, SymmetricalLogLocator

    if ax.get_xscale() == "symlog":
        ax.xaxis.set_major_locator(SymmetricalLogLocator(base=10, linthresh=1.0, subs=[1.0]))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))  # 0, 1, 10, 100, 1,000
    else:
        ax.xaxis.set_major_locator(MaxNLocator(5, integer=True))
    ax.xaxis.set_minor_locator(NullLocator())


def _floor(series) -> float | None:
    """Where exact zeros of these y arrays go on a log axis: one decade below the smallest positive value
    (rounded down to a power of 10); None when no value is exactly 0."""
    ys = [np.abs(y[np.isfinite(y)]) for y in series]
    if not any((y == 0).any() for y in ys):
        return None
    positive = [y[y > 0].min() for y in ys if (y > 0).any()]
    low = min(positive) if positive else 1.0
    return 10.0 ** (math.floor(math.log10(low)) - 1)


def _mark_floor(ax, floor: float | None) -> None:
    if floor is None:
        return
    ax.axhline(floor, color="0.45", lw=0.7, ls=":", zorder=0.5)
    ax.text(0.99, floor, " = 0 (exact)", transform=ax.get_yaxis_transform(), ha="right", va="bottom", fontsize=6.5,
            color="0.35")


def _on_log_axis(y: np.ndarray, floor: float | None) -> np.ndarray:
    """|y| with exact zeros on the floor; NaN stays NaN (a gap)."""
    y = np.abs(y)
    if floor is not None:
        y = np.where(y == 0, floor, y)
    return y


def _x_axis(ax, pairs, x_names: str) -> None:
    """Log x (symlog, linear below 1) when the runs' x ranges differ by LOG_X_RATIO or more."""
    ends = [float(np.nanmax(x)) for x in (series(r, r.x_key)[0] for r, _ in pairs) if len(x) and np.nanmax(x) > 0]
    if ends and max(ends) >= LOG_X_RATIO * min(ends):
        ax.set_xscale("symlog", linthresh=1.0, linscale=0.6)
        ax.set_xlim(left=0)
        ax.set_xlabel(f"{x_names} (log scale)")
    else:
        ax.set_xlabel(x_names)
    _few_x_ticks(ax)


def series(run: runlib.Run, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of one column against the run's x axis (cached: each column is parsed once per report);
    ``"balance"`` is the max over the balance_* columns; missing and non-numeric cells are NaN."""
    cache = run.cache.setdefault("series", {})
    if key in cache:
        return cache[key]
    x_key = run.x_key
    rows = [r for r in run.rows if runlib.finite(r.get(x_key))] if x_key else []
    x = np.array([float(r[x_key]) for r in rows])
    if key == "balance":
        keys = [k for k in run.columns if k.startswith("balance")]
        y = [max((abs(v) for k in keys if (v := runlib.numeric(r.get(k))) is not None), default=math.nan)
             for r in rows]
    else:
        y = [math.nan if (v := runlib.numeric(r.get(key))) is None else v for r in rows]
    cache[key] = (x, np.array(y, dtype=float))
    return cache[key]


# ---------------------------------------------------------------------------------------------- metrics
def metric_panels(columns, with_gap: bool | None = None) -> list[str]:
    """Panel keys for the metrics figure: rel_gap, the NC families (headline columns: nc1_L1, nc2_w, nc2_h,
    nc3), balance (max over balance_* columns), the losses of runs without a known optimum (``with_gap``
    False; default: whether a rel_gap column exists) and "accuracy" (every *acc* column in one panel)."""
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


def _draw_log_panel(ax, curves) -> bool:
    """curves: [(x, y, kwargs)]; draws on a log y axis with the zero floor and gaps; True if any NaN gap."""
    floor = _floor([y for _, y, _ in curves])
    gaps = False
    for x, y, kw in curves:
        gaps |= bool(np.isnan(y).any())
        ax.plot(x, _on_log_axis(y, floor), **kw)
    _log_y(ax)
    _mark_floor(ax, floor)
    return gaps


@_styled
def metrics_figure(runs: list[runlib.Run], labels: list[str] | None = None, title: str = "") -> Figure | None:
    """NC metrics against step/epoch (log y), one curve per run (accuracies: one panel, linear, a line
    style per column); None if no run has metric rows."""
    labels = labels or runlib.run_labels(runs)
    colors = _colors(len(runs))
    pairs = [(r, lab, c) for r, lab, c in zip(runs, labels, colors) if r.rows and r.x_key]
    columns = list(dict.fromkeys(c for r, _, _ in pairs for c in r.columns))
    with_gap = any(runlib.finite(row.get("rel_gap")) for r, _, _ in pairs for row in r.rows)  # train: needs theory
    acc_columns = [c for c in columns if "acc" in c.lower()]

    def columns_of(panel: str) -> list[str]:
        return acc_columns if panel == "accuracy" else [panel]

    panels = [p for p in metric_panels(columns, with_gap)
              if any(np.isfinite(series(r, c)[1]).any() for r, _, _ in pairs for c in columns_of(p))]
    if not panels:
        return None
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = _grid(nrows, ncols, labels=[lab for _, lab, _ in pairs], title=bool(title))
    x_names = " / ".join(sorted({r.x_key for r, _, _ in pairs}))
    for ax, key in zip(axes, panels):
        curves = []
        for run, label, color in pairs:
            for col, style in zip(columns_of(key), LINE_STYLES):
                x, y = series(run, col)
                if np.isfinite(y).any():
                    curves.append((x, y, dict(ls=style, color=color, label=label if style == LINE_STYLES[0] else None)))
        if key == "accuracy":
            for x, y, kw in curves:
                ax.plot(x, y, **kw)
            ax.set_title("accuracy (" + ", ".join(f"{LINE_NAMES[s]}: {c}" for c, s in zip(acc_columns, LINE_STYLES))
                         + ")")
        else:
            gaps = _draw_log_panel(ax, curves)
            ax.set_title(panel_title(key) + (" (gaps: undefined)" if gaps else ""))
        _x_axis(ax, [(r, lab) for r, lab, _ in pairs], x_names)
    return _finish(fig, axes, len(panels), ncols, title)


def _layer_columns(depth: int) -> list[int]:
    if depth <= MAX_LAYER_COLUMNS:
        return list(range(1, depth + 1))
    return sorted({int(v) for v in np.linspace(1, depth, MAX_LAYER_COLUMNS).round()})


@_styled
def layer_metrics_figure(runs: list[runlib.Run], labels: list[str] | None = None,
                         title: str = "") -> Figure | None:
    """Per-layer NC trajectories: a row per metric (NC1 of H_j, NC2 of W_M..W_j, NC2 of the class means of
    H_j, NC3 of W_M..W_j against them), a column per layer j (at most MAX_LAYER_COLUMNS: first, last and
    evenly between), one curve per run; None unless some run has two or more layers with such columns."""
    labels = labels or runlib.run_labels(runs)
    colors = _colors(len(runs))
    pairs = [(r, lab, c) for r, lab, c in zip(runs, labels, colors) if r.rows and r.x_key]
    depth = max((p[1] for r, _, _ in pairs for c in r.columns
                 if (p := runlib.layer_of(c)) is not None and p[0] in colnames.PER_LAYER), default=0)
    if depth < 2:
        return None
    layers = _layer_columns(depth)

    def has(base: str, j: int) -> bool:
        col = colnames.layer_column(base, j)
        return any(col in r.columns and np.isfinite(series(r, col)[1]).any() for r, _, _ in pairs)

    bases = [b for b in colnames.PER_LAYER if any(has(b, j) for j in layers)]
    if not bases:
        return None
    ncols = len(layers)
    fig, axes = _grid(len(bases), ncols, panel=(2.4, 1.8), gap=(0.22, 0.5), labels=[lab for _, lab, _ in pairs],
                      title=True, sharex=True, sharey="row")
    axes2 = axes.reshape(len(bases), ncols)
    x_names = " / ".join(sorted({r.x_key for r, _, _ in pairs}))
    for i, base in enumerate(bases):
        row_curves = {j: [] for j in layers}
        for j in layers:
            col = colnames.layer_column(base, j)
            for run, label, color in pairs:
                if col in run.columns:
                    x, y = series(run, col)
                    if np.isfinite(y).any():
                        row_curves[j].append((x, y, dict(color=color, label=label)))
        floor = _floor([y for curves in row_curves.values() for _, y, _ in curves])
        for j, ax in zip(layers, axes2[i]):
            ax.minorticks_off()
            gaps = False
            for x, y, kw in row_curves[j]:
                gaps |= bool(np.isnan(y).any())
                ax.plot(x, _on_log_axis(y, floor), **kw)
            if not row_curves[j]:
                ax.text(0.5, 0.5, "not recorded", transform=ax.transAxes, ha="center", va="center", color="0.5")
            ax.set_title(f"{LAYER_TITLES[base]}, j = {j}" + (" (gaps: undefined)" if gaps else ""), fontsize=8)
            if i == len(bases) - 1:
                _x_axis(ax, [(r, lab) for r, lab, _ in pairs], x_names)
        # every row has a curve (``bases`` keeps only the metrics some run recorded): log y on its first drawn panel
        _log_y(next(ax for ax in axes2[i] if ax.lines))
        _mark_floor(axes2[i][0], floor)
    return _finish(fig, axes, len(bases) * ncols, ncols, title or "NC metrics at every layer j (columns) "
                   "against " + x_names)


@_styled
def layers_figure(runs: list[runlib.Run], labels: list[str] | None = None, title: str = "") -> Figure | None:
    """Final value of every per-layer NC metric (nc1_L1..nc1_LM, ...) against the layer, one curve per run;
    None unless some run measures a metric at two or more layers."""
    labels = labels or runlib.run_labels(runs)
    colors = _colors(len(runs))
    families: dict[str, list] = {}
    for run, label, color in zip(runs, labels, colors):
        for base, cols in runlib.per_layer_columns(run.columns).items():
            families.setdefault(base, []).append((run, label, color, cols))
    families = {b: v for b, v in families.items() if any(len(cols) >= 2 for *_, cols in v)}
    order = {b: i for i, b in enumerate(colnames.PER_LAYER)}
    families = dict(sorted(families.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
    if not families:
        return None
    ncols = min(3, len(families))
    nrows = math.ceil(len(families) / ncols)
    fig, axes = _grid(nrows, ncols, labels=[lab for lab, _ in zip(labels, runs)], title=bool(title))
    for ax, (base, entries) in zip(axes, families.items()):
        curves = []
        for run, label, color, cols in entries:
            vals = np.array([math.nan if (v := runlib.numeric(run.final.get(c))) is None else v for _, c in cols])
            if np.isfinite(vals).any():
                curves.append((np.array([j for j, _ in cols]), vals, dict(marker="o", ms=3, color=color, label=label)))
        _draw_log_panel(ax, curves)
        ax.set_xlabel("layer j (input of W_j)")
        ax.set_title(f"final {base} per layer")
        ax.xaxis.get_major_locator().set_params(integer=True)
    return _finish(fig, axes, len(families), ncols, title)


# ---------------------------------------------------------------------------------------------- theory
def _class_groups(points) -> list[tuple[float, float, list[int]]]:
    """Classes drawn at (nearly) the same place, grouped: [(x, y, [k, ...])] (one label per group)."""
    groups: list[tuple[float, float, list[int]]] = []
    span = max((max(abs(x), abs(y)) for x, y, _ in points), default=1.0) or 1.0
    for x, y, k in points:
        for gx, gy, ks in groups:
            if abs(gx - x) <= 0.02 * span and abs(gy - y) <= 0.02 * span:
                ks.append(k)
                break
        else:
            groups.append((x, y, [k]))
    return groups


def _class_text(ks: list[int], counts) -> str:
    ks = sorted(set(ks))
    names = ",".join(map(str, ks)) if len(ks) <= 6 else ",".join(map(str, ks[:4])) + f",.. ({len(ks)} classes)"
    ns = sorted({counts[k] for k in ks if counts and k < len(counts)})
    return f"k={names}" + (f" (n={ns[0]})" if len(ns) == 1 else "")


@_styled
def norms_figure(runs: list[runlib.Run], labels: list[str] | None = None, title: str = "") -> Figure | None:
    """Learned (last snapshot) against predicted ||w_k|| and ||h_k||; None if no run has both. Classes drawn at
    the same place get one label ("k=2,3 (n=50)"); the legend sits outside the panels."""
    labels = labels or [None] * len(runs)
    pairs = [(r, lab, runlib.predicted_norms(r), runlib.learned_norms(r)) for r, lab in zip(runs, labels)]
    pairs = [p for p in pairs if p[2] is not None and p[3] is not None and len(p[2]["w"]) == len(p[3]["w"])]
    if not pairs:
        return None
    if None in [p[1] for p in pairs]:  # legend labels among the runs drawn
        pairs = [(r, lab, pr, le) for (r, _, pr, le), lab in zip(pairs, runlib.run_labels([p[0] for p in pairs]))]
    entries = [lab for _, lab, _, _ in pairs] + ["learned = predicted"]
    fig, axes = _grid(1, 2, panel=(3.6, 3.2), gap=(0.8, 0.5), labels=entries, title=bool(title))
    colors = _colors(len(pairs))
    for ax, key, name in zip(axes, ("w", "h"), ("classifier rows ||w_k||", "class means ||h_k||")):
        hi, points = 0.0, []
        for (_, label, pred, learned), color in zip(pairs, colors):
            if learned[key] is None:
                continue
            ax.scatter(pred[key], learned[key], s=26, alpha=0.85, label=label, color=color, zorder=3)
            points += [(float(px), float(ly), k) for k, (px, ly) in enumerate(zip(pred[key], learned[key]))]
            hi = max(hi, float(np.max(pred[key], initial=0)), float(np.max(learned[key], initial=0)))
        groups = _class_groups(points)
        if len(pairs) <= 3 and len(groups) <= 16:  # class labels, one per place, none over another
            counts = pairs[0][0].counts if len(pairs) == 1 else None
            span = max(hi, 1e-300)
            placed: list[tuple[float, float]] = []
            for x, y, ks in sorted(groups, key=lambda g: -g[1]):
                if any(abs(x - px) < 0.22 * span and abs(y - py) < 0.045 * span for px, py in placed):
                    continue
                placed.append((x, y))
                ax.annotate(_class_text(ks, counts), (x, y), fontsize=6.5, xytext=(4, -9), textcoords="offset points",
                            color="0.25")
        if not points:
            ax.text(0.5, 0.5, "not stored in these runs", transform=ax.transAxes, ha="center", va="center", color="0.5")
        hi = hi * 1.12 if hi > 0 else 1.0
        ax.plot([0, hi], [0, hi], "k--", lw=0.8, label="learned = predicted", zorder=1)
        ax.set_xlim(0, hi)
        ax.set_ylim(0, hi)
        ax.set_xlabel("predicted (nclab.predict)")
        ax.set_ylabel("learned (last snapshot)")
        ax.set_title(name)
    return _finish(fig, axes, 2, 2, title)


@_styled
def gram_figure(run: runlib.Run, title: str = "") -> Figure | None:
    """Learned (top) and predicted (bottom; or the named ETF/OF target of a train run without a theory
    target) Grams, each divided by its Frobenius norm; only the Grams the run stores (a train run written
    before grams.json: W W^T from its weights); None without learned Grams.

    All heatmaps and the colour scale are images in ONE axes without axis machinery (a K x K heatmap needs no
    ticks; class indices are text on the outer edges): a twentieth of the drawing time of a panel grid."""
    learned = runlib.learned_grams(run)
    if learned is None:
        return None
    ref = runlib.reference_grams(run)
    names = [(k, n) for k, n in (("WWt", "W W^T"), ("HtH", "Hbar^T Hbar"), ("WH", "W Hbar"))
             if learned.get(k) is not None]
    K = learned[names[0][0]].shape[0]
    rows = [("learned", learned)] + ([(ref[1], ref[0])] if ref is not None and ref[0]["WWt"].shape[0] == K else [])
    only_w = learned.get("source", "").startswith("weights.pt (head")
    cell, gap_x, gap_y = 2.3, 0.5, 0.55  # inches per heatmap, between heatmaps
    ncols, nrows = len(names), len(rows)
    left, right, bottom, top = 0.35 + 0.5 * (ncols == 1), 1.0 + 0.5 * (ncols == 1), 0.3, 0.55 + 0.3 * only_w
    width = left + ncols * cell + (ncols - 1) * gap_x + right
    height = bottom + nrows * (cell + 0.25) + (nrows - 1) * gap_y + top
    fig = Figure(figsize=(width, height), dpi=INLINE_DPI)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_axis_off()
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    image = None
    for r, (source, grams) in enumerate(rows):
        y0 = height - top - (r + 1) * (cell + 0.25) - r * gap_y  # bottom edge of this row's heatmaps
        for c, (key, name) in enumerate(names):
            x0 = left + c * (cell + gap_x)
            mat = np.asarray(grams[key], dtype=float)
            norm = np.linalg.norm(mat)
            shown = mat / norm if norm > 0 else mat
            image = ax.imshow(shown, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest",
                              extent=(x0, x0 + cell, y0, y0 + cell), aspect="auto")
            ax.text(x0 + cell / 2, y0 + cell + 0.08, f"{name}, {source}", ha="center", va="bottom", fontsize=8)
            step = cell / K
            ticks = range(K) if K <= 12 else [0, K - 1]
            if r == nrows - 1:
                for k in ticks:
                    ax.text(x0 + (k + 0.5) * step, y0 - 0.05, str(k), ha="center", va="top", fontsize=6.5)
            if c == 0:
                for k in ticks:
                    ax.text(x0 - 0.05, y0 + cell - (k + 0.5) * step, str(k), ha="right", va="center", fontsize=6.5)
    # the colour scale: a vertical gradient with its three values
    x0, y0, h = width - right + 0.35, bottom + 0.2, height - top - bottom - 0.4
    ax.imshow(np.linspace(1, -1, 64)[:, None], cmap="RdBu_r", vmin=-1, vmax=1, extent=(x0, x0 + 0.14, y0, y0 + h),
              aspect="auto", interpolation="bilinear")
    for v in (-1, 0, 1):
        ax.text(x0 + 0.2, y0 + h * (v + 1) / 2, f"{v:g}", va="center", fontsize=7)
    ax.text(x0 + 0.55, y0 + h / 2, "entry / Frobenius norm", rotation=90, va="center", ha="center", fontsize=7.5)
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    note = "\nW W^T from the head's weights; class means not stored in this run" if only_w else ""
    _suptitle(fig, (title or run.name) + note)
    return fig if image is not None else None


@_styled
def phase_legend(ax, handles) -> None:
    """The legend right of a phase panel, in the room its figure keeps (``_grid(..., legend=...)``). Its font is
    fixed to the report's (STYLE), for which that room is sized: the page builds these figures outside STYLE,
    where matplotlib's 10 pt default runs past the figure."""
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.04, 1.0), borderaxespad=0.0,
              fontsize=STYLE["legend.fontsize"])


def style_phase_axes(ax, n, title: str) -> None:
    """Axes of a minority-collapse phase panel (MSE or CE): log lambda against log minority size n."""
    from matplotlib.ticker import FuncFormatter, NullFormatter, ScalarFormatter


    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(n.min(), n.max())
    ax.set_yticks([t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000) if n.min() <= t <= n.max()])
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_formatter(FuncFormatter(_power_label))  # plain text: no mathtext parser
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("lambda (= lambda_W = lambda_H)")
    ax.set_title(title)
    ax.grid(False)


def phase_figure(depths=phase.DEFAULT_DEPTHS, majority=phase.DEFAULT_MAJORITY, minority_classes: int = 2, *,
                 lambdas=None, sizes=None, marks=()) -> Figure:
    """Minority-collapse phase diagram: minority class size n against lambda (= lambda_W = lambda_H),
    coloured by the closed-form minimizer's state, one panel per depth.

    ``marks``: (depth, lambda, n, collapsed_or_None, label) points of runs to draw on top (filled:
    collapsed in the run, hollow: not, cross: unknown).
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    palette = ["#9ecae1", "#fd8d3c", "#bdbdbd"]  # not collapsed, minority collapsed, trivial
    cmap = ListedColormap(palette)
    depths = list(depths)
    fig, axes = _grid(1, len(depths), panel=(2.6, 2.6), gap=(0.55, 0.5), legend=1.9, title=True, left=0.7)
    for ax, M in zip(axes, depths):
        lam, n, states = phase.phase_grid(majority, minority_classes, M, lambdas=lambdas, sizes=sizes)
        ax.pcolormesh(lam, n, states, cmap=cmap, vmin=-0.5, vmax=2.5, shading="nearest")
        for m_depth, m_lam, m_n, collapsed, _ in marks:
            if m_depth != M:
                continue
            face = "k" if collapsed else "none"
            ax.plot([m_lam], [m_n], marker="x" if collapsed is None else "o", ms=7, mec="k", mfc=face, ls="none")
        style_phase_axes(ax, n, f"M = {M}")
    axes[0].set_ylabel(f"minority class size n ({minority_classes} classes)")
    handles = [Patch(color=c, label=phase.STATE_NAMES[s]) for s, c in enumerate(palette)]
    if marks:
        from matplotlib.lines import Line2D

        handles += [Line2D([], [], marker="o", mfc="k", mec="k", ls="none", label="run: minority collapsed"),
                    Line2D([], [], marker="o", mfc="none", mec="k", ls="none", label="run: not collapsed")]
    phase_legend(axes[-1], handles)
    _suptitle(fig, f"Minority collapse (bias-free MSE), majority classes {list(majority)}")
    return fig


def phase_setup(runs: list[runlib.Run]) -> dict:
    """Arguments of :func:`phase_figure` for a set of runs: the first imbalanced bias-free MSE run's majority
    classes (else the paper's [200, 100] + two minority classes), the depths of the runs on that setting (at
    most 4; the defaults 1, 2, 3, 6 when no run is), and a mark for every run with equal decays on it."""
    majority, minority_classes = list(phase.DEFAULT_MAJORITY), 2
    candidates = [r for r in runs if r.counts and r.config.get("loss", "mse") == "mse" and not r.config.get("bias")
                  and phase.split_counts(r.counts) is not None]
    if candidates:
        majority, _, minority_classes = phase.split_counts(candidates[0].counts)
    same = [r for r in candidates if phase.split_counts(r.counts)[0] == majority
            and phase.split_counts(r.counts)[2] == minority_classes]
    run_depths = sorted({r.depth for r in same if r.depth})
    depths = run_depths[:4] if run_depths else list(phase.DEFAULT_DEPTHS)
    marks = []
    for r in same:
        _, low, _ = phase.split_counts(r.counts)
        lams = [runlib.numeric(v) for v in np.atleast_1d(r.config.get("lambda_w", [])).tolist()]
        lams.append(runlib.numeric(r.config.get("lambda_h")))
        if r.depth not in depths or len(set(lams)) != 1 or lams[0] is None or not lams[0] > 0:
            continue
        learned = runlib.learned_collapsed(r)
        collapsed = None if learned is None else bool(set(range(len(majority), len(r.counts))) & set(learned))
        marks.append((r.depth, float(lams[0]), low, collapsed, r.name))
    top = max(majority) if majority else 100
    return {"depths": depths, "majority": majority, "minority_classes": minority_classes, "marks": marks,
            "lambdas": np.geomspace(1e-4, 1e-1, 46),  # a report-sized grid: ~0.1 s of predict calls per depth
            "sizes": np.unique(np.geomspace(1, top, 28).round().astype(int))}


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
