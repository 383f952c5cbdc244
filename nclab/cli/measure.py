"""`nclab measure PATH`: NC metrics of a saved feature dump (.npz or .pt) or of a trained run folder.

The target is the theory's for the setting, chosen as the training tracker chooses it
(nclab.experiments.tracking.choose_target): with MSE and both decays given (flags, the dump's stored
setting or the run's config.json) nclab.predict's minimizer for the data's own class counts and head
widths (ETF with a bias, OF bias-free balanced, GOF bias-free imbalanced, with its per-layer Grams and
NC3 scales); otherwise the named frame (etf with a bias or without a classifier, else of), the default of
nclab.metrics.nc_metrics too, so `nclab measure FILE` and `nc_metrics(H, y, W, b)` agree on a dump.
"""

from __future__ import annotations

import json
import math
import os
import types
import warnings

import click

from nclab.cli._common import fail
from nclab.experiments.config import CHOICES

TARGETS = CHOICES["target"]  # the same list, in the same order, as `nclab train --target`
#: above this K the theory's targets are passed to the metrics in structured form (tile by tile)
TILED_TARGET_K = 512


def _finite_list(text, name: str) -> list[float] | None:
    if text is None:
        return None
    out = []
    for t in str(text).split(","):
        t = t.strip()
        if not t:
            raise ValueError(f"{name} must be a comma-separated list of numbers, got {text!r}")
        try:
            v = float(t)
        except ValueError:
            raise ValueError(f"{name} must be a comma-separated list of numbers, got {text!r}") from None
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"{name} must be finite and >= 0, got {t!r}")
        out.append(v)
    return out


# ------------------------------------------------------------------------------------------- targets
def _theory_kwargs(pred, bias: bool) -> dict:
    """deep_head_metrics keyword arguments comparing every layer with a prediction (object or its dict)."""
    import numpy as np

    K = len(pred["problem"]["counts"]) if isinstance(pred, dict) else pred.problem.K
    if K > TILED_TARGET_K and (not isinstance(pred, dict) or "structure" in pred):
        # large K: the theory's Grams as structured targets, read tile by tile by the metrics (no K x K matrix)
        from nclab.theory.structure import tiled_gram

        M = len(pred["layers"]) if isinstance(pred, dict) else pred.problem.M
        return {"target": [tiled_gram(pred, "mean_gram", j) for j in range(1, M + 1)],
                "target_w": [tiled_gram(pred, "partial_gram", j) for j in range(1, M + 1)],
                "target_wh": tiled_gram(pred, "WH"),
                "nc3_scale": [tiled_gram(pred, "nc3_scale", j) for j in range(1, M + 1)], "center": bool(bias)}
    if isinstance(pred, dict):
        layers = pred["layers"]

        def dense(name, j=None):  # the dense Gram of prediction.json, or built from its structure (large K)
            v = pred.get(name) if j is None else layers[j - 1].get(name)
            if v is None and "structure" in pred:
                from nclab.theory.structure import gram_from_dict

                return gram_from_dict(pred, name, j)
            return v
    else:
        layers = [None] * pred.problem.M

        def dense(name, j=None):
            return pred.gram(name, j)

    def gram(v, what):
        g = np.asarray(v, dtype=np.float64)  # (K, K); a list would read as one entry per layer
        if g.ndim != 2:
            raise ValueError(f"the prediction's {what} is not a K x K matrix (shape {g.shape})")
        return g

    M = len(layers)
    return {"target": [gram(dense("mean_gram", j), "mean_gram") for j in range(1, M + 1)],
            "target_w": [gram(dense("partial_gram", j), "partial_gram") for j in range(1, M + 1)],
            "target_wh": gram(dense("WH"), "WH"),
            "nc3_scale": [gram(dense("nc3_scale", j), "nc3_scale") for j in range(1, M + 1)], "center": bool(bias)}


def _choose(setting: dict, counts, widths, bias: bool, has_weights: bool) -> tuple[str, object, str]:
    """(name, prediction or None, note) for a dump, as the trainer chooses for a run."""
    lw, lh, loss = setting.get("lambda_w"), setting.get("lambda_h"), setting.get("loss", "mse")
    if lw is None or lh is None:
        missing = " and ".join(n for n, v in (("--lambda-w", lw), ("--lambda-h", lh)) if v is None)
        name = "etf" if (bias or not has_weights) else "of"
        return name, None, f"named frame ({'a bias' if bias else 'no classifier' if not has_weights else 'bias-free'}" \
                           f"); give {missing} to compare with nclab.predict's minimizer"
    M = len(widths)
    if len(lw) not in (1, M):
        raise ValueError(f"--lambda-w needs one value or one per head layer ({M}), got {len(lw)}")
    from nclab.experiments.tracking import choose_target

    cfg = types.SimpleNamespace(target="auto", loss=loss, bias=bias, lambda_w=tuple(lw * M if len(lw) == 1 else lw),
                                lambda_h=lh)
    return choose_target(cfg, counts, widths)


