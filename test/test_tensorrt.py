"""The strongly typed TensorRT path, checked without a GPU: the fp16 ONNX it builds from, and the TensorRT API it uses.

TensorRT 11 removed weak typing, so an fp16 engine is exactly as fp16 as its ONNX file. Here the fp16 file is
checked on the CPU (graph types; labels through ONNX Runtime against fp32 with the trained demo weights on
held-out generated scenes), and the TensorRT names the package uses (``tensorrt.TRT_API``) are checked
against the migration guide's removed-API table written down below, so a removed name cannot come back
unnoticed. Where ``tensorrt`` imports, every listed name is also looked up in the installed bindings; where
a GPU and onnxruntime-gpu are present, the fp16 file runs on the CUDA provider.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto

from liteseg_ros.engines import EngineError
from liteseg_ros.engines import tensorrt as trt_module
from liteseg_ros.engines.export import (
    check_fp16_graph,
    export_onnx,
    onnx_precision,
    reference_outputs,
)
from liteseg_ros.engines.onnxruntime import OnnxRuntimeEngine, session_options

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "liteseg_ros"
TRT_SOURCE = PACKAGE / "engines" / "tensorrt.py"
H, W = 180, 320  #: the demo weights' training size
pytestmark = pytest.mark.usefixtures("one_torch_thread")

# ----------------------------------------------------------------------------- the migration guide, as data
#: NVIDIA, "Migrating from TensorRT 10.x to 11.x", Python integration, "Removed Python APIs and
#: Replacements", TensorRT 11.4.0 documentation
#: (docs.nvidia.com/deeplearning/tensorrt/11.4.0/api/migration/tensorrt-10x-to-11x-python-api-reference.html),
#: as far as the table was readable here: the entries up to ICudaEngine.device_memory_size_for_profile.
#: Removed name -> the guide's replacement.
REMOVED_IN_11_PYTHON = {
    "BuilderFlag.FP16": "strong typing (fp16 in the ONNX graph)",
    "BuilderFlag.INT8": "explicit quantization (Q/DQ nodes)",
    "BuilderFlag.FP8": "explicit quantization (Q/DQ nodes)",
    "BuilderFlag.BF16": "strong typing",
    "BuilderFlag.INT4": "explicit quantization (Q/DQ nodes)",
    "BuilderFlag.FP4": "explicit quantization (Q/DQ nodes)",
    "BuilderFlag.OBEY_PRECISION_CONSTRAINTS": "strong typing (always enforced)",
    "BuilderFlag.PREFER_PRECISION_CONSTRAINTS": "strong typing (always enforced)",
    "BuilderFlag.DIRECT_IO": "removed (unneeded)",
    "IBuilderConfig.int8_calibrator": "explicit quantization (Q/DQ nodes)",
    "IBuilderConfig.set_calibration_profile": "explicit quantization (Q/DQ nodes)",
    "IBuilderConfig.get_calibration_profile": "explicit quantization (Q/DQ nodes)",
    "IBuilderConfig.set_quantization_flag": "explicit quantization (Q/DQ nodes)",
    "IBuilderConfig.get_quantization_flag": "explicit quantization (Q/DQ nodes)",
    "IBuilderConfig.quantization_flags": "explicit quantization (Q/DQ nodes)",
    "IBuilderConfig.clear_quantization_flag": "explicit quantization (Q/DQ nodes)",
    "ICudaEngine.device_memory_size": "ICudaEngine.device_memory_size_v2",
    "ICudaEngine.device_memory_size_for_profile": "ICudaEngine.device_memory_size_for_profile_v2",
}
#: The same guide's C++ table (TensorRT 11.4.0, "Removed C++ APIs and Replacements"), entries whose Python
#: binding the Python excerpt above did not reach, under their Python names.
REMOVED_IN_11_FROM_CPP_TABLE = {
    "Builder.platform_has_fast_fp16": "strongly typed networks (IBuilder::platformHasFastFp16)",
    "Builder.platform_has_fast_int8": "explicit quantization (IBuilder::platformHasFastInt8)",
    "IBuilderConfig.algorithm_selector": "editable timing cache (IAlgorithmSelector)",
    "tensorrt.IAlgorithmSelector": "editable timing cache",
    "tensorrt.IAlgorithm": "editable timing cache",
    "tensorrt.IAlgorithmContext": "editable timing cache",
}
#: Not in either table but gone from the TensorRT 11 headers' NetworkDefinitionCreationFlag (which keeps only
#: STRONGLY_TYPED, deprecated and ignored): networks are always explicit batch.
GONE_IN_11_HEADERS = {"NetworkDefinitionCreationFlag.EXPLICIT_BATCH": "nothing (always explicit batch)"}
REMOVED_IN_11 = {**REMOVED_IN_11_PYTHON, **REMOVED_IN_11_FROM_CPP_TABLE, **GONE_IN_11_HEADERS}
#: The weak-typing names the TensorRT 11 bindings are certain not to have (checked where tensorrt 11 imports).
WEAK_TYPING = ("BuilderFlag.FP16", "BuilderFlag.INT8", "BuilderFlag.BF16", "BuilderFlag.OBEY_PRECISION_CONSTRAINTS",
               "BuilderFlag.PREFER_PRECISION_CONSTRAINTS", "Builder.platform_has_fast_fp16",
               "IBuilderConfig.int8_calibrator")

LISTED = dict(trt_module.TRT_API)


def _trt_chains(tree: ast.AST) -> set[str]:
    """Every ``trt.A`` / ``trt.A.B`` chain in the module, as 'tensorrt.A' / 'A.B' (the TRT_API spelling)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "trt":
            out.add(f"tensorrt.{node.attr}")
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and isinstance(node.value.value, ast.Name) and node.value.value.id == "trt"):
            out.add(f"{node.value.attr}.{node.attr}")
    return out


