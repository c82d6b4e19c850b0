"""Serialized Image in and out (liteseg_ros.wire): byte for byte what rclpy itself sends and reads."""
from __future__ import annotations

import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from liteseg_ros import fast_send, image_codec, wire


def header(frame_id: str) -> Header:
    h = Header(frame_id=frame_id)
    h.stamp.sec, h.stamp.nanosec = 1_700_000_123, 987_654_321
    return h


ARRAYS = {
    "mono8": lambda rng, h, w: rng.integers(0, 256, (h, w), dtype=np.uint8),
    "rgb8": lambda rng, h, w: rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
    "bgr8": lambda rng, h, w: rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
    "bgra8": lambda rng, h, w: rng.integers(0, 256, (h, w, 4), dtype=np.uint8),
    "mono16": lambda rng, h, w: rng.integers(0, 65536, (h, w), dtype=np.uint16),
}


@pytest.mark.parametrize("encoding", list(ARRAYS))
@pytest.mark.parametrize("frame_id", ["", "c", "cam", "camera", "front_camera_optical_frame"])
@pytest.mark.parametrize("size", [(1, 1), (3, 5), (36, 64)])
def test_image_bytes_equal_rclpy_serialization(encoding, frame_id, size):
    arr = ARRAYS[encoding](np.random.default_rng(0), *size)
    msg = image_codec.fill_image(Image(), arr, encoding, header=header(frame_id))
    assert_same_wire(wire.image_bytes(arr, encoding, header(frame_id)), msg)


def assert_same_wire(ours: bytes, msg: Image) -> None:
    """Same length, same pixels at the end, same message: equal up to CDR's alignment padding bytes,
    which rclpy's serializer itself leaves uninitialised (two serializations of one message differ there)."""
    ref = serialize_message(msg)
    assert len(ours) == len(ref) and ours[:4] == ref[:4]
    assert ours[len(ours) - len(msg.data):] == bytes(msg.data)
    assert deserialize_message(ours, Image) == msg


def test_image_bytes_of_a_strided_array_and_a_mismatch():
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (10, 20, 3), dtype=np.uint8)
    view = base[:, ::2]  # not contiguous
    assert_same_wire(wire.image_bytes(view, "rgb8"), image_codec.fill_image(Image(), view, "rgb8"))
    with pytest.raises(ValueError, match="mono8"):
        wire.image_bytes(base, "mono8")


@pytest.mark.parametrize("encoding,channels", [("bgr8", 3), ("rgb8", 3), ("mono8", 1), ("yuv422", 2),
                                               ("bayer_rggb8", 1), ("mono16", 2), ("bgra8", 4)])
@pytest.mark.parametrize("frame_id", ["", "ab", "cam0", "camera_link"])
@pytest.mark.parametrize("pad", [0, 3])
def test_parse_image_equals_deserialize_message(encoding, channels, frame_id, pad):
    h, w = 5, 6
    msg = Image(header=header(frame_id), height=h, width=w, encoding=encoding, is_bigendian=0, step=w * channels + pad)
    msg.data = np.random.default_rng(2).integers(0, 256, msg.step * h, dtype=np.uint8).tobytes()
    raw = serialize_message(msg)
    got = wire.parse_image(raw)
    ref = deserialize_message(raw, Image)
    assert got.header == ref.header
    assert (got.height, got.width, got.encoding, got.is_bigendian, got.step) == \
        (ref.height, ref.width, ref.encoding, ref.is_bigendian, ref.step)
    assert got.data.tobytes() == bytes(ref.data)
    assert np.shares_memory(got.data, np.frombuffer(raw, np.uint8))  # a view: no pixel copy
    if encoding in ("bgr8", "rgb8", "mono8"):
        assert np.array_equal(image_codec.decode_image(got), image_codec.decode_image(ref))


def test_parse_image_of_broken_buffers_raises_like_deserialize_message():
    msg = image_codec.fill_image(Image(), np.zeros((4, 4, 3), np.uint8), "bgr8", header=header("cam"))
    raw = serialize_message(msg)
    for bad in (raw[:-5], raw[:10], b"", b"\x00\x01\x00\x00" + b"\xff" * 40):
        with pytest.raises(Exception) as ours:
            wire.parse_image(bad)
        with pytest.raises(Exception) as theirs:
            deserialize_message(bad, Image)
        assert type(ours.value) is type(theirs.value)


