"""The node end to end: its own process, real DDS, frames from this process, every output checked."""
from __future__ import annotations

import time

import numpy as np
import pytest
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from liteseg_ros import image_codec
from liteseg_ros.classes import ClassTable
from liteseg_ros.msg import DrivableBoundary, FrameStats, SegmentationInfo

pytestmark = pytest.mark.ros

BEST_EFFORT = QoSProfile(depth=5, reliability=QoSReliabilityPolicy.BEST_EFFORT)
RELIABLE = QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE,
                     durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
NET = {"network_width": 96, "network_height": 64}
GROUPS = {"mask_groups": {"drivable": ["road"], "vehicles": ["car", "truck", "bus"]}}


def frame(h: int, w: int, seed: int) -> np.ndarray:
    from liteseg_ros.synthetic import SceneConfig, generate_scene

    return generate_scene(seed, SceneConfig(height=h, width=w)).image


def image_msg(arr: np.ndarray, encoding: str, stamp_ns: int, frame_id: str = "cam") -> Image:
    msg = Image()
    if encoding == "rgb8":
        arr = arr[:, :, ::-1]
    elif encoding == "mono8":
        arr = arr.mean(axis=2).astype(np.uint8)
    image_codec.fill_image(msg, np.ascontiguousarray(arr), encoding)
    msg.header.frame_id = frame_id
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    return msg


def stamp_ns(header) -> int:
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


class Outputs:
    """Subscribes to every output of /liteseg the way a downstream user would."""

    TOPICS = {"label": Image, "color": Image, "overlay": Image, "confidence": Image, "masks/drivable": Image,
              "masks/vehicles": Image, "drivable_boundary": DrivableBoundary, "stats": FrameStats}

    def __init__(self, ros, ns: str = "/liteseg") -> None:
        self.ros = ros
        self.got = {k: ros.collect(t, f"{ns}/{k}") for k, t in self.TOPICS.items()}

    def by_stamp(self, stamp: int) -> dict:
        out = {}
        for k, msgs in self.got.items():
            for m in msgs:
                if stamp_ns(m.header) == stamp:
                    out[k] = m
        return out

    def wait_stamp(self, stamp: int, timeout: float = 60.0) -> dict:
        self.ros.wait_for(lambda: len(self.by_stamp(stamp)) == len(self.TOPICS), timeout,
                          f"all outputs for stamp {stamp} (have {sorted(self.by_stamp(stamp))})")
        return self.by_stamp(stamp)


def wait_matched(ros, pub, node, timeout=60.0):
    ros.wait_for(lambda: pub.get_subscription_count() > 0 or not node.alive(), timeout, "node subscription")
    assert node.alive(), node.output()


def check_frame(outs: dict, h: int, w: int, frame_id: str, stamp: int) -> None:
    """Encodings, sizes, headers, and mask/label/colour consistency of one frame's outputs."""
    classes = ClassTable.cityscapes()
    for k, m in outs.items():
        assert m.header.frame_id == frame_id, k
        assert stamp_ns(m.header) == stamp, k
    label = image_codec.decode_image(outs["label"], want="bgr8")[:, :, 0]
    assert outs["label"].encoding == "mono8" and label.shape == (h, w)
    assert outs["color"].encoding == "rgb8" and (outs["color"].height, outs["color"].width) == (h, w)
    assert outs["overlay"].encoding == "bgr8" and (outs["overlay"].height, outs["overlay"].width) == (h, w)
    assert outs["confidence"].encoding == "mono8"
    assert set(np.unique(label)) <= set(range(19)) | {255}
    color = image_codec.decode_image(outs["color"], want="rgb8")
    assert np.array_equal(color, classes.palette_lut()[label])
    for group, names in GROUPS["mask_groups"].items():
        mask = image_codec.decode_image(outs[f"masks/{group}"])[:, :, 0]
        ids = [classes.index(n) for n in names]
        assert np.array_equal(mask == 255, np.isin(label, ids)), group
        assert set(np.unique(mask)) <= {0, 255}
    b = outs["drivable_boundary"]
    assert (b.width, b.height) == (w, h) and len(b.row) == w
    road = label == 0
    assert b.drivable_fraction == pytest.approx(road.mean(), abs=1e-6)
    rows = np.asarray(b.row)
    assert np.array_equal(rows == -1, ~road[-1])


