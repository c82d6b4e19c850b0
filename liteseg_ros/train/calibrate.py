"""`liteseg calibrate`: fit one additive bias per class on a labelled set so the argmax maximises mIoU.

Why: a network trained with class weights or with rare classes oversampled over-predicts them; the demo
weights v7 painted bicycle on 3.6x and rider on 3.4x their true pixels of held-out scenes while finding 81 % and
61 % of them, so their IoU stayed at 21 % and 16 %. A constant added to a class's logit moves all of its
decision boundaries at once. It is the cheapest fix there is: no retraining, and no runtime cost, because
the offsets are folded into the classifier's bias (the last 1x1 conv; bilinear upsampling keeps constants),
so every engine (PyTorch, ONNX Runtime, OpenVINO, TensorRT, int8) runs them unchanged. Logit adjustment
(Menon et al., "Long-tail learning via logit adjustment", ICLR 2021) derives such offsets from class priors;
here they are fitted to the mIoU of a calibration set directly.

How: the logits of the calibration images are computed once (mapped to the label's pixels as ``liteseg
eval`` does under the same ``--protocol``: by default as the node sees them, at the network size and
upsampled nearest-neighbour; with ``paper`` resized bilinearly; at most ``pixels_per_image`` valid pixels per image, drawn uniformly, so a Cityscapes split fits in
memory), then coordinate ascent: for each class in turn every offset on a grid around its current one is
scored exactly (the best other class of each pixel is fixed while one class moves) and the best kept,
with the grid halved each sweep. Only the IoUs of classes with at least ``min_pixels`` labelled pixels in
the set count, and only their offsets move; at the end those are centred on 0, the offset the others keep
(offsets are relative: adding one constant to all changes no argmax). So a class the set never shows is
neither favoured nor pushed down, which lowering it to win the set's mIoU would do.

Calibrate on images that are neither training nor test images (the synthetic default is seeds 9000.., which
no shipped run trains on and ``liteseg eval --synthetic`` does not score), then score the result on the test
set: the offsets are fitted to the calibration set's mIoU and can overfit a small one.

Ring 4: torch and the model package, imported only when the command runs (``--help`` stays fast).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch: only when a command runs
    import torch
    from torch import nn

    from liteseg_ros.model import LiteSeg

#: first seed of ``--synthetic`` calibration scenes: after the demo weights' training and validation seeds
#: (0..8031) and before the held-out scenes ``liteseg eval --synthetic`` scores (10000..)
CALIBRATION_FIRST_SEED = 9000


@dataclass
class CalibrationSet:
    """Logits (C, P) in fp16 and trainIds (P,) of the sampled valid pixels of a calibration set."""

    logits: torch.Tensor
    labels: torch.Tensor
    images: int

    @property
    def num_classes(self) -> int:
        return int(self.logits.shape[0])


@dataclass
class BiasFit:
    """What ``fit_class_bias`` found: the offsets and the calibration set's IoUs before and after."""

    bias: list[float]
    iou_before: list[float]            #: per class, NaN where a class has no pixels and no prediction
    iou_after: list[float]
    miou_before: float                 #: over all classes, as ``liteseg eval`` reports it
    miou_after: float
    fitted: list[bool]                 #: False: too few pixels in the set, offset left at 0
    history: list[float] = field(default_factory=list)  #: mean IoU of the fitted classes after each sweep


