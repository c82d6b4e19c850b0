"""The output side's promise: ``liteseg bag`` never deletes or overwrites what it did not write.

Part of ``liteseg bag`` (ring 3, no rclpy). A bag this tool wrote carries a marker in its metadata;
``--overwrite`` replaces only such a bag, and a run writes into a temporary folder with an owner
file, so the leftovers of a killed run are recognised (and removed) by the next run while anything
else is left alone.
"""
from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from liteseg_ros.bag.store import BagError

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


def owner_text() -> str:
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
