"""The fast send path (liteseg_ros.fast_send): gated by rclpy release and environment, self-checked over
real DDS, and exactly rclpy's ``publish`` wherever it is off. ``test_wire.py`` checks the messages it sends."""
from __future__ import annotations

import importlib.metadata
import time

import numpy as np
import pytest
from rclpy.qos import QoSProfile, QoSReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from liteseg_ros import fast_send, image_codec, wire

QOS = QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE)


@pytest.fixture
def fresh_decision():
    """The process-wide decision made again before and after the test (it reads the environment)."""
    fast_send.reset()
    yield
    fast_send.reset()


def test_the_version_gate_admits_only_checked_rclpy_releases():
    installed = importlib.metadata.version("rclpy")
    assert fast_send.rclpy_version() == installed
    assert fast_send.gate(environ={}) == ("ok" if installed.startswith(fast_send.CHECKED_RCLPY) else
                                          fast_send.gate(environ={}, version=installed))
    assert fast_send.gate(environ={}, version="7.1.5") == "ok"
    for other in ("8.0.0", "7.10.1", "4.1.4", ""):
        why = fast_send.gate(environ={}, version=other)
        assert why.startswith("off: rclpy") and "not a release the fast path was checked on (7.1.x)" in why, other


def test_the_environment_switch_turns_it_off():
    for value in ("0", "false", "OFF", "no"):
        assert fast_send.gate(environ={fast_send.ENV: value}, version="7.1.5") == f"off: {fast_send.ENV}={value}"
    for value in ("1", "", "yes"):
        assert fast_send.gate(environ={fast_send.ENV: value}, version="7.1.5") == "ok"


def test_the_self_check_passes_with_rcl_and_catches_a_binding_that_does_not_send():
    fn = fast_send._find_function()
    assert fn is not None, "rcl_publish_serialized_message not found in the librcl rclpy loaded"
    assert fast_send.self_check(fn) == "ok"
    # an ABI mismatch can look like success and send nothing, or fail: either way the path stays off
    assert "did not come back" in fast_send.self_check(lambda handle, msg, alloc: 0, timeout=1.0)
    assert "returned 1" in fast_send.self_check(lambda handle, msg, alloc: 1, timeout=2.0)


def _frames(n: int = 3):
    rng = np.random.default_rng(7)
    return [(rng.integers(0, 256, (30 + k, 40, 3), dtype=np.uint8), "rgb8", f"cam{k}") for k in range(n)]


def _header(frame_id: str) -> Header:
    h = Header(frame_id=frame_id)
    h.stamp.sec, h.stamp.nanosec = 17, 42
    return h


@pytest.mark.parametrize("switch", ["1", "0"])
def test_send_image_is_the_same_message_with_the_path_on_or_off(ros, monkeypatch, fresh_decision, switch):
    """With ``LITESEG_FAST_SEND=0`` every image goes through rclpy's ``publish(bytes)`` (no send buffer
    is made); with it on, through rcl directly; the subscriber gets the same messages either way."""
    monkeypatch.setenv(fast_send.ENV, switch)
    got = ros.collect(Image, f"/fast_send_{switch}", QOS)
    pub = ros.node.create_publisher(Image, f"/fast_send_{switch}", QOS)
    ros.wait_for(lambda: pub.get_subscription_count() > 0, 10, "subscriber")
    frames = _frames()
    for arr, enc, fid in frames:
        wire.send_image(pub, arr, enc, _header(fid))
    fast_send.send(pub, wire.image_bytes(*frames[0][:2], _header("again")))
    ros.wait_for(lambda: len(got) == len(frames) + 1, 20, "messages")
    time.sleep(0.05)
    for m, (arr, enc, fid) in zip(got, frames, strict=False):
        assert m == image_codec.fill_image(Image(), arr, enc, header=_header(fid))
    assert got[-1].header.frame_id == "again"
    assert (fast_send.status() == "ok") == (switch == "1"), fast_send.status()
    assert (pub in fast_send._outboxes) == (switch == "1")


def test_a_lifecycle_publisher_sends_only_while_active(ros, fresh_decision):
    """The fast path honours lifecycle gating: an inactive lifecycle publisher's messages are dropped,
    as its own ``publish`` drops them."""
    from rclpy.lifecycle import LifecycleNode

    assert fast_send.status() == "ok"
    node = LifecycleNode("fast_send_lifecycle", context=ros.context)
    try:
        got = ros.collect(Image, "/fast_send_lifecycle", QOS)
        pub = node.create_lifecycle_publisher(Image, "/fast_send_lifecycle", QOS)
        ros.wait_for(lambda: pub.get_subscription_count() > 0, 10, "subscriber")
        arr, enc, _ = _frames(1)[0]
        node.trigger_configure()
        wire.send_image(pub, arr, enc, _header("inactive"))
        node.trigger_activate()
        wire.send_image(pub, arr, enc, _header("active"))
        fast_send.send(pub, wire.image_bytes(arr, enc, _header("active bytes")))
        node.trigger_deactivate()
        wire.send_image(pub, arr, enc, _header("deactivated"))
        ros.wait_for(lambda: len(got) >= 2, 20, "messages")
        time.sleep(0.3)
        assert [m.header.frame_id for m in got] == ["active", "active bytes"]
    finally:
        node.destroy_node()
