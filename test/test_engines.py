"""Tests of liteseg_ros.engines: every backend against PyTorch fp32, export, auto choice, errors, caches, CLI.

Small sizes (96x160) and one seeded random-weight LiteSeg-MobileNetV2 whose BN statistics were
calibrated so labels vary over the image (a fresh network is nearly constant and would prove little).
GPU/TensorRT tests skip with a reason where CUDA or TensorRT is missing.
The random model, its batch and the one-thread pin are conftest.py's ``model``, ``batch`` and
``one_torch_thread`` fixtures, shared by the two engine test modules.
"""
from __future__ import annotations

import argparse
import json
import platform

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from liteseg_ros.commands.engines import add_bench_parser, add_export_parser
from liteseg_ros.engines import (
    CPU_DEFAULT_BACKEND,
    EngineError,
    available_backends,
    create_engine,
)
from liteseg_ros.engines.cpu_tuning import get_num_threads, set_num_threads, tune_malloc
from liteseg_ros.engines.export import export_onnx, reference_outputs, verify_onnx
from liteseg_ros.engines.onnx_file import onnx_metadata
from liteseg_ros.engines.onnxruntime import OnnxRuntimeEngine
from liteseg_ros.engines.outputs import SegmentationOutputs, segmentation_outputs
from liteseg_ros.engines.pytorch import PyTorchEngine
from liteseg_ros.engines.tensorrt import (
    TensorRTEngine,
    cached_plan,
    engine_cache_key,
    engine_cache_path,
    tensorrt_status,
    write_plan,
)
from liteseg_ros.tools.bench import bench_engine, format_table, random_weight_model, summarize

H, W = 96, 160  #: network input of the engine tests (conftest's ``batch`` reads it)
pytestmark = pytest.mark.usefixtures("one_torch_thread")
HAS_CUDA = torch.cuda.is_available()
TRT_STATUS = tensorrt_status()


def needs_cuda(fn):
    """Marked ``gpu`` (``pytest -m gpu`` runs them on a GPU machine) and skipped without CUDA."""
    return pytest.mark.gpu(pytest.mark.skipif(not HAS_CUDA, reason="CUDA not available")(fn))


def needs_trt(fn):
    """Marked ``gpu`` and skipped unless TensorRT can build engines here."""
    return pytest.mark.gpu(pytest.mark.skipif(TRT_STATUS != "ok", reason=f"TensorRT unusable: {TRT_STATUS}")(fn))


#: fp16 tolerance (stated in the issue): labels identical on >= 99% of pixels and confidence within
#: +-3 on >= 99.9% of pixels, against PyTorch fp32 with the trained demo weights on held-out scenes.
FP16_MIN_AGREEMENT = 0.99
FP16_CONF_TOL = 3


@pytest.fixture(scope="module")
def reference(model, batch):
    return reference_outputs(model, batch)


@pytest.fixture(scope="module")
def onnx_fixed(model, tmp_path_factory):
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "fixed.onnx", (H, W), with_logits=True)


@pytest.fixture(scope="module")
def demo_model() -> nn.Module:
    """The trained demo weights: fp16 tolerances are judged on them, because a random-weight network's
    logits have near-ties everywhere (fp16 flips ~6 % of its labels while it flips ~0.02 % of a trained one's)."""
    from liteseg_ros.model import load_checkpoint
    from liteseg_ros.runtime import demo_weights_path

    return load_checkpoint(demo_weights_path()).eval()


@pytest.fixture(scope="module")
def demo_batch() -> np.ndarray:
    """Two held-out generated scenes (seeds never trained on), normalised as the demo weights expect."""
    from liteseg_ros.classes import IMAGENET_MEAN, IMAGENET_STD
    from liteseg_ros.synthetic import SceneConfig, generate_scene

    rgb = np.stack([generate_scene(seed, SceneConfig(height=H, width=W)).image[:, :, ::-1]
                    for seed in (10000, 10001)]).astype(np.float32) / 255.0
    return np.ascontiguousarray(((rgb - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)).transpose(0, 3, 1, 2))


@pytest.fixture(scope="module")
def demo_reference(demo_model, demo_batch):
    return reference_outputs(demo_model, demo_batch)


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a == b))


def _conf_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16))


# ----------------------------------------------------------------------------- post-processing
def test_reference_model_is_not_degenerate(reference):
    label, conf, _ = reference
    assert len(np.unique(label)) >= 8, "random-weight model should predict many classes"
    assert conf.min() < conf.max()


