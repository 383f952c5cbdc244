"""The report page: one self-contained HTML file for any set of runs (one run, the depth folders of
``nclab simulate --depths``, a whole sweep).

Everything is inline: figures as base64 PNG ``<img>``, one ``<style>``, one small ``<script>`` that only
checks the page (after load it sets ``data-rendered="ok"`` on ``<body>`` when every image decoded and every
table has rows; a headless browser test reads it). No network, no external assets: it opens offline.

Sections: runs (parameters, status, final metrics), warnings (files of a run that could not be read),
theory vs measurement (objective gap, collapsed classes, final NC metrics), figures, one section per run
(config, prediction and thresholds, per-class norms, metrics table, Gram heatmaps, environment).

Figures (per run kind where the kinds are mixed): NC metrics against step/epoch; NC metrics at every layer
(one row per metric, one column per layer); final NC metrics per layer; learned against predicted class
norms; the minority-collapse phase diagram; per run, learned against predicted Gram heatmaps. Each is
drawn once (Agg, PNG; PDF only when ``figures_dir`` asks for files).
"""

from __future__ import annotations

import base64
import datetime
import gc
import html
import json
import math
import os
import pathlib
import tempfile
import time

import numpy as np

from nclab.report import figures as figlib
from nclab.report import phase as phaselib
from nclab.report import runs as runlib
from nclab.results import atomic_write_bytes

