"""liteseg_free_space end to end: its own process, real DDS, a real tf2 StaticTransformBroadcaster.

Masks are the synthetic world's exact drivable masks (ground truth, not a network's), with the
world's camera_info and a static transform of the world's camera pose; what the node publishes is
compared with ``liteseg_ros.free_space`` on the same inputs (which test_free_space.py checks against
the world's road layout), and the header, frame and units with what Nav2 reads.
"""
from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import Lifecycle, NodeProcess, ros_env
from diagnostic_msgs.msg import DiagnosticArray
from nav_msgs.msg import OccupancyGrid
from rclpy.qos import QoSProfile, QoSReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, LaserScan

from liteseg_ros import free_space_params as fsp
from liteseg_ros.classes import ClassTable
from liteseg_ros.free_space import FreeSpace, Intrinsics, Pose
from liteseg_ros.synthetic import SceneConfig, generate_scene

pytestmark = pytest.mark.ros

RELIABLE = QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE)
W, H = 320, 180
#: REP-103 optical frame (x right, y down, z forward) in a base frame (x forward, y left, z up), level.
OPTICAL_Q = (-0.5, 0.5, -0.5, 0.5)
SCENE = SceneConfig(height=H, width=W, cars=0, trucks_buses=0, people=0, cyclists=0, poles=0, vegetation=0)


class FreeSpaceProcess(NodeProcess):
    """``liteseg_free_space`` as its own process, as ``ros2 run`` starts it."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.cmd = [str(Path(sys.executable).parent / "liteseg_free_space"), *args]
        self.log_path = log_path
        self._log = open(log_path, "w+")  # noqa: SIM115
        self.proc = subprocess.Popen(self.cmd, env=ros_env(), stdout=self._log, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)


@pytest.fixture
def start_free_space(tmp_path):
    procs: list[FreeSpaceProcess] = []

    def _start(params: dict | None = None, extra: list[str] | None = None) -> FreeSpaceProcess:
        args = ["--ros-args", "-r", "mask:=/seg/masks/drivable", "-r", "camera_info:=/seg/label/camera_info"]
        if params:
            pf = tmp_path / f"fs_params_{len(procs)}.yaml"
            pf.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}))
            args += ["--params-file", str(pf)]
        p = FreeSpaceProcess(args + (extra or []), tmp_path / f"free_space_{len(procs)}.log")
        procs.append(p)
        return p

    yield _start
    for p in procs:
        p.stop()


def scene(seed: int) -> tuple[np.ndarray, CameraInfo, float]:
    """(drivable mask 0/255, camera_info, camera height) of a synthetic scene."""
    s = generate_scene(seed, SCENE)
    road = ClassTable().resolve_groups({"drivable": ["road"]})["drivable"]
    mask = np.where(np.isin(s.label, road), 255, 0).astype(np.uint8)
    cam = s.meta["camera"]
    info = CameraInfo(width=W, height=H, distortion_model="plumb_bob", d=[0.0] * 5)
    info.k = [cam["f_px"], 0.0, cam["cx"] - 0.5, 0.0, cam["f_px"], cam["horizon_y"] - 0.5, 0.0, 0.0, 1.0]
    info.header.frame_id = "camera_optical"
    return mask, info, cam["height_m"]


def mask_msg(mask: np.ndarray, stamp_s: int, frame_id: str = "camera_optical") -> Image:
    msg = Image(height=mask.shape[0], width=mask.shape[1], encoding="mono8", step=mask.shape[1])
    msg.data = mask.tobytes()
    msg.header.frame_id = frame_id
    msg.header.stamp.sec = stamp_s
    return msg


def static_tf(ros, height: float, child: str = "camera_optical", q=OPTICAL_Q):
    from geometry_msgs.msg import TransformStamped
    from tf2_ros import StaticTransformBroadcaster

    b = StaticTransformBroadcaster(ros.node)
    t = TransformStamped()
    t.header.frame_id, t.child_frame_id = "base_footprint", child
    t.transform.translation.z = height
    t.transform.rotation.x, t.transform.rotation.y, t.transform.rotation.z, t.transform.rotation.w = q
    b.sendTransform(t)
    return b


class Rig:
    """The test's side: mask and camera_info publishers, scan/grid/diagnostics subscribers."""

    def __init__(self, ros) -> None:
        self.ros = ros
        self.mask_pub = ros.node.create_publisher(Image, "/seg/masks/drivable", RELIABLE)
        self.info_pub = ros.node.create_publisher(CameraInfo, "/seg/label/camera_info", RELIABLE)
        self.scans = ros.collect(LaserScan, "/liteseg_free_space/scan")
        self.grids = ros.collect(OccupancyGrid, "/liteseg_free_space/grid")
        self.diags = ros.collect(DiagnosticArray, "/diagnostics")

    def wait_ready(self, node) -> None:
        self.ros.wait_for(lambda: self.mask_pub.get_subscription_count() > 0 and
                          self.info_pub.get_subscription_count() > 0 or not node.alive(), 60, "node subscriptions")
        assert node.alive(), node.output()

    def send(self, mask, info, stamp_s: int, frame_id: str = "camera_optical") -> None:
        self.info_pub.publish(info)
        time.sleep(0.05)
        self.mask_pub.publish(mask_msg(mask, stamp_s, frame_id))

    def scan_at(self, stamp_s: int) -> LaserScan | None:
        return next((m for m in self.scans if m.header.stamp.sec == stamp_s), None)

    def grid_at(self, stamp_s: int) -> OccupancyGrid | None:
        return next((m for m in self.grids if m.header.stamp.sec == stamp_s), None)

    def wait_status(self, text: str, timeout: float = 30.0, resend=None):
        """The first /diagnostics status saying ``text``; ``resend`` (mask, info, stamp) is sent meanwhile."""
        def hit():
            return next((s for m in self.diags for s in m.status
                         if s.name.startswith("liteseg_free_space:") and text in s.message), None)

        end = time.monotonic() + timeout
        while hit() is None and time.monotonic() < end:
            if resend:
                self.send(*resend)
            time.sleep(0.25)
        assert hit() is not None, f"no /diagnostics status said {text!r} in {timeout:.0f} s"
        return hit()

    def send_until(self, mask, info, stamp_s: int, said: str, node, timeout: float = 30.0) -> None:
        """Send until the node's log says ``said`` (a skipped mask is logged, not published)."""
        end = time.monotonic() + timeout
        while said not in node.output() and time.monotonic() < end:
            self.send(mask, info, stamp_s)
            time.sleep(0.25)
        assert said in node.output(), node.output()[-3000:]


