"""Depthwise-separable convolution, the building block of the LiteSeg head.

Ring 1: imports torch only; never rclpy, message packages or anything outside ``liteseg_ros.model``.
"""
from __future__ import annotations

from torch import Tensor, nn


class SeparableConv2d(nn.Module):
    """A depthwise conv (``conv1``) followed by a pointwise 1x1 conv (``pointwise``), both without bias.

    There is no normalisation or activation between the two. With ``kernel_size=1`` the depthwise part
    is a learned per-channel scale (weight ``[C, 1, 1, 1]``) which :func:`fold_batchnorm` folds away.
    The attribute names are those of the official checkpoints.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_channels, in_channels, kernel_size, stride, padding, dilation,
            groups=in_channels, bias=False,
        )
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.conv1(x))
