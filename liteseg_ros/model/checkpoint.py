"""Checkpoint files: the one entry point that turns a ``.pth`` into a ready LiteSeg, and our own format.

Ring 1: imports torch, ``liteseg_ros.classes`` and ``liteseg_ros.safe_files`` only; never rclpy, message packages, the node or the
bag tools.

Accepted by :func:`load_checkpoint`:

* official LiteSeg files (tahaemara/LiteSeg): a plain ``OrderedDict`` state dict, often legacy
  (non-zip) pickles with CUDA tensors; backbone inferred from the key layout, ``num_classes`` from
  ``last_conv.6.weight``, the unused ImageNet classifiers dropped;
* the same wrapped as ``{'state_dict': ...}`` / ``{'model': ...}`` or with a ``module.`` prefix;
* a plain ``state_dict()`` of our :class:`LiteSeg`;
* our own format written by :func:`save_checkpoint`:
  ``{'format': 'liteseg_ros', 'version': 1, 'meta': {...}, 'state_dict': {...}, 'extra': {...}}``.

Files are always read with ``torch.load(weights_only=True)``. Every failure raises
:class:`CheckpointError` naming the file and what is wrong with it.

Corruption is caught at load, because a flipped byte in a weight does not stop ``torch.load``: it
gives a model that runs and segments wrongly. Three checks, each cheap next to building the model:
the CRC-32 of every member of a zip-format file (``torch.save``'s format since 1.6 records them but
``torch.load`` never checks them), non-finite values in any floating-point tensor, and, for files
written by :func:`save_checkpoint`, a SHA-256 of the state dict's contents stored in the file
(``content_sha256``; files written before it existed, and official files, have none and skip it).
"""
from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import safe_files
from ..classes import IGNORE_LABEL, IMAGENET_MEAN, IMAGENET_STD, ClassTable
from . import keymap
from .liteseg import BACKBONES, LiteSeg, backbone_spec

