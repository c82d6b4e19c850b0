"""Say it once per period, count the rest: the package's log throttle (pure, no ROS).

Ring 0. A stream of bad input (frames a camera keeps sending wrong, lifecycle requests a manager keeps
repeating) must not fill the log, yet the operator must still see that it goes on and how often.
rclpy's own throttle (``throttle_duration_sec``) is not used anywhere in the package, for two reasons:

- it ties the period to the call site and raises ``ValueError`` ("logging filters cannot be changed
  between calls") when the same line is logged with another period, which is what a live
  ``ros2 param set ... error_log_period`` does: the raise landed inside the frame worker and stopped
  it;
- it keeps the first line of each period and drops the rest without a trace.

:class:`ThrottledLog` reads its period at every call (a number, or a function such as "the node's
current ``error_log_period``"), and the first line after a quiet spell says how many were held back.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable


class ThrottledLog:
    """At most one line per period; the lines held back meanwhile are counted in the next one.

    ``period_s`` is a number or a function returning one, read at each call, so a live parameter
    change applies to the next line; 0 logs every line. Thread-safe: the worker's threads and the
    executor's callbacks may share one.
    """

    def __init__(self, log: Callable[[str], None], period_s: float | Callable[[], float] = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = log
        self._period = period_s
        self._clock = clock
        self._last: float | None = None
        self.held = 0
        self._lock = threading.Lock()

    @property
    def period_s(self) -> float:
        return float(self._period() if callable(self._period) else self._period)

    def __call__(self, message: str) -> None:
        now, period = self._clock(), self.period_s
        with self._lock:
            if self._last is not None and now - self._last < period:
                self.held += 1
                return
            held, since, self.held, self._last = self.held, self._last, 0, now
        self._log(message + (f" (and {held} more like it in the {now - since:.1f} s before)" if held else ""))


class ThrottledLogs:
    """One :class:`ThrottledLog` per key (a camera's topic, a kind of problem), made on first use.

    Per key, so one camera's stream of bad frames never hides another camera's first one. The keys
    come from configuration (topics, fixed kinds), so the table stays as small as the setup.
    """

    def __init__(self, log: Callable[[str], None], period_s: float | Callable[[], float] = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._args = (log, period_s, clock)
        self._logs: dict[str, ThrottledLog] = {}
        self._lock = threading.Lock()

    def __call__(self, key: str, message: str) -> None:
        with self._lock:
            log = self._logs.get(key)
            if log is None:
                log = self._logs[key] = ThrottledLog(*self._args)
        log(message)
