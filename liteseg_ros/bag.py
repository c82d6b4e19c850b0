"""Offline bag -> bag segmentation (``liteseg bag``) and a ROS 2 bag player (``liteseg play``).

Ring 3 (ROS edge). ``liteseg bag`` needs no ROS install: it reads and writes rosbag2 bags (sqlite3
and mcap) with the ``rosbags`` library and never imports rclpy or a message package; ``play``
imports rclpy lazily inside :func:`play_bag`. It never has its own copy of the per-frame work: the
pipeline comes from :func:`liteseg_ros.runtime.build_pipeline` (the node's parameter names and
validation from :mod:`liteseg_ros.params`) and every frame goes through ``Pipeline.run``; images are
decoded and written with :mod:`liteseg_ros.image_codec`, exactly as the node does.

Output layout: the names the node named ``<node_name>`` (default ``liteseg``) publishes.

- one ``--topic``: ``/liteseg/label``, ``/color``, ``/overlay``, ``/confidence``, ``/masks/<group>``,
  ``/drivable_boundary``, ``/stats`` and the latched ``/liteseg/info`` -- the single-camera node;
- several ``--topic``: the node's multi-camera layout (parameter ``cameras``): ``/liteseg/<camera>/label``
  ... per camera and one ``/liteseg/info``. Camera names come from ``--cameras`` (in ``--topic``
  order), else from the params file's ``cameras`` (when it names as many cameras as there are
  topics), else from each topic (:func:`camera_names`): the last namespace segment
  (``/front/image_raw`` -> ``front``, ``/cam/left/image_raw`` -> ``left``, ``/image_left`` ->
  ``image_left``), more segments where that is ambiguous (``/a/cam/image``, ``/b/cam/image`` ->
  ``a_cam``, ``b_cam``), the whole topic where even that is (``/cam/image_raw``, ``/cam/image_rect``
  -> ``cam_image_raw``, ``cam_image_rect``).

Batching follows the node's rule on the bag's timeline: with several cameras (and ``batch_cameras``)
one forward takes at most one frame per camera, whose recorded times lie within ``batch_window_ms``
of the first; ``--batch N`` instead batches every N frames.

Every output carries the input frame's header (stamp and frame_id) and is written at the input
message's recorded (receive) time. Input topics, all of them, are copied byte for byte (with their
recorded QoS; where none was recorded: sensor-data QoS for images, reliable for the rest). Outputs
are recorded with the node's QoS: reliable, and transient local for ~/info. Not written (they need
live inputs or packages the bag typestore lacks): ~/label/camera_info, ~/label_info, /diagnostics.
"""
from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from liteseg_ros import image_codec, params

#: Message types ``liteseg bag`` segments, and the transport each one is.
IMAGE_TYPES = {"sensor_msgs/msg/Image": "raw", "sensor_msgs/msg/CompressedImage": "compressed"}
STORAGES = ("sqlite3", "mcap")
OUR_PACKAGE = "liteseg_ros"
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class BagError(RuntimeError):
    """A bag, topic or option that cannot be used; the message says what to change."""


# ------------------------------------------------------------------------------------------ types
def find_msg_dir() -> Path | None:
    """Where our ``msg/*.msg`` live (source tree or installed share/liteseg_ros/msg), or None."""
    from liteseg_ros.share import ShareFileError, share_file

    try:
        return share_file("msg/SegmentationInfo.msg").parent
    except ShareFileError:
        return None


def make_typestore(msg_dir: Path | None = None):
    """The Jazzy typestore plus our own messages (``liteseg_ros/msg/*``) parsed from ``msg/*.msg``.

    Returns ``(typestore, have_custom)``; ``have_custom`` is False when the .msg files are not
    found, and then ~/info, ~/stats and ~/drivable_boundary are not written (as the node does
    without its built messages).
    """
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    ts = get_typestore(Stores.ROS2_JAZZY)
    msg_dir = msg_dir or find_msg_dir()
    if msg_dir is None:
        return ts, False
    typs: dict = {}
    for f in sorted(msg_dir.glob("*.msg")):
        typs.update(get_types_from_msg(f.read_text(), f"{OUR_PACKAGE}/msg/{f.stem}"))
    ts.register(typs)
    return ts, True


# ------------------------------------------------------------------------------------------ QoS
def _qos(reliable: bool, transient_local: bool = False, depth: int = 5):
    from rosbags.interfaces import (
        Qos,
        QosDurability,
        QosHistory,
        QosLiveliness,
        QosReliability,
        QosTime,
    )

    zero = QosTime(0, 0)  # "default" = infinite deadline/lifespan/lease
    return Qos(history=QosHistory.KEEP_LAST, depth=depth,
               reliability=QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
               durability=QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE,
               deadline=zero, lifespan=zero, liveliness=QosLiveliness.AUTOMATIC,
               liveliness_lease_duration=zero, avoid_ros_namespace_conventions=False)


def sensor_qos():
    """REP-2003 sensor data: best effort, keep last 5, volatile (what cameras offer)."""
    return _qos(reliable=False, depth=5)


def output_qos():
    """The node's publishers: reliable, keep last 5, volatile."""
    return _qos(reliable=True, depth=5)


def latched_qos():
    """The node's ~/info: reliable, transient local, keep last 1."""
    return _qos(reliable=True, transient_local=True, depth=1)


# ------------------------------------------------------------------------------------------ names
_CAMERA_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")  # what the node's `cameras` parameter accepts


def _identifier(parts: Sequence[str]) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", "_".join(parts))
    return name if _CAMERA_RE.match(name) else f"cam_{name}"


