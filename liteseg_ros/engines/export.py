"""ONNX export of a LiteSeg model with in-graph post-processing, and its verification against PyTorch.

Ring 2: imports torch, numpy, onnx and (for verification) onnxruntime; never rclpy, message
packages, or the node/bag/codec modules.

The exported graph is ``outputs.SegmentationOutputs(model)``: input ``input`` (N, 3, h, w) float32,
outputs ``label`` (N, h, w) uint8, ``confidence`` (N, h, w) uint8 and, with ``with_logits``,
``logits`` (N, C, h, w) float32. The batch axis is always dynamic; ``dynamic=True`` also frees h and
w. It uses the TorchScript-based exporter (``dynamo=False``: no onnxscript dependency) at opset 17
by default; BatchNorm is folded into the convolutions by the exporter's eval-mode constant folding.
Model facts are stored as ONNX metadata (``liteseg.*`` keys) so a runtime can check what it loads.

``precision='fp16'`` writes the same interface with the network itself in fp16 (:class:`Fp16Network`):
the precision lives in the graph's types, which is the only way TensorRT 11 (strongly typed networks
only) and ONNX Runtime's CUDA provider can run fp16 at all. :func:`onnx_precision` reads it back.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from liteseg_ros import safe_files

from .base import EngineError
from .onnx_file import onnx_metadata
from .outputs import SegmentationOutputs

DEFAULT_OPSET = 17
INPUT_NAME = "input"
#: Precisions an exported file can carry in its graph types.
ONNX_PRECISIONS = ("fp32", "fp16")


class Fp16Network(nn.Module):
    """``model`` with fp16 weights and activations between a float32 input and float32 logits.

    This is what an fp16 ONNX file holds, so that a strongly typed runtime runs the convolutions in
    fp16 without any builder flag: the input is cast to fp16 on entry, the logits back to float32,
    and the post-processing (argmax, softmax confidence) stays in float32, where ``exp`` and the sum
    over 19 classes keep their precision. BatchNorm is folded in float32 *before* rounding the
    weights, so they are rounded once. With ``fp32_tail`` (the LiteSeg classifier ``last_conv``) the
    output of that layer is cast to float32 and the final bilinear upsampling to the input size also
    runs in float32; whether it is worth the extra float32 tensor is measured by
    ``benchmarks/bench_fp16_onnx.py`` (labels vs fp32 on held-out scenes with the demo weights).
    """

    def __init__(self, model: nn.Module, fp32_tail: str | None = None) -> None:
        super().__init__()
        from .pytorch import fold_bn_copy

        folded, _ = fold_bn_copy(model.eval())
        if folded is model:  # no folding available: still never touch the caller's model
            import copy

            folded = copy.deepcopy(model)
        self.model = folded.half().eval()
        self.num_classes = getattr(model, "num_classes", None)
        self.fp32_tail = fp32_tail
        if fp32_tail:
            layer = getattr(self.model, fp32_tail, None)
            if not isinstance(layer, nn.Module):
                raise EngineError(f"fp32_tail {fp32_tail!r} is not a layer of {type(model).__name__}")
            layer.register_forward_hook(lambda _m, _i, out: out.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.half()).float()


def _check_size(input_size: tuple[int, int]) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in input_size)
    except (TypeError, ValueError):
        raise EngineError(f"input_size must be (height, width), got {input_size!r}") from None
    if h < 8 or w < 8:
        raise EngineError(f"input_size must be at least 8x8, got {h}x{w}")
    return h, w


def export_onnx(model: nn.Module, path: str | os.PathLike, input_size: tuple[int, int],
                dynamic: bool = False, opset: int = DEFAULT_OPSET, with_logits: bool = False,
                uint8: bool = True, check_dynamic: bool = True, postprocess: bool = True,
                method: str = "auto", precision: str = "fp32", fp32_tail: str | None = None) -> Path:
    """Export ``SegmentationOutputs(model)`` to ``path`` and return the path.

    input_size: (h, w) traced size (the fixed size unless ``dynamic``). ``uint8=False`` exports an
    int32 label and a float32 (rounded 0..255) confidence for runtimes without uint8 casts.
    With ``dynamic`` and ``check_dynamic`` the file is run once at a second size with ONNX Runtime,
    because a forward that turns sizes into Python ints traces to a graph that only works at the
    traced size; that raises EngineError instead of writing a file that fails later.
    ``postprocess=False`` exports the bare network (one output, ``logits``) for benchmarks and tools;
    ``method`` picks the post-processing formulation (``outputs.segmentation_outputs``).
    ``precision='fp16'``: the network in fp16 inside the same float32-in / uint8-or-int32-out
    interface (:class:`Fp16Network`, ``fp32_tail`` passed on); checked by :func:`check_fp16_graph`.
    """
    if precision not in ONNX_PRECISIONS:
        raise EngineError(f"ONNX precision {precision!r} is not one of: {', '.join(ONNX_PRECISIONS)}")
    h, w = _check_size(input_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    if hasattr(model, "check_input_size"):
        try:
            model.check_input_size(h, w)
        except ValueError as exc:
            raise EngineError(str(exc)) from None
    net: nn.Module = model if precision == "fp32" else Fp16Network(model, fp32_tail)
    if postprocess:
        wrapper: nn.Module = SegmentationOutputs(net, with_confidence=True, with_logits=with_logits,
                                                 uint8=uint8, method=method).eval()
        names = wrapper.output_names()
    else:
        wrapper, names = net, ["logits"]
    axes: dict[str, dict[int, str]] = {INPUT_NAME: {0: "batch"}}
    for name in names:
        axes[name] = {0: "batch"}
    if dynamic:
        axes[INPUT_NAME].update({2: "height", 3: "width"})
        for name in names:
            axes[name].update({1: "height", 2: "width"} if name != "logits" else {2: "height", 3: "width"})
    x = torch.zeros(1, 3, h, w)
    with safe_files.fresh_path(path) as tmp:  # private, unique: several nodes may export at once
        _export_into(tmp, wrapper, x, opset, names, axes, model, h, w, dynamic, uint8, precision)
    if dynamic and check_dynamic and postprocess:
        _check_dynamic(path, h, w)
    return path


def _export_into(tmp: Path, wrapper: nn.Module, x: torch.Tensor, opset: int, names: list[str],
                 axes: dict[str, dict[int, str]], model: nn.Module, h: int, w: int, dynamic: bool,
                 uint8: bool, precision: str) -> None:
    """Export ``wrapper`` to ``tmp`` with the ``liteseg.*`` metadata and check it (fp16: its graph)."""
    import onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation and tracer warnings
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(wrapper, (x,), str(tmp), dynamo=False, opset_version=int(opset),
                              input_names=[INPUT_NAME], output_names=names, dynamic_axes=axes,
                              do_constant_folding=True)
    proto = onnx.load(str(tmp))
    meta = {
        "liteseg.num_classes": str(getattr(model, "num_classes", "")),
        "liteseg.backbone": str(getattr(model, "backbone", type(model).__name__)),
        "liteseg.input_size": f"{h}x{w}",
        "liteseg.dynamic": str(bool(dynamic)),
        "liteseg.opset": str(int(opset)),
        "liteseg.outputs": ",".join(names),
        "liteseg.uint8": str(bool(uint8)),
        "liteseg.precision": precision,
    }
    model_meta = getattr(model, "meta", None)
    if model_meta is not None and hasattr(model_meta, "mean"):
        meta["liteseg.mean"] = json.dumps(list(model_meta.mean))
        meta["liteseg.std"] = json.dumps(list(model_meta.std))
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(proto)
    if precision == "fp16":
        check_fp16_graph(proto)
    onnx.save(proto, str(tmp))


def _check_dynamic(path: Path, h: int, w: int) -> None:
    try:
        import onnxruntime as ort
    except ImportError:
        return
    h2, w2 = h + 16, w + 32  # multiples of 4 stay multiples of 4 (DarkNet19)
    so = ort.SessionOptions()
    so.log_severity_level = 4  # the failure is reported below, not as an ORT error line
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    try:
        out = sess.run(["label"], {INPUT_NAME: np.zeros((1, 3, h2, w2), np.float32)})[0]
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        raise EngineError(
            f"{path}: dynamic-size export traced at {h}x{w} fails at {h2}x{w2}: the model's forward "
            f"turns tensor sizes into Python ints, which tracing freezes. Export with a fixed size "
            f"(dynamic=False) or make the forward size-generic. ONNX Runtime said: {str(exc)[:300]}"
        ) from None
    if out.shape[-2:] != (h2, w2):
        raise EngineError(f"{path}: dynamic-size export returns {out.shape[-2:]} for a {h2}x{w2} input "
                          f"(sizes frozen at trace time); export with dynamic=False")


def _conv_weight_types(proto) -> dict[str, int]:
    """Conv node name -> ONNX element type of its weight initializer."""
    inits = {t.name: t.data_type for t in proto.graph.initializer}
    return {node.name or f"Conv#{i}": inits.get(node.input[1], 0)
            for i, node in enumerate(proto.graph.node) if node.op_type == "Conv"}


def check_fp16_graph(proto) -> None:
    """Raise EngineError unless every Conv runs in fp16: fp16 weights (and bias) and an fp16 input.

    The graph's interface is not checked here (the caller compares it with the fp32 export); this
    is the part a strongly typed runtime obeys, so a Conv left in float32 would silently run at fp32.
    """
    import onnx
    from onnx import TensorProto

    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.input,
                                                          *inferred.graph.output)}
    inits = {t.name: t.data_type for t in proto.graph.initializer}
    types.update(inits)
    bad = []
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    for node in convs:
        for name in node.input:
            if name and types.get(name) != TensorProto.FLOAT16:
                bad.append(f"{node.name or 'Conv'} input {name} "
                           f"({TensorProto.DataType.Name(types.get(name, 0))})")
    if not convs:
        raise EngineError("fp16 ONNX graph has no Conv node")
    if bad:
        raise EngineError(f"fp16 ONNX graph has {len(bad)} Conv inputs not in fp16: {'; '.join(bad[:5])}")


def onnx_precision(path: str | os.PathLike) -> str:
    """'fp16' or 'fp32': the precision the file's convolutions carry (metadata, else the weight types).

    A strongly typed runtime (TensorRT 10 with STRONGLY_TYPED, every TensorRT 11) runs exactly these
    types, so this, not a builder flag, is the precision of an engine built from the file.
    """
    import onnx
    from onnx import TensorProto

    proto = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in proto.metadata_props}
    if meta.get("liteseg.precision") in ONNX_PRECISIONS:
        return meta["liteseg.precision"]
    weights = set(_conv_weight_types(proto).values())
    return "fp16" if weights and weights <= {TensorProto.FLOAT16} else "fp32"


#: Least share of labels an fp16 export must keep equal to PyTorch fp32 (``liteseg export --precision
#: fp16`` verifies with it): half precision moves a few boundary pixels, never whole regions.
FP16_MIN_LABEL_AGREEMENT = 0.99


@dataclass
class VerifyReport:
    """How an exported/compiled engine's outputs compare with PyTorch fp32 on the same inputs."""

    size: tuple[int, int]
    label_agreement: float
    confidence_max_diff: int
    logits_max_abs_diff: float | None
    ok: bool

    def to_dict(self) -> dict:
        return asdict(self)


