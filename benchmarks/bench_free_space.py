"""Free-space projection per mask: scan, grid and both, for a 640x360 drivable mask on the CPU.

What ``liteseg_free_space`` spends per frame outside DDS: the boundary of the drivable region, its
ground points and bearing bins (``FreeSpace.scan``), and the occupancy grid lookup
(``FreeSpace.grid``), for the synthetic world's own camera on generated scenes, without distortion
and with plumb_bob distortion (undistortPoints on the boundary). Also the one-off cost of building
the projection (on a camera_info, TF or parameter change). Best-of-N (min) is the figure to compare
on a shared machine; the median is printed beside it.

    .venv/bin/python benchmarks/bench_free_space.py --repeats 500
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from liteseg_ros.classes import ClassTable  # noqa: E402
from liteseg_ros.free_space import FreeSpace, GridSpec, Intrinsics, Pose, ScanSpec  # noqa: E402
from liteseg_ros.synthetic import SceneConfig, generate_scene  # noqa: E402


def synthetic_camera(meta: dict, w: int, h: int, d: list[float]) -> tuple[Intrinsics, Pose]:
    """The synthetic world's camera: level optical axis at height ``height_m`` (base_footprint below it)."""
    cam = meta["camera"]
    k = [cam["f_px"], 0.0, cam["cx"] - 0.5, 0.0, cam["f_px"], cam["horizon_y"] - 0.5, 0.0, 0.0, 1.0]
    # optical (x right, y down, z forward) -> base (x forward, y left, z up)
    rot = (0.0, 0.0, 1.0, -1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
    return Intrinsics.from_camera_info(k, d, "plumb_bob", w, h), Pose(rot, (0.0, 0.0, cam["height_m"]))


def timed(fn, repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return min(times), statistics.median(times)


def measure(mask: np.ndarray, intr: Intrinsics, pose: Pose, scan: ScanSpec, grid: GridSpec,
            repeats: int) -> list[tuple[float, float]]:
    """(best, median) ms of scan, grid, both, and building the projection."""
    fs = FreeSpace(intr, pose, scan, grid)
    return [timed(lambda: fs.scan(mask), repeats), timed(lambda: fs.grid(mask), repeats),
            timed(lambda: (fs.scan(mask), fs.grid(mask)), repeats),
            timed(lambda: FreeSpace(intr, pose, scan, grid), max(5, repeats // 30))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--scenes", type=int, default=4)
    args = ap.parse_args()
    road = ClassTable().resolve_groups({"drivable": ["road"]})["drivable"]  # label ids
    scan = ScanSpec(math.radians(0.5), 0.2, 20.0)
    grid = GridSpec(0.1, 0.0, -10.0, 20.0, 20.0)
    rows = []
    for seed in range(args.scenes):
        s = generate_scene(seed, SceneConfig(height=360, width=640))
        mask = np.where(np.isin(s.label, road), 255, 0).astype(np.uint8)
        for dist, d in (("none", [0.0] * 5), ("plumb_bob", [-0.05, 0.01, 0.0005, -0.0005, 0.0])):
            rows.append((seed, dist, *measure(mask, *synthetic_camera(s.meta, 640, 360, d), scan, grid,
                                              args.repeats)))
    print(f"640x360 drivable mask, scan {scan.count} bins of {math.degrees(scan.angle_increment):.2f} deg, "
          f"grid {grid.shape[1]}x{grid.shape[0]} cells of {grid.resolution} m; ms best / median")
    print(f"{'seed':>4} {'distortion':>10} {'scan':>13} {'grid':>13} {'scan+grid':>13} {'build':>13}")
    for seed, dist, *cols in rows:
        print(f"{seed:>4} {dist:>10} " + " ".join(f"{b:6.3f}/{m:6.3f}" for b, m in cols))
    worst = max(r[4][1] for r in rows)
    print(f"worst median scan+grid: {worst:.3f} ms per mask")


if __name__ == "__main__":
    main()
