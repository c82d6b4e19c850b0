"""uint8 frame in -> label out on the GPU: the pipeline alone, and the whole node over DDS.

``--mode pipeline`` (no ROS): ``Pipeline.run`` on a demo-weights engine on ``--device``, with the
torch stages (pre/post-processing on the device, ``pipeline_torch``) against the numpy stages (the
same engine, pre/post-processing on the host), label only and every output, per camera size:
median latency per frame and frames per second of a back-to-back loop.

``--mode node``: starts ``liteseg_node`` on ``--device`` (its own process), subscribes to
``~/label`` only (raw: this process does not deserialize), and measures (a) stamp-to-label latency
at ``--rate`` Hz: the frame's header stamp is the wall clock when it is published, the label
carries it unchanged, so receive time - stamp = camera publish -> DDS -> node -> DDS -> here;
(b) the node's throughput: frames published back to back (pre-serialized, best effort) for
``--seconds``; labels received per second. The publisher's own ceiling (serialized frames per
second it can hand to DDS) is printed next to it, since at 1080p it can be the limit.

Goals (issue text, H100-class GPU): >= 10 x 161 fps (the paper's model-only figure) for the whole
node path at 640x360, and <= 5 ms stamp-to-publish at 30 Hz.

    python benchmarks/bench_gpu_pipeline.py --mode pipeline --device cuda --json /tmp/gpu_pipeline.json
    python benchmarks/bench_gpu_pipeline.py --mode node --device cuda --json /tmp/gpu_node.json
    python benchmarks/bench_gpu_pipeline.py --mode pipeline --device cpu --iters 5   # the code path, no GPU
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CAMERAS = "640x360,1920x1080"


def frames_for(w: int, h: int, n: int = 8) -> list[np.ndarray]:
    from liteseg_ros.synthetic import SceneConfig, drive

    return [s.image for s in drive(3, n, SceneConfig(height=h, width=w))]


def bench_pipeline(a, cameras) -> list[dict]:
    import torch

    from liteseg_ros import params
    from liteseg_ros.pipeline import Pipeline, Wants
    from liteseg_ros.runtime import build_pipeline

    nh, nw = (int(v) for v in a.network.split("x"))
    vals = dict(params.defaults(), weights="demo", device=a.device, backend=a.backend, precision=a.precision,
                network_width=nw, network_height=nh)
    base, _ = build_pipeline(params.pipeline_settings(vals), log=lambda s: None)
    engine = base.engine
    print(f"engine: {engine.info.backend}/{engine.info.device}/{engine.info.precision}")
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    rows = []
    for cw, ch in cameras:
        imgs = frames_for(cw, ch)
        for backend in ("torch", "numpy"):
            if getattr(engine, "tensor_device", None) is None and backend == "torch":
                continue
            pipe = Pipeline(engine, base.classes, base.config, backend=backend)
            for wname, wants in (("label", Wants.only_label()), ("all", Wants.all())):
                for i in range(a.warmup):
                    pipe.run([imgs[i % len(imgs)]], wants=wants)
                sync()
                lat = []
                t_start = time.perf_counter()
                for i in range(a.iters):
                    t0 = time.perf_counter()
                    pipe.run([imgs[i % len(imgs)]], wants=wants)  # returns host arrays: synchronised
                    lat.append((time.perf_counter() - t0) * 1e3)
                wall = time.perf_counter() - t_start
                row = {"camera": f"{cw}x{ch}", "stages": backend, "outputs": wname,
                       "latency_ms_p50": statistics.median(lat), "latency_ms_p95": sorted(lat)[int(0.95 * len(lat))],
                       "fps": a.iters / wall}
                rows.append(row)
                print(f"{row['camera']:>10} {backend:>6} stages, {wname:>5}: {row['latency_ms_p50']:7.2f} ms p50 "
                      f"{row['latency_ms_p95']:7.2f} ms p95 {row['fps']:8.1f} fps")
    return rows


def bench_node(a, cameras) -> list[dict]:
    sys.path.insert(0, str(REPO / "test"))
    import yaml
    from conftest import NodeProcess, RosHarness  # isolated domain, large-SHM Fast DDS profile
    from rclpy.qos import QoSProfile, QoSReliabilityPolicy
    from sensor_msgs.msg import Image

    from liteseg_ros import wire

    nh, nw = (int(v) for v in a.network.split("x"))
    tmp = Path(tempfile.mkdtemp())
    pf = tmp / "p.yaml"
    pf.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        "weights": "demo", "device": a.device, "backend": a.backend, "precision": a.precision,
        "network_width": nw, "network_height": nh}}}))
    node = NodeProcess(["--ros-args", "--params-file", str(pf)], log_path=tmp / "node.log")
    ros = RosHarness("bench_gpu_node")
    rows = []
    got: list[tuple[float, float]] = []  # (receive wall time, stamp)

    def on_label(raw: bytes) -> None:
        t = time.time()
        st = wire.parse_image(raw).header.stamp
        got.append((t, st.sec + st.nanosec * 1e-9))

    try:
        # deep enough that a burst of labels waits in the reader instead of replacing older ones
        reliable = QoSProfile(depth=100, reliability=QoSReliabilityPolicy.RELIABLE)
        ros.node.create_subscription(Image, "/liteseg/label", on_label, reliable, raw=True)
        pub = ros.node.create_publisher(Image, "/image", QoSProfile(depth=1, reliability=QoSReliabilityPolicy.BEST_EFFORT))
        ros.wait_for(lambda: pub.get_subscription_count() > 0 or not node.alive(), 600, "node")
        if not node.alive():
            raise RuntimeError(node.output())
        time.sleep(1.0)
        info = next((ln for ln in node.output().splitlines() if " ready in " in ln), "")
        print(info)
        for cw, ch in cameras:
            imgs = frames_for(cw, ch)

            def send(i: int, imgs: list = imgs) -> None:
                h = Image().header
                t = time.time()
                h.stamp.sec, h.stamp.nanosec = int(t), int((t % 1) * 1e9)
                h.frame_id = "cam"
                pub.publish(wire.image_bytes(imgs[i % len(imgs)], "bgr8", h))

            for i in range(30):  # warm-up
                send(i)
                time.sleep(1.0 / a.rate)
            time.sleep(0.5)
            got.clear()
            n = int(a.rate * a.seconds)
            for i in range(n):
                t_next = time.perf_counter() + 1.0 / a.rate
                send(i)
                time.sleep(max(0.0, t_next - time.perf_counter()))
            time.sleep(0.5)
            lat = sorted((r - s) * 1e3 for r, s in got)
            row = {"camera": f"{cw}x{ch}", "rate_hz": a.rate, "sent": n, "received": len(lat),
                   "stamp_to_label_ms_p50": lat[len(lat) // 2] if lat else float("nan"),
                   "stamp_to_label_ms_p95": lat[int(0.95 * len(lat))] if lat else float("nan")}
            # throughput: pre-serialized frames back to back; the node keeps only the newest
            blobs = [wire.image_bytes(im, "bgr8") for im in imgs]
            got.clear()
            sent = 0
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < a.seconds:
                pub.publish(blobs[sent % len(blobs)])
                sent += 1
                time.sleep(0)  # let the spin thread (the label callback) have the GIL
            wall = time.perf_counter() - t0
            time.sleep(0.5)
            row.update(publisher_fps=sent / wall, node_fps=len(got) / wall)
            rows.append(row)
            print(f"{row['camera']:>10}: stamp->label at {a.rate:g} Hz {row['stamp_to_label_ms_p50']:.2f} ms p50 "
                  f"{row['stamp_to_label_ms_p95']:.2f} ms p95 ({row['received']}/{n}); back to back: node "
                  f"{row['node_fps']:.0f} labels/s (publisher offered {row['publisher_fps']:.0f} frames/s)")
    finally:
        node.stop()
        ros.close()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("pipeline", "node"), default="pipeline")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--network", default="360x640", help="HxW")
    ap.add_argument("--cameras", default=CAMERAS, help="WxH list")
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--rate", type=float, default=30.0)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--json", default="/tmp/bench_gpu_pipeline.json")
    a = ap.parse_args()
    cameras = [tuple(int(v) for v in c.split("x")) for c in a.cameras.split(",")]
    if a.mode == "node":
        os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
        rows = bench_node(a, cameras)
    else:
        rows = bench_pipeline(a, cameras)
    Path(a.json).write_text(json.dumps({"mode": a.mode, "device": a.device, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
