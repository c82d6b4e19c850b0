"""What one frame's segmentation is, what is published of it, and the geometry both pipeline stages share.

Ring 2 (numpy and OpenCV only; never torch, rclpy, message packages or the node). The output table
(:data:`OUTPUTS`: topic suffix, message type, encoding, the product it carries, its toggle, what it
needs) lives here, below the pipeline, because the pipeline's types are derived from it: a
:class:`Segmentation` has one field per product, :class:`Wants` one flag per product; the contract
(ROS edge) re-exports the table and derives the rest. ``pipeline`` (pre/post-processing with numpy
and OpenCV on the host) and ``pipeline_torch`` (the same on the engine's GPU) both build a
:class:`Segmentation` from these pieces, each with one registered producer per product, so their
results are defined in one place: the settings (:class:`PipelineConfig`), which outputs are wanted (:class:`Wants`), how a
frame maps into the network input and back (:class:`Geometry`, :func:`nearest_maps`, the exact and
cheap nearest upsample :class:`NearestUpsample`) and the free-space boundary
(:func:`free_space_boundary`, :func:`upsampled_boundary`).
"""
from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, make_dataclass, replace
from typing import Any

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


# ------------------------------------------------------------------------------------------ the output table
IMAGE = "sensor_msgs/msg/Image"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
OUR_PACKAGE = "liteseg_ros"
BOUNDARY = f"{OUR_PACKAGE}/msg/DrivableBoundary"
STATS = f"{OUR_PACKAGE}/msg/FrameStats"
#: The placeholder in a per-group output's suffix (``masks/<group>`` -> ``masks/drivable``).
GROUP = "<group>"


@dataclass(frozen=True)
class Output:
    """One per-camera output topic: a row of :data:`OUTPUTS`.

    suffix: the name under the camera's prefix (``label`` -> ``~/label`` or ``~/front/label``);
    per-group outputs have ``<group>`` in it and one topic per mask group;
    msgtype: its message type; encoding: the Image encoding of an image output (None otherwise);
    product: the :class:`Segmentation` field it carries (None: made from the frame's counters);
    toggle: the boolean parameter that switches it on (None: always, while someone listens; the
    ``publish_*`` parameters are made from these, their descriptions from the rows);
    custom: needs our own messages (built by colcon or scripts/setup_venv.sh);
    live_input: needs a live input besides the image (camera_info), so a bag cannot make it;
    group: needs this mask group to be configured (the boundary is drawn from the drivable mask;
    ``masks/drivable`` needs ``drivable``);
    sent: its place among one frame's messages (the node sends a frame's outputs in this order).
    """

    suffix: str
    msgtype: str
    encoding: str | None
    product: str | None
    toggle: str | None
    custom: bool = False
    live_input: bool = False
    group: str | None = None
    sent: int = 0

    @property
    def per_group(self) -> bool:
        return GROUP in self.suffix

    def for_group(self, group: str) -> Output:
        """This per-group output's row for one mask group."""
        return replace(self, suffix=self.suffix.replace(GROUP, group), group=group)


#: THE per-camera outputs, in advertising order: everything else (which outputs a frame wants,
#: the fields of a Segmentation, the ``publish_*`` parameters, which images a frame sends with
#: which encoding) is derived from these rows, and ``test_contract`` checks the shipped YAML and
#: the README's topics table list exactly them. A new output is a row here plus a producer of its
#: product per pipeline backend (``pipeline.PRODUCERS``, ``pipeline_torch.PRODUCERS``).
OUTPUTS: tuple[Output, ...] = (
    Output("label", IMAGE, "mono8", "label", "publish_label", sent=0),
    Output("label/camera_info", CAMERA_INFO, None, "label", "publish_label", live_input=True),
    Output("color", IMAGE, "rgb8", "color", "publish_color", sent=2),
    Output("overlay", IMAGE, "bgr8", "overlay", "publish_overlay", sent=3),
    Output("confidence", IMAGE, "mono8", "confidence", "publish_confidence", sent=1),
    Output("drivable_boundary", BOUNDARY, None, "boundary", "publish_boundary", custom=True,
           group=BOUNDARY_GROUP, sent=5),
    Output("stats", STATS, None, None, None, custom=True),
    Output(f"masks/{GROUP}", IMAGE, "mono8", "masks", "publish_masks", sent=4),
)
#: The product every frame has (the others are made only when wanted).
LABEL = "label"
#: Every product an output carries, in table order; those of per-group outputs are group -> array dicts.
PRODUCTS: tuple[str, ...] = tuple(dict.fromkeys(o.product for o in OUTPUTS if o.product is not None))
PER_GROUP_PRODUCTS: frozenset[str] = frozenset(o.product for o in OUTPUTS if o.per_group and o.product)
#: Every ``publish_*`` toggle, in table order.
TOGGLES: tuple[str, ...] = tuple(dict.fromkeys(o.toggle for o in OUTPUTS if o.toggle is not None))


