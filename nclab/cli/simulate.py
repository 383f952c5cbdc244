"""``nclab simulate``: train the deep linear UFM and watch it converge to ``nclab predict``."""

from __future__ import annotations

import json
import sys
import time

import click
from click.core import ParameterSource

from nclab.cli._common import fail, friendly_errors, parse_int_list, parse_seeds
from nclab.cli._runs import StatusLine, check_run_flags
from nclab.cli.predict import problem_kwargs, problem_options

PRESET_NAMES = ["paper-balanced-of", "paper-balanced-etf", "paper-imbalanced-gof", "dnc-k2", "lowrank-beats-dnc"]
RUN_OPTIONS = ["activation", "optimizer", "lr", "momentum", "steps", "schedule", "gamma", "init_std", "init", "seed",
               "dtype", "device", "gradient", "snapshot_every", "checkpoint_every", "threads", "stop_rel_gap"]


def _explicit(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None)


def _overlay(saved: dict, given: dict, explicit: set[str]) -> dict:
    """The saved config with the options the user gave explicitly on top (a resume from the folder alone)."""
    opts = dict(saved)
    for k in explicit:
        if k in ("width", "widths"):
            opts["widths"] = given["widths"]
        elif k == "depth":
            opts["depth"] = given["depth"]
            if "widths" not in explicit and "width" not in explicit:
                opts["widths"] = saved["widths"][0]  # one width for every layer of the new depth
            if "lambda_w" not in explicit and len(set(saved["lambda_w"])) == 1:
                opts["lambda_w"] = saved["lambda_w"][0]
        elif k in ("classes", "per_class"):
            counts = opts.pop("counts", None) or saved["counts"]
            opts.setdefault("classes", len(counts))
            opts.setdefault("per_class", counts[0])
            opts[k] = given[k]
        elif k in given:
            opts[k] = given[k]
    return opts


def _summary_line(r) -> str:
    f = r.final
    get = lambda k: f.get(k, float("nan"))  # noqa: E731
    M = len(r.config.widths)
    if getattr(r.config, "activation", "identity") != "identity":
        ranks = ",".join(str(get(f"rank_means_L{j}")) for j in range(1, M + 1))
        return (f"M = {M} (relu): {r.status} at step {r.step}; f = {get('objective'):.10g} (DNC configuration "
                f"{get('f_dnc'):.10g}, best low-rank configuration {get('f_lowrank'):.10g}); class-mean ranks "
                f"per layer {ranks}; NC1 per layer " + ", ".join(f"{get(f'nc1_L{j}'):.1e}" for j in range(1, M + 1))
                + (f" -> {r.run_dir}" if r.run_dir is not None else ""))
    return (f"M = {M}: {r.status} at step {r.step}; f = {get('objective'):.10g} (f* = {r.prediction.objective:.10g}, "
            f"rel. gap {get('rel_gap'):.2e}); NC1 {get('nc1_L1'):.2e}, NC2(W) {get('nc2_w'):.2e}, "
            f"NC2(H) {get('nc2_h'):.2e}, NC3 {get('nc3'):.2e}; {r.seconds:.2f} s training"
            + (f" -> {r.run_dir}" if r.run_dir is not None else "")
            + (f"\n  {r.message}" if r.status == "suboptimal" or "not converged" in r.message else ""))


@click.command("simulate")
@problem_options
@click.option("--preset", type=click.Choice(PRESET_NAMES), help="The paper's synthetic experiments (SGD, 30,000 "
              "steps); other options override the preset.")
@click.option("--depths", help="Several depths, one run each under --out/depth-M, plus figures (e.g. 1,3,6,9).")
@click.option("--activation", type=click.Choice(["identity", "relu"]), default="identity", show_default=True,
              help="Between the layers: identity (the deep linear UFM) or relu (the deep ReLU UFM; metrics against "
              "the DNC and low-rank reference configurations, nclab.ufm.dnc).")
@click.option("--optimizer", type=click.Choice(["sgd", "adam", "lbfgs"]), default="sgd", show_default=True)
@click.option("--lr", type=float, help="Learning rate [default: sgd 0.1, adam 1e-3, lbfgs 1].")
@click.option("--momentum", type=float, default=0.9, show_default=True, help="SGD heavy-ball momentum.")
@click.option("--steps", type=int, default=30000, show_default=True, help="Optimizer steps (L-BFGS: iterations).")
@click.option("--schedule", type=click.Choice(["constant", "cosine", "step"]), default="constant",
              show_default=True, help="Learning-rate schedule.")
@click.option("--milestones", help="'step' schedule: steps where lr is multiplied by --gamma, e.g. 10000,20000.")
@click.option("--gamma", type=float, default=0.1, show_default=True, help="'step' schedule factor.")
@click.option("--init-std", type=float, default=0.1, show_default=True, help="Init N(0, std^2) of every parameter.")
@click.option("--init", type=click.Choice(["random", "prediction"]), default="random", show_default=True,
              help="random: N(0, init-std^2) (the paper's); prediction: nclab predict's minimizer + that noise.")
