"""Shared pieces of benchmarks/soak.py and benchmarks/burst.py: the real node under load over real DDS.

The node runs as its own process (``liteseg_node``, as a user starts it) in an isolated ROS domain
with localhost-only discovery and the large shared-memory Fast DDS profile (test/conftest.py sets
all three on import); this process publishes frames and subscribes to the outputs with rclpy, and
reads the node's resident memory from /proc.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "test"))
sys.path.insert(0, str(REPO / "fuzz"))
os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))


def rss_mb(pid: int) -> float:
    """Resident set size of process ``pid`` in MB (VmRSS), 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def start(params: dict, name: str = "load"):
    """(NodeProcess, RosHarness, temp folder) with the node configured by ``params`` and discovered."""
    from conftest import NodeProcess, RosHarness

    tmp = Path(tempfile.mkdtemp(prefix=f"liteseg_{name}_"))
    pf = tmp / "params.yaml"
    pf.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}))
    node = NodeProcess(["--ros-args", "--params-file", str(pf)], log_path=tmp / "node.log")
    ros = RosHarness(f"{name}_harness")
    return node, ros, tmp


def wait_subscribed(ros, pub, node, timeout: float = 180.0) -> None:
    ros.wait_for(lambda: pub.get_subscription_count() > 0 or not node.alive(), timeout, "the node's subscription")
    if not node.alive():
        raise SystemExit(f"the node exited during start-up:\n{node.output()}")
    time.sleep(1.0)  # let discovery of the output topics settle


def frames(n: int, h: int, w: int) -> list[np.ndarray]:
    """``n`` distinct generated driving scenes (bgr8) to cycle through."""
    from liteseg_ros.synthetic import SceneConfig, drive

    return [s.image for s in drive(3, n, SceneConfig(height=h, width=w))]


def image_msg(img: np.ndarray, seq: int, stamp_ns: int, compressed: bytes | None = None):
    """An rclpy Image (or CompressedImage with ``compressed`` as data) with stamp and frame_id 'cam<seq>'."""
    from sensor_msgs.msg import CompressedImage, Image

    from liteseg_ros import image_codec

    if compressed is not None:
        m = CompressedImage()
        m.format = "jpeg"
        m.data = compressed
    else:
        m = Image()
        image_codec.fill_image(m, img, "bgr8")
    m.header.stamp.sec, m.header.stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)
    m.header.frame_id = f"cam{seq}"
    return m


def percentiles(values, qs=(50, 90, 99)) -> dict[str, float]:
    if not len(values):
        return {f"p{q}": float("nan") for q in qs} | {"max": float("nan")}
    arr = np.asarray(values, float)
    return {f"p{q}": float(np.percentile(arr, q)) for q in qs} | {"max": float(arr.max())}


def slope_per_10k(frames_done: list[float], rss: list[float]) -> float:
    """Least-squares MB of RSS per 10 000 processed frames."""
    if len(frames_done) < 3 or max(frames_done) - min(frames_done) < 1:
        return 0.0
    k, _ = np.polyfit(np.asarray(frames_done, float), np.asarray(rss, float), 1)
    return float(k * 10_000)
