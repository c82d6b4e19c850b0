"""What ``/diagnostics`` says about each camera: a pure function of the node's state and counters.

Ring 3 (ROS edge), but imports no ROS package: :func:`camera_status` returns a plain
:class:`Status` that the node turns into a ``diagnostic_msgs/DiagnosticStatus``, so every message a
user can see in ``rqt_robot_monitor`` is unit-tested without starting a node (``test/test_frames.py``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from liteseg_ros.frames import Counters, Totals, rate

OK, WARN, ERROR = 0, 1, 2  # diagnostic_msgs/DiagnosticStatus levels
#: No frame for this long and a camera that was publishing is reported stale.
STALE_S = 5.0
#: What fixes frames lost inside DDS (README "Quick start" says the same).
DDS_FIX = ("FASTRTPS_DEFAULT_PROFILES_FILE, or FASTDDS_DEFAULT_PROFILES_FILE on Kilted and later, = "
           "$(ros2 pkg prefix liteseg_ros)/share/liteseg_ros/config/fastdds_large_shm.xml")


@dataclass(frozen=True)
class Status:
    """One DiagnosticStatus, ROS-free."""

    level: int
    name: str
    message: str
    hardware_id: str = ""
    values: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CameraView:
    """What the status needs of one camera (the node's Camera, or none before configure)."""

    name: str
    input_topic: str
    counters: Counters
    dropped: int
    queue_waits: int
    #: the counts at the previous report, to see what grew since (None at the first report)
    previous: Totals | None = None


def _percentile(sorted_ms: list[float], q: float) -> str:
    return f"{sorted_ms[min(len(sorted_ms) - 1, int(len(sorted_ms) * q))]:.1f}" if sorted_ms else ""


def camera_status(node_name: str, state: str, cam: CameraView | None, info: Any = None,
                  source: Any = None, now: float | None = None) -> Status:
    """The status of one camera (``cam=None``: the node while it has no cameras, e.g. unconfigured).

    Level and message answer "is it working, and if not, what do I check first": not active yet,
    nothing received on the (resolved) input topic, the camera went quiet, every frame rejected
    (so far, or since the previous report), every frame too old, frames lost inside DDS since the
    previous report; else OK with the output rate. The values carry the counters, rates, latency percentiles and
    which engine runs, for tools that plot them.
    """
    now = time.monotonic() if now is None else now
    c = cam.counters if cam else Counters()
    topic = cam.input_topic if cam else ""
    label = f"{node_name}: segmentation" + (f" {cam.name}" if cam and cam.name else "")
    in_rate, out_rate = rate(c.in_times), rate(c.done_times)
    grew = c.totals().since(cam.previous) if cam is not None and cam.previous is not None else None
    if state != "active":
        level, message = WARN, f"node is {state}"
    elif not c.received:
        level, message = WARN, (f"no frame received on {topic} yet: is a camera publishing there (check the "
                                f"remap and `ros2 topic info -v {topic}`)?")
    elif now - c.in_times[-1] > STALE_S:
        level, message = WARN, f"no frames on {topic} for > {STALE_S:.0f} s (stale)"
    elif c.rejected and c.processed == 0:
        level, message = ERROR, "every frame so far was rejected (see log)"
    elif grew is not None and grew.received and not grew.processed and grew.rejected:
        level, message = WARN, f"every frame since the last report was rejected ({grew.rejected}; see log)"
    elif grew is not None and grew.received and not grew.processed and grew.dropped_stale:
        level, message = WARN, (f"every frame since the last report was older than max_input_age "
                                f"({grew.dropped_stale} dropped): check the camera's clock and use_sim_time")
    elif grew is not None and grew.lost_in_dds:
        level, message = WARN, (f"{grew.lost_in_dds} frame(s) on {topic} lost inside DDS since the last report, "
                                f"before reaching the node ({c.lost_in_dds} in all): start the camera's process "
                                f"with the shipped Fast DDS profile too ({DDS_FIX})")
    else:
        level, message = OK, f"{out_rate:.1f} Hz"
    lat = sorted(c.latency_ms)
    values = {
        "state": state, "camera": cam.name if cam else "", "input_topic": topic,
        "backend": info.backend if info else "", "device": info.device if info else "",
        "precision": info.precision if info else "", "backend_reason": info.reason if info else "",
        "model": source.name if source else "", "received": c.received,
        "license": source.license if source else "",
        "processed": c.processed, "dropped": cam.dropped if cam else 0, "rejected": c.rejected,
        "skipped_no_subscribers": c.skipped_no_subscribers, "lost_in_dds": c.lost_in_dds,
        "queue_waits": cam.queue_waits if cam else 0,
        "input_rate_hz": f"{in_rate:.2f}", "output_rate_hz": f"{out_rate:.2f}",
        "latency_ms_p50": _percentile(lat, 0.5), "latency_ms_p95": _percentile(lat, 0.95),
    }
    return Status(level=level, name=label, message=message, hardware_id=info.device if info else "",
                  values={k: str(v) for k, v in values.items()})