#: How engines/tensorrt.py names the TensorRT objects it holds (local or ``self._`` attribute) -> their class.
TRT_OBJECTS = {"builder": "Builder", "network": "INetworkDefinition", "parser": "OnnxParser",
               "config": "IBuilderConfig", "profile": "IOptimizationProfile", "engine": "ICudaEngine",
               "_engine": "ICudaEngine", "_context": "IExecutionContext", "_runtime": "Runtime"}


def _object_members(tree: ast.AST) -> set[str]:
    """'Class.member' for every ``builder.x`` / ``self._context.y`` access on a TensorRT object."""
    out = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        base = node.value
        name = (base.id if isinstance(base, ast.Name)
                else base.attr if isinstance(base, ast.Attribute) and isinstance(base.value, ast.Name)
                and base.value.id == "self" else None)
        if name in TRT_OBJECTS:
            out.add(f"{TRT_OBJECTS[name]}.{node.attr}")
    return out


def _attribute_names(tree: ast.AST) -> set[str]:
    """Attributes read or set, and methods defined (the IProgressMonitor overrides)."""
    return ({node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
            | {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)})


def _strings(tree: ast.AST) -> set[str]:
    return {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}


# ----------------------------------------------------------------------------- the TensorRT names, statically
def test_every_tensorrt_name_in_the_module_is_listed_and_every_listed_name_is_used():
    tree = ast.parse(TRT_SOURCE.read_text())
    unlisted = sorted((_trt_chains(tree) | _object_members(tree)) - set(LISTED))
    assert not unlisted, f"engines/tensorrt.py uses TensorRT names missing from TRT_API: {unlisted}"
    used = _attribute_names(tree) | _strings(tree)
    stale = sorted(name for name in LISTED if name.split(".", 1)[1] not in used)
    assert not stale, f"TRT_API lists names engines/tensorrt.py does not use: {stale}"
    assert all(set(majors) <= set(trt_module.SUPPORTED_MAJORS) for majors in LISTED.values())


def test_no_listed_or_used_tensorrt_name_is_removed_in_11():
    assert not sorted(set(LISTED) & set(REMOVED_IN_11))
    tree = ast.parse(TRT_SOURCE.read_text())
    assert not sorted((_trt_chains(tree) | _object_members(tree)) & set(REMOVED_IN_11))
    # methods and properties reached through objects (config.int8_calibrator, builder.platform_has_fast_fp16)
    # and through getattr strings: their member names alone are distinctive enough to forbid outright
    members = {name.split(".", 1)[1] for name in REMOVED_IN_11 if name.split(".", 1)[1][:1].islower()}
    members |= {name for name in REMOVED_IN_11 if not name.startswith("tensorrt.")}
    found = sorted((_attribute_names(tree) | _strings(tree)) & members)
    assert not found, f"engines/tensorrt.py uses names TensorRT 11 removed: {found}"


