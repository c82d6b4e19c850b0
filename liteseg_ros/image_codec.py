"""sensor_msgs Image / CompressedImage <-> numpy: encodings, row padding, byte order, validation.

Ring 3 (ROS edge) that never imports rclpy, cv_bridge or any message package: every function
duck-types on the message fields (``height``, ``width``, ``encoding``, ``is_bigendian``, ``step``,
``data`` for Image; ``format``, ``data`` for CompressedImage), so rclpy messages (``data`` is an
``array.array('B')``) and ``rosbags`` messages (``data`` is a numpy uint8 array) both work and the
node and the bag tool share one converter.

Why our own converter and not ``cv_bridge``: ROS 2 cv_bridge has no wheel (Boost.Python), the PyPI
``cv-bridge`` is a broken ROS 1 repackaging, and ``rosbags-image`` ignores ``step`` and lets raw
numpy/OpenCV exceptions through (a publisher controls every field, so a bad one must become one clear error). This module
follows cv_bridge's semantics (16-bit converted at 16 bits, then scaled to 8 bits as cv_bridge
scales, ``round(v * 255 / 65535)``; cv_bridge's Bayer codes; ``IMREAD_UNCHANGED`` for compressed
data) and reads rows padded by any number of bytes (cv_bridge's Python side misreads rows padded
by a non-multiple of the pixel size) and turns every bad input into
:class:`ImageDecodeError` naming the encoding and sizes.

Hostile input: every size is known before anything is allocated. Raw images are bounded by their
fields; compressed ones by the size their header declares, read the way the decoding library reads
it (a JPEG's start-of-frame as libjpeg finds it, skipping stray bytes before markers; a PNG's IHDR,
which libpng requires first). ``max_pixels`` (the node's ``max_input_pixels``) bounds height x width
per frame, :data:`MAX_BYTES` the decoded buffer. JPEGs are decoded with libjpeg-turbo through
``simplejpeg`` in strict mode, so what libjpeg reports as corrupt (a truncated scan it would pad with
grey, "extraneous bytes before marker", a bad Huffman code) is rejected rather than segmented; a
JPEG whose header declares more 8x8 blocks than its bytes could code (each block costs at least one
bit) is rejected before decoding. PNGs must be whole: every chunk's CRC is checked and IEND must be
present. Without ``simplejpeg`` installed, JPEGs are decoded by OpenCV, which hides libjpeg's
warnings: sizes are still bounded, but corrupt scans are not detected.

Hot path: an unpadded ``bgr8`` (or ``rgb8`` when ``want="rgb8"``) frame decodes with no copy at
all; the returned array then shares memory with ``msg.data`` (read-only when ``data`` is
``bytes``). Every other case makes exactly one pass (``cv2.cvtColor`` or one contiguous copy),
except 16-bit inputs, which are converted at 16 bits and then scaled (a second pass).
"""
from __future__ import annotations

import operator
import re
import zlib
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

try:  # libjpeg-turbo with its warnings exposed (strict mode); OpenCV's decoder swallows them
    import simplejpeg
except ImportError:  # pragma: no cover - simplejpeg is a dependency; see the module docstring
    simplejpeg = None

__all__ = [
    "ImageDecodeError",
    "SUPPORTED_ENCODINGS",
    "OUTPUT_ENCODINGS",
    "MAX_SIDE",
    "MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "decode_image",
    "decode_compressed",
    "decode_any",
    "image_layout",
    "image_to_fields",
    "fill_image",
    "encode_compressed",
]

#: Largest accepted height or width, in pixels.
MAX_SIDE = 16384
#: Largest accepted ``data`` (and ``step * height``, and a compressed image's decoded buffer), in bytes.
MAX_BYTES = 1 << 28
#: Default bound on height x width per frame (``max_pixels``; the node's ``max_input_pixels``): 8k x 8k,
#: above any camera a segmentation node is fed and small enough that a frame's buffers stay < 1 GB.
DEFAULT_MAX_PIXELS = 8192 * 8192

_WANTS = ("bgr8", "rgb8")


class ImageDecodeError(ValueError):
    """A message that cannot be turned into an image; the text names the encoding and sizes."""


@dataclass(frozen=True)
class _Spec:
    """How one input encoding is laid out: bytes per pixel, 16-bit or not, the 8-bit twin."""

    bytes_per_pixel: int
    channels: int  # channels of the 8-bit view handed to OpenCV (1 for mono and Bayer, 2 for YUV 4:2:2)
    sixteen_bit: bool
    eight_bit: str  # the 8-bit encoding with the same layout (itself for 8-bit encodings)


