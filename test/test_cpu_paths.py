"""Tests of the CPU fast paths: OpenVINO fp32/bf16/int8, ONNX Runtime int8, `liteseg quantize`,
the bf16 fallback and the agreement floor of the CPU ``auto`` choice.

Two models: a seeded random-weight LiteSeg-MobileNetV2 (always; logic, files, errors) and the trained
demo weights ``liteseg_ros/data/liteseg_demo_mobilenetv2.pt`` (accuracy: every backend and precision
against PyTorch fp32 on generated held-out scenes; skipped when the file is absent). Small sizes,
one thread. The measured agreements are printed (``pytest -s``) and kept as test properties.
The random model, its batch and the one-thread pin are conftest.py's ``model``, ``batch`` and
``one_torch_thread`` fixtures, shared by the two engine test modules.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from liteseg_ros.commands.engines import add_quantize_parser
from liteseg_ros.engines import EngineError, cpu_path_ranking, create_engine
from liteseg_ros.engines.cache import load_report, report_paths
from liteseg_ros.engines.export import export_onnx, reference_outputs
from liteseg_ros.engines.openvino import CAPS_ENV, OpenVinoEngine, cpu_capabilities, has_bf16, openvino_status
from liteseg_ros.runtime import demo_weights_path, resolve_device
from liteseg_ros.tools.quantize import (
    HOLDOUT_SEED,
    compare_on_samples,
    int8_path,
    quantize_model,
    reference_pipeline,
    startup_agreement,
    synthetic_samples,
)

pytestmark = [pytest.mark.skipif(openvino_status() != "ok", reason=f"openvino unusable: {openvino_status()}"),
              pytest.mark.usefixtures("one_torch_thread")]

H, W = 96, 160  #: network input of the engine tests (conftest's ``batch`` reads it)
DEMO = demo_weights_path()
needs_demo = pytest.mark.skipif(not DEMO.is_file(), reason=f"trained demo weights absent ({DEMO})")
NO_BF16 = "FP32,INT8"


@pytest.fixture(scope="module")
def fp32_onnx(model, tmp_path_factory):
    return export_onnx(model, tmp_path_factory.mktemp("fp32") / "fixed.onnx", (H, W))


@pytest.fixture(scope="module")
def cache(model, tmp_path_factory):
    """An engine cache holding the random model's int8 file (made by `liteseg quantize`, both runtimes)."""
    import argparse

    d = tmp_path_factory.mktemp("cache")
    torch.manual_seed(0)
    sub = argparse.ArgumentParser().add_subparsers()
    add_quantize_parser(sub)
    weights = d / "random.pt"
    from liteseg_ros.model import save_checkpoint

    save_checkpoint(model, weights)
    args = sub.choices["quantize"].parse_args(
        ["--weights", str(weights), "--synthetic", "6", "--holdout", "3", "--backend", "all", "--size",
         f"{H}x{W}", "--threads", "1", "--cache-dir", str(d)])
    assert args.func(args) == 0
    return d


# ----------------------------------------------------------------------------- OpenVINO engine
def test_openvino_fp32_matches_pytorch_with_exact_thread_count(model, fp32_onnx, batch):
    ref_label, ref_conf, _ = reference_outputs(model, batch)
    eng = OpenVinoEngine(fp32_onnx, "fp32", num_threads=1, log=lambda m: None, caps=NO_BF16)
    out = eng.infer(batch)
    assert out.label.dtype == np.uint8 and out.confidence.dtype == np.uint8 and out.label.shape == (2, H, W)
    assert float(np.mean(out.label == ref_label)) >= 0.999
    assert np.abs(out.confidence.astype(int) - ref_conf).max() <= 2
    compiled = eng._request((2, 3, H, W)).get_compiled_model()
    assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == 1 == int(eng.info.extra["threads"])
    assert eng.info.extra["effective_precision"] == "f32"
    assert eng.infer(batch[:1], want_confidence=False).confidence is None
    with pytest.raises(EngineError, match="exported for 96x160"):
        eng.infer(np.zeros((1, 3, 64, 64), np.float32))


