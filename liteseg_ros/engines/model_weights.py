"""What an engine is built from: one typed answer to "what are these weights?".

Ring 2: imports the class table, the engine cache's look-ups and the ONNX file facts; torch only
inside the one checkpoint loader, when the module itself is needed. Never rclpy, message packages,
the pipeline, the synthetic scenes or training.

A :class:`ModelWeights` says, once, what the weights are (a checkpoint, an ONNX file or a module in
memory), where they live, how the engine cache keys them, and what the pipeline needs from them
(classes, normalisation, backbone, licence). The module is loaded lazily: a checkpoint whose metadata
is in the engine cache is described without torch, and loaded only if an engine file must be made.
``runtime.resolve_model`` turns a ``weights`` setting into one; ``create_engine`` takes one (or
a module or a file, which :meth:`ModelWeights.of` describes the same way).
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from liteseg_ros.classes import IMAGENET_MEAN, IMAGENET_STD, ClassTable

from .base import EngineError
from .onnx_file import is_onnx_file, onnx_metadata

#: What weights can be: a checkpoint file, an exported ONNX file, or a module already in memory.
KINDS = ("checkpoint", "onnx", "module")


class ModelLoadError(RuntimeError):
    """The model cannot be loaded as configured; the message says what to change."""


def load_checkpoint_module(path: str | os.PathLike):
    """The eval module of a checkpoint file: the package's one checkpoint loader (imports torch)."""
    path = Path(path)
    if not path.is_file():
        raise EngineError(f"weights file not found: {path}")
    from liteseg_ros.model import load_checkpoint

    return load_checkpoint(path, map_location="cpu").eval()


@dataclass(eq=False)
class ModelWeights:
    """One set of weights, resolved: what it is, where it is, its cache key and what it carries.

    ``name``, ``backbone``, ``license`` and ``random`` are what ``~/info`` and the diagnostics show;
    ``classes`` (None when not known without loading, e.g. a bare checkpoint path given to
    ``create_engine``), ``mean``/``std`` are what the pipeline needs; ``onnx_meta`` is an ONNX file's
    ``liteseg.*`` metadata. :meth:`module` loads a checkpoint on first use (the only step that imports
    torch); :attr:`key` is the engine cache's key (the file's hash, or the module's state hash).
    """

    kind: str
    path: Path | None = None
    name: str = ""
    backbone: str = ""
    classes: ClassTable | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    license: str = ""
    random: bool = False
    #: where a checkpoint's metadata came from ("official", "state_dict", "liteseg_ros", ...: ``CheckpointMeta.source``)
    meta_source: str = ""
    onnx_meta: dict[str, str] = field(default_factory=dict)
    _loader: Callable[[], Any] | None = field(default=None, repr=False)
    _module: Any = field(default=None, repr=False)
    _key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"weights kind {self.kind!r} is not one of: {', '.join(KINDS)}")

    @property
    def is_onnx(self) -> bool:
        return self.kind == "onnx"

    @property
    def weights(self) -> str:
        """The resolved file as ``~/info`` shows it ('' for weights that exist only in memory)."""
        return str(self.path) if self.path is not None else ""

    @property
    def label(self) -> str:
        """How messages name these weights: the file, or the module's class."""
        return self.weights or type(self._module).__name__

    @property
    def is_loaded(self) -> bool:
        return self._module is not None

    def module(self):
        """The eval ``nn.Module`` (loaded from the checkpoint on first use: this is what imports torch)."""
        if self._module is None:
            if self._loader is None:
                raise EngineError(f"{self.label} is an ONNX file; this needs the model weights (a checkpoint)")
            self._module = self._loader()
        return self._module

    @property
    def key(self) -> str:
        """The engine cache's key of these weights (``cache.model_key``): a file by its bytes, a module
        by its state."""
        if self._key is None:
            from .cache import checkpoint_key, state_key

            if self.path is not None:
                if not self.path.is_file():
                    raise EngineError(f"weights file not found: {self.path}")
                self._key = checkpoint_key(self.path)
            else:
                self._key = state_key(self.module())
        return self._key

    @classmethod
    def of(cls, source: Any) -> ModelWeights:
        """``source`` as weights: itself when already resolved, an ONNX file (by suffix, any case), a
        checkpoint file (described without loading it), or a module in memory."""
        if isinstance(source, ModelWeights):
            return source
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if is_onnx_file(path):
                return cls("onnx", path, path.stem, onnx_meta=onnx_metadata(path) if path.is_file() else {})
            return cls("checkpoint", path, path.stem, _loader=lambda: load_checkpoint_module(path))
        module = source.eval() if hasattr(source, "eval") else source
        meta = getattr(module, "meta", None)
        return cls("module", None, type(module).__name__, str(getattr(module, "backbone", "")),
                   getattr(meta, "classes", None), _module=module)


