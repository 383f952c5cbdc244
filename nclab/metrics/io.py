"""Load a saved dump for `nclab measure`: .npz or .pt with features, labels and (optionally) the head.

Keys: H or features (N, D); y or labels (N,); optional W (K, D), or W1, W2, ... / a list `weights`
(deep head, W_j (d_{j+1}, d_j); in .npz also a stacked (M, d, d) array); optional b or bias (K,).
"""

from __future__ import annotations

import os
import re

import numpy as np
import torch


def _read(path: str) -> dict:
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        if ext in (".pt", ".pth"):
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(obj, dict):
                raise ValueError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
            return obj
    except (OSError, ValueError, RuntimeError, EOFError) as exc:
        raise ValueError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    raise ValueError(f"unsupported dump format {ext!r}: use .npz or .pt")


def _pick(d: dict, names, what: str, path: str, required=True):
    for n in names:
        if n in d:
            return d[n]
    if required:
        raise ValueError(f"{path}: no {what} (expected key {' or '.join(map(repr, names))}; found {sorted(d)})")
    return None


def load_dump(path: str) -> dict:
    """{"features": (N, D), "labels": (N,), "weights": [W_1..W_M] or None, "bias": (K,) or None}."""
    d = _read(str(path))
    out = {"features": _pick(d, ("H", "features"), "features", path),
           "labels": _pick(d, ("y", "labels"), "labels", path),
           "bias": _pick(d, ("b", "bias"), "bias", path, required=False)}
    ws = None
    if "W" in d:
        ws = [d["W"]]
    elif "weights" in d:
        w = d["weights"]
        ws = list(w) if isinstance(w, (list, tuple)) or getattr(w, "ndim", 0) == 3 else [w]
    else:
        keys = sorted((int(m.group(1)), k) for k in d if (m := re.fullmatch(r"W_?(\d+)", k)))
        if keys:
            if [i for i, _ in keys] != list(range(keys[0][0], keys[0][0] + len(keys))):
                raise ValueError(f"{path}: deep-head weights must be numbered consecutively, got "
                                 f"{[k for _, k in keys]}")
            ws = [d[k] for _, k in keys]
    out["weights"] = ws
    return out