def test_scan_and_grid_of_synthetic_scenes_over_dds(start_free_space, ros):
    node = start_free_space()
    rig = Rig(ros)
    rig.wait_ready(node)
    broadcasters = []
    for i, seed in enumerate((2, 5)):
        mask, info, height = scene(seed)
        frame = f"camera_optical_{seed}"  # each scene's camera is mounted differently: a frame of its own
        broadcasters.append(static_tf(ros, height, child=frame))
        stamp = 100 + i
        deadline = time.monotonic() + 30
        while rig.scan_at(stamp) is None and time.monotonic() < deadline:
            rig.send(mask, info, stamp, frame)
            time.sleep(0.3)
        scan, grid = rig.scan_at(stamp), None
        assert scan is not None, node.output()
        rig.ros.wait_for(lambda stamp=stamp: rig.grid_at(stamp) is not None, 10, "the grid")
        grid = rig.grid_at(stamp)
        want = FreeSpace(Intrinsics.from_camera_info(info.k, info.d, info.distortion_model, W, H),
                         Pose.from_quaternion((0.0, 0.0, height), OPTICAL_Q),
                         fsp.scan_spec(fsp.validate({})), fsp.grid_spec(fsp.validate({})))
        for m in (scan, grid):
            assert m.header.frame_id == "base_footprint" and m.header.stamp.sec == stamp
        np.testing.assert_array_equal(np.asarray(scan.ranges, np.float32), want.scan(mask))
        assert scan.angle_min == pytest.approx(-math.pi) and scan.angle_increment == pytest.approx(math.radians(0.5))
        assert (scan.range_min, scan.range_max) == (pytest.approx(0.1), pytest.approx(20.0))
        ranges = np.asarray(scan.ranges)
        assert np.isnan(ranges).sum() > len(ranges) // 2 and np.isfinite(ranges).any()
        assert len(ranges) == round((scan.angle_max - scan.angle_min) / scan.angle_increment) + 1
        g = np.asarray(grid.data, np.int8).reshape(grid.info.height, grid.info.width)
        np.testing.assert_array_equal(g, want.grid(mask))
        assert grid.info.resolution == pytest.approx(0.1) and (grid.info.width, grid.info.height) == (200, 200)
        assert (grid.info.origin.position.x, grid.info.origin.position.y) == (0.0, pytest.approx(-10.0))
        assert set(np.unique(g)) == {-1, 0, 100}
    rig.wait_status("Hz")
    assert node.alive()
    assert node.stop() == 0, node.output()