def collect_logits(model: nn.Module, dataset: Any, size: tuple[int, int] | None = None, device: str = "cpu",
                   pixels_per_image: int = 65536, max_images: int | None = None, seed: int = 0,
                   protocol: str = "node") -> CalibrationSet:
    """Run ``model`` over ``dataset`` (a ``SegDataset``; its transform is replaced) and keep what the fit needs.

    ``size``: network input (H, W), None = each image's own size. Each kept label pixel gets the logits
    that decide it under ``protocol``, as ``liteseg eval`` scores it: ``node`` preprocesses with the
    node's pipeline and takes the network-size logit cell that the nearest-neighbour upsampling maps
    to the pixel (so argmax of these logits is exactly the published label); ``paper`` resizes the
    image and the logits bilinearly. Up to ``pixels_per_image`` labelled pixels per image are kept
    (uniformly drawn with ``seed``; all of them when fewer), which leaves every class's share, and so the
    IoUs, unbiased in expectation.
    """
    import numpy as np
    import torch

    from liteseg_ros.train.datasets import EvalTransform
    from liteseg_ros.train.evaluate import PROTOCOLS, logits_at, model_normalisation, resolve_device

    if pixels_per_image < 1:
        raise ValueError(f"pixels_per_image must be >= 1, got {pixels_per_image}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    dev = resolve_device(device)
    dataset.transform = EvalTransform(size, *model_normalisation(model))
    n = len(dataset) if max_images is None else min(int(max_images), len(dataset))
    if n == 0:
        raise ValueError("the calibration set has no images")
    num_classes = len(dataset.classes)
    rng = np.random.default_rng(seed)
    logits, labels = [], []
    model.to(dev).eval()
    node = _NodeLogits(model, size, dev) if protocol == "node" else None
    with torch.no_grad():
        for i in range(n):
            if node is not None:
                rgb, label_np = dataset.load(i)
                label = torch.from_numpy(np.ascontiguousarray(label_np)).long()
            else:
                image, label = dataset[i]
            flat = label.reshape(-1)
            keep = torch.nonzero((flat >= 0) & (flat < num_classes)).squeeze(1)
            if keep.numel() > pixels_per_image:
                pick = rng.choice(keep.numel(), pixels_per_image, replace=False)
                keep = keep[torch.from_numpy(np.sort(pick))]
            if node is not None:
                picked = node.at_pixels(rgb, keep, tuple(label.shape))
            else:
                out = logits_at(model, image[None].to(dev), tuple(label.shape))
                picked = out[0].reshape(out.shape[1], -1)[:, keep.to(dev)]
            if picked.shape[0] != num_classes:
                raise ValueError(f"model predicts {picked.shape[0]} classes but the dataset has {num_classes}")
            logits.append(picked.to("cpu", torch.float16))
            labels.append(flat[keep])
    return CalibrationSet(torch.cat(logits, 1), torch.cat(labels).long(), n)


class _NodeLogits:
    """The logits behind each published label pixel: the node's preprocessing, the model's forward at
    the network size, then for every label pixel the network cell the nearest upsampling copies."""

    def __init__(self, model: nn.Module, size: tuple[int, int] | None, device: torch.device) -> None:
        self.model, self.size, self.device = model, size, device
        self.pipe = None

    def at_pixels(self, rgb: Any, keep: torch.Tensor, label_size: tuple[int, int]) -> torch.Tensor:
        """(C, len(keep)) logits for the flat label-pixel indices ``keep`` of one RGB image."""
        import numpy as np
        import torch

        from liteseg_ros.segmentation import nearest_maps
        from liteseg_ros.train.evaluate import node_pipeline

        net = tuple(self.size) if self.size else tuple(rgb.shape[:2])
        if self.pipe is None:
            self.pipe = node_pipeline(self.model, net, "cpu")  # used for its preprocessing only
        elif self.pipe.config.network_size != net:
            self.pipe.update(network_size=net)
        batch, (geom,) = self.pipe.preprocess([rgb], "rgb")
        out = self.model(torch.from_numpy(batch).to(self.device))[0]
        top, left, ch, cw = geom.content
        out = out[:, top:top + ch, left:left + cw]
        rows, cols = nearest_maps((ch, cw), label_size)
        r = torch.from_numpy(rows.astype(np.int64))[keep // label_size[1]]
        c = torch.from_numpy(cols.astype(np.int64))[keep % label_size[1]]
        return out[:, r.to(out.device), c.to(out.device)]


def _confusion(labels: torch.Tensor, pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The (C, C+1) confusion of the sampled pixels, counted as ``liteseg eval`` counts them."""
    from liteseg_ros.metrics import confusion_counts

    return confusion_counts(pred, labels, num_classes)


def _miou(conf: torch.Tensor) -> tuple[float, list[float]]:
    import numpy as np

    from liteseg_ros.metrics import iou_from_confusion

    iou = iou_from_confusion(conf.numpy())
    valid = iou[~np.isnan(iou)]
    return (float(valid.mean()) if valid.size else float("nan")), [float(v) for v in iou]


def fit_class_bias(data: CalibrationSet, sweeps: int = 3, span: float = 2.0, steps: int = 21,
                   min_pixels: int = 500, chunk: int = 1 << 20) -> BiasFit:
    """Per-class logit offsets that maximise the mIoU of ``data`` (coordinate ascent; see the module doc).

    Sweep k tries offsets ``b_c + span * 0.5**k * t`` for ``steps`` values of t evenly in [-1, 1]; a move
    is kept only if it raises the mean IoU of the fitted classes, so that never ends below its value with
    all-zero offsets on ``data``.
    """
    import numpy as np
    import torch

    if sweeps < 1 or steps < 2 or not span > 0:
        raise ValueError(f"need sweeps >= 1, steps >= 2 and span > 0 (got {sweeps}, {steps}, {span})")
    num_classes = data.num_classes
    labels = data.labels
    counts = torch.bincount(labels, minlength=num_classes)
    fitted = [bool(c >= min_pixels) for c in counts.tolist()]
    bias = torch.zeros(num_classes, dtype=torch.float32)
    grid = torch.linspace(-1.0, 1.0, steps)

    def predict(b: torch.Tensor) -> torch.Tensor:
        out = torch.empty(labels.numel(), dtype=torch.long)
        for s in range(0, labels.numel(), chunk):
            out[s:s + chunk] = (data.logits[:, s:s + chunk].float() + b[:, None]).argmax(0)
        return out

    mask = np.array(fitted)

    def objective(conf: torch.Tensor) -> float:
        iou = np.array(_miou(conf)[1])[mask]
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    start = _confusion(labels, predict(bias), num_classes)
    before, iou_before = _miou(start)
    best = objective(start)
    history = []
    for sweep in range(sweeps):
        scale = span * 0.5 ** sweep
        for c in range(num_classes):
            if not fitted[c]:
                continue
            # the best other class of every pixel does not move while class c's offset does
            rest_val = torch.empty(labels.numel())
            rest_arg = torch.empty(labels.numel(), dtype=torch.long)
            own = torch.empty(labels.numel())
            for s in range(0, labels.numel(), chunk):
                z = data.logits[:, s:s + chunk].float() + bias[:, None]
                own[s:s + chunk] = z[c]
                z[c] = float("-inf")
                rest_val[s:s + chunk], rest_arg[s:s + chunk] = z.max(0)
            margin = own - rest_val                   # class c wins a pixel iff margin + delta > 0
            choice = 0.0
            for t in grid.tolist():
                delta = scale * t
                pred = torch.where(margin + delta > 0, c, rest_arg)
                score = objective(_confusion(labels, pred, num_classes))
                if score > best + 1e-9:
                    best, choice = score, delta
            bias[c] += choice
        history.append(best)
    if mask.any():
        bias[torch.from_numpy(mask)] -= bias[torch.from_numpy(mask)].mean()
    after, iou_after = _miou(_confusion(labels, predict(bias), num_classes))
    return BiasFit([float(v) for v in bias], iou_before, iou_after, before, after, fitted, history)


def classifier(model: nn.Module) -> nn.Module:
    """The layer whose bias holds the class offsets: LiteSeg's last 1x1 conv (``last_conv[-1]``)."""
    from torch import nn

    head = getattr(model, "last_conv", None)
    layer = head[-1] if isinstance(head, nn.Sequential) and len(head) else None
    if not isinstance(layer, nn.Conv2d) or layer.bias is None or layer.out_channels != model.num_classes:
        raise ValueError(f"{type(model).__name__} has no classifier conv with a bias (last_conv[-1])")
    return layer


def apply_class_bias(model: LiteSeg, bias: list[float], note: str = "") -> LiteSeg:
    """Add ``bias`` (one value per class) to the classifier's bias in place; ``note`` goes into meta.notes."""
    import torch

    layer = classifier(model)
    if len(bias) != layer.out_channels:
        raise ValueError(f"{len(bias)} offsets for {layer.out_channels} classes")
    with torch.no_grad():
        layer.bias += torch.tensor(bias, dtype=layer.bias.dtype, device=layer.bias.device)
    if note and getattr(model, "meta", None) is not None:
        old = model.meta.notes.rstrip()
        model.meta.notes = f"{old}{' ' if old.endswith('.') else '; '}{note}" if old else note
    return model


# ---------------------------------------------------------------------------------------------- command
def add_calibrate_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``calibrate`` on ``subparsers``; its func returns an exit code."""
    from liteseg_ros.cli import SUBCOMMANDS
    from liteseg_ros.train.cli import _size, add_protocol_argument

    help_text = SUBCOMMANDS["calibrate"][0]
    p = subparsers.add_parser("calibrate", help=help_text,
                              description=help_text + ".\n\n" + (__doc__ or "").split("\n\n")[1],
                              epilog="examples:\n  liteseg calibrate --weights best.pt --data /data/calib --split none "
                                     "--size 360x640 -o best_calibrated.pt\n"
                                     "  liteseg calibrate --weights demo --synthetic 96 -o demo_calibrated.pt\n"
                                     "then score it on images it was not fitted on: liteseg eval --weights ...",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", "-w", required=True, help="checkpoint to calibrate ('demo' = the bundled weights; or a "
                   "registered name, fetched on first use)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", "-d", help="dataset root (Cityscapes layout or images/ + labels/)")
    src.add_argument("--synthetic", type=int, metavar="N", help="fit on N generated scenes")
    p.add_argument("--synthetic-seed", type=int, default=CALIBRATION_FIRST_SEED,
                   help=f"first scene seed of --synthetic (default: {CALIBRATION_FIRST_SEED})")
    p.add_argument("--synthetic-size", type=_size, default=(180, 320), help="generated scene size HxW")
    p.add_argument("--split", default="val", help="split of --data (default: val; 'none' for no splits)")
    p.add_argument("--dataset", default="auto", choices=("auto", "cityscapes", "folder"))
    p.add_argument("--size", type=_size, help="network input size HxW (default: each image's size)")
    p.add_argument("--max-images", type=int, help="use only the first N images")
    p.add_argument("--pixels-per-image", type=int, default=65536, help="labelled pixels kept per image")
    p.add_argument("--min-pixels", type=int, default=500, help="classes with fewer pixels keep offset 0")
    p.add_argument("--sweeps", type=int, default=3, help="coordinate-ascent sweeps (default: 3)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    add_protocol_argument(p)
    p.add_argument("--out", "-o", required=True, help="where to write the calibrated checkpoint")
    p.set_defaults(func=run_calibrate)
    return p


def run_calibrate(args: argparse.Namespace) -> int:
    import math
    from pathlib import Path

    from liteseg_ros.model import CheckpointError, load_checkpoint, save_checkpoint
    from liteseg_ros.runtime import ModelLoadError, resolve_weights
    from liteseg_ros.train.cli import _split, _synthetic_dataset
    from liteseg_ros.train.config import HELD_OUT_FIRST_SEED
    from liteseg_ros.train.datasets import DatasetError, open_dataset

    try:  # 'demo', a registered name (fetched on first use) or a file
        weights = str(resolve_weights(args.weights, allow_download=True, progress=True,
                                      log=lambda m: print(m, file=sys.stderr)))
    except ModelLoadError as exc:
        print(f"liteseg calibrate: {exc}", file=sys.stderr)
        return 2
    try:
        if not Path(weights).is_file():
            raise FileNotFoundError(f"weights not found: {weights}")
        model = load_checkpoint(weights, map_location="cpu")
        classifier(model)
        if args.synthetic is not None:
            ds, scenes = _synthetic_dataset(args, cache=False)  # one pass: keep no scenes
            where = f"{args.synthetic} {scenes}"
            last = args.synthetic_seed + args.synthetic - 1
            if last >= HELD_OUT_FIRST_SEED:
                print(f"liteseg calibrate: note: seeds {args.synthetic_seed}..{last} include held-out scenes "
                      f"that liteseg eval --synthetic scores (from {HELD_OUT_FIRST_SEED}); score on others",
                      file=sys.stderr)
        else:
            split = _split(args.split)
            ds = open_dataset(args.dataset, args.data, split)
            where = f"{args.data} [{split or '-'}]"
        data = collect_logits(model, ds, args.size, args.device, args.pixels_per_image, args.max_images,
                              protocol=args.protocol)
        fit = fit_class_bias(data, sweeps=args.sweeps, min_pixels=args.min_pixels)
    except (CheckpointError, DatasetError, FileNotFoundError, ValueError) as exc:
        print(f"liteseg calibrate: {exc}", file=sys.stderr)
        return 2
    names = list(model.meta.classes.names)
    size = f"{args.size[0]}x{args.size[1]}" if args.size else "full resolution"
    print(f"calibration set: {where}, {data.images} images at {size}, {data.labels.numel()} pixels "
          f"({args.protocol} protocol)")
    width = max(len(n) for n in names)
    print(f"{'class':<{width}}  {'offset':>7}  {'IoU % before':>12}  {'after':>6}")

    def pct(v: float) -> str:
        return "n/a" if math.isnan(v) else f"{100 * v:.2f}"

    for i, name in enumerate(names):
        off = f"{fit.bias[i]:+.3f}" if fit.fitted[i] else "-"
        print(f"{name:<{width}}  {off:>7}  {pct(fit.iou_before[i]):>12}  {pct(fit.iou_after[i]):>6}")
    print(f"mIoU on the calibration set: {pct(fit.miou_before)} -> {pct(fit.miou_after)} %")
    note = f"Class offsets fitted by liteseg calibrate on {where} at {size} ({args.protocol} protocol)."
    out = save_checkpoint(apply_class_bias(model, fit.bias, note), args.out)
    print(f"wrote {out}")
    print(f"score it on other images: liteseg eval --weights {out} --synthetic 16   (or --data ...)")
    return 0
