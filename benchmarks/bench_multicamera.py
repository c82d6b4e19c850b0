"""Several cameras: one process with batching vs one process without vs one node process per camera.

For N cameras at 640x360 (camera and network), every camera publishes as fast as it can be served
(a new frame as soon as the previous one came back, so the measure is capacity, not a fixed rate), for
a fixed wall time. Reports aggregate frames/s, per-camera latency p50/p95 (publish -> ~/label received),
and the resident memory (RSS) of the node process(es). One table + JSON.

    .venv/bin/python benchmarks/bench_multicamera.py --cameras 1 2 4 --seconds 20 --json /tmp/bench_multicamera.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "test"))


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (MiB)."""
    total = 0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def run_case(mode: str, n: int, seconds: float, size: tuple[int, int], tmp: Path) -> dict:
    from conftest import NodeProcess, RosHarness
    from rclpy.qos import QoSProfile, QoSReliabilityPolicy
    from sensor_msgs.msg import Image

    from liteseg_ros import image_codec
    from liteseg_ros.synthetic import SceneConfig, generate_scene

    h, w = size
    names = [f"cam{i}" for i in range(n)]
    base = {"allow_random_weights": True, "network_width": w, "network_height": h, "num_threads": 0,
            "publish_color": False, "publish_overlay": False, "publish_confidence": False,
            "publish_masks": False, "publish_boundary": False}
    procs = []
    if mode == "separate":
        for cam in names:
            pf = tmp / f"{mode}_{n}_{cam}.yaml"
            pf.write_text(yaml.safe_dump({"/**": {"ros__parameters": dict(base)}}))
            procs.append(NodeProcess(["--ros-args", "--params-file", str(pf), "-r", f"__node:=liteseg_{cam}",
                                      "-r", f"image:=/{cam}/image"], log_path=tmp / f"{mode}_{n}_{cam}.log"))
        label_topic = {cam: f"/liteseg_{cam}/label" for cam in names}
    else:
        pf = tmp / f"{mode}_{n}.yaml"
        p = dict(base, cameras=names, batch_cameras=(mode == "batched"), batch_window_ms=10.0)
        pf.write_text(yaml.safe_dump({"/**": {"ros__parameters": p}}))
        procs.append(NodeProcess(["--ros-args", "--params-file", str(pf)], log_path=tmp / f"{mode}_{n}.log"))
        label_topic = {cam: f"/liteseg/{cam}/label" for cam in names}
    ros = RosHarness(f"bench_{mode}_{n}")
    lat: dict[str, list[float]] = {cam: [] for cam in names}
    sent_at: dict[tuple[str, int], float] = {}
    done = {cam: threading.Event() for cam in names}
    try:
        def on_label(cam):
            def cb(m):
                t = sent_at.pop((cam, m.header.stamp.nanosec), None)
                if t is not None:
                    lat[cam].append((time.monotonic() - t) * 1e3)
                done[cam].set()
            return cb

        for cam in names:
            ros.node.create_subscription(Image, label_topic[cam], on_label(cam),
                                         QoSProfile(depth=5, reliability=QoSReliabilityPolicy.RELIABLE))
        pubs = {cam: ros.node.create_publisher(Image, f"/{cam}/image",
                                               QoSProfile(depth=1, reliability=QoSReliabilityPolicy.BEST_EFFORT))
                for cam in names}
        ros.wait_for(lambda: all(p.get_subscription_count() for p in pubs.values())
                     and all(ros.node.count_publishers(t) for t in label_topic.values()), 300, "nodes")
        time.sleep(1.0)
        img = generate_scene(3, SceneConfig(height=h, width=w)).image
        stop = time.monotonic() + seconds
        warm_until = time.monotonic() + min(5.0, seconds / 4)

        def camera(cam: str) -> None:
            k = 0
            while time.monotonic() < stop:
                m = Image()
                image_codec.fill_image(m, img, "bgr8")
                m.header.stamp.nanosec = k
                done[cam].clear()
                sent_at[(cam, k)] = time.monotonic()
                pubs[cam].publish(m)
                done[cam].wait(5.0)
                k += 1

        threads = [threading.Thread(target=camera, args=(c,)) for c in names]
        for t in threads:
            t.start()
        time.sleep(max(0.0, warm_until - time.monotonic()))
        counts0 = {c: len(lat[c]) for c in names}
        t0 = time.monotonic()
        mem = max(sum(rss_mb(p.proc.pid) for p in procs), 0.0)
        for t in threads:
            t.join()
        span = time.monotonic() - t0
        frames = sum(len(lat[c]) - counts0[c] for c in names)
        all_lat = sorted(v for c in names for v in lat[c][counts0[c]:])
        return {"mode": mode, "cameras": n, "fps_total": frames / span, "fps_per_camera": frames / span / n,
                "latency_p50_ms": statistics.median(all_lat) if all_lat else float("nan"),
                "latency_p95_ms": all_lat[int(0.95 * (len(all_lat) - 1))] if all_lat else float("nan"),
                "rss_mb": mem}
    finally:
        for p in procs:
            p.stop()
        ros.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cameras", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--modes", nargs="+", default=["batched", "unbatched", "separate"])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--size", default="360x640")
    ap.add_argument("--json", default="/tmp/bench_multicamera.json")
    a = ap.parse_args()
    os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
    size = tuple(int(v) for v in a.size.split("x"))
    tmp = Path(tempfile.mkdtemp())
    rows = []
    for n in a.cameras:
        for mode in a.modes:
            if mode != "batched" and n == 1 and rows and rows[-1]["cameras"] == 1:
                continue  # with one camera the three modes are the same node
            r = run_case(mode, n, a.seconds, size, tmp)
            rows.append(r)
            print(f"{n} cam {mode:<9} {r['fps_total']:6.2f} fps total  p50 {r['latency_p50_ms']:7.1f} ms  "
                  f"p95 {r['latency_p95_ms']:7.1f} ms  RSS {r['rss_mb']:7.0f} MiB", flush=True)
    print(f"\n{'cams':>4} {'mode':<10} {'fps total':>9} {'x separate':>10} {'p50 ms':>8} {'p95 ms':>8} "
          f"{'RSS MiB':>8} {'x separate':>10}")
    for r in rows:
        sep = next((s for s in rows if s["cameras"] == r["cameras"] and s["mode"] == "separate"), r)
        print(f"{r['cameras']:>4} {r['mode']:<10} {r['fps_total']:9.2f} {r['fps_total'] / sep['fps_total']:10.2f} "
              f"{r['latency_p50_ms']:8.1f} {r['latency_p95_ms']:8.1f} {r['rss_mb']:8.0f} "
              f"{r['rss_mb'] / sep['rss_mb']:10.2f}")
    Path(a.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
