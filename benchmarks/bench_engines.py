"""Benchmark of the CPU engine paths: eager vs channels_last+folded vs ONNX Runtime.

Prints one table (median/p99 ms and speed-up over eager PyTorch fp32, all measured in this one run)
and writes JSON. Random seeded weights: the timings do not depend on the weight values.

    .venv/bin/python benchmarks/bench_engines.py --size 360x640 --threads 2 --iters 10 --json /tmp/bench_engines.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from liteseg_ros.commands.engines import add_interleaved_timing_args  # noqa: E402
from liteseg_ros.engines.cpu_tuning import tune_malloc  # noqa: E402
from liteseg_ros.tools.bench import (  # noqa: E402
    add_ratios,
    bench_cpu_paths,
    format_table,
    random_weight_model,
    write_json,
)

BASELINE = "pytorch eager fp32, logits only"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_interleaved_timing_args(ap)
    ap.add_argument("--backbone", default="mobilenetv2")
    ap.add_argument("--tune-malloc", action="store_true",
                    help="apply cpu_tuning.tune_malloc() before everything (default: only in phase 2)")
    ap.add_argument("--json", type=Path, default=Path("/tmp/bench_engines.json"))
    args = ap.parse_args(argv)
    malloc = tune_malloc() if args.tune_malloc else False
    model = random_weight_model(args.backbone, 19, seed=0)
    rows = bench_cpu_paths(model, args.size, args.threads, args.warmup, args.iters,
                           log=lambda m: print(m, file=sys.stderr), with_tuned_malloc=not malloc, block=args.block)
    add_ratios(rows, BASELINE)
    print(format_table(rows))
    path = write_json(rows, args.json, backbone=args.backbone, threads=args.threads,
                      tune_malloc=malloc, baseline=BASELINE)
    print(f"json: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
