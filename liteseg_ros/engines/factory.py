"""Building engines: ``create_engine`` turns a request into a plan (``selection``) and the plan into an engine.

Ring 2: imports numpy (torch and the runtimes lazily, when the plan needs them); never rclpy, message
packages, or the node/bag/codec modules. Three steps, each with one job:

1. the request: the caller's arguments plus :class:`MachineFacts`, which asks the machine and the
   engine cache only what the planner asks (importing openvino costs ~0.9 s, torch more: a warm CPU
   start pays for neither unless the plan uses them);
2. the plan: ``selection.plan_engine``, pure;
3. the build: the plan's choices in order, each through the backend table (:data:`BACKEND_TABLE`)
   and the file table (:data:`FILE_TABLE`). The CPU choice builds each candidate whose label
   agreement is not known in advance, measures it with the caller's check (cached) and takes the
   first that meets the floor; TensorRT under ``auto`` falls back to PyTorch CUDA if it fails.

Nothing here quantizes, renders test scenes or builds a pipeline: those are the offline tools'
(``liteseg_ros.tools``), which sit above the pipeline; the agreement check comes in as a callable.

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
from .model_weights import ModelWeights
from .selection import (
    DEFAULT_MIN_LABEL_AGREEMENT,
    Choice,
    EnginePlan,
    EngineRequest,
    parse_device,
    plan_engine,
)

#: How a caller measures a built engine's label agreement with PyTorch fp32: (engine, the fp32 module,
#: network (h, w)) -> (agreement in [0, 1], where it comes from, for the reason). The engines hold no
#: test images; ``liteseg_ros.tools.quantize.startup_agreement`` is the runtime's.
AgreementCheck = Callable[[Engine, Any, tuple[int, int]], tuple[float, str]]


def _onnxruntime_status() -> str:
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        return f"onnxruntime not installed ({exc.msg})"
    return "ok"


def _openvino_status() -> str:
    from .openvino import openvino_status

    return openvino_status()


def _tensorrt_status() -> str:
    from .tensorrt import tensorrt_status

    return tensorrt_status()


def backend_status(name: str) -> str:
    """'ok' or why ``name`` cannot run here (imports that runtime to find out)."""
    return BACKEND_TABLE[name].status()


def available_backends() -> dict[str, str]:
    """Backend name -> 'ok' or why it cannot run here (for logs, diagnostics and ``liteseg bench``)."""
    return {name: backend_status(name) for name in BACKEND_TABLE}


def load_module(model_or_weights: Any):
    """An eval ``nn.Module`` from a module (returned as is), a checkpoint file or :class:`ModelWeights`.

    ``ModelWeights.module`` is the one loader; this is its name for tools that hold a file or a module.
    """
    return ModelWeights.of(model_or_weights).module()


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


class SizedWeights:
    """The weights at the network size with the engine cache: the files made from them, each made (or
    found) once, and the module, loaded on first use."""

    def __init__(self, weights: ModelWeights, input_size: tuple[int, int], cache_dir: Any,
                 num_threads: int | None, log: Callable[[str], None]) -> None:
        self.weights = weights
        self.is_onnx = weights.is_onnx
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.cache_dir, self.num_threads, self.log = cache_dir, num_threads, log

    @property
    def name(self) -> str:
        return self.weights.label

    @property
    def model(self):
        """The module (loaded from the checkpoint on first use: this is what imports torch)."""
        loaded = self.weights.is_loaded
        model = self.weights.module()
        if not loaded and self.num_threads:
            from .cpu_tuning import set_num_threads

            set_num_threads(self.num_threads)
        return model

    @property
    def key(self) -> str:
        """The cache key of the weights: the checkpoint file's hash, or the module's state hash."""
        return self.weights.key

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

    def __init__(self, weights: SizedWeights, caps: Any = None) -> None:
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
            from .openvino import is_quantized

            path = self.weights.weights.path
            found = self.weights.weights.onnx_meta.get("liteseg.precision")  # our files say (no onnx import)
            if found in ("fp32", "fp16", "int8"):
                return found
            if is_quantized(path):
                return "int8"
            from .export import onnx_precision

            return onnx_precision(path)

        return self._once("onnx_precision", ask)

    def int8_file(self) -> bool:
        from .cache import cached_file_ok

        return self._once("int8_file", lambda: cached_file_ok(self.weights.int8_path(), self.weights.key,
                                                              self.weights.log))

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
    agreement_check: AgreementCheck | None = None


def create_engine(weights: ModelWeights | Any, backend: str = "auto", device: str = "cpu",
                  precision: str = "fp32", input_size: tuple[int, int] = NETWORK_SIZE,
                  num_threads: int | None = None, cache_dir: str | os.PathLike | None = None,
                  compile: bool = False, log: Callable[[str], None] = print, max_batch: int = 1,
                  rebuild: bool = False, warmup: bool = True,
                  min_label_agreement: float = DEFAULT_MIN_LABEL_AGREEMENT, caps: Any = None,
                  agreement_check: AgreementCheck | None = None,
                  warn: Callable[[str], None] | None = None) -> Engine:
    """Build the engine for ``backend`` on ``device`` at ``precision`` (rules: ``selection``).

    weights: :class:`ModelWeights` (``runtime.resolve_model``), or what ``ModelWeights.of`` takes: an
    ``nn.Module`` returning logits, a checkpoint path, or an exported ``.onnx`` file
    (onnxruntime/openvino/tensorrt only; a quantized file from ``liteseg quantize`` for int8).
    precision: ``auto`` (fp16 on CUDA; on CPU the fastest path meeting ``min_label_agreement``),
    fp32, fp16 (CUDA), bf16 (openvino), int8 (onnxruntime, openvino). input_size: the network (h, w)
    the pipeline feeds; used for export, TensorRT profiles and warm-up. num_threads:
    CPU intra-op threads (torch, ORT and OpenVINO use exactly this many). cache_dir: exported ONNX
    files, int8 files and reports, OpenVINO's compiled models, TensorRT plans (default
    ``cache.default_cache_dir()``). compile: ``torch.compile`` for the pytorch backend.
    max_batch: TensorRT profile maximum. rebuild: ignore a cached TensorRT plan. caps: CPU
    capability override for tests (see ``openvino.cpu_capabilities``). agreement_check: how the CPU
    choice measures a bf16 or int8 engine whose label agreement with fp32 is not known in advance
    (the caller's: the engines know no test images; without one such a path is skipped, and the
    result is cached). warn: where a request that could not be met as asked is reported (default:
    ``log``), e.g. ``precision: int8`` without a cached int8 file, which runs the best other path:
    nothing is quantized here. Logs the choice and its reason.
    """
    sized = SizedWeights(ModelWeights.of(weights), input_size, cache_dir, num_threads, log)
    request = EngineRequest(backend, device, precision, min_label_agreement, sized.is_onnx,
                            MachineFacts(sized, caps), sized.name, format_size(sized.input_size))
    plan = plan_engine(request)
    for message in plan.warnings:
        (warn or log)(f"engines: {message}")
    if num_threads is not None:
        from .cpu_tuning import set_num_threads

        set_num_threads(num_threads, import_torch=False)
    engine = build_plan(plan, sized, BuildOptions(num_threads, compile, max_batch, rebuild, caps, agreement_check))
    log(f"engines: using {engine.info.backend} on {engine.info.device} ({engine.info.precision}): "
        f"{engine.info.reason}")
    if warmup:
        # One forward on the CPU: ONNX Runtime and OpenVINO allocate and pack everything in the first run
        # and a second costs start-up time (a whole forward) for nothing; GPUs also tune kernels on the 2nd.
        engine.warmup(sized.input_size[0], sized.input_size[1], runs=1 if engine.info.device == "cpu" else 2)
    return engine


def build_plan(plan: EnginePlan, weights: SizedWeights, opts: BuildOptions) -> Engine:
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


def _build_cpu_choice(plan: EnginePlan, weights: SizedWeights, opts: BuildOptions) -> Engine:
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
            agreement, source = _measured_agreement(weights, engine, choice, opts.agreement_check)
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


def _measured_agreement(weights: SizedWeights, engine: Engine, choice: Choice,
                        check: AgreementCheck | None) -> tuple[float | None, str]:
    """Label agreement of a built bf16/int8 engine with PyTorch fp32: its file's quantization report,
    else a cached or fresh measurement by the caller's ``check``."""
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
    if check is None:
        return None, "no agreement check given"
    agreement, source = check(engine, weights.model, weights.input_size)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        safe_files.write_text(cache, json.dumps({"label_agreement": agreement, "file": str(path)}))
        write_record(cache, key)
    except OSError as exc:  # a read-only cache costs the check at the next start, nothing else
        weights.log(f"engines: cannot cache the agreement check in {cache.parent}: {exc.strerror}")
    return float(agreement), source


