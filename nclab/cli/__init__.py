"""The ``nclab`` command: one subcommand per API verb, no mathematics here.

Every subcommand turns a ``ValueError`` raised by the library (bad input) into one line
``error: ...`` on stderr and exit status 2, the convention of click's own usage errors; the group
below prints click's usage errors (unknown option, bad value, missing argument) the same way, so every
nclab error line starts with ``error:``.

Start-up: a subcommand's module is imported only when that subcommand runs (or shows its own help), so
``nclab --help``, ``nclab predict`` and ``nclab runs`` never import torch or matplotlib. ``nclab --help``
lists the commands from :data:`COMMANDS` (a test checks each summary against its command's docstring).
"""

from __future__ import annotations

import importlib

import click
from click.exceptions import NoArgsIsHelpError

from nclab import __version__

# name: (module, attribute, the first paragraph of its docstring: the summary `nclab --help` shows)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": ("nclab.cli.demo", "demo_cmd",
             "Theory, UFM simulations, a digits MLP with a deep linear head, and the report page."),
    "measure": ("nclab.cli.measure", "measure_cmd",
                "NC metrics of a saved dump (.npz or .pt) or of a trained run folder PATH."),
    "predict": ("nclab.cli.predict", "predict_cmd",
                "Closed-form global minimizer of the deep linear UFM: which geometry is optimal, which classes "
                "collapse and why, the predicted class norms (and Grams)."),
    "report": ("nclab.cli.report", "report_cmd",
               "Write an HTML report for the runs given or found (recursively) under DIRS."),
    "runs": ("nclab.cli.runs", "runs_cmd",
             "List the run directories given or found (recursively) under DIRS [default: the current directory]."),
    "simulate": ("nclab.cli.simulate", "simulate_cmd",
                 "Train the deep linear UFM (free features + M linear layers) and compare with the prediction."),
    "sweep": ("nclab.cli.sweep", "sweep_cmd", "Run a grid of `simulate` (or `train`) runs described by a TOML file."),
    "train": ("nclab.cli.train", "train_cmd",
              "Train a network with a deep linear head and track neural collapse at every head layer."),
}


def load_command(name: str) -> click.Command:
    """Import the subcommand ``name`` (a key of :data:`COMMANDS`)."""
    module, attr, _ = COMMANDS[name]
    return getattr(importlib.import_module(module), attr)


def _show_error(exc: click.ClickException, file=None) -> None:
    """One line ``error: <message>`` (plus where to get help for usage errors), as :func:`_common.fail`."""
    message = exc.format_message()
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click.UsageError) and ctx is not None:
        message += f" (see '{ctx.command_path} --help')"
    click.echo(f"error: {message}", file=file, err=file is None)


class NclabGroup(click.Group):
    """``click.Group`` whose usage errors print as ``error: ...`` (exit status 2), like nclab's own errors, and
    whose subcommands (:data:`COMMANDS`) are imported when first used."""

    def list_commands(self, ctx):
        return sorted(set(COMMANDS) | set(self.commands))

    def get_command(self, ctx, name):
        if name not in self.commands and name in COMMANDS:
            self.add_command(load_command(name), name)
        return self.commands.get(name)

    def format_commands(self, ctx, formatter):
        """The command list of ``nclab --help`` without importing the commands not loaded yet."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(n) for n in names)
        rows = []
        for name in names:
            cmd = self.commands.get(name)
            if cmd is not None:
                if not cmd.hidden:
                    rows.append((name, cmd.get_short_help_str(limit)))
            else:
                rows.append((name, click.Command(name, help=COMMANDS[name][2]).get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

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


def __getattr__(name: str):
    """``nclab.cli.simulate_cmd`` and the like, imported on first use (PEP 562)."""
    for key, (_, attr, _) in COMMANDS.items():
        if attr == name:
            return load_command(key)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    cli(prog_name="nclab")