MAX_GRAM_FIGURES = 16  # Gram heatmaps (weights.pt is loaded for each) for the first runs only
MAX_TABLE_ROWS = 12  # metrics table: first, last and evenly spaced rows in between
MAX_CLASS_ROWS = 50

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1180px;padding:0 1em;
color:#222;line-height:1.4}
h1{font-size:1.5em;margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
h3{margin-bottom:.3em}.meta{color:#666;font-size:.9em}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.85em}
th,td{border:1px solid #ddd;padding:.2em .5em;text-align:right;vertical-align:top}
th{background:#f3f3f3}td.l,th.l{text-align:left}
tr.bad td{background:#fdecea}p.bad{color:#a12;margin:.2em 0}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}
details{margin:.8em 0;border:1px solid #e3e3e3;border-radius:4px;padding:.3em .8em}
summary{cursor:pointer;font-weight:600}
code{font-size:.9em}.empty{color:#888;font-style:italic}.cols{display:flex;flex-wrap:wrap;gap:0 2.5em}
"""

CHECK_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var tables = Array.prototype.slice.call(document.querySelectorAll("table"));
  var filled = tables.filter(function (t) { return t.tBodies.length > 0 && t.tBodies[0].rows.length > 0; }).length;
  var b = document.body.dataset;
  b.imagesTotal = imgs.length; b.imagesRendered = ok; b.tablesTotal = tables.length; b.tablesFilled = filled;
  b.rendered = (ok === imgs.length && filled === tables.length) ? "ok" : "incomplete";
});
"""


# ---------------------------------------------------------------------------------------------- HTML bits
def fmt(v) -> str:
    """A cell: floats to 4 significant digits, None as a dash, lists as compact JSON."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    if isinstance(v, (list, dict)):
        text = json.dumps(v, separators=(",", ":"))
        return text if len(text) <= 120 else text[:117] + "..."
    return str(v)


def table(header: list[str], rows: list[list], *, left: int = 1, row_classes=None) -> str:
    """An HTML table (the first ``left`` columns left-aligned); "" when there are no rows."""
    if not rows:
        return ""
    esc = html.escape
    head = "".join(f'<th class="l">{esc(h)}</th>' if i < left else f"<th>{esc(h)}</th>" for i, h in enumerate(header))
    body = []
    for n, row in enumerate(rows):
        cls = f' class="{row_classes[n]}"' if row_classes and row_classes[n] else ""
        cells = "".join(f'<td class="l">{esc(fmt(v))}</td>' if i < left else f"<td>{esc(fmt(v))}</td>"
                        for i, v in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def key_value_table(d: dict) -> str:
    return table(["field", "value"], [[k, v] for k, v in d.items()], left=2)


def figure_html(fig, caption: str, name: str) -> str:
    """``fig``: a Figure (drawn here) or the PNG bytes of one already drawn."""
    png = fig if isinstance(fig, bytes) else figlib.png_bytes(fig)
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure id="fig-{html.escape(name)}"><img alt="{html.escape(caption)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{html.escape(caption)}</figcaption></figure>')


# ---------------------------------------------------------------------------------------------- content
def subsample(rows: list[dict], limit: int = MAX_TABLE_ROWS) -> list[dict]:
    if len(rows) <= limit:
        return rows
    idx = np.unique(np.linspace(0, len(rows) - 1, limit).round().astype(int))
    return [rows[i] for i in idx]


def runs_table(runs, names) -> str:
    headline = runlib.headline_columns(list(dict.fromkeys(c for r in runs for c in r.columns)), limit=6)
    rows, classes = [], []
    for r, label in zip(runs, names):
        params = " ".join(f"{k}={v}" for k, v in runlib.key_params(r).items())
        rows.append([label, r.kind, params, r.status, runlib.progress(r)] + [r.final.get(c) for c in headline])
        classes.append("bad" if r.status in ("diverged", "failed") else "")
    return table(["run", "kind", "parameters", "status", "progress"] + [f"final {c}" for c in headline], rows,
                 left=4, row_classes=classes)


def theory_row(run: runlib.Run, label: str) -> list | None:
    """Prediction next to measurement for one run; None when the run has no prediction."""
    pred = run.prediction
    if not pred:
        target = run.summary.get("target")
        if target not in runlib.TARGET_NAMES:
            return None
        pred = {"geometry": f"{runlib.TARGET_NAMES[target]} (no theory prediction: "
                            f"{run.summary.get('target_note') or 'chosen by the config'})"}
    final = run.final
    f, f_star = runlib.numeric(final.get("objective")), runlib.numeric(pred.get("objective"))
    rel = runlib.numeric(final.get("rel_gap"))
    if rel is None and f is not None and f_star is not None:
        rel = (f - f_star) / max(abs(f_star), 1e-300)
    predicted_collapsed = runlib.predicted_collapsed(run)
    learned_collapsed = runlib.learned_collapsed(run)
    K = run.num_classes

    def classes(ks):
        if ks is None:
            return "?"
        if K and len(ks) == K:
            return "all (the zero solution)"
        return ",".join(map(str, ks)) or "none"

    nc = runlib.headline_columns(run.columns or list(final), limit=50)
    nc = [c for c in nc if runlib.family_of(c) in runlib.NC_FAMILIES][:4]
    return [label, pred.get("geometry"), f_star, f, rel, final.get("w_norm_err"), final.get("h_norm_err"),
            classes(predicted_collapsed), classes(learned_collapsed),
            "; ".join(f"{c} {fmt(final.get(c))}" for c in nc) or "-"]


def theory_table(runs, names) -> str:
    rows = [row for r, name in zip(runs, names) if (row := theory_row(r, name)) is not None]
    header = ["run", "predicted geometry", "f* (predicted)", "f (final)", "rel. gap (f - f*)/|f*|",
              "norm error ||w_k||", "norm error ||h_k||", "collapsed classes, predicted", "collapsed, learned",
              "final NC metrics"]
    return table(header, rows, left=2)


def class_table(run: runlib.Run) -> str:
    pred, learned = runlib.predicted_norms(run), runlib.learned_norms(run)
    if pred is None and learned is None:
        return ""
    K = len(pred["w"] if pred is not None else learned["w"])
    if pred is not None and learned is not None and len(learned["w"]) != K:
        learned = None
    counts = run.counts or [None] * K
    value = lambda norms, key, k: None if norms is None or norms[key] is None else float(norms[key][k])  # noqa: E731
    rows = [[k, counts[k] if k < len(counts) else None, value(pred, "w", k), value(learned, "w", k),
             value(pred, "h", k), value(learned, "h", k)] for k in range(min(K, MAX_CLASS_ROWS))]
    note = f"<p class='empty'>first {MAX_CLASS_ROWS} of {K} classes</p>" if K > MAX_CLASS_ROWS else ""
    return table(["class k", "n_k", "||w_k|| predicted", "||w_k|| learned", "||h_k|| predicted", "||h_k|| learned"],
                 rows) + note


def prediction_table(run: runlib.Run) -> str:
    pred = run.prediction
    if not pred:
        return ""
    d = {"geometry": pred.get("geometry"), "objective f*": pred.get("objective"),
         "objective at zero": pred.get("objective_zero"), "Grams unique": pred.get("gram_unique")}
    d.update({f"threshold {k}": v for k, v in (pred.get("thresholds") or {}).items()})
    for k in ("etf_objective", "etf_is_global", "best_structure", "best_rank"):
        if k in pred:
            d[k] = pred[k]
    return key_value_table(d)


def metrics_table(run: runlib.Run) -> str:
    x = run.x_key
    cols = ([x] if x else []) + runlib.headline_columns(run.columns, limit=9)
    return table(cols, [[r.get(c) for c in cols] for r in subsample(run.rows)], left=0)


def final_table(run: runlib.Run) -> str:
    """Every final metric except the per-class norms (those are in the class table)."""
    return key_value_table({k: v for k, v in run.final.items() if not runlib.PER_CLASS.match(k)})


def environment_table(run: runlib.Run) -> str:
    env = dict(run.environment or {})
    previous = env.pop("previous", [])
    if previous:
        env["earlier sessions (resumes)"] = len(previous)
    return key_value_table(env)


def section(title: str, body: str, level: int = 3) -> str:
    return f"<h{level}>{html.escape(title)}</h{level}>" + (body or "<p class='empty'>none recorded</p>")


def run_section(run: runlib.Run, name: str, label: str, gram_fig, open_: bool) -> str:
    problems = "".join(f"<p class='bad'>warning: {html.escape(p)}</p>" for p in run.problems)
    parts = [f"<p class='meta'><code>{html.escape(str(run.path))}</code>: {html.escape(run.kind)}, "
             f"status {html.escape(run.status)}, {html.escape(runlib.progress(run))}, written by nclab "
             f"{html.escape(run.version)}. {html.escape(str(run.summary.get('message', '')))}</p>" + problems,
             "<div class='cols'><div>" + section("Configuration", key_value_table(run.config)) + "</div><div>"
             + section("Prediction (nclab.predict)", prediction_table(run)) + "</div><div>"
             + section("Final metrics", final_table(run)) + "</div></div>",
             section("Class norms: predicted and learned", class_table(run)),
             section(f"Metrics table ({len(run.rows)} rows; at most {MAX_TABLE_ROWS} shown)", metrics_table(run))]
    if gram_fig is not None:
        caption = f"{name}: learned and predicted Grams, each divided by its Frobenius norm"
        parts.append(section("Gram matrices", figure_html(gram_fig, caption, f"gram-{name}")))
    parts.append(section("Environment", environment_table(run)))
    extra = f" <small>({html.escape(label)})</small>" if label != name else ""
    return f"<details{' open' if open_ else ''}><summary>{html.escape(name)}{extra}</summary>{''.join(parts)}</details>"


# ---------------------------------------------------------------------------------------------- the page
def figure_jobs(runs: list[runlib.Run], phase_diagram: bool, labels: list[str] | None = None) -> list[tuple]:
    """(name, caption, builder) of the figures section, costliest first (builders are called where the
    figures are drawn, see figures.render_all): per kind of run (legends name the fields that differ within
    the kind) NC metrics at every layer, NC metrics against step/epoch, final NC metrics per layer; class
    norms; the phase diagram. ``labels``: one per run (default: runlib.run_labels per kind). The page keeps
    the order of :data:`SECTION_ORDER`."""
    jobs = []
    if phase_diagram:
        jobs.append(("phase", "Minority-collapse phase diagram from nclab.predict (bias-free MSE, "
                     "lambda_W = lambda_H = lambda), the runs' depths; markers: runs on this setting",
                     lambda: figlib.phase_figure(**figlib.phase_setup(runs))))
        ce_setup = phaselib.ce_phase_setup(runs)  # runs with CE: the CE diagram next to the MSE one
        if ce_setup is not None:
            jobs.append(("phase-ce", "Minority-collapse phase diagram under cross-entropy (lambda_W = lambda_H = "
                         "lambda): M = 1 exact from the certified threshold (rows merge iff n <= N^2 lambda^2, zero "
                         "iff the zero point's gradient has spectral norm <= lambda); M >= 2 from the rank search "
                         "(best found, not certified); markers: runs on this setting",
                         lambda s=ce_setup: phaselib.ce_phase_figure(**s)))
    kinds = list(dict.fromkeys(r.kind for r in runs))
    for kind in kinds:
        group = [r for r in runs if r.kind == kind]
        group_labels = runlib.run_labels(group) if labels is None else \
            [lab for r, lab in zip(runs, labels) if r.kind == kind]
        suffix = f"-{kind}" if len(kinds) > 1 else ""
        x_names = " / ".join(sorted({r.x_key for r in group if r.x_key}))
        jobs.append((f"layer-metrics{suffix}", f"{kind}: NC metrics at every layer j against {x_names}: NC1 of the "
                     "features H_j entering layer j, NC2 of the partial product W_M..W_j and of the class means of "
                     "H_j, NC3 between them (one column per layer)",
                     lambda g=group, lab=group_labels: figlib.layer_metrics_figure(g, lab)))
        jobs.append((f"metrics{suffix}", f"{kind}: NC metrics against {x_names} (log scale), one curve per run",
                     lambda g=group, lab=group_labels: figlib.metrics_figure(g, lab)))
        jobs.append((f"layers{suffix}", f"{kind}: final NC metrics at every layer",
                     lambda g=group, lab=group_labels: figlib.layers_figure(g, lab)))
    jobs.append(("norms", "Learned (last snapshot) against predicted class norms; on the dashed line the "
                 "learned geometry is the predicted one", lambda: figlib.norms_figure(runs)))
    return jobs


SECTION_ORDER = ("metrics", "layer-metrics", "layers", "norms", "phase")  # how the figures section reads


def _section_key(name: str) -> tuple:
    base = next((b for b in sorted(SECTION_ORDER, key=len, reverse=True) if name.startswith(b)), name)
    return (SECTION_ORDER.index(base) if base in SECTION_ORDER else len(SECTION_ORDER), name)


def summary_figures(runs: list[runlib.Run], phase_diagram: bool, labels: list[str] | None = None) -> list[tuple]:
    """(name, caption, Figure) of the figures section, built here, in page order (see :func:`figure_jobs`)."""
    built = [(n, c, make()) for n, c, make in figure_jobs(runs, phase_diagram, labels)]
    return sorted([(n, c, f) for n, c, f in built if f is not None], key=lambda t: _section_key(t[0]))


def default_title(paths, runs) -> str:
    """The folder's name (one folder given, or the common parent of the runs), else "N runs"."""
    if len(paths) == 1:
        return pathlib.Path(paths[0]).resolve().name
    common = pathlib.Path(os.path.commonpath([r.path.resolve() for r in runs]))
    if len(runs) == 1:
        common = common.parent
    return f"{common.name} ({len(runs)} runs)" if common.name else f"{len(runs)} runs"


def default_output(paths) -> pathlib.Path:
    """``DIR/report.html`` for one directory, ``report.html`` (working directory) for several."""
    paths = [paths] if isinstance(paths, (str, pathlib.PurePath)) else list(paths)
    return pathlib.Path(paths[0]) / "report.html" if len(paths) == 1 else pathlib.Path("report.html")


def check_figures_dir(path: pathlib.Path) -> None:
    """Raise one clear ValueError unless ``path`` is (or can be made) a writable directory."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"cannot write figures to {path}: it is a file, not a directory")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"cannot write figures to {path}: {existing} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ValueError(f"cannot write figures to {path}: {exc.strerror or exc}") from None


def check_writable(out: pathlib.Path) -> None:
    """Raise one clear ValueError unless ``out`` can be written (checked before any work)."""
    if out.is_dir():
        raise ValueError(f"cannot write the report to {out}: it is a directory (give a file, e.g. {out}/report.html)")
    existing = out.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"cannot write the report to {out}: {existing} is a file, not a directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out.parent):
            pass
    except OSError as exc:
        raise ValueError(f"cannot write the report to {out}: {exc.strerror or exc} ({out.parent})") from None


def build_report(run_dirs, out=None, *, title: str | None = None, figures_dir=None,
                 phase_diagram: bool = True, progress=None) -> pathlib.Path:
    """Write one self-contained HTML report for the runs given or found under ``run_dirs``.

    Parameters
    ----------
    run_dirs : path or sequence of paths, run directories or folders containing runs (searched recursively)
    out : path of the HTML file, default ``DIR/report.html`` for one directory, else ``./report.html``
    title : str, default the directory name (one), else the runs' common parent folder
    figures_dir : path or None, also write every figure there as PNG + PDF
    phase_diagram : bool, include the minority-collapse phase diagram (the runs' depths, ~0.1 s of solves per depth)
    progress : callable(str) or None, called with one line per stage (and one "warning: ..." line per file
        of a run that could not be read and was left out); ``nclab report`` prints them on stderr

    Returns
    -------
    Path of the written report.

    Raises
    ------
    ValueError : no runs found, a path that is not a run directory, an unwritable output or figures folder
    """
    from nclab import __version__

    t0 = time.perf_counter()

    def log(message: str) -> None:
        if progress is not None:
            progress(f"{message} ({time.perf_counter() - t0:.1f} s)" if not message.startswith("warning") else message)

    paths = [run_dirs] if isinstance(run_dirs, (str, pathlib.PurePath)) else list(run_dirs)
    if not paths:
        raise ValueError("give at least one run directory or folder of runs")
    out = pathlib.Path(out) if out is not None else default_output(paths)
    check_writable(out)
    if figures_dir is not None:
        figures_dir = pathlib.Path(figures_dir)
        check_figures_dir(figures_dir)
    runs = [runlib.load_run(p) for p in runlib.find_runs(paths)]
    log(f"report: read {len(runs)} run(s)")
    title = title or default_title(paths, runs)
    names = runlib.short_paths(runs)  # unique: table rows, figure files
    for run in runs:  # in this process, so that the tables see them (the figures are built in workers)
        runlib.learned_grams(run)
    jobs = figure_jobs(runs, phase_diagram)
    jobs += [(f"gram-{name.replace('/', '_')}", f"{name}: learned and predicted Grams, each divided by its "
              "Frobenius norm", lambda r=r, name=name: figlib.gram_figure(r, name))
             for i, (r, name) in enumerate(zip(runs, names)) if i < MAX_GRAM_FIGURES]
    log(f"report: building and drawing {len(jobs)} figures")
    dpi, formats = (figlib.INLINE_DPI, ("png",)) if figures_dir is None else (figlib.DPI, ("png", "pdf"))

    def done(count: int) -> None:
        if count % 6 == 0 or count == len(jobs):
            log(f"report: drew {count}/{len(jobs)} figures")

    gc_was_on = gc.isenabled()
    gc.disable()  # figures are many small objects: the cyclic collector would cost ~12% of the drawing time
    try:
        rendered = figlib.render_all([(make, dpi, formats) for _, _, make in jobs], on_done=done)
    finally:
        if gc_was_on:
            gc.enable()

    drawn = {}
    for (name, _, _), data in zip(jobs, rendered):  # each figure built and drawn once
        if data is not None and "error" in data:
            log(f"warning: figure {name} could not be drawn ({data['error']}); left out")
        elif data is not None:
            drawn[name] = data["png"]
            for fmt, blob in data.items() if figures_dir is not None else ():
                (figures_dir / f"{name}.{fmt}").write_bytes(blob)
    figures = sorted([(n, c) for n, c, _ in jobs if n in drawn and not n.startswith("gram-")],
                     key=lambda t: _section_key(t[0]))
    figure_parts = [figure_html(drawn[n], c, n) for n, c in figures]
    gram_pngs = [drawn.get(f"gram-{name.replace('/', '_')}") for name in names]
    labels = runlib.run_labels(runs)
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    sources = ", ".join(str(p) for p in paths)
    details = "".join(run_section(r, name, label, g, open_=len(runs) <= 4)
                      for r, name, label, g in zip(runs, names, labels, gram_pngs))
    problems = [p for r in runs for p in r.problems]  # after the figures: reading weights may add some
    for p in problems:
        log(f"warning: {p}")
    warnings = "".join(f"<li>{html.escape(p)}</li>" for p in problems)
    body = [f"<h1>nclab report: {html.escape(title)}</h1>",
            f"<p class='meta'>{len(runs)} run(s) from <code>{html.escape(sources)}</code>; generated {now} by "
            f"nclab {html.escape(__version__)}.</p>",
            "<nav><a href='#runs'>Runs</a> &middot; <a href='#theory'>Theory vs measurement</a> &middot; "
            "<a href='#figures'>Figures</a> &middot; <a href='#details'>Run details</a></nav>",
            "<section id='runs'>" + section("Runs", runs_table(runs, names), 2) + "</section>"]
    if warnings:
        body.append(f"<section id='warnings'><h2>Warnings</h2><ul class='bad'>{warnings}</ul></section>")
    body += ["<section id='theory'>" + section("Theory vs measurement", theory_table(runs, names), 2) + "</section>",
             "<section id='figures'><h2>Figures</h2>" + "".join(figure_parts) + "</section>",
             "<section id='details'><h2>Run details</h2>" + details + "</section>"]
    if len(runs) > MAX_GRAM_FIGURES:
        body.append(f"<p class='empty'>Gram heatmaps are shown for the first {MAX_GRAM_FIGURES} runs only.</p>")
    page = ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>nclab report: {html.escape(title)}</title><style>{CSS}</style></head>\n"
            f"<body data-rendered='pending' data-runs='{len(runs)}'>\n" + "\n".join(body)
            + f"\n<script>{CHECK_SCRIPT}</script>\n</body></html>\n")
    try:
        atomic_write_bytes(out, page.encode("utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot write the report to {out}: {exc.strerror or exc}") from None
    log(f"report: wrote {out}")
    return out
