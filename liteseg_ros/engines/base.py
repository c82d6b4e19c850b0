"""The one engine interface: a batch of normalised images in, labels and confidences out.

Ring 2: imports numpy (and torch lazily in implementations); never rclpy or message packages.
Every backend (PyTorch, ONNX Runtime, TensorRT, OpenVINO) implements ``Engine`` so the pipeline,
the node, the bag tool and the benchmarks never branch on the backend.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class EngineError(RuntimeError):
    """A backend that cannot be built or run; the message says which and why."""


@dataclass
class EngineOutput:
    """What an engine returns for a batch, at network resolution.

    label: (N, h, w) uint8 argmax class ids.
    confidence: (N, h, w) uint8 max softmax probability x 255, or None when not requested.
    logits: (N, C, h, w) float32, only when requested (tools, tests), else None.
    """

    label: np.ndarray
    confidence: np.ndarray | None = None
    logits: np.ndarray | None = None


@dataclass
class EngineInfo:
    """Published in diagnostics and ~/info: what runs, where, and why it was chosen."""

    backend: str
    device: str
    precision: str
    reason: str = ""
    extra: dict[str, str] = field(default_factory=dict)


class Engine(ABC):
    """Runs the network on a float32 NCHW batch normalised as the model expects.

    Implementations own warm-up, device placement and precision; ``infer`` must be thread-safe for
    one caller at a time (the node's worker thread) and must not keep references to its input.
    """

    info: EngineInfo
    num_classes: int
    #: The torch device of an engine that can also run on torch tensors already there
    #: (:meth:`infer_tensors`: PyTorch, TensorRT); None for the others. The pipeline then keeps the
    #: frame on that device from upload to the products (``pipeline_torch``).
    tensor_device: Any = None

    @abstractmethod
    def infer(self, batch: np.ndarray, want_confidence: bool = True,
              want_logits: bool = False) -> EngineOutput:
        """batch: (N, 3, h, w) float32, C-contiguous. Returns results for every image."""

    def infer_tensors(self, batch: Any, want_confidence: bool = True) -> tuple[Any, Any]:
        """batch: (N, 3, h, w) float32 torch tensor on ``tensor_device`` -> (label (N, h, w) uint8,
        confidence (N, h, w) uint8 or None) as tensors on that device, queued on its current stream
        (not synchronised). Only engines with a ``tensor_device`` implement it."""
        raise NotImplementedError(f"{type(self).__name__} does not run on torch tensors (tensor_device is None)")

    def warmup(self, height: int, width: int, batch: int = 1, runs: int = 2) -> None:
        """Run a few dummy batches so the first real frame does not pay for allocation/tuning."""
        x = np.zeros((batch, 3, height, width), np.float32)
        for _ in range(runs):
            self.infer(x)

    def close(self) -> None:
        """Free device memory (lifecycle deactivate/cleanup). Backends without device memory keep this."""
        return None
