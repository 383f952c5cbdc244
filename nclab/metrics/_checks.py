"""Input validation at the public boundary: one clear ValueError, never a numpy traceback."""

from __future__ import annotations

import numpy as np
import torch

F64 = torch.float64


def as_tensor(x, name: str) -> torch.Tensor:
    """numpy array, list or tensor -> tensor (no copy when possible)."""
    if isinstance(x, torch.Tensor):
        return x
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise ValueError(f"{name} could not be read as an array: {exc}") from None
    if arr.dtype == object or arr.dtype.kind in "USV":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    return torch.from_numpy(np.ascontiguousarray(arr))


def check_features(features, dim: int | None = None) -> torch.Tensor:
    """Features (N, D), rows are samples, any real dtype; returned as given (not copied)."""
    x = as_tensor(features, "features")
    if x.ndim != 2:
        raise ValueError(f"features must have shape (N, D) (samples as rows), got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"features are empty: shape {tuple(x.shape)}")
    if x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"features must be real numbers, got dtype {x.dtype}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"features have dimension {x.shape[1]}, expected {dim}")
    return x


def check_labels(labels, n: int, num_classes: int | None, device) -> tuple[torch.Tensor, int]:
    """Labels (N,) of integers in [0, K) -> int64 tensor on `device`, and K (max label + 1 if not given)."""
    y = as_tensor(labels, "labels")
    if y.ndim != 1:
        y = y.reshape(-1) if y.ndim == 2 and 1 in y.shape else y
    if y.ndim != 1:
        raise ValueError(f"labels must have shape (N,), got shape {tuple(y.shape)}")
    if y.shape[0] != n:
        raise ValueError(f"labels have {y.shape[0]} entries but features have {n} rows")
    if y.dtype == torch.bool or y.is_complex():
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    if y.is_floating_point():
        if not torch.isfinite(y).all() or not (y == torch.round(y)).all():
            raise ValueError("labels must be integers (got non-integer values)")
    y = y.to(device=device, dtype=torch.int64)
    lo, hi = int(y.min()), int(y.max())
    if lo < 0:
        raise ValueError(f"labels must be non-negative, got {lo}")
    if num_classes is None:
        if hi + 1 > max(1 << 16, 16 * n):
            raise ValueError(f"largest label is {hi} for {n} samples: pass num_classes explicitly")
        num_classes = hi + 1
    num_classes = check_num_classes(num_classes)
    if hi >= num_classes:
        raise ValueError(f"labels must be in [0, {num_classes}) for num_classes={num_classes}, got {hi}")
    return y, num_classes


def check_num_classes(k) -> int:
    if isinstance(k, bool) or int(k) != k:
        raise ValueError(f"num_classes must be an integer, got {k!r}")
    if int(k) < 2:
        raise ValueError(f"need at least 2 classes, got num_classes={int(k)}")
    return int(k)


def check_matrix(w, name: str, cols: int | None = None, rows: int | None = None) -> np.ndarray:
    """A finite 2-D matrix as float64 numpy (small objects: classifier rows, Grams)."""
    if isinstance(w, torch.Tensor):
        w = w.detach().to("cpu", F64).numpy()
    try:
        w = np.asarray(w, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a numeric matrix") from None
    if w.ndim != 2:
        raise ValueError(f"{name} must be a matrix, got shape {w.shape}")
    if cols is not None and w.shape[1] != cols:
        raise ValueError(f"{name} has {w.shape[1]} columns, expected {cols} (shape {w.shape})")
    if rows is not None and w.shape[0] != rows:
        raise ValueError(f"{name} has {w.shape[0]} rows, expected {rows} (shape {w.shape})")
    if not np.isfinite(w).all():
        raise ValueError(f"{name} contains NaN or inf")
    return w


def check_vector(b, name: str, size: int) -> np.ndarray:
    if isinstance(b, torch.Tensor):
        b = b.detach().to("cpu", F64).numpy()
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if b.shape[0] != size:
        raise ValueError(f"{name} has {b.shape[0]} entries, expected {size}")
    if not np.isfinite(b).all():
        raise ValueError(f"{name} contains NaN or inf")
    return b
