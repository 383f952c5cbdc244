"""The ``nclab`` command: one subcommand per API verb, no mathematics here.

Every subcommand turns a ``ValueError`` raised by the library (bad input) into one line
``error: ...`` on stderr and exit status 2, the convention of click's own usage errors; the group
below prints click's usage errors (unknown option, bad value, missing argument) the same way, so every
nclab error line starts with ``error:``.
"""

from __future__ import annotations

import click
from click.exceptions import NoArgsIsHelpError

from nclab import __version__
from nclab.cli.demo import demo_cmd
from nclab.cli.measure import measure_cmd
from nclab.cli.predict import predict_cmd
from nclab.cli.report import report_cmd
from nclab.cli.runs import runs_cmd
from nclab.cli.simulate import simulate_cmd
from nclab.cli.sweep import sweep_cmd
from nclab.cli.train import train_cmd


def _show_error(exc: click.ClickException, file=None) -> None:
    """One line ``error: <message>`` (plus where to get help for usage errors), as :func:`_common.fail`."""
    message = exc.format_message()
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click.UsageError) and ctx is not None:
        message += f" (see '{ctx.command_path} --help')"
    click.echo(f"error: {message}", file=file, err=file is None)


class NclabGroup(click.Group):
    """``click.Group`` whose usage errors print as ``error: ...`` (exit status 2), like nclab's own errors."""

    @staticmethod
    def _restyle(exc: click.ClickException) -> None:
        if not isinstance(exc, NoArgsIsHelpError):  # that one prints the help page, keep it
            exc.show = lambda file=None: _show_error(exc, file)

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except click.ClickException as exc:
            self._restyle(exc)
            raise

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            self._restyle(exc)
            raise


@click.group(cls=NclabGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
