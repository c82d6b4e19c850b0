"""The ROS user's path with the real tools: colcon build, ros2 launch, the ros2 verbs, Ctrl-C.

Every command here is what a user types in a terminal that sourced ``install/setup.bash`` of a
workspace ``colcon build`` made (the session fixture ``ros_ws``); assertions are on what comes out:
exit codes, topics, headers, parameter values and log lines. Without the ROS 2 command line these
tests skip, saying how to get it (``make test`` installs it from ../shared/ros2-cli).
"""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.ros

REPO = Path(__file__).resolve().parents[1]
NET = {"network_width": 96, "network_height": 64}
#: A fresh ros2 process without the daemon discovers the graph for --spin-time seconds (0.5 by default):
#: on a busy machine that can miss a node that is there, so give it longer.
D = "--no-daemon --spin-time 3"


@pytest.fixture(scope="module")
def launch_params(tiny_checkpoint, tmp_path_factory) -> Path:
    """The shipped params file with the test's weights, a small network and a shared engine cache."""
    shipped = yaml.safe_load((REPO / "config" / "liteseg.yaml").read_text())
    tmp = tmp_path_factory.mktemp("launch")
    shipped["/**"]["ros__parameters"].update(weights=str(tiny_checkpoint), backend="onnxruntime",
                                             precision="fp32", engine_cache_dir=str(tmp / "cache"), **NET)
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(shipped))
    return path


def no_trouble(log: str) -> None:
    """A clean run: no traceback, no dead process, no error line."""
    for bad in ("Traceback", "process has died", "[ERROR]", "KeyboardInterrupt", "terminate called"):
        assert bad not in log, f"{bad!r} in:\n{log[-4000:]}"


class FramePublisher:
    """A camera: publishes generated frames on ``topic`` at ``hz`` from the test's rclpy node."""

    def __init__(self, ros, topic: str, hz: float = 10.0) -> None:
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image
        from test_node import frame, image_msg

        self.pub = ros.node.create_publisher(Image, topic, qos_profile_sensor_data)
        self.msgs = [image_msg(frame(64, 96, s), "bgr8", (1000 + s) * 1_000_000_000, "cam_optical") for s in range(4)]
        self.sent: list = []
        self._stop = threading.Event()
        self._hz = hz
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        k = 0
        while not self._stop.is_set():
            msg = self.msgs[k % len(self.msgs)]
            msg.header.stamp.sec = 1000 + k
            self.pub.publish(msg)
            self.sent.append((msg.header.stamp.sec, msg.header.frame_id))
            k += 1
            time.sleep(1.0 / self._hz)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def test_colcon_build_gives_a_package_the_ros2_tools_know(ros_ws, tmp_path):
    pkg = ros_ws.run("ros2 pkg prefix liteseg_ros")
    assert pkg.returncode == 0 and pkg.stdout.strip(), pkg.stderr
    exes = ros_ws.run("ros2 pkg executables liteseg_ros")
    assert "liteseg_ros liteseg_node" in exes.stdout and "liteseg_ros liteseg" in exes.stdout, exes
    iface = ros_ws.run("ros2 interface show liteseg_ros/msg/FrameStats")
    assert iface.returncode == 0 and "infer_ms" in iface.stdout, iface
    tool = ros_ws.run("ros2 run liteseg_ros liteseg --help", cwd=tmp_path)  # any directory
    assert tool.returncode == 0 and "quantize" in tool.stdout, tool
    args = ros_ws.run("ros2 launch liteseg_ros segment.launch.py --show-args")
    assert args.returncode == 0, args
    for name in ("weights", "params_file", "image", "namespace", "log_level", "bag", "network_width"):
        assert f"'{name}'" in args.stdout, name


