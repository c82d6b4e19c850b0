"""Where the engine cache lives and how its files are named: the one place that defines both.

Ring 2, and deliberately light: imports only the standard library and ``safe_files`` (no torch, numpy, onnx), because a
node whose engine is already cached should start without importing torch at all (importing torch
alone costs ~2.7 s of a ~6.5 s start on the 2-core development machine).

A cached file is found by a *model key* plus the network size. The key hashes what the file's
content depends on:

- the weights: for a checkpoint file, the SHA-256 of its bytes (so the key is known before torch
  loads it); for an in-memory module, the SHA-256 of its state dict (``state_key``, needs torch);
- :data:`EXPORT_VERSION` and the export options (opset, no logits output, fixed size);
- for int8 files also :data:`QUANT_RECIPE`, so a better default recipe is a new file instead of
  silently reusing one made by the old recipe.

The same checkpoint given as a file and as a loaded module gives two different keys (and files);
everything the node and ``liteseg`` tools do goes through the file key.

A file found in the cache is not trusted for its name alone: whatever makes one (export, int8,
metadata, agreement checks, TensorRT plans) writes it the safe way (``safe_files``) and then a
*record* beside it, ``<file>.record.json``, holding the file's SHA-256 and the key it was derived
from. At use the file is hashed again and compared (:func:`cached_file_ok`): a file that was
replaced or edited since, or one without a record, is made again, with a message naming it. A
cache folder other users may write to is warned about, since they could rewrite both.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from liteseg_ros import safe_files

#: Environment variable that moves the default cache (tests, read-only home directories).
CACHE_ENV = "LITESEG_CACHE_DIR"
#: Bump when ``export.export_onnx`` makes a different graph for the same weights and options.
EXPORT_VERSION = 2
#: The opset the cached files are exported at (``export.DEFAULT_OPSET``, repeated here without torch).
CACHE_OPSET = 17
#: Bump when the default int8 recipe of ``quantize.quantize_model`` changes.
QUANT_RECIPE = 2

#: file identity -> (SHA-256, when it was hashed): see file_digest
_digests: dict[tuple[str, int, int, int, int, int], tuple[str, int]] = {}
#: A file changed this close to (or after) its hashing is hashed again on the next ask: file times
#: tick in coarse steps (a few ms on Linux), so a change right after the hash can keep the same times.
RACY_NS = 2_000_000_000


def default_cache_dir() -> Path:
    """``$LITESEG_CACHE_DIR`` or ``~/.cache/liteseg_ros/engines``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "liteseg_ros" / "engines"


def cache_root(cache_dir: str | os.PathLike | None) -> Path:
    """``cache_dir`` when given, else :func:`default_cache_dir`."""
    return Path(cache_dir) if cache_dir else default_cache_dir()


