"""``nclab demo``: the whole product on embedded defaults, in a few minutes on 2 CPU cores.

theory predictions -> UFM simulations (the paper's SGD presets, depths 1, 3, 6) -> a digits MLP with a
deep linear head -> one report page. Everything goes under ``out``; re-running resumes (finished runs
are reused, not re-run).
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Callable

UFM_PRESETS = ("paper-balanced-of", "paper-balanced-etf", "paper-imbalanced-gof")
DEPTHS = (1, 3, 6)
# The bundled UCI digits (no files to fetch): ~180 images per class, 120 of them for training.
DIGITS_MLP = dict(preset="cpu-mlp-balanced", dataset="digits", counts=[120] * 10, test_per_class=40, epochs=60)


def run_demo(out="nclab-demo", *, depths=DEPTHS, log: Callable[[str], None] = print, progress: bool = False,
             train_epochs: int | None = None) -> pathlib.Path:
    """Run every step into ``out`` and return the path of the report page."""
    from nclab.experiments import train
    from nclab.report import build_report
    from nclab.report.figures import plot_runs
    from nclab.results import atomic_write_json
    from nclab.theory import predict
    from nclab.ufm.batched import simulate_batch
    from nclab.ufm.presets import PRESETS, preset_config, preset_title

    out = pathlib.Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create the demo folder {out}: {exc.strerror or exc}") from None
    t0 = time.perf_counter()

    log("1/4 theory: closed-form global minimizers of the paper's configurations")
    theory = {}
    for name in UFM_PRESETS:
        opts = PRESETS[name]
        for M in depths:
            p = predict(opts.get("counts"), classes=opts.get("classes"), per_class=opts.get("per_class"), depth=M,
                        widths=opts["widths"], lambda_w=opts["lambda_w"], lambda_h=opts["lambda_h"],
                        bias=opts["bias"])
            theory[f"{name}/M={M}"] = p.to_dict()
            log(f"    {name:22s} M = {M}: {p.geometry}, f* = {p.objective:.6g}")
    atomic_write_json(out / "theory.json", theory)

    log("2/4 simulate: the deep linear UFM with the paper's SGD (30,000 steps per run)")
    # all presets and depths in one simulate_batch call: its worker processes train them side by side
    names = [name for name in UFM_PRESETS for _ in depths]
    configs = [preset_config(name, int(M)) for name in UFM_PRESETS for M in depths]
    dirs = [out / "ufm" / name / f"depth-{len(c.widths)}" for name, c in zip(names, configs)]
    results = simulate_batch(configs, dirs, resume=True, progress=progress)
    run_dirs = []
    for name, r in zip(names, results):
        log(f"    {name:22s} M = {len(r.config.widths)}: rel. gap {r.final.get('rel_gap', float('nan')):.1e}, "
            f"NC1 {r.final.get('nc1_L1', float('nan')):.1e}, NC2(W) {r.final.get('nc2_w', float('nan')):.1e}")
        run_dirs.append(r.run_dir)
    for name in UFM_PRESETS:  # the figures run_preset draws for each preset
        plot_runs([r.run_dir for n, r in zip(names, results) if n == name], out / "ufm" / name / "figures",
                  title=preset_title(name))

    log("3/4 train: MLP + deep linear head on the bundled digits")
    opts = dict(DIGITS_MLP)
    if train_epochs is not None:
        opts["epochs"] = train_epochs
    for M in depths:
        r = train(out=out / "digits-mlp" / f"depth-{M}", resume=True, progress=progress, depth=M, **opts)
        first, last = (r.history[0] if r.history else {}), r.final
        nan = float("nan")
        log(f"    M = {M}: NC1 {first.get('nc1_L1', nan):.3g} -> {last.get('nc1_L1', nan):.3g}, "
            f"train acc {last.get('train_acc', nan):.3f}, test acc {last.get('test_acc', nan):.3f}")
        run_dirs.append(r.run_dir)

    log("4/4 report")
    page = build_report(run_dirs, out / "report.html", title="nclab demo")
    log(f"done in {time.perf_counter() - t0:.0f} s; open {page.resolve()}")
    return page