def test_bf16_without_cpu_support_falls_back_to_fp32_with_a_message(model, fp32_onnx, monkeypatch, tmp_path):
    logs: list[str] = []
    eng = OpenVinoEngine(fp32_onnx, "bf16", 1, log=logs.append, caps=NO_BF16)
    assert eng.info.precision == "fp32" and eng.info.extra["inference_precision_hint"] == "f32"
    assert any("does not report BF16" in m and "running fp32" in m for m in logs)
    assert "does not report BF16" in eng.info.reason
    # the same through create_engine and the environment override, explicit backend and auto
    monkeypatch.setenv(CAPS_ENV, NO_BF16)
    assert cpu_capabilities() == {"FP32", "INT8"} and not has_bf16()
    assert cpu_path_ranking()[0][:2] == cpu_path_ranking(NO_BF16)[0][:2]
    for backend in ("openvino", "auto"):
        logs.clear()
        e = create_engine(model, backend, "cpu", "bf16", (H, W), num_threads=1, cache_dir=tmp_path,
                          log=logs.append, warmup=False)
        assert e.info.precision == "fp32" and "does not report BF16" in e.info.reason, backend
        assert any("does not report BF16" in m for m in logs)


@pytest.mark.skipif(not has_bf16(), reason="this CPU does not report BF16 (fallback tested above)")
def test_bf16_on_a_bf16_cpu_runs_bf16(tmp_path):
    """Judged on trained weights and a held-out scene: a random-weight model's near-tied logits flip
    under bf16 rounding (measured 66 % on an AMX CPU), which says nothing about the path."""
    from liteseg_ros.classes import IMAGENET_MEAN, IMAGENET_STD
    from liteseg_ros.model import load_checkpoint
    from liteseg_ros.synthetic import SceneConfig, generate_scene

    trained = load_checkpoint(demo_weights_path()).eval()
    onnx = tmp_path / "demo.onnx"
    export_onnx(trained, onnx, (H, W), dynamic=False, with_logits=False, uint8=True)
    rgb = [generate_scene(10000 + i, SceneConfig(height=H, width=W)).image[:, :, ::-1] for i in range(2)]
    x = np.stack([(im / 255.0 - IMAGENET_MEAN) / IMAGENET_STD for im in rgb]).transpose(0, 3, 1, 2)
    x = np.ascontiguousarray(x, dtype=np.float32)
    ref_label = reference_outputs(trained, x)[0]
    eng = OpenVinoEngine(onnx, "bf16", 1, log=lambda m: None)
    assert eng.info.precision == "bf16" and eng.info.extra["effective_precision"] == "bf16"
    assert float(np.mean(eng.infer(x).label == ref_label)) >= 0.99  # measured 0.998


def test_precision_must_match_the_file(model, fp32_onnx, cache):
    q = int8_path(cache / "random.pt", (H, W), cache)
    with pytest.raises(EngineError, match="not an int8"):
        OpenVinoEngine(fp32_onnx, "int8", 1, log=lambda m: None)
    with pytest.raises(EngineError, match="is an int8"):
        OpenVinoEngine(q, "fp32", 1, log=lambda m: None)
    with pytest.raises(EngineError, match="is an int8"):
        create_engine(q, "onnxruntime", "cpu", "fp32", (H, W), log=lambda m: None)
    with pytest.raises(EngineError, match="use backend openvino for bf16"):
        create_engine(model, "onnxruntime", "cpu", "bf16", (H, W), log=lambda m: None)
    with pytest.raises(EngineError, match="CPU precision"):
        create_engine(model, "pytorch", "cpu", "int8", (H, W), log=lambda m: None)


# ----------------------------------------------------------------------------- quantize
def test_quantize_cli_writes_model_and_reports_for_both_runtimes(model, cache):
    q = int8_path(cache / "random.pt", (H, W), cache)
    assert q.is_file()
    for backend in ("onnxruntime", "openvino"):
        jpath, tpath = report_paths(q, backend)
        rep = json.loads(jpath.read_text())
        assert rep == load_report(q, backend)
        assert rep["backend"] == backend and rep["input_size"] == [H, W] and rep["threads"] == 1
        assert rep["calibration"]["images"] == 6 and rep["holdout"]["images"] == 3
        assert 0.0 < rep["label_agreement"] <= 1.0 and len(rep["per_class"]) == 19
        assert rep["miou_fp32_gt"] is not None and "miou_drop_points" in rep
        assert "label agreement with fp32" in tpath.read_text()


