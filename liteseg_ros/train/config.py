"""Training configuration: one flat dataclass, loaded from YAML, every key overridable with ``--set key=value``.

Ring 4 (faces): imports yaml and the standard library only (``liteseg_ros.synthetic`` late, to check
``synthetic_density``); never rclpy, message packages or ``liteseg_ros.node`` / ``liteseg_ros.bag`` /
``liteseg_ros.image_codec``.

Defaults are the LiteSeg recipe (arXiv 1912.06683, official ``train.py``) with its defects fixed:

* SGD, momentum 0.9, **Nesterov on** (the paper's text; the official code had it off);
* weight decay 4e-5 (the official 5e-4 was practically inert next to its 1e-7 LR);
* a **mean**-reduced cross entropy with ignore 255 and a base LR of 0.01 suited to it (the official
  code summed the loss over pixels and used LR 1e-7, which couples the step size to the crop size);
* a per-step poly schedule (power 0.9) instead of re-creating the optimizer every 5 epochs, which
  also threw away the momentum buffers.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from liteseg_ros.defaults import BACKBONES

DATASETS = ("cityscapes", "folder", "synthetic")
LR_SCHEDULES = ("poly", "cyclic", "constant")
OPTIMIZERS = ("sgd", "adamw")
CROP_MODES = ("pad", "resize")
CLASS_WEIGHT_METHODS = ("enet", "median_freq")
#: First scene seed of ``liteseg eval --synthetic`` (and of the model card's held-out scores): above the seeds a
#: synthetic training run uses (0..synthetic_train + synthetic_val - 1) unless that run is this large.
HELD_OUT_FIRST_SEED = 10000


class ConfigError(ValueError):
    """A bad configuration key or value; the message names the key (and the file when known)."""


@dataclass
class TrainConfig:
    """Every knob of ``liteseg train``. YAML keys and ``--set`` keys are these field names."""

    # --- data -------------------------------------------------------------------------------
    dataset: str = "cityscapes"            #: cityscapes | folder | synthetic
    data_dir: str | None = None            #: dataset root (not used for synthetic)
    train_split: str | None = "train"      #: split folder for training (null: folder dataset without splits)
    val_split: str | None = "val"          #: split for validation (null: no validation)
    coarse: bool = False                   #: Cityscapes: train on gtCoarse (train_extra) labels
    synthetic_size: tuple[int, int] = (180, 320)  #: synthetic scene size (H, W)
    synthetic_train: int = 200             #: number of synthetic training scenes (seeds 0..N-1)
    synthetic_val: int = 20                #: number of synthetic validation scenes (seeds after those)
    synthetic_weather: str = "random"      #: SceneConfig(weather=...): clear|overcast|rain|fog|dusk|random
    synthetic_density: dict[str, float] = field(default_factory=dict)  #: training scenes only: SceneConfig
    #: density multipliers, e.g. {cyclists: 4, people: 2} to show rare classes more often (validation keeps 1.0)
    # --- augmentation -----------------------------------------------------------------------
    crop_size: tuple[int, int] = (512, 1024)   #: training crop (H, W)
    scale_range: tuple[float, float] = (0.35, 1.0)  #: random scale of the full image, uniform
    crop_mode: str = "pad"                 #: pad (image 0 after normalisation, label 255) | resize
    hflip: bool = True                     #: random horizontal flip (p = 0.5)
    rotate_deg: float = 0.0                #: random rotation in [-r, r] degrees (label 255 fill)
    val_size: tuple[int, int] | None = None  #: validation input size (H, W); null = full resolution
    # --- model ------------------------------------------------------------------------------
    backbone: str = "mobilenetv2"          #: mobilenetv2 | shufflenet | darknet19
    encoder_weights: str | None = None     #: ImageNet encoder init: 'imagenet' (torchvision's
    #: MobileNet_V2_Weights.IMAGENET1K_V1, downloaded hash-checked into torch's cache on first use), a registered
    #: encoder name (`liteseg weights list`), or a local encoder .pth file
    init_weights: str | None = None        #: our checkpoint to start from (e.g. coarse -> fine)
    model_name: str = "liteseg"            #: name stored in the checkpoint metadata
    # --- optimisation -----------------------------------------------------------------------
    optimizer: str = "sgd"                 #: sgd | adamw
    lr: float = 0.01                       #: base LR for the mean-reduced loss
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 4e-5
    lr_schedule: str = "poly"              #: poly | cyclic | constant (all per optimizer step)
    poly_power: float = 0.9
    min_lr: float = 0.0                    #: floor of poly and cyclic schedules
    cyclic_steps: int = 2000               #: cyclic: steps per half cycle (triangular, min_lr..lr)
    warmup_steps: int = 0                  #: linear warm-up from 0 to the schedule's value
    label_smoothing: float = 0.0
    class_weights: Any = None              #: null | enet | median_freq | list of one weight per class
    class_weight_c: float = 1.02           #: enet: w = 1 / ln(c + p_class); smaller c = stronger rare-class boost
    class_weight_samples: int = 500        #: training labels read to estimate class frequencies
    batch_size: int = 8                    #: per process
    epochs: int = 100
    max_steps: int | None = None           #: stop (and end the schedule) after this many steps
    amp: bool = True                       #: mixed precision; only takes effect on CUDA
    grad_clip: float = 0.0                 #: max grad norm; 0 = off
    sync_bn: bool = False                  #: SyncBatchNorm under DDP on CUDA (ignored, with a note, on CPU)
    # --- running ----------------------------------------------------------------------------
    seed: int = 125
    deterministic: bool = False            #: cudnn deterministic + torch deterministic algorithms
    device: str = "auto"                   #: auto | cpu | cuda | cuda:N
    num_workers: int = 4
    out_dir: str = "runs/liteseg"
    checkpoint_every: int = 2              #: epochs between numbered checkpoints (0 = only last/best)
    val_every: int = 2                     #: epochs between validations (0 = never)
    log_every: int = 10                    #: steps between CSV rows
    resume: str | None = None              #: checkpoint to resume from (model, optimizer, step, RNG)
    progress: bool = True                  #: tqdm bar on rank 0
    plots: bool = True                     #: loss / mIoU / LR PNGs at the end (needs matplotlib)
    torch_threads: int = 0                 #: torch.set_num_threads on CPU (0 = leave as is)
    notes: str = ""                        #: free text stored in the checkpoint metadata
    extra: dict[str, Any] = field(default_factory=dict)  #: free-form, kept in the checkpoint

    def validate(self) -> TrainConfig:
        """Check value ranges and choices; raises ConfigError naming the key."""
        def choice(key: str, allowed: tuple[str, ...]) -> None:
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key}={getattr(self, key)!r}: must be one of {', '.join(allowed)}")

        choice("dataset", DATASETS)
        choice("backbone", BACKBONES)
        choice("lr_schedule", LR_SCHEDULES)
        choice("optimizer", OPTIMIZERS)
        choice("crop_mode", CROP_MODES)
        if self.encoder_weights:
            from liteseg_ros import weights

            try:
                weights.encoder_entry(self.encoder_weights, self.backbone)
            except weights.WeightsError as exc:
                raise ConfigError(str(exc)) from None
        if self.dataset != "synthetic" and not self.data_dir:
            raise ConfigError(f"data_dir: required for dataset={self.dataset!r}")
        for key in ("crop_size", "synthetic_size") + (("val_size",) if self.val_size else ()):
            h, w = getattr(self, key)
            if h < 8 or w < 8:
                raise ConfigError(f"{key}={getattr(self, key)!r}: height and width must be >= 8")
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ConfigError(f"scale_range={self.scale_range!r}: need 0 < low <= high")
        for key in ("lr", "batch_size", "epochs"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key}={getattr(self, key)!r}: must be > 0")
        for key in ("weight_decay", "grad_clip", "min_lr", "warmup_steps", "rotate_deg", "num_workers",
                    "checkpoint_every", "val_every", "label_smoothing"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}={getattr(self, key)!r}: must be >= 0")
        if self.batch_size < 2:
            raise ConfigError(f"batch_size={self.batch_size}: must be >= 2 per process (the DASPP image-pooling "
                              "branch has a BatchNorm over a 1x1 map, which needs 2 samples in training)")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ConfigError(f"max_steps={self.max_steps!r}: must be > 0 or null")
        if self.log_every <= 0:
            raise ConfigError(f"log_every={self.log_every!r}: must be > 0")
        if isinstance(self.class_weights, str):
            if self.class_weights not in CLASS_WEIGHT_METHODS:
                raise ConfigError(f"class_weights={self.class_weights!r}: must be null, a list of weights or one "
                                  f"of {', '.join(CLASS_WEIGHT_METHODS)}")
        elif self.class_weights is not None:
            if not isinstance(self.class_weights, (list, tuple)) or not self.class_weights:
                raise ConfigError(f"class_weights={self.class_weights!r}: must be null, a method name or a list")
            try:
                ws = [float(w) for w in self.class_weights]
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"class_weights={self.class_weights!r}: every weight must be a number") from exc
            if any(w < 0 for w in ws) or not any(w > 0 for w in ws):
                raise ConfigError(f"class_weights={self.class_weights!r}: weights must be >= 0, at least one > 0")
            self.class_weights = ws
        if self.class_weight_c <= 1.0:
            raise ConfigError(f"class_weight_c={self.class_weight_c!r}: must be > 1 (1 / ln(c + p) must stay finite)")
        if self.class_weight_samples <= 0:
            raise ConfigError(f"class_weight_samples={self.class_weight_samples!r}: must be > 0")
        if self.cyclic_steps <= 0:
            raise ConfigError(f"cyclic_steps={self.cyclic_steps!r}: must be > 0")
        self._validate_density()
        return self

    def _validate_density(self) -> None:
        """``synthetic_density`` names SceneConfig density knobs with finite values >= 0."""
        if not self.synthetic_density:
            return
        # late: only a run that sets densities needs the generator (numpy, OpenCV)
        from liteseg_ros.synthetic import DENSITY_KNOBS

        for key, value in self.synthetic_density.items():
            if key not in DENSITY_KNOBS:
                raise ConfigError(f"synthetic_density: unknown key {key!r}; known: {', '.join(DENSITY_KNOBS)}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"synthetic_density.{key}={value!r}: must be a finite number >= 0")
            self.synthetic_density[key] = float(value)

    def held_out_warning(self, held_out_first_seed: int = HELD_OUT_FIRST_SEED) -> str | None:
        """Why ``liteseg eval --synthetic``'s default scenes would not be held out for this run, or None."""
        used = self.synthetic_train + self.synthetic_val
        if self.dataset != "synthetic" or used <= held_out_first_seed:
            return None
        return (f"note: this run uses scene seeds 0..{used - 1}, which includes the held-out scenes of "
                f"`liteseg eval --synthetic` (from seed {held_out_first_seed}); score it with "
                f"--synthetic-seed {used} or above")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in fields(TrainConfig)}


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Convert a YAML value to the field's declared type, or raise ConfigError naming the key."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if tp is Any:
        return value
    if value is None:
        raise ConfigError(f"{key}: null is not allowed")
    if origin is tuple:
        if isinstance(value, str):  # "512x1024" or "512,1024"
            value = [v for v in value.replace("x", ",").split(",") if v.strip()]
            value = [yaml.safe_load(v) for v in value]
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}={value!r}: expected {len(args)} values, e.g. [{', '.join(['1'] * len(args))}]")
        return tuple(_coerce(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r}: expected a mapping")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r}: expected true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}={value!r}: expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r}: expected a number")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}={value!r}: expected a string")
        return str(value)
    return value


