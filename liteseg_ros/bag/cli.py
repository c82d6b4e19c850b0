"""The ``liteseg bag`` and ``liteseg play`` commands: arguments, Ctrl-C, messages and exit codes.

Exit codes: 0 done (also a run stopped at ``--max-frames``), 1 a run that produced nothing (every
frame rejected), 2 bad input or options (said in one line), 130 interrupted.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from liteseg_ros import params
from liteseg_ros.bag.play import play_bag
from liteseg_ros.bag.segment import segment_bag, settings_from
from liteseg_ros.bag.store import STORAGES, BagError, BagOutputError
from liteseg_ros.defaults import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    non_negative_float,
    positive_float,
)


def _param_override(text: str) -> tuple[str, Any]:
    """'NAME:=VALUE' (VALUE parsed as YAML, as ros2 param does) -> (name, value)."""
    import yaml

    if ":=" not in text:
        raise argparse.ArgumentTypeError(f"parameter {text!r} must look like NAME:=VALUE")
    name, value = text.split(":=", 1)
    try:
        return name.strip(), yaml.safe_load(value) if value else ""
    except yaml.YAMLError:
        return name.strip(), value


def add_bag_parser(sub) -> None:
    """Register ``liteseg bag``."""
    p = sub.add_parser(
        "bag", help="segment every image of a rosbag offline into a new bag",
        description="Segment every Image/CompressedImage message on the chosen topics of a ROS 2 bag "
        "(sqlite3 or mcap) and write a new bag holding every input topic unchanged plus the node's outputs "
        "(label, color, overlay, confidence, masks/<group>, drivable_boundary, info, stats) under the names "
        "the node publishes (/liteseg/label ...; with several --topic the node's multi-camera layout "
        "/liteseg/<camera>/label, camera names from --cameras, the params' `cameras`, or the topics: "
        "/front/image_raw -> front), with the input header stamps and recorded receive "
        "times. Ctrl-C once finishes the current batch and keeps a valid partial bag; twice stops at once.")
    p.add_argument("input", type=Path, metavar="INPUT_BAG", help="bag folder (or a .db3/.mcap inside one)")
    p.add_argument("output", type=Path, metavar="OUTPUT_BAG", help="new bag folder to write")
    p.add_argument("--topic", "-t", action="append", default=[], metavar="TOPIC",
                   help="image topic to segment (repeat for several cameras)")
    p.add_argument("--params-file", type=Path, help="node parameters YAML (e.g. config/liteseg.yaml)")
    p.add_argument("-p", "--param", action="append", default=[], type=_param_override, metavar="NAME:=VALUE",
                   help="override one parameter, e.g. -p weights:=demo -p network_width:=320")
    p.add_argument("--cameras", nargs="+", metavar="NAME",
                   help="camera names, one per --topic in order (outputs /<node>/<NAME>/...)")
    p.add_argument("--node-name", default="liteseg", help="node name the outputs are published under (default: %(default)s)")
    p.add_argument("--storage", choices=STORAGES, help="output storage (default: the input's)")
    p.add_argument("--batch", type=int, help="frames per inference batch (default: the node's rule: one frame "
                   "per camera within batch_window_ms of bag time)")
    p.add_argument("--max-frames", type=int, help="stop after this many frames (a quick look)")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT_BAG if it exists")
    p.add_argument("--on-interrupt", choices=("keep", "delete"), default="keep",
                   help="after Ctrl-C keep the valid partial bag (marked incomplete) or delete it "
                   "(default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_bag)


def _install_stop_handler(stop: threading.Event):
    """First SIGINT/SIGTERM: graceful stop (finish the batch, close the bag); second: KeyboardInterrupt.

    Later ones are ignored, so a third Ctrl-C cannot interrupt the clean-up the second one started;
    the command keeps this handler until it has printed its result (the caller restores the old one).
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    count = 0

    def handler(signum, frame):
        nonlocal count
        count += 1
        if count == 2:
            raise KeyboardInterrupt
        if count == 1:
            stop.set()
            print("\nstopping after the current batch (Ctrl-C again to stop now)", file=sys.stderr, flush=True)

    for s in old:
        signal.signal(s, handler)

    def restore():
        for s, h in old.items():
            signal.signal(s, h)

    return restore


def _run_bag(args) -> int:
    try:
        overrides = dict(args.param)
        if "allow_download" not in overrides and not (
                args.params_file and "allow_download" in params.read_params_file(args.params_file, args.node_name)):
            overrides["allow_download"] = True  # a command run by a person: fetch registered weights on first use
        values = settings_from(args.params_file, overrides, args.node_name)
    except params.ParameterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from liteseg_ros.interrupts import deferred_interrupts

    with deferred_interrupts() as pending:  # the heavy imports, before Ctrl-C means "stop after this batch"
        import rosbags.rosbag2  # noqa: F401
        import torch  # noqa: F401

        import liteseg_ros.runtime  # noqa: F401
    if pending:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    stop = threading.Event()
    restore = _install_stop_handler(stop)
    try:  # the handler stays until the result is printed: a late second Ctrl-C is no traceback
        return _bag_command(args, values, stop)
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C twice): stopped at once", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        restore()


