"""`liteseg bag` and `liteseg play`: real bags written with rosbags, the real pipeline, the real node.

Bags are written here with rosbags (sqlite3 and mcap; raw and compressed images; two cameras; an
unrelated std_msgs/String topic), segmented through ``liteseg_ros.cli.main`` in-process and once
through the ``liteseg`` console script, and read back with rosbags' AnyReader. The replay test plays
a bag into the live node (its own process, use_sim_time) and checks the output stamps.
"""
from __future__ import annotations

import functools
import json
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from liteseg_ros import bag as bagmod
from liteseg_ros import cli, image_codec
from liteseg_ros.bag import files as bag_files
from liteseg_ros.classes import ClassTable

TS = get_typestore(Stores.ROS2_JAZZY)
T = TS.types
H, W = 48, 80  # input frames (the network runs at 64x96: both directions of resizing)
NET = {"network_width": 96, "network_height": 64, "num_threads": 1}
GROUPS = {"drivable": ["road"], "vehicles": ["car", "truck", "bus"]}
T0 = 1_700_000_000 * 10**9
PERIOD = 100_000_000  # 10 Hz
STAMP_LAG = 5_000_000  # header stamp = receive time - 5 ms (so stamp and bag time differ)
EXE = Path(sys.executable).parent


@functools.lru_cache(maxsize=64)
def frame(i: int, h: int = H, w: int = W) -> np.ndarray:
    try:
        from liteseg_ros.synthetic import SceneConfig, generate_scene

        return generate_scene(i, SceneConfig(height=h, width=w)).image
    except ImportError:  # pragma: no cover - synthetic scenes are another module's job
        return np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)


def stamp_ns(header) -> int:
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


def header(ns: int, frame_id: str):
    return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9),
                                    frame_id=frame_id)


def write_bag(path: Path, storage: str, cameras: dict[str, str], n: int, h: int = H, w: int = W,
              chatter: bool = True, distinct: int = 1000) -> dict[str, list[tuple[int, bytes]]]:
    """cameras: topic -> 'bgr8' | 'rgb8' | 'jpeg'. Returns topic -> [(bag time, raw CDR)] as written.

    ``distinct``: how many different scenes to cycle through (generating scenes costs time).
    """
    written: dict[str, list[tuple[int, bytes]]] = {}
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as wr:
        conns = {}
        for topic, kind in cameras.items():
            msgtype = "sensor_msgs/msg/CompressedImage" if kind == "jpeg" else "sensor_msgs/msg/Image"
            conns[topic] = wr.add_connection(topic, msgtype, typestore=TS)
        if chatter:
            conns["/chatter"] = wr.add_connection("/chatter", "std_msgs/msg/String", typestore=TS)
        for i in range(n):
            for k, (topic, kind) in enumerate(cameras.items()):
                t = T0 + i * PERIOD + k * 1_000_000
                img = frame((i * 10 + k) % distinct, h, w)
                hdr = header(t - STAMP_LAG, topic.strip("/").split("/")[0])
                if kind == "jpeg":
                    fmt, data = image_codec.encode_compressed(img, "jpeg")
                    msg = T["sensor_msgs/msg/CompressedImage"](header=hdr, format=fmt,
                                                                data=np.frombuffer(data, np.uint8))
                else:
                    msg = T["sensor_msgs/msg/Image"](header=hdr, height=0, width=0, encoding="", is_bigendian=0,
                                                     step=0, data=np.empty(0, np.uint8))
                    image_codec.fill_image(msg, img[:, :, ::-1].copy() if kind == "rgb8" else img, kind)
                raw = bytes(TS.serialize_cdr(msg, msg.__msgtype__))
                wr.write(conns[topic], t, raw)
                written.setdefault(topic, []).append((t, raw))
            if chatter:
                t = T0 + i * PERIOD + 50_000_000
                raw = bytes(TS.serialize_cdr(T["std_msgs/msg/String"](data=f"hello {i}"), "std_msgs/msg/String"))
                wr.write(conns["/chatter"], t, raw)
                written.setdefault("/chatter", []).append((t, raw))
    return written


def read_bag(path: Path) -> tuple[dict[str, list[tuple[int, object, bytes]]], dict[str, str]]:
    """topic -> [(bag time, message, raw)], topic -> msgtype."""
    out: dict[str, list] = {}
    types = {}
    with AnyReader([path], default_typestore=TS) as r:
        for c, t, raw in r.messages():
            out.setdefault(c.topic, []).append((t, r.deserialize(raw, c.msgtype), bytes(raw)))
            types[c.topic] = c.msgtype
    return out, types


def metadata(path: Path) -> dict:
    return yaml.safe_load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]


@pytest.fixture(scope="module")
def params_file(tmp_path_factory, tiny_checkpoint) -> Path:
    d = tmp_path_factory.mktemp("bagparams")
    p = d / "liteseg.yaml"
    p.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        "weights": str(tiny_checkpoint), **NET, "engine_cache_dir": str(d / "engines"),
        "mask_groups": GROUPS}}}))
    return p


@pytest.fixture(scope="module")
def settings(params_file):
    return bagmod.settings_from(params_file)