def test_every_output_for_best_effort_and_reliable_cameras(start_node, ros, tiny_checkpoint):
    node = start_node({"weights": str(tiny_checkpoint), **NET, **GROUPS})
    outs = Outputs(ros)
    cam_infos = ros.collect(CameraInfo, "/liteseg/label/camera_info")
    be = ros.node.create_publisher(Image, "/image", BEST_EFFORT)
    rel = ros.node.create_publisher(Image, "/image", RELIABLE)
    info_pub = ros.node.create_publisher(CameraInfo, "/camera_info", RELIABLE)
    wait_matched(ros, be, node)
    ros.wait_for(lambda: outs.got["label"] is not None and
                 ros.node.count_publishers("/liteseg/label") > 0, 60, "node publishers")
    time.sleep(0.5)
    cam = CameraInfo(width=640, height=480, k=[500.0, 0, 320, 0, 500, 240, 0, 0, 1],
                     p=[500.0, 0, 320, 0, 0, 500, 240, 0, 0, 0, 1, 0])
    info_pub.publish(cam)
    cases = [(be, 480, 640, "bgr8", "front"), (rel, 720, 1280, "rgb8", "wide"), (be, 240, 320, "mono8", "ir")]
    for i, (pub, h, w, enc, fid) in enumerate(cases):
        stamp = 1_700_000_000_000_000_000 + i * 1_000_000
        pub.publish(image_msg(frame(h, w, i), enc, stamp, fid))
        got = outs.wait_stamp(stamp)
        check_frame(got, h, w, fid, stamp)
        stats = got["stats"]
        assert stats.processed >= i + 1 and stats.infer_ms > 0 and stats.rejected == 0

    # ~/label/camera_info: the camera_info at the label's (input) resolution, with the frame's header
    ros.wait_for(lambda: len(cam_infos) >= 3, 20, "label camera_info")
    ci = cam_infos[0]
    assert stamp_ns(ci.header) == 1_700_000_000_000_000_000 and ci.header.frame_id == "front"
    assert list(ci.k) == list(cam.k) and (ci.width, ci.height) == (640, 480)

    # ~/info is latched: a subscriber that arrives now still gets it.
    late = ros.collect(SegmentationInfo, "/liteseg/info", LATCHED)
    ros.wait_for(lambda: late, 20, "latched ~/info")
    info = late[0]
    assert list(info.class_names) == list(ClassTable.cityscapes().names)
    assert (info.network_width, info.network_height) == (96, 64)
    assert {g.name: list(g.class_names) for g in info.mask_groups} == GROUPS["mask_groups"]
    assert info.backend and info.model_name == "tiny-random"
    assert node.alive()


def test_compressed_input(start_node, ros, tiny_checkpoint):
    node = start_node({"weights": str(tiny_checkpoint), **NET, **GROUPS, "input_transport": "compressed"})
    outs = Outputs(ros)
    pub = ros.node.create_publisher(CompressedImage, "/image/compressed", BEST_EFFORT)
    wait_matched(ros, pub, node)
    time.sleep(0.5)
    fmt, data = image_codec.encode_compressed(frame(360, 480, 7), "jpeg")
    msg = CompressedImage(format=fmt, data=data)
    msg.header.frame_id = "jpeg_cam"
    msg.header.stamp.sec = 42
    pub.publish(msg)
    check_frame(outs.wait_stamp(42 * 1_000_000_000), 360, 480, "jpeg_cam", 42 * 1_000_000_000)