@click.option("--restarts", type=int, default=1, show_default=True, help="Runs with seeds seed, seed+1, ... under "
              "--out/seed-S; the best (lowest objective) is named in --out/restarts.json.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--seeds", help="Many seeds trained as one batched program, one run each under --out/seed-S "
              "(with --depths: --out/depth-M/seed-S), e.g. 0-63 or 0,3,5-9.")
@click.option("--workers", type=int, default=0, show_default=True, help="With --seeds: processes sharing the "
              "runs, each training its share as one batch (0: the idle cores when the runs take over ~10 s).")
@click.option("--dtype", type=click.Choice(["float64", "float32"]), default="float64", show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--gradient", type=click.Choice(["auto", "manual", "autograd"]), default="auto", show_default=True,
              help="auto: SGD + MSE in the batched engine's reduced form (fastest), else manual; manual: the "
                   "hand-written gradient; autograd: autograd of the shared objective.")
@click.option("--snapshot-every", type=int, default=100, show_default=True, help="Metrics row every k steps.")
@click.option("--checkpoint-every", type=int, default=0, show_default=True,
              help="Checkpoint every k steps (0: every 10 snapshots, at most once per "
                   "NCLAB_CHECKPOINT_SECONDS, default 10 s).")
@click.option("--stop-rel-gap", type=float, default=0.0, show_default=True,
              help="Stop once the relative gap to f* is below this (0: run all steps).")
@click.option("--threads", type=int, default=0, show_default=True,
              help="torch CPU threads (0: automatic: 1 for small problems, else the idle cores).")
@click.option("--out", "-o", type=click.Path(file_okay=False), help="Run directory (with --depths/--preset: a "
              "folder of runs) [default: runs/<name>-<time>].")
@click.option("--resume", is_flag=True, help="Continue the run(s) in --out from their saved config; options given "
              "must agree with it (--threads may change).")
@click.option("--overwrite", is_flag=True, help="Replace the run(s) in --out.")
@click.option("--figures/--no-figures", default=True, show_default=True, help="Write figures (PNG + PDF).")
@click.option("--progress/--no-progress", default=None, help="Progress bar [default: on a terminal].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per run instead of the summary.")
@click.option("--tensorboard", is_flag=True, help="Also write the metrics as TensorBoard scalars (run/tensorboard; "
              "needs the tensorboard package).")
