"""THE deep linear unconstrained-feature-model (UFM) objective: one definition for theory and trainer.

    f = L(W_M ... W_1 H + b 1^T) + sum_j lambda_j/2 ||W_j||_F^2 + lambda_H/2 ||H||_F^2

MSE: L = 1/(2N) ||Z - Y||_F^2 with Y one-hot (K x N). CE: L = mean over the N columns of the
cross-entropy of the logits Z. The bias b (K,) is not regularized. H is d x N (one column per sample),
W_j is d_{j+1} x d_j with d_{M+1} = K.

The torch function is the definition (autograd differentiates it for the trainer); the numpy
wrapper converts to float64 tensors and calls it, so closed forms are ranked by the same code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from nclab.theory.problem import MAX_INT, check_int

if TYPE_CHECKING:  # torch is imported where it is used: nclab predict starts without it
    import torch


def ufm_objective_torch(
    weights: Sequence[torch.Tensor],
    H: torch.Tensor,
    labels: torch.Tensor,
    lambda_w: Sequence[float] | float,
    lambda_h: float,
    bias: torch.Tensor | None = None,
    loss: str = "mse",
    num_classes: int | None = None,
    activation: str = "identity",
) -> torch.Tensor:
    """Objective of the deep linear UFM (a differentiable scalar tensor).

    ``activation="relu"`` gives the deep ReLU UFM (Sukenik et al.): H_{j+1} = ReLU(W_j H_j) for j < M, the last
    layer linear, the same data and decay terms; ``"identity"`` (the default) is the deep linear UFM.

    Parameters
    ----------
    weights : sequence of M tensors, W_1 of shape (d_2, d), ..., W_M of shape (K, d_M)
    H : tensor of shape (d, N), free features, one column per sample
    labels : integer tensor of shape (N,), values in [0, K)
    lambda_w : float or sequence of M floats, weight decay of each layer
    lambda_h : float, feature decay
    bias : tensor of shape (K,) or None, unregularized last-layer bias
    loss : "mse" (1/(2N) ||Z - Y||^2) or "ce" (mean cross-entropy)
    num_classes : K; defaults to the row count of W_M

    Shapes, dtypes and decays are checked (one ValueError/TypeError naming the argument); label values
    are checked on the CPU only (no device synchronization in a training loop).
    """
    import torch

    lam, K = _check_torch_args(weights, H, labels, lambda_w, lambda_h, bias, loss, num_classes)
    if activation not in ("identity", "relu"):
        raise ValueError(f"activation must be 'identity' or 'relu', got {activation!r}")
    relu = activation == "relu"
    Z = H
    for j, W in enumerate(weights):
        Z = W @ Z
        if relu and j < len(weights) - 1:
            Z = torch.relu(Z)
    if bias is not None:
        Z = Z + bias[:, None]
    N = H.shape[1]
    if loss == "mse":
        Y = torch.nn.functional.one_hot(labels, K).T.to(Z.dtype)
        data = 0.5 * ((Z - Y) ** 2).sum() / N
    else:
        data = torch.nn.functional.cross_entropy(Z.T, labels, reduction="mean")
    reg = sum(0.5 * l * (W**2).sum() for l, W in zip(lam, weights)) + 0.5 * float(lambda_h) * (H**2).sum()
    return data + reg


def _decay(value, name: str) -> float:
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError, RuntimeError):
        raise ValueError(f"{name} must be a number >= 0, got {value!r}") from None
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def _check_torch_args(weights, H, labels, lambda_w, lambda_h, bias, loss, num_classes):
    """Cheap checks of :func:`ufm_objective_torch`'s arguments; returns (lambdas, K)."""
    import torch

    if isinstance(weights, torch.Tensor) or not isinstance(weights, Sequence) or len(weights) == 0:
        raise ValueError("weights must be a non-empty sequence of 2-D tensors W_1..W_M")
    for j, W in enumerate(weights, 1):
        if not isinstance(W, torch.Tensor) or W.dim() != 2:
            raise ValueError(f"weights[{j - 1}] (W_{j}) must be a 2-D tensor, got {type(W).__name__}"
                             + (f" of shape {tuple(W.shape)}" if isinstance(W, torch.Tensor) else ""))
        if not (W.is_floating_point() or W.is_complex()):
            raise TypeError(f"weights[{j - 1}] must be a floating-point tensor, got {W.dtype}")
    for j in range(1, len(weights)):
        if weights[j].shape[1] != weights[j - 1].shape[0]:
            raise ValueError(
                f"W_{j + 1} has {weights[j].shape[1]} columns but W_{j} has {weights[j - 1].shape[0]} rows"
            )
    if not isinstance(H, torch.Tensor) or H.dim() != 2:
        raise ValueError(f"H must be a 2-D tensor (d x N), got {type(H).__name__}"
                         + (f" of shape {tuple(H.shape)}" if isinstance(H, torch.Tensor) else ""))
    if not H.is_floating_point():
        raise TypeError(f"H must be a floating-point tensor, got {H.dtype}")
    if H.shape[0] != weights[0].shape[1]:
        raise ValueError(f"H has {H.shape[0]} rows but W_1 has {weights[0].shape[1]} columns")
    K = weights[-1].shape[0]
    if num_classes is not None:
        num_classes = check_int(num_classes, "num_classes", 1)
        if num_classes != K:
            raise ValueError(f"num_classes = {num_classes} but W_M has {K} rows")
    N = H.shape[1]
    if N == 0:
        raise ValueError("H has no columns (N = 0 samples)")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.shape[0] != N:
        raise ValueError(f"labels must be a 1-D integer tensor of length N = {N}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
    if labels.device.type == "cpu":
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= K:
            raise ValueError(f"labels must lie in [0, K) = [0, {K}), got values in [{lo}, {hi}]")
    if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (K,)):
        raise ValueError(f"bias must be a tensor of shape ({K},) or None")
    if not isinstance(loss, str) or loss not in ("mse", "ce"):
        raise ValueError(f"loss must be 'mse' or 'ce', got {loss!r}")
    M = len(weights)
    if isinstance(lambda_w, torch.Tensor) and lambda_w.dim() == 0:
        lambda_w = float(lambda_w)
    if isinstance(lambda_w, (str, bytes)) or np.ndim(lambda_w) == 0:
        lam = [_decay(lambda_w, "lambda_w")] * M
    else:
        lam = [_decay(v, "lambda_w") for v in lambda_w]
    if len(lam) != M:
        raise ValueError(f"lambda_w has {len(lam)} values for {M} layers")
    _decay(lambda_h, "lambda_h")
    return lam, K


