"""Inference engines: one ``create_engine`` for the node, the bag tool, the CLI and the benchmarks.

Ring 2: imports numpy and torch (runtimes lazily); never rclpy, message packages, or
``liteseg_ros.node`` / ``bag`` / ``image_codec``.

Backends: ``pytorch`` (CPU or CUDA, fp32 or fp16 autocast), ``onnxruntime`` (CPU fp32 or int8;
CUDA fp32 or fp16 with onnxruntime-gpu), ``openvino`` (CPU fp32, bf16 where the CPU has it, int8),
``tensorrt`` (CUDA, fp32/fp16, optional dependency, 10.x/11.x). On CUDA, fp16 for ONNX Runtime and
TensorRT is an fp16 ONNX export (``onnx_for(..., precision='fp16')``): both run the graph's types.
``auto`` picks, and says why in ``engine.info.reason``:

- device ``cuda[:N]``: TensorRT when it imports and its engine loads or builds, else PyTorch CUDA;
  if CUDA is missing, the CPU choice below (fp16 then falls back to fp32, also in the reason).
- device ``cpu``: the fastest CPU path (:func:`cpu_path_ranking`, measured by
  ``benchmarks/bench_cpu_paths.py``) among the installed runtimes and the precisions allowed
  (``precision: auto`` = fp32, bf16, int8) whose label agreement with PyTorch fp32 is at least
  ``min_label_agreement``. fp32 paths are the reference and always qualify. bf16 needs a CPU that
  reports BF16; its agreement comes from a short check on two generated scenes at start-up (cached
  in ``cache_dir/agreement``). int8 needs a quantized file (``liteseg quantize``, or an earlier
  ``precision: int8`` run, in ``cache_dir/int8``) and its agreement comes from that file's report;
  ``auto`` never quantizes at start-up. PyTorch when neither ONNX Runtime nor OpenVINO is installed.
- cached files (``cache.py``) are found by the checkpoint file's hash when weights are given as a
  path, so a warm CPU start needs neither torch nor the checkpoint; a module is keyed by its state.
  fp16 on CPU falls back to fp32 under ``auto``; an explicit backend with fp16 on CPU is an EngineError.
- ``precision: int8`` with an explicit backend uses the cached int8 file of the weights, quantizing
  it first with generated calibration scenes when there is none (logged); ``weights`` may also be a
  quantized ``.onnx`` file from ``liteseg quantize --out``.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .base import Engine, EngineError, EngineInfo, EngineOutput

BACKENDS = ("auto", "pytorch", "onnxruntime", "tensorrt", "openvino")
PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")
#: Label agreement with PyTorch fp32 a reduced-precision CPU path needs before ``auto`` picks it.
DEFAULT_MIN_LABEL_AGREEMENT = 0.99
#: The fp32 CPU backend ``auto`` chooses (first fp32 entry of both rankings below): ONNX Runtime with
#: in-graph post-processing measured 2.5x faster than eager PyTorch fp32 and 1.8x faster than PyTorch
#: channels_last+folded BN at 360x640 on 2 threads (benchmarks/bench_engines.py).
CPU_DEFAULT_BACKEND = "onnxruntime"
#: CPU paths fastest first, (backend, precision, model ms at 1x3x360x640 with 2 threads). With BF16
#: (AVX-512 BF16 / AMX): the benchmarks/bench_cpu_paths.py measurements on such a CPU. Without (AVX2, no VNNI): benchmarks/bench_cpu_paths.py
#: --block 3 on the idle 2-core AMD EPYC development machine, demo weights; int8 gains only ~1.15x there.
#: The int8 rows were measured with the int8 recipe before the first two convolutions were left float;
#: those are ~3 % of the MACs (66 of 1938 M at 360x640), and on a heavily shared 2-core Intel Xeon
#: (AVX512-VNNI/AMX) one round-robin run at 1 thread gave model medians of 87.6 ms (new recipe),
#: 96.4 ms (old) and 123.2 ms (ONNX Runtime fp32): the order of the paths is unchanged.
CPU_PATHS_BF16 = (("openvino", "int8", 7.7), ("openvino", "bf16", 9.2), ("onnxruntime", "int8", 10.7),
                  ("onnxruntime", "fp32", 15.8), ("openvino", "fp32", 21.2))
CPU_PATHS_NO_BF16 = (("onnxruntime", "int8", 43.5), ("openvino", "int8", 46.0), ("onnxruntime", "fp32", 50.3),
                     ("openvino", "fp32", 54.6))

__all__ = ["BACKENDS", "CPU_DEFAULT_BACKEND", "DEFAULT_MIN_LABEL_AGREEMENT", "PRECISIONS", "Engine",
           "EngineError", "EngineInfo", "EngineOutput", "available_backends", "build_tensorrt_engine",
           "cpu_path_ranking", "create_engine", "load_model"]


def _backend_status(name: str) -> str:
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


class _LazyStatus(dict):
    """``available_backends`` answered on first use per backend: importing openvino (~0.9 s) or
    tensorrt is only paid when the choice gets to that backend, which keeps a warm start short."""

    def __missing__(self, name: str) -> str:
        self[name] = _backend_status(name)
        return self[name]


def available_backends() -> dict[str, str]:
    """Backend name -> 'ok' or why it cannot run here (for logs, diagnostics and ``liteseg bench``)."""
    return {name: _backend_status(name) for name in ("pytorch", "onnxruntime", "openvino", "tensorrt")}


def cpu_path_ranking(caps=None) -> tuple[tuple[str, str, float], ...]:
    """CPU (backend, precision, measured ms) fastest first for this CPU (``caps``: capability override)."""
    from .openvino import has_bf16

    return CPU_PATHS_BF16 if has_bf16(caps) else CPU_PATHS_NO_BF16


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
    from .cache import is_valid_file, onnx_cache_path, state_key

    get = model if callable(model) and not hasattr(model, "state_dict") else (lambda: model)
    path = onnx_cache_path(key or state_key(get()), input_size, cache_dir, uint8, precision)
    if is_valid_file(path):
        return path
    from .export import export_onnx

    log(f"engines: no cached ONNX file for these weights at {int(input_size[0])}x{int(input_size[1])}; "
        f"exporting {path.name} (cold start; later starts reuse it)")
    export_onnx(get(), path, tuple(int(v) for v in input_size), dynamic=False, with_logits=False, uint8=uint8,
                precision=precision)
    return path


def _parse_device(device: str) -> str:
    """``cpu`` | ``cuda`` | ``cuda:N``, lower case; EngineError otherwise (the same rule as
    ``pytorch.parse_device``, without importing torch)."""
    d = str(device).strip().lower()
    if not (d in ("cpu", "cuda") or (d.startswith("cuda:") and d[5:].isdigit())):
        raise EngineError(f"device {device!r} is not one of: cpu, cuda, cuda:N (N = GPU index)")
    return d


def _check_args(backend: str, device: str, precision: str) -> str:
    if backend not in BACKENDS:
        raise EngineError(f"backend {backend!r} is not one of: {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise EngineError(f"precision {precision!r} is not one of: {', '.join(PRECISIONS)}")
    return _parse_device(device)


def create_engine(model_or_weights: Any, backend: str = "auto", device: str = "cpu",
                  precision: str = "fp32", input_size: tuple[int, int] = (360, 640),
                  num_threads: int | None = None, cache_dir: str | os.PathLike | None = None,
                  compile: bool = False, log: Callable[[str], None] = print, max_batch: int = 1,
                  rebuild: bool = False, warmup: bool = True,
                  min_label_agreement: float = DEFAULT_MIN_LABEL_AGREEMENT, caps: Any = None,
                  loaded_model: Any = None) -> Engine:
    """Build the engine for ``backend`` on ``device`` at ``precision`` (see the module docstring).

    model_or_weights: an ``nn.Module`` returning logits, a checkpoint path, or an exported ``.onnx``
    file (onnxruntime/openvino/tensorrt only; a quantized file from ``liteseg quantize`` for int8).
    precision: ``auto`` (fp16 on CUDA; on CPU the fastest path meeting ``min_label_agreement``),
    fp32, fp16 (CUDA), bf16 (openvino), int8 (onnxruntime, openvino). input_size: the network (h, w)
    the pipeline feeds; used for export, quantization, TensorRT profiles and warm-up. num_threads:
    CPU intra-op threads (torch, ORT and OpenVINO use exactly this many). cache_dir: exported ONNX
    files, int8 files and reports, OpenVINO's compiled models, TensorRT plans (default
    ``~/.cache/liteseg_ros/engines``). compile: ``torch.compile`` for the pytorch backend.
    max_batch: TensorRT profile maximum. rebuild: ignore a cached TensorRT plan. caps: CPU
    capability override for tests (see ``openvino.cpu_capabilities``). loaded_model: the module
    already loaded from the checkpoint path ``model_or_weights`` (spares a second load; cache files
    are still keyed by the file). Logs the choice and its reason.

    With a checkpoint path, cached files are found by the file's hash (``cache.checkpoint_key``), so
    a warm CPU start (cached ONNX / int8 file and report) neither loads the checkpoint nor imports torch.
    """
    dev = _check_args(backend, device, precision)
    if not 0.0 <= float(min_label_agreement) <= 1.5:
        raise EngineError(f"min_label_agreement must be in [0, 1.5] (above 1 no bf16/int8 path qualifies), "
                          f"got {min_label_agreement}")
    if num_threads is not None:
        from .cpu_tuning import set_num_threads

        set_num_threads(num_threads, import_torch=False)
    is_onnx = isinstance(model_or_weights, (str, os.PathLike)) and str(model_or_weights).endswith(".onnx")
    avail = _LazyStatus()
    auto = backend == "auto"
    ctx = _Ctx(model_or_weights, is_onnx, input_size, num_threads, cache_dir, compile, log, max_batch,
               rebuild, float(min_label_agreement), caps)
    ctx._model = loaded_model
    if auto:
        backend, dev, precision, reason = _choose(dev, precision, avail, is_onnx)
    elif avail[backend] != "ok":
        raise EngineError(f"backend {backend!r} unavailable: {avail[backend]}")
    else:
        reason = f"backend {backend} requested"
        if precision == "auto":
            if backend in ("onnxruntime", "openvino") and dev == "cpu":
                backend = "cpu-auto:" + backend
            else:
                precision = "fp16" if dev.startswith("cuda") else "fp32"
                if is_onnx and dev.startswith("cuda"):  # a given file's types fix its precision
                    from .export import onnx_precision

                    precision = onnx_precision(model_or_weights)
        elif precision in ("bf16", "int8") and backend not in ("onnxruntime", "openvino"):
            raise EngineError(f"precision {precision!r} is a CPU precision of backend openvino (bf16, int8) "
                              f"and onnxruntime (int8), not of {backend!r}")
        elif precision == "bf16" and backend == "onnxruntime":
            raise EngineError("precision 'bf16' is not supported by the onnxruntime backend (allowed: fp32, "
                              "int8); use backend openvino for bf16")
    if backend.startswith("cpu-auto"):
        engine = _cpu_auto(ctx, backend.split(":", 1)[1], precision, reason)
    else:
        engine = _build(ctx, backend, dev, precision, reason, auto=auto)
    log(f"engines: using {engine.info.backend} on {engine.info.device} ({engine.info.precision}): "
        f"{engine.info.reason}")
    if warmup:
        # One forward on the CPU: ONNX Runtime and OpenVINO allocate and pack everything in the first run
        # and a second costs start-up time (a whole forward) for nothing; GPUs also tune kernels on the 2nd.
        engine.warmup(int(input_size[0]), int(input_size[1]), runs=1 if engine.info.device == "cpu" else 2)
    return engine


class _Ctx:
    """The create_engine arguments every builder needs (one place instead of ten parameters)."""

    def __init__(self, source: Any, is_onnx: bool, input_size: tuple[int, int], num_threads: int | None,
                 cache_dir: Any, compile: bool, log: Callable[[str], None], max_batch: int, rebuild: bool,
                 floor: float, caps: Any) -> None:
        self.source, self.is_onnx, self.input_size = source, is_onnx, tuple(int(v) for v in input_size)
        self.num_threads, self.cache_dir, self.compile, self.log = num_threads, cache_dir, compile, log
        self.max_batch, self.rebuild, self.floor, self.caps = max_batch, rebuild, floor, caps
        self._model = None
        self._key: str | None = None

    @property
    def model(self):
        """The module (loaded from the checkpoint on first use: this is what imports torch)."""
        if self._model is None:
            if self.is_onnx:
                raise EngineError(f"{self.source} is an ONNX file; this needs the model weights")
            self._model = load_model(self.source)
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
        """The cached export (fp32, or the fp16 graph for CUDA) of the weights at the network size
        (exported when missing)."""
        return onnx_for(lambda: self.model, self.input_size, self.cache_dir, uint8, self.log, key=self.key,
                        precision=precision)


def _choose(dev: str, precision: str, avail: dict[str, str], is_onnx: bool) -> tuple[str, str, str, str]:
    """(backend, device, precision, reason) for ``backend: auto``; backend ``cpu-auto:any`` means the
    CPU choice of :func:`_cpu_auto`."""
    notes = []
    if dev.startswith("cuda"):
        import torch

        if precision == "auto":
            precision = "fp16"
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
    if avail["onnxruntime"] != "ok" and avail["openvino"] != "ok":
        if is_onnx:
            raise EngineError(f"auto: an ONNX file on CPU needs onnxruntime ({avail['onnxruntime']}) or "
                              f"openvino ({avail['openvino']})")
        if precision in ("bf16", "int8"):
            raise EngineError(f"precision {precision} needs onnxruntime or openvino, neither is installed")
        return "pytorch", "cpu", "fp32", "auto: CPU default pytorch: " + "; ".join(
            [*notes, f"onnxruntime unavailable ({avail['onnxruntime']}), openvino unavailable "
                     f"({avail['openvino']})"])
    return "cpu-auto:any", "cpu", precision, "; ".join(notes)


def _cpu_auto(ctx: _Ctx, which: str, precision: str, notes: str) -> Engine:
    """The fastest CPU (backend, precision) meeting ctx.floor, built; see the module docstring."""
    from .openvino import cpu_capabilities_for_ranking, is_quantized

    avail = _LazyStatus()
    caps = cpu_capabilities_for_ranking(ctx.caps)
    precisions = ("fp32", "bf16", "int8") if precision == "auto" else (precision,)
    if precision == "bf16" and "BF16" not in caps:
        msg = (f"bf16 requested but this CPU does not report BF16 (OpenVINO OPTIMIZATION_CAPABILITIES: "
               f"{', '.join(sorted(caps)) or 'unknown'}); using fp32")
        ctx.log(f"engines: {msg}")
        notes = "; ".join(p for p in (notes, msg) if p)
        precisions = ("fp32",)
    file_int8 = is_quantized(ctx.source) if ctx.is_onnx else None
    skipped: list[str] = []
    first_built: Engine | None = None
    ranking = cpu_path_ranking(caps)
    for rank, (backend, prec, _ms) in enumerate(ranking, 1):
        tag = f"{backend} {prec}"
        if which != "any" and backend != which:
            continue
        if prec not in precisions:
            continue
        if prec == "bf16" and "BF16" not in caps:
            skipped.append(f"{tag}: CPU does not report BF16 ({','.join(sorted(caps)) or 'unknown'})")
            continue
        if file_int8 is not None and file_int8 != (prec == "int8"):
            continue  # the given file fixes the precision
        if prec == "int8" and not ctx.is_onnx and precision == "auto":
            from .cache import int8_cache_path, is_valid_file

            if not is_valid_file(int8_cache_path(ctx.key, ctx.input_size, ctx.cache_dir)):
                skipped.append(f"{tag}: no quantized model in the cache (run `liteseg quantize`)")
                continue
        if avail[backend] != "ok":  # after the cheap checks: asking may import the runtime
            skipped.append(f"{tag}: {avail[backend]}")
            continue
        engine = _build(ctx, backend, "cpu", prec, "", auto=True)
        agreement, source = (1.0, "fp32 reference") if prec == "fp32" else _agreement(ctx, engine, backend, prec)
        enforce = precision == "auto"
        if agreement is None:
            if ctx.is_onnx:  # nothing to measure against: use the file, say that it is unchecked
                first_built = first_built or engine
            skipped.append(f"{tag}: agreement unknown ({source})")
            if not ctx.is_onnx:
                engine.close()
            continue
        if enforce and prec != "fp32" and agreement < ctx.floor:
            skipped.append(f"{tag}: label agreement {agreement:.4f} ({source}) < min_label_agreement "
                           f"{ctx.floor}")
            engine.close()
            continue
        speed = f"rank {rank} of {len(ranking)} CPU paths measured by benchmarks/bench_cpu_paths.py"
        parts = [p for p in (notes,) if p]
        what = "fastest qualifying CPU path" if enforce else f"fastest CPU path at the requested {prec}"
        parts.append(f"{what} ({speed}; ranked faster than the paths after it"
                     f"{', BF16 CPU' if 'BF16' in caps else ''}); label agreement with fp32 {agreement:.4f} "
                     f"({source}), min_label_agreement {ctx.floor}")
        if skipped:
            parts.append("skipped: " + "; ".join(skipped))
        head = "auto: CPU default" if which == "any" else f"backend {which} requested, precision auto:"
        engine.info.reason = f"{head} {backend} {engine.info.precision}: " + "; ".join(parts)
        if first_built is not None and first_built is not engine:
            first_built.close()
        return engine
    if first_built is not None:
        first_built.info.reason = (f"auto: CPU default {first_built.info.backend} {first_built.info.precision}: "
                                   f"the given file, agreement not checked; skipped: " + "; ".join(skipped))
        return first_built
    raise EngineError(f"auto: no CPU path for backend {which} precision {precision}: " + "; ".join(skipped))


def _agreement(ctx: _Ctx, engine: Engine, backend: str, precision: str) -> tuple[float | None, str]:
    """Label agreement of a bf16/int8 engine with PyTorch fp32: the quantization report, else a cached
    or fresh check on two generated scenes (seeds 10000, 10001) at the network size."""
    import json

    path = Path(engine.info.extra.get("file", ""))
    if precision == "int8":
        from .cache import load_report

        rep = load_report(path, backend)
        if rep is not None:
            return float(rep["label_agreement"]), (f"quantization report, {rep['holdout']['images']} held-out "
                                                   f"images")
    if ctx.is_onnx:
        return None, "no quantization report for this runtime next to the file"
    from .cache import cache_root

    key = f"{path.stem}.{backend}.{precision}.{engine.info.extra.get('cpu_caps', '')}".replace(",", "-")
    cache = cache_root(ctx.cache_dir) / "agreement" / f"{key}.json"
    if cache.is_file():
        try:
            return float(json.loads(cache.read_text())["label_agreement"]), "start-up check, cached"
        except (OSError, ValueError, KeyError):
            pass
    from .quantize import HOLDOUT_SEED, _reference_pipeline, compare_on_samples, synthetic_samples

    res = compare_on_samples(engine, _reference_pipeline(ctx.model, ctx.input_size),
                             synthetic_samples(2, ctx.input_size, HOLDOUT_SEED))
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"label_agreement": res["label_agreement"], "file": str(path)}))
    return float(res["label_agreement"]), "start-up check on 2 generated scenes"


def _ort_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return ort.get_available_providers()


def _cpu_file(ctx: _Ctx, backend: str, precision: str) -> Path:
    """The ONNX file a CPU runtime runs: the given one, the cached fp32 export or the cached int8 file."""
    if ctx.is_onnx:
        return Path(ctx.source)
    if precision == "int8":
        from .quantize import int8_for

        return int8_for(lambda: ctx.model, ctx.input_size, ctx.cache_dir, backend, ctx.num_threads, log=ctx.log,
                        key=ctx.key)
    return ctx.onnx(True)


def _build(ctx: _Ctx, backend: str, dev: str, precision: str, reason: str, auto: bool) -> Engine:
    if backend == "pytorch":
        if ctx.is_onnx:
            raise EngineError(f"backend pytorch needs weights (a checkpoint or a module), not an ONNX file: "
                              f"{ctx.source}")
        from .pytorch import PyTorchEngine

        return PyTorchEngine(ctx.model, dev, precision, compile=ctx.compile,
                             num_threads=ctx.num_threads, reason=reason, log=ctx.log)
    if backend == "onnxruntime":
        from .onnxruntime import OnnxRuntimeEngine

        if precision == "int8" and dev != "cpu":
            raise EngineError(f"precision int8 runs on device cpu, got {dev!r}")
        precision = _file_precision(ctx, precision, auto)
        path = _cpu_file(ctx, backend, precision) if dev == "cpu" or ctx.is_onnx else ctx.onnx(True, precision)
        return OnnxRuntimeEngine(path, dev, precision, ctx.num_threads, reason, ctx.log)
    if backend == "openvino":
        from .openvino import OpenVinoEngine

        if dev != "cpu":
            raise EngineError(f"backend openvino runs on device cpu here, got device {dev!r}")
        return OpenVinoEngine(_cpu_file(ctx, backend, precision), precision, ctx.num_threads, reason, ctx.log,
                              ctx.cache_dir, ctx.caps)
    from .tensorrt import TensorRTEngine

    model = None if ctx.is_onnx else ctx.model
    try:
        precision = _file_precision(ctx, precision, auto)
        path = Path(ctx.source) if ctx.is_onnx else ctx.onnx(False, precision)
        return TensorRTEngine(path, ctx.input_size, dev, precision, ctx.max_batch, ctx.cache_dir, ctx.rebuild,
                              int(getattr(model, "num_classes", 0)), reason, ctx.log)
    except Exception as exc:  # noqa: BLE001 - auto must fall back, whatever TensorRT raised
        if not auto or model is None:
            raise
        ctx.log(f"engines: TensorRT failed ({exc}); falling back to PyTorch CUDA")
        from .pytorch import PyTorchEngine

        return PyTorchEngine(model, dev, precision, compile=ctx.compile, reason=f"auto: PyTorch CUDA "
                             f"(TensorRT failed: {str(exc)[:200]})", log=ctx.log)


def _file_precision(ctx: _Ctx, precision: str, auto: bool) -> str:
    """The precision to build: the requested one, or, for a given fp32/fp16 ONNX file under ``auto``,
    the file's (its types are what a strongly typed runtime runs; an explicit mismatch is the
    engine's error to report)."""
    if not (ctx.is_onnx and auto and precision in ("fp32", "fp16")):
        return precision
    from .export import onnx_precision

    return onnx_precision(ctx.source)


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
    if precision not in ("fp32", "fp16"):
        raise EngineError(f"precision {precision!r} is not one of: fp32, fp16 (TensorRT)")
    is_onnx = str(model_or_weights).endswith(".onnx") and not hasattr(model_or_weights, "state_dict")
    if is_onnx:
        path = Path(model_or_weights)
    else:  # a checkpoint path is keyed by its file, as create_engine (the node) does
        from .cache import model_key

        key = model_key(model_or_weights) if isinstance(model_or_weights, (str, os.PathLike)) else None
        path = onnx_for(lambda: load_model(model_or_weights), input_size, cache_dir, False, log, key=key,
                        precision=precision)
    plan_path, _ = ensure_plan(path, input_size, precision, dev.index or 0, max_batch, cache_dir, rebuild, log)
    return plan_path
