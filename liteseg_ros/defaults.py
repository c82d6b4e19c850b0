"""Defaults and small rules that every layer shares, stated once.

Ring 0: the standard library only (no numpy, torch or ROS), so the parameter schema, the command
line tools, the training code and the synthetic-scene writer can all import it without paying for
anything. A value that two modules would otherwise each restate lives here, and the others import
it: when it changes, it changes everywhere at once.
"""
from __future__ import annotations

import argparse
import math

#: The network input size (height, width) the node, the tools and the benchmarks use unless told
#: otherwise: a 16:9 camera frame at a third of 1080p, where LiteSeg's CPU paths run in real time.
NETWORK_SIZE: tuple[int, int] = (360, 640)

#: The encoders LiteSeg can be built with, by the name used in configs, checkpoints and the CLI.
#: ``liteseg_ros.model`` keys its backbone specs by exactly these names (a test checks it); the
#: list is here rather than there so that validating a name does not import torch.
BACKBONES: tuple[str, ...] = ("mobilenetv2", "shufflenet", "darknet19")

#: File endings read as images wherever a folder of images is read (calibration, demo input,
#: training folders): the still-image formats OpenCV decodes on every platform we ship to.
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")


def is_image_file(name: str) -> bool:
    """Whether a file name ends in one of :data:`IMAGE_SUFFIXES` (case does not matter)."""
    return name.lower().endswith(IMAGE_SUFFIXES)


def format_size(size: tuple[int, int]) -> str:
    """(360, 640) -> '360x640': how sizes are written on the command line (height x width)."""
    return f"{int(size[0])}x{int(size[1])}"


def parse_size(text: str) -> tuple[int, int]:
    """'360x640' (or '360,640') -> (360, 640) (height x width); the argparse type of every ``--size``.

    One parser, so every command accepts the same spellings and refuses the same nonsense with
    the same message (an argparse usage error, exit status 2).
    """
    try:
        h, w = (int(v) for v in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HEIGHTxWIDTH such as {format_size(NETWORK_SIZE)}, "
                                         f"got {text!r}") from None
    if h < 8 or w < 8:
        raise argparse.ArgumentTypeError(f"size must be at least 8x8, got {text!r}")
    return h, w


# Exit statuses of every `liteseg` command, the node and the bag tool (README "Exit codes"): a script
# can tell "fix what you gave me" from "it broke while working" without reading the message.
#: Done.
EXIT_OK = 0
#: It started and failed while working: a runtime, export, build or write error, or nothing came out.
EXIT_FAILURE = 1
#: It could not start from what it was given: arguments, weights, input files or parameters (the
#: message names which); nothing was done. argparse's own usage errors exit 2 as well.
EXIT_USAGE = 2
#: Interrupted (Ctrl-C / SIGINT): what was written so far is kept and said so.
EXIT_INTERRUPTED = 130


def finite_problem(value: object) -> str:
    """Why ``value`` is not a usable number ('' when it is): the one rule every parameter, params file
    and command-line number follows. NaN passes every range check (all comparisons are false) and inf
    divides to zero, so both are refused wherever a float comes in."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value!r} is not a finite number"
    return ""


def _float_arg(text: str, minimum: float, inclusive: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    problem = finite_problem(value)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    if value < minimum or (not inclusive and value == minimum):
        raise argparse.ArgumentTypeError(f"must be {'>=' if inclusive else '>'} {minimum:g}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (rates, frequencies)."""
    return _float_arg(text, 0.0, inclusive=False)


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0 (delays, timeouts)."""
    return _float_arg(text, 0.0, inclusive=True)