def test_bad_frames_are_rejected_and_the_node_keeps_serving(start_node, ros, tiny_checkpoint):
    node = start_node({"weights": str(tiny_checkpoint), **NET, **GROUPS, "error_log_period": 0.0})
    outs = Outputs(ros)
    pub = ros.node.create_publisher(Image, "/image", RELIABLE)
    wait_matched(ros, pub, node)
    time.sleep(0.5)
    good = image_msg(frame(120, 160, 1), "bgr8", 0)
    bad = []
    m = Image(height=120, width=160, encoding="32FC1", step=160 * 4, data=bytes(160 * 4 * 120))
    bad.append(("unsupported encoding", m))
    m = Image(height=120, width=160, encoding="bgr8", step=480, data=bytes(480 * 60))
    bad.append(("truncated", m))
    m = Image(height=120, width=160, encoding="bgr8", step=100, data=bytes(100 * 120))
    bad.append(("step too small", m))
    bad.append(("zero size", Image(height=0, width=0, encoding="bgr8", step=0)))
    bad.append(("absurd size", Image(height=100000, width=100000, encoding="mono8", step=100000, data=b"x")))
    for i, (_, m) in enumerate(bad):
        m.header.stamp.sec = 100 + i
        pub.publish(m)
        time.sleep(0.3)
    good.header.stamp.sec = 200
    pub.publish(good)
    got = outs.wait_stamp(200 * 1_000_000_000)
    assert node.alive()
    assert got["stats"].rejected == len(bad), got["stats"]
    for i in range(len(bad)):
        assert not outs.by_stamp((100 + i) * 1_000_000_000)
    log = node.output()
    assert "rejected frame on /image" in log and "32FC1" in log and "height=120" in log


def test_burst_drops_old_frames_instead_of_queueing(start_node, ros, tiny_checkpoint):
    # A network big enough that a frame takes tens of ms: the burst must arrive while the worker is busy
    # (at 320x192 the faster post-processing kept up with what best-effort DDS delivered, so nothing
    # was replaced in the slot and the test had nothing to observe).
    node = start_node({"weights": str(tiny_checkpoint), "network_width": 640, "network_height": 384,
                       **GROUPS})
    outs = Outputs(ros)
    pub = ros.node.create_publisher(Image, "/image", BEST_EFFORT)
    wait_matched(ros, pub, node)
    time.sleep(0.5)
    n = 30
    imgs = [image_msg(frame(240, 320, i % 3), "bgr8", (300 + i) * 1_000_000_000) for i in range(n)]
    for m in imgs:
        pub.publish(m)  # many times faster than the node can segment
        time.sleep(0.01)
    last = (300 + n - 1) * 1_000_000_000
    got = outs.wait_stamp(last)
    ros.wait_for(lambda: outs.got["stats"][-1].header.stamp.sec == 300 + n - 1, 20, "last stats")
    stats = outs.got["stats"][-1]
    processed_stamps = {m.header.stamp.sec for m in outs.got["label"]}
    # Best effort with depth 1 may also lose frames inside DDS before our callback sees them; every
    # frame the node did receive is either processed or counted as dropped, never queued.
    assert 1 < stats.received <= n
    assert stats.dropped > 0
    assert stats.processed + stats.dropped == stats.received, stats
    assert len(processed_stamps) == stats.processed < n
    assert got["label"].header.stamp.sec == 300 + n - 1  # the newest frame is never the one dropped


