"""From settings to a ready Pipeline: resolve weights, load the model, pick the engine.

Ring 2: torch, the model and engine libraries; never rclpy or message packages. The node, the bag
tool, the demo and ``liteseg bench`` build their pipeline here, so weights resolution, the random-
weights guard and engine selection behave identically everywhere.

Start-up time: torch is imported only when something needs it. A checkpoint whose metadata is in
the engine cache (``cache.read_meta``) and whose CPU engine file is cached starts without loading
the checkpoint at all (classes, mean/std and name come from the cached metadata, the engine from
the cached ONNX file), which keeps a warm start of the node under 2 s instead of ~6.5 s.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from liteseg_ros.classes import ClassTable
from liteseg_ros.engines.selection import CPU_BACKENDS, DEFAULT_MIN_LABEL_AGREEMENT, resolve_device
from liteseg_ros.pipeline import Pipeline, PipelineConfig

#: ``weights: demo`` resolves to this file shipped inside the package (synthetic-scene demo model).
DEMO_WEIGHTS_NAME = "liteseg_demo_mobilenetv2.pt"
#: The demo weights are this package's own work (trained on generated scenes only), under its licence.
DEMO_WEIGHTS_LICENSE = "Apache-2.0 (liteseg_ros demo weights, trained on generated scenes only)"


class ModelLoadError(RuntimeError):
    """The model cannot be loaded as configured; the message says what to change."""


@dataclass
class ModelSource:
    """What was loaded, for ~/info and diagnostics."""

    name: str
    backbone: str
    weights: str  # resolved path, or "" for random weights
    random: bool
    #: licence of the weights in one line ("" = unknown: a file that is not a registered name)
    license: str = ""


def demo_weights_path() -> Path:
    return Path(str(resources.files("liteseg_ros") / "data" / DEMO_WEIGHTS_NAME))


def resolve_weights(weights: str, allow_download: bool = False, log: Callable[[str], None] = print,
                    progress: bool = False) -> Path | None:
    """The checkpoint file a ``weights`` setting means; the one place that reads that setting.

    '' -> None (random weights, if allowed); 'demo' -> the bundled demo checkpoint; an existing file
    (with ~ and $VARS) -> itself; a registered name such as ``liteseg-mobilenet-cityscapes`` -> its
    verified file in the weights cache, downloaded first only when ``allow_download`` (or
    ``$LITESEG_ALLOW_DOWNLOAD``) allows it. Raises ModelLoadError saying what to do otherwise.
    """
    return _resolve(weights, allow_download, log, progress)[0]


def _resolve(weights: str, allow_download: bool, log: Callable[[str], None], progress: bool):
    """(path or None, registry entry or None) for a ``weights`` setting (see :func:`resolve_weights`)."""
    if not weights:
        return None, None
    if weights == "demo":
        p = demo_weights_path()
        if not p.is_file():
            raise ModelLoadError(f"the bundled demo weights are missing ({p}); reinstall liteseg_ros")
        return p, None
    p = Path(os.path.expandvars(os.path.expanduser(weights)))
    from liteseg_ros import weights as known

    if p.exists() and known.looks_like_name(weights) and _registered(weights):
        # a file in the working folder that carries a registered name: the name wins (a verified file),
        # so a stray or planted file is never loaded unverified in its place
        log(f"warning: ./{weights} exists but {weights!r} is a registered name: using the registered, "
            f"verified weights; give ./{weights} to load the local file instead")
    elif p.is_file():
        return p, None
    elif p.is_dir():
        raise ModelLoadError(f"weights {p} is a directory; give the checkpoint (or .onnx) file inside it "
                             "(parameter 'weights')")
    elif p.exists():
        raise ModelLoadError(f"weights {p} is not a regular file (parameter 'weights')")
    try:
        entry = known.lookup(weights)
        if entry is None and known.looks_like_name(weights):
            known.get(weights)  # raises UnknownWeights listing the known names
        if entry is not None:
            if entry.kind != "liteseg":
                raise ModelLoadError(f"weights {weights!r} are a {entry.kind} (ImageNet initialisation for "
                                     f"training: encoder_weights), not a segmentation model")
            return known.resolve(weights, allow_download, log=log, progress=progress), entry
    except known.WeightsError as exc:
        raise ModelLoadError(str(exc)) from None
    raise ModelLoadError(f"weights not found: {p} does not exist (and is neither 'demo' nor a registered name)")


def _registered(name: str) -> bool:
    from liteseg_ros import weights as known

    try:
        return known.lookup(name) is not None
    except known.WeightsError:
        return False


#: Backends that run an ONNX file given as ``weights`` (``auto`` picks one of them on a CPU).
ONNX_BACKENDS = ("auto", *CPU_BACKENDS)


def is_onnx_weights(path: Path | str | None) -> bool:
    """Whether ``weights`` names an ONNX model (``liteseg export`` / ``liteseg quantize --out``)."""
    return path is not None and str(path).lower().endswith(".onnx")


def _onnx_source(path: Path, backbone: str):
    """(path, ClassTable, mean, std, ModelSource) for an ONNX file, from the metadata our export writes."""
    import json

    from liteseg_ros.classes import IMAGENET_MEAN, IMAGENET_STD
    from liteseg_ros.engines.export import onnx_metadata

    try:
        meta = onnx_metadata(path)
    except Exception as exc:  # noqa: BLE001 - onnx raises its own decode errors for a damaged file
        raise ModelLoadError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    try:
        num_classes = int(meta["liteseg.num_classes"])
        file_backbone = meta.get("liteseg.backbone", "")
        mean = tuple(json.loads(meta["liteseg.mean"])) if "liteseg.mean" in meta else IMAGENET_MEAN
        std = tuple(json.loads(meta["liteseg.std"])) if "liteseg.std" in meta else IMAGENET_STD
    except (KeyError, ValueError, TypeError):
        raise ModelLoadError(f"{path}: an ONNX file without liteseg metadata (liteseg.num_classes ...); "
                             "use a file written by `liteseg export` or `liteseg quantize --out`") from None
    if file_backbone:
        _check_backbone(path, backbone, file_backbone)
    classes = ClassTable.cityscapes() if num_classes == 19 else ClassTable.generic(num_classes)
    return str(path), classes, mean, std, ModelSource(path.stem, file_backbone or backbone.replace("auto", ""),
                                                      str(path), False)


def _check_backbone(path: Path, backbone: str, found: str) -> None:
    if backbone not in ("", "auto") and found != backbone:  # 'auto' (the default) takes the file's
        raise ModelLoadError(f"parameter backbone={backbone!r} but {path} holds a {found} model")


def cached_model_info(weights: str, backbone: str, cache_dir: str | os.PathLike | None,
                      allow_download: bool = False, log: Callable[[str], None] = print):
    """(ClassTable, mean, std, ModelSource) of a checkpoint from the engine cache's metadata, without
    torch; None when the cache has none for this file's content (the caller loads the checkpoint)."""
    from liteseg_ros.engines.cache import read_meta

    path, entry = _resolve(weights, allow_download, log, False)
    if path is None or is_onnx_weights(path):
        return None
    data = read_meta(path, cache_dir, log)
    if data is None:
        return None
    meta = data["meta"]
    try:
        classes = ClassTable.from_dict(meta["classes"])
        mean, std = tuple(float(v) for v in meta["mean"]), tuple(float(v) for v in meta["std"])
        found = str(meta["backbone"])
    except (KeyError, TypeError, ValueError):
        return None  # written by another version: load the checkpoint instead
    _check_backbone(path, backbone, found)
    mean, std, source = _describe(weights, path, entry, found, data.get("name") or path.stem,
                                  str(meta.get("source", "")), mean, std)
    return classes, mean, std, source


