"""Reading and writing bags: the typestore with our messages, QoS records, input checks, topic choice.

Part of ``liteseg bag`` (ring 3, no rclpy): what every bag job needs, with rosbags only.
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

from liteseg_ros.contract import OUR_PACKAGE

#: Message types ``liteseg bag`` segments, and the transport each one is.
IMAGE_TYPES = {"sensor_msgs/msg/Image": "raw", "sensor_msgs/msg/CompressedImage": "compressed"}
STORAGES = ("sqlite3", "mcap")
#: vision_msgs (not in rosbags' Jazzy typestore), as the package defines them: the node's ~/label_info
#: is a LabelInfo, so a segmented bag carries it too and a consumer reading the bag finds the class names.
VISION_MSGS = {"vision_msgs/msg/VisionClass": "uint16 class_id\nstring class_name\n",
               "vision_msgs/msg/LabelInfo": "std_msgs/Header header\nVisionClass[] class_map\nfloat32 threshold\n"}


class BagError(RuntimeError):
    """A bag, topic or option that cannot be used; the message says what to change."""


class BagOutputError(BagError):
    """Writing the output bag failed (a full disk, a storage limit): a failure while working, not bad
    input, so it is never reported as a problem of the input bag (``liteseg bag`` exits 1)."""


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
    vision: dict = {}
    for name, text in VISION_MSGS.items():
        vision.update(get_types_from_msg(text, name))
    ts.register(vision)
    msg_dir = msg_dir or find_msg_dir()
    if msg_dir is None:
        return ts, False
    typs: dict = {}
    for f in sorted(msg_dir.glob("*.msg")):
        typs.update(get_types_from_msg(f.read_text(), f"{OUR_PACKAGE}/msg/{f.stem}"))
    ts.register(typs)
    return ts, True


# ------------------------------------------------------------------------------------------ QoS
def qos_record(reliable: bool, transient_local: bool = False, depth: int = 5):
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
    return qos_record(reliable=False, depth=5)


def output_qos():
    """The node's publishers: reliable, keep last 5, volatile."""
    return qos_record(reliable=True, depth=5)


def latched_qos():
    """The node's ~/info: reliable, transient local, keep last 1."""
    return qos_record(reliable=True, transient_local=True, depth=1)


def bag_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def resolve_input(path: Path) -> Path:
    path = Path(path)
    if path.is_file() and (path.parent / "metadata.yaml").is_file():
        return path.parent  # a .db3 / .mcap inside a bag directory
    if not path.exists():
        raise BagError(f"input bag {path} does not exist")
    if not (path / "metadata.yaml").is_file():
        raise BagError(f"{path} is not a ROS 2 bag directory (no metadata.yaml); give the folder that "
                       "`ros2 bag record` wrote")
    return path


@contextlib.contextmanager
def open_input(src: Path):
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


def storage_of(bag: Path) -> str:
    return "mcap" if any(bag.glob("*.mcap")) else "sqlite3"


def topic_table(connections) -> str:
    seen: dict[str, set[str]] = {}
    for c in connections:
        seen.setdefault(c.topic, set()).add(c.msgtype)
    return "\n".join(f"  {t}  [{', '.join(sorted(ts))}]" for t, ts in sorted(seen.items())) or "  (none)"


def select_topics(connections, topics: Sequence[str]) -> dict[str, list]:
    """Chosen topic -> its connections; errors name what exists or what is not an image."""
    if not topics:
        raise BagError("no --topic given; image topics in the bag:\n" + topic_table(
            [c for c in connections if c.msgtype in IMAGE_TYPES]))
    chosen: dict[str, list] = {}
    for t in topics:
        t = "/" + t.strip("/")
        conns = [c for c in connections if c.topic == t]
        if not conns:
            raise BagError(f"topic {t} is not in the bag; topics that exist:\n{topic_table(connections)}")
        bad = sorted({c.msgtype for c in conns if c.msgtype not in IMAGE_TYPES})
        if bad:
            raise BagError(f"topic {t} has type {', '.join(bad)}, not an image: only "
                           f"{' and '.join(IMAGE_TYPES)} topics can be segmented")
        chosen[t] = conns
    return chosen


def copy_connection(writer, conn, typestore):
    """The output twin of an input connection: same topic, type, definition, hash, format, QoS."""
    qos = list(conn.ext.offered_qos_profiles) if hasattr(conn.ext, "offered_qos_profiles") else []
    if not qos:  # not recorded (e.g. bags written by rosbags): record what the topic kind implies
        qos = [sensor_qos() if conn.msgtype in IMAGE_TYPES else qos_record(reliable=True, depth=10)]
    fmt = getattr(conn.ext, "serialization_format", "cdr")
    if conn.msgdef.data and conn.digest:
        return writer.add_connection(conn.topic, conn.msgtype, msgdef=conn.msgdef.data, rihs01=conn.digest,
                                     serialization_format=fmt, offered_qos_profiles=qos)
    if conn.msgtype not in typestore.fielddefs:
        raise BagError(f"topic {conn.topic}: the bag stores no definition of {conn.msgtype} and rosbags' "
                       "Jazzy typestore does not know it, so it cannot be copied")
    return writer.add_connection(conn.topic, conn.msgtype, typestore=typestore, serialization_format=fmt,
                                 offered_qos_profiles=qos)
