"""Crafted hostile CompressedImage payloads: decompression bombs and header tricks, made on demand.

Each entry is small on disk (bytes to a few hundred KB) but declares, or really decodes to, a huge
image. They are generated here (``make_corpus.py`` writes them to ``corpus/bombs/``) rather than
committed as binaries, so what each one is stays readable. Every one must be rejected by
``image_codec.decode_compressed`` with :class:`ImageDecodeError` before it allocates the image; the
tests check that and the peak memory of a process decoding all of them.

The tricks, all found against earlier versions of the codec or taken from how libjpeg/libpng read:

* a stray byte before the JPEG SOF marker: libjpeg skips it (a warning) and decodes the size it then
  finds, while a header walk that stops at the first non-0xFF byte sees no size at all;
* fill bytes (runs of 0xFF) and an APP segment before SOF, which libjpeg also skips;
* a ~600-byte baseline JPEG declaring 16384 x 16384 (libjpeg pads the missing scan with grey);
* the same inside the pixel limit (8000 x 8000), caught only by the bits-per-block bound;
* a real, valid 1-bit PNG of 16384 x 16384 (~32 KB: deflate of zeros) and a valid 16-bit RGBA PNG
  of 8192 x 8192 (~0.5 MB) that decodes to 512 MiB;
* a PNG whose IHDR declares 16384 x 16384 RGBA followed by a tiny IDAT (OpenCV allocates from IHDR).
"""
from __future__ import annotations

import struct
import zlib
from collections.abc import Callable

import cv2
import numpy as np


def _small_jpeg(gray: bool = True) -> bytes:
    img = np.random.default_rng(0).integers(0, 256, (16, 16) if gray else (16, 16, 3), dtype=np.uint8)
    ok, out = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return out.tobytes()


def _patch_sof(data: bytes, height: int, width: int, before_sof: bytes = b"") -> bytes:
    i = data.index(b"\xff\xc0")
    return data[:i] + before_sof + data[i:i + 5] + struct.pack(">HH", height, width) + data[i + 9:]


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _zlib_zero_rows(height: int, row_bytes: int) -> bytes:
    """The zlib stream of ``height`` PNG rows of zeros (filter byte 0), built in well under a second.

    After a full flush deflate forgets its history, so every 4 MiB block of zeros compresses to the
    same bytes: compress one, repeat it, deflate the remainder as the final block, and append the
    Adler-32 of the whole (computed, since the compressor never saw the repeats).
    """
    row = bytes(1 + row_bytes)
    per_block = max(1, (1 << 22) // len(row))
    blocks, rest = divmod(height, per_block)
    block = row * per_block
    raw = zlib.compressobj(9, zlib.DEFLATED, -15)
    coded = raw.compress(block) + raw.flush(zlib.Z_FULL_FLUSH) if blocks else b""
    tail = zlib.compressobj(9, zlib.DEFLATED, -15)
    last = tail.compress(row * rest) + tail.flush()
    adler = 1
    for _ in range(blocks):
        adler = zlib.adler32(block, adler)
    adler = zlib.adler32(row * rest, adler)
    return b"\x78\xda" + coded * blocks + last + struct.pack(">I", adler)


def _png(width: int, height: int, depth: int, colour: int, row_bytes: int, idat: bytes | None = None) -> bytes:
    """A PNG with an all-zero image (a real, valid file) unless ``idat`` is given."""
    if idat is None:
        idat = _zlib_zero_rows(height, row_bytes)
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _app(payload: bytes) -> bytes:
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


BOMBS: dict[str, Callable[[], bytes]] = {
    "jpeg_stray_byte_20000x20000": lambda: _patch_sof(_small_jpeg(), 20000, 20000, b"\x00"),
    "jpeg_stray_byte_16384x16384": lambda: _patch_sof(_small_jpeg(), 16384, 16384, b"\x00"),
    "jpeg_stray_bytes_8000x8000": lambda: _patch_sof(_small_jpeg(), 8000, 8000, b"junk\x00\x01"),
    "jpeg_fill_bytes_8000x8000": lambda: _patch_sof(_small_jpeg(), 8000, 8000, b"\xff" * 64),
    "jpeg_app_segment_8000x8000": lambda: _patch_sof(_small_jpeg(), 8000, 8000, _app(b"\xff\xc0" + bytes(40))),
    "jpeg_16384x16384": lambda: _patch_sof(_small_jpeg(), 16384, 16384),
    "jpeg_8000x8000": lambda: _patch_sof(_small_jpeg(), 8000, 8000),
    "jpeg_colour_8192x8192": lambda: _patch_sof(_small_jpeg(gray=False), 8192, 8192),
    "png_1bit_16384x16384": lambda: _png(16384, 16384, 1, 0, 16384 // 8),
    "png_16bit_rgba_8192x8192": lambda: _png(8192, 8192, 16, 6, 8192 * 8),
    "png_ihdr_16384x16384_tiny_idat": lambda: _png(16384, 16384, 8, 6, 0, idat=zlib.compress(bytes(1000))),
}


def make(name: str) -> bytes:
    return BOMBS[name]()


def all_bombs() -> dict[str, bytes]:
    return {name: make(name) for name in BOMBS}