def camera_names(topics: Sequence[str], given: Sequence[str] | None = None) -> dict[str, str]:
    """Input topic -> camera name ('' = the single-camera layout). See the module docstring."""
    if given:
        if len(given) != len(topics):
            raise BagError(f"{len(given)} camera names {list(given)} for {len(topics)} topics {list(topics)}")
        bad = [g for g in given if not _CAMERA_RE.match(g)]
        if bad or len(set(given)) != len(given):
            raise BagError(f"camera names must be unique identifiers (they become topic names), got {list(given)}")
        return dict(zip(topics, given, strict=True))
    if len(topics) == 1:
        return {topics[0]: ""}
    full = {t: t.strip("/").split("/") for t in topics}
    base = {t: p[:-1] if p[-1] == "compressed" and len(p) > 1 else p for t, p in full.items()}
    ns = {t: p[:-1] or p for t, p in base.items()}  # a root-namespace topic names itself
    names: dict[str, str] = {}
    for t in topics:
        for depth in range(1, len(ns[t]) + 1):
            cand = ns[t][-depth:]
            if sum(ns[u][-depth:] == cand for u in topics) == 1:
                names[t] = _identifier(cand)
                break
        else:
            unique_base = sum(base[u] == base[t] for u in topics) == 1
            names[t] = _identifier(base[t] if unique_base else full[t])
    if len(set(names.values())) != len(names):  # e.g. /a_b/image and /a/b/image after sanitising
        raise BagError(f"cannot derive distinct camera names for {list(topics)}; give --cameras")
    return names


@dataclass
class CameraOutputs:
    """One camera's output connections in the writer."""

    name: str  # '' for the single-camera layout (as the node's FrameStats.camera)
    topic: str  # the input topic
    prefix: str  # '/liteseg' or '/liteseg/<camera>'
    conns: dict[str, Any] = field(default_factory=dict)  # key -> writer connection
    received: int = 0
    processed: int = 0
    rejected: int = 0


def output_topic_names(prefix: str, groups: Iterable[str], values: Mapping[str, Any],
                       have_custom: bool) -> dict[str, tuple[str, str]]:
    """key -> (topic, msgtype) of every per-camera output the node would publish with these settings."""
    img = "sensor_msgs/msg/Image"
    out: dict[str, tuple[str, str]] = {}
    for key in ("label", "color", "overlay", "confidence"):
        if values[f"publish_{key}"]:
            out[key] = (f"{prefix}/{key}", img)
    if values["publish_masks"]:
        for g in groups:
            out[f"masks/{g}"] = (f"{prefix}/masks/{g}", img)
    if have_custom:
        if values["publish_boundary"] and "drivable" in groups:
            out["drivable_boundary"] = (f"{prefix}/drivable_boundary", f"{OUR_PACKAGE}/msg/DrivableBoundary")
        out["stats"] = (f"{prefix}/stats", f"{OUR_PACKAGE}/msg/FrameStats")
    return out


# ------------------------------------------------------------------------------------------ summary
@dataclass
class BagSummary:
    """What ``segment_bag`` did."""

    output: Path | None  # None when an interrupted run was removed
    complete: bool
    stop_reason: str  # '' (complete), 'max_frames', 'stop' (stop_event / first Ctrl-C), 'interrupt', 'rejected' (all)
    frames: int  # frames segmented (all cameras)
    total: int  # image messages on the chosen topics
    rejected: int
    seconds: float  # segmenting and writing (after the pipeline was built)
    setup_seconds: float  # opening the bag, loading the model, building the engine
    storage: str
    cameras: dict[str, str] = field(default_factory=dict)  # input topic -> its outputs' prefix
    input_bytes: int = 0
    output_bytes: int = 0

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def bag_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _resolve_input(path: Path) -> Path:
    path = Path(path)
    if path.is_file() and (path.parent / "metadata.yaml").is_file():
        return path.parent  # a .db3 / .mcap inside a bag directory
    if not path.exists():
        raise BagError(f"input bag {path} does not exist")
    if not (path / "metadata.yaml").is_file():
        raise BagError(f"{path} is not a ROS 2 bag directory (no metadata.yaml); give the folder that "
                       "`ros2 bag record` wrote")
    return path


#: custom_data key every bag written by ``liteseg bag`` carries (with ``liteseg_ros.complete``); what
#: ``--overwrite`` looks for before it deletes anything.
WRITER_KEY = "liteseg_ros.writer"
WRITER_VALUE = "liteseg bag"
#: The file inside a temporary ``.NAME.*.partial`` folder that says which run owns it.
OWNER_FILE = "liteseg_bag.owner"


def _inside(path: Path, other: Path) -> bool:
    """Whether ``path`` is ``other`` or lies inside it (both resolved, symlinks followed)."""
    path, other = path.resolve(), other.resolve()
    return path == other or other in path.parents


def written_by_us(folder: Path) -> str | None:
    """None when ``folder`` is a bag this tool wrote (and holds nothing else), else why it is not.

    Ours means: a directory (not a symlink) whose metadata.yaml carries our custom_data marker
    (``liteseg_ros.writer``, or ``liteseg_ros.complete`` in bags written before that key existed) and
    whose files are exactly metadata.yaml plus the storage files the metadata lists. Anything else,
    even a bag recorded by ``ros2 bag``, is somebody else's data and is never deleted.
    """
    import yaml

    if folder.is_symlink():
        return "it is a symbolic link"
    if not folder.is_dir():
        return "it is a file, not a bag folder"
    meta_file = folder / "metadata.yaml"
    if not meta_file.is_file():
        return "it has no metadata.yaml (not a ROS 2 bag)"
    try:
        info = yaml.safe_load(meta_file.read_text())["rosbag2_bagfile_information"]
        custom = info.get("custom_data") or {}
        listed = {str(f) for f in info.get("relative_file_paths") or []}
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return "its metadata.yaml cannot be read as rosbag2 metadata"
    if not isinstance(custom, dict) or (custom.get(WRITER_KEY) != WRITER_VALUE
                                        and "liteseg_ros.complete" not in custom):
        return "its metadata has no liteseg_ros marker (a bag this tool did not write)"
    foreign = sorted(p.name for p in folder.iterdir() if p.name != "metadata.yaml" and p.name not in listed)
    if foreign:
        return f"it holds files the bag does not list: {', '.join(foreign[:5])}"
    return None


