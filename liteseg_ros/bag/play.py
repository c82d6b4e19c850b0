"""``liteseg play``: publish a bag's messages live, with their recorded timing and /clock.

Part of the bag tools, but a different job from ``liteseg bag``: this one talks to DDS, so it is
the only bag module that imports rclpy (lazily, inside :func:`play_bag`). It stands in for
``ros2 bag play`` where that is not installed (the PyPI wheels have no rosbag2).
"""
from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from liteseg_ros.bag.store import BagError, resolve_input, topic_table

_PACKAGE = re.compile(r"[a-z][a-z0-9_]*")  # REP-144 package names
_TYPE = re.compile(r"[A-Z][A-Za-z0-9]*")  # rosidl message names


def _snake(name: str) -> str:
    """rosidl's file name of a message type (``CompressedImage`` -> ``compressed_image``)."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()


def message_module(msgtype: str) -> str:
    """The module of an installed ROS message type ``pkg/msg/Name``, checked before anything is imported.

    A bag names its types itself, so a type is a string from the file: importing whatever module it
    names would run that module's code (``venv/__main__/Clock`` ran Python's venv tool). The type is
    resolved only the way rosidl lays message packages out: ``pkg`` a ROS package name, ``msg``, a
    CamelCase ``Name``; ``pkg`` an installed package holding the rosidl type support library
    (``<pkg>_s__rosidl_typesupport_c*``) and ``msg/_<name>.py``. BagError otherwise.
    """
    parts = msgtype.split("/")
    if (len(parts) != 3 or parts[1] != "msg" or not _PACKAGE.fullmatch(parts[0])
            or not _TYPE.fullmatch(parts[2])):
        raise BagError(f"cannot publish type {msgtype!r}: not a ROS message type 'package/msg/Name'")
    pkg, _, name = parts
    # every folder ``pkg`` on sys.path, as import (and pkgutil.extend_path) would find them; nothing runs
    for folder in (Path(entry or ".") / pkg for entry in sys.path):
        try:
            typesupport = folder.is_dir() and any(folder.glob(f"{pkg}_s__rosidl_typesupport_c*"))
        except OSError:
            continue
        if typesupport and (folder / "msg" / f"_{_snake(name)}.py").is_file():
            return f"{pkg}.msg"
    raise BagError(f"no installed ROS message package provides {msgtype} (looked for the rosidl-generated "
                   f"{pkg}/msg/_{_snake(name)}.py); install or build {pkg}")


def message_class(msgtype: str):
    """'pkg/msg/Type' -> the rclpy message class, for installed ROS message packages only
    (:func:`message_module`); BagError otherwise, also when importing it fails or tries to exit."""
    import importlib

    module = message_module(msgtype)
    try:
        return getattr(importlib.import_module(module), msgtype.rsplit("/", 1)[1])
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - a module's import may raise anything
        raise BagError(f"no Python message class for {msgtype} ({type(exc).__name__}: {exc}); "
                       f"install or build {msgtype.split('/')[0]}") from None


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

    if not (0 < rate < float("inf")):  # also NaN
        raise BagError(f"--rate must be a finite number > 0, got {rate}")
    if clock and not (0 < clock_hz < float("inf")):
        raise BagError(f"--clock-hz must be a finite number > 0, got {clock_hz}")
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