def file_digest(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, hashed once per version of the file for the life of the process.

    A start-up asks for the same file's digest several times (the checkpoint: the engine key, the
    metadata; an int8 file: its record, then the report of each runtime, then the agreement check).
    The memo is keyed by the file's identity and change time as well as its size and modification
    time: the modification time alone can be set back (``cp -p``, an unpacked archive), but any write
    moves the change time and a replaced file has another inode, so a changed file is hashed again.
    A file changed within :data:`RACY_NS` of its hashing is not served from the memo (the way git
    treats "racily clean" files), since a second change inside one tick of the file clock leaves
    every time as it was.
    """
    p = Path(path).resolve()
    st = p.stat()
    memo = (str(p), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    hit = _digests.get(memo)
    if hit is not None and st.st_ctime_ns + RACY_NS < hit[1]:
        return hit[0]
    hashed_at = time.time_ns()
    digest = _sha256(p)
    _digests[memo] = (digest, hashed_at)
    return digest


def _key(weights: dict[str, str]) -> str:
    spec = {**weights, "export": EXPORT_VERSION, "opset": CACHE_OPSET, "logits": False, "dynamic": False}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def checkpoint_key(path: str | os.PathLike) -> str:
    """The model key of a checkpoint file (no torch: hashes the file's bytes)."""
    return _key({"checkpoint_sha256": file_digest(path)})


def state_key(model: Any) -> str:
    """The model key of an in-memory module: a hash of its class name and state dict (imports torch)."""
    digest = hashlib.sha256(type(model).__name__.encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return _key({"state_sha256": digest.hexdigest()})


def model_key(source: Any) -> str:
    """:func:`checkpoint_key` for a path, :func:`state_key` for a module."""
    if isinstance(source, (str, os.PathLike)):
        return checkpoint_key(source)
    return state_key(source)


def onnx_cache_path(key: str, input_size: tuple[int, int], cache_dir: str | os.PathLike | None,
                    uint8: bool = True, precision: str = "fp32") -> Path:
    """The ONNX export (label/confidence outputs) of model ``key`` at ``input_size`` (h, w): fp32, or
    the fp16 graph that TensorRT and ONNX Runtime CUDA run."""
    h, w = (int(v) for v in input_size)
    tag = "" if precision == "fp32" else f"_{precision}"
    return cache_root(cache_dir) / "onnx" / f"liteseg_{key}_{h}x{w}_{'u8' if uint8 else 'i32'}{tag}.onnx"


def int8_cache_path(key: str, input_size: tuple[int, int], cache_dir: str | os.PathLike | None) -> Path:
    """The int8 file of model ``key`` at ``input_size`` made by the default recipe."""
    h, w = (int(v) for v in input_size)
    return cache_root(cache_dir) / "int8" / f"liteseg_{key}_{h}x{w}_int8r{QUANT_RECIPE}.onnx"


#: Suffix of the record written beside every derived file in the cache.
RECORD_SUFFIX = ".record.json"
_warned_shared: set[str] = set()


def record_path(path: str | os.PathLike) -> Path:
    """Where the record of the cached file ``path`` lives (beside it)."""
    p = Path(path)
    return p.with_name(p.name + RECORD_SUFFIX)


def _sha256(path: Path) -> str:
    from liteseg_ros.weights import hash_file

    return hash_file(path, hashlib.sha256())


def write_record(path: str | os.PathLike, key: str) -> None:
    """Record what the cached file ``path`` (already in place) must be: its SHA-256 and ``key``."""
    p = Path(path)
    record = {"format": 1, "file": p.name, "sha256": file_digest(p), "size": p.stat().st_size, "key": key}
    safe_files.write_text(record_path(p), json.dumps(record, indent=1))


def record_problem(path: str | os.PathLike, key: str) -> str:
    """'' when ``path`` is exactly the file its record says, made from ``key``; else why not, naming it."""
    p = Path(path)
    try:
        record = json.loads(record_path(p).read_text())
    except (OSError, ValueError):
        return f"cached file {p} has no readable record ({record_path(p).name}): not made by this version"
    if not isinstance(record, dict) or record.get("key") != key:
        return f"cached file {p} was made from another key ({record.get('key') if isinstance(record, dict) else '?'}, " \
               f"expected {key})"
    try:
        actual = file_digest(p)
    except OSError as exc:
        return f"cached file {p} cannot be read ({exc.strerror})"
    if actual != record.get("sha256"):
        return (f"cached file {p} changed since it was made (SHA-256 {actual[:16]}..., recorded "
                f"{str(record.get('sha256'))[:16]}...)")
    return ""


def warn_if_shared(folder: str | os.PathLike, log: Callable[[str], None]) -> None:
    """Log once per folder when the cache can be written by other users (they could replace both a
    file and its record)."""
    where = str(folder)
    if where in _warned_shared:
        return
    _warned_shared.add(where)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        msg = safe_files.warn_if_shared(folder, "engine cache")
    if msg:
        log(f"engines: WARNING: {msg}")


def cached_file_ok(path: str | os.PathLike, key: str, log: Callable[[str], None] = print) -> bool:
    """True when ``path`` is in the cache and matches its record; a present file that does not is
    logged (naming it) and False is returned, so the caller makes it again."""
    p = Path(path)
    warn_if_shared(p.parent.parent if p.parent.name in ("onnx", "int8", "meta", "agreement") else p.parent, log)
    if not is_valid_file(p):
        return False
    problem = record_problem(p, key)
    if problem:
        log(f"engines: {problem}; making it again")
        return False
    return True


def is_valid_file(path: Path) -> bool:
    """A cached file is used when it exists and is not empty (writers replace it atomically)."""
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:
        return False


def meta_cache_path(path: str | os.PathLike, cache_dir: str | os.PathLike | None) -> Path:
    """Where the checkpoint's metadata (classes, mean/std, name; ``CheckpointMeta.to_dict``) is kept,
    so a warm start builds its class table and normalisation without torch loading the checkpoint."""
    return cache_root(cache_dir) / "meta" / f"{file_digest(path)[:24]}.json"


def read_meta(path: str | os.PathLike, cache_dir: str | os.PathLike | None,
              log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """The cached metadata of checkpoint ``path``, or None (none yet, unreadable, another format, or
    not what its record says)."""
    target = meta_cache_path(path, cache_dir)
    if not cached_file_ok(target, file_digest(path), log):
        return None
    try:
        data = json.loads(target.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != 1 or not isinstance(data.get("meta"), dict):
        return None
    return data


def write_meta(path: str | os.PathLike, cache_dir: str | os.PathLike | None, meta: dict[str, Any],
               name: str) -> None:
    """Store the checkpoint's metadata for later warm starts (atomic; a failure only costs speed)."""
    target = meta_cache_path(path, cache_dir)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        safe_files.write_text(target, json.dumps({"format": 1, "name": name, "meta": meta}, indent=1))
        write_record(target, file_digest(path))
    except OSError:
        pass


def report_paths(onnx_path: str | os.PathLike, backend: str) -> tuple[Path, Path]:
    """(json, txt) paths of the int8 report of a quantized file for one runtime (``quantize``)."""
    p = Path(onnx_path)
    stem = p.name[:-5] if p.name.endswith(".onnx") else p.name
    return p.with_name(f"{stem}.{backend}.report.json"), p.with_name(f"{stem}.{backend}.report.txt")


def load_report(onnx_path: str | os.PathLike, backend: str) -> dict[str, Any] | None:
    """The JSON report of ``onnx_path`` for ``backend``, or None when there is none or it does not
    describe this very file. Lives here, torch-free, because the CPU ``auto`` choice reads it at every
    start-up.

    A report is what lets ``precision: auto`` pick int8 without measuring, so it is trusted only for
    the file it was measured on: it names that file's SHA-256 (``model_sha256``, see
    :func:`report_fields`), which is checked here. A report of an earlier or swapped file (same name,
    other bytes, even with the same modification time) is ignored, and the caller measures again."""
    jpath, _ = report_paths(onnx_path, backend)
    if not jpath.is_file():
        return None
    try:
        rep = json.loads(jpath.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rep, dict) or not isinstance(rep.get("label_agreement"), (int, float)):
        return None
    try:
        if rep.get("model_sha256") != file_digest(onnx_path):
            return None
    except OSError:
        return None
    return rep


def report_fields(onnx_path: str | os.PathLike) -> dict[str, Any]:
    """What ties a quantization report to the file it was measured on (checked by :func:`load_report`)."""
    p = Path(onnx_path)
    return {"model": str(p), "model_sha256": file_digest(p)}
