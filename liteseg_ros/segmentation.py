"""What one frame's segmentation is, and the geometry both pipeline stages share.

Ring 2 (numpy and OpenCV only; never torch, rclpy, message packages or the node). ``pipeline``
(pre/post-processing with numpy and OpenCV on the host) and ``pipeline_torch`` (the same on the
engine's GPU) both build a :class:`Segmentation` from these pieces, so their results are defined
in one place: the settings (:class:`PipelineConfig`), which outputs are wanted (:class:`Wants`), how a
frame maps into the network input and back (:class:`Geometry`, :func:`nearest_maps`) and the
free-space boundary (:func:`free_space_boundary`, :func:`upsampled_boundary`).
"""
from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

import cv2
import numpy as np

from liteseg_ros.classes import IMAGENET_MEAN, IMAGENET_STD
from liteseg_ros.defaults import NETWORK_SIZE

RESIZE_MODES = ("stretch", "letterbox")
OUTPUT_RESOLUTIONS = ("input", "network")
#: The mask group whose free-space boundary is computed (``~/drivable_boundary``).
BOUNDARY_GROUP = "drivable"


@dataclass(frozen=True)
class PipelineConfig:
    """Everything that shapes the outputs. Frozen: live changes swap in a new config atomically."""

    network_size: tuple[int, int] = NETWORK_SIZE  # (height, width)
    resize_mode: str = "stretch"
    output_resolution: str = "input"
    overlay_alpha: float = 0.5
    confidence_threshold: float = 0.0
    mask_groups: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        h, w = self.network_size
        if h < 8 or w < 8:
            raise ValueError(f"network_size {self.network_size} is too small (>= 8x8)")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode {self.resize_mode!r} is not one of {RESIZE_MODES}")
        if self.output_resolution not in OUTPUT_RESOLUTIONS:
            raise ValueError(f"output_resolution {self.output_resolution!r} is not one of {OUTPUT_RESOLUTIONS}")
        if not 0.0 <= self.overlay_alpha <= 1.0:
            raise ValueError(f"overlay_alpha {self.overlay_alpha} is not in [0, 1]")
        if not 0.0 <= self.confidence_threshold <= 1.0:
            raise ValueError(f"confidence_threshold {self.confidence_threshold} is not in [0, 1]")


@dataclass(frozen=True)
class Wants:
    """Which outputs to compute. The node sets these from subscriber counts: nothing unused is made."""

    label: bool = True
    confidence: bool = True
    color: bool = True
    overlay: bool = True
    masks: frozenset[str] | None = None  # None = every group
    boundary: bool = True

    @classmethod
    def all(cls) -> Wants:
        return cls()

    @classmethod
    def only_label(cls) -> Wants:
        return cls(confidence=False, color=False, overlay=False, masks=frozenset(), boundary=False)

    def any(self) -> bool:
        return (self.label or self.confidence or self.color or self.overlay or self.boundary
                or self.masks is None or bool(self.masks))