def config_from_dict(data: dict[str, Any], source: str = "config") -> TrainConfig:
    """Build a validated TrainConfig from a mapping; unknown keys raise ConfigError listing valid ones."""
    types_ = _field_types()
    unknown = sorted(set(data) - set(types_))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(types_)}")
    kwargs = {}
    for key, value in data.items():
        try:
            kwargs[key] = _coerce(key, value, types_[key])
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    try:
        return TrainConfig(**kwargs).validate()
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["lr=0.02", "crop_size=[64,128]"]`` -> ``{"lr": 0.02, "crop_size": [64, 128]}`` (values are YAML)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: cannot parse {raw!r} as YAML: {exc}") from None
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> TrainConfig:
    """Load ``path`` (YAML mapping of TrainConfig keys), then apply overrides; relative paths stay as given."""
    data: dict[str, Any] = {}
    source = "config"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: invalid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: expected a mapping of config keys at the top level")
        data.update(loaded)
        source = str(p)
    if overrides:
        extra = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
        data.update(extra)
        if path is not None:
            source = f"{source} + --set"
        else:
            source = "--set"
    return config_from_dict(data, source)


def _field_comments() -> dict[str, str]:
    """The ``#:`` comment after each field in this file's TrainConfig source."""
    import inspect
    import re

    try:
        src = inspect.getsource(TrainConfig)
    except (OSError, TypeError):  # pragma: no cover - no source (frozen app)
        return {}
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^\s+(\w+):[^\n]*?#:\s*(.*)$", src, re.M)}


def config_keys_help() -> str:
    """One line per key with its default and meaning (for ``liteseg train --help``)."""
    cfg = TrainConfig()
    notes = _field_comments()
    lines = []
    for f in fields(TrainConfig):
        value = getattr(cfg, f.name)
        value = list(value) if isinstance(value, tuple) else value
        text = f"  {f.name} = {yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
        if f.name in notes:
            text = f"{text:<42} {notes[f.name]}"
        lines.append(text)
    return "\n".join(lines)
