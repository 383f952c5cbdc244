"""`nclab measure FILE`: NC metrics of a saved feature dump (.npz or .pt)."""

from __future__ import annotations

import warnings

import click

from nclab.cli._common import echo_json, friendly_errors


@friendly_errors
def _measure(file, as_json, target, tol, num_classes, global_mean, within, per_class):
    from nclab.metrics import deep_head_metrics, load_dump, nc_metrics

    d = load_dump(file)
    ws, opts = d["weights"], {"num_classes": num_classes, "rtol": tol, "global_mean": global_mean,
                              "within": within}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if ws is not None and len(ws) > 1:
            result = deep_head_metrics(d["features"], d["labels"], ws, d["bias"], target=target, **opts)
        else:
            result = nc_metrics(d["features"], d["labels"], ws[0] if ws else None, d["bias"], target=target,
                                **opts)
    for w in caught:
        click.echo(f"warning: {w.message}", err=True)
    if as_json:
        echo_json({"file": str(file), **result.to_dict()})
        return
    layers = getattr(result, "layers", [result])
    i = layers[0].info
    click.echo(f"{file}: N={i['N']} D={i['D']} K={i['K']} K_eff={i['K_eff']} target={i['target']} "
               f"(centred means: {i['center']}) rank={i['rank']} rtol={i['rtol']:g} layers={len(layers)}")
    click.echo(result.table())
    notes = {k: v for m in layers for k, v in m.reasons.items()}
    for k, v in notes.items():
        click.echo(f"  {k}: {v}")
    if i["collapsed"]:
        click.echo(f"collapsed classes (layer 1): {i['collapsed']}")
    if per_class:
        for j, m in enumerate(layers):
            click.echo(f"\nper class (layer {j + 1}):")
            keys = [k for k in ("label", "count", "nc1", "variance", "mean_norm", "weight_norm") if k in m.per_class]
            click.echo("".join(f"{k:>13}" for k in keys))
            for row in zip(*(m.per_class[k] for k in keys)):
                click.echo("".join(f"{v:>13}" if isinstance(v, int) else f"{v:>13.4e}" for v in row))


@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON (values, reasons, per-class, info).")
@click.option("--target", type=click.Choice(["etf", "of", "auto"]), default="auto", show_default=True,
              help="NC2/NC3 target; auto = etf with a bias or without weights, else of.")
@click.option("--tol", type=float, default=1e-6, show_default=True,
              help="Relative tolerance on singular values of the centred class means (NC1 pseudo-inverse).")
@click.option("--num-classes", "-K", type=int, default=None, help="K (default: max label + 1).")
@click.option("--global-mean", type=click.Choice(["weighted", "uniform"]), default="weighted",
              show_default=True, help="Sample-weighted (paper) or plain mean of class means.")
@click.option("--within", type=click.Choice(["pooled", "class_mean"]), default="pooled", show_default=True,
              help="Sigma_W pooled over samples (paper) or the mean of per-class covariances.")
@click.option("--per-class", is_flag=True, help="Also print per-class counts, NC1 shares and norms.")
def measure(file, as_json, target, tol, num_classes, global_mean, within, per_class):
    """NC metrics of a saved dump FILE (.npz or .pt).

    Keys: H (or features) N x D, y (or labels); optional W (K x D) or W1, W2, ... / weights
    (deep head, W_j of shape d_{j+1} x d_j) and b (or bias). A deep head is measured per layer.

    \b
    Example:  nclab measure feats.npz --json
    """
    _measure(file, as_json, target, tol, num_classes, global_mean, within, per_class)


measure_cmd = click.command("measure")(measure)
