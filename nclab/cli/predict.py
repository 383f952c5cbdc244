"""``nclab predict``: print the closed-form global minimizer for one setting, in words and numbers."""

from __future__ import annotations

import os
import textwrap

import click
import numpy as np

from nclab.cli._common import friendly_errors, parse_float_list, parse_int_list

#: largest K for which --grams prints the K x K matrices (wider tables do not fit a terminal)
GRAMS_MAX_K = 20
#: above this K the class table groups consecutive classes with equal rows
TABLE_MAX_ROWS = 20


def problem_options(fn):
    """Options shared by ``predict`` and ``simulate``: the deep linear UFM setting."""
    opts = [
        click.option("--counts", help="Samples per class, e.g. 200,100,50,50."),
        click.option("--classes", "-K", type=int, help="Number of classes (balanced, with --per-class)."),
        click.option("--per-class", "-n", type=int, help="Samples per class (balanced)."),
        click.option("--depth", "-M", type=int, help="Number of linear layers M (default: from --widths, else 1)."),
        click.option("--widths", help="Input widths of the M layers, d,d_2,...,d_M."),
        click.option("--width", type=int, help="One width for every layer (default 64)."),
        click.option("--lambda-w", default="5e-4", show_default=True,
                     help="Weight decay: one value, or M comma-separated values (one per layer)."),
        click.option("--lambda-h", type=float, default=5e-4, show_default=True, help="Feature decay lambda_H."),
        click.option("--loss", type=click.Choice(["mse", "ce"]), default="mse", show_default=True),
        click.option("--bias/--no-bias", default=False, show_default=True, help="Unregularized last-layer bias."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def problem_kwargs(counts, classes, per_class, depth, widths, width, lambda_w, lambda_h, loss, bias) -> dict:
    """Turn the CLI values into keyword arguments of :func:`nclab.theory.make_problem`.

    ``lambda_w`` is a comma list (str) or a number; ``lambda_h`` one number (a float, or a str holding one).
    """
    if widths is not None and width is not None:
        raise ValueError("give --widths or --width, not both")
    lam = parse_float_list(lambda_w, "--lambda-w") if isinstance(lambda_w, str) else lambda_w
    if lam is None or (isinstance(lam, list) and len(lam) == 0):
        raise ValueError("--lambda-w needs 1 or M numbers")
    if isinstance(lambda_h, str):
        lam_h = parse_float_list(lambda_h, "--lambda-h")
        if len(lam_h) != 1:
            raise ValueError(f"--lambda-h takes exactly one number, got {lambda_h!r}")
        lambda_h = lam_h[0]
    return dict(
        counts=parse_int_list(counts, "--counts"),
        classes=classes,
        per_class=per_class,
        depth=depth,
        widths=parse_int_list(widths, "--widths") if widths is not None else width,
        lambda_w=lam[0] if isinstance(lam, list) and len(lam) == 1 else lam,
        lambda_h=lambda_h,
        bias=bias,
        loss=loss,
    )


# ------------------------------------------------------------------------------------------------ text
def _g(v, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}g}"


def _pow10(lg: float) -> str:
    """10**lg as text; '1e+400' style where it leaves float64 (never 'inf' or '0' for a positive value)."""
    if not np.isfinite(lg):
        return "n/a"
    return f"{10.0**lg:.4g}" if -300 < lg < 300 else f"1e{lg:+.0f}"


def _values(values) -> str:
    vals = [_g(v) for v in values]
    return vals[0] + " (every layer)" if len(set(vals)) == 1 and len(vals) > 1 else ", ".join(vals)


def _ints(values, limit: int = 12) -> str:
    values = list(values)
    text = ", ".join(str(v) for v in values[:limit])
    return text + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def _class_list(ks) -> str:
    ks = list(ks)
    if not ks:
        return "none"
    return ("class " if len(ks) == 1 else "classes ") + _ints(ks)


def _by(value: float, ref, name: str) -> str:
    """'31% below n_thr' / '10% above n_thr' / '2.4 times n_thr': value relative to ref (> 0)."""
    if ref is None or not (ref > 0) or not np.isfinite(ref):
        return f"{'below' if ref is None else 'above'} {name}"
    lr = float(np.log10(value) - np.log10(ref))
    if lr > 300:
        return f"about 1e{lr:.0f} times {name}"
    r = 10.0**lr
    if r < 0.5:
        return f"{1 / r:.3g} times smaller than {name}"
    if r < 1:
        return f"{100 * (1 - r):.3g}% below {name}"
    return f"{100 * (r - 1):.3g}% above {name}" if r < 2 else f"{r:.3g} times {name}"


def _setting(p) -> list[str]:
    counts = list(p.counts)
    n_text = f"n_k = {counts[0]} each" if p.balanced else f"n_k = {_ints(counts)}"
    return [
        f"setting: K = {p.K} classes, {n_text} (N = {p.N} samples); {p.loss.upper()} loss, "
        f"{'with' if p.bias else 'no'} last-layer bias",
        f"  M = {p.M} linear layer{'s' if p.M > 1 else ''}, input widths d_j = {_ints(p.widths)}, "
        f"rank budget R = min(K, d_1..d_M) = {p.rank_budget}",
        f"  weight decay lambda_W = {_values(p.lambda_w)}, feature decay lambda_H = {_g(p.lambda_h)}",
    ]


def _mse_story(pred) -> tuple[list[str], list[str]]:
    """Lines explaining the MSE geometry in words, and the symbols they use."""
    p, t, m = pred.problem, pred.thresholds, pred._mse
    M, K, astar = p.M, p.K, t["a_star"]
    nthr = t["n_threshold"]
    nthr_text = _g(nthr) if nthr is not None else f"1e{t['log10_n_threshold']:.0f}"
    lines = [f"optimal geometry: {pred.geometry}"]
    syms = []
    kappa_text = _g(t["kappa"]) if t["kappa"] is not None else "beyond float64"
    sym_a = [
        f"  a*(M)      = {astar:.4g}: a mode is nonzero iff its a < a*(M)"
        + (" (M = 1: a* = 1)" if M == 1 else " ((M-1)^((M-1)/M) / M^2)"),
        f"  kappa      = (N lambda_H prod_j lambda_j)^(1/M) = {kappa_text}",
    ]
    if M >= 2:
        c_text = _g(t["c"]) if t["c"] is not None else "beyond float64"
        sym_a.append(
            f"  x*         = (M-1)^(1/M) = {t['x_star']:.4g}: a mode's ||w_k||^2 = c x^M jumps from 0 to at least "
            f"c x*^M = c (M-1) at a = a*(M) (c = N lambda_H = {c_text}): for M >= 2 collapse is abrupt"
        )
        sym_a.append(
            f"  h_max      = {t['h_max']:.4g}: for a*(M) <= a < h_max a nonzero stationary point exists but is "
            "worse than zero (the point the paper's code returns)"
        )
    if not p.bias:
        order = m.mode_class
        a_cls = np.empty(K)
        a_cls[order] = m.a
        kept = [k for k in range(K) if pred.active[k]]
        collapsed = [k for k in range(K) if not pred.active[k]]
        elig = np.zeros(K, dtype=bool)
        elig[order] = m.eligible
        cut = [k for k in collapsed if elig[k]]
        below = [k for k in collapsed if not elig[k]]
        counts = np.asarray(p.counts, dtype=np.float64)
        if p.balanced:
            why = ("classes and classifier rows form an orthogonal frame: W W^T, Hbar^T Hbar and W Hbar are "
                   "multiples of the identity" if not collapsed else "")
        else:
            why = ("classifier rows w_k and class means h_k of different classes are orthogonal; their norms "
                   "grow with n_k")
        if why:
            lines.append(f"  {why}.")
        lines.append(
            f"  Bias-free, each class k is one mode with a_k = N kappa / n_k; it keeps w_k, h_k != 0 iff "
            f"a_k < a*(M) = {astar:.4g}, i.e. iff n_k > n_thr = N kappa / a*(M) = {nthr_text}"
            + (", and it is among the R largest classes." if cut else ".")
        )
        if not collapsed:
            small = int(np.argmin(counts))
            lines.append(f"  All {K} classes are kept: the smallest, class {small} with n_k = {p.counts[small]}, is "
                         f"{_by(counts[small], nthr, 'n_thr')}.")
        else:
            if below:
                lines.append(
                    f"  {len(below)} of {K} classes collapse"
                    + (" (minority collapse)" if len(below) < K else "") + f": {_class_list(below)} "
                    f"(n_k = {_ints(sorted({p.counts[k] for k in below}, reverse=True))}) "
                    f"fall below n_thr = {nthr_text}"
                    + (f" (the largest of them is {_by(max(counts[below]), nthr, 'n_thr')})" if nthr else "")
                    + ": w_k = 0 and h_k = 0, so their samples get logit 0 for every class."
                )
            if cut:
                lines.append(f"  {_class_list(cut).capitalize()} would be kept but the widths allow only "
                             f"R = {p.rank_budget} nonzero modes: they collapse too (rank budget).")
            if kept:
                small = min(kept, key=lambda k: counts[k])
                lines.append(f"  The smallest kept class, class {small} (n_k = {p.counts[small]}), is "
                         f"{_by(counts[small], nthr, 'n_thr')}.")
            else:
                lines.append("  Every class collapses: the decays are too strong for these class sizes "
                             "(the all-zero solution is optimal).")
        syms = [
            "  n_thr      = N kappa / a*(M): a class with n_k <= n_thr collapses (minority collapse: w_k = 0, h_k = 0)",
            "  a_k        = N kappa / n_k: cost-to-gain ratio of class k's mode (printed as a_k/a*: < 1 kept)",
        ] + sym_a
    else:
        r, nz = int(m.active.sum()), K - 1  # D - n n^T/N: one zero eigenvalue (along 1), K - 1 positive
        mu_thr = float(np.exp(np.log(p.N) + m.log_kappa - np.log(astar)))
        if p.balanced:
            lines.append("  With an unregularized bias b* = 1/K, the class means (centred) and classifier rows form "
                         "a simplex ETF: equal norms, pairwise cosine -1/(K-1)." if r == K - 1 else
                         f"  Only {r} of the K - 1 directions are nonzero.")
        else:
            lines.append(
                "  With an unregularized bias b* = n_k/N, W fits the centred targets; its directions are the "
                "eigenvectors of the centred class-count matrix D - n n^T/N (eigenvalues mu_i), not single classes."
            )
        lines.append(
            f"  Direction i is kept iff a_i = N kappa / mu_i < a*(M) = {astar:.4g}, i.e. iff mu_i > mu_thr = "
            f"N kappa / a*(M) = {_g(mu_thr)}: {r} of {nz} kept."
        )
        dropped = [i for i in range(K) if m.mu[i] > 0 and not m.active[i]]
        if dropped:
            lines.append("  Dropped: mu_i = " + ", ".join(
                f"{m.mu[i]:.4g} ({_by(m.mu[i], mu_thr, 'mu_thr')})" if not m.eligible[i]
                else f"{m.mu[i]:.4g} (rank budget)" for i in dropped[:8]) + (" ..." if len(dropped) > 8 else ""))
        if r < nz:
            lines.append("  A class is 'separated' when its own logit beats every other logit of its samples; "
                         "with fewer directions than K - 1 some classes are not.")
        syms = [
            "  b*         = n_k / N: the optimal (unregularized) bias of class k",
            "  mu_i       eigenvalue i of the centred class-count matrix D - n n^T/N (D = diag(n_k))",
            "  mu_thr     = N kappa / a*(M): a direction with mu_i <= mu_thr is dropped",
        ] + sym_a
    return lines, syms


def _ce_story(pred) -> tuple[list[str], list[str]]:
    ce, sol, p = pred.ce, pred._ce, pred.problem
    if not p.balanced and p.M >= 2:  # best found by the rank search (nclab.theory.ce_imbalanced), not certified
        return _ce_deep_story(pred)
    if not p.balanced:  # M = 1, certified convex solve (nclab.theory.ce_imbalanced)
        merged = [g for g in getattr(sol, "merged", []) or [] if len(g) > 1]
        lines = [f"optimal geometry: {pred.geometry}",
                 "  Imbalanced CE at M = 1 is convex in the class logits Z = W Hbar: min sum_k (n_k/N) CE(Z e_k + b, k)"
                 " + sqrt(lambda_W lambda_H) ||Z D^(1/2)||_*, solved to a certified duality gap (see the note).",
                 "  Classes of equal count n merge (equal classifier rows and class means) iff n <= N^2 lambda_W "
                 f"lambda_H = {_g(getattr(sol, 'collapse_count', float('nan')))}: "
                 + (f"merged here: {merged}." if merged else "no class merges here.")]
        thr = pred.thresholds.get("minority_count_threshold")
        if thr is not None:
            lines.append(f"  Minority collapse (exact): for classes {thr['classes']} (count {thr['count']:g}) "
                         f"{thr['text']}.")
        return lines, ["  D          = diag(n_k); ||.||_* the nuclear norm (sum of singular values)"]
    lines = [f"optimal geometry: {pred.geometry}" + ("" if p.M == 1 else " (best point found; M >= 2 has no proof)")]
    g, gc = sol.gamma, sol.etf_gamma_c
    lines.append(
        f"  Balanced CE reduces to the K x K logits Z = W Hbar with penalty gamma = {_g(g)}; the simplex ETF "
        f"beats the all-zero solution iff gamma < gamma_c(K, M) = {_g(gc)} (gamma is {_by(g, gc, 'gamma_c')})."
    )
    if ce["etf_proven"]:
        lines.append("  M = 1: the ETF (or zero above gamma_c) is the proven global minimizer (Jensen).")
    elif ce["etf_is_global"]:
        lines.append("  No lower-rank code beat the ETF in the search.")
    else:
        lines.append(f"  The ETF (f = {ce['etf_objective']:.6g}) is NOT optimal: the {pred.geometry} reaches "
                     f"f = {pred.objective:.6g} with rank {ce['best_rank']} (low-rank bias of depth, theory.md "
                     "sec. 4).")
    syms = [
        "  gamma      = (prod_j lambda_j * n * lambda_H)^(1/(M+1)), n = samples per class",
        "  gamma_c    threshold: the ETF candidate beats zero iff gamma < gamma_c(K, M)",
    ]
    return lines, syms


def _ce_deep_story(pred) -> tuple[list[str], list[str]]:
    """Imbalanced CE at M >= 2: the best structure found (certified: false), the ranks searched, merges."""
    ce, p = pred.ce, pred.problem
    ranks = ce["ranks_searched"]
    merged = [g for g in ce["merged"] if len(g) > 1]
    per_rank = ", ".join(f"{r}: {v:.6g}" for r, v in sorted(ce["best_per_rank"].items())[:12])
    lines = [f"optimal geometry: {pred.geometry} (certified: false)",
             f"  Imbalanced CE at M = {p.M} reduces to the class logits Z = W Hbar with the penalty (M+1)/2 gamma' "
             f"sum_i sigma_i(Z D^(1/2))^(2/(M+1)), a Schatten quasi-norm (nonconvex): this is the best structure "
             f"found by a multi-start search over ranks {_ints(ranks)} (best value per rank: {per_rank}), an upper "
             "bound on the global minimum, not a certified optimum.",
             "  Classifier rows merged: " + (f"{merged}." if merged else "none.")]
    thr = pred.thresholds.get("minority_count_threshold")
    if thr is not None:
        lines.append(f"  Minority collapse (best found, bisection on the search, not certified): for classes "
                     f"{thr['classes']} (count {thr['count']:g}) {thr['text']}; here they are "
                     f"{'merged' if thr['merged_now'] else 'apart'}.")
    if not ce["etf_is_global"] and pred.objective < ce["etf_objective"]:
        lines.append(f"  The ETF-like point z (I - 1 1^T/K) has f = {ce['etf_objective']:.6g}; the best found is lower "
                     f"(f = {pred.objective:.6g}, rank {ce['best_rank']}).")
    syms = ["  gamma'     = (prod_j lambda_j * lambda_H)^(1/(M+1)); D = diag(n_k)"]
    return lines, syms


def _range(lo, hi, fmt) -> str:
    a, b = fmt(lo), fmt(hi)
    return a if a == b else f"{a}..{b}"


def _class_table(pred) -> tuple[list[str], str]:
    """The class table and a note: one row per class for K <= TABLE_MAX_ROWS; above, one row per run of
    consecutive classes in the same state (ranges min..max), or one row per state when runs are many."""
    p, c = pred.problem, pred.classes
    K = p.K
    bias_free_mse = p.loss == "mse" and not p.bias
    ratio = None
    if bias_free_mse:
        m = pred._mse
        ratio = np.empty(K)  # log10(a_k / a*): printed as a number, or 1eNNN beyond float64
        ratio[m.mode_class] = (m.log_a - np.log(pred.thresholds["a_star"])) / np.log(10)
    collapsed = np.asarray(c["collapsed"], dtype=bool)
    margin = np.asarray(c["margin"], dtype=np.float64)
    if bias_free_mse:
        state = np.where(collapsed, 0, 1)
    else:
        state = np.where(collapsed, 0, np.where(margin > 1e-9, 2, np.where(np.isnan(margin), 4, 3)))
    names = ["collapsed", "kept", "separated", "not separated", "margin not computed"]
    cols = {
        "n": np.asarray(p.counts, dtype=np.float64), "w": np.asarray(c["w_norm"]), "h": np.asarray(c["h_norm"]),
        "own": np.asarray(c["logit_own"]), "margin": margin,
    }
    fmts = {"n": lambda v: f"{v:.0f}", "w": lambda v: f"{v:.5g}", "h": lambda v: f"{v:.5g}",
            "own": lambda v: f"{v:.5g}", "margin": lambda v: f"{v:.4g}"}
    if ratio is not None:
        cols["r"], fmts["r"] = ratio, _pow10
    if K <= TABLE_MAX_ROWS:
        groups = [(str(k), np.asarray([k])) for k in range(K)]
        note = ""
    else:
        starts = np.flatnonzero(np.concatenate([[True], state[1:] != state[:-1]]))
        if starts.size <= TABLE_MAX_ROWS:
            ends = np.concatenate([starts[1:], [K]])
            groups = [(str(a) if b - a == 1 else f"{a}-{b - 1}", np.arange(a, b)) for a, b in zip(starts, ends)]
            note = (f"(K = {K:,} classes: one row per run of consecutive classes in the same state; a..b is the "
                    "range over the run; --json or --grams DIR for every class)")
        else:
            groups = []
            for st in np.unique(state):
                idx = np.flatnonzero(state == st)
                groups.append((f"{idx.size} cls", idx))
            note = (f"(K = {K:,} classes in {starts.size:,} runs: one row per state; a..b is the range over its "
                    "classes; --json or --grams DIR for every class)")
    head = f"{'class':>9} {'n_k':>7} {'||w_k||':>11} {'||h_k||':>11} {'own logit':>10} {'margin':>10}"
    head += f" {'a_k/a*':>9}" if ratio is not None else ""
    out = [head + "  state"]
    for label, idx in groups:
        cells = {}
        for key, v in cols.items():
            vals = v[idx]
            fin = vals[np.isfinite(vals)] if key == "margin" else vals
            cells[key] = "n/a" if fin.size == 0 else _range(fin.min(), fin.max(), fmts[key])
        w = max(11, len(cells["w"]))
        line = (f"{label:>9} {cells['n']:>7} {cells['w']:>{w}} {cells['h']:>11} {cells['own']:>10} "
                f"{cells['margin']:>10}")
        line += f" {cells['r']:>9}" if ratio is not None else ""
        out.append(line + "  " + names[int(state[idx[0]])])
    return out, note


def _grams_text(pred) -> list[str]:
    p = pred.problem
    if p.K > GRAMS_MAX_K:
        raise ValueError(f"--grams prints K x K matrices for K <= {GRAMS_MAX_K} (K = {p.K}); use --grams DIR to "
                         "write them as .npy files (--json gives their structure)")
    out = ["", "Grams (K x K, class coordinates; rows and columns are classes 0..K-1):"]
    names = [
        ("WWt", "W W^T: inner products of the classifier rows w_k (diagonal: ||w_k||^2)"),
        ("HtH", "Hbar^T Hbar: inner products of the class means h_k" + (", centred" if p.bias else "")
         + " (diagonal: ||h_k||^2)"),
        ("WH", "W Hbar: column k = logits W h_k of a class-k sample" + (" before the bias b*" if p.bias else "")),
    ]
    for key, title in names:
        mat = np.asarray(getattr(pred, key), dtype=np.float64)
        mat = np.where(np.abs(mat) <= 1e-12 * max(float(np.abs(mat).max(initial=0.0)), 1e-300), 0.0, mat)
        out.append(f"{key} = {title}")
        with np.printoptions(precision=5, suppress=False, linewidth=160, floatmode="maxprec"):
            out.extend("  " + line for line in np.array2string(mat, separator="  ").splitlines())
    return out


def _header(pred) -> str:
    """What the answer is: a closed form, a certified solve, or the best point a search found."""
    ce = pred.ce
    if ce is None:
        return "global minimizer of the deep linear UFM (closed form; theory.md)"
    if ce.get("certified"):
        return "global minimizer of the deep linear UFM (certified convex solve; docs/ce.md)"
    if ce.get("etf_proven"):
        return "global minimizer of the deep linear UFM (proven at M = 1; theory.md)"
    return "best point found for the deep linear UFM (search, not certified; theory.md, docs/ce.md)"


def format_summary(pred, grams: bool = False) -> str:
    """The text of ``nclab predict``: setting, geometry in words, objective, class table, symbols."""
    p = pred.problem
    lines = [f"nclab predict: {_header(pred)}"]
    lines += _setting(p)
    lines.append("")
    story, syms = _mse_story(pred) if pred._mse is not None else _ce_story(pred)
    lines += [textwrap.fill(line, width=110, subsequent_indent="    " if line.startswith("  ") else "  ",
                            break_on_hyphens=False) for line in story]
    lines.append(f"objective: f* = {pred.objective:.10g} (the all-zero solution has f = {pred.objective_zero:.10g})")
    if not pred.gram_unique and pred.uniqueness_note:
        lines.append(f"note: the Grams are not unique: {pred.uniqueness_note}")
    for note in ([] if pred._ce is None else pred._ce.notes):
        if "no proof" not in note:
            lines.append(f"note: {note}")
    lines.append("")
    table, table_note = _class_table(pred)
    lines += table
    if table_note:
        lines.append(table_note)
    if pred.bias is not None:
        b = np.asarray(pred.bias)
        lines.append(f"optimal bias b* = {np.array2string(b[:12], precision=5, separator=', ')}"
                     + (" ..." if b.size > 12 else ""))
    if grams:
        lines += _grams_text(pred)
    lines += [
        "",
        "symbols:",
        "  n_k        samples of class k; N = sum_k n_k",
        "  ||w_k||    norm of row k of the end-to-end classifier W = W_M...W_1 (as in the report's norms figure)",
        "  ||h_k||    norm of the class-k mean feature at the head input (Hbar, the free features)"
        + ("; centred by the global mean" if p.bias else ""),
        "  own logit  output for class k on a class-k sample (w_k . h_k" + (" + b_k" if pred.bias is not None else "")
        + (", MSE target 1)" if p.loss == "mse" else ")"),
        "  margin     own logit minus the largest other logit of a class-k sample (> 0: classified correctly)",
    ] + [textwrap.fill(line, width=110, subsequent_indent=" " * 15, break_on_hyphens=False) for line in syms]
    if p.K <= GRAMS_MAX_K and not grams:
        lines.append("(--grams prints W W^T, Hbar^T Hbar and W Hbar; --grams DIR writes every Gram as .npy; "
                     "--json everything, per layer too)")
    return "\n".join(lines)


def read_counts_file(path: str) -> list[int]:
    """Class counts from a file: .npy (a 1-D integer array) or text (integers separated by commas, spaces or
    newlines; '#' starts a comment). One ValueError for anything else."""
    import os

    if not os.path.isfile(path):
        raise ValueError(f"--counts-file {path}: no such file")
    if path.lower().endswith(".npy"):
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValueError(f"--counts-file {path}: not a readable .npy file ({str(exc).splitlines()[0]})") from None
        if arr.ndim != 1 or arr.dtype.kind not in "iuf":
            raise ValueError(f"--counts-file {path}: needs a 1-D array of integers, got shape {arr.shape} "
                             f"dtype {arr.dtype}")
        if arr.dtype.kind == "f" and not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
            raise ValueError(f"--counts-file {path}: class counts must be integers")
        return arr.astype(np.int64).tolist() if arr.dtype.kind == "f" else arr.tolist()
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--counts-file {path}: cannot read it as text ({exc})") from None
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        for tok in line.split("#", 1)[0].replace(",", " ").split():
            try:
                out.append(int(tok))
            except ValueError:
                raise ValueError(f"--counts-file {path}, line {lineno}: {tok!r} is not an integer") from None
    if not out:
        raise ValueError(f"--counts-file {path}: no class counts in it")
    return out


def write_grams(pred, folder: str) -> list[str]:
    """Write every dense Gram as .npy into ``folder`` (WWt, HtH, WH, layer{j}_{mean_gram,partial_gram,
    nc3_scale}); refused before writing when memory or disk space cannot take them."""
    import os

    from nclab.cli._common import check_out_dir
    from nclab.theory.resources import format_bytes
    from nclab.theory.structure import check_dense

    out = check_out_dir(folder, "--grams")
    K, M = pred.problem.K, pred.problem.M
    check_dense(K, 2, "writing the Grams")
    need = 8.0 * K * K * (3 + 3 * M)
    out.mkdir(parents=True, exist_ok=True)
    st = os.statvfs(out)
    if need > st.f_bavail * st.f_frsize:
        raise ValueError(f"--grams {folder}: the {3 + 3 * M} Grams of {K:,} x {K:,} need {format_bytes(need)} of disk, "
                         f"more than the {format_bytes(st.f_bavail * st.f_frsize)} free there")
    names = [(name, None) for name in ("WWt", "HtH", "WH")] + [
        (name, j) for j in range(1, M + 1) for name in ("mean_gram", "partial_gram", "nc3_scale")]
    written = []
    for name, j in names:
        g = pred.gram(name, j)
        if g is None:
            continue
        fn = out / (name if j is None else f"layer{j}_{name}")
        np.save(fn.with_suffix(".npy"), g)
        written.append(str(fn.with_suffix(".npy")))
        del g
    return written


def dumps(obj) -> str:
    """Strict JSON, indented, with lists of numbers on one line (a K-long list is one line, not K)."""
    import json

    from nclab.cli._common import _jsonable

    def enc(v, pad):
        if isinstance(v, dict):
            if not v:
                return "{}"
            inner = pad + "  "
            return "{\n" + ",\n".join(f"{inner}{json.dumps(k)}: {enc(x, inner)}" for k, x in v.items()) \
                + "\n" + pad + "}"
        if isinstance(v, list) and v and any(isinstance(x, (dict, list)) for x in v):
            inner = pad + "  "
            return "[\n" + ",\n".join(inner + enc(x, inner) for x in v) + "\n" + pad + "]"
        return json.dumps(v, allow_nan=False)

    return enc(_jsonable(obj), "")


@click.command("predict")
@problem_options
@click.option("--counts-file", type=click.Path(dir_okay=False),
              help="Samples per class from a file: text (one integer per line or comma-separated) or .npy.")
@click.option("--seed", default=0, show_default=True, help="Seed of the CE low-rank search.")
@click.option("--grams", "grams", is_flag=False, flag_value="-", default=None, metavar="[DIR]",
              help=f"Alone: also print the K x K Grams W W^T, Hbar^T Hbar, W Hbar (K <= {GRAMS_MAX_K}). With a "
                   "folder: write every dense Gram (and per layer) there as .npy files.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object instead: the structure of every Gram (per-mode values over a basis, "
                   "O(K)); the dense K x K Grams too for K <= 32.")
@friendly_errors
def predict_cmd(counts, classes, per_class, depth, widths, width, lambda_w, lambda_h, loss, bias, counts_file, seed,
                grams, as_json):
    """Closed-form global minimizer of the deep linear UFM: which geometry is optimal, which classes
    collapse and why, the predicted class norms (and Grams).

    \b
    Examples:
      nclab predict
      nclab predict --counts 200,100,50,50 --depth 3 --lambda-w 5e-4 --lambda-h 5e-4
      nclab predict --counts 200,100,50,50 -M 3 --lambda-w 2e-2 --lambda-h 2e-2
      nclab predict --counts 200,100,50,50 -M 3 --lambda-w 2e-2 --lambda-h 2e-2 --bias
      nclab predict -K 4 -n 10 --bias --grams
      nclab predict -K 4 -n 10 --loss ce -M 3
      nclab predict --counts 200,100,50,50 --loss ce -M 3 --lambda-w 2e-2 --lambda-h 2e-2
      nclab predict -K 100000 -n 1
      nclab predict --counts 200,100,50,50 -M 3 --json
    """
    from nclab.theory import predict

    if counts_file is not None and (counts is not None or classes is not None or per_class is not None):
        raise ValueError("give --counts-file or --counts / --classes / --per-class, not both")
    kw = problem_kwargs(counts, classes, per_class, depth, widths, width, lambda_w, lambda_h, loss, bias)
    if counts_file is not None:
        kw["counts"] = read_counts_file(counts_file)
    if kw["counts"] is None and kw["classes"] is None and kw["per_class"] is None:
        kw["counts"] = [200, 100, 50, 50]  # the paper's imbalanced configuration
    show = grams == "-"
    if show and not as_json and kw["counts"] is None and kw["classes"] is not None:
        if isinstance(kw["classes"], int) and kw["classes"] > GRAMS_MAX_K:
            raise ValueError(f"--grams prints K x K matrices for K <= {GRAMS_MAX_K} (K = {kw['classes']}); "
                             "use --grams DIR to write them as .npy files (--json gives their structure)")
    pred = predict(**kw, seed=seed)
    written = write_grams(pred, grams) if grams not in (None, "-") else []
    if as_json:
        doc = pred.to_dict()
        if written:
            doc["grams_written"] = written
        click.echo(dumps(doc))
    else:
        click.echo(format_summary(pred, grams=show))
        if written:
            click.echo(f"\nwrote {len(written)} dense Grams (.npy, float64, K x K) to {grams}: "
                       + ", ".join(os.path.basename(w) for w in written[:6]) + (" ..." if len(written) > 6 else ""))