def test_only_the_thin_module_imports_tensorrt():
    importers = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            if any(n == "tensorrt" or n.startswith("tensorrt.") for n in names):
                importers.append(path.relative_to(REPO).as_posix())
    assert set(importers) == {"liteseg_ros/engines/tensorrt.py"}, importers


def test_supported_majors_match_the_setup_py_pin():
    text = (REPO / "setup.py").read_text()
    pin = re.search(r'"tensorrt":\s*\["tensorrt>=(\d+),<(\d+)"', text)
    assert pin, "setup.py's tensorrt extra must pin the supported majors"
    assert tuple(range(int(pin[1]), int(pin[2]))) == trt_module.SUPPORTED_MAJORS


@pytest.mark.parametrize(("version", "ok"), [("10.0.1", True), ("10.13.3.9", True), ("11.4.0", True),
                                             ("8.6.1", False), ("9.3.0", False), ("12.0.0", False)])
def test_tensorrt_version_gate(version, ok):
    if ok:
        assert trt_module.check_trt_version(version) == int(version.split(".")[0])
    else:
        with pytest.raises(EngineError, match=r"supported: 10\.x, 11\.x.*tensorrt>=10,<12"):
            trt_module.check_trt_version(version)
    with pytest.raises(EngineError, match="cannot read"):
        trt_module.check_trt_version("unknown")


def test_tensorrt_11_networks_take_no_creation_flag():
    # 11.x: strongly typed is the only kind; nothing of the trt module is touched (None stands in for it)
    assert trt_module.network_flags(None, 11) == 0


# ----------------------------------------------------------------------------- where tensorrt imports
def _import_trt():
    try:
        import tensorrt
    except Exception as exc:  # noqa: BLE001 - a broken install raises anything
        pytest.skip(f"tensorrt does not import here ({exc.__class__.__name__}: {exc}); the name check runs "
                    f"where it does (benchmarks/gpu_report.sh)")
    return tensorrt


def test_every_listed_name_exists_in_the_installed_tensorrt():
    trt = _import_trt()
    major = trt_module.check_trt_version(trt.__version__)
    missing = []
    for name, majors in LISTED.items():
        if major not in majors:
            continue
        owner_name, member = name.split(".", 1)
        owner = trt if owner_name == "tensorrt" else getattr(trt, owner_name, None)
        if owner is None or not hasattr(owner, member):
            missing.append(name)
    assert not missing, f"tensorrt {trt.__version__} lacks {missing}"
    if major == 10:
        assert trt_module.network_flags(trt, 10) == 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    else:  # the table's weak-typing entries really are gone from 11.x
        present = [n for n in WEAK_TYPING if hasattr(getattr(trt, n.split(".")[0]), n.split(".")[1])]
        assert not present, f"tensorrt {trt.__version__} still has {present}: update REMOVED_IN_11"


# ----------------------------------------------------------------------------- the fp16 ONNX file
@pytest.fixture(scope="module")
def demo_model():
    from liteseg_ros.model import load_checkpoint
    from liteseg_ros.runtime import demo_weights_path

    return load_checkpoint(demo_weights_path()).eval()


@pytest.fixture(scope="module")
def holdout() -> np.ndarray:
    """Four held-out generated scenes (seeds 10000..10003, never trained on), normalised for the demo weights."""
    from liteseg_ros.classes import IMAGENET_MEAN, IMAGENET_STD
    from liteseg_ros.synthetic import SceneConfig, generate_scene

    rgb = np.stack([generate_scene(seed, SceneConfig(height=H, width=W)).image[:, :, ::-1]
                    for seed in range(10000, 10004)]).astype(np.float32) / 255.0
    return np.ascontiguousarray(((rgb - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)).transpose(0, 3, 1, 2))


@pytest.fixture(scope="module")
def files(demo_model, tmp_path_factory) -> dict[tuple[str, bool], Path]:
    """(precision, uint8) -> exported file: the node's uint8 interface and TensorRT's int32/float one."""
    d = tmp_path_factory.mktemp("fp16")
    return {(p, u8): export_onnx(demo_model, d / f"{p}_{u8}.onnx", (H, W), uint8=u8, precision=p)
            for p in ("fp32", "fp16") for u8 in (True, False)}


def _io(path: Path) -> list[tuple[str, int, list]]:
    g = onnx.load(str(path)).graph
    return [(v.name, v.type.tensor_type.elem_type, [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim])
            for v in (*g.input, *g.output)]