def check_output(out: Path, src: Path, overwrite: bool) -> None:
    """Refuse, before any work is done, an output that would destroy the input or data we did not write."""
    if _inside(src, out):
        raise BagError(f"output {out} is the input bag or contains it ({src}); choose another output")
    if _inside(out, src):
        raise BagError(f"output {out} lies inside the input bag {src}; choose another output")
    if not (out.exists() or out.is_symlink()):
        return
    if not overwrite:
        raise BagError(f"output {out} exists; choose another name or pass --overwrite")
    why = written_by_us(out)
    if why is not None:
        raise BagError(f"--overwrite only replaces a bag that `liteseg bag` wrote; {out} is not one: {why}. "
                       "Remove it yourself or choose another output")


def _process_start(pid: int) -> str | None:
    """The kernel's start time of process ``pid`` (field 22 of /proc/PID/stat), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _owner_text() -> str:
    import os
    import socket

    return f"pid={os.getpid()} start={_process_start(os.getpid())} host={socket.gethostname()}\n"


def _stale_partial(folder: Path) -> bool:
    """Whether ``folder`` is a temporary folder of ours whose owning run is dead (e.g. SIGKILLed)."""
    import socket

    try:
        fields = dict(f.split("=", 1) for f in (folder / OWNER_FILE).read_text().split())
        pid, start, host = int(fields["pid"]), fields["start"], fields["host"]
    except (OSError, ValueError, KeyError):
        return False  # not ours (or unreadable): never delete it
    if host != socket.gethostname() or start == "None":
        return False  # another machine sharing this folder, or no /proc: we cannot tell if it is alive
    return _process_start(pid) != start  # gone, or the pid now belongs to another process


def clean_stale_partials(out: Path, log: Callable[[str], None]) -> list[Path]:
    """Remove the temporary folders a killed run for ``out`` left next to it; name the ones kept.

    Returns the folders removed. Only folders with our owner file whose process is dead are removed;
    others (a run still going, or folders without the owner file) are reported and left alone.
    """
    removed = []
    parent = out.parent if out.parent.is_dir() else None
    if parent is None:
        return removed
    for d in sorted(parent.glob(f".{out.name}.*.partial")):
        if not d.is_dir() or d.is_symlink():
            continue
        if _stale_partial(d):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
            log(f"removed {d}: the temporary output of an earlier run that was killed")
        else:
            log(f"note: {d} is the temporary folder of another run (still running, or not recognisably "
                "ours); left as is")
    return removed


@contextlib.contextmanager
def _open_input(src: Path):
    """The input bag's rosbags Reader; a read failure, at open or mid-way (a truncated mcap), names the bag."""
    import sqlite3

    from rosbags.rosbag2 import Reader, ReaderError

    try:
        with Reader(src) as reader:
            yield reader
    except (ReaderError, sqlite3.DatabaseError) as exc:
        files = sorted(str(p) for p in src.iterdir() if p.suffix in (".mcap", ".db3")) or [str(src)]
        raise BagError(f"cannot read input bag {src} ({', '.join(files)}): {exc} (truncated or damaged; "
                       "a recording that was cut off may be repaired with `ros2 bag reindex`)") from None


def _storage_of(bag: Path) -> str:
    return "mcap" if any(bag.glob("*.mcap")) else "sqlite3"


def _topic_table(connections) -> str:
    seen: dict[str, set[str]] = {}
    for c in connections:
        seen.setdefault(c.topic, set()).add(c.msgtype)
    return "\n".join(f"  {t}  [{', '.join(sorted(ts))}]" for t, ts in sorted(seen.items())) or "  (none)"


def select_topics(connections, topics: Sequence[str]) -> dict[str, list]:
    """Chosen topic -> its connections; errors name what exists or what is not an image."""
    if not topics:
        raise BagError("no --topic given; image topics in the bag:\n" + _topic_table(
            [c for c in connections if c.msgtype in IMAGE_TYPES]))
    chosen: dict[str, list] = {}
    for t in topics:
        t = "/" + t.strip("/")
        conns = [c for c in connections if c.topic == t]
        if not conns:
            raise BagError(f"topic {t} is not in the bag; topics that exist:\n{_topic_table(connections)}")
        bad = sorted({c.msgtype for c in conns if c.msgtype not in IMAGE_TYPES})
        if bad:
            raise BagError(f"topic {t} has type {', '.join(bad)}, not an image: only "
                           f"{' and '.join(IMAGE_TYPES)} topics can be segmented")
        chosen[t] = conns
    return chosen


def settings_from(params_file: str | Path | None, overrides: Mapping[str, Any] | None = None,
                  node_name: str = "liteseg") -> dict[str, Any]:
    """Validated node parameters from a params file (as the node named ``node_name`` reads it) + overrides."""
    given: dict[str, Any] = {}
    if params_file:
        given.update(params.read_params_file(params_file, node_name))
    given.update(overrides or {})
    given = {k: v for k, v in given.items() if not params.is_ros_builtin(k)}
    return params.validate(given)


