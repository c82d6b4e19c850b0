"""Soak: the real node for N minutes at a given rate and size; does its memory stay flat?

Publishes generated frames (raw bgr8, or JPEG with ``--transport compressed``) to the node at
``--rate`` Hz for ``--minutes``, optionally a crafted decompression bomb every ``--bomb-every``
frames (compressed only: each must be rejected, and its memory must not stay), samples the node's
RSS every second, and reads its ~/stats counters. Prints frames processed, dropped, rejected, RSS
at start (after ``--warmup`` s), end and max, and the least-squares slope in MB per 10k frames;
exits 1 when the slope is above ``--max-slope`` (or the node died / processed nothing).

    .venv/bin/python benchmarks/soak.py --minutes 3 --rate 20 --size 360x640 --network 180x320
    .venv/bin/python benchmarks/soak.py --minutes 3 --rate 10 --transport compressed --bomb-every 10
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import node_load as nl


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--rate", type=float, default=20.0, help="camera Hz")
    ap.add_argument("--size", default="360x640", help="camera HxW")
    ap.add_argument("--network", default="180x320", help="network HxW")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--transport", choices=("raw", "compressed"), default="raw")
    ap.add_argument("--bomb-every", type=int, default=0, help="with compressed: every Nth frame is a bomb")
    ap.add_argument("--warmup", type=float, default=20.0, help="seconds before RSS start is taken")
    ap.add_argument("--max-slope", type=float, default=5.0, help="MB per 10k frames above which it fails")
    ap.add_argument("--json", default="/tmp/soak.json")
    a = ap.parse_args()
    if a.bomb_every and a.transport != "compressed":
        ap.error("--bomb-every needs --transport compressed")
    h, w = (int(v) for v in a.size.split("x"))
    nh, nw = (int(v) for v in a.network.split("x"))
    from rclpy.qos import QoSProfile, QoSReliabilityPolicy
    from sensor_msgs.msg import CompressedImage, Image

    from liteseg_ros import image_codec
    from liteseg_ros.msg import FrameStats

    node, ros, tmp = nl.start({"allow_random_weights": True, "network_width": nw, "network_height": nh,
                               "backend": a.backend, "input_transport": a.transport}, "soak")
    samples: list[tuple[float, float, int]] = []  # (t, rss MB, processed)
    try:
        stats = ros.collect(FrameStats, "/liteseg/stats")
        ros.collect(Image, "/liteseg/label")  # the node works only for outputs someone subscribes to
        kind, topic = (CompressedImage, "/image/compressed") if a.transport == "compressed" else (Image, "/image")
        pub = ros.node.create_publisher(kind, topic, QoSProfile(depth=1, reliability=QoSReliabilityPolicy.BEST_EFFORT))
        nl.wait_subscribed(ros, pub, node)
        imgs = nl.frames(16, h, w)
        jpegs = [image_codec.encode_compressed(i, "jpeg")[1] for i in imgs] if a.transport == "compressed" else None
        bombs = list(__import__("bombs").all_bombs().values()) if a.bomb_every else []
        stop = threading.Event()

        def sample() -> None:
            t0 = time.monotonic()
            while not stop.is_set():
                samples.append((time.monotonic() - t0, nl.rss_mb(node.proc.pid), stats[-1].processed if stats else 0))
                stop.wait(1.0)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t_end = time.monotonic() + a.minutes * 60
        period, nxt, i, sent_bombs = 1.0 / a.rate, time.monotonic(), 0, 0
        while time.monotonic() < t_end and node.alive():
            if bombs and i % a.bomb_every == a.bomb_every - 1:
                pub.publish(nl.image_msg(None, i, time.time_ns(), compressed=bombs[sent_bombs % len(bombs)]))
                sent_bombs += 1
            else:
                j = i % len(imgs)
                pub.publish(nl.image_msg(imgs[j], i, time.time_ns(), jpegs[j] if jpegs else None))
            i += 1
            nxt += period
            time.sleep(max(0.0, nxt - time.monotonic()))
        time.sleep(2.0)
        stop.set()
        sampler.join()
        alive = node.alive()
    finally:
        node.stop()
        ros.close()
    if not stats:
        print(f"no ~/stats received; node log:\n{node.output()[-3000:]}", file=sys.stderr)
        return 1
    last = stats[-1]
    warm = [s for s in samples if s[0] >= a.warmup] or samples
    rss = [s[1] for s in warm]
    slope = nl.slope_per_10k([s[2] for s in warm], rss)
    out = {"minutes": a.minutes, "rate": a.rate, "size": [h, w], "network": [nh, nw], "transport": a.transport,
           "published": i, "bombs": sent_bombs, "received": last.received, "processed": last.processed,
           "dropped": last.dropped, "rejected": last.rejected, "rss_start_mb": rss[0], "rss_end_mb": rss[-1],
           "rss_max_mb": max(s[1] for s in samples), "mb_per_10k_frames": slope, "node_alive": alive,
           "max_slope": a.max_slope}
    print(f"soak {a.minutes:g} min at {a.rate:g} Hz, {w}x{h} -> network {nw}x{nh}, {a.transport}"
          f"{f', a bomb every {a.bomb_every}' if a.bomb_every else ''}:")
    print(f"  published {i} (bombs {sent_bombs}); node received {last.received}, processed {last.processed}, "
          f"dropped {last.dropped}, rejected {last.rejected}")
    print(f"  RSS start {rss[0]:.0f} MB (after {a.warmup:g} s), end {rss[-1]:.0f} MB, max {out['rss_max_mb']:.0f} MB; "
          f"slope {slope:+.2f} MB per 10k frames (limit {a.max_slope:g})")
    Path(a.json).write_text(json.dumps(out, indent=2))
    bad_bombs = bool(sent_bombs) and last.rejected == 0  # (a bomb overwritten in the newest-frame slot is never decoded)
    if not alive or last.processed == 0 or slope > a.max_slope or bad_bombs:
        print("FAIL: " + ("node died; " if not alive else "") + ("nothing processed; " if not last.processed else "")
              + (f"slope above {a.max_slope:g}; " if slope > a.max_slope else "")
              + ("bombs not rejected" if bad_bombs else ""), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
