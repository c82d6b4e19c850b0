"""Facts about an ONNX file that need neither onnx nor torch: is it one, and what its metadata says.

Ring 2, standard library only: the runtime and the engines ask these at every start-up, and a start
on an ONNX file (or on a cached export) must not pay for importing onnx (~0.6 s) or torch (~2.7 s).
"""
from __future__ import annotations

import os
from pathlib import Path

#: The suffix of an ONNX model file, compared without case (``model.ONNX`` is one too).
ONNX_SUFFIX = ".onnx"


def is_onnx_file(path: str | os.PathLike | None) -> bool:
    """Whether ``path`` names an ONNX model (by its suffix, any case): the one place that decides."""
    return path is not None and str(path).lower().endswith(ONNX_SUFFIX)


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _fields(buf: bytes):
    """(field number, wire type, value) of one protobuf message; length-delimited values as bytes."""
    i, n = 0, len(buf)
    while i < n:
        tag, i = _varint(buf, i)
        num, wire = tag >> 3, tag & 7
        if wire == 0:
            val, i = _varint(buf, i)
        elif wire == 1:
            val, i = buf[i:i + 8], i + 8
        elif wire == 2:
            size, i = _varint(buf, i)
            val, i = buf[i:i + size], i + size
        elif wire == 5:
            val, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield num, wire, val


def onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``liteseg.*`` metadata of an ONNX file (empty for foreign or unreadable files), read from
    the protobuf without importing onnx.

    ``ModelProto.metadata_props`` is field 14, a repeated ``StringStringEntryProto`` (key = 1,
    value = 2); the graph and weights (field 7) are skipped by their length. The one metadata reader
    of the package: importing onnx costs ~0.6 s and torch more, which a start on an ONNX file or a
    cached export needs neither of.
    """
    data = Path(path).read_bytes()
    out: dict[str, str] = {}
    try:
        for num, wire, val in _fields(data):
            if num == 14 and wire == 2:
                entry = {k: v for k, w, v in _fields(val) if w == 2}
                key = entry.get(1, b"").decode("utf-8", "replace")
                if key.startswith("liteseg."):
                    out[key] = entry.get(2, b"").decode("utf-8", "replace")
    except (IndexError, ValueError):
        return {}
    return out