@pytest.mark.parametrize("uint8", [True, False])
def test_fp16_file_has_fp16_convolutions_and_the_fp32_files_interface(files, uint8):
    fp16, fp32 = files[("fp16", uint8)], files[("fp32", uint8)]
    assert _io(fp16) == _io(fp32)  # same names, element types and shapes: the engines need no change
    want = (TensorProto.UINT8, TensorProto.UINT8) if uint8 else (TensorProto.INT32, TensorProto.FLOAT)
    assert [t for _, t, _ in _io(fp16)] == [TensorProto.FLOAT, *want]
    proto = onnx.load(str(fp16))
    inits = {t.name: t.data_type for t in proto.graph.initializer}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert len(convs) > 50
    for node in convs:  # weight and bias initializers are fp16
        assert [inits[name] for name in node.input[1:]] == [TensorProto.FLOAT16] * (len(node.input) - 1), node.name
    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    assert {types.get(n.input[0], inits.get(n.input[0])) for n in convs} == {TensorProto.FLOAT16}
    assert {types[n.output[0]] for n in convs} == {TensorProto.FLOAT16}
    check_fp16_graph(proto)
    with pytest.raises(EngineError, match="not in fp16"):
        check_fp16_graph(onnx.load(str(fp32)))
    assert fp16.stat().st_size < 0.6 * fp32.stat().st_size


def test_onnx_precision_from_metadata_and_from_the_weights(files, tmp_path):
    assert onnx_precision(files[("fp16", True)]) == "fp16" and onnx_precision(files[("fp32", False)]) == "fp32"
    for key in (("fp16", False), ("fp32", True)):  # a file without liteseg metadata: read from the weights
        proto = onnx.load(str(files[key]))
        del proto.metadata_props[:]
        bare = tmp_path / f"bare_{key[0]}.onnx"
        onnx.save(proto, str(bare))
        assert onnx_precision(bare) == key[0]


def test_fp16_file_labels_match_fp32_on_demo_weights_and_held_out_scenes(files, demo_model, holdout):
    """ONNX Runtime (CPU) runs the fp16 graph, casting around the nodes that lack a CPU fp16 kernel, so every
    activation is rounded to fp16 as on the GPU; labels must stay >= 99 % equal to fp32."""
    import onnxruntime as ort

    ref_label, ref_conf, _ = reference_outputs(demo_model, holdout)
    out = {}
    for precision in ("fp32", "fp16"):
        sess = ort.InferenceSession(str(files[(precision, True)]), session_options(1),
                                    providers=["CPUExecutionProvider"])
        res = [sess.run(["label", "confidence"], {"input": holdout[i:i + 1]}) for i in range(len(holdout))]
        out[precision] = [np.concatenate(r) for r in zip(*res, strict=True)]
    label16, conf16 = out["fp16"]
    agree_ref = float(np.mean(label16 == ref_label))
    agree_fp32 = float(np.mean(label16 == out["fp32"][0]))
    conf_diff = np.abs(conf16.astype(np.int16) - ref_conf.astype(np.int16))
    print(f"\nfp16 ONNX on ONNX Runtime CPU, demo weights, 4 held-out scenes {H}x{W}: labels {100 * agree_ref:.3f} % "
          f"equal to PyTorch fp32, {100 * agree_fp32:.3f} % to the fp32 ONNX; confidence |diff| max {conf_diff.max()}")
    assert agree_ref >= 0.99 and agree_fp32 >= 0.99
    assert np.mean(conf_diff <= 3) >= 0.999
    assert agree_ref < 1.0  # the fp16 rounding really happened (an fp32 run would agree exactly)


def _resize_input_types(path: Path) -> list[int]:
    proto = onnx.load(str(path))
    types = {v.name: v.type.tensor_type.elem_type for v in onnx.shape_inference.infer_shapes(proto).graph.value_info}
    return [types.get(n.input[0]) for n in proto.graph.node if n.op_type == "Resize"]