def _cached_int8(choice: Choice, weights: SizedWeights, opts: BuildOptions) -> Path:
    """The int8 file ``liteseg quantize`` put in the cache (the plan names it only when it is there)."""
    from .cache import cached_file_ok

    path = weights.int8_path()
    if not cached_file_ok(path, weights.key, weights.log):  # removed or replaced since the plan was made
        raise EngineError(f"no int8 model in the cache at {path}: run `liteseg quantize --weights "
                          f"{weights.name} --size {format_size(weights.input_size)}`")
    return path


#: How each kind of file a choice names (``selection.FILES``) is found or made.
FILE_TABLE: dict[str, Callable[[Choice, SizedWeights, BuildOptions], Path]] = {
    "given": lambda choice, weights, opts: Path(weights.weights.path),
    "int8": _cached_int8,
    # int32 label / float confidence: TensorRT casts to uint8 on the GPU
    "onnx-trt": lambda choice, weights, opts: weights.onnx(False, choice.precision),
    "onnx": lambda choice, weights, opts: weights.onnx(True, choice.precision if choice.device != "cpu" else "fp32"),
}


def _onnx_file(choice: Choice, weights: SizedWeights, opts: BuildOptions) -> Path:
    """The file ``choice.file`` names (see ``selection.FILES``), exported when it is a missing cached export."""
    return FILE_TABLE[choice.file](choice, weights, opts)


