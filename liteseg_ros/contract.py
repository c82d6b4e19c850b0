"""What the node publishes, and what ``liteseg bag`` writes: one contract for both.

Ring 3 (ROS edge), but imports no ROS package: messages are made through a *type factory*, a
function ``msgtype -> class`` that the caller supplies. The node passes rclpy's generated classes
(``rosidl_runtime_py``), the bag tool passes the ``rosbags`` typestore's; both accept the same
keyword fields and numpy arrays for sequences, so one function builds each message for both.

Why one module: the bag tool promises "the node's outputs under the node's names". Kept in two
places, the topic names, the fields of each message and the batching rule drift apart one small
edit at a time. Here each is defined once:

- :data:`OUTPUTS` (defined in ``segmentation``, below the pipeline that derives its types from it)
  and :func:`camera_outputs`: every per-camera output (suffix under the camera's prefix, message
  type, encoding, product, the parameter that switches it on, what it needs);
- :func:`wants`: which products a frame must make, from the rows, the parameters and (for the node)
  which topics have subscribers;
- :func:`frame_messages`, :func:`stats_message`, :func:`info_message`, :func:`label_info_message`,
  :func:`label_camera_info`: Segmentation -> messages, each carrying the input header unchanged;
- :class:`BatchRule`: which frames of several cameras share one forward.

``test/test_contract.py`` checks the node and the bag tool produce identical messages for the
same frames.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from liteseg_ros.segmentation import (  # noqa: F401 - the output table and its types, re-exported
    BOUNDARY,
    CAMERA_INFO,
    GROUP,
    IMAGE,
    OUR_PACKAGE,
    OUTPUTS,
    PER_GROUP_PRODUCTS,
    PRODUCTS,
    STATS,
    TOGGLES,
    Output,
    Segmentation,
    Wants,
)

REGION_OF_INTEREST = "sensor_msgs/msg/RegionOfInterest"
INFO = f"{OUR_PACKAGE}/msg/SegmentationInfo"
MASK_GROUP = f"{OUR_PACKAGE}/msg/MaskGroup"
LABEL_INFO = "vision_msgs/msg/LabelInfo"

#: A function returning the message class of a type name ('sensor_msgs/msg/Image').
TypeFactory = Callable[[str], Any]

#: Node-wide latched outputs (one per node, not per camera).
INFO_SUFFIX = "info"
LABEL_INFO_SUFFIX = "label_info"
MASK_PREFIX = "masks/"


def mask_output(group: str) -> Output:
    """The ``masks/<group>`` row of one mask group."""
    return next(o for o in OUTPUTS if o.per_group and o.product == "masks").for_group(group)


def camera_prefix(node_prefix: str, camera: str) -> str:
    """``~`` or ``/liteseg`` plus the camera's name: the single-camera node's camera is named ''."""
    return f"{node_prefix}/{camera}" if camera else node_prefix


def camera_outputs(groups: Iterable[str], have_custom: bool, values: Mapping[str, Any] | None = None,
                   live_inputs: bool = True) -> list[Output]:
    """The outputs a camera has: all of them for the node (its toggles change live, so every
    publisher exists), or with ``values`` only those switched on (the bag tool, whose settings are
    fixed for the run). ``live_inputs=False`` leaves out what needs live inputs (camera_info).
    Per-group rows become one output per group, in the groups' order."""
    groups = list(groups)
    outs: list[Output] = []
    for o in OUTPUTS:
        if (have_custom or not o.custom) and (live_inputs or not o.live_input):
            outs += [o.for_group(g) for g in groups] if o.per_group else [o]
    if values is None:
        return outs
    return [o for o in outs if (o.toggle is None or values[o.toggle]) and (o.group is None or o.group in groups)]


def wants(values: Mapping[str, Any], groups: Iterable[str], have_custom: bool,
          listening: Callable[[str], bool] = lambda suffix: True) -> Wants:
    """The products a frame must make: those of the outputs switched on by their parameter, with
    what they need (our messages, a mask group), and, for the node, listened to.

    ``listening(suffix)`` says whether the output has a subscriber (the bag tool writes everything
    switched on, so its default says yes). A product is made when any output carrying it is wanted
    (the label for its image or its camera_info).
    """
    on: dict[str, Any] = {p: frozenset() if p in PER_GROUP_PRODUCTS else False for p in PRODUCTS}
    for o in camera_outputs(groups, have_custom, values):
        if o.product is None or not listening(o.suffix):
            continue
        on[o.product] = on[o.product] | {o.group} if o.product in PER_GROUP_PRODUCTS else True
    return Wants(**on)


