"""Load a saved dump for `nclab measure`: .npz or .pt with features, labels and (optionally) the head.

Keys: H or features (N, D); y or labels (N,); optional W (K, D), or W1, W2, ... / a list `weights`
(deep head, W_j (d_{j+1}, d_j); in .npz also a stacked (M, d, d) array); optional b or bias (K,).
Optional setting of the run that produced it (written by ``nclab measure RUN_DIR --export``, read by
``nclab measure`` to choose the theory's target): lambda_w (M,), lambda_h, loss ("mse"/"ce"), counts (K,)
(the class counts the prediction is for, default: counted from the labels).

Every problem with the file (missing, truncated, not a dump, a foreign pickle, sparse tensors, keys of the
wrong kind) is one ValueError that names the file (FileNotFoundError when it does not exist).
"""

from __future__ import annotations

import os
import re

import numpy as np
import torch

SETTING_KEYS = ("lambda_w", "lambda_h", "loss", "counts")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read(path: str) -> dict:
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder, not a dump file (.npz or .pt)")
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".npz", ".pt", ".pth"):
        raise ValueError(f"{path}: unsupported dump format {ext!r}: use .npz or .pt")
    try:
        if os.path.getsize(path) == 0:
            raise ValueError("the file is empty")
        if ext == ".npz":
            z = np.load(path, allow_pickle=False)  # an ndarray for a .npy renamed .npz (not a context manager)
            if not hasattr(z, "files"):
                raise ValueError("a single .npy array, not an .npz archive of named arrays")
            with z:
                return {k: z[k] for k in z.files}
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise ValueError(f"cannot read {path}: not enough memory") from None
    except Exception as exc:  # truncated zip, foreign pickle, random bytes, ...: one line naming the file
        raise ValueError(f"cannot read {path}: {_first_line(exc)}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict of tensors (keys H, y, ...), got {type(obj).__name__}")
    return obj


def _pick(d: dict, names, what: str, path: str, required=True):
    for n in names:
        if n in d:
            return d[n]
    if required:
        found = sorted(str(k) for k in d)
        raise ValueError(f"{path}: no {what} (expected key {' or '.join(map(repr, names))}; found "
                         f"{found[:20]}{' ...' if len(found) > 20 else ''})")
    return None


def _array(v, key: str, path: str):
    """A dense array or tensor (lists of numbers accepted); ValueError naming the file otherwise."""
    if isinstance(v, torch.Tensor):
        if v.layout != torch.strided:
            raise ValueError(f"{path}: {key} is a sparse tensor ({v.layout}); save it dense ({key}.to_dense())")
        return v.detach()
    if isinstance(v, np.ndarray):
        if v.dtype == object or v.dtype.kind not in "biuf":
            raise ValueError(f"{path}: {key} must be numbers, got dtype {v.dtype}")
        return v
    if isinstance(v, (list, tuple)) and v and all(isinstance(t, (int, float)) and not isinstance(t, bool)
                                                  for t in v):
        return np.asarray(v)
    raise ValueError(f"{path}: {key} must be an array or tensor, got {type(v).__name__}")


def load_dump(path) -> dict:
    """{"features": (N, D), "labels": (N,), "weights": [W_1..W_M] or None, "bias": (K,) or None,
    "setting": {lambda_w, lambda_h, loss, counts} (those present)}."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path, got {type(path).__name__}")
    path = os.fspath(path)
    d = _read(path)
    d = {str(k): v for k, v in d.items()}
    out = {"features": _array(_pick(d, ("H", "features"), "features", path), "features", path),
           "labels": _array(_pick(d, ("y", "labels"), "labels", path), "labels", path)}
    b = _pick(d, ("b", "bias"), "bias", path, required=False)
    out["bias"] = None if b is None else _array(b, "bias", path)
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
    if ws is not None:
        if not ws:
            raise ValueError(f"{path}: the weights list is empty")
        ws = [_array(w, f"W{j + 1}", path) for j, w in enumerate(ws)]
    out["weights"] = ws
    out["setting"] = _setting(d, path)
    return out


def _setting(d: dict, path: str) -> dict:
    out = {}
    try:
        if "lambda_w" in d:
            out["lambda_w"] = [float(v) for v in np.asarray(d["lambda_w"], dtype=np.float64).reshape(-1)]
        if "lambda_h" in d:
            out["lambda_h"] = float(np.asarray(d["lambda_h"], dtype=np.float64).reshape(-1)[0])
        if "loss" in d:
            out["loss"] = str(np.asarray(d["loss"]).reshape(-1)[0])
        if "counts" in d:
            c = np.asarray(d["counts"])
            if c.dtype.kind == "f" and not (np.isfinite(c).all() and (c == np.round(c)).all()
                                            and (np.abs(c) < 2.0 ** 62).all()):
                raise ValueError(f"counts must be whole numbers, got {c.reshape(-1)[:8].tolist()}")
            out["counts"] = [int(v) for v in np.asarray(c, dtype=np.int64).reshape(-1)]
    except (TypeError, ValueError, IndexError, OverflowError) as exc:
        raise ValueError(f"{path}: unreadable setting ({', '.join(k for k in SETTING_KEYS if k in d)}): "
                         f"{_first_line(exc)}") from None
    return out
