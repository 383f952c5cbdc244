"""Empirical minority-collapse phase diagram: trained UFMs on a (lambda, n) grid against the closed form.

Every grid point is a UFM run (bias-free MSE, lambda_W = lambda_H = lambda, majority classes fixed and
``minority_classes`` classes of size n, the paper's SGD from a random start), all points of one n trained
as one batch (:func:`nclab.ufm.batched.simulate_batch`; N depends on n only). A point counts as minority
collapsed when, after training, some minority class's classifier row has norm <= ``rtol`` x the largest row
norm, as trivial when every row norm is below ``trivial``, and as UNKNOWN (-1) when the run diverged. The default
init N(0, 1/width) is the scale where random starts find the global minimizer away from the thresholds; near
them, at depth M >= 2, runs can stop in the local minimum of a collapsed mode (theory.md sec. 2): the empirical
boundary then lies at somewhat smaller lambda than the theoretical one. The figure draws these states over
:func:`nclab.report.figures.phase_figure`'s theoretical diagram, with the empirical boundary (per n, the
smallest lambda collapsed in the run) as a line.
"""

from __future__ import annotations

import time

import numpy as np

from nclab.report.phase import DEFAULT_MAJORITY, MINORITY_COLLAPSED, NOT_COLLAPSED, TRIVIAL

RUN = dict(optimizer="sgd", lr=0.1, momentum=0.9, steps=3000)  # the paper's SGD, fewer steps
UNKNOWN = -1  # a diverged run


def empirical_phase_grid(majority=DEFAULT_MAJORITY, minority_classes: int = 2, depth: int = 3, *, lambdas=None,
                         sizes=None, width: int = 16, rtol: float = 1e-2, trivial: float = 1e-3, seed: int = 0,
                         progress: bool = False, **run):
    """States of trained runs on a grid.

    Parameters
    ----------
    majority, minority_classes, depth : the setting (as :func:`nclab.report.phase.phase_grid`)
    lambdas : 1-D array, default 20 values log-spaced in [1e-4, 1e-1]
    sizes : 1-D int array, default 20 log-spaced sizes in [1, max(majority)]
    width : hidden width d (>= K: no bottleneck, so only the thresholds decide)
    rtol, trivial : the collapse criteria (see the module docstring)
    run : make_config options overriding :data:`RUN` (optimizer, lr, momentum, steps, init_std, ...)

    Returns
    -------
    dict with lambdas (L,), sizes (S,), states (S, L) int (NOT_COLLAPSED / MINORITY_COLLAPSED / TRIVIAL),
    w_norms (S, L, K) the trained classifier row norms, seconds (wall time), runs (S * L)
    """
    from nclab.ufm.batched import simulate_batch
    from nclab.ufm.config import make_config

    lambdas = np.geomspace(1e-4, 1e-1, 20) if lambdas is None else np.asarray(lambdas, dtype=float)
    top = max(majority) if len(majority) else 100
    sizes = np.unique(np.geomspace(1, top, 20).round().astype(int)) if sizes is None else np.asarray(sizes, int)
    K = len(majority) + minority_classes
    width = max(width, K)
    opts = {**RUN, "init_std": width ** -0.5, **run}
    opts.setdefault("snapshot_every", max(1, opts["steps"] // 10))
    cfgs = [make_config(counts=list(majority) + [int(n)] * minority_classes, depth=depth, widths=width,
                        lambda_w=float(lam), lambda_h=float(lam), seed=seed, **opts)
            for n in sizes for lam in lambdas]
    t0 = time.perf_counter()
    results = simulate_batch(cfgs, progress=progress)
    seconds = time.perf_counter() - t0
    w = np.array([[r.final.get(f"w_norm_{k}", np.nan) for k in range(K)] for r in results])
    top_w = np.nanmax(w, axis=1)
    minority = w[:, len(majority):]
    with np.errstate(invalid="ignore"):
        states = np.where(~(top_w > trivial), TRIVIAL,
                          np.where((minority <= rtol * top_w[:, None]).any(axis=1), MINORITY_COLLAPSED, NOT_COLLAPSED))
    states = np.where([r.status == "diverged" for r in results], UNKNOWN, states)
    S, L = len(sizes), len(lambdas)
    return {"lambdas": lambdas, "sizes": sizes, "states": states.reshape(S, L), "w_norms": w.reshape(S, L, K),
            "seconds": seconds, "runs": len(cfgs), "depth": depth, "majority": list(majority),
            "minority_classes": minority_classes, "statuses": np.array([r.status for r in results]).reshape(S, L)}


def empirical_boundary(grid: dict) -> tuple[np.ndarray, np.ndarray]:
    """Per size n, the smallest lambda whose run collapsed (minority or trivial; NaN where none): (sizes, lambdas)."""
    lam = grid["lambdas"]
    order = np.argsort(lam)
    out = []
    for row in grid["states"][:, order]:
        hit = np.flatnonzero((row == MINORITY_COLLAPSED) | (row == TRIVIAL))
        out.append(lam[order][hit[0]] if hit.size else np.nan)
    return grid["sizes"], np.array(out)


def empirical_phase_figure(grid: dict, *, theory_lambdas=None, theory_sizes=None, title: str = ""):
    """The theoretical phase diagram of ``grid``'s setting with every run on top (filled: minority collapsed
    or trivial in the run, hollow: not, cross: diverged) and the empirical boundary as a line."""
    from nclab.report.figures import phase_figure

    M = grid["depth"]
    marks = [(M, float(lam), int(n), None if s == UNKNOWN else bool(s != NOT_COLLAPSED), "")
             for n, row in zip(grid["sizes"], grid["states"]) for lam, s in zip(grid["lambdas"], row)]
    lam = grid["lambdas"]
    theory_lambdas = np.geomspace(lam.min(), lam.max(), 61) if theory_lambdas is None else theory_lambdas
    theory_sizes = (np.unique(np.geomspace(grid["sizes"].min(), grid["sizes"].max(), 40).round().astype(int))
                    if theory_sizes is None else theory_sizes)
    fig = phase_figure(depths=[M], majority=grid["majority"], minority_classes=grid["minority_classes"],
                       lambdas=theory_lambdas, sizes=theory_sizes, marks=marks)
    ax = fig.axes[0]
    for line in ax.lines:  # smaller marks: a few hundred runs
        line.set_markersize(3.5)
    n, b = empirical_boundary(grid)
    ok = np.isfinite(b)
    ax.plot(b[ok], n[ok], color="k", lw=1.5, drawstyle="steps-mid", label="empirical boundary")
    legend = fig.axes[-1].get_legend()
    if legend is not None:
        from matplotlib.lines import Line2D

        handles = list(legend.legend_handles) + [Line2D([], [], color="k", lw=1.5, label="empirical boundary")]
        legend.remove()
        fig.axes[-1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.04, 1.0), borderaxespad=0.0)
    if title:
        fig.suptitle(title)
    return fig
