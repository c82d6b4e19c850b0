"""The one engine interface: a batch of normalised images in, labels and confidences out.

Ring 2: imports numpy (and torch lazily in implementations); never rclpy or message packages.
Every backend (PyTorch, ONNX Runtime, TensorRT, OpenVINO) implements ``Engine`` so the pipeline,
the node, the bag tool and the benchmarks never branch on the backend.
"""
from __future__ import annotations

from abc import ABC
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

    ``infer`` is the same for every backend: it checks the batch (:meth:`check_batch`) and then calls
    the backend's :meth:`_infer`, so a wrong batch gets the same clear error whatever runs it, and a
    backend only says what it can take (:attr:`input_hw`, :attr:`max_batch`, :attr:`has_logits`).
    """

    info: EngineInfo
    num_classes: int
    #: The torch device of an engine that can also run on torch tensors already there
    #: (:meth:`infer_tensors`: PyTorch, TensorRT); None for the others. The pipeline then keeps the
    #: frame on that device from upload to the products (``pipeline_torch``).
    tensor_device: Any = None
    #: (height, width) the engine's file fixes, None for a free axis (a dynamic export, PyTorch).
    input_hw: tuple[int | None, int | None] = (None, None)
    #: The largest batch the engine takes (TensorRT's profile), None for any.
    max_batch: int | None = None
    #: Whether ``want_logits`` can be honoured (an ONNX export without a logits output cannot).
    has_logits: bool = True
    #: What fixed the input size, for the error message ("<file> was exported", "TensorRT engine built").
    shape_origin: str = "this engine was built"

    def infer(self, batch: np.ndarray, want_confidence: bool = True,
              want_logits: bool = False) -> EngineOutput:
        """batch: (N, 3, h, w) float32 (other float types are converted). Returns results for every image."""
        x = self.check_batch(batch)
        if want_logits and not self.has_logits:
            raise EngineError(f"{self.shape_origin} without logits (export with_logits=True)")
        return self._infer(x, want_confidence, want_logits)

    def _infer(self, batch: np.ndarray, want_confidence: bool, want_logits: bool) -> EngineOutput:
        """Run a checked, C-contiguous float32 (N, 3, h, w) batch (see :meth:`infer`): what every backend
        implements. (Not abstract only so that a test double may override ``infer`` itself.)"""
        raise NotImplementedError(f"{type(self).__name__} implements neither _infer nor infer")

    def check_batch(self, batch: Any) -> np.ndarray:
        """``batch`` as a C-contiguous float32 (N, 3, h, w) array, or an EngineError saying what is wrong."""
        shape = getattr(batch, "shape", None)
        if not isinstance(batch, np.ndarray) or batch.ndim != 4 or batch.shape[1] != 3:
            raise EngineError(f"infer() needs a (N, 3, h, w) float32 numpy batch, got "
                              f"{shape if shape is not None else type(batch).__name__}")
        self.check_shape(tuple(batch.shape))
        return np.ascontiguousarray(batch, dtype=np.float32)

    def check_shape(self, shape: tuple[int, ...]) -> None:
        """EngineError unless an (N, 3, h, w) ``shape`` fits :attr:`input_hw` and :attr:`max_batch`."""
        n, _, h, w = shape
        fixed_h, fixed_w = self.input_hw
        size_ok = (fixed_h is None or h == fixed_h) and (fixed_w is None or w == fixed_w)
        batch_ok = self.max_batch is None or 1 <= n <= self.max_batch
        if size_ok and batch_ok:
            return
        want = f"{'?' if fixed_h is None else fixed_h}x{'?' if fixed_w is None else fixed_w}"
        if self.max_batch is not None:
            raise EngineError(f"{self.shape_origin} for batch 1..{self.max_batch} at {want}; got batch {n} at "
                              f"{h}x{w}")
        raise EngineError(f"{self.shape_origin} for {want} input; got {h}x{w} (export with dynamic=True or "
                          f"resize to the network size)")

    def infer_tensors(self, batch: Any, want_confidence: bool = True) -> tuple[Any, Any]:
        """batch: (N, 3, h, w) float32 torch tensor on ``tensor_device`` -> (label (N, h, w) uint8,
        confidence (N, h, w) uint8 or None) as tensors on that device, queued on its current stream
        (not synchronised). Only engines with a ``tensor_device`` implement :meth:`_infer_tensors`."""
        if self.tensor_device is None:
            raise NotImplementedError(f"{type(self).__name__} does not run on torch tensors (tensor_device is None)")
        shape = tuple(getattr(batch, "shape", ()))
        is_tensor = type(batch).__module__.split(".")[0] == "torch"  # without importing torch here
        if not is_tensor or len(shape) != 4 or shape[1] != 3:
            raise EngineError(f"infer_tensors() needs a (N, 3, h, w) float32 tensor, got {shape or batch!r}")
        self.check_shape(shape)
        return self._infer_tensors(batch, want_confidence)

    def _infer_tensors(self, batch: Any, want_confidence: bool) -> tuple[Any, Any]:
        raise NotImplementedError(f"{type(self).__name__} does not run on torch tensors")

    def warmup(self, height: int, width: int, batch: int = 1, runs: int = 2) -> None:
        """Run a few dummy batches so the first real frame does not pay for allocation/tuning.

        A model that loads but cannot run (a damaged or foreign ONNX file) fails here, before any frame:
        an EngineError naming the file, whatever the runtime raised, so every tool reports it in one line.
        """
        x = np.zeros((batch, 3, height, width), np.float32)
        try:
            for _ in range(runs):
                self.infer(x)
        except EngineError:
            raise
        except Exception as exc:
            what = self.info.extra.get("file") or f"the {self.info.backend} engine"
            first = (str(exc).strip().splitlines() or [""])[0]
            raise EngineError(f"{what} loads but fails on a dummy {height}x{width} batch at warm-up "
                              f"({type(exc).__name__}: {first}); it is not a usable LiteSeg model") from None

    def close(self) -> None:
        """Free device memory (lifecycle deactivate/cleanup). Backends without device memory keep this."""
        return None
