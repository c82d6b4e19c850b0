"""The engine selection rules, one by one, on the pure planner (``engines.selection.plan_engine``).

Nothing here builds an engine, imports a runtime or needs a GPU: each test states a machine
(``StaticFacts``: which runtimes are installed, CUDA, CPU capabilities, cached int8 files and their
reports) and a request, and checks the plan. ``test_engines.py`` / ``test_cpu_paths.py`` build the
real engines the plans name.
"""
from __future__ import annotations

import pytest

from liteseg_ros import defaults, params
from liteseg_ros.engines import EngineError
from liteseg_ros.engines.selection import (
    BACKENDS,
    CUDA_AUTO_PRECISION,
    DEFAULT_MIN_LABEL_AGREEMENT,
    MIN_LABEL_AGREEMENT_RANGE,
    PRECISIONS,
    EngineRequest,
    StaticFacts,
    cpu_path_ranking,
    parse_device,
    plan_engine,
    requested_precision,
    resolve_device,
)

NO_BF16 = frozenset({"FP32", "INT8"})
BF16 = frozenset({"FP32", "INT8", "BF16"})
ALL_OK = {"pytorch": "ok", "onnxruntime": "ok", "openvino": "ok", "tensorrt": "ok"}
NO_TRT = {**ALL_OK, "tensorrt": "tensorrt not installed (No module named 'tensorrt')"}


def plan(backend="auto", device="cpu", precision="auto", floor=DEFAULT_MIN_LABEL_AGREEMENT, is_onnx=False, **facts):
    facts.setdefault("statuses", NO_TRT)
    return plan_engine(EngineRequest(backend, device, precision, floor, is_onnx, StaticFacts(**facts), "w.pt"))


def paths(p) -> list[tuple[str, str]]:
    return [(c.backend, c.precision) for c in p.choices]


# ----------------------------------------------------------------------------- CUDA
def test_cuda_missing_falls_back_to_the_cpu_with_the_reason():
    p = plan(device="cuda", cuda=False)
    assert p.first.device == "cpu" and p.is_cpu_choice
    assert any("CUDA is not available" in n for n in p.notes)
    # auto on CUDA meant fp16, which the CPU runs as fp32 (and says so)
    assert any("fp16 is a GPU precision" in n for n in p.notes) and {c.precision for c in p.choices} == {"fp32"}


def test_auto_on_cuda_is_tensorrt_then_pytorch_at_fp16():
    p = plan(device="cuda:1", cuda=True, statuses=ALL_OK)
    assert [(c.backend, c.device, c.precision, c.file) for c in p.choices] == [
        ("tensorrt", "cuda:1", CUDA_AUTO_PRECISION, "onnx-trt"), ("pytorch", "cuda:1", CUDA_AUTO_PRECISION, "module")]
    p = plan(device="cuda", cuda=True)  # no TensorRT
    assert paths(p) == [("pytorch", "fp16")] and "TensorRT unavailable" in p.first.reason


def test_fp16_on_cuda_is_decided_in_one_place():
    assert requested_precision("cuda:0", "auto") == CUDA_AUTO_PRECISION == "fp16"
    assert requested_precision("cpu", "auto") == "auto" and requested_precision("cuda", "fp32") == "fp32"
    assert plan("pytorch", "cuda", cuda=True).first.precision == CUDA_AUTO_PRECISION
    assert resolve_device("auto", "auto", cuda_available=lambda: True) == ("cuda", CUDA_AUTO_PRECISION)
    assert resolve_device("auto", "auto", cuda_available=lambda: False) == ("cpu", "auto")


def test_an_onnx_file_on_cuda_takes_the_files_precision_and_needs_an_onnx_runtime():
    p = plan(device="cuda", is_onnx=True, cuda=True, statuses=ALL_OK, file_precision="fp32")
    assert paths(p) == [("tensorrt", "fp32")] and p.first.file == "given"  # no PyTorch fallback for a file
    p = plan(device="cuda", is_onnx=True, cuda=True, ort_gpu=True, file_precision="fp16")
    assert paths(p) == [("onnxruntime", "fp16")]
    with pytest.raises(EngineError, match="onnxruntime-gpu"):
        plan(device="cuda", is_onnx=True, cuda=True)


# ----------------------------------------------------------------------------- CPU, named backends
def test_fp16_on_the_cpu_is_fp32_under_auto_and_an_error_with_a_named_backend():
    assert {c.precision for c in plan(precision="fp16").choices} == {"fp32"}
    for backend, allowed in (("pytorch", "fp32"), ("onnxruntime", "fp32, int8"), ("openvino", "fp32, bf16, int8")):
        with pytest.raises(EngineError, match=f"fp16' needs a CUDA device.*allowed: {allowed}"):
            plan(backend, "cpu", "fp16")


