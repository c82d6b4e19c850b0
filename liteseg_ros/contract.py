"""What the node publishes, and what ``liteseg bag`` writes: one contract for both.

Ring 3 (ROS edge), but imports no ROS package: messages are made through a *type factory*, a
function ``msgtype -> class`` that the caller supplies. The node passes rclpy's generated classes
(``rosidl_runtime_py``), the bag tool passes the ``rosbags`` typestore's; both accept the same
keyword fields and numpy arrays for sequences, so one function builds each message for both.

Why one module: the bag tool promises "the node's outputs under the node's names". Kept in two
places, the topic names, the fields of each message and the batching rule drift apart one small
edit at a time. Here each is defined once:

- :data:`OUTPUTS` and :func:`camera_outputs`: every per-camera output (suffix under the camera's
  prefix, message type, the parameter that switches it on);
- :func:`wants`: which outputs a frame must produce, from the parameters and (for the node) which
  topics have subscribers;
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

from liteseg_ros.segmentation import BOUNDARY_GROUP, Segmentation, Wants

OUR_PACKAGE = "liteseg_ros"
IMAGE = "sensor_msgs/msg/Image"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
REGION_OF_INTEREST = "sensor_msgs/msg/RegionOfInterest"
BOUNDARY = f"{OUR_PACKAGE}/msg/DrivableBoundary"
STATS = f"{OUR_PACKAGE}/msg/FrameStats"
INFO = f"{OUR_PACKAGE}/msg/SegmentationInfo"
MASK_GROUP = f"{OUR_PACKAGE}/msg/MaskGroup"
LABEL_INFO = "vision_msgs/msg/LabelInfo"

#: A function returning the message class of a type name ('sensor_msgs/msg/Image').
TypeFactory = Callable[[str], Any]


@dataclass(frozen=True)
class Output:
    """One per-camera output topic.

    suffix: the name under the camera's prefix (``label`` -> ``~/label`` or ``~/front/label``);
    toggle: the boolean parameter that switches it on (None: always, while someone listens);
    custom: needs our own messages (built by colcon or scripts/setup_venv.sh);
    live_input: needs a live input besides the image (camera_info), so a bag cannot make it;
    group: needs this mask group to be configured (the boundary is drawn from the drivable mask).
    """

    suffix: str
    msgtype: str
    toggle: str | None
    custom: bool = False
    live_input: bool = False
    group: str | None = None


#: The fixed per-camera outputs, in publishing order; ``masks/<group>`` follow, one per mask group.
OUTPUTS: tuple[Output, ...] = (
    Output("label", IMAGE, "publish_label"),
    Output("label/camera_info", CAMERA_INFO, "publish_label", live_input=True),
    Output("color", IMAGE, "publish_color"),
    Output("overlay", IMAGE, "publish_overlay"),
    Output("confidence", IMAGE, "publish_confidence"),
    Output("drivable_boundary", BOUNDARY, "publish_boundary", custom=True, group=BOUNDARY_GROUP),
    Output("stats", STATS, None, custom=True),
)
#: Node-wide latched outputs (one per node, not per camera).
INFO_SUFFIX = "info"
LABEL_INFO_SUFFIX = "label_info"
MASK_PREFIX = "masks/"


def mask_output(group: str) -> Output:
    return Output(f"{MASK_PREFIX}{group}", IMAGE, "publish_masks")


def camera_prefix(node_prefix: str, camera: str) -> str:
    """``~`` or ``/liteseg`` plus the camera's name: the single-camera node's camera is named ''."""
    return f"{node_prefix}/{camera}" if camera else node_prefix


def camera_outputs(groups: Iterable[str], have_custom: bool, values: Mapping[str, Any] | None = None,
                   live_inputs: bool = True) -> list[Output]:
    """The outputs a camera has: all of them for the node (its toggles change live, so every
    publisher exists), or with ``values`` only those switched on (the bag tool, whose settings are
    fixed for the run). ``live_inputs=False`` leaves out what needs live inputs (camera_info)."""
    groups = list(groups)
    outs = [o for o in OUTPUTS if (have_custom or not o.custom) and (live_inputs or not o.live_input)]
    outs += [mask_output(g) for g in groups]
    if values is None:
        return outs
    return [o for o in outs if (o.toggle is None or values[o.toggle]) and (o.group is None or o.group in groups)]


def wants(values: Mapping[str, Any], groups: Iterable[str], have_custom: bool,
          listening: Callable[[str], bool] = lambda suffix: True) -> Wants:
    """The outputs a frame must produce: switched on by its parameter and, for the node, listened to.

    ``listening(suffix)`` says whether the output has a subscriber (the bag tool writes everything
    switched on, so its default says yes). The label is made when its image or its camera_info is
    listened to; the boundary needs our messages and a drivable group.
    """
    groups = list(groups)

    def on(suffix: str, toggle: str) -> bool:
        return bool(values[toggle]) and listening(suffix)

    return Wants(label=on("label", "publish_label") or on("label/camera_info", "publish_label"),
                 confidence=on("confidence", "publish_confidence"), color=on("color", "publish_color"),
                 overlay=on("overlay", "publish_overlay"),
                 masks=frozenset(g for g in groups if on(f"{MASK_PREFIX}{g}", "publish_masks")),
                 boundary=(have_custom and BOUNDARY_GROUP in groups and on("drivable_boundary", "publish_boundary")))


# ------------------------------------------------------------------------------------------ messages
def image_outputs(seg: Segmentation, w: Wants) -> list[tuple[str, np.ndarray, str]]:
    """(suffix, pixels, encoding) of every image output the frame has and wants.

    label and confidence are mono8 trainIds / confidence x 255, color is rgb8 (the palette's RGB),
    overlay is bgr8 (like the camera image it is drawn on), masks are mono8 0/255.
    """
    out = []
    if w.label and seg.label is not None:
        out.append(("label", seg.label, "mono8"))
    if w.confidence and seg.confidence is not None:
        out.append(("confidence", seg.confidence, "mono8"))
    if w.color and seg.color is not None:
        out.append(("color", seg.color, "rgb8"))
    if w.overlay and seg.overlay is not None:
        out.append(("overlay", seg.overlay, "bgr8"))
    for g, m in seg.masks.items():
        if w.masks is None or g in w.masks:
            out.append((f"{MASK_PREFIX}{g}", m, "mono8"))
    return out


def boundary_message(types: TypeFactory, header, seg: Segmentation):
    """DrivableBoundary: per image column, the topmost row of the drivable region touching the bottom."""
    h, w = seg.label.shape[:2]
    return types(BOUNDARY)(header=header, width=int(w), height=int(h),
                           row=np.ascontiguousarray(seg.boundary.row, np.int32),
                           drivable_fraction=float(seg.boundary.drivable_fraction))


def frame_messages(types: TypeFactory, header, seg: Segmentation, w: Wants,
                   image: Callable[[np.ndarray, str, Any], Any]) -> list[tuple[str, Any]]:
    """(suffix, message) of one frame's outputs, each with the input ``header`` unchanged.

    ``image(pixels, encoding, header)`` makes an Image the caller's way: the node serializes it
    straight from the pixels (``wire.image_bytes``), the bag tool fills a rosbags message.
    """
    out = [(suffix, image(arr, enc, header)) for suffix, arr, enc in image_outputs(seg, w)]
    if w.boundary and seg.boundary is not None:
        out.append(("drivable_boundary", boundary_message(types, header, seg)))
    return out


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
