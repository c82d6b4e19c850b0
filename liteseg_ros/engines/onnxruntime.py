"""ONNX Runtime engine: the CPU backend (fp32, or int8 from a QDQ file), and CUDA with onnxruntime-gpu
(fp32, or fp16 from the fp16 export TensorRT also builds from).

Ring 2: imports numpy and onnxruntime; never rclpy, message packages, or the node/bag/codec modules.
Runs a file from ``export.export_onnx`` whose graph already contains argmax and the softmax
maximum, so ``infer`` only fetches the uint8 outputs it was asked for. Opening a file imports
neither torch nor onnx (metadata comes from the session): the warm start of a node is short.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .base import Engine, EngineError, EngineInfo, EngineOutput
from .cpu_tuning import session_options  # noqa: F401 - also imported from here by the tools
from .selection import is_cuda, parse_device


class OnnxRuntimeEngine(Engine):
    """Runs an exported LiteSeg ONNX file with ONNX Runtime.

    device ``cpu`` uses the CPU execution provider; ``cuda[:N]`` needs ``CUDAExecutionProvider``
    (onnxruntime-gpu). fp32, ``int8`` for a QDQ file from ``quantize.quantize_model`` (CPU), or
    ``fp16`` for a file from ``export_onnx(precision='fp16')`` (CUDA); the precision must match the
    file, because ONNX Runtime runs the graph's own types (there is no precision switch to set).
    On the CPU an fp16 file is refused: it runs, but through inserted casts and slower than fp32.
    """

    def __init__(self, onnx_path: str | os.PathLike, device: str = "cpu", precision: str = "fp32",
                 num_threads: int | None = None, reason: str = "",
                 log: Callable[[str], None] = print) -> None:
        import onnxruntime as ort

        d = parse_device(device)
        on_cuda = is_cuda(d)
        if precision not in ("fp32", "int8", "fp16") or (precision == "fp16" and not on_cuda):
            raise EngineError(f"precision {precision!r} is not supported by the onnxruntime backend on "
                              f"{d} (allowed: fp32, int8 on cpu; fp32, fp16 on cuda); use openvino for bf16")
        path = Path(onnx_path)
        if not path.is_file():
            raise EngineError(f"ONNX file not found: {path}")
        if on_cuda:  # fp32 and fp16 graphs run only as exported (CPU runs fp32 and int8 files alone)
            from .export import onnx_precision

            found = "int8" if precision == "int8" else onnx_precision(path)
            if precision != "int8" and found != precision:
                raise EngineError(f"{path} is an {found} ONNX file, precision {precision} requested "
                                  f"(export with precision={precision!r}, or set precision: auto)")
        if d == "cpu":
            providers: list = ["CPUExecutionProvider"]
        else:
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise EngineError(f"device {device!r} with backend onnxruntime needs onnxruntime-gpu "
                                  f"(available providers: {', '.join(ort.get_available_providers())})")
            providers = [("CUDAExecutionProvider", {"device_id": int(d[5:] or 0) if ":" in d else 0})]
        so = session_options(num_threads)
        try:
            self.session = ort.InferenceSession(str(path), so, providers=providers)
        except Exception as exc:  # noqa: BLE001 - ORT has its own exception hierarchy
            raise EngineError(f"ONNX Runtime cannot load {path}: {exc}") from None
        self.meta = {k: v for k, v in self.session.get_modelmeta().custom_metadata_map.items()
                     if k.startswith("liteseg.")}
        if not on_cuda and self.meta.get("liteseg.precision", "fp32") != "fp32" and precision != "int8":
            # our export records its precision; reading it here costs no onnx import on the warm path
            raise EngineError(f"{path} is an {self.meta['liteseg.precision']} ONNX file, precision {precision} "
                              "requested (onnxruntime runs it on CUDA only: export with precision='fp32' for the "
                              "CPU, or use backend openvino, which runs an fp16 file on the CPU)")
        from .openvino import is_quantized

        if is_quantized(path) != (precision == "int8"):
            raise EngineError(f"{path} is an int8 (QDQ) model; set precision: int8 (or auto)" if precision != "int8"
                              else f"{path} is not an int8 (QDQ) model; make one with `liteseg quantize`")
        self.output_names = [o.name for o in self.session.get_outputs()]
        if "label" not in self.output_names:
            raise EngineError(f"{path} has outputs {self.output_names}; expected 'label' (and 'confidence') "
                              f"from liteseg export")
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = list(inp.shape)  # ints for fixed axes, names for dynamic ones
        self.num_classes = int(self.meta.get("liteseg.num_classes") or 0)
        self.path = path
        fixed = [v if isinstance(v, int) else None for v in self.input_shape[2:4]]
        self.input_hw = (fixed[0], fixed[1])
        self.has_logits = "logits" in self.output_names
        self.shape_origin = f"{path} was exported"
        self.info = EngineInfo("onnxruntime", d, precision, reason, {
            "onnxruntime": ort.__version__, "file": str(path),
            "threads": str(so.intra_op_num_threads), "input_shape": str(self.input_shape),
        })

    def _infer(self, x: np.ndarray, want_confidence: bool, want_logits: bool) -> EngineOutput:
        names = ["label"]
        if want_confidence:
            names.append("confidence")
        if want_logits:
            names.append("logits")
        res = dict(zip(names, self.session.run(names, {self.input_name: x}), strict=True))
        return EngineOutput(res["label"], res.get("confidence"), res.get("logits"))

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]
