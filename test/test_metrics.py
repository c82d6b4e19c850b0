"""The one scoring rule (liteseg_ros.metrics): what an out-of-range prediction and an ignored label count as.

Every place that scores segmentations (``liteseg eval`` and training's validation through
``ConfusionMatrix``, ``liteseg calibrate``'s fit, the int8 report of ``tools.quantize``) must count
the same pixels the same way, or a number in one report cannot be compared with another. These tests
pin the rule on hand-made maps, then check each caller against it on its own real inputs.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from liteseg_ros.classes import ClassTable
from liteseg_ros.metrics import confusion_counts, iou_from_confusion, metrics_from_confusion
from liteseg_ros.train.metrics import ConfusionMatrix

#: ground truth and prediction, one pixel a column; 3 classes
TARGET = np.array([0, 0, 0, 1, 1, 2, 255, 7, -1, 2], np.int64)
PRED = np.array([0, 255, 3, 1, 0, -2, 1, 2, 0, 2], np.int64)
#: rows = ground truth 0..2, columns = prediction 0..2 + "outside the classes"
EXPECTED = np.array([[1, 0, 0, 2],    # class 0: right once, predicted 255 and 3 (both wrong, column 3)
                     [1, 1, 0, 0],    # class 1: once right, once taken for class 0
                     [0, 0, 1, 1]],   # class 2: predicted -2 (wrong), once right
                    np.int64)         # ground truth 255, 7 and -1 are ignored whatever was predicted


def test_the_rule_on_hand_made_maps():
    got = confusion_counts(PRED, TARGET, 3)
    assert got.dtype == np.int64 and np.array_equal(got, EXPECTED)
    iou = iou_from_confusion(got)
    # class 0: TP 1, FN 2 (the two out-of-range guesses), FP 1 (class 1 taken for 0) -> 1/4
    assert iou.tolist() == pytest.approx([1 / 4, 1 / 2, 1 / 2])
    m = metrics_from_confusion(got)
    assert m.pixel_acc == pytest.approx(3 / 7)  # 7 labelled pixels, 3 right; abstaining is not right


def test_uint8_maps_do_not_overflow_and_shapes_must_match():
    """Labels arrive as uint8 (the engines' and PNGs' type): 255 must stay 'ignored', not wrap."""
    t = np.array([[0, 255], [1, 2]], np.uint8)
    p = np.array([[255, 0], [1, 2]], np.uint8)
    assert np.array_equal(confusion_counts(p, t, 3), [[0, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 0]])
    with pytest.raises(ValueError, match="prediction shape"):
        confusion_counts(p, t[:1], 3)


def test_torch_tensors_count_the_same_and_stay_tensors():
    got = confusion_counts(torch.from_numpy(PRED), torch.from_numpy(TARGET), 3)
    assert isinstance(got, torch.Tensor) and torch.equal(got, torch.from_numpy(EXPECTED))
    cm = ConfusionMatrix(3)
    cm.update(PRED[:5], TARGET[:5])
    cm.update(torch.from_numpy(PRED[5:]), torch.from_numpy(TARGET[5:]))
    assert np.array_equal(cm.numpy(), EXPECTED)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_rule_on_the_gpu():
    got = confusion_counts(torch.from_numpy(PRED).cuda(), torch.from_numpy(TARGET).cuda(), 3)
    assert got.device.type == "cuda" and torch.equal(got.cpu(), torch.from_numpy(EXPECTED))


def test_calibrate_counts_by_the_rule():
    """calibrate's fit scores candidate offsets with the same matrix (an out-of-range id used to be
    folded into the next class's row)."""
    from liteseg_ros.train.calibrate import _confusion

    got = _confusion(torch.from_numpy(TARGET), torch.from_numpy(PRED), 3)
    assert np.array_equal(np.asarray(got)[:, :3], EXPECTED[:, :3]) and np.array_equal(np.asarray(got), EXPECTED)


def test_quantize_report_counts_out_of_range_predictions_as_wrong():
    """The demo weights scored against a table of their first 10 classes predict ids outside it (sky,
    car, ...); the int8 report's mIoU against exact labels must count those as wrong, as ``liteseg
    eval`` does (it used to drop them, which made a model look better the more pixels it got wrong
    that way), and ignore the ground truth outside the table."""
    from liteseg_ros.engines.pytorch import PyTorchEngine
    from liteseg_ros.model import load_checkpoint
    from liteseg_ros.pipeline import Pipeline, PipelineConfig
    from liteseg_ros.runtime import demo_weights_path
    from liteseg_ros.tools.quantize import compare_on_samples, synthetic_samples

    model = load_checkpoint(demo_weights_path())
    classes = ClassTable.generic(10)
    engine = PyTorchEngine(model, "cpu", "fp32", channels_last=False, fold_bn=False, log=lambda m: None)
    pipe = Pipeline(engine, classes, PipelineConfig(network_size=(90, 160), mask_groups={}))
    samples = synthetic_samples(2, (90, 160), first_seed=10000)
    rep = compare_on_samples(engine, pipe, samples)
    cm = ConfusionMatrix(10)
    outside = 0
    for s in samples:
        pred = engine.infer(pipe.preprocess([s.image])[0]).label[0]
        outside += int((pred >= 10).sum())
        cm.update(pred, s.label)
    assert outside > 500  # the model really does predict ids the table does not have
    assert rep["miou_fp32_gt"] == pytest.approx(cm.compute().miou)
    assert rep["label_agreement"] == 1.0
