"""Node per-frame overhead against the model forward, measured on the real node over real DDS.

Starts ``liteseg_node`` (its own process), feeds it frames at a rate it can keep up with, and reads
its ~/stats: infer_ms is the engine forward (with in-graph argmax); everything else the node does for
a frame (deserialize + decode, preprocess, postprocess, publish every output) is the overhead.
Prints one table and writes JSON. Target (issue #4): overhead <= 15 % of the forward at 640x360.

    .venv/bin/python benchmarks/bench_node.py --frames 30 --json /tmp/bench_node.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "test"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--size", default="360x640", help="camera and network HxW")
    ap.add_argument("--rate", type=float, default=4.0, help="camera Hz (low enough for no drops)")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--json", default="/tmp/bench_node.json")
    a = ap.parse_args()
    h, w = (int(v) for v in a.size.split("x"))
    os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
    from conftest import NodeProcess, RosHarness  # the test harness: isolated domain, large-SHM profile
    from rclpy.qos import QoSProfile, QoSReliabilityPolicy
    from sensor_msgs.msg import Image

    from liteseg_ros import image_codec
    from liteseg_ros.msg import FrameStats
    from liteseg_ros.synthetic import SceneConfig, drive

    tmp = Path(tempfile.mkdtemp())
    pf = tmp / "p.yaml"
    pf.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        "allow_random_weights": True, "network_width": w, "network_height": h, "backend": a.backend}}}))
    node = NodeProcess(["--ros-args", "--params-file", str(pf)], log_path=tmp / "node.log")
    ros = RosHarness("bench_node")
    try:
        stats = ros.collect(FrameStats, "/liteseg/stats")
        for t in ("label", "color", "overlay", "confidence", "masks/drivable", "masks/walkable", "masks/dynamic"):
            ros.collect(Image, f"/liteseg/{t}")
        pub = ros.node.create_publisher(Image, "/image", QoSProfile(depth=1, reliability=QoSReliabilityPolicy.BEST_EFFORT))
        ros.wait_for(lambda: pub.get_subscription_count() > 0 or not node.alive(), 180, "node")
        if not node.alive():
            print(node.output(), file=sys.stderr)
            return 1
        time.sleep(1.0)
        frames = [s.image for s in drive(7, a.frames + 3, SceneConfig(height=h, width=w))]
        for i, img in enumerate(frames):
            m = Image()
            image_codec.fill_image(m, img, "bgr8")
            m.header.stamp.sec = 1000 + i
            m.header.frame_id = "cam"
            pub.publish(m)
            time.sleep(1.0 / a.rate)
        ros.wait_for(lambda: stats and stats[-1].header.stamp.sec >= 1000 + len(frames) - 1, 30, "last frame")
    finally:
        node.stop()
        ros.close()
    rows = [s for s in stats if s.header.stamp.sec >= 1003]  # skip the first frames (allocation warm-up)
    med = {k: statistics.median(getattr(s, k) for s in rows)
           for k in ("decode_ms", "preprocess_ms", "infer_ms", "postprocess_ms", "publish_ms", "total_ms")}
    overhead = med["total_ms"] - med["infer_ms"]
    out = {"size": [h, w], "frames": len(rows), "dropped": rows[-1].dropped, "backend": a.backend, **med,
           "overhead_ms": overhead, "overhead_over_forward": overhead / med["infer_ms"]}
    print(f"node per-frame cost at {w}x{h} (median of {len(rows)} frames, camera {a.rate:g} Hz, all outputs "
          f"subscribed, dropped {rows[-1].dropped})")
    for k in ("decode_ms", "preprocess_ms", "infer_ms", "postprocess_ms", "publish_ms", "total_ms", "overhead_ms"):
        v = out[k]
        print(f"  {k:<15} {v:8.2f} ms   {v / med['infer_ms']:6.1%} of the forward")
    Path(a.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