def onnx_weights(path: Path) -> ModelWeights:
    """An ONNX file written by ``liteseg export`` / ``liteseg quantize --out``: classes, normalisation
    and backbone from its ``liteseg.*`` metadata (read without onnx or torch)."""
    if not path.is_file():
        raise ModelLoadError(f"weights file not found: {path}")
    meta = onnx_metadata(path)
    try:
        num_classes = int(meta["liteseg.num_classes"])
        mean = tuple(json.loads(meta["liteseg.mean"])) if "liteseg.mean" in meta else IMAGENET_MEAN
        std = tuple(json.loads(meta["liteseg.std"])) if "liteseg.std" in meta else IMAGENET_STD
    except (KeyError, ValueError, TypeError):
        raise ModelLoadError(f"{path}: an ONNX file without liteseg metadata (liteseg.num_classes ...), or not an ONNX file; "
                             "use a file written by `liteseg export` or `liteseg quantize --out`") from None
    classes = ClassTable.cityscapes() if num_classes == 19 else ClassTable.generic(num_classes)
    return ModelWeights("onnx", path, path.stem, meta.get("liteseg.backbone", ""), classes, mean, std,
                        onnx_meta=meta)


def checkpoint_weights(path: Path, cache_dir: str | os.PathLike | None = None, use_meta_cache: bool = False,
                       log: Callable[[str], None] = print) -> ModelWeights:
    """A checkpoint file, described from the engine cache's copy of its metadata when ``use_meta_cache``
    and the cache has one (no torch; the module loads only if an engine file must be made), else by
    loading it (and, with ``use_meta_cache``, storing its metadata for the next start)."""
    from .cache import read_meta, write_meta

    loader = lambda: load_checkpoint_module(path)  # noqa: E731 - the lazy load, named once
    data = read_meta(path, cache_dir, log) if use_meta_cache else None
    if data is not None:
        meta = data["meta"]
        try:
            classes = ClassTable.from_dict(meta["classes"])
            mean, std = tuple(float(v) for v in meta["mean"]), tuple(float(v) for v in meta["std"])
            weights = ModelWeights("checkpoint", path, data.get("name") or path.stem, str(meta["backbone"]),
                                   classes, mean, std, meta_source=str(meta.get("source", "")), _loader=loader)
        except (KeyError, TypeError, ValueError):
            pass  # written by another version: load the checkpoint instead
        else:
            log(f"model {weights.name}: metadata from the engine cache (checkpoint loaded only if the engine "
                f"file must be made)")
            return weights
    from liteseg_ros.model import CheckpointError

    try:
        module = loader()
    except CheckpointError as exc:
        raise ModelLoadError(str(exc)) from None
    meta = module.meta
    name = getattr(meta, "model_name", "") or path.stem
    if use_meta_cache:
        write_meta(path, cache_dir, meta.to_dict(), name)
    return ModelWeights("checkpoint", path, name, meta.backbone, meta.classes, tuple(meta.mean), tuple(meta.std),
                        meta_source=meta.source, _loader=loader, _module=module)


def random_weights(backbone: str, num_classes: int) -> ModelWeights:
    """Seeded random weights (tests only; the caller has checked that they are allowed)."""
    import torch

    from liteseg_ros.model import LiteSeg

    torch.manual_seed(0)
    module = LiteSeg(backbone, num_classes).eval()
    return ModelWeights("module", None, f"liteseg-{backbone}-random", backbone, ClassTable.generic(num_classes),
                        random=True, _module=module)
