"""Inference engines: one ``create_engine`` for the node, the bag tool, the CLI and the benchmarks.

Ring 2: imports numpy and torch (runtimes lazily); never rclpy, message packages, or
``liteseg_ros.node`` / ``bag`` / ``image_codec``.

Backends: ``pytorch`` (CPU or CUDA, fp32 or fp16 autocast), ``onnxruntime`` (CPU fp32; CUDA with
onnxruntime-gpu), ``tensorrt`` (CUDA, fp32/fp16, optional dependency). ``auto`` picks, and says why
in ``engine.info.reason``:

- device ``cuda[:N]``: TensorRT when it imports and its engine loads or builds, else PyTorch CUDA;
  if CUDA is missing, the CPU default below (fp16 then falls back to fp32, also in the reason).
- device ``cpu``: :data:`CPU_DEFAULT_BACKEND` (ONNX Runtime, measured faster than PyTorch on CPU by
  ``benchmarks/bench_engines.py``), or PyTorch when onnxruntime is not installed. fp16 requested on
  CPU falls back to fp32 under ``auto``; an explicit backend with fp16 on CPU is an EngineError.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .base import Engine, EngineError, EngineInfo, EngineOutput

BACKENDS = ("auto", "pytorch", "onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16")
#: The CPU backend ``auto`` chooses; see CPU_DEFAULT_WHY for the measurement behind it.
CPU_DEFAULT_BACKEND = "onnxruntime"
CPU_DEFAULT_WHY = ("ONNX Runtime with in-graph post-processing measured 2.3x faster than eager PyTorch fp32 "
                   "and 1.4x faster than PyTorch channels_last+folded BN at 360x640 "
                   "(benchmarks/bench_engines.py)")

__all__ = ["BACKENDS", "CPU_DEFAULT_BACKEND", "PRECISIONS", "Engine", "EngineError", "EngineInfo",
           "EngineOutput", "available_backends", "build_tensorrt_engine", "create_engine", "load_model"]


def available_backends() -> dict[str, str]:
    """Backend name -> 'ok' or why it cannot run here (for logs, diagnostics and ``liteseg bench``)."""
    from .tensorrt import tensorrt_status

    status = {"pytorch": "ok"}
    try:
        import onnxruntime  # noqa: F401

        status["onnxruntime"] = "ok"
    except ImportError as exc:
        status["onnxruntime"] = f"onnxruntime not installed ({exc.msg})"
    status["tensorrt"] = tensorrt_status()
    return status


def load_model(model_or_weights: Any):
    """An eval ``nn.Module`` from a module (returned as is) or a checkpoint path (``load_checkpoint``)."""
    from torch import nn

    if isinstance(model_or_weights, nn.Module):
        return model_or_weights.eval()
    path = Path(model_or_weights)
    if not path.is_file():
        raise EngineError(f"weights file not found: {path}")
    from liteseg_ros.model import load_checkpoint

    return load_checkpoint(path, map_location="cpu").eval()


def _state_hash(model) -> str:
    digest = hashlib.sha256(type(model).__name__.encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def onnx_for(model, input_size: tuple[int, int], cache_dir: str | os.PathLike | None, uint8: bool = True,
             log: Callable[[str], None] = print) -> Path:
    """Export ``model`` once per (weights, size, output types) into ``cache_dir/onnx`` and reuse it.

    Without a logits output: a graph output keeps the 19xHxW tensor alive and cost ~20% in ONNX
    Runtime (benchmarks/bench_engines.py); tools that need logits export with ``with_logits=True``
    and open the file with ``OnnxRuntimeEngine``, or use the pytorch backend.
    """
    from .export import export_onnx
    from .tensorrt import default_cache_dir

    h, w = (int(v) for v in input_size)
    base = Path(cache_dir) if cache_dir else default_cache_dir()
    path = base / "onnx" / f"liteseg_{_state_hash(model)}_{h}x{w}_{'u8' if uint8 else 'i32'}.onnx"
    if not path.is_file():
        log(f"engines: exporting ONNX {path.name}")
        export_onnx(model, path, (h, w), dynamic=False, with_logits=False, uint8=uint8)
    return path


def _check_args(backend: str, device: str, precision: str) -> str:
    from .pytorch import parse_device

    if backend not in BACKENDS:
        raise EngineError(f"backend {backend!r} is not one of: {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise EngineError(f"precision {precision!r} is not one of: {', '.join(PRECISIONS)}")
    return str(parse_device(device))


def create_engine(model_or_weights: Any, backend: str = "auto", device: str = "cpu",
                  precision: str = "fp32", input_size: tuple[int, int] = (360, 640),
                  num_threads: int | None = None, cache_dir: str | os.PathLike | None = None,
                  compile: bool = False, log: Callable[[str], None] = print, max_batch: int = 1,
                  rebuild: bool = False, warmup: bool = True) -> Engine:
    """Build the engine for ``backend`` on ``device`` at ``precision`` (see the module docstring).

    model_or_weights: an ``nn.Module`` returning logits, a checkpoint path, or an exported ``.onnx``
    file (onnxruntime/tensorrt only). input_size: the network (h, w) the pipeline feeds; used for
    export, TensorRT profiles and warm-up. num_threads: CPU intra-op threads (torch and ORT).
    cache_dir: exported ONNX files and TensorRT plans (default ``~/.cache/liteseg_ros/engines``).
    compile: ``torch.compile`` for the pytorch backend. max_batch: TensorRT profile maximum.
    rebuild: ignore a cached TensorRT plan. Logs the choice and its reason through ``log``.
    """
    dev = _check_args(backend, device, precision)
    if num_threads is not None:
        from .cpu_tuning import set_num_threads

        set_num_threads(num_threads)
    is_onnx = isinstance(model_or_weights, (str, os.PathLike)) and str(model_or_weights).endswith(".onnx")
    avail = available_backends()
    reason = ""
    if backend == "auto":
        backend, dev, precision, reason = _choose(dev, precision, avail, is_onnx)
    elif avail[backend] != "ok":
        raise EngineError(f"backend {backend!r} unavailable: {avail[backend]}")
    else:
        reason = f"backend {backend} requested"
    engine = _build(model_or_weights, is_onnx, backend, dev, precision, input_size, num_threads,
                    cache_dir, compile, log, max_batch, rebuild, reason, auto=reason.startswith("auto"))
    log(f"engines: using {engine.info.backend} on {engine.info.device} ({engine.info.precision}): "
        f"{engine.info.reason}")
    if warmup:
        engine.warmup(int(input_size[0]), int(input_size[1]))
    return engine


def _choose(dev: str, precision: str, avail: dict[str, str], is_onnx: bool) -> tuple[str, str, str, str]:
    """(backend, device, precision, reason) for ``backend: auto``."""
    import torch

    notes = []
    if dev.startswith("cuda"):
        if torch.cuda.is_available():
            if avail["tensorrt"] == "ok":
                return "tensorrt", dev, precision, "auto: TensorRT available on CUDA"
            if is_onnx:
                if "CUDAExecutionProvider" in _ort_providers():
                    return "onnxruntime", dev, precision, (f"auto: ONNX file given and TensorRT unavailable "
                                                      f"({avail['tensorrt']}); onnxruntime-gpu")
                raise EngineError(f"auto: an ONNX file on {dev} needs TensorRT ({avail['tensorrt']}) or "
                                  f"onnxruntime-gpu; give the checkpoint to use PyTorch CUDA")
            return "pytorch", dev, precision, f"auto: PyTorch CUDA (TensorRT unavailable: {avail['tensorrt']})"
        notes.append(f"device {dev} requested but CUDA is not available")
    if precision == "fp16":
        notes.append("fp16 is a GPU precision, using fp32 on CPU")
        precision = "fp32"
    if avail.get(CPU_DEFAULT_BACKEND) == "ok":
        backend, why = CPU_DEFAULT_BACKEND, CPU_DEFAULT_WHY
    elif is_onnx:
        raise EngineError(f"auto: an ONNX file on CPU needs onnxruntime ({avail['onnxruntime']})")
    else:
        backend, why = "pytorch", f"onnxruntime unavailable ({avail['onnxruntime']})"
    return backend, "cpu", precision, "auto: CPU default " + backend + ": " + "; ".join([*notes, why])


def _ort_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return ort.get_available_providers()


def _build(model_or_weights: Any, is_onnx: bool, backend: str, dev: str, precision: str,
           input_size: tuple[int, int], num_threads: int | None, cache_dir: Any, compile: bool,
           log: Callable[[str], None], max_batch: int, rebuild: bool, reason: str, auto: bool) -> Engine:
    if backend == "pytorch":
        if is_onnx:
            raise EngineError(f"backend pytorch needs weights (a checkpoint or a module), not an ONNX file: "
                              f"{model_or_weights}")
        from .pytorch import PyTorchEngine

        return PyTorchEngine(load_model(model_or_weights), dev, precision, compile=compile,
                             num_threads=num_threads, reason=reason, log=log)
    if backend == "onnxruntime":
        from .onnxruntime import OnnxRuntimeEngine

        path = Path(model_or_weights) if is_onnx else onnx_for(load_model(model_or_weights), input_size,
                                                                 cache_dir, True, log)
        return OnnxRuntimeEngine(path, dev, precision, num_threads, reason, log)
    from .tensorrt import TensorRTEngine

    model = None if is_onnx else load_model(model_or_weights)
    try:
        path = Path(model_or_weights) if is_onnx else onnx_for(model, input_size, cache_dir, False, log)
        return TensorRTEngine(path, input_size, dev, precision, max_batch, cache_dir, rebuild,
                              int(getattr(model, "num_classes", 0)), reason, log)
    except Exception as exc:  # noqa: BLE001 - auto must fall back, whatever TensorRT raised
        if not auto or model is None:
            raise
        log(f"engines: TensorRT failed ({exc}); falling back to PyTorch CUDA")
        from .pytorch import PyTorchEngine

        return PyTorchEngine(model, dev, precision, compile=compile, reason=f"auto: PyTorch CUDA "
                             f"(TensorRT failed: {str(exc)[:200]})", log=log)


def build_tensorrt_engine(model_or_weights: Any, input_size: tuple[int, int], precision: str = "fp16",
                          device: str = "cuda", max_batch: int = 1, cache_dir: str | os.PathLike | None = None,
                          rebuild: bool = False, log: Callable[[str], None] = print) -> Path:
    """Build (or find) the cached TensorRT plan and return its path without running it (``build_only``)."""
    from .pytorch import parse_device
    from .tensorrt import ensure_plan, tensorrt_status

    status = tensorrt_status()
    if status != "ok":
        raise EngineError(f"backend tensorrt unavailable: {status}")
    dev = parse_device(device)
    if dev.type != "cuda":
        raise EngineError(f"TensorRT engines are built on a CUDA device, got {device!r}")
    if precision not in PRECISIONS:
        raise EngineError(f"precision {precision!r} is not one of: {', '.join(PRECISIONS)}")
    is_onnx = str(model_or_weights).endswith(".onnx") and not hasattr(model_or_weights, "state_dict")
    path = Path(model_or_weights) if is_onnx else onnx_for(load_model(model_or_weights), input_size,
                                                             cache_dir, False, log)
    plan_path, _ = ensure_plan(path, input_size, precision, dev.index or 0, max_batch, cache_dir, rebuild, log)
    return plan_path
