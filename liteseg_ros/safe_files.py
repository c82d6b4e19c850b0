"""The one rule for every file the package writes into a cache or an output folder.

Ring 0: the standard library only (no torch, no ROS; OpenCV imported by :func:`write_image` when called), so the weights cache, the engine cache, the
exporters, ``liteseg bag`` and the demo all share it.

Why it exists: a cache folder is a place other programs (or other users, on a shared robot) may
have touched. Opening a fixed path for writing follows whatever sits there: a planted symlink makes
us truncate and overwrite its target, and a predictable temporary name can be planted in advance.
So a file is never written where it will finally live. It is written to a *fresh* file - created
by us with ``O_CREAT | O_EXCL | O_NOFOLLOW`` under an unpredictable name in the target folder -,
flushed to disk (fsync), then renamed over the final name. ``rename`` replaces a symlink itself and
never writes through it, so whatever the final name pointed at is left alone. On any failure the
fresh file is removed, so an interrupted or failed write leaves nothing behind.

Tools that insist on writing by file name (``torch.onnx.export``, ``onnx.save``) get
:func:`fresh_path`: a private folder (``mkdtemp``: mode 0700, unpredictable name) inside the
target folder, in which nobody else can plant anything; its file is renamed into place the same way.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO

#: Permission bits of a created file before the umask (the usual 0666 of ``open``).
FILE_MODE = 0o666
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class UnsafeFileError(OSError):
    """A path the package would write or resume is not a plain file of ours (a symlink, a device, foreign)."""


def create_fresh(path: str | os.PathLike) -> int:
    """A file descriptor of a new, empty file at ``path``: fails (FileExistsError) if anything is there,
    a symlink included; never follows a link."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, FILE_MODE)


def _temp_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (best effort: some file systems refuse to open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY | _CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def fresh_file(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Write ``path`` the safe way: yields a file object on a fresh temporary file in the same folder;
    when the block ends without an error it is fsynced and renamed over ``path``; on an error it is
    deleted and ``path`` is left as it was."""
    if mode not in ("wb", "w"):
        raise ValueError(f"fresh_file writes whole files: mode 'wb' or 'w', not {mode!r}")
    target = Path(path)
    tmp = _temp_name(target)
    fd = create_fresh(tmp)
    try:
        with os.fdopen(fd, mode, encoding=encoding if mode == "w" else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(target.parent)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """:func:`fresh_file` for bytes already in memory; returns ``path``."""
    with fresh_file(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`fresh_file` for text (UTF-8); returns ``path``."""
    return write_bytes(path, text.encode("utf-8"))


def write_image(path: str | os.PathLike, image: object) -> Path:
    """A picture (a numpy array OpenCV can encode, in the format the name's ending says) written the safe
    way, where ``cv2.imwrite`` would open ``path`` and follow whatever link sits there. OpenCV is
    imported on call, so this module stays importable without it."""
    import cv2

    target = Path(path)
    ok, data = cv2.imencode(target.suffix or ".png", image)
    if not ok:
        raise ValueError(f"{target}: OpenCV cannot encode this image as {target.suffix or '.png'}")
    return write_bytes(target, data.tobytes())


@contextlib.contextmanager
def fresh_path(path: str | os.PathLike) -> Iterator[Path]:
    """For tools that write by name: yields a path in a private folder (0700, unpredictable name)
    beside ``path``; when the block ends without an error that file is fsynced and renamed over
    ``path``. The private folder is always removed, so a failed write leaves nothing behind."""
    target = Path(path)
    private = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        inner = private / target.name
        yield inner
        try:
            st = os.lstat(inner)
        except FileNotFoundError:
            raise FileNotFoundError(f"{target}: nothing was written") from None
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFileError(f"{inner} is not a regular file after writing it")
        fd = os.open(inner, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(inner, target)
        _fsync_dir(target.parent)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def private_folder(path: str | os.PathLike) -> Path:
    """A folder only we can write, for a library that writes files into it by itself (OpenVINO's
    compiled-model cache): created 0700 if missing; a link, a non-folder or another user's folder there
    raises UnsafeFileError (nothing is written through it); our own folder open to others is closed
    (chmod 0700), since anyone who can write into it can plant what the library later loads."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        p.mkdir(mode=0o700)
    st = os.lstat(p)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise UnsafeFileError(f"{p} is {'a link' if stat.S_ISLNK(st.st_mode) else 'not a folder'}, not a folder "
                              f"of ours; remove it")
    if st.st_uid != os.geteuid():
        raise UnsafeFileError(f"{p} belongs to another user (uid {st.st_uid}); use a folder of your own")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(p, 0o700)
    return p


def open_streaming(path: str | os.PathLike, mode: str = "w") -> IO:
    """A file another process streams into while it runs (a log): whatever sits at ``path`` is removed
    first (a link itself, never its target), then a fresh file is created there with O_EXCL, so a
    link planted between the two makes this fail instead of writing through it."""
    p = Path(path)
    if p.is_symlink() or p.exists():
        _remove_foreign(p)
    return os.fdopen(create_fresh(p), mode)


def open_own_for_append(path: str | os.PathLike) -> IO[bytes] | None:
    """The file at ``path`` opened to append, if it is a regular file of ours with one link; None when
    nothing is there. Anything else there (a symlink, a hard link, a folder, another user's file) is
    removed - the link itself, never its target - and None is returned, so the caller starts afresh.

    Used to resume a download: the one place an existing file is written to, hence the checks.
    """
    p = Path(path)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_APPEND | _NOFOLLOW | _CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError:  # ELOOP: a symlink (O_NOFOLLOW); EISDIR; EACCES: not ours
        _remove_foreign(p)
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_uid != os.geteuid():
        os.close(fd)
        _remove_foreign(p)
        return None
    return os.fdopen(fd, "ab")


def _remove_foreign(p: Path) -> None:
    """Remove what sits at ``p`` (a link is unlinked, not followed); UnsafeFileError if that fails."""
    try:
        if p.is_dir() and not p.is_symlink():
            raise UnsafeFileError(f"{p} is a folder where a file of ours belongs; remove it")
        p.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise UnsafeFileError(f"{p} is not a plain file of ours and cannot be removed ({exc.strerror})") from None


def warn_if_shared(folder: str | os.PathLike, what: str) -> str:
    """A warning (returned, and issued as a Python warning) when ``folder`` can be written by other
    users - anyone who can write there can replace what we later load; '' otherwise."""
    try:
        st = os.stat(folder)
    except OSError:
        return ""
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        msg = (f"{what} {folder} is writable by other users (mode {stat.S_IMODE(st.st_mode):o}); anyone who can "
               f"write there can replace the files loaded from it: chmod go-w {folder}")
        warnings.warn(msg, stacklevel=2)
        return msg
    if st.st_uid != os.geteuid() and st.st_mode & stat.S_IWOTH:
        msg = f"{what} {folder} belongs to another user and is world-writable; use a folder of your own"
        warnings.warn(msg, stacklevel=2)
        return msg
    return ""
