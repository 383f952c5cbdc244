"""THE deep linear unconstrained-feature-model (UFM) objective: one definition for theory and trainer.

    f = L(W_M ... W_1 H + b 1^T) + sum_j lambda_j/2 ||W_j||_F^2 + lambda_H/2 ||H||_F^2

MSE: L = 1/(2N) ||Z - Y||_F^2 with Y one-hot (K x N). CE: L = mean over the N columns of the
cross-entropy of the logits Z. The bias b (K,) is not regularized. H is d x N (one column per sample),
W_j is d_{j+1} x d_j with d_{M+1} = K.

The torch function is the definition (autograd differentiates it for the trainer); the numpy
wrapper converts to float64 tensors and calls it, so closed forms are ranked by the same code.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
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
) -> torch.Tensor:
    """Objective of the deep linear UFM (a differentiable scalar tensor).

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
    """
    M = len(weights)
    lam = [float(lambda_w)] * M if np.ndim(lambda_w) == 0 else [float(v) for v in lambda_w]
    if len(lam) != M:
        raise ValueError(f"lambda_w has {len(lam)} values for {M} layers")
    Z = H
    for W in weights:
        Z = W @ Z
    if bias is not None:
        Z = Z + bias[:, None]
    K = num_classes if num_classes is not None else weights[-1].shape[0]
    N = H.shape[1]
    if loss == "mse":
        Y = torch.nn.functional.one_hot(labels, K).T.to(Z.dtype)
        data = 0.5 * ((Z - Y) ** 2).sum() / N
    elif loss == "ce":
        data = torch.nn.functional.cross_entropy(Z.T, labels, reduction="mean")
    else:
        raise ValueError(f"loss must be 'mse' or 'ce', got {loss!r}")
    reg = sum(0.5 * l * (W**2).sum() for l, W in zip(lam, weights)) + 0.5 * lambda_h * (H**2).sum()
    return data + reg


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
    t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64))  # noqa: E731
    val = ufm_objective_torch(
        [t(W) for W in weights],
        t(H),
        torch.as_tensor(np.asarray(labels, dtype=np.int64)),
        lambda_w,
        lambda_h,
        None if bias is None else t(bias),
        loss,
    )
    return float(val)


def labels_from_counts(counts: Sequence[int]) -> np.ndarray:
    """Sample labels (N,) for class counts n_1..n_K, grouped by class: [0]*n_1 + [1]*n_2 + ..."""
    return np.repeat(np.arange(len(counts)), np.asarray(counts, dtype=np.int64))
