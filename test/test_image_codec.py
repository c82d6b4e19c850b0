"""Tests for liteseg_ros.image_codec on real rclpy sensor_msgs and rosbags message classes.

Ground truth is built by hand per encoding (byte layouts written out here, not taken from the codec);
Bayer and YUV are also checked against cv2.cvtColor on the same buffer and against an independent
colour model (flat colours, smooth gradients).
"""
from __future__ import annotations

import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore
from rosbags.typesys.stores.ros2_jazzy import builtin_interfaces__msg__Time as RbTime
from rosbags.typesys.stores.ros2_jazzy import sensor_msgs__msg__CompressedImage as RbCompressedImage
from rosbags.typesys.stores.ros2_jazzy import sensor_msgs__msg__Image as RbImage
from rosbags.typesys.stores.ros2_jazzy import std_msgs__msg__Header as RbHeader
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from liteseg_ros.image_codec import (
    MAX_BYTES,
    MAX_SIDE,
    OUTPUT_ENCODINGS,
    SUPPORTED_ENCODINGS,
    ImageDecodeError,
    decode_any,
    decode_compressed,
    decode_image,
    encode_compressed,
    fill_image,
    image_to_fields,
)

H, W = 8, 12
KINDS = ("rclpy", "rosbags")


# ------------------------------------------------------------------------------------ builders


def make_image(kind, height, width, encoding, step, data, big=0):
    """A real Image message of the given kind with these raw fields."""
    data = bytes(data)
    if kind == "rclpy":
        msg = Image()
        msg.height, msg.width, msg.encoding, msg.step, msg.is_bigendian = height, width, encoding, step, big
        msg.data = data
        return msg
    header = RbHeader(stamp=RbTime(sec=0, nanosec=0), frame_id="cam")
    return RbImage(
        header=header, height=height, width=width, encoding=encoding, is_bigendian=big, step=step,
        data=np.frombuffer(data, dtype=np.uint8),
    )


def make_compressed(kind, fmt, data):
    data = bytes(data)
    if kind == "rclpy":
        msg = CompressedImage()
        msg.format = fmt
        msg.data = data
        return msg
    header = RbHeader(stamp=RbTime(sec=0, nanosec=0), frame_id="cam")
    return RbCompressedImage(header=header, format=fmt, data=np.frombuffer(data, dtype=np.uint8))


def pad_rows(rows: np.ndarray, pad: int) -> tuple[bytes, int]:
    """Raw bytes of a (H, row_bytes) uint8 array with `pad` garbage bytes after each row, and the step."""
    if pad:
        rows = np.concatenate([rows, np.full((rows.shape[0], pad), 0xAB, np.uint8)], axis=1)
    return rows.tobytes(), rows.shape[1]


def mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """Bayer mosaic of an (H, W, 3) RGB image; `pattern` names the colours of the top-left 2x2 block."""
    out = np.empty(rgb.shape[:2], rgb.dtype)
    index = {"r": 0, "g": 1, "b": 2}
    for k, (dy, dx) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        out[dy::2, dx::2] = rgb[dy::2, dx::2, index[pattern[k]]]
    return out


def yuv601(bgr: tuple[int, int, int]) -> tuple[int, int, int]:
    """BT.601 limited-range Y, U (Cb), V (Cr) of one BGR colour, written out from the standard."""
    b, g, r = (c / 255.0 for c in bgr)
    y = 16 + 65.481 * r + 128.553 * g + 24.966 * b
    u = 128 - 37.797 * r - 74.203 * g + 112.0 * b
    v = 128 + 112.0 * r - 93.786 * g - 18.214 * b
    return round(y), round(u), round(v)


