"""TensorRT engine (optional dependency): build from ONNX, cache the plan, run with torch CUDA buffers.

Ring 2: imports numpy and torch; ``tensorrt`` only inside functions (import-guarded, so this module
imports on machines without it); never rclpy, message packages, or the node/bag/codec modules.

This is the only module that touches the TensorRT API, and :data:`TRT_API` lists every TensorRT name
it uses (test/test_tensorrt.py checks the list against the 10.x -> 11.x removed-API table and, where
``tensorrt`` imports, against the installed bindings). Supported: TensorRT 10.x and 11.x
(:data:`SUPPORTED_MAJORS`). Both build the same way, strongly typed: TensorRT 11 removed weak typing
(``BuilderFlag.FP16`` and the precision-constraint flags are gone), so the precision is the ONNX
file's own types: an fp16 engine is built from an fp16 export (``export_onnx(precision='fp16')``),
an fp32 engine from the fp32 export with TF32 cleared, so fp32 stays IEEE fp32. On 10.x the network
is created with ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``; on 11.x strongly typed is the only
kind and the flag is not passed (it is deprecated and ignored there).

The plan is built from a file made by ``export.export_onnx(..., uint8=False)`` (int32 label, float
confidence: no uint8 casts inside TensorRT); the conversion to uint8 happens on the GPU, so only
uint8 planes are copied to the host. Plans are cached under a name derived from
:func:`engine_cache_key` (ONNX SHA-256, input size, precision, max batch, TensorRT version, GPU name)
with a JSON sidecar holding the full key; a plan whose sidecar does not match, that is empty, or that
TensorRT cannot deserialise is rebuilt, never trusted.
"""
from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .base import Engine, EngineError, EngineInfo, EngineOutput
from .cache import default_cache_dir, file_digest  # defined once, in cache.py

#: Bump when the exported graph or the build settings change in a way the key does not capture
#: (2: strongly typed builds from precision-typed ONNX files).
CACHE_FORMAT = 2
#: TensorRT major versions this module is written and checked against (setup.py: tensorrt>=10,<12).
SUPPORTED_MAJORS = (10, 11)

