"""Evaluation: run a LiteSeg model (or score prediction PNGs) on a labelled dataset and report IoUs.

Ring 4 (faces): imports torch, numpy, OpenCV, matplotlib (optional) and ``liteseg_ros.model`` /
``liteseg_ros.classes`` / ``liteseg_ros.train``; never rclpy, message packages or ``liteseg_ros.node`` /
``liteseg_ros.bag`` / ``liteseg_ros.image_codec``.

Two protocols (``PROTOCOLS``), because a score is only useful if it scores what is shipped:

* ``node`` (the default): every image goes through the same ``liteseg_ros.pipeline.Pipeline`` the
  node runs, with the node's default settings: resized to ``size`` with INTER_AREA when shrinking
  (INTER_LINEAR otherwise), argmax at the network size, the label upsampled nearest-neighbour back
  to the input. So the mIoU is the mIoU of the labels the node publishes. ``fps`` times the whole
  pipeline (pre-processing, forward, post-processing) at batch 1.
* ``paper``: the usual research protocol (and the one training's validation uses): the image resized
  bilinearly to ``size``, the logits resized bilinearly back to the label's full resolution, argmax
  there. Smoother boundaries, so usually a little higher than ``node`` when ``size`` is smaller than
  the images. ``fps`` times the forward pass only (synchronised on CUDA), at batch 1.

With ``size`` None (full resolution) the network runs at each image's own size and the two protocols
differ only in floating-point detail. Both accumulate one confusion matrix over all labelled pixels
(``liteseg_ros.metrics``).
"""
from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from liteseg_ros import safe_files
from liteseg_ros.classes import (
    CITYSCAPES_CATEGORIES,
    CITYSCAPES_CLASSES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    label_id_to_train_id_lut,
)
from liteseg_ros.train.datasets import DatasetError, EvalTransform, SegDataset, open_dataset, read_label
from liteseg_ros.train.metrics import ConfusionMatrix, SegMetrics

