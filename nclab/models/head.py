"""``DeepLinearHead``: M linear layers W_1..W_M after the backbone, the object of the deep linear UFM.

Notation (theory/problem.py): layer j maps d_j -> d_{j+1}; d_1 = in_features, d_{M+1} = K. Only the last
layer may carry a bias, so the input of layer j is exactly H_j = W_{j-1} ... W_1 h.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class DeepLinearHead(nn.Module):
    """M bias-free linear layers, the last one optionally with a bias.

    Parameters
    ----------
    in_features : int
        d_1, the feature dimension of the backbone (the head input h).
    depth : int
        M >= 1, the number of linear layers including the classifier.
    width : int or sequence of M-1 ints
        Hidden widths d_2..d_M (one int: all equal; ignored when depth = 1).
    num_classes : int
        K >= 2.
    bias : bool, default True
        Bias on the last layer (an unregularized bias in the paper).

    Attributes
    ----------
    linears : ModuleList of M ``nn.Linear``, W_1..W_M
    widths : tuple of M ints, (d_1, ..., d_M) as in ``nclab.theory.Problem.widths``
    bias : Parameter of shape (K,) or None
    """

    def __init__(self, in_features: int, depth: int, width: int | Sequence[int], num_classes: int, bias: bool = True):
        super().__init__()
        _check_int(in_features, "in_features", 1)
        _check_int(depth, "depth", 1)
        _check_int(num_classes, "num_classes", 2)
        hidden = [width] * (depth - 1) if isinstance(width, int) and not isinstance(width, bool) else list(width)
        if len(hidden) != depth - 1:
            raise ValueError(f"width must be an int or {depth - 1} hidden widths for depth {depth}, got {width!r}")
        for w in hidden:
            _check_int(w, "width", 1)
        dims = [in_features, *hidden, num_classes]  # d_1, ..., d_M, d_{M+1} = K
        self.linears = nn.ModuleList(
            nn.Linear(dims[j], dims[j + 1], bias=bias and j == depth - 1) for j in range(depth)
        )
        self.widths = tuple(dims[:-1])
        self.depth, self.num_classes = depth, num_classes

    @property
    def bias(self) -> nn.Parameter | None:
        return self.linears[-1].bias

    def weights(self) -> list[torch.Tensor]:
        """W_1..W_M, W_j of shape (d_{j+1}, d_j) (the parameters themselves, not copies)."""
        return [layer.weight for layer in self.linears]

    def partial_products(self) -> list[torch.Tensor]:
        """[W_M ... W_1, W_M ... W_2, ..., W_M]: entry j-1 has shape (K, d_j); entry 0 is the end-to-end map.

        Computed with autograd as usual; wrap in ``torch.no_grad()`` when only measuring.
        """
        products = [self.linears[-1].weight]
        for layer in reversed(self.linears[:-1]):
            products.append(products[-1] @ layer.weight)
        return products[::-1]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Logits of shape (B, K) from features h of shape (B, d_1)."""
        for layer in self.linears:
            h = layer(h)
        return h

    def forward_with_inputs(self, h: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits (B, K) and the input of every layer: [H_1 = h, H_2 = W_1 h, ..., H_M], H_j of shape (B, d_j)."""
        inputs = []
        for layer in self.linears:
            inputs.append(h)
            h = layer(h)
        return h, inputs


def _check_int(value, name: str, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"DeepLinearHead {name} must be an integer >= {low}, got {value!r}")
