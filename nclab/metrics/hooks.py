"""Deep heads inside any model: capture the inputs of named modules, pair them with partial products.

Layer j of a head made of modules m_1..m_M (e.g. nn.Linear, weight W_j (d_{j+1}, d_j)) sees the input
features H_j; NC metrics at layer j use H_j with the partial product W_M..W_j (metrics.md pitfall 13).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from nclab.metrics._checks import check_int
from nclab.metrics.report import DeepHeadMetrics, _check_options, _per_layer, compute_metrics, scaled_partial_products
from nclab.metrics.stats import ClassStats, SecondPass


def _modules(model: torch.nn.Module, names) -> list:
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(names, str) or not isinstance(names, (list, tuple)) or not names:
        raise ValueError(f"names must be a non-empty list of module names, got {names!r}")
    if not all(isinstance(n, str) for n in names):
        raise TypeError(f"names must be strings, got {names!r}")
    found = dict(model.named_modules())
    missing = [n for n in names if n not in found]
    if missing:
        raise ValueError(f"no module named {missing[0]!r} in the model (see model.named_modules())")
    return [found[n] for n in names]


@contextmanager
def capture_inputs(model: torch.nn.Module, names):
    """Record the input of each named module at every forward; the hooks are always removed on exit.

    Yields a dict name -> the latest input, detached and flattened to (B, d) (overwritten by each
    forward, so streaming over a loader keeps one batch per module in memory).

    Example::

        with capture_inputs(model, ["head.0", "head.1"]) as feats:
            for x, y in loader:
                model(x)
                stats0.update(feats["head.0"], y)
    """
    store, handles = {}, []
    try:
        for name, mod in zip(names, _modules(model, names)):
            def hook(_mod, args, name=name):
                store[name] = args[0].detach().flatten(1)
            handles.append(mod.register_forward_pre_hook(hook))
        yield store
    finally:
        for h in handles:
            h.remove()


def linear_head(model: torch.nn.Module, names) -> tuple[list, torch.Tensor | None]:
    """([W_1..W_M], bias of the last module) from the named modules' `.weight` (d_{j+1}, d_j) / `.bias`.
    Biases of intermediate layers are ignored (the partial products are the linear parts)."""
    mods = _modules(model, names)
    ws = []
    for n, m in zip(names, mods):
        w = getattr(m, "weight", None)
        if not isinstance(w, torch.Tensor) or w.ndim != 2:
            raise ValueError(f"module {n!r} has no 2-D weight; name the head's linear layers")
        ws.append(w.detach())
    b = getattr(mods[-1], "bias", None)
    return ws, (b.detach() if isinstance(b, torch.Tensor) else None)


def stats_head_metrics(stats: list, weights: list, bias=None, *, seconds: list | None = None, target="auto",
                       nc3_scale=None, target_w=None, target_wh=None, **options) -> DeepHeadMetrics:
    """Per-layer metrics from per-layer ClassStats (stats[j] = inputs of layer j+1) and [W_1..W_M].
    seconds[j] (optional) must be stats[j].second_pass(W_M..W_j, bias) run over the same data."""
    parts = scaled_partial_products(weights)
    M = len(parts)
    if not isinstance(stats, (list, tuple)) or len(stats) != M:
        raise ValueError(f"need a list of one ClassStats per layer ({M})")
    targets, scales = _per_layer(target, M), _per_layer(nc3_scale, M, "nc3_scale")
    tws, twhs = _per_layer(target_w, M, "target_w"), _per_layer(target_wh, M, "target_wh")
    seconds = _per_layer(seconds, M, "seconds")
    layers = []
    for j in range(M):
        m = compute_metrics(stats[j], parts[j][0], bias, second=seconds[j], target=targets[j], target_w=tws[j],
                            target_wh=twhs[j], nc3_scale=scales[j], _w_exp=parts[j][1], **options)
        m.info["layer"] = j + 1
        layers.append(m)
    return DeepHeadMetrics(layers)


@torch.no_grad()
def model_head_metrics(model: torch.nn.Module, loader, names, num_classes: int, *, device=None,
                       two_pass: bool = True, target="auto", rtol: float = 1e-6, global_mean: str = "weighted",
                       **options) -> DeepHeadMetrics:
    """NC metrics at the input of every named head layer of `model` over `loader` (batches (x, y)).

    Runs in eval mode under no_grad (restoring the mode afterwards). `names` are the head's linear
    modules in order; their weights give the partial products. two_pass=True (default) reads the data
    twice and never forms a D x D matrix (also gives per-class NC1 and NC4); False makes one pass with
    the D x D scatter per layer. The loader must yield the same samples each pass, unaugmented.
    """
    _modules(model, names)
    num_classes = check_int(num_classes, "num_classes", 2)
    rtol = _check_options(rtol, global_mean, options.get("within", "pooled"), options.get("center"),
                          options.get("collapse_rtol", 1e-3))
    weights, bias = linear_head(model, names)
    was_training = model.training
    model.eval()
    moments = "none" if two_pass else "scatter"
    stats = [ClassStats(num_classes, moments=moments, device=device) for _ in names]
    try:
        with capture_inputs(model, names) as feats:
            for x, y in loader:
                model(x.to(device) if device is not None else x)
                for s, n in zip(stats, names):
                    s.update(feats[n], y)
            seconds = None
            if two_pass:
                parts = scaled_partial_products(weights)
                seconds = [SecondPass(s, p, bias, rtol=rtol, global_mean=global_mean, _w_exp=e)
                           for s, (p, e) in zip(stats, parts)]
                for x, y in loader:
                    model(x.to(device) if device is not None else x)
                    for s, n in zip(seconds, names):
                        s.update(feats[n], y)
    finally:
        model.train(was_training)
    return stats_head_metrics(stats, weights, bias, seconds=seconds, target=target, rtol=rtol,
                              global_mean=global_mean, **options)
