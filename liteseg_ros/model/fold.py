"""Exact inference-time simplification: fold every BatchNorm into its conv and 1x1 depthwise scales away.

Ring 1: imports torch only; never rclpy, message packages or anything outside ``liteseg_ros.model``.

:func:`fold_batchnorm` returns an eval-only copy whose logits equal the original's up to float
rounding: each conv (or separable conv's pointwise part) absorbs the BN that follows it, and the
per-channel scale of every kernel-1 depthwise conv is multiplied into the pointwise weight. The folded
copy has no BatchNorm left, so it must not be trained.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from .backbones import ShuffleUnit
from .daspp import ASPPPointBranch, DeepASPPBranch
from .liteseg import LiteSeg
from .separable import SeparableConv2d

# (conv attribute, BN attribute) pairs of modules whose forward calls them by name.
_NAMED_PAIRS: dict[type, tuple[tuple[str, str], ...]] = {
    ASPPPointBranch: (("atrous_convolution", "bn"),),
    DeepASPPBranch: (("atrous_convolution", "bn"), ("conv1", "bn1")),
    LiteSeg: (("conv1", "bn1"), ("conv2", "bn2")),
    ShuffleUnit: (("depthwise_conv3x3", "bn_after_depthwise"),),
}


def _fold_into(conv: nn.Module, bn: nn.BatchNorm2d) -> None:
    """Fold ``bn`` into ``conv`` (a Conv2d, or a SeparableConv2d's pointwise conv) in place."""
    target = conv.pointwise if isinstance(conv, SeparableConv2d) else conv
    assert isinstance(target, nn.Conv2d)
    weight, bias = fuse_conv_bn_weights(
        target.weight, target.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )
    target.weight = weight
    target.bias = bias


def _foldable(conv: nn.Module | None, bn: nn.Module | None) -> bool:
    return isinstance(conv, (nn.Conv2d, SeparableConv2d)) and type(bn) is nn.BatchNorm2d


def _fold_depthwise_scale(sep: SeparableConv2d) -> None:
    """Multiply a kernel-1, stride-1 depthwise scale into the pointwise weight; drop the depthwise conv."""
    dw = sep.conv1
    if not isinstance(dw, nn.Conv2d) or dw.kernel_size != (1, 1) or dw.stride != (1, 1) or dw.padding != (0, 0):
        return
    scale = dw.weight.reshape(1, -1, 1, 1)  # [1, C_in, 1, 1]
    sep.pointwise.weight = nn.Parameter(sep.pointwise.weight * scale)
    sep.conv1 = nn.Identity()


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-only copy of ``model`` with BatchNorms folded into convs and 1x1 depthwise scales removed.

    Works on :class:`LiteSeg` (all three backbones). ``model`` itself is not modified. The copy keeps
    ``model.meta`` if present and has ``folded = True``.
    """
    folded = copy.deepcopy(model).eval()
    for module in list(folded.modules()):
        for conv_name, bn_name in _NAMED_PAIRS.get(type(module), ()):
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if _foldable(conv, bn):
                _fold_into(conv, bn)
                setattr(module, bn_name, nn.Identity())
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for a, b in zip(names, names[1:], strict=False):
                conv, bn = module._modules[a], module._modules[b]
                if _foldable(conv, bn):
                    _fold_into(conv, bn)
                    module._modules[b] = nn.Identity()
    for module in list(folded.modules()):
        if isinstance(module, SeparableConv2d):
            _fold_depthwise_scale(module)
    left = [n for n, m in folded.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if left:
        raise RuntimeError(f"fold_batchnorm left BatchNorm layers it could not fold: {left[:5]}")
    for p in folded.parameters():
        p.requires_grad_(False)
    folded.folded = True
    return folded
