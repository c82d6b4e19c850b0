"""Parameter and operation counts of LiteSeg models, in plain MACs and in the official paper's convention.

Ring 1: imports torch only; never rclpy, message packages or anything outside ``liteseg_ros.model``.

Counts come from forward hooks during one forward pass on the ``meta`` device (shapes only, no
arithmetic), so even DarkNet19 at 1024x2048 is counted in well under a second.

Conventions (per forward call of a module, batch included):

``"conv"`` (plain MACs)
    k_h*k_w*C_in/groups*C_out multiply-accumulates per output pixel of every ``Conv2d``; bias,
    normalisation, activations and resizes count nothing.
``"official"`` (``utils/flops_counter.py`` of the official repo, labelled "GMac" there, "GFLOPS" in the paper)
    ``Conv2d``: (2*k_h*k_w - 1)*C_in/groups*C_out per output pixel, plus C_out per output pixel for a
    bias; ``BatchNorm2d``: 2 per output element; ``ReLU``/``ReLU6``/``LeakyReLU`` modules: 1 per
    element; ``MaxPool2d``: the input's element count; ``Linear``: in*out (+ out for a bias); functional
    ops (``F.relu``, ``F.avg_pool2d``), ``interpolate`` and adaptive pooling: nothing. This reproduces the
    published 4.896 G (MobileNetV2), 103.088 G (DarkNet19) and 2.573 G (ShuffleNet; the paper prints 2.75)
    at 1x3x512x1024.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .liteseg import BACKBONES, LiteSeg, backbone_spec

CONVENTIONS = ("conv", "official")

#: Parameters of the ImageNet classifiers that official checkpoints carry but LiteSeg never uses:
#: MobileNetV2 Linear(1280 -> 1000), ShuffleNet Linear(1536 -> 1000). Counted in the paper's totals.
UNUSED_OFFICIAL_PARAMS: dict[str, int] = {
    "mobilenetv2": 1280 * 1000 + 1000,
    "shufflenet": 1536 * 1000 + 1000,
    "darknet19": 0,
}

#: How LiteSeg's top-level modules group into the parts of the network (for breakdowns).
_PARTS: dict[str, str] = {
    "aspp1": "daspp", "aspp2": "daspp", "aspp3": "daspp", "aspp4": "daspp", "global_avg_pool": "daspp",
    "conv1": "fusion", "bn1": "fusion", "relu": "fusion",
    "conv2": "low_reduction", "bn2": "low_reduction", "relu2": "low_reduction",
    "last_conv": "head",
}


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters in ``model`` (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _conv_macs(m: nn.Conv2d, out: Tensor, official: bool) -> int:
    k = m.kernel_size[0] * m.kernel_size[1]
    per_pixel = (2 * k - 1 if official else k) * (m.in_channels // m.groups) * m.out_channels
    positions = out.numel() // m.out_channels
    total = per_pixel * positions
    if official and m.bias is not None:
        total += out.numel()
    return total


def _op_count(module: nn.Module, inputs: tuple, out: Tensor, convention: str) -> int:
    official = convention == "official"
    if isinstance(module, nn.Conv2d):
        return _conv_macs(module, out, official)
    if not official:
        return 0
    if isinstance(module, nn.BatchNorm2d):
        return 2 * out.numel()
    if isinstance(module, (nn.ReLU, nn.ReLU6, nn.LeakyReLU)):
        return out.numel()
    if isinstance(module, nn.MaxPool2d):
        return inputs[0].numel()
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features * (out.numel() // module.out_features) + (
            out.numel() if module.bias is not None else 0
        )
    return 0


def _meta_copy(model: nn.Module) -> nn.Module:
    """A shape-only copy of ``model`` on the meta device (a fresh build for LiteSeg: no weight copy)."""
    if type(model) is LiteSeg and not getattr(model, "folded", False):
        with torch.device("meta"):
            return LiteSeg(model.backbone, model.num_classes).eval()
    return copy.deepcopy(model).to("meta").eval()


@dataclass
class OpCount:
    """Operation counts of one forward pass, in total and per network part (backbone/daspp/...)."""

    convention: str
    total: int
    parts: dict[str, int] = field(default_factory=dict)


def _count(model: nn.Module, x: Tensor, conventions: tuple[str, ...]) -> dict[str, OpCount]:
    counts = {c: OpCount(c, 0) for c in conventions}
    handles = []

    def make_hook(part: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple, out: Tensor) -> None:
            for c, oc in counts.items():
                n = _op_count(module, inputs, out, c)
                oc.total += n
                oc.parts[part] = oc.parts.get(part, 0) + n
        return hook

    encoder_attr = BACKBONES[model.backbone].attr if isinstance(model, LiteSeg) else None
    for name, module in model.named_modules():
        if next(module.children(), None) is not None:
            continue  # leaves only: a container's hook would double count
        top = name.split(".", 1)[0]
        part = "backbone" if top == encoder_attr else _PARTS.get(top, top or "model")
        handles.append(module.register_forward_hook(make_hook(part)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return counts


def count_macs(
    model: nn.Module, height: int, width: int, convention: str = "conv", batch: int = 1
) -> int:
    """Operations of one forward pass at ``batch x 3 x height x width`` (see the module docstring).

    ``convention``: ``"conv"`` (plain conv MACs) or ``"official"`` (the paper's counter). Runs on a
    meta-device copy, so ``model`` is untouched and no arithmetic is done.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; valid: {', '.join(CONVENTIONS)}")
    meta = _meta_copy(model)
    x = torch.empty(batch, 3, height, width, device="meta")
    return _count(meta, x, (convention,))[convention].total


def describe(backbone: str, height: int, width: int, num_classes: int = 19) -> dict:
    """Size and cost of LiteSeg-``backbone`` at ``height x width`` (batch 1), as plain data for ``liteseg info``.

    Keys: backbone, input [H, W], num_classes, params_used, params_unused_official,
    params_total_official, params_by_part, macs_conv, macs_conv_by_part, macs_official,
    macs_official_by_part, shapes (low, high, fused, logits as [C, H, W]), output_stride,
    low_stride. Raises ValueError for an unknown backbone or a size the backbone cannot run.
    """
    spec = backbone_spec(backbone)
    if height < 1 or width < 1:
        raise ValueError(f"input size must be positive, got {height}x{width}")
    with torch.device("meta"):
        model = LiteSeg(spec.name, num_classes).eval()
    model.check_input_size(height, width)
    x = torch.empty(1, 3, height, width, device="meta")
    with torch.no_grad():
        low, high, fused = model.forward_features(x)
    counts = _count(model, x, CONVENTIONS)
    params_by_part: dict[str, int] = {}
    for name, p in model.named_parameters():
        top = name.split(".", 1)[0]
        part = "backbone" if top == spec.attr else _PARTS.get(top, top)
        params_by_part[part] = params_by_part.get(part, 0) + p.numel()
    used = count_parameters(model)
    return {
        "backbone": spec.name,
        "input": [height, width],
        "num_classes": num_classes,
        "params_used": used,
        "params_unused_official": UNUSED_OFFICIAL_PARAMS[spec.name],
        "params_total_official": used + UNUSED_OFFICIAL_PARAMS[spec.name],
        "params_by_part": params_by_part,
        "macs_conv": counts["conv"].total,
        "macs_conv_by_part": counts["conv"].parts,
        "macs_official": counts["official"].total,
        "macs_official_by_part": counts["official"].parts,
        "shapes": {
            "low": list(low.shape[1:]),
            "high": list(high.shape[1:]),
            "fused": list(fused.shape[1:]),
            "logits": [num_classes, height, width],
        },
        "output_stride": model.encoder.high_stride,
        "low_stride": model.low_stride,
    }
