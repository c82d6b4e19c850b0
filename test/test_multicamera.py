"""Several cameras, one node process, one engine, batched forwards (real DDS, real node process)."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from rclpy.qos import QoSProfile, QoSReliabilityPolicy
from sensor_msgs.msg import Image

from liteseg_ros import image_codec
from liteseg_ros.msg import FrameStats

pytestmark = pytest.mark.ros

BEST_EFFORT = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.BEST_EFFORT)
CAMS = {"front": (120, 160), "left": (90, 200), "right": (64, 64)}


def msg_for(h: int, w: int, sec: int, frame_id: str, encoding: str = "bgr8") -> Image:
    m = Image()
    img = np.random.default_rng(sec).integers(0, 255, (h, w, 3), np.uint8)
    image_codec.fill_image(m, img, encoding)
    m.header.stamp.sec = sec
    m.header.frame_id = frame_id
    return m


@pytest.fixture
def three_cameras(start_node, ros, tiny_checkpoint):
    node = start_node({"weights": str(tiny_checkpoint), "network_width": 96, "network_height": 64,
                       "cameras": list(CAMS), "batch_window_ms": 20.0,
                       "mask_groups": {"drivable": ["road"]}})
    got = {c: {"label": ros.collect(Image, f"/liteseg/{c}/label"),
               "masks": ros.collect(Image, f"/liteseg/{c}/masks/drivable"),
               "stats": ros.collect(FrameStats, f"/liteseg/{c}/stats")} for c in CAMS}
    pubs = {c: ros.node.create_publisher(Image, f"/{c}/image", BEST_EFFORT) for c in CAMS}
    for c, p in pubs.items():
        ros.wait_for(lambda p=p: p.get_subscription_count() > 0 or not node.alive(), 90, f"{c} subscription")
        assert node.alive(), node.output()
    time.sleep(0.5)
    # One warm-up frame per camera, and wait for its label: the first forward of a fresh engine can
    # take seconds on a busy machine, and frames sent meanwhile would replace each other (by design).
    # Re-sent only every 5 s (best effort may lose one), so no warm-up frame is ever dropped by the node.
    for c, (h, w) in CAMS.items():
        for _ in range(18):
            pubs[c].publish(msg_for(h, w, 1, f"{c}_optical"))
            try:
                ros.wait_for(lambda c=c: 1 in stamps(got[c]["label"]), 5, f"{c} warm-up frame")
                break
            except AssertionError:
                continue
        assert 1 in stamps(got[c]["label"]), f"{c}: no label for the warm-up frame in 90 s\n{node.output()}"
    for c in CAMS:
        for msgs in got[c].values():
            msgs.clear()
    return node, got, pubs


def stamps(msgs) -> set[int]:
    return {m.header.stamp.sec for m in msgs}


def test_each_camera_gets_its_own_outputs(three_cameras, ros):
    node, got, pubs = three_cameras
    for k in range(3):
        for i, (c, (h, w)) in enumerate(CAMS.items()):
            pubs[c].publish(msg_for(h, w, 1000 + 10 * k + i, f"{c}_optical"))
        time.sleep(0.6)
    for i, (c, (h, w)) in enumerate(CAMS.items()):
        want = {1000 + 10 * k + i for k in range(3)}
        ros.wait_for(lambda c=c, want=want: want <= stamps(got[c]["label"]) and want <= stamps(got[c]["stats"]),
                     60, f"{c} outputs")
        for m in got[c]["label"] + got[c]["masks"]:
            assert (m.height, m.width) == (h, w) and m.header.frame_id == f"{c}_optical"
            assert m.header.stamp.sec % 10 == i
        assert {s.camera for s in got[c]["stats"]} == {c}


def test_bad_frames_and_a_silent_camera_do_not_affect_the_others(three_cameras, ros):
    node, got, pubs = three_cameras
    for k in range(4):
        pubs["front"].publish(msg_for(*CAMS["front"], 2000 + k, "front"))
        bad = Image(height=90, width=200, encoding="bgr8", step=600, data=bytes(10))  # truncated
        bad.header.stamp.sec = 2100 + k
        pubs["left"].publish(bad)
        if k < 1:  # right goes silent after its first frame
            pubs["right"].publish(msg_for(*CAMS["right"], 2200 + k, "right"))
        time.sleep(0.5)
    ros.wait_for(lambda: {2000, 2001, 2002, 2003} <= stamps(got["front"]["label"]), 60, "front served")
    ros.wait_for(lambda: 2200 in stamps(got["right"]["label"]), 30, "right's one frame")
    assert not stamps(got["left"]["label"]) & {2100, 2101, 2102, 2103}
    assert got["front"]["stats"][-1].rejected == 0
    assert node.alive()
    pubs["left"].publish(msg_for(*CAMS["left"], 2150, "left"))
    ros.wait_for(lambda: 2150 in stamps(got["left"]["label"]), 30, "left recovers")
    ros.wait_for(lambda: got["left"]["stats"] and got["left"]["stats"][-1].header.stamp.sec == 2150, 10, "stats")
    assert got["left"]["stats"][-1].rejected == 4


def test_burst_on_one_camera_counts_its_drops_only(three_cameras, ros):
    node, got, pubs = three_cameras
    stop = threading.Event()

    def slow_camera():
        k = 0
        while not stop.is_set():
            pubs["right"].publish(msg_for(*CAMS["right"], 3500 + k, "right"))
            k += 1
            time.sleep(0.8)  # slower than any batch, even on a loaded machine: its drops would be starvation

    t = threading.Thread(target=slow_camera, daemon=True)
    t.start()
    try:
        for k in range(40):  # a burst far faster than the node can segment
            pubs["front"].publish(msg_for(*CAMS["front"], 3000 + k, "front"))
            time.sleep(0.005)
        ros.wait_for(lambda: 3039 in stamps(got["front"]["label"]), 60, "newest front frame")
        time.sleep(2.0)
    finally:
        stop.set()
        t.join()
    front = got["front"]["stats"][-1]
    right = got["right"]["stats"][-1]
    assert front.dropped > 0 and front.processed + front.dropped == front.received
    assert right.dropped == 0 and right.processed == right.received >= 2  # the slow camera is never starved



@pytest.mark.parametrize("stamp", [(-1, 0), (5, 1_500_000_000)], ids=["negative_sec", "nanosec_overflow"])
def test_a_bad_stamp_on_one_camera_is_rejected_for_that_camera_alone(start_node, ros, tiny_checkpoint, stamp):
    """Before: front frames with ``header.stamp.sec = -1`` failed every batch ("Seconds value must not be
    negative"), so rear got 0 of 40 labels."""
    cams = {"front": (64, 96), "rear": (64, 96)}
    node = start_node({"weights": str(tiny_checkpoint), "network_width": 96, "network_height": 64,
                       "cameras": list(cams), "batch_window_ms": 50.0, "batch_cameras": True})
    labels = {c: ros.collect(Image, f"/liteseg/{c}/label") for c in cams}
    stats = ros.collect(FrameStats, "/liteseg/front/stats")
    pubs = {c: ros.node.create_publisher(Image, f"/{c}/image", BEST_EFFORT) for c in cams}
    for c, p in pubs.items():
        ros.wait_for(lambda p=p: p.get_subscription_count() > 0 or not node.alive(), 90, f"{c} subscription")
        assert node.alive(), node.output()
    for _ in range(18):  # warm-up of the engine on rear alone (see three_cameras)
        pubs["rear"].publish(msg_for(*cams["rear"], 1, "rear"))
        try:
            ros.wait_for(lambda: 1 in stamps(labels["rear"]), 5, "rear warm-up")
            break
        except AssertionError:
            continue
    # Pairs of (bad front, good rear) frames until ten rear frames are labelled and at least 14 pairs went out:
    # both publishers are best effort, so on a loaded machine a frame can be lost in DDS without the node's
    # doing; what matters is that rear keeps being labelled (before the fix it got none).
    sent: set[int] = set()
    end = time.monotonic() + 60
    while time.monotonic() < end and (len(stamps(labels["rear"]) & sent) < 10 or len(sent) < 14):
        if len(sent) < 60:
            bad = msg_for(*cams["front"], 0, "front")
            bad.header.stamp.sec, bad.header.stamp.nanosec = stamp
            pubs["front"].publish(bad)
            pubs["rear"].publish(msg_for(*cams["rear"], 3000 + len(sent), "rear"))
            sent.add(3000 + len(sent))
        time.sleep(0.3)
    got = len(stamps(labels["rear"]) & sent)
    assert got >= 10, f"rear labelled {got} of {len(sent)} while front sends bad stamps\n{node.output()}"
    assert not labels["front"] and node.alive()
    pubs["front"].publish(msg_for(*cams["front"], 3500, "front"))
    ros.wait_for(lambda: 3500 in stamps(labels["front"]), 30, "front recovers")
    ros.wait_for(lambda: stats and stats[-1].rejected >= 10, 10, "front's rejected count")
    assert "not a valid time" in node.output()