FORMAT_NAME = "liteseg_ros"
FORMAT_VERSION = 1
#: Wrapper keys under which training scripts commonly nest a state dict.
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "model_state", "net", "network", "weights")
_SHOW = 5  # how many offending keys an error message lists


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and what is wrong."""


@dataclass
class CheckpointMeta:
    """What a model needs besides its weights: classes, input contract and provenance.

    Stored as plain types in our checkpoints (``to_dict``/``from_dict``); attached to every model
    returned by :func:`load_checkpoint` as ``model.meta``.
    """

    backbone: str = "mobilenetv2"
    num_classes: int = 19
    classes: ClassTable = field(default_factory=ClassTable)
    #: per-channel normalisation of [0, 1] input, in R, G, B order: every model here takes RGB
    #: (the official weights, our training and every engine), so there is no colour-order field
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    #: (height, width) the model was trained or fine-tuned at, if known
    train_size: tuple[int, int] | None = None
    model_name: str = "liteseg"
    #: where the weights came from: "official", "liteseg_ros", "state_dict", "random", ...
    source: str = ""
    notes: str = ""

    def __post_init__(self) -> None:
        backbone_spec(self.backbone)
        if len(self.classes) != self.num_classes:
            raise ValueError(
                f"CheckpointMeta: num_classes={self.num_classes} but the class table has "
                f"{len(self.classes)} names"
            )
        self.mean = tuple(float(v) for v in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(v) for v in self.std)  # type: ignore[assignment]
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"CheckpointMeta: mean/std need 3 values, std > 0; got {self.mean}, {self.std}")
        if self.train_size is not None:
            self.train_size = (int(self.train_size[0]), int(self.train_size[1]))

    @classmethod
    def for_model(cls, backbone: str, num_classes: int, **kw: Any) -> CheckpointMeta:
        """Defaults for a model: Cityscapes classes for 19 outputs, generic names otherwise."""
        kw.setdefault("classes", ClassTable.generic(num_classes))
        return cls(backbone=backbone, num_classes=num_classes, **kw)

    @classmethod
    def official(cls, backbone: str, num_classes: int = 19) -> CheckpointMeta:
        """What the official Cityscapes checkpoints imply (RGB, ImageNet mean/std, 512x1024 val crops)."""
        return cls.for_model(
            backbone, num_classes, train_size=(512, 1024), model_name=f"liteseg-{backbone}-cityscapes",
            source="official",
            notes="official tahaemara/LiteSeg checkpoint; trained on multi-scale crops "
                  "(512x1024, 768x1536, 360x640, 720x1280), validated on 512x1024 centre crops",
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone, "num_classes": self.num_classes, "classes": self.classes.to_dict(),
            "mean": list(self.mean), "std": list(self.std),
            "train_size": list(self.train_size) if self.train_size is not None else None,
            "model_name": self.model_name, "source": self.source, "notes": self.notes,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CheckpointMeta:
        kw = dict(d)
        # Files written before the field was dropped say "color_order": "rgb", which is what every
        # model here takes; one that says anything else was trained on another channel order and
        # would segment wrongly without a word, so it is refused rather than fed RGB.
        order = kw.pop("color_order", "rgb")
        if order != "rgb":
            raise ValueError(f"color_order {order!r}: this package feeds every model RGB input; convert the "
                             "model to RGB input (swap the first convolution's input channels) and save it again")
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(kw) - known
        if unknown:
            raise ValueError(f"unknown metadata fields {sorted(unknown)}; known: {sorted(known)}")
        if "classes" in kw:
            kw["classes"] = ClassTable.from_dict(kw["classes"])
        if kw.get("train_size") is not None:
            kw["train_size"] = tuple(kw["train_size"])
        for k in ("mean", "std"):
            if k in kw:
                kw[k] = tuple(kw[k])
        return cls(**kw)


# ----------------------------------------------------------------------------------------- reading


def _read(path: Path, map_location: Any) -> Any:
    """torch.load with weights_only=True, turning every failure into a CheckpointError."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: the checkpoint file is empty (0 bytes)")
    _check_container(path, size)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" in text or "weights_only" in text:
            raise CheckpointError(
                f"{path}: holds pickled Python objects beyond tensors and plain containers (a whole "
                f"pickled model?), which are not loaded for safety; save model.state_dict() instead"
            ) from None
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint, or corrupt ({size} bytes; unpickling failed: "
            f"{text.splitlines()[0] if text else type(exc).__name__})"
        ) from None
    except (EOFError, RuntimeError, ValueError, OSError, KeyError, AttributeError, TypeError,
            IndexError, MemoryError, OverflowError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        hint = "truncated or corrupt" if isinstance(exc, (EOFError, RuntimeError)) else "unreadable"
        raise CheckpointError(f"{path}: {hint} checkpoint ({size} bytes): {first}") from None
    except Exception as exc:  # noqa: BLE001 - any other loader failure is still "unreadable file"
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: unreadable checkpoint ({size} bytes): {type(exc).__name__}: {first}") from None


def _check_container(path: Path, size: int) -> None:
    """A file torch.load can read at all (zip archive or legacy pickle), with intact zip members.

    Sniffing the first bytes turns "pop from empty list" (what unpickling a text file says) into a
    message a user can act on, and names ONNX files, which go in ``weights`` only with an ONNX backend.
    """
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()  # reads every member and compares its CRC-32
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({size} bytes): {exc}") from None
        if bad is not None:
            raise CheckpointError(f"{path}: corrupt checkpoint ({size} bytes): member {bad!r} fails its CRC-32 "
                                  "check (the file was damaged after it was written)")
        return
    if head[:1] == b"\x80" and 2 <= head[1] <= 5:  # a pickle (legacy torch.save, protocol 2..5)
        return
    if path.suffix.lower() == ".onnx":
        raise CheckpointError(f"{path}: is an ONNX model, not a checkpoint; an ONNX file runs with backend "
                              "onnxruntime or openvino")
    text = head.isascii() and all(32 <= c < 127 or c in b"\t\r\n" for c in head)
    raise CheckpointError(f"{path}: not a PyTorch checkpoint ({size} bytes starting with {head!r}"
                          f"{': a text file' if text else ''}); expected a file written by torch.save")


def content_hash(sd: Mapping[str, Tensor]) -> str:
    """SHA-256 over a state dict's names, dtypes, shapes and bytes, in sorted name order."""
    h = hashlib.sha256()
    for k in sorted(sd):
        v = sd[k].detach().to("cpu").contiguous()
        h.update(f"{k}\0{v.dtype}\0{tuple(v.shape)}\0".encode())
        h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _check_finite(sd: Mapping[str, Tensor], path: Path) -> None:
    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{path}: corrupt weights: {len(bad)} tensors hold NaN or infinite values: "
                              f"{_fmt_keys(bad)}")


