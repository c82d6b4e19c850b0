"""`liteseg demo`: the whole product on a generated drive, with no downloads.

Ring 4. Starts the real ``liteseg_node`` as its own process (demo weights unless ``--weights``), plays
a camera into it over DDS (a generated drive, or ``--images DIR`` / ``--video FILE`` / ``--bag BAG``),
subscribes to its outputs as a downstream user would, and writes an overlay video and a contact sheet
(input | colour | overlay | drivable mask), then prints fps, latency percentiles and drop counts. On the
generated drive, whose camera is known, it also starts ``liteseg_free_space`` on the node's drivable mask
(with the drive's camera_info and a static TF of its camera pose) and adds the free-space grid and scan,
seen from above, to the contact sheet.
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from liteseg_ros import safe_files
from liteseg_ros.defaults import (
    EXIT_USAGE,
    FASTDDS_PROFILE_VARIABLES,
    NETWORK_SIZE,
    fastdds_profile_variable,
    format_size,
    is_image_file,
    parse_size,
    positive_float,
)
from liteseg_ros.free_space_params import NODE_NAME as FREE_SPACE_NODE
from liteseg_ros.interrupts import stop_child
from liteseg_ros.share import ShareFileError, share_file
from liteseg_ros.train.config import HELD_OUT_FIRST_SEED

#: The bundled demo model scores as well at 180x320 as at 360x640 (held-out mIoU 0.617 at both; MODEL_CARD.md)
#: and is 4x cheaper there, which keeps the demo real-time on a 2-core CPU.
DEMO_NETWORK_SIZE = (180, 320)
#: The generated drive's seed. Its first frame is ``generate_scene(DEMO_SEED)``, so it must lie in the held-out
#: range: the demo weights' runs used scenes 0..8031, which once included the old default 2026.
DEMO_SEED = HELD_OUT_FIRST_SEED + 2026


def add_demo_parser(sub) -> None:
    from liteseg_ros.cli import SUBCOMMANDS

    p = sub.add_parser("demo", help=SUBCOMMANDS["demo"][0], description=SUBCOMMANDS["demo"][0])
    p.add_argument("--weights", default="demo", help="checkpoint or registered name, e.g. "
                   "liteseg-mobilenet-cityscapes, fetched first if needed (default: the bundled synthetic-scene model)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--images", type=Path, help="a folder of images (sorted by name) instead of the generated drive")
    src.add_argument("--video", type=Path, help="a video file instead of the generated drive")
    src.add_argument("--bag", type=Path, help="a rosbag: its first image topic (or --topic) is played")
    p.add_argument("--topic", help="image topic to take from --bag")
    p.add_argument("--frames", type=int, default=60, help="frames to play (default 60)")
    p.add_argument("--size", type=parse_size, default=NETWORK_SIZE,
                   help=f"generated camera size HxW (default {format_size(NETWORK_SIZE)})")
    p.add_argument("--network-size", type=parse_size, default=None, help="network HxW (default: 180x320 for the "
                   f"demo weights, the scale they were trained at; else {format_size(NETWORK_SIZE)})")
    p.add_argument("--rate", type=positive_float, default=10.0, help="camera rate in Hz (default 10)")
    p.add_argument("--seed", type=int, default=DEMO_SEED,
                   help=f"generated drive seed (default {DEMO_SEED}: held out, never a training scene of the demo weights)")
    p.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder (default demo_output/)")
    p.add_argument("--params-file", type=Path, help="extra node parameters (YAML)")
    p.add_argument("--timeout", type=positive_float, default=180.0, help="give up waiting for the node after this many s")
    p.set_defaults(func=run_demo)


# ------------------------------------------------------------------------------------------ sources
def generated_drive(n: int, size: tuple[int, int], seed: int, cameras: list | None = None) -> Iterator[np.ndarray]:
    """The drive's frames; each frame's camera (``meta["camera"]``) is appended to ``cameras`` if given."""
    from liteseg_ros.synthetic import SceneConfig, drive

    for sample in drive(seed, n, SceneConfig(height=size[0], width=size[1])):
        if cameras is not None:
            cameras.append(sample.meta["camera"])
        yield sample.image


def synthetic_camera_info(camera: dict, size: tuple[int, int], frame_id: str):
    """A generated frame's camera as a CameraInfo: a pinhole with OpenCV pixel centres (the renderer's
    are at +0.5), no distortion, its optical axis level (the horizon row is the principal point's)."""
    from sensor_msgs.msg import CameraInfo

    f, cx, cy = camera["f_px"], camera["cx"] - 0.5, camera["horizon_y"] - 0.5
    info = CameraInfo(height=size[0], width=size[1], distortion_model="plumb_bob", d=[0.0] * 5)
    info.k = [f, 0.0, cx, 0.0, f, cy, 0.0, 0.0, 1.0]
    info.p = [f, 0.0, cx, 0.0, 0.0, f, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.header.frame_id = frame_id
    return info


#: The segmentation node's drivable mask as the demo names it (``-r __node:=liteseg``): the free-space node's input.
DRIVABLE_TOPIC = "/liteseg/masks/drivable"

#: The REP-103 optical frame (x right, y down, z forward) of a level camera in base_footprint, as (x, y, z, w).
LEVEL_OPTICAL_QUATERNION = (-0.5, 0.5, -0.5, 0.5)


def _input_error(message: str) -> SystemExit:
    """Unusable --images/--video/--bag input: one line on stderr and exit status 2 (README "Exit codes")."""
    print(f"[demo] error: {message}", file=sys.stderr)
    return SystemExit(EXIT_USAGE)


def folder_images(folder: Path, n: int) -> Iterator[np.ndarray]:
    """The images of ``folder``; checked now (exit 2 before the node starts), read as they are played."""
    files = sorted(p for p in folder.iterdir() if is_image_file(p.name)) if folder.is_dir() else []
    if not files:
        raise _input_error(f"no images in {folder} (.png, .jpg and the other formats OpenCV reads)")
    return _read_images(files[:n])


def _read_images(files: list[Path]) -> Iterator[np.ndarray]:
    for p in files:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            print(f"warning: cannot read {p}, skipped", file=sys.stderr)
            continue
        yield img


def video_frames(path: Path, n: int) -> Iterator[np.ndarray]:
    """The first ``n`` frames of a video; opened now (exit 2 before the node starts), read as played."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise _input_error(f"cannot open video {path}")
    return _read_video(cap, n)


def _read_video(cap, n: int) -> Iterator[np.ndarray]:
    try:
        for _ in range(n):
            ok, img = cap.read()
            if not ok:
                break
            yield img
    finally:
        cap.release()


def bag_frames(path: Path, topic: str | None, n: int) -> Iterator[np.ndarray]:
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    from liteseg_ros.image_codec import decode_any

    with AnyReader([path], default_typestore=get_typestore(Stores.ROS2_JAZZY)) as reader:
        images = [c for c in reader.connections if c.msgtype in ("sensor_msgs/msg/Image",
                                                                  "sensor_msgs/msg/CompressedImage")]
        if topic:
            images = [c for c in images if c.topic == topic]
        if not images:
            raise _input_error(f"no image topic{' ' + topic if topic else ''} in {path}; topics: "
                               f"{sorted({c.topic for c in reader.connections})}")
        count = 0
        for conn, _, raw in reader.messages(connections=images[:1]):
            yield decode_any(reader.deserialize(raw, conn.msgtype))
            count += 1
            if count >= n:
                return


# ------------------------------------------------------------------------------------------ results
@dataclass
class Collected:
    """Outputs of the node keyed by input stamp (ns), filled by subscription callbacks."""

    sent_at: dict[int, float] = field(default_factory=dict)
    inputs: dict[int, np.ndarray] = field(default_factory=dict)
    outputs: dict[str, dict[int, object]] = field(default_factory=dict)
    latency_ms: dict[int, float] = field(default_factory=dict)
    last_stats: object | None = None
    info: object | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


def _stamp(header) -> int:
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


def contact_sheet(rows: list[list[np.ndarray]], labels: list[str], width: int = 320) -> np.ndarray:
    """Rows of BGR/grey panels, each scaled to `width`, with a caption bar on top."""
    out_rows = []
    for row in rows:
        panels = []
        for img in row:
            if img.ndim == 2:
                img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
            h = round(img.shape[0] * width / img.shape[1])
            panels.append(cv2.resize(img, (width, h), interpolation=cv2.INTER_AREA))
        out_rows.append(np.hstack(panels))
    bar = np.full((28, out_rows[0].shape[1], 3), 32, np.uint8)
    for i, text in enumerate(labels):
        cv2.putText(bar, text, (i * width + 8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
    return np.vstack([bar, *out_rows])


def free_space_panel(grid_msg, scan_msg, size: tuple[int, int]) -> np.ndarray:
    """The OccupancyGrid seen from above (forward up, left on the left) with the scan's points, fitted
    into a BGR panel of ``size`` (h, w): free white, not drivable dark, unseen grey, scan ends red."""
    info = grid_msg.info
    g = np.asarray(grid_msg.data, np.int8).reshape(info.height, info.width)  # rows: y, columns: x
    top = g.T[::-1, ::-1]  # rows: x (far at the top), columns: y (left at the left)
    img = np.full(top.shape + (3,), 128, np.uint8)
    img[top == 0] = 255
    img[top == 100] = 40
    res, ox, oy = info.resolution, info.origin.position.x, info.origin.position.y
    n_x, n_y = info.width, info.height
    if scan_msg is not None:
        r = np.asarray(scan_msg.ranges, np.float64)
        a = scan_msg.angle_min + np.arange(r.size) * scan_msg.angle_increment
        ok = np.isfinite(r)
        row = (n_x - 1 - np.floor((r[ok] * np.cos(a[ok]) - ox) / res)).astype(int)
        col = (n_y - 1 - np.floor((r[ok] * np.sin(a[ok]) - oy) / res)).astype(int)
        inside = (row >= 0) & (row < n_x) & (col >= 0) & (col < n_y)
        for rr, cc in zip(row[inside], col[inside]):
            cv2.circle(img, (int(cc), int(rr)), 1, (0, 0, 230), -1)
    robot = (int(n_y - 1 - (0.0 - oy) / res), int(n_x - 1 - (0.0 - ox) / res))
    cv2.drawMarker(img, robot, (0, 160, 0), cv2.MARKER_TRIANGLE_UP, 8, 2)
    h, w = size
    scale = min(h / img.shape[0], w / img.shape[1])
    img = cv2.resize(img, (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale))),
                     interpolation=cv2.INTER_NEAREST)
    panel = np.full((h, w, 3), 32, np.uint8)
    y0, x0 = (h - img.shape[0]) // 2, (w - img.shape[1]) // 2
    panel[y0:y0 + img.shape[0], x0:x0 + img.shape[1]] = img
    return panel


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


# ------------------------------------------------------------------------------------------ run
def run_demo(args: argparse.Namespace) -> int:
    import yaml

    from liteseg_ros import image_codec

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    try:
        xml = share_file("config/fastdds_large_shm.xml")
    except ShareFileError as exc:
        print(f"warning: {exc}; large frames may be lost over Fast DDS shared memory", file=sys.stderr)
        xml = None
    if xml is not None and not any(os.environ.get(v) for v in FASTDDS_PROFILE_VARIABLES):
        os.environ[fastdds_profile_variable()] = str(xml)  # only the name this distro reads
    if "ROS_DOMAIN_ID" not in os.environ:  # keep the demo off a robot's default domain 0
        os.environ["ROS_DOMAIN_ID"] = str(1 + os.getpid() % 100)

    from liteseg_ros import weights as known
    from liteseg_ros.runtime import ModelLoadError, resolve_weights

    try:
        if known.lookup(args.weights) is not None and not Path(args.weights).is_file():
            # A registered name: fetch it here, with a progress bar, so the node finds it in the cache (the
            # node itself never downloads unless allow_download) and reports its licence.
            resolve_weights(args.weights, allow_download=True, progress=True, log=print)
    except (ModelLoadError, known.WeightsError) as exc:
        print(f"[demo] error: {exc}", file=sys.stderr)
        return 2
    # the input is checked before anything is written or the node started (exit 2, README "Exit codes")
    if args.images:
        source = folder_images(args.images, args.frames)
    elif args.video:
        source = video_frames(args.video, args.frames)
    elif args.bag:
        source = bag_frames(args.bag, args.topic, args.frames)
    cameras: list[dict] | None = None  # the generated drive's cameras: free space can be shown
    if not (args.images or args.video or args.bag):
        cameras = []
        source = generated_drive(args.frames, args.size, args.seed, cameras)

    args.out.mkdir(parents=True, exist_ok=True)
    net = args.network_size
    if net is None:
        net = DEMO_NETWORK_SIZE if args.weights == "demo" else NETWORK_SIZE
    node_params = {"weights": args.weights, "network_height": net[0], "network_width": net[1]}
    if args.params_file:
        from liteseg_ros import params as P

        node_params.update(P.read_params_file(args.params_file))
    params_path = args.out / "demo_params.yaml"
    safe_files.write_text(params_path, yaml.safe_dump({"/**": {"ros__parameters": _nest(node_params)}}))
    exe = Path(sys.executable).parent / "liteseg_node"
    cmd = [str(exe) if exe.exists() else "liteseg_node", "--ros-args", "--params-file", str(params_path),
           "-r", "image:=/demo/camera/image_raw", "-r", "camera_info:=/demo/camera/camera_info", "-r", "__node:=liteseg"]
    log_path = args.out / "node.log"
    print(f"[demo] starting the node: {shlex.join(cmd)}  (log: {log_path})", flush=True)
    log = safe_files.open_streaming(log_path)  # closed in finally
    node_proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    fs_proc = fs_log = fs_log_path = None
    if cameras is not None:  # the free-space node on the segmentation node's drivable mask
        fs_exe = Path(sys.executable).parent / "liteseg_free_space"
        fs_cmd = [str(fs_exe) if fs_exe.exists() else "liteseg_free_space", "--ros-args",
                  "-r", f"mask:={DRIVABLE_TOPIC}", "-r", "camera_info:=/liteseg/label/camera_info"]
        fs_log_path = args.out / "free_space.log"
        print(f"[demo] starting the free-space node: {shlex.join(fs_cmd)}  (log: {fs_log_path})", flush=True)
        fs_log = safe_files.open_streaming(fs_log_path)  # closed in finally
        fs_proc = subprocess.Popen(fs_cmd, stdout=fs_log, stderr=subprocess.STDOUT, start_new_session=True)

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image

    rclpy.init(args=["liteseg_demo"])
    ros_node = rclpy.create_node("liteseg_demo")
    col = Collected()
    reliable = QoSProfile(depth=50, reliability=QoSReliabilityPolicy.RELIABLE)
    topics = {"color": "/liteseg/color", "overlay": "/liteseg/overlay", "drivable": DRIVABLE_TOPIC,
              "label": "/liteseg/label"}

    def keep(kind):
        def cb(msg):
            s = _stamp(msg.header)
            with col.lock:
                col.outputs.setdefault(kind, {})[s] = msg
                if kind == "overlay" and s in col.sent_at:
                    col.latency_ms[s] = (time.monotonic() - col.sent_at[s]) * 1e3
        return cb

    for kind, topic in topics.items():
        ros_node.create_subscription(Image, topic, keep(kind), reliable)
    try:
        from liteseg_ros.msg import FrameStats, SegmentationInfo

        ros_node.create_subscription(FrameStats, "/liteseg/stats", lambda m: setattr(col, "last_stats", m), reliable)
        ros_node.create_subscription(SegmentationInfo, "/liteseg/info", lambda m: setattr(col, "info", m),
                                     QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE,
                                                durability=QoSDurabilityPolicy.TRANSIENT_LOCAL))
    except ImportError:
        pass
    camera = ros_node.create_publisher(Image, "/demo/camera/image_raw",
                                       QoSProfile(depth=1, reliability=QoSReliabilityPolicy.BEST_EFFORT))
    camera_info = ros_node.create_publisher(CameraInfo, "/demo/camera/camera_info", reliable)
    tf_static = None  # kept while the drive plays: its latched /tf_static is the camera's mount
    if cameras is not None:
        from geometry_msgs.msg import TransformStamped
        from nav_msgs.msg import OccupancyGrid
        from sensor_msgs.msg import LaserScan
        from tf2_ros import StaticTransformBroadcaster

        for kind, msgtype in (("grid", OccupancyGrid), ("scan", LaserScan)):
            ros_node.create_subscription(msgtype, f"/{FREE_SPACE_NODE}/{kind}", keep(kind), reliable)
        from liteseg_ros.synthetic import SceneConfig, generate_scene

        # the drive's camera rides at one height; the static TF says where it is mounted on the robot
        height = generate_scene(args.seed, SceneConfig(height=args.size[0], width=args.size[1])).meta["camera"]["height_m"]
        mount = TransformStamped()
        mount.header.frame_id, mount.child_frame_id = "base_footprint", "demo_camera"
        mount.transform.translation.z = height
        (mount.transform.rotation.x, mount.transform.rotation.y, mount.transform.rotation.z,
         mount.transform.rotation.w) = LEVEL_OPTICAL_QUATERNION
        tf_static = StaticTransformBroadcaster(ros_node)
        tf_static.sendTransform(mount)
    executor = SingleThreadedExecutor()
    executor.add_node(ros_node)
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            executor.spin_once(timeout_sec=0.05)

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    code = 0
    try:
        t0 = time.monotonic()
        print("[demo] waiting for the node (loads the model, builds the engine)...", flush=True)
        while camera.get_subscription_count() == 0 or col.info is None or not _free_space_ready(ros_node, fs_proc):
            for proc, path in ((node_proc, log_path), (fs_proc, fs_log_path)):
                if proc is not None and proc.poll() is not None:
                    name, tail = Path(proc.args[0]).name, path.read_text()[-3000:]
                    print(f"[demo] {name} exited with code {proc.returncode}:\n{tail}", file=sys.stderr)
                    return 2
            if time.monotonic() - t0 > args.timeout or stop.is_set():
                which = "the node" if col.info is None else "the free-space node"
                print(f"[demo] gave up waiting for {which} after {args.timeout:g} s", file=sys.stderr)
                return 2
            time.sleep(0.05)
        time.sleep(0.5)
        print(f"[demo] node ready in {time.monotonic() - t0:.1f} s: {col.info.model_name} ({col.info.backbone}) on "
              f"{col.info.backend}/{col.info.device}/{col.info.precision}; playing {args.frames} frames at "
              f"{args.rate:g} Hz", flush=True)
        period = 1.0 / args.rate
        start = time.monotonic()
        sent = 0
        for i, img in enumerate(source):
            if stop.is_set():
                break
            wait = start + i * period - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            msg = Image()
            image_codec.fill_image(msg, np.ascontiguousarray(img), "bgr8")
            msg.header.frame_id = "demo_camera"
            msg.header.stamp = ros_node.get_clock().now().to_msg()
            s = _stamp(msg.header)
            with col.lock:
                col.sent_at[s] = time.monotonic()
                col.inputs[s] = img
            if cameras:
                info = synthetic_camera_info(cameras[-1], img.shape[:2], msg.header.frame_id)
                info.header.stamp = msg.header.stamp
                camera_info.publish(info)
            camera.publish(msg)
            sent += 1
        play_s = time.monotonic() - start
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and not stop.is_set():
            stats = col.last_stats
            if stats is not None and stats.processed + stats.dropped + stats.rejected >= stats.received >= sent:
                break
            time.sleep(0.1)
        time.sleep(0.5)
        if fs_proc is not None:  # the free-space node works on the masks after they are published: let it finish
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline and not stop.is_set() and not _last_mask_has_a_grid(col):
                time.sleep(0.1)
        code = _report(args, col, sent, play_s)
    finally:
        stop.set()
        spinner.join(timeout=5)
        executor.shutdown()
        ros_node.destroy_node()
        rclpy.try_shutdown()
        for proc in (node_proc, fs_proc):
            if proc is not None:
                stop_child(proc)
        log.close()
        if fs_log is not None:
            fs_log.close()
    return code


def _free_space_ready(ros_node, fs_proc) -> bool:
    """True when there is no free-space node, or it listens to the mask (it subscribes when it becomes active).

    Playing before that loses the drive's first frames to a node still starting, and a short drive then shows
    no free space at all.
    """
    if fs_proc is None:
        return True
    return any(info.node_name == FREE_SPACE_NODE for info in ros_node.get_subscriptions_info_by_topic(DRIVABLE_TOPIC))


def _last_mask_has_a_grid(col: Collected) -> bool:
    """Whether the free-space grid of the newest drivable mask came back (the last thing the demo waits for)."""
    with col.lock:
        masks = col.outputs.get("drivable", {})
        return bool(masks) and max(masks) in col.outputs.get("grid", {})


def _report(args, col: Collected, sent: int, play_s: float) -> int:
    from liteseg_ros import image_codec

    with col.lock:
        overlay = dict(col.outputs.get("overlay", {}))
        done = sorted(s for s in overlay if all(s in col.outputs.get(k, {}) for k in ("color", "drivable")))
    if not done:
        print("[demo] no segmented frame came back; see the node log", file=sys.stderr)
        return 1
    video_path = args.out / "overlay.mp4"
    first = image_codec.decode_image(overlay[done[0]])
    h, w = first.shape[:2]
    with safe_files.fresh_path(video_path) as tmp_video:
        writer = cv2.VideoWriter(str(tmp_video), cv2.VideoWriter_fourcc(*"mp4v"), max(1.0, args.rate), (w, h))
        for s in done:
            writer.write(image_codec.decode_image(overlay[s]))
        writer.release()
    grids, scans = col.outputs.get("grid", {}), col.outputs.get("scan", {})
    shown = [s for s in done if s in grids] or done  # the free-space node starts a frame or two late
    picks = [shown[round(k * (len(shown) - 1) / 3)] for k in range(4)] if len(shown) >= 4 else shown
    rows = []
    for s in picks:
        rows.append([col.inputs[s], image_codec.decode_image(col.outputs["color"][s]),
                     image_codec.decode_image(overlay[s]),
                     image_codec.decode_image(col.outputs["drivable"][s])[:, :, 0]])
        if grids:  # the free-space node ran (generated drive): its grid and scan of the same frame
            size = col.inputs[s].shape[:2]
            rows[-1].append(free_space_panel(grids[s], scans.get(s), size) if s in grids
                            else np.full(size + (3,), 32, np.uint8))
    sheet_path = args.out / "contact_sheet.png"
    captions = ["input", "colour (label)", "overlay", "drivable mask"] + (["free space: grid + scan"] if grids else [])
    safe_files.write_image(sheet_path, contact_sheet(rows, captions))
    free_space_path = None
    if grids and picks[-1] in grids:  # one frame's overlay beside what a planner gets from it
        free_space_path = args.out / "free_space.png"
        safe_files.write_image(free_space_path, contact_sheet([[rows[-1][2], rows[-1][4]]],
                                                  ["overlay", "free space from above: grid + scan (red)"], width=480))
    lat = list(col.latency_ms.values())
    stats = col.last_stats
    span = (max(done) - min(done)) / 1e9 if len(done) > 1 else 0.0
    rows_out = [
        ("frames sent", f"{sent} at {sent / play_s if play_s else 0:.1f} Hz"),
        ("frames segmented (all outputs received)", f"{len(done)}"),
        ("output rate", f"{(len(done) - 1) / span if span else 0:.1f} fps"),
        ("latency camera->overlay p50 / p95 / p99", f"{_percentile(lat, 50):.1f} / {_percentile(lat, 95):.1f} / "
                                                    f"{_percentile(lat, 99):.1f} ms"),
    ]
    if stats is not None:
        rows_out += [("node: received / processed / dropped / rejected",
                      f"{stats.received} / {stats.processed} / {stats.dropped} / {stats.rejected}"),
                     ("node: last frame infer / total", f"{stats.infer_ms:.1f} / {stats.total_ms:.1f} ms")]
    if grids:
        rows_out.append(("free space: grids / scans received", f"{len(grids)} / {len(scans)}"))
    rows_out += [("overlay video", str(video_path)), ("contact sheet", str(sheet_path))]
    if free_space_path is not None:
        rows_out.append(("free space picture", str(free_space_path)))
    width = max(len(k) for k, _ in rows_out)
    print()
    for k, v in rows_out:
        print(f"  {k:<{width}}  {v}")
    return 0


def _nest(flat: dict) -> dict:
    """{'mask_groups.x': v} -> {'mask_groups': {'x': v}} for writing a params file."""
    out: dict = {}
    for k, v in flat.items():
        cur = out
        *parents, leaf = k.split(".")
        for p in parents:
            cur = cur.setdefault(p, {})
        cur[leaf] = v
    return out

