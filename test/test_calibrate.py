"""Tests of ``liteseg calibrate`` (liteseg_ros.train.calibrate): the per-class logit offsets and their folding.

The fit runs on hand-built logits whose bias is known, the folding on a real LiteSeg, and the command end to
end on the bundled demo weights and generated scenes (its "after" mIoU must be what ``liteseg eval`` measures).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from liteseg_ros.train.calibrate import (
    CalibrationSet,
    apply_class_bias,
    classifier,
    collect_logits,
    fit_class_bias,
)
from liteseg_ros.train.metrics import ConfusionMatrix


def skewed_set(shift: float, n: int = 6000, seed: int = 0) -> CalibrationSet:
    """Three classes with clean evidence (4 on the true class, unit noise), class 2 pushed up by ``shift``.

    Class 3 exists in the model but has only 20 labelled pixels (below the fit's min_pixels).
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    labels[:20] = 3
    logits = 4.0 * torch.nn.functional.one_hot(labels, 4).T.float() + torch.randn(4, n, generator=g)
    logits[2] += shift
    return CalibrationSet(logits.half(), labels, images=1)


def hand_miou(data: CalibrationSet, bias: list[float]) -> float:
    cm = ConfusionMatrix(data.num_classes)
    cm.update((data.logits.float() + torch.tensor(bias)[:, None]).argmax(0), data.labels)
    return cm.compute().miou


def test_fit_undoes_a_known_logit_shift_and_reports_what_argmax_scores():
    data = skewed_set(shift=4.0)
    fit = fit_class_bias(data)
    assert fit.miou_before < 0.6 < 0.95 < fit.miou_after   # class 2 swallowed most pixels; now it does not
    relative = fit.bias[2] - (fit.bias[0] + fit.bias[1]) / 2
    assert -5.5 < relative < -2.5                           # the shift, undone (up to the grid and the noise)
    assert fit.fitted == [True, True, True, False] and fit.bias[3] == 0.0  # 20 pixels: left alone...
    assert sum(fit.bias[:3]) == pytest.approx(0.0, abs=1e-6)  # ...at the centre of the fitted offsets
    assert fit.iou_after[3] >= fit.iou_before[3]          # not sacrificed to the others' mIoU
    assert fit.miou_after == pytest.approx(hand_miou(data, fit.bias), abs=1e-12)
    assert fit.miou_before == pytest.approx(hand_miou(data, [0.0] * 4), abs=1e-12)
    assert fit.history == sorted(fit.history)
    assert fit.iou_after[2] > fit.iou_before[2] + 0.3


def test_fit_never_scores_below_zero_offsets_and_rejects_bad_settings():
    data = skewed_set(shift=0.0, seed=3)                   # already calibrated: little or nothing to gain
    fit = fit_class_bias(data, sweeps=2)
    fitted_mean = [np.mean(v[:3]) for v in (fit.iou_before, fit.iou_after)]
    assert fitted_mean[1] >= fitted_mean[0] > 0.95 and fit.history[-1] == pytest.approx(fitted_mean[1], abs=2e-3)
    assert all(abs(b) < 1.0 for b in fit.bias)
    for bad in ({"sweeps": 0}, {"steps": 1}, {"span": 0.0}):
        with pytest.raises(ValueError, match="need sweeps"):
            fit_class_bias(data, **bad)


def test_folded_offsets_shift_every_output_logit_exactly():
    """Bilinear upsampling keeps constants, so the classifier bias is an offset of the final logits too."""
    from liteseg_ros.model import LiteSeg
    from liteseg_ros.model.checkpoint import CheckpointMeta

    torch.manual_seed(0)
    model = LiteSeg("mobilenetv2").eval()
    model.meta = CheckpointMeta.for_model("mobilenetv2", 19)
    x = torch.randn(1, 3, 50, 70)                          # odd size: the decoder's ceil/resize path
    with torch.no_grad():
        before = model(x)
        offsets = [0.1 * i - 0.9 for i in range(19)]
        apply_class_bias(model, offsets, note="calibrated on a test")
        after = model(x)
    torch.testing.assert_close(after - before, torch.tensor(offsets)[None, :, None, None].expand_as(before),
                               atol=2e-5, rtol=0)
    assert model.meta.notes.endswith("calibrated on a test")
    assert classifier(model) is model.last_conv[-1]
    with pytest.raises(ValueError, match="2 offsets for 19 classes"):
        apply_class_bias(model, [0.0, 1.0])
    with pytest.raises(ValueError, match="no classifier conv"):
        classifier(torch.nn.Conv2d(3, 19, 1))


def test_collect_logits_samples_labelled_pixels_only():
    from liteseg_ros.model import load_checkpoint
    from liteseg_ros.runtime import demo_weights_path
    from liteseg_ros.train.datasets import SyntheticDataset

    model = load_checkpoint(demo_weights_path(), map_location="cpu")
    ds = SyntheticDataset(2, first_seed=9000, size=(48, 80))
    full = collect_logits(model, ds, device="cpu")
    assert full.images == 2 and full.logits.shape == (19, 2 * 48 * 80) and full.logits.dtype == torch.float16
    some = collect_logits(model, ds, device="cpu", pixels_per_image=100)
    assert some.logits.shape == (19, 200)
    assert set(some.labels.tolist()) <= set(full.labels.tolist())
    with pytest.raises(ValueError, match="pixels_per_image"):
        collect_logits(model, ds, pixels_per_image=0)


def test_calibrate_cli_writes_weights_that_eval_scores_as_printed(tmp_path, capsys):
    """``liteseg calibrate`` end to end on the demo weights; ``liteseg eval`` on the same scenes agrees."""
    from liteseg_ros.cli import main
    from liteseg_ros.model import load_checkpoint
    from liteseg_ros.runtime import demo_weights_path

    out = tmp_path / "cal.pt"
    args = ["--synthetic", "3", "--synthetic-seed", "9000", "--synthetic-size", "60x96"]
    assert main(["calibrate", "--weights", "demo", *args, "--sweeps", "2", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "calibration set: 3 generated scenes 60x96 (seeds 9000..9002)" in text and f"wrote {out}" in text
    after = float(text.split("mIoU on the calibration set: ")[1].split("->")[1].split("%")[0])
    base = load_checkpoint(demo_weights_path(), map_location="cpu")
    cal = load_checkpoint(out, map_location="cpu")
    assert cal.meta.notes.startswith(base.meta.notes) and "Class offsets fitted by liteseg calibrate" in cal.meta.notes
    assert cal.meta.classes.names == base.meta.classes.names
    delta = (cal.last_conv[-1].bias - base.last_conv[-1].bias).detach()
    assert delta.abs().max() > 0                         # the demo weights over-predict: something moved
    a, b = cal.state_dict(), base.state_dict()
    assert [k for k in a if not torch.equal(a[k], b[k])] == ["last_conv.6.bias"]  # and nothing else did
    assert main(["eval", "--weights", str(out), *args, "--device", "cpu", "--out", str(tmp_path / "e")]) == 0
    capsys.readouterr()
    measured = json.loads((tmp_path / "e" / "eval.json").read_text())["miou"]
    assert 100 * measured == pytest.approx(after, abs=0.05)  # fp16 logits in the fit: a few near-ties differ

    assert main(["calibrate", "--weights", str(tmp_path / "none.pt"), *args, "-o", str(out)]) == 2
    assert "weights not found" in capsys.readouterr().err
    assert main(["calibrate", "--weights", "demo", "--synthetic", "1", "--synthetic-seed", "10000",
                 "--synthetic-size", "24x40", "--sweeps", "1", "-o", str(tmp_path / "h.pt")]) == 0
    assert "include held-out scenes" in capsys.readouterr().err  # allowed, but said
    assert main(["calibrate", "--weights", "demo", "--synthetic", "0", "-o", str(out)]) == 2
    assert "--synthetic needs N >= 1" in capsys.readouterr().err
    np.testing.assert_array_equal(load_checkpoint(out).last_conv[-1].bias.detach().numpy(),
                                  cal.last_conv[-1].bias.detach().numpy())  # failed runs wrote nothing


def test_calibrate_cli_on_a_folder_dataset_at_a_network_size(tmp_path, capsys):
    """``--data`` (images/ + labels/ + classes.yaml, split val) with ``--size``: the path users take."""
    import cv2
    import yaml

    from liteseg_ros.classes import CITYSCAPES_CLASSES
    from liteseg_ros.cli import main
    from liteseg_ros.synthetic import SceneConfig, generate_scene

    root = tmp_path / "ds"
    for sub in ("images", "labels"):
        (root / "val" / sub).mkdir(parents=True)
    for seed in (9100, 9101):
        scene = generate_scene(seed, SceneConfig(height=72, width=128))
        cv2.imwrite(str(root / "val" / "images" / f"s{seed}.png"), scene.image)
        cv2.imwrite(str(root / "val" / "labels" / f"s{seed}.png"), scene.label)
    (root / "classes.yaml").write_text(yaml.safe_dump(list(CITYSCAPES_CLASSES)))
    out = tmp_path / "cal.pt"
    assert main(["calibrate", "--weights", "demo", "--data", str(root), "--size", "36x64", "--sweeps", "1",
                 "--min-pixels", "50", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"calibration set: {root} [val], 2 images at 36x64, {2 * 72 * 128} pixels" in text and out.is_file()
    assert main(["calibrate", "--weights", "demo", "--data", str(root), "--split", "test", "-o", str(out)]) == 2
    assert "split 'test' not found" in capsys.readouterr().err


def test_node_protocol_logits_decide_the_labels_the_node_publishes():
    """By default the fit sees, for every label pixel, the logits whose argmax is the label the node
    publishes there (network-size logits, nearest upsampling), so its offsets are tuned for the
    node's output; the paper protocol's bilinear logits decide a visibly different labelling when the
    network is smaller than the images."""
    from liteseg_ros.model import load_checkpoint
    from liteseg_ros.pipeline import Wants
    from liteseg_ros.runtime import demo_weights_path
    from liteseg_ros.train.datasets import SyntheticDataset
    from liteseg_ros.train.evaluate import node_pipeline

    model = load_checkpoint(demo_weights_path(), map_location="cpu")
    ds = SyntheticDataset(2, first_seed=9000, size=(72, 128))
    node = collect_logits(model, ds, size=(36, 64), device="cpu")
    paper = collect_logits(model, ds, size=(36, 64), device="cpu", protocol="paper")
    pipe = node_pipeline(model, (36, 64))
    published = torch.cat([torch.from_numpy(pipe.run([ds.load(i)[0]], "rgb", Wants.only_label())[0].label)
                           .reshape(-1).long() for i in range(2)])
    assert node.labels.numel() == published.numel() == 2 * 72 * 128  # every pixel is labelled here
    agree_node = (node.logits.float().argmax(0) == published).float().mean().item()
    agree_paper = (paper.logits.float().argmax(0) == published).float().mean().item()
    assert agree_node >= 0.999  # fp16 storage and BN folding may flip a near-tie or two
    assert agree_paper < agree_node - 0.005
    with pytest.raises(ValueError, match="protocol"):
        collect_logits(model, ds, protocol="exact")