def _is_state_dict(obj: Any) -> bool:
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()))


def _find_state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    """The state dict inside a loaded object: itself, or under a common wrapper key; `module.` stripped."""
    if _is_state_dict(obj):
        sd = dict(obj)
    elif isinstance(obj, Mapping):
        sd = None
        for key in _WRAPPER_KEYS:
            if key in obj and _is_state_dict(obj[key]):
                sd = dict(obj[key])
                break
        if sd is None:
            shown = ", ".join(repr(k) for k in list(obj)[:10])
            raise CheckpointError(
                f"{path}: no state dict found: top-level keys are {shown or '(none)'}; expected a mapping "
                f"of parameter names to tensors, possibly under one of {', '.join(_WRAPPER_KEYS)}"
            )
    else:
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _looks_like(sd: Mapping[str, Tensor]) -> str:
    """A human description of what a state dict looks like, for error messages."""
    keys = list(sd)
    bb = keymap.detect_backbone(keys, official=True) or keymap.detect_backbone(keys, official=False)
    if bb:
        w = sd.get("last_conv.6.weight")
        classes = f", {w.shape[0]} classes" if isinstance(w, Tensor) and w.dim() == 4 else ""
        return f"a LiteSeg-{bb} state dict ({len(keys)} tensors{classes})"
    if any(k.startswith("features.") for k in keys) and any(k.startswith("classifier.") for k in keys):
        return ("an ImageNet MobileNetV2 classifier (features.*/classifier.*): use it as encoder init "
                "with load_encoder_weights(model, path), not as a LiteSeg checkpoint")
    return (f"no known LiteSeg layout ({len(keys)} tensors such as {_fmt_keys(keys[:3])}; no "
            f"mobile_features./shuffle_features./resnet_features. keys)")


