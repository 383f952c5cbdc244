"""``NCNet`` = backbone + deep linear head, and the ``build_model`` factory."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nclab.models.head import DeepLinearHead
from nclab.models.mlp import MLP
from nclab.models.resnet import ResNet18
from nclab.models.vgg import MIN_SIZE, VGG16

ARCHS = ("mlp", "resnet18", "vgg16")


class NCNet(nn.Module):
    """A feature extractor followed by a :class:`DeepLinearHead`.

    Parameters
    ----------
    backbone : Module mapping (B, ...) inputs to (B, d_1) features
    head : DeepLinearHead with ``in_features`` = d_1
    """

    def __init__(self, backbone: nn.Module, head: DeepLinearHead):
        super().__init__()
        self.backbone, self.head = backbone, head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The head input h ("last-layer features"), shape (B, d_1)."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (B, K)."""
        return self.head(self.backbone(x))

    def forward_with_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits (B, K) and the inputs H_1 = h, ..., H_M of the M head layers, H_j of shape (B, d_j)."""
        return self.head.forward_with_inputs(self.backbone(x))


def build_model(
    arch: str,
    in_shape: Sequence[int],
    num_classes: int,
    head_depth: int = 1,
    head_width: int = 512,
    bias: bool = True,
    *,
    mlp_depth: int = 6,
    mlp_width: int | None = None,
    batch_norm: bool = True,
) -> NCNet:
    """Build a backbone + deep linear head network.

    Parameters
    ----------
    arch : {"mlp", "resnet18", "vgg16"}
    in_shape : (C, H, W)
        Shape of one input image; vgg16 needs H, W >= 32.
    num_classes : int
        K >= 2.
    head_depth : int, default 1
        M, the number of linear layers in the head (the paper: 1, 3, 6, 9).
    head_width : int, default 512
        Width of the head's hidden layers (the paper: 512 for the convolutional nets, 512-2048 for the MLP).
    bias : bool, default True
        Bias on the head's last layer.
    mlp_depth : int, default 6
        Blocks of the MLP backbone (mlp only).
    mlp_width : int, optional
        Width of the MLP backbone (mlp only); default ``head_width``, as in the paper.
    batch_norm : bool, default True
        Batch norm in the MLP or VGG16 backbone (ResNet18 always has it).

    Returns
    -------
    model : NCNet mapping (B, C, H, W) inputs to (B, K) logits
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    shape = tuple(in_shape)
    if len(shape) != 3 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape):
        raise ValueError(f"in_shape must be three positive integers (C, H, W), got {in_shape!r}")
    C, H, W = shape
    if arch == "mlp":
        backbone = MLP(C * H * W, head_width if mlp_width is None else mlp_width, mlp_depth, batch_norm)
    elif arch == "resnet18":
        backbone = ResNet18(C)
    else:
        if H < MIN_SIZE or W < MIN_SIZE:
            raise ValueError(f"vgg16 needs inputs of at least {MIN_SIZE}x{MIN_SIZE}, got {H}x{W} (resize with size=32)")
        backbone = VGG16(C, batch_norm)
    head = DeepLinearHead(backbone.out_features, head_depth, head_width, num_classes, bias)
    return NCNet(backbone, head)
