"""``nclab train``: a backbone + deep linear head, with NC tracked on the training set as it trains.

Every TrainConfig field is a flag (generated from the dataclass, so the two never drift apart); values
come from, in increasing priority: the preset, the TOML file, the flags.
"""

from __future__ import annotations

import json
import os
import sys
import time

import click

from nclab.cli._common import fail, friendly_errors, parse_int_list
from nclab.cli._runs import StatusLine, chain, check_run_flags
from nclab.experiments.config import CHOICES, FIELDS
from nclab.experiments.presets import DESCRIPTIONS, PRESETS
from nclab.results import TensorBoardLogger


def _field_options(fn):
    """One click option per TrainConfig field, default None (= not given: the file or preset decides)."""
    for name, f in reversed(list(FIELDS.items())):
        flag, typ, doc = "--" + name.replace("_", "-"), str(f.type), f.metadata["help"]
        if "tuple" in typ:
            doc += " (comma-separated)"
        if "[default" not in doc:  # the dataclass default (the option's own default is None: "not given")
            shown = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
            doc += f"  [default: {'none' if shown in (None, '') else shown}]"
        if typ == "bool":
            opt = click.option(f"{flag}/--no-{name.replace('_', '-')}", name, default=None, help=doc)
        elif "tuple" in typ:
            opt = click.option(flag, name, type=str, help=doc)
        elif name in CHOICES:
            opt = click.option(flag, name, type=click.Choice(CHOICES[name]), help=doc)
        else:
            kind = int if typ.startswith("int") else float if typ.startswith("float") else str
            opt = click.option(flag, name, type=kind, help=doc)
        fn = opt(fn)
    return fn


def _num(v) -> float:
    return float(v) if isinstance(v, (int, float)) else float("nan")


def _summary_line(r) -> str:
    first, last = r.history[0], r.final
    M = r.config.depth
    nc1 = "; ".join(f"L{j} {_num(first.get(f'nc1_L{j}')):.3g} -> {_num(last.get(f'nc1_L{j}')):.3g}"
                    for j in range(1, M + 1))
    test = last.get("test_acc")
    nc2_w = _num(last.get("nc2_w", last.get("nc2_w_L1")))  # nc2_w_L1: runs of nclab <= 0.1.0
    return (f"M = {M}: {r.status} at epoch {r.epoch}; NC1 (first -> last row) {nc1}; "
            f"NC2(W) {nc2_w:.3g}, NC3 {_num(last.get('nc3')):.3g} vs {r.target or 'stored'}; "
            f"train acc {_num(last.get('train_acc')):.4f}"
            + (f", test acc {test:.4f}" if isinstance(test, (int, float)) else "")
            + f"; {r.seconds:.1f} s training, {r.track_seconds:.1f} s NC tracking"
            + (f" -> {r.run_dir}" if r.run_dir is not None else ""))


def _saved_runs(out: str, depth_list, flags: dict, per_class) -> list:
    """(config, folder) of each run saved in ``out`` (or its depth-M folders), the given flags on top."""
    from nclab.experiments.config import make_train_config
    from nclab.experiments.trainer import KIND
    from nclab.results import depth_run_dirs, read_saved_config

    if depth_list is not None:
        dirs = [os.path.join(out, f"depth-{M}") for M in depth_list]
    elif read_saved_config(out, kind=KIND) is not None:
        dirs = [out]
    else:
        dirs = [str(d) for d in depth_run_dirs(out)]
    runs = []
    for d in dirs:
        saved = read_saved_config(d, kind=KIND)
        if saved is None:
            return []  # not all saved: the flags and defaults define the runs, as for a fresh start
        opts = {**saved, **flags}
        if per_class is not None:
            opts.pop("counts")
            opts["per_class"] = per_class
        if "depth" in flags and "lambda_w" not in flags and len(set(saved["lambda_w"])) == 1:
            opts["lambda_w"] = saved["lambda_w"][0]
        runs.append((make_train_config(**opts), d))
    return runs


@click.command("train")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML file of TrainConfig fields "
              "(and optionally preset = NAME); flags override it.")
@click.option("--preset", type=click.Choice(list(PRESETS)), help="A paper experiment (paper-*, GPU) or its CPU-sized "
              "version (cpu-*); the file and flags override it.")