def test_live_parameter_changes(start_node, ros, tiny_checkpoint):
    from rclpy.parameter import Parameter

    node = start_node({"weights": str(tiny_checkpoint), **NET, **GROUPS})
    outs = Outputs(ros)
    pub = ros.node.create_publisher(Image, "/image", RELIABLE)
    wait_matched(ros, pub, node)
    set_params = ros.parameter_setter("/liteseg")

    assert set_params(Parameter("confidence_threshold", value=1.0)) == [(True, "")]
    ok, reason = set_params(Parameter("mask_groups.vehicles", value=["car", "spaceship"]))[0]
    assert not ok and "spaceship" in reason and "road" in reason
    ok, reason = set_params(Parameter("overlay_alpha", value=1.5))[0]
    assert not ok
    ok, reason = set_params(Parameter("network_width", value=128))[0]
    assert not ok and "read-only" in reason
    assert set_params(Parameter("mask_groups.vehicles", value=["car"])) == [(True, "")]
    time.sleep(0.3)
    img = frame(120, 160, 3)
    pub.publish(image_msg(img, "bgr8", 500 * 1_000_000_000))
    got = outs.wait_stamp(500 * 1_000_000_000)
    label = image_codec.decode_image(got["label"])[:, :, 0]
    assert (label == 255).all()  # threshold 1.0: nothing is confident enough
    conf = image_codec.decode_image(got["confidence"])[:, :, 0]
    assert conf.max() < 255
    assert node.alive()


@pytest.mark.parametrize("params,expected", [
    ({"overlay_alfa": 0.3}, "unknown parameter 'overlay_alfa'"),
    ({"overlay_alpha": 7.5}, "overlay_alpha"),
    ({"backend": "cuda-magic"}, "backend"),
    ({"mask_groups": {"drivable": ["road", "runway"]}}, "runway"),
    ({"allow_random_weights": False}, "no weights given"),
])
def test_bad_configuration_refuses_to_start_with_a_clear_message(start_node, params, expected):
    p = start_node({"allow_random_weights": True, **NET, **params})
    code = p.proc.wait(90)
    assert code != 0
    assert expected in p.output(), p.output()


def test_missing_and_corrupt_weights_refuse_to_start(start_node, tmp_path):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x80\x02not a checkpoint at all")
    for weights, expected in ((str(tmp_path / "nope.pth"), "does not exist"), (str(corrupt), "corrupt.pth")):
        p = start_node({"weights": weights, **NET})
        assert p.proc.wait(90) != 0
        assert expected in p.output(), p.output()


def test_degrades_to_standard_messages_without_the_custom_interfaces(ros, tiny_checkpoint, tmp_path):
    """Where liteseg_ros.msg is not built the node still serves every standard-message output."""
    import yaml
    from conftest import NodeProcess, ros_env

    pf = tmp_path / "p.yaml"
    pf.write_text(yaml.safe_dump({"/**": {"ros__parameters": {"weights": str(tiny_checkpoint), **NET}}}))
    node = NodeProcess(["--ros-args", "--params-file", str(pf)], env=ros_env(LITESEG_DISABLE_CUSTOM_MSGS="1"),
                       log_path=tmp_path / "node.log")
    try:
        labels = ros.collect(Image, "/liteseg/label")
        masks = ros.collect(Image, "/liteseg/masks/drivable")
        pub = ros.node.create_publisher(Image, "/image", RELIABLE)
        wait_matched(ros, pub, node)
        time.sleep(0.5)
        pub.publish(image_msg(frame(120, 160, 5), "bgr8", 77 * 1_000_000_000))
        ros.wait_for(lambda: labels and masks, 60, "label and mask")
        topics = dict(ros.node.get_topic_names_and_types())
        assert "/liteseg/info" not in topics and "/liteseg/stats" not in topics
        assert "messages are not built" in node.output()
    finally:
        node.stop()


