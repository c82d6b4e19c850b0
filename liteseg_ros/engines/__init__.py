"""Inference engines: one ``create_engine`` for the node, the bag tool, the CLI and the benchmarks.

Ring 2: imports numpy and torch (runtimes lazily); never rclpy, message packages, or
``liteseg_ros.node`` / ``bag`` / ``image_codec``.

Backends: ``pytorch`` (CPU or CUDA, fp32 or fp16 autocast), ``onnxruntime`` (CPU fp32 or int8;
CUDA fp32 or fp16 with onnxruntime-gpu), ``openvino`` (CPU fp32, bf16 where the CPU has it, int8),
``tensorrt`` (CUDA, fp32/fp16, optional dependency, 10.x/11.x). ``auto`` picks and says why in
``engine.info.reason``. Where each job lives:

- ``selection``: the rules that turn what was asked into what to build (pure, unit-tested);
- ``model_weights``: what weights are (``ModelWeights``: kind, file, cache key, classes, normalisation,
  licence, the one lazy checkpoint loader); ``onnx_file``: the ONNX suffix test and metadata reader;
- ``factory``: ``create_engine`` (weights + request -> plan -> engine, through the backend table), the
  cached ONNX exports;
- ``base``: the ``Engine`` interface every backend implements (and its one input check);
- ``pytorch``, ``onnxruntime``, ``openvino``, ``tensorrt``: the backends;
- ``cache``: where exported, quantized and compiled files live and how they are keyed;
- ``export``: making ONNX files; ``cpu_tuning``, ``outputs``: helpers.

The offline tools that make int8 files and time engines (``liteseg_ros.tools``) sit above the pipeline.
"""
from __future__ import annotations

from .base import Engine, EngineError, EngineInfo, EngineOutput
from .factory import available_backends, build_tensorrt_engine, create_engine, load_module, onnx_for
from .model_weights import ModelLoadError, ModelWeights
from .selection import (
    BACKENDS,
    CPU_DEFAULT_BACKEND,
    DEFAULT_MIN_LABEL_AGREEMENT,
    PRECISIONS,
    cpu_path_ranking,
)

__all__ = ["BACKENDS", "CPU_DEFAULT_BACKEND", "DEFAULT_MIN_LABEL_AGREEMENT", "PRECISIONS", "Engine",
           "EngineError", "EngineInfo", "EngineOutput", "ModelLoadError", "ModelWeights", "available_backends",
           "build_tensorrt_engine", "cpu_path_ranking", "create_engine", "load_module", "onnx_for"]
