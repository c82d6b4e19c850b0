"""sensor_msgs/Image in its serialized (CDR) form: read and write frames with at most one pixel copy.

Ring 3 (ROS edge): imports rclpy's serializer and sensor_msgs; sends through ``fast_send`` (which
holds the ctypes code and decides whether it may run); no node, no pipeline.

Why: at camera resolution, going through rclpy's Python message objects copies every frame
several times. Receiving: ``deserialize_message`` copies the pixels into the C message and again
into an ``array.array``. Publishing: ``tobytes()``, ``array.array``, the C message and the
serializer each copy (measured ~10 ms per 1080p rgb8 frame on Jazzy, benchmarks/bench_postprocess.py
--messages). But an Image's pixels are its last field, one length-prefixed
byte sequence at the end of the CDR buffer. So this module lets rmw's own serializer write (or
read) everything *before* the pixels, from a message whose ``data`` is empty, and puts the pixels
after it with one ``bytes.join`` or one copy into a reused buffer (or reads them as a zero-copy
numpy view of the received buffer), and hands that to ``fast_send`` as an already serialized message.

Both directions check, once per process, that the rmw's encoding has the layout this relies on
(little-endian plain CDR, nothing after the pixels); anywhere it does not, they fall back to the
ordinary message path. Either way a subscriber reads exactly the message rclpy would have sent (the
bytes are identical except CDR's alignment padding, which Fast DDS's serializer does not initialise
either).
"""
from __future__ import annotations

import struct
import threading
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import Image

from liteseg_ros import fast_send, image_codec

_CDR_LE = b"\x00\x01"  # encapsulation id of little-endian plain CDR (XCDR1)
_U32 = struct.Struct("<I")

_layout_ok: bool | None = None
_layout_lock = threading.Lock()


def _join(prefix: bytes, pixels: np.ndarray) -> bytes:
    """``prefix`` (a serialized Image with empty data, ending in its 4-byte zero length) + pixels."""
    return b"".join((prefix[:-4], _U32.pack(pixels.nbytes), memoryview(pixels).cast("B")))


def _check_layout() -> bool:
    """Whether the rmw serializes Images as this module assumes (see module docstring); cached."""
    global _layout_ok
    with _layout_lock:
        if _layout_ok is None:
            ok = True
            for frame_id, n in (("", 1), ("c", 2), ("cam0", 3), ("camera", 5), ("x" * 7, 8)):
                m = Image(height=1, width=n, encoding="mono8", step=n)
                m.header.frame_id = frame_id
                m.header.stamp.sec, m.header.stamp.nanosec = 12, 34
                prefix = serialize_message(m)
                pixels = np.arange(n, dtype=np.uint8)
                m.data = pixels.tobytes()
                full = serialize_message(m)
                ours = _join(prefix, pixels) if prefix[-4:] == b"\0\0\0\0" else b""
                # equal up to alignment padding, which the serializer leaves uninitialised
                ok = (ok and prefix[:2] == _CDR_LE and len(ours) == len(full) and ours[-n:] == full[-n:]
                      and deserialize_message(ours, Image) == deserialize_message(full, Image))
            _layout_ok = ok
        return _layout_ok


def image_bytes(arr: np.ndarray, encoding: str, header: Any = None) -> bytes:
    """The serialized ``sensor_msgs/Image`` of ``arr`` (as :func:`image_codec.fill_image` then
    ``serialize_message`` would make it), copying the pixels once. Publish it with ``publish(bytes)``."""
    fields, pixels = image_codec.image_layout(arr, encoding)
    msg = Image(**fields)
    if header is not None:
        msg.header = header
    if not _check_layout():
        msg.data = pixels.tobytes()
        return serialize_message(msg)
    return _join(serialize_message(msg), pixels)


class ImageToSend(NamedTuple):
    """An image output as the contract hands it to the node: sent by :func:`send_image`, never a message."""

    pixels: Any
    encoding: str
    header: Any


@dataclass
class RawImage:
    """A received Image whose ``data`` is a read-only numpy view of the serialized buffer.

    Has the fields :func:`image_codec.decode_image` reads (it duck-types), plus ``header``.
    """

    header: Any
    height: int
    width: int
    encoding: str
    is_bigendian: int
    step: int
    data: np.ndarray


def _data_offset(raw: bytes) -> int | None:
    """Offset of the 4-byte length of ``data`` in a CDR-LE Image buffer, or None if it does not parse."""
    try:
        o = 4 + 8  # encapsulation, then stamp (sec, nanosec); CDR aligns relative to byte 4
        n = _U32.unpack_from(raw, o)[0]  # frame_id length, NUL included
        o += 4 + n
        o = 4 + (o - 4 + 3) // 4 * 4
        o += 8  # height, width
        n = _U32.unpack_from(raw, o)[0]  # encoding length
        o += 4 + n + 1  # + is_bigendian
        o = 4 + (o - 4 + 3) // 4 * 4
        o += 4  # step
        if o + 4 > len(raw):
            return None
        return o
    except struct.error:
        return None


def parse_image(raw: bytes) -> RawImage:
    """A serialized ``sensor_msgs/Image`` -> :class:`RawImage`, without copying the pixels.

    rmw's deserializer reads (and validates) everything before the pixels; the pixels are a view
    of ``raw``. Buffers that are not CDR-LE, or that do not parse, go through ``deserialize_message``
    whole (which raises on a malformed buffer, as before).
    """
    off = _data_offset(raw) if raw[:2] == _CDR_LE and _check_layout() else None
    if off is not None:
        n = _U32.unpack_from(raw, off)[0]
        if off + 4 + n <= len(raw):
            msg = deserialize_message(raw[:off] + b"\0\0\0\0", Image)
            data = np.frombuffer(raw, np.uint8, count=n, offset=off + 4)
            return RawImage(msg.header, msg.height, msg.width, msg.encoding, msg.is_bigendian, msg.step, data)
    msg = deserialize_message(raw, Image)
    return RawImage(msg.header, msg.height, msg.width, msg.encoding, msg.is_bigendian, msg.step,
                    np.frombuffer(msg.data, np.uint8))


# ----------------------------------------------------------------------------- sending
def send_image(publisher: Any, arr: np.ndarray, encoding: str, header: Any = None) -> None:
    """Publish ``arr`` as a ``sensor_msgs/Image`` carrying ``header``: the same message as
    ``publisher.publish(image_bytes(arr, encoding, header))``, with the pixels copied once, into a
    buffer this publisher reuses, and both that copy and the DDS write outside the GIL where
    ``fast_send`` may run (else exactly that ``publish``)."""
    fields, pixels = image_codec.image_layout(arr, encoding)
    if not _check_layout():
        publisher.publish(image_bytes(arr, encoding, header))
        return
    msg = Image(**fields)
    if header is not None:
        msg.header = header
    head = serialize_message(msg)[:-4] + _U32.pack(pixels.nbytes)  # everything before the pixels
    fast_send.send_parts(publisher, head, pixels, lambda: image_bytes(arr, encoding, header))