@dataclass(frozen=True)
class Geometry:
    """How one input frame maps into the network input (and back)."""

    input_size: tuple[int, int]  # (h, w) of the frame
    network_size: tuple[int, int]  # (h, w)
    content: tuple[int, int, int, int]  # (top, left, height, width) of the image inside the network input

    @classmethod
    def fit(cls, input_size: tuple[int, int], network_size: tuple[int, int], mode: str) -> Geometry:
        ih, iw = input_size
        nh, nw = network_size
        if mode == "stretch":
            return cls(input_size, network_size, (0, 0, nh, nw))
        s = min(nh / ih, nw / iw)
        ch, cw = max(1, min(nh, round(ih * s))), max(1, min(nw, round(iw * s)))
        return cls(input_size, network_size, ((nh - ch) // 2, (nw - cw) // 2, ch, cw))

    def output_size(self, output_resolution: str) -> tuple[int, int]:
        """Label size: the frame's, or the network's (the letterbox content area, not the padding)."""
        if output_resolution == "input":
            return self.input_size
        return self.content[2], self.content[3]

    def crop(self, a: np.ndarray) -> np.ndarray:
        """The content area of a network-size map (drops letterbox padding)."""
        t, left, h, w = self.content
        return a[t:t + h, left:left + w]

    def scale_xy(self, output_resolution: str) -> tuple[float, float]:
        """(sx, sy) from input pixel coordinates to output pixel coordinates (for camera_info)."""
        oh, ow = self.output_size(output_resolution)
        return ow / self.input_size[1], oh / self.input_size[0]


@dataclass
class Boundary:
    """Free-space boundary: per column the top row of the drivable region touching the bottom row."""

    row: np.ndarray  # (W,) int32, -1 where the bottom pixel is not drivable
    drivable_fraction: float


@dataclass
class Segmentation:
    """All outputs for one frame; fields not asked for (Wants) are None / empty."""

    label: np.ndarray  # (h, w) uint8 trainIds, 255 = ignore; at output resolution
    geometry: Geometry
    confidence: np.ndarray | None = None  # (h, w) uint8, max softmax x 255, output resolution
    color: np.ndarray | None = None  # (h, w, 3) uint8 RGB, output resolution
    overlay: np.ndarray | None = None  # (H, W, 3) uint8 BGR, always input resolution
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # group -> (h, w) uint8 0/255
    boundary: Boundary | None = None
    timings: dict[str, float] = field(default_factory=dict)  # ms: preprocess, infer, postprocess


def free_space_boundary(mask: np.ndarray) -> Boundary:
    """Per column, the top row of the run of mask pixels that starts at the bottom row (-1 if none).

    A column-wise flood from the bottom: what a planner reads as "free up to here" per image column.
    """
    m = mask.astype(bool, copy=False)
    h = m.shape[0]
    blocked_from_bottom = ~m[::-1]  # row 0 = bottom row
    first_blocked = np.where(blocked_from_bottom.any(axis=0), blocked_from_bottom.argmax(axis=0), h)
    row = (h - first_blocked).astype(np.int32)
    row[~m[-1]] = -1
    return Boundary(row=row, drivable_fraction=float(np.count_nonzero(m)) / max(1, m.size))


def _bgra32(palette_bgr: np.ndarray) -> np.ndarray:
    """(256, 3) uint8 BGR table -> (256,) uint32 whose bytes in memory are B, G, R, 255."""
    bgra = np.concatenate([palette_bgr, np.full((len(palette_bgr), 1), 255, np.uint8)], axis=1)
    return np.ascontiguousarray(bgra).view(np.uint32).reshape(-1)


def _resize_nearest(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``a`` nearest-neighbour resampled to ``size`` (h, w); ``a`` itself when it already has that size."""
    if a.shape[:2] == size:
        return a
    return cv2.resize(a, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)


_MAPS_CACHE: dict[tuple[tuple[int, int], tuple[int, int]], tuple[np.ndarray, np.ndarray]] = {}
_MAPS_LOCK = threading.Lock()


def nearest_maps(src_size: tuple[int, int], dst_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols): the source row of every output row and the source column of every output column
    of ``cv2.resize(..., INTER_NEAREST)`` from ``src_size`` to ``dst_size`` (both (h, w)).

    OpenCV picks each output row's source row from the heights alone and each column's from the
    widths alone, so resizing an index ramp reproduces its exact choices (rounding included) and
    ``a[rows][:, cols]`` equals ``cv2.resize(a, ...)``. Cached per size pair (a camera has one).
    """
    key = (tuple(src_size), tuple(dst_size))
    with _MAPS_LOCK:
        hit = _MAPS_CACHE.get(key)
    if hit is not None:
        return hit
    (sh, sw), (dh, dw) = key
    cols = cv2.resize(np.arange(sw, dtype=np.int32)[None, :], (dw, 1), interpolation=cv2.INTER_NEAREST)
    rows = cv2.resize(np.arange(sh, dtype=np.int32)[:, None], (1, dh), interpolation=cv2.INTER_NEAREST)
    maps = (rows.reshape(dh).copy(), cols.reshape(dw).copy())
    for m in maps:
        m.setflags(write=False)
    with _MAPS_LOCK:
        if len(_MAPS_CACHE) >= 64:  # bounded: a handful of cameras and live resolution changes
            _MAPS_CACHE.clear()
        _MAPS_CACHE[key] = maps
    return maps


def upsampled_boundary(mask: np.ndarray, out_size: tuple[int, int]) -> Boundary:
    """``free_space_boundary`` of the nearest-neighbour upsample of ``mask`` to ``out_size``, exactly,
    without making the upsampled mask.

    The upsampled column x is the source column ``cols[x]`` with source row ``rows[y]`` at output
    row y, and ``rows`` never decreases. So the run from the bottom in the output is the run in the
    source (restricted to the rows that are sampled), and its top output row is the first output
    row that samples the run's top source row. The drivable fraction counts each source pixel as
    many times as it is copied (integers, then the same division as on the full mask).
    """
    rows, cols = nearest_maps(mask.shape[:2], out_size)
    used, first, counts = np.unique(rows, return_index=True, return_counts=True)
    sub = mask[used]  # the sampled source rows, in order (all of them when upsampling)
    b = free_space_boundary(sub)
    top = np.where(b.row >= 0, first[np.maximum(b.row, 0)], -1).astype(np.int32)
    col_counts = np.bincount(cols, minlength=mask.shape[1]).astype(np.int64)
    drivable = int(counts.astype(np.int64) @ (sub.astype(bool) @ col_counts))
    h, w = out_size
    return Boundary(row=np.ascontiguousarray(top[cols]), drivable_fraction=float(drivable) / max(1, h * w))