def _fmt_keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return shown + (f", ... (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else "")


def _check_and_load(
    module: nn.Module,
    sd: Mapping[str, Tensor],
    path: Path,
    what: str,
    looks: str,
    name: Callable[[str], str] = str,
) -> None:
    """Strictly load ``sd`` into ``module`` or raise a CheckpointError listing every kind of mismatch.

    Missing ``num_batches_tracked`` buffers are tolerated (old files may lack them). ``name`` turns
    our key names into the file's naming for the message.
    """
    expected = module.state_dict()
    missing = [name(k) for k in expected if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [name(k) for k in sd if k not in expected]
    mismatched = [
        f"{name(k)} (expected {list(expected[k].shape)}, got {list(sd[k].shape)})"
        for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        lines = [f"{path}: does not fit {what}; the file looks like {looks}."]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_fmt_keys(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_fmt_keys(unexpected)}")
        if mismatched:
            lines.append(f"  shape mismatches ({len(mismatched)}): {_fmt_keys(mismatched)}")
        raise CheckpointError("\n".join(lines))
    full = dict(sd)
    for k, v in expected.items():
        full.setdefault(k, v)  # only num_batches_tracked can be absent here
    module.load_state_dict(full, strict=True)


def _to_internal(sd: dict[str, Tensor], backbone: str) -> tuple[dict[str, Tensor], str]:
    """(our-layout state dict, "official" | "internal") for a file in either layout.

    The layout is the one whose keys fit the model better (MobileNetV2 and ShuffleNet differ; the
    DarkNet19 layouts are identical and count as official). Unused classifier keys are dropped.
    """
    want = _internal_keys(backbone)
    try:
        official, _ = keymap.official_to_internal(sd)
    except keymap.KeyMapError:
        return sd, "internal"
    if len(want & set(official)) >= len(want & set(sd)):
        return official, "official"
    return sd, "internal"


def _official_name(key: str) -> str:
    """The official name of one of our keys, for messages (the key itself if it has none)."""
    try:
        return keymap.internal_key_to_official(key)
    except keymap.KeyMapError:
        return key


_KEY_CACHE: dict[str, frozenset[str]] = {}


def _internal_keys(backbone: str) -> frozenset[str]:
    if backbone not in _KEY_CACHE:
        with torch.device("meta"):
            _KEY_CACHE[backbone] = frozenset(LiteSeg(backbone).state_dict())
    return _KEY_CACHE[backbone]


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", backbone: str | None = None) -> LiteSeg:
    """Build a LiteSeg from any supported checkpoint file, in eval mode, with ``model.meta`` set.

    ``backbone`` (optional) asserts which encoder the file must hold. Raises CheckpointError naming
    the file and the problem (missing/unexpected keys, shape mismatches, unreadable or corrupt file).
    """
    path = Path(path)
    obj = _read(path, map_location)
    meta: CheckpointMeta | None = None
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT_NAME:
        version = obj.get("version")
        if version != FORMAT_VERSION:
            raise CheckpointError(
                f"{path}: liteseg_ros checkpoint version {version!r} is not supported "
                f"(this code reads version {FORMAT_VERSION})"
            )
        try:
            meta = CheckpointMeta.from_dict(obj["meta"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: invalid metadata: {exc}") from None
    sd = _find_state_dict(obj, path)
    if meta is not None and obj.get("content_sha256") is not None:
        got = content_hash(obj["state_dict"])
        if got != obj["content_sha256"]:
            raise CheckpointError(f"{path}: corrupt checkpoint: the weights' SHA-256 {got[:16]}... does not match "
                                  f"the {str(obj['content_sha256'])[:16]}... recorded when it was saved")
    _check_finite(sd, path)
    raw = sd
    keys = list(sd)
    detected = keymap.detect_backbone(keys, official=True) or keymap.detect_backbone(keys, official=False)
    if detected is None:
        raise CheckpointError(f"{path}: not a LiteSeg checkpoint; the file looks like {_looks_like(raw)}")
    if meta is not None and meta.backbone != detected:
        raise CheckpointError(
            f"{path}: metadata says backbone {meta.backbone!r} but the weights are LiteSeg-{detected}"
        )
    if backbone is not None and backbone_spec(backbone).name != detected:
        raise CheckpointError(f"{path}: expected a LiteSeg-{backbone} checkpoint but it holds LiteSeg-{detected}")
    sd, layout = _to_internal(sd, detected)
    cls_w = sd.get("last_conv.6.weight")
    if cls_w is None or cls_w.dim() != 4:
        raise CheckpointError(
            f"{path}: no classifier weight 'last_conv.6.weight' [num_classes, 96, 1, 1]; "
            f"the file looks like {_looks_like(raw)}"
        )
    num_classes = int(cls_w.shape[0])
    if not 1 <= num_classes < IGNORE_LABEL:  # labels are uint8 with 255 meaning "ignore"
        raise CheckpointError(f"{path}: the classifier last_conv.6.weight has {num_classes} classes; a LiteSeg "
                              f"network needs 1 to {IGNORE_LABEL - 1} (labels are uint8, {IGNORE_LABEL} means ignore)")
    if meta is not None and meta.num_classes != num_classes:
        raise CheckpointError(
            f"{path}: metadata says {meta.num_classes} classes but last_conv.6.weight has {num_classes}"
        )
    model = LiteSeg(detected, num_classes)
    _check_and_load(model, sd, path, f"LiteSeg-{detected} with {num_classes} classes", _looks_like(raw),
                    _official_name if layout == "official" else str)
    if meta is None:
        meta = (CheckpointMeta.official(detected, num_classes) if layout == "official"
                else CheckpointMeta.for_model(detected, num_classes, source="state_dict"))
    model.meta = meta
    return model.eval()


def load_encoder_weights(model: LiteSeg, path: str | os.PathLike, map_location: Any = "cpu") -> LiteSeg:
    """Initialise ``model``'s encoder from an ImageNet classifier checkpoint, strictly; returns ``model``.

    MobileNetV2: a torchvision ``mobilenet_v2`` state dict (``features.*``, ``classifier.*``) or the
    ericsun99 flat layout. ShuffleNet / DarkNet19: a state dict of the encoder alone in the official
    layout (``conv1``/``stage2..4``/``fc`` or ``layers.*``). Classifier keys are dropped.
    """
    path = Path(path)
    sd = _find_state_dict(_read(path, map_location), path)
    prefix = BACKBONES[model.backbone].attr + "."
    if model.backbone == "mobilenetv2":
        sd = {k: v for k, v in sd.items() if not k.startswith("classifier.")}
        tv_keys = set(model.encoder.state_dict())
        try:
            flat = {keymap.official_key_to_internal(prefix + k)[len(prefix):]: v for k, v in sd.items()}
        except keymap.KeyMapError:
            flat = {}
        if len(tv_keys & set(flat)) > len(tv_keys & set(sd)):
            sd = flat
    else:
        sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    looks = f"an encoder state dict with keys like {_fmt_keys(list(sd)[:3])}"
    _check_and_load(model.encoder, sd, path, f"the {model.backbone} encoder of LiteSeg", looks)
    return model


# ----------------------------------------------------------------------------------------- writing


def _check_plain(obj: Any, where: str) -> None:
    """Raise TypeError if ``obj`` would not load under ``weights_only=True``."""
    if obj is None or isinstance(obj, (bool, int, float, str, bytes, Tensor, torch.dtype, torch.device)):
        return
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: key {k!r} is a {type(k).__name__}; use str or int keys")
            _check_plain(v, f"{where}[{k!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(f"{where} is a {type(obj).__name__}, which a weights_only load refuses; use plain types")


def official_state_dict(model: LiteSeg) -> dict[str, Tensor]:
    """``model``'s weights in the official key layout (without the unused classifiers)."""
    return keymap.internal_to_official(model.state_dict())


def save_checkpoint(
    model: LiteSeg,
    path: str | os.PathLike,
    meta: CheckpointMeta | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` with its metadata in the liteseg_ros format (atomically); returns the path.

    ``meta`` defaults to ``model.meta`` or to defaults for the model. ``extra`` (e.g. epoch, optimizer
    state) must hold only tensors and plain Python types, so the file loads with ``weights_only=True``.
    """
    path = Path(path)
    if meta is None:
        meta = getattr(model, "meta", None) or CheckpointMeta.for_model(model.backbone, model.num_classes)
    if meta.backbone != model.backbone or meta.num_classes != model.num_classes:
        raise ValueError(
            f"metadata ({meta.backbone}, {meta.num_classes} classes) does not describe the model "
            f"({model.backbone}, {model.num_classes} classes)"
        )
    if extra is not None:
        _check_plain(extra, "extra")
    state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
    payload = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "meta": meta.to_dict(),
        "state_dict": state,
        "content_sha256": content_hash(state),  # load_checkpoint verifies it
    }
    if extra is not None:
        payload["extra"] = extra
    path.parent.mkdir(parents=True, exist_ok=True)
    # The package's one rule for files it writes: a fresh file beside ``path`` (mode as a plain open()
    # gives, so a run folder shared with a robot's service user stays readable), renamed over it only
    # once complete, so a planted link is replaced, never written through, and a crash leaves the old file.
    with safe_files.fresh_file(path) as f:
        torch.save(payload, f)
    return path


def read_extra(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """The ``extra`` dict of a liteseg_ros checkpoint ({} if none); CheckpointError for other files."""
    path = Path(path)
    obj = _read(path, map_location)
    if not (isinstance(obj, Mapping) and obj.get("format") == FORMAT_NAME):
        raise CheckpointError(f"{path}: not a liteseg_ros checkpoint, so it has no 'extra' section")
    return dict(obj.get("extra") or {})