def compare_outputs(ref_label: np.ndarray, ref_conf: np.ndarray, label: np.ndarray, conf: np.ndarray,
                    ref_logits: np.ndarray | None = None, logits: np.ndarray | None = None,
                    min_agreement: float = 0.999, max_conf_diff: int = 2) -> VerifyReport:
    """Label agreement (fraction of identical pixels), max |confidence| difference, max |logit| difference."""
    if label.shape != ref_label.shape:
        raise EngineError(f"label shape {label.shape} != reference {ref_label.shape}")
    agreement = float(np.mean(label == ref_label))
    conf_diff = int(np.abs(conf.astype(np.int16) - ref_conf.astype(np.int16)).max()) if conf is not None else 0
    logit_diff = None
    if ref_logits is not None and logits is not None:
        logit_diff = float(np.abs(logits.astype(np.float32) - ref_logits).max())
    ok = agreement >= min_agreement and conf_diff <= max_conf_diff
    return VerifyReport(tuple(ref_label.shape[-2:]), agreement, conf_diff, logit_diff, ok)


def reference_outputs(model: nn.Module, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PyTorch fp32 eager (label, confidence, logits) on CPU: the reference every backend is held to."""
    from .outputs import segmentation_outputs

    with torch.inference_mode():
        logits = model.eval()(torch.from_numpy(batch))
        label, conf, z = segmentation_outputs(logits, True, True)
    return label.numpy(), conf.numpy(), z.numpy()


def verify_onnx(model: nn.Module, path: str | os.PathLike, sizes: list[tuple[int, int]] | None = None,
                batch: int = 2, seed: int = 0, min_agreement: float = 0.999, max_conf_diff: int = 2,
                num_threads: int | None = None) -> list[VerifyReport]:
    """Run ``path`` in ONNX Runtime (CPU) and PyTorch fp32 on the same random normal inputs.

    sizes: input sizes to check (default: the exported size). Raises EngineError on the first size
    whose label agreement is below ``min_agreement`` or confidence differs by more than
    ``max_conf_diff``; returns one report per size otherwise.
    """
    import onnxruntime as ort

    from .cpu_tuning import session_options

    meta = onnx_metadata(path)
    if sizes is None:
        if "liteseg.input_size" not in meta:
            raise EngineError(f"{path}: no liteseg.input_size metadata; pass sizes=[(h, w)]")
        sizes = [tuple(int(v) for v in meta["liteseg.input_size"].split("x"))]  # type: ignore[misc]
    sess = ort.InferenceSession(str(path), session_options(num_threads), providers=["CPUExecutionProvider"])
    out_names = [o.name for o in sess.get_outputs()]
    rng = np.random.default_rng(seed)
    reports = []
    for h, w in sizes:
        x = rng.standard_normal((batch, 3, h, w), dtype=np.float32)
        ref_label, ref_conf, ref_logits = reference_outputs(model, x)
        res = dict(zip(out_names, sess.run(out_names, {INPUT_NAME: x}), strict=True))
        rep = compare_outputs(ref_label, ref_conf, res["label"].astype(np.uint8),
                              res["confidence"].astype(np.uint8), ref_logits, res.get("logits"),
                              min_agreement, max_conf_diff)
        if not rep.ok:
            raise EngineError(f"{path}: ONNX Runtime output differs from PyTorch at {h}x{w}: label agreement "
                              f"{rep.label_agreement:.5f} (need >= {min_agreement}), confidence max diff "
                              f"{rep.confidence_max_diff} (allowed {max_conf_diff})")
        reports.append(rep)
    return reports
