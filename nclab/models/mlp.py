"""The paper's MLP backbone: ``depth`` blocks of Linear -> BatchNorm -> ReLU on flattened inputs."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """Fully connected feature extractor.

    Parameters
    ----------
    in_features : int
        Input size after flattening, e.g. 3 * 32 * 32 for CIFAR-10.
    width : int
        Width of every hidden layer, and the feature dimension ``out_features``.
    depth : int, default 6
        Number of Linear(+BatchNorm)+ReLU blocks (the paper: 6).
    batch_norm : bool, default True
        BatchNorm1d between each Linear and its ReLU (training mode needs batches of > 1 sample).

    Shapes: input (B, ...) with prod(...) = in_features; output (B, width).
    """

    def __init__(self, in_features: int, width: int, depth: int = 6, batch_norm: bool = True):
        super().__init__()
        for value, name in ((in_features, "in_features"), (width, "width"), (depth, "depth")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"MLP {name} must be a positive integer, got {value!r}")
        layers: list[nn.Module] = []
        for j in range(depth):
            # a bias before batch norm is cancelled by its mean subtraction (zero gradient), so drop it
            layers.append(nn.Linear(in_features if j == 0 else width, width, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(nn.ReLU(inplace=True))
        self.layers = nn.Sequential(*layers)
        self.in_features, self.out_features = in_features, width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.flatten(1))
