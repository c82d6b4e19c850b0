"""``liteseg play``: publish a bag's messages live, with their recorded timing and /clock.

Part of the bag tools, but a different job from ``liteseg bag``: this one talks to DDS, so it is
the only bag module that imports rclpy (lazily, inside :func:`play_bag`). It stands in for
``ros2 bag play`` where that is not installed (the PyPI wheels have no rosbag2).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from liteseg_ros.bag.store import BagError, resolve_input, topic_table


def message_class(msgtype: str):
    """'pkg/msg/Type' -> the rclpy message class (imports pkg.msg)."""
    import importlib

    parts = msgtype.split("/")
    if len(parts) != 3:
        raise BagError(f"cannot publish type {msgtype!r}: expected 'package/msg/Type'")
    pkg, kind, name = parts
    try:
        return getattr(importlib.import_module(f"{pkg}.{kind}"), name)
    except (ImportError, AttributeError) as exc:
        raise BagError(f"no Python message class for {msgtype} ({exc}); install or build {pkg}") from None


def play_bag(bag: str | Path, *, rate: float = 1.0, clock: bool = False, clock_hz: float = 40.0,
             loop: bool = False, topics: Sequence[str] | None = None, wait_for: Sequence[str] | None = None,
             wait_timeout: float = 60.0, qos_mode: str = "reliable", start_delay: float = 0.0,
             stop_event: threading.Event | None = None, log: Callable[[str], None] = print) -> int:
    """Publish a bag's messages on rclpy with their recorded timing; returns messages published.

    Raw CDR from the bag is published as is (no Python message is built). ``clock``: publish
    ``/clock`` with the bag time before every message and at ``clock_hz`` in between (for nodes with
    ``use_sim_time``). ``wait_for``: topics that must have a subscriber before playing starts; None
    (the default) means every image topic played, so frames published before a node has discovered
    the player are not lost; ``()`` plays at once.
    ``qos_mode``: ``reliable`` (default; matches every subscriber) or ``recorded`` (the recorded
    reliability). Durability is the recorded one (transient local stays latched).
    """
    import rclpy
    import rclpy.duration
    import rclpy.time
    from rclpy.context import Context
    from rclpy.qos import QoSDurabilityPolicy, QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy
    from rosbags.interfaces import QosDurability, QosReliability
    from rosbags.rosbag2 import Reader

    from liteseg_ros import fast_send

    if rate <= 0:
        raise BagError(f"--rate must be > 0, got {rate}")
    src = resolve_input(Path(bag))
    ctx = Context()
    rclpy.init(context=ctx, args=["liteseg_play"])
    published = 0
    try:
        node = rclpy.create_node("liteseg_play", context=ctx)
        with Reader(src) as reader:
            conns = reader.connections
            if topics:
                want = {"/" + t.strip("/") for t in topics}
                missing = want - {c.topic for c in conns}
                if missing:
                    raise BagError(f"topics {', '.join(sorted(missing))} are not in the bag; topics that exist:\n"
                                   + topic_table(conns))
                conns = [c for c in conns if c.topic in want]
            pubs: dict[tuple[str, str], Any] = {}
            by_conn: dict[int, Any] = {}
            for c in conns:
                key = (c.topic, c.msgtype)
                if key not in pubs:
                    try:
                        cls = message_class(c.msgtype)
                    except BagError as exc:
                        log(f"warning: skipping {c.topic}: {exc}")
                        continue
                    rec = list(getattr(c.ext, "offered_qos_profiles", []) or [])
                    latched = any(q.durability == QosDurability.TRANSIENT_LOCAL for q in rec)
                    best_effort = bool(rec) and all(q.reliability == QosReliability.BEST_EFFORT for q in rec)
                    depth = max([10, *[q.depth for q in rec]])
                    qos = QoSProfile(
                        depth=depth, history=QoSHistoryPolicy.KEEP_LAST,
                        reliability=(QoSReliabilityPolicy.BEST_EFFORT if qos_mode == "recorded" and best_effort
                                     else QoSReliabilityPolicy.RELIABLE),
                        durability=(QoSDurabilityPolicy.TRANSIENT_LOCAL if latched
                                    else QoSDurabilityPolicy.VOLATILE))
                    pubs[key] = node.create_publisher(cls, c.topic, qos)
                by_conn[c.id] = pubs[key]
            if not by_conn:
                raise BagError("nothing to play: no topic has a Python message class")
            clock_pub = None
            if clock:
                from rosgraph_msgs.msg import Clock

                clock_pub = node.create_publisher(Clock, "/clock", QoSProfile(depth=10))
            topic_pubs = {t: p for (t, _), p in pubs.items()}
            if wait_for is None:
                wait_for = [t for (t, kind) in pubs if kind in ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")]
                if wait_for:
                    log(f"waiting up to {wait_timeout:.0f} s for a subscriber on {', '.join(wait_for)} (--no-wait: "
                        "play at once)")
            end = time.monotonic() + wait_timeout
            for t in wait_for:
                t = "/" + t.strip("/")
                if t not in topic_pubs:
                    raise BagError(f"--wait-for {t}: not a topic being played")
                while topic_pubs[t].get_subscription_count() == 0:
                    if time.monotonic() > end:
                        raise BagError(f"no subscriber on {t} after {wait_timeout:.0f} s")
                    if stop_event is not None and stop_event.is_set():
                        return 0
                    time.sleep(0.05)
            if wait_for:
                time.sleep(0.3)  # let the subscribers' side of discovery settle
            if start_delay > 0:
                time.sleep(start_delay)

            def publish_clock(ns: int) -> None:
                clock_pub.publish(Clock(clock=rclpy.time.Time(nanoseconds=int(ns)).to_msg()))

            while True:
                b0 = w0 = None
                for conn, t, raw in reader.messages(connections=[c for c in conns if c.id in by_conn]):
                    if stop_event is not None and stop_event.is_set():
                        return published
                    if b0 is None:
                        b0, w0 = t, time.monotonic()
                    target = w0 + (t - b0) / 1e9 / rate
                    while (d := target - time.monotonic()) > 0:
                        if clock_pub is not None:
                            publish_clock(b0 + (time.monotonic() - w0) * rate * 1e9)
                            time.sleep(min(d, 1.0 / clock_hz))
                        else:
                            time.sleep(min(d, 0.1))
                    if clock_pub is not None:
                        publish_clock(t)
                    fast_send.send(by_conn[conn.id], bytes(raw))  # rcl directly: no second copy, GIL released
                    published += 1
                if not loop or published == 0:
                    break
            for p in pubs.values():  # let reliable messages reach their subscribers before exiting
                p.wait_for_all_acked(rclpy.duration.Duration(seconds=5.0))
        return published
    finally:
        rclpy.try_shutdown(context=ctx)
