"""Tests of liteseg_ros.train: datasets, metrics, config, the training loop (CPU, DDP), resume and eval.

Everything runs on tiny generated Cityscapes-layout datasets (64x128 PNGs written with OpenCV) in tmp_path.
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from liteseg_ros.classes import (
    CITYSCAPES_CATEGORIES,
    CITYSCAPES_CLASSES,
    IGNORE_LABEL,
    label_id_to_train_id_lut,
)
from liteseg_ros.train.cli import add_eval_parser, add_train_parser
from liteseg_ros.train.config import ConfigError, TrainConfig, load_config
from liteseg_ros.train.datasets import (
    CityscapesDataset,
    DatasetError,
    EvalTransform,
    FolderDataset,
    TrainTransform,
    load_class_table,
)
from liteseg_ros.train.metrics import ConfusionMatrix, metrics_from_confusion

REPO = Path(__file__).resolve().parents[1]
H, W = 64, 128
# labelId -> a distinct mean colour (RGB); 1 = ego vehicle (void), 9 = parking (void, trainId 255)
COLOURS = {23: (70, 130, 200), 11: (90, 90, 90), 7: (128, 64, 128), 26: (10, 10, 160), 21: (60, 160, 40),
           1: (20, 20, 20), 9: (250, 170, 160)}


def draw_label_ids(seed: int, h: int = H, w: int = W) -> np.ndarray:
    """A street-like labelId map: sky, building, vegetation, road, a car, a parking patch, the ego vehicle."""
    rng = np.random.default_rng(seed)
    lab = np.full((h, w), 11, np.uint8)                       # building
    lab[: int(h * rng.uniform(0.2, 0.35))] = 23               # sky
    veg_x = int(w * rng.uniform(0.55, 0.8))
    lab[int(h * 0.2): int(h * 0.55), veg_x:] = 21             # vegetation
    lab[int(h * 0.55):] = 7                                   # road
    cx, cy = int(w * rng.uniform(0.15, 0.55)), int(h * rng.uniform(0.5, 0.6))
    lab[cy: cy + h // 4, cx: cx + w // 4] = 26                # car
    lab[int(h * 0.6): int(h * 0.75), : w // 10] = 9           # parking (void)
    lab[h - h // 10:] = 1                                     # ego vehicle (void)
    return lab


def render(label_ids: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1000)
    rgb = np.zeros(label_ids.shape + (3,), np.float32)
    for lid, col in COLOURS.items():
        rgb[label_ids == lid] = col
    rgb += rng.normal(0, 6, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def make_cityscapes(root: Path, splits: dict[str, int], h: int = H, w: int = W) -> Path:
    """Write leftImg8bit/ + gtFine/ for ``splits`` ({split: count}); returns root."""
    seed = 0
    for split, n in splits.items():
        for i in range(n):
            city = "aachen" if i % 2 == 0 else "bremen"
            stem = f"{city}_{i:06d}_000019"
            img_dir = root / "leftImg8bit" / split / city
            gt_dir = root / "gtFine" / split / city
            img_dir.mkdir(parents=True, exist_ok=True)
            gt_dir.mkdir(parents=True, exist_ok=True)
            lab = draw_label_ids(seed, h, w)
            cv2.imwrite(str(img_dir / f"{stem}_leftImg8bit.png"), cv2.cvtColor(render(lab, seed), cv2.COLOR_RGB2BGR))
            cv2.imwrite(str(gt_dir / f"{stem}_gtFine_labelIds.png"), lab)
            seed += 1
    return root


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def tiny_cfg(root: Path, out: Path, **kw) -> TrainConfig:
    base = dict(dataset="cityscapes", data_dir=str(root), crop_size=[H, W], scale_range=[1.0, 1.0], hflip=False,
                batch_size=2, epochs=1, lr=0.05, num_workers=0, device="cpu", out_dir=str(out), progress=False,
                plots=False, val_every=0, checkpoint_every=1, log_every=1, seed=3, amp=False)
    base.update(kw)
    return load_config(None, base)


# ----------------------------------------------------------------------------------------------- datasets
def test_cityscapes_label_conversion(tmp_path):
    root = make_cityscapes(tmp_path / "cs", {"train": 2})
    ds = CityscapesDataset(root, "train")
    assert len(ds) == 2 and ds.name(0) == "aachen_000000_000019"
    rgb, lab = ds.load(0)
    raw = draw_label_ids(0)
    assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
    # RGB order: the sky colour's blue channel is the largest
    assert rgb[0, 0, 2] > rgb[0, 0, 0]
    lut = label_id_to_train_id_lut()
    np.testing.assert_array_equal(lab, lut[raw])
    assert (lab[raw == 7] == 0).all() and (lab[raw == 26] == 13).all() and (lab[raw == 23] == 10).all()
    assert (lab[raw == 1] == IGNORE_LABEL).all() and (lab[raw == 9] == IGNORE_LABEL).all()
    image, target = ds[0]
    assert image.shape == (3, H, W) and image.dtype == torch.float32 and target.dtype == torch.int64
    assert abs(float(image.mean())) < 3  # normalised


def test_dataset_errors_name_the_path(tmp_path):
    root = make_cityscapes(tmp_path / "cs", {"train": 3})
    with pytest.raises(DatasetError, match=r"split 'val' not found: .*leftImg8bit/val"):
        CityscapesDataset(root, "val")
    gt = root / "gtFine" / "train"
    # image without a label
    missing = gt / "bremen" / "bremen_000001_000019_gtFine_labelIds.png"
    missing.rename(tmp_path / "moved.png")
    with pytest.raises(DatasetError, match=r"bremen_000001_000019_leftImg8bit.png has no label.*gtFine_labelIds"):
        CityscapesDataset(root, "train")
    (tmp_path / "moved.png").rename(missing)
    # label of another size
    bad = gt / "aachen" / "aachen_000000_000019_gtFine_labelIds.png"
    cv2.imwrite(str(bad), np.zeros((H // 2, W), np.uint8))
    ds = CityscapesDataset(root, "train")
    with pytest.raises(DatasetError, match=r"aachen_000000_000019_gtFine_labelIds.png is 128x32 but image"):
        ds.load(0)
    # labelIds outside the official table (0..33)
    lab = draw_label_ids(0)
    lab[0, 0] = 200
    cv2.imwrite(str(bad), lab)
    with pytest.raises(DatasetError, match=r"aachen_000000_000019_gtFine_labelIds.png holds values \[200\]"):
        ds.load(0)
    # a colour PNG instead of ids
    cv2.imwrite(str(bad), np.zeros((H, W, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"has 3 channels"):
        ds.load(0)


def make_folder(root: Path, names: list[str], n: int = 2, split: str | None = None) -> Path:
    base = root / split if split else root
    (base / "images").mkdir(parents=True)
    (base / "labels").mkdir(parents=True)
    for i in range(n):
        lab = np.zeros((32, 48), np.uint8)
        lab[16:] = 1
        lab[:4] = IGNORE_LABEL
        cv2.imwrite(str(base / "images" / f"img{i}.jpg"), np.full((32, 48, 3), 100, np.uint8))
        cv2.imwrite(str(base / "labels" / f"img{i}.png"), lab)
    (root / "classes.yaml").write_text("names: [" + ", ".join(names) + "]\n")
    return root


def test_folder_dataset_and_errors(tmp_path):
    root = make_folder(tmp_path / "f", ["road", "grass"], split="train")
    ds = FolderDataset(root, "train")
    assert ds.classes.names == ("road", "grass") and len(ds) == 2
    _, lab = ds.load(1)
    assert set(np.unique(lab)) == {0, 1, 255}
    with pytest.raises(DatasetError, match=r"split 'val' not found: looked for .*val/images"):
        FolderDataset(root, "val")
    # value outside the class list
    (root / "classes.yaml").write_text("- road\n")
    with pytest.raises(DatasetError, match=r"img0.png holds values \[1\] outside the 1 classes"):
        FolderDataset(root, "train").load(0)
    # coloured class list
    (root / "classes.yaml").write_text("- {name: road, color: [1, 2, 3]}\n- grass\n")
    table = load_class_table(root / "classes.yaml")
    assert table.names == ("road", "grass") and table.colors[0] == (1, 2, 3)
    (root / "train" / "labels" / "img1.png").unlink()
    with pytest.raises(DatasetError, match=r"img1.jpg has no label: expected .*labels/img1.png"):
        FolderDataset(root, "train")


def test_train_transform_pad_and_determinism():
    rgb = np.full((40, 60, 3), 200, np.uint8)
    lab = np.ones((40, 60), np.uint8)
    tf = TrainTransform((64, 96), scale_range=(0.5, 0.5), hflip=True, rotate_deg=0.0)
    img, t = tf(rgb, lab, np.random.default_rng(0))
    assert img.shape == (3, 64, 96) and t.shape == (64, 96)
    assert int((t == 1).sum()) == 20 * 30 and int((t == IGNORE_LABEL).sum()) == 64 * 96 - 600
    # padded pixels are the mean colour, i.e. 0 after normalisation
    assert torch.allclose(img[:, t == IGNORE_LABEL], torch.zeros(1), atol=0.02)
    tf2 = TrainTransform((32, 32), scale_range=(0.6, 1.4), hflip=True, rotate_deg=5)
    lab2 = np.random.default_rng(1).integers(0, 19, (40, 60)).astype(np.uint8)
    a = tf2(rgb, lab2, np.random.default_rng([1, 2, 3]))
    b = tf2(rgb, lab2, np.random.default_rng([1, 2, 3]))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # resize mode (official): never any padding
    tf3 = TrainTransform((64, 96), scale_range=(0.5, 0.5), crop_mode="resize")
    assert int((tf3(rgb, lab, np.random.default_rng(0))[1] == IGNORE_LABEL).sum()) == 0
    img, t = EvalTransform((20, 30))(rgb, lab)
    assert img.shape == (3, 20, 30) and t.shape == (40, 60)


# ----------------------------------------------------------------------------------------------- metrics
def test_metrics_against_hand_computation():
    gt = np.array([[0, 0, 1, 1], [2, 2, 255, 0]])
    pr = np.array([[0, 1, 1, 1], [2, 0, 0, 7]])  # 7 = a prediction outside the classes
    cm = ConfusionMatrix(4)
    cm.update(torch.from_numpy(pr), torch.from_numpy(gt))
    m = cm.compute(("a", "b", "c", "d"), {"ab": (0, 1), "cd": (2, 3)})
    # class 0: TP 1 (0,0); FN: (0,1)->1, (1,3)->invalid = 2; FP: (1,1) gt 2 -> 0 = 1  => 1/4
    # class 1: TP 2; FN 0; FP 1 (gt 0 -> 1) => 2/3 ; class 2: TP 1, FN 1, FP 0 => 1/2 ; class 3: NaN
    np.testing.assert_allclose(m.iou[:3], [1 / 4, 2 / 3, 1 / 2])
    assert np.isnan(m.iou[3])
    assert m.miou == pytest.approx((1 / 4 + 2 / 3 + 1 / 2) / 3)
    assert m.pixel_acc == pytest.approx(4 / 7)
    # categories: ab = {0,1}: gt ab pixels 5, pred ab among them 4 (the invalid one is wrong), FP 1 -> 4/6
    assert m.category_iou[0] == pytest.approx(4 / 6)
    assert m.category_iou[1] == pytest.approx(1 / 2)  # cd: TP 1, FN 1
    # numpy input, accumulation and the (C, C) form give the same
    cm.update(pr, gt)
    np.testing.assert_allclose(cm.compute().iou[:3], m.iou[:3])
    m2 = metrics_from_confusion(cm.numpy()[:, :4] * 0 + np.eye(4, dtype=np.int64))
    assert m2.miou == 1.0
    assert "mIoU (classes)" in m.table()


# ----------------------------------------------------------------------------------------------- config / cli
def test_config_overrides_and_errors(tmp_path):
    cfg = load_config(REPO / "config" / "train_cityscapes.yaml",
                      ["data_dir=/data/cs", "crop_size=[64,128]", "lr=0.02", "val_size=360x640", "nesterov=false"])
    assert cfg.crop_size == (64, 128) and cfg.lr == 0.02 and cfg.val_size == (360, 640) and not cfg.nesterov
    assert cfg.momentum == 0.9 and cfg.weight_decay == 4e-5 and cfg.lr_schedule == "poly"
    assert TrainConfig().nesterov is True
    syn = load_config(REPO / "config" / "train_synthetic.yaml")
    assert syn.dataset == "synthetic" and syn.backbone == "mobilenetv2"
    with pytest.raises(ConfigError, match="unknown key.*lrr"):
        load_config(None, ["lrr=1"])
    with pytest.raises(ConfigError, match="batch_size='x'.*integer"):
        load_config(None, ["batch_size=x", "dataset=synthetic"])
    with pytest.raises(ConfigError, match="data_dir: required"):
        load_config(None, ["dataset=cityscapes"])
    with pytest.raises(ConfigError, match="backbone='resnet'"):
        load_config(None, ["dataset=synthetic", "backbone=resnet"])
    parser = argparse.ArgumentParser(prog="liteseg")
    sub = parser.add_subparsers()
    add_train_parser(sub)
    add_eval_parser(sub)
    args = parser.parse_args(["train", "--config", "c.yaml", "--set", "lr=0.1", "epochs=3", "--set", "seed=1"])
    assert callable(args.func) and [x for g in args.overrides for x in g] == ["lr=0.1", "epochs=3", "seed=1"]
    args = parser.parse_args(["eval", "--weights", "w.pt", "--data", "d", "--size", "360x640"])
    assert args.size == (360, 640)


def test_lr_schedule():
    from liteseg_ros.train.trainer import lr_factor

    cfg = TrainConfig(dataset="synthetic", lr=0.01, poly_power=0.9)
    assert lr_factor(0, 100, cfg) == 1.0
    assert lr_factor(50, 100, cfg) == pytest.approx(0.5 ** 0.9)
    assert lr_factor(100, 100, cfg) == 0.0
    cyc = TrainConfig(dataset="synthetic", lr_schedule="cyclic", cyclic_steps=10, min_lr=0.001, warmup_steps=0)
    assert lr_factor(0, 100, cyc) == pytest.approx(0.1) and lr_factor(10, 100, cyc) == pytest.approx(1.0)
    assert lr_factor(20, 100, cyc) == pytest.approx(0.1)
    warm = TrainConfig(dataset="synthetic", warmup_steps=4)
    assert lr_factor(1, 100, warm) == pytest.approx(0.5 * 0.99 ** 0.9)


# ----------------------------------------------------------------------------------------------- training
def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_overfit_a_few_images(tmp_path):
    from liteseg_ros.model import load_checkpoint
    from liteseg_ros.train.evaluate import evaluate
    from liteseg_ros.train.trainer import train

    root = make_cityscapes(tmp_path / "cs", {"train": 2})
    cfg = tiny_cfg(root, tmp_path / "run", epochs=70, batch_size=2, lr=0.1, val_split="train", val_every=35,
                   checkpoint_every=0, log_every=10, warmup_steps=5, plots=True)
    result = train(cfg)
    assert result.steps == 70
    assert result.best_miou >= 0.9, f"overfit mIoU {result.best_miou:.3f}"
    rows = read_csv(tmp_path / "run" / "metrics.csv")
    losses = [float(r["loss"]) for r in rows if r["loss"]]
    assert losses[-1] < 0.25 * losses[0]
    assert [r["miou"] for r in rows if r["miou"]][-1]
    for name in ("loss.png", "lr.png", "miou.png", "summary.json", "config.yaml"):
        assert (tmp_path / "run" / name).is_file(), name
    model = load_checkpoint(result.best_checkpoint)
    assert model.meta.classes.names == CITYSCAPES_CLASSES and model.meta.train_size == (H, W)
    report = evaluate(model, root, None, "train", out_dir=tmp_path / "eval")
    assert report.metrics.miou == pytest.approx(result.best_miou, abs=1e-6)
    assert (tmp_path / "eval" / "confusion.png").is_file() and (tmp_path / "eval" / "eval.json").is_file()
    print(f"\noverfit: {result.steps} steps, {result.it_per_s:.2f} it/s (batch 2, {H}x{W}, 1 thread), "
          f"mIoU {100 * result.best_miou:.1f}%")


def test_resume_continues_schedule_and_data(tmp_path):
    from liteseg_ros.train.trainer import train

    root = make_cityscapes(tmp_path / "cs", {"train": 4})
    small = dict(crop_size=[32, 64], scale_range=[0.5, 1.0], hflip=True, epochs=4, batch_size=2)
    full = train(tiny_cfg(root, tmp_path / "full", **small))
    assert full.steps == 8
    resumed = train(tiny_cfg(root, tmp_path / "resumed", resume=str(tmp_path / "full/checkpoints/epoch_002.pt"),
                             **small))
    assert resumed.steps == 8
    a = {int(r["step"]): r for r in read_csv(tmp_path / "full" / "metrics.csv")}
    b = {int(r["step"]): r for r in read_csv(tmp_path / "resumed" / "metrics.csv")}
    assert sorted(a) == sorted(b) == list(range(1, 9))
    for k in range(1, 9):
        assert float(b[k]["lr"]) == float(a[k]["lr"]), k
        assert float(b[k]["loss"]) == pytest.approx(float(a[k]["loss"]), rel=1e-4, abs=1e-5), k
    assert float(a[5]["lr"]) < float(a[4]["lr"])  # the schedule really moves
    # a weights-only file cannot be resumed from
    from liteseg_ros.model import LiteSeg, save_checkpoint

    save_checkpoint(LiteSeg("mobilenetv2"), tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="holds no training state"):
        train(tiny_cfg(root, tmp_path / "x", resume=str(tmp_path / "plain.pt"), **small))


def test_eval_matches_hand_confusion(tmp_path):
    from liteseg_ros.model import LiteSeg
    from liteseg_ros.train.evaluate import evaluate, score_predictions

    root = make_cityscapes(tmp_path / "cs", {"val": 3})
    rng = np.random.default_rng(5)
    pred_dir = tmp_path / "preds"
    pred_dir.mkdir()
    expected = np.zeros((19, 20), np.int64)
    ds = CityscapesDataset(root, "val")
    for i in range(len(ds)):
        gt = ds.load(i)[1]
        pred = gt.copy()
        noise = rng.random(gt.shape) < 0.3
        pred[noise] = rng.integers(0, 19, int(noise.sum()))
        pred[gt == IGNORE_LABEL] = 0
        cv2.imwrite(str(pred_dir / f"{ds.name(i)}_leftImg8bit.png"), pred)
        for g, p in zip(gt.ravel(), pred.ravel(), strict=True):
            if g != IGNORE_LABEL:
                expected[g, p] += 1
    report = score_predictions(pred_dir, root, "val")
    np.testing.assert_array_equal(report.metrics.confusion, expected)
    tp = np.diag(expected[:, :19]).astype(float)
    denom = expected.sum(1) + expected[:, :19].sum(0) - tp
    iou = np.where(denom > 0, tp / np.maximum(denom, 1), np.nan)
    assert report.metrics.miou == pytest.approx(np.nanmean(iou))
    assert report.metrics.pixel_acc == pytest.approx(tp.sum() / expected.sum())
    assert set(report.metrics.category_names) == set(CITYSCAPES_CATEGORIES)
    # labelId predictions give the same result
    from liteseg_ros.classes import train_id_to_label_id_lut

    inv = train_id_to_label_id_lut()
    lid_dir = tmp_path / "lid"
    lid_dir.mkdir()
    for p in pred_dir.iterdir():
        cv2.imwrite(str(lid_dir / p.name), inv[cv2.imread(str(p), cv2.IMREAD_UNCHANGED)])
    assert score_predictions(lid_dir, root, "val", "labelid").metrics.miou == pytest.approx(report.metrics.miou)
    (pred_dir / f"{ds.name(2)}_leftImg8bit.png").unlink()
    with pytest.raises(DatasetError, match=f"no prediction for {ds.name(2)}"):
        score_predictions(pred_dir, root, "val")
    # a model: evaluate() equals a hand-run forward + confusion at a reduced input size
    torch.manual_seed(0)
    model = LiteSeg("mobilenetv2").eval()
    rep = evaluate(model, root, (32, 64), "val", protocol="paper")  # the hand-run below is that protocol
    hand = np.zeros((19, 20), np.int64)
    ds.transform = EvalTransform((32, 64))
    with torch.no_grad():
        for i in range(len(ds)):
            img, gt = ds[i]
            logits = torch.nn.functional.interpolate(model(img[None]), size=(H, W), mode="bilinear")
            pred = logits.argmax(1)[0].numpy()
            g = gt.numpy()
            keep = g != IGNORE_LABEL
            np.add.at(hand, (g[keep], pred[keep]), 1)
    np.testing.assert_array_equal(rep.metrics.confusion, hand)
    assert rep.fps > 0 and rep.images == 3


def test_eval_cli(tmp_path, capsys):
    from liteseg_ros.model import LiteSeg, save_checkpoint
    from liteseg_ros.train.cli import main

    root = make_cityscapes(tmp_path / "cs", {"val": 1})
    save_checkpoint(LiteSeg("mobilenetv2"), tmp_path / "w.pt")
    rc = main(["eval", "--weights", str(tmp_path / "w.pt"), "--data", str(root), "--size", "32x64",
               "--out", str(tmp_path / "o"), "--num-workers", "0"])
    out = capsys.readouterr().out
    assert rc == 0 and "mIoU (classes)" in out and (tmp_path / "o" / "eval.json").is_file()
    assert main(["eval", "--weights", str(tmp_path / "w.pt"), "--data", str(root), "--split", "test"]) == 2
    assert "split 'test' not found" in capsys.readouterr().err


def test_eval_cli_synthetic(tmp_path, capsys):
    """``liteseg eval --synthetic``: the held-out generated scenes give the same confusion as a hand-run forward."""
    import json

    from liteseg_ros.model import load_checkpoint
    from liteseg_ros.runtime import demo_weights_path
    from liteseg_ros.synthetic import SceneConfig, generate_scene
    from liteseg_ros.train.cli import main

    rc = main(["eval", "--weights", "demo", "--synthetic", "2", "--synthetic-seed", "10003",
               "--synthetic-size", "60x96", "--device", "cpu", "--out", str(tmp_path / "o")])
    out = capsys.readouterr().out
    assert rc == 0 and "generated scenes 60x96 (seeds 10003..10004)" in out and "mIoU (classes)" in out
    report = json.loads((tmp_path / "o" / "eval.json").read_text())
    model = load_checkpoint(demo_weights_path(), map_location="cpu").eval()
    hand = np.zeros((19, 20), np.int64)
    mean, std = np.array(model.meta.mean), np.array(model.meta.std)
    for seed in (10003, 10004):
        scene = generate_scene(seed, SceneConfig(height=60, width=96))
        x = (scene.image[:, :, ::-1] / 255.0 - mean) / std
        with torch.no_grad():
            pred = model(torch.from_numpy(x.transpose(2, 0, 1)).float()[None]).argmax(1)[0].numpy()
        keep = scene.label != IGNORE_LABEL
        np.add.at(hand, (scene.label[keep], pred[keep]), 1)
    tp = np.diag(hand[:, :19]).astype(float)
    denom = hand.sum(1) + hand[:, :19].sum(0) - tp
    iou = np.where(denom > 0, tp / np.maximum(denom, 1), np.nan)
    got = np.array([np.nan if v is None else v for v in report["iou"].values()])
    np.testing.assert_allclose(got, iou, rtol=1e-9)  # nan where a class is absent, in both
    assert report["miou"] == pytest.approx(np.nanmean(iou)) and report["miou"] > 0.2  # trained weights, not noise
    assert main(["eval", "--synthetic", "0"]) == 2
    assert "--synthetic needs N >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --data and --synthetic are mutually exclusive
        main(["eval", "--synthetic", "2", "--data", str(tmp_path)])


def test_eval_scores_the_labels_the_node_publishes(tmp_path, capsys):
    """By default ``liteseg eval`` scores exactly what the node publishes: the labels of the node's own
    pipeline (``runtime.build_pipeline`` with the node's default parameters) for the same images, on
    scenes larger than the network so that the resize and the upsampling matter. ``--protocol paper``
    keeps the research protocol (bilinear resize and logits), which scores these scenes differently."""
    import json

    from liteseg_ros import params
    from liteseg_ros.runtime import build_pipeline
    from liteseg_ros.synthetic import SceneConfig, generate_scene
    from liteseg_ros.train.cli import main

    args = ["eval", "--weights", "demo", "--synthetic", "2", "--synthetic-seed", "10003", "--synthetic-size", "96x160",
            "--size", "48x80", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "node")]) == 0
    assert main([*args, "--protocol", "paper", "--out", str(tmp_path / "paper")]) == 0
    out = capsys.readouterr().out
    assert "node protocol" in out and "paper protocol" in out
    node = json.loads((tmp_path / "node" / "eval.json").read_text())
    paper = json.loads((tmp_path / "paper" / "eval.json").read_text())
    assert node["protocol"] == "node" and paper["protocol"] == "paper"

    values = params.pipeline_settings(dict(weights="demo", backend="pytorch", device="cpu", precision="fp32",
                                           network_height=48, network_width=80,
                                           engine_cache_dir=str(tmp_path / "cache")))
    pipe, _ = build_pipeline(replace(values, mask_groups={}), log=lambda m: None)
    cm = ConfusionMatrix(19)
    for seed in (10003, 10004):
        scene = generate_scene(seed, SceneConfig(height=96, width=160))
        seg = pipe.run([scene.image], color_order="bgr")[0]  # what the node does with a bgr8 camera frame
        cm.update(seg.label, scene.label)
    published = cm.compute()
    assert node["miou"] == pytest.approx(published.miou, abs=1e-9)
    assert node["pixel_acc"] == pytest.approx(published.pixel_acc, abs=1e-9)
    assert paper["miou"] != pytest.approx(node["miou"], abs=1e-9)  # the two protocols really differ here


def test_oracle_prediction_keeps_what_fills_a_cell_and_loses_what_does_not():
    """The stride oracle by hand: a 1-pixel pole vanishes at stride 4, a grid-aligned 8-pixel block survives."""
    from liteseg_ros.train.evaluate import oracle_prediction

    lab = np.zeros((16, 16), np.uint8)
    lab[:, 6] = 5                                   # a pole one pixel wide: a quarter of its cells
    lab[:, 8:16] = 2                                # a block two cells wide, on the cell boundaries
    lab[0:4, 0:4] = IGNORE_LABEL                    # an unlabelled corner votes for nothing
    pred = oracle_prediction(lab, 19, (4, 4)).numpy()
    assert pred.shape == (16, 16)
    assert not (pred == 5).any()                    # the pole never wins a pixel
    np.testing.assert_array_equal(pred[:, 8:16], 2)  # the block comes back exactly
    np.testing.assert_array_equal(pred[4:, 0:6], 0)
    np.testing.assert_array_equal(oracle_prediction(lab, 19, (16, 16)).numpy()[4:], lab[4:])  # stride 1: itself
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        oracle_prediction(lab[None], 19, (4, 4))


def test_evaluate_oracle_is_the_resolution_ceiling_of_generated_scenes(tmp_path, capsys):
    """Stride 1 scores 100 %; the ceiling falls as the stride grows; halving --size equals doubling the stride."""
    import json

    from liteseg_ros.train.cli import main
    from liteseg_ros.train.datasets import SyntheticDataset
    from liteseg_ros.train.evaluate import evaluate_oracle

    ds = SyntheticDataset(3, first_seed=10000, size=(60, 96))
    reports = {s: evaluate_oracle(s, ds) for s in (1, 2, 4, 8)}
    assert reports[1].metrics.miou == 1.0 and reports[1].metrics.pixel_acc == 1.0
    mious = [reports[s].metrics.miou for s in (1, 2, 4, 8)]
    assert mious == sorted(mious, reverse=True) and mious[-1] < 0.9  # thin classes go first
    pole = CITYSCAPES_CLASSES.index("pole")
    assert reports[8].metrics.iou[pole] < reports[2].metrics.iou[pole]
    half = evaluate_oracle(2, ds, size=(30, 48))    # grid 15x24 either way
    np.testing.assert_array_equal(half.metrics.confusion, reports[4].metrics.confusion)
    with pytest.raises(ValueError, match="within 1..64"):
        evaluate_oracle(0, ds)

    rc = main(["eval", "--oracle-stride", "4", "--synthetic", "3", "--synthetic-size", "60x96",
               "--out", str(tmp_path / "o")])
    out = capsys.readouterr().out
    assert rc == 0 and "stride-4 oracle" in out and "generated scenes 60x96 (seeds 10000..10002)" in out
    saved = json.loads((tmp_path / "o" / "eval.json").read_text())
    assert saved["miou"] == pytest.approx(reports[4].metrics.miou) and saved["fps"] is None
    root = make_cityscapes(tmp_path / "cs", {"val": 2})
    assert main(["eval", "--oracle-stride", "1", "--data", str(root)]) == 0
    assert "mIoU (classes)   100.00" in capsys.readouterr().out
    assert main(["eval", "--oracle-stride", "4", "--synthetic", "1", "--weights", "demo"]) == 2
    assert "--oracle-stride scores no model" in capsys.readouterr().err


def test_ddp_two_processes_cpu(tmp_path):
    root = make_cityscapes(tmp_path / "cs", {"train": 8, "val": 2})
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "liteseg_ros.train", "--set", f"data_dir={root}", f"out_dir={out}", "crop_size=[32,64]",
           "batch_size=2", "epochs=2", "num_workers=0", "device=cpu", "progress=false", "plots=false",
           "val_every=2", "checkpoint_every=1", "sync_bn=true", "amp=false", "log_every=1"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "checkpoints" / "last.pt").is_file() and (out / "checkpoints" / "epoch_002.pt").is_file()
    rows = read_csv(out / "metrics.csv")
    assert [int(r["step"]) for r in rows if r["loss"]] == [1, 2, 3, 4]  # 8 images / (2 ranks x batch 2) x 2
    assert any(r["miou"] for r in rows)
    assert "SyncBatchNorm needs CUDA" in proc.stdout
    import json

    assert json.loads((out / "summary.json").read_text())["world_size"] == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_amp_training_on_gpu(tmp_path):
    from liteseg_ros.train.trainer import train

    root = make_cityscapes(tmp_path / "cs", {"train": 2})
    result = train(tiny_cfg(root, tmp_path / "gpu", device="cuda", amp=True, epochs=3))
    assert result.steps == 3 and result.last_checkpoint.is_file()


def test_synthetic_dataset_and_short_run(tmp_path):
    from liteseg_ros.synthetic import SceneConfig, generate_scene
    from liteseg_ros.train.datasets import SyntheticDataset
    from liteseg_ros.train.trainer import train

    ds = SyntheticDataset(3, first_seed=10, size=(48, 96), weather="clear")
    rgb, lab = ds.load(1)
    ref = generate_scene(11, SceneConfig(height=48, width=96, weather="clear"))
    np.testing.assert_array_equal(lab, ref.label)
    np.testing.assert_array_equal(rgb, ref.image[:, :, ::-1])  # BGR -> RGB
    assert ds.classes.names == CITYSCAPES_CLASSES
    import torchvision

    enc = tmp_path / "mobilenet_v2_imagenet.pth"
    torch.save(torchvision.models.mobilenet_v2(weights=None).state_dict(), enc)
    cfg = load_config(REPO / "config" / "train_synthetic.yaml",
                      {"encoder_weights": str(enc), "synthetic_size": [48, 96], "synthetic_train": 4, "synthetic_val": 2, "crop_size": [32, 64],
                       "batch_size": 2, "max_steps": 2, "num_workers": 0, "device": "cpu", "progress": False,
                       "plots": False, "val_every": 1, "out_dir": str(tmp_path / "syn")})
    result = train(cfg)
    assert result.steps == 2 and result.last_checkpoint.is_file() and not np.isnan(result.best_miou)


def test_synthetic_density_boosts_rare_classes_in_training_only():
    """``synthetic_density`` reaches the training scenes' SceneConfig; validation stays the default world."""
    import dataclasses

    from liteseg_ros.synthetic import DENSITY_KNOBS, SceneConfig, generate_scene
    from liteseg_ros.train.datasets import SyntheticDataset
    from liteseg_ros.train.trainer import build_datasets

    scene_fields = {f.name for f in dataclasses.fields(SceneConfig)}
    assert set(DENSITY_KNOBS) <= scene_fields
    rider_moto_bike = [CITYSCAPES_CLASSES.index(n) for n in ("rider", "motorcycle", "bicycle")]

    def share(density):
        ds = SyntheticDataset(12, first_seed=300, size=(90, 160), weather="clear", density=density)
        labels = np.stack([ds.load(i)[1] for i in range(len(ds))])
        return np.isin(labels, rider_moto_bike).mean()

    none, boosted = share({"cyclists": 0.0}), share({"cyclists": 8.0})
    assert none == 0.0 and boosted > 0.002  # the knob really changes the world, not just the config
    ds = SyntheticDataset(2, first_seed=5, size=(48, 96), weather="clear", density={"people": 3.0})
    ref = generate_scene(6, SceneConfig(height=48, width=96, weather="clear", people=3.0))
    np.testing.assert_array_equal(ds.load(1)[1], ref.label)

    cfg = load_config(None, ["dataset=synthetic", "synthetic_density={cyclists: 6, people: 2}",
                             "synthetic_size=[48,96]", "synthetic_train=2", "synthetic_val=2", "val_every=1"])
    assert cfg.synthetic_density == {"cyclists": 6.0, "people": 2.0}
    train_ds, val_ds = build_datasets(cfg)
    assert train_ds.density == {"cyclists": 6.0, "people": 2.0} and val_ds.density == {}
    assert cfg.held_out_warning() is None  # seeds 0..3 stay below liteseg eval --synthetic's held-out scenes
    big = load_config(None, ["dataset=synthetic", "synthetic_train=9990", "synthetic_val=20"])
    assert "seeds 0..10009" in big.held_out_warning() and "--synthetic-seed 10010" in big.held_out_warning()
    with pytest.raises(ConfigError, match="synthetic_density: unknown key 'riders'"):
        load_config(None, ["dataset=synthetic", "synthetic_density={riders: 2}"])
    with pytest.raises(ConfigError, match=r"synthetic_density.people=-1.0: must be a finite number >= 0"):
        load_config(None, ["dataset=synthetic", "synthetic_density={people: -1.0}"])
    with pytest.raises(ConfigError, match="synthetic_density=.*expected a mapping"):
        load_config(None, ["dataset=synthetic", "synthetic_density=4"])


def test_class_weights(tmp_path):
    """ENet and median-frequency weights against hand computation; the weighted loss; a weighted run."""
    import json

    import torch.nn.functional as F

    from liteseg_ros.train.trainer import (
        class_pixel_counts,
        class_weights_from_counts,
        resolve_class_weights,
        segmentation_loss,
        train,
    )

    root = make_cityscapes(tmp_path / "cs", {"train": 3})
    ds = CityscapesDataset(root, "train")
    pixels, image_pixels = class_pixel_counts(ds, 19, max_samples=10)
    want = np.zeros(19, np.int64)
    want_img = np.zeros(19, np.int64)
    for i in range(3):
        lab = ds.load(i)[1]
        counts = np.bincount(lab.ravel(), minlength=256)[:19]
        want += counts
        want_img += np.where(counts > 0, counts.sum(), 0)
    np.testing.assert_array_equal(pixels, want)
    np.testing.assert_array_equal(image_pixels, want_img)
    seen = want > 0
    assert seen.sum() >= 4 and not seen.all()  # road, building, vegetation, sky, car; the rest absent

    enet = class_weights_from_counts(pixels, image_pixels, "enet", c=1.02)
    p = want / want.sum()
    np.testing.assert_allclose(enet[seen], 1.0 / np.log(1.02 + p[seen]))
    assert (enet[~seen] == 0).all()
    road, car = 0, 13
    assert enet[car] > enet[road]  # the rarer class weighs more
    mf = class_weights_from_counts(pixels, image_pixels, "median_freq")
    f = want[seen] / want_img[seen]
    np.testing.assert_allclose(mf[seen], np.median(f) / f)
    with pytest.raises(ValueError, match="no labelled pixel"):
        class_weights_from_counts(np.zeros(19), np.zeros(19), "enet")

    # weighted mean cross entropy: sum_i w_{y_i} CE_i / sum_i w_{y_i}; weight 0 silences a class
    torch.manual_seed(0)
    logits = torch.randn(2, 19, 4, 5)
    target = torch.randint(0, 19, (2, 4, 5))
    target[0, 0, 0] = IGNORE_LABEL
    w = torch.rand(19) + 0.1
    ce = F.cross_entropy(logits, target.clamp(max=18), reduction="none")
    valid = target != IGNORE_LABEL
    wy = w[target.clamp(max=18)] * valid
    assert float(segmentation_loss(logits, target, weight=w)) == pytest.approx(float((ce * wy).sum() / wy.sum()),
                                                                               rel=1e-5)
    only = torch.zeros(19)
    only[int(target[1, 2, 3])] = 1.0
    mask = (target == target[1, 2, 3]) & valid
    assert float(segmentation_loss(logits, target, weight=only)) == pytest.approx(float(ce[mask].mean()), rel=1e-5)

    # config: names, lists, and errors that name the key
    cfg = tiny_cfg(root, tmp_path / "run", class_weights="enet", class_weight_c=1.1, epochs=2)
    np.testing.assert_allclose(resolve_class_weights(cfg, ds, 19), class_weights_from_counts(
        pixels, image_pixels, "enet", 1.1))
    assert resolve_class_weights(tiny_cfg(root, tmp_path / "r0"), ds, 19) is None
    listed = tiny_cfg(root, tmp_path / "r1", class_weights=[1] * 19)
    np.testing.assert_array_equal(resolve_class_weights(listed, ds, 19), np.ones(19))
    with pytest.raises(ValueError, match="3 weights given for 19 classes"):
        resolve_class_weights(tiny_cfg(root, tmp_path / "r2", class_weights=[1, 2, 3]), ds, 19)
    for bad, match in (({"class_weights": "inverse"}, "class_weights='inverse'.*enet, median_freq"),
                       ({"class_weights": [1, -1]}, "must be >= 0"),
                       ({"class_weights": [0, 0]}, "at least one > 0"),
                       ({"class_weights": ["a"]}, "must be a number"),
                       ({"class_weight_c": 1.0}, "class_weight_c=1.0: must be > 1"),
                       ({"class_weight_samples": 0}, "class_weight_samples=0")):
        with pytest.raises(ConfigError, match=match):
            tiny_cfg(root, tmp_path / "bad", **bad)

    result = train(cfg)
    assert result.steps == 2
    saved = json.loads((tmp_path / "run" / "class_weights.json").read_text())
    assert list(saved) == list(CITYSCAPES_CLASSES)
    np.testing.assert_allclose(list(saved.values()), resolve_class_weights(cfg, ds, 19), atol=1e-6)


def test_average_cli_writes_the_weighted_mean_and_rejects_mismatches(tmp_path, capsys):
    """``liteseg average``: every float tensor is the weighted mean, counters and metadata are the first file's,
    and a file that cannot join the soup is a clear exit-2 error, not a broken checkpoint."""
    from dataclasses import replace

    from liteseg_ros.cli import main
    from liteseg_ros.model import LiteSeg, load_checkpoint, save_checkpoint
    from liteseg_ros.model.checkpoint import CheckpointMeta

    torch.manual_seed(0)
    a, b = LiteSeg("mobilenetv2", 19), LiteSeg("mobilenetv2", 19)
    b.train()(torch.randn(2, 3, 64, 96))  # b's BN running stats and counters now differ from a's
    meta = CheckpointMeta.for_model("mobilenetv2", 19)
    save_checkpoint(a, tmp_path / "a.pt", replace(meta, model_name="first"))
    save_checkpoint(b, tmp_path / "b.pt")
    out = tmp_path / "soup" / "ab.pt"
    assert main(["average", str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "-o", str(out),
                 "--weights", "1", "3"]) == 0
    assert "(0.25)" in capsys.readouterr().out
    soup = load_checkpoint(out)
    sa, sb, ss = a.state_dict(), b.state_dict(), soup.state_dict()
    for k, v in ss.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, 0.25 * sa[k] + 0.75 * sb[k], rtol=1e-5, atol=1e-6, msg=k)
        else:
            assert torch.equal(v, sa[k]), k
    assert any(not torch.equal(sa[k], sb[k]) for k in sa if k.endswith("running_mean"))
    assert soup.meta.model_name == "first"

    save_checkpoint(LiteSeg("mobilenetv2", 5), tmp_path / "five.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    for argv, err in [
        ([str(tmp_path / "a.pt")], "at least two"),
        ([str(tmp_path / "a.pt"), str(tmp_path / "five.pt")], "with 5 classes"),
        ([str(tmp_path / "a.pt"), str(tmp_path / "missing.pt")], "no such checkpoint file"),
        ([str(tmp_path / "a.pt"), str(tmp_path / "bad.pt")], "bad.pt"),
        ([str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--weights", "1", "-1"], "finite value >= 0"),
        ([str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--weights", "1"], "one finite value"),
    ]:
        assert main(["average", *argv, "-o", str(tmp_path / "x.pt")]) == 2, argv
        assert err in capsys.readouterr().err, argv
    assert not (tmp_path / "x.pt").exists()
