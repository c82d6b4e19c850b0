"""Benchmark of the LiteSeg forward pass per backbone: CPU (eager, channels_last, BN-folded) and CUDA fp32/fp16.

Never imports rclpy or message packages. Prints one table and writes JSON (--json).

CPU: batch 1, eval, ``torch.inference_mode``, ``--threads`` intra-op threads, median of ``--runs`` timed
forwards after ``--warmup`` warm-ups, the variants interleaved round-robin so machine load affects all alike. CUDA (``--cuda``; skipped without a GPU): the official protocol,
200 warm-ups then 200 timed forwards, each timed up to ``torch.cuda.synchronize()``, FPS = runs / total.

    .venv/bin/python benchmarks/bench_model.py --runs 10 --json /tmp/bench_model.json
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from liteseg_ros.model import BACKBONES, LiteSeg, fold_batchnorm


def _time_cuda(fn: Callable[[], object], warmup: int, runs: int) -> list[float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def _variants(model: nn.Module) -> dict[str, tuple[nn.Module, bool]]:
    folded = fold_batchnorm(model)
    return {
        "eager": (model, False),
        "channels_last": (model, True),
        "folded": (folded, False),
        "folded+channels_last": (folded, True),
    }


def bench_cpu(backbone: str, h: int, w: int, warmup: int, runs: int) -> list[dict]:
    """Time every variant round-robin (one forward each per round), so load drift hits all alike."""
    torch.manual_seed(0)
    model = LiteSeg(backbone).eval()
    folded = fold_batchnorm(model)
    x = torch.randn(1, 3, h, w)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    # channels_last copies are separate modules so the round-robin never converts in place
    variants = {
        "eager": (model, x),
        "channels_last": (copy.deepcopy(model).to(memory_format=torch.channels_last), x_cl),
        "folded": (folded, x),
        "folded+channels_last": (copy.deepcopy(folded).to(memory_format=torch.channels_last), x_cl),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    with torch.inference_mode():
        ref = model(x)
        diffs = {k: float((m(xx) - ref).abs().max()) for k, (m, xx) in variants.items()}
        for i in range(warmup + runs):
            for k, (m, xx) in variants.items():
                t = time.perf_counter()
                m(xx)
                if i >= warmup:
                    times[k].append((time.perf_counter() - t) * 1e3)
    return [{"device": "cpu", "backbone": backbone, "variant": k, "median_ms": statistics.median(ms),
             "min_ms": min(ms), "max_ms": max(ms), "runs": runs, "max_abs_diff": diffs[k]}
            for k, ms in times.items()]


def bench_cuda(backbone: str, h: int, w: int, warmup: int, runs: int) -> list[dict]:
    torch.manual_seed(0)
    base = LiteSeg(backbone).eval()
    rows = []
    with torch.inference_mode():
        for dtype in (torch.float32, torch.float16):
            for name, (m, cl) in _variants(base).items():
                mm = m.to("cuda", dtype=dtype)
                mm = mm.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
                x = torch.randn(1, 3, h, w, device="cuda", dtype=dtype)
                if cl:
                    x = x.contiguous(memory_format=torch.channels_last)
                ms = _time_cuda(lambda mm=mm, x=x: mm(x), warmup, runs)
                rows.append({"device": torch.cuda.get_device_name(), "backbone": backbone,
                             "variant": f"{str(dtype)[6:]} {name}", "median_ms": statistics.median(ms),
                             "min_ms": min(ms), "max_ms": max(ms), "runs": runs,
                             "fps_official": runs / (sum(ms) / 1e3)})
            base = base.cpu()
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cuda", action="store_true", help="also time on CUDA (fp32, fp16); skipped without a GPU")
    ap.add_argument("--cuda-runs", type=int, default=200)
    ap.add_argument("--cuda-warmup", type=int, default=200)
    ap.add_argument("--no-cpu", action="store_true", help="skip the CPU timings")
    ap.add_argument("--json", type=Path, default=Path("/tmp/bench_model.json"))
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    rows: list[dict] = []
    notes: list[str] = []
    for b in args.backbones:
        if not args.no_cpu:
            rows += bench_cpu(b, args.height, args.width, args.warmup, args.runs)
        if args.cuda:
            if torch.cuda.is_available():
                rows += bench_cuda(b, args.height, args.width, args.cuda_warmup, args.cuda_runs)
            elif "no CUDA" not in " ".join(notes):
                notes.append("--cuda: skipped, no CUDA device available")
    # ratios against the eager fp32 row of the same backbone and device
    base = {(r["device"], r["backbone"]): r["median_ms"] for r in rows
            if r["variant"] in ("eager", "float32 eager")}
    for r in rows:
        r["vs_eager"] = base[(r["device"], r["backbone"])] / r["median_ms"]
    first_cpu = next((r["median_ms"] for r in rows if r["device"] == "cpu" and r["variant"] == "eager"), None)
    for r in rows:
        if r["device"] == "cpu" and r["variant"] == "eager" and first_cpu:
            r["time_vs_first_backbone"] = r["median_ms"] / first_cpu

    print(f"LiteSeg forward, batch 1, {args.height}x{args.width}, torch {torch.__version__}, "
          f"{args.threads} CPU threads, CPU median of {args.runs} after {args.warmup} warm-ups")
    print(f"{'device':<24}{'backbone':<13}{'variant':<30}{'median ms':>10}{'min':>9}{'max':>9}"
          f"{'speed-up':>10}{'maxdiff':>10}")
    for r in rows:
        diff = f"{r['max_abs_diff']:.1e}" if "max_abs_diff" in r else "-"
        print(f"{r['device'][:23]:<24}{r['backbone']:<13}{r['variant']:<30}{r['median_ms']:>10.1f}"
              f"{r['min_ms']:>9.1f}{r['max_ms']:>9.1f}{r['vs_eager']:>9.2f}x{diff:>10}")
    for n in notes:
        print(n)
    result = {"config": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                         "torch": torch.__version__, "machine": platform.machine(),
                         "processor": platform.processor()},
              "rows": rows, "notes": notes}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
