"""Known weights by name: a registry (data), a cache, and a download that is verified before it is used.

Ring 1: the standard library and PyYAML (tqdm and torchvision lazily, for the progress bar and the
ImageNet encoder); never torch at import, rclpy or message packages. ``runtime.resolve_weights`` is
the one caller that turns a ``weights`` string into a file; the ``liteseg weights`` subcommand lists,
fetches and locates entries.

Why it is built this way:

* The registry is data (``data/weights.yaml``, plus files named by ``$LITESEG_WEIGHTS_REGISTRY``), so
  a new model, a site's own weights or a test entry needs no code.
* Every entry carries the file's git blob id (SHA-1 over ``"blob <size>\\0"`` + content), the value
  GitHub shows for a file in a repository, so a download is checked against what the authors
  committed. A file that does not match is refused with both ids and deleted; nothing that failed
  the check is ever loaded. The cached file is checked again each time it is used (SHA-1 runs at
  several hundred MB/s, a small price next to loading a model).
* A download is written to ``<file>.partial`` and renamed to its final name only after it verified,
  so an interrupted or bad download never sits where a loader would pick it up. An interrupted one
  is resumed from where it stopped (HTTP Range) by the next fetch.
* ``$LITESEG_WEIGHTS_URL`` (or ``base_url``) replaces each entry's URL up to its file name: a mirror
  on a robot fleet's network, or the local test server.
* Downloading on first use happens only where the caller allows it (``allow_download``, or
  ``$LITESEG_ALLOW_DOWNLOAD=1``): a robot should not reach for the internet unless told to; the
  error otherwise names the exact ``liteseg weights fetch`` command.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

REGISTRY_FILE = "weights.yaml"
#: Folder of downloaded weights (default ``~/.cache/liteseg_ros/weights``).
ENV_DIR = "LITESEG_WEIGHTS_DIR"
#: Base URL replacing every entry's URL up to the file name (mirrors, tests).
ENV_URL = "LITESEG_WEIGHTS_URL"
#: More registry files (``os.pathsep``-separated) read after the bundled one; their entries win.
ENV_REGISTRY = "LITESEG_WEIGHTS_REGISTRY"
#: ``1``/``true``/``yes``/``on``: download registered weights on first use even where it is off by default.
ENV_ALLOW = "LITESEG_ALLOW_DOWNLOAD"
KINDS = ("liteseg", "encoder")
_CHUNK = 1 << 16
#: A download with no registered size stops past ``approx_mb`` times this (plus :data:`BOUND_SLACK`).
BOUND_FACTOR = 2.0
BOUND_SLACK = 1 << 20
#: The bound for an entry with neither ``size`` nor ``approx_mb``.
BOUND_UNKNOWN = 1 << 30
#: No byte for this long: the download is stalled.
STALL_S = 30.0
#: The overall deadline is this long, plus the bound at :data:`MIN_RATE` bytes per second.
DEADLINE_BASE_S = 120.0
MIN_RATE = 50_000
_cancel = threading.Event()


class WeightsError(RuntimeError):
    """A named weights entry that cannot be used; the message says what to do."""


class UnknownWeights(WeightsError):
    """A name that is not in the registry (the message lists the known ones)."""


class NotCached(WeightsError):
    """Not downloaded yet and downloading is not allowed here (the message gives the fetch command)."""


class IntegrityError(WeightsError):
    """A file whose git blob id (or size) is not the registered one."""


class DownloadError(WeightsError):
    """The download failed or was interrupted; what was received so far is kept under ``.partial``."""


@dataclass(frozen=True)
class WeightsEntry:
    """One registered set of weights (see the comments at the top of ``data/weights.yaml``)."""

    name: str
    kind: str
    backbone: str
    file: str = ""
    url: str = ""
    git_blob: str = ""
    size: int | None = None
    approx_mb: float | None = None
    classes: str = "cityscapes"
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    license: str = ""
    license_terms: str = ""
    license_url: str = ""
    source: str = ""
    torchvision: str = ""

    @property
    def license_line(self) -> str:
        """The licence in one line, as the CLI prints it and the node logs and publishes it."""
        text = self.license or "unknown"
        if self.license_terms:
            text += f": {self.license_terms}"
        if self.license_url:
            text += f" ({self.license_url})"
        return text


# ----------------------------------------------------------------------------------------- registry
def _entries_of(path: Path | None, text: str) -> dict[str, WeightsEntry]:
    where = str(path) if path else f"liteseg_ros/data/{REGISTRY_FILE}"
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise WeightsError(f"weights registry {where} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("weights"), dict):
        raise WeightsError(f"weights registry {where}: expected 'weights: {{NAME: {{...}}}}' at the top")
    fields = set(WeightsEntry.__dataclass_fields__) - {"name"}
    out: dict[str, WeightsEntry] = {}
    for name, raw in doc["weights"].items():
        if not isinstance(raw, dict):
            raise WeightsError(f"weights registry {where}: entry {name!r} is not a mapping")
        unknown = set(raw) - fields
        if unknown:
            raise WeightsError(f"weights registry {where}: entry {name!r} has unknown field(s) "
                               f"{', '.join(sorted(unknown))}; known: {', '.join(sorted(fields))}")
        kw: dict[str, Any] = dict(raw)
        for k in ("mean", "std"):
            if kw.get(k) is not None:
                kw[k] = tuple(float(v) for v in kw[k])
        entry = WeightsEntry(name=str(name), **kw)
        if entry.kind not in KINDS:
            raise WeightsError(f"weights registry {where}: {name}: kind {entry.kind!r} is not one of {KINDS}")
        if not entry.torchvision:
            blob = entry.git_blob.lower()
            if not entry.file or not entry.url or len(blob) != 40 or any(c not in "0123456789abcdef" for c in blob):
                raise WeightsError(f"weights registry {where}: {name}: needs file, url and a 40-hex git_blob")
            if "/" in entry.file or entry.file.startswith("."):
                raise WeightsError(f"weights registry {where}: {name}: file must be a plain file name")
        out[entry.name] = entry
    return out


def registry() -> dict[str, WeightsEntry]:
    """Every known entry: the bundled registry, then the files in ``$LITESEG_WEIGHTS_REGISTRY``."""
    text = (resources.files("liteseg_ros") / "data" / REGISTRY_FILE).read_text()
    out = _entries_of(None, text)
    for part in filter(None, os.environ.get(ENV_REGISTRY, "").split(os.pathsep)):
        path = Path(os.path.expanduser(part))
        try:
            out.update(_entries_of(path, path.read_text()))
        except OSError as exc:
            raise WeightsError(f"${ENV_REGISTRY}: cannot read {path}: {exc.strerror}") from None
    return out


def lookup(name: str) -> WeightsEntry | None:
    """The entry called ``name``, or None."""
    return registry().get(name)


def get(name: str) -> WeightsEntry:
    """The entry called ``name``; UnknownWeights listing the known names otherwise."""
    known = registry()
    if name not in known:
        raise UnknownWeights(f"unknown weights name {name!r}; known: {', '.join(known)} "
                             f"(`liteseg weights list`), or give a checkpoint file path")
    return known[name]


def looks_like_name(text: str) -> bool:
    """True for a bare word such as ``liteseg-mobilenet-cityscapes`` (no folder, no file extension)."""
    return bool(text) and "/" not in text and os.sep not in text and not Path(text).suffix


def download_allowed(allowed: bool = False) -> bool:
    """``allowed`` or ``$LITESEG_ALLOW_DOWNLOAD`` set to a true word."""
    return allowed or os.environ.get(ENV_ALLOW, "").strip().lower() in ("1", "true", "yes", "on")


def fetch_command(name: str) -> str:
    return f"liteseg weights fetch {name}"


# ----------------------------------------------------------------------------------------- cache
def cache_dir() -> Path:
    """``$LITESEG_WEIGHTS_DIR`` or ``~/.cache/liteseg_ros/weights``."""
    env = os.environ.get(ENV_DIR)
    return Path(os.path.expanduser(env)) if env else Path.home() / ".cache" / "liteseg_ros" / "weights"


def cached_path(entry: WeightsEntry) -> Path:
    """Where the entry's file is (or will be) once fetched."""
    if entry.torchvision:
        return _torchvision_path(entry)
    return cache_dir() / entry.file


