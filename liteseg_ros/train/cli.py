"""The ``liteseg train`` and ``liteseg eval`` subcommands (thin: parse, call, print).

Ring 4 (faces): never imports rclpy, message packages or ``liteseg_ros.node`` / ``liteseg_ros.bag`` /
``liteseg_ros.image_codec``; torch is imported only when a command runs, so ``--help`` stays fast.

Overrides use one style: ``--set key=value`` (repeatable, several pairs per flag allowed); the value
is parsed as YAML, so ``--set lr=0.02 crop_size=[64,128] val_size=null resume=runs/x/checkpoints/last.pt``.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from liteseg_ros.defaults import parse_size as _size  # the one --size rule of every command
from liteseg_ros.train.config import HELD_OUT_FIRST_SEED, ConfigError, config_keys_help, load_config

if TYPE_CHECKING:  # evaluate imports torch: only when a command runs
    from liteseg_ros.train.evaluate import EvalReport

TRAIN_EPILOG = """\
examples:
  liteseg train --config config/train_synthetic.yaml
  liteseg train --config config/train_cityscapes.yaml --set data_dir=/data/cityscapes batch_size=16
  liteseg train --config config/train_cityscapes.yaml --set resume=runs/cityscapes/checkpoints/last.pt
  torchrun --nproc_per_node 4 -m liteseg_ros.train --config config/train_cityscapes.yaml --set sync_bn=true

config keys (defaults):
"""

EVAL_EPILOG = """\
examples:
  liteseg eval --weights runs/synthetic/checkpoints/best.pt --data /data/cityscapes --size 360x640
  liteseg eval --weights best.pt --data /data/cityscapes --full-res --out eval_out
  liteseg eval --predictions preds/ --pred-format labelid --data /data/cityscapes
  liteseg eval --weights demo --synthetic 16          # held-out generated scenes (MODEL_CARD.md's numbers)
  liteseg eval --oracle-stride 4 --synthetic 16       # the most any stride-4 decoder can score there
"""


def add_protocol_argument(p: argparse.ArgumentParser) -> None:
    """``--protocol node|paper``, shared by ``eval`` and ``calibrate`` so both score the same way."""
    p.add_argument("--protocol", default="node", choices=("node", "paper"),
                   help="node (default): through the node's pipeline (INTER_AREA resize, argmax at the network "
                        "size, nearest upsample), i.e. the labels the node publishes; paper: bilinear resize and "
                        "bilinear logits at the label's resolution, the usual research protocol")


def _split(text: str) -> str | None:
    """``--split``: 'none' (or 'null', '') means a dataset without splits."""
    return None if str(text).lower() in ("none", "null", "") else text


def add_train_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``train`` on ``subparsers``; its func returns an exit code."""
    p = subparsers.add_parser(
        "train", help="train LiteSeg (Cityscapes, an image/label folder or synthetic scenes)",
        description="Train LiteSeg. Runs on one device, or under torchrun as DistributedDataParallel.",
        epilog=TRAIN_EPILOG + config_keys_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "-c", help="YAML file of config keys (see below)")
    p.add_argument("--set", dest="overrides", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override config keys; values are YAML (repeatable)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=run_train)
    return p


