"""Segmentation metrics: a bincount confusion matrix, per-class / category IoU, mIoU and pixel accuracy.

Ring 4 (faces): imports numpy, torch and ``liteseg_ros.classes`` only; never rclpy, message packages or
``liteseg_ros.node`` / ``liteseg_ros.bag`` / ``liteseg_ros.image_codec``.

Protocol (Cityscapes ``evalPixelLevelSemanticLabeling``): ground-truth pixels labelled 255 (or any id
outside the class list) are ignored; predictions outside the class list count as wrong (a false negative
for the true class, a false positive for no class). IoU_c = TP / (TP + FP + FN); a class with no
ground truth and no prediction has IoU NaN and is left out of the mean. Category IoU merges classes
into their categories (``CITYSCAPES_CATEGORIES``) and computes IoU on the merged matrix.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from liteseg_ros.classes import IGNORE_LABEL


class ConfusionMatrix:
    """Accumulates a (C, C+1) matrix: rows = ground truth class, columns = prediction (+1 'invalid')."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_LABEL,
                 device: torch.device | str = "cpu") -> None:
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.mat = torch.zeros(self.num_classes, self.num_classes + 1, dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.mat.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        """Add a batch: ``pred`` and ``target`` are integer class maps of the same shape."""
        if isinstance(pred, np.ndarray):
            pred = torch.from_numpy(pred)
        if isinstance(target, np.ndarray):
            target = torch.from_numpy(target)
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != label shape {tuple(target.shape)}")
        n = self.num_classes
        if self.mat.device.type == "cpu":
            # numpy: torch's boolean indexing on CPU is ~5x slower than this whole path
            g = target.detach().cpu().numpy().reshape(-1).astype(np.int32, copy=False)
            p = pred.detach().cpu().numpy().reshape(-1).astype(np.int32, copy=False)
            idx = np.where((p >= 0) & (p < n), p, n) + g * (n + 1)
            idx[(g < 0) | (g >= n)] = n * (n + 1)  # ignored ground truth -> a dropped extra bin
            counts = np.bincount(idx, minlength=n * (n + 1) + 1)[: n * (n + 1)]
            self.mat += torch.from_numpy(counts.astype(np.int64)).view(n, n + 1)
            return
        g = target.to(self.mat.device, torch.int64).reshape(-1)
        p = pred.to(self.mat.device, torch.int64).reshape(-1)
        idx = torch.where((p >= 0) & (p < n), p, n) + g * (n + 1)
        idx = torch.where((g >= 0) & (g < n), idx, n * (n + 1))
        self.mat += torch.bincount(idx, minlength=n * (n + 1) + 1)[: n * (n + 1)].view(n, n + 1)

    def all_reduce(self) -> None:
        """Sum the matrix over all processes of the default group (no-op without torch.distributed)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(self.mat, op=dist.ReduceOp.SUM)

    def numpy(self) -> np.ndarray:
        return self.mat.cpu().numpy()

    def compute(self, class_names: Sequence[str] | None = None,
                categories: Mapping[str, Sequence[int]] | None = None) -> SegMetrics:
        return metrics_from_confusion(self.numpy(), class_names, categories)


def iou_from_confusion(mat: np.ndarray) -> np.ndarray:
    """Per-class IoU from a (C, C) or (C, C+1) matrix; NaN where the class has no GT and no prediction."""
    mat = np.asarray(mat, dtype=np.float64)
    c = mat.shape[0]
    tp = np.diag(mat[:, :c])
    fn = mat.sum(1) - tp
    fp = mat[:, :c].sum(0) - tp
    denom = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / np.where(denom > 0, denom, 1), np.nan)


def merge_confusion(mat: np.ndarray, groups: Sequence[Sequence[int]]) -> np.ndarray:
    """Merge a (C, C+1) matrix into (K, K+1) by groups of class ids; ungrouped classes drop out of the rows
    and count as 'invalid' columns (a prediction outside every group is wrong for every group)."""
    mat = np.asarray(mat)
    c = mat.shape[0]
    k = len(groups)
    assign = np.full(c, k, np.int64)
    for gi, ids in enumerate(groups):
        assign[list(ids)] = gi
    col_assign = np.append(assign, k)  # the invalid column stays invalid
    out = np.zeros((k + 1, k + 1), np.int64)
    np.add.at(out, (assign[:, None].repeat(mat.shape[1], 1), col_assign[None, :].repeat(c, 0)), mat)
    return out[:k]


@dataclass
class SegMetrics:
    """Numbers from one confusion matrix (all IoUs as fractions 0..1)."""

    confusion: np.ndarray                 #: (C, C+1) int64, last column = predictions outside the classes
    class_names: tuple[str, ...]
    iou: np.ndarray                       #: (C,), NaN for classes absent from GT and prediction
    miou: float                           #: nanmean of iou
    pixel_acc: float                      #: correct / labelled pixels
    mean_acc: float                       #: mean over classes with GT of per-class recall
    category_names: tuple[str, ...] = ()
    category_iou: np.ndarray | None = None
    category_miou: float = float("nan")

    def to_dict(self) -> dict:
        def f(v: float) -> float | None:
            return None if np.isnan(v) else float(v)

        d = {
            "miou": f(self.miou), "pixel_acc": f(self.pixel_acc), "mean_acc": f(self.mean_acc),
            "iou": {n: f(v) for n, v in zip(self.class_names, self.iou, strict=True)},
        }
        if self.category_iou is not None:
            d["category_miou"] = f(self.category_miou)
            d["category_iou"] = {n: f(v) for n, v in zip(self.category_names, self.category_iou, strict=True)}
        return d

    def table(self) -> str:
        """A plain-text table: one row per class, then categories, then the means."""
        w = max([len(n) for n in self.class_names + self.category_names] + [10])
        lines = [f"{'class':<{w}}  {'IoU %':>7}  {'GT px':>12}"]
        gt = self.confusion.sum(1)
        for n, v, g in zip(self.class_names, self.iou, gt, strict=True):
            lines.append(f"{n:<{w}}  {_pct(v):>7}  {int(g):>12d}")
        if self.category_iou is not None:
            lines.append("")
            lines.append(f"{'category':<{w}}  {'IoU %':>7}")
            for n, v in zip(self.category_names, self.category_iou, strict=True):
                lines.append(f"{n:<{w}}  {_pct(v):>7}")
        lines.append("")
        lines.append(f"{'mIoU (classes)':<{w}}  {_pct(self.miou):>7}")
        if self.category_iou is not None:
            lines.append(f"{'mIoU (categories)':<{w}}  {_pct(self.category_miou):>7}")
        lines.append(f"{'pixel accuracy':<{w}}  {_pct(self.pixel_acc):>7}")
        lines.append(f"{'mean accuracy':<{w}}  {_pct(self.mean_acc):>7}")
        return "\n".join(lines)


def _pct(v: float) -> str:
    return "n/a" if np.isnan(v) else f"{100.0 * v:.2f}"


def _nanmean(v: np.ndarray) -> float:
    v = np.asarray(v, np.float64)
    return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")


def metrics_from_confusion(mat: np.ndarray, class_names: Sequence[str] | None = None,
                           categories: Mapping[str, Sequence[int]] | None = None) -> SegMetrics:
    """All metrics from a (C, C+1) (or (C, C)) confusion matrix."""
    mat = np.asarray(mat, np.int64)
    c = mat.shape[0]
    if mat.shape[1] == c:
        mat = np.concatenate([mat, np.zeros((c, 1), np.int64)], 1)
    names = tuple(class_names) if class_names is not None else tuple(f"class_{i}" for i in range(c))
    if len(names) != c:
        raise ValueError(f"{len(names)} class names for a {c}-class confusion matrix")
    iou = iou_from_confusion(mat)
    tp = np.diag(mat[:, :c]).astype(np.float64)
    gt = mat.sum(1).astype(np.float64)
    total = gt.sum()
    pixel_acc = float(tp.sum() / total) if total > 0 else float("nan")
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(gt > 0, tp / np.where(gt > 0, gt, 1), np.nan)
    out = SegMetrics(mat, names, iou, _nanmean(iou), pixel_acc, _nanmean(recall))
    if categories:
        cat_names = tuple(categories)
        for cn, ids in categories.items():
            bad = [i for i in ids if not 0 <= i < c]
            if bad:
                raise ValueError(f"category {cn!r} names class ids {bad} outside 0..{c - 1}")
        cat_mat = merge_confusion(mat, [tuple(categories[n]) for n in cat_names])
        out.category_names = cat_names
        out.category_iou = iou_from_confusion(cat_mat)
        out.category_miou = _nanmean(out.category_iou)
    return out