# ------------------------------------------------------------------------------------------ messages
#: The frame outputs sent as images, then the rest, in the order a frame's messages are sent.
_SENT = sorted((o for o in OUTPUTS if o.product is not None and not o.live_input), key=lambda o: o.sent)


def _images(o: Output, seg: Segmentation, w: Wants) -> list[tuple[str, np.ndarray]]:
    """(suffix, pixels) of one image row's outputs the frame has and wants (one per group for a per-group row)."""
    if o.per_group:
        made = getattr(seg, o.product)
        return [(o.for_group(g).suffix, made[g]) for g in w.groups(o.product, made)]
    pixels = getattr(seg, o.product)
    return [(o.suffix, pixels)] if getattr(w, o.product) and pixels is not None else []


def image_outputs(seg: Segmentation, w: Wants) -> list[tuple[str, np.ndarray, str]]:
    """(suffix, pixels, encoding) of every image output the frame has and wants, with its row's encoding."""
    return [(s, a, o.encoding) for o in _SENT if o.encoding is not None for s, a in _images(o, seg, w)]


def boundary_message(types: TypeFactory, header, seg: Segmentation):
    """DrivableBoundary: per image column, the topmost row of the drivable region touching the bottom."""
    h, w = seg.label.shape[:2]
    return types(BOUNDARY)(header=header, width=int(w), height=int(h),
                           row=np.ascontiguousarray(seg.boundary.row, np.int32),
                           drivable_fraction=float(seg.boundary.drivable_fraction))


def frame_messages(types: TypeFactory, header, seg: Segmentation, w: Wants,
                   image: Callable[[np.ndarray, str, Any], Any]) -> list[tuple[str, Any]]:
    """(suffix, message) of one frame's outputs, in the table's sending order, each with the input
    ``header`` unchanged.

    ``image(pixels, encoding, header)`` makes an Image the caller's way: the node serializes it
    straight from the pixels (``wire.image_bytes``), the bag tool fills a rosbags message. Other
    messages come from :data:`MESSAGES`, by message type.
    """
    out = []
    for o in _SENT:
        if o.encoding is not None:
            out += [(s, image(a, o.encoding, header)) for s, a in _images(o, seg, w)]
        elif getattr(w, o.product) and getattr(seg, o.product) is not None:
            out.append((o.suffix, MESSAGES[o.msgtype](types, header, seg)))
    return out


#: How a frame's non-image outputs are built, by message type.
MESSAGES: dict[str, Callable[[TypeFactory, Any, Segmentation], Any]] = {BOUNDARY: boundary_message}


@dataclass(frozen=True)
class FrameCounts:
    """A camera's counters as FrameStats reports them."""

    received: int
    processed: int
    dropped: int
    rejected: int


def pipeline_ms(timings: Mapping[str, float]) -> float:
    """The pipeline's share of a frame's time: preprocess + infer + postprocess."""
    return sum(float(timings.get(k, 0.0)) for k in ("preprocess", "infer", "postprocess"))


def stats_message(types: TypeFactory, header, camera: str, seg: Segmentation, decode_ms: float,
                  publish_ms: float, age_ms: float, counts: FrameCounts):
    """FrameStats of one frame; total = decode + pipeline + publish (what the frame cost the node)."""
    t = seg.timings
    return types(STATS)(
        header=header, camera=camera, decode_ms=float(decode_ms), preprocess_ms=float(t.get("preprocess", 0.0)),
        infer_ms=float(t.get("infer", 0.0)), postprocess_ms=float(t.get("postprocess", 0.0)),
        publish_ms=float(publish_ms), total_ms=float(decode_ms + pipeline_ms(t) + publish_ms),
        input_age_ms=float(age_ms), received=counts.received, processed=counts.processed,
        dropped=counts.dropped, rejected=counts.rejected)


