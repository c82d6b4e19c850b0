"""Write synthetic scenes to disk: ``python -m liteseg_ros.synthetic --out DIR --n 8 --size 360x640``.

Ring 0: numpy and OpenCV only; never torch, rclpy or message packages.

For each scene: ``NNNNNN_image.png`` (BGR as written by OpenCV), ``NNNNNN_label.png`` (trainIds) and
``NNNNNN_color.png`` (label in the class palette). ``--sheet PATH`` also writes a contact sheet
(image | coloured label per row); ``--drive`` takes consecutive frames of one road instead of seeds.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from liteseg_ros import safe_files
from liteseg_ros.classes import ClassTable
from liteseg_ros.defaults import NETWORK_SIZE, format_size, parse_size

from . import SceneConfig, drive, generate_scene
from .world import WEATHERS


def colorize(label: np.ndarray) -> np.ndarray:
    """A BGR preview of a trainId label in the Cityscapes palette (void black)."""
    return ClassTable().palette_lut(bgr=True)[label]


def contact_sheet(samples, max_width: int = 1280) -> np.ndarray:
    """Rows of ``image | coloured label`` for a list of SceneSamples."""
    rows = [np.concatenate([s.image, colorize(s.label)], 1) for s in samples]
    sheet = np.concatenate(rows, 0)
    if sheet.shape[1] > max_width:
        k = max_width / sheet.shape[1]
        sheet = cv2.resize(sheet, (max_width, int(round(sheet.shape[0] * k))), interpolation=cv2.INTER_AREA)
    return sheet


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m liteseg_ros.synthetic", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="output directory (created)")
    ap.add_argument("--n", type=int, default=8, help="number of scenes / frames")
    ap.add_argument("--size", type=parse_size, default=NETWORK_SIZE, help=f"HxW (default {format_size(NETWORK_SIZE)})")
    ap.add_argument("--seed", type=int, default=0, help="first seed (scenes use seed, seed+1, ...)")
    ap.add_argument("--weather", default="random", choices=(*WEATHERS, "random"))
    ap.add_argument("--drive", action="store_true", help="consecutive frames of one road (seed --seed)")
    ap.add_argument("--speed", type=float, default=1.0, help="metres per frame with --drive")
    ap.add_argument("--sheet", type=Path, default=None, help="also write a contact sheet PNG here")
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error(f"--n must be >= 1, got {args.n}")
    cfg = SceneConfig(height=args.size[0], width=args.size[1], weather=args.weather)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.drive:
        samples = list(drive(args.seed, args.n, cfg, speed=args.speed))
    else:
        samples = [generate_scene(args.seed + i, cfg) for i in range(args.n)]
    for i, s in enumerate(samples):
        stem = f"{s.seed:06d}" if not args.drive else f"{s.seed:06d}_{i:04d}"
        safe_files.write_image(args.out / f"{stem}_image.png", s.image)
        safe_files.write_image(args.out / f"{stem}_label.png", s.label)
        safe_files.write_image(args.out / f"{stem}_color.png", colorize(s.label))
    if args.sheet is not None:
        args.sheet.parent.mkdir(parents=True, exist_ok=True)
        safe_files.write_image(args.sheet, contact_sheet(samples[:8]))
    print(f"wrote {len(samples)} scenes of {args.size[0]}x{args.size[1]} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
