"""The node against hostile compressed input and with ONNX weights: its own process, real DDS.

Decompression bombs (fuzz/bombs.py) on image/compressed are rejected (counted in ``rejected``, one
throttled error), the node's memory does not move, and the next good frame is segmented; the
``max_input_pixels`` parameter bounds frames live. ``weights: FILE.onnx`` starts and segments.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rclpy.qos import QoSProfile, QoSReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from test_node import wait_matched

from liteseg_ros import image_codec
from liteseg_ros.msg import FrameStats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fuzz"))
import bombs  # noqa: E402

pytestmark = pytest.mark.ros
RELIABLE = QoSProfile(depth=20, reliability=QoSReliabilityPolicy.RELIABLE)
NET = {"network_width": 96, "network_height": 64}


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _jpeg_msg(data: bytes, sec: int) -> CompressedImage:
    m = CompressedImage()
    m.format = "jpeg"
    m.data = data
    m.header.stamp.sec = sec
    m.header.frame_id = "cam"
    return m


def _good_jpeg() -> bytes:
    from liteseg_ros.synthetic import SceneConfig, generate_scene

    return image_codec.encode_compressed(generate_scene(4, SceneConfig(height=120, width=160)).image, "jpeg")[1]


def test_bombs_are_rejected_by_the_node_and_memory_stays(start_node, ros, tiny_checkpoint):
    node = start_node({"weights": str(tiny_checkpoint), **NET, "input_transport": "compressed",
                       "process_all_frames": True, "error_log_period": 0.0})
    stats = ros.collect(FrameStats, "/liteseg/stats", RELIABLE)
    labels = ros.collect(Image, "/liteseg/label", RELIABLE)
    pub = ros.node.create_publisher(CompressedImage, "/image/compressed", RELIABLE)
    wait_matched(ros, pub, node, 90)
    time.sleep(0.5)
    good = _good_jpeg()
    pub.publish(_jpeg_msg(good, 1))
    ros.wait_for(lambda: labels, 60, "first label")
    before = _rss_mb(node.proc.pid)
    payloads = list(bombs.all_bombs().values())
    for k, data in enumerate(payloads * 2):
        pub.publish(_jpeg_msg(data, 100 + k))
        time.sleep(0.05)
    pub.publish(_jpeg_msg(good, 2))
    ros.wait_for(lambda: len(labels) >= 2, 60, "label after the bombs")
    ros.wait_for(lambda: stats and stats[-1].rejected == 2 * len(payloads), 30, "every bomb counted as rejected")
    after = _rss_mb(node.proc.pid)
    assert [m.header.stamp.sec for m in labels] == [1, 2]
    assert after - before < 100, (before, after)  # one bomb alone would need 200 MB .. 805 MB
    assert node.alive()
    out = node.output()
    assert "exceed max_pixels" in out and "cannot code the declared size" in out


def test_max_input_pixels_is_live(start_node, ros, tiny_checkpoint):
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    node = start_node({"weights": str(tiny_checkpoint), **NET, "input_transport": "compressed",
                       "process_all_frames": True})
    stats = ros.collect(FrameStats, "/liteseg/stats", RELIABLE)
    ros.collect(Image, "/liteseg/label", RELIABLE)
    pub = ros.node.create_publisher(CompressedImage, "/image/compressed", RELIABLE)
    ros.wait_for(lambda: pub.get_subscription_count() > 0 or not node.alive(), 90, "node subscription")
    time.sleep(0.5)
    cli = ros.node.create_client(SetParameters, "/liteseg/set_parameters")
    assert cli.wait_for_service(timeout_sec=30)
    req = SetParameters.Request(parameters=[Parameter(name="max_input_pixels", value=ParameterValue(
        type=ParameterType.PARAMETER_INTEGER, integer_value=160 * 120 - 1))])
    fut = cli.call_async(req)
    ros.wait_for(lambda: fut.done(), 30, "set_parameters")
    assert fut.result().results[0].successful, fut.result().results[0].reason
    pub.publish(_jpeg_msg(_good_jpeg(), 5))  # 160 x 120: one pixel too many now
    small = image_codec.encode_compressed(np.full((60, 80, 3), 90, np.uint8), "jpeg")[1]
    pub.publish(_jpeg_msg(small, 6))  # stats come with processed frames: this one reports the count
    ros.wait_for(lambda: stats, 30, "stats of the small frame")
    assert (stats[-1].header.stamp.sec, stats[-1].rejected, stats[-1].processed) == (6, 1, 1)


def test_node_runs_onnx_weights(start_node, ros, tiny_checkpoint, tmp_path):
    from liteseg_ros.engines.export import export_onnx
    from liteseg_ros.model import load_checkpoint

    onnx_path = export_onnx(load_checkpoint(tiny_checkpoint), tmp_path / "tiny.onnx", (64, 96))
    node = start_node({"weights": str(onnx_path), "backend": "onnxruntime", **NET})
    labels = ros.collect(Image, "/liteseg/label", RELIABLE)
    pub = ros.node.create_publisher(Image, "/image", RELIABLE)
    wait_matched(ros, pub, node, 90)
    time.sleep(0.5)
    msg = Image()
    image_codec.fill_image(msg, np.zeros((48, 80, 3), np.uint8), "bgr8")
    pub.publish(msg)
    ros.wait_for(lambda: labels, 60, "a label from the ONNX engine")
    assert (labels[0].height, labels[0].width) == (48, 80)
    assert "pickled" not in node.output()


def test_a_live_error_log_period_change_never_breaks_the_worker(start_node, ros, tiny_checkpoint):
    """rclpy's throttled logging raises ("logging filters cannot be changed between calls") when one call site
    is called with another period. With rejections logged through it, a live ``error_log_period`` change made
    the next rejected frame fail its batch, and the next change made the batch-failure line itself raise, out
    of the worker thread: the node served no frame after that. The package's own throttle follows the live
    period and counts what it holds back."""
    from rclpy.parameter import Parameter

    node = start_node({"weights": str(tiny_checkpoint), **NET, "input_transport": "compressed",
                       "process_all_frames": True, "error_log_period": 0.0})
    labels = ros.collect(Image, "/liteseg/label", RELIABLE)
    pub = ros.node.create_publisher(CompressedImage, "/image/compressed", RELIABLE)
    wait_matched(ros, pub, node, 90)
    set_params = ros.parameter_setter("/liteseg")
    good, sec = _good_jpeg(), 0
    for period in (0.0, 0.5, 3.0, 0.0, 7.5, 0.25):
        assert set_params(Parameter("error_log_period", value=period)) == [(True, "")]
        for _ in range(2):
            sec += 1
            pub.publish(_jpeg_msg(b"\xff\xd8 not a jpeg", sec))
        sec += 1
        pub.publish(_jpeg_msg(good, sec))
        ros.wait_for(lambda want=sec: any(m.header.stamp.sec == want for m in labels) or not node.alive(), 60,
                     f"the label of good frame {sec} after error_log_period := {period}")
        assert node.alive(), node.output()[-3000:]
    out = node.output()
    assert "cannot be changed between calls" not in out and "batch failed" not in out, out[-3000:]
    assert out.count("rejected frame on /image/compressed") >= 3, out[-3000:]
