"""Where the package's share files (launch/, config/, msg/) are, in a checkout and in an install.

Ring 0: imports nothing from ROS at module level. A source checkout keeps them beside the Python
package; a colcon install (or a ROS distribution package) keeps them in ``share/liteseg_ros``, which
only the ament index knows. Every reader of a shipped file asks here, so code never builds a path
from ``__file__`` that exists in one layout and not the other.
"""
from __future__ import annotations

from pathlib import Path

PACKAGE = "liteseg_ros"


class ShareFileError(FileNotFoundError):
    """A shipped file is missing: the message says where it was looked for."""


def source_tree() -> Path | None:
    """The checkout this module runs from, or None when it runs from an install."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "package.xml").is_file() and (root / "launch").is_dir() else None


def share_dir() -> Path:
    """The directory that holds launch/, config/ and msg/.

    The code's own checkout comes first: a developer who also has an older install sourced must get
    the files that match the code being run. Elsewhere the ament index names the installed share
    directory (``ros2 pkg prefix liteseg_ros`` + ``/share/liteseg_ros``).
    """
    root = source_tree()
    if root is not None:
        return root
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:
        raise ShareFileError(f"{PACKAGE} runs from an install, but ament_index_python is missing, so its "
                             "share directory cannot be found (source the workspace's setup.bash)") from None
    try:
        return Path(get_package_share_directory(PACKAGE))
    except PackageNotFoundError:
        raise ShareFileError(f"{PACKAGE} is not in the ament index (AMENT_PREFIX_PATH): source the "
                             "workspace's install/setup.bash") from None


def share_file(relative: str) -> Path:
    """``share_file('config/liteseg.yaml')``: the path of a shipped file; ShareFileError if missing."""
    path = share_dir() / relative
    if not path.exists():
        raise ShareFileError(f"{relative} is missing from {path.parent} (a broken install?)")
    return path