def partial_path(entry: WeightsEntry) -> Path:
    return cache_dir() / (entry.file + ".partial")


def is_cached(entry: WeightsEntry) -> bool:
    return cached_path(entry).is_file()


def url_of(entry: WeightsEntry, base_url: str | None = None) -> str:
    """The download URL: ``base_url`` or ``$LITESEG_WEIGHTS_URL`` + ``/`` + file, else the entry's own."""
    base = base_url or os.environ.get(ENV_URL, "")
    return f"{base.rstrip('/')}/{entry.file}" if base else entry.url


def git_blob_id(path: str | os.PathLike) -> str:
    """The git blob id of a file: SHA-1 over ``b"blob <size>\\0"`` followed by its bytes."""
    path = Path(path)
    return hash_file(path, hashlib.sha1(f"blob {path.stat().st_size}\0".encode()))


def hash_file(path: str | os.PathLike, digest: Any) -> str:
    """``digest`` (a hashlib object, perhaps already fed a prefix) updated with the file's bytes, in hex."""
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: str | os.PathLike, entry: WeightsEntry) -> None:
    """IntegrityError (expected and actual blob id, and size) unless ``path`` is the registered file."""
    path = Path(path)
    size = path.stat().st_size
    actual = git_blob_id(path)
    expected = entry.git_blob.lower()
    if actual != expected or (entry.size is not None and size != entry.size):
        want_size = f", expected {entry.size} bytes" if entry.size is not None else ""
        raise IntegrityError(f"{entry.name}: {path} is not the registered file: git blob id {actual} "
                             f"({size} bytes), expected {expected}{want_size}")