@pytest.mark.slow
def test_symlink_install_and_colcon_test(ros_ws, tmp_path):
    """`colcon build --symlink-install`, then `colcon test` of the installed layout and its result."""
    if ros_ws.root is None:
        pytest.skip("runs inside `colcon test` already")
    ws = tmp_path / "ws"
    (ws / "src").mkdir(parents=True)
    (ws / "src" / "liteseg_ros").symlink_to(REPO)
    env = ros_ws.env
    build = subprocess.run(["colcon", "build", "--symlink-install", "--cmake-args",
                            f"-DPython3_EXECUTABLE={sys.executable}"], cwd=ws, env=env, capture_output=True,
                           text=True, timeout=900)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    source = f"source {ws / 'install' / 'setup.bash'} && "
    check = subprocess.run(["bash", "-c", source + "python -c 'import liteseg_ros.msg, liteseg_ros.node' && "
                            "ros2 pkg prefix liteseg_ros"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=120)
    assert check.returncode == 0 and str(ws) in check.stdout, check
    test = subprocess.run(["colcon", "test", "--ctest-args", "-R", "liteseg_ros_install"], cwd=ws, env=env,
                          capture_output=True, text=True, timeout=900)
    assert test.returncode == 0, test.stdout[-3000:] + test.stderr[-3000:]
    result = subprocess.run(["colcon", "test-result", "--verbose"], cwd=ws, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    assert re.search(r"\b[1-9]\d* tests?, 0 errors, 0 failures", result.stdout), result.stdout


def test_readme_launch_line_then_topics_and_ctrl_c(ros_ws, ros, launch_params, tmp_path):
    """The README's first line (image:=, weights:=) segments frames; the topic verbs see it; Ctrl-C is clean."""
    from sensor_msgs.msg import Image

    weights = yaml.safe_load(launch_params.read_text())["/**"]["ros__parameters"]["weights"]
    rviz = "" if ros_ws.run("ros2 pkg prefix rviz2").returncode == 0 else " rviz:=true"  # missing rviz2: a warning
    camera = FramePublisher(ros, "/cam/image_raw")
    launch = ros_ws.start(f"ros2 launch liteseg_ros segment.launch.py image:=/cam/image_raw weights:={weights} "
                          f"params_file:={launch_params}{rviz}", tmp_path / "launch.log")
    try:
        launch.wait_for_output("active: segmenting /cam/image_raw")
        if rviz:
            assert "rviz2 is not installed" in launch.output()
        labels = ros.collect(Image, "/liteseg/label")
        ros.wait_for(lambda: len(labels) >= 3, 60, "labels from the launched node")
        sent = dict(camera.sent)
        for m in labels:
            assert m.header.frame_id == "cam_optical" and m.header.stamp.sec in sent
        wanted = ("/liteseg/label", "/liteseg/color", "/liteseg/overlay", "/liteseg/confidence",
                  "/liteseg/masks/drivable", "/liteseg/drivable_boundary", "/liteseg/stats", "/liteseg/info",
                  "/liteseg/label_info", "/diagnostics")
        topics = ros_ws.eventually(f"ros2 topic list {D}", lambda out: set(wanted) <= set(out.split()))
        assert set(wanted) <= set(topics.split()), topics
        echo = ros_ws.run(f"ros2 topic echo --once {D} --timeout 30 --field header /liteseg/label "
                          "sensor_msgs/msg/Image", timeout=90)
        assert echo.returncode == 0 and "frame_id: cam_optical" in echo.stdout, echo
        hz = ros_ws.run("timeout -s INT 12 ros2 topic hz --window 5 /liteseg/label", timeout=60)
        assert "average rate" in hz.stdout, hz
        info = ros_ws.eventually(f"ros2 topic info -v {D} /liteseg/label",
                                 lambda out: "Publisher count: 1" in out)
        assert "Publisher count: 1" in info and "RELIABLE" in info, info
        sub = ros_ws.eventually(f"ros2 topic info -v {D} /cam/image_raw", lambda out: "Node name: liteseg\n" in out)
        assert "Node name: liteseg\n" in sub and "BEST_EFFORT" in sub, sub
        node = ros_ws.eventually(f"ros2 node info {D} /liteseg", lambda out: "/liteseg/label" in out)
        assert "/cam/image_raw: sensor_msgs/msg/Image" in node and "/liteseg/label" in node, node
        code = launch.signal_group(signal.SIGINT)  # frames still flowing
    finally:
        camera.stop()
        launch.kill()
    assert code == 0, launch.output()[-4000:]
    no_trouble(launch.output())
    assert "process has finished cleanly" in launch.output()


def test_namespace_params_lifecycle_and_log_level(ros_ws, launch_params, tmp_path):
    """ros2 param and ros2 lifecycle against a namespaced node, to shutdown; log_level reaches our logger only."""
    launch = ros_ws.start(f"ros2 launch liteseg_ros segment.launch.py namespace:=perception log_level:=debug "
                          f"params_file:={launch_params}", tmp_path / "launch.log")
    node = "/perception/liteseg"
    try:
        launch.wait_for_output("active: segmenting /perception/camera/image_raw")
        out = launch.output()
        assert "[DEBUG]" in out and "settings:" in out  # our debug lines...
        assert "[rcl]" not in out  # ...and not rcl's flood
        names = ros_ws.eventually(f"ros2 param list {D} {node}", lambda out: "network_width" in out)
        assert "network_width" in names and "mask_groups.drivable" in names and "cameras" in names
        got = ros_ws.run(f"ros2 param get {D} --timeout 20 {node} cameras")
        assert got.returncode == 0 and "String values are: []" in got.stdout, got
        dump = yaml.safe_load(ros_ws.run(f"ros2 param dump {D} {node}").stdout)
        values = dump[node]["ros__parameters"]
        assert values["network_width"] == 96 and values["cameras"] == [] and values["mask_groups"]["drivable"] == ["road"]
        desc = ros_ws.run(f"ros2 param describe {D} {node} network_width").stdout
        assert "Read only: true" in desc.replace("True", "true") and "Min value: 32" in desc, desc
        ok = ros_ws.run(f"ros2 param set {D} {node} overlay_alpha 0.25")
        assert "Set parameter successful" in ok.stdout, ok
        live = ros_ws.run(f"ros2 param set {D} {node} diagnostics_period 0.5")
        assert "Set parameter successful" in live.stdout, live
        refused = ros_ws.run(f"ros2 param set {D} {node} network_width 128")
        assert "read-only parameter: network_width" in refused.stdout + refused.stderr, refused
        assert ros_ws.run(f"ros2 param get {D} {node} overlay_alpha").stdout.strip().endswith("0.25")
        # Each ros2 call spins the full --spin-time, so the walk is short: the full manager sequence and every
        # transition id from every state are test_ros_surfaces' (over the services, without the CLI's start-up).
        for transition in ("deactivate", "cleanup", "configure"):
            # "Node not found" (nothing happened: discovery missed the node) is worth a retry.
            done = ros_ws.eventually(f"ros2 lifecycle set {D} {node} {transition}", lambda out: out.strip() != "")
            assert "Transitioning successful" in done, (transition, done)
        now = ros_ws.eventually(f"ros2 lifecycle get {D} {node}", lambda out: out.strip() != "")
        assert now.startswith("inactive"), now
        for line in ("deactivated:", "cleaned up:", "configured (inactive)"):
            assert line in launch.output()
        done = ros_ws.eventually(f"ros2 lifecycle set {D} {node} shutdown", lambda out: out.strip() != "")
        assert "Transitioning successful" in done, done
        code = launch.wait(60)  # the node exits after shutdown, and the launch with it
    finally:
        launch.kill()
    assert code == 0, launch.output()[-4000:]
    assert "shut down (finalized): exiting" in launch.output()
    no_trouble(launch.output())


@pytest.mark.parametrize("arguments,expected", [
    ("params_file:=/nonexistent/liteseg.yaml", "params_file /nonexistent/liteseg.yaml does not exist"),
    ("weights:=/nonexistent/weights.pt", "does not exist"),
    ("network_width:=wide", "network_width:='wide' is not a valid int"),
    ("log_level:=loud", "log_level:='loud' is not one of"),
])
def test_launch_failures_end_the_launch_with_an_error(ros_ws, launch_params, tmp_path, arguments, expected):
    if arguments.startswith("weights"):
        arguments = f"params_file:={launch_params} {arguments}"
    done = ros_ws.run(f"ros2 launch liteseg_ros segment.launch.py {arguments}", timeout=180)
    assert done.returncode != 0, done.stdout[-3000:]
    assert expected in done.stdout + done.stderr, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr


def test_bag_without_ros2_bag_says_how_to_replay(ros_ws, launch_params, tmp_path):
    if ros_ws.run("ros2 pkg prefix ros2bag").returncode == 0:
        pytest.skip("ros2 bag is installed here: playback is tested by its own package")
    bag = tmp_path / "drive_bag"
    bag.mkdir()
    done = ros_ws.run(f"ros2 launch liteseg_ros segment.launch.py params_file:={launch_params} bag:={bag}",
                      timeout=120)
    assert done.returncode != 0
    assert "needs `ros2 bag`" in done.stdout + done.stderr and "liteseg play" in done.stdout + done.stderr
    assert "process started" not in done.stdout  # checked before anything starts


def test_ros2_run_with_ctrl_c_and_the_node_with_sigterm(ros_ws, launch_params, tmp_path):
    """`ros2 run` in a terminal, then Ctrl-C; and SIGTERM (what a service manager sends) to the node."""
    run = ros_ws.start(f"ros2 run liteseg_ros liteseg_node --ros-args --params-file {launch_params} "
                       f"-r image:=/front/image_raw", tmp_path / "run.log")
    try:
        run.wait_for_output("active: segmenting /front/image_raw")
        code = run.signal_group(signal.SIGINT)
    finally:
        run.kill()
    assert code == 0, run.output()
    assert "stopping (signal received)" in run.output()
    no_trouble(run.output())
    node = ros_ws.start(f"liteseg_node --ros-args --params-file {launch_params}", tmp_path / "node.log")
    try:
        node.wait_for_output("active: segmenting /image")
        node.proc.send_signal(signal.SIGTERM)
        code = node.wait(30)
    finally:
        node.kill()
    assert code == 0, node.output()
    no_trouble(node.output())
