"""OpenVINO engine: the fast CPU backend (fp32, bf16 where the CPU has it, int8 from a QDQ ONNX file).

Ring 2: imports numpy and (lazily) openvino; never rclpy, message packages, or the node/bag/codec
modules. Runs the same exported ONNX files as ONNX Runtime (``export.export_onnx`` with argmax and
the softmax maximum in the graph, or ``quantize.quantize_model``'s int8 QDQ file), so ``infer``
returns the uint8 ``label`` and ``confidence`` planes the pipeline expects.

Precision is OpenVINO's ``INFERENCE_PRECISION_HINT``: ``fp32`` pins ``f32`` (on CPUs with bf16
OpenVINO would otherwise pick bf16 by itself); ``bf16`` asks for ``bf16`` and needs a CPU that
reports ``BF16`` in ``OPTIMIZATION_CAPABILITIES`` (AVX512-BF16 or AMX), else it says so and runs
fp32; ``int8`` runs a quantized (QuantizeLinear/DequantizeLinear) file, with the bf16 hint for the
layers left in float when the CPU has bf16. ``LITESEG_CPU_CAPS`` (comma list, e.g. ``FP32,INT8``)
overrides what the CPU reports, to test the fallback on any machine.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from liteseg_ros import safe_files

from .base import Engine, EngineError, EngineInfo, EngineOutput

#: Environment override of the CPU's OpenVINO OPTIMIZATION_CAPABILITIES (comma separated).
CAPS_ENV = "LITESEG_CPU_CAPS"
OPENVINO_PRECISIONS = ("fp32", "bf16", "int8")


def openvino_status() -> str:
    """'ok' or why the openvino backend cannot run here."""
    try:
        import openvino  # noqa: F401
    except ImportError as exc:
        return f"openvino not installed ({exc.msg}; pip install openvino)"
    return "ok"


def cpu_capabilities(override: Iterable[str] | str | None = None) -> frozenset[str]:
    """The CPU's OpenVINO OPTIMIZATION_CAPABILITIES (``FP32``, ``INT8``, ``BF16``, ...), upper case.

    ``override`` (a comma string or names) or else the ``LITESEG_CPU_CAPS`` environment variable
    replace what the CPU reports; without either and without openvino: empty.
    """
    if override is None:
        override = os.environ.get(CAPS_ENV) or None
    if override is not None:
        names = override.split(",") if isinstance(override, str) else list(override)
        return frozenset(n.strip().upper() for n in names if n.strip())
    try:
        import openvino as ov
    except ImportError:
        return frozenset()
    return frozenset(str(c).upper() for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def cpu_capabilities_for_ranking(override: Iterable[str] | str | None = None) -> frozenset[str]:
    """:func:`cpu_capabilities`, but answered from ``/proc/cpuinfo`` while openvino is not imported.

    The CPU ``auto`` choice needs to know one thing before it builds anything: whether the CPU has
    bf16 (which CPU path ranking applies). Asking OpenVINO means importing it (~0.9 s of a start-up
    whose engine may well be ONNX Runtime). OpenVINO reports ``BF16`` exactly when the CPU has
    AVX512-BF16 or AMX-BF16, which the kernel lists as the ``avx512_bf16`` / ``amx_bf16`` flags; off
    Linux, or with openvino already imported, this is :func:`cpu_capabilities`.
    """
    import sys

    if override is not None or os.environ.get(CAPS_ENV) or "openvino" in sys.modules:
        return cpu_capabilities(override)
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
    except OSError:
        flags = None
    if flags is None:
        return cpu_capabilities(override)
    caps = {"FP32", "INT8"}
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        caps.add("BF16")
    return frozenset(caps)


def has_bf16(caps: Iterable[str] | str | None = None) -> bool:
    """True when the CPU (or the override) reports BF16."""
    return "BF16" in cpu_capabilities(caps)


def is_quantized(path: str | os.PathLike) -> bool:
    """True for an ONNX file with QuantizeLinear/DequantizeLinear nodes (a QDQ int8 model).

    Answered without importing onnx (~0.6 s at start-up) when it can be: files from
    ``quantize_model`` say so in their ``liteseg.precision`` metadata, and the op type names are
    plain strings in the protobuf, so a file whose bytes contain neither is certainly not quantized;
    any other file is parsed.
    """
    from .onnx_file import onnx_metadata

    precision = onnx_metadata(path).get("liteseg.precision")
    if precision:  # written by quantize_model
        return precision == "int8"
    if b"QuantizeLinear" not in Path(path).read_bytes():  # also a substring of DequantizeLinear
        return False
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node)


class OpenVinoEngine(Engine):
    """Runs an exported LiteSeg ONNX file with OpenVINO on the CPU.

    precision: ``fp32`` | ``bf16`` | ``int8`` (see the module docstring; bf16 without CPU support
    falls back to fp32 and says so in ``info.reason`` and the log). num_threads: exactly this many
    inference threads (``INFERENCE_NUM_THREADS``; default ``cpu_tuning.get_num_threads()``), one
    stream, latency hint. cache_dir: OpenVINO's compiled-model cache (faster later start-ups).
    caps: CPU capabilities override (tests); default :func:`cpu_capabilities`.
    The model is compiled for batch 1 at its exported size; another batch size compiles once more.
    """

    def __init__(self, onnx_path: str | os.PathLike, precision: str = "fp32", num_threads: int | None = None,
                 reason: str = "", log: Callable[[str], None] = print,
                 cache_dir: str | os.PathLike | None = None, caps: Iterable[str] | str | None = None,
                 device: str = "cpu") -> None:
        status = openvino_status()
        if status != "ok":
            raise EngineError(f"backend openvino unavailable: {status}")
        import openvino as ov

        from .cpu_tuning import get_num_threads
        from .onnx_file import onnx_metadata

        if str(device).strip().lower() != "cpu":
            raise EngineError(f"backend openvino runs on device cpu here, got device {device!r}")
        if precision not in OPENVINO_PRECISIONS:
            raise EngineError(f"precision {precision!r} is not supported by the openvino backend "
                              f"(allowed: {', '.join(OPENVINO_PRECISIONS)})")
        path = Path(onnx_path)
        if not path.is_file():
            raise EngineError(f"ONNX file not found: {path}")
        quantized = is_quantized(path)
        if precision == "int8" and not quantized:
            raise EngineError(f"{path} is not an int8 (QDQ) model; make one with `liteseg quantize` or use "
                              f"precision fp32/bf16")
        if precision != "int8" and quantized:
            raise EngineError(f"{path} is an int8 (QDQ) model; set precision: int8 (or auto)")
        cpu_caps = cpu_capabilities(caps)
        bf16_ok = "BF16" in cpu_caps
        notes = []
        if precision == "bf16" and not bf16_ok:
            msg = (f"bf16 requested but this CPU does not report BF16 (OpenVINO OPTIMIZATION_CAPABILITIES: "
                   f"{', '.join(sorted(cpu_caps)) or 'unknown'}); running fp32")
            log(f"engines: {msg}")
            notes.append(msg)
            precision = "fp32"
        hint = "bf16" if precision == "bf16" or (precision == "int8" and bf16_ok) else "f32"
        self.threads = int(num_threads) if num_threads else get_num_threads()
        self.core = ov.Core()
        if cache_dir:
            # OpenVINO writes and later loads its compiled blobs by itself, unchecked by our records, so
            # its folder is one only we can write (a planted link or a shared folder: no cache, said so).
            try:
                cache = safe_files.private_folder(Path(cache_dir) / "openvino")
            except OSError as exc:
                log(f"engines: OpenVINO's compiled-model cache is off: {exc}")
            else:
                self.core.set_property({"CACHE_DIR": str(cache)})
        self.config = {"INFERENCE_NUM_THREADS": self.threads, "INFERENCE_PRECISION_HINT": hint,
                       "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        try:
            self.model = self.core.read_model(str(path))
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises its own RuntimeError subclasses
            raise EngineError(f"OpenVINO cannot read {path}: {str(exc)[:300]}") from None
        self.output_names = [o.get_any_name() for o in self.model.outputs]
        if "label" not in self.output_names:
            raise EngineError(f"{path} has outputs {self.output_names}; expected 'label' (and 'confidence') "
                              f"from liteseg export")
        self.input_name = self.model.inputs[0].get_any_name() or "input"
        pshape = self.model.inputs[0].get_partial_shape()
        self.input_shape = [d.get_length() if d.is_static else None for d in pshape]
        self.meta = onnx_metadata(path)
        self.num_classes = int(self.meta.get("liteseg.num_classes") or 0)
        self.path = path
        self.input_hw = (self.input_shape[2], self.input_shape[3])
        self.has_logits = "logits" in self.output_names
        self.shape_origin = f"{path} was exported"
        self.log = log
        self._compiled: dict[tuple[int, ...], object] = {}
        effective = hint
        if all(v is not None for v in self.input_shape[1:]):
            # compile now: fail at start, not on the first frame; read back what OpenVINO runs
            compiled = self._request((1, *self.input_shape[1:])).get_compiled_model()
            got = compiled.get_property("INFERENCE_PRECISION_HINT")
            effective = got.to_string() if hasattr(got, "to_string") else str(got)
            if precision == "bf16" and effective == "f32":  # a capability override on a CPU without bf16
                notes.append("OpenVINO compiled f32: the CPU has no bf16 kernels")
                precision = "fp32"
        self.info = EngineInfo("openvino", "cpu", precision, "; ".join(p for p in [reason, *notes] if p), {
            "openvino": ov.get_version(), "file": str(path), "threads": str(self.threads),
            "inference_precision_hint": hint, "effective_precision": effective,
            "cpu_caps": ",".join(sorted(cpu_caps)),
            "input_shape": str(self.input_shape),
        })

    def _request(self, shape: tuple[int, ...]):
        req = self._compiled.get(shape)
        if req is None:
            try:
                model = self.model.clone()
                model.reshape({self.input_name: list(shape)})
                compiled = self.core.compile_model(model, "CPU", self.config)
            except Exception as exc:  # noqa: BLE001 - OpenVINO raises its own RuntimeError subclasses
                raise EngineError(f"OpenVINO cannot compile {self.path} for input {shape}: {str(exc)[:300]}") from None
            req = compiled.create_infer_request()
            self._compiled[shape] = req
        return req

    def _infer(self, x: np.ndarray, want_confidence: bool, want_logits: bool) -> EngineOutput:
        req = self._request(tuple(x.shape))
        req.infer({0: x}, share_inputs=True)  # outputs are copied out below: the request reuses them
        label = np.array(req.get_tensor("label").data, copy=True)
        conf = np.array(req.get_tensor("confidence").data, copy=True) if want_confidence else None
        logits = np.array(req.get_tensor("logits").data, copy=True) if want_logits else None
        return EngineOutput(label.astype(np.uint8, copy=False),
                            None if conf is None else conf.astype(np.uint8, copy=False), logits)

    def close(self) -> None:
        self._compiled.clear()
