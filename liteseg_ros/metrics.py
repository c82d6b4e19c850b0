"""Segmentation scores: the confusion matrix, per-class / category IoU, mIoU and pixel accuracy.

Ring 0 (data): numpy and ``liteseg_ros.classes`` only (torch tensors are accepted but torch is never
imported here); never rclpy or message packages. It is the one place the scoring rule lives, so
``liteseg eval``, ``liteseg calibrate``, training's validation and the int8 quality report of
``tools.quantize`` all count pixels the same way.

The rule (Cityscapes ``evalPixelLevelSemanticLabeling``): a ground-truth pixel labelled 255, or any
id outside the class list (negative ones too), is ignored: it is neither right nor wrong. A
prediction outside the class list (255 where a confidence threshold blanked a pixel, a stray id) is
wrong: a false negative for the true class and a false positive for no class, kept in an extra
"invalid" column, so a model cannot raise its IoU by abstaining. IoU_c = TP / (TP + FP + FN); a
class with no ground truth and no prediction has IoU NaN and is left out of the mean. Category IoU
merges classes into their categories (``CITYSCAPES_CATEGORIES``) and computes IoU on the merged matrix.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def confusion_counts(pred: Any, target: Any, num_classes: int) -> Any:
    """(C, C+1) int64 counts of ``target`` rows (ground truth) against ``pred`` columns, by the rule above.

    ``pred`` and ``target`` are integer class maps of the same shape, numpy arrays or torch tensors;
    the result is of the same kind (a torch tensor on the inputs' device for tensors). Column C
    counts predictions outside 0..C-1; ground truth outside 0..C-1 is not counted at all.
    """
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(f"prediction shape {tuple(pred.shape)} != label shape {tuple(target.shape)}")
    n = int(num_classes)
    if isinstance(pred, np.ndarray) and isinstance(target, np.ndarray):
        # int32 halves the memory traffic; viewed as uint32 a negative id is huge, so one comparison
        # tells "inside 0..n-1" (as fast as the masked assignment this replaced, ~10 % faster than two)
        return _counts(pred.reshape(-1).astype(np.int32, copy=False),
                       target.reshape(-1).astype(np.int32, copy=False), n, np.where, np.bincount,
                       lambda x: x.view(np.uint32) < n)
    import torch  # only a caller that already holds tensors gets here

    pred, target = torch.as_tensor(pred), torch.as_tensor(target)
    device = target.device if target.device.type != "cpu" else pred.device
    if device.type == "cpu":  # numpy: torch's CPU bincount and masking are several times slower
        return torch.from_numpy(confusion_counts(pred.detach().numpy(), target.detach().numpy(), n))
    p = pred.to(device, torch.int64).reshape(-1)
    g = target.to(device, torch.int64).reshape(-1)
    return _counts(p, g, n, torch.where, torch.bincount, lambda x: (x >= 0) & (x < n))


def _counts(p: Any, g: Any, n: int, where: Any, bincount: Any, in_range: Any) -> Any:
    """The rule itself, once, for numpy or torch (``where``/``bincount`` of either library and an
    ``in_range(x)`` test for ids 0..n-1)."""
    idx = where(in_range(p), p, n) + g * (n + 1)      # out-of-range predictions -> column n
    idx = where(in_range(g), idx, n * (n + 1))        # ignored ground truth -> one dropped extra bin
    return bincount(idx, minlength=n * (n + 1) + 1)[: n * (n + 1)].reshape(n, n + 1)


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