# ------------------------------------------------------------------------------------------- run folders
def _run_features(run_dir: str, split: str):
    """(cfg, H (N, d_1) head input, y, weights [W_1..W_M], bias, train counts, widths) of a trained run."""
    import torch

    from nclab.experiments.data import load_run_data
    from nclab.experiments.trainer import HEAD_INPUT, load_model
    from nclab.metrics import capture_inputs

    try:
        cfg, net = load_model(run_dir)
    except (ValueError, TypeError, FileNotFoundError):
        raise
    except Exception as exc:  # a corrupt weights.pt or config.json
        msg = str(exc).splitlines()[0] if str(exc) else repr(exc)
        raise ValueError(f"cannot load the trained model of {run_dir}: {msg}") from None
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    try:
        data = load_run_data(cfg, "cpu", dtype)
    except (ValueError, TypeError, FileNotFoundError):
        raise
    except Exception as exc:
        raise ValueError(f"cannot rebuild the dataset of {run_dir} ({cfg.dataset}): {exc}") from None
    part = data.train if split == "train" else data.test
    if part is None:
        raise ValueError(f"{run_dir} has no test split (test_per_class = 0); use --split train")
    net.eval()
    chunks = []
    with torch.no_grad(), capture_inputs(net, [HEAD_INPUT]) as feats:
        for i in range(0, part.n, cfg.eval_batch_size):
            net(part.X[i:i + cfg.eval_batch_size])
            chunks.append(feats[HEAD_INPUT].clone())
    H = torch.cat(chunks)
    weights = [w.detach() for w in net.head.weights()]
    bias = net.head.bias.detach() if getattr(net.head, "bias", None) is not None else None
    return cfg, H, part.y, weights, bias, list(data.train.counts), list(net.head.widths)


def _run_prediction(run_dir: str, cfg, counts, widths) -> tuple[str, object, str]:
    """The run's target: its prediction.json when the trainer wrote one, else the trainer's own choice."""
    from nclab.experiments.tracking import choose_target

    path = os.path.join(run_dir, "prediction.json")
    if cfg.target == "auto" and os.path.exists(path):
        try:
            with open(path) as f:
                pred = json.load(f)
            layers = pred["layers"]
            if not (isinstance(layers, list) and len(layers) == cfg.depth
                    and (pred.get("WH") is not None or "structure" in pred)):
                raise ValueError(f"{len(layers) if isinstance(layers, list) else 'no'} layers for depth {cfg.depth}")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a prediction of this run ({str(exc).splitlines()[0]}); "
                             "delete it to recompute the target") from None
        return "theory", pred, f"{os.path.basename(path)}: {pred.get('geometry', '?')}"
    return choose_target(cfg, counts, widths)


def _export(path: str, H, y, weights, bias, setting: dict) -> None:
    import numpy as np

    if not path.lower().endswith(".npz"):
        raise ValueError(f"--export must name an .npz file, got {path!r}")
    arrays = {"H": H.cpu().numpy(), "y": y.cpu().numpy()}
    arrays.update({f"W{j + 1}": w.cpu().numpy() for j, w in enumerate(weights)})
    if bias is not None:
        arrays["b"] = bias.cpu().numpy()
    arrays.update({"lambda_w": np.asarray(setting["lambda_w"], dtype=np.float64),
                   "lambda_h": np.asarray(setting["lambda_h"], dtype=np.float64),
                   "loss": np.asarray(setting["loss"]), "counts": np.asarray(setting["counts"], dtype=np.int64)})
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except OSError as exc:
        raise ValueError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ------------------------------------------------------------------------------------------- command
