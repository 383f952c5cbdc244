"""``nclab predict``: print the closed-form global minimizer for one setting."""

from __future__ import annotations

import click
import numpy as np

from nclab.cli._common import echo_json, friendly_errors, parse_float_list, parse_int_list


def problem_options(fn):
    """Options shared by ``predict`` and ``simulate``: the deep linear UFM setting."""
    opts = [
        click.option("--counts", help="Samples per class, e.g. 200,100,50,50."),
        click.option("--classes", "-K", type=int, help="Number of classes (balanced, with --per-class)."),
        click.option("--per-class", "-n", type=int, help="Samples per class (balanced)."),
        click.option("--depth", "-M", type=int, help="Number of linear layers M (default: from --widths, else 1)."),
        click.option("--widths", help="Input widths of the M layers, d,d_2,...,d_M."),
        click.option("--width", type=int, help="One width for every layer (default 64)."),
        click.option("--lambda-w", default="5e-4", show_default=True, help="Weight decay: one value or M values."),
        click.option("--lambda-h", default="5e-4", show_default=True, help="Feature decay lambda_H."),
        click.option("--loss", type=click.Choice(["mse", "ce"]), default="mse", show_default=True),
        click.option("--bias/--no-bias", default=False, show_default=True, help="Unregularized last-layer bias."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def problem_kwargs(counts, classes, per_class, depth, widths, width, lambda_w, lambda_h, loss, bias) -> dict:
    """Turn the CLI strings into keyword arguments of :func:`nclab.theory.make_problem`."""
    if widths is not None and width is not None:
        raise ValueError("give --widths or --width, not both")
    lam = parse_float_list(lambda_w, "--lambda-w")
    lam_h = parse_float_list(lambda_h, "--lambda-h")
    if lam is None or len(lam) == 0 or lam_h is None or len(lam_h) != 1:
        raise ValueError("--lambda-w needs 1 or M numbers and --lambda-h exactly one")
    return dict(
        counts=parse_int_list(counts, "--counts"),
        classes=classes,
        per_class=per_class,
        depth=depth,
        widths=parse_int_list(widths, "--widths") if widths is not None else width,
        lambda_w=lam[0] if len(lam) == 1 else lam,
        lambda_h=lam_h[0],
        bias=bias,
        loss=loss,
    )


def format_summary(pred) -> str:
    p = pred.problem
    lines = [
        f"nclab predict: K = {p.K}, N = {p.N}, M = {p.M}, widths = {list(p.widths)}, loss = {p.loss}, "
        f"bias = {'yes' if p.bias else 'no'}",
        f"  lambda_w = {list(p.lambda_w)}, lambda_H = {p.lambda_h:g}, rank budget R = {p.rank_budget}",
        f"geometry: {pred.geometry}" + ("" if pred.gram_unique else "  [Grams not unique: only spectra]"),
        f"objective f* = {pred.objective:.12g}   (all-zero solution: {pred.objective_zero:.12g})",
    ]
    if pred.ce is not None:
        ce = pred.ce
        verdict = "yes (proven for M = 1)" if ce["etf_proven"] else ("yes" if ce["etf_is_global"] else "NO")
        lines.append(f"simplex ETF candidate: f = {ce['etf_objective']:.12g}; global minimizer: {verdict}")
        lines.append(f"best structure found: {ce['best_structure']} (rank {ce['best_rank']})")
    lines.append("")
    c = pred.classes
    lines.append(f"{'class':>5} {'n_k':>7} {'state':>9} {'||w_k||^2':>13} {'||h_k||^2':>13} {'logit own':>11}")
    for k in range(p.K):
        state = "active" if c["active"][k] else "collapsed"
        lines.append(
            f"{k:>5} {c['count'][k]:>7} {state:>9} {c['w_norm2'][k]:>13.6g} {c['h_norm2'][k]:>13.6g} "
            f"{c['logit_own'][k]:>11.6g}"
        )
    if pred.bias is not None:
        lines.append(f"optimal bias b* = {np.array2string(np.asarray(pred.bias), precision=6)}")
    t = pred.thresholds
    if t:
        lines.append("")
        lines.append(
            f"thresholds: a*(M={p.M}) = {t['a_star']:.6g} (a mode is nonzero iff a_i < a*), "
            f"h_max = {t['h_max']:.6g}, x* = {t['x_star']:.6g}"
        )
        if not p.bias:
            lines.append(
                f"minority collapse: class k collapses iff n_k <= {t['n_threshold']:.6g} "
                f"(or beyond the rank budget); collapsed now: {t['classes_collapsed']}"
            )
    if not pred.gram_unique and pred.uniqueness_note:
        lines.append(f"note: {pred.uniqueness_note}")
    return "\n".join(lines)


@click.command("predict")
@problem_options
@click.option("--seed", default=0, show_default=True, help="Seed of the CE low-rank search.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the summary.")
@friendly_errors
def predict_cmd(counts, classes, per_class, depth, widths, width, lambda_w, lambda_h, loss, bias, seed, as_json):
    """Closed-form global minimizer of the deep linear UFM.

    Example: nclab predict --counts 200,100,50,50 --depth 3 --lambda-w 5e-4 --lambda-h 5e-4
    """
    from nclab.theory import predict

    kw = problem_kwargs(counts, classes, per_class, depth, widths, width, lambda_w, lambda_h, loss, bias)
    if kw["counts"] is None and kw["classes"] is None:
        kw["counts"] = [200, 100, 50, 50]  # the paper's imbalanced configuration
    pred = predict(**kw, seed=seed)
    if as_json:
        echo_json(pred.to_dict())
    else:
        click.echo(format_summary(pred))