def ufm_objective(
    weights: Sequence[np.ndarray],
    H: np.ndarray,
    labels: np.ndarray,
    lambda_w: Sequence[float] | float,
    lambda_h: float,
    bias: np.ndarray | None = None,
    loss: str = "mse",
) -> float:
    """numpy float64 front end of :func:`ufm_objective_torch` (same arguments, arrays in)."""
    import torch


    def t(a, name):
        try:
            return torch.as_tensor(np.asarray(a, dtype=np.float64))
        except (TypeError, ValueError, OverflowError, RuntimeError):
            raise ValueError(f"{name} must be a numeric array") from None

    if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence) or len(weights) == 0:
        raise ValueError("weights must be a non-empty sequence of 2-D arrays W_1..W_M")
    val = ufm_objective_torch(
        [t(W, f"weights[{j}]") for j, W in enumerate(weights)],
        t(H, "H"),
        torch.as_tensor(_int_labels(labels)),
        lambda_w,
        lambda_h,
        None if bias is None else t(bias, "bias"),
        loss,
    )
    val = float(val)
    if not math.isfinite(val):
        raise ValueError(f"the objective is {val} (beyond float64): check the scale of the weights, H and lambdas")
    return val


def _int_labels(labels) -> np.ndarray:
    try:
        arr = np.asarray(labels)
        if arr.dtype.kind == "b" or arr.dtype.kind not in "iuf":
            raise TypeError
        if arr.dtype.kind == "f" and not (np.isfinite(arr).all() and np.all(np.abs(arr) < 2.0**62)):
            raise ValueError
        out = arr.astype(np.int64)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"labels must be integers, got {labels!r:.60}") from None
    if arr.dtype.kind == "f" and not np.array_equal(out, arr):
        raise ValueError("labels must be integers (class indices), got fractional or non-finite values")
    return out


def labels_from_counts(counts: Sequence[int]) -> np.ndarray:
    """Sample labels (N,) for class counts n_1..n_K, grouped by class: [0]*n_1 + [1]*n_2 + ..."""
    from nclab.theory.resources import check_memory

    if isinstance(counts, (str, bytes)) or np.ndim(counts) != 1:
        raise ValueError(f"counts must be a list of class sizes, got {counts!r:.60}")
    n = [check_int(c, "every class count", 0, MAX_INT) for c in counts]
    check_memory(8.0 * sum(n), f"labels for N = {sum(n):,} samples")
    return np.repeat(np.arange(len(n)), np.asarray(n, dtype=np.int64))
