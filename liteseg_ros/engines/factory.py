"""Building engines: ``create_engine`` turns a request into a plan (``selection``) and the plan into an engine.

Ring 2: imports numpy (torch and the runtimes lazily, when the plan needs them); never rclpy, message
packages, or the node/bag/codec modules. Three steps, each with one job:

1. the request: the caller's arguments plus :class:`MachineFacts`, which asks the machine and the
   engine cache only what the planner asks (importing openvino costs ~0.9 s, torch more: a warm CPU
   start pays for neither unless the plan uses them);
2. the plan: ``selection.plan_engine``, pure;
3. the build: the plan's choices in order. The CPU choice builds each candidate whose label
   agreement is not known in advance, measures it (cached) and takes the first that meets the floor;
   TensorRT under ``auto`` falls back to PyTorch CUDA if it fails.

Cached files (``cache.py``) are found by the checkpoint file's hash when the weights are a path, so
a warm CPU start needs neither torch nor the checkpoint; a module is keyed by its state.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from liteseg_ros.defaults import NETWORK_SIZE, format_size

from .base import Engine, EngineError
from .selection import (
    DEFAULT_MIN_LABEL_AGREEMENT,
    Choice,
    EnginePlan,
    EngineRequest,
    parse_device,
    plan_engine,
)


def backend_status(name: str) -> str:
    """'ok' or why ``name`` cannot run here (imports that runtime to find out)."""
    if name == "pytorch":
        return "ok"
    if name == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            return f"onnxruntime not installed ({exc.msg})"
        return "ok"
    if name == "openvino":
        from .openvino import openvino_status

        return openvino_status()
    from .tensorrt import tensorrt_status

    return tensorrt_status()


def available_backends() -> dict[str, str]:
    """Backend name -> 'ok' or why it cannot run here (for logs, diagnostics and ``liteseg bench``)."""
    return {name: backend_status(name) for name in ("pytorch", "onnxruntime", "openvino", "tensorrt")}


def load_module(model_or_weights: Any):
    """An eval ``nn.Module`` from a module (returned as is) or a checkpoint file (``load_checkpoint``).

    The engines need the module alone; ``runtime.load_model`` is the node's loader, which also
    returns the class table, the normalisation and where the weights came from.
    """
    from torch import nn

    if isinstance(model_or_weights, nn.Module):
        return model_or_weights.eval()
    path = Path(model_or_weights)
    if not path.is_file():
        raise EngineError(f"weights file not found: {path}")
    from liteseg_ros.model import load_checkpoint

    return load_checkpoint(path, map_location="cpu").eval()


def onnx_for(model, input_size: tuple[int, int], cache_dir: str | os.PathLike | None, uint8: bool = True,
             log: Callable[[str], None] = print, precision: str = "fp32", key: str | None = None) -> Path:
    """Export ``model`` once per (weights, size, output types, precision) into ``cache_dir/onnx`` and reuse it.

    ``precision='fp16'`` is the fp16 graph that TensorRT and ONNX Runtime CUDA run (export.Fp16Network).

    ``model``: a module, or a zero-argument callable returning one, called only when the file must
    be exported; ``key``: the model key (``cache.model_key``; default: the module's state key).
    A warm cache therefore costs no torch import when the key comes from the checkpoint file.
    Without a logits output: a graph output keeps the 19xHxW tensor alive and cost ~20% in ONNX
    Runtime (benchmarks/bench_engines.py); tools that need logits export with ``with_logits=True``
    and open the file with ``OnnxRuntimeEngine``, or use the pytorch backend.
    """
    from .cache import cached_file_ok, onnx_cache_path, state_key, write_record

    get = model if callable(model) and not hasattr(model, "state_dict") else (lambda: model)
    key = key or state_key(get())
    path = onnx_cache_path(key, input_size, cache_dir, uint8, precision)
    if cached_file_ok(path, key, log):
        return path
    from .export import export_onnx

    log(f"engines: no cached ONNX file for these weights at {format_size(input_size)}; "
        f"exporting {path.name} (cold start; later starts reuse it)")
    export_onnx(get(), path, tuple(int(v) for v in input_size), dynamic=False, with_logits=False, uint8=uint8,
                precision=precision)
    write_record(path, key)
    return path


class WeightsSource:
    """The weights an engine is built from, with what is derived from them made once, on first use:
    the module (loading it imports torch), the cache key, the cached exports."""

    def __init__(self, source: Any, input_size: tuple[int, int], cache_dir: Any, num_threads: int | None,
                 log: Callable[[str], None], loaded_model: Any = None) -> None:
        self.source = source
        self.is_onnx = isinstance(source, (str, os.PathLike)) and str(source).endswith(".onnx")
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.cache_dir, self.num_threads, self.log = cache_dir, num_threads, log
        self._model = loaded_model
        self._key: str | None = None

    @property
    def name(self) -> str:
        return str(self.source) if isinstance(self.source, (str, os.PathLike)) else type(self.source).__name__

    @property
    def model(self):
        """The module (loaded from the checkpoint on first use: this is what imports torch)."""
        if self._model is None:
            if self.is_onnx:
                raise EngineError(f"{self.source} is an ONNX file; this needs the model weights")
            self._model = load_module(self.source)
            if self.num_threads:
                from .cpu_tuning import set_num_threads

                set_num_threads(self.num_threads)
        return self._model

    @property
    def key(self) -> str:
        """The cache key of the weights: the checkpoint file's hash, or the module's state hash."""
        if self._key is None:
            from .cache import model_key

            if isinstance(self.source, (str, os.PathLike)):
                if not Path(self.source).is_file():
                    raise EngineError(f"weights file not found: {self.source}")
                self._key = model_key(self.source)
            else:
                self._key = model_key(self.model)
        return self._key

    def onnx(self, uint8: bool = True, precision: str = "fp32") -> Path:
        """The cached export (fp32, or the fp16 graph for CUDA) at the network size (exported when missing)."""
        return onnx_for(lambda: self.model, self.input_size, self.cache_dir, uint8, self.log, key=self.key,
                        precision=precision)

    def int8_path(self) -> Path:
        from .cache import int8_cache_path

        return int8_cache_path(self.key, self.input_size, self.cache_dir)


class MachineFacts:
    """``selection.Facts`` for this machine and these weights, each answer asked for once and only
    when the planner needs it (see the module docstring)."""

    def __init__(self, weights: WeightsSource, caps: Any = None) -> None:
        self.weights, self._caps_override = weights, caps
        self._status: dict[str, str] = {}
        self._memo: dict[str, Any] = {}

    def _once(self, name: str, fn: Callable[[], Any]) -> Any:
        if name not in self._memo:
            self._memo[name] = fn()
        return self._memo[name]

    def status(self, backend: str) -> str:
        if backend not in self._status:
            self._status[backend] = backend_status(backend)
        return self._status[backend]

    def cuda_available(self) -> bool:
        def ask() -> bool:
            import torch

            return bool(torch.cuda.is_available())

        return self._once("cuda", ask)

    def ort_cuda(self) -> bool:
        def ask() -> bool:
            try:
                import onnxruntime as ort
            except ImportError:
                return False
            return "CUDAExecutionProvider" in ort.get_available_providers()

        return self._once("ort_cuda", ask)

    def cpu_caps(self) -> frozenset[str]:
        from .openvino import cpu_capabilities_for_ranking

        return self._once("caps", lambda: cpu_capabilities_for_ranking(self._caps_override))

    def onnx_precision(self) -> str:
        def ask() -> str:
            from .cache import onnx_file_metadata
            from .openvino import is_quantized

            path = self.weights.source
            found = onnx_file_metadata(path).get("liteseg.precision")  # our files say (no onnx import)
            if found in ("fp32", "fp16", "int8"):
                return found
            if is_quantized(path):
                return "int8"
            from .export import onnx_precision

            return onnx_precision(path)

        return self._once("onnx_precision", ask)

    def int8_file(self) -> bool:
        from .cache import is_valid_file

        return self._once("int8_file", lambda: is_valid_file(self.weights.int8_path()))

    def int8_report(self, backend: str) -> tuple[float, str] | None:
        from .cache import load_report

        def ask():
            rep = load_report(self.weights.int8_path(), backend)
            if rep is None:
                return None
            return float(rep["label_agreement"]), f"quantization report, {rep['holdout']['images']} held-out images"

        return self._once(f"report:{backend}", ask)


@dataclass(frozen=True)
class BuildOptions:
    """The create_engine arguments that shape a build but not the choice."""

    num_threads: int | None = None
    compile: bool = False
    max_batch: int = 1
    rebuild: bool = False
    caps: Any = None


def create_engine(model_or_weights: Any, backend: str = "auto", device: str = "cpu",
                  precision: str = "fp32", input_size: tuple[int, int] = NETWORK_SIZE,
                  num_threads: int | None = None, cache_dir: str | os.PathLike | None = None,
                  compile: bool = False, log: Callable[[str], None] = print, max_batch: int = 1,
                  rebuild: bool = False, warmup: bool = True,
                  min_label_agreement: float = DEFAULT_MIN_LABEL_AGREEMENT, caps: Any = None,
                  loaded_model: Any = None) -> Engine:
    """Build the engine for ``backend`` on ``device`` at ``precision`` (rules: ``selection``).

    model_or_weights: an ``nn.Module`` returning logits, a checkpoint path, or an exported ``.onnx``
    file (onnxruntime/openvino/tensorrt only; a quantized file from ``liteseg quantize`` for int8).
    precision: ``auto`` (fp16 on CUDA; on CPU the fastest path meeting ``min_label_agreement``),
    fp32, fp16 (CUDA), bf16 (openvino), int8 (onnxruntime, openvino). input_size: the network (h, w)
    the pipeline feeds; used for export, quantization, TensorRT profiles and warm-up. num_threads:
    CPU intra-op threads (torch, ORT and OpenVINO use exactly this many). cache_dir: exported ONNX
    files, int8 files and reports, OpenVINO's compiled models, TensorRT plans (default
    ``cache.default_cache_dir()``). compile: ``torch.compile`` for the pytorch backend.
    max_batch: TensorRT profile maximum. rebuild: ignore a cached TensorRT plan. caps: CPU
    capability override for tests (see ``openvino.cpu_capabilities``). loaded_model: the module
    already loaded from the checkpoint path ``model_or_weights`` (spares a second load; cache files
    are still keyed by the file). Logs the choice and its reason.
    """
    weights = WeightsSource(model_or_weights, input_size, cache_dir, num_threads, log, loaded_model)
    request = EngineRequest(backend, device, precision, min_label_agreement, weights.is_onnx,
                            MachineFacts(weights, caps), weights.name)
    plan = plan_engine(request)
    if num_threads is not None:
        from .cpu_tuning import set_num_threads

        set_num_threads(num_threads, import_torch=False)
    engine = build_plan(plan, weights, BuildOptions(num_threads, compile, max_batch, rebuild, caps))
    log(f"engines: using {engine.info.backend} on {engine.info.device} ({engine.info.precision}): "
        f"{engine.info.reason}")
    if warmup:
        # One forward on the CPU: ONNX Runtime and OpenVINO allocate and pack everything in the first run
        # and a second costs start-up time (a whole forward) for nothing; GPUs also tune kernels on the 2nd.
        engine.warmup(weights.input_size[0], weights.input_size[1], runs=1 if engine.info.device == "cpu" else 2)
    return engine


def build_plan(plan: EnginePlan, weights: WeightsSource, opts: BuildOptions) -> Engine:
    """The engine of ``plan``: its first choice, or for the CPU choice the first candidate that qualifies."""
    if plan.is_cpu_choice:
        return _build_cpu_choice(plan, weights, opts)
    first = plan.first
    if len(plan.choices) == 1:
        return build_choice(first, weights, opts)
    try:  # TensorRT under auto; PyTorch CUDA if it fails, whatever TensorRT raised
        return build_choice(first, weights, opts)
    except Exception as exc:  # noqa: BLE001
        weights.log(f"engines: TensorRT failed ({exc}); falling back to PyTorch CUDA")
        fallback = plan.choices[1]
        return build_choice(Choice(fallback.backend, fallback.device, fallback.precision, fallback.file,
                                   f"{fallback.reason} (TensorRT failed: {str(exc)[:200]})"), weights, opts)


def _build_cpu_choice(plan: EnginePlan, weights: WeightsSource, opts: BuildOptions) -> Engine:
    for note in plan.notes:
        if note.startswith("bf16 requested"):
            weights.log(f"engines: {note}")
    skipped = list(plan.skipped)
    unchecked: Engine | None = None
    caps_note = ", BF16 CPU" if "BF16" in plan.caps else ""
    for choice in plan.choices:
        tag = f"{choice.backend} {choice.precision}"
        engine = build_choice(choice, weights, opts)
        agreement, source = choice.agreement, choice.agreement_source
        if agreement is None:
            agreement, source = _measured_agreement(weights, engine, choice)
        if agreement is None:
            if weights.is_onnx:  # nothing to measure against: use the file, say that it is unchecked
                unchecked = unchecked or engine
            else:
                engine.close()
            skipped.append(f"{tag}: agreement unknown ({source})")
            continue
        if plan.enforce_agreement and choice.precision != "fp32" and agreement < plan.min_label_agreement:
            skipped.append(f"{tag}: label agreement {agreement:.4f} ({source}) < min_label_agreement "
                           f"{plan.min_label_agreement}")
            engine.close()
            continue
        what = ("fastest qualifying CPU path" if plan.enforce_agreement
                else f"fastest CPU path at the requested {choice.precision}")
        speed = f"rank {choice.rank} of {plan.ranking_size} CPU paths measured by benchmarks/bench_cpu_paths.py"
        parts = [*(n for n in ("; ".join(plan.notes),) if n),
                 f"{what} ({speed}; ranked faster than the paths after it{caps_note}); label agreement with "
                 f"fp32 {agreement:.4f} ({source}), min_label_agreement {plan.min_label_agreement}"]
        if skipped:
            parts.append("skipped: " + "; ".join(skipped))
        engine.info.reason = f"{plan.head} {choice.backend} {engine.info.precision}: " + "; ".join(parts)
        if unchecked is not None and unchecked is not engine:
            unchecked.close()
        return engine
    if unchecked is not None:
        unchecked.info.reason = (f"auto: CPU default {unchecked.info.backend} {unchecked.info.precision}: "
                                 f"the given file, agreement not checked; skipped: " + "; ".join(skipped))
        return unchecked
    which = plan.first.backend if plan.head.startswith("backend") else "any"
    raise EngineError(f"auto: no CPU path for backend {which}: " + "; ".join(skipped))


def _measured_agreement(weights: WeightsSource, engine: Engine, choice: Choice) -> tuple[float | None, str]:
    """Label agreement of a built bf16/int8 engine with PyTorch fp32: its file's quantization report,
    else a cached or fresh check on two generated scenes (seeds 10000, 10001) at the network size."""
    path = Path(engine.info.extra.get("file", ""))
    if choice.precision == "int8":
        from .cache import load_report

        rep = load_report(path, choice.backend)
        if rep is not None:
            return float(rep["label_agreement"]), (f"quantization report, {rep['holdout']['images']} held-out "
                                                   f"images")
    if weights.is_onnx:
        return None, "no quantization report for this runtime next to the file"
    from liteseg_ros import safe_files

    from .cache import cache_root, cached_file_ok, write_record

    key = f"{path.stem}.{choice.backend}.{choice.precision}.{engine.info.extra.get('cpu_caps', '')}".replace(",", "-")
    cache = cache_root(weights.cache_dir) / "agreement" / f"{key}.json"
    if cached_file_ok(cache, key, weights.log):
        try:
            return float(json.loads(cache.read_text())["label_agreement"]), "start-up check, cached"
        except (OSError, ValueError, KeyError):
            pass
    from .quantize import HOLDOUT_SEED, compare_on_samples, reference_pipeline, synthetic_samples

    res = compare_on_samples(engine, reference_pipeline(weights.model, weights.input_size),
                             synthetic_samples(2, weights.input_size, HOLDOUT_SEED))
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        safe_files.write_text(cache, json.dumps({"label_agreement": res["label_agreement"], "file": str(path)}))
        write_record(cache, key)
    except OSError as exc:  # a read-only cache costs the check at the next start, nothing else
        weights.log(f"engines: cannot cache the agreement check in {cache.parent}: {exc.strerror}")
    return float(res["label_agreement"]), "start-up check on 2 generated scenes"


def _onnx_file(choice: Choice, weights: WeightsSource, opts: BuildOptions) -> Path:
    """The file ``choice.file`` names (see ``selection.FILES``), made when it is missing."""
    if choice.file == "given":
        return Path(weights.source)
    if choice.file == "int8":
        from .quantize import int8_for

        return int8_for(lambda: weights.model, weights.input_size, weights.cache_dir, choice.backend,
                        opts.num_threads, log=weights.log, key=weights.key)
    if choice.file == "onnx-trt":  # int32 label / float confidence: TensorRT casts to uint8 on the GPU
        return weights.onnx(False, choice.precision)
    return weights.onnx(True, choice.precision if choice.device != "cpu" else "fp32")


def build_choice(choice: Choice, weights: WeightsSource, opts: BuildOptions) -> Engine:
    """Build one engine exactly as ``choice`` says (no fallback)."""
    if choice.backend == "pytorch":
        from .pytorch import PyTorchEngine

        return PyTorchEngine(weights.model, choice.device, choice.precision, compile=opts.compile,
                             num_threads=opts.num_threads, reason=choice.reason, log=weights.log)
    if choice.backend == "onnxruntime":
        from .onnxruntime import OnnxRuntimeEngine

        return OnnxRuntimeEngine(_onnx_file(choice, weights, opts), choice.device, choice.precision,
                                 opts.num_threads, choice.reason, weights.log)
    if choice.backend == "openvino":
        from .openvino import OpenVinoEngine

        return OpenVinoEngine(_onnx_file(choice, weights, opts), choice.precision, opts.num_threads, choice.reason,
                              weights.log, weights.cache_dir, opts.caps)
    from .tensorrt import TensorRTEngine

    model = None if weights.is_onnx else weights.model
    return TensorRTEngine(_onnx_file(choice, weights, opts), weights.input_size, choice.device, choice.precision,
                          opts.max_batch, weights.cache_dir, opts.rebuild, int(getattr(model, "num_classes", 0)),
                          choice.reason, weights.log)


def build_tensorrt_engine(model_or_weights: Any, input_size: tuple[int, int], precision: str = "fp16",
                          device: str = "cuda", max_batch: int = 1, cache_dir: str | os.PathLike | None = None,
                          rebuild: bool = False, log: Callable[[str], None] = print) -> Path:
    """Build (or find) the cached TensorRT plan and return its path without running it (``build_only``)."""
    from .tensorrt import ensure_plan, tensorrt_status

    status = tensorrt_status()
    if status != "ok":
        raise EngineError(f"backend tensorrt unavailable: {status}")
    dev = parse_device(device)
    if dev == "cpu":
        raise EngineError(f"TensorRT engines are built on a CUDA device, got {device!r}")
    if precision not in ("fp32", "fp16"):
        raise EngineError(f"precision {precision!r} is not one of: fp32, fp16 (TensorRT)")
    is_onnx = str(model_or_weights).endswith(".onnx") and not hasattr(model_or_weights, "state_dict")
    if is_onnx:
        path = Path(model_or_weights)
    else:  # a checkpoint path is keyed by its file, as create_engine (the node) does
        from .cache import model_key

        key = model_key(model_or_weights) if isinstance(model_or_weights, (str, os.PathLike)) else None
        path = onnx_for(lambda: load_module(model_or_weights), input_size, cache_dir, False, log, key=key,
                        precision=precision)
    index = int(dev.split(":")[1]) if ":" in dev else 0
    plan_path, _ = ensure_plan(path, input_size, precision, index, max_batch, cache_dir, rebuild, log)
    return plan_path
