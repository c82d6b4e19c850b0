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
from liteseg_ros.pipeline import Pipeline, PipelineConfig

#: ``weights: demo`` resolves to this file shipped inside the package (synthetic-scene demo model).
DEMO_WEIGHTS_NAME = "liteseg_demo_mobilenetv2.pt"


class ModelLoadError(RuntimeError):
    """The model cannot be loaded as configured; the message says what to change."""


@dataclass
class ModelSource:
    """What was loaded, for ~/info and diagnostics."""

    name: str
    backbone: str
    weights: str  # resolved path, or "" for random weights
    random: bool


def demo_weights_path() -> Path:
    return Path(str(resources.files("liteseg_ros") / "data" / DEMO_WEIGHTS_NAME))


def resolve_weights(weights: str) -> Path | None:
    """'' -> None; 'demo' -> the bundled demo checkpoint; else an existing file (with ~ and $VARS)."""
    if not weights:
        return None
    if weights == "demo":
        p = demo_weights_path()
        if not p.is_file():
            raise ModelLoadError(f"the bundled demo weights are missing ({p}); reinstall liteseg_ros")
        return p
    p = Path(os.path.expandvars(os.path.expanduser(weights)))
    if not p.is_file():
        raise ModelLoadError(f"weights file {p} does not exist (parameter 'weights')")
    return p


def _check_backbone(path: Path, backbone: str, found: str) -> None:
    if backbone and found != backbone and backbone != "mobilenetv2":
        # 'mobilenetv2' is the default; only an explicit other choice that disagrees is an error.
        raise ModelLoadError(f"parameter backbone={backbone!r} but {path} holds a {found} model")


def cached_model_info(weights: str, backbone: str, cache_dir: str | os.PathLike | None):
    """(ClassTable, mean, std, ModelSource) of a checkpoint from the engine cache's metadata, without
    torch; None when the cache has none for this file's content (the caller loads the checkpoint)."""
    from liteseg_ros.engines.cache import read_meta

    path = resolve_weights(weights)
    if path is None:
        return None
    data = read_meta(path, cache_dir)
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
    return classes, mean, std, ModelSource(data.get("name") or path.stem, found, str(path), False)


def load_model(weights: str, allow_random_weights: bool = False, backbone: str = "mobilenetv2",
               num_classes: int = 19, cache_dir: str | os.PathLike | None = None):
    """Returns (model in eval mode, ClassTable, mean, std, ModelSource).

    With ``cache_dir`` (the engine cache; '' or None = the default one) the checkpoint's metadata
    is stored there for :func:`cached_model_info` of later starts."""
    from liteseg_ros.model import CheckpointError, LiteSeg, load_checkpoint

    path = resolve_weights(weights)
    if path is None:
        if not allow_random_weights:
            raise ModelLoadError(
                "no weights given: set parameter 'weights' to a checkpoint file (official LiteSeg .pth or a "
                "liteseg_ros .pt), or 'demo' for the bundled synthetic-scene demo model; set "
                "'allow_random_weights: true' only for tests")
        import torch

        torch.manual_seed(0)
        model = LiteSeg(backbone, num_classes).eval()
        classes = ClassTable.generic(num_classes)
        from liteseg_ros.classes import IMAGENET_MEAN, IMAGENET_STD

        return model, classes, IMAGENET_MEAN, IMAGENET_STD, ModelSource(
            f"liteseg-{backbone}-random", backbone, "", True)
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
    return model.eval(), meta.classes, tuple(meta.mean), tuple(meta.std), ModelSource(
        name, meta.backbone, str(path), False)


def cuda_driver_present() -> bool:
    """False when this Linux machine certainly has no NVIDIA driver (then CUDA cannot be available
    and ``device: auto`` is the CPU without importing torch to ask); True otherwise."""
    import sys

    if not sys.platform.startswith("linux"):
        return True
    return any(os.path.exists(p) for p in ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/nvidia0"))


def resolve_device(device: str, precision: str) -> tuple[str, str]:
    """'auto' device -> cuda when usable, else cpu; 'auto' precision -> fp16 on CUDA, and stays 'auto'
    on CPU, where ``create_engine`` picks the fastest of fp32/bf16/int8 that meets min_label_agreement."""
    if device == "auto":
        if cuda_driver_present():
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        else:
            device = "cpu"
    if precision == "auto" and device.startswith("cuda"):
        precision = "fp16"
    return device, precision


def build_pipeline(values: Mapping, classes_override: ClassTable | None = None,
                   log: Callable[[str], None] = print, max_batch: int = 1):
    """Settings (the node's parameter names) -> (Pipeline, ModelSource).

    ``values`` needs: weights, allow_random_weights, backbone, backend, device, precision,
    num_threads, engine_cache_dir, network_width, network_height, resize_mode, output_resolution,
    overlay_alpha, confidence_threshold, and ``mask_groups`` as {group: [class names]};
    ``min_label_agreement`` is optional (default 0.99).
    ``max_batch``: the largest batch ``Pipeline.run`` will get (TensorRT profiles; the bag tool batches).
    """
    from liteseg_ros.engines import create_engine

    cache_dir = values.get("engine_cache_dir") or None
    cached = None if values["allow_random_weights"] and not values["weights"] else cached_model_info(
        values["weights"], values["backbone"], cache_dir)
    if cached is not None:  # the engine loads the checkpoint only if its cached file is missing
        model = None
        classes, mean, std, source = cached
        log(f"model {source.name}: metadata from the engine cache (checkpoint loaded only if the engine "
            f"file must be made)")
    else:
        model, classes, mean, std, source = load_model(values["weights"], values["allow_random_weights"],
                                                       values["backbone"], cache_dir=cache_dir or "")
    classes = classes_override or classes
    size = (int(values["network_height"]), int(values["network_width"]))
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
                           min_label_agreement=float(values.get("min_label_agreement", 0.99)),
                           loaded_model=model if source.weights else None)
    return Pipeline(engine, classes, cfg), source
