"""int8 post-training quantization for the CPU runtimes, with a report of what it costs in labels.

Ring 2, above the pipeline: imports numpy, torch, onnx, onnxruntime (quantization), OpenCV and the pipeline/synthetic
libraries (torch, onnx and onnxruntime inside the functions that use them); never rclpy, message
packages, or the node/bag/codec modules.

How a quantized file is made (:func:`quantize_model`):

1. the bare network (logits, no post-processing) is exported to ONNX (BN folded by the exporter);
2. ONNX Runtime's ``quantize_static`` turns it into a QDQ graph: weights int8 symmetric per output
   channel, activations uint8 with percentile (default: 99.999th, robust to outliers; on the demo
   weights 98.6 % labels kept against 98.0 % with MinMax, which got worse with more calibration
   images) or MinMax/entropy ranges from calibration batches. Left in float: the classifier conv
   and the final resize (:func:`classifier_nodes`) and the first two convolutions from the input
   (:func:`input_convs`), the layers a measured per-layer sweep (:func:`layer_sensitivity`,
   ``liteseg quantize --sensitivity``) found most sensitive on the demo weights: with them float
   the label agreement at 360x640 went from 98.80 % to 99.18 % (16 held-out scenes). Calibration batches are
   made by ``Pipeline.preprocess`` (the node's own resize + normalisation) from the user's images,
   or from generated scenes when they have none;
3. the in-graph post-processing (``outputs.SegmentationOutputs``: uint8 label and confidence) is
   exported on its own and appended in float, so it is never quantized and the file has the same
   ``label``/``confidence`` outputs as every other LiteSeg ONNX file;
4. the result is held to PyTorch fp32 on held-out images (generated scenes with seeds >= 10000, or
   every 5th user image): label agreement, per-class IoU against fp32, and mIoU against the exact
   scene labels. The report is written next to the model as ``<stem>.<backend>.report.json`` and
   ``.txt``; ``create_engine`` reads the JSON to decide whether ``auto`` may use the file.

The same QDQ file runs in ONNX Runtime and in OpenVINO (which maps QDQ pairs onto its int8 kernels),
so no NNCF is needed; the report is per runtime because their int8 arithmetic differs slightly.
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from liteseg_ros import safe_files
from liteseg_ros.defaults import IMAGE_SUFFIXES
from liteseg_ros.engines.base import EngineError
from liteseg_ros.engines.cache import report_fields, report_paths
from liteseg_ros.engines.selection import CPU_BACKENDS

if TYPE_CHECKING:  # torch is imported where a function needs it: the cache look-ups below must not
    from torch import nn

#: The runtimes an int8 file is measured with: the CPU runtimes.
QUANT_BACKENDS = CPU_BACKENDS
#: First seed of generated held-out scenes (calibration uses seeds from 0).
HOLDOUT_SEED = 10000
#: Activation range percentile of the default calibration (robust to outliers, see the module docstring).
CALIB_PERCENTILE = 99.999
#: Convolutions from the input left in float by the default recipe (:func:`input_convs`).
DEFAULT_FLOAT_INPUT_CONVS = 2


# ----------------------------------------------------------------------------- data
@dataclass
class Sample:
    """One calibration / held-out image: uint8 BGR, with exact trainId labels when it was generated."""

    image: np.ndarray
    label: np.ndarray | None = None
    name: str = ""


def synthetic_samples(n: int, size: tuple[int, int], first_seed: int = 0) -> list[Sample]:
    """``n`` generated scenes at ``size`` (h, w) with seeds ``first_seed``..; image BGR + exact label."""
    from liteseg_ros.synthetic import SceneConfig, generate_scene

    cfg = SceneConfig(height=int(size[0]), width=int(size[1]))
    out = []
    for seed in range(first_seed, first_seed + int(n)):
        s = generate_scene(seed, cfg)
        out.append(Sample(s.image, s.label, f"scene seed {seed}"))
    return out


def folder_samples(folder: str | os.PathLike, limit: int | None = None) -> list[Sample]:
    """The images of ``folder`` (sorted by name; png/jpg/bmp/...), read as BGR uint8."""
    import cv2

    root = Path(folder)
    if not root.is_dir():
        raise EngineError(f"--calib: {root} is not a directory of images")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise EngineError(f"--calib: {root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    out = []
    for p in files[:limit]:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            raise EngineError(f"--calib: cannot read image {p}")
        out.append(Sample(img, None, p.name))
    return out


def split_folder(samples: Sequence[Sample]) -> tuple[list[Sample], list[Sample]]:
    """(calibration, held-out): every 5th image is held out; fewer than 5 images -> no held-out."""
    if len(samples) < 5:
        return list(samples), []
    return ([s for i, s in enumerate(samples) if i % 5 != 4], [s for i, s in enumerate(samples) if i % 5 == 4])


def reference_pipeline(model: nn.Module, size: tuple[int, int]):
    """A Pipeline around exact PyTorch fp32 (no BN folding, NCHW): its preprocess makes the batches and
    its engine gives the reference labels."""
    from liteseg_ros.classes import IMAGENET_MEAN, IMAGENET_STD, ClassTable
    from liteseg_ros.engines.pytorch import PyTorchEngine
    from liteseg_ros.pipeline import Pipeline, PipelineConfig

    meta = getattr(model, "meta", None)
    num_classes = int(getattr(model, "num_classes", 19))
    classes = getattr(meta, "classes", None) or (ClassTable.cityscapes() if num_classes == 19
                                                 else ClassTable.generic(num_classes))
    mean = tuple(getattr(meta, "mean", IMAGENET_MEAN))
    std = tuple(getattr(meta, "std", IMAGENET_STD))
    ref = PyTorchEngine(model, "cpu", "fp32", channels_last=False, fold_bn=False, log=lambda m: None)
    return Pipeline(ref, classes, PipelineConfig(network_size=tuple(size), mask_groups={}, mean=mean, std=std))


class _Reader:
    """An onnxruntime CalibrationDataReader over preprocessed images (one image per batch)."""

    def __init__(self, pipe, samples: Sequence[Sample], input_name: str) -> None:
        self.pipe, self.samples, self.input_name = pipe, list(samples), input_name
        self.i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= len(self.samples):
            return None
        batch, _ = self.pipe.preprocess([self.samples[self.i].image], "bgr")
        self.i += 1
        return {self.input_name: batch}

    def rewind(self) -> None:
        self.i = 0


# ----------------------------------------------------------------------------- graph work
def _postprocess_graph(num_classes: int, size: tuple[int, int], opset: int):
    """ONNX graph ``logits`` (N, C, h, w) float -> ``label``, ``confidence`` uint8 (outputs.py)."""
    import io
    import warnings

    import onnx
    import torch
    from torch import nn

    from liteseg_ros.engines.outputs import SegmentationOutputs

    post = SegmentationOutputs(nn.Identity(), with_confidence=True).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(post, (torch.zeros(1, num_classes, *size),), buf, dynamo=False, opset_version=opset,
                              input_names=["logits"], output_names=["label", "confidence"],
                              dynamic_axes={"logits": {0: "batch"}, "label": {0: "batch"},
                                            "confidence": {0: "batch"}})
    return onnx.load_from_string(buf.getvalue())


def attach_postprocessing(logits_model, num_classes: int, size: tuple[int, int]):
    """A ModelProto whose ``logits`` output feeds the float post-processing graph (label, confidence)."""
    import onnx
    from onnx import compose

    opset = next((o.version for o in logits_model.opset_import if o.domain in ("", "ai.onnx")), 17)
    post = _postprocess_graph(num_classes, size, max(opset, 13))
    post = compose.add_prefix(post, "post/", rename_inputs=False, rename_outputs=False)
    post.ir_version = logits_model.ir_version
    del post.opset_import[:]
    post.opset_import.extend([onnx.helper.make_opsetid("", opset)])
    return compose.merge_models(logits_model, post, io_map=[("logits", "logits")], outputs=["label", "confidence"])


def classifier_nodes(model_proto, output: str = "logits") -> list[str]:
    """Names of the nodes from the last convolution (the classifier) to ``output``: left in float so the
    19 logits are not rounded to 256 levels, which flips near-tied labels (the classifier is a 1x1
    conv with C outputs, a negligible share of the network's MACs)."""
    producers = {o: n for n in model_proto.graph.node for o in n.output}
    names, tensor = [], output
    while tensor in producers:
        node = producers[tensor]
        names.append(node.name)
        if node.op_type == "Conv":
            return names
        if not node.input:
            break
        tensor = node.input[0]
    return []


def input_convs(model_proto, n: int) -> list[str]:
    """Names of the first ``n`` convolutions from the network input (graph order is topological).

    They see the normalised image itself, whose three channels have different ranges but share one
    uint8 scale, and their rounding errors pass through every later layer: the per-layer sweep
    (:func:`layer_sensitivity`) on the demo weights at 360x640 ranked the stem conv first (+0.23
    points of label agreement when left in float) and the first depthwise conv second (+0.09),
    the next ones at <= 0.06 each. Both run at 1/2 resolution on few channels, so float costs little.
    """
    return [node.name for node in model_proto.graph.node if node.op_type == "Conv"][:max(0, int(n))]


def _calibration_options(method: str) -> tuple[Any, dict[str, Any]]:
    from onnxruntime.quantization import CalibrationMethod

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if method not in methods:
        raise EngineError(f"calibration method {method!r} is not one of: {', '.join(methods)}")
    extra: dict[str, Any] = {"ActivationSymmetric": False, "WeightSymmetric": True}
    if method == "percentile":
        extra["CalibPercentile"] = CALIB_PERCENTILE
    return methods[method], extra


def float_node_names(pre_proto, float_classifier: bool = True, float_input_convs: int = DEFAULT_FLOAT_INPUT_CONVS,
                     float_nodes: Sequence[str] = ()) -> list[str]:
    """The nodes a recipe leaves in float: classifier (+ final resize), first convs, named extras."""
    known = {n.name for n in pre_proto.graph.node}
    unknown = [n for n in float_nodes if n not in known]
    if unknown:
        convs = [n.name for n in pre_proto.graph.node if n.op_type == "Conv"]
        raise EngineError(f"--float-node: no node named {', '.join(unknown)} in the graph (convolutions: "
                          f"{', '.join(convs[:5])}, ...; `liteseg quantize --sensitivity` lists them all)")
    names = list(classifier_nodes(pre_proto)) if float_classifier else []
    for name in [*input_convs(pre_proto, float_input_convs), *float_nodes]:
        if name not in names:
            names.append(name)
    return names


def prepare_for_quantization(raw_onnx: str | os.PathLike, pre: str | os.PathLike) -> Path:
    """ONNX Runtime's pre-processing (shape inference, graph clean-up) of a logits-only export."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(raw_onnx), str(pre), skip_symbolic_shape=True)
    return Path(pre)


def quantize_logits_onnx(raw_onnx: str | os.PathLike, out: str | os.PathLike, reader: Any,
                         per_channel: bool = True, method: str = "percentile", float_classifier: bool = True,
                         float_input_convs: int = DEFAULT_FLOAT_INPUT_CONVS, float_nodes: Sequence[str] = (),
                         calibration_cache: str | os.PathLike | None = None,
                         pre_processed: bool = False) -> tuple[Path, list[str]]:
    """QDQ static quantization of a logits-only ONNX file (uint8 activations, int8 weights).

    Left in float (:func:`float_node_names`): with ``float_classifier`` the classifier conv and the
    final resize (:func:`classifier_nodes`), the first ``float_input_convs`` convolutions
    (:func:`input_convs`) and the nodes named in ``float_nodes``. ``calibration_cache``: a JSON file
    of activation ranges, written by the first call and reused by later ones with the same
    calibration (the per-layer sweep quantizes dozens of variants from one calibration).
    Returns (path, names of the float nodes).
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    calib_method, extra = _calibration_options(method)
    out = Path(out)
    pre = Path(raw_onnx) if pre_processed else prepare_for_quantization(raw_onnx, out.with_name(out.stem + ".pre.onnx"))
    exclude = float_node_names(onnx.load(str(pre)), float_classifier, float_input_convs, float_nodes)
    quantize_static(str(pre), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=calib_method, extra_options=extra, nodes_to_exclude=exclude,
                    calibration_cache_path=str(calibration_cache) if calibration_cache else None)
    if not pre_processed:
        pre.unlink(missing_ok=True)
    return out, exclude


def layer_sensitivity(model: nn.Module, input_size: tuple[int, int], calibration: Sequence[Sample],
                      holdout: Sequence[Sample], method: str = "percentile", num_threads: int | None = None,
                      float_input_convs: int = 0, float_nodes: Sequence[str] = (), limit: int | None = None,
                      log: Callable[[str], None] = print) -> dict[str, Any]:
    """Per-layer sensitivity: the label agreement with PyTorch fp32 on ``holdout`` of the int8 model
    with each convolution in turn left in float, against the baseline (only the recipe's float nodes).

    One calibration serves every variant (``calibration_cache``), and agreement is the argmax of the
    quantized logits against fp32's, so each of the ~70 variants of LiteSeg-MobileNetV2 costs a
    quantization pass and ``len(holdout)`` forwards. Returns {"baseline": agreement, "rows":
    [{"node", "agreement", "gain"}, ...] best gain first}; ``limit`` stops after that many convs.
    """
    import tempfile

    import onnx
    import onnxruntime as ort
    import torch

    from liteseg_ros.engines.export import export_onnx
    from liteseg_ros.engines.onnxruntime import session_options

    if not calibration or not holdout:
        raise EngineError("the sensitivity sweep needs calibration and held-out images")
    h, w = (int(v) for v in input_size)
    model = model.eval()
    pipe = reference_pipeline(model, (h, w))
    batches = [pipe.preprocess([s.image], "bgr")[0] for s in holdout]
    with torch.inference_mode():
        refs = [model(torch.from_numpy(b)).argmax(1).numpy() for b in batches]

    def agreement(path: Path) -> float:
        sess = ort.InferenceSession(str(path), session_options(num_threads), providers=["CPUExecutionProvider"])
        same = sum(int(np.count_nonzero(sess.run(None, {"input": b})[0].argmax(1) == r))
                   for b, r in zip(batches, refs, strict=True))
        return same / sum(r.size for r in refs)

    with tempfile.TemporaryDirectory(prefix="liteseg_sensitivity_") as tmp:
        d = Path(tmp)
        raw = export_onnx(model, d / "raw.onnx", (h, w), postprocess=False)
        pre = prepare_for_quantization(raw, d / "pre.onnx")
        proto = onnx.load(str(pre))
        cache = d / "ranges.json"
        reader = _Reader(pipe, calibration, "input")
        kw = dict(method=method, float_input_convs=float_input_convs, calibration_cache=cache, pre_processed=True)
        log(f"sensitivity: calibrating on {len(calibration)} images ({method}), baseline")
        q, base_float = quantize_logits_onnx(pre, d / "q.onnx", reader, float_nodes=float_nodes, **kw)
        base = agreement(q)
        convs = [n.name for n in proto.graph.node if n.op_type == "Conv" and n.name not in base_float]
        rows = []
        for i, name in enumerate(convs[:limit]):
            q, _ = quantize_logits_onnx(pre, d / "q.onnx", reader, float_nodes=[*float_nodes, name], **kw)
            a = agreement(q)
            rows.append({"node": name, "agreement": round(a, 6), "gain": round(a - base, 6)})
            log(f"sensitivity: {i + 1}/{len(convs[:limit])} {name}: {a:.4%} ({100 * (a - base):+.3f} points)")
    rows.sort(key=lambda r: -r["gain"])
    return {"baseline": round(base, 6), "float_nodes": base_float, "method": method,
            "calibration_images": len(calibration), "holdout_images": len(holdout), "rows": rows}


def format_sensitivity(res: dict[str, Any]) -> str:
    """The sweep as a table, most sensitive layer (largest gain when left in float) first."""
    lines = [f"per-layer sensitivity: baseline int8 label agreement {res['baseline']:.4%} "
             f"({res['calibration_images']} calibration / {res['holdout_images']} held-out images, "
             f"{res['method']}; float already: {', '.join(res['float_nodes']) or 'none'})",
             f"{'rank':>4} {'gain pts':>8} {'agree':>8}  node (left in float alone)"]
    for i, r in enumerate(res["rows"], 1):
        lines.append(f"{i:>4} {100 * r['gain']:>+8.3f} {100 * r['agreement']:>7.3f}%  {r['node']}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- report
def _mean(v: np.ndarray) -> float | None:
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else None


def compare_on_samples(engine, pipe, samples: Sequence[Sample]) -> dict[str, Any]:
    """Label agreement, per-class IoU vs fp32 and mIoU vs exact labels of ``engine`` against the
    reference engine of ``pipe`` (PyTorch fp32) on ``samples``, at network resolution."""
    import cv2

    from liteseg_ros.metrics import confusion_counts, iou_from_confusion

    n = len(pipe.classes)
    same = total = 0
    conf_diff = 0.0
    # (n, n+1): the last column counts labels outside the classes, wrong for the row's class
    m_vs_ref = np.zeros((n, n + 1), np.int64)
    m_ref_gt = np.zeros((n, n + 1), np.int64)
    m_q_gt = np.zeros((n, n + 1), np.int64)
    has_gt = all(s.label is not None for s in samples) and bool(samples)
    for s in samples:
        batch, _ = pipe.preprocess([s.image], "bgr")
        ref = pipe.engine.infer(batch)
        out = engine.infer(batch)
        same += int(np.count_nonzero(out.label == ref.label))
        total += ref.label.size
        conf_diff += float(np.abs(out.confidence.astype(np.int16) - ref.confidence.astype(np.int16)).sum())
        m_vs_ref += confusion_counts(out.label, ref.label, n)
        if has_gt:
            h, w = ref.label.shape[-2:]
            gt = s.label if s.label.shape == (h, w) else cv2.resize(s.label, (w, h),
                                                                     interpolation=cv2.INTER_NEAREST)
            m_ref_gt += confusion_counts(ref.label[0], gt, n)
            m_q_gt += confusion_counts(out.label[0], gt, n)
    iou_vs_ref = iou_from_confusion(m_vs_ref)
    iou_ref_gt, iou_q_gt = iou_from_confusion(m_ref_gt), iou_from_confusion(m_q_gt)
    per_class = []
    for c, name in enumerate(pipe.classes.names):
        px = int(m_vs_ref[c].sum())
        per_class.append({
            "class": name, "fp32_pixels": px,
            "agreement": round(float(m_vs_ref[c, c]) / px, 5) if px else None,
            "iou_vs_fp32": None if np.isnan(iou_vs_ref[c]) else round(float(iou_vs_ref[c]), 5),
            "iou_fp32_gt": None if not has_gt or np.isnan(iou_ref_gt[c]) else round(float(iou_ref_gt[c]), 5),
            "iou_int8_gt": None if not has_gt or np.isnan(iou_q_gt[c]) else round(float(iou_q_gt[c]), 5),
        })
    res: dict[str, Any] = {
        "label_agreement": round(same / max(total, 1), 6),
        "confidence_mean_abs_diff": round(conf_diff / max(total, 1), 3),
        "miou_vs_fp32": _mean(iou_vs_ref),
        "per_class": per_class,
    }
    if has_gt:
        a, b = _mean(iou_ref_gt), _mean(iou_q_gt)
        res.update({"miou_fp32_gt": a, "miou_int8_gt": b,
                    "miou_drop_points": None if a is None or b is None else round(100 * (a - b), 3)})
    return res


def format_report(rep: dict[str, Any]) -> str:
    """The text twin of the JSON report: summary lines and a per-class table."""
    lines = [f"int8 quantization report: {rep['model']}",
             f"runtime {rep['backend']} {rep.get('runtime_version', '')}, {rep['threads']} threads, input "
             f"{rep['input_size'][0]}x{rep['input_size'][1]}, reference PyTorch fp32 eager",
             f"calibration: {rep['calibration']['images']} images from {rep['calibration']['source']} "
             f"({rep['calibration']['method']}, per-channel weights)",
             f"left in float: {', '.join(rep['calibration'].get('float_nodes') or ['-'])}",
             f"held-out: {rep['holdout']['images']} images from {rep['holdout']['source']}",
             f"label agreement with fp32: {rep['label_agreement']:.4%}",
             f"confidence mean |diff|: {rep['confidence_mean_abs_diff']} / 255"]
    if rep.get("miou_vs_fp32") is not None:
        lines.append(f"mIoU of int8 against fp32 labels: {100 * rep['miou_vs_fp32']:.2f}")
    if rep.get("miou_fp32_gt") is not None:
        lines.append(f"mIoU vs exact labels: fp32 {100 * rep['miou_fp32_gt']:.2f}, int8 "
                     f"{100 * rep['miou_int8_gt']:.2f}, drop {rep['miou_drop_points']:.2f} points")
    lines.append("")
    lines.append(f"{'class':<14} {'fp32 px':>9} {'agree':>7} {'IoU/fp32':>8} {'IoU fp32':>8} {'IoU int8':>8}")

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}"

    for c in rep["per_class"]:
        lines.append(f"{c['class']:<14} {c['fp32_pixels']:>9} {pct(c['agreement']):>7} {pct(c['iou_vs_fp32']):>8} "
                     f"{pct(c['iou_fp32_gt']):>8} {pct(c['iou_int8_gt']):>8}")
    return "\n".join(lines) + "\n"


def _runtime_engine(path: Path, backend: str, num_threads: int | None, cache_dir: Any = None):
    if backend == "onnxruntime":
        from liteseg_ros.engines.onnxruntime import OnnxRuntimeEngine

        return OnnxRuntimeEngine(path, "cpu", "int8", num_threads, log=lambda m: None)
    from liteseg_ros.engines.openvino import OpenVinoEngine

    return OpenVinoEngine(path, "int8", num_threads, log=lambda m: None, cache_dir=cache_dir)


def evaluate_int8(model: nn.Module, onnx_path: str | os.PathLike, backend: str, holdout: Sequence[Sample],
                  num_threads: int | None = None, extra: dict[str, Any] | None = None,
                  write: bool = True) -> dict[str, Any]:
    """Hold ``onnx_path`` (int8) run by ``backend`` to PyTorch fp32 on ``holdout``; write the report."""
    if backend not in QUANT_BACKENDS:
        raise EngineError(f"backend {backend!r} is not one of: {', '.join(QUANT_BACKENDS)}")
    if not holdout:
        raise EngineError("no held-out images to evaluate the quantized model on")
    path = Path(onnx_path)
    meta_size = _meta_size(path)
    pipe = reference_pipeline(model, meta_size)
    engine = _runtime_engine(path, backend, num_threads)
    res = compare_on_samples(engine, pipe, holdout)
    rep = {**report_fields(path), "backend": backend,
           "precision": "int8", "runtime_version": engine.info.extra.get(backend, ""),
           "threads": int(engine.info.extra.get("threads", 0)), "input_size": list(meta_size),
           "machine": platform.machine(), "cpu_caps": engine.info.extra.get("cpu_caps", ""),
           **(extra or {}), **res}
    if "calibration" not in rep:
        from liteseg_ros.engines.onnx_file import onnx_metadata

        cal = json.loads(onnx_metadata(path).get("liteseg.calibration", "{}") or "{}")
        rep["calibration"] = {"images": cal.get("images", 0), "source": cal.get("source", "unknown"),
                              "method": cal.get("method", "unknown")}
    rep.setdefault("holdout", {"images": len(holdout), "source": "given"})
    engine.close()
    if write:
        write_report(path, backend, rep)
    return rep


def write_report(path: str | Path, backend: str, rep: dict[str, Any]) -> tuple[Path, Path]:
    """The JSON report (what ``precision: auto`` reads) and its text form beside the int8 file ``path``,
    each written the safe way; returns their paths."""
    jpath, tpath = report_paths(path, backend)
    safe_files.write_text(jpath, json.dumps(rep, indent=1))
    safe_files.write_text(tpath, format_report(rep))
    return jpath, tpath


def _meta_size(path: Path) -> tuple[int, int]:
    from liteseg_ros.engines.onnx_file import onnx_metadata

    size = onnx_metadata(path).get("liteseg.input_size")
    if not size:
        raise EngineError(f"{path}: no liteseg.input_size metadata (not a liteseg export)")
    h, w = (int(v) for v in size.split("x"))
    return h, w


def quantize_model(model: nn.Module, out: str | os.PathLike, input_size: tuple[int, int],
                   calibration: Sequence[Sample], holdout: Sequence[Sample],
                   backends: Iterable[str] = ("onnxruntime",), num_threads: int | None = None,
                   method: str = "percentile", calib_source: str = "", holdout_source: str = "",
                   log: Callable[[str], None] = print, float_input_convs: int = DEFAULT_FLOAT_INPUT_CONVS,
                   float_nodes: Sequence[str] = ()) -> tuple[Path, dict[str, dict[str, Any]]]:
    """Quantize ``model`` to an int8 QDQ ONNX file at ``out`` and write one report per runtime.

    Returns (path, {backend: report}). See the module docstring for the steps; ``float_input_convs``
    and ``float_nodes`` choose what stays float besides the classifier (:func:`quantize_logits_onnx`).
    """
    import onnx

    from liteseg_ros.engines.export import export_onnx

    backends = list(backends)
    for b in backends:
        if b not in QUANT_BACKENDS:
            raise EngineError(f"backend {b!r} is not one of: {', '.join(QUANT_BACKENDS)}")
    if not calibration:
        raise EngineError("no calibration images")
    h, w = (int(v) for v in input_size)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    num_classes = int(getattr(model, "num_classes", 0))
    if num_classes < 1:
        raise EngineError("the model has no num_classes attribute (not a LiteSeg network)")
    t0 = time.perf_counter()
    # intermediate files in a private folder beside ``out`` (mkdtemp: 0700, unpredictable name),
    # removed with everything in it even after an error: nothing is left but the finished file
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent) as work:
        tmp = Path(work)
        raw = export_onnx(model, tmp / "raw.onnx", (h, w), postprocess=False)
        pipe = reference_pipeline(model, (h, w))
        log(f"quantize: calibrating on {len(calibration)} images ({method})")
        q, kept = quantize_logits_onnx(raw, tmp / "q.onnx", _Reader(pipe, calibration, "input"),
                                       method=method, float_input_convs=float_input_convs, float_nodes=float_nodes)
        calib = {"images": len(calibration), "method": method, "source": calib_source, "float_nodes": kept}
        merged = attach_postprocessing(onnx.load(str(q)), num_classes, (h, w))
        fp_meta = {p.key: p.value for p in onnx.load(str(raw), load_external_data=False).metadata_props}
        fp_meta.update({"liteseg.outputs": "label,confidence", "liteseg.uint8": "True",
                        "liteseg.precision": "int8",
                        "liteseg.calibration": json.dumps(calib)})
        del merged.metadata_props[:]
        for k, v in fp_meta.items():
            e = merged.metadata_props.add()
            e.key, e.value = k, v
        onnx.checker.check_model(merged)
        with safe_files.fresh_path(out) as part:
            onnx.save(merged, str(part))
    for b in QUANT_BACKENDS:  # reports of an earlier file at this path are stale now
        for r in report_paths(out, b):
            r.unlink(missing_ok=True)
    log(f"quantize: wrote {out} in {time.perf_counter() - t0:.1f} s")
    extra = {"calibration": calib, "holdout": {"images": len(holdout), "source": holdout_source}}
    reports = {}
    for b in backends:
        reports[b] = evaluate_int8(model, out, b, holdout, num_threads, extra)
        log(f"quantize: {b} int8 label agreement with fp32 {reports[b]['label_agreement']:.4%} on "
            f"{len(holdout)} held-out images")
    return out, reports


#: Generated scenes (seeds from :data:`HOLDOUT_SEED`) the start-up agreement check compares on.
STARTUP_CHECK_SCENES = 2


def startup_agreement(engine, model: nn.Module, input_size: tuple[int, int]) -> tuple[float, str]:
    """``create_engine``'s agreement check (``factory.AgreementCheck``): the label agreement of a built
    bf16/int8 engine with PyTorch fp32 on :data:`STARTUP_CHECK_SCENES` generated held-out scenes."""
    res = compare_on_samples(engine, reference_pipeline(model, input_size),
                             synthetic_samples(STARTUP_CHECK_SCENES, input_size, HOLDOUT_SEED))
    return float(res["label_agreement"]), f"start-up check on {STARTUP_CHECK_SCENES} generated scenes"


def int8_path(model: Any, input_size: tuple[int, int], cache_dir: str | os.PathLike | None) -> Path:
    """Where the engine cache keeps the default-recipe int8 file of ``model`` (a module, or a
    checkpoint path: keyed by the file's hash, as the node does) at ``input_size``."""
    from liteseg_ros.engines.cache import int8_cache_path, model_key

    return int8_cache_path(model_key(model), input_size, cache_dir)