@pytest.mark.parametrize("method", ["planes", "reduce"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_segmentation_outputs_match_softmax_definition(method, channels_last):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 19, 8, 12, generator=g) * 3
    logits[0, 4, 0, 0] = logits[0, 7, 0, 0] = 100.0  # a tie: first index wins, as torch.argmax
    if channels_last:
        logits = logits.contiguous(memory_format=torch.channels_last)
    label, conf, z = segmentation_outputs(logits, True, True, method=method)
    assert label.dtype == torch.uint8 and conf.dtype == torch.uint8 and z.dtype == torch.float32
    assert torch.equal(label.long(), logits.argmax(1))
    assert label[0, 0, 0] == 4
    want = torch.round(logits.softmax(1).amax(1) * 255).to(torch.uint8)
    diff = (conf.int() - want.int()).abs()
    assert diff.max() <= 1 and (diff == 0).float().mean() >= 0.99
    assert conf[0, 0, 0] == 128  # two equal maxima: softmax max 0.5 -> 127.5 -> 128


def test_segmentation_outputs_int32_mode_and_class_limit(model):
    z = torch.randn(1, 5, 4, 4)
    for method in ("planes", "reduce"):
        label, conf = segmentation_outputs(z, True, False, uint8=False, method=method)
        assert label.dtype == torch.int32 and conf.dtype == torch.float32
        assert torch.equal(label.long(), z.argmax(1))
    with pytest.raises(ValueError, match="planes or reduce"):
        segmentation_outputs(z, method="fast")
    assert SegmentationOutputs(model, with_logits=True).output_names() == ["label", "confidence", "logits"]
    big = nn.Conv2d(3, 300, 1)
    big.num_classes = 300
    with pytest.raises(ValueError, match="at most 256"):
        SegmentationOutputs(big)


# ----------------------------------------------------------------------------- pytorch
def test_pytorch_engine_exact_without_optimisations(model, batch, reference):
    eng = PyTorchEngine(model, "cpu", "fp32", channels_last=False, fold_bn=False)
    out = eng.infer(batch, want_logits=True)
    assert out.label.dtype == np.uint8 and out.label.shape == (2, H, W)
    np.testing.assert_array_equal(out.label, reference[0])
    np.testing.assert_array_equal(out.confidence, reference[1])
    assert out.logits.shape == (2, 19, H, W) and out.logits.flags.c_contiguous


def test_pytorch_engine_channels_last_folded_matches_raw_argmax(model, batch, reference):
    eng = PyTorchEngine(model, "cpu", "fp32")
    assert eng.info.extra["fold_bn"] == "folded" and eng.info.extra["channels_last"] == "True"
    out = eng.infer(batch)
    assert _agreement(out.label, reference[0]) >= 0.999
    assert _conf_diff(out.confidence, reference[1]).max() <= 2
    assert out.logits is None
    assert eng.infer(batch, want_confidence=False).confidence is None
    assert next(model.parameters()).requires_grad  # the caller's model is not modified


# ----------------------------------------------------------------------------- onnx / onnxruntime
def test_onnx_file_states_opset_outputs_and_metadata(onnx_fixed):
    proto = onnx.load(str(onnx_fixed))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert [o.name for o in proto.graph.output] == ["label", "confidence", "logits"]
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    meta = onnx_metadata(onnx_fixed)
    assert meta["liteseg.num_classes"] == "19" and meta["liteseg.input_size"] == f"{H}x{W}"
    assert meta["liteseg.backbone"] == "mobilenetv2"


def test_onnxruntime_matches_pytorch(onnx_fixed, batch, reference):
    eng = OnnxRuntimeEngine(onnx_fixed, "cpu", "fp32", num_threads=1)
    out = eng.infer(batch, want_logits=True)
    assert out.label.dtype == np.uint8 and out.confidence.dtype == np.uint8
    assert _agreement(out.label, reference[0]) >= 0.999
    assert _conf_diff(out.confidence, reference[1]).max() <= 2
    np.testing.assert_allclose(out.logits, reference[2], atol=1e-3)
    assert eng.num_classes == 19
    with pytest.raises(EngineError, match=f"exported for {H}x{W}"):
        eng.infer(np.zeros((1, 3, H + 8, W), np.float32))
    with pytest.raises(EngineError, match=r"\(N, 3, h, w\)"):
        eng.infer(np.zeros((3, H, W), np.float32))


def test_verify_onnx_passes_and_catches_a_wrong_model(model, onnx_fixed):
    reports = verify_onnx(model, onnx_fixed, num_threads=1)
    assert reports[0].ok and reports[0].label_agreement >= 0.999 and reports[0].logits_max_abs_diff < 1e-3
    other = random_weight_model("mobilenetv2", 19, seed=5)
    with pytest.raises(EngineError, match="label agreement"):
        verify_onnx(other, onnx_fixed, num_threads=1)


def test_dynamic_onnx_matches_fixed_at_the_traced_size(model, onnx_fixed, batch, tmp_path):
    dyn = export_onnx(model, tmp_path / "dyn.onnx", (H, W), dynamic=True, check_dynamic=False)
    assert [d.dim_param for d in onnx.load(str(dyn)).graph.input[0].type.tensor_type.shape.dim] == [
        "batch", "", "height", "width"]
    fixed_out = OnnxRuntimeEngine(onnx_fixed, num_threads=1).infer(batch)
    dyn_out = OnnxRuntimeEngine(dyn, num_threads=1).infer(batch)
    np.testing.assert_array_equal(dyn_out.label, fixed_out.label)
    assert _conf_diff(dyn_out.confidence, fixed_out.confidence).max() <= 1


def test_dynamic_onnx_runs_other_sizes(model, tmp_path):
    dyn = export_onnx(model, tmp_path / "dyn.onnx", (H, W), dynamic=True)
    reports = verify_onnx(model, dyn, sizes=[(64, 128), (H + 32, W + 64)], batch=1, num_threads=1)
    assert all(r.ok for r in reports)


def test_dynamic_export_of_a_size_freezing_model_is_refused(tmp_path):
    class Frozen(nn.Module):  # turns sizes into Python ints, as tracing cannot follow
        num_classes = 4

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)

        def forward(self, x):
            h, w = int(x.shape[-2]), int(x.shape[-1])
            return nn.functional.interpolate(self.conv(x), size=(h, w), mode="bilinear")

    with pytest.raises(EngineError, match="dynamic-size export"):
        export_onnx(Frozen().eval(), tmp_path / "frozen.onnx", (32, 48), dynamic=True)


