"""Frames between a subscription and the worker: the hand-over slot and the per-camera counters.

Ring 3 (ROS edge), but imports no ROS package, so the hand-over rules (newest frame wins, or a
lossless queue that pushes back) and the counters are unit-tested without DDS
(``test/test_frames.py``). The node owns one :class:`FrameSlot` and one :class:`Counters` per camera.
"""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Any


class FrameSlot:
    """Hand-over between one camera's subscription callback and the worker.

    Newest-frame mode (``lossless=False``, capacity 1): only the newest frame is kept; an
    overwritten frame counts as dropped, so latency never grows. Lossless mode
    (``process_all_frames``): a FIFO of up to ``capacity`` frames that never drops; when it is full,
    ``put`` waits for the worker, which stops the executor from taking more samples out of DDS, so a
    reliable publisher is held back by the reliability protocol instead of frames being thrown away
    (back-pressure; memory stays bounded by the queue plus the DDS histories). All cameras' slots
    share one condition so the worker wakes on any camera's frame.
    """

    def __init__(self, capacity: int = 1, cv: threading.Condition | None = None, lossless: bool = False) -> None:
        self._items: collections.deque = collections.deque()
        self._capacity = max(1, capacity)
        self._cv = cv or threading.Condition()
        self._lossless = lossless
        self._closed = False
        self.dropped = 0
        #: how often a lossless put had to wait for room (back-pressure applied), for diagnostics
        self.waits = 0

    def put(self, item: Any) -> None:
        with self._cv:
            if self._lossless:
                if len(self._items) >= self._capacity:
                    self.waits += 1
                while len(self._items) >= self._capacity and not self._closed:
                    self._cv.wait(0.1)
                if self._closed:
                    return
            elif len(self._items) >= self._capacity:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self._cv.notify_all()

    def take(self) -> Any | None:
        """The oldest pending item (the only one with capacity 1), or None. Caller holds no lock."""
        with self._cv:
            item = self._items.popleft() if self._items else None
            if item is not None and self._lossless:
                self._cv.notify_all()  # a put may be waiting for room
            return item

    def open(self) -> None:
        with self._cv:
            self._closed = False

    def close(self) -> None:
        """Release a put that waits for room (deactivation, shutdown) and forget pending frames."""
        with self._cv:
            self._closed = True
            self._items.clear()
            self._cv.notify_all()

    def clear(self) -> None:
        with self._cv:
            self._items.clear()
            self._cv.notify_all()

    @property
    def pending(self) -> int:
        return len(self._items)


@dataclass
class Counters:
    """What happened to one camera's frames (FrameStats and /diagnostics report these)."""

    received: int = 0
    processed: int = 0
    dropped_stale: int = 0
    rejected: int = 0
    skipped_no_subscribers: int = 0
    lost_in_dds: int = 0  # samples DDS reports as never delivered (message_lost event)
    latency_ms: collections.deque = field(default_factory=lambda: collections.deque(maxlen=200))
    done_times: collections.deque = field(default_factory=lambda: collections.deque(maxlen=200))
    in_times: collections.deque = field(default_factory=lambda: collections.deque(maxlen=200))

    def totals(self) -> Totals:
        """The counts now, to compare with the next report's (what grew in between)."""
        return Totals(self.received, self.processed, self.rejected, self.dropped_stale, self.lost_in_dds)


@dataclass(frozen=True)
class Totals:
    """A camera's counts at one moment; the difference of two says what happened in between."""

    received: int = 0
    processed: int = 0
    rejected: int = 0
    dropped_stale: int = 0
    lost_in_dds: int = 0

    def since(self, earlier: Totals) -> Totals:
        return Totals(*(a - b for a, b in zip(vars(self).values(), vars(earlier).values(), strict=True)))


def rate(times: collections.deque) -> float:
    """Events per second over the recorded times; 0 when fewer than two, or none for 5 s."""
    if len(times) < 2 or times[-1] <= times[0]:
        return 0.0
    if time.monotonic() - times[-1] > 5.0:
        return 0.0
    return (len(times) - 1) / (times[-1] - times[0])
