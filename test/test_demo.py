"""`liteseg demo` end to end on a short generated drive, and the bundled demo weights' quality floor."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from liteseg_ros.runtime import demo_weights_path


def test_demo_command_end_to_end(tmp_path, tiny_checkpoint):
    out = tmp_path / "demo"
    exe = Path(sys.executable).parent / "liteseg"
    proc = subprocess.run([str(exe), "demo", "--weights", str(tiny_checkpoint), "--frames", "6", "--rate", "4",
                           "--size", "90x160", "--network-size", "64x96", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "frames segmented" in proc.stdout and "latency camera->overlay" in proc.stdout
    assert "free space: grids / scans received" in proc.stdout and (out / "free_space.png").is_file()
    sheet = cv2.imread(str(out / "contact_sheet.png"))
    assert sheet is not None and sheet.shape[1] == 5 * 320  # input, colour, overlay, mask, free space
    cap = cv2.VideoCapture(str(out / "overlay.mp4"))
    ok, frame = cap.read()
    assert ok and frame.shape[:2] == (90, 160)
    assert (out / "node.log").read_text().count("active: segmenting") == 1


def test_demo_reports_a_node_that_cannot_start(tmp_path):
    exe = Path(sys.executable).parent / "liteseg"
    proc = subprocess.run([str(exe), "demo", "--weights", str(tmp_path / "missing.pt"), "--frames", "2",
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr


@pytest.mark.skipif(not demo_weights_path().is_file(), reason="demo weights not built yet")
def test_demo_weights_segment_held_out_scenes():
    """The bundled model must stay good on generated scenes it never saw (seeds >= 10000)."""
    from liteseg_ros import params
    from liteseg_ros.demo import DEMO_NETWORK_SIZE
    from liteseg_ros.runtime import build_pipeline
    from liteseg_ros.synthetic import SceneConfig, generate_scene
    from liteseg_ros.train.metrics import ConfusionMatrix

    values = params.pipeline_settings(dict(weights="demo", backend="pytorch", network_height=DEMO_NETWORK_SIZE[0],
                                           network_width=DEMO_NETWORK_SIZE[1]))
    pipe, source = build_pipeline(replace(values, mask_groups={}), log=lambda s: None)
    assert source.name and not source.random
    cm = ConfusionMatrix(19)
    for seed in range(10000, 10012):
        s = generate_scene(seed, SceneConfig(height=180, width=320))
        cm.update(pipe(s.image).label, s.label)
    m = cm.compute(list(pipe.classes.names))
    # Measured when shipped (MODEL_CARD.md, v8): on these 12 scenes mIoU 0.574; road 0.968, sky 0.948, car 0.905,
    # pole 0.320, traffic light 0.442, traffic sign 0.392, bicycle 0.424 (0.617 over 16 scenes). Thin classes are
    # floored too: class-weighted training lifted them from ~0.1-0.2 and a regression there would otherwise go
    # unseen. v7 before its class offsets (liteseg calibrate) measured mIoU 0.547 here and bicycle ~0.1 on 16
    # scenes: the mIoU and bicycle floors fail if the offsets are lost.
    iou = dict(zip(pipe.classes.names, m.iou, strict=True))
    assert m.miou >= 0.555, m.table()
    assert iou["road"] >= 0.94 and iou["sky"] >= 0.91 and iou["car"] >= 0.87, m.table()
    assert iou["pole"] >= 0.25 and iou["traffic_light"] >= 0.30 and iou["traffic_sign"] >= 0.25, m.table()
    assert iou["bicycle"] >= 0.30, m.table()
    assert np.isfinite(m.miou)


def test_demo_drive_is_held_out_from_the_demo_weights_training_scenes():
    """The drive's first frame is ``generate_scene(seed)``; the old default 2026 was a training scene of runs 3-8,
    so the contact sheet showed a memorised frame. Synthetic training runs use seeds below HELD_OUT_FIRST_SEED."""
    from liteseg_ros.cli import build_parser
    from liteseg_ros.synthetic import SceneConfig, drive, generate_scene
    from liteseg_ros.train.config import HELD_OUT_FIRST_SEED

    seed = build_parser().parse_args(["demo"]).seed
    assert seed >= HELD_OUT_FIRST_SEED
    cfg = SceneConfig(height=90, width=160)
    assert np.array_equal(next(drive(seed, 1, cfg)).image, generate_scene(seed, cfg).image)
