"""``nclab runs``: list the runs in some folders with their key parameters, status and final metrics."""

from __future__ import annotations

import json

import click

from nclab.cli._common import friendly_errors


def _metric(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


@click.command("runs")
@click.argument("dirs", nargs=-1, required=True, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="One JSON list: path, kind, status, params, final metrics, "
              "config per run.")
@friendly_errors
def runs_cmd(dirs, as_json):
    """List the run directories given or found (recursively) under DIRS.

    \b
    Examples:
      nclab runs runs/                 # every run below runs/
      nclab runs runs/gof --json       # machine-readable, with the full final metrics row
    """
    from nclab.report.runs import describe, load_runs

    found = [describe(r) for r in load_runs(dirs)]
    if as_json:
        click.echo(json.dumps(found, indent=2, allow_nan=True))
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