def _measure(path, as_json, target, tol, num_classes, global_mean, within, per_class, split, export, lambda_w,
             lambda_h, depth, loss):
    from nclab.metrics import deep_head_metrics, load_dump, nc_metrics
    from nclab.metrics._checks import check_rtol
    from nclab.metrics.report import json_ready

    check_rtol(tol, "--tol")
    lw = _finite_list(lambda_w, "--lambda-w")
    if lambda_h is not None and not (math.isfinite(lambda_h) and lambda_h >= 0):
        raise ValueError(f"--lambda-h must be finite and >= 0, got {lambda_h!r}")
    if depth is not None and depth < 1:
        raise ValueError(f"--depth must be >= 1, got {depth}")
    if num_classes is not None and num_classes < 2:
        raise ValueError(f"--num-classes must be >= 2, got {num_classes}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file or folder: {path}")
    is_run = os.path.isdir(path)
    if is_run:
        given = [n for n, v in (("--lambda-w", lw), ("--lambda-h", lambda_h), ("--depth", depth), ("--loss", loss),
                                ("--num-classes", num_classes)) if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)} apply to dump files; a run folder's setting comes from its "
                             "config.json")
        cfg, H, y, ws, b, counts, widths = _run_features(path, split)
        setting = {"lambda_w": list(cfg.lambda_w), "lambda_h": cfg.lambda_h, "loss": cfg.loss, "counts": counts}
        if export:
            _export(export, H, y, ws, b, setting)
        if target in (None, "auto"):
            name, pred, note = _run_prediction(path, cfg, counts, widths)
        else:
            name, pred, note = target, None, "chosen by --target"
        K = len(counts)
    else:
        if export or split != "train":
            raise ValueError("--split and --export read a run folder (a trained `nclab train` run), not a dump file")
        d = load_dump(path)
        H, y, ws, b = d["features"], d["labels"], d["weights"], d["bias"]
        setting = dict(d["setting"])
        setting.update({k: v for k, v in (("lambda_w", lw), ("lambda_h", lambda_h), ("loss", loss)) if v is not None})
        if ws is not None and depth is not None and depth != len(ws):
            raise ValueError(f"--depth {depth} but {path} holds {len(ws)} head layer(s)")
        import numpy as np

        from nclab.metrics._checks import check_features, check_labels

        x = check_features(H)
        yy, K = check_labels(y, x.shape[0], num_classes, x.device)
        counts = setting.get("counts") or np.bincount(yy.cpu().numpy(), minlength=K).tolist()
        if len(counts) != K:
            raise ValueError(f"{path}: counts has {len(counts)} entries for K = {K} classes")
        if ws is not None:
            widths = [int(w.shape[1]) for w in ws]
        else:
            widths = [int(x.shape[1])] * (depth or 1)
        if target in (None, "auto"):
            has_theory_inputs = ws is not None or depth is not None
            name, pred, note = _choose(setting if has_theory_inputs else {}, counts, widths, b is not None,
                                       ws is not None)
        else:
            name, pred, note = target, None, "chosen by --target"
    opts = {"num_classes": K, "rtol": tol, "global_mean": global_mean, "within": within}
    kw = {"target": name} if pred is None else _theory_kwargs(pred, b is not None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if ws is not None and (len(ws) > 1 or is_run):
            result = deep_head_metrics(H, y, ws, b, **kw, **opts)
        else:
            kw1 = dict(kw)
            if pred is not None:  # one layer: the prediction's layer-1 Grams
                kw1.update({k: kw[k][0] for k in ("target", "target_w", "nc3_scale")})
                if ws is None:
                    kw1 = {"target": kw1["target"], "center": kw1["center"]}
            result = nc_metrics(H, y, None if ws is None else ws[0], b, **kw1, **opts)
    layers = getattr(result, "layers", [result])
    for m in layers:
        m.info["target"], m.info["target_note"] = name, note
    for w in caught:
        click.echo(f"warning: {w.message}", err=True)
    if as_json:
        doc = {"path": str(path), "kind": "run" if is_run else "dump", "target": name, "target_note": note,
               **result.to_dict()}
        if is_run:
            doc["split"] = split
        if export:
            doc["export"] = str(export)
        click.echo(json.dumps(json_ready(doc), indent=2, allow_nan=False))
        return
    i = layers[0].info
    what = f" ({split} split)" if is_run else ""
    click.echo(f"{path}{what}: N={i['N']} D={i['D']} K={i['K']} K_eff={i['K_eff']} target={name} "
               f"(centred means: {i['center']}) rank={i['rank']} rtol={i['rtol']:g} layers={len(layers)}")
    click.echo(f"target: {note}")
    click.echo(result.table())
    notes = {k: v for m in layers for k, v in m.reasons.items()}
    for k, v in notes.items():
        click.echo(f"  {k}: {v}")
    if i["collapsed"]:
        click.echo(f"collapsed classes (layer 1): {i['collapsed']}")
    if export:
        click.echo(f"features exported to {export} (nclab measure {export} reads them back)")
    if per_class:
        for j, m in enumerate(layers):
            click.echo(f"\nper class (layer {j + 1}):")
            keys = [k for k in ("label", "count", "nc1", "variance", "mean_norm", "weight_norm", "unc3")
                    if k in m.per_class]
            click.echo("".join(f"{k:>13}" for k in keys))
            for row in zip(*(m.per_class[k] for k in keys)):
                click.echo("".join(f"{v:>13}" if isinstance(v, int) else f"{v:>13.4e}" for v in row))


@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print strict JSON (values, reasons, per-class, info; "
              "undefined values are null).")
@click.option("--target", type=click.Choice(TARGETS), default=None,
              help="NC2/NC3 target (the choices of `nclab train`); auto [default] = the theory's for the setting: "
                   "nclab.predict's minimizer (ETF/OF/GOF) for MSE with --lambda-w and --lambda-h (or a run's "
                   "config), else etf with a bias or without weights, of without a bias.")
@click.option("--tol", type=float, default=1e-6, show_default=True,
              help="Relative tolerance on singular values of the centred class means (NC1 pseudo-inverse), "
                   "2.2e-16 <= tol < 1.")
@click.option("--num-classes", "-K", type=int, default=None, help="K (default: max label + 1).")
@click.option("--global-mean", type=click.Choice(["weighted", "uniform"]), default="weighted",
              show_default=True, help="Sample-weighted (paper) or plain mean of class means.")
@click.option("--within", type=click.Choice(["pooled", "class_mean"]), default="pooled", show_default=True,
              help="Sigma_W pooled over samples (paper) or the mean of per-class covariances.")
@click.option("--per-class", is_flag=True, help="Also print per-class counts, NC1 shares and norms.")
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True,
              help="Run folder: the split whose features are re-extracted.")