def test_label_info_matches_what_nav2_reads_and_follows_the_threshold(start_node, ros, tiny_checkpoint):
    """vision_msgs/LabelInfo on ~/label_info (latched): class ids = label values, names, threshold."""
    pytest.importorskip("vision_msgs.msg", reason="vision_msgs is not generated here (../shared/ros2-cli)")
    from rclpy.parameter import Parameter
    from rclpy.parameter_client import AsyncParameterClient
    from vision_msgs.msg import LabelInfo

    start_node({"weights": str(tiny_checkpoint), **NET, "confidence_threshold": 0.2})
    got = ros.collect(LabelInfo, "/liteseg/label_info", LATCHED)
    ros.wait_for(lambda: got, 60, "latched ~/label_info")
    first = got[-1]
    names = ClassTable.cityscapes().names
    assert [(c.class_id, c.class_name) for c in first.class_map] == list(enumerate(names))
    assert first.threshold == pytest.approx(0.2)
    client = AsyncParameterClient(ros.node, "/liteseg")
    assert client.wait_for_services(timeout_sec=30)
    fut = client.set_parameters([Parameter("confidence_threshold", value=0.6)])
    ros.wait_for(fut.done, 20, "set_parameters")
    assert fut.result().results[0].successful
    ros.wait_for(lambda: got[-1].threshold == pytest.approx(0.6), 20, "~/label_info with the new threshold")
    late = ros.collect(LabelInfo, "/liteseg/label_info", LATCHED)  # a subscriber that joins later
    ros.wait_for(lambda: late, 20, "latched ~/label_info for a late subscriber")
    assert late[-1].threshold == pytest.approx(0.6) and len(late[-1].class_map) == 19


def _diagnostics(ros, timeout: float = 30.0) -> list:
    from diagnostic_msgs.msg import DiagnosticArray

    got = ros.collect(DiagnosticArray, "/diagnostics")
    ros.wait_for(lambda: any(s.name.startswith("liteseg:") for m in got for s in m.status), timeout, "/diagnostics")
    return [s for m in got for s in m.status if s.name.startswith("liteseg:")]


def test_diagnostics_while_unconfigured_and_before_any_frame(start_node, ros, tiny_checkpoint):
    from diagnostic_msgs.msg import DiagnosticStatus

    waiting = start_node({"weights": str(tiny_checkpoint), **NET, "autostart": False, "use_sim_time": True},
                         name="liteseg")  # sim time with no /clock: diagnostics must still flow
    status = _diagnostics(ros)[-1]
    assert status.level == DiagnosticStatus.WARN and "unconfigured" in status.message
    waiting.stop()
    start_node({"weights": str(tiny_checkpoint), **NET}, extra_args=["-r", "image:=/no_camera_here"])
    ros.wait_for(lambda: any("no frame received on /no_camera_here" in s.message for s in _diagnostics(ros)),
                 60, "a warning about the silent input")


@pytest.mark.parametrize("text,bad_keys", [
    ("overlay_alpha: 1\nmask_groups:\n  drivable: road\n", []),  # an int for a float, one class for a group
    ("overlay_alpha: 3.0\nbackend: cuda-magic\nmask_groups:\n  drivable: [road, runway]\ntypo_key: 1\n",
     ["overlay_alpha", "backend", "runway", "typo_key"]),
])
def test_node_and_bag_tool_accept_and_refuse_the_same_params_files(start_node, tmp_path, tiny_checkpoint,
                                                                  text, bad_keys):
    from liteseg_ros import bag, params

    pf = tmp_path / "p.yaml"
    body = "".join(f"    {line}\n" for line in text.splitlines())
    pf.write_text(f"/**:\n  ros__parameters:\n    weights: demo\n    network_width: 96\n    network_height: 64\n"
                  f"    build_only: true\n{body}")
    try:
        bag.settings_from(pf)
        tool_error = ""
    except params.ParameterError as exc:
        tool_error = str(exc)
    node = start_node(params_file=pf)
    code = node.proc.wait(120)
    if not bad_keys:
        assert tool_error == "" and code == 0, node.output()
        return
    assert code == 2, node.output()
    out = node.output()
    assert "configuring" not in out  # refused before the model loads
    assert "Traceback" not in out
    for key in bad_keys:
        assert key in tool_error and key in out, (key, tool_error, out)


