"""One output contract: the node and ``liteseg bag`` publish the same topics with the same messages.

The unit tests pin the contract's rules (names, wants, batching, intrinsics) without DDS; the
type-factory test builds every message with rclpy's classes and with the rosbags typestore's and
compares them; the end-to-end test sends the same frames to the node (its own process, real DDS)
and through ``liteseg bag`` and compares every output message field by field.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from liteseg_ros import contract, params
from liteseg_ros.classes import ClassTable
from liteseg_ros.segmentation import Boundary, Geometry, Segmentation, Wants

VALUES = {"publish_label": True, "publish_color": True, "publish_overlay": True, "publish_confidence": True,
          "publish_masks": True, "publish_boundary": True, "batch_window_ms": 5.0, "batch_cameras": True}
GROUPS = ("drivable", "vehicles")


# ------------------------------------------------------------------------------------------ pure rules
def test_node_has_every_output_and_the_bag_those_switched_on_without_live_inputs():
    node = [o.suffix for o in contract.camera_outputs(GROUPS, have_custom=True)]
    assert node == ["label", "label/camera_info", "color", "overlay", "confidence", "drivable_boundary", "stats",
                    "masks/drivable", "masks/vehicles"]
    off = dict(VALUES, publish_overlay=False, publish_masks=False)
    bag = [o.suffix for o in contract.camera_outputs(GROUPS, True, off, live_inputs=False)]
    assert bag == ["label", "color", "confidence", "drivable_boundary", "stats"]
    # no drivable group: no boundary; no custom messages: neither boundary nor stats
    assert "drivable_boundary" not in [o.suffix for o in contract.camera_outputs(["vehicles"], True, VALUES)]
    assert [o.suffix for o in contract.camera_outputs([], False)] == ["label", "label/camera_info", "color",
                                                                       "overlay", "confidence"]
    assert contract.camera_prefix("~", "") == "~" and contract.camera_prefix("/liteseg", "front") == "/liteseg/front"


def test_wants_follow_toggles_and_listeners():
    w = contract.wants(VALUES, GROUPS, have_custom=True)
    assert w == Wants(label=True, confidence=True, color=True, overlay=True, masks=frozenset(GROUPS), boundary=True)
    listened = {"label/camera_info", "masks/vehicles", "drivable_boundary"}
    w = contract.wants(dict(VALUES, publish_boundary=False), GROUPS, True, lambda s: s in listened)
    # the label is made for its camera_info alone; an output nobody listens to is not made
    assert w.label and not w.color and not w.overlay and not w.confidence and not w.boundary
    assert w.masks == frozenset({"vehicles"})
    assert not contract.wants(VALUES, GROUPS, have_custom=False).boundary


REPO = Path(__file__).resolve().parents[1]


def _readme_topics() -> dict[str, str]:
    """``~/suffix`` -> type column of the README's topics table (the ``~/`` rows of "| topic | type |")."""
    lines = (REPO / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| topic | type |"))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0].startswith("`~/"):
            rows[cells[0].strip("`")[2:]] = cells[1]
    return rows


def _readme_type(msgtype: str, encoding: str | None) -> str:
    """How the README's topics table writes a message type: 'Image mono8', 'CameraInfo', 'liteseg_ros/X'."""
    package, _, name = msgtype.split("/")
    shown = name if package == "sensor_msgs" else f"{package}/{name}"
    return f"{shown} {encoding}" if encoding else shown


def test_readme_topics_table_lists_exactly_the_output_table():
    """Every output of the table, with its message type and encoding, and nothing else (besides the
    node-wide latched ones): a row added to the table and not to the README fails here."""
    topics = _readme_topics()
    expected = {o.suffix: _readme_type(o.msgtype, o.encoding) for o in contract.OUTPUTS}
    node_wide = {contract.INFO_SUFFIX, contract.LABEL_INFO_SUFFIX}
    assert set(topics) - node_wide == set(expected)
    for suffix, shown in expected.items():
        assert topics[suffix].startswith(shown), (suffix, topics[suffix], shown)


def test_shipped_yaml_and_readme_list_exactly_the_output_toggles_with_their_topics():
    """config/liteseg.yaml and the README's parameter table have one publish_* entry per toggle of the
    output table, each naming the topics it switches; the parameter table has them, live, default on."""
    readme = {line.split("|")[1].strip().strip("`"): line for line in (REPO / "README.md").read_text().splitlines()
              if line.startswith("| `publish_")}
    assert set(readme) == set(contract.TOGGLES)
    for o in contract.OUTPUTS:
        if o.toggle is not None:
            assert f"`~/{o.suffix}`" in readme[o.toggle], (o.toggle, o.suffix)
    text = (REPO / "config" / "liteseg.yaml").read_text()
    keys = params.yaml_keys(REPO / "config" / "liteseg.yaml")
    assert {k for k in keys if k.startswith("publish_")} == set(contract.TOGGLES)
    comments = {line.split(":")[0].strip(): line.split("#", 1)[1] for line in text.splitlines()
                if line.strip().startswith("publish_")}
    for toggle in contract.TOGGLES:
        for o in contract.OUTPUTS:
            if o.toggle == toggle:
                assert f"~/{o.suffix}" in comments[toggle], (toggle, o.suffix)
        p = params.PARAMS_BY_NAME[toggle]
        assert p.default is True and not p.read_only
    assert {p.name for p in params.PARAMS if p.name.startswith("publish_")} == set(contract.TOGGLES)


def test_every_product_has_a_producer_in_each_backend_and_a_field_in_wants_and_segmentation():
    """A row whose product nobody makes would advertise a topic that is never published."""
    import dataclasses

    from liteseg_ros import pipeline, pipeline_torch

    products = {o.product for o in contract.OUTPUTS if o.product is not None}
    assert set(pipeline.PRODUCERS) == set(pipeline_torch.PRODUCERS) == products == set(contract.PRODUCTS)
    assert {f.name for f in dataclasses.fields(Wants)} == products
    assert products <= {f.name for f in dataclasses.fields(Segmentation)}
    # every output the node advertises is either sent per frame or made from live inputs / counters
    seg = _segmentation()
    for p in contract.PRODUCTS:  # a frame that has every product (pixels of the label's shape)
        if getattr(seg, p) is None:
            setattr(seg, p, seg.label)
    sent = {s for s, *_ in contract.image_outputs(seg, Wants.all())} | {"drivable_boundary"}
    others = {o.suffix for o in contract.OUTPUTS if o.live_input or o.product is None}
    assert {o.suffix for o in contract.camera_outputs(["drivable"], True)} == sent | others
    assert all(o.msgtype in contract.MESSAGES for o in contract.OUTPUTS
               if o.product is not None and o.encoding is None and not o.live_input)


def test_batch_rule_one_frame_per_camera_within_the_window():
    rule = contract.BatchRule.from_values(VALUES)
    a, b, c = object(), object(), object()
    assert rule.max_frames(3) == 3 and rule.waits(3) and not rule.waits(1)
    assert rule.admits([], a, 0.0, 3)
    assert rule.admits([(a, 0.0)], b, 0.005, 3)  # the window's edge is inside it
    assert not rule.admits([(a, 0.0)], b, 0.0051, 3)
    assert not rule.admits([(a, 0.0)], a, 0.001, 3)  # a camera's second frame waits for the next batch
    assert not rule.admits([(a, 0.0), (b, 0.0)], c, 0.0, 2)
    alone = contract.BatchRule(window_s=0.005, batch_cameras=False)
    assert alone.max_frames(3) == 1 and not alone.waits(3) and not alone.admits([(a, 0.0)], b, 0.0, 3)
    assert rule.order(3, 2) == [2, 0, 1]


def test_intrinsics_scale_rows_0_and_1_only():
    k = [500.0, 0, 320, 0, 400, 240, 0, 0, 1]
    p = [500.0, 0, 320, 7, 0, 400, 240, 8, 0, 0, 1, 0]
    k2, p2 = contract.scaled_intrinsics(k, p, 0.5, 0.25)
    assert k2 == [250.0, 0, 160, 0, 100, 60, 0, 0, 1]
    assert p2 == [250.0, 0, 160, 3.5, 0, 100, 60, 2, 0, 0, 1, 0]


@pytest.mark.parametrize("label_size", [(64, 96), (480, 640)])  # made at the network or the input resolution
def test_label_camera_info_scales_k_p_and_the_roi_like_image_proc(label_size):
    """K and P rows 0 and 1 and the ROI (offsets and size, truncated to whole pixels, as image_proc's
    resize does) follow the label's resolution; the rest is copied; the frame's header is carried. One
    function for rclpy's and rosbags' message classes."""
    pytest.importorskip("rclpy")
    from liteseg_ros.bag.store import make_typestore
    from liteseg_ros.interfaces import rclpy_types

    bag_types = make_typestore()[0].types.__getitem__
    k = [500.0, 0, 320, 0, 500, 240, 0, 0, 1]
    p = [500.0, 0, 320, 7, 0, 500, 240, 8, 0, 0, 1, 0]
    seg = Segmentation(label=np.zeros(label_size, np.uint8), geometry=Geometry.fit((480, 640), (64, 96), "stretch"))
    h, w = seg.label.shape
    sx, sy = w / 640, h / 480
    got = []
    for types in (rclpy_types, bag_types):
        roi = types("sensor_msgs/msg/RegionOfInterest")(x_offset=101, y_offset=51, height=201, width=301,
                                                         do_rectify=True)
        src = types(contract.CAMERA_INFO)(header=types("std_msgs/msg/Header")(stamp=contract.stamp(types, 5),
                                                                               frame_id="src"),
                                          height=480, width=640, distortion_model="plumb_bob",
                                          d=np.array([0.1, -0.2, 0, 0, 0.01]), k=np.array(k), r=np.eye(3).ravel(),
                                          p=np.array(p), binning_x=2, binning_y=1, roi=roi)
        header = types("std_msgs/msg/Header")(stamp=contract.stamp(types, 1_700_000_000_000_000_007), frame_id="cam")
        out = contract.label_camera_info(types, src, header, seg)
        assert (out.height, out.width) == (h, w) and out.header.frame_id == "cam"
        assert contract.stamp(types, 1_700_000_000_000_000_007) == out.header.stamp
        assert list(out.k) == contract.scaled_intrinsics(k, p, sx, sy)[0]
        assert list(out.p) == contract.scaled_intrinsics(k, p, sx, sy)[1]
        assert (out.roi.x_offset, out.roi.y_offset, out.roi.width, out.roi.height, out.roi.do_rectify) == (
            int(101 * sx), int(51 * sy), int(301 * sx), int(201 * sy), True)
        assert (out.distortion_model, list(out.d), out.binning_x, out.binning_y) == (
            "plumb_bob", [0.1, -0.2, 0, 0, 0.01], 2, 1)
        got.append(_fields(out))
    assert got[0] == got[1]
    if label_size == (480, 640):
        assert got[0]["roi"] == {"x_offset": 101, "y_offset": 51, "height": 201, "width": 301, "do_rectify": True}
    else:
        assert got[0]["roi"] == {"x_offset": 15, "y_offset": 6, "height": 26, "width": 45, "do_rectify": True}


# ------------------------------------------------------------------------------------------ one factory, two type systems
class _Source:
    name, backbone, license = "tiny-random", "mobilenetv2", "CC0"


class _Info:
    backend, device, precision, reason = "onnxruntime", "cpu", "fp32", "test"


class _Pipeline:
    """What info_message reads of a Pipeline (classes, config, engine.info)."""

    classes = ClassTable.cityscapes()

    class config:  # noqa: N801 - stands for a PipelineConfig attribute
        network_size = (64, 96)
        mask_groups = {"drivable": (0,), "vehicles": (13, 14, 15)}
        confidence_threshold = 0.25

    class engine:  # noqa: N801
        info = _Info()


def _segmentation() -> Segmentation:
    rng = np.random.default_rng(0)
    label = rng.integers(0, 19, (6, 8), dtype=np.uint8)
    return Segmentation(label=label, geometry=Geometry.fit((6, 8), (64, 96), "stretch"),
                        confidence=rng.integers(0, 256, (6, 8), dtype=np.uint8),
                        color=rng.integers(0, 256, (6, 8, 3), dtype=np.uint8),
                        overlay=rng.integers(0, 256, (6, 8, 3), dtype=np.uint8),
                        masks={"drivable": (label == 0).astype(np.uint8) * 255},
                        boundary=Boundary(row=np.arange(8, dtype=np.int32) - 1, drivable_fraction=0.125),
                        timings={"preprocess": 1.0, "infer": 2.0, "postprocess": 3.0})


def _fields(msg) -> dict:
    """A message (rclpy or rosbags) as plain Python values, recursively."""
    names = getattr(msg, "get_fields_and_field_types", None)
    keys = list(names()) if names else [k for k in msg.__dataclass_fields__ if not k.startswith("__")]
    out = {}
    for k in keys:
        v = getattr(msg, k)
        if hasattr(v, "__slots__") or hasattr(v, "__dataclass_fields__"):
            v = _fields(v)
        elif isinstance(v, (list, tuple)) and v and (hasattr(v[0], "__slots__") or hasattr(v[0], "__dataclass_fields__")):
            v = [_fields(x) for x in v]
        elif isinstance(v, (bytes, bytearray, np.ndarray)) or hasattr(v, "tolist"):
            v = np.asarray(v).tolist() if not isinstance(v, (bytes, bytearray)) else list(v)
        out[k] = v
    return out


def test_one_builder_makes_the_same_messages_from_rclpy_and_rosbags_types():
    pytest.importorskip("rclpy")
    from liteseg_ros import image_codec
    from liteseg_ros.bag.store import make_typestore
    from liteseg_ros.interfaces import rclpy_types

    ts, have_custom = make_typestore()
    assert have_custom
    bag_types = ts.types.__getitem__
    seg = _segmentation()
    hdr_r = rclpy_types("std_msgs/msg/Header")(stamp=contract.stamp(rclpy_types, 1_700_000_000_123_456_789),
                                               frame_id="cam")
    hdr_b = bag_types("std_msgs/msg/Header")(stamp=contract.stamp(bag_types, 1_700_000_000_123_456_789),
                                             frame_id="cam")

    def image_r(arr, enc, h):
        msg = rclpy_types(contract.IMAGE)(header=h)
        return image_codec.fill_image(msg, arr, enc)

    def image_b(arr, enc, h):
        msg = bag_types(contract.IMAGE)(header=h, height=0, width=0, encoding="", is_bigendian=0, step=0,
                                        data=np.empty(0, np.uint8))
        return image_codec.fill_image(msg, arr, enc)

    w = Wants.all()
    got_r = contract.frame_messages(rclpy_types, hdr_r, seg, w, image_r)
    got_b = contract.frame_messages(bag_types, hdr_b, seg, w, image_b)
    assert [s for s, _ in got_r] == [s for s, _ in got_b] == ["label", "confidence", "color", "overlay",
                                                              "masks/drivable", "drivable_boundary"]
    for (s, mr), (_, mb) in zip(got_r, got_b, strict=True):
        assert _fields(mr) == _fields(mb), s
    counts = contract.FrameCounts(received=3, processed=2, dropped=1, rejected=0)
    sr = contract.stats_message(rclpy_types, hdr_r, "front", seg, 0.5, 0.25, 7.0, counts)
    sb = contract.stats_message(bag_types, hdr_b, "front", seg, 0.5, 0.25, 7.0, counts)
    assert _fields(sr) == _fields(sb) and sr.total_ms == pytest.approx(6.75)
    ir = contract.info_message(rclpy_types, 42, _Pipeline(), _Source())
    ib = contract.info_message(bag_types, 42, _Pipeline(), _Source())
    assert _fields(ir) == _fields(ib)
    assert ir.mask_groups[1].class_names == ["car", "truck", "bus"] and ir.network_width == 96
    # the rosbags side serializes what the contract built (every field present and typed)
    for _s, mb in got_b:
        ts.serialize_cdr(mb, mb.__msgtype__)
    ts.serialize_cdr(ib, ib.__msgtype__)


# ------------------------------------------------------------------------------------------ node == bag
N_FRAMES = 4
H, W = 48, 80
T0 = 1_700_000_000 * 10**9


#: The latched outputs, published once (not per frame) and stamped when published.
LATCHED = ("/info", "/label_info")


@pytest.mark.ros
def test_node_and_bag_tool_produce_identical_messages(start_node, ros, tiny_checkpoint, tmp_path):
    """The same frames into the live node and through ``liteseg bag``: every output message equal."""
    from rclpy.qos import QoSDurabilityPolicy, QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy
    from rosbags.rosbag2 import Reader, Writer
    from rosidl_runtime_py.utilities import get_message
    from sensor_msgs.msg import Image

    from liteseg_ros import bag as bagmod
    from liteseg_ros import image_codec
    from liteseg_ros.synthetic import SceneConfig, generate_scene

    pf = tmp_path / "liteseg.yaml"
    pf.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        "weights": str(tiny_checkpoint), "network_width": 96, "network_height": 64, "num_threads": 1,
        "backend": "onnxruntime", "precision": "fp32", "engine_cache_dir": str(tmp_path / "engines"),
        "process_all_frames": True, "queue_size": 8,
        "mask_groups": {"drivable": ["road"], "vehicles": ["car", "truck", "bus"]}}}}))
    ts, _ = bagmod.make_typestore()
    T = ts.types
    raws = []
    for i in range(N_FRAMES):
        img = generate_scene(i, SceneConfig(height=H, width=W)).image
        ns = T0 + i * 100_000_000
        hdr = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9),
                                       frame_id="front_optical")
        msg = T["sensor_msgs/msg/Image"](header=hdr, height=0, width=0, encoding="", is_bigendian=0, step=0,
                                         data=np.empty(0, np.uint8))
        image_codec.fill_image(msg, img, "bgr8")
        raws.append((ns, bytes(ts.serialize_cdr(msg, "sensor_msgs/msg/Image"))))

    # the bag tool
    src, out = tmp_path / "in", tmp_path / "out"
    with Writer(src, version=9) as wr:
        conn = wr.add_connection("/camera/image_raw", "sensor_msgs/msg/Image", typestore=ts)
        for ns, raw in raws:
            wr.write(conn, ns + 3_000_000, raw)
    summary = bagmod.segment_bag(src, out, ["/camera/image_raw"], bagmod.settings_from(pf), progress=False,
                                 log=lambda m: None)
    assert summary.complete and summary.frames == N_FRAMES
    from_bag: dict[str, dict[int, dict]] = {}
    types: dict[str, str] = {}
    with Reader(out) as r:
        for c, _t, raw in r.messages():
            if c.topic.startswith("/liteseg/"):
                m = ts.deserialize_cdr(raw, c.msgtype)
                from_bag.setdefault(c.topic, {})[m.header.stamp.sec * 10**9 + m.header.stamp.nanosec] = _fields(m)
                types[c.topic] = c.msgtype

    # the node, fed the very same serialized frames; its outputs read as raw CDR with the bag's typestore
    node = start_node(params_file=pf, extra_args=["-r", "image:=/camera/image_raw"])
    from_node: dict[str, dict[int, dict]] = {}

    def keep(topic):
        def cb(raw: bytes) -> None:
            m = ts.deserialize_cdr(raw, types[topic])
            from_node.setdefault(topic, {})[m.header.stamp.sec * 10**9 + m.header.stamp.nanosec] = _fields(m)
        return cb

    reliable = QoSProfile(depth=50, reliability=QoSReliabilityPolicy.RELIABLE)
    latched = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE,
                         durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
    for topic in from_bag:
        ros.node.create_subscription(get_message(types[topic]), topic, keep(topic),
                                     latched if topic.endswith(LATCHED) else reliable, raw=True)
    pub = ros.node.create_publisher(Image, "/camera/image_raw",
                                    QoSProfile(depth=N_FRAMES, reliability=QoSReliabilityPolicy.RELIABLE,
                                               history=QoSHistoryPolicy.KEEP_ALL))
    ros.wait_for(lambda: pub.get_subscription_count() > 0 or not node.alive(), 60, "the node's subscription")
    assert node.alive(), node.output()
    per_frame = [t for t in from_bag if not t.endswith(LATCHED)]
    ros.wait_for(lambda: all(ros.node.count_publishers(t) > 0 for t in from_bag), 30, "the node's publishers")
    time.sleep(1.0)  # let the node's matching of our subscriptions settle before the first frame
    for _ns, raw in raws:
        pub.publish(raw)
    ros.wait_for(lambda: all(len(from_node.get(t, {})) == N_FRAMES for t in per_frame)
                 and all(t in from_node for t in from_bag if t.endswith(LATCHED)), 60,
                 f"every output of {N_FRAMES} frames (have { {t: len(v) for t, v in from_node.items()} })")

    assert sorted(from_node) == sorted(from_bag)
    assert {"/liteseg/label", "/liteseg/color", "/liteseg/overlay", "/liteseg/masks/drivable",
            "/liteseg/masks/vehicles", "/liteseg/drivable_boundary", "/liteseg/stats", "/liteseg/info"} <= set(from_bag)
    for topic, frames in from_bag.items():
        for stamp, want in frames.items():
            got = from_node[topic][stamp] if not topic.endswith(LATCHED) else next(iter(from_node[topic].values()))
            if topic.endswith("/stats"):
                # timings are the machine's, and `received` counts what had arrived when the frame was
                # published (live: all four at once; a bag: one by one); everything else is the contract's
                for k in ("decode_ms", "preprocess_ms", "infer_ms", "postprocess_ms", "publish_ms", "total_ms",
                          "input_age_ms", "received"):
                    want.pop(k), got.pop(k)
            if topic.endswith(LATCHED):  # stamped when published
                want.pop("header"), got.pop("header")
            assert got == want, f"{topic} at {stamp}"