#: Every TensorRT Python name this package uses, as ``Owner.member`` (``Owner`` a class or enum of the
#: ``tensorrt`` module, or ``tensorrt`` itself), with the majors it is used on. This module uses no
#: other TensorRT name: test/test_tensorrt.py parses it to check that (``trt.X.Y`` chains, and members of
#: the objects held as ``builder``, ``network``, ``parser``, ``config``, ``profile``, ``engine``,
#: ``self._engine``, ``self._context``, ``self._runtime``: keep those names), checks that no name is in
#: the migration guide's removed-API table, and, where ``tensorrt`` imports, that each exists.
TRT_API: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("tensorrt.__version__", (10, 11)),
    ("tensorrt.Logger", (10, 11)),
    ("Logger.WARNING", (10, 11)),
    ("tensorrt.Builder", (10, 11)),
    ("Builder.create_network", (10, 11)),
    ("Builder.create_builder_config", (10, 11)),
    ("Builder.create_optimization_profile", (10, 11)),
    ("Builder.build_serialized_network", (10, 11)),
    ("tensorrt.NetworkDefinitionCreationFlag", (10,)),
    ("NetworkDefinitionCreationFlag.STRONGLY_TYPED", (10,)),  # 11.x: always strongly typed, flag ignored
    ("tensorrt.OnnxParser", (10, 11)),
    ("OnnxParser.parse", (10, 11)),
    ("OnnxParser.num_errors", (10, 11)),
    ("OnnxParser.get_error", (10, 11)),
    ("INetworkDefinition.num_inputs", (10, 11)),
    ("INetworkDefinition.get_input", (10, 11)),
    ("ITensor.name", (10, 11)),
    ("tensorrt.MemoryPoolType", (10, 11)),
    ("MemoryPoolType.WORKSPACE", (10, 11)),
    ("IBuilderConfig.set_memory_pool_limit", (10, 11)),
    ("tensorrt.BuilderFlag", (10, 11)),
    ("BuilderFlag.TF32", (10, 11)),
    ("IBuilderConfig.clear_flag", (10, 11)),
    ("IBuilderConfig.add_optimization_profile", (10, 11)),
    ("IBuilderConfig.progress_monitor", (10, 11)),
    ("IOptimizationProfile.set_shape", (10, 11)),
    ("tensorrt.IProgressMonitor", (10, 11)),
    ("IProgressMonitor.phase_start", (10, 11)),
    ("IProgressMonitor.step_complete", (10, 11)),
    ("IProgressMonitor.phase_finish", (10, 11)),
    ("tensorrt.Runtime", (10, 11)),
    ("Runtime.deserialize_cuda_engine", (10, 11)),
    ("ICudaEngine.create_execution_context", (10, 11)),
    ("ICudaEngine.num_io_tensors", (10, 11)),
    ("ICudaEngine.get_tensor_name", (10, 11)),
    ("ICudaEngine.get_tensor_mode", (10, 11)),
    ("ICudaEngine.get_tensor_dtype", (10, 11)),
    ("tensorrt.TensorIOMode", (10, 11)),
    ("TensorIOMode.INPUT", (10, 11)),
    ("DataType.FLOAT", (10, 11)),
    ("DataType.HALF", (10, 11)),
    ("DataType.INT32", (10, 11)),
    ("DataType.INT64", (10, 11)),
    ("DataType.INT8", (10, 11)),
    ("DataType.UINT8", (10, 11)),
    ("DataType.BOOL", (10, 11)),
    ("IExecutionContext.set_input_shape", (10, 11)),
    ("IExecutionContext.set_tensor_address", (10, 11)),
    ("IExecutionContext.get_tensor_shape", (10, 11)),
    ("IExecutionContext.execute_async_v3", (10, 11)),
)


def trt_major(version: str) -> int:
    """The major of a TensorRT version string ('10.3.0' -> 10); EngineError if it has none."""
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        raise EngineError(f"cannot read the TensorRT version {version!r}") from None


def check_trt_version(version: str) -> int:
    """The major of ``version`` if this module supports it, else an EngineError saying what is."""
    major = trt_major(version)
    if major not in SUPPORTED_MAJORS:
        raise EngineError(f"TensorRT {version} is not supported (supported: "
                          f"{', '.join(f'{m}.x' for m in SUPPORTED_MAJORS)}; pip install 'tensorrt>=10,<12')")
    return major


def network_flags(trt, major: int) -> int:
    """``create_network`` flags for a strongly typed network on ``major`` (10: the flag; 11: none needed)."""
    if major == 10:
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return 0