def to8(v: np.ndarray) -> np.ndarray:
    """16-bit -> 8-bit as cv_bridge scales (OpenCV convertTo by 255/65535, rounded), in integers:
    round(v * 255 / 65535) with no ties possible, so (v * 255 + 32767) // 65535."""
    return ((v.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def raw_case(encoding: str, rng: np.random.Generator, big: bool = False):
    """(rows (H, row_bytes) uint8, expected BGR (H, W, 3) uint8 or None) for one encoding.

    Expected is None for YUV and Bayer, whose reference is cv2.cvtColor of the same buffer.
    """
    bgr = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    if encoding == "bgr8":
        return bgr.reshape(H, -1), bgr
    if encoding == "rgb8":
        return bgr[..., ::-1].reshape(H, -1).copy(), bgr
    if encoding in ("bgra8", "rgba8"):
        alpha = rng.integers(0, 256, (H, W, 1), dtype=np.uint8)
        color = bgr if encoding == "bgra8" else bgr[..., ::-1]
        return np.concatenate([color, alpha], axis=2).reshape(H, -1), bgr
    if encoding == "mono8":
        return bgr[..., 0].copy(), np.repeat(bgr[..., :1], 3, axis=2)
    order = ">u2" if big else "<u2"
    if encoding == "mono16":
        v = rng.integers(0, 65536, (H, W), dtype=np.uint16)
        return v.astype(order).view(np.uint8).reshape(H, -1), np.repeat(to8(v)[..., None], 3, axis=2)
    if encoding in ("bgr16", "rgb16"):
        v = rng.integers(0, 65536, (H, W, 3), dtype=np.uint16)
        expected = to8(v) if encoding == "bgr16" else to8(v)[..., ::-1]
        return v.astype(order).view(np.uint8).reshape(H, -1), np.ascontiguousarray(expected)
    if encoding.startswith("bayer_") and encoding.endswith("16"):
        v = rng.integers(0, 65536, (H, W), dtype=np.uint16)
        return v.astype(order).view(np.uint8).reshape(H, -1), None
    # yuv422 / uyvy / yuv422_yuy2 / yuyv / bayer_*8: any bytes are a valid image
    width_bytes = 2 * W if "yu" in encoding or encoding == "uyvy" else W
    return rng.integers(0, 256, (H, width_bytes), dtype=np.uint8), None


CV_REFERENCE = {  # cv_bridge's codes, for the cvtColor-of-the-same-buffer comparison
    "yuv422": cv2.COLOR_YUV2BGR_UYVY,
    "uyvy": cv2.COLOR_YUV2BGR_UYVY,
    "yuv422_yuy2": cv2.COLOR_YUV2BGR_YUY2,
    "yuyv": cv2.COLOR_YUV2BGR_YUY2,
    "bayer_rggb": cv2.COLOR_BayerBG2BGR,
    "bayer_bggr": cv2.COLOR_BayerRG2BGR,
    "bayer_gbrg": cv2.COLOR_BayerGR2BGR,
    "bayer_grbg": cv2.COLOR_BayerGB2BGR,
}


def reference_bgr(encoding: str, rows: np.ndarray, big: bool) -> np.ndarray:
    if encoding.startswith("bayer_"):
        key = encoding[:10]
        if encoding.endswith("16"):  # demosaiced at 16 bits, then scaled: cv_bridge's order
            v = rows.reshape(H, W, 2).astype(np.uint16)
            v = (v[..., 0] << 8 | v[..., 1]) if big else (v[..., 1] << 8 | v[..., 0])
            return to8(cv2.cvtColor(v, CV_REFERENCE[key]))
        return cv2.cvtColor(rows.reshape(H, W), CV_REFERENCE[key])
    return cv2.cvtColor(rows.reshape(H, W, 2), CV_REFERENCE[encoding])


# ------------------------------------------------------------------------------ decode_image


def test_supported_encodings_cover_issue_4():
    required = {
        "rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "rgb16", "bgr16", "yuv422", "yuv422_yuy2",
        "bayer_rggb8", "bayer_bggr8", "bayer_gbrg8", "bayer_grbg8",
    }
    assert required <= set(SUPPORTED_ENCODINGS)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("pad", [0, 7])
@pytest.mark.parametrize("encoding", SUPPORTED_ENCODINGS)
def test_decode_every_encoding(kind, pad, encoding):
    rng = np.random.default_rng(zlib.crc32(f"{encoding}/{pad}".encode()))
    for big in ([False, True] if "16" in encoding else [False]):
        rows, expected = raw_case(encoding, rng, big)
        if expected is None:
            expected = reference_bgr(encoding, rows, big)
        data, step = pad_rows(rows, pad)
        msg = make_image(kind, H, W, encoding, step, data, big=int(big))
        out = decode_image(msg)
        assert out.shape == (H, W, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
        np.testing.assert_array_equal(out, expected, err_msg=f"{encoding} pad={pad} big={big}")
        rgb = decode_image(msg, want="rgb8")
        assert rgb.flags.c_contiguous
        np.testing.assert_array_equal(rgb, expected[..., ::-1])
        np.testing.assert_array_equal(decode_any(msg), expected)


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
@pytest.mark.parametrize("depth", [8, 16])
def test_bayer_flat_colour_and_gradient(pattern, depth):
    """A Bayer mosaic of a flat colour decodes to that colour; of a smooth image, close to it."""
    h, w = 16, 20
    rgb_colour = (200, 90, 30)
    flat = np.empty((h, w, 3), np.uint8)
    flat[:] = rgb_colour
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = np.stack([40 + 6 * xx, 60 + 5 * yy, 200 - 4 * xx - 3 * yy], axis=2).astype(np.uint8)
    for rgb, tol in ((flat, 1), (smooth, 4)):
        m = mosaic(rgb, pattern)
        if depth == 16:
            raw = (m.astype(np.uint16) * 257).astype("<u2").view(np.uint8).reshape(h, -1)
        else:
            raw = m
        msg = make_image("rclpy", h, w, f"bayer_{pattern}{depth}", raw.shape[1], raw.tobytes())
        out_rgb = decode_image(msg, want="rgb8").astype(int)
        inner = (slice(2, -2), slice(2, -2))  # demosaicing borders are approximate
        err = np.abs(out_rgb[inner] - rgb[inner].astype(int)).max()
        assert err <= tol, f"bayer_{pattern}{depth}: max error {err}"


@pytest.mark.parametrize("encoding", ["yuv422", "uyvy", "yuv422_yuy2", "yuyv"])
@pytest.mark.parametrize("bgr", [(30, 160, 220), (255, 255, 255), (0, 0, 0), (200, 40, 90)])
def test_yuv_flat_colour(encoding, bgr):
    y, u, v = yuv601(bgr)
    h, w = 4, 6
    pair = [u, y, v, y] if encoding in ("yuv422", "uyvy") else [y, u, y, v]
    raw = np.tile(np.array(pair, np.uint8), (h, w // 2))
    out = decode_image(make_image("rosbags", h, w, encoding, 2 * w, raw.tobytes()))
    assert np.abs(out.astype(int) - np.array(bgr)).max() <= 3, (encoding, bgr, out[0, 0])


def test_bgr8_unpadded_is_zero_copy_and_padded_is_not():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    msg = make_image("rclpy", H, W, "bgr8", 3 * W, img.tobytes())
    out = decode_image(msg)
    assert np.shares_memory(out, np.frombuffer(msg.data, np.uint8))
    rb = make_image("rosbags", H, W, "rgb8", 3 * W, img.tobytes())
    assert np.shares_memory(decode_image(rb, want="rgb8"), rb.data)
    data, step = pad_rows(img.reshape(H, -1), 4)
    padded = decode_image(make_image("rclpy", H, W, "bgr8", step, data))
    assert padded.flags.c_contiguous
    np.testing.assert_array_equal(padded, img)


def _assert_names_sizes(exc_info, encoding, height, width, step, nbytes):
    text = str(exc_info.value)
    for part in (repr(encoding), f"height={height}", f"width={width}", f"step={step}", f"len(data)={nbytes}"):
        assert part in text, f"{part!r} missing from: {text}"


BAD_IMAGES = [
    # (id, encoding, height, width, step, nbytes, expected reason fragment)
    ("unknown_encoding", "8UC3", 4, 6, 18, 72, "unsupported encoding"),
    ("nv21", "nv21", 4, 6, 6, 36, "unsupported encoding"),
    ("step_too_small", "bgr8", 4, 6, 17, 68, "step is smaller"),
    ("step_too_small_16bit", "mono16", 4, 6, 6, 24, "step is smaller"),
    ("data_short", "bgr8", 4, 6, 18, 71, "does not match"),
    ("data_long", "bgr8", 4, 6, 18, 73, "does not match"),
    ("wrong_step", "bgr8", 4, 6, 20, 72, "does not match"),
    ("zero_height", "mono8", 0, 6, 6, 0, "empty"),
    ("zero_width", "mono8", 4, 0, 0, 0, "empty"),
    ("too_wide", "mono8", 1, MAX_SIDE + 1, MAX_SIDE + 1, 16, "exceeds"),
    ("too_tall", "mono8", MAX_SIDE + 1, 1, 1, 16, "exceeds"),
    ("too_many_bytes", "bgr8", MAX_SIDE, MAX_SIDE, 3 * MAX_SIDE, 16, f"exceeds {MAX_BYTES} bytes"),
    ("huge_step", "mono8", 4, 4, MAX_BYTES, 16, f"exceeds {MAX_BYTES} bytes"),
    ("yuv_odd_width", "yuv422", 2, 5, 10, 20, "even width"),
    ("bayer_one_row", "bayer_rggb8", 1, 8, 8, 8, "2 x 2"),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", BAD_IMAGES, ids=[c[0] for c in BAD_IMAGES])
def test_decode_image_errors_name_encoding_and_sizes(kind, case):
    _, encoding, height, width, step, nbytes, reason = case
    msg = make_image(kind, height, width, encoding, step, bytes(nbytes))
    with pytest.raises(ImageDecodeError, match=reason) as exc_info:
        decode_image(msg)
    assert isinstance(exc_info.value, ValueError)
    _assert_names_sizes(exc_info, encoding, height, width, step, nbytes)


def test_bad_want_and_non_message():
    msg = make_image("rclpy", 2, 2, "mono8", 2, bytes(4))
    with pytest.raises(ValueError, match="want='mono8'"):
        decode_image(msg, want="mono8")
    with pytest.raises(ImageDecodeError, match="neither"):
        decode_any(object())
    with pytest.raises(ImageDecodeError, match="SimpleNamespace"):
        from types import SimpleNamespace

        decode_image(SimpleNamespace(encoding="mono8", height=2, width=2, step=2, data=bytes(4)))


# --------------------------------------------------------------------------- decode_compressed


def _smooth_bgr(h=48, w=64):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([2 * xx, 3 * yy + 20, 255 - 2 * xx - yy], axis=2).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("kind", KINDS)
def test_png_round_trips_exactly(kind):
    rng = np.random.default_rng(2)
    bgr = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    alpha = rng.integers(0, 256, (20, 30, 1), dtype=np.uint8)
    gray16 = rng.integers(0, 65536, (20, 30), dtype=np.uint16)
    bgr16 = rng.integers(0, 65536, (20, 30, 3), dtype=np.uint16)
    cases = [
        (bgr, bgr),
        (gray, np.repeat(gray[..., None], 3, axis=2)),
        (np.concatenate([bgr, alpha], axis=2), bgr),
        (gray16, np.repeat(to8(gray16)[..., None], 3, axis=2)),
        (bgr16, to8(bgr16)),
    ]
    for arr, expected in cases:
        fmt, data = encode_compressed(arr, "png")
        assert "png compressed" in fmt
        msg = make_compressed(kind, fmt, data)
        out = decode_compressed(msg)
        assert out.dtype == np.uint8 and out.flags.c_contiguous
        np.testing.assert_array_equal(out, expected, err_msg=f"{arr.dtype} {arr.shape}")
        np.testing.assert_array_equal(decode_compressed(msg, want="rgb8"), expected[..., ::-1])
        np.testing.assert_array_equal(decode_any(msg), expected)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fmt", ["jpeg", "rgb8; jpeg compressed bgr8", "bgr8; jpeg compressed bgr8", "jpg", ""])
def test_jpeg_decodes_close(kind, fmt):
    bgr = _smooth_bgr()
    _, data = encode_compressed(bgr, "jpeg", quality=95)
    out = decode_compressed(make_compressed(kind, fmt, data))
    assert out.shape == bgr.shape
    assert np.abs(out.astype(int) - bgr).mean() < 2.0
    flat = np.empty((16, 16, 3), np.uint8)
    flat[:] = (20, 140, 230)
    _, data = encode_compressed(flat, "jpeg", quality=90)
    rgb = decode_compressed(make_compressed(kind, fmt, data), want="rgb8")
    assert np.abs(rgb.astype(int) - (230, 140, 20)).max() <= 4


@pytest.mark.parametrize("fmt", ["png", "bgr8; png compressed", "bgr8; png compressed bgr8", "PNG"])
def test_png_format_strings(fmt):
    img = _smooth_bgr(10, 14)
    _, data = encode_compressed(img, "png")
    np.testing.assert_array_equal(decode_compressed(make_compressed("rclpy", fmt, data)), img)


def _patch_png_size(data: bytes, height: int, width: int) -> bytes:
    return data[:16] + width.to_bytes(4, "big") + height.to_bytes(4, "big") + data[24:]


def _patch_jpeg_size(data: bytes, height: int, width: int) -> bytes:
    i = data.index(b"\xff\xc0")  # baseline SOF0 written by libjpeg
    return data[: i + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + data[i + 9 :]


def test_declared_size_is_read_from_headers():
    _, png = encode_compressed(_smooth_bgr(10, 14), "png")
    _, jpg = encode_compressed(_smooth_bgr(10, 14), "jpeg")
    for fmt, data in (("png", _patch_png_size(png, 10, MAX_SIDE + 1)), ("jpeg", _patch_jpeg_size(jpg, 20000, 14))):
        with pytest.raises(ImageDecodeError, match="exceeds") as exc_info:
            decode_compressed(make_compressed("rclpy", fmt, data))
        assert f"len(data)={len(data)}" in str(exc_info.value) and "height=" in str(exc_info.value)


def _compressed_error_cases():
    _, png = encode_compressed(_smooth_bgr(10, 14), "png")
    _, jpg = encode_compressed(_smooth_bgr(10, 14), "jpeg")
    rng = np.random.default_rng(3)
    garbage = rng.integers(0, 256, 200, dtype=np.uint8).tobytes()
    return [
        ("garbage", "jpeg", b"\x00\x01" + garbage, "not a JPEG or PNG"),
        ("empty", "png", b"", "empty"),
        ("png_header_only", "png", png[:40], "corrupt png"),
        ("png_body_garbled", "png", png[:33] + garbage + png[-12:], "corrupt png"),
        ("jpeg_magic_then_garbage", "jpeg", b"\xff\xd8\xff" + garbage, "jpeg"),
        ("jpeg_header_only", "jpeg", jpg[:20], "corrupt jpeg"),
        ("compressed_depth", "16UC1; compressedDepth png", png, "compressedDepth"),
        ("unknown_format", "tiff", png, "unsupported format"),
        ("zero_size_png", "png", _patch_png_size(png, 0, 14), "empty or exceeds"),
    ]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", _compressed_error_cases(), ids=lambda c: c[0])
def test_decode_compressed_errors(kind, case):
    _, fmt, data, reason = case
    with pytest.raises(ImageDecodeError, match=reason) as exc_info:
        decode_compressed(make_compressed(kind, fmt, data))
    text = str(exc_info.value)
    assert f"format={fmt!r}" in text and f"len(data)={len(data)}" in text, text


def test_encode_compressed_rejects_bad_input():
    img = _smooth_bgr(8, 8)
    with pytest.raises(ValueError, match="fmt='webp'"):
        encode_compressed(img, "webp")
    with pytest.raises(ValueError, match="quality=0"):
        encode_compressed(img, "jpeg", quality=0)
    with pytest.raises(ValueError, match="JPEG cannot hold"):
        encode_compressed(img.astype(np.uint16), "jpeg")
    with pytest.raises(ValueError, match="shape"):
        encode_compressed(np.zeros((4, 4, 2), np.uint8), "png")
    with pytest.raises(ValueError, match="float32"):
        encode_compressed(img.astype(np.float32), "png")
    fmt, _ = encode_compressed(img[..., 0], "jpeg")
    assert fmt == "mono8; jpeg compressed mono8"


# ------------------------------------------------------------------- image_to_fields / fill_image


def _array_for(encoding: str, rng) -> tuple[np.ndarray, np.ndarray]:
    """An array to write as `encoding` and the BGR image decode_image must give back."""
    if encoding == "mono16":
        arr = rng.integers(0, 65536, (H, W), dtype=np.uint16)
        return arr, np.repeat(to8(arr)[..., None], 3, axis=2)
    if encoding == "mono8":
        arr = rng.integers(0, 256, (H, W), dtype=np.uint8)
        return arr, np.repeat(arr[..., None], 3, axis=2)
    arr = rng.integers(0, 256, (H, W, 4 if encoding.endswith("a8") else 3), dtype=np.uint8)
    bgr = arr[..., :3] if encoding.startswith("bgr") else arr[..., 2::-1]
    return arr, np.ascontiguousarray(bgr)


@pytest.mark.parametrize("encoding", OUTPUT_ENCODINGS)
def test_image_to_fields(encoding):
    arr, _ = _array_for(encoding, np.random.default_rng(4))
    fields = image_to_fields(arr, encoding)
    assert set(fields) == {"height", "width", "encoding", "is_bigendian", "step", "data"}
    assert (fields["height"], fields["width"], fields["encoding"]) == (H, W, encoding)
    assert isinstance(fields["data"], bytes)
    assert fields["step"] * H == len(fields["data"]) == arr.nbytes
    assert fields["is_bigendian"] == 0
    assert fields["data"] == arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    # non-contiguous input is written in C order
    flipped = arr[:, ::-1]
    assert image_to_fields(flipped, encoding)["data"] == np.ascontiguousarray(flipped).astype(
        arr.dtype.newbyteorder("<")
    ).tobytes()


@pytest.mark.parametrize("encoding", OUTPUT_ENCODINGS)
def test_fill_image_rclpy_round_trip(encoding):
    from rclpy.serialization import deserialize_message, serialize_message

    arr, expected = _array_for(encoding, np.random.default_rng(5))
    header = Header(frame_id="camera_optical")
    msg = Image()
    assert fill_image(msg, arr, encoding, header=header) is msg
    assert msg.header is header
    np.testing.assert_array_equal(decode_image(msg), expected)
    wire = deserialize_message(serialize_message(msg), Image)
    np.testing.assert_array_equal(decode_image(wire), expected)
    assert wire.header.frame_id == "camera_optical"


@pytest.mark.parametrize("encoding", OUTPUT_ENCODINGS)
def test_fill_image_rosbags_round_trip(encoding):
    typestore = get_typestore(Stores.ROS2_JAZZY)
    arr, expected = _array_for(encoding, np.random.default_rng(6))
    msg = make_image("rosbags", 1, 1, "mono8", 1, b"\x00")
    header = RbHeader(stamp=RbTime(sec=3, nanosec=4), frame_id="cam2")
    fill_image(msg, arr, encoding, header=header)
    assert msg.header is header and isinstance(msg.data, np.ndarray)
    np.testing.assert_array_equal(decode_image(msg), expected)
    wire = typestore.deserialize_cdr(typestore.serialize_cdr(msg, msg.__msgtype__), msg.__msgtype__)
    np.testing.assert_array_equal(decode_image(wire), expected)
    assert wire.header.frame_id == "cam2"


def test_fill_image_keeps_header_when_not_given():
    msg = Image()
    msg.header.frame_id = "keep"
    fill_image(msg, np.zeros((2, 3), np.uint8), "mono8")
    assert msg.header.frame_id == "keep" and (msg.height, msg.width, msg.step) == (2, 3, 3)


@pytest.mark.parametrize(
    "arr, encoding, fragment",
    [
        (np.zeros((4, 4, 3), np.uint8), "mono8", "'mono8' needs a (H, W) uint8 array, got shape (4, 4, 3)"),
        (np.zeros((4, 4), np.uint8), "bgr8", "'bgr8' needs a (H, W, 3) uint8 array, got shape (4, 4)"),
        (np.zeros((4, 4, 3), np.float32), "rgb8", "dtype float32"),
        (np.zeros((4, 4), np.uint8), "mono16", "'mono16' needs a (H, W) uint16"),
        (np.zeros((0, 4), np.uint8), "mono8", "empty"),
        (np.zeros((4, 4), np.uint8), "32FC1", "cannot write encoding '32FC1'"),
        ([[1, 2], [3, 4]], "mono8", "needs a numpy array, got list"),
    ],
)
def test_image_to_fields_rejects_mismatch(arr, encoding, fragment):
    with pytest.raises(ValueError) as exc_info:
        fill_image(Image(), arr, encoding)
    assert fragment in str(exc_info.value)


# ------------------------------------------------------------------------------- ring and oracles


def test_module_imports_no_ros_packages():
    code = (
        "import sys, liteseg_ros.image_codec\n"
        "bad = [m for m in ('rclpy', 'sensor_msgs', 'std_msgs', 'cv_bridge', 'rosbags') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_rosbags_image_oracle():
    """Optional: rosbags-image agrees on unpadded encodings it supports (it ignores `step`)."""
    rosbags_image = pytest.importorskip("rosbags.image")
    rng = np.random.default_rng(7)
    for encoding in ("bgr8", "rgb8", "mono8", "mono16", "bgra8", "rgba8"):
        rows, expected = raw_case(encoding, rng)
        msg = make_image("rosbags", H, W, encoding, rows.shape[1], rows.tobytes())
        theirs = rosbags_image.message_to_cvimage(msg, "bgr8")
        np.testing.assert_array_equal(decode_image(msg), theirs, err_msg=encoding)


#: sensor_msgs names cv_bridge does not know (aliases of yuv422 and yuv422_yuy2): it refuses them, so
#: they are not compared; test_cv_bridge_refuses_only_the_aliases says so if that changes.
CV_BRIDGE_UNKNOWN = ("uyvy", "yuyv")
CV_BRIDGE_CASES = [(enc, pad, big) for enc in SUPPORTED_ENCODINGS if enc not in CV_BRIDGE_UNKNOWN
                   for pad in (0, 1, 4, 6, 7) for big in ((False, True) if "16" in enc else (False,))]


@pytest.fixture(scope="module")
def bridge():
    return pytest.importorskip("cv_bridge").CvBridge()


@pytest.mark.parametrize("encoding,pad,big", CV_BRIDGE_CASES)
def test_cv_bridge_agrees_on_every_encoding_both_accept(bridge, encoding, pad, big):
    """ROS 2 cv_bridge's ``imgmsg_to_cv2(msg, "bgr8")`` and ours give the same pixels, 16-bit included
    (both scale round(v * 255 / 65535) after demosaicing), for rows padded by any whole number of pixels.

    Rows padded by a non-multiple of the pixel size are where cv_bridge is wrong: its Python side
    (core.py) reshapes the buffer with ``step // pixel size`` pixels per row, so every row after the
    first starts at the wrong byte. There ours is checked against the independent expectation only.
    """
    rng = np.random.default_rng(zlib.crc32(f"cvb/{encoding}/{pad}/{big}".encode()))
    rows, expected = raw_case(encoding, rng, big)
    if expected is None:
        expected = reference_bgr(encoding, rows, big)
    pixel_bytes = rows.shape[1] // W
    data, step = pad_rows(rows, pad)
    msg = make_image("rclpy", H, W, encoding, step, data, big=int(big))
    ours = decode_image(msg)
    np.testing.assert_array_equal(ours, expected, err_msg=f"{encoding} pad={pad} big={big}")
    theirs = bridge.imgmsg_to_cv2(msg, "bgr8")
    if pad % pixel_bytes and not np.array_equal(theirs, ours):
        pytest.skip(f"cv_bridge misreads rows padded by {pad} bytes, not a multiple of the {pixel_bytes}-byte "
                    "pixel (core.py reshapes with step // pixel size pixels per row); ours is right (checked)")
    np.testing.assert_array_equal(ours, theirs, err_msg=f"{encoding} pad={pad} big={big}")


def test_cv_bridge_refuses_only_the_aliases(bridge):
    """The encodings left out of the comparison above are exactly those cv_bridge refuses."""
    from cv_bridge import CvBridgeError

    refused = []
    for encoding in SUPPORTED_ENCODINGS:
        rows, _ = raw_case(encoding, np.random.default_rng(9))
        try:
            bridge.imgmsg_to_cv2(make_image("rclpy", H, W, encoding, rows.shape[1], rows.tobytes()), "bgr8")
        except CvBridgeError:
            refused.append(encoding)
    assert tuple(refused) == CV_BRIDGE_UNKNOWN


# ------------------------------------------------------------------------- hostile and corrupt input

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "fuzz"))
import bombs  # noqa: E402  (fuzz/bombs.py: the crafted decompression bombs, generated on demand)


@pytest.mark.parametrize("name", sorted(bombs.BOMBS))
def test_every_crafted_bomb_is_rejected(name):
    data = bombs.make(name)
    with pytest.raises(ImageDecodeError, match="exceed|cannot code|per side") as exc_info:
        decode_compressed(make_compressed("rosbags", "", data))
    assert "height=" in str(exc_info.value)  # the true declared size is named


def test_stray_byte_before_sof_is_read_as_libjpeg_reads_it():
    """libjpeg skips junk before a marker; the size check must see the SOF behind it too."""
    _, jpg = encode_compressed(_smooth_bgr(10, 14), "jpeg")
    i = jpg.index(b"\xff\xc0")
    stray = jpg[:i] + b"\x00" + jpg[i:]
    with pytest.raises(ImageDecodeError, match="height=10, width=14") as exc_info:
        decode_compressed(make_compressed("rclpy", "jpeg", stray))
    assert "extraneous bytes" in str(exc_info.value)  # and libjpeg calls it corrupt
    big = _patch_jpeg_size(jpg, 9000, 9000)
    i = big.index(b"\xff\xc0")
    with pytest.raises(ImageDecodeError, match="exceed max_pixels"):
        decode_compressed(make_compressed("rclpy", "jpeg", big[:i] + b"\x00junk" + big[i:]))


def test_bomb_peak_memory_stays_small_and_large_frames_give_memory_back():
    """A child process decodes every bomb (each rejected) and then legitimate large frames; its peak
    RSS stays far below what one bomb decodes to, and its RSS returns after the large frames."""
    code = r"""
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np, bombs
from types import SimpleNamespace
from liteseg_ros.engines.cpu_tuning import tune_malloc_at_startup
from liteseg_ros.image_codec import ImageDecodeError, decode_compressed, encode_compressed
tune_malloc_at_startup()  # the node's malloc settings
def rss():
    return int(open('/proc/self/statm').read().split()[1]) * 4096 / 2**20
payloads = bombs.all_bombs()
base = rss()
for _ in range(3):
    for data in payloads.values():
        try:
            decode_compressed(SimpleNamespace(format='', data=data))
            print('ACCEPTED'); sys.exit(1)
        except ImageDecodeError:
            pass
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent (pytest) across fork and exec
peak_bombs = int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM:')).split()[1]) / 1024
yy, xx = np.mgrid[0:4320, 0:7680]
img = np.stack([xx % 256, yy % 256, (xx + yy) % 256], axis=2).astype(np.uint8)
_, jpg = encode_compressed(img, 'jpeg')
_, png = encode_compressed(img, 'png')
del img, yy, xx
before = rss()
for _ in range(3):
    for data in (jpg, png):
        out = decode_compressed(SimpleNamespace(format='', data=data))
        assert out.shape == (4320, 7680, 3)
        del out
after = rss()
print(f'{base:.0f} {peak_bombs:.0f} {before:.0f} {after:.0f}')
"""
    res = subprocess.run([sys.executable, "-c", code, str(REPO / "fuzz")], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    base, peak_bombs, before, after = (float(v) for v in res.stdout.split())
    # The largest bomb would decode to 805 MB (16384 x 16384 x 3); all of them together stay < +150 MB
    # (the payloads themselves and the import of the codec's libraries are in `base`).
    assert peak_bombs - base < 150, (base, peak_bombs)
    # Six 100 MB frames decoded and dropped: the memory goes back (at most 40 MB retained).
    assert after - before < 40, (before, after)


def _truncated_with_eoi(jpg: bytes, keep: float) -> bytes:
    return jpg[: int(len(jpg) * keep)] + b"\xff\xd9"


def test_truncated_jpeg_ending_in_eoi_is_rejected():
    from liteseg_ros.synthetic import SceneConfig, generate_scene

    img = generate_scene(1, SceneConfig(height=360, width=640)).image
    _, jpg = encode_compressed(img, "jpeg")
    assert decode_compressed(make_compressed("rclpy", "jpeg", jpg)).shape == (360, 640, 3)
    for keep in (0.3, 0.6, 0.95):
        cut = _truncated_with_eoi(jpg, keep)
        # OpenCV decodes these, filling the missing rows with grey; libjpeg warns, and we reject
        assert cv2.imdecode(np.frombuffer(cut, np.uint8), cv2.IMREAD_COLOR) is not None
        with pytest.raises(ImageDecodeError, match="corrupt jpeg data"):
            decode_compressed(make_compressed("rclpy", "jpeg", cut))


_WARN_ORACLE = r"""
import os, sys
import cv2, numpy as np
data = open(sys.argv[1], 'rb').read()
n = int(sys.argv[2]); size = len(data) // n
for k in range(n):
    os.write(2, f'@@{k}\n'.encode())
    img = cv2.imdecode(np.frombuffer(data[k * size:(k + 1) * size], np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        os.write(2, b'FAILED\n')
"""


def test_bit_flipped_jpegs_rejected_exactly_when_libjpeg_warns(tmp_path):
    """Oracle: OpenCV's own libjpeg prints "Corrupt JPEG data" warnings to stderr (and decodes anyway).
    Every flipped file it warns about (or cannot decode) is rejected by us, and we reject nothing else."""
    from liteseg_ros.synthetic import SceneConfig, generate_scene

    img = generate_scene(2, SceneConfig(height=120, width=160)).image
    _, jpg = encode_compressed(img, "jpeg")
    rng = np.random.default_rng(11)
    variants = []
    for _ in range(200):
        d = bytearray(jpg)
        j = int(rng.integers(len(d) // 3, len(d) - 2))  # in the scan data
        d[j] ^= 1 << int(rng.integers(8))
        variants.append(bytes(d))
    (tmp_path / "all.bin").write_bytes(b"".join(variants))
    res = subprocess.run([sys.executable, "-c", _WARN_ORACLE, str(tmp_path / "all.bin"), str(len(variants))],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    sections = res.stderr.split("@@")[1:]
    flagged = {int(s.split("\n", 1)[0]) for s in sections
               if "Corrupt JPEG data" in s or "FAILED" in s or "Unsupported" in s or "Bogus" in s}
    rejected = set()
    for k, v in enumerate(variants):
        try:
            decode_compressed(make_compressed("rclpy", "jpeg", v))
        except ImageDecodeError:
            rejected.add(k)
    assert flagged, "the oracle saw no corrupt file: the flips missed the scan"
    assert flagged <= rejected, sorted(flagged - rejected)
    assert rejected <= flagged, sorted(rejected - flagged)


def test_truncated_and_bit_flipped_pngs_are_rejected():
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    _, png = encode_compressed(img, "png")
    for cut in (png[:-12], png[: len(png) // 2], png[:-1]):  # no IEND, half an IDAT, a short IEND
        with pytest.raises(ImageDecodeError, match="corrupt png"):
            decode_compressed(make_compressed("rclpy", "png", cut))
    idat = png.index(b"IDAT")
    flipped = bytearray(png)
    flipped[idat + 40] ^= 0x10
    with pytest.raises(ImageDecodeError, match="CRC mismatch"):
        decode_compressed(make_compressed("rclpy", "png", bytes(flipped)))


def test_max_pixels_bounds_raw_and_compressed_frames():
    img = _smooth_bgr(100, 100)
    raw = make_image("rclpy", 100, 100, "bgr8", 300, img.tobytes())
    _, png = encode_compressed(img, "png")
    _, jpg = encode_compressed(img, "jpeg")
    for msg in (raw, make_compressed("rclpy", "png", png), make_compressed("rclpy", "jpeg", jpg)):
        assert decode_any(msg, max_pixels=10_000).shape == (100, 100, 3)
        with pytest.raises(ImageDecodeError, match="max_pixels=9999"):
            decode_any(msg, max_pixels=9999)
    with pytest.raises(ValueError, match="max_pixels"):
        decode_any(raw, max_pixels=0)


def _ns(**fields):
    from types import SimpleNamespace

    base = {"encoding": "mono8", "height": 2, "width": 2, "step": 2, "is_bigendian": 0, "data": bytes(4)}
    base.update(fields)
    return SimpleNamespace(**base)


ODD_IMAGES = [
    ("height_float", {"height": 2.7}),
    ("height_float_integral", {"height": 2.0}),
    ("height_str", {"height": "2"}),
    ("height_none", {"height": None}),
    ("step_float", {"step": 2.5}),
    ("width_huge", {"width": 10**30}),
    ("height_negative_huge", {"height": -(10**30)}),
    ("encoding_bytes", {"encoding": b"mono8"}),
    ("encoding_none", {"encoding": None}),
    ("bigendian_str", {"is_bigendian": "yes"}),
    ("data_none", {"data": None}),
    ("data_str", {"data": "abcd"}),
    ("data_int", {"data": 4}),
    ("data_list_overflow", {"data": [0, 1, 2, 300]}),
    ("data_list_negative", {"data": [0, 1, 2, -1]}),
    ("data_list_nested", {"data": [[0, 1], [2, 3]]}),
    ("data_list_floats", {"data": [0.5, 1.5, 2.5, 3.5]}),
    ("data_float_array", {"data": np.zeros(4, np.float32)}),
    ("data_object", {"data": object()}),
]


@pytest.mark.parametrize("fields", [c[1] for c in ODD_IMAGES], ids=[c[0] for c in ODD_IMAGES])
def test_odd_image_field_types_raise_image_decode_error(fields):
    with pytest.raises(ImageDecodeError):
        decode_image(_ns(**fields))


ODD_COMPRESSED = [
    ("format_none", {"format": None}),
    ("format_int", {"format": 3}),
    ("data_none", {"data": None}),
    ("data_str", {"data": "\xff\xd8\xff"}),
    ("data_list_overflow", {"data": [255, 216, 255, 999]}),
    ("data_float_array", {"data": np.zeros(8, np.float64)}),
    ("data_object", {"data": object()}),
]


@pytest.mark.parametrize("fields", [c[1] for c in ODD_COMPRESSED], ids=[c[0] for c in ODD_COMPRESSED])
def test_odd_compressed_field_types_raise_image_decode_error(fields):
    from types import SimpleNamespace

    base = {"format": "jpeg", "data": b"\xff\xd8\xff\xe0"}
    base.update(fields)
    with pytest.raises(ImageDecodeError):
        decode_compressed(SimpleNamespace(**base))


def test_list_of_ints_data_still_decodes():
    msg = _ns(data=[0, 64, 128, 255])
    assert decode_image(msg)[:, :, 0].tolist() == [[0, 64], [128, 255]]
