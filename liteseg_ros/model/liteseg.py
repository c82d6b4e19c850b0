"""The LiteSeg network: encoder -> DASPP + long residual -> fusion -> short residual -> head.

Ring 1: imports torch and torchvision only; never rclpy, message packages or anything outside
``liteseg_ros.model``.

Module names follow the official checkpoints (``aspp1..4``, ``global_avg_pool``, ``conv1``/``bn1``
fusion, ``conv2``/``bn2`` low-level reduction, ``last_conv`` head) so that ``state_dict()`` matches
the official layout apart from the two documented backbone renames in ``keymap.py``.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import DarkNet19Encoder, MobileNetV2Encoder, ShuffleNetV1Encoder
from .daspp import DASPP_CHANNELS, DASPP_RATES, ASPPPointBranch, ASPPPooling, DeepASPPBranch
from .separable import SeparableConv2d


@dataclass(frozen=True)
class BackboneSpec:
    """What LiteSeg needs to know about one encoder choice."""

    name: str
    #: attribute name of the encoder inside LiteSeg (the official checkpoints' prefix)
    attr: str
    factory: Callable[[], nn.Module]
    #: channels of the low-level 1x1 reduction (``conv2``), or 0 for none (MobileNetV2)
    low_reduction: int
    #: H and W must be multiples of this (1: any size)
    size_multiple: int = 1


#: The supported encoders, by the name used in configs, checkpoints and the CLI.
BACKBONES: dict[str, BackboneSpec] = {
    "mobilenetv2": BackboneSpec("mobilenetv2", "mobile_features", MobileNetV2Encoder, 0),
    "shufflenet": BackboneSpec("shufflenet", "shuffle_features", ShuffleNetV1Encoder, 48),
    "darknet19": BackboneSpec("darknet19", "resnet_features", DarkNet19Encoder, 32, size_multiple=4),
}


def backbone_spec(name: str) -> BackboneSpec:
    """The spec of backbone ``name``; raises ValueError listing the valid names."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)}") from None


class LiteSegHead(nn.Sequential):
    """Decoder head (``last_conv``): two separable 3x3 conv -> BN -> ReLU, then a 1x1 classifier with bias."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = DASPP_CHANNELS) -> None:
        super().__init__(
            SeparableConv2d(in_channels, channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            SeparableConv2d(channels, channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, num_classes, 1, bias=True),
        )


def _upsample(x: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class LiteSeg(nn.Module):
    """LiteSeg (Emara et al., DICTA 2019) with a MobileNetV2, ShuffleNet v1 (g=8) or DarkNet19 encoder.

    Input: (N, 3, H, W) RGB in [0, 1] normalised with ImageNet mean/std. Output: raw logits
    (N, num_classes, H, W), no softmax. MobileNetV2 and ShuffleNet accept any H, W; DarkNet19 needs
    multiples of 4 (ValueError otherwise). All resizes are bilinear with ``align_corners=True`` to
    sizes computed from the input size.
    """

    def __init__(self, backbone: str = "mobilenetv2", num_classes: int = 19) -> None:
        super().__init__()
        spec = backbone_spec(backbone)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.backbone = spec.name
        self.num_classes = num_classes
        self._encoder_attr = spec.attr
        self._size_multiple = spec.size_multiple
        encoder = spec.factory()
        setattr(self, spec.attr, encoder)
        self.low_stride: int = encoder.low_stride
        c_hi = encoder.high_channels

        # DASPP: four separable branches + image pooling, concatenated with the encoder output.
        self.aspp1 = ASPPPointBranch(c_hi)
        self.aspp2 = DeepASPPBranch(c_hi, DASPP_RATES[1])
        self.aspp3 = DeepASPPBranch(c_hi, DASPP_RATES[2])
        self.aspp4 = DeepASPPBranch(c_hi, DASPP_RATES[3])
        self.global_avg_pool = ASPPPooling(c_hi)
        # Fusion of [x, b1..b5] down to 96 channels.
        self.conv1 = SeparableConv2d(c_hi + 5 * DASPP_CHANNELS, DASPP_CHANNELS, kernel_size=1)
        self.bn1 = nn.BatchNorm2d(DASPP_CHANNELS)
        self.relu = nn.ReLU(inplace=True)
        # Short residual: low-level features, reduced for ShuffleNet/DarkNet, raw for MobileNetV2.
        low_out = encoder.low_channels
        if spec.low_reduction:
            self.conv2 = SeparableConv2d(encoder.low_channels, spec.low_reduction, kernel_size=1)
            self.bn2 = nn.BatchNorm2d(spec.low_reduction)
            self.relu2 = nn.ReLU(inplace=True)
            low_out = spec.low_reduction
        self.last_conv = LiteSegHead(DASPP_CHANNELS + low_out, num_classes)
        #: CheckpointMeta (classes, normalisation, provenance); set by load_checkpoint, None when built bare
        self.meta: Any = None

    @property
    def encoder(self) -> nn.Module:
        """The backbone module (registered under its official attribute name)."""
        return getattr(self, self._encoder_attr)

    def check_input_size(self, height: int, width: int) -> None:
        """Raise ValueError if this backbone cannot run at (height, width)."""
        m = self._size_multiple
        if height % m or width % m:
            raise ValueError(
                f"LiteSeg-{self.backbone} needs input height and width divisible by {m} "
                f"(its max-pools floor odd sizes while the decoder upsamples to the ceiling); "
                f"got {height}x{width}. Resize or pad to e.g. "
                f"{math.ceil(height / m) * m}x{math.ceil(width / m) * m}."
            )

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(low-level map, encoder output, fused DASPP map), for inspection and tests."""
        low, high = self.encoder(x)
        branches = [high, self.aspp1(high), self.aspp2(high), self.aspp3(high), self.aspp4(high),
                    self.global_avg_pool(high)]
        fused = self.relu(self.bn1(self.conv1(torch.cat(branches, 1))))
        return low, high, fused

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2], x.shape[-1]  # kept symbolic (no int()) so traced exports stay size-generic
        if self._size_multiple > 1:
            self.check_input_size(int(h), int(w))
        low, _, y = self.forward_features(x)
        s = self.low_stride
        y = _upsample(y, ((h + s - 1) // s, (w + s - 1) // s))  # ceil(h / s), ceil(w / s)
        if hasattr(self, "conv2"):
            low = self.relu2(self.bn2(self.conv2(low)))
        y = self.last_conv(torch.cat((y, low), 1))
        return _upsample(y, (h, w))

    def extra_repr(self) -> str:
        return f"backbone={self.backbone!r}, num_classes={self.num_classes}"
