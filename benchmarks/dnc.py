"""Deep ReLU UFM: DNC versus low-rank reference configurations against depth M and classes K (a figure).

    python benchmarks/dnc.py [--out runs/dnc-figure] [--ks 2,3,4,6] [--depths 2,3,4,5,6] [--descent 0]

For every (K, M): nclab.ufm.dnc.references on n = 4 per class, width 8, lambda_W = 5e-3, lambda_H = lambda_W / n
(f_dnc, f_lowrank, the class-mean rank per layer of the better one); with --descent S also the best of S float64
L-BFGS runs from random starts (nclab.ufm.simulate, activation="relu"). Writes dnc.png / dnc.pdf and dnc.json
and prints a table. About a minute on a 2-core machine for the default grid without descent.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from nclab.theory import make_problem  # noqa: E402
from nclab.ufm.dnc import references  # noqa: E402

LAM, N_PER, WIDTH = 5e-3, 4, 8


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/dnc-figure")
    ap.add_argument("--ks", default="2,3,4,6")
    ap.add_argument("--depths", default="2,3,4,5,6")
    ap.add_argument("--descent", type=int, default=0, help="random starts of L-BFGS descent per point (0: none)")
    args = ap.parse_args(argv)
    ks = [int(v) for v in args.ks.split(",")]
    depths = [int(v) for v in args.depths.split(",")]
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    t_all = time.perf_counter()
    print(f"{'K':>3} {'M':>3} {'f_dnc':>12} {'f_lowrank':>12} {'rel':>8} {'descent':>12}  ranks (best config)  s")
    for K in ks:
        for M in depths:
            t0 = time.perf_counter()
            p = make_problem(classes=K, per_class=N_PER, depth=M, widths=WIDTH, lambda_w=LAM, lambda_h=LAM / N_PER)
            refs = references(p)
            best = refs.lowrank if refs.lowrank_beats_dnc else refs.dnc
            f_desc = float("nan")
            if args.descent:
                from nclab.ufm import simulate

                f_desc = min(simulate(classes=K, per_class=N_PER, depth=M, widths=WIDTH, lambda_w=LAM,
                                      lambda_h=LAM / N_PER, activation="relu", optimizer="lbfgs", steps=3000,
                                      snapshot_every=500, init_std=0.5, seed=s).final["objective"]
                             for s in range(args.descent))
            row = {"K": K, "M": M, "f_dnc": refs.f_dnc, "f_lowrank": refs.f_lowrank,
                   "rel": (refs.f_lowrank - refs.f_dnc) / refs.f_dnc, "f_descent": f_desc,
                   "best": best.name, "structure": best.structure, "ranks": best.layer_ranks,
                   "weight_ranks": best.weight_ranks, "seconds": time.perf_counter() - t0}
            rows.append(row)
            print(f"{K:>3} {M:>3} {refs.f_dnc:12.8f} {refs.f_lowrank:12.8f} {row['rel']:+8.2%} {f_desc:12.8f}  "
                  f"{best.layer_ranks}  {row['seconds']:.1f}", flush=True)
    (out / "dnc.json").write_text(json.dumps(rows, indent=1))
    _figure(rows, ks, depths, out)
    print(f"wrote {out / 'dnc.png'} ({time.perf_counter() - t_all:.0f} s)")
    return 0


def _figure(rows, ks, depths, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for K in ks:
        rs = [r for r in rows if r["K"] == K]
        Ms = [r["M"] for r in rs]
        axes[0].plot(Ms, [r["f_dnc"] for r in rs], "o-", label=f"K = {K}: DNC")
        axes[0].plot(Ms, [r["f_lowrank"] for r in rs], "x--", color=axes[0].lines[-1].get_color(),
                     label=f"K = {K}: low-rank")
        if any(np.isfinite(r["f_descent"]) for r in rs):
            axes[0].plot(Ms, [r["f_descent"] for r in rs], "s:", color=axes[0].lines[-1].get_color(), mfc="none")
        axes[1].plot(Ms, [100 * r["rel"] for r in rs], "o-", label=f"K = {K}")
        axes[2].plot(Ms, [min(r["ranks"][1:]) if len(r["ranks"]) > 1 else r["ranks"][0] for r in rs], "o-",
                     label=f"K = {K}")
    axes[0].set(xlabel="depth M", ylabel="objective", yscale="log", title="objective of the reference configurations")
    axes[1].axhline(0, color="k", lw=0.8)
    axes[1].set(xlabel="depth M", ylabel="(f_lowrank - f_dnc) / f_dnc  [%]", title="low-rank vs DNC (< 0: DNC loses)",
                ylim=(-20, 20))  # K = 2 (no triple fits: one class dropped) is far above, off the scale
    axes[2].set(xlabel="depth M", ylabel="rank", title="min hidden class-mean rank, better config")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.set_xticks(depths)
    fig.suptitle(f"deep ReLU UFM, n = {N_PER}, width {WIDTH}, lambda_W = {LAM:g}, lambda_H = lambda_W / n")
    fig.tight_layout()
    for ext in ("png", "pdf"):
        fig.savefig(out / f"dnc.{ext}", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