def load_model(weights: str, allow_random_weights: bool = False, backbone: str = "auto",
               num_classes: int = 19, allow_download: bool = False, log: Callable[[str], None] = print,
               cache_dir: str | os.PathLike | None = None):
    """Returns (model in eval mode, ClassTable, mean, std, ModelSource).

    For an ``.onnx`` file the "model" is the file's path (a string), which ``create_engine`` runs with
    an ONNX backend; classes, mean and std come from the metadata ``liteseg export`` writes into it.
    With ``cache_dir`` (the engine cache; '' or None = the default one) a checkpoint's metadata is
    stored there for :func:`cached_model_info` of later starts.
    """
    from liteseg_ros.model import CheckpointError, LiteSeg, load_checkpoint

    path, entry = _resolve(weights, allow_download, log, False)
    if path is None:
        if not allow_random_weights:
            raise ModelLoadError(
                "no weights given: set parameter 'weights' to a checkpoint file (official LiteSeg .pth or a "
                "liteseg_ros .pt), a registered name such as liteseg-mobilenet-cityscapes (`liteseg weights "
                "list`), or 'demo' for the bundled synthetic-scene demo model; set "
                "'allow_random_weights: true' only for tests")
        import torch

        torch.manual_seed(0)
        backbone = "mobilenetv2" if backbone in ("", "auto") else backbone
        model = LiteSeg(backbone, num_classes).eval()
        classes = ClassTable.generic(num_classes)
        from liteseg_ros.classes import IMAGENET_MEAN, IMAGENET_STD

        return model, classes, IMAGENET_MEAN, IMAGENET_STD, ModelSource(
            f"liteseg-{backbone}-random", backbone, "", True)
    if is_onnx_weights(path):
        return _onnx_source(path, backbone)
    try:
        model = load_checkpoint(path, map_location="cpu")
    except CheckpointError as exc:
        raise ModelLoadError(str(exc)) from None
    meta = model.meta
    _check_backbone(path, backbone, meta.backbone)
    name = getattr(meta, "model_name", "") or path.stem
    if cache_dir is not None:
        from liteseg_ros.engines.cache import write_meta

        write_meta(path, cache_dir or None, meta.to_dict(), name)
    mean, std, source = _describe(weights, path, entry, meta.backbone, name, meta.source, tuple(meta.mean),
                                  tuple(meta.std))
    return model.eval(), meta.classes, mean, std, source