# ----------------------------------------------------------------------------------------- resolve / fetch
def resolve(name: str, allow_download: bool = False, log: Callable[[str], None] = print,
            progress: bool = False, base_url: str | None = None) -> Path:
    """The verified cached file of ``name``; downloaded first if allowed, else NotCached with the command."""
    entry = get(name)
    path = cached_path(entry)
    if path.is_file():
        if not entry.torchvision:
            try:
                verify(path, entry)
            except IntegrityError as exc:
                raise IntegrityError(f"{exc}; the cached file changed since it was fetched: "
                                     f"`{fetch_command(name)}` replaces it") from None
        return path
    if not download_allowed(allow_download):
        raise NotCached(
            f"weights {name!r} are not downloaded yet (looked for {path}) and downloading on first use is off "
            f"here; run `{fetch_command(name)}` (on a machine with internet; copy {path.name} into {path.parent} "
            f"otherwise), or allow it with the node parameter allow_download: true or {ENV_ALLOW}=1")
    return fetch(name, base_url=base_url, progress=progress, log=log)


def fetch(name: str, base_url: str | None = None, progress: bool = False, log: Callable[[str], None] = print,
          timeout: float = STALL_S, deadline: float | None = None) -> Path:
    """Download ``name`` into the cache (resuming a ``.partial``), verify it, then move it into place.

    Returns the final path. Already cached and valid: returns at once. ``timeout``: seconds without a
    byte before the download counts as stalled; ``deadline``: seconds for the whole download (default:
    from the size bound, see :func:`size_bound`). A file that fails the check is
    deleted (DownloadError/IntegrityError say why, with both blob ids); an interrupted download stays
    ``<file>.partial`` for the next fetch to resume and never appears under the final name.
    """
    entry = get(name)
    if entry.torchvision:
        return _torchvision_fetch(entry, progress)
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create the weights cache {folder}: {exc.strerror} (set {ENV_DIR})") from None
    final, partial = cached_path(entry), partial_path(entry)
    with _locked(folder):  # two processes fetching the same cache take turns
        if final.is_file():
            try:
                verify(final, entry)
                return final
            except IntegrityError:
                log(f"weights: cached {final.name} does not verify; downloading it again")
        url = url_of(entry, base_url)
        log(f"weights: downloading {name} from {url}")
        _cancel.clear()
        _download(url, partial, entry, progress, timeout, deadline)
        try:
            verify(partial, entry)
        except IntegrityError as exc:
            partial.unlink(missing_ok=True)
            raise IntegrityError(f"{exc}; the download from {url} was refused and deleted (a wrong or "
                                 f"truncated file, or a mirror serving something else)") from None
        os.replace(partial, final)
    log(f"weights: {name} verified (git blob {entry.git_blob}) -> {final}")
    return final


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive flock on the cache folder itself (no lock file left behind)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, the .partial + rename still keeps files whole
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock




def cancel_downloads() -> None:
    """Make every download in progress stop soon with a DownloadError (a signal handler may call it:
    it only sets an event). The next :func:`fetch` starts afresh."""
    _cancel.set()


def size_bound(entry: WeightsEntry) -> tuple[int, str]:
    """(most bytes a download of ``entry`` may have, how that bound was chosen) - said in every refusal."""
    if entry.size is not None:
        return entry.size, "the registered size"
    if entry.approx_mb:
        bound = int(entry.approx_mb * 1e6 * BOUND_FACTOR) + BOUND_SLACK
        return bound, f"no registered size: bound {BOUND_FACTOR:g} x approx_mb {entry.approx_mb:g} MB + 1 MiB"
    return BOUND_UNKNOWN, "no registered size or approx_mb: bound 1 GiB"


def _deadline_for(bound: int) -> float:
    return DEADLINE_BASE_S + bound / MIN_RATE


@contextlib.contextmanager
def _signals_cancel() -> Iterator[None]:
    """SIGINT/SIGTERM stop a download made on the main thread, then go on to the handler that was
    there (the node's orderly stop, Python's KeyboardInterrupt): a node configuring with
    ``allow_download`` stays interruptible."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {}
    caught: list[int] = []

    def handle(signum, frame):
        _cancel.set()
        caught.append(signum)
        old = previous.get(signum)
        if callable(old):
            old(signum, frame)

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, handle)
        except (ValueError, OSError):
            pass
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        for sig in caught:  # a signal whose default action ends the process still ends it, once we are tidy
            if previous.get(sig) == signal.SIG_DFL:
                os.kill(os.getpid(), sig)


def _reader(resp, chunks: queue.Queue, stall: float) -> None:
    """Read the body in a daemon thread: the caller waits on the queue, so it can stop at any moment."""
    try:
        while True:
            chunk = resp.read1(_CHUNK)
            chunks.put(chunk)
            if not chunk:
                return
    except Exception as exc:  # noqa: BLE001 - handed to the caller, which words it
        chunks.put(exc)


def _download(url: str, partial: Path, entry: WeightsEntry, progress: bool, stall: float,
              deadline: float | None = None) -> None:
    """Append the rest of ``url`` to ``partial`` (HTTP Range when it already holds bytes of ours).

    Bounded: more bytes than :func:`size_bound` allows, no byte for ``stall`` seconds, the overall
    ``deadline`` (seconds; default from the bound) passed, or :func:`cancel_downloads` called each
    stop it with a DownloadError. A ``.partial`` that is not a regular file of ours (a planted
    symlink) is removed, never written through (``safe_files.open_own_for_append``).
    """
    import urllib.error
    import urllib.request

    from liteseg_ros import safe_files

    limit, why = size_bound(entry)
    deadline = _deadline_for(limit) if deadline is None else deadline
    t_end = time.monotonic() + deadline
    try:
        out = safe_files.open_own_for_append(partial)
    except safe_files.UnsafeFileError as exc:
        raise DownloadError(f"{entry.name}: {exc}") from None
    have = out.tell() if out is not None else 0
    if have > limit:
        out.close()
        partial.unlink(missing_ok=True)
        out, have = None, 0
    headers = {"User-Agent": "liteseg_ros"}
    if have:
        headers["Range"] = f"bytes={have}-"
    retry = f"`{fetch_command(entry.name)}` resumes it"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=stall)
    except urllib.error.HTTPError as exc:
        if out is not None:
            out.close()
        if exc.code == 416 and have:  # nothing left to send: the partial file is complete, verify it
            return
        raise DownloadError(f"{entry.name}: {url} answered HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        if out is not None:
            out.close()
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"{entry.name}: cannot download {url} ({reason}); without internet, run "
                            f"`{fetch_command(entry.name)}` elsewhere and copy {entry.file} into "
                            f"{partial.parent}, or point {ENV_URL} at a mirror") from None
    bar = None
    try:
        resumed = have and resp.status == 206 and resp.headers.get("Content-Range", "").startswith(
            f"bytes {have}-")
        if not resumed:
            have = 0
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        if entry.size is not None and total is not None and total != entry.size:
            raise DownloadError(f"{entry.name}: {url} offers {total} bytes, the registered file has "
                                f"{entry.size}; refused before downloading")
        if total is not None and total > limit:
            raise DownloadError(f"{entry.name}: {url} offers {total} bytes, more than {limit} ({why}); "
                                f"refused before downloading")
        if not resumed:  # the server sends the whole file: start over in a fresh file
            if out is not None:
                out.close()
                partial.unlink(missing_ok=True)
            try:
                out = os.fdopen(safe_files.create_fresh(partial), "wb")
            except OSError as exc:
                raise DownloadError(f"{entry.name}: cannot create {partial}: {exc.strerror}") from None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                       desc=entry.file, file=sys.stderr, dynamic_ncols=True)
        chunks: queue.Queue = queue.Queue(maxsize=16)
        threading.Thread(target=_reader, args=(resp, chunks, stall), name="liteseg-download",
                         daemon=True).start()
        got = have
        last = time.monotonic()
        with _signals_cancel():
            while True:
                if _cancel.is_set():
                    raise DownloadError(f"{entry.name}: download stopped (interrupted) after {got} bytes; {retry}")
                now = time.monotonic()
                if now > t_end:
                    raise DownloadError(f"{entry.name}: download took longer than its {deadline:g} s deadline "
                                        f"({got} bytes received); try a faster mirror ({ENV_URL}); {retry}")
                if now - last > stall:
                    raise DownloadError(f"{entry.name}: no data from {url} for {stall:g} s (stalled after "
                                        f"{got} bytes); {retry}")
                try:
                    item = chunks.get(timeout=0.2)
                except queue.Empty:
                    continue
                if isinstance(item, TimeoutError):
                    last = -float("inf")  # the read itself waited ``stall`` seconds: stalled
                    continue
                if isinstance(item, Exception):
                    raise DownloadError(f"{entry.name}: download interrupted after {got} bytes ({item}); "
                                        f"{retry}")
                if not item:
                    break
                last = time.monotonic()
                if got + len(item) > limit:
                    out.close()
                    partial.unlink(missing_ok=True)
                    raise DownloadError(f"{entry.name}: {url} sent more than {limit} bytes ({why}); stopped "
                                        f"and deleted what arrived (a broken or hostile mirror)")
                out.write(item)
                got += len(item)
                if bar is not None:
                    bar.update(len(item))
        out.flush()
        os.fsync(out.fileno())
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            out.close()
            partial.unlink(missing_ok=True)
            raise DownloadError(f"{entry.name}: no space left in {partial.parent} (set {ENV_DIR})") from None
        raise DownloadError(f"{entry.name}: cannot write {partial}: {exc.strerror}") from None
    finally:
        resp.close()
        if out is not None and not out.closed:
            out.close()
        if bar is not None:
            bar.close()
    if total is not None and got < total:
        raise DownloadError(f"{entry.name}: the connection closed after {got} of {total} bytes; {retry}")


def encoder_entry(spec: str, backbone: str) -> WeightsEntry | None:
    """The registered encoder ``spec`` names for ``backbone``: ``imagenet`` or an encoder's name; None for a path.

    WeightsError when ``spec`` names something that is not an ImageNet encoder of ``backbone``.
    """
    known = registry()
    if spec == "imagenet":
        found = [e for e in known.values() if e.kind == "encoder" and e.backbone == backbone]
        if not found:
            have = ", ".join(sorted({e.backbone for e in known.values() if e.kind == "encoder"})) or "none"
            raise WeightsError(f"encoder_weights: imagenet: no registered ImageNet encoder for {backbone} "
                               f"(registered for: {have}); give a local encoder file, or null to train from scratch")
        return found[0]
    entry = known.get(spec)
    if entry is None:
        return None
    if entry.kind != "encoder" or entry.backbone != backbone:
        raise WeightsError(f"encoder_weights: {spec!r} is a {entry.backbone} {entry.kind}, not an ImageNet "
                           f"encoder for {backbone}")
    return entry


def encoder_file(spec: str, backbone: str, allow_download: bool = True, progress: bool = False,
                 log: Callable[[str], None] = print) -> Path:
    """The file for ``encoder_weights: spec``: a registered encoder (fetched if allowed), else the path."""
    entry = encoder_entry(spec, backbone)
    if entry is None:
        return Path(os.path.expandvars(os.path.expanduser(spec)))
    path = cached_path(entry)
    if not path.is_file():
        if not download_allowed(allow_download):
            raise NotCached(f"encoder {entry.name} is not downloaded yet (looked for {path}); run "
                            f"`{fetch_command(entry.name)}`")
        log(f"weights: fetching the {entry.name} encoder ({entry.torchvision or entry.file}); "
            f"licence {entry.license_line}")
        path = fetch(entry.name, progress=progress, log=log)
    return path


# ----------------------------------------------------------------------------------------- torchvision
def _torchvision_weights(entry: WeightsEntry):
    """The torchvision ``WeightsEnum`` member named by ``entry.torchvision`` (e.g. MobileNet_V2_Weights.IMAGENET1K_V1)."""
    import torchvision.models as tvm

    enum_name, _, member = entry.torchvision.partition(".")
    try:
        return getattr(getattr(tvm, enum_name), member)
    except AttributeError:
        raise WeightsError(f"{entry.name}: torchvision has no weights {entry.torchvision}") from None


def _torchvision_path(entry: WeightsEntry) -> Path:
    """torch's hub cache file of the weights ($TORCH_HOME/hub/checkpoints/<file of the URL>).

    With ``file`` registered and torch not imported yet, the folder is found the way torch.hub finds it
    ($TORCH_HOME, else $XDG_CACHE_HOME/torch, else ~/.cache/torch), so ``liteseg weights list`` does not
    pay seconds of importing torch; the fetch checks that torchvision's URL still ends in that name.
    """
    if "torch" in sys.modules or not entry.file:
        import torch.hub

        hub = Path(torch.hub.get_dir())
    else:
        home = os.getenv("TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch"))
        hub = Path(os.path.expanduser(home)) / "hub"
    return hub / "checkpoints" / (entry.file or _torchvision_weights(entry).url.rsplit("/", 1)[-1])


def _torchvision_fetch(entry: WeightsEntry, progress: bool) -> Path:
    """torchvision's own download: into torch's hub cache, checked against the hash in its file name."""
    import urllib.error

    path = _torchvision_path(entry)
    if path.is_file():
        return path
    weights = _torchvision_weights(entry)
    if entry.file and weights.url.rsplit("/", 1)[-1] != entry.file:
        raise WeightsError(f"{entry.name}: torchvision now downloads {weights.url}, not the registered file "
                           f"{entry.file}; update liteseg_ros/data/weights.yaml")
    try:
        weights.get_state_dict(progress=progress, check_hash=True, weights_only=True)
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadError(f"{entry.name}: torchvision could not download {weights.url} "
                            f"({getattr(exc, 'reason', exc)}); without internet, copy {path.name} into "
                            f"{path.parent} ($TORCH_HOME)") from None
    except RuntimeError as exc:  # torch.hub: "invalid hash value"; it deletes the bad file itself
        raise IntegrityError(f"{entry.name}: {exc}") from None
    return path


# ----------------------------------------------------------------------------------------- listing
def describe(entry: WeightsEntry) -> dict[str, Any]:
    """One row of ``liteseg weights list``: name, kind, backbone, size, licence, cached, path."""
    path = cached_path(entry)
    cached = path.is_file()
    if cached:
        size = path.stat().st_size
    else:
        size = entry.size
    part = None if entry.torchvision else partial_path(entry)
    partial_bytes = part.stat().st_size if part is not None and part.is_file() else 0
    return {"name": entry.name, "kind": entry.kind, "backbone": entry.backbone, "size_bytes": size,
            "approx_mb": entry.approx_mb, "license": entry.license, "license_terms": entry.license_terms,
            "cached": cached, "partial_bytes": partial_bytes, "path": str(path)}


def format_size(row: dict[str, Any]) -> str:
    if row["size_bytes"] is not None:
        return f"{row['size_bytes'] / 1e6:.1f} MB"
    return f"~{row['approx_mb']:g} MB" if row.get("approx_mb") else "?"
