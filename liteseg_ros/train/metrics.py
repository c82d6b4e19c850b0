"""Training-side metrics: a confusion matrix accumulated over batches (and over processes with DDP).

Ring 4 (faces): imports numpy, torch and ``liteseg_ros.metrics``; never rclpy, message packages or
``liteseg_ros.node`` / ``liteseg_ros.bag`` / ``liteseg_ros.image_codec``.

The counting rule (what is ignored, what counts as wrong) and every score computed from the matrix
live in ``liteseg_ros.metrics``, which the engines' int8 report uses too; this module adds only the
accumulation across batches, devices and processes. The names below are re-exported from there.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist

from liteseg_ros.classes import IGNORE_LABEL
from liteseg_ros.metrics import (  # noqa: F401 - re-exported: the scores of a ConfusionMatrix
    SegMetrics,
    confusion_counts,
    iou_from_confusion,
    merge_confusion,
    metrics_from_confusion,
)


class ConfusionMatrix:
    """Accumulates a (C, C+1) matrix: rows = ground truth class, columns = prediction (+1 'invalid').

    ``ignore_index`` is kept for callers that read it; every id outside 0..C-1 (255 included) is
    ignored in the ground truth, as ``liteseg_ros.metrics.confusion_counts`` defines.
    """

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
        counts = confusion_counts(pred, target, self.num_classes)
        self.mat += counts.to(self.mat.device)

    def all_reduce(self) -> None:
        """Sum the matrix over all processes of the default group (no-op without torch.distributed)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(self.mat, op=dist.ReduceOp.SUM)

    def numpy(self) -> np.ndarray:
        return self.mat.cpu().numpy()

    def compute(self, class_names: Sequence[str] | None = None,
                categories: Mapping[str, Sequence[int]] | None = None) -> SegMetrics:
        return metrics_from_confusion(self.numpy(), class_names, categories)