def _describe(weights: str, path: Path, entry, backbone: str, name: str, meta_source: str, mean, std):
    """(mean, std, ModelSource) of a loaded or cached checkpoint: a registered name supplies the name,
    the licence and, for files without metadata of their own, the normalisation."""
    licence = DEMO_WEIGHTS_LICENSE if weights == "demo" else ""
    if entry is not None:
        if backbone != entry.backbone:
            raise ModelLoadError(f"weights {entry.name!r} are registered as {entry.backbone} but {path} holds "
                                 f"a {backbone} model")
        name, licence = entry.name, entry.license_line
        if meta_source in ("official", "state_dict"):  # no metadata in the file: the registry's normalisation
            mean, std = entry.mean or mean, entry.std or std
    return tuple(mean), tuple(std), ModelSource(name, backbone, str(path), False, licence)


def build_pipeline(values: Mapping, classes_override: ClassTable | None = None,
                   log: Callable[[str], None] = print, max_batch: int = 1):
    """Settings (the node's parameter names) -> (Pipeline, ModelSource).

    ``values`` needs: weights, allow_random_weights, backbone, backend, device, precision,
    num_threads, engine_cache_dir, network_width, network_height, resize_mode, output_resolution,
    overlay_alpha, confidence_threshold, and ``mask_groups`` as {group: [class names]};
    ``min_label_agreement`` (default ``selection.DEFAULT_MIN_LABEL_AGREEMENT``) and ``allow_download`` (default false: a registered name
    must already be in the weights cache) are optional.
    ``max_batch``: the largest batch ``Pipeline.run`` will get (TensorRT profiles; the bag tool batches).
    """
    from liteseg_ros.engines import create_engine

    cache_dir = values.get("engine_cache_dir") or None
    allow_download = bool(values.get("allow_download", False))
    cached = None if values["allow_random_weights"] and not values["weights"] else cached_model_info(
        values["weights"], values["backbone"], cache_dir, allow_download, log)
    if cached is not None:  # the engine loads the checkpoint only if its cached file is missing
        model = None
        classes, mean, std, source = cached
        log(f"model {source.name}: metadata from the engine cache (checkpoint loaded only if the engine "
            f"file must be made)")
    else:
        model, classes, mean, std, source = load_model(values["weights"], values["allow_random_weights"],
                                                       values["backbone"], allow_download=allow_download,
                                                       log=log, cache_dir=cache_dir or "")
    classes = classes_override or classes
    size = (int(values["network_height"]), int(values["network_width"]))
    if is_onnx_weights(source.weights):
        _check_onnx_settings(Path(source.weights), values["backend"], size)
    if source.backbone == "darknet19" and (size[0] % 4 or size[1] % 4):
        raise ModelLoadError(f"darknet19 needs network_width/height divisible by 4, got {size[1]}x{size[0]}")
    groups = classes.resolve_groups(values.get("mask_groups", {}))
    cfg = PipelineConfig(network_size=size, resize_mode=values["resize_mode"],
                         output_resolution=values["output_resolution"],
                         overlay_alpha=float(values["overlay_alpha"]),
                         confidence_threshold=float(values["confidence_threshold"]),
                         mask_groups=groups, mean=tuple(mean), std=tuple(std))
    device, precision = resolve_device(values["device"], values["precision"])
    # A checkpoint goes in as its path so that cached files are keyed by the file (no torch needed
    # to find them); random weights exist only as the module.
    engine = create_engine(source.weights or model, backend=values["backend"], device=device,
                           precision=precision, input_size=size,
                           num_threads=int(values["num_threads"]) or None,
                           cache_dir=cache_dir, log=log,
                           max_batch=max(1, int(max_batch)),
                           min_label_agreement=float(values.get("min_label_agreement",
                                                                DEFAULT_MIN_LABEL_AGREEMENT)),
                           loaded_model=model if source.weights and not is_onnx_weights(source.weights) else None)
    return Pipeline(engine, classes, cfg), source


def _check_onnx_settings(path: Path, backend: str, size: tuple[int, int]) -> None:
    """An ONNX file as weights runs on an ONNX backend, at the size it was exported for (unless dynamic)."""
    from liteseg_ros.engines.export import onnx_metadata

    if backend not in ONNX_BACKENDS:
        raise ModelLoadError(f"weights {path} is an ONNX model: it runs with backend onnxruntime or openvino "
                             f"(or auto), not {backend!r}; for backend {backend} give the checkpoint (.pt/.pth)")
    meta = onnx_metadata(path)
    exported = meta.get("liteseg.input_size", "")
    if meta.get("liteseg.dynamic") != "True" and exported and exported != f"{size[0]}x{size[1]}":
        h, w = exported.split("x")
        raise ModelLoadError(f"weights {path} was exported for a {w}x{h} input: set network_width: {w} and "
                             f"network_height: {h} (now {size[1]}x{size[0]})")
