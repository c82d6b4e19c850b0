"""The "deeper" atrous spatial pyramid pooling (DASPP) branches of LiteSeg.

Ring 1: imports torch only; never rclpy, message packages or anything outside ``liteseg_ros.model``.

LiteSeg's DASPP differs from DeepLab's ASPP: the rate-1 branch has no ReLU, each atrous branch has
no ReLU after its first BN but a second ("deeper") separable 3x3 conv, and the image-pooling branch
uses a plain 1x1 conv. The branches' outputs are concatenated with the backbone output itself (the
"long residual") by :class:`~liteseg_ros.model.liteseg.LiteSeg`, which owns the branches under the
official attribute names ``aspp1..4`` and ``global_avg_pool``.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .separable import SeparableConv2d

#: Dilation rates of ``aspp1..aspp4``; the same for every backbone.
DASPP_RATES: tuple[int, int, int, int] = (1, 3, 6, 9)
#: Output channels of every DASPP branch and of the fusion conv.
DASPP_CHANNELS = 96


class ASPPPointBranch(nn.Module):
    """Rate-1 branch (``aspp1``): separable 1x1 conv -> BN, deliberately without ReLU."""

    def __init__(self, in_channels: int, out_channels: int = DASPP_CHANNELS) -> None:
        super().__init__()
        self.atrous_convolution = SeparableConv2d(in_channels, out_channels, kernel_size=1)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.atrous_convolution(x))


class DeepASPPBranch(nn.Module):
    """Atrous branch (``aspp2..4``): dilated separable 3x3 -> BN -> separable 3x3 -> BN -> ReLU.

    Naming trap kept from the official checkpoints: ``conv1``/``bn1`` are the *second* (extra, undilated)
    conv and its BN; ``atrous_convolution``/``bn`` are the dilated first one. They are declared in the
    checkpoint's order (conv1, bn1, atrous_convolution, bn) so ``state_dict()`` order matches too.
    """

    def __init__(self, in_channels: int, rate: int, out_channels: int = DASPP_CHANNELS) -> None:
        super().__init__()
        self.conv1 = SeparableConv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.atrous_convolution = SeparableConv2d(
            in_channels, out_channels, kernel_size=3, padding=rate, dilation=rate
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.atrous_convolution(x))
        return self.relu(self.bn1(self.conv1(x)))


class ASPPPooling(nn.Sequential):
    """Image-pooling branch (``global_avg_pool``): GAP -> plain 1x1 conv -> BN -> ReLU -> resize back.

    Indices 1 (conv) and 2 (BN) are the checkpoint's. The resize of a 1x1 map with
    ``align_corners=True`` is a broadcast; it is written as ``interpolate`` to match the reference.
    """

    def __init__(self, in_channels: int, out_channels: int = DASPP_CHANNELS) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        for module in self:
            x = module(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)
