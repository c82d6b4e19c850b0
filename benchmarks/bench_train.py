"""Benchmark of the training hot paths: augmentation, confusion-matrix update, and one optimizer step.

Ring 4 (faces): never imports rclpy or message packages. Prints one table; writes JSON to --json.

    .venv/bin/python benchmarks/bench_train.py [--threads 1] [--json /tmp/bench_train.json]

Ratios are what to compare across machines (the numbers are from shared, noisy CPUs):
* augmentation: TrainTransform on a 1024x2048 Cityscapes-sized frame vs decoding that frame's PNG;
* confusion matrix: ConfusionMatrix.update (bincount) vs a numpy ``np.add.at`` reference;
* calibrate's scoring: ``liteseg_ros.metrics.confusion_counts`` on 1M sampled pixels (torch, CPU; the
  fit scores ~1200 candidate offsets this way) vs a bare ``torch.bincount`` without the range checks
  of the one rule (what calibrate counted with before it shared the rule);
* train step: forward + backward + SGD step of LiteSeg-MobileNetV2 at the demo and test sizes.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from liteseg_ros.tools.bench import time_calls
from liteseg_ros.train.datasets import TrainTransform
from liteseg_ros.train.metrics import ConfusionMatrix


def timeit(fn, repeat: int, warmup: int = 1) -> float:
    """Median seconds per call."""
    return float(np.median(time_calls(fn, warmup, repeat))) / 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default="/tmp/bench_train.json")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    rows = []

    rgb = rng.integers(0, 256, (1024, 2048, 3), dtype=np.uint8)
    lab = rng.integers(0, 19, (1024, 2048), dtype=np.uint8)
    tf = TrainTransform((512, 1024), (0.35, 1.0), rotate_deg=5.0)
    r = np.random.default_rng(1)
    t_aug = timeit(lambda: tf(rgb, lab, r), args.repeat)
    import cv2

    smooth = cv2.GaussianBlur(rgb, (31, 31), 0)  # photo-like entropy, so PNG decoding is realistic
    png = cv2.imencode(".png", smooth)[1]
    t_dec = timeit(lambda: cv2.imdecode(png, cv2.IMREAD_COLOR), args.repeat)
    rows.append(("augment 1024x2048 -> crop 512x1024 (+rot 5)", t_aug, t_dec, "PNG decode"))

    pred = torch.from_numpy(rng.integers(0, 19, (1024, 2048)))
    gt = torch.from_numpy(lab.astype(np.int64))
    cm = ConfusionMatrix(19)
    t_cm = timeit(lambda: cm.update(pred, gt), args.repeat)

    def ref() -> None:
        m = np.zeros((19, 19), np.int64)
        np.add.at(m, (gt.numpy().ravel(), pred.numpy().ravel()), 1)

    t_ref = timeit(ref, max(2, args.repeat // 2))
    rows.append(("confusion update 1024x2048, 19 classes", t_cm, t_ref, "np.add.at"))

    from liteseg_ros.metrics import confusion_counts

    cal_pred = torch.from_numpy(rng.integers(0, 19, 1 << 20))
    cal_gt = torch.from_numpy(rng.integers(0, 19, 1 << 20))
    t_cal = timeit(lambda: confusion_counts(cal_pred, cal_gt, 19), args.repeat)
    t_bare = timeit(lambda: torch.bincount(cal_gt * 19 + cal_pred, minlength=19 * 19).view(19, 19), args.repeat)
    rows.append(("calibrate confusion, 1M pixels, 19 classes", t_cal, t_bare, "bare torch.bincount"))

    from liteseg_ros.model import LiteSeg

    for (h, w), batch in (((128, 256), 8), ((64, 128), 2)):
        torch.manual_seed(0)
        model = LiteSeg("mobilenetv2").train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
        x = torch.randn(batch, 3, h, w)
        y = torch.randint(0, 19, (batch, h, w))

        def step(model=model, opt=opt, x=x, y=y) -> None:
            loss = torch.nn.functional.cross_entropy(model(x), y, ignore_index=255)
            opt.zero_grad()
            loss.backward()
            opt.step()

        t_step = timeit(step, max(3, args.repeat // 2))
        rows.append((f"train step {h}x{w} batch {batch}", t_step, float("nan"), ""))

    print(f"{'case':<46} {'ms':>9} {'ref ms':>9} {'ref/case':>9}  reference   (threads={args.threads})")
    out = []
    for name, t, tr, refname in rows:
        ratio = tr / t if tr == tr else float("nan")
        print(f"{name:<46} {1e3 * t:>9.2f} {1e3 * tr:>9.2f} {ratio:>9.2f}  {refname}")
        out.append({"case": name, "ms": 1e3 * t, "ref_ms": None if tr != tr else 1e3 * tr,
                    "ref_over_case": None if ratio != ratio else ratio, "reference": refname})
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"threads": args.threads, "rows": out}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
