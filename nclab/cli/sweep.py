"""``nclab sweep``: a grid of simulate/train runs from a TOML file, in parallel, resumable, one report."""

from __future__ import annotations

import sys

import click

from nclab.cli._common import friendly_errors


def describe(entry: dict) -> str:
    """One line for a manifest entry: ``name: status at step N (x.x s)``."""
    step = f" at step {entry['step']}" if entry.get("step") is not None else ""
    secs = f" ({entry['seconds']:.1f} s)" if entry.get("seconds") is not None else ""
    reused = " (already finished)" if entry.get("reused") else ""
    batch = f" [batch of {entry['batch']}]" if (entry.get("batch") or 1) > 1 else ""
    msg = f": {entry['message']}" if entry["status"] == "failed" and entry.get("message") else ""
    return f"{entry['name']}: {entry['status']}{step}{secs}{batch}{reused}{msg}"


@click.command("sweep")
@click.argument("sweep_file", metavar="FILE.toml")
@click.option("--out", "-o", type=click.Path(file_okay=False), help="Sweep folder [default: runs/<sweep name>]; "
              "rerunning with the same folder skips finished runs and resumes interrupted ones.")
@click.option("--workers", "-j", type=click.IntRange(min=1), help="Runs in parallel, one thread each "
              "[default: min(CPU count, runs)].")
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local worker processes, or one Ray task per run (needs ray).")
@click.option("--ray-address", help="Ray cluster to join [default: $RAY_ADDRESS, else a local Ray]; --out must "
              "then be on a file system every node sees.")
@click.option("--dry-run", is_flag=True, help="Validate the file and list the runs; run and write nothing.")
@click.option("--report/--no-report", default=True, show_default=True, help="One HTML report for the sweep.")
@click.option("--batch/--no-batch", default=True, show_default=True, help="Train simulate runs of one shape "
              "(K, N, widths, loss, SGD/Adam, steps, intervals) together, each worker a batch (run folders as "
              "if run alone).")
@friendly_errors
def sweep_cmd(sweep_file, out, workers, backend, ray_address, dry_run, report, batch):
    """Run a grid of `simulate` (or `train`) runs described by a TOML file.

    \b
    Example file (3 x 2 x 2 = 12 runs):
      kind = "simulate"
      [base]
      counts = [200, 100, 50, 50]
      optimizer = "lbfgs"
      steps = 300
      [grid]
      depth = [1, 3, 6]
      lambda_w = [5e-4, 1e-3]
      seed = [0, 1]

    \b
    Examples:
      nclab sweep depths.toml --dry-run                # list the runs
      nclab sweep depths.toml --out runs/depths -j 4   # Ctrl-C, then the same command to finish
      nclab sweep depths.toml --backend ray
    """
    from nclab.experiments.sweep import FINISHED, load_sweep, run_sweep

    spec = load_sweep(sweep_file)

    def on_run(entry, done, total):
        click.echo(f"[{done}/{total}] {describe(entry)}")

    try:
        res = run_sweep(spec, out, workers=workers, backend=backend, report=report, dry_run=dry_run,
                        address=ray_address, callback=on_run, batch=batch)
    except KeyboardInterrupt:
        where = f" --out {out}" if out is not None else ""
        click.echo(f"\ninterrupted; running runs were checkpointed. Run the same command (nclab sweep {sweep_file}"
                   f"{where}) to finish the sweep.", err=True)
        sys.exit(130)
    if dry_run:
        click.echo(f"{len(res.runs)} runs ({res.spec.kind}) in {res.out}:")
        for e in res.runs:
            what = "run" if e["status"] == "pending" else "skip, finished" if e["status"] in FINISHED else "resume"
            click.echo(f"  {e['name']}  [{what}]")
        return
    for e in res.runs:
        if e["reused"]:
            click.echo(f"  {describe(e)}")
    n_fin = len(res.finished)
    click.echo(f"sweep {res.spec.name}: {n_fin}/{len(res.runs)} runs finished -> {res.out}")
    diverged = [e["name"] for e in res.runs if e["status"] == "diverged"]
    if diverged:
        click.echo(f"warning: {len(diverged)} run(s) diverged (non-finite loss): {', '.join(diverged)}", err=True)
    if res.report_message:
        click.echo(res.report_message, err=res.report is None)
    if res.failed:
        click.echo(f"error: {len(res.failed)} run(s) failed: {', '.join(res.failed)} (details in {res.out}/sweep.json;"
                   " rerun the command to retry them)", err=True)
        sys.exit(1)
    if res.report_message.startswith("report failed"):
        sys.exit(1)
