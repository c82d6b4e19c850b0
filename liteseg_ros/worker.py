"""The segmentation node's worker: cameras, batching, and the prepare -> process -> publish loop.

Ring 3 (ROS edge) but ROS-light: it imports no rclpy and no message package. What needs ROS is
handed in (:class:`Hooks`: turning serialized bytes into a message, a frame's age on the node's
clock, what each camera's subscribers want, sending a frame's outputs), so the batching rule,
per-frame rejection and the hand-over to the publisher thread are unit-tested without DDS
(test/test_worker.py), the way frames.py is.

Two threads: the worker takes a batch (one frame per camera, by the contract's BatchRule), decodes
and segments it, and hands it to the publisher thread through a hand-over of depth 1, so frame N's
messages are built and sent while frame N+1 is decoded and inferred (the forward releases the GIL).
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from liteseg_ros import contract, diagnostics, frames, image_codec
from liteseg_ros.frames import FrameSlot
from liteseg_ros.segmentation import Segmentation, Wants
from liteseg_ros.throttle import ThrottledLogs


class Camera:
    """One input camera: its topics, newest-frame slot, counters, output publishers and their demand.

    The single-camera node is one Camera named "" (topics ``image`` and ``~/label``); with
    ``cameras: [front, left]`` each is named (``front/image`` -> ``~/front/label``).
    Publishers are keyed by the contract's suffix (``label``, ``masks/drivable``, ``stats``).
    """

    def __init__(self, name: str, slot: FrameSlot) -> None:
        self.name = name
        self.slot = slot
        self.counters = frames.Counters()
        self.pubs: dict[str, Any] = {}
        #: subscribers per output as the publishers' "matched" events last said; an output missing
        #: here (an rclpy or rmw without the event) is counted when asked
        self.matched: dict[str, int] = {}
        self.sub = None
        self.info_sub = None
        self.camera_info: Any = None
        self.input_topic = ""
        self.reported: frames.Totals | None = None  # the counts at the last /diagnostics report

    def output(self, suffix: str) -> str:
        return f"{contract.camera_prefix('~', self.name)}/{suffix}"

    def input(self, suffix: str) -> str:
        return f"{self.name}/{suffix}" if self.name else suffix

    @property
    def dropped(self) -> int:
        return self.slot.dropped + self.counters.dropped_stale

    def on_image(self, raw: bytes) -> None:
        """Only hands the serialized frame over: no deserialization, no work, never blocks."""
        self.counters.received += 1
        self.counters.in_times.append(time.monotonic())
        self.slot.put(raw)

    def on_camera_info(self, msg: Any) -> None:
        self.camera_info = msg

    def on_matched(self, suffix: str, current_count: int) -> None:
        """A subscriber of output ``suffix`` came or went (the publisher's matched event)."""
        self.matched[suffix] = int(current_count)

    def recently_active(self, horizon_s: float = 1.0) -> bool:
        t = self.counters.in_times
        return bool(t) and time.monotonic() - t[-1] < horizon_s

    def listening(self, suffix: str) -> bool:
        """Whether output ``suffix`` exists and has a subscriber (no subscriber: not computed)."""
        pub = self.pubs.get(suffix)
        if pub is None:
            return False
        count = self.matched.get(suffix)
        return (count if count is not None else pub.get_subscription_count()) > 0

    def view(self) -> diagnostics.CameraView:
        return diagnostics.CameraView(self.name, self.input_topic, self.counters, self.dropped, self.slot.waits,
                                      self.reported)


@dataclass
class Job:
    """One frame on its way through the worker."""

    camera: Camera
    msg: Any
    image: Any
    wants: Wants
    stats_wanted: bool
    age_ms: float
    t_start: float
    t_decoded: float


@dataclass
class Hooks:
    """What the worker needs from ROS, handed in by the node (or by a test)."""

    #: serialized bytes -> a message with ``header`` (raises on bytes that are not one)
    deserialise: Callable[[bytes], Any]
    #: a message -> how old its stamp is on the node's clock, in ms
    age_ms: Callable[[Any], float]
    #: a camera -> the outputs its subscribers and the toggles want now
    wants: Callable[[Camera], Wants]
    #: publish one frame's outputs (every one carries ``job.msg.header`` unchanged)
    send: Callable[[Job, Segmentation], None]
    #: publish one frame's ~/stats: (job, seg, decode_ms, publish_ms)
    send_stats: Callable[[Job, Segmentation, float, float], None]
    #: the engine changed (the background int8 swap): republish ~/info
    engine_changed: Callable[[], None] = lambda: None


class Worker:
    """The worker and publisher threads of one activation (``start`` ... ``stop``)."""

    def __init__(self, cameras: list[Camera], cv: threading.Condition, values: Callable[[], dict[str, Any]],
                 pipeline: Any, hooks: Hooks, log_error: Callable[[str], None], int8: Any = None) -> None:
        self.cameras = cameras
        self._cv = cv
        self._values = values  # read per batch: live parameter changes swap the node's dict
        self.pipeline = pipeline
        self.hooks = hooks
        #: errors per kind and per camera, one line per error_log_period (read live) with a count of the rest;
        #: ``log_error`` writes one error line (the node's: node_guards.rcl_log(logger, "error"))
        self._errors = ThrottledLogs(log_error, self._throttle)
        self.int8 = int8  # background_int8: int8 from received frames, swapped in between batches
        self._rr = 0  # round-robin start for batch_cameras: false
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------- threads
    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._work, name="liteseg-worker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the threads (the publisher first sends what it holds) and forget pending frames."""
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
        self._thread = None
        for cam in self.cameras:
            cam.slot.clear()

    def _throttle(self) -> float:
        return float(self._values()["error_log_period"])

    def next_batch(self) -> list[tuple[Camera, bytes]]:
        """The newest pending frame of every camera that has one, by the contract's BatchRule.

        With several cameras, after the first frame arrives the worker waits up to batch_window_ms
        for the other recently active cameras, so their frames share one forward; a silent camera
        (no frame for 1 s) is not waited for. One frame per camera per batch: no camera starves another.
        """
        rule = contract.BatchRule.from_values(self._values())
        n = len(self.cameras)
        with self._cv:
            if not any(c.slot.pending for c in self.cameras):
                self._cv.wait(0.2)
            if not any(c.slot.pending for c in self.cameras):
                return []
            t_first = time.monotonic()
            if rule.waits(n):
                deadline = t_first + rule.window_s
                while not self._stop.is_set():
                    waiting = [c for c in self.cameras if not c.slot.pending and c.recently_active()]
                    left = deadline - time.monotonic()
                    if not waiting or left <= 0:
                        break
                    self._cv.wait(left)
        batch: list[tuple[Camera, bytes]] = []
        admitted: list[tuple[Camera, float]] = []
        for k in rule.order(n, self._rr):  # start after the camera served first last time: fair turns
            cam = self.cameras[k]
            if not cam.slot.pending or not rule.admits(admitted, cam, t_first, n):
                continue
            raw = cam.slot.take()
            if raw is not None:
                batch.append((cam, raw))
                admitted.append((cam, t_first))
                if not rule.batch_cameras:
                    self._rr = (k + 1) % n
        return batch

    def _work(self) -> None:
        """Worker thread: batches of frames; any exception is logged and the next batch served.

        At most one processed batch waits for the publisher, so memory stays bounded; stopping lets
        the publisher finish what it holds before the worker returns.
        """
        handoff: queue.Queue = queue.Queue(maxsize=1)
        publisher = threading.Thread(target=self._publish_loop, args=(handoff,), name="liteseg-publish",
                                     daemon=True)
        publisher.start()
        try:
            while not self._stop.is_set():
                batch = self.next_batch()
                if not batch:
                    continue
                try:
                    done = self.process(batch)
                except Exception as exc:  # never let one batch kill the worker
                    for cam, _ in batch:
                        cam.counters.rejected += 1
                    self._errors("batch", f"batch failed: {type(exc).__name__}: {exc}")
                    continue
                while done is not None and publisher.is_alive():
                    try:
                        handoff.put(done, timeout=0.2)
                        break
                    except queue.Full:
                        continue
        finally:
            while publisher.is_alive():  # the end marker, once the publisher has room for it
                try:
                    handoff.put(None, timeout=0.2)
                    break
                except queue.Full:
                    continue
            publisher.join(timeout=10.0)

    def _publish_loop(self, handoff: queue.Queue) -> None:
        """Publisher thread: sends every processed batch handed over, until it gets None."""
        while True:
            done = handoff.get()
            if done is None:
                return
            self.publish(*done)

    # ------------------------------------------------------------------------------- one batch
    def prepare(self, cam: Camera, raw: bytes) -> Job | None:
        """Deserialize, age-check and decode one frame; None when it is skipped, stale or rejected."""
        t0 = time.perf_counter()
        values = self._values()
        wants = self.hooks.wants(cam)
        stats_wanted = cam.listening("stats")
        if not wants.any() and not stats_wanted:
            cam.counters.skipped_no_subscribers += 1
            return None
        try:  # raw Images: the pixels stay in `raw` (a numpy view), only the fields before them are parsed
            msg = self.hooks.deserialise(raw)
        except Exception as exc:
            self.reject(cam, f"cannot deserialize: {exc}")
            return None
        stamp = msg.header.stamp
        if stamp.sec < 0 or not 0 <= stamp.nanosec < 1_000_000_000:  # rclpy refuses it; this frame alone goes
            self.reject(cam, f"header.stamp {stamp.sec} s {stamp.nanosec} ns is not a valid time")
            return None
        age_ms = self.hooks.age_ms(msg)
        max_age = float(values["max_input_age"])
        if max_age > 0.0 and age_ms > max_age * 1e3:
            cam.counters.dropped_stale += 1
            return None
        try:
            image = image_codec.decode_any(msg, want="bgr8", max_pixels=int(values["max_input_pixels"]))
        except image_codec.ImageDecodeError as exc:
            self.reject(cam, str(exc))
            return None
        return Job(cam, msg, image, wants, stats_wanted, age_ms, t0, time.perf_counter())

    def _prepare_one(self, cam: Camera, raw: bytes) -> Job | None:
        """:meth:`prepare` inside the frame's own try: whatever is wrong with one frame rejects that
        frame on its own camera, never the others in the batch."""
        try:
            return self.prepare(cam, raw)
        except Exception as exc:
            self.reject(cam, f"{type(exc).__name__}: {exc}")
            return None

    def process(self, batch: list[tuple[Camera, bytes]]) -> tuple[list[Job], list[Segmentation], float] | None:
        """Decode and segment a batch; what the publisher thread needs, or None when nothing is left."""
        jobs = [j for j in (self._prepare_one(cam, raw) for cam, raw in batch) if j is not None]
        if not jobs:
            return None
        if self.int8 is not None:  # between batches, on this thread: the only place the engine changes
            if self.int8.apply(self.pipeline):
                self.hooks.engine_changed()
            self.int8.offer([j.image for j in jobs])
        t1 = time.perf_counter()
        segs = self.pipeline.run([j.image for j in jobs], color_order="bgr", wants=[j.wants for j in jobs])
        return jobs, segs, t1

    def publish(self, jobs: list[Job], segs: list[Segmentation], t1: float) -> None:
        """Send a processed batch, frame by frame in batch order; a failed frame loses only itself."""
        for job, seg in zip(jobs, segs, strict=True):
            try:
                self._finish(job, seg, t1)
            except Exception as exc:  # a failed publish loses this frame, never the thread
                job.camera.counters.rejected += 1
                self._errors("publish", f"publishing failed: {type(exc).__name__}: {exc}")

    def _finish(self, job: Job, seg: Segmentation, t1: float) -> None:
        """Publish one frame's outputs and account for it (latency counts from before the forward)."""
        c = job.camera.counters
        t2 = time.perf_counter()
        self.hooks.send(job, seg)
        t3 = time.perf_counter()
        c.processed += 1
        c.done_times.append(time.monotonic())
        c.latency_ms.append(job.age_ms + (t3 - t1) * 1e3)
        if job.stats_wanted:
            self.hooks.send_stats(job, seg, (job.t_decoded - job.t_start) * 1e3, (t3 - t2) * 1e3)

    def reject(self, cam: Camera, why: str) -> None:
        cam.counters.rejected += 1
        self._errors(f"reject {cam.name}", f"rejected frame on {cam.input_topic}: {why}")
