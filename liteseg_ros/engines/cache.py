"""Where the engine cache lives and how its files are named: the one place that defines both.

Ring 2, and deliberately light: imports only the standard library (no torch, numpy, onnx), because a
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
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

#: Environment variable that moves the default cache (tests, read-only home directories).
CACHE_ENV = "LITESEG_CACHE_DIR"
#: Bump when ``export.export_onnx`` makes a different graph for the same weights and options.
EXPORT_VERSION = 2
#: The opset the cached files are exported at (``export.DEFAULT_OPSET``, repeated here without torch).
CACHE_OPSET = 17
#: Bump when the default int8 recipe of ``quantize.quantize_model`` changes.
QUANT_RECIPE = 2

_digests: dict[tuple[str, int, int], str] = {}


def default_cache_dir() -> Path:
    """``$LITESEG_CACHE_DIR`` or ``~/.cache/liteseg_ros/engines``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "liteseg_ros" / "engines"


def cache_root(cache_dir: str | os.PathLike | None) -> Path:
    """``cache_dir`` when given, else :func:`default_cache_dir`."""
    return Path(cache_dir) if cache_dir else default_cache_dir()


def file_digest(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, remembered per (path, size, mtime) for the life of the process.

    Hashing the 12.7 MB demo checkpoint takes ~30 ms; the memo spares the second hash when the
    runtime and the engine ask for the same file during one start-up.
    """
    p = Path(path).resolve()
    st = p.stat()
    memo = (str(p), st.st_size, st.st_mtime_ns)
    if memo not in _digests:
        digest = hashlib.sha256()
        with open(p, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
        _digests[memo] = digest.hexdigest()
    return _digests[memo]


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


def read_meta(path: str | os.PathLike, cache_dir: str | os.PathLike | None) -> dict[str, Any] | None:
    """The cached metadata of checkpoint ``path``, or None (none yet, unreadable, or another format)."""
    try:
        data = json.loads(meta_cache_path(path, cache_dir).read_text())
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
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"format": 1, "name": name, "meta": meta}, indent=1))
        os.replace(tmp, target)
    except OSError:
        pass


def report_paths(onnx_path: str | os.PathLike, backend: str) -> tuple[Path, Path]:
    """(json, txt) paths of the int8 report of a quantized file for one runtime (``quantize``)."""
    p = Path(onnx_path)
    stem = p.name[:-5] if p.name.endswith(".onnx") else p.name
    return p.with_name(f"{stem}.{backend}.report.json"), p.with_name(f"{stem}.{backend}.report.txt")


def load_report(onnx_path: str | os.PathLike, backend: str) -> dict[str, Any] | None:
    """The JSON report of ``onnx_path`` for ``backend``, or None when there is none (or it is stale:
    written for another file version). Lives here, torch-free, because the CPU ``auto`` choice
    reads it at every start-up."""
    jpath, _ = report_paths(onnx_path, backend)
    if not jpath.is_file():
        return None
    try:
        rep = json.loads(jpath.read_text())
    except (OSError, ValueError):
        return None
    if rep.get("model_mtime_ns") != Path(onnx_path).stat().st_mtime_ns:
        return None
    return rep