def test_quantized_file_runs_in_both_runtimes_and_the_pipeline(model, cache):
    from liteseg_ros.classes import ClassTable
    from liteseg_ros.pipeline import Pipeline, PipelineConfig, Wants

    q = int8_path(cache / "random.pt", (H, W), cache)
    scene = synthetic_samples(1, (120, 200), HOLDOUT_SEED + 7)[0].image  # not the network size: resized
    for backend in ("onnxruntime", "openvino"):
        eng = create_engine(q, backend, "cpu", "int8", (H, W), num_threads=1, log=lambda m: None)
        assert eng.info.precision == "int8" and eng.info.extra["threads"] == "1"
        pipe = Pipeline(eng, ClassTable.cityscapes(), PipelineConfig(network_size=(H, W),
                                                                     mask_groups={"drivable": (0,)}))
        seg = pipe.run([scene], "bgr", Wants.all())[0]
        assert seg.label.dtype == np.uint8 and seg.label.shape == (120, 200)
        assert seg.confidence.dtype == np.uint8 and seg.overlay.shape == (120, 200, 3)
        assert seg.masks["drivable"].shape == (120, 200)
        # the engine cache entry is found by precision int8 with the checkpoint too
        eng2 = create_engine(cache / "random.pt", backend, "cpu", "int8", (H, W), num_threads=1, cache_dir=cache,
                             log=lambda m: None, warmup=False)
        assert eng2.info.extra["file"] == str(q)


def test_default_recipe_leaves_the_classifier_and_the_first_two_convs_float(cache):
    """The file holds exactly the recipe's float nodes without DequantizeLinear on their weights, and its
    report says which they are."""
    import onnx

    q = int8_path(cache / "random.pt", (H, W), cache)
    graph = onnx.load(str(q)).graph
    float_nodes = load_report(q, "onnxruntime")["calibration"]["float_nodes"]
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert float_nodes[:2] == ["/Resize_1", convs[-1].name]  # the classifier chain
    assert set(float_nodes[2:]) == {convs[0].name, convs[1].name}
    dq_out = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    for conv in convs:
        assert (conv.input[1] in dq_out) == (conv.name not in float_nodes), conv.name
    assert "left in float: /Resize_1" in report_paths(q, "onnxruntime")[1].read_text()


