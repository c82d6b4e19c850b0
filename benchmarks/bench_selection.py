"""What the engine layer adds around a forward: the one input check per batch, and planning per start.

``Engine.infer`` checks every batch (type, shape, the file's fixed size, the batch limit) before the
backend runs it, on the hot path of every frame; ``selection.plan_engine`` runs once per start. Both
are timed here against the forward they wrap, ONNX Runtime fp32 at the network size, in this one
run, and printed as ratios (what share of a frame's inference the check costs).

    .venv/bin/python benchmarks/bench_selection.py --size 360x640 --threads 2 --iters 20
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from liteseg_ros.defaults import NETWORK_SIZE, parse_size  # noqa: E402
from liteseg_ros.engines import create_engine  # noqa: E402
from liteseg_ros.engines.selection import EngineRequest, StaticFacts, plan_engine  # noqa: E402
from liteseg_ros.tools.bench import random_weight_model  # noqa: E402


def median_ms(fn, iters: int) -> float:
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=parse_size, default=NETWORK_SIZE, metavar="HxW")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args(argv)
    h, w = args.size
    with tempfile.TemporaryDirectory() as cache:
        engine = create_engine(random_weight_model(), "onnxruntime", "cpu", "fp32", (h, w), args.threads, cache,
                               log=lambda m: None)
        x = np.random.default_rng(0).standard_normal((1, 3, h, w)).astype(np.float32)
        infer = median_ms(lambda: engine.infer(x), args.iters)
        check = median_ms(lambda: [engine.check_batch(x) for _ in range(1000)], args.iters) / 1000
        req = EngineRequest(facts=StaticFacts(has_int8_file=True, reports={"onnxruntime": (0.995, "report")}))
        plan = median_ms(lambda: [plan_engine(req) for _ in range(100)], args.iters) / 100
        engine.close()
    print(f"{'what':<40} {'median ms':>10} {'share of infer':>15}")
    for name, ms in ((f"onnxruntime fp32 infer {h}x{w}", infer), ("Engine.check_batch (per batch)", check),
                     ("plan_engine, CPU auto (per start)", plan)):
        print(f"{name:<40} {ms:>10.4f} {ms / infer:>14.4%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