def stamp(types: TypeFactory, ns: int):
    """builtin_interfaces/Time from nanoseconds."""
    return types("builtin_interfaces/msg/Time")(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def info_message(types: TypeFactory, stamp_ns: int, pipeline, source):
    """SegmentationInfo (latched ~/info): the model, engine, network size, classes, colours, groups."""
    classes = pipeline.classes
    cfg = pipeline.config
    info = pipeline.engine.info
    groups = [types(MASK_GROUP)(name=g, class_names=[classes.names[i] for i in ids],
                                class_ids=np.asarray(ids, np.uint8))
              for g, ids in cfg.mask_groups.items()]
    return types(INFO)(
        header=types("std_msgs/msg/Header")(stamp=stamp(types, stamp_ns), frame_id=""),
        model_name=source.name, backbone=source.backbone, backend=info.backend, device=info.device,
        precision=info.precision, license=getattr(source, "license", "") or "",
        network_width=int(cfg.network_size[1]), network_height=int(cfg.network_size[0]),
        class_names=list(classes.names), colors=np.asarray(classes.flat_colors(), np.uint8),
        ignore_label=int(classes.ignore_label), mask_groups=groups)


def label_info_message(types: TypeFactory, stamp_ns: int, pipeline):
    """vision_msgs/LabelInfo (latched ~/label_info): what Nav2's semantic segmentation layer reads."""
    return types(LABEL_INFO)(
        header=types("std_msgs/msg/Header")(stamp=stamp(types, stamp_ns), frame_id=""),
        class_map=[types("vision_msgs/msg/VisionClass")(class_id=i, class_name=n)
                   for i, n in enumerate(pipeline.classes.names)],
        threshold=float(pipeline.config.confidence_threshold))


def scaled_intrinsics(k: Sequence[float], p: Sequence[float], sx: float, sy: float) -> tuple[list[float], list[float]]:
    """A camera's K (3x3) and P (3x4) for an image scaled by (sx, sy): rows 0 and 1 scale, row 2 stays."""
    k, p = [float(v) for v in k], [float(v) for v in p]
    for arr, stride in ((k, 3), (p, 4)):
        for col in range(stride):
            arr[col] *= sx
            arr[stride + col] *= sy
    return k, p


def label_camera_info(types: TypeFactory, src, header, seg: Segmentation):
    """The input camera_info for the label image: K, P and the ROI scaled to the label's resolution
    (unchanged at input resolution), the label's height and width, the frame's header.

    The ROI's offsets and size scale with the image and are truncated to whole pixels, as
    image_proc's resize does, so a rectifying consumer crops the same region of the label as of
    the camera image. The label's own size says at which resolution it was made: the live
    ``output_resolution`` may have changed since this frame went through the pipeline.
    """
    made_at = "input" if seg.label.shape[:2] == tuple(seg.geometry.input_size) else "network"
    sx, sy = seg.geometry.scale_xy(made_at)
    k, p = scaled_intrinsics(src.k, src.p, sx, sy)
    roi = src.roi
    scaled_roi = types(REGION_OF_INTEREST)(x_offset=int(roi.x_offset * sx), y_offset=int(roi.y_offset * sy),
                                           height=int(roi.height * sy), width=int(roi.width * sx),
                                           do_rectify=bool(roi.do_rectify))
    height, width = seg.label.shape[:2]
    return types(CAMERA_INFO)(header=header, height=height, width=width, distortion_model=src.distortion_model,
                              d=np.asarray(src.d, np.float64), k=np.asarray(k, np.float64),
                              r=np.asarray(src.r, np.float64), p=np.asarray(p, np.float64),
                              binning_x=src.binning_x, binning_y=src.binning_y, roi=scaled_roi)


# ------------------------------------------------------------------------------------------ batching
@dataclass(frozen=True)
class BatchRule:
    """Which frames of several cameras share one forward (the node's live rule, the bag's replayed one).

    One frame per camera per batch, so no camera starves another; with ``batch_cameras`` the frames
    of a batch arrived within ``window_s`` of its first; without, every batch is one frame and
    cameras take turns. The node waits up to the window for the cameras still missing; the bag tool
    applies the same rule to recorded times.
    """

    window_s: float
    batch_cameras: bool

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> BatchRule:
        return cls(window_s=float(values["batch_window_ms"]) / 1e3, batch_cameras=bool(values["batch_cameras"]))

    def max_frames(self, n_cameras: int) -> int:
        return max(1, n_cameras) if self.batch_cameras else 1

    def waits(self, n_cameras: int) -> bool:
        """Whether, after a first frame, it is worth waiting for other cameras."""
        return n_cameras > 1 and self.batch_cameras and self.window_s > 0

    def admits(self, batch: Sequence[tuple[Any, float]], camera: Any, t: float, n_cameras: int) -> bool:
        """Whether the frame of ``camera`` at time ``t`` (seconds) joins ``batch`` [(camera, t), ...]."""
        if not batch:
            return True
        return (len(batch) < self.max_frames(n_cameras) and all(c is not camera for c, _ in batch)
                and t - batch[0][1] <= self.window_s)

    def order(self, n_cameras: int, start: int) -> list[int]:
        """Camera indices in the order they are served: from ``start`` round, so turns are fair."""
        return [(start + k) % n_cameras for k in range(n_cameras)]