def add_eval_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``eval`` on ``subparsers``; its func returns an exit code."""
    p = subparsers.add_parser(
        "eval", help="evaluate weights (or prediction PNGs) on a labelled dataset: IoU table, mIoU, fps",
        description="Per-class IoU, category IoU, mIoU and pixel accuracy on a Cityscapes or folder dataset, "
                    "or on held-out generated scenes.",
        epilog=EVAL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", "-w", help="checkpoint written by liteseg train (or a converted official one); "
                   "'demo' = the bundled demo weights; or a registered name such as liteseg-mobilenet-cityscapes "
                   "(`liteseg weights list`), fetched on first use")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", "-d", help="dataset root (Cityscapes layout or images/ + labels/)")
    src.add_argument("--synthetic", type=int, metavar="N",
                     help="evaluate on N generated scenes (liteseg_ros.synthetic; exact labels, no files)")
    p.add_argument("--synthetic-seed", type=int, default=HELD_OUT_FIRST_SEED,
                   help=f"first scene seed of --synthetic (default: {HELD_OUT_FIRST_SEED}; liteseg train's synthetic "
                        "runs use seeds 0..synthetic_train+synthetic_val-1 and say so when that reaches it)")
    p.add_argument("--synthetic-size", type=_size, default=(180, 320),
                   help="generated scene size HxW (default: 180x320, the demo's network size)")
    p.add_argument("--split", default="val", help="split to evaluate (default: val; 'none' for a folder "
                   "without splits)")
    p.add_argument("--dataset", default="auto", choices=("auto", "cityscapes", "folder"),
                   help="dataset layout (default: detect)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--size", type=_size, help="network input size HxW (labels stay full resolution)")
    g.add_argument("--full-res", action="store_true", help="run the network at full resolution (default)")
    add_protocol_argument(p)
    p.add_argument("--predictions", help="score this folder of prediction PNGs instead of running a model")
    p.add_argument("--oracle-stride", type=int, metavar="S",
                   help="no model: score ideal logits at 1/S of the network input (LiteSeg: 4, ShuffleNet 8), "
                        "the resolution ceiling of the dataset at that --size")
    p.add_argument("--pred-format", default="trainid", choices=("trainid", "labelid"),
                   help="ids in the prediction PNGs (default: trainid)")
    p.add_argument("--out", help="write eval.json, eval.txt and confusion.png here")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--amp", action="store_true", help="fp16 autocast on CUDA")
    p.add_argument("--max-images", type=int, help="evaluate only the first N images")
    p.add_argument("--num-workers", type=int, default=2, help="DataLoader workers (default: 2)")
    p.set_defaults(func=run_eval)
    return p


def run_train(args: argparse.Namespace) -> int:
    overrides = [item for group in args.overrides for item in group]
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"liteseg train: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    from liteseg_ros.train.datasets import DatasetError
    from liteseg_ros.train.trainer import train
    from liteseg_ros.weights import WeightsError

    try:
        result = train(cfg)
    except (DatasetError, ConfigError, FileNotFoundError, WeightsError) as exc:
        print(f"liteseg train: {exc}", file=sys.stderr)
        return 2
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        best = "n/a" if result.best_miou != result.best_miou else f"{100 * result.best_miou:.2f}%"
        print(f"done: {result.steps} steps in {result.seconds:.1f} s ({result.it_per_s:.2f} it/s), "
              f"best val mIoU {best}")
        print(f"checkpoints: last {result.last_checkpoint}, best {result.best_checkpoint}")
        print(f"run folder: {result.out_dir}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from liteseg_ros.train.datasets import DatasetError
    from liteseg_ros.train.evaluate import evaluate, score_predictions

    split = _split(args.split)
    if args.oracle_stride is not None and (args.weights or args.predictions):
        print("liteseg eval: --oracle-stride scores no model; leave out --weights and --predictions",
              file=sys.stderr)
        return 2
    weights = args.weights or ("demo" if args.synthetic is not None else None)  # --synthetic: demo by default
    if weights and args.oracle_stride is None and not args.predictions:
        from liteseg_ros.runtime import ModelLoadError, resolve_weights

        try:  # 'demo', a registered name (fetched on first use) or a file
            weights = str(resolve_weights(weights, allow_download=True, progress=True,
                                          log=lambda m: print(m, file=sys.stderr)))
        except ModelLoadError as exc:
            print(f"liteseg eval: {exc}", file=sys.stderr)
            return 2
    try:
        if args.oracle_stride is not None:
            report = _eval_oracle(args, split)
        elif args.synthetic is not None:
            report = _eval_synthetic(args, weights)
        elif args.predictions:
            report = score_predictions(args.predictions, args.data, split, args.pred_format, args.dataset,
                                       out_dir=args.out)
        else:
            if not weights:
                print("liteseg eval: give --weights (or --predictions or --oracle-stride)", file=sys.stderr)
                return 2
            report = evaluate(weights, args.data, None if args.full_res else args.size, split,
                              args.dataset, args.device, args.amp, args.num_workers, args.out,
                              args.max_images, protocol=args.protocol)
    except (DatasetError, FileNotFoundError, ValueError) as exc:
        print(f"liteseg eval: {exc}", file=sys.stderr)
        return 2
    print(report.format())
    for what, path in report.files.items():
        print(f"wrote {what}: {path}")
    return 0


def _eval_synthetic(args: argparse.Namespace, weights: str) -> EvalReport:
    """``liteseg eval --synthetic N``: the held-out score of the demo weights (MODEL_CARD.md) in one command.

    Raises ValueError for arguments that do not fit generated scenes (``run_eval`` prints it).
    """
    from liteseg_ros.train.evaluate import evaluate

    if args.predictions:
        raise ValueError("--predictions scores files of a --data dataset, not --synthetic")
    ds, where = _synthetic_dataset(args)
    return evaluate(weights, where, None if args.full_res else args.size, None, "synthetic", args.device,
                    args.amp, 0, args.out, args.max_images, dataset_obj=ds, protocol=args.protocol)


def _synthetic_dataset(args: argparse.Namespace, cache: bool = True) -> tuple[Any, str]:
    """The generated scenes of ``--synthetic N`` (``--synthetic-seed``, ``--synthetic-size``) and how reports
    name them; ``cache=False`` for one pass over many scenes. ValueError for N < 1 or a negative seed."""
    from liteseg_ros.train.datasets import SyntheticDataset

    if args.synthetic <= 0 or args.synthetic_seed < 0:
        raise ValueError("--synthetic needs N >= 1 scenes and --synthetic-seed >= 0")
    ds = SyntheticDataset(args.synthetic, first_seed=args.synthetic_seed, size=args.synthetic_size, cache=cache)
    h, w = args.synthetic_size
    return ds, f"generated scenes {h}x{w} (seeds {args.synthetic_seed}..{args.synthetic_seed + args.synthetic - 1})"


def _eval_oracle(args: argparse.Namespace, split: str | None) -> EvalReport:
    """``liteseg eval --oracle-stride S``: the resolution ceiling of ``--data`` or ``--synthetic`` scenes."""
    from liteseg_ros.train.datasets import open_dataset
    from liteseg_ros.train.evaluate import evaluate_oracle

    size = None if args.full_res else args.size
    if args.synthetic is not None:
        ds, where = _synthetic_dataset(args)
        return evaluate_oracle(args.oracle_stride, ds, size, where, None, args.out, args.max_images)
    ds = open_dataset(args.dataset, args.data, split)
    return evaluate_oracle(args.oracle_stride, ds, size, str(args.data), split, args.out, args.max_images)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m liteseg_ros.train``: ``train`` is the default subcommand; ``eval`` selects evaluation."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m liteseg_ros.train")
    sub = parser.add_subparsers(dest="command")
    add_train_parser(sub)
    add_eval_parser(sub)
    if not argv or argv[0] not in ("train", "eval", "-h", "--help"):
        argv = ["train", *argv]
    args = parser.parse_args(argv)
    return int(args.func(args))