def tensorrt_status() -> str:
    """'ok' when TensorRT and a CUDA GPU are usable, else why not (for available_backends)."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        return f"tensorrt not installed ({exc.msg})"
    except Exception as exc:  # noqa: BLE001 - a broken install raises anything
        return f"tensorrt import failed: {exc}"
    try:
        check_trt_version(trt.__version__)
    except EngineError as exc:
        return str(exc)
    import torch

    if not torch.cuda.is_available():
        return "tensorrt installed but CUDA is not available"
    return "ok"


def engine_cache_key(onnx_sha256: str, input_size: tuple[int, int], precision: str, trt_version: str,
                     gpu_name: str, max_batch: int = 1) -> dict[str, str]:
    """Everything a cached plan depends on; a plan is reused only if its sidecar equals this exactly."""
    h, w = (int(v) for v in input_size)
    return {"format": str(CACHE_FORMAT), "onnx_sha256": onnx_sha256, "input_size": f"{h}x{w}",
            "precision": precision, "max_batch": str(int(max_batch)), "tensorrt": trt_version,
            "gpu": gpu_name}


def engine_cache_path(cache_dir: str | os.PathLike, key: dict[str, str]) -> Path:
    """Plan file for ``key``: readable name parts plus a hash of the whole key (sidecar: same name .json)."""
    import hashlib

    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", key["gpu"]).strip("-")[:40] or "gpu"
    name = (f"liteseg_{key['onnx_sha256'][:12]}_{key['input_size']}_{key['precision']}_b{key['max_batch']}"
            f"_trt{key['tensorrt']}_{gpu}_{digest}.engine")
    return Path(cache_dir) / name


def cached_plan(path: Path, key: dict[str, str]) -> tuple[bytes | None, str]:
    """(plan bytes, '') when ``path`` holds a plan built for exactly ``key``; (None, why not) otherwise."""
    sidecar = path.with_suffix(".json")
    if not path.is_file():
        return None, "no cached engine"
    try:
        stored = json.loads(sidecar.read_text())
    except (OSError, ValueError) as exc:
        return None, f"cache sidecar {sidecar.name} unreadable ({exc.__class__.__name__})"
    if stored != key:
        diff = sorted(k for k in set(stored) | set(key) if stored.get(k) != key.get(k))
        return None, f"cached engine built for different {', '.join(diff)}"
    data = path.read_bytes()
    if not data:
        return None, "cached engine file is empty"
    from .cache import record_problem

    problem = record_problem(path, _plan_key(key))
    if problem:  # replaced or edited since it was built: never deserialize it
        return None, problem
    return data, ""


def _plan_key(key: dict[str, str]) -> str:
    """The key a plan's record holds: the whole cache key, canonical JSON."""
    return json.dumps(key, sort_keys=True)


def write_plan(path: Path, key: dict[str, str], plan: bytes) -> None:
    """Write plan and sidecar atomically (a crash mid-write leaves no half plan behind a valid sidecar)."""
    from liteseg_ros import safe_files

    from .cache import write_record

    path.parent.mkdir(parents=True, exist_ok=True)
    for target, data in ((path, plan), (path.with_suffix(".json"), json.dumps(key, indent=1).encode())):
        safe_files.write_bytes(target, data)
    write_record(path, _plan_key(key))