def _build_pytorch(choice: Choice, weights: SizedWeights, opts: BuildOptions) -> Engine:
    from .pytorch import PyTorchEngine

    return PyTorchEngine(weights.model, choice.device, choice.precision, compile=opts.compile,
                         num_threads=opts.num_threads, reason=choice.reason, log=weights.log)


def _build_onnxruntime(choice: Choice, weights: SizedWeights, opts: BuildOptions) -> Engine:
    from .onnxruntime import OnnxRuntimeEngine

    return OnnxRuntimeEngine(_onnx_file(choice, weights, opts), choice.device, choice.precision,
                             opts.num_threads, choice.reason, weights.log)


def _build_openvino(choice: Choice, weights: SizedWeights, opts: BuildOptions) -> Engine:
    from .openvino import OpenVinoEngine

    return OpenVinoEngine(_onnx_file(choice, weights, opts), choice.precision, opts.num_threads, choice.reason,
                          weights.log, weights.cache_dir, opts.caps)


def _build_tensorrt(choice: Choice, weights: SizedWeights, opts: BuildOptions) -> Engine:
    from .tensorrt import TensorRTEngine

    model = None if weights.is_onnx else weights.model
    return TensorRTEngine(_onnx_file(choice, weights, opts), weights.input_size, choice.device, choice.precision,
                          opts.max_batch, weights.cache_dir, opts.rebuild, int(getattr(model, "num_classes", 0)),
                          choice.reason, weights.log)


@dataclass(frozen=True)
class BackendEntry:
    """One backend: whether it can run here, and how an engine of it is built from a choice."""

    status: Callable[[], str]
    build: Callable[[Choice, SizedWeights, BuildOptions], Engine]


#: Every backend, by the name the ``backend`` parameter uses (``selection.BACKENDS`` less ``auto``).
BACKEND_TABLE: dict[str, BackendEntry] = {
    "pytorch": BackendEntry(lambda: "ok", _build_pytorch),
    "onnxruntime": BackendEntry(_onnxruntime_status, _build_onnxruntime),
    "openvino": BackendEntry(_openvino_status, _build_openvino),
    "tensorrt": BackendEntry(_tensorrt_status, _build_tensorrt),
}


def build_choice(choice: Choice, weights: SizedWeights, opts: BuildOptions) -> Engine:
    """Build one engine exactly as ``choice`` says (no fallback)."""
    return BACKEND_TABLE[choice.backend].build(choice, weights, opts)


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
    weights = ModelWeights.of(model_or_weights)
    if weights.is_onnx:
        path = weights.path
    else:  # a checkpoint path is keyed by its file, as create_engine (the node) does
        path = onnx_for(weights.module, input_size, cache_dir, False, log, key=weights.key, precision=precision)
    index = int(dev.split(":")[1]) if ":" in dev else 0
    plan_path, _ = ensure_plan(path, input_size, precision, index, max_batch, cache_dir, rebuild, log)
    return plan_path