@pytest.mark.parametrize("content,expected", [
    (None, "does not exist"),
    ("/**:\n  ros__parameters: [unclosed\n", "is not a valid ROS params file"),
])
def test_unreadable_params_file_exits_2_with_one_message(start_node, tmp_path, content, expected):
    pf = tmp_path / "broken.yaml"
    if content is not None:
        pf.write_text(content)
    node = start_node(params_file=pf)
    assert node.proc.wait(60) == 2
    out = node.output()
    assert expected in out and str(pf) in out and "Traceback" not in out, out


NON_FINITE = ("overlay_alpha", "confidence_threshold", "diagnostics_period", "batch_window_ms", "min_label_agreement")


def test_non_finite_floats_exit_2_with_one_message(start_node):
    """Before: ``overlay_alpha:=.nan`` (and the others) gave a traceback and exit 1."""
    extra = []
    for i, key in enumerate(NON_FINITE):
        extra += ["-p", f"{key}:={('.nan', '.inf', '-.inf')[i % 3]}"]
    node = start_node(extra_args=extra)
    assert node.proc.wait(60) == 2
    out = node.output()
    assert "Traceback" not in out and "configuring" not in out, out
    for key in NON_FINITE:
        assert f"{key}: " in out and "is not a finite number" in out, (key, out)


def test_qos_override_for_no_topic_is_reported(start_node, ros, tiny_checkpoint):
    node = start_node({"weights": str(tiny_checkpoint), **NET,
                       "qos_overrides": {"/image": {"subscription": {"reliability": "reliable"}},
                                         "/cam/image_raw": {"subscription": {"reliability": "reliable"}}}},
                      extra_args=["-r", "image:=/cam/image_raw"])
    ros.wait_for(lambda: "active: segmenting" in node.output(), 90, "active node")
    ros.wait_for(lambda: "qos_overrides./image.subscription.reliability matches none" in node.output(), 10,
                 "the unmatched override warning")
    assert "qos_overrides./cam/image_raw.subscription.reliability matches none" not in node.output()
    ros.wait_for(lambda: ros.node.get_subscriptions_info_by_topic("/cam/image_raw"), 20, "subscription")
    subs = ros.node.get_subscriptions_info_by_topic("/cam/image_raw")
    assert subs[0].qos_profile.reliability == QoSReliabilityPolicy.RELIABLE


def test_process_all_frames_loses_nothing_in_a_burst(start_node, ros, tiny_checkpoint):
    """A reliable KEEP_ALL publisher far faster than the node: a small queue applies back-pressure and
    every frame is segmented (the newest-frame mode would drop most of them)."""
    from rclpy.qos import QoSHistoryPolicy

    node = start_node({"weights": str(tiny_checkpoint), **NET, "process_all_frames": True, "queue_size": 4,
                       "backend": "onnxruntime", "precision": "fp32"})
    stats = ros.collect(FrameStats, "/liteseg/stats")
    keep_all = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE, history=QoSHistoryPolicy.KEEP_ALL)
    pub = ros.node.create_publisher(Image, "/image", keep_all)
    wait_matched(ros, pub, node)
    ros.wait_for(lambda: ros.node.count_subscribers("/liteseg/stats") >= 1
                 and pub.get_subscription_count() > 0, 30, "matched")
    time.sleep(1.0)
    n = 120
    base = image_msg(frame(64, 96, 1), "bgr8", 0)
    for i in range(n):
        base.header.stamp.sec = 2000 + i
        pub.publish(base)  # back to back: many times the node's rate
    ros.wait_for(lambda: stats and stats[-1].received == n and stats[-1].processed == n, 120,
                 f"all {n} frames processed (last stats: {stats[-1] if stats else None})")
    last = stats[-1]
    assert last.dropped == 0 and last.rejected == 0, last
    assert "lost before the node received them" not in node.output()