def test_named_backends_keep_their_own_rules():
    assert paths(plan("pytorch", precision="auto")) == [("pytorch", "fp32")]
    with pytest.raises(EngineError, match="CPU precision"):
        plan("pytorch", precision="int8")
    with pytest.raises(EngineError, match="use backend openvino for bf16"):
        plan("onnxruntime", precision="bf16")
    with pytest.raises(EngineError, match="int8 runs on device cpu"):
        plan("onnxruntime", "cuda", "int8", cuda=True)
    with pytest.raises(EngineError, match="openvino runs on device cpu"):
        plan("openvino", "cuda", "fp32")
    with pytest.raises(EngineError, match="tensorrt.*unavailable"):
        plan("tensorrt", "cuda", "fp16")
    p = plan("onnxruntime", precision="int8", has_int8_file=True)  # the cached int8 file
    assert p.first.file == "int8" and not p.is_cpu_choice


def test_int8_without_a_cached_file_runs_the_best_other_path_and_warns():
    """Nothing is quantized while an engine is built: without the int8 file the plan is the backend's
    best non-int8 path, with a warning naming `liteseg quantize`."""
    for backend, caps, want in (("onnxruntime", NO_BF16, ("onnxruntime", "fp32")), ("openvino", BF16, ("openvino", "bf16")),
                                ("auto", NO_BF16, ("onnxruntime", "fp32"))):
        p = plan(backend, precision="int8", caps=caps)
        assert paths(p)[0] == want and "int8" not in {c.file for c in p.choices}, backend
        assert len(p.warnings) == 1 and "liteseg quantize --weights w.pt" in p.warnings[0], p.warnings
        assert any("no int8 model in the cache" in n for n in p.notes)
    assert not plan("onnxruntime", precision="int8", has_int8_file=True).warnings
    with pytest.raises(EngineError, match="int8 runs on device cpu"):  # the device check still comes first
        plan("onnxruntime", "cuda", "int8", cuda=True)
    with pytest.raises(EngineError, match="CPU precision"):  # and so does the backend check
        plan("pytorch", precision="int8")


def test_bad_arguments_name_what_is_allowed():
    for kwargs, match in (({"backend": "magic"}, ", ".join(BACKENDS)), ({"precision": "int4"}, ", ".join(PRECISIONS)),
                          ({"device": "gpu"}, "cpu, cuda, cuda:N"), ({"floor": 2.0}, "min_label_agreement")):
        with pytest.raises(EngineError, match=match):
            plan(**kwargs)
    assert parse_device(" CUDA:3 ") == "cuda:3"


# ----------------------------------------------------------------------------- CPU auto
def test_bf16_only_where_the_cpu_reports_it():
    with_bf16 = plan(caps=BF16)
    assert ("openvino", "bf16") in paths(with_bf16)
    without = plan(caps=NO_BF16)
    assert all(prec != "bf16" for _, prec in paths(without))
    explicit = plan(precision="bf16", caps=NO_BF16)  # asked for: fp32 instead, and the reason says why
    assert {c.precision for c in explicit.choices} == {"fp32"} and "does not report BF16" in explicit.notes[-1]
    # the bf16 agreement is only known once built: the builder measures it
    assert next(c for c in with_bf16.choices if c.precision == "bf16").agreement is None


def test_int8_only_with_a_cached_file_whose_agreement_meets_the_floor():
    none = plan(caps=NO_BF16)
    assert ("onnxruntime", "int8") not in paths(none)
    assert any("no quantized model in the cache" in s for s in none.skipped)
    good = plan(caps=NO_BF16, has_int8_file=True, reports={"onnxruntime": (0.95, "quantization report, 16 held-out"),
                                                             "openvino": (0.995, "quantization report, 16 held-out")})
    assert paths(good) == [("openvino", "int8")] and good.first.agreement == 0.995 and good.enforce_agreement
    # ONNX Runtime's report is below 0.99: it is not even built
    assert any("onnxruntime int8: label agreement 0.9500" in s and "< min_label_agreement 0.99" in s
               for s in good.skipped)
    strict = plan(caps=NO_BF16, floor=1.01, has_int8_file=True, reports={"onnxruntime": (0.995, "report")})
    assert ("onnxruntime", "int8") not in paths(strict)
    assert ("openvino", "int8") in paths(strict)  # no report for OpenVINO: measured once built
    unknown = plan(caps=NO_BF16, has_int8_file=True)  # a file without a report: measured once built
    assert paths(unknown)[0] == ("onnxruntime", "int8") and unknown.first.agreement is None


