"""``nclab demo``: the README's main job on embedded defaults."""

from __future__ import annotations

import sys

import click

from nclab.cli._common import friendly_errors


@click.command("demo")
@click.option("--out", "-o", default="nclab-demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for every run and the report (re-running resumes).")
@click.option("--progress/--no-progress", default=None, help="Progress bars [default: on a terminal].")
@friendly_errors
def demo_cmd(out, progress):
    """Theory, UFM simulations, a digits MLP with a deep linear head, and the report page.

    \b
    Examples:
      nclab demo                       # everything under ./nclab-demo (26 s measured on 2 cores)
      nclab demo --out /tmp/nc --no-progress
      nclab demo                       # again: finished runs are reused, the report is redrawn
    """
    from nclab.demo import run_demo

    if progress is None:
        progress = sys.stderr.isatty()
    try:
        run_demo(out, log=click.echo, progress=progress)
    except KeyboardInterrupt:
        click.echo("\ninterrupted; run the same command again to finish (finished runs are reused)", err=True)
        sys.exit(130)
