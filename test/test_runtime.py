"""Tests of liteseg_ros.runtime: a ``weights`` setting becomes one ModelWeights, and the pipeline is built from it.

Real files throughout: a seeded random-weight checkpoint in our format (conftest's ``tiny_checkpoint``),
its ONNX export at the test size, the bundled demo weights, and a fresh interpreter for what a start
imports.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from liteseg_ros import params
from liteseg_ros.classes import ClassTable
from liteseg_ros.engines.model_weights import ModelWeights
from liteseg_ros.engines.onnx_file import is_onnx_file, onnx_metadata
from liteseg_ros.runtime import (
    DEMO_WEIGHTS_LICENSE,
    ModelLoadError,
    build_pipeline,
    demo_weights_path,
    resolve_model,
)

H, W = 64, 96  #: network input of these tests


@pytest.fixture(scope="module")
def onnx_file(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint exported at H x W, as ``liteseg export`` writes it."""
    from liteseg_ros.engines.export import export_onnx
    from liteseg_ros.model import load_checkpoint

    return export_onnx(load_checkpoint(tiny_checkpoint), tmp_path_factory.mktemp("onnx") / "tiny.onnx", (H, W))


def _settings(**kw):
    return params.pipeline_settings({"network_width": W, "network_height": H, "num_threads": 1, "device": "cpu", **kw})


# ----------------------------------------------------------------------------- resolution
def test_a_checkpoint_resolves_to_its_metadata_and_is_loaded_lazily_from_the_cache(tiny_checkpoint, tmp_path):
    from liteseg_ros.engines.cache import checkpoint_key

    logs: list[str] = []
    first = resolve_model(str(tiny_checkpoint), cache_dir=tmp_path, use_meta_cache=True, log=logs.append)
    assert (first.kind, first.name, first.backbone, first.random) == ("checkpoint", "tiny-random", "mobilenetv2", False)
    assert first.is_loaded and first.classes == ClassTable.cityscapes() and first.weights == str(tiny_checkpoint)
    assert first.key == checkpoint_key(tiny_checkpoint)
    assert not logs  # nothing cached yet: the checkpoint was loaded (and its metadata stored)
    again = resolve_model(str(tiny_checkpoint), cache_dir=tmp_path, use_meta_cache=True, log=logs.append)
    assert not again.is_loaded and any("metadata from the engine cache" in m for m in logs)
    assert (again.name, again.backbone, again.classes, again.mean, again.std) == (
        first.name, first.backbone, first.classes, first.mean, first.std)
    assert again.key == first.key
    assert again.module().num_classes == 19 and again.is_loaded  # the lazy loader: the same file


def test_demo_onnx_random_and_missing_weights(onnx_file):
    demo = resolve_model("demo")
    assert demo.kind == "checkpoint" and demo.path == demo_weights_path() and demo.license == DEMO_WEIGHTS_LICENSE
    onnx = resolve_model(str(onnx_file))
    assert (onnx.kind, onnx.is_onnx, onnx.is_loaded) == ("onnx", True, False)
    assert onnx.classes == ClassTable.cityscapes() and onnx.backbone == "mobilenetv2"
    assert onnx.onnx_meta == onnx_metadata(onnx_file) and onnx.onnx_meta["liteseg.input_size"] == f"{H}x{W}"
    with pytest.raises(ModelLoadError, match="no weights given"):
        resolve_model("")
    rnd = resolve_model("", allow_random_weights=True, num_classes=5)
    assert (rnd.kind, rnd.random, rnd.weights, len(rnd.classes)) == ("module", True, "", 5)
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model("/nonexistent/w.pt")
    with pytest.raises(ModelLoadError, match="backbone='shufflenet' but"):
        resolve_model(str(onnx_file), backbone="shufflenet")


def test_onnx_suffix_is_recognised_in_any_case(onnx_file, tmp_path):
    assert all(is_onnx_file(n) for n in ("m.onnx", "m.ONNX", "m.Onnx")) and not is_onnx_file("m.pt")
    upper = tmp_path / "model.ONNX"
    shutil.copy(onnx_file, upper)
    assert ModelWeights.of(upper).is_onnx and resolve_model(str(upper)).is_onnx


@pytest.mark.parametrize("backend", ["onnxruntime", "auto"])
def test_weights_named_dot_upper_onnx_build_the_pipeline(onnx_file, tmp_path, backend):
    """``weights: model.ONNX`` used to fail with "is an ONNX model, not a checkpoint" where ``.onnx`` worked."""
    import numpy as np

    upper = tmp_path / "model.ONNX"
    shutil.copy(onnx_file, upper)
    pipe, source = build_pipeline(_settings(weights=str(upper), backend=backend, engine_cache_dir=str(tmp_path)),
                                  log=lambda m: None)
    lower, _ = build_pipeline(_settings(weights=str(onnx_file), backend=backend, engine_cache_dir=str(tmp_path)),
                              log=lambda m: None)
    img = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    assert source.weights == str(upper) and pipe.engine.info.backend == "onnxruntime"
    assert np.array_equal(pipe.run([img])[0].label, lower.run([img])[0].label)


def test_int8_without_a_cached_file_warns_through_the_callers_channel(tiny_checkpoint, tmp_path):
    infos: list[str] = []
    warnings: list[str] = []
    pipe, _ = build_pipeline(_settings(weights=str(tiny_checkpoint), backend="onnxruntime", precision="int8",
                                       engine_cache_dir=str(tmp_path)), log=infos.append, warn=warnings.append)
    assert (pipe.engine.info.backend, pipe.engine.info.precision) == ("onnxruntime", "fp32")
    assert len(warnings) == 1 and f"liteseg quantize --weights {tiny_checkpoint} --size {H}x{W}" in warnings[0]
    assert not any("liteseg quantize" in m for m in infos if "using" not in m)
    assert not (tmp_path / "int8").exists()


# ----------------------------------------------------------------------------- what a start imports
_START = """
import json, sys
from liteseg_ros import params
from liteseg_ros.runtime import build_pipeline
vals = params.pipeline_settings(dict(weights=sys.argv[1], engine_cache_dir=sys.argv[2], backend=sys.argv[3],
                                     device="cpu", network_height=int(sys.argv[4]), network_width=int(sys.argv[5]),
                                     num_threads=1))
pipe, src = build_pipeline(vals, log=lambda m: None)
print(json.dumps({"heavy": sorted(m for m in ("torch", "onnx", "openvino") if m in sys.modules),
                  "engine": pipe.engine.info.backend, "kind": src.kind}))
"""


@pytest.mark.parametrize("backend", ["onnxruntime", "auto"])
def test_onnx_weights_with_onnx_runtime_import_no_torch(onnx_file, tmp_path, backend):
    """ONNX Runtime needs neither torch nor onnx to run an ONNX file: a start on one imports neither
    (it used to import both, ~6.5 s here, through the metadata reader that loaded the file with onnx)."""
    out = subprocess.run([sys.executable, "-c", _START, str(onnx_file), str(tmp_path), backend, str(H), str(W)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    # auto ranks the CPU paths by the CPU's capabilities, which OpenVINO reports; a named runtime asks nothing else
    allowed = [] if backend == "onnxruntime" else ["openvino"]
    assert [m for m in got["heavy"] if m not in allowed] == [] and "torch" not in got["heavy"], got
    assert (got["engine"], got["kind"]) == ("onnxruntime", "onnx"), got