def test_fp16_export_keeps_the_callers_model_and_the_fp32_tail_option(demo_model, files, tmp_path):
    before = {k: v.clone() for k, v in demo_model.state_dict().items()}
    path = export_onnx(demo_model, tmp_path / "tail.onnx", (H, W), precision="fp16", fp32_tail="last_conv")
    assert all(torch.equal(before[k], v) for k, v in demo_model.state_dict().items())  # still fp32, unfolded
    assert next(demo_model.parameters()).dtype == torch.float32
    f16, f32 = TensorProto.FLOAT16, TensorProto.FLOAT
    assert _resize_input_types(files[("fp16", True)]) == [f16, f16, f16]  # default: every upsampling in fp16
    assert _resize_input_types(path) == [f16, f16, f32]  # fp32_tail: the final upsampling in float32
    check_fp16_graph(onnx.load(str(path)))  # the classifier conv itself stays fp16
    with pytest.raises(EngineError, match="fp32_tail 'nope'"):
        export_onnx(demo_model, tmp_path / "bad.onnx", (H, W), precision="fp16", fp32_tail="nope")
    with pytest.raises(EngineError, match="fp32, fp16"):
        export_onnx(demo_model, tmp_path / "bad.onnx", (H, W), precision="bf16")
    assert not list(tmp_path.glob("bad*")) and not list(tmp_path.glob(".*tmp"))


def test_engines_refuse_a_file_whose_types_differ_from_the_precision(files):
    with pytest.raises(EngineError, match="is an fp16 ONNX file"):
        trt_module.check_file_precision(files[("fp16", False)], "fp32")
    with pytest.raises(EngineError, match="is an fp32 ONNX file.*strongly typed"):
        trt_module.check_file_precision(files[("fp32", False)], "fp16")
    trt_module.check_file_precision(files[("fp16", False)], "fp16")
    with pytest.raises(EngineError, match="is an fp16 ONNX file"):
        OnnxRuntimeEngine(files[("fp16", True)], "cpu", "fp32")
    with pytest.raises(EngineError, match="allowed: fp32, int8 on cpu"):
        OnnxRuntimeEngine(files[("fp16", True)], "cpu", "fp16")


def test_cached_onnx_export_is_per_precision(demo_model, tmp_path):
    from liteseg_ros.engines import onnx_for

    p32 = onnx_for(demo_model, (96, 160), tmp_path, False, lambda m: None)
    p16 = onnx_for(demo_model, (96, 160), tmp_path, False, lambda m: None, "fp16")
    assert p32 != p16 and p16.name.endswith("_i32_fp16.onnx")
    assert (onnx_precision(p32), onnx_precision(p16)) == ("fp32", "fp16")


# ----------------------------------------------------------------------------- GPU: ONNX Runtime CUDA
def _cuda_provider() -> str:
    if not torch.cuda.is_available():
        return "CUDA not available"
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "onnxruntime-gpu not installed (no CUDAExecutionProvider)"
    return ""


@pytest.mark.gpu
@pytest.mark.skipif(bool(_cuda_provider()), reason=_cuda_provider() or "ok")
def test_onnxruntime_cuda_runs_the_fp16_file(files, demo_model, holdout):
    ref_label, ref_conf, _ = reference_outputs(demo_model, holdout)
    eng = OnnxRuntimeEngine(files[("fp16", True)], "cuda", "fp16")
    out = eng.infer(holdout)
    assert out.label.dtype == np.uint8 and out.confidence.dtype == np.uint8
    assert float(np.mean(out.label == ref_label)) >= 0.99
    assert np.mean(np.abs(out.confidence.astype(np.int16) - ref_conf.astype(np.int16)) <= 3) >= 0.999


def test_cli_exports_and_verifies_an_fp16_onnx_file(tmp_path, capsys):
    import argparse

    from liteseg_ros.commands.engines import add_export_parser
    from liteseg_ros.runtime import demo_weights_path

    ap = argparse.ArgumentParser()
    add_export_parser(ap.add_subparsers())
    out = tmp_path / "demo_fp16.onnx"
    args = ap.parse_args(["export", "--weights", str(demo_weights_path()), "--precision", "fp16", "--size", "96x160",
                          "-o", str(out)])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "(fp16, opset 17" in text and "verified at 96x160" in text
    assert onnx_precision(out) == "fp16"


@pytest.mark.skipif(not bool(_cuda_provider()), reason="checks the message where ONNX Runtime has no CUDA")
def test_onnxruntime_on_cuda_exports_the_fp16_file_and_says_what_is_missing(model, tmp_path):
    from liteseg_ros.engines import create_engine

    with pytest.raises(EngineError, match="onnxruntime-gpu"):
        create_engine(model, "onnxruntime", "cuda", "auto", (96, 160), cache_dir=tmp_path, log=lambda m: None)
    exported = sorted(p.name for p in (tmp_path / "onnx").glob("*.onnx"))
    assert len(exported) == 1 and exported[0].endswith("_u8_fp16.onnx")  # auto on CUDA = fp16, in the graph