@pytest.fixture(scope="module")
def pipeline(settings):
    """The same (Pipeline, ModelWeights) the bag tool builds, built once for the API-level tests."""
    from liteseg_ros import params
    from liteseg_ros.runtime import build_pipeline

    return build_pipeline(params.pipeline_settings(settings), log=lambda m: None)


def no_leftovers(parent: Path) -> bool:
    return not [p for p in parent.iterdir() if p.name.endswith(".partial")]


OUTPUTS = {"label": "mono8", "color": "rgb8", "overlay": "bgr8", "confidence": "mono8",
           "masks/drivable": "mono8", "masks/vehicles": "mono8"}


def check_outputs(got: dict, written: dict, camera_topic: str, root: str, pipe, node: str = "/liteseg") -> None:
    """Every input frame of camera_topic has every output under root, with its stamps, sizes, encodings."""
    classes = ClassTable.cityscapes()
    inputs = {t: TS.deserialize_cdr(raw, "sensor_msgs/msg/CompressedImage" if camera_topic.endswith(
        "compressed") else "sensor_msgs/msg/Image") for t, raw in written[camera_topic]}
    times = sorted(inputs)
    for key, enc in OUTPUTS.items():
        msgs = got[f"{root}/{key}"]
        assert [t for t, _, _ in msgs] == times, key  # recorded receive times, every frame, in order
        for t, m, _ in msgs:
            assert stamp_ns(m.header) == stamp_ns(inputs[t].header) == t - STAMP_LAG, key
            assert m.header.frame_id == inputs[t].header.frame_id
            assert (m.encoding, m.height, m.width) == (enc, H, W), key
    boundary = got[f"{root}/drivable_boundary"]
    stats = got[f"{root}/stats"]
    assert [t for t, _, _ in boundary] == times and [t for t, _, _ in stats] == times
    for k, ((t, label_msg, _), (_, b, _), (_, st, _)) in enumerate(zip(got[f"{root}/label"], boundary, stats,
                                                                       strict=True)):
        label = image_codec.decode_image(label_msg)[:, :, 0]
        # The same processing as the node: Pipeline.run on the decoded input gives the same label.
        want = pipe.run([image_codec.decode_any(inputs[t])])[0].label
        assert np.mean(label == want) > 0.99
        color = image_codec.decode_image(next(m for u, m, _ in got[f"{root}/color"] if u == t), want="rgb8")
        assert np.array_equal(color, classes.palette_lut()[label])
        for g, names in GROUPS.items():
            mask = image_codec.decode_image(next(m for u, m, _ in got[f"{root}/masks/{g}"] if u == t))[:, :, 0]
            assert np.array_equal(mask == 255, np.isin(label, [classes.index(n) for n in names])), g
            assert set(np.unique(mask)) <= {0, 255}
        assert (b.width, b.height) == (W, H) and len(b.row) == W
        assert b.drivable_fraction == pytest.approx(np.mean(label == classes.index("road")), abs=1e-6)
        assert stamp_ns(b.header) == stamp_ns(st.header) == t - STAMP_LAG
        assert st.processed == k + 1 and st.received == k + 1 and st.rejected == 0
        assert st.infer_ms > 0 and st.input_age_ms == pytest.approx(STAMP_LAG / 1e6)
    info = got[f"{node}/info"]  # one latched ~/info per node, written with the first frame
    assert len(info) == 1 and info[0][0] <= times[0]
    i = info[0][1]
    assert list(i.class_names) == list(classes.names) and (i.network_width, i.network_height) == (96, 64)
    assert {g.name: list(g.class_names) for g in i.mask_groups} == GROUPS
    assert i.model_name == "tiny-random" and i.backend
    assert bytes(i.colors) == bytes(classes.flat_colors())
    # ~/label_info as the node latches it (vision_msgs/LabelInfo), read back by the real vision_msgs type
    from rclpy.serialization import deserialize_message
    from vision_msgs.msg import LabelInfo

    (t_li, _, raw), = got[f"{node}/label_info"]
    li = deserialize_message(raw, LabelInfo)
    assert t_li == info[0][0] and [c.class_name for c in li.class_map] == list(classes.names)
    assert [c.class_id for c in li.class_map] == list(range(len(classes.names))) and 0 <= li.threshold <= 1


def check_qos(meta: dict, *roots: str) -> None:
    """ros2 bag (Jazzy) needs: v9, cdr, hashes, and we record offered QoS for every topic."""
    assert meta["version"] == 9
    for entry in meta["topics_with_message_count"]:
        tm = entry["topic_metadata"]
        assert tm["serialization_format"] == "cdr" and tm["type_description_hash"].startswith("RIHS01_")
        qos = tm["offered_qos_profiles"]
        assert len(qos) == 1, tm["name"]
        if tm["name"] in ("/liteseg/info", "/liteseg/label_info"):
            assert (qos[0]["reliability"], qos[0]["durability"]) == ("reliable", "transient_local")
        elif any(tm["name"].startswith(r + "/") for r in roots):
            assert (qos[0]["reliability"], qos[0]["durability"]) == ("reliable", "volatile")
        elif tm["type"].startswith("sensor_msgs"):
            assert qos[0]["reliability"] == "best_effort"  # sensor data, as cameras offer it


