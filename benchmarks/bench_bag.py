"""Benchmark `liteseg bag`: offline frames/s and bag sizes, against the bare pipeline in the same run.

Generates a bag of --frames synthetic 640x360 scenes (raw bgr8, and a JPEG twin), builds one
pipeline (random weights, --backend, network --size, --threads CPU threads) and times
``liteseg_ros.bag.segment_bag`` for several outputs/storages, plus ``Pipeline.run`` alone on the
decoded frames (all outputs) as the baseline; each case runs --repeat times and the fastest counts: the ratio is what reading, decoding, building messages,
serializing and writing the bag cost on top. Prints one table; writes JSON to --json.

    .venv/bin/python benchmarks/bench_bag.py [--frames 30] [--size 360x640] [--threads 2] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from liteseg_ros import bag, image_codec, params
from liteseg_ros.pipeline import Wants
from liteseg_ros.runtime import build_pipeline


def make_frames(n: int, h: int, w: int) -> list[np.ndarray]:
    try:
        from liteseg_ros.synthetic import SceneConfig, drive

        return [s.image for s in drive(1, n, SceneConfig(height=h, width=w))]
    except ImportError:
        rng = np.random.default_rng(0)
        return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def write_bag(path: Path, frames: list[np.ndarray], jpeg: bool) -> None:
    ts = get_typestore(Stores.ROS2_JAZZY)
    T = ts.types
    msgtype = "sensor_msgs/msg/CompressedImage" if jpeg else "sensor_msgs/msg/Image"
    with Writer(path, version=9, storage_plugin=StoragePlugin.SQLITE3) as wr:
        conn = wr.add_connection("/camera/image_raw", msgtype, typestore=ts)
        for i, img in enumerate(frames):
            t = 1_700_000_000 * 10**9 + i * 33_333_333
            hdr = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=t // 10**9, nanosec=t % 10**9),
                                           frame_id="cam")
            if jpeg:
                fmt, data = image_codec.encode_compressed(img, "jpeg", 90)
                msg = T[msgtype](header=hdr, format=fmt, data=np.frombuffer(data, np.uint8))
            else:
                msg = image_codec.fill_image(T[msgtype](header=hdr, height=0, width=0, encoding="", is_bigendian=0,
                                                        step=0, data=np.empty(0, np.uint8)), img, "bgr8")
            wr.write(conn, t, ts.serialize_cdr(msg, msgtype))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--size", default="360x640", help="network HxW (input frames are 360x640 too)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--repeat", type=int, default=2, help="runs per case; the fastest counts (shared machines)")
    ap.add_argument("--json", type=Path, default=Path("/tmp/bench_bag.json"))
    args = ap.parse_args(argv)
    nh, nw = (int(v) for v in args.size.lower().split("x"))

    import cv2

    cv2.setNumThreads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_bag_"))
    try:
        frames = make_frames(args.frames, 360, 640)
        raw_bag, jpeg_bag = tmp / "raw_in", tmp / "jpeg_in"
        write_bag(raw_bag, frames, jpeg=False)
        write_bag(jpeg_bag, frames, jpeg=True)
        values = params.validate({"allow_random_weights": True, "backend": args.backend, "device": "cpu",
                                  "num_threads": args.threads, "network_width": nw, "network_height": nh,
                                  "engine_cache_dir": str(tmp / "engines")})
        label_only = dict(values, publish_color=False, publish_overlay=False, publish_confidence=False,
                          publish_masks=False, publish_boundary=False)
        t0 = time.perf_counter()
        pipe, source = build_pipeline(params.pipeline_settings(values), log=lambda m: None)
        setup_s = time.perf_counter() - t0
        info = pipe.engine.info

        # Baseline: the pipeline alone on decoded frames (the work every path shares).
        wants = Wants(masks=None)
        pipe.run([frames[0]], "bgr", wants)  # warm
        base_s = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            for img in frames:
                pipe.run([img], "bgr", wants)
            base_s = min(base_s, time.perf_counter() - t0)
        base_fps = len(frames) / base_s
        rows = [{"case": "Pipeline.run only (all outputs)", "frames": len(frames), "seconds": base_s,
                 "fps": base_fps, "ratio": 1.0, "in_mb": None, "out_mb": None}]
        cases = [
            ("bag raw -> sqlite3, all outputs", raw_bag, "sqlite3", values),
            ("bag raw -> mcap, all outputs", raw_bag, "mcap", values),
            ("bag raw -> sqlite3, label only", raw_bag, "sqlite3", label_only),
            ("bag jpeg -> mcap, all outputs", jpeg_bag, "mcap", values),
        ]
        for i, (name, src, storage, vals) in enumerate(cases):
            runs = []
            for k in range(args.repeat):
                runs.append(bag.segment_bag(src, tmp / f"out{i}", ["/camera/image_raw"], vals, storage=storage,
                                            progress=False, pipeline=(pipe, source), log=lambda m: None,
                                            overwrite=k > 0))
            s = min(runs, key=lambda r: r.seconds)
            rows.append({"case": name, "frames": s.frames, "seconds": s.seconds, "fps": s.fps,
                         "ratio": s.fps / base_fps, "in_mb": s.input_bytes / 1e6, "out_mb": s.output_bytes / 1e6})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"liteseg bag: {args.frames} frames 640x360 -> network {nw}x{nh}, {info.backend}/{info.device}/"
          f"{info.precision}, {args.threads} threads (pipeline build {setup_s:.1f} s)")
    print(f"{'case':<34} {'frames':>6} {'s':>7} {'frames/s':>9} {'vs pipeline':>12} {'in MB':>7} {'out MB':>7}")
    def mb(v: float | None) -> str:
        return f"{v:7.1f}" if v is not None else f"{'-':>7}"

    for r in rows:
        print(f"{r['case']:<34} {r['frames']:>6} {r['seconds']:7.2f} {r['fps']:9.2f} {r['ratio']:11.2f}x "
              f"{mb(r['in_mb'])} {mb(r['out_mb'])}")
    result = {"frames": args.frames, "input_size": [360, 640], "network_size": [nh, nw], "threads": args.threads,
              "backend": info.backend, "device": info.device, "precision": info.precision,
              "pipeline_build_s": setup_s, "machine": platform.machine(), "python": platform.python_version(),
              "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"json: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