def test_onnxruntime_without_logits_output_says_so(model, tmp_path, batch):
    path = export_onnx(model, tmp_path / "nologits.onnx", (H, W))
    eng = OnnxRuntimeEngine(path, num_threads=1)
    assert eng.infer(batch).logits is None
    with pytest.raises(EngineError, match="without logits"):
        eng.infer(batch, want_logits=True)


# ----------------------------------------------------------------------------- create_engine
def test_auto_on_cpu_picks_cpu_default_with_reason(model, tmp_path, batch, reference):
    logs: list[str] = []
    eng = create_engine(model, "auto", "cpu", "fp32", (H, W), num_threads=1, cache_dir=tmp_path, log=logs.append)
    assert eng.info.backend == CPU_DEFAULT_BACKEND
    assert eng.info.reason.startswith("auto: CPU default") and "faster" in eng.info.reason
    assert any(eng.info.reason in m for m in logs)
    assert _agreement(eng.infer(batch).label, reference[0]) >= 0.999
    # the exported file is cached by weights and size and reused
    assert len(list((tmp_path / "onnx").glob("*.onnx"))) == 1
    create_engine(model, "auto", "cpu", "fp32", (H, W), cache_dir=tmp_path, log=logs.append, warmup=False)
    assert sum("exporting" in m for m in logs) == 1


def test_warm_start_imports_no_torch_and_a_changed_checkpoint_is_exported_again(tiny_checkpoint, tmp_path):
    """A second start with the cache the first one filled takes the checkpoint's metadata and the
    ONNX file from the cache: torch (and onnx, openvino) are never imported, the labels are the same."""
    import shutil

    from conftest import start_runtime

    from liteseg_ros.model import save_checkpoint

    weights = tmp_path / "w.pt"
    shutil.copy(tiny_checkpoint, weights)
    cold = start_runtime(weights, tmp_path / "cache")
    assert cold["torch"] and cold["engine"] == ["onnxruntime", "fp32"]
    assert any("exporting" in m and "cold start" in m for m in cold["logs"]), cold["logs"]
    warm = start_runtime(weights, tmp_path / "cache")
    assert not warm["torch"] and not warm["onnx"] and not warm["openvino"], warm
    assert warm["engine"] == ["onnxruntime", "fp32"] and not any("exporting" in m for m in warm["logs"])
    assert any("metadata from the engine cache" in m for m in warm["logs"])
    assert (warm["label"], warm["classes"], warm["name"]) == (cold["label"], cold["classes"], "tiny-random")
    # new content at the same path: a new key, so the stale export is not used
    save_checkpoint(random_weight_model(seed=5), weights)
    again = start_runtime(weights, tmp_path / "cache")
    assert again["torch"] and any("exporting" in m for m in again["logs"]) and again["label"] != cold["label"]
    assert len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 2


