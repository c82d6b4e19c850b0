"""The node's frame hand-over, counters and /diagnostics wording, without DDS."""
from __future__ import annotations

import collections
import threading
import time

from liteseg_ros import diagnostics
from liteseg_ros.frames import Counters, FrameSlot, rate


def test_newest_frame_slot_keeps_only_the_newest_and_counts_the_rest():
    slot = FrameSlot(capacity=1)
    for i in range(5):
        slot.put(i)
    assert slot.pending == 1 and slot.dropped == 4
    assert slot.take() == 4 and slot.take() is None


def test_lossless_slot_waits_for_room_and_loses_nothing():
    slot = FrameSlot(capacity=2, lossless=True)
    got: list[int] = []
    producer = threading.Thread(target=lambda: [slot.put(i) for i in range(20)])
    producer.start()
    while len(got) < 20:
        item = slot.take()
        if item is None:
            time.sleep(0.001)
            continue
        assert slot.pending <= 2  # bounded: the producer waited instead of growing the queue
        got.append(item)
    producer.join(5)
    assert got == list(range(20)) and slot.dropped == 0 and slot.waits > 0


def test_closing_a_lossless_slot_releases_a_waiting_put():
    slot = FrameSlot(capacity=1, lossless=True)
    slot.put("a")
    t = threading.Thread(target=slot.put, args=("b",))
    t.start()
    time.sleep(0.2)
    assert t.is_alive()  # waiting for room
    slot.close()
    t.join(2)
    assert not t.is_alive() and slot.pending == 0
    slot.open()
    slot.put("c")
    assert slot.take() == "c"


def test_rate_is_zero_without_recent_events():
    now = time.monotonic()
    assert rate(collections.deque([now - 1.0, now - 0.5, now])) == 2.0  # two intervals in one second
    assert rate(collections.deque([now])) == 0.0
    assert rate(collections.deque([now - 10.0, now - 9.0])) == 0.0  # quiet for > 5 s


class _Info:
    backend, device, precision, reason = "onnxruntime", "cpu", "fp32", "fastest measured CPU path"


class _Source:
    name, license = "tiny-random", "CC0"


def _cam(c: Counters, topic: str = "/camera/image_raw") -> diagnostics.CameraView:
    return diagnostics.CameraView(name="front", input_topic=topic, counters=c, dropped=3, queue_waits=2)


def test_status_says_what_to_check_first():
    now = time.monotonic()
    st = diagnostics.camera_status("liteseg", "unconfigured", None)
    assert st.level == diagnostics.WARN and st.message == "node is unconfigured" and st.name == "liteseg: segmentation"
    c = Counters()
    st = diagnostics.camera_status("liteseg", "active", _cam(c), _Info(), _Source(), now)
    assert st.level == diagnostics.WARN and "ros2 topic info -v /camera/image_raw" in st.message
    assert st.name == "liteseg: segmentation front" and st.hardware_id == "cpu"
    c.received, c.in_times = 4, collections.deque([now - 9.0])
    assert "stale" in diagnostics.camera_status("liteseg", "active", _cam(c), _Info(), _Source(), now).message
    c.in_times, c.rejected = collections.deque([now - 0.1]), 4
    st = diagnostics.camera_status("liteseg", "active", _cam(c), _Info(), _Source(), now)
    assert st.level == diagnostics.ERROR and "rejected" in st.message


def test_status_values_carry_counters_rates_and_latency():
    now = time.monotonic()
    c = Counters(received=10, processed=9, rejected=1)
    c.in_times.extend([now - 0.9 + 0.1 * i for i in range(10)])
    c.done_times.extend([now - 0.8 + 0.1 * i for i in range(9)])
    c.latency_ms.extend(float(v) for v in range(1, 101))
    st = diagnostics.camera_status("liteseg", "active", _cam(c), _Info(), _Source(), now)
    assert st.level == diagnostics.OK and st.message.endswith(" Hz")
    v = st.values
    assert v["received"] == "10" and v["processed"] == "9" and v["dropped"] == "3" and v["queue_waits"] == "2"
    assert v["backend"] == "onnxruntime" and v["model"] == "tiny-random" and v["license"] == "CC0"
    assert v["latency_ms_p50"] == "51.0" and v["latency_ms_p95"] == "96.0"
    assert float(v["input_rate_hz"]) > 9.0 and all(isinstance(x, str) for x in v.values())


def test_status_warns_when_everything_since_the_last_report_went_wrong():
    """What grew since the previous report decides: frames lost in DDS, every new frame rejected or too
    old. Without a previous report (or with healthy growth) the same counters are OK."""
    now = time.monotonic()
    c = Counters(received=10, processed=10)
    c.in_times.extend([now - 0.9 + 0.1 * i for i in range(10)])
    c.done_times.extend([now - 0.9 + 0.1 * i for i in range(10)])

    def status(previous):
        view = diagnostics.CameraView("front", "/cam/image_raw", c, 0, 0, previous)
        return diagnostics.camera_status("liteseg", "active", view, _Info(), _Source(), now)

    assert status(None).level == diagnostics.OK
    before = c.totals()
    c.received, c.processed, c.lost_in_dds = 13, 13, 40
    st = status(before)
    assert st.level == diagnostics.WARN and "40 frame(s) on /cam/image_raw lost inside DDS" in st.message
    assert "fastdds_large_shm.xml" in st.message and "FASTRTPS_DEFAULT_PROFILES_FILE" in st.message
    assert status(c.totals()).level == diagnostics.OK  # no new loss since: OK again
    before = c.totals()
    c.received, c.rejected = 18, 5
    st = status(before)
    assert st.level == diagnostics.WARN and "every frame since the last report was rejected (5" in st.message
    before = c.totals()
    c.received, c.dropped_stale = 22, 4
    st = status(before)
    assert st.level == diagnostics.WARN and "older than max_input_age" in st.message
    before = c.totals()
    c.received, c.processed, c.rejected = 30, 20, 6  # some rejected, some processed: working
    assert status(before).level == diagnostics.OK