def test_no_tf_bad_sizes_and_bad_camera_info_skip_masks_and_say_why(start_free_space, ros):
    node = start_free_space({"error_log_period": 0.0, "tf_timeout": 0.05})
    rig = Rig(ros)
    rig.wait_ready(node)
    mask, info, height = scene(2)
    status = rig.wait_status("no transform", resend=(mask, info, 10))
    assert status.level == b"\x01" and "static_transform_publisher" in status.message
    assert "camera_optical" in status.values[[v.key for v in status.values].index("last_problem")].value
    static_tf(ros, height)
    half = np.ascontiguousarray(mask[::2, ::2])
    rig.send_until(half, info, 11, "160x90 but camera_info is 320x180", node)
    rig.wait_status("160x90 but camera_info is 320x180", resend=(half, info, 11))
    zero_k = CameraInfo(width=W, height=H, distortion_model="plumb_bob", d=[0.0] * 5, k=[0.0] * 9)
    nan_k = CameraInfo(width=W, height=H, distortion_model="plumb_bob", d=[0.0] * 5,
                       k=[float("nan")] + list(info.k)[1:])
    for bad, said in ((zero_k, "fx=0"), (nan_k, "9 finite numbers")):
        rig.send_until(mask, bad, 12, said, node)
    assert rig.scan_at(10) is None and rig.scan_at(11) is None and rig.scan_at(12) is None
    deadline = time.monotonic() + 30  # a good one after all that is published
    while rig.scan_at(13) is None and time.monotonic() < deadline:
        rig.send(mask, info, 13)
        time.sleep(0.3)
    assert rig.scan_at(13) is not None, node.output()
    assert node.alive()
    assert node.stop() == 0, node.output()


def test_diagnostics_before_camera_info_and_when_masks_stop(start_free_space, ros):
    node = start_free_space()
    rig = Rig(ros)
    rig.wait_ready(node)
    assert rig.wait_status("no mask received on /seg/masks/drivable").level == b"\x01"
    mask, _, _ = scene(2)
    rig.mask_pub.publish(mask_msg(mask, 20))
    rig.wait_status("no camera_info on /seg/label/camera_info")
    rig.wait_status("(stale)", timeout=20)


def test_lifecycle_requests_the_state_does_not_allow_are_refused_and_logged_once(start_free_space, ros):
    """What a lifecycle manager sends to a node that autostarted (configure, activate while active), and
    ids that are no transition at all: each answered success=False, the node keeps serving, and a burst of
    refusals makes one log line, not one per request. Before: rclpy's "Transition is not registered"
    left the request unanswered and ended the node."""
    from lifecycle_msgs.msg import Transition as T

    node = start_free_space()
    rig = Rig(ros)
    rig.wait_ready(node)
    lc = Lifecycle(ros, "liteseg_free_space")
    assert lc.state() == "active"
    refused = [T.TRANSITION_CONFIGURE, T.TRANSITION_ACTIVATE, T.TRANSITION_CLEANUP, 9, 200,
               T.TRANSITION_ON_CONFIGURE_SUCCESS] * 5
    for tid in refused:
        assert lc.set(tid) is False, tid
    assert lc.set(label="activate") is False and node.alive(), node.output()[-3000:]
    assert lc.state() == "active"
    assert node.output().count("is not allowed in state") <= 2, node.output()[-3000:]
    assert lc.set(T.TRANSITION_DEACTIVATE) and lc.state() == "inactive"
    assert lc.set(label="activate") and lc.state() == "active"
    rig.wait_ready(node)
    assert node.alive() and "Traceback" not in node.output()