def test_quantize_sensitivity_prints_the_sweep_and_writes_nothing(cache, tmp_path, capsys):
    import argparse

    sub = argparse.ArgumentParser().add_subparsers()
    add_quantize_parser(sub)
    args = sub.choices["quantize"].parse_args(
        ["--weights", str(cache / "random.pt"), "--synthetic", "2", "--holdout", "1", "--size", f"{H}x{W}",
         "--threads", "1", "--cache-dir", str(tmp_path), "--sensitivity", "--sensitivity-limit", "2"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "per-layer sensitivity: baseline int8 label agreement" in out
    rows = [ln for ln in out.splitlines() if ln.strip()[:1].isdigit()]
    assert len(rows) == 2 and all("/Conv" in r and "%" in r for r in rows)
    assert not any(tmp_path.iterdir())
    args = sub.choices["quantize"].parse_args(["--random-weights", "--synthetic", "2", "--size", f"{H}x{W}",
                                               "--float-node", "nope", "--out", str(tmp_path / "q.onnx")])
    assert args.func(args) == 1
    assert "no node named nope" in capsys.readouterr().err
    args = sub.choices["quantize"].parse_args(["--random-weights", "--synthetic", "2", "--size", f"{H}x{W}",
                                               "--float-input-convs", "0", "--cache-dir", str(tmp_path)])
    assert args.func(args) == 2  # a usage error: nothing was done
    assert "--out" in capsys.readouterr().err and not any(tmp_path.iterdir())


def test_quantize_rejects_bad_input(tmp_path, capsys):
    import argparse

    sub = argparse.ArgumentParser().add_subparsers()
    add_quantize_parser(sub)
    args = sub.choices["quantize"].parse_args(["--random-weights", "--calib", str(tmp_path / "nope")])
    assert args.func(args) == 2
    assert "nope is not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    args = sub.choices["quantize"].parse_args(["--random-weights", "--calib", str(tmp_path / "empty")])
    assert args.func(args) == 2
    assert "holds no images" in capsys.readouterr().err


# ----------------------------------------------------------------------------- auto
def test_auto_respects_the_agreement_floor(cache):
    """With the BF16 ranking (OpenVINO int8 first) auto takes int8 only when its report clears the floor."""
    caps = "FP32,INT8,BF16"  # ranking of a bf16 CPU; on a CPU without it OpenVINO quietly runs f32
    weights = cache / "random.pt"  # keyed by the file, as `liteseg quantize --weights` and the node do
    q = int8_path(weights, (H, W), cache)
    agreement = load_report(q, "openvino")["label_agreement"]
    kw = dict(num_threads=1, cache_dir=cache, log=lambda m: None, warmup=False, caps=caps,
              agreement_check=startup_agreement)
    low = create_engine(weights, "auto", "cpu", "auto", (H, W), min_label_agreement=agreement - 1e-6, **kw)
    assert (low.info.backend, low.info.precision) == ("openvino", "int8")
    assert low.info.reason.startswith("auto: CPU default openvino int8") and "quantization report" in low.info.reason
    high = create_engine(weights, "auto", "cpu", "auto", (H, W), min_label_agreement=1.01, **kw)
    assert high.info.precision == "fp32"
    assert "openvino int8: label agreement" in high.info.reason and "< min_label_agreement 1.01" in high.info.reason
    # an explicit runtime with precision auto chooses among that runtime's paths only
    kw["caps"] = NO_BF16
    ov = create_engine(weights, "openvino", "cpu", "auto", (H, W), min_label_agreement=0.0, **kw)
    assert (ov.info.backend, ov.info.precision) == ("openvino", "int8")
    assert ov.info.reason.startswith("backend openvino requested, precision auto: openvino int8")
    ort = create_engine(weights, "onnxruntime", "cpu", "auto", (H, W), min_label_agreement=1.01, **kw)
    assert (ort.info.backend, ort.info.precision) == ("onnxruntime", "fp32")
    assert "onnxruntime int8: label agreement" in ort.info.reason
    # a report saying the int8 file is poor keeps auto off it at the default floor
    kw["caps"] = caps
    jpath = report_paths(q, "openvino")[0]
    saved = jpath.read_text()
    try:
        rep = json.loads(saved)
        rep["label_agreement"] = 0.5
        jpath.write_text(json.dumps(rep))
        e = create_engine(weights, "auto", "cpu", "auto", (H, W), **kw)
        assert e.info.precision != "int8" or e.info.backend != "openvino"
        assert "label agreement 0.5000 (quantization report" in e.info.reason
    finally:
        jpath.write_text(saved)


def test_auto_never_quantizes_at_startup_and_runtime_keeps_cpu_auto(model, tmp_path):
    e = create_engine(model, "auto", "cpu", "auto", (H, W), num_threads=1, cache_dir=tmp_path,
                      log=lambda m: None, warmup=False, caps="FP32,INT8,BF16", min_label_agreement=0.0,
                      agreement_check=startup_agreement)
    assert "openvino int8: no quantized model in the cache" in e.info.reason
    # next in the bf16 ranking: OpenVINO bf16 (compiled f32 where the CPU really lacks bf16)
    assert e.info.backend == "openvino" and e.info.precision == ("bf16" if has_bf16() else "fp32")
    assert "start-up check on 2 generated scenes" in e.info.reason
    assert not (tmp_path / "int8").exists()
    assert resolve_device("cpu", "auto") == ("cpu", "auto")


def test_warm_start_on_the_cached_int8_file_imports_no_torch(cache):
    """`liteseg quantize --weights` keys its file like the node's look-up, so the node's CPU auto choice
    finds it and its report at start-up, without torch."""
    from conftest import start_runtime

    weights = cache / "random.pt"
    first = start_runtime(weights, cache, min_agreement=0.0)  # metadata not cached yet: loads the checkpoint
    warm = start_runtime(weights, cache, min_agreement=0.0)
    for run in (first, warm):
        assert run["engine"] == ["onnxruntime", "int8"], run["logs"]
        assert not any("exporting" in m or "quantizing" in m for m in run["logs"])
    assert not warm["torch"] and not warm["onnx"] and not warm["openvino"], warm
    assert warm["label"] == first["label"]


# ----------------------------------------------------------------------------- trained demo weights
@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from liteseg_ros.model import load_checkpoint

    size = (192, 320)
    m = load_checkpoint(DEMO, map_location="cpu").eval()
    d = tmp_path_factory.mktemp("demo")
    q, _ = quantize_model(m, d / "demo_int8.onnx", size, synthetic_samples(16, size, 0),
                          synthetic_samples(6, size, HOLDOUT_SEED), ["onnxruntime", "openvino"], 1,
                          calib_source="generated", holdout_source="generated", log=lambda m: None)
    return m, size, q, d


@needs_demo
def test_demo_weights_every_cpu_path_agrees_with_pytorch_fp32(demo, record_property):
    m, size, q, d = demo
    pipe = reference_pipeline(m, size)
    held = synthetic_samples(6, size, HOLDOUT_SEED)
    paths = [("pytorch", "fp32", m), ("onnxruntime", "fp32", m), ("openvino", "fp32", m),
             ("onnxruntime", "int8", q), ("openvino", "int8", q)]
    if has_bf16():
        paths.append(("openvino", "bf16", m))
    floors = {"fp32": 0.999, "bf16": 0.99, "int8": 0.99}  # int8: the default recipe keeps >= 99 %
    lines = []
    for backend, precision, src in paths:
        eng = create_engine(src, backend, "cpu", precision, size, num_threads=1, cache_dir=d, log=lambda m: None,
                            warmup=False)
        res = compare_on_samples(eng, pipe, held)
        lines.append(f"{backend} {precision}: label agreement {res['label_agreement']:.4%}, mIoU fp32 "
                     f"{100 * res['miou_fp32_gt']:.2f} -> {100 * res['miou_int8_gt']:.2f} "
                     f"(drop {res['miou_drop_points']:+.2f} points)")
        record_property(f"{backend}_{precision}_agreement", res["label_agreement"])
        assert res["label_agreement"] >= floors[precision], lines[-1]
        if precision != "fp32":
            assert res["miou_drop_points"] <= 1.0, lines[-1]
    print("\n" + "\n".join(lines))


def test_the_agreement_check_is_the_callers(model, tmp_path):
    """The engines measure nothing themselves: a bf16 path whose agreement is unknown is measured by the
    check the caller hands in (and the answer cached), or skipped when there is none."""
    kw = dict(num_threads=1, log=lambda m: None, warmup=False, caps="FP32,INT8,BF16", min_label_agreement=0.99)
    calls: list[tuple] = []

    def poor(engine, module, size):
        calls.append((engine.info.backend, engine.info.precision, module is model, size))
        return 0.5, "the caller's check"

    e = create_engine(model, "openvino", "cpu", "auto", (H, W), cache_dir=tmp_path / "a", agreement_check=poor, **kw)
    assert calls == [("openvino", "bf16" if has_bf16() else "fp32", True, (H, W))]
    assert e.info.precision == "fp32" and "openvino bf16: label agreement 0.5000 (the caller's check)" in e.info.reason
    e = create_engine(model, "openvino", "cpu", "auto", (H, W), cache_dir=tmp_path / "a", agreement_check=poor, **kw)
    assert len(calls) == 1 and "label agreement 0.5000 (start-up check, cached)" in e.info.reason
    e = create_engine(model, "openvino", "cpu", "auto", (H, W), cache_dir=tmp_path / "b", **kw)
    assert e.info.precision == "fp32" and "openvino bf16: agreement unknown (no agreement check given)" in e.info.reason
