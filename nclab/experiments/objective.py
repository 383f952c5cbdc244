"""The training objective of a real network with a deep linear head, scaled per sample.

With h_i the head input ("last-layer features") of sample i, z_i the logits and N the training-set size,

    f = (1/N) sum_i [ ell(z_i, y_i) + (N lambda_H / 2) ||h_i||^2 ] + sum_j lambda_j / 2 ||W_j||_F^2

is exactly the deep linear UFM objective (nclab.theory.objective) with H = [h_1 .. h_N]:
(1/N) sum_i (N lambda_H/2)||h_i||^2 = lambda_H/2 ||H||_F^2. ell is 1/2 ||z - e_y||^2 (MSE, summed over
the K outputs: 1/(2N) ||Z - Y||^2 in total) or the cross-entropy.

A batch B (of the global batch; a process holds a shard S of it) contributes

    loss_S = (P / |B|) sum_{i in S} [ ell_i + (N lambda_H / 2) ||h_i||^2 ] + sum_j lambda_j / 2 ||W_j||^2,

P processes: DistributedDataParallel averages the P gradients, giving the gradient of the batch mean.
Averaging the batch losses with weights |B| / N over an epoch's partition gives f exactly, so mini-batch
and full-batch runs optimize the same function (public code sums lambda_H/2 ||h||^2 over the batch,
which is lambda_H |B| / N of the UFM term, and nn.MSELoss also divides by K).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sample_losses(logits: torch.Tensor, labels: torch.Tensor, loss: str) -> torch.Tensor:
    """ell_i (B,): 1/2 ||z_i - e_{y_i}||^2 (MSE) or the cross-entropy, from logits (B, K), labels (B,)."""
    if loss == "mse":
        diff = logits - F.one_hot(labels, logits.shape[1]).to(logits.dtype)  # (B, K)
        return 0.5 * (diff * diff).sum(1)
    return F.cross_entropy(logits, labels, reduction="none")


def head_penalty(weights, lambda_w) -> torch.Tensor:
    """sum_j lambda_j / 2 ||W_j||_F^2 over the head weights W_1..W_M (the bias is not regularized)."""
    return sum(0.5 * lam * (w * w).sum() for lam, w in zip(lambda_w, weights) if lam)


def batch_loss(logits, features, labels, weights, *, loss: str, lambda_w, lambda_h: float, n_total: int,
               batch: int, world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss to differentiate for one shard, and sum_i ell_i over the shard (detached, for reporting).

    Parameters
    ----------
    logits : (S, K); features : (S, d_1) head inputs; labels : (S,); weights : [W_1..W_M]
    n_total : N, training samples; batch : |B|, size of the global batch; world : P, processes.
    """
    ell = sample_losses(logits, labels, loss)  # (S,)
    per = ell
    if lambda_h:
        per = ell + (0.5 * n_total * lambda_h) * (features * features).sum(1)
    out = per.sum() * (world / batch)
    pen = head_penalty(weights, lambda_w)
    if not isinstance(pen, int):
        out = out + pen
    return out, ell.detach().sum()