# ------------------------------------------------------------------------------------------ bag -> bag
class _Run:
    """State of one segment_bag run: reader, writer, typestore, pipeline, per-camera outputs."""

    def __init__(self, pipeline, source, typestore, have_custom: bool, values: Mapping[str, Any],
                 log: Callable[[str], None]) -> None:
        from liteseg_ros.pipeline import BOUNDARY_GROUP, Wants

        self.pipeline = pipeline
        self.source = source
        self.ts = typestore
        self.have_custom = have_custom
        self.values = values
        self.log = log
        self.T = typestore.types
        groups = pipeline.config.mask_groups
        self.wants = Wants(label=bool(values["publish_label"]), confidence=bool(values["publish_confidence"]),
                           color=bool(values["publish_color"]), overlay=bool(values["publish_overlay"]),
                           masks=None if values["publish_masks"] else frozenset(),
                           boundary=bool(values["publish_boundary"]) and have_custom and BOUNDARY_GROUP in groups)
        self._empty = np.empty(0, np.uint8)
        self._logged_rejects = 0
        self.info_conn = None  # the node's one latched ~/info, written with the first frame
        self.info_written = False

    # -- message builders (rosbags classes; header objects are reused from the input message)
    def image(self, arr: np.ndarray, encoding: str, header):
        msg = self.T["sensor_msgs/msg/Image"](header=header, height=0, width=0, encoding="", is_bigendian=0,
                                              step=0, data=self._empty)
        return image_codec.fill_image(msg, arr, encoding)

    def stamp(self, ns: int):
        return self.T["builtin_interfaces/msg/Time"](sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)

    def info_msg(self, t_ns: int):
        T = self.T
        classes = self.pipeline.classes
        cfg = self.pipeline.config
        info = self.pipeline.engine.info
        groups = [T[f"{OUR_PACKAGE}/msg/MaskGroup"](name=g, class_names=[classes.names[i] for i in ids],
                                                    class_ids=np.asarray(ids, np.uint8))
                  for g, ids in cfg.mask_groups.items()]
        return T[f"{OUR_PACKAGE}/msg/SegmentationInfo"](
            header=T["std_msgs/msg/Header"](stamp=self.stamp(t_ns), frame_id=""),
            model_name=self.source.name, backbone=self.source.backbone, backend=info.backend,
            device=info.device, precision=info.precision, network_width=cfg.network_size[1],
            network_height=cfg.network_size[0], class_names=list(classes.names),
            colors=np.asarray(classes.flat_colors(), np.uint8), ignore_label=classes.ignore_label,
            mask_groups=groups, license=getattr(self.source, "license", ""))

    def write(self, writer, cam: CameraOutputs, key: str, t: int, msg) -> None:
        conn = cam.conns.get(key)
        if conn is not None:
            writer.write(conn, t, self.ts.serialize_cdr(msg, conn.msgtype))

    # -- one batch of frames
    def process(self, writer, frames: list[tuple[CameraOutputs, int, Any, str]]) -> int:
        """frames: (camera, bag time, raw CDR, msgtype). Writes every output; returns frames segmented."""
        decoded = []
        for cam, t, raw, msgtype in frames:
            t0 = time.perf_counter()
            cam.received += 1
            try:
                msg = self.ts.deserialize_cdr(raw, msgtype)
                img = image_codec.decode_any(msg, want="bgr8", max_pixels=int(self.values["max_input_pixels"]))
            except Exception as exc:  # bad data in one frame must not stop the run
                cam.rejected += 1
                if self._logged_rejects < 5:
                    self.log(f"warning: rejected a frame on {cam.topic} at {t}: {exc}")
                    self._logged_rejects += 1
                continue
            decoded.append((cam, t, msg, img, (time.perf_counter() - t0) * 1e3))
        if not decoded:
            return 0
        segs = self.pipeline.run([d[3] for d in decoded], color_order="bgr", wants=self.wants)
        for (cam, t, msg, _img, decode_ms), seg in zip(decoded, segs, strict=True):
            t1 = time.perf_counter()
            h = msg.header
            if not self.info_written:
                if self.info_conn is not None:
                    writer.write(self.info_conn, t, self.ts.serialize_cdr(self.info_msg(t), self.info_conn.msgtype))
                self.info_written = True
            if seg.label is not None and self.wants.label:
                self.write(writer, cam, "label", t, self.image(seg.label, "mono8", h))
            if seg.confidence is not None:
                self.write(writer, cam, "confidence", t, self.image(seg.confidence, "mono8", h))
            if seg.color is not None:
                self.write(writer, cam, "color", t, self.image(seg.color, "rgb8", h))
            if seg.overlay is not None:
                self.write(writer, cam, "overlay", t, self.image(seg.overlay, "bgr8", h))
            for g, m in seg.masks.items():
                self.write(writer, cam, f"masks/{g}", t, self.image(m, "mono8", h))
            if seg.boundary is not None and "drivable_boundary" in cam.conns:
                self.write(writer, cam, "drivable_boundary", t, self.T[f"{OUR_PACKAGE}/msg/DrivableBoundary"](
                    header=h, width=seg.label.shape[1], height=seg.label.shape[0],
                    row=np.ascontiguousarray(seg.boundary.row, np.int32),
                    drivable_fraction=float(seg.boundary.drivable_fraction)))
            cam.processed += 1
            publish_ms = (time.perf_counter() - t1) * 1e3
            if "stats" in cam.conns:
                tm = seg.timings
                pipe_ms = sum(tm.get(k, 0.0) for k in ("preprocess", "infer", "postprocess"))
                stamp_ns = h.stamp.sec * 1_000_000_000 + h.stamp.nanosec
                self.write(writer, cam, "stats", t, self.T[f"{OUR_PACKAGE}/msg/FrameStats"](
                    header=h, camera=cam.name, decode_ms=decode_ms, preprocess_ms=tm.get("preprocess", 0.0),
                    infer_ms=tm.get("infer", 0.0), postprocess_ms=tm.get("postprocess", 0.0),
                    publish_ms=publish_ms, total_ms=decode_ms + pipe_ms + publish_ms,
                    input_age_ms=(t - stamp_ns) / 1e6, received=cam.received, processed=cam.processed,
                    dropped=0, rejected=cam.rejected))
        return len(decoded)


def _copy_connection(writer, conn, typestore):
    """The output twin of an input connection: same topic, type, definition, hash, format, QoS."""
    qos = list(conn.ext.offered_qos_profiles) if hasattr(conn.ext, "offered_qos_profiles") else []
    if not qos:  # not recorded (e.g. bags written by rosbags): record what the topic kind implies
        qos = [sensor_qos() if conn.msgtype in IMAGE_TYPES else _qos(reliable=True, depth=10)]
    fmt = getattr(conn.ext, "serialization_format", "cdr")
    if conn.msgdef.data and conn.digest:
        return writer.add_connection(conn.topic, conn.msgtype, msgdef=conn.msgdef.data, rihs01=conn.digest,
                                     serialization_format=fmt, offered_qos_profiles=qos)
    if conn.msgtype not in typestore.fielddefs:
        raise BagError(f"topic {conn.topic}: the bag stores no definition of {conn.msgtype} and rosbags' "
                       "Jazzy typestore does not know it, so it cannot be copied")
    return writer.add_connection(conn.topic, conn.msgtype, typestore=typestore, serialization_format=fmt,
                                 offered_qos_profiles=qos)


