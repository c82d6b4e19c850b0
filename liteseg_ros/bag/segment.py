"""``liteseg bag``: segment the images of a recorded bag into a new bag, as the node would have.

Part of ``liteseg bag`` (ring 3, no rclpy). What is written (topics, message fields, which frames
share a forward) is ``liteseg_ros.contract``, the node's own contract; this module only reads
frames, runs ``Pipeline.run`` and writes what the contract makes, at the input's recorded times.
"""
from __future__ import annotations

import contextlib
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from liteseg_ros import contract, image_codec, params
from liteseg_ros.bag.files import (
    OWNER_FILE,
    WRITER_KEY,
    WRITER_VALUE,
    check_output,
    clean_stale_partials,
    owner_text,
    written_by_us,
)
from liteseg_ros.bag.store import (
    STORAGES,
    BagError,
    BagOutputError,
    bag_size,
    copy_connection,
    latched_qos,
    make_typestore,
    open_input,
    output_qos,
    resolve_input,
    select_topics,
    storage_of,
)

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # a ROS node name


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


def settings_from(params_file: str | Path | None, overrides: Mapping[str, Any] | None = None,
                  node_name: str = "liteseg") -> dict[str, Any]:
    """Validated node parameters from a params file (as the node named ``node_name`` reads it) + overrides."""
    given: dict[str, Any] = {}
    if params_file:
        given.update(params.read_params_file(params_file, node_name))
    given.update(overrides or {})
    given = {k: v for k, v in given.items() if not params.is_ros_builtin(k)}
    return params.validate(given)


@dataclass
class CameraOutputs:
    """One camera's output connections in the writer, and its counters."""

    name: str  # '' for the single-camera layout (as the node's FrameStats.camera)
    topic: str  # the input topic
    prefix: str  # '/liteseg' or '/liteseg/<camera>'
    conns: dict[str, Any] = field(default_factory=dict)  # contract suffix -> writer connection
    received: int = 0
    processed: int = 0
    rejected: int = 0


# ------------------------------------------------------------------------------------------ bag -> bag
class _Run:
    """State of one segment_bag run: typestore, pipeline, the fixed wants, per-camera outputs."""

    def __init__(self, pipeline, source, typestore, have_custom: bool, values: Mapping[str, Any],
                 log: Callable[[str], None]) -> None:
        self.pipeline = pipeline
        self.source = source
        self.ts = typestore
        self.values = values
        self.log = log
        self.types = typestore.types.__getitem__  # the contract's type factory: rosbags classes
        #: the bag's settings are fixed for the run: every output switched on is made (nobody "listens")
        self.wants = contract.wants(values, pipeline.config.mask_groups, have_custom)
        self._empty = np.empty(0, np.uint8)
        self._logged_rejects = 0
        self.info_conn = None  # the node's one latched ~/info, written with the first frame
        self.label_info_conn = None  # and its latched ~/label_info (vision_msgs/LabelInfo), likewise
        self.info_written = False

    def image(self, arr: np.ndarray, encoding: str, header):
        """A rosbags Image holding ``arr`` (the contract's image maker for bags)."""
        msg = self.types(contract.IMAGE)(header=header, height=0, width=0, encoding="", is_bigendian=0,
                                         step=0, data=self._empty)
        return image_codec.fill_image(msg, arr, encoding)

    def write(self, writer, cam: CameraOutputs, suffix: str, t: int, msg) -> None:
        conn = cam.conns.get(suffix)
        if conn is not None:
            writer.write(conn, t, self.ts.serialize_cdr(msg, conn.msgtype))

    def decode(self, frames: list[tuple[CameraOutputs, int, Any, str]]) -> list[tuple]:
        """Deserialize and decode; a bad frame is counted, logged (the first few) and skipped."""
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
        return decoded

    def reject_oversize(self, cam: CameraOutputs, t: int, size: int, limit: int) -> None:
        """A frame longer than any image the node's limits accept: counted as rejected, neither
        deserialised nor copied to the output."""
        cam.received += 1
        cam.rejected += 1
        if self._logged_rejects < 5:
            self.log(f"warning: rejected a frame on {cam.topic} at {t}: {size} bytes, more than the {limit} an "
                     f"image within max_input_pixels={self.values['max_input_pixels']} can take (not copied)")
            self._logged_rejects += 1

    def process(self, writer, frames: list[tuple[CameraOutputs, int, Any, str]]) -> int:
        """frames: (camera, bag time, raw CDR, msgtype). Writes every output; returns frames segmented."""
        decoded = self.decode(frames)
        if not decoded:
            return 0
        segs = self.pipeline.run([d[3] for d in decoded], color_order="bgr", wants=self.wants)
        for (cam, t, msg, _img, decode_ms), seg in zip(decoded, segs, strict=True):
            t1 = time.perf_counter()
            h = msg.header
            if not self.info_written:
                self.write_info(writer, t)
                self.info_written = True
            for suffix, out in contract.frame_messages(self.types, h, seg, self.wants, self.image):
                self.write(writer, cam, suffix, t, out)
            cam.processed += 1
            if "stats" in cam.conns:
                stamp_ns = h.stamp.sec * 1_000_000_000 + h.stamp.nanosec
                counts = contract.FrameCounts(received=cam.received, processed=cam.processed, dropped=0,
                                              rejected=cam.rejected)
                self.write(writer, cam, "stats", t, contract.stats_message(
                    self.types, h, cam.name, seg, decode_ms, (time.perf_counter() - t1) * 1e3,
                    (t - stamp_ns) / 1e6, counts))
        return len(decoded)

    def write_info(self, writer, t: int) -> None:
        if self.info_conn is not None:
            msg = contract.info_message(self.types, t, self.pipeline, self.source)
            writer.write(self.info_conn, t, self.ts.serialize_cdr(msg, self.info_conn.msgtype))
        msg = contract.label_info_message(self.types, t, self.pipeline)
        writer.write(self.label_info_conn, t, self.ts.serialize_cdr(msg, self.label_info_conn.msgtype))


