"""Benchmark liteseg_ros.synthetic: scenes per second of generate_scene and drive at two resolutions.

Prints one table (median ms per scene / frame over distinct seeds, scenes per second, and the ratio
to generate_scene at 360x640 measured in the same run) and writes JSON to --json
(default /tmp/bench_synthetic.json).

    .venv/bin/python benchmarks/bench_synthetic.py [--n 20] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

from liteseg_ros.synthetic import SceneConfig, drive, generate_scene


def time_scenes(cfg: SceneConfig, n: int) -> list[float]:
    generate_scene(10_000, cfg)  # warm-up (imports, caches)
    out = []
    for seed in range(n):
        t0 = time.perf_counter()
        generate_scene(seed, cfg)
        out.append(time.perf_counter() - t0)
    return out


def time_drive(cfg: SceneConfig, n: int) -> list[float]:
    out = []
    it = drive(1, n + 1, cfg)
    next(it)
    while True:
        t0 = time.perf_counter()
        try:
            next(it)
        except StopIteration:
            break
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20, help="scenes / frames per case")
    ap.add_argument("--json", default="/tmp/bench_synthetic.json")
    args = ap.parse_args()
    cases = []
    for h, w in ((360, 640), (720, 1280)):
        cfg = SceneConfig(height=h, width=w)
        cases.append((f"generate_scene {h}x{w}", time_scenes(cfg, args.n)))
        cases.append((f"drive frame {h}x{w}", time_drive(cfg, args.n)))
    base = statistics.median(cases[0][1])
    rows = []
    print(f"{'case':28s} {'median ms':>10s} {'p90 ms':>8s} {'scenes/s':>9s} {'x 360p scene':>13s}")
    for name, ts in cases:
        med = statistics.median(ts)
        p90 = sorted(ts)[int(0.9 * (len(ts) - 1))]
        rows.append({"case": name, "median_ms": 1e3 * med, "p90_ms": 1e3 * p90, "per_s": 1.0 / med,
                     "ratio_to_360p_scene": med / base, "n": len(ts)})
        print(f"{name:28s} {1e3 * med:10.1f} {1e3 * p90:8.1f} {1.0 / med:9.1f} {med / base:13.2f}")
    with open(args.json, "w") as f:
        json.dump({"benchmark": "synthetic", "python": platform.python_version(),
                   "machine": platform.machine(), "rows": rows}, f, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