# ------------------------------------------------------------------------------------------ bag -> bag
def test_two_cameras_raw_and_compressed_sqlite_to_mcap(tmp_path, params_file, pipeline, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    cams = {"/front/image_raw": "bgr8", "/rear/image_raw/compressed": "jpeg"}
    written = write_bag(src, "sqlite3", cams, n=4)
    rc = cli.main(["bag", str(src), str(out), "--topic", "/front/image_raw", "--topic",
                   "/rear/image_raw/compressed", "--params-file", str(params_file), "--storage", "mcap",
                   "--no-progress"])
    text = capsys.readouterr()
    assert rc == 0, text.err
    assert "8/8 frames" in text.out and "/front/image_raw -> /liteseg/front/*" in text.out
    got, types = read_bag(out)
    # The input topics, unchanged: same types, bag times and bytes.
    for topic, msgs in written.items():
        assert [(t, raw) for t, _, raw in got[topic]] == msgs, topic
    assert types["/chatter"] == "std_msgs/msg/String"
    # The node's multi-camera layout: /liteseg/<camera>/..., one /liteseg/info.
    for topic, root in (("/front/image_raw", "/liteseg/front"), ("/rear/image_raw/compressed", "/liteseg/rear")):
        check_outputs(got, written, topic, root, pipeline[0])
        assert {s.camera for _, s, _ in got[f"{root}/stats"]} == {root.split("/")[2]}
    expected = set(written) | {"/liteseg/info", "/liteseg/label_info"} | {f"/liteseg/{c}/{k}" for c in ("front", "rear") for k in
                                                   [*OUTPUTS, "drivable_boundary", "stats"]}
    assert set(got) == expected
    # The node's batching: the two cameras' frames (1 ms apart, batch_window_ms 5) share one forward.
    for (_, a, _), (_, b, _) in zip(got["/liteseg/front/stats"], got["/liteseg/rear/stats"], strict=True):
        assert a.infer_ms == b.infer_ms  # per-frame share of one batch's inference time
    meta = metadata(out)
    assert meta["storage_identifier"] == "mcap" and list(out.glob("*.mcap"))
    assert meta["custom_data"]["liteseg_ros.complete"] == "true"
    check_qos(meta, "/liteseg/front", "/liteseg/rear")
    assert no_leftovers(tmp_path)


def test_console_script_mcap_to_sqlite_single_topic(tmp_path, params_file, pipeline):
    src, out = tmp_path / "in", tmp_path / "out"
    written = write_bag(src, "mcap", {"/camera/image_raw": "rgb8"}, n=3)
    proc = subprocess.run([str(EXE / "liteseg"), "bag", str(src), str(out), "-t", "/camera/image_raw",
                           "--params-file", str(params_file), "--storage", "sqlite3"],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "frame/s" in proc.stderr and "3/3" in proc.stderr  # tqdm progress: rate and count
    got, _ = read_bag(out)
    assert [(t, raw) for t, _, raw in got["/camera/image_raw"]] == written["/camera/image_raw"]
    check_outputs(got, written, "/camera/image_raw", "/liteseg", pipeline[0])
    assert {s.camera for _, s, _ in got["/liteseg/stats"]} == {""}  # the single-camera node's name
    meta = metadata(out)
    assert meta["storage_identifier"] == "sqlite3"
    check_qos(meta, "/liteseg")
    db = sqlite3.connect(next(out.glob("*.db3")))
    assert db.execute("select schema_version from schema").fetchone()[0] == 4
    assert db.execute("select metadata_version from metadata").fetchone()[0] == 9
    assert ("liteseg_ros/msg/SegmentationInfo", "ros2msg") in db.execute(
        "select topic_type, encoding from message_definitions").fetchall()
    db.close()


def test_node_name_camera_names_and_fixed_batches(tmp_path, settings, pipeline):
    src = tmp_path / "in"
    cams = {"/cam/left/image_raw": "bgr8", "/cam/right/image_raw": "bgr8", "/image_mono": "bgr8"}
    written = write_bag(src, "sqlite3", cams, n=3, chatter=False)
    s = bagmod.segment_bag(src, tmp_path / "a", list(cams), settings, node_name="seg", batch=2, progress=False,
                           pipeline=pipeline)
    assert s.complete and s.frames == s.total == 9
    assert s.cameras == {"/cam/left/image_raw": "/seg/left", "/cam/right/image_raw": "/seg/right",
                         "/image_mono": "/seg/image_mono"}
    got, _ = read_bag(tmp_path / "a")
    for topic, root in s.cameras.items():
        assert [t for t, _, _ in got[f"{root}/label"]] == [t for t, _ in written[topic]]
    assert len(got["/seg/info"]) == len(got["/seg/label_info"]) == 1
    # names from the params' `cameras` (as the node would publish with that file), or from --cameras
    s = bagmod.segment_bag(src, tmp_path / "b", list(cams), dict(settings, cameras=["l", "r", "m"]),
                           progress=False, pipeline=pipeline)
    assert list(s.cameras.values()) == ["/liteseg/l", "/liteseg/r", "/liteseg/m"]
    s = bagmod.segment_bag(src, tmp_path / "c", ["/image_mono"], settings, cameras=["mono"], progress=False,
                           pipeline=pipeline)
    assert s.cameras == {"/image_mono": "/liteseg/mono"}
    with pytest.raises(bagmod.BagError, match="unique identifiers"):
        bagmod.segment_bag(src, tmp_path / "d", list(cams), settings, cameras=["a", "a", "b"], progress=False,
                           pipeline=pipeline)


@pytest.mark.parametrize(("topics", "expected"), [
    (["/camera/image_raw"], [""]),
    (["/front/image_raw", "/rear/image_raw/compressed"], ["front", "rear"]),
    (["/cam/left/image_raw", "/cam/right/image_raw"], ["left", "right"]),
    (["/a/b/image", "/image_left"], ["b", "image_left"]),
    (["/a/cam/image", "/b/cam/image"], ["a_cam", "b_cam"]),
    (["/cam/image_raw", "/cam/image_rect"], ["cam_image_raw", "cam_image_rect"]),
    (["/cam/image_raw", "/cam/image_raw/compressed"], ["cam_image_raw", "cam_image_raw_compressed"]),
    (["/0cam/image", "/my-cam/image"], ["cam_0cam", "my_cam"]),
])
def test_camera_names(topics, expected):
    assert list(bagmod.camera_names(topics).values()) == expected


# ------------------------------------------------------------------------------------------ errors
@pytest.fixture(scope="module")
def small_bag(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("small") / "in"
    write_bag(p, "sqlite3", {"/front/image_raw": "bgr8"}, n=6)
    return p


def test_missing_topic_lists_the_topics_that_exist(tmp_path, small_bag, params_file, capsys):
    rc = cli.main(["bag", str(small_bag), str(tmp_path / "out"), "--topic", "/back/image_raw",
                   "--params-file", str(params_file)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "/back/image_raw is not in the bag" in err
    assert "/front/image_raw  [sensor_msgs/msg/Image]" in err and "/chatter  [std_msgs/msg/String]" in err
    assert not (tmp_path / "out").exists() and no_leftovers(tmp_path)


def test_non_image_topic_is_refused_by_name(tmp_path, small_bag, params_file, capsys):
    rc = cli.main(["bag", str(small_bag), str(tmp_path / "out"), "--topic", "/chatter",
                   "--params-file", str(params_file)])
    err = capsys.readouterr().err
    assert rc == 2 and "/chatter has type std_msgs/msg/String, not an image" in err
    assert not (tmp_path / "out").exists() and no_leftovers(tmp_path)


@pytest.mark.parametrize(("content", "expected"), [
    ({"/**": {"ros__parameters": {"network_widht": 96}}}, "unknown parameter 'network_widht'"),
    ({"/**": {"ros__parameters": {"overlay_alpha": 2.0}}}, "overlay_alpha: 2.0 is out of range"),
    ({"/**": {"ros__parameters": {"mask_groups": {"drivable": ["roadd"]}}}}, "roadd"),
    ("{not: yaml: [", "is not valid YAML"),
    (None, "does not exist"),
])
def test_bad_params_file(tmp_path, small_bag, content, expected, capsys):
    pf = tmp_path / "bad.yaml"
    if content is not None:
        pf.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    rc = cli.main(["bag", str(small_bag), str(tmp_path / "out"), "-t", "/front/image_raw", "--params-file", str(pf)])
    err = capsys.readouterr().err
    assert rc == 2 and expected in err, err
    assert not (tmp_path / "out").exists()


def test_missing_weights_existing_output_and_missing_bag(tmp_path, small_bag, capsys):
    rc = cli.main(["bag", str(small_bag), str(tmp_path / "out"), "-t", "/front/image_raw", "-p", "backend:=pytorch"])
    assert rc == 2 and "no weights given" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and no_leftovers(tmp_path)
    (tmp_path / "exists").mkdir()
    rc = cli.main(["bag", str(small_bag), str(tmp_path / "exists"), "-t", "/front/image_raw"])
    assert rc == 2 and "exists; choose another name or pass --overwrite" in capsys.readouterr().err
    rc = cli.main(["bag", str(tmp_path / "nope"), str(tmp_path / "out"), "-t", "/x"])
    assert rc == 2 and "does not exist" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ interruption
def _check_partial(out: Path, small_bag: Path, frames: int) -> None:
    meta = metadata(out)
    assert meta["custom_data"]["liteseg_ros.complete"] == "false"
    assert meta["custom_data"]["liteseg_ros.frames"] == str(frames)
    got, _ = read_bag(out)  # opens and reads every message: a valid bag
    inputs, _ = read_bag(small_bag)
    labels = got["/liteseg/label"]
    assert len(labels) == frames
    in_stamps = {stamp_ns(m.header) for _, m, _ in inputs["/front/image_raw"]}
    assert {stamp_ns(m.header) for _, m, _ in labels} <= in_stamps
    # every frame copied into the partial bag has its outputs (graceful stop finishes the batch)
    assert [t for t, _, _ in got["/front/image_raw"]] == [t for t, _, _ in labels]


def test_stop_event_leaves_a_valid_partial_bag(tmp_path, small_bag, settings, pipeline):
    stop = threading.Event()
    out = tmp_path / "out"
    s = bagmod.segment_bag(small_bag, out, ["/front/image_raw"], settings, progress=False, pipeline=pipeline,
                           stop_event=stop, on_frame=lambda n: n >= 2 and stop.set())
    assert (s.complete, s.stop_reason, s.frames, s.output) == (False, "stop", 2, out)
    _check_partial(out, small_bag, 2)
    assert no_leftovers(tmp_path)
    # stopped before the first frame (e.g. Ctrl-C while the model loads): no bag at all
    s = bagmod.segment_bag(small_bag, tmp_path / "none", ["/front/image_raw"], settings, progress=False,
                           pipeline=pipeline, stop_event=stop)
    assert (s.output, s.frames, s.stop_reason) == (None, 0, "stop")
    assert not (tmp_path / "none").exists() and no_leftovers(tmp_path)


def test_max_frames(tmp_path, small_bag, settings, pipeline):
    s = bagmod.segment_bag(small_bag, tmp_path / "out", ["/front/image_raw"], settings, progress=False,
                           pipeline=pipeline, max_frames=3)
    assert (s.complete, s.stop_reason, s.frames, s.total) == (False, "max_frames", 3, 3)
    _check_partial(tmp_path / "out", small_bag, 3)


def _raise(exc_type, after: int):
    def cb(n: int) -> None:
        if n >= after:
            raise exc_type("injected")
    return cb


def test_keyboard_interrupt_keeps_a_valid_bag_or_removes_it(tmp_path, small_bag, settings, pipeline):
    keep = tmp_path / "keep"
    s = bagmod.segment_bag(small_bag, keep, ["/front/image_raw"], settings, progress=False, pipeline=pipeline,
                           on_frame=_raise(KeyboardInterrupt, 3))
    assert (s.complete, s.stop_reason, s.output) == (False, "interrupt", keep)
    _check_partial(keep, small_bag, 3)
    gone = tmp_path / "gone"
    s = bagmod.segment_bag(small_bag, gone, ["/front/image_raw"], settings, progress=False, pipeline=pipeline,
                           on_frame=_raise(KeyboardInterrupt, 2), on_interrupt="delete")
    assert s.output is None and not gone.exists()
    # any other failure: no bag at all, never a half-written one
    with pytest.raises(RuntimeError, match="injected"):
        bagmod.segment_bag(small_bag, gone, ["/front/image_raw"], settings, progress=False, pipeline=pipeline,
                           on_frame=_raise(RuntimeError, 2))
    assert not gone.exists() and no_leftovers(tmp_path)


def test_sigint_to_the_console_script_leaves_a_valid_partial_bag(tmp_path, params_file):
    src, out = tmp_path / "in", tmp_path / "out"
    write_bag(src, "sqlite3", {"/front/image_raw": "bgr8"}, n=400, h=24, w=40, chatter=False,
              distinct=4)
    proc = subprocess.Popen([str(EXE / "liteseg"), "bag", str(src), str(out), "-t", "/front/image_raw",
                             "--params-file", str(params_file), "--batch", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    err = ""
    deadline = time.monotonic() + 120
    while not [n for n in re.findall(r"\| *(\d+)/400", err) if int(n) > 0]:  # the bar shows frames done
        ch = proc.stderr.read(1)  # tqdm redraws with \r: read characters, not lines
        assert ch, f"liteseg bag ended before it was interrupted: {err}"
        err += ch
        assert time.monotonic() < deadline
    proc.send_signal(signal.SIGINT)
    stdout, rest = proc.communicate(timeout=60)
    err += rest
    assert proc.returncode == 130, err
    assert "valid but PARTIAL bag" in err
    meta = metadata(out)
    assert meta["custom_data"]["liteseg_ros.complete"] == "false"
    frames = int(meta["custom_data"]["liteseg_ros.frames"])
    assert 0 < frames < 400
    got, _ = read_bag(out)
    assert len(got["/liteseg/label"]) == len(got["/front/image_raw"]) == frames
    assert no_leftovers(tmp_path)


# ------------------------------------------------------------------------------------------ types
def test_our_message_hashes_match_rosidl():
    share = Path(sys.prefix) / "share" / "liteseg_ros" / "msg"
    if not (share / "SegmentationInfo.json").is_file():
        pytest.skip("liteseg_ros messages are not built into this environment")
    ts, ok = bagmod.make_typestore()
    assert ok
    for f in sorted(share.glob("*.json")):
        name = f"liteseg_ros/msg/{f.stem}"
        hashes = {h["type_name"]: h["hash_string"] for h in json.loads(f.read_text())["type_hashes"]}
        assert ts.hash_rihs01(name) == hashes[name], name


# ------------------------------------------------------------------------------------------ play
def test_play_refuses_a_missing_topic(small_bag, capsys):
    rc = cli.main(["play", str(small_bag), "--topics", "/nope"])
    err = capsys.readouterr().err
    assert rc == 2 and "/nope are not in the bag" in err and "/front/image_raw" in err


@pytest.mark.ros
def test_play_into_the_live_node_with_sim_time(tmp_path, start_node, ros, tiny_checkpoint, params_file):
    from sensor_msgs.msg import Image

    from liteseg_ros.msg import FrameStats

    src = tmp_path / "in"
    written = write_bag(src, "sqlite3", {"/camera/image_raw": "bgr8"}, n=6)
    stamps = [t - STAMP_LAG for t, _ in written["/camera/image_raw"]]
    cache = yaml.safe_load(params_file.read_text())["/**"]["ros__parameters"]["engine_cache_dir"]
    node = start_node({"weights": str(tiny_checkpoint), **NET, "engine_cache_dir": cache, "use_sim_time": True,
                       "process_all_frames": True}, extra_args=["-r", "image:=/camera/image_raw"])
    labels = ros.collect(Image, "/liteseg/label")
    stats = ros.collect(FrameStats, "/liteseg/stats")
    ros.wait_for(lambda: ros.node.count_publishers("/liteseg/label") > 0 or not node.alive(), 90,
                 "the node's publishers")
    assert node.alive(), node.output()
    # the child inherits this session's isolated DDS domain from os.environ (set by conftest)
    # as the README says it: by default play waits for a subscriber on the image topic (no --wait-for)
    proc = subprocess.run([str(EXE / "liteseg"), "play", str(src), "--clock", "--rate", "2"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr + node.output()
    assert "published 12 messages" in proc.stdout
    ros.wait_for(lambda: len(labels) >= 6 and len(stats) >= 6, 60, "6 labels")
    assert [stamp_ns(m.header) for m in labels] == stamps
    # use_sim_time: the node's clock follows /clock (bag time), so the input age is the recorded
    # 5 ms lag (plus at most a /clock period), not the years since 2023 that wall time would give.
    ages = [s.input_age_ms for s in stats[1:]]
    assert all(abs(a) < 1000 for a in ages), ages


# ------------------------------------------------------------------------------------------ safety
def _tree(path: Path) -> dict[str, bytes]:
    """Every file under path (or the file itself) -> its bytes: to show that nothing was touched."""
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _bag_cli(src: Path, out: Path, *extra: str) -> int:
    # No weights: if a check ran after the model load, the error would be "no weights given" instead.
    return cli.main(["bag", str(src), str(out), "-t", "/front/image_raw", "--no-progress", *extra])


@pytest.mark.parametrize("case", ["input_itself", "folder_holding_input", "inside_input", "foreign_folder",
                                  "foreign_bag", "regular_file", "our_bag_plus_user_file", "symlink_to_our_bag"])
def test_overwrite_never_touches_what_we_did_not_write(tmp_path, small_bag, case, capsys):
    import shutil

    root = tmp_path / "work"
    src = root / "in"
    shutil.copytree(small_bag, src)
    if case == "input_itself":
        out = src
    elif case == "folder_holding_input":
        out = root
    elif case == "inside_input":
        out = src / "sub"
    elif case == "foreign_folder":
        out = root / "photos"
        out.mkdir()
        (out / "holiday.jpg").write_bytes(b"precious")
    elif case == "foreign_bag":  # a bag `ros2 bag record` wrote: a bag, but not ours
        out = root / "recorded"
        write_bag(out, "sqlite3", {"/front/image_raw": "bgr8"}, n=2, chatter=False)
    elif case == "regular_file":
        out = root / "notes.txt"
        out.write_text("keep me")
    else:
        ours = root / "ours"
        assert cli.main(["bag", str(src), str(ours), "-t", "/front/image_raw", "--no-progress",
                         "-p", "allow_random_weights:=true", *sum((["-p", f"{k}:={v}"] for k, v in NET.items()),
                                                                   [])]) == 0
        if case == "our_bag_plus_user_file":
            out = ours
            (out / "my_notes.txt").write_text("mine")
        else:
            out = root / "link"
            out.symlink_to(ours)
    before = {p: _tree(p) for p in (src, out) if p.exists()}
    capsys.readouterr()
    rc = _bag_cli(src, out, "--overwrite")
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "no weights given" not in err, "the output was checked only after the model was loaded"
    assert ("input" in err) if case in ("input_itself", "folder_holding_input", "inside_input") else (
        "only replaces a bag that `liteseg bag` wrote" in err), err
    assert {p: _tree(p) for p in before} == before  # nothing deleted or changed
    assert no_leftovers(root)


def test_overwrite_replaces_a_bag_we_wrote(tmp_path, small_bag, params_file, capsys):
    out = tmp_path / "out"
    assert cli.main(["bag", str(small_bag), str(out), "-t", "/front/image_raw", "--params-file", str(params_file),
                     "--no-progress", "--max-frames", "2"]) == 0
    meta = metadata(out)["custom_data"]
    assert meta["liteseg_ros.writer"] == "liteseg bag" and meta["liteseg_ros.complete"] == "false"
    rc = cli.main(["bag", str(small_bag), str(out), "-t", "/front/image_raw", "--params-file", str(params_file),
                   "--no-progress", "--overwrite"])
    assert rc == 0, capsys.readouterr().err
    assert metadata(out)["custom_data"]["liteseg_ros.complete"] == "true"
    assert len(read_bag(out)[0]["/liteseg/label"]) == 6 and no_leftovers(tmp_path)
    # a bag written before the writer key existed (only liteseg_ros.complete) still counts as ours
    meta_file = out / "metadata.yaml"
    meta_file.write_text(meta_file.read_text().replace("liteseg_ros.writer: liteseg bag", "x_other: y"))
    assert "liteseg_ros.writer" not in meta_file.read_text()
    assert cli.main(["bag", str(small_bag), str(out), "-t", "/front/image_raw", "--params-file", str(params_file),
                     "--no-progress", "--overwrite", "--max-frames", "1"]) == 0


@pytest.mark.parametrize("value", ["-1", "0"])
def test_max_frames_below_one_is_refused(tmp_path, small_bag, value, capsys):
    rc = _bag_cli(small_bag, tmp_path / "out", "--max-frames", value)
    assert rc == 2 and f"--max-frames must be >= 1, got {value}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_all_frames_rejected_exits_nonzero_and_is_not_complete(tmp_path, params_file, capsys):
    src = tmp_path / "bad"
    with Writer(src, version=9, storage_plugin=StoragePlugin.SQLITE3) as wr:
        conn = wr.add_connection("/cam/image_raw/compressed", "sensor_msgs/msg/CompressedImage", typestore=TS)
        for i in range(4):
            msg = T["sensor_msgs/msg/CompressedImage"](header=header(T0 + i * PERIOD, "cam"), format="jpeg",
                                                        data=np.frombuffer(b"\xff\xd8\xffnot a jpeg", np.uint8))
            wr.write(conn, T0 + i * PERIOD, bytes(TS.serialize_cdr(msg, msg.__msgtype__)))
    out = tmp_path / "out"
    rc = cli.main(["bag", str(src), str(out), "-t", "/cam/image_raw/compressed", "--params-file", str(params_file),
                   "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "every frame was rejected" in err, err
    assert metadata(out)["custom_data"]["liteseg_ros.complete"] == "false"


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_truncated_input_names_the_file(tmp_path, params_file, storage, capsys):
    src = tmp_path / "in"
    write_bag(src, storage, {"/front/image_raw": "bgr8"}, n=10, chatter=False, distinct=2)
    f = next(p for p in src.iterdir() if p.suffix in (".mcap", ".db3"))
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    rc = cli.main(["bag", str(src), str(tmp_path / "out"), "-t", "/front/image_raw", "--params-file",
                   str(params_file), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and str(f) in err, err
    assert not (tmp_path / "out").exists() and no_leftovers(tmp_path)


def _wait_for_progress(proc, total: int) -> str:
    err = ""
    deadline = time.monotonic() + 120
    while not [n for n in re.findall(rf"\| *(\d+)/{total}", err) if int(n) > 0]:
        ch = proc.stderr.read(1)
        assert ch, f"liteseg bag ended early: {err}"
        err += ch
        assert time.monotonic() < deadline
    return err


def test_sigkill_leftovers_are_cleaned_by_the_next_run(tmp_path, params_file):
    import os

    src, out = tmp_path / "in", tmp_path / "out"
    write_bag(src, "sqlite3", {"/front/image_raw": "bgr8"}, n=400, h=24, w=40, chatter=False, distinct=4)
    cmd = [str(EXE / "liteseg"), "bag", str(src), str(out), "-t", "/front/image_raw", "--params-file",
           str(params_file), "--batch", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    _wait_for_progress(proc, 400)
    proc.kill()
    proc.wait(30)
    stale = [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    assert len(stale) == 1 and stale[0].name.startswith(".out.")
    # beside it: a folder of another run still going (this process) and one that is not ours at all
    alive = tmp_path / ".out.alive.partial"
    alive.mkdir()
    (alive / bagmod.OWNER_FILE).write_text(bag_files.owner_text())
    foreign = tmp_path / ".out.foreign.partial"
    foreign.mkdir()
    (foreign / "data").write_text("not ours")
    res = subprocess.run([*cmd, "--max-frames", "2", "--no-progress"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert not stale[0].exists() and f"removed {stale[0]}" in res.stderr
    assert alive.exists() and foreign.exists() and str(alive) in res.stderr and str(foreign) in res.stderr
    assert (foreign / "data").read_text() == "not ours"
    assert metadata(out)["custom_data"]["liteseg_ros.frames"] == "2"
    assert os.getpid()  # (the alive folder names this test process, which is running)


def test_ctrl_c_twice_never_prints_a_traceback(tmp_path, params_file):
    """Twice early (while the command imports torch and OpenCV), twice while it loads the model, and
    twice while it segments: one line each time, exit 130, no KeyboardInterrupt traceback."""
    src = tmp_path / "in"
    write_bag(src, "sqlite3", {"/front/image_raw": "bgr8"}, n=400, h=24, w=40, chatter=False, distinct=4)
    for k, when in enumerate((0.4, 1.5, "running")):
        out = tmp_path / f"out{k}"
        proc = subprocess.Popen([str(EXE / "liteseg"), "bag", str(src), str(out), "-t", "/front/image_raw",
                                 "--params-file", str(params_file), "--batch", "1"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        err = _wait_for_progress(proc, 400) if when == "running" else ""
        if when != "running":
            time.sleep(when)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=60)
        err += rest
        # 130, or killed by the SIGINT Python re-raises after an interrupt in its own start-up (a shell shows 130)
        assert proc.returncode in (130, -signal.SIGINT), (when, err)
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, (when, err)
        assert no_leftovers(tmp_path)


def test_onnx_weights_in_the_bag_tool(tmp_path, small_bag, tiny_checkpoint, capsys):
    from liteseg_ros.engines.export import export_onnx
    from liteseg_ros.model import load_checkpoint

    onnx_path = export_onnx(load_checkpoint(tiny_checkpoint), tmp_path / "tiny.onnx", (64, 96))
    rc = cli.main(["bag", str(small_bag), str(tmp_path / "out"), "-t", "/front/image_raw", "--no-progress",
                   "-p", f"weights:={onnx_path}", "-p", "backend:=onnxruntime", "-p", "network_width:=96",
                   "-p", "network_height:=64"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "pickled" not in err and len(read_bag(tmp_path / "out")[0]["/liteseg/label"]) == 6


# ------------------------------------------------------------------------------------------ play: hostile types
def _bag_naming_types(path: Path, types: list[str]) -> None:
    """A bag whose connections name ``types`` (each with one std_msgs/String-shaped message)."""
    with Writer(path, version=9, storage_plugin=StoragePlugin.SQLITE3) as wr:
        raw = bytes(TS.serialize_cdr(T["std_msgs/msg/String"](data="x"), "std_msgs/msg/String"))
        for i, msgtype in enumerate(types):
            conn = wr.add_connection(f"/t{i}", msgtype, msgdef="string data", rihs01="RIHS01_" + "0" * 64)
            wr.write(conn, T0 + i, raw)


@pytest.mark.ros
@pytest.mark.parametrize("types", [["venv/__main__/Clock"], ["venv/msg/Clock", "os/msg/Path", "std_msgs/msg/String"]],
                         ids=["only_hostile", "hostile_and_good"])
def test_play_imports_only_installed_ros_message_packages(tmp_path, types):
    """Before: ``venv/__main__/Clock`` ran Python's venv tool (virtual environments in the working
    folder and inside the bag) and exited 0."""
    work = tmp_path / "work"
    work.mkdir()
    src = tmp_path / "in"
    _bag_naming_types(src, types)
    before = {p: _tree(p) for p in (work, src)}
    proc = subprocess.run([str(EXE / "liteseg"), "play", str(src)], cwd=work, capture_output=True, text=True,
                          timeout=120)
    assert {p: _tree(p) for p in before} == before and list(work.iterdir()) == []
    for bad in (t for t in types if not t.startswith("std_msgs")):
        assert bad in proc.stderr, proc.stderr
    if types == ["venv/__main__/Clock"]:
        assert proc.returncode == 2 and "nothing to play" in proc.stderr, proc.stdout + proc.stderr
        assert "not a ROS message type 'package/msg/Name'" in proc.stderr
    else:
        assert proc.returncode == 0 and "published 1 messages" in proc.stdout, proc.stdout + proc.stderr
        assert "no installed ROS message package provides venv/msg/Clock" in proc.stderr


# ------------------------------------------------------------------------------------------ hostile input, failing output
def test_a_frame_longer_than_the_limits_allow_is_refused_by_its_length(tmp_path, params_file, capsys):
    """Before: a frame was deserialised (and copied to the output) whatever its length; a 126 KB zstd
    bag of 32768x32768 images took 5 GB of memory and wrote 3 GB."""
    from liteseg_ros.image_codec import max_message_bytes

    src, out = tmp_path / "in", tmp_path / "out"
    written = write_bag(src, "sqlite3", {"/front/image_raw": "bgr8"}, n=3, h=160, w=240, chatter=False)
    limit = max_message_bytes(1000)
    assert all(len(raw) > limit for _, raw in written["/front/image_raw"])
    rc = cli.main(["bag", str(src), str(out), "-t", "/front/image_raw", "--params-file", str(params_file),
                   "-p", "max_input_pixels:=1000", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "every frame was rejected" in err, err
    assert f"more than the {limit} an image within max_input_pixels=1000 can take (not copied)" in err
    got, _ = read_bag(out)
    assert "/front/image_raw" not in got or got["/front/image_raw"] == []


_FSIZE = """
import resource, signal, sys
from liteseg_ros.cli import main
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writing past the limit fails with EFBIG, as a full disk does
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.RLIM_INFINITY))
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_a_full_disk_while_writing_is_an_output_failure_exit_1(tmp_path, params_file, storage):
    """Before: sqlite's "database or disk is full" read as "cannot read input bag" (exit 2); mcap's
    EFBIG ended in a traceback."""
    src = tmp_path / "in"
    write_bag(src, "sqlite3", {"/front/image_raw": "bgr8"}, n=12, chatter=False, distinct=3)
    args = ["bag", str(src), str(tmp_path / "out"), "-t", "/front/image_raw", "--params-file", str(params_file),
            "--storage", storage, "--no-progress"]
    assert cli.main([*args[:2], str(tmp_path / "warm"), *args[3:]]) == 0  # the engine cache is filled first
    proc = subprocess.run([sys.executable, "-c", _FSIZE, "150000", *args], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"cannot write the output bag {tmp_path / 'out'}" in proc.stderr, proc.stderr[-3000:]
    assert "cannot read input bag" not in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists() and no_leftovers(tmp_path)
