"""LiteSeg encoders: MobileNetV2, ShuffleNet v1 (g=8) and DarkNet19, each returning (low, high) maps.

Ring 1: imports torch and torchvision only; never rclpy, message packages or anything outside
``liteseg_ros.model``.

Every encoder exposes ``low_channels``/``low_stride`` (the short-residual tap) and
``high_channels``/``high_stride`` (the DASPP input). None of them carries an ImageNet classifier:
the official checkpoints' unused classifiers are dropped on load (see ``checkpoint.py``).
Layer layouts, paddings and parameter names follow the official checkpoints, including their quirks
(documented where they occur); they are reimplemented from the architecture description.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import mobilenet_v2


class MobileNetV2Encoder(nn.Module):
    """torchvision's MobileNetV2 ``features`` (width 1.0, no dilation): output stride 32.

    ``features[:4]`` (stem, the t=1 block and both 24-channel blocks) give the stride-4 low-level map;
    ``features[4:]`` continue to the 1280-channel 1x1 expansion at stride 32. The official checkpoints
    store the same tensors under the ericsun99 flat key layout; ``keymap.py`` converts losslessly.
    """

    low_channels = 24
    low_stride = 4
    high_channels = 1280
    high_stride = 32
    #: index of the last block of the low-level tap in ``features``
    low_tap = 3

    def __init__(self) -> None:
        super().__init__()
        self.features = mobilenet_v2(weights=None).features

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        low = x
        for i, block in enumerate(self.features):
            x = block(x)
            if i == self.low_tap:
                low = x
        return low, x


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """ShuffleNet's channel shuffle: (N, g*k, H, W) -> view (N, g, k, H, W) -> transpose -> flatten."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class _GroupedConv1x1(nn.Sequential):
    """Grouped 1x1 conv (with bias) -> BN [-> ReLU], named like the checkpoints."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, relu: bool) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            conv1x1=nn.Conv2d(in_channels, out_channels, 1, groups=groups, bias=True),
            batch_norm=nn.BatchNorm2d(out_channels),
        )
        if relu:
            layers["relu"] = nn.ReLU(inplace=True)
        super().__init__(layers)


class ShuffleUnit(nn.Module):
    """ShuffleNet v1 unit: grouped 1x1 -> shuffle -> depthwise 3x3 -> grouped 1x1, combined with the input.

    ``combine="add"``: stride 1, residual sum. ``combine="concat"``: stride 2, the input is
    average-pooled (3x3, s2, p1) and concatenated, so the conv branch produces ``out - in`` channels.
    The bottleneck width is a quarter of the unit's nominal output width. All convs have a bias and
    the output passes a (functional) ReLU. The first unit of stage 2 uses an ungrouped first 1x1 conv (its input has
    only 24 channels) but still shuffles with ``groups``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, groups: int, grouped_first: bool, combine: str
    ) -> None:
        super().__init__()
        if combine not in ("add", "concat"):
            raise ValueError(f"combine must be 'add' or 'concat', got {combine!r}")
        self.groups = groups
        self.combine = combine
        bottleneck = out_channels // 4
        stride = 2 if combine == "concat" else 1
        branch_out = out_channels - in_channels if combine == "concat" else out_channels
        self.g_conv_1x1_compress = _GroupedConv1x1(
            in_channels, bottleneck, groups if grouped_first else 1, relu=True
        )
        self.depthwise_conv3x3 = nn.Conv2d(
            bottleneck, bottleneck, 3, stride=stride, padding=1, groups=bottleneck, bias=True
        )
        self.bn_after_depthwise = nn.BatchNorm2d(bottleneck)
        self.g_conv_1x1_expand = _GroupedConv1x1(bottleneck, branch_out, groups, relu=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.g_conv_1x1_compress(x)
        out = channel_shuffle(out, self.groups)
        out = self.bn_after_depthwise(self.depthwise_conv3x3(out))
        out = self.g_conv_1x1_expand(out)
        if self.combine == "add":
            out = out + x
        else:
            pooled = F.avg_pool2d(x, kernel_size=3, stride=2, padding=1)
            out = torch.cat((pooled, out), 1)
        # functional, as in the official unit: the official op counter (hooks on modules) skips it
        return F.relu(out)


class ShuffleNetV1Encoder(nn.Module):
    """ShuffleNet v1 with 8 groups (stage widths 24/384/768/1536): output stride 32.

    Quirks of the official backbone, kept: ``conv1`` is a 3x3/s2 conv **with bias and no BN or ReLU**,
    followed by a 3x3/s2 max-pool; stage 4 is an ordinary stride-2 stage (the official code passes a
    dilation that never reaches the units). The low-level tap is the stage-2 output (stride 8, 384 ch).
    """

    low_channels = 384
    low_stride = 8
    high_channels = 1536
    high_stride = 32
    groups = 8
    stage_channels = (24, 384, 768, 1536)
    #: units per stage after the first (stride-2, concat) unit
    stage_repeats = (3, 7, 3)

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, self.stage_channels[0], 3, stride=2, padding=1, bias=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.stage2 = self._make_stage(2)
        self.stage3 = self._make_stage(3)
        self.stage4 = self._make_stage(4)

    def _make_stage(self, stage: int) -> nn.Sequential:
        in_ch, out_ch = self.stage_channels[stage - 2], self.stage_channels[stage - 1]
        units: OrderedDict[str, nn.Module] = OrderedDict()
        units[f"ShuffleUnit_Stage{stage}_0"] = ShuffleUnit(
            in_ch, out_ch, self.groups, grouped_first=stage > 2, combine="concat"
        )
        for i in range(1, self.stage_repeats[stage - 2] + 1):
            units[f"ShuffleUnit_Stage{stage}_{i}"] = ShuffleUnit(
                out_ch, out_ch, self.groups, grouped_first=True, combine="add"
            )
        return nn.Sequential(units)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.maxpool(self.conv1(x))
        low = self.stage2(x)
        return low, self.stage4(self.stage3(low))


class ConvBatchLeaky(nn.Module):
    """DarkNet conv -> BN -> LeakyReLU(0.1), held in ``layers`` (indices 0, 1, 2) like the checkpoints.

    Conv without bias; BN momentum 0.01 as in the lightnet layer the official code builds on.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, padding: int, dilation: int = 1
    ) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size, 1, padding, dilation, bias=False),
            nn.BatchNorm2d(out_channels, momentum=0.01),
            nn.LeakyReLU(0.1, inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


# (layer number, in, out, kernel, padding, dilation); kernel 0 marks a max-pool (kernel, stride in/out).
# Quirks kept from the official backbone: layers 14, 16 and 20 are 1x1 convs with padding=1 (each grows
# the map by 2 px), the dilation-2 3x3 convs 19, 21, 23 use padding=1 (each shrinks it by 2 px), and
# layer 18 is MaxPool2d(1, 1), an identity.
_DARKNET19_LAYERS: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 32, 3, 1, 1), (2, 2, 2, 0, 0, 0),
    (3, 32, 64, 3, 1, 1), (4, 2, 2, 0, 0, 0),
    (5, 64, 128, 3, 1, 1), (6, 128, 64, 1, 0, 1), (7, 64, 128, 3, 1, 1), (8, 2, 2, 0, 0, 0),
    (9, 128, 256, 3, 1, 1), (10, 256, 128, 1, 0, 1), (11, 128, 256, 3, 1, 1), (12, 2, 2, 0, 0, 0),
    (13, 256, 512, 3, 1, 1), (14, 512, 256, 1, 1, 1), (15, 256, 512, 3, 1, 1),
    (16, 512, 256, 1, 1, 1), (17, 256, 512, 3, 1, 1), (18, 1, 1, 0, 0, 0),
    (19, 512, 1024, 3, 1, 2), (20, 1024, 512, 1, 1, 2), (21, 512, 1024, 3, 1, 2),
    (22, 1024, 512, 1, 0, 2), (23, 512, 1024, 3, 1, 2),
)


class DarkNet19Encoder(nn.Module):
    """DarkNet19 without its classifier, last five layers dilated by 2: output stride 16.

    Layers live in ``layers`` as ``{N}_convbatch`` / ``{N}_max``. The low-level tap is
    ``7_convbatch`` (stride 4, 128 ch); the high output is ``23_convbatch`` (1024 ch). The max-pools
    floor odd sizes while the decoder upsamples to the ceiling, so H and W must be multiples of 4
    (:class:`~liteseg_ros.model.liteseg.LiteSeg` checks this).
    """

    low_channels = 128
    low_stride = 4
    high_channels = 1024
    high_stride = 16
    low_tap = "7_convbatch"

    def __init__(self) -> None:
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for n, a, b, k, p, d in _DARKNET19_LAYERS:
            if k == 0:
                layers[f"{n}_max"] = nn.MaxPool2d(a, b)
            else:
                layers[f"{n}_convbatch"] = ConvBatchLeaky(a, b, k, p, d)
        self.layers = nn.Sequential(layers)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        low = x
        for name, layer in self.layers.named_children():
            x = layer(x)
            if name == self.low_tap:
                low = x
        return low, x