def test_live_parameters_and_refusals(start_free_space, ros):
    from rclpy.parameter import Parameter

    node = start_free_space()
    rig = Rig(ros)
    rig.wait_ready(node)
    set_params = ros.parameter_setter("/liteseg_free_space")
    client = set_params.client

    fut = client.describe_parameters(["range_max", "autostart"])
    ros.wait_for(fut.done, 20, "describe_parameters")
    rmax, auto = fut.result().descriptors
    assert (rmax.floating_point_range[0].from_value, rmax.floating_point_range[0].to_value) == (0.5, 1000.0)
    assert "range_max" in rmax.name and rmax.description and auto.read_only and not rmax.read_only
    ok, reason = set_params(Parameter("range_min", value=30.0))[0]
    assert not ok and "range_min (30.0) must be less than range_max (20.0)" in reason
    assert not set_params(Parameter("grid_resolution", value=-1.0))[0][0]
    assert not set_params(Parameter("autostart", value=False))[0][0]
    # an integer for a double, as `ros2 param set /liteseg_free_space range_max 9` sends it (a params file may say 9)
    assert set_params(Parameter("range_max", value=9)) == [(True, "")]
    fut = client.get_parameters(["range_max"])
    ros.wait_for(fut.done, 20, "get_parameters")
    assert fut.result().values[0].double_value == 9.0
    assert set_params(Parameter("range_max", value=8.0), Parameter("base_frame", value="base_link"),
                      Parameter("grid_resolution", value=0.2)) == [(True, "")] * 3
    mask, info, height = scene(5)
    from geometry_msgs.msg import TransformStamped
    from tf2_ros import StaticTransformBroadcaster

    b = StaticTransformBroadcaster(ros.node)
    t = TransformStamped()
    t.header.frame_id, t.child_frame_id = "base_link", "camera_optical"
    t.transform.translation.z = height
    t.transform.rotation.x, t.transform.rotation.y, t.transform.rotation.z, t.transform.rotation.w = OPTICAL_Q
    b.sendTransform(t)
    deadline = time.monotonic() + 30
    while rig.scan_at(30) is None and time.monotonic() < deadline:
        rig.send(mask, info, 30)
        time.sleep(0.3)
    scan = rig.scan_at(30)
    assert scan is not None, node.output()
    assert scan.header.frame_id == "base_link" and scan.range_max == pytest.approx(8.0)
    ranges = np.asarray(scan.ranges)
    assert np.all(ranges[np.isfinite(ranges)] <= 8.0)
    rig.ros.wait_for(lambda: rig.grid_at(30) is not None, 10, "the grid")
    assert rig.grid_at(30).info.resolution == pytest.approx(0.2) and rig.grid_at(30).info.width == 100


def test_bad_parameters_exit_2_naming_every_key(start_free_space):
    node = start_free_space({"range_min": 50.0, "grid_resolution": -1.0, "base_frame": "", "rang_max": 3.0})
    assert node.proc.wait(60) == 2
    out = node.output()
    for key in ("grid_resolution", "base_frame", "unknown parameter 'rang_max'"):
        assert key in out, out
    assert out.count("invalid parameters") == 1
    node = start_free_space({"range_min": 50.0})
    assert node.proc.wait(60) == 2
    assert "range_min (50.0) must be less than range_max (20.0)" in node.output()