def segment_bag(input_bag: str | Path, output_bag: str | Path, topics: Sequence[str],
                values: Mapping[str, Any], *, node_name: str = "liteseg", cameras: Sequence[str] | None = None,
                storage: str | None = None, batch: int | None = None, overwrite: bool = False, on_interrupt: str = "keep",
                progress: bool = True, max_frames: int | None = None,
                stop_event: threading.Event | None = None, on_frame: Callable[[int], None] | None = None,
                log: Callable[[str], None] = print, pipeline=None) -> BagSummary:
    """Segment every image on ``topics`` of ``input_bag`` into a new bag ``output_bag``.

    values: validated node parameters (:func:`settings_from`). cameras: camera names in ``topics``
    order (default: the params' ``cameras`` if it has one per topic, else derived from the topics).
    storage: ``sqlite3`` | ``mcap`` | None (= the input's). batch: frames per ``Pipeline.run``
    (default: the node's rule, one frame per camera within ``batch_window_ms``).
    on_interrupt: ``keep`` (close the partial bag properly, under the final name, marked
    ``liteseg_ros.complete: 'false'`` in custom_data) or ``delete``; a run stopped before its first
    frame leaves no bag. stop_event / max_frames: stop
    early the same way (a graceful stop: the current batch is finished first). on_frame(n): called
    with the running frame count after each batch (progress hooks, tests). pipeline: a ready
    ``(Pipeline, ModelSource)`` to reuse instead of building one from ``values``.
    The bag is written in a temporary folder next to ``output_bag`` and renamed when closed, so a
    crash never leaves a half-written bag under the final name; the folder a killed run left is
    removed by the next run (:func:`clean_stale_partials`). ``overwrite`` replaces only a bag this
    tool wrote (:func:`check_output`, before any work). A run in which every frame was rejected
    returns ``stop_reason='rejected'`` and its bag is marked incomplete.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer

    if not _NAME_RE.match(node_name):
        raise BagError(f"--node-name {node_name!r} is not a valid ROS node name (letters, digits, _)")
    if on_interrupt not in ("keep", "delete"):
        raise BagError(f"on_interrupt must be 'keep' or 'delete', got {on_interrupt!r}")
    if max_frames is not None and max_frames < 1:
        raise BagError(f"--max-frames must be >= 1, got {max_frames}")
    if batch is not None and batch < 1:
        raise BagError(f"--batch must be >= 1, got {batch}")
    src = _resolve_input(Path(input_bag))
    out = Path(output_bag)
    check_output(out, src, overwrite)
    clean_stale_partials(out, log)
    storage = storage or _storage_of(src)
    if storage not in STORAGES:
        raise BagError(f"storage {storage!r} is not one of {', '.join(STORAGES)}")
    typestore, have_custom = make_typestore()
    if not have_custom:
        log("warning: liteseg_ros msg/*.msg not found: info, stats and drivable_boundary are not written")

    t_setup = time.perf_counter()
    with _open_input(src) as reader:
        chosen = select_topics(reader.connections, topics)
        configured = list(values.get("cameras") or [])
        names = camera_names(list(chosen), cameras or (configured if len(configured) == len(chosen) else None))
        total = sum(c.msgcount for conns in chosen.values() for c in conns)
        if max_frames is not None:
            total = min(total, max_frames)
        n_cams = len(chosen)
        by_camera = batch is None  # the node's rule; else every `batch` frames
        if by_camera:
            batch = n_cams if values.get("batch_cameras", True) else 1
        window_ns = int(float(values.get("batch_window_ms", 5.0)) * 1e6)
        if pipeline is None:
            from liteseg_ros.runtime import build_pipeline

            settings = dict(values, mask_groups=params.mask_groups_of(values))
            pipeline = build_pipeline(settings, log=lambda m: None, max_batch=batch)
        pipe, source = pipeline
        t_start = time.perf_counter()
        run = _Run(pipe, source, typestore, have_custom, values, log)
        groups = list(pipe.config.mask_groups)

        out.parent.mkdir(parents=True, exist_ok=True)
        tmp_root = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
        (tmp_root / OWNER_FILE).write_text(_owner_text())  # lets a later run tell a killed run's leftovers
        tmp_bag = tmp_root / out.name
        writer = Writer(tmp_bag, version=9,
                        storage_plugin=StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3)
        cams: dict[int, CameraOutputs] = {}
        done = 0
        stop_reason = ""
        bar = None
        try:
            writer.open()
            copies = {c.id: _copy_connection(writer, c, typestore) for c in reader.connections}
            if have_custom:
                run.info_conn = writer.add_connection(f"/{node_name}/info", f"{OUR_PACKAGE}/msg/SegmentationInfo",
                                                      typestore=typestore, offered_qos_profiles=[latched_qos()])
            for topic, conns in chosen.items():
                prefix = f"/{node_name}/{names[topic]}" if names[topic] else f"/{node_name}"
                cam = CameraOutputs(name=names[topic], topic=topic, prefix=prefix)
                for key, (name, msgtype) in output_topic_names(prefix, groups, values, have_custom).items():
                    cam.conns[key] = writer.add_connection(name, msgtype, typestore=typestore,
                                                           offered_qos_profiles=[output_qos()])
                for c in conns:
                    cams[c.id] = cam
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=total, unit="frame", desc="segmenting", file=sys.stderr, dynamic_ncols=True,
                           smoothing=0.1)
            pending: list = []

            def flush() -> None:
                nonlocal done
                if pending:
                    n = run.process(writer, pending)
                    done += len(pending)
                    pending.clear()
                    if bar is not None:
                        bar.update(n)
                    if on_frame is not None:
                        on_frame(done)

            try:
                for conn, t, raw in reader.messages():
                    if stop_event is not None and stop_event.is_set():
                        stop_reason = "stop"
                        break
                    if conn.id in cams and max_frames is not None and done + len(pending) >= max_frames:
                        stop_reason = "max_frames"
                        break
                    writer.write(copies[conn.id], t, raw)
                    if conn.id in cams:
                        cam = cams[conn.id]
                        if pending and by_camera and (t - pending[0][1] > window_ns
                                                      or any(p[0] is cam for p in pending)):
                            flush()  # one frame per camera, within the window
                        pending.append((cam, t, raw, conn.msgtype))
                        if len(pending) >= batch:
                            flush()
                flush()  # graceful stops finish the frames already copied
            except KeyboardInterrupt:
                stop_reason = "interrupt"
                pending.clear()
            interrupted = bool(stop_reason)
            unique = {id(c): c for c in cams.values()}.values()
            processed = sum(c.processed for c in unique)
            if not interrupted and processed == 0 and sum(c.received for c in unique) > 0:
                stop_reason = "rejected"  # every frame was bad input: a bag without outputs is no result
            complete = not stop_reason
            writer.set_custom_data(WRITER_KEY, WRITER_VALUE)
            writer.set_custom_data("liteseg_ros.complete", "true" if complete else "false")
            writer.set_custom_data("liteseg_ros.frames", str(processed))  # segmented (rejected ones excluded)
            writer.set_custom_data("liteseg_ros.model", source.name)
            writer.set_custom_data("liteseg_ros.input", src.name)
            writer.close()
        except BaseException:
            if writer.storage is not None:
                writer.abort()
            shutil.rmtree(tmp_root, ignore_errors=True)
            raise
        finally:
            if bar is not None:
                bar.close()
        if interrupted and stop_reason != "max_frames" and (on_interrupt == "delete" or done == 0):
            final = None
        else:
            if out.exists() or out.is_symlink():
                why = written_by_us(out)  # checked again: it may have changed during the run
                if why is not None:
                    raise BagError(f"{out} changed during the run and is no longer a bag `liteseg bag` "
                                   f"wrote ({why}); it was left alone and the new bag is in {tmp_bag}")
                out.rename(tmp_root / ".replaced")  # deleted below with the temporary folder
            tmp_bag.rename(out)
            final = out
        shutil.rmtree(tmp_root, ignore_errors=True)
    seconds = time.perf_counter() - t_start
    seen = list({id(c): c for c in cams.values()}.values())
    return BagSummary(output=final, complete=complete, stop_reason=stop_reason, frames=sum(c.processed for c in seen), total=total,
                      rejected=sum(c.rejected for c in seen), seconds=seconds, setup_seconds=t_start - t_setup,
                      storage=storage,
                      cameras={c.topic: c.prefix for c in seen},
                      input_bytes=bag_size(src), output_bytes=bag_size(final) if final else 0)


# ------------------------------------------------------------------------------------------ CLI: bag
def _param_override(text: str) -> tuple[str, Any]:
    """'NAME:=VALUE' (VALUE parsed as YAML, as ros2 param does) -> (name, value)."""
    import yaml

    if ":=" not in text:
        raise argparse.ArgumentTypeError(f"parameter {text!r} must look like NAME:=VALUE")
    name, value = text.split(":=", 1)
    try:
        return name.strip(), yaml.safe_load(value) if value else ""
    except yaml.YAMLError:
        return name.strip(), value


def add_bag_parser(sub) -> None:
    """Register ``liteseg bag``."""
    p = sub.add_parser(
        "bag", help="segment every image of a rosbag offline into a new bag",
        description="Segment every Image/CompressedImage message on the chosen topics of a ROS 2 bag "
        "(sqlite3 or mcap) and write a new bag holding every input topic unchanged plus the node's outputs "
        "(label, color, overlay, confidence, masks/<group>, drivable_boundary, info, stats) under the names "
        "the node publishes (/liteseg/label ...; with several --topic the node's multi-camera layout "
        "/liteseg/<camera>/label, camera names from --cameras, the params' `cameras`, or the topics: "
        "/front/image_raw -> front), with the input header stamps and recorded receive "
        "times. Ctrl-C once finishes the current batch and keeps a valid partial bag; twice stops at once.")
    p.add_argument("input", type=Path, metavar="INPUT_BAG", help="bag folder (or a .db3/.mcap inside one)")
    p.add_argument("output", type=Path, metavar="OUTPUT_BAG", help="new bag folder to write")
    p.add_argument("--topic", "-t", action="append", default=[], metavar="TOPIC",
                   help="image topic to segment (repeat for several cameras)")
    p.add_argument("--params-file", type=Path, help="node parameters YAML (e.g. config/liteseg.yaml)")
    p.add_argument("-p", "--param", action="append", default=[], type=_param_override, metavar="NAME:=VALUE",
                   help="override one parameter, e.g. -p weights:=demo -p network_width:=320")
    p.add_argument("--cameras", nargs="+", metavar="NAME",
                   help="camera names, one per --topic in order (outputs /<node>/<NAME>/...)")
    p.add_argument("--node-name", default="liteseg", help="node name the outputs are published under (default: %(default)s)")
    p.add_argument("--storage", choices=STORAGES, help="output storage (default: the input's)")
    p.add_argument("--batch", type=int, help="frames per inference batch (default: the node's rule: one frame "
                   "per camera within batch_window_ms of bag time)")
    p.add_argument("--max-frames", type=int, help="stop after this many frames (a quick look)")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT_BAG if it exists")
    p.add_argument("--on-interrupt", choices=("keep", "delete"), default="keep",
                   help="after Ctrl-C keep the valid partial bag (marked incomplete) or delete it "
                   "(default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_bag)


def _install_stop_handler(stop: threading.Event):
    """First SIGINT/SIGTERM: graceful stop (finish the batch, close the bag); second: KeyboardInterrupt.

    Later ones are ignored, so a third Ctrl-C cannot interrupt the clean-up the second one started;
    the command keeps this handler until it has printed its result (the caller restores the old one).
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    count = 0

    def handler(signum, frame):
        nonlocal count
        count += 1
        if count == 2:
            raise KeyboardInterrupt
        if count == 1:
            stop.set()
            print("\nstopping after the current batch (Ctrl-C again to stop now)", file=sys.stderr, flush=True)

    for s in old:
        signal.signal(s, handler)

    def restore():
        for s, h in old.items():
            signal.signal(s, h)

    return restore


