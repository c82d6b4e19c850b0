"""In-graph post-processing: logits -> (label uint8, confidence uint8[, logits]) inside the network.

Ring 2: imports torch only; never rclpy, message packages, or the node/bag/codec modules.

Doing argmax and the softmax maximum inside the exported graph means ONNX Runtime / TensorRT /
PyTorch do it in their optimised kernels and only two uint8 planes leave the engine: the
19x360x640 float logits never cross into numpy (an argmax there costs 5-40 ms on a CPU).

The confidence uses the cheapest exact formulation of the largest softmax probability::

    max_c softmax(z)_c = exp(z_max - z_max) / sum_c exp(z_c - z_max) = 1 / sum_c exp(z_c - z_max)

so no full softmax tensor is normalised; the result is ``round(255 / sum)`` cast to uint8. It is
computed in float32 even when the network runs in fp16. The max, argmax and sum are written over
the class planes with element-wise ops (``method='planes'``), because the channel-axis reductions
are the slow part in ONNX Runtime (see ``_planes``).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

#: Largest class count a uint8 label can carry (0..255; 255 is also IGNORE_LABEL downstream).
MAX_UINT8_CLASSES = 256


def segmentation_outputs(logits: Tensor, want_confidence: bool = True, want_logits: bool = False,
                         uint8: bool = True, method: str = "auto") -> tuple[Tensor, ...]:
    """(label, [confidence], [logits]) from (N, C, H, W) logits; see the module docstring.

    ``uint8=False`` keeps the label as int32 and the confidence as float32 in [0, 255] (already
    rounded) for runtimes without uint8 casts (TensorRT); the values are the same.
    ``method``: ``planes`` works on the C class planes with element-wise ops (fastest in ONNX Runtime
    and in torch for NCHW-contiguous logits, ~1.7x over the reductions at 19x360x640); ``reduce``
    uses ``torch.max(dim=1)`` and a channel sum (better for channels_last logits); ``auto`` picks
    ``planes`` for contiguous logits. Both give identical labels (first index on ties).
    """
    z = logits.float()
    if method == "auto":
        method = "planes" if z.is_contiguous() else "reduce"
    if method == "planes":
        label, denom = _planes(z, want_confidence, torch.uint8 if uint8 else torch.int32)
    elif method == "reduce":
        zmax, label = torch.max(z, dim=1)  # one reduction: value and first index of the max
        label = label.to(torch.uint8 if uint8 else torch.int32)
        denom = torch.exp(z - zmax.unsqueeze(1)).sum(dim=1) if want_confidence else None
    else:
        raise ValueError(f"method must be auto, planes or reduce, got {method!r}")
    outs: list[Tensor] = [label]
    if want_confidence:
        conf = torch.round(255.0 / denom)  # denom >= 1: the exact softmax denominator
        outs.append(conf.to(torch.uint8) if uint8 else conf)
    if want_logits:
        outs.append(z)
    return tuple(outs)


def _planes(z: Tensor, want_denom: bool, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
    """Label and softmax denominator from the class planes, with element-wise ops only.

    ArgMax/ReduceMax over the channel axis are strided reductions that ONNX Runtime's CPU kernels
    run slowly; a running maximum over the C contiguous (N, H, W) planes, a descending ``where``
    scan (so the lowest index wins ties) and a running sum of ``exp(z_c - max)`` stream memory.
    """
    planes = z.unbind(1)
    zmax = planes[0]
    for p in planes[1:]:
        zmax = torch.maximum(zmax, p)
    label = torch.zeros(zmax.shape, dtype=dtype, device=z.device)
    for c in range(len(planes) - 1, 0, -1):
        label = torch.where(planes[c] == zmax, torch.tensor(c, dtype=dtype, device=z.device), label)
    if not want_denom:
        return label, None
    denom = torch.exp(planes[0] - zmax)
    for p in planes[1:]:
        denom = denom + torch.exp(p - zmax)
    return label, denom


class SegmentationOutputs(nn.Module):
    """Wraps a logits network so its forward returns (label, confidence[, logits]).

    This is the module that is exported to ONNX and run by the PyTorch engine. ``label`` is
    (N, H, W) uint8 argmax (first index on ties, as ``torch.argmax`` and ONNX ``ArgMax``);
    ``confidence`` is (N, H, W) uint8 ``round(255 * max softmax)``; ``logits`` (N, C, H, W) float32
    only with ``with_logits=True``. ``method``: see :func:`segmentation_outputs`.
    """

    def __init__(self, model: nn.Module, with_confidence: bool = True, with_logits: bool = False,
                 uint8: bool = True, method: str = "auto") -> None:
        super().__init__()
        num_classes = getattr(model, "num_classes", None)
        if uint8 and num_classes is not None and int(num_classes) > MAX_UINT8_CLASSES:
            raise ValueError(f"a uint8 label holds at most {MAX_UINT8_CLASSES} classes; "
                             f"the model has num_classes={num_classes}")
        self.model = model
        self.with_confidence = with_confidence
        self.with_logits = with_logits
        self.uint8 = uint8
        self.method = method

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return segmentation_outputs(self.model(x), self.with_confidence, self.with_logits, self.uint8,
                                    self.method)

    def output_names(self) -> list[str]:
        """Names of the forward outputs, in order (used as ONNX output names)."""
        names = ["label"]
        if self.with_confidence:
            names.append("confidence")
        if self.with_logits:
            names.append("logits")
        return names
