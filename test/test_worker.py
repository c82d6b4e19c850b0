"""The node's worker without DDS: batching, per-frame rejection, the engine swap, publish order.

The worker gets real serialized sensor_msgs/Image bytes (``wire.image_bytes``, the node's own reader
``wire.parse_image``) and a real pipeline built from the tiny checkpoint; only what needs a live
ROS graph (the node's clock, its publishers) is handed in as plain functions that record.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from liteseg_ros import contract, params, wire
from liteseg_ros.frames import FrameSlot
from liteseg_ros.worker import Camera, Hooks, Worker

NET = {"network_width": 96, "network_height": 64, "num_threads": 1}


@pytest.fixture(scope="module")
def values(tiny_checkpoint, tmp_path_factory):
    return params.validate({"weights": str(tiny_checkpoint), **NET,
                            "engine_cache_dir": str(tmp_path_factory.mktemp("engines"))})


@pytest.fixture(scope="module")
def pipeline(values):
    from liteseg_ros.runtime import build_pipeline

    pipe, _ = build_pipeline(params.pipeline_settings(values), log=lambda m: None, max_batch=2)
    return pipe


class Log:
    """Records the error lines the worker logs."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def error(self, msg: str) -> None:
        self.lines.append(msg)


class Recorder:
    """The node's side of the worker: deserialise as the node does; sends are recorded in order."""

    def __init__(self, fail_on: set[int] | None = None, age_ms: float = 0.0) -> None:
        self.sent: list[tuple[str, int, tuple[int, int]]] = []
        self.stats: list[tuple[str, int]] = []
        self.engine_changes = 0
        self.fail_on = fail_on or set()
        self.age = age_ms
        self.done = threading.Event()

    def hooks(self) -> Hooks:
        return Hooks(deserialise=wire.parse_image, age_ms=lambda msg: self.age,
                     wants=lambda cam: contract.wants({**VALUES, "publish_color": False}, [], False),
                     send=self.send, send_stats=lambda job, seg, d, p: self.stats.append(
                         (job.camera.name, job.msg.header.stamp.sec)),
                     engine_changed=self.changed)

    def send(self, job, seg) -> None:
        if job.msg.header.stamp.sec in self.fail_on:
            raise RuntimeError(f"publisher gone for frame {job.msg.header.stamp.sec}")
        self.sent.append((job.camera.name, job.msg.header.stamp.sec, seg.label.shape))

    def changed(self) -> None:
        self.engine_changes += 1


VALUES = params.validate({})


def frame(sec: int, h: int = 48, w: int = 64, encoding: str = "bgr8") -> bytes:
    from std_msgs.msg import Header

    header = Header(frame_id="cam")
    header.stamp.sec = sec
    channels = 1 if encoding == "mono8" else 3
    return wire.image_bytes(np.full((h, w, channels) if channels > 1 else (h, w), sec % 255, np.uint8),
                            encoding, header)


def make(values, pipeline, rec: Recorder, names=("a", "b"), lossless=False, **changes):
    cv = threading.Condition()
    cams = [Camera(n, FrameSlot(8 if lossless else 1, cv, lossless)) for n in names]
    vals = {**values, **changes}
    log = Log()
    return Worker(cams, cv, lambda: vals, pipeline, rec.hooks(), log.error), cams, log


def test_batch_cameras_takes_one_frame_per_camera_and_round_robin_takes_turns(values, pipeline):
    rec = Recorder()
    w, (a, b), _ = make(values, pipeline, rec, batch_cameras=True, batch_window_ms=0)
    a.on_image(frame(1))
    a.on_image(frame(2))  # newest-frame slot: frame 1 is dropped
    b.on_image(frame(3))
    batch = w.next_batch()
    assert [(c.name, wire.parse_image(raw).header.stamp.sec) for c, raw in batch] == [("a", 2), ("b", 3)]
    assert a.slot.dropped == 1 and w.next_batch() == []

    w, (a, b), _ = make(values, pipeline, rec, batch_cameras=False)
    turns = []
    for sec in range(4):
        a.on_image(frame(sec))
        b.on_image(frame(100 + sec))
        turns.append([c.name for c, _ in w.next_batch()])
    # one frame per batch, and the camera served first last time goes last: nobody starves
    assert all(len(t) == 1 for t in turns) and turns[0] != turns[1] and turns[1] != turns[2]


def test_a_bad_frame_is_rejected_alone_and_the_rest_of_the_batch_is_segmented(values, pipeline):
    rec = Recorder()
    w, (a, b), log = make(values, pipeline, rec, batch_cameras=True)
    done = w.process([(a, b"not a serialized image"), (b, frame(7))])
    assert done is not None
    jobs, segs, _ = done
    assert [j.camera.name for j in jobs] == ["b"] and len(segs) == 1 and segs[0].label.shape == (48, 64)
    assert a.counters.rejected == 1 and b.counters.rejected == 0
    assert any("rejected frame" in line and "cannot deserialize" in line for line in log.lines)

    unsupported = frame(8, encoding="mono8")[:-10]  # a truncated buffer: its pixel count does not match
    assert w.process([(a, unsupported)]) is None and a.counters.rejected == 2