def test_auto_fp16_on_cpu_falls_back_to_fp32_with_reason(model, tmp_path):
    eng = create_engine(model, "auto", "cpu", "fp16", (H, W), cache_dir=tmp_path, log=lambda m: None,
                        warmup=False)
    assert eng.info.precision == "fp32" and "fp16" in eng.info.reason


def test_an_fp16_onnx_file_on_the_cpu_under_auto_says_what_is_true(model, tmp_path, batch, reference):
    """onnxruntime's CPU provider cannot run an fp16 graph: under auto the plan passes it over saying so
    and OpenVINO (which reads fp16 weights and computes at fp32) runs the file; asked of onnxruntime
    by name, the refusal names that reason and the ways out, not "set precision: auto"."""
    pytest.importorskip("openvino")
    f16 = export_onnx(model, tmp_path / "f16.onnx", (H, W), precision="fp16")
    eng = create_engine(f16, "auto", "cpu", "auto", (H, W), cache_dir=tmp_path, log=lambda m: None)
    assert (eng.info.backend, eng.info.precision) == ("openvino", "fp32"), eng.info
    assert "fp32 requested" not in eng.info.reason
    assert "onnxruntime fp32: the given ONNX file is fp16, which onnxruntime runs on CUDA only" in eng.info.reason
    assert _agreement(eng.infer(batch).label, reference[0]) >= 0.95  # a random network's near-ties at fp16
    with pytest.raises(EngineError, match="no CPU path for backend onnxruntime.*fp16, which onnxruntime runs on "
                                          "CUDA only"):
        create_engine(f16, "onnxruntime", "cpu", "auto", (H, W), cache_dir=tmp_path, log=lambda m: None)
    with pytest.raises(EngineError, match="fp16 ONNX file, precision fp32 requested \\(onnxruntime runs it on "
                                          "CUDA only.*backend openvino"):
        create_engine(f16, "onnxruntime", "cpu", "fp32", (H, W), cache_dir=tmp_path, log=lambda m: None)


@pytest.mark.skipif(HAS_CUDA, reason="checks the no-CUDA fallback")
def test_auto_cuda_without_cuda_falls_back_to_cpu(model, tmp_path):
    eng = create_engine(model, "auto", "cuda", "fp16", (H, W), cache_dir=tmp_path, log=lambda m: None,
                        warmup=False)
    assert eng.info.device == "cpu" and "CUDA is not available" in eng.info.reason


def test_onnx_file_input_and_pytorch_backend_choice(model, onnx_fixed, batch, reference):
    eng = create_engine(onnx_fixed, "onnxruntime", input_size=(H, W), log=lambda m: None)
    assert _agreement(eng.infer(batch).label, reference[0]) >= 0.999
    assert create_engine(model, "pytorch", input_size=(H, W), log=lambda m: None).info.backend == "pytorch"
    with pytest.raises(EngineError, match="not an ONNX file"):
        create_engine(onnx_fixed, "pytorch", log=lambda m: None)


