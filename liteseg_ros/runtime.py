"""From settings to a ready Pipeline: resolve weights, load the model, pick the engine.

Ring 2: torch, the model and engine libraries; never rclpy or message packages. The node, the bag
tool, the demo and ``liteseg bench`` build their pipeline here, so weights resolution, the random-
weights guard and engine selection behave identically everywhere.

A ``weights`` setting becomes a :class:`~liteseg_ros.engines.model_weights.ModelWeights` here, once
(:func:`resolve_model`), and that object, not a file name, goes to ``create_engine``.

Start-up time: torch is imported only when something needs it. An ONNX file never needs it (nor
onnx: its metadata is read from the protobuf). A checkpoint whose metadata is in the engine cache
(``cache.read_meta``) and whose CPU engine file is cached starts without loading the checkpoint at
all (classes, mean/std and name come from the cached metadata, the engine from the cached ONNX
file), which keeps a warm start of the node under 2 s instead of ~6.5 s.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from liteseg_ros.classes import ClassTable
from liteseg_ros.engines.model_weights import (
    ModelLoadError,
    ModelWeights,
    checkpoint_weights,
    onnx_weights,
    random_weights,
)
from liteseg_ros.engines.onnx_file import is_onnx_file
from liteseg_ros.engines.selection import CPU_BACKENDS, resolve_device
from liteseg_ros.pipeline import Pipeline, PipelineConfig
from liteseg_ros.settings import PipelineSettings

#: ``weights: demo`` resolves to this file shipped inside the package (synthetic-scene demo model).
DEMO_WEIGHTS_NAME = "liteseg_demo_mobilenetv2.pt"
#: The demo weights are this package's own work (trained on generated scenes only), under its licence.
DEMO_WEIGHTS_LICENSE = "Apache-2.0 (liteseg_ros demo weights, trained on generated scenes only)"


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


def resolve_model(weights: str, backbone: str = "auto", allow_random_weights: bool = False, num_classes: int = 19,
                  allow_download: bool = False, log: Callable[[str], None] = print,
                  cache_dir: str | os.PathLike | None = None, use_meta_cache: bool = False) -> ModelWeights:
    """A ``weights`` setting -> :class:`ModelWeights`: the one place that decides what weights are.

    '' -> seeded random weights (only with ``allow_random_weights``); an ``.onnx`` file (any case) ->
    its metadata (no torch, no onnx); a checkpoint -> the engine cache's copy of its metadata when
    ``use_meta_cache`` finds one (no torch), else the loaded checkpoint (whose metadata is then
    cached). A registered name or ``demo`` adds its name, licence and, for files without metadata of
    their own, its normalisation. ``backbone`` other than ''/'auto' must match the file's.
    """
    path, entry = _resolve(weights, allow_download, log, False)
    if path is None:
        if not allow_random_weights:
            raise ModelLoadError(
                "no weights given: set parameter 'weights' to a checkpoint file (official LiteSeg .pth or a "
                "liteseg_ros .pt), a registered name such as liteseg-mobilenet-cityscapes (`liteseg weights "
                "list`), or 'demo' for the bundled synthetic-scene demo model; set "
                "'allow_random_weights: true' only for tests")
        return random_weights("mobilenetv2" if backbone in ("", "auto") else backbone, num_classes)
    if is_onnx_file(path):
        model = onnx_weights(path)
        if not model.backbone:  # a file without the key: the parameter's, as far as it names one
            model.backbone = backbone.replace("auto", "")
    else:
        model = checkpoint_weights(path, cache_dir, use_meta_cache, log)
    if model.backbone:
        _check_backbone(path, backbone, model.backbone)
    if weights == "demo":
        model.license = DEMO_WEIGHTS_LICENSE
    if entry is not None:
        if model.backbone != entry.backbone:
            raise ModelLoadError(f"weights {entry.name!r} are registered as {entry.backbone} but {path} holds "
                                 f"a {model.backbone} model")
        model.name, model.license = entry.name, entry.license_line
        if model.meta_source in ("official", "state_dict"):  # no metadata in the file: the registry's
            model.mean, model.std = tuple(entry.mean or model.mean), tuple(entry.std or model.std)
    return model


def _check_backbone(path: Path, backbone: str, found: str) -> None:
    if backbone not in ("", "auto") and found != backbone:  # 'auto' (the default) takes the file's
        raise ModelLoadError(f"parameter backbone={backbone!r} but {path} holds a {found} model")


def load_model(weights: str, allow_random_weights: bool = False, backbone: str = "auto",
               num_classes: int = 19, allow_download: bool = False, log: Callable[[str], None] = print,
               cache_dir: str | os.PathLike | None = None):
    """Returns (model in eval mode, ClassTable, mean, std, ModelWeights): :func:`resolve_model` with the
    module loaded, for tools that need the module itself.

    For an ``.onnx`` file the "model" is the file's path (a string), which ``create_engine`` runs with
    an ONNX backend. With ``cache_dir`` (the engine cache; '' = the default one) a checkpoint's
    metadata is stored there for later starts.
    """
    source = resolve_model(weights, backbone, allow_random_weights, num_classes, allow_download, log,
                           cache_dir or None, use_meta_cache=cache_dir is not None)
    model = source.weights if source.is_onnx else source.module()
    return model, source.classes, tuple(source.mean), tuple(source.std), source


def build_pipeline(settings: PipelineSettings, classes_override: ClassTable | None = None,
                   log: Callable[[str], None] = print, max_batch: int = 1,
                   warn: Callable[[str], None] | None = None):
    """Settings (``params.pipeline_settings``) -> (Pipeline, ModelWeights).

    ``max_batch``: the largest batch ``Pipeline.run`` will get (TensorRT profiles; the bag tool batches).
    ``warn``: where a request the engine could not meet as asked is reported (default: ``log``).
    """
    from liteseg_ros.engines import create_engine
    from liteseg_ros.tools.quantize import startup_agreement

    s = settings
    cache_dir = s.engine_cache_dir or None
    source = resolve_model(s.weights, s.backbone, s.allow_random_weights, allow_download=s.allow_download, log=log,
                           cache_dir=cache_dir, use_meta_cache=True)
    classes = classes_override or source.classes
    size = s.network_size
    if source.is_onnx:
        _check_onnx_settings(source, s.backend, size)
    if source.backbone == "darknet19" and (size[0] % 4 or size[1] % 4):
        raise ModelLoadError(f"darknet19 needs network_width/height divisible by 4, got {size[1]}x{size[0]}")
    cfg = PipelineConfig(network_size=size, resize_mode=s.resize_mode, output_resolution=s.output_resolution,
                         overlay_alpha=float(s.overlay_alpha), confidence_threshold=float(s.confidence_threshold),
                         mask_groups=classes.resolve_groups(s.mask_groups), mean=tuple(source.mean),
                         std=tuple(source.std))
    device, precision = resolve_device(s.device, s.precision)
    engine = create_engine(source, backend=s.backend, device=device, precision=precision, input_size=size,
                           num_threads=int(s.num_threads) or None, cache_dir=cache_dir, log=log,
                           max_batch=max(1, int(max_batch)), min_label_agreement=float(s.min_label_agreement),
                           agreement_check=startup_agreement, warn=warn)
    return Pipeline(engine, classes, cfg), source


def _check_onnx_settings(source: ModelWeights, backend: str, size: tuple[int, int]) -> None:
    """An ONNX file as weights runs on an ONNX backend, at the size it was exported for (unless dynamic)."""
    path = source.path
    if backend not in ONNX_BACKENDS:
        raise ModelLoadError(f"weights {path} is an ONNX model: it runs with backend onnxruntime or openvino "
                             f"(or auto), not {backend!r}; for backend {backend} give the checkpoint (.pt/.pth)")
    meta = source.onnx_meta
    exported = meta.get("liteseg.input_size", "")
    if meta.get("liteseg.dynamic") != "True" and exported and exported != f"{size[0]}x{size[1]}":
        h, w = exported.split("x")
        raise ModelLoadError(f"weights {path} was exported for a {w}x{h} input: set network_width: {w} and "
                             f"network_height: {h} (now {size[1]}x{size[0]})")
