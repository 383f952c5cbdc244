"""``nclab report``: one self-contained HTML page (figures embedded) for one run, several, or a sweep."""

from __future__ import annotations

import click

from nclab.cli._common import friendly_errors


@click.command("report")
@click.argument("dirs", nargs=-1, required=True, type=click.Path())
@click.option("--out", "-o", type=click.Path(), help="HTML file [default: DIR/report.html for one DIR, else "
              "./report.html].")
@click.option("--title", help="Page title [default: the folder name].")
@click.option("--figures-dir", type=click.Path(), help="Also write every figure there as PNG (150 dpi) + PDF.")
@click.option("--phase-diagram/--no-phase-diagram", default=True, show_default=True,
              help="Include the minority-collapse phase diagram (the runs' depths; ~0.1 s of closed-form solves "
              "per depth).")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines on stderr (warnings are still printed).")
@friendly_errors
def report_cmd(dirs, out, title, figures_dir, phase_diagram, quiet):
    """Write an HTML report for the runs given or found (recursively) under DIRS.

    The page holds everything inline (figures as PNG, no external files) and opens offline: runs and
    their parameters, theory predictions next to the measurements, NC metrics against step/epoch and at
    every layer, learned against predicted class norms and Gram heatmaps, which classes collapsed, the
    minority-collapse phase diagram, metrics tables, configs and environments. Progress goes to stderr,
    one line per stage; a run file that cannot be read is named in a warning and left out.

    \b
    Examples:
      nclab report runs/gof                        # the depth folders of a --depths run -> runs/gof/report.html
      nclab report runs/a runs/b --out cmp.html    # several runs on one page
    """
    from nclab.report import build_report

    def progress(line: str) -> None:
        if not quiet or line.startswith("warning"):
            click.echo(line, err=True)

    path = build_report(list(dirs), out, title=title, figures_dir=figures_dir, phase_diagram=phase_diagram,
                        progress=progress)
    click.echo(f"report: {path} (open file://{path.resolve()})")
