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

Cross-entropy (``loss="ce"``): the minority classes' classifier rows merge instead of vanishing
(nclab.theory.ce_imbalanced: at M = 1 exactly iff n <= N^2 lambda_W lambda_H). The runs use the generic batched path
(method "direct": CE has no reduced form) with a larger SGD step (:data:`RUN_CE`: the mean CE over N samples gives H
a curvature of order ||W||^2 / N, so lr = 4 with momentum 0.9 is stable here: on the benchmark's 400-point M = 1
grid every run reached the certified optimum, relative gap median 0, max 4e-9). A point's state comes from the
end-to-end classifier W = W_M ... W_1 (K x d) of the run, as the theory decides it from its minimizer: TRIVIAL when
every row norm is <= ``trivial``, else MINORITY_COLLAPSED (rows merged) when every minority row lies within ``rtol``
x max_k ||w_k|| of the first minority row, with rtol = 10 MERGE_RTOL = 1e-5 at M = 1 (the row tolerance of the
certified solver's merged sets) and DEEP_MERGE_RTOL = 1e-4 at M >= 2 (the rank search's). Every point also carries
its relative gap to the predicted objective (certified at M = 1, best found at M >= 2) and an outcome: "reached"
(gap <= :data:`GAP_TOL`), "stationary" (the trainer found a stationary point above the prediction, status
"suboptimal": the zero solution or another local minimum at M >= 2; the trainer's test is a relative gradient norm <
1e-6, so a very slow descent at lambda ~ 1e-4 can land here too) or "descending" (still above the prediction when
the steps ran out): points above the prediction are kept in the grid and listed by :func:`compare_with_theory`,
never dropped.
"""

from __future__ import annotations

import time

import numpy as np

from nclab.report.phase import DEFAULT_MAJORITY, MINORITY_COLLAPSED, NOT_COLLAPSED, TRIVIAL

RUN = dict(optimizer="sgd", lr=0.1, momentum=0.9, steps=3000)  # the paper's SGD, fewer steps
RUN_CE = dict(optimizer="sgd", lr=4.0, momentum=0.9, steps=3000)  # see the module docstring
UNKNOWN = -1  # a diverged run
GAP_TOL = 1e-6  # relative gap to the predicted objective below which a run reached it (the trainer's float64 tol)
OUTCOMES = ("reached", "stationary", "descending", "diverged")


def empirical_phase_grid(majority=DEFAULT_MAJORITY, minority_classes: int = 2, depth: int = 3, *, lambdas=None,
                         sizes=None, width: int = 16, rtol: float | None = None, trivial: float = 1e-3,
                         seed: int = 0, progress: bool = False, loss: str = "mse", **run):
    """States of trained runs on a grid.

    Parameters
    ----------
    majority, minority_classes, depth : the setting (as :func:`nclab.report.phase.phase_grid`)
    lambdas : 1-D array, default 20 values log-spaced in [1e-4, 1e-1]
    sizes : 1-D int array, default 20 log-spaced sizes in [1, max(majority)]
    width : hidden width d (>= K: no bottleneck, so only the thresholds decide)
    rtol, trivial : the collapse criteria (see the module docstring; rtol default 1e-2 for MSE, the theory's
        merge tolerance for CE)
    loss : "mse" (rows vanish) or "ce" (rows merge)
    run : make_config options overriding :data:`RUN` / :data:`RUN_CE` (optimizer, lr, momentum, steps, init_std, ...)

    Returns
    -------
    dict with lambdas (L,), sizes (S,), states (S, L) int (NOT_COLLAPSED / MINORITY_COLLAPSED / TRIVIAL /
    UNKNOWN), w_norms (S, L, K) the trained classifier row norms, rel_gaps (S, L) to the predicted objective
    (NaN where none), objectives (S, L) the final objectives, outcomes (S, L) str (:data:`OUTCOMES`), statuses
    (S, L), seconds (wall time of the runs and their predictions), runs (S * L), configs (the S * L
    SimulateConfigs, row-major), loss, depth, majority, minority_classes, rtol, trivial, steps; CE adds
    merge_distance (S, L): max over minority rows of ||w_j - w_first|| / max_k ||w_k|| (NaN when W = 0)
    """
    if loss not in ("mse", "ce"):
        raise ValueError(f"loss must be 'mse' or 'ce', got {loss!r}")
    from nclab.ufm.batched import simulate_batch
    from nclab.ufm.config import make_config

    lambdas = np.geomspace(1e-4, 1e-1, 20) if lambdas is None else np.asarray(lambdas, dtype=float)
    top = max(majority) if len(majority) else 100
    sizes = np.unique(np.geomspace(1, top, 20).round().astype(int)) if sizes is None else np.asarray(sizes, int)
    K = len(majority) + minority_classes
    width = max(width, K)
    if rtol is None:
        rtol = 1e-2 if loss == "mse" else ce_merge_rtol(depth)
    opts = {**(RUN if loss == "mse" else RUN_CE), "init_std": width ** -0.5, **run}
    opts.setdefault("snapshot_every", max(1, opts["steps"] // 10))
    cfgs = [make_config(counts=list(majority) + [int(n)] * minority_classes, depth=depth, widths=width,
                        lambda_w=float(lam), lambda_h=float(lam), seed=seed, loss=loss, **opts)
            for n in sizes for lam in lambdas]
    t0 = time.perf_counter()
    results = simulate_batch(cfgs, progress=progress)
    seconds = time.perf_counter() - t0
    S, L = len(sizes), len(lambdas)
    extra = {}
    if loss == "mse":
        w = np.array([[r.final.get(f"w_norm_{k}", np.nan) for k in range(K)] for r in results])
        top_w = np.nanmax(w, axis=1)
        minority = w[:, len(majority):]
        with np.errstate(invalid="ignore"):
            states = np.where(~(top_w > trivial), TRIVIAL, np.where((minority <= rtol * top_w[:, None]).any(axis=1),
                                                                     MINORITY_COLLAPSED, NOT_COLLAPSED))
    else:
        W = [end_to_end(r.weights) for r in results]
        w = np.array([np.linalg.norm(x, axis=1) for x in W])
        states, dist = zip(*(ce_state(x, len(majority), rtol, trivial) for x in W))
        states = np.array(states)
        extra["merge_distance"] = np.array(dist).reshape(S, L)
    diverged = np.array([r.status == "diverged" for r in results])
    states = np.where(diverged, UNKNOWN, states)
    gaps = np.array([_number(r.final.get("rel_gap")) for r in results])
    outcomes = np.array(["diverged" if dv else "reached" if g <= GAP_TOL else
                         "stationary" if r.status == "suboptimal" else "descending"
                         for r, g, dv in zip(results, gaps, diverged)])
    return {"lambdas": lambdas, "sizes": sizes, "states": states.reshape(S, L), "w_norms": w.reshape(S, L, K),
            "seconds": seconds, "runs": len(cfgs), "depth": depth, "majority": list(majority), "loss": loss,
            "minority_classes": minority_classes, "statuses": np.array([r.status for r in results]).reshape(S, L),
            "rel_gaps": gaps.reshape(S, L),
            "objectives": np.array([_number(r.final.get("objective")) for r in results]).reshape(S, L),
            "outcomes": outcomes.reshape(S, L), "rtol": rtol, "trivial": trivial,
            "steps": opts["steps"], "configs": cfgs, **extra}


def _number(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def ce_merge_rtol(depth: int) -> float:
    """The theory's row-merge tolerance: 10 MERGE_RTOL (the certified M = 1 solver's merged sets), DEEP_MERGE_RTOL
    at M >= 2 (the rank search's)."""
    from nclab.theory.ce_imbalanced import DEEP_MERGE_RTOL, MERGE_RTOL

    return 10 * MERGE_RTOL if depth == 1 else DEEP_MERGE_RTOL


def end_to_end(weights) -> np.ndarray:
    """W_M ... W_1 (K x d, float64) from a run's weights [W_1 (d1 x d), ..., W_M (K x d_{M-1})]."""
    ws = [np.asarray(w.detach().cpu().double() if hasattr(w, "detach") else w, dtype=np.float64) for w in weights]
    out = ws[0]
    for w in ws[1:]:
        out = w @ out
    return out


def ce_state(W: np.ndarray, n_majority: int, rtol: float, trivial: float) -> tuple[int, float]:
    """(state, merge distance) of a CE run from its end-to-end classifier W (K x d): TRIVIAL when every row
    norm <= trivial, else MINORITY_COLLAPSED iff max_j ||w_j - w_first|| over the minority rows (index >=
    n_majority) is <= rtol x max_k ||w_k||. A non-finite W gives (UNKNOWN, NaN)."""
    if not np.all(np.isfinite(W)):
        return UNKNOWN, float("nan")
    norms = np.linalg.norm(W, axis=1)
    scale = float(norms.max())
    minority = W[n_majority:]
    dist = float(np.max(np.linalg.norm(minority - minority[0], axis=1)) / scale) if scale > 0 else float("nan")
    if scale <= trivial:
        return TRIVIAL, dist
    return (MINORITY_COLLAPSED if dist <= rtol else NOT_COLLAPSED), dist


def theory_states(grid: dict) -> np.ndarray:
    """The theory's states (S, L) on ``grid``'s points: nclab.report.phase's phase_grid (MSE, closed form) or
    ce_phase_grid (CE: exact at M = 1, the rank search's best point at M >= 2)."""
    from nclab.report.phase import ce_phase_grid, phase_grid

    fn = phase_grid if grid.get("loss", "mse") == "mse" else ce_phase_grid
    _, _, states = fn(grid["majority"], grid["minority_classes"], grid["depth"], lambdas=grid["lambdas"],
                      sizes=grid["sizes"])
    return states


def compare_with_theory(grid: dict, theory: np.ndarray | None = None) -> dict:
    """Agreement of the runs with the theory, and every point that disagrees or ended above the prediction.

    Returns dict: agree (share of points in the theory's state), points, disagree (list of dicts n, lambda,
    theory, run, rel_gap, outcome, from_boundary (grid steps in lambda to the theory row's nearest state change,
    1 = next to it; -1 if the row has none)),
    above (the same dicts for every point whose outcome is not "reached"), gap_quantiles ({q: rel gap} over the
    finite gaps, q = 0.5, 0.9, 0.99, 1), outcomes ({outcome: count}).
    """
    theory = theory_states(grid) if theory is None else np.asarray(theory)
    states, lam = grid["states"], grid["lambdas"]
    order = np.argsort(lam)

    def point(i, j):
        row = theory[i, order]
        switches = np.flatnonzero(np.diff(row) != 0)  # between sorted positions s and s + 1
        pos = int(np.flatnonzero(order == j)[0])
        steps = int(np.min(np.where(pos <= switches, switches + 1 - pos, pos - switches))) if switches.size else -1
        return {"n": int(grid["sizes"][i]), "lambda": float(lam[j]), "theory": int(theory[i, j]),
                "run": int(states[i, j]), "rel_gap": float(grid["rel_gaps"][i, j]),
                "outcome": str(grid["outcomes"][i, j]), "from_boundary": steps}

    S, L = states.shape
    disagree = [point(i, j) for i in range(S) for j in range(L) if states[i, j] != theory[i, j]]
    above = [point(i, j) for i in range(S) for j in range(L) if grid["outcomes"][i, j] != "reached"]
    gaps = grid["rel_gaps"][np.isfinite(grid["rel_gaps"])]
    quant = {q: float(np.quantile(gaps, q)) for q in (0.5, 0.9, 0.99, 1.0)} if gaps.size else {}
    names, counts = np.unique(grid["outcomes"], return_counts=True)
    return {"agree": float((states == theory).mean()), "points": int(states.size), "disagree": disagree,
            "above": above, "gap_quantiles": quant, "outcomes": dict(zip(names.tolist(), counts.tolist())),
            "theory": theory}


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
    or trivial in the run, hollow: not, cross: diverged) and the empirical boundary as a line. CE: the theory is
    :func:`nclab.report.phase.ce_phase_figure` (M >= 2: its own coarser rank-search grid) and runs that ended
    above the predicted objective get a red ring."""
    from nclab.report.figures import phase_figure

    M = grid["depth"]
    if grid.get("loss", "mse") == "ce":
        return _ce_figure(grid, theory_lambdas, theory_sizes, title)
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
        _legend(fig, handles)
    if title:
        fig.suptitle(title)
    return fig


def _legend(fig, handles) -> None:
    from nclab.report.figures import phase_legend

    phase_legend(fig.axes[-1], handles)


def _ce_figure(grid: dict, theory_lambdas, theory_sizes, title: str):
    from matplotlib.lines import Line2D

    from nclab.report.phase import ce_phase_figure

    lam = grid["lambdas"]
    theory_lambdas = np.geomspace(lam.min(), lam.max(), 61) if theory_lambdas is None else theory_lambdas
    theory_sizes = (np.unique(np.geomspace(grid["sizes"].min(), grid["sizes"].max(), 40).round().astype(int))
                    if theory_sizes is None else theory_sizes)
    fig = ce_phase_figure(depths=[grid["depth"]], majority=grid["majority"], minority_classes=grid["minority_classes"],
                          lambdas=theory_lambdas, sizes=theory_sizes)
    ax = fig.axes[0]
    for n, row, outs in zip(grid["sizes"], grid["states"], grid["outcomes"]):
        for x, s, o in zip(lam, row, outs):
            if s == UNKNOWN:
                ax.plot([x], [n], marker="x", ms=3.5, mec="k", ls="none")
                continue
            ax.plot([x], [n], marker="o", ms=3.5, mec="k", mfc="k" if s != NOT_COLLAPSED else "none", ls="none")
            if o != "reached":
                ax.plot([x], [n], marker="o", ms=7, mec="r", mfc="none", mew=1.0, ls="none")
    n, b = empirical_boundary(grid)
    ok = np.isfinite(b)
    ax.plot(b[ok], n[ok], color="k", lw=1.5, drawstyle="steps-mid", label="empirical boundary")
    legend = fig.axes[-1].get_legend()
    handles = list(legend.legend_handles) if legend is not None else []
    if legend is not None:
        legend.remove()
    handles += [Line2D([], [], marker="o", mfc="k", mec="k", ls="none", label="run: merged/trivial"),
                Line2D([], [], marker="o", mfc="none", mec="k", ls="none", label="run: apart"),
                Line2D([], [], marker="o", mfc="none", mec="r", ls="none", label="run above f* (pred.)"),
                Line2D([], [], color="k", lw=1.5, label="empirical boundary")]
    _legend(fig, handles)
    if title:
        fig.suptitle(title)
    return fig