def test_int8_without_a_cached_file_starts_on_another_path_and_warns(model, tmp_path):
    """No quantization inside create_engine (it took most of a minute before the first frame): without
    the int8 file the engine starts at once on the best non-int8 path and says how to make the file."""
    warnings: list[str] = []
    logs: list[str] = []
    eng = create_engine(model, "onnxruntime", "cpu", "int8", (H, W), num_threads=1, cache_dir=tmp_path,
                        log=logs.append, warn=warnings.append, warmup=False)
    assert (eng.info.backend, eng.info.precision) == ("onnxruntime", "fp32")
    assert len(warnings) == 1 and "run `liteseg quantize --weights" in warnings[0] and f"--size {H}x{W}" in warnings[0]
    assert "no int8 model in the cache" in eng.info.reason
    assert not (tmp_path / "int8").exists() and not any("quantizing" in m for m in logs)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"backend": "openvino2"}, "auto, pytorch, onnxruntime, tensorrt"),
    ({"precision": "int4"}, "fp32, fp16"),
    ({"device": "gpu"}, "cpu, cuda, cuda:N"),
    ({"device": "cuda:x"}, "cpu, cuda, cuda:N"),
    ({"backend": "pytorch", "precision": "fp16"}, "fp16' needs a CUDA device"),
    ({"backend": "onnxruntime", "precision": "fp16"}, "allowed: fp32"),
])
def test_create_engine_rejects_bad_arguments(model, tmp_path, kwargs, match):
    with pytest.raises(EngineError, match=match):
        create_engine(model, input_size=(H, W), cache_dir=tmp_path, log=lambda m: None, **kwargs)


def test_missing_weights_and_unavailable_tensorrt_are_engine_errors(model, tmp_path):
    with pytest.raises(EngineError, match="weights file not found"):
        create_engine(tmp_path / "nope.pth", "pytorch", log=lambda m: None)
    if TRT_STATUS != "ok":
        assert available_backends()["tensorrt"] == TRT_STATUS
        with pytest.raises(EngineError, match="tensorrt.*unavailable"):
            create_engine(model, "tensorrt", "cuda", "fp16", (H, W), cache_dir=tmp_path, log=lambda m: None)
        with pytest.raises(EngineError, match="unavailable"):
            TensorRTEngine(tmp_path / "x.onnx", (H, W))
    if not HAS_CUDA:
        with pytest.raises(EngineError, match="CUDA is not available"):
            create_engine(model, "pytorch", "cuda", "fp32", (H, W), log=lambda m: None)


# ----------------------------------------------------------------------------- TensorRT cache logic
def test_trt_cache_key_and_path_depend_on_every_field(tmp_path):
    base = ("ab" * 32, (360, 640), "fp16", "10.3.0", "NVIDIA GeForce RTX 4090", 1)
    key = engine_cache_key(*base)
    path = engine_cache_path(tmp_path, key)
    assert path.parent == tmp_path and path.suffix == ".engine"
    assert "360x640" in path.name and "fp16" in path.name and "NVIDIA-GeForce-RTX-4090" in path.name
    variants = [("cd" * 32, *base[1:]), (base[0], (360, 648), *base[2:]), (*base[:2], "fp32", *base[3:]),
                (*base[:3], "10.4.0", *base[4:]), (*base[:4], "NVIDIA H100", 1), (*base[:5], 4)]
    paths = {engine_cache_path(tmp_path, engine_cache_key(*v)) for v in variants}
    assert len(paths) == len(variants) and path not in paths


def test_trt_cached_plan_rejects_missing_mismatched_corrupt_and_empty(tmp_path):
    key = engine_cache_key("ab" * 32, (96, 160), "fp16", "10.3.0", "GPU", 1)
    path = engine_cache_path(tmp_path, key)
    assert cached_plan(path, key) == (None, "no cached engine")
    write_plan(path, key, b"plan-bytes")
    assert cached_plan(path, key) == (b"plan-bytes", "")
    other = dict(key, precision="fp32", gpu="Other")
    plan, why = cached_plan(path, other)
    assert plan is None and "gpu" in why and "precision" in why
    path.with_suffix(".json").write_text("{not json")
    plan, why = cached_plan(path, key)
    assert plan is None and "unreadable" in why
    write_plan(path, key, b"")
    assert cached_plan(path, key) == (None, "cached engine file is empty")
    assert not list(tmp_path.glob("*.tmp*"))