_BAYER = ("rggb", "bggr", "gbrg", "grbg")

_SPECS: dict[str, _Spec] = {
    "bgr8": _Spec(3, 3, False, "bgr8"),
    "rgb8": _Spec(3, 3, False, "rgb8"),
    "bgra8": _Spec(4, 4, False, "bgra8"),
    "rgba8": _Spec(4, 4, False, "rgba8"),
    "mono8": _Spec(1, 1, False, "mono8"),
    "mono16": _Spec(2, 1, True, "mono8"),
    "bgr16": _Spec(6, 3, True, "bgr8"),
    "rgb16": _Spec(6, 3, True, "rgb8"),
    "yuv422": _Spec(2, 2, False, "yuv422"),  # UYVY
    "uyvy": _Spec(2, 2, False, "yuv422"),  # sensor_msgs alias of yuv422
    "yuv422_yuy2": _Spec(2, 2, False, "yuv422_yuy2"),  # YUYV
    "yuyv": _Spec(2, 2, False, "yuv422_yuy2"),  # sensor_msgs alias of yuv422_yuy2
    **{f"bayer_{p}8": _Spec(1, 1, False, f"bayer_{p}8") for p in _BAYER},
    **{f"bayer_{p}16": _Spec(2, 1, True, f"bayer_{p}8") for p in _BAYER},
}

#: Every ``Image.encoding`` that :func:`decode_image` accepts.
SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(_SPECS)