def _progress_monitor(trt, log: Callable[[str], None]):
    """A trt.IProgressMonitor (same interface in 10.x and 11.x) that logs phase starts at most every 2 s."""
    base = trt.IProgressMonitor

    class _Monitor(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self._last = 0.0

        def phase_start(self, phase_name, parent_phase, num_steps):  # noqa: ANN001
            now = time.monotonic()
            if parent_phase is None or now - self._last > 2.0:
                self._last = now
                log(f"tensorrt: building engine: {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name, step):  # noqa: ANN001
            return True  # never cancel

        def phase_finish(self, phase_name):  # noqa: ANN001
            pass

    return _Monitor()


def check_file_precision(onnx_path: str | os.PathLike, precision: str) -> None:
    """EngineError unless the ONNX file carries ``precision`` in its types (TensorRT cannot change them)."""
    from .export import onnx_precision

    if precision not in ("fp32", "fp16"):
        raise EngineError(f"precision {precision!r} is not one of: fp32, fp16 (TensorRT)")
    file_precision = onnx_precision(onnx_path)
    if file_precision != precision:
        raise EngineError(f"{onnx_path} is an {file_precision} ONNX file; TensorRT builds strongly typed "
                          f"networks, so a {precision} engine needs a {precision} export "
                          f"(export_onnx(..., precision={precision!r}) or `liteseg export --precision "
                          f"{precision}`)")


def build_plan(onnx_path: Path, input_size: tuple[int, int], precision: str, max_batch: int,
               log: Callable[[str], None], workspace_bytes: int = 1 << 30) -> bytes:
    """Parse ``onnx_path`` into a strongly typed network and build a serialised plan with one profile.

    ``precision`` is only checked against the file (the file's types are what TensorRT runs): no
    precision flag is set on any version. TF32 is cleared so float32 layers are IEEE fp32 (labels
    >= 99.9 % equal to the CPU's); in an fp16 file that is the post-processing after the logits.
    """
    import tensorrt as trt

    major = check_trt_version(trt.__version__)
    check_file_precision(onnx_path, precision)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, major))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT cannot parse {onnx_path}: {errors}")
    if network.num_inputs != 1:
        raise EngineError(f"{onnx_path}: expected one input, the network has {network.num_inputs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    config.clear_flag(trt.BuilderFlag.TF32)  # on by default (Ampere+) in 10.x and 11.x
    h, w = (int(v) for v in input_size)
    profile = builder.create_optimization_profile()
    name = network.get_input(0).name
    profile.set_shape(name, (1, 3, h, w), (1, 3, h, w), (int(max_batch), 3, h, w))
    config.add_optimization_profile(profile)
    monitor = _progress_monitor(trt, log)  # a local keeps the Python object alive while TensorRT calls it
    config.progress_monitor = monitor
    log(f"tensorrt {trt.__version__}: building strongly typed {precision} engine for {h}x{w} "
        f"(batch <= {max_batch}) from {onnx_path.name}; this takes minutes once, then the cached "
        f"engine loads in seconds")
    t0 = time.monotonic()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError(f"TensorRT failed to build an engine from {onnx_path} (see TensorRT log above)")
    log(f"tensorrt: engine built in {time.monotonic() - t0:.0f} s")
    return bytes(plan)


def _gpu_name(device_index: int) -> str:
    import torch

    return torch.cuda.get_device_name(device_index)


def ensure_plan(onnx_path: str | os.PathLike, input_size: tuple[int, int], precision: str = "fp16",
                device_index: int = 0, max_batch: int = 1, cache_dir: str | os.PathLike | None = None,
                rebuild: bool = False, log: Callable[[str], None] = print) -> tuple[Path, bytes]:
    """Return (plan path, plan bytes) for the cache key, building (and caching) it when needed."""
    import tensorrt as trt

    onnx_path = Path(onnx_path)
    check_trt_version(trt.__version__)
    check_file_precision(onnx_path, precision)  # before a cached plan is trusted, too
    key = engine_cache_key(file_digest(onnx_path), input_size, precision, trt.__version__,
                           _gpu_name(device_index), max_batch)
    path = engine_cache_path(cache_dir or default_cache_dir(), key)
    plan, why = (None, "rebuild requested") if rebuild else cached_plan(path, key)
    if plan is None:
        log(f"tensorrt: {why}; building {path.name}")
        plan = build_plan(onnx_path, input_size, precision, max_batch, log)
        write_plan(path, key, plan)
    return path, plan


_TRT_TO_TORCH = {"FLOAT": "float32", "HALF": "float16", "INT32": "int32", "INT64": "int64",
                 "INT8": "int8", "UINT8": "uint8", "BOOL": "bool"}


class TensorRTEngine(Engine):
    """Runs a cached TensorRT plan built from a LiteSeg ONNX export (see module docstring)."""

    def __init__(self, onnx_path: str | os.PathLike, input_size: tuple[int, int], device: str = "cuda",
                 precision: str = "fp16", max_batch: int = 1, cache_dir: str | os.PathLike | None = None,
                 rebuild: bool = False, num_classes: int = 0, reason: str = "",
                 log: Callable[[str], None] = print) -> None:
        status = tensorrt_status()
        if status != "ok":
            raise EngineError(f"backend tensorrt unavailable: {status}")
        import tensorrt as trt
        import torch

        from .pytorch import check_cuda, parse_device

        if precision not in ("fp32", "fp16"):
            raise EngineError(f"precision {precision!r} is not one of: fp32, fp16")
        dev = parse_device(device)
        if dev.type != "cuda":
            raise EngineError(f"backend tensorrt needs device cuda or cuda:N, got {device!r}")
        check_cuda(dev)
        self.device = torch.device("cuda", dev.index or 0)
        self._torch = torch
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.max_batch = int(max_batch)
        self.num_classes = num_classes
        torch.cuda.set_device(self.device)
        plan_path, plan = ensure_plan(onnx_path, self.input_size, precision, self.device.index,
                                      self.max_batch, cache_dir, rebuild, log)
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = None
        try:
            engine = self._runtime.deserialize_cuda_engine(plan)
        except Exception as exc:  # noqa: BLE001 - corrupt plans raise or return None by version
            log(f"tensorrt: cached engine {plan_path.name} failed to load ({exc})")
        if engine is None:
            log(f"tensorrt: cached engine {plan_path.name} is corrupt or incompatible; rebuilding")
            plan_path, plan = ensure_plan(onnx_path, self.input_size, precision, self.device.index,
                                          self.max_batch, cache_dir, True, log)
            engine = self._runtime.deserialize_cuda_engine(plan)
            if engine is None:
                raise EngineError(f"TensorRT cannot load the engine it just built ({plan_path})")
        self._engine = engine
        self._context = engine.create_execution_context()
        self._inputs, self._outputs = [], []
        self._dtypes = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self._inputs if is_input else self._outputs).append(name)
            self._dtypes[name] = getattr(torch, _TRT_TO_TORCH[engine.get_tensor_dtype(name).name])
        if len(self._inputs) != 1 or "label" not in self._outputs:
            raise EngineError(f"{onnx_path}: expected one input and a 'label' output, got inputs "
                              f"{self._inputs}, outputs {self._outputs}")
        self._lock = __import__("threading").Lock()
        self.input_hw = self.input_size
        self.has_logits = "logits" in self._outputs
        self.shape_origin = "this TensorRT engine was built"
        self.info = EngineInfo("tensorrt", str(self.device), precision, reason, {
            "tensorrt": trt.__version__, "engine": str(plan_path), "gpu": _gpu_name(self.device.index),
            "max_batch": str(self.max_batch)})
        self.tensor_device = self.device

    def _infer(self, batch: np.ndarray, want_confidence: bool, want_logits: bool) -> EngineOutput:
        torch = self._torch
        with self._lock:
            x = torch.from_numpy(batch).to(self.device)
            outs = self._execute(x)
            label = outs["label"].to(torch.uint8).cpu().numpy()
            conf = None
            if want_confidence and "confidence" in outs:
                conf = outs["confidence"].float().round().clamp_(0, 255).to(torch.uint8).cpu().numpy()
            logits = outs["logits"].float().cpu().numpy() if want_logits else None
        return EngineOutput(label, conf, logits)

    def _execute(self, x):
        """Run the plan on a contiguous float32 device batch; its output tensors (on the device)."""
        torch = self._torch
        name_in = self._inputs[0]
        self._context.set_input_shape(name_in, tuple(x.shape))
        self._context.set_tensor_address(name_in, x.data_ptr())
        outs = {}
        for name in self._outputs:
            shape = tuple(self._context.get_tensor_shape(name))
            outs[name] = torch.empty(shape, dtype=self._dtypes[name], device=self.device)
            self._context.set_tensor_address(name, outs[name].data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise EngineError("TensorRT execute_async_v3 failed")
        return outs

    def _infer_tensors(self, batch, want_confidence: bool):
        """A device batch -> device uint8 label and confidence (see Engine.infer_tensors)."""
        torch = self._torch
        with self._lock:
            outs = self._execute(batch.to(self.device, torch.float32).contiguous())
            label = outs["label"].to(torch.uint8)
            conf = None
            if want_confidence and "confidence" in outs:
                conf = outs["confidence"].float().round().clamp_(0, 255).to(torch.uint8)
        return label, conf

    def close(self) -> None:
        self._context = None
        self._engine = None
        self._torch.cuda.empty_cache()