def test_the_cpu_choice_follows_the_measured_table_and_the_installed_runtimes():
    p = plan(caps=NO_BF16)
    fastest_fp32 = next((b, prec) for b, prec, _ in cpu_path_ranking(NO_BF16) if prec == "fp32")
    # fp32 always qualifies, so the plan stops there: the runtimes after it are never asked about
    assert paths(p) == [fastest_fp32] == [("onnxruntime", "fp32")] and p.head == "auto: CPU default"
    assert [c.rank for c in p.choices] == [3] and p.ranking_size == 4
    no_ort = plan(caps=NO_BF16, statuses={**NO_TRT, "onnxruntime": "onnxruntime not installed"})
    assert paths(no_ort) == [("openvino", "fp32")]
    assert any("onnxruntime fp32: onnxruntime not installed" in s for s in no_ort.skipped)
    neither = plan(statuses={"pytorch": "ok"})
    assert paths(neither) == [("pytorch", "fp32")] and "onnxruntime unavailable" in neither.first.reason
    ov_only = plan("openvino", caps=BF16)  # a named runtime with precision auto: its own paths only
    assert {b for b, _ in paths(ov_only)} == {"openvino"} and ov_only.head.startswith("backend openvino requested")


def test_onnx_weights_restrict_the_backends_and_fix_the_precision():
    p = plan(is_onnx=True, file_precision="int8", caps=NO_BF16)
    assert paths(p) == [("onnxruntime", "int8"), ("openvino", "int8")] and {c.file for c in p.choices} == {"given"}
    assert p.first.agreement is None  # a given file's agreement comes from a report next to it, if any
    assert all(prec == "fp32" for _, prec in paths(plan(is_onnx=True, file_precision="fp32", caps=NO_BF16)))
    with pytest.raises(EngineError, match="not an ONNX file"):
        plan("pytorch", is_onnx=True)
    with pytest.raises(EngineError, match="needs onnxruntime"):
        plan(is_onnx=True, statuses={"pytorch": "ok"})


# ----------------------------------------------------------------------------- one source per default
def test_every_layer_takes_its_defaults_from_one_place():
    from liteseg_ros.model import BACKBONES as MODEL_BACKBONES
    from liteseg_ros.train.config import BACKBONES as TRAIN_BACKBONES

    assert tuple(MODEL_BACKBONES) == defaults.BACKBONES and TRAIN_BACKBONES is defaults.BACKBONES
    by_name = params.PARAMS_BY_NAME
    assert by_name["backend"].choices == BACKENDS and by_name["precision"].choices == PRECISIONS
    assert by_name["backbone"].choices == ("auto", *defaults.BACKBONES)
    assert (by_name["network_height"].default, by_name["network_width"].default) == defaults.NETWORK_SIZE
    agreement = by_name["min_label_agreement"]
    assert agreement.default == DEFAULT_MIN_LABEL_AGREEMENT
    assert (agreement.min, agreement.max) == MIN_LABEL_AGREEMENT_RANGE
    params.check_value("min_label_agreement", MIN_LABEL_AGREEMENT_RANGE[1])  # the engines' range is the node's
    with pytest.raises(params.ParameterError, match="out of range"):
        params.check_value("min_label_agreement", MIN_LABEL_AGREEMENT_RANGE[1] + 0.1)


def test_the_cpu_path_tables_say_where_they_come_from():
    from importlib import resources

    import yaml

    doc = yaml.safe_load((resources.files("liteseg_ros") / "data" / "cpu_paths.yaml").read_text())
    for table in ("bf16", "no_bf16"):
        assert "bench_cpu_paths.py" in doc[table]["command"] and doc[table]["machine"]
        ms = [row[2] for row in doc[table]["paths"]]
        assert ms == sorted(ms)  # fastest first, as the choice reads them
    assert cpu_path_ranking(BF16)[0][:2] == ("openvino", "int8")


def test_one_size_parser_and_one_image_suffix_rule():
    import argparse

    assert defaults.parse_size("360x640") == defaults.parse_size("360,640") == (360, 640)
    for bad in ("big", "4x4", "360"):
        with pytest.raises(argparse.ArgumentTypeError):
            defaults.parse_size(bad)
    assert defaults.is_image_file("A.PNG") and defaults.is_image_file("b.webp") and not defaults.is_image_file("c.txt")


def test_the_plan_asks_the_machine_only_what_it_needs():
    """Asking whether openvino or tensorrt is usable imports it (~0.9 s): a CPU start that ends on
    ONNX Runtime fp32 must not ask."""
    asked: list[str] = []

    class Recording(StaticFacts):
        def status(self, backend: str) -> str:
            asked.append(backend)
            return super().status(backend)

    p = plan_engine(EngineRequest(facts=Recording(statuses=NO_TRT, caps=NO_BF16)))
    assert paths(p) == [("onnxruntime", "fp32")] and set(asked) == {"onnxruntime"}