@click.option("--export", type=click.Path(dir_okay=False), default=None,
              help="Run folder: also write the features, labels, head (W1..WM, b) and setting to this .npz.")
@click.option("--lambda-w", default=None, help="Dump: weight decay(s) of the head layers (one value or M, "
              "comma-separated), for the theory's target.")
@click.option("--lambda-h", type=float, default=None, help="Dump: feature decay lambda_H, for the theory's target.")
@click.option("--depth", "-M", type=int, default=None, help="Dump without weights: head depth M for the theory.")
@click.option("--loss", type=click.Choice(CHOICES["loss"]), default=None, help="Dump: training loss [default: mse].")
def measure(path, as_json, target, tol, num_classes, global_mean, within, per_class, split, export, lambda_w,
            lambda_h, depth, loss):
    """NC metrics of a saved dump (.npz or .pt) or of a trained run folder PATH.

    Dump keys: H (or features) N x D, y (or labels); optional W (K x D) or W1, W2, ... / weights (deep
    head, W_j of shape d_{j+1} x d_j), b (or bias), and the setting lambda_w, lambda_h, loss, counts.
    A deep head is measured per layer. A run folder (`nclab train --out DIR`): the trained model is
    loaded, its dataset rebuilt, and the features entering every head layer re-extracted (--split) and
    compared with the run's prediction (prediction.json); --export writes them to an .npz that
    `nclab measure FILE.npz` reads back with the same result.

    \b
    Examples:
      nclab measure feats.npz --json
      nclab measure feats.npz --lambda-w 1e-3 --lambda-h 1e-3     # vs nclab.predict for its counts
      nclab measure runs/mlp --split test --export feats.npz
    """
    try:
        _measure(path, as_json, target, tol, num_classes, global_mean, within, per_class, split, export, lambda_w,
                 lambda_h, depth, loss)
    except (ValueError, TypeError, OverflowError, FileNotFoundError) as exc:
        msg = str(exc) or type(exc).__name__
        fail(msg if str(path) in msg or msg.startswith("--") else f"{path}: {msg}")
    except MemoryError:
        fail(f"not enough memory to measure {path}")


class _OneLineErrors(click.Command):
    """Usage errors (bad option values, unknown options) as one `error: ...` line, exit 2, like every other
    error of this command (click's default prints a usage block and `Error:`)."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            fail(exc.format_message())


measure_cmd = click.command("measure", cls=_OneLineErrors)(measure)