def _run_bag(args) -> int:
    try:
        overrides = dict(args.param)
        if "allow_download" not in overrides and not (
                args.params_file and "allow_download" in params.read_params_file(args.params_file, args.node_name)):
            overrides["allow_download"] = True  # a command run by a person: fetch registered weights on first use
        values = settings_from(args.params_file, overrides, args.node_name)
    except params.ParameterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from liteseg_ros.interrupts import deferred_interrupts

    with deferred_interrupts() as pending:  # the heavy imports, before Ctrl-C means "stop after this batch"
        import rosbags.rosbag2  # noqa: F401
        import torch  # noqa: F401

        import liteseg_ros.runtime  # noqa: F401
    if pending:
        print("interrupted", file=sys.stderr)
        return 130
    stop = threading.Event()
    restore = _install_stop_handler(stop)
    try:  # the handler stays until the result is printed: a late second Ctrl-C is no traceback
        return _bag_command(args, values, stop)
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C twice): stopped at once", file=sys.stderr)
        return 130
    finally:
        restore()


def _bag_command(args, values: Mapping[str, Any], stop: threading.Event) -> int:
    from liteseg_ros.engines import EngineError
    from liteseg_ros.runtime import ModelLoadError, resolve_weights

    try:
        # A registered name not cached yet is fetched here, with a progress bar (segment_bag builds quietly).
        resolve_weights(values["weights"], values["allow_download"], progress=not args.no_progress,
                        log=lambda m: print(m, file=sys.stderr))
        summary = segment_bag(args.input, args.output, args.topic, values, node_name=args.node_name,
                              cameras=args.cameras, storage=args.storage, batch=args.batch, overwrite=args.overwrite,
                              on_interrupt=args.on_interrupt, progress=not args.no_progress,
                              max_frames=args.max_frames, stop_event=stop,
                              log=lambda m: print(m, file=sys.stderr))
    except (BagError, ModelLoadError, EngineError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from rosbags.rosbag2 import ReaderError, WriterError

        if isinstance(exc, (ReaderError, WriterError)):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise
    for topic, root in summary.cameras.items():
        print(f"{topic} -> {root}/*")
    line = (f"{summary.frames}/{summary.total} frames in {summary.seconds:.1f} s ({summary.fps:.1f} frames/s; "
            f"model and engine {summary.setup_seconds:.1f} s), "
            f"{summary.rejected} rejected; {summary.storage} bag {summary.output_bytes / 1e6:.1f} MB "
            f"(input {summary.input_bytes / 1e6:.1f} MB)")
    if summary.complete:
        print(f"wrote {summary.output}: {line}")
        return 0
    if summary.stop_reason == "rejected":
        print(f"error: every frame was rejected (see the warnings above); {summary.output} holds no "
              f"segmentation and is marked incomplete (custom_data liteseg_ros.complete: 'false'): {line}",
              file=sys.stderr)
        return 1
    why = "stopped at --max-frames" if summary.stop_reason == "max_frames" else "interrupted"
    if summary.output is None:
        print(f"{why}: partial output removed ({line})", file=sys.stderr)
    else:
        print(f"{why}: {summary.output} is a valid but PARTIAL bag (custom_data liteseg_ros.complete: "
              f"'false'): {line}", file=sys.stderr)
    return 0 if summary.stop_reason == "max_frames" else 130


# ------------------------------------------------------------------------------------------ play
def message_class(msgtype: str):
    """'pkg/msg/Type' -> the rclpy message class (imports pkg.msg)."""
    import importlib

    parts = msgtype.split("/")
    if len(parts) != 3:
        raise BagError(f"cannot publish type {msgtype!r}: expected 'package/msg/Type'")
    pkg, kind, name = parts
    try:
        return getattr(importlib.import_module(f"{pkg}.{kind}"), name)
    except (ImportError, AttributeError) as exc:
        raise BagError(f"no Python message class for {msgtype} ({exc}); install or build {pkg}") from None


def play_bag(bag: str | Path, *, rate: float = 1.0, clock: bool = False, clock_hz: float = 40.0,
             loop: bool = False, topics: Sequence[str] | None = None, wait_for: Sequence[str] = (),
             wait_timeout: float = 60.0, qos_mode: str = "reliable", start_delay: float = 0.0,
             stop_event: threading.Event | None = None, log: Callable[[str], None] = print) -> int:
    """Publish a bag's messages on rclpy with their recorded timing; returns messages published.

    Raw CDR from the bag is published as is (no Python message is built). ``clock``: publish
    ``/clock`` with the bag time before every message and at ``clock_hz`` in between (for nodes with
    ``use_sim_time``). ``wait_for``: topics that must have a subscriber before playing starts.
    ``qos_mode``: ``reliable`` (default; matches every subscriber) or ``recorded`` (the recorded
    reliability). Durability is the recorded one (transient local stays latched).
    """
    import rclpy
    import rclpy.duration
    import rclpy.time
    from rclpy.context import Context
    from rclpy.qos import QoSDurabilityPolicy, QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy
    from rosbags.interfaces import QosDurability, QosReliability
    from rosbags.rosbag2 import Reader

    if rate <= 0:
        raise BagError(f"--rate must be > 0, got {rate}")
    src = _resolve_input(Path(bag))
    ctx = Context()
    rclpy.init(context=ctx, args=["liteseg_play"])
    published = 0
    try:
        node = rclpy.create_node("liteseg_play", context=ctx)
        with Reader(src) as reader:
            conns = reader.connections
            if topics:
                want = {"/" + t.strip("/") for t in topics}
                missing = want - {c.topic for c in conns}
                if missing:
                    raise BagError(f"topics {', '.join(sorted(missing))} are not in the bag; topics that exist:\n"
                                   + _topic_table(conns))
                conns = [c for c in conns if c.topic in want]
            pubs: dict[tuple[str, str], Any] = {}
            by_conn: dict[int, Any] = {}
            for c in conns:
                key = (c.topic, c.msgtype)
                if key not in pubs:
                    try:
                        cls = message_class(c.msgtype)
                    except BagError as exc:
                        log(f"warning: skipping {c.topic}: {exc}")
                        continue
                    rec = list(getattr(c.ext, "offered_qos_profiles", []) or [])
                    latched = any(q.durability == QosDurability.TRANSIENT_LOCAL for q in rec)
                    best_effort = bool(rec) and all(q.reliability == QosReliability.BEST_EFFORT for q in rec)
                    depth = max([10, *[q.depth for q in rec]])
                    qos = QoSProfile(
                        depth=depth, history=QoSHistoryPolicy.KEEP_LAST,
                        reliability=(QoSReliabilityPolicy.BEST_EFFORT if qos_mode == "recorded" and best_effort
                                     else QoSReliabilityPolicy.RELIABLE),
                        durability=(QoSDurabilityPolicy.TRANSIENT_LOCAL if latched
                                    else QoSDurabilityPolicy.VOLATILE))
                    pubs[key] = node.create_publisher(cls, c.topic, qos)
                by_conn[c.id] = pubs[key]
            if not by_conn:
                raise BagError("nothing to play: no topic has a Python message class")
            clock_pub = None
            if clock:
                from rosgraph_msgs.msg import Clock

                clock_pub = node.create_publisher(Clock, "/clock", QoSProfile(depth=10))
            topic_pubs = {t: p for (t, _), p in pubs.items()}
            end = time.monotonic() + wait_timeout
            for t in wait_for:
                t = "/" + t.strip("/")
                if t not in topic_pubs:
                    raise BagError(f"--wait-for {t}: not a topic being played")
                while topic_pubs[t].get_subscription_count() == 0:
                    if time.monotonic() > end:
                        raise BagError(f"no subscriber on {t} after {wait_timeout:.0f} s")
                    if stop_event is not None and stop_event.is_set():
                        return 0
                    time.sleep(0.05)
            if wait_for:
                time.sleep(0.3)  # let the subscribers' side of discovery settle
            if start_delay > 0:
                time.sleep(start_delay)

            def publish_clock(ns: int) -> None:
                clock_pub.publish(Clock(clock=rclpy.time.Time(nanoseconds=int(ns)).to_msg()))

            while True:
                b0 = w0 = None
                for conn, t, raw in reader.messages(connections=[c for c in conns if c.id in by_conn]):
                    if stop_event is not None and stop_event.is_set():
                        return published
                    if b0 is None:
                        b0, w0 = t, time.monotonic()
                    target = w0 + (t - b0) / 1e9 / rate
                    while (d := target - time.monotonic()) > 0:
                        if clock_pub is not None:
                            publish_clock(b0 + (time.monotonic() - w0) * rate * 1e9)
                            time.sleep(min(d, 1.0 / clock_hz))
                        else:
                            time.sleep(min(d, 0.1))
                    if clock_pub is not None:
                        publish_clock(t)
                    by_conn[conn.id].publish(bytes(raw))
                    published += 1
                if not loop or published == 0:
                    break
            for p in pubs.values():  # let reliable messages reach their subscribers before exiting
                p.wait_for_all_acked(rclpy.duration.Duration(seconds=5.0))
        return published
    finally:
        rclpy.try_shutdown(context=ctx)


def add_play_parser(sub) -> None:
    """Register ``liteseg play``."""
    p = sub.add_parser(
        "play", help="publish a rosbag's messages with their timing and /clock (ros2 bag play stand-in)",
        description="Publish every message of a ROS 2 bag (raw CDR, no conversion) with its recorded timing, "
        "optionally with /clock for nodes started with use_sim_time:=true. Works without `ros2 bag`; "
        "publishers are reliable by default (they match reliable and best-effort subscribers) and keep "
        "the recorded durability.")
    p.add_argument("bag", type=Path, metavar="BAG")
    p.add_argument("--rate", "-r", type=float, default=1.0, help="playback speed factor (default: %(default)s)")
    p.add_argument("--clock", action="store_true", help="publish /clock with the bag time")
    p.add_argument("--clock-hz", type=float, default=40.0, help="/clock rate between messages (default: %(default)s)")
    p.add_argument("--loop", "-l", action="store_true", help="play again from the start when done")
    p.add_argument("--topics", nargs="+", metavar="TOPIC", help="play only these topics")
    p.add_argument("--wait-for", nargs="+", default=[], metavar="TOPIC",
                   help="wait until each of these topics has a subscriber before playing")
    p.add_argument("--wait-timeout", type=float, default=60.0, help="seconds --wait-for waits (default: %(default)s)")
    p.add_argument("--delay", type=float, default=0.0, help="seconds to wait before playing")
    p.add_argument("--qos", choices=("reliable", "recorded"), default="reliable",
                   help="publisher reliability: always reliable, or as recorded (default: %(default)s)")
    p.set_defaults(func=_run_play)


def _run_play(args) -> int:
    t0 = time.monotonic()
    try:
        n = play_bag(args.bag, rate=args.rate, clock=args.clock, clock_hz=args.clock_hz, loop=args.loop,
                     topics=args.topics, wait_for=args.wait_for, wait_timeout=args.wait_timeout,
                     qos_mode=args.qos, start_delay=args.delay, log=lambda m: print(m, file=sys.stderr))
    except BagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"published {n} messages in {time.monotonic() - t0:.1f} s")
    return 0