def _bag_command(args, values: Mapping[str, Any], stop: threading.Event) -> int:
    from liteseg_ros.engines import EngineError
    from liteseg_ros.runtime import ModelLoadError, resolve_weights

    try:
        # A registered name not cached yet is fetched here, with a progress bar (segment_bag builds quietly).
        resolve_weights(values["weights"], values["allow_download"], progress=not args.no_progress,
                        log=lambda m: print(m, file=sys.stderr))
        summary = segment_bag(args.input, args.output, args.topic, values, node_name=args.node_name,
                              cameras=args.cameras, storage=args.storage, batch=args.batch, overwrite=args.overwrite,
                              on_interrupt=args.on_interrupt, progress=not args.no_progress,
                              max_frames=args.max_frames, stop_event=stop,
                              log=lambda m: print(m, file=sys.stderr))
    except BagOutputError as exc:  # a failure while working (full disk, storage limit), not bad input
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except (BagError, ModelLoadError, EngineError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        from rosbags.rosbag2 import ReaderError, WriterError

        if isinstance(exc, (ReaderError, WriterError)):
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        raise
    for topic, root in summary.cameras.items():
        print(f"{topic} -> {root}/*")
    line = (f"{summary.frames}/{summary.total} frames in {summary.seconds:.1f} s ({summary.fps:.1f} frames/s; "
            f"model and engine {summary.setup_seconds:.1f} s), "
            f"{summary.rejected} rejected; {summary.storage} bag {summary.output_bytes / 1e6:.1f} MB "
            f"(input {summary.input_bytes / 1e6:.1f} MB)")
    if summary.complete:
        print(f"wrote {summary.output}: {line}")
        return EXIT_OK
    if summary.stop_reason == "rejected":
        print(f"error: every frame was rejected (see the warnings above); {summary.output} holds no "
              f"segmentation and is marked incomplete (custom_data liteseg_ros.complete: 'false'): {line}",
              file=sys.stderr)
        return EXIT_FAILURE
    why = "stopped at --max-frames" if summary.stop_reason == "max_frames" else "interrupted"
    if summary.output is None:
        print(f"{why}: partial output removed ({line})", file=sys.stderr)
    else:
        print(f"{why}: {summary.output} is a valid but PARTIAL bag (custom_data liteseg_ros.complete: "
              f"'false'): {line}", file=sys.stderr)
    return EXIT_OK if summary.stop_reason == "max_frames" else EXIT_INTERRUPTED


def add_play_parser(sub) -> None:
    """Register ``liteseg play``."""
    p = sub.add_parser(
        "play", help="publish a rosbag's messages with their timing and /clock (ros2 bag play stand-in)",
        description="Publish every message of a ROS 2 bag (raw CDR, no conversion) with its recorded timing, "
        "optionally with /clock for nodes started with use_sim_time:=true. Works without `ros2 bag`; "
        "publishers are reliable by default (they match reliable and best-effort subscribers) and keep "
        "the recorded durability.")
    p.add_argument("bag", type=Path, metavar="BAG")
    p.add_argument("--rate", "-r", type=positive_float, default=1.0, help="playback speed factor (default: %(default)s)")
    p.add_argument("--clock", action="store_true", help="publish /clock with the bag time")
    p.add_argument("--clock-hz", type=positive_float, default=40.0, help="/clock rate between messages (default: %(default)s)")
    p.add_argument("--loop", "-l", action="store_true", help="play again from the start when done")
    p.add_argument("--topics", nargs="+", metavar="TOPIC", help="play only these topics")
    wait = p.add_mutually_exclusive_group()
    wait.add_argument("--wait-for", nargs="+", default=None, metavar="TOPIC",
                      help="wait until each of these topics has a subscriber before playing (default: every "
                           "image topic played)")
    wait.add_argument("--no-wait", dest="wait_for", action="store_const", const=[],
                      help="play at once, without waiting for subscribers")
    p.add_argument("--wait-timeout", type=non_negative_float, default=60.0,
                   help="seconds to wait for subscribers (default: %(default)s)")
    p.add_argument("--delay", type=non_negative_float, default=0.0, help="seconds to wait before playing")
    p.add_argument("--qos", choices=("reliable", "recorded"), default="reliable",
                   help="publisher reliability: always reliable, or as recorded (default: %(default)s)")
    p.set_defaults(func=_run_play)


def _run_play(args) -> int:
    t0 = time.monotonic()
    try:
        n = play_bag(args.bag, rate=args.rate, clock=args.clock, clock_hz=args.clock_hz, loop=args.loop,
                     topics=args.topics, wait_for=args.wait_for, wait_timeout=args.wait_timeout,
                     qos_mode=args.qos, start_delay=args.delay, log=lambda m: print(m, file=sys.stderr))
    except BagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"published {n} messages in {time.monotonic() - t0:.1f} s")
    return EXIT_OK
