"""TensorRT fp32 vs fp16 on the GPU: build time, model time, and fp16 labels against fp32 (needs a GPU + tensorrt).

Both engines are built the one way TensorRT 10.x and 11.x share: a strongly typed network from an ONNX file
whose types are the precision (the fp32 export with TF32 cleared; the fp16 export, ``Fp16Network``). For
each precision it reports the build (or cache load) time, the median/p99 of ``engine.infer`` on a ready
normalised batch (timed round-robin, so the fp16/fp32 ratio is from one run), and on held-out generated
scenes (seeds >= 10000, demo weights) the share of labels equal to TensorRT fp32 and to PyTorch fp32 on
the CPU. Where onnxruntime-gpu is installed, ONNX Runtime CUDA on the same fp16 file is checked too.
Exits 1 if fp16 labels are < 99 % equal to fp32, or fp32 labels < 99.9 % equal to the CPU's.

    python benchmarks/bench_tensorrt.py --size 360x640 --cache-dir /tmp/trt --json /tmp/bench_tensorrt.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from liteseg_ros.defaults import NETWORK_SIZE, parse_size  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=parse_size, default=NETWORK_SIZE, metavar="HxW")
    ap.add_argument("--scenes", type=int, default=8, help="held-out generated scenes for the label check")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--cache-dir", type=Path, required=True, help="engine cache (ONNX files and plans)")
    ap.add_argument("--rebuild", action="store_true", help="time a fresh build even if a plan is cached")
    ap.add_argument("--json", type=Path, default=Path("/tmp/bench_tensorrt.json"))
    args = ap.parse_args(argv)

    try:
        import tensorrt
    except ImportError as exc:
        print(f"bench_tensorrt: needs tensorrt ({exc}); pip install 'liteseg_ros[tensorrt]'", file=sys.stderr)
        return 2
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_fp16_onnx import scenes

    from liteseg_ros.engines import create_engine
    from liteseg_ros.engines.export import reference_outputs
    from liteseg_ros.model import load_checkpoint
    from liteseg_ros.runtime import demo_weights_path
    from liteseg_ros.tools.bench import summarize, time_interleaved

    h, w = args.size
    model = load_checkpoint(demo_weights_path()).eval()
    x = scenes(args.scenes, (h, w))
    ref_label, _, _ = reference_outputs(model, x)
    engines, rows = {}, []
    for precision in ("fp32", "fp16"):
        t0 = time.perf_counter()
        engines[precision] = create_engine(model, "tensorrt", "cuda", precision, (h, w), cache_dir=args.cache_dir,
                                           rebuild=args.rebuild, warmup=False)
        rows.append({"path": f"tensorrt {precision}", "build_or_load_s": time.perf_counter() - t0,
                     "engine": engines[precision].info.extra.get("engine", "")})
    labels = {p: np.concatenate([e.infer(x[i:i + 1]).label for i in range(len(x))]) for p, e in engines.items()}
    one = np.ascontiguousarray(x[:1])
    times = time_interleaved([lambda e=e: e.infer(one) for e in engines.values()], warmup=args.warmup,
                             iters=args.iters, log=lambda m: None)
    for row, precision, t in zip(rows, engines, times, strict=True):
        row.update(summarize(t))
        row["labels_vs_trt_fp32"] = float(np.mean(labels[precision] == labels["fp32"]))
        row["labels_vs_cpu_fp32"] = float(np.mean(labels[precision] == ref_label))
    rows[1]["speedup_vs_fp32"] = rows[0]["median_ms"] / rows[1]["median_ms"]

    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        eng = create_engine(model, "onnxruntime", "cuda", "fp16", (h, w), cache_dir=args.cache_dir, warmup=False)
        lab = np.concatenate([eng.infer(x[i:i + 1]).label for i in range(len(x))])
        rows.append({"path": "onnxruntime cuda fp16", "labels_vs_trt_fp32": float(np.mean(lab == labels["fp32"])),
                     "labels_vs_cpu_fp32": float(np.mean(lab == ref_label)), **summarize(time_interleaved(
                         [lambda: eng.infer(one)], warmup=args.warmup, iters=args.iters, log=lambda m: None)[0])})
    else:
        print("onnxruntime-gpu not installed: no ONNX Runtime CUDA row")

    print(f"TensorRT {tensorrt.__version__} on {torch.cuda.get_device_name()}, demo weights, {h}x{w}, batch 1, "
          f"{args.scenes} held-out scenes")
    print(f"{'path':<24} {'build/load s':>12} {'median ms':>10} {'p99 ms':>8} {'x fp32':>7} {'= trt fp32':>10} "
          f"{'= cpu fp32':>10}")
    for r in rows:
        print(f"{r['path']:<24} {r.get('build_or_load_s', float('nan')):>12.1f} {r['median_ms']:>10.3f} "
              f"{r['p99_ms']:>8.3f} {r.get('speedup_vs_fp32', float('nan')):>7.2f} "
              f"{100 * r['labels_vs_trt_fp32']:>9.3f}% {100 * r['labels_vs_cpu_fp32']:>9.3f}%")
    args.json.write_text(json.dumps({"tensorrt": tensorrt.__version__, "gpu": torch.cuda.get_device_name(),
                                     "size": [h, w], "scenes": args.scenes, "rows": rows}, indent=1))
    ok = rows[1]["labels_vs_trt_fp32"] >= 0.99 and rows[0]["labels_vs_cpu_fp32"] >= 0.999
    if not ok:
        print("FAIL: fp16 labels < 99 % equal to fp32, or fp32 labels < 99.9 % equal to the CPU's", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