# ----------------------------------------------------------------------------- fp16 numerics on the CPU
def _fp16_outputs(model: nn.Module, x: torch.Tensor, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """The GPU fp16 paths' arithmetic, run on the CPU (slowly) so CI checks the tolerance without a GPU.

    ``autocast``: what PyTorchEngine(precision='fp16') runs (BN folded, channels_last, fp16 autocast,
    post-processing in float32). ``half``: every weight and activation in fp16, as a TensorRT fp16
    engine may choose; stricter than autocast.
    """
    from liteseg_ros.engines.pytorch import fold_bn_copy

    folded, _ = fold_bn_copy(model.eval())
    with torch.inference_mode():
        if mode == "autocast":
            folded = folded.to(memory_format=torch.channels_last)
            with torch.autocast(device_type="cpu", dtype=torch.float16):
                z = folded(x.contiguous(memory_format=torch.channels_last))
        else:
            z = folded.half()(x.half())
        label, conf = segmentation_outputs(z.float())
    return label.numpy(), conf.numpy()


@pytest.mark.parametrize("mode", ["autocast", "half"])
def test_fp16_numerics_within_tolerance_on_cpu(demo_model, demo_batch, demo_reference, mode):
    """The fp16 arithmetic of the GPU paths, run on the CPU, stays within the stated fp16 tolerance of fp32."""
    label, conf = _fp16_outputs(demo_model, torch.from_numpy(demo_batch), mode)
    agreement = _agreement(label, demo_reference[0])
    print(f"\nfp16 {mode} on demo weights, held-out scenes: labels {100 * agreement:.3f} % equal, "
          f"confidence |diff| max {_conf_diff(conf, demo_reference[1]).max()}")
    assert agreement >= FP16_MIN_AGREEMENT
    assert np.mean(_conf_diff(conf, demo_reference[1]) <= FP16_CONF_TOL) >= 0.999


# ----------------------------------------------------------------------------- GPU (skip without CUDA)
@needs_cuda
def test_pytorch_cuda_fp32_and_fp16(model, batch, reference, demo_model, demo_batch, demo_reference):
    out32 = PyTorchEngine(model, "cuda", "fp32").infer(batch)  # IEEE fp32 (TF32 off): near-ties agree too
    assert _agreement(out32.label, reference[0]) >= 0.999
    assert _conf_diff(out32.confidence, reference[1]).max() <= 2
    out16 = PyTorchEngine(demo_model, "cuda", "fp16").infer(demo_batch)
    assert _agreement(out16.label, demo_reference[0]) >= FP16_MIN_AGREEMENT
    assert np.mean(_conf_diff(out16.confidence, demo_reference[1]) <= FP16_CONF_TOL) >= 0.999


@needs_cuda
def test_auto_on_cuda_prefers_tensorrt_else_pytorch(model, tmp_path):
    eng = create_engine(model, "auto", "cuda", "fp16", (H, W), cache_dir=tmp_path, log=lambda m: None)
    assert eng.info.backend == ("tensorrt" if TRT_STATUS == "ok" else "pytorch")
    assert eng.info.reason.startswith("auto")


@needs_trt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_matches_pytorch(model, batch, reference, demo_model, demo_batch, demo_reference, tmp_path,
                                  precision):
    if precision == "fp16":  # fp16 is judged on trained weights (see demo_model)
        model, batch, reference = demo_model, demo_batch, demo_reference
    msgs: list[str] = []
    eng = create_engine(model, "tensorrt", "cuda", precision, (H, W), cache_dir=tmp_path, log=msgs.append,
                        max_batch=2)
    assert any("building" in m for m in msgs)  # progress reported
    out = eng.infer(batch)
    assert out.label.dtype == np.uint8 and out.confidence.dtype == np.uint8
    tol_agree, tol_conf = (0.999, 2) if precision == "fp32" else (FP16_MIN_AGREEMENT, FP16_CONF_TOL)
    assert _agreement(out.label, reference[0]) >= tol_agree
    assert np.mean(_conf_diff(out.confidence, reference[1]) <= tol_conf) >= 0.999


@needs_trt
def test_tensorrt_rebuilds_a_corrupt_cached_engine(model, batch, reference, tmp_path):
    eng = create_engine(model, "tensorrt", "cuda", "fp32", (H, W), cache_dir=tmp_path, log=lambda m: None)
    plan = eng.info.extra["engine"]
    eng.close()
    with open(plan, "r+b") as f:  # keep the sidecar, corrupt the plan
        f.seek(64)
        f.write(b"\x00garbage" * 64)
    msgs: list[str] = []
    eng = create_engine(model, "tensorrt", "cuda", "fp32", (H, W), cache_dir=tmp_path, log=msgs.append)
    assert any("rebuild" in m for m in msgs)
    assert _agreement(eng.infer(batch).label, reference[0]) >= 0.999


# ----------------------------------------------------------------------------- cpu tuning
def test_cpu_tuning_threads_and_malloc():
    assert set_num_threads(1) == 1 and torch.get_num_threads() == 1 and get_num_threads() == 1
    with pytest.raises(ValueError, match="num_threads"):
        set_num_threads(0)
    with pytest.raises(ValueError, match="glibc's cap"):
        tune_malloc(mmap_threshold=64 * 1024 * 1024)
    applied = tune_malloc()
    assert applied == (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")


# ----------------------------------------------------------------------------- bench + CLI
def test_time_interleaved_blocks_discard_the_first_call_after_a_switch():
    import time as _time

    from liteseg_ros.tools.bench import time_interleaved

    calls: list[str] = []

    def make(name: str, first_ms: float):
        def fn() -> None:
            # the first call of each block is slow, as after another runtime's spinning threads
            slow = not calls or calls[-1] != name
            calls.append(name)
            _time.sleep((first_ms if slow else 1.0) / 1e3)
        return fn

    times = time_interleaved([make("a", 40.0), make("b", 40.0)], warmup=0, iters=5, log=lambda m: None, block=3)
    assert [len(t) for t in times] == [5, 5]
    assert all(max(t) < 20.0 for t in times), times  # the slow switch calls were discarded
    assert calls[:6] == ["a"] * 3 + ["b"] * 3 and len(calls) == 3 * 3 * 2  # ceil(5 / 2) rounds of 3 calls
    plain = time_interleaved([make("a", 40.0), make("b", 40.0)], warmup=0, iters=2, log=lambda m: None)
    assert all(min(t) >= 40.0 for t in plain)  # block=1: every call is a switch and is kept
    with pytest.raises(ValueError, match="block must be >= 1"):
        time_interleaved([make("a", 1.0)], block=0)


def test_summarize_and_bench_rows(onnx_fixed):
    s = summarize([3.0, 1.0, 2.0, 100.0])
    assert s["median_ms"] == 2.5 and s["min_ms"] == 1.0 and s["iters"] == 4 and 97 < s["p99_ms"] <= 100
    eng = OnnxRuntimeEngine(onnx_fixed, num_threads=1)
    rows = bench_engine(eng, (H, W), warmup=1, iters=2, image_size=(120, 200))
    assert [r["mode"] for r in rows] == ["model", "e2e"] and all(r["median_ms"] > 0 for r in rows)
    assert "onnxruntime fp32 model" in format_table(rows)


def _cli() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="liteseg")
    sub = ap.add_subparsers()
    add_export_parser(sub)
    add_bench_parser(sub)
    return ap


def test_cli_export_onnx_with_verification(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    args = _cli().parse_args(["export", "--random-weights", "--size", f"{H}x{W}", "-o", str(out)])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert out.is_file() and "opset 17" in text and "verified at 96x160" in text
    with pytest.raises(SystemExit) as exc:
        _cli().parse_args(["export", "--help"])
    assert exc.value.code == 0
    with pytest.raises(SystemExit):
        _cli().parse_args(["export", "--random-weights", "--size", "big"])


def test_cli_bench_writes_json_and_rejects_unknown_backend(tmp_path, capsys):
    js = tmp_path / "b.json"
    args = _cli().parse_args(["bench", "--random-weights", "--backends", "onnxruntime,pytorch", "--size", "64x128",
                              "--image-size", "none", "--iters", "2", "--warmup", "1", "--threads", "1",
                              "--precisions", "fp32,fp16", "--cache-dir", str(tmp_path), "--json", str(js)])
    assert args.func(args) == 0
    data = json.loads(js.read_text())
    assert {r["backend"] for r in data["rows"]} == {"onnxruntime", "pytorch"}
    assert any("fp16" in s for s in data["context"]["skipped"])  # fp16 on CPU is skipped with a reason
    bad = _cli().parse_args(["bench", "--random-weights", "--backends", "magic", "--json", str(js)])
    assert bad.func(bad) == 2 and "magic" in capsys.readouterr().err  # a usage error


@pytest.mark.skipif(TRT_STATUS == "ok", reason="checks the message without TensorRT")
def test_cli_export_tensorrt_without_tensorrt_fails_cleanly(tmp_path, capsys):
    args = _cli().parse_args(["export", "--random-weights", "--format", "tensorrt", "--size", f"{H}x{W}",
                              "--cache-dir", str(tmp_path)])
    assert args.func(args) == 1
    assert "tensorrt unavailable" in capsys.readouterr().err