@click.pass_context
@friendly_errors
def simulate_cmd(ctx, counts, classes, per_class, depth, widths, width, lambda_w, lambda_h, loss, bias, preset,
                 depths, activation, optimizer, lr, momentum, steps, schedule, milestones, gamma, init_std, init,
                 restarts, seed, seeds, workers, dtype, device, gradient, snapshot_every, checkpoint_every,
                 stop_rel_gap, threads, out, resume, overwrite, figures, progress, as_json, tensorboard):
    """Train the deep linear UFM (free features + M linear layers) and compare with the prediction.

    \b
    Examples:
      nclab simulate --preset paper-imbalanced-gof --out runs/gof        # depths 1,3,6,9 + figures
      nclab simulate --counts 200,100,50,50 -M 3 --optimizer lbfgs --steps 5000 --out runs/lbfgs
      nclab simulate --out runs/lbfgs --resume                            # continue it (Ctrl-C, kill, crash)
    """
    from nclab.ufm.config import make_config
    from nclab.ufm.presets import DEPTHS, PRESET_DEPTHS, preset_options, run_depths
    from nclab.ufm.trainer import simulate

    check_run_flags(out, resume and seeds is None, overwrite)
    if workers and seeds is None:
        raise ValueError("--workers shares the runs of --seeds between processes; give --seeds (e.g. 0-63)")
    if workers < 0:
        raise ValueError(f"--workers must be >= 0 (0: automatic), got {workers}")
    if seeds is not None and resume and (overwrite or out is None):
        raise ValueError("--resume with --seeds needs --out (the folder of the seed-S runs) and no --overwrite")
    kw = problem_kwargs(counts, classes, per_class, depth, widths, width, lambda_w, lambda_h, loss, bias)
    run_kw = dict(activation=activation, optimizer=optimizer, lr=lr, momentum=momentum, steps=steps, schedule=schedule,
                  milestones=parse_int_list(milestones, "--milestones") or (), gamma=gamma, init_std=init_std,
                  init=init,
                  seed=seed, dtype=dtype, device=device, gradient=gradient, snapshot_every=snapshot_every,
                  checkpoint_every=checkpoint_every, stop_rel_gap=stop_rel_gap, threads=threads)
    explicit = {k for k in list(kw) + list(run_kw) + ["widths", "width"] if _explicit(ctx, k)}
    saved = []  # resume from the folder alone: the saved config(s), explicit options on top
    if resume and preset is None and depths is None:
        from nclab.results import depth_run_dirs, read_saved_config
        from nclab.ufm.trainer import KIND

        one = read_saved_config(out, kind=KIND)
        saved = [one] if one is not None else [read_saved_config(d, kind=KIND) for d in depth_run_dirs(out)]
    if saved:
        opts = [_overlay(c, {**kw, **run_kw}, explicit) for c in saved]
        name = "simulate"
    elif preset is not None:
        base = preset_options(preset)
        opts = dict(base)
        for k, v in {**kw, **run_kw}.items():
            if k in explicit or (k == "widths" and ("widths" in explicit or "width" in explicit)):
                opts[k] = v
        if "counts" in explicit:
            opts.pop("classes", None)
            opts.pop("per_class", None)
        elif "classes" in explicit or "per_class" in explicit:
            opts.pop("counts", None)
            opts.setdefault("classes", len(base.get("counts") or []) or None)
            opts.setdefault("per_class", (base.get("counts") or [None])[0])
        if milestones is not None:
            opts["milestones"] = run_kw["milestones"]
        if "lr" not in explicit and "optimizer" in explicit and optimizer != base["optimizer"]:
            opts["lr"] = None  # the new optimizer's default
        name = preset
    else:
        opts = {**kw, **run_kw}
        if opts["counts"] is None and opts["classes"] is None:
            opts["counts"] = [200, 100, 50, 50]  # the paper's imbalanced configuration, as nclab predict
        name = "simulate"
    depth_list = parse_int_list(depths, "--depths")
    if saved:
        pass  # the folder decides the depth(s)
    elif depth_list is not None:
        if not depth_list:
            raise ValueError("--depths needs at least one depth, e.g. 1,3,6,9")
        if depth is not None:
            raise ValueError("give --depth or --depths, not both")
        if widths is not None:
            raise ValueError("--widths fixes the depth; with --depths give one --width for every layer")
    elif preset is not None and depth is None and widths is None:
        depth_list = list(PRESET_DEPTHS.get(preset, DEPTHS))
    if out is None:
        out = f"runs/{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if progress is None:
        progress = sys.stderr.isatty()

    results = []

    def report(r):
        results.append(r)
        if as_json:
            click.echo(json.dumps({"run_dir": str(r.run_dir), "status": r.status, "step": r.step,
                                   "message": r.message, "seconds": r.seconds, "final": r.final,
                                   "predicted_objective": r.prediction.objective,
                                   "geometry": r.prediction.geometry}, allow_nan=True))
        else:
            click.echo(_summary_line(r))
        if r.status == "diverged":
            click.echo(f"error: {r.message}", err=True)

    try:
        if len(saved) > 1:
            run_depths([make_config(**o) for o in opts], out, resume=resume, overwrite=overwrite, progress=progress,
                       figures=figures, title=name, on_result=report, tensorboard=tensorboard)
        elif seeds is not None:
            from nclab.ufm.batched import run_seeds

            if restarts != 1 or saved:
                raise ValueError("--seeds trains fresh or resumed seed-S runs from the options given; not with "
                                 "--restarts or a saved single run in --out")
            if depth_list:
                opts.pop("depth", None)
                configs = [make_config(**opts, depth=M) for M in depth_list]
            else:
                configs = [make_config(**opts)]
            run_seeds(configs, parse_seeds(seeds), out, resume=resume, overwrite=overwrite, progress=progress,
                      figures=figures, title=name, on_result=report, workers=workers)
        elif restarts != 1:
            from nclab.ufm.presets import run_restarts

            if restarts < 1 or depth_list is not None:
                raise ValueError("--restarts needs a positive count and one depth (not --depths)")
            best = run_restarts(make_config(**opts), restarts, out, resume=resume, overwrite=overwrite,
                                progress=progress, on_result=report, tensorboard=tensorboard)[0]
            if not as_json:
                click.echo(f"best of {restarts}: {best.run_dir} (f = {best.final.get('objective')})")
        elif depth_list is None:
            cfg = make_config(**(opts[0] if saved else opts))
            status = None if progress else StatusLine(out, cfg.steps, unit="step")  # a log still shows progress
            report(simulate(cfg, out=out, resume=resume, overwrite=overwrite, progress=progress,
                            tensorboard=tensorboard, callback=status))
            if figures:
                from nclab.report.figures import plot_runs

                plot_runs([results[0].run_dir], results[0].run_dir / "figures", title=name)
        else:
            opts.pop("depth", None)
            lam = opts.get("lambda_w")
            if isinstance(lam, list) and len(lam) > 1:
                raise ValueError("--depths needs a single --lambda-w value (per-layer values fix the depth)")
            configs = [make_config(**opts, depth=M) for M in depth_list]
            run_depths(configs, out, resume=resume, overwrite=overwrite, progress=progress, figures=figures,
                       title=name, on_result=report, tensorboard=tensorboard)
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted; the checkpoint is saved: rerun the same command with --resume "
                   f"(--out {out}) to continue", err=True)
        sys.exit(130)
    if not as_json and figures:
        click.echo(f"figures: {out}/figures")
    if any(r.status == "diverged" for r in results):
        fail("a run diverged (non-finite loss); its last good snapshot is kept")