PRED_FORMATS = ("trainid", "labelid")
#: how an image becomes a prediction; see the module docstring
PROTOCOLS = ("node", "paper")


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The engines' device rule (``auto``, ``cpu``, ``cuda``, ``cuda:N``), plus training's one addition:
    a bare ``cuda`` means this process's GPU, ``cuda:LOCAL_RANK``, under torchrun."""
    from liteseg_ros.engines.base import EngineError
    from liteseg_ros.engines.selection import parse_device
    from liteseg_ros.engines.selection import resolve_device as engine_device

    try:
        name, _ = engine_device(name if name == "auto" else parse_device(name), "fp32")
    except EngineError as exc:
        raise RuntimeError(str(exc)) from None
    if name == "cuda":
        name = f"cuda:{local_rank}"
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} requested but CUDA is not available")
    return dev


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_normalisation(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the model's checkpoint metadata asks for; ImageNet's when it has none."""
    meta = getattr(model, "meta", None)
    return tuple(getattr(meta, "mean", IMAGENET_MEAN)), tuple(getattr(meta, "std", IMAGENET_STD))


@torch.no_grad()
def logits_at(model: nn.Module, image: torch.Tensor, out_size: tuple[int, int], amp: bool = False) -> torch.Tensor:
    """Logits (N, C, H_out, W_out) for a normalised batch, resized bilinearly to the label size if needed."""
    with torch.autocast(device_type=image.device.type, dtype=torch.float16, enabled=amp):
        logits = model(image)
    if tuple(logits.shape[-2:]) != tuple(out_size):
        logits = F.interpolate(logits.float(), size=out_size, mode="bilinear", align_corners=False)
    return logits


@torch.no_grad()
def predict(model: nn.Module, image: torch.Tensor, out_size: tuple[int, int], amp: bool = False) -> torch.Tensor:
    """Class map (N, H_out, W_out) for a normalised batch: logits resized bilinearly, then argmax."""
    return logits_at(model, image, out_size, amp).argmax(1)


@torch.no_grad()
def validate(model: nn.Module, dataset: Dataset, num_classes: int, device: torch.device,
             class_names: Sequence[str] | None = None, categories: Mapping[str, Sequence[int]] | None = None,
             amp: bool = False, num_workers: int = 0, timing: dict[str, float] | None = None) -> SegMetrics:
    """Metrics of ``model`` on ``dataset`` (items: normalised image, full-size label), all-reduced over DDP.

    ``timing``, if given, receives ``forward_s`` (summed forward time) and ``images``.
    """
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(num_classes, device=device)
    loader = DataLoader(dataset, batch_size=1, shuffle=False, num_workers=num_workers)
    fwd, n = 0.0, 0
    for image, label in loader:
        image = image.to(device, non_blocking=True)
        label = label.to(device, non_blocking=True)
        _sync(device)
        t0 = time.perf_counter()
        pred = predict(model, image, tuple(label.shape[-2:]), amp)
        _sync(device)
        fwd += time.perf_counter() - t0
        n += 1
        cm.update(pred, label)
    cm.all_reduce()
    if timing is not None:
        timing["forward_s"] = fwd
        timing["images"] = n
    if was_training:
        model.train()
    return cm.compute(class_names, categories)


def node_pipeline(model: nn.Module, size: tuple[int, int], device: torch.device | str = "cpu",
                  precision: str = "fp32"):
    """The node's per-frame path around ``model``: a ``Pipeline`` with the node's default settings
    (stretch to ``size``, labels at the input resolution, no confidence threshold) on the PyTorch
    engine, with the checkpoint's classes and normalisation."""
    from liteseg_ros.classes import ClassTable
    from liteseg_ros.engines.pytorch import PyTorchEngine
    from liteseg_ros.pipeline import Pipeline, PipelineConfig

    meta = getattr(model, "meta", None)
    num_classes = _num_outputs(model) or 19
    classes = getattr(meta, "classes", None) or ClassTable.generic(num_classes)
    mean, std = model_normalisation(model)
    engine = PyTorchEngine(model, str(device), precision, log=lambda m: None)
    return Pipeline(engine, classes, PipelineConfig(network_size=tuple(size), mask_groups={}, mean=mean, std=std),
                    backend="numpy")


@torch.no_grad()
def validate_node(model: nn.Module, dataset: SegDataset, size: tuple[int, int] | None, device: torch.device,
                  amp: bool = False, max_images: int | None = None,
                  timing: dict[str, float] | None = None) -> SegMetrics:
    """Metrics of the labels the node would publish for ``dataset``'s images (the ``node`` protocol).

    ``size`` None: the network runs at each image's own size. ``timing``, if given, receives
    ``forward_s`` (summed time of whole pipeline runs) and ``images``.
    """
    from liteseg_ros.pipeline import Wants

    n = len(dataset) if max_images is None else min(int(max_images), len(dataset))
    num_classes = len(dataset.classes)
    cm = ConfusionMatrix(num_classes)
    pipe = None
    total = 0.0
    for i in range(n):
        rgb, label = dataset.load(i)
        net = tuple(size) if size else tuple(rgb.shape[:2])
        if pipe is None:
            pipe = node_pipeline(model, net, device, "fp16" if amp else "fp32")
        elif pipe.config.network_size != net:  # full resolution: images of another size
            pipe.update(network_size=net)
        t0 = time.perf_counter()
        seg = pipe.run([rgb], color_order="rgb", wants=Wants.only_label())[0]
        total += time.perf_counter() - t0
        cm.update(seg.label, label)
    if timing is not None:
        timing["forward_s"] = total
        timing["images"] = n
    return cm.compute(dataset.classes.names, _categories_for(dataset.classes.names))


@dataclass
class EvalReport:
    """What ``liteseg eval`` prints and writes: metrics plus where and how they were measured."""

    metrics: SegMetrics
    images: int
    size: tuple[int, int] | None          #: network input size; None = full resolution
    fps: float                            #: forward passes per second (nan when scoring PNGs)
    source: str                           #: weights path or prediction folder
    data_dir: str
    split: str | None
    files: dict[str, str] = field(default_factory=dict)
    protocol: str = ""                    #: 'node' | 'paper' for a model; '' for scored files and the oracle

    def to_dict(self) -> dict[str, Any]:
        d = self.metrics.to_dict()
        d.update({"images": self.images, "size": list(self.size) if self.size else "full",
                  "fps": None if np.isnan(self.fps) else self.fps, "source": self.source,
                  "data_dir": self.data_dir, "split": self.split, "protocol": self.protocol or None})
        return d

    def format(self) -> str:
        size = f"{self.size[0]}x{self.size[1]}" if self.size else "full resolution"
        head = f"{self.source} on {self.data_dir} [{self.split or '-'}]: {self.images} images at {size}"
        if self.protocol:
            head += f", {self.protocol} protocol"
        if not np.isnan(self.fps):
            timed = "pre/post-processing included" if self.protocol == "node" else "forward only"
            head += f", {self.fps:.1f} fps ({timed}, batch 1)"
        return head + "\n\n" + self.metrics.table()


def save_confusion_png(metrics: SegMetrics, path: str | Path) -> Path | None:
    """Row-normalised confusion matrix (recall per ground-truth class) as a PNG; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    mat = metrics.confusion[:, : len(metrics.class_names)].astype(np.float64)
    rows = mat.sum(1, keepdims=True)
    norm = np.divide(mat, rows, out=np.zeros_like(mat), where=rows > 0)
    c = len(metrics.class_names)
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * c + 2), max(4, 0.45 * c + 1.5)), dpi=100)
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(c), metrics.class_names, rotation=90, fontsize=7)
    ax.set_yticks(range(c), metrics.class_names, fontsize=7)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title(f"confusion (row-normalised), mIoU {100 * metrics.miou:.1f}%")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = Path(path)
    with safe_files.fresh_file(path) as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return path


def _categories_for(names: Sequence[str]) -> dict[str, tuple[int, ...]] | None:
    return dict(CITYSCAPES_CATEGORIES) if tuple(names) == CITYSCAPES_CLASSES else None


def _write_outputs(report: EvalReport, out_dir: str | Path | None) -> None:
    if out_dir is None:
        return
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    safe_files.write_text(out / "eval.json", json.dumps(report.to_dict(), indent=2))
    safe_files.write_text(out / "eval.txt", report.format() + "\n")
    report.files["json"] = str(out / "eval.json")
    report.files["txt"] = str(out / "eval.txt")
    png = save_confusion_png(report.metrics, out / "confusion.png")
    if png is not None:
        report.files["confusion_png"] = str(png)


def evaluate(model_or_weights: nn.Module | str | Path, data_dir: str | Path | None,
             size: tuple[int, int] | None = None, split: str | None = "val", dataset: str = "auto",
             device: str | torch.device = "auto", amp: bool = False, num_workers: int = 0,
             out_dir: str | Path | None = None, max_images: int | None = None,
             dataset_obj: SegDataset | None = None, protocol: str = "node") -> EvalReport:
    """Evaluate a model (an ``nn.Module`` or a checkpoint path) on one split of a labelled dataset.

    ``size``: network input (H, W), or None for full resolution. ``dataset``: cityscapes | folder |
    synthetic | auto. ``dataset_obj`` replaces ``data_dir``/``split``/``dataset`` with a ready dataset
    (its transform is replaced). ``protocol``: ``node`` (the node's pipeline) or ``paper`` (bilinear
    logits at full resolution), see the module docstring. Writes eval.json / eval.txt / confusion.png
    into ``out_dir`` if given.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    if isinstance(model_or_weights, nn.Module):
        model, source = model_or_weights, type(model_or_weights).__name__
    else:
        from liteseg_ros.model import load_checkpoint

        source = str(model_or_weights)
        if not Path(source).is_file():
            raise FileNotFoundError(f"weights not found: {source}")
        model = load_checkpoint(source, map_location="cpu")
    transform = EvalTransform(size, *model_normalisation(model))
    if dataset_obj is None:
        ds = open_dataset(dataset, data_dir, split, transform)
    else:
        ds = dataset_obj
        ds.transform = transform
    num_classes = len(ds.classes)
    out_ch = _num_outputs(model)
    if out_ch is not None and out_ch != num_classes:
        raise ValueError(f"model predicts {out_ch} classes but the dataset has {num_classes} "
                         f"({', '.join(ds.classes.names[:5])}...)")
    if max_images is not None:
        ds_eval: Dataset = torch.utils.data.Subset(ds, range(min(max_images, len(ds))))
    else:
        ds_eval = ds
    model.to(dev)
    timing: dict[str, float] = {}
    if protocol == "node":
        metrics = validate_node(model, ds, size, dev, amp and dev.type == "cuda", max_images, timing)
    else:
        metrics = validate(model, ds_eval, num_classes, dev, ds.classes.names, _categories_for(ds.classes.names),
                           amp=amp and dev.type == "cuda", num_workers=num_workers, timing=timing)
    n = int(timing.get("images", 0))
    fps = n / timing["forward_s"] if n and timing.get("forward_s", 0) > 0 else float("nan")
    report = EvalReport(metrics, n, tuple(size) if size else None, fps, source,
                        str(data_dir) if data_dir is not None else "-", split, protocol=protocol)
    _write_outputs(report, out_dir)
    return report


@torch.no_grad()
def oracle_prediction(label: torch.Tensor | np.ndarray, num_classes: int, grid: tuple[int, int]) -> torch.Tensor:
    """What ideal logits on a ``grid`` (H_g, W_g) give back for ``label`` (H, W) at its full resolution.

    Each grid cell holds every class's area share of the label under it (the most a coarse map can
    know), resized bilinearly to (H, W) the way ``predict`` resizes logits, then argmax. Thin things that
    never fill half a cell are lost: that is the resolution ceiling of a decoder with that output grid.
    Ignored pixels count for no class.
    """
    lab = torch.as_tensor(label).long()
    if lab.dim() != 2:
        raise ValueError(f"label must be (H, W), got shape {tuple(lab.shape)}")
    valid = (lab >= 0) & (lab < num_classes)
    onehot = F.one_hot(torch.where(valid, lab, 0), num_classes).to(torch.float32)
    onehot *= valid[..., None]
    share = onehot.permute(2, 0, 1)[None]
    h, w = lab.shape
    if tuple(grid) != (h, w):
        share = F.interpolate(share, size=tuple(grid), mode="area")
        share = F.interpolate(share, size=(h, w), mode="bilinear", align_corners=False)
    return share.argmax(1)[0]


def evaluate_oracle(stride: int, dataset: SegDataset, size: tuple[int, int] | None = None,
                    source_data: str = "-", split: str | None = None, out_dir: str | Path | None = None,
                    max_images: int | None = None) -> EvalReport:
    """Score the stride-``stride`` oracle on ``dataset``: the best a network can do at its output resolution.

    LiteSeg's logits live on a grid of 1/4 (MobileNetV2, DarkNet19) or 1/8 (ShuffleNet) of the network
    input, so poles, lights and distant people thinner than a few cells cannot be recovered however well
    it is trained. This report (no weights, same table as ``evaluate``) says where that ceiling lies for
    a dataset and network input ``size`` (None = the label's own size), so a measured mIoU can be read
    against it. See ``oracle_prediction`` for what "best" means here.
    """
    if not (isinstance(stride, int) and not isinstance(stride, bool) and 1 <= stride <= 64):
        raise ValueError(f"oracle stride must be an int within 1..64, got {stride!r}")
    num_classes = len(dataset.classes)
    n = len(dataset) if max_images is None else min(int(max_images), len(dataset))
    cm = ConfusionMatrix(num_classes)
    for i in range(n):
        label = dataset.load_label(i)
        net_h, net_w = size if size else label.shape
        grid = (-(-int(net_h) // stride), -(-int(net_w) // stride))  # ceil, as LiteSeg.forward sizes its map
        cm.update(oracle_prediction(label, num_classes, grid), label)
    metrics = cm.compute(dataset.classes.names, _categories_for(dataset.classes.names))
    report = EvalReport(metrics, n, tuple(size) if size else None, float("nan"),
                        f"stride-{stride} oracle (ideal logits at 1/{stride} of the network input)", source_data, split)
    _write_outputs(report, out_dir)
    return report


def _num_outputs(model: nn.Module) -> int | None:
    n = getattr(model, "num_classes", None)
    return int(n) if isinstance(n, int) else None


def _index_predictions(pred_dir: Path) -> dict[str, Path]:
    files = {}
    for p in sorted(pred_dir.rglob("*.png")):
        files.setdefault(p.stem, p)
    return files


def _find_prediction(files: dict[str, Path], name: str) -> Path | None:
    if name in files:
        return files[name]
    for key in (f"{name}_leftImg8bit", f"{name}_pred", f"{name}_prediction"):
        if key in files:
            return files[key]
    matches = [p for s, p in files.items() if s.startswith(name + "_")]
    return matches[0] if len(matches) == 1 else None


def score_predictions(pred_dir: str | Path, data_dir: str | Path, split: str | None = "val",
                      pred_format: str = "trainid", dataset: str = "auto",
                      out_dir: str | Path | None = None) -> EvalReport:
    """Score a folder of prediction PNGs (one per dataset image) against the dataset's labels.

    A prediction is found by its stem: ``<name>.png``, ``<name>_leftImg8bit.png`` or one unique
    ``<name>_*.png`` anywhere below ``pred_dir`` (Cityscapes names are ``city_seq_frame``).
    ``pred_format``: ``trainid`` (class ids) or ``labelid`` (Cityscapes labelIds, mapped by the
    official table; void ids count as wrong predictions).
    """
    if pred_format not in PRED_FORMATS:
        raise ValueError(f"pred_format={pred_format!r}: must be one of {', '.join(PRED_FORMATS)}")
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DatasetError(f"prediction folder not found: {pred_dir}")
    ds = open_dataset(dataset, data_dir, split)
    files = _index_predictions(pred_dir)
    lut = label_id_to_train_id_lut()
    num_classes = len(ds.classes)
    cm = ConfusionMatrix(num_classes)
    for i in range(len(ds)):
        name = ds.name(i)
        path = _find_prediction(files, name)
        if path is None:
            raise DatasetError(f"no prediction for {name} in {pred_dir} (expected {name}.png)")
        pred = read_label(path)
        _, label = ds.load(i)
        if pred.shape != label.shape:
            raise DatasetError(f"prediction {path} is {pred.shape[1]}x{pred.shape[0]} but the label of {name} is "
                               f"{label.shape[1]}x{label.shape[0]}")
        if pred_format == "labelid":
            pred = lut[pred]
        cm.update(pred, label)
    metrics = cm.compute(ds.classes.names, _categories_for(ds.classes.names))
    report = EvalReport(metrics, len(ds), None, float("nan"), str(pred_dir), str(data_dir), split)
    _write_outputs(report, out_dir)
    return report


