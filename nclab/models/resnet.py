"""ResNet18 with the CIFAR stem (3x3 stride-1 convolution, no max pooling), as a 512-d feature extractor."""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a residual connection (1x1 projection when shapes change)."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet18 backbone (He et al. 2016) with the CIFAR stem, ending in global average pooling.

    Parameters
    ----------
    in_channels : int, default 3

    Shapes: input (B, in_channels, H, W), any H, W >= 1 (the stages downsample by 8 in all);
    output (B, 512) = ``out_features``.
    """

    def __init__(self, in_channels: int = 3):
        super().__init__()
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"ResNet18 in_channels must be a positive integer, got {in_channels!r}")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)
        )
        stages, channels = [], 64
        for out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):  # two blocks per stage
            stages.append(nn.Sequential(BasicBlock(channels, out, stride), BasicBlock(out, out, 1)))
            channels = out
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.in_channels, self.out_features = in_channels, 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stages(self.stem(x))).flatten(1)  # (B, 512)
