"""`liteseg average`: one checkpoint whose weights are the mean of several (a "model soup").

Why: two runs fine-tuned from the same weights sit in one basin, and their element-wise mean often scores
better than either (Wortsman et al., "Model soups", ICML 2022; and the checkpoint averaging of stochastic
weight averaging). It costs no training, so on a CPU budget it is the cheapest way to combine runs; the
demo weights v6 and v7 are such means (MODEL_CARD.md). Always score the result (`liteseg eval`): averaging runs
that did not start from the same weights gives a broken network.

Floating-point tensors (weights and BatchNorm running statistics) are averaged, optionally weighted;
integer ones (``num_batches_tracked``) come from the first file. The metadata (classes, palette,
normalisation) is the first file's; every file must agree on backbone, classes and tensor shapes.

Ring 4: torch and the model package, never rclpy; both imported only when the command runs, so
``liteseg average --help`` stays fast like the other subcommands.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the model package imports torch: only when a command runs
    from liteseg_ros.model import LiteSeg


def normalised_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    """``weights`` scaled to sum 1 (equal shares when None); ValueError unless one finite value >= 0 per
    checkpoint, not all zero. One place, so the mean and its printout can never disagree."""
    if count < 2:
        raise ValueError(f"average needs at least two checkpoints, got {count}")
    if weights is None:
        weights = [1.0] * count
    if len(weights) != count or any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights {list(weights)}: need one finite value >= 0 per checkpoint "
                         f"({count}), not all zero")
    total = float(sum(weights))
    return [w / total for w in weights]


def average_checkpoints(paths: Sequence[str | os.PathLike], weights: Sequence[float] | None = None) -> LiteSeg:
    """The first checkpoint's model with every floating-point tensor replaced by the (weighted) mean.

    Raises CheckpointError when a file does not load or does not match the first one, ValueError for bad
    ``weights`` (one finite value >= 0 per file, not all zero).
    """
    from liteseg_ros.model import load_checkpoint
    from liteseg_ros.model.checkpoint import CheckpointError

    shares = normalised_weights(weights, len(paths))
    base = load_checkpoint(paths[0])
    acc = {k: v.double() * shares[0] for k, v in base.state_dict().items() if v.is_floating_point()}
    for path, w in zip(paths[1:], shares[1:]):
        other = load_checkpoint(path)
        if (other.backbone, other.num_classes) != (base.backbone, base.num_classes):
            raise CheckpointError(f"{path}: LiteSeg-{other.backbone} with {other.num_classes} classes; "
                                  f"{paths[0]} is LiteSeg-{base.backbone} with {base.num_classes}")
        if list(other.meta.classes.names) != list(base.meta.classes.names):
            raise CheckpointError(f"{path}: its class names differ from {paths[0]}'s")
        for k, v in other.state_dict().items():
            if k in acc:
                acc[k] += v.double() * w
    state = base.state_dict()
    base.load_state_dict({k: acc[k].to(state[k].dtype) if k in acc else state[k] for k in state})
    return base


def add_average_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``average`` on ``subparsers``; its func returns an exit code."""
    from liteseg_ros.cli import SUBCOMMANDS

    help_text = SUBCOMMANDS["average"][0]
    p = subparsers.add_parser("average", help=help_text,
                              description=help_text + ". " + (__doc__ or "").split("\n\n")[1])
    p.add_argument("checkpoints", nargs="+", help="two or more checkpoints (any format load_checkpoint reads)")
    p.add_argument("--out", "-o", required=True, help="where to write the averaged checkpoint (liteseg_ros format)")
    p.add_argument("--weights", type=float, nargs="+", metavar="W",
                   help="one weight per checkpoint (default: equal); normalised to sum 1")
    p.set_defaults(func=run_average)
    return p


def run_average(args: argparse.Namespace) -> int:
    from liteseg_ros.model import save_checkpoint
    from liteseg_ros.model.checkpoint import CheckpointError

    try:
        model = average_checkpoints(args.checkpoints, args.weights)
    except (CheckpointError, ValueError) as exc:
        print(f"liteseg average: {exc}", file=sys.stderr)
        return 2
    out = save_checkpoint(model, args.out)
    shares = normalised_weights(args.weights, len(args.checkpoints))
    print(f"wrote {out}: mean of " + ", ".join(f"{p} ({w:.3g})" for p, w in zip(args.checkpoints, shares)))
    print(f"score it: liteseg eval --weights {out} --synthetic 16   (or --data ... for your dataset)")
    return 0