def max_message_bytes(max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """The longest serialized Image or CompressedImage worth deserialising under ``max_pixels``: the
    pixel data the limits allow in the widest encoding, plus 64 KiB for the header's strings. A
    longer message is refused by its length alone, before any copy of it is made (a bag can hold
    gigabytes of zeros that compress to kilobytes)."""
    widest = max(s.bytes_per_pixel for s in _SPECS.values())
    return min(MAX_BYTES, _check_max_pixels(max_pixels) * widest) + (1 << 16)

# (8-bit encoding, want) -> cv2 conversion code; None means the bytes are already in that order.
# Bayer codes as in cv_bridge: OpenCV names a pattern by the 2x2 block starting at pixel (1, 1),
# so ROS bayer_rggb8 (R at (0, 0)) is OpenCV "BayerBG".
_CODES: dict[tuple[str, str], int | None] = {
    ("bgr8", "bgr8"): None,
    ("bgr8", "rgb8"): cv2.COLOR_BGR2RGB,
    ("rgb8", "bgr8"): cv2.COLOR_RGB2BGR,
    ("rgb8", "rgb8"): None,
    ("bgra8", "bgr8"): cv2.COLOR_BGRA2BGR,
    ("bgra8", "rgb8"): cv2.COLOR_BGRA2RGB,
    ("rgba8", "bgr8"): cv2.COLOR_RGBA2BGR,
    ("rgba8", "rgb8"): cv2.COLOR_RGBA2RGB,
    ("mono8", "bgr8"): cv2.COLOR_GRAY2BGR,
    ("mono8", "rgb8"): cv2.COLOR_GRAY2RGB,
    ("yuv422", "bgr8"): cv2.COLOR_YUV2BGR_UYVY,
    ("yuv422", "rgb8"): cv2.COLOR_YUV2RGB_UYVY,
    ("yuv422_yuy2", "bgr8"): cv2.COLOR_YUV2BGR_YUY2,
    ("yuv422_yuy2", "rgb8"): cv2.COLOR_YUV2RGB_YUY2,
    ("bayer_rggb8", "bgr8"): cv2.COLOR_BayerBG2BGR,
    ("bayer_rggb8", "rgb8"): cv2.COLOR_BayerBG2RGB,
    ("bayer_bggr8", "bgr8"): cv2.COLOR_BayerRG2BGR,
    ("bayer_bggr8", "rgb8"): cv2.COLOR_BayerRG2RGB,
    ("bayer_gbrg8", "bgr8"): cv2.COLOR_BayerGR2BGR,
    ("bayer_gbrg8", "rgb8"): cv2.COLOR_BayerGR2RGB,
    ("bayer_grbg8", "bgr8"): cv2.COLOR_BayerGB2BGR,
    ("bayer_grbg8", "rgb8"): cv2.COLOR_BayerGB2RGB,
}


def _check_want(want: str) -> None:
    if want not in _WANTS:
        raise ValueError(f"want={want!r} is not supported; use one of {_WANTS}")


def _check_max_pixels(max_pixels: Any) -> int:
    try:
        value = operator.index(max_pixels)
    except TypeError:
        value = 0
    if value < 1:
        raise ValueError(f"max_pixels={max_pixels!r} must be a positive integer")
    return value


def _byte_view(data: Any) -> np.ndarray:
    """``data`` as a flat uint8 array, without copying when it exposes a contiguous buffer."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise TypeError(f"data is a {data.dtype} array, not uint8")
        return data.reshape(-1)  # a view when contiguous, a copy otherwise
    try:
        return np.frombuffer(data, dtype=np.uint8)  # bytes, bytearray, array.array('B'), memoryview
    except (TypeError, ValueError, BufferError):
        if isinstance(data, (str, bytes)) or not isinstance(data, (list, tuple)):
            raise TypeError(f"data is a {type(data).__name__}, not a byte buffer or a list of bytes") from None
        values = np.asarray(data)  # a list of ints 0..255 (what rclpy also accepts for uint8[])
        if values.size and (values.dtype.kind not in "iu" or values.min() < 0 or values.max() > 255):
            raise ValueError("data is a list that does not hold only integers 0..255") from None
        return values.astype(np.uint8).reshape(-1)


def _nbytes(data: Any) -> int:
    """Length of ``data`` in bytes, or -1 for something that is no byte sequence (reported later)."""
    if isinstance(data, np.ndarray):
        return int(data.nbytes)
    try:
        return memoryview(data).nbytes
    except TypeError:
        try:
            return len(data)
        except TypeError:
            return -1


def _int_field(msg: Any, name: str) -> int:
    """An integer message field; a float (even 2.0), a string or None is an error, not truncated."""
    value = getattr(msg, name)
    try:
        return operator.index(value)  # int, bool, numpy integers; never float or str
    except TypeError:
        raise TypeError(f"{name}={value!r} is a {type(value).__name__}, not an integer") from None


# ---------------------------------------------------------------------------------------- Image


def decode_image(msg: Any, want: str = "bgr8", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a sensor_msgs Image into a C-contiguous ``(H, W, 3)`` uint8 array in ``want`` order.

    ``want`` is ``"bgr8"`` (OpenCV order) or ``"rgb8"``. 16-bit data (honouring ``is_bigendian``)
    is demosaiced or reordered at 16 bits and then scaled to 8 bits by :func:`scale_16_to_8`, mono
    is replicated to three channels, alpha is dropped, Bayer is demosaiced and YUV 4:2:2 converted,
    all as cv_bridge does, so the same message gives the same pixels in a cv_bridge-based tool.
    ``step`` (row padding) is honoured. When no conversion is needed and rows are unpadded the
    result is a view of ``msg.data`` (read-only if ``data`` is ``bytes``); copy it before writing.

    Raises :class:`ImageDecodeError` for an unknown encoding, a ``step`` smaller than a row, a
    ``data`` length other than ``step * height``, an empty or absurdly large image (more than
    ``max_pixels`` pixels), fields of the wrong type, or odd widths where the encoding needs pairs
    of pixels.
    """
    _check_want(want)
    max_pixels = _check_max_pixels(max_pixels)
    try:
        encoding = msg.encoding
        if not isinstance(encoding, str):
            raise TypeError(f"encoding={encoding!r} is a {type(encoding).__name__}, not a string")
        height, width, step = _int_field(msg, "height"), _int_field(msg, "width"), _int_field(msg, "step")
        big_endian = bool(_int_field(msg, "is_bigendian"))
        data = msg.data
    except (AttributeError, TypeError, ValueError) as exc:
        raise ImageDecodeError(f"object of type {type(msg).__name__} is not a usable Image: {exc}") from exc
    nbytes = _nbytes(data)

    def fail(reason: str) -> ImageDecodeError:
        return ImageDecodeError(
            f"cannot decode Image (encoding={encoding!r}, height={height}, width={width}, "
            f"step={step}, len(data)={nbytes}): {reason}"
        )

    spec = _SPECS.get(encoding)
    if spec is None:
        raise fail(f"unsupported encoding; supported: {', '.join(SUPPORTED_ENCODINGS)}")
    if height <= 0 or width <= 0:
        raise fail("image is empty (height and width must be positive)")
    if height > MAX_SIDE or width > MAX_SIDE:
        raise fail(f"image side exceeds {MAX_SIDE} pixels")
    row_bytes = width * spec.bytes_per_pixel
    if step < row_bytes:
        raise fail(f"step is smaller than one row of {width} x {spec.bytes_per_pixel} = {row_bytes} bytes")
    if step * height > MAX_BYTES or nbytes > MAX_BYTES:
        raise fail(f"image exceeds {MAX_BYTES} bytes")
    if height * width > max_pixels:
        raise fail(f"{height} x {width} = {height * width} pixels exceeds max_pixels={max_pixels}")
    if nbytes < 0:
        raise fail(f"data is a {type(data).__name__}, not a byte buffer")
    if nbytes != step * height:
        raise fail(f"data length does not match step * height = {step * height}")
    if spec.channels == 2 and width % 2:
        raise fail("YUV 4:2:2 needs an even width")
    if encoding.startswith("bayer_") and (width < 2 or height < 2):
        raise fail("Bayer demosaicing needs at least 2 x 2 pixels")

    try:
        flat = _byte_view(data)
    except (TypeError, ValueError, OverflowError) as exc:
        raise fail(f"data is not a byte buffer: {exc}") from None
    if flat.size != nbytes:  # e.g. a list holding something other than ints
        raise fail("data is not a byte buffer")
    rows = flat.reshape(height, step)[:, :row_bytes]  # views: no copy so far
    if spec.sixteen_bit:
        return _decode_16(rows, height, width, spec, want, big_endian, fail)
    pixels = rows.reshape(height, width, spec.channels) if spec.channels > 1 else rows
    code = _CODES[(spec.eight_bit, want)]
    if code is None:
        return pixels if pixels.flags.c_contiguous else np.ascontiguousarray(pixels)
    try:
        return cv2.cvtColor(pixels, code)
    except cv2.error as exc:  # not expected after the checks above; never leak a raw cv2 error
        raise fail(f"OpenCV conversion failed: {exc}") from exc


def scale_16_to_8(img: np.ndarray) -> np.ndarray:
    """16-bit samples as 8-bit, the way cv_bridge scales them: ``round(v * 255 / 65535)``.

    cv_bridge converts depth with OpenCV's ``convertTo(..., 255.0 / 65535)``; ``convertScaleAbs`` is
    the same saturating, rounding multiply (the absolute value changes nothing for unsigned input).
    Matching it, rather than taking the high byte, keeps our labels equal to those of a pipeline
    that decodes with cv_bridge (the two differ by one level on about half the samples).
    """
    return cv2.convertScaleAbs(img, alpha=255.0 / 65535.0)


def _decode_16(rows: np.ndarray, height: int, width: int, spec: _Spec, want: str, big_endian: bool,
               fail: Any) -> np.ndarray:
    """A 16-bit Image's rows (``(height, row_bytes)`` uint8) -> 8-bit ``want``.

    Demosaicing and channel reordering run at 16 bits and scaling comes last, in cv_bridge's order
    (for Bayer the order changes the result: averaging first keeps the low bits).
    """
    samples = np.ascontiguousarray(rows).view(">u2" if big_endian else "<u2")
    if samples.dtype != np.dtype(np.uint16):  # not the machine's byte order: one swapping copy
        samples = samples.astype(np.uint16)
    pixels = samples.reshape(height, width, spec.channels) if spec.channels > 1 else samples
    code = _CODES[(spec.eight_bit, want)]
    try:
        if code is not None:
            pixels = cv2.cvtColor(pixels, code)
        return scale_16_to_8(pixels)
    except cv2.error as exc:  # not expected after the caller's checks; never leak a raw cv2 error
        raise fail(f"OpenCV conversion failed: {exc}") from exc


# ------------------------------------------------------------------------------- CompressedImage

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_CODEC_WORD = re.compile(r"\b(jpeg|jpg|png)\b")


def _sniff(head: bytes) -> str | None:
    if head.startswith(_JPEG_MAGIC):
        return "jpeg"
    if head.startswith(_PNG_MAGIC):
        return "png"
    return None


@dataclass(frozen=True)
class _Header:
    """What a compressed stream's header says about the decoded image, before it is decoded."""

    height: int
    width: int
    channels: int  # of the buffer the decoder allocates (an upper bound where it depends on later chunks)
    bytes_per_sample: int
    min_bytes: int = 0  # the least a stream of this size can be (0 = no bound known); see _jpeg_header
    ncomp: int = 0  # JPEG colour components (0 for PNG)


# Start-of-frame markers (libjpeg's jdmarker.c): Huffman-coded ones cost at least one bit per 8x8 block.
_SOF_HUFFMAN = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7))
_SOF_ARITHMETIC = frozenset((0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))


