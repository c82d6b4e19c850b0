"""PyTorch engine: eval + inference_mode, channels_last, folded BN, fp16 autocast on CUDA, optional compile.

Ring 2: imports torch and numpy; never rclpy, message packages, or the node/bag/codec modules.
Argmax and the softmax maximum run in torch (``outputs.segmentation_outputs``) on the device, so
only uint8 planes are copied to the host.
"""
from __future__ import annotations

import copy
import threading
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from .base import Engine, EngineError, EngineInfo, EngineOutput
from .outputs import MAX_UINT8_CLASSES, segmentation_outputs
from .selection import parse_device as selection_parse_device


def parse_device(device: str) -> torch.device:
    """``cpu`` | ``cuda`` | ``cuda:N`` -> torch.device; EngineError naming the allowed forms otherwise
    (the rule is ``selection.parse_device``'s)."""
    return torch.device(selection_parse_device(device))


def check_cuda(device: torch.device) -> None:
    """EngineError unless ``device`` is a CUDA device that exists on this machine."""
    if not torch.cuda.is_available():
        raise EngineError(f"device {str(device)!r} requested but CUDA is not available "
                          f"(torch {torch.__version__}, torch.version.cuda={torch.version.cuda}); use device: cpu")
    index = device.index or 0
    if index >= torch.cuda.device_count():
        raise EngineError(f"device {str(device)!r} requested but only {torch.cuda.device_count()} "
                          f"CUDA device(s) exist")


def use_ieee_fp32_convolutions() -> str:
    """Turn off TF32 for cuDNN convolutions (process-wide) and say which switch did it.

    PyTorch runs fp32 convolutions in TF32 (a 10-bit mantissa, as fp16) on Ampere and newer GPUs by
    default. ``precision: fp32`` promises fp32 labels (>= 99.9 % equal to the CPU's), so the fp32 CUDA
    engine asks for IEEE fp32; fp16 is the fast GPU precision.
    """
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):  # torch >= 2.9
        conv.fp32_precision = "ieee"
        return "off (cudnn.conv.fp32_precision=ieee)"
    torch.backends.cudnn.allow_tf32 = False
    return "off (cudnn.allow_tf32=False)"


def fold_bn_copy(model: nn.Module) -> tuple[nn.Module, str]:
    """A BN-folded eval copy of ``model`` (the caller's model is untouched) and a note for EngineInfo."""
    try:
        from liteseg_ros.model import fold_batchnorm
    except ImportError as exc:  # model library without folding: run unfolded, say so
        return model, f"not folded ({exc})"
    return fold_batchnorm(model.eval()), "folded"


class PyTorchEngine(Engine):
    """Runs a logits ``nn.Module`` (e.g. LiteSeg) with PyTorch.

    ``channels_last`` and ``fold_bn`` are on by default (1.8x on CPU, benchmarks/bench_engines.py); ``precision='fp16'``
    uses ``torch.autocast`` and needs CUDA; ``fp32`` on CUDA is IEEE fp32 (TF32 off, see
    :func:`use_ieee_fp32_convolutions`); ``compile=True`` wraps the forward in ``torch.compile``
    (first call slow). Post-processing stays on the device.
    """

    def __init__(self, model: nn.Module, device: str = "cpu", precision: str = "fp32",
                 channels_last: bool = True, fold_bn: bool = True, compile: bool = False,
                 num_threads: int | None = None, reason: str = "",
                 log: Callable[[str], None] = print) -> None:
        if precision not in ("fp32", "fp16"):
            raise EngineError(f"precision {precision!r} is not one of: fp32, fp16")
        dev = parse_device(device)
        if dev.type == "cuda":
            check_cuda(dev)
        elif precision == "fp16":
            raise EngineError("precision 'fp16' needs a CUDA device with the pytorch backend "
                              "(CPU fp16 is slower than fp32); use precision: fp32 on device: cpu")
        num_classes = int(getattr(model, "num_classes", 0))
        if num_classes > MAX_UINT8_CLASSES:
            raise EngineError(f"num_classes={num_classes} does not fit a uint8 label (max {MAX_UINT8_CLASSES})")
        if num_threads is not None and dev.type == "cpu":
            from .cpu_tuning import set_num_threads

            set_num_threads(num_threads)
        model = model.eval()
        extra: dict[str, str] = {}
        if fold_bn:
            model, extra["fold_bn"] = fold_bn_copy(model)
        else:
            model, extra["fold_bn"] = copy.deepcopy(model), "off"  # .to() below must not touch the caller's
        self._memory_format = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(dev, memory_format=self._memory_format)
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = model
        self.num_classes = num_classes
        self.device = dev
        self.precision = precision
        self._lock = threading.Lock()
        self._forward: Callable[[torch.Tensor], torch.Tensor] = model
        if compile:
            log("pytorch engine: torch.compile enabled; the first frames compile the graph (slow)")
            self._forward = torch.compile(model, dynamic=False)
        extra.update(channels_last=str(channels_last), compile=str(compile), torch=torch.__version__)
        if dev.type == "cpu":
            extra["threads"] = str(torch.get_num_threads())
        else:
            extra["gpu"] = torch.cuda.get_device_name(dev)
            if precision == "fp32":
                extra["tf32"] = use_ieee_fp32_convolutions()
        self.info = EngineInfo("pytorch", str(dev), precision, reason, extra)
        self.tensor_device = dev

    def logits(self, batch: np.ndarray) -> torch.Tensor:
        """Raw network logits for a numpy batch, on the engine's device (no post-processing)."""
        with torch.inference_mode():
            return self._logits(self._to_device(batch))

    def _to_device(self, batch: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(self.check_batch(batch))
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        return x.contiguous(memory_format=self._memory_format)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.precision == "fp16":
            with torch.autocast(device_type="cuda", dtype=torch.float16):
                return self._forward(x)
        return self._forward(x)

    def _infer(self, batch: np.ndarray, want_confidence: bool, want_logits: bool) -> EngineOutput:
        with self._lock, torch.inference_mode():
            x = self._to_device(batch)
            outs = segmentation_outputs(self._logits(x), want_confidence, want_logits)
            host = [t.cpu().numpy() for t in outs]  # .cpu() synchronises the stream
        label = host[0]
        confidence = host[1] if want_confidence else None
        logits = np.ascontiguousarray(host[-1]) if want_logits else None
        return EngineOutput(label, confidence, logits)

    def _infer_tensors(self, batch: torch.Tensor, want_confidence: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A device batch -> device uint8 label and confidence (see Engine.infer_tensors)."""
        with self._lock, torch.inference_mode():
            x = batch.to(self.device, torch.float32).contiguous(memory_format=self._memory_format)
            outs = segmentation_outputs(self._logits(x), want_confidence, False)
        return outs[0], (outs[1] if want_confidence else None)

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
        self._forward = None  # type: ignore[assignment]
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
