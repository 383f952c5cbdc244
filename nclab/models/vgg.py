"""VGG16 (configuration D) with optional batch norm, as a 512-d feature extractor."""

from __future__ import annotations

import torch
from torch import nn

# 13 convolutions (output channels), "M" = 2x2 max pooling
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
MIN_SIZE = 32  # five 2x2 poolings need H, W >= 32


class VGG16(nn.Module):
    """VGG16 backbone (Simonyan & Zisserman 2015): 13 3x3 convolutions, then global average pooling.

    The CIFAR variant: no 4096-wide fully connected layers; the deep linear head takes the 512 features.

    Parameters
    ----------
    in_channels : int, default 3
    batch_norm : bool, default True
        BatchNorm2d after every convolution (VGG16-BN).

    Shapes: input (B, in_channels, H, W) with H, W >= 32; output (B, 512) = ``out_features``.
    """

    def __init__(self, in_channels: int = 3, batch_norm: bool = True):
        super().__init__()
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"VGG16 in_channels must be a positive integer, got {in_channels!r}")
        layers: list[nn.Module] = []
        channels = in_channels
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            layers.append(nn.Conv2d(channels, v, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU(inplace=True))
            channels = v
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)  # any size >= 32, e.g. 64x64 inputs end at 2x2 before pooling
        self.in_channels, self.out_features = in_channels, 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] < MIN_SIZE or x.shape[-1] < MIN_SIZE:
            raise ValueError(f"VGG16 needs inputs of at least {MIN_SIZE}x{MIN_SIZE}, got {x.shape[-2]}x{x.shape[-1]}")
        return self.pool(self.layers(x)).flatten(1)  # (B, 512)