def test_published_bytes_arrive_as_the_message(ros):
    """publish(bytes) from wire.image_bytes reaches an ordinary subscriber as the same Image."""
    import time

    from rclpy.qos import QoSProfile, QoSReliabilityPolicy

    qos = QoSProfile(depth=5, reliability=QoSReliabilityPolicy.RELIABLE)
    got = ros.collect(Image, "/wire_test", qos)
    pub = ros.node.create_publisher(Image, "/wire_test", qos)
    ros.wait_for(lambda: pub.get_subscription_count() > 0, 10, "subscriber")
    arr = np.random.default_rng(3).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    pub.publish(wire.image_bytes(arr, "rgb8", header("cam")))
    ros.wait_for(lambda: got, 10, "message")
    time.sleep(0.05)
    m = got[0]
    assert m.header == header("cam") and m.encoding == "rgb8" and (m.height, m.width, m.step) == (7, 9, 27)
    assert np.array_equal(image_codec.decode_image(m, "rgb8"), arr)


def test_send_reaches_a_subscriber_as_the_message_without_rclpys_copy(ros):
    """fast_send.send goes through rcl directly (the fast path is really taken here) and a plain
    subscriber gets exactly the Image rclpy would have sent, large frames included."""
    import time

    from rclpy.qos import QoSProfile, QoSReliabilityPolicy

    assert fast_send.status() == "ok", f"send() would fall back: {fast_send.status()}"
    qos = QoSProfile(depth=5, reliability=QoSReliabilityPolicy.RELIABLE)
    got = ros.collect(Image, "/wire_send", qos)
    pub = ros.node.create_publisher(Image, "/wire_send", qos)
    ros.wait_for(lambda: pub.get_subscription_count() > 0, 10, "subscriber")
    rng = np.random.default_rng(4)
    frames = [(rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8), "bgr8"),
              (rng.integers(0, 256, (5, 7), dtype=np.uint8), "mono8")]
    for k, (arr, enc) in enumerate(frames):
        fast_send.send(pub, wire.image_bytes(arr, enc, header(f"cam{k}")))
    ros.wait_for(lambda: len(got) == len(frames), 20, "messages")
    time.sleep(0.05)
    for m, (k, (arr, enc)) in zip(got, enumerate(frames), strict=True):
        assert m.header == header(f"cam{k}") and m.encoding == enc and m.step == arr.shape[1] * arr[0, 0].size
        assert np.array_equal(np.frombuffer(bytes(m.data), np.uint8).reshape(arr.shape), arr)


def test_send_image_reuses_one_buffer_and_sends_each_frame_whole(ros):
    """send_image publishes the same Images as publish(image_bytes(...)), frame after frame through
    one reused buffer per publisher (a frame never carries the previous one's bytes, a size change
    makes a new buffer), strided arrays and 16-bit pixels included."""
    import time

    from rclpy.qos import QoSProfile, QoSReliabilityPolicy

    qos = QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE)
    got = ros.collect(Image, "/wire_send_image", qos)
    pub = ros.node.create_publisher(Image, "/wire_send_image", qos)
    ros.wait_for(lambda: pub.get_subscription_count() > 0, 10, "subscriber")
    rng = np.random.default_rng(5)
    big = rng.integers(0, 256, (360, 640, 3), dtype=np.uint8)
    frames = [(big, "rgb8", "a"), (255 - big, "bgr8", "bb"), (big[::2, ::3], "rgb8", "c"),
              (rng.integers(0, 65536, (9, 11), dtype=np.uint16), "mono16", "front_camera"),
              (rng.integers(0, 256, (9, 11), dtype=np.uint8), "mono8", "")]
    for arr, enc, fid in frames:
        wire.send_image(pub, arr, enc, header(fid))
    ros.wait_for(lambda: len(got) == len(frames), 20, "messages")
    time.sleep(0.05)
    for m, (arr, enc, fid) in zip(got, frames, strict=True):
        assert m == image_codec.fill_image(Image(), arr, enc, header=header(fid))
    assert len(fast_send._outboxes[pub].buf) == len(wire.image_bytes(frames[-1][0], "mono8", header("")))


def test_send_on_a_destroyed_publisher_raises_like_publish(ros):
    """The rclpy handle guards the call: a destroyed publisher fails loudly, never touches freed memory."""
    pub = ros.node.create_publisher(Image, "/wire_gone", 1)
    data = wire.image_bytes(np.zeros((2, 2), np.uint8), "mono8")
    ros.node.destroy_publisher(pub)
    with pytest.raises(Exception) as theirs:
        pub.publish(data)
    with pytest.raises(Exception) as ours:
        fast_send.send(pub, data)
    with pytest.raises(Exception) as ours_image:
        wire.send_image(pub, np.zeros((2, 2), np.uint8), "mono8")
    assert type(ours.value) is type(theirs.value) is type(ours_image.value)