def test_launch_free_space_true_wires_it_to_the_segmentation_node(ros_ws, ros, tmp_path):
    """`ros2 launch ... free_space:=true` with the demo weights on generated scenes: scans and grids come
    from the segmentation node's own drivable masks and label camera_info, in the launch's namespace."""
    import signal

    from test_launch import no_trouble

    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "liteseg.yaml").read_text())
    params["/**"]["ros__parameters"].update(backend="pytorch", precision="fp32",
                                            network_width=160, network_height=96)
    pf = tmp_path / "params.yaml"
    pf.write_text(yaml.safe_dump(params))
    s = generate_scene(4, SceneConfig(height=H, width=W))
    _, info, height = scene(4)
    info.header.frame_id = "cam_optical"
    b = static_tf(ros, height, child="cam_optical")  # noqa: F841 (kept alive while the launch runs)
    img_pub = ros.node.create_publisher(Image, "/camera/image_raw", RELIABLE)
    info_pub = ros.node.create_publisher(CameraInfo, "/camera/camera_info", RELIABLE)
    scans = ros.collect(LaserScan, "/robot/liteseg_free_space/scan")
    grids = ros.collect(OccupancyGrid, "/robot/liteseg_free_space/grid")
    masks = ros.collect(Image, "/robot/liteseg/masks/drivable")
    infos = ros.collect(CameraInfo, "/robot/liteseg/label/camera_info")
    # the README's line, namespaced, with a params file that keeps the demo network small
    launch = ros_ws.start("ros2 launch liteseg_ros segment.launch.py image:=/camera/image_raw "
                          "camera_info:=/camera/camera_info weights:=demo free_space:=true "
                          f"namespace:=robot params_file:={pf}", tmp_path / "launch.log")
    try:
        launch.wait_for_output("active: segmenting /camera/image_raw", timeout=180)
        launch.wait_for_output("active: /robot/liteseg/masks/drivable + /robot/liteseg/label/camera_info -> "
                               "/robot/liteseg_free_space/scan, /robot/liteseg_free_space/grid in base_footprint")
        end, k = time.monotonic() + 120, 0
        while len(scans) < 3 and time.monotonic() < end:
            msg = Image(height=H, width=W, encoding="bgr8", step=3 * W, data=s.image.tobytes())
            msg.header.frame_id, msg.header.stamp.sec = "cam_optical", 2000 + k
            info.header.stamp.sec = 2000 + k
            info_pub.publish(info)
            img_pub.publish(msg)
            k += 1
            time.sleep(0.3)
        assert len(scans) >= 3, launch.output()[-4000:]
        scan = scans[-1]
        mask_msg_ = next(m for m in masks if m.header.stamp.sec == scan.header.stamp.sec)
        grid = next(g for g in grids if g.header.stamp.sec == scan.header.stamp.sec)
        label_info = infos[-1]
        assert scan.header.frame_id == grid.header.frame_id == "base_footprint"
        assert (label_info.width, label_info.height) == (W, H)
        mask = np.frombuffer(bytes(mask_msg_.data), np.uint8).reshape(H, W)
        want = FreeSpace(Intrinsics.from_camera_info(label_info.k, label_info.d, label_info.distortion_model, W, H),
                         Pose.from_quaternion((0.0, 0.0, height), OPTICAL_Q),
                         fsp.scan_spec(fsp.validate({})), fsp.grid_spec(fsp.validate({})))
        np.testing.assert_array_equal(np.asarray(scan.ranges, np.float32), want.scan(mask))
        np.testing.assert_array_equal(np.asarray(grid.data, np.int8).reshape(200, 200), want.grid(mask))
        assert (mask > 0).mean() > 0.05 and np.isfinite(np.asarray(scan.ranges)).any()  # the demo model sees road
        code = launch.signal_group(signal.SIGINT)
    finally:
        launch.kill()
    assert code == 0, launch.output()[-4000:]
    no_trouble(launch.output())


def test_ros2_run_line_of_the_readme_then_ctrl_c(ros_ws, tmp_path):
    import signal

    run = ros_ws.start("ros2 run liteseg_ros liteseg_free_space --ros-args -r mask:=/liteseg/masks/drivable "
                       "-r camera_info:=/liteseg/label/camera_info", tmp_path / "run.log")
    try:
        run.wait_for_output("active: /liteseg/masks/drivable + /liteseg/label/camera_info -> "
                            "/liteseg_free_space/scan, /liteseg_free_space/grid in base_footprint", timeout=60)
        code = run.signal_group(signal.SIGINT)
    finally:
        run.kill()
    assert code == 0, run.output()
    assert "Traceback" not in run.output()


def test_the_launch_wires_one_free_space_node_per_camera_to_its_outputs():
    """What free_space:=true subscribes, by the segmentation node's own output names (contract.py)."""
    import importlib.util

    from liteseg_ros import contract

    spec = importlib.util.spec_from_file_location("segment_launch", Path(__file__).resolve().parents[1] / "launch" /
                                                  "segment.launch.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.free_space_wiring("liteseg", []) == [
        ("liteseg_free_space", "liteseg/masks/drivable", "liteseg/label/camera_info")]
    wired = mod.free_space_wiring("seg", ["front", "left"])
    assert [w[0] for w in wired] == ["liteseg_free_space_front", "liteseg_free_space_left"]
    outputs = {o.suffix for o in contract.camera_outputs(["drivable"], True)}
    for (_, mask, info), cam in zip(wired, ("front", "left")):
        assert mask == f"seg/{cam}/masks/drivable" and info == f"seg/{cam}/label/camera_info"
        assert mask.split(f"seg/{cam}/")[1] in outputs and info.split(f"seg/{cam}/")[1] in outputs
    assert {"free_space", "base_frame"} <= {a.name for a in mod.generate_launch_description().get_launch_arguments()}


def test_a_bad_base_frame_stops_the_launch_before_anything_starts(ros_ws):
    out = ros_ws.run("ros2 launch liteseg_ros segment.launch.py free_space:=true base_frame:=/odom", timeout=120)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "base_frame:='/odom'" in text and "not a frame name" in text, text[-3000:]
    assert "liteseg_node" not in text or "process started" not in text