class _Output:
    """The output bag's Writer, whose every failure is a BagOutputError naming the output: a full disk
    or a storage limit (sqlite's blob size) must not read as a damaged *input* (``open_input`` turns
    sqlite errors into that) or end in a traceback."""

    def __init__(self, writer: Any, out: Path) -> None:
        self._writer, self._out = writer, out

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._writer, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            import sqlite3

            from rosbags.rosbag2 import WriterError

            try:
                return attr(*args, **kwargs)
            except (OSError, sqlite3.Error, WriterError, ValueError, OverflowError) as exc:
                raise BagOutputError(f"cannot write the output bag {self._out}: {type(exc).__name__}: {exc} "
                                     f"(nothing was kept; free space or choose another output)") from None

        return call


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
    ``(Pipeline, ModelWeights)`` to reuse instead of building one from ``values``.
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
    src = resolve_input(Path(input_bag))
    out = Path(output_bag)
    check_output(out, src, overwrite)
    clean_stale_partials(out, log)
    storage = storage or storage_of(src)
    if storage not in STORAGES:
        raise BagError(f"storage {storage!r} is not one of {', '.join(STORAGES)}")
    typestore, have_custom = make_typestore()
    if not have_custom:
        log("warning: liteseg_ros msg/*.msg not found: info, stats and drivable_boundary are not written")

    t_setup = time.perf_counter()
    with open_input(src) as reader:
        chosen = select_topics(reader.connections, topics)
        configured = list(values.get("cameras") or [])
        names = camera_names(list(chosen), cameras or (configured if len(configured) == len(chosen) else None))
        total = sum(c.msgcount for conns in chosen.values() for c in conns)
        if max_frames is not None:
            total = min(total, max_frames)
        n_cams = len(chosen)
        # The node's rule (the contract's BatchRule, on recorded times), or every `batch` frames.
        rule = contract.BatchRule.from_values(values) if batch is None else None
        if rule is not None:
            batch = rule.max_frames(n_cams)
        if pipeline is None:
            from liteseg_ros.runtime import build_pipeline

            pipeline = build_pipeline(params.pipeline_settings(values), log=lambda m: None, max_batch=batch)
        pipe, source = pipeline
        t_start = time.perf_counter()
        run = _Run(pipe, source, typestore, have_custom, values, log)
        groups = list(pipe.config.mask_groups)

        out.parent.mkdir(parents=True, exist_ok=True)
        tmp_root = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
        (tmp_root / OWNER_FILE).write_text(owner_text())  # lets a later run tell a killed run's leftovers
        tmp_bag = tmp_root / out.name
        writer = _Output(Writer(tmp_bag, version=9,
                                storage_plugin=StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3),
                         out)
        max_raw = image_codec.max_message_bytes(int(values["max_input_pixels"]))
        cams: dict[int, CameraOutputs] = {}
        done = 0
        stop_reason = ""
        bar = None
        try:
            writer.open()
            copies = {c.id: copy_connection(writer, c, typestore) for c in reader.connections}
            if have_custom:
                run.info_conn = writer.add_connection(f"/{node_name}/{contract.INFO_SUFFIX}", contract.INFO,
                                                      typestore=typestore, offered_qos_profiles=[latched_qos()])
            run.label_info_conn = writer.add_connection(f"/{node_name}/{contract.LABEL_INFO_SUFFIX}",
                                                        contract.LABEL_INFO, typestore=typestore,
                                                        offered_qos_profiles=[latched_qos()])
            for topic, conns in chosen.items():
                prefix = contract.camera_prefix(f"/{node_name}", names[topic])
                cam = CameraOutputs(name=names[topic], topic=topic, prefix=prefix)
                for spec in contract.camera_outputs(groups, have_custom, values, live_inputs=False):
                    cam.conns[spec.suffix] = writer.add_connection(f"{prefix}/{spec.suffix}", spec.msgtype,
                                                                  typestore=typestore,
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
                    if conn.id in cams and len(raw) > max_raw:  # by its length, before any copy of it
                        run.reject_oversize(cams[conn.id], t, len(raw), max_raw)
                        continue
                    writer.write(copies[conn.id], t, raw)
                    if conn.id in cams:
                        cam = cams[conn.id]
                        if pending and rule is not None:
                            t0 = pending[0][1]  # seconds since the batch's first frame, on the bag's clock
                            if not rule.admits([(p[0], (p[1] - t0) / 1e9) for p in pending], cam,
                                               (t - t0) / 1e9, n_cams):
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
                with contextlib.suppress(Exception):
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
