"""``nclab runs``: list the runs in some folders with their key parameters, status and final metrics."""

from __future__ import annotations

import json
import math

import click

from nclab.cli._common import friendly_errors


def _metric(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _strict(obj):
    """NaN and infinities as null: ``--json`` is strict JSON, as the run files are."""
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_strict(v) for v in obj]
    return None if isinstance(obj, float) and not math.isfinite(obj) else obj


@click.command("runs")
@click.argument("dirs", nargs=-1, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="One JSON list: path, kind, status, params, final metrics, "
              "config per run.")
@friendly_errors
def runs_cmd(dirs, as_json):
    """List the run directories given or found (recursively) under DIRS [default: the current directory].

    A run file that cannot be read (summary.json that is not a JSON object, a binary metrics.csv, ...) is
    named in a warning on stderr and left out; the run is still listed.

    \b
    Examples:
      nclab runs                       # every run below the current directory
      nclab runs runs/                 # every run below runs/
      nclab runs runs/gof --json       # machine-readable, with the full final metrics row
    """
    from nclab.report.runs import describe, load_runs

    runs = load_runs(list(dirs) or ["."])
    for run in runs:
        for problem in run.problems:
            click.echo(f"warning: {problem}", err=True)
    found = [describe(r) for r in runs]
    if as_json:
        click.echo(json.dumps(_strict(found), indent=2, allow_nan=False))
        return
    table = [["run", "kind", "status", "progress", "parameters", "final metrics"]]
    for d in found:
        params = " ".join(f"{k}={v}" for k, v in d["params"].items())
        metrics = "  ".join(f"{c} {_metric(d['final'].get(c))}" for c in d["headline"][:6])
        table.append([d["path"], d["kind"], d["status"], d["progress"], params, metrics])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    click.echo(f"{len(found)} run(s)")
