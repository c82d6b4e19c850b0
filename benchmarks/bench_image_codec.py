"""Benchmark liteseg_ros.image_codec: decode and fill_image on real rclpy (and rosbags) messages.

Prints one table (median ms per call, and the ratio to a plain numpy copy of the bytes the call
produces -- the decoded (H, W, 3) image, or the message data -- measured in the same run) and writes JSON to --json (default /tmp/bench_image_codec.json).

    .venv/bin/python benchmarks/bench_image_codec.py [--repeat 30] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import cv2
import numpy as np
from rosbags.typesys.stores.ros2_jazzy import builtin_interfaces__msg__Time as RbTime
from rosbags.typesys.stores.ros2_jazzy import sensor_msgs__msg__Image as RbImage
from rosbags.typesys.stores.ros2_jazzy import std_msgs__msg__Header as RbHeader
from sensor_msgs.msg import CompressedImage, Image

from liteseg_ros.image_codec import decode_any, encode_compressed, fill_image


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def rclpy_image(h: int, w: int, encoding: str, channels: int, rng: np.random.Generator, pad: int = 0) -> Image:
    msg = Image()
    msg.height, msg.width, msg.encoding = h, w, encoding
    msg.step = w * channels + pad
    msg.data = rng.integers(0, 256, msg.step * h, dtype=np.uint8).tobytes()
    return msg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--json", default="/tmp/bench_image_codec.json")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)

    yy, xx = np.mgrid[0:720, 0:1280]
    scene = np.stack([xx % 256, yy % 256, (xx + yy) % 256], axis=2).astype(np.uint8)
    fmt, jpeg = encode_compressed(scene, "jpeg", quality=90)
    jpeg_msg = CompressedImage()
    jpeg_msg.format, jpeg_msg.data = fmt, jpeg

    vga = rclpy_image(480, 640, "bgr8", 3, rng)
    rb_vga = RbImage(
        header=RbHeader(stamp=RbTime(sec=0, nanosec=0), frame_id=""), height=480, width=640, encoding="bgr8",
        is_bigendian=0, step=1920, data=np.frombuffer(bytes(vga.data), np.uint8),
    )
    cases: list[tuple[str, object, Callable[[], object], int]] = [
        ("decode 640x480 bgr8 (rclpy)", vga, lambda: decode_any(vga), 480 * 640 * 3),
        ("decode 640x480 bgr8 (rosbags)", rb_vga, lambda: decode_any(rb_vga), 480 * 1920),
    ]
    padded = rclpy_image(480, 640, "bgr8", 3, rng, pad=64)
    cases.append(("decode 640x480 bgr8 step+64", padded, lambda: decode_any(padded), 480 * 640 * 3))
    hd = rclpy_image(720, 1280, "rgb8", 3, rng)
    cases.append(("decode 1280x720 rgb8", hd, lambda: decode_any(hd), 720 * 1280 * 3))
    bayer = rclpy_image(1080, 1920, "bayer_rggb8", 1, rng)
    cases.append(("decode 1920x1080 bayer_rggb8", bayer, lambda: decode_any(bayer), 1080 * 1920 * 3))
    cases.append(("decode jpeg 1280x720", jpeg_msg, lambda: decode_any(jpeg_msg), 720 * 1280 * 3))
    # The same bytes through OpenCV alone: what the codec cost before its size/corruption checks
    # (strict libjpeg-turbo via simplejpeg, PNG chunk CRCs); the ratio is printed below.
    jpeg_buf = np.frombuffer(jpeg, np.uint8)
    cases.append(("cv2.imdecode jpeg 1280x720", None, lambda: cv2.imdecode(jpeg_buf, cv2.IMREAD_UNCHANGED),
                  720 * 1280 * 3))
    pfmt, png = encode_compressed(scene, "png")
    png_msg = CompressedImage()
    png_msg.format, png_msg.data = pfmt, png
    png_buf = np.frombuffer(png, np.uint8)
    cases.append(("decode png 1280x720", png_msg, lambda: decode_any(png_msg), 720 * 1280 * 3))
    cases.append(("cv2.imdecode png 1280x720", None, lambda: cv2.imdecode(png_buf, cv2.IMREAD_UNCHANGED),
                  720 * 1280 * 3))
    bgr_out = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    mono_out = rng.integers(0, 256, (480, 640), dtype=np.uint8)
    out_msg = Image()
    cases.append(("fill_image 640x480 bgr8 (rclpy)", None, lambda: fill_image(out_msg, bgr_out, "bgr8"),
                  bgr_out.nbytes))
    cases.append(("fill_image 640x480 mono8 (rclpy)", None, lambda: fill_image(out_msg, mono_out, "mono8"),
                  mono_out.nbytes))
    cases.append(("fill_image 640x480 bgr8 (rosbags)", None, lambda: fill_image(rb_vga, bgr_out, "bgr8"),
                  bgr_out.nbytes))

    rows = []
    for name, _, fn, nbytes in cases:
        src = rng.integers(0, 256, nbytes, dtype=np.uint8)
        copy_ms = median_ms(lambda src=src: src.copy(), args.repeat)
        ms = median_ms(fn, args.repeat)
        rows.append({"case": name, "ms": round(ms, 4), "memcpy_ms": round(copy_ms, 4),
                     "x_memcpy": round(ms / copy_ms, 2)})

    width = max(len(r["case"]) for r in rows)
    print(f"{'case':<{width}}  {'ms':>9}  {'memcpy ms':>9}  {'x memcpy':>8}")
    for r in rows:
        print(f"{r['case']:<{width}}  {r['ms']:>9.3f}  {r['memcpy_ms']:>9.3f}  {r['x_memcpy']:>8.2f}")
    by = {r["case"]: r["ms"] for r in rows}
    for codec in ("jpeg", "png"):
        ratio = by[f"decode {codec} 1280x720"] / by[f"cv2.imdecode {codec} 1280x720"]
        print(f"{codec}: decode_any / cv2.imdecode alone = {ratio:.2f}x")
    result = {
        "benchmark": "image_codec",
        "repeat": args.repeat,
        "opencv": cv2.__version__,
        "numpy": np.__version__,
        "machine": platform.machine(),
        "cv2_threads": 1,
        "rows": rows,
    }
    with open(args.json, "w") as fh:
        json.dump(result, fh, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
