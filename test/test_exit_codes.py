"""Every ``liteseg`` command tells bad input (exit 2) from a failure while working (exit 1).

Runs the real console entry point in a subprocess, as a script would, with input that cannot work;
the README's "Exit codes" table promises what is checked here.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from liteseg_ros.defaults import EXIT_FAILURE, EXIT_USAGE
from liteseg_ros.engines.tensorrt import tensorrt_status


def liteseg(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "liteseg_ros.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


@pytest.mark.parametrize(("args", "says"), [
    (["export", "--weights", "/nonexistent/w.pt"], "/nonexistent/w.pt"),
    (["quantize", "--random-weights", "--calib", "/nonexistent/calib"], "not a directory"),
    (["bench", "--random-weights", "--backends", "magic"], "magic"),
    (["info", "--weights", "/nonexistent/w.pt"], "/nonexistent/w.pt"),
    (["export", "--random-weights", "--size", "big"], "HEIGHTxWIDTH"),  # argparse's own usage error
    (["play", "bag", "--clock", "--clock-hz", "0"], "--clock-hz: must be > 0"),  # was ZeroDivisionError
    (["play", "bag", "--clock", "--clock-hz", "-5"], "--clock-hz: must be > 0"),
    (["play", "bag", "--rate", "nan"], "--rate/-r: nan is not a finite number"),
    (["play", "bag", "--delay", "inf"], "--delay: inf is not a finite number"),
    (["bag", "in", "out", "-p", "overlay_alpha:=.nan", "-p", "confidence_threshold:=.inf"],
     "overlay_alpha: nan is not a finite number"),
])
def test_bad_input_exits_2_with_one_message(args, says, tmp_path):
    proc = liteseg(*args, cwd=tmp_path)
    assert proc.returncode == EXIT_USAGE, proc.stderr
    assert says in proc.stderr and "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing was written


@pytest.mark.skipif(tensorrt_status() == "ok", reason="needs a machine without TensorRT")
def test_a_failure_while_working_exits_1(tmp_path):
    proc = liteseg("export", "--random-weights", "--format", "tensorrt", "--size", "64x128",
                   "--cache-dir", str(tmp_path / "cache"), cwd=tmp_path)
    assert proc.returncode == EXIT_FAILURE, proc.stderr
    assert "tensorrt unavailable" in proc.stderr and "Traceback" not in proc.stderr


def test_the_demo_refuses_an_empty_image_folder_before_starting_the_node(tmp_path):
    (tmp_path / "frames").mkdir()
    proc = liteseg("demo", "--images", str(tmp_path / "frames"), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == EXIT_USAGE, proc.stderr
    assert "no images in" in proc.stderr and "starting the node" not in proc.stdout
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("classes", [0, 300])
def test_info_on_a_state_dict_with_an_impossible_class_count(tmp_path, classes):
    """Before: a traceback (LiteSeg's or ClassTable's ValueError) and exit 0."""
    import torch

    from liteseg_ros.model import LiteSeg

    sd = LiteSeg("mobilenetv2", 19).state_dict()
    w = sd["last_conv.6.weight"]
    sd["last_conv.6.weight"] = torch.zeros(classes, *w.shape[1:])
    sd["last_conv.6.bias"] = torch.zeros(classes)
    torch.save(sd, tmp_path / "sd.pth")
    proc = liteseg("info", "--weights", str(tmp_path / "sd.pth"), cwd=tmp_path)
    assert proc.returncode == EXIT_USAGE, proc.stderr
    assert f"has {classes} classes; a LiteSeg network needs 1 to 254" in proc.stderr
    assert "Traceback" not in proc.stderr


def _onnx_that_fails_at_run_time(path) -> None:
    """Our export with one more output: a Gather whose index is out of range, so the file loads (shapes
    infer) and fails on the first batch."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from liteseg_ros.engines.export import export_onnx
    from liteseg_ros.tools.bench import random_weight_model

    export_onnx(random_weight_model(seed=1), path, (64, 96))
    m = onnx.load(str(path))
    g = m.graph
    label = next(o for o in g.output if o.name == "label")
    g.initializer.append(numpy_helper.from_array(np.array([100000], np.int64), "bad_index"))
    for n in g.node:
        n.output[:] = ["label_pre" if o == "label" else o for o in n.output]
    g.node.append(helper.make_node("Gather", ["label_pre", "bad_index"], ["label_gathered"], axis=1))
    g.node.append(helper.make_node("Identity", ["label_pre"], ["label"]))
    g.output.append(helper.make_tensor_value_info("label_gathered", label.type.tensor_type.elem_type, None))
    onnx.save(m, str(path))


def test_onnx_weights_that_fail_at_warm_up_are_one_message_exit_2(tmp_path):
    """Before: a traceback from inside ONNX Runtime (exit 1)."""
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_bag import write_bag

    bad = tmp_path / "bad.onnx"
    _onnx_that_fails_at_run_time(bad)
    write_bag(tmp_path / "in", "sqlite3", {"/front/image_raw": "bgr8"}, n=2)
    proc = liteseg("bag", str(tmp_path / "in"), str(tmp_path / "out"), "-t", "/front/image_raw", "--no-progress",
                   "-p", f"weights:={bad}", "-p", "backend:=onnxruntime", "-p", "network_width:=96",
                   "-p", "network_height:=64", cwd=tmp_path)
    assert proc.returncode == EXIT_USAGE, proc.stderr[-3000:]
    assert f"{bad} loads but fails on a dummy 64x96 batch at warm-up" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