class _WantsMethods:
    """What :class:`Wants` adds to its fields (one per product: a bool, or for a per-group product
    the groups wanted, None = every group)."""

    @classmethod
    def all(cls):
        return cls()

    @classmethod
    def only_label(cls):
        return cls(**{p: (p == LABEL) if p not in PER_GROUP_PRODUCTS else frozenset() for p in PRODUCTS})

    def of(self, product: str) -> bool:
        """Whether ``product`` is wanted at all (for a per-group product: for at least one group)."""
        v = getattr(self, product)
        return v is None or bool(v) if product in PER_GROUP_PRODUCTS else bool(v)

    def groups(self, product: str, available) -> list[str]:
        """The groups of ``available`` (in its order) a per-group product is wanted for."""
        v = getattr(self, product)
        return list(available) if v is None else [g for g in available if g in v]

    def any(self) -> bool:
        return any(self.of(p) for p in PRODUCTS)


#: Which products to compute, one field per product of :data:`OUTPUTS`. The node sets these from
#: subscriber counts: nothing unused is made.
Wants = make_dataclass(
    "Wants", [(p, "frozenset[str] | None", None) if p in PER_GROUP_PRODUCTS else (p, bool, True) for p in PRODUCTS],
    bases=(_WantsMethods,), frozen=True, namespace={"__module__": __name__})


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


#: All outputs for one frame, one field per product of :data:`OUTPUTS` (the label (h, w) uint8
#: trainIds, 255 = ignore, at output resolution; confidence (h, w) uint8 max softmax x 255; color
#: (h, w, 3) RGB; overlay (H, W, 3) BGR, always input resolution; masks group -> (h, w) 0/255;
#: boundary a :class:`Boundary`), plus the frame's geometry and its timings (ms: preprocess, infer,
#: postprocess). Products not asked for (Wants) are None / empty.
Segmentation = make_dataclass(
    "Segmentation",
    [(LABEL, np.ndarray), ("geometry", Geometry),
     *((p, "dict[str, np.ndarray]", field(default_factory=dict)) if p in PER_GROUP_PRODUCTS else (p, Any, None)
       for p in PRODUCTS if p != LABEL),
     ("timings", "dict[str, float]", field(default_factory=dict))],
    namespace={"__module__": __name__})


def free_space_boundary(mask: np.ndarray) -> Boundary:
    """Per column, the top row of the run of mask pixels that starts at the bottom row (-1 if none).

    A column-wise flood from the bottom: what a planner reads as "free up to here" per image column.
    The scan runs on the transposed, bottom-first mask so each column is one contiguous row for
    ``argmax`` (a strided column scan is several times slower at camera sizes).
    """
    m = np.ascontiguousarray(mask.astype(bool, copy=False)).view(np.uint8)
    h = m.shape[0]
    blocked = cv2.flip(cv2.transpose(m), 1) == 0  # (w, h): row x = column x, bottom pixel first
    first_blocked = np.where(blocked.any(axis=1), blocked.argmax(axis=1), h)
    row = (h - first_blocked).astype(np.int32)
    row[blocked[:, 0]] = -1
    return Boundary(row=row, drivable_fraction=float(np.count_nonzero(m)) / max(1, m.size))