def _jpeg_header(data: bytes) -> tuple[int, _Header] | str:
    """(SOF marker, header) of a JPEG stream, found as libjpeg finds it; a reason string if it has none.

    libjpeg's marker reader (``next_marker``) skips any bytes that are not 0xFF before a marker (a
    warning, not an error) and any 0xFF fill bytes, skips a segment by its length field, and takes
    the first start-of-frame marker. A size check that stops at the first stray byte (as ours once
    did) lets a header with one junk byte before SOF through while libjpeg still decodes it: this
    walks the stream the same way, with ``bytes.find`` so a long run of junk costs no Python loop.
    """
    n, i = len(data), 2  # data starts with SOI (FF D8), checked by the caller
    while True:
        i = data.find(b"\xff", i)
        if i < 0:
            return "no start-of-frame marker (SOF) before the end of the data"
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            return "no start-of-frame marker (SOF) before the end of the data"
        marker = data[i]
        i += 1
        if marker == 0x00:  # a stuffed 0xFF in entropy data: not a marker
            continue
        if marker in (0xD8, 0xD9, 0xDA):  # SOI again, EOI, SOS: libjpeg needs a SOF before these
            return f"marker 0x{marker:02X} before any start-of-frame marker (SOF)"
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # TEM, RSTn: no length field
            continue
        if i + 2 > n:
            return "data ends inside a marker segment"
        length = data[i] << 8 | data[i + 1]
        if marker in _SOF_HUFFMAN or marker in _SOF_ARITHMETIC:
            if length < 8 or i + 8 > n:
                return "start-of-frame segment is cut short"
            height, width, ncomp = data[i + 3] << 8 | data[i + 4], data[i + 5] << 8 | data[i + 6], data[i + 7]
            if data[i + 2] != 8:  # 12-bit and lossless JPEGs: not what cameras send; OpenCV's path hides warnings
                return f"unsupported jpeg: {data[i + 2]}-bit samples (only 8-bit JPEGs are supported)"
            if ncomp not in (1, 3, 4):
                return f"unsupported jpeg: {ncomp} colour components (gray 1, YCbCr/RGB 3 or CMYK 4 are)"
            # gray stays one channel until _to_want; YCbCr and CMYK become BGR
            header = _Header(height, width, 1 if ncomp == 1 else 3, 1, ncomp=ncomp)
            if marker in _SOF_HUFFMAN:
                # Every 8x8 block of the full-resolution component has a DC coefficient coded with a
                # Huffman code of at least one bit, so the stream holds >= blocks / 8 bytes.
                blocks = -(-height // 8) * -(-width // 8)
                header = _Header(header.height, header.width, header.channels, 1, blocks // 8, ncomp)
            return marker, header
        i += max(length, 2)  # libjpeg's skip_variable: a length below 2 skips nothing beyond itself


_PNG_CHANNELS = {0: 1, 2: 3, 3: 4, 4: 4, 6: 4}  # colour type -> OpenCV channels (palette/GA: BGRA at most)
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_PNG_MAX_CHUNKS = 1 << 17


def _png_header(data: bytes) -> _Header | str:
    """The IHDR of a PNG stream (libpng requires it first, so its size is what OpenCV allocates)."""
    if len(data) < 33 or data[12:16] != b"IHDR" or data[8:12] != b"\x00\x00\x00\x0d":
        return "corrupt png data: no 13-byte IHDR chunk first"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    depth, colour = data[24], data[25]
    if depth not in _PNG_DEPTHS.get(colour, ()):
        return f"corrupt png data: IHDR bit depth {depth} with colour type {colour} is not valid PNG"
    return _Header(height, width, _PNG_CHANNELS[colour], 2 if depth == 16 else 1)


def _png_damage(data: bytes) -> str | None:
    """None when every chunk is whole (CRC checked) up to IEND, else what is wrong.

    OpenCV decodes a truncated PNG in part and libpng only warns about some bad CRCs; checking every
    chunk here (zlib.crc32, far faster than decoding) rejects truncated and bit-flipped files instead.
    """
    n = len(data)
    i, chunks, seen_idat = 8, 0, False
    while True:
        if i + 12 > n:
            return "corrupt png data: truncated (no IEND chunk)"
        length = int.from_bytes(data[i:i + 4], "big")
        kind = data[i + 4:i + 8]
        end = i + 12 + length
        if length > n or end > n:
            return f"corrupt png data: truncated inside a {kind!r} chunk"
        if zlib.crc32(data[i + 4:end - 4]) != int.from_bytes(data[end - 4:end], "big"):
            return f"corrupt png data: CRC mismatch in a {kind!r} chunk"
        seen_idat |= kind == b"IDAT"
        if kind == b"IEND":
            break
        chunks += 1
        if chunks > _PNG_MAX_CHUNKS:
            return f"png has more than {_PNG_MAX_CHUNKS} chunks"
        i = end
    if not seen_idat:
        return "corrupt png data: no IDAT chunk"
    return None


def decode_compressed(msg: Any, want: str = "bgr8", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a sensor_msgs CompressedImage (JPEG or PNG) into a ``(H, W, 3)`` uint8 array.

    ``msg.format`` may be a bare codec (``"jpeg"``, ``"png"``) or image_transport's long form
    (``"rgb8; jpeg compressed bgr8"``); an empty format is accepted and the codec is read from the
    data. PNGs are decoded with ``cv2.IMREAD_UNCHANGED`` so 16-bit PNGs keep their depth before being
    scaled by :func:`scale_16_to_8`; gray is replicated, alpha dropped, channels put in ``want`` order.

    Raises :class:`ImageDecodeError` (naming the format and ``len(data)``) for an unsupported
    format (including ``compressedDepth``), data that is not JPEG/PNG, a declared size above the
    limits (``max_pixels`` pixels, :data:`MAX_SIDE` per side, :data:`MAX_BYTES` decoded), or bytes
    the decoder reports as corrupt (see the module docstring).
    """
    _check_want(want)
    max_pixels = _check_max_pixels(max_pixels)
    try:
        fmt = msg.format
        data = msg.data
    except AttributeError as exc:
        raise ImageDecodeError(
            f"object of type {type(msg).__name__} is not a usable CompressedImage: {exc}"
        ) from exc
    nbytes = _nbytes(data)
    size_note = ""

    def fail(reason: str) -> ImageDecodeError:
        return ImageDecodeError(
            f"cannot decode CompressedImage (format={fmt!r}, len(data)={nbytes}{size_note}): {reason}"
        )

    if not isinstance(fmt, str):
        raise fail(f"format is a {type(fmt).__name__}, not a string")
    lowered = fmt.lower()
    if "compresseddepth" in lowered:
        raise fail("compressedDepth images are not supported")
    named = _CODEC_WORD.search(lowered)
    if named is None and lowered.strip():
        raise fail("unsupported format; expected one naming jpeg or png")
    if nbytes < 0:
        raise fail(f"data is a {type(data).__name__}, not a byte buffer")
    if nbytes == 0:
        raise fail("data is empty")
    if nbytes > MAX_BYTES:
        raise fail(f"data exceeds {MAX_BYTES} bytes")
    try:
        buf = _byte_view(data)
    except (TypeError, ValueError, OverflowError) as exc:
        raise fail(f"data is not a byte buffer: {exc}") from None
    raw = buf.tobytes() if not isinstance(data, bytes) else data  # one copy: header walks and decoders need bytes
    codec = _sniff(raw[:8])
    if codec is None:
        raise fail(f"data is not a JPEG or PNG stream (starts with {raw[:8]!r})")
    found = _jpeg_header(raw) if codec == "jpeg" else _png_header(raw)
    if isinstance(found, str):
        raise fail(found if codec == "png" or "jpeg" in found else f"corrupt jpeg data: {found}")
    header = found[1] if codec == "jpeg" else found
    size_note = f", height={header.height}, width={header.width}"
    if min(header.height, header.width) <= 0 or max(header.height, header.width) > MAX_SIDE:
        raise fail(f"declared image size is empty or exceeds {MAX_SIDE} pixels per side")
    pixels = header.height * header.width
    if pixels > max_pixels:
        raise fail(f"declared {pixels} pixels exceed max_pixels={max_pixels}")
    decoded = pixels * header.channels * header.bytes_per_sample
    if decoded > MAX_BYTES:
        raise fail(f"decoding would take {decoded} bytes, which exceeds {MAX_BYTES}")
    if nbytes < header.min_bytes:
        raise fail(f"corrupt jpeg data: {nbytes} bytes cannot code the declared size (at least one bit per "
                   f"8x8 block: >= {header.min_bytes} bytes); a truncated stream or a decompression bomb")
    damage = _png_damage(raw) if codec == "png" else None
    if damage is not None:
        raise fail(damage)
    if codec == "jpeg" and simplejpeg is not None and header.ncomp in (1, 3):
        return _decode_jpeg_strict(raw, header, want, fail)  # CMYK (rare) goes through OpenCV below
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise fail(f"OpenCV could not decode the {codec} data: {exc}") from exc
    if img is None or img.size == 0:
        raise fail(f"corrupt {codec} data (OpenCV could not decode it)")
    if img.shape[:2] != (header.height, header.width):
        raise fail(f"decoded to {img.shape[1]} x {img.shape[0]}, not the declared size")
    return _to_want(img, want, fail)


def _decode_jpeg_strict(raw: bytes, header: _Header, want: str, fail: Any) -> np.ndarray:
    """libjpeg-turbo via simplejpeg, strict: libjpeg's "Corrupt JPEG data" warnings are errors."""
    try:
        # The header as libjpeg itself reads it: must agree with ours, which the limits were checked on.
        height, width, _, _ = simplejpeg.decode_jpeg_header(raw, strict=True)
    except ValueError as exc:
        raise fail(f"corrupt jpeg data: {exc}") from None
    if (height, width) != (header.height, header.width):
        raise fail(f"corrupt jpeg data: libjpeg reads size {width} x {height} from the header")
    try:
        return simplejpeg.decode_jpeg(raw, colorspace="RGB" if want == "rgb8" else "BGR", strict=True)
    except ValueError as exc:
        raise fail(f"corrupt jpeg data: {exc}") from None


def _to_want(img: np.ndarray, want: str, fail: Any) -> np.ndarray:
    """An OpenCV-decoded image (gray/BGR/BGRA, 8 or 16 bit) as uint8 in ``want`` order."""
    if img.dtype == np.uint16:
        img = scale_16_to_8(img)
    elif img.dtype != np.uint8:
        raise fail(f"decoded to unsupported depth {img.dtype}")
    channels = 1 if img.ndim == 2 else img.shape[2]
    if channels == 2:  # gray + alpha
        img, channels = np.ascontiguousarray(img[:, :, 0]), 1
    order = "rgb" if want == "rgb8" else "bgr"
    codes = {
        (1, "bgr"): cv2.COLOR_GRAY2BGR,
        (1, "rgb"): cv2.COLOR_GRAY2RGB,
        (3, "bgr"): None,
        (3, "rgb"): cv2.COLOR_BGR2RGB,
        (4, "bgr"): cv2.COLOR_BGRA2BGR,
        (4, "rgb"): cv2.COLOR_BGRA2RGB,
    }
    if (channels, order) not in codes:
        raise fail(f"decoded to unsupported channel count {channels}")
    code = codes[(channels, order)]
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    return np.ascontiguousarray(img) if code is None else cv2.cvtColor(img, code)


def decode_any(msg: Any, want: str = "bgr8", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an Image or a CompressedImage, chosen by which fields the message has."""
    if hasattr(msg, "encoding"):
        return decode_image(msg, want, max_pixels)
    if hasattr(msg, "format"):
        return decode_compressed(msg, want, max_pixels)
    raise ImageDecodeError(
        f"object of type {type(msg).__name__} has neither `encoding` (Image) nor `format` (CompressedImage)"
    )


# ------------------------------------------------------------------------------ numpy -> message

# encoding -> (dtype, channels); the arrays our node publishes and what decode_image reads back.
_OUTPUTS: dict[str, tuple[np.dtype, int]] = {
    "mono8": (np.dtype(np.uint8), 1),
    "mono16": (np.dtype(np.uint16), 1),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgb8": (np.dtype(np.uint8), 3),
    "bgra8": (np.dtype(np.uint8), 4),
    "rgba8": (np.dtype(np.uint8), 4),
}
#: Every encoding :func:`image_to_fields` and :func:`fill_image` can write.
OUTPUT_ENCODINGS: tuple[str, ...] = tuple(_OUTPUTS)


def image_layout(arr: np.ndarray, encoding: str) -> tuple[dict[str, Any], np.ndarray]:
    """The Image fields for ``arr`` except ``data`` (``{height, width, encoding, is_bigendian, step}``)
    and the C-contiguous array whose bytes are ``data`` (16-bit little-endian; ``arr`` itself when it
    already is). No pixel is copied unless ``arr`` is strided or big-endian. Validates as
    :func:`image_to_fields`.
    """
    if encoding not in _OUTPUTS:
        raise ValueError(f"cannot write encoding {encoding!r}; supported: {', '.join(OUTPUT_ENCODINGS)}")
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"encoding {encoding!r} needs a numpy array, got {type(arr).__name__}")
    dtype, channels = _OUTPUTS[encoding]
    shape_ok = arr.ndim == 2 if channels == 1 else (arr.ndim == 3 and arr.shape[2] == channels)
    if not shape_ok or arr.dtype != dtype:
        want_shape = "(H, W)" if channels == 1 else f"(H, W, {channels})"
        raise ValueError(
            f"encoding {encoding!r} needs a {want_shape} {dtype} array, got shape {arr.shape} dtype {arr.dtype}"
        )
    height, width = int(arr.shape[0]), int(arr.shape[1])
    if not (0 < height <= MAX_SIDE and 0 < width <= MAX_SIDE):
        raise ValueError(
            f"encoding {encoding!r}: image size {height} x {width} is empty or exceeds {MAX_SIDE} per side"
        )
    if dtype.itemsize > 1:
        arr = arr.astype(dtype.newbyteorder("<"), copy=False)
    fields = {"height": height, "width": width, "encoding": encoding, "is_bigendian": 0,
              "step": width * channels * dtype.itemsize}
    return fields, np.ascontiguousarray(arr)


def image_to_fields(arr: np.ndarray, encoding: str) -> dict[str, Any]:
    """The Image fields for ``arr``: ``{height, width, encoding, is_bigendian, step, data}``.

    ``arr`` must match ``encoding``: ``(H, W)`` for mono8/mono16, ``(H, W, 3)`` for rgb8/bgr8,
    ``(H, W, 4)`` for rgba8/bgra8, uint8 (uint16 for mono16). Rows are written unpadded and 16-bit
    little-endian; ``data`` is ``bytes`` (one copy). Raises ``ValueError`` naming the encoding,
    shape and dtype on a mismatch.
    """
    fields, pixels = image_layout(arr, encoding)
    fields["data"] = pixels.tobytes()
    return fields


def fill_image(msg: Any, arr: np.ndarray, encoding: str, header: Any = None) -> Any:
    """Set the Image fields of an existing message (rclpy or rosbags) from ``arr``; returns ``msg``.

    ``data`` is assigned as ``bytes`` for rclpy messages (assigning a numpy array there converts
    element by element, ~1 s at 1080p); ``rosbags`` messages, whose serializer needs a numpy array,
    get a zero-copy ``np.frombuffer`` over those bytes. ``header``, when given, is assigned by
    reference (not copied).
    """
    fields = image_to_fields(arr, encoding)
    if isinstance(getattr(msg, "data", None), np.ndarray):
        fields["data"] = np.frombuffer(fields["data"], dtype=np.uint8)
    for name, value in fields.items():
        setattr(msg, name, value)
    if header is not None:
        msg.header = header
    return msg


def encode_compressed(arr: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> tuple[str, bytes]:
    """Encode ``arr`` (gray ``(H, W)`` or BGR/BGRA, uint8; uint16 for PNG) as ``(format, bytes)``.

    The format string follows image_transport, e.g. ``"bgr8; jpeg compressed bgr8"``. ``quality``
    (1-100) is the JPEG quality and is ignored for PNG. Meant for tests and tools.
    """
    codec = {"jpeg": "jpeg", "jpg": "jpeg", "png": "png"}.get(str(fmt).lower())
    if codec is None:
        raise ValueError(f"fmt={fmt!r} is not supported; use 'jpeg' or 'png'")
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"quality={quality} must be in 1..100")
    if not isinstance(arr, np.ndarray) or arr.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"encode_compressed needs a uint8/uint16 numpy array, got {getattr(arr, 'dtype', type(arr))}")
    channels = 1 if arr.ndim == 2 else (arr.shape[2] if arr.ndim == 3 else 0)
    names = {1: "mono", 3: "bgr", 4: "bgra"}
    if channels not in names or arr.size == 0:
        raise ValueError(f"encode_compressed needs an (H, W), (H, W, 3) or (H, W, 4) array, got shape {arr.shape}")
    if codec == "jpeg" and (arr.dtype == np.uint16 or channels == 4):
        raise ValueError(f"JPEG cannot hold a {arr.dtype} array of shape {arr.shape}; use png")
    encoding = f"{names[channels]}{8 * arr.dtype.itemsize}"
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if codec == "jpeg" else []
    ok, out = cv2.imencode(".jpg" if codec == "jpeg" else ".png", arr, params)
    if not ok:
        raise ValueError(f"OpenCV failed to encode a {arr.dtype} array of shape {arr.shape} as {codec}")
    return f"{encoding}; {codec} compressed {encoding}", out.tobytes()
