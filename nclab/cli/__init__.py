"""The ``nclab`` command: one subcommand per API verb, no mathematics here.

Every subcommand turns a ``ValueError`` raised by the library (bad input) into one line
``error: ...`` on stderr and exit status 2, the convention of click's own usage errors.
"""

from __future__ import annotations

import click

from nclab import __version__
from nclab.cli.demo import demo_cmd
from nclab.cli.measure import measure_cmd
from nclab.cli.predict import predict_cmd
from nclab.cli.report import report_cmd
from nclab.cli.runs import runs_cmd
from nclab.cli.simulate import simulate_cmd
from nclab.cli.sweep import sweep_cmd
from nclab.cli.train import train_cmd


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nclab")
def cli() -> None:
    """Neural collapse in deep linear networks: theory, simulation, measurement."""


cli.add_command(demo_cmd)
cli.add_command(predict_cmd)
cli.add_command(simulate_cmd)
cli.add_command(measure_cmd)
cli.add_command(runs_cmd)
cli.add_command(report_cmd)
cli.add_command(sweep_cmd)
cli.add_command(train_cmd)


def main() -> None:
    cli(prog_name="nclab")