def _bgra32(palette_bgr: np.ndarray) -> np.ndarray:
    """(256, 3) uint8 BGR table -> (256,) uint32 whose bytes in memory are B, G, R, 255."""
    bgra = np.concatenate([palette_bgr, np.full((len(palette_bgr), 1), 255, np.uint8)], axis=1)
    return np.ascontiguousarray(bgra).view(np.uint32).reshape(-1)


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
    many times as it is copied (integers, then the same division as on the full mask); the per-row
    sums go through a float32 matrix-vector product, exact because every partial sum is an integer
    no larger than the output width (far below 2**24).
    """
    up = NearestUpsample.of(mask.shape[:2], out_size)
    sub = mask[up.used_rows]  # the sampled source rows, in order (all of them when upsampling)
    b = free_space_boundary(sub)
    top = np.where(b.row >= 0, up.first_row[np.maximum(b.row, 0)], -1).astype(np.int32)
    per_row = (sub != 0).astype(np.float32) @ up.col_counts  # output pixels set per sampled source row
    drivable = int(up.row_counts @ per_row.astype(np.int64))
    h, w = out_size
    return Boundary(row=np.ascontiguousarray(top[up.cols]), drivable_fraction=float(drivable) / max(1, h * w))


@dataclass(frozen=True)
class NearestUpsample:
    """``cv2.resize(a, INTER_NEAREST)`` from one size to another, exactly, in two cheap steps.

    OpenCV picks an output pixel's source column from the widths alone and its source row from the
    heights alone (:func:`nearest_maps`), so the resize is a column step at source height followed
    by whole-row copies (memcpy). When the width grows by a whole factor k (640 -> 1920: k = 3) and
    OpenCV's columns are exactly ``x // k``, the column step is ``cv2.merge`` of k copies of the
    image: k interleaved channels are each source pixel repeated k times, one vectorised pass;
    otherwise it is OpenCV's own nearest resize to the output width at source height. Together
    this beats OpenCV's per-pixel nearest resize of the whole image severalfold, and the per-pixel
    work of a product (a LUT, a channel shuffle) can run between the two steps, on 1/k of the
    pixels. Cached per size pair, immutable, shared between threads.
    """

    src: tuple[int, int]
    dst: tuple[int, int]
    rows: np.ndarray  # (dst h,) source row of each output row
    cols: np.ndarray  # (dst w,) source column of each output column
    width_factor: int  # k when cols == arange(dst w) // k, else 0
    used_rows: np.ndarray  # the distinct source rows sampled, ascending
    first_row: np.ndarray  # for each of them, the first output row that samples it
    row_counts: np.ndarray  # int64: how many output rows sample it
    col_counts: np.ndarray  # float32 (src w,): how many output columns sample each source column

    @classmethod
    def of(cls, src: tuple[int, int], dst: tuple[int, int]) -> NearestUpsample:
        key = (tuple(src), tuple(dst))
        with _MAPS_LOCK:
            hit = _UPSAMPLE_CACHE.get(key)
        if hit is not None:
            return hit
        rows, cols = nearest_maps(*key)
        (_, sw), (_, dw) = key
        k = dw // sw if dw % sw == 0 else 0
        if k and not np.array_equal(cols, np.arange(dw) // k):
            k = 0
        used, first, counts = np.unique(rows, return_index=True, return_counts=True)
        arrays = (used, first, counts.astype(np.int64), np.bincount(cols, minlength=sw).astype(np.float32))
        for a in arrays:
            a.setflags(write=False)
        up = cls(key[0], key[1], rows, cols, k, *arrays)
        with _MAPS_LOCK:
            if len(_UPSAMPLE_CACHE) >= 64:
                _UPSAMPLE_CACHE.clear()
            _UPSAMPLE_CACHE[key] = up
        return up

    def columns(self, a: np.ndarray) -> np.ndarray:
        """Step 1: ``a`` (source height; uint8 (h, w), or (h, w, c) pixels of up to 4 bytes in all)
        taken to the output width. (h, w) int32/uint32 arrays count as one 4-byte pixel each."""
        if self.src[1] == self.dst[1]:
            return a
        k = self.width_factor
        if k == 1:
            return a
        if k and a.ndim == 2:
            plane = a.view(np.int32) if a.dtype == np.uint32 else a  # OpenCV has no uint32
            return cv2.merge([plane] * k).view(a.dtype).reshape(a.shape[0], self.dst[1])
        if a.ndim == 2 and a.dtype.itemsize == 4:  # a 4-byte pixel OpenCV resizes as 4 channels
            four = a.view(np.uint8).reshape(*a.shape, 4)
            out = cv2.resize(four, (self.dst[1], a.shape[0]), interpolation=cv2.INTER_NEAREST)
            return out.view(a.dtype).reshape(a.shape[0], self.dst[1])
        return cv2.resize(a, (self.dst[1], a.shape[0]), interpolation=cv2.INTER_NEAREST)

    def rows_of(self, a: np.ndarray) -> np.ndarray:
        """Step 2: rows of ``a`` (source height) copied to the output height, as one new C-contiguous array."""
        if self.src[0] == self.dst[0]:
            return np.ascontiguousarray(a)
        return np.take(a, self.rows, axis=0)

    def __call__(self, a: np.ndarray) -> np.ndarray:
        return self.rows_of(self.columns(a))


_UPSAMPLE_CACHE: dict[tuple[tuple[int, int], tuple[int, int]], NearestUpsample] = {}