@click.option("--list-presets", is_flag=True, help="List the presets and exit.")
@click.option("--per-class", type=int, help="Balanced subset: this many training samples of each of the 10 classes.")
@click.option("--depths", help="Several head depths, one run each under --out/depth-M (e.g. 1,3,6).")
@_field_options
@click.option("--out", "-o", type=click.Path(file_okay=False), help="Run directory [default: runs/<name>-<time>].")
@click.option("--resume", is_flag=True, help="Continue the run(s) in --out from their saved config; options given "
              "must agree with it (--threads may change).")
@click.option("--overwrite", is_flag=True, help="Replace the run(s) in --out.")
@click.option("--progress/--no-progress", default=None, help="Progress bar [default: on a terminal].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per run instead of the summary.")
@click.option("--tensorboard", is_flag=True, help="Also write the metrics as TensorBoard scalars (run/tensorboard; "
              "needs the tensorboard package).")
@friendly_errors
def train_cmd(config_file, preset, list_presets, per_class, depths, out, resume, overwrite, progress, as_json,
              tensorboard, **fields):
    """Train a network with a deep linear head and track neural collapse at every head layer.

    \b
    Examples:
      nclab train --preset cpu-mlp-balanced --depths 1,3,6 --out runs/mlp     # minutes on a CPU
      nclab train --preset paper-resnet18-cifar10 --data-root ~/data --depth 6 --out runs/r18
      nclab train --config run.toml --epochs 50 --out runs/mine
      nclab train --out runs/mine --resume                                   # continue it from its folder
      torchrun --nproc-per-node 4 -m nclab train --preset paper-vgg16-cifar10 --data-root ~/data -o runs/v
    """
    from nclab.experiments.config import load_toml, make_train_config
    from nclab.experiments.trainer import train

    if list_presets:
        for name in PRESETS:
            click.echo(f"{name:<30} {DESCRIPTIONS[name]}")
        return
    check_run_flags(out, resume, overwrite)
    opts = load_toml(config_file) if config_file else {}
    if preset is not None:
        opts["preset"] = preset
    if per_class is not None:
        opts["per_class"] = per_class
    flags = {k: v for k, v in fields.items() if v is not None}
    opts.update(flags)
    depth_list = parse_int_list(depths, "--depths")  # never []: an empty list or item is refused there
    name = opts.get("preset", "train")
    if out is None:
        out = f"runs/{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if progress is None:
        progress = sys.stderr.isatty()
    main = os.environ.get("RANK", "0") == "0"  # under torchrun only process 0 reports
    if resume and preset is None and config_file is None:
        runs = _saved_runs(out, depth_list, flags, per_class)  # resume from the folder alone
    else:
        runs = []
    if not runs:
        cfg = make_train_config(**opts)
        runs = [(cfg, out)] if depth_list is None else [(cfg.replace(depth=M), os.path.join(out, f"depth-{M}"))
                                                        for M in depth_list]
    diverged = False
    for c, path in runs:
        try:
            board = TensorBoardLogger(path) if tensorboard and main else None
            status = StatusLine(path, c.epochs) if main and not progress else None  # a log still shows progress
            try:
                r = train(c, out=path, resume=resume, overwrite=overwrite, progress=progress,
                          callback=chain(board, status))
            finally:
                if board is not None:
                    board.close()
        except KeyboardInterrupt:
            click.echo(f"\ninterrupted; the checkpoint is saved: rerun the same command with --resume "
                       f"(--out {out}) to continue", err=True)
            sys.exit(130)
        diverged |= r.status == "diverged"
        if not main:
            continue
        if as_json:
            click.echo(json.dumps({"run_dir": str(r.run_dir), "status": r.status, "epoch": r.epoch,
                                   "message": r.message, "target": r.target, "seconds": r.seconds,
                                   "track_seconds": r.track_seconds, "initial": r.history[0], "final": r.final},
                                  allow_nan=True))
        else:
            click.echo(_summary_line(r))
        if r.status == "diverged":
            click.echo(f"error: {r.message}", err=True)
    if diverged:
        fail("a run diverged (non-finite loss); its last good model is kept")