def test_stale_and_unwanted_frames_are_counted_not_segmented(values, pipeline):
    rec = Recorder(age_ms=5000.0)
    w, (a,), _ = make(values, pipeline, rec, names=("a",), max_input_age=1.0)
    assert w.process([(a, frame(1))]) is None and a.counters.dropped_stale == 1

    nobody = Recorder()
    w, (a,), _ = make(values, pipeline, nobody, names=("a",))
    w.hooks.wants = lambda cam: contract.wants({**VALUES, **{k: False for k in VALUES if k.startswith("publish_")}},
                                               [], False)
    assert w.process([(a, frame(1))]) is None and a.counters.skipped_no_subscribers == 1


class SwapOnce:
    """The background int8 interface (apply between batches, offer received frames), recording calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def apply(self, pipeline) -> bool:
        self.calls.append("apply")
        return self.calls.count("apply") == 2  # the engine is ready before the second batch

    def offer(self, images) -> None:
        self.calls.append(f"offer {len(images)}")


def test_the_engine_swaps_between_batches_and_info_is_republished(values, pipeline):
    rec = Recorder()
    w, (a, b), _ = make(values, pipeline, rec, batch_cameras=True)
    w.int8 = SwapOnce()
    w.process([(a, frame(1)), (b, frame(2))])
    assert rec.engine_changes == 0
    w.process([(a, frame(3)), (b, b"garbage")])
    assert rec.engine_changes == 1
    # the swap is tried before every batch's forward; only frames that decoded are offered
    assert w.int8.calls == ["apply", "offer 2", "apply", "offer 1"]


def test_the_threads_publish_every_frame_in_order_and_a_failed_send_loses_only_its_frame(values, pipeline):
    rec = Recorder(fail_on={3})
    w, (a,), log = make(values, pipeline, rec, names=("a",), lossless=True, process_all_frames=True)
    a.pubs["stats"] = object()  # an output that exists ...
    a.on_matched("stats", 1)  # ... and has a subscriber, as the publisher's matched event says
    w.start()
    try:
        for sec in range(1, 7):
            a.on_image(frame(sec))
        deadline = time.monotonic() + 60
        while a.counters.processed + a.counters.rejected < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        w.stop()
    assert [s for _, s, _ in rec.sent] == [1, 2, 4, 5, 6]  # arrival order, frame 3's send failed alone
    assert a.counters.processed == 5 and a.counters.rejected == 1
    assert [s for _, s in rec.stats] == [1, 2, 4, 5, 6] and len(a.counters.latency_ms) == 5
    assert any("publishing failed" in line and "frame 3" in line for line in log.lines)
    assert not w._thread and a.slot.pending == 0


def test_demand_follows_matched_events_and_is_counted_without_them():
    cam = Camera("", FrameSlot(1))
    assert not cam.listening("label")  # no publisher: never computed

    class Counted:
        def get_subscription_count(self) -> int:
            return 2

    cam.pubs["label"] = cam.pubs["color"] = Counted()
    cam.matched["label"] = 0  # the node created "label" with a matched event; "color" without
    assert not cam.listening("label") and cam.listening("color")
    cam.on_matched("label", 1)
    assert cam.listening("label")
    cam.on_matched("label", 0)
    assert not cam.listening("label")


def test_an_invalid_stamp_or_a_failing_hook_rejects_that_frame_only(values, pipeline):
    rec = Recorder()
    w, (a, b), log = make(values, pipeline, rec, batch_cameras=True, error_log_period=0.0)  # every line logged
    bad = wire.parse_image(frame(1))
    bad.header.stamp.nanosec = 2_000_000_000  # rclpy's Time refuses it
    w.hooks.deserialise = lambda raw: bad if raw == b"bad stamp" else wire.parse_image(raw)
    jobs, _, _ = w.process([(a, b"bad stamp"), (b, frame(2))])
    assert [j.camera.name for j in jobs] == ["b"] and a.counters.rejected == 1
    assert any("header.stamp 1 s 2000000000 ns is not a valid time" in line for line in log.lines)

    def age(msg):  # a hook that raises for one camera's frame: only that frame is lost
        if msg.header.stamp.sec == 3:
            raise OverflowError("stamp out of range")
        return 0.0

    w.hooks.age_ms = age
    jobs, _, _ = w.process([(a, frame(3)), (b, frame(4))])
    assert [j.camera.name for j in jobs] == ["b"] and a.counters.rejected == 2 and b.counters.rejected == 0
    assert any("OverflowError: stamp out of range" in line for line in log.lines)


def test_rejections_are_throttled_per_camera_and_counted(values, pipeline):
    """One camera sending bad frames in a stream logs one line per error_log_period; another camera's first
    bad frame is still said; the next line of the first camera counts what was held back."""
    rec = Recorder()
    period = {"error_log_period": 3600.0}
    w, (a, b), log = make(values, pipeline, rec, batch_cameras=True)
    w._values = lambda: {**values, **period}  # the node's live values, as a parameter change swaps them
    for _ in range(5):
        w.reject(a, "bad")
    w.reject(b, "bad")
    assert [line.split(":")[0] for line in log.lines] == [f"rejected frame on {a.input_topic}",
                                                          f"rejected frame on {b.input_topic}"]
    period["error_log_period"] = 0.0
    w.reject(a, "bad")
    assert "(and 4 more like it in the " in log.lines[-1] and a.counters.rejected == 6
