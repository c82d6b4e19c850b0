"""Burst: frames at 10-20x the node's processing rate; bounded memory, no latency build-up, lossless replay.

First measures the node's processing rate (frames at a rate it keeps up with, median total_ms of
~/stats), then publishes ``--frames`` frames at ``--factor`` times that rate with a reliable
publisher, in two node configurations:

* ``latest`` (default node settings, newest-frame slot): most frames are dropped by design; what is
  checked is that memory stays bounded and latency (output receive time minus the input stamp) does
  not build up: the median latency of the last quarter of outputs must stay below
  ``--max-latency-factor`` processing times, however long the burst;
* ``lossless`` (``process_all_frames: true`` with the node's default ``queue_size``, or
  ``--queue-size``): every published frame must come out; frames lost = published - processed by the
  node (its ~/stats counter), and labels received are counted too. Latency grows here by design (a
  queue), so only its percentiles are shown. Keep ``--frames`` above the queue size: a burst that
  fits in the queue proves nothing about back-pressure.

Prints, per mode: published, processed, dropped, lost, RSS start/max/end, latency p50/p90/p99/max.
Exits 1 when memory grows by more than ``--max-rss-growth`` MB, latency builds up in ``latest`` mode,
or ``lossless`` loses a frame.

    .venv/bin/python benchmarks/burst.py --frames 300 --factor 15 --size 360x640 --network 180x320
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import node_load as nl


def run_mode(mode: str, a, h: int, w: int, nh: int, nw: int, imgs) -> dict:
    from rclpy.qos import QoSProfile, QoSReliabilityPolicy
    from sensor_msgs.msg import Image

    from liteseg_ros.msg import FrameStats

    params = {"allow_random_weights": True, "network_width": nw, "network_height": nh, "backend": a.backend,
              "publish_color": False, "publish_overlay": False, "publish_confidence": False,
              "publish_masks": False, "publish_boundary": False}
    if mode == "lossless":
        params.update(process_all_frames=True, **({"queue_size": a.queue_size} if a.queue_size else {}))
    node, ros, _ = nl.start(params, f"burst_{mode}")
    arrivals: list[tuple[int, int]] = []  # (input stamp ns, receive time ns) of every ~/label
    rss: list[float] = []
    res: dict = {"mode": mode}
    try:
        stats = ros.collect(FrameStats, "/liteseg/stats", QoSProfile(depth=a.frames + 100,
                                                                     reliability=QoSReliabilityPolicy.RELIABLE))

        def on_label(m) -> None:
            arrivals.append((m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec, time.time_ns()))

        ros.node.create_subscription(Image, "/liteseg/label", on_label,
                                     QoSProfile(depth=a.frames + 100, reliability=QoSReliabilityPolicy.RELIABLE))
        pub = ros.node.create_publisher(Image, "/image", QoSProfile(depth=a.frames + 100,
                                                                    reliability=QoSReliabilityPolicy.RELIABLE))
        nl.wait_subscribed(ros, pub, node)
        # 1) processing rate: a few frames at a pace the node keeps up with
        for k in range(a.calibration):
            pub.publish(nl.image_msg(imgs[k % len(imgs)], k, time.time_ns()))
            time.sleep(1.0)
        ros.wait_for(lambda: len(stats) >= a.calibration, 60, "calibration frames")
        proc_ms = statistics.median(s.total_ms for s in stats[1:]) if len(stats) > 1 else stats[0].total_ms
        rate = a.factor * 1000.0 / proc_ms
        res.update(processing_ms=proc_ms, processing_hz=1000.0 / proc_ms, burst_hz=rate)
        time.sleep(1.0)
        base = len(arrivals)
        base_processed = stats[-1].processed
        base_dropped = stats[-1].dropped
        base_received = stats[-1].received
        rss.append(nl.rss_mb(node.proc.pid))
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                rss.append(nl.rss_mb(node.proc.pid))
                stop.wait(0.25)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        # 2) the burst
        t0 = time.monotonic()
        for k in range(a.frames):
            pub.publish(nl.image_msg(imgs[k % len(imgs)], 1000 + k, time.time_ns()))
            time.sleep(max(0.0, t0 + (k + 1) / rate - time.monotonic()))
        res["publish_seconds"] = time.monotonic() - t0
        # 3) drain: wait until the node has nothing left (its counters stop moving)
        last, quiet = -1, 0.0
        deadline = time.monotonic() + a.frames * proc_ms / 1000.0 * 1.5 + 60
        while time.monotonic() < deadline and quiet < 3.0:
            cur = (stats[-1].processed, len(arrivals))
            quiet = quiet + 0.5 if cur == last else 0.0
            last = cur
            time.sleep(0.5)
        stop.set()
        sampler.join()
        rss.append(nl.rss_mb(node.proc.pid))
        s = stats[-1]
        burst_arrivals = arrivals[base:]
        lat = [(r - st) / 1e6 for st, r in burst_arrivals]
        processed = s.processed - base_processed
        res.update(published=a.frames, received=s.received - base_received, processed=processed,
                   dropped=s.dropped - base_dropped, labels_received=len(burst_arrivals), lost=a.frames - processed,
                   rss_start_mb=rss[0], rss_max_mb=max(rss), rss_end_mb=rss[-1],
                   latency_ms=nl.percentiles(lat), node_alive=node.alive())
        q = max(1, len(lat) // 4)
        res["latency_first_quarter_p50_ms"] = statistics.median(lat[:q]) if lat else float("nan")
        res["latency_last_quarter_p50_ms"] = statistics.median(lat[-q:]) if lat else float("nan")
    finally:
        node.stop()
        ros.close()
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--queue-size", type=int, default=0, help="lossless mode's queue_size (0: the node's default)")
    ap.add_argument("--factor", type=float, default=15.0, help="burst rate / processing rate (10-20)")
    ap.add_argument("--size", default="360x640", help="camera HxW")
    ap.add_argument("--network", default="180x320", help="network HxW")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--calibration", type=int, default=8, help="frames used to measure the processing rate")
    ap.add_argument("--modes", nargs="+", choices=("latest", "lossless"), default=["latest", "lossless"])
    ap.add_argument("--max-latency-factor", type=float, default=4.0,
                    help="latest mode: last-quarter median latency bound, in processing times")
    ap.add_argument("--max-rss-growth", type=float, default=300.0, help="MB the node may grow during a burst")
    ap.add_argument("--json", default="/tmp/burst.json")
    a = ap.parse_args()
    h, w = (int(v) for v in a.size.split("x"))
    nh, nw = (int(v) for v in a.network.split("x"))
    imgs = nl.frames(16, h, w)
    results, failures = [], []
    for mode in a.modes:
        r = run_mode(mode, a, h, w, nh, nw, imgs)
        results.append(r)
        lat = r["latency_ms"]
        print(f"{mode}: processing {r['processing_ms']:.1f} ms/frame ({r['processing_hz']:.1f} Hz), burst "
              f"{r['burst_hz']:.0f} Hz ({a.factor:g}x) for {r['publish_seconds']:.1f} s")
        if mode == "lossless":
            print(f"  published {r['published']}, node received {r['received']}, processed {r['processed']}, "
                  f"dropped {r['dropped']}: LOST {r['lost']} (labels received {r['labels_received']})")
        else:  # dropping is this mode's design: the newest frame wins, in the slot or in best-effort DDS
            print(f"  published {r['published']}, node received {r['received']} (best effort, depth 1), processed "
                  f"{r['processed']}, dropped in the slot {r['dropped']} (by design)")
        print(f"  RSS start {r['rss_start_mb']:.0f} MB, max {r['rss_max_mb']:.0f} MB, end {r['rss_end_mb']:.0f} MB")
        print(f"  latency p50 {lat['p50']:.0f} ms, p90 {lat['p90']:.0f}, p99 {lat['p99']:.0f}, max {lat['max']:.0f}; "
              f"median first quarter {r['latency_first_quarter_p50_ms']:.0f} ms, last quarter "
              f"{r['latency_last_quarter_p50_ms']:.0f} ms")
        if not r["node_alive"]:
            failures.append(f"{mode}: the node died")
        if r["rss_max_mb"] - r["rss_start_mb"] > a.max_rss_growth:
            failures.append(f"{mode}: RSS grew {r['rss_max_mb'] - r['rss_start_mb']:.0f} MB")
        if mode == "latest" and r["latency_last_quarter_p50_ms"] > a.max_latency_factor * r["processing_ms"]:
            failures.append(f"latest: latency builds up ({r['latency_last_quarter_p50_ms']:.0f} ms > "
                            f"{a.max_latency_factor:g} x {r['processing_ms']:.0f} ms)")
        if mode == "lossless" and r["lost"]:
            failures.append(f"lossless: {r['lost']} of {r['published']} frames lost")
    Path(a.json).write_text(json.dumps(results, indent=2))
    for f in failures:
        print(f"FAIL: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
