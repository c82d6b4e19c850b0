"""Engine benchmarks: model-only and end-to-end timings per backend, precision and size, as rows.

Ring 2: imports numpy, torch, OpenCV (via the pipeline) and the engines; never rclpy, message
packages, or the node/bag/codec modules. Used by ``liteseg bench`` and ``benchmarks/bench_engines.py``.

Timing rules: warm-up runs first; every timed call returns host numpy arrays, which synchronises
CUDA; median and p99 over ``iters`` runs. "model" rows time ``engine.infer`` on a ready normalised
batch (network + in-graph post-processing + copy out); "e2e" rows time ``Pipeline.run`` on a uint8
camera-size frame (resize + normalise, infer, label back to the input size; no colour products).
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from liteseg_ros import safe_files
from liteseg_ros.defaults import NETWORK_SIZE
from liteseg_ros.engines.base import Engine


def random_weight_model(backbone: str = "mobilenetv2", num_classes: int = 19, seed: int = 0,
                        calibrate: bool = True):
    """A LiteSeg with seeded random weights whose outputs vary per pixel (for tests and benchmarks).

    A freshly initialised network with BatchNorm running stats (0, 1) is nearly constant over the
    image, so label comparisons on it prove little. With ``calibrate`` the BN affine parameters are
    randomised and the running statistics estimated on a few smooth random images (train-mode
    forwards at 96x160), which gives varied labels and confidences. Deterministic for a seed.
    """
    from torch import nn

    from liteseg_ros.model import LiteSeg

    torch.manual_seed(seed)
    model = LiteSeg(backbone, num_classes)
    if calibrate:
        g = torch.Generator().manual_seed(seed)
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.momentum = None  # cumulative average over the calibration batches
                with torch.no_grad():
                    mod.weight.uniform_(0.5, 1.5, generator=g)
                    mod.bias.normal_(0.0, 0.2, generator=g)
        model.train()
        with torch.no_grad():
            for _ in range(3):
                model(smooth_noise(2, 96, 160, g))
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.momentum = 0.1
    return model.eval()


def smooth_noise(n: int, h: int, w: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(n, 3, h, w) float32 normal noise, bilinearly upsampled from 1/8 size (image-like, normalised)."""
    from torch.nn import functional as F

    small = torch.randn(n, 3, max(1, h // 8), max(1, w // 8), generator=generator)
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


def time_calls(fn: Callable[[], Any], warmup: int = 3, iters: int = 20) -> list[float]:
    """Milliseconds per call of ``fn`` after ``warmup`` untimed calls (``fn`` must synchronise)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def summarize(times: Sequence[float]) -> dict[str, float]:
    """median, p99 and min of a list of milliseconds, and fps at the median."""
    arr = np.asarray(times, np.float64)
    med = float(np.median(arr))
    return {"median_ms": round(med, 3), "p99_ms": round(float(np.percentile(arr, 99)), 3),
            "min_ms": round(float(arr.min()), 3), "fps": round(1e3 / med, 2) if med > 0 else 0.0,
            "iters": len(arr)}


def row(name: str, times: Sequence[float], **fields: Any) -> dict[str, Any]:
    """One result row: a name, the summary of ``times`` and any descriptive fields."""
    return {"name": name, **fields, **summarize(times)}


def bench_engine(engine: Engine, input_size: tuple[int, int], batch: int = 1, warmup: int = 3,
                 iters: int = 20, image_size: tuple[int, int] | None = (720, 1280),
                 seed: int = 0) -> list[dict[str, Any]]:
    """Rows for one engine: ``model`` (infer on a normalised batch) and, with ``image_size``, ``e2e``."""
    h, w = input_size
    x = smooth_noise(batch, h, w, torch.Generator().manual_seed(seed)).numpy()
    info = engine.info
    base = {"backend": info.backend, "device": info.device, "precision": info.precision,
            "size": f"{h}x{w}", "batch": batch}
    rows = [row(f"{info.backend} {info.precision} model", time_calls(lambda: engine.infer(x), warmup, iters),
                mode="model", **base)]
    if image_size is not None:
        from liteseg_ros.classes import ClassTable
        from liteseg_ros.pipeline import Pipeline, PipelineConfig, Wants

        num_classes = engine.num_classes or 19
        classes = ClassTable.cityscapes() if num_classes == 19 else ClassTable.generic(num_classes)
        pipe = Pipeline(engine, classes, PipelineConfig(network_size=(h, w), mask_groups={}))
        rng = np.random.default_rng(seed)
        frames = [rng.integers(0, 256, (*image_size, 3), dtype=np.uint8) for _ in range(batch)]
        wants = Wants(confidence=True, color=False, overlay=False, masks=frozenset(), boundary=False)
        times = time_calls(lambda: pipe.run(frames, "bgr", wants), warmup, iters)
        rows.append(row(f"{info.backend} {info.precision} e2e {image_size[0]}x{image_size[1]}", times,
                        mode="e2e", **base))
    return rows


def bench_cpu_paths(model: torch.nn.Module, input_size: tuple[int, int] = NETWORK_SIZE, num_threads: int = 2,
                    warmup: int = 3, iters: int = 10, workdir: str | Path = "/tmp/liteseg_bench",
                    log: Callable[[str], None] = print,
                    with_tuned_malloc: bool = True, block: int = 3) -> list[dict[str, Any]]:
    """The CPU comparison (eager, optimised eager, ONNX Runtime, OpenVINO) at one size, as rows (same process, same input).

    eager fp32 logits; eager + torch max/exp post-processing; PyTorchEngine (channels_last, folded BN, post-processing in torch); ONNX
    Runtime logits only; ONNX Runtime logits + numpy argmax; ONNX Runtime with in-graph
    post-processing (the CPU engine). Timed round-robin in blocks of ``block`` calls, the first of
    each block discarded (:func:`time_interleaved`). With
    ``with_tuned_malloc`` (glibc only) a second round-robin phase after ``tune_malloc()`` (which
    cannot be undone: it changes the process) re-times eager, the PyTorch engine and the ORT engine.
    """
    import onnxruntime as ort

    from liteseg_ros.engines.cpu_tuning import set_num_threads, tune_malloc
    from liteseg_ros.engines.export import export_onnx
    from liteseg_ros.engines.onnxruntime import OnnxRuntimeEngine, session_options
    from liteseg_ros.engines.outputs import segmentation_outputs
    from liteseg_ros.engines.pytorch import PyTorchEngine

    set_num_threads(num_threads)
    h, w = input_size
    x = smooth_noise(1, h, w, torch.Generator().manual_seed(0))
    xn = x.numpy()
    model = model.eval()
    paths: list[tuple[str, str, Callable[[], Any]]] = []

    def eager() -> None:
        with torch.inference_mode():
            model(x)

    def eager_post() -> None:
        with torch.inference_mode():
            segmentation_outputs(model(x))

    paths.append(("pytorch eager fp32, logits only", "pytorch", eager))
    paths.append(("pytorch eager fp32 + torch post-processing", "pytorch", eager_post))
    pt = PyTorchEngine(model, "cpu", "fp32", channels_last=True, fold_bn=True, num_threads=num_threads)
    paths.append(("pytorch channels_last+folded BN, engine (uint8 out)", "pytorch", lambda: pt.infer(xn)))

    work = Path(workdir)
    raw = export_onnx(model, work / f"bench_raw_{h}x{w}.onnx", (h, w), postprocess=False)
    post = export_onnx(model, work / f"bench_post_{h}x{w}.onnx", (h, w), with_logits=False)
    sess = ort.InferenceSession(str(raw), session_options(num_threads), providers=["CPUExecutionProvider"])

    def ort_logits() -> np.ndarray:
        return sess.run(None, {"input": xn})[0]

    def ort_numpy_post() -> None:
        z = ort_logits()
        z.argmax(axis=1).astype(np.uint8)
        zmax = z.max(axis=1, keepdims=True)
        np.rint(255.0 / np.exp(z - zmax).sum(axis=1)).astype(np.uint8)

    paths.append(("onnxruntime fp32, logits only", "onnxruntime", ort_logits))
    paths.append(("onnxruntime fp32 + numpy argmax/confidence", "onnxruntime", ort_numpy_post))
    engine = OnnxRuntimeEngine(post, "cpu", "fp32", num_threads)
    paths.append(("onnxruntime fp32, in-graph post-processing (engine)", "onnxruntime",
                  lambda: engine.infer(xn)))
    red = export_onnx(model, work / f"bench_reduce_{h}x{w}.onnx", (h, w), method="reduce")
    engine_red = OnnxRuntimeEngine(red, "cpu", "fp32", num_threads)
    paths.append(("onnxruntime fp32, in-graph post-processing as ArgMax/ReduceMax", "onnxruntime",
                  lambda: engine_red.infer(xn)))
    with_z = export_onnx(model, work / f"bench_logits_{h}x{w}.onnx", (h, w), with_logits=True)
    engine_z = OnnxRuntimeEngine(with_z, "cpu", "fp32", num_threads)
    paths.append(("onnxruntime fp32, engine on a file with a logits output (not fetched)", "onnxruntime",
                  lambda: engine_z.infer(xn)))

    times = time_interleaved([fn for _, _, fn in paths], warmup, iters, log, block)
    if with_tuned_malloc and tune_malloc():
        # Phase 2, process-wide from here on: glibc keeps freed activations in the heap.
        again = ("pytorch eager fp32, logits only", "pytorch channels_last+folded BN, engine (uint8 out)",
                 "onnxruntime fp32, in-graph post-processing (engine)")
        tuned = [p for p in paths if p[0] in again]
        paths += [(f"{name} [tune_malloc]", backend, fn) for name, backend, fn in tuned]
        times += time_interleaved([fn for _, _, fn in tuned], warmup, iters, log, block)
    base = {"device": "cpu", "precision": "fp32", "size": f"{h}x{w}", "batch": 1, "threads": num_threads}
    return [row(name, t, backend=backend, mode="model", **base)
            for (name, backend, _), t in zip(paths, times, strict=True)]


def time_interleaved(fns: Sequence[Callable[[], Any]], warmup: int = 3, iters: int = 10,
                     log: Callable[[str], None] = print, block: int = 1) -> list[list[float]]:
    """Milliseconds per call for each of ``fns``, timed round-robin so that load changes on a shared
    machine hit every path alike and ratios stay meaningful.

    ``block`` > 1 runs each path ``block`` times per round and keeps only the last ``block - 1``
    calls: the first call after switching runtimes is discarded because the previous runtime's
    worker threads are still spin-waiting (OpenMP, ONNX Runtime and OpenVINO pools all spin for a
    while after a parallel region), which on a 2-core machine can halve the next path's speed.
    ``iters`` counts kept calls per path.
    """
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    keep = max(block - 1, 1)
    rounds = -(-iters // keep)
    for i in range(rounds):
        log(f"bench: round {i + 1}/{rounds}")
        for fn, t in zip(fns, times, strict=True):
            for j in range(block):
                t0 = time.perf_counter()
                fn()
                if block == 1 or j > 0:
                    t.append((time.perf_counter() - t0) * 1e3)
    return [t[:iters] for t in times]


def add_ratios(rows: list[dict[str, Any]], baseline: str) -> list[dict[str, Any]]:
    """Add ``speedup`` = baseline median / row median (rows measured in one run only)."""
    ref = next((r["median_ms"] for r in rows if r["name"] == baseline), None)
    for r in rows:
        r["speedup"] = round(ref / r["median_ms"], 2) if ref and r["median_ms"] else None
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width text table of rows (name, size, median, p99, fps, speedup when present)."""
    has_speedup = any(r.get("speedup") is not None for r in rows)
    width = max([len(r["name"]) for r in rows] + [4])
    head = f"{'name':<{width}}  {'size':>9}  {'median ms':>9}  {'p99 ms':>8}  {'fps':>7}"
    if has_speedup:
        head += f"  {'speedup':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        line = (f"{r['name']:<{width}}  {r['size']:>9}  {r['median_ms']:>9.2f}  {r['p99_ms']:>8.2f}  "
                f"{r['fps']:>7.1f}")
        if has_speedup:
            line += f"  {r['speedup']:>6.2f}x" if r.get("speedup") else f"  {'':>7}"
        lines.append(line)
    return "\n".join(lines)


def write_json(rows: list[dict[str, Any]], path: str | Path, **context: Any) -> Path:
    """Write ``{"context": ..., "rows": rows}`` (with torch/ORT versions and the machine) to ``path``."""
    import os
    import platform

    ctx = {"torch": torch.__version__, "machine": platform.machine(), "cpus": os.cpu_count(), **context}
    try:
        import onnxruntime

        ctx["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    safe_files.write_text(path, json.dumps({"context": ctx, "rows": rows}, indent=1))
    return path
