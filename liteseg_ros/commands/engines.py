"""The ``liteseg export``, ``liteseg bench`` and ``liteseg quantize`` subcommands (parsers + handlers).

Ring 4, the command layer: parses arguments, calls the engines library (``liteseg_ros.engines``)
and prints; the library itself holds no argparse code. liteseg_ros/cli.py registers these parsers.
Handlers take the parsed ``argparse.Namespace`` and return an exit status (``defaults.EXIT_*``):
2 when the command cannot start from what it was given (weights, folders, option values), 1 when
it fails while working (an export, quantization or benchmark error).
"""
from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from liteseg_ros.defaults import (
    BACKBONES,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    NETWORK_SIZE,
    format_size,
    parse_size,
)
from liteseg_ros.engines.base import EngineError

_SIZE = format_size(NETWORK_SIZE)
#: What a failing stage of a handler raises: the engines' errors and bad values or files.
_ERRORS = (EngineError, ValueError, FileNotFoundError, argparse.ArgumentTypeError)


class _Failed(Exception):
    """A handler stage failed; ``status`` is the exit status it means."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _stage(status: int, fn: Callable[[], Any]) -> Any:
    """``fn()``, with its errors turned into a :class:`_Failed` of ``status`` (input or work stage)."""
    try:
        return fn()
    except _Failed:
        raise
    except _ERRORS as exc:
        raise _Failed(str(exc), status) from None


def _report(command: str, exc: _Failed) -> int:
    print(f"liteseg {command}: error: {exc}", file=sys.stderr)
    return exc.status


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (one of)")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", help="LiteSeg checkpoint (.pth/.pt) read with load_checkpoint, a registered name "
                     "(`liteseg weights list`; fetched on first use) or 'demo'")
    src.add_argument("--random-weights", action="store_true",
                     help="seeded random weights (no checkpoint needed); pick the network with --backbone")
    g.add_argument("--backbone", default=BACKBONES[0], choices=BACKBONES,
                   help="backbone for --random-weights (default: %(default)s)")
    g.add_argument("--num-classes", type=int, default=19, help="classes for --random-weights (default: 19)")
    g.add_argument("--seed", type=int, default=0, help="seed for --random-weights (default: 0)")


def _model(args: argparse.Namespace):
    """The module the arguments name (random weights, a checkpoint, a registered name, 'demo')."""
    if args.random_weights:
        from liteseg_ros.tools.bench import random_weight_model

        return random_weight_model(args.backbone, args.num_classes, args.seed)
    from liteseg_ros.engines import load_module
    from liteseg_ros.model import CheckpointError
    from liteseg_ros.runtime import ModelLoadError, resolve_weights

    try:
        path = resolve_weights(args.weights, allow_download=True, progress=True,
                               log=lambda m: print(m, file=sys.stderr))
        return load_module(path)
    except (ModelLoadError, CheckpointError) as exc:
        raise EngineError(str(exc)) from None


def _weights_file(args: argparse.Namespace):
    """The checkpoint file ``--weights`` means ('demo', a registered name, a path), or None for random weights."""
    if args.random_weights or not args.weights:
        return None
    from liteseg_ros.runtime import resolve_weights

    return resolve_weights(args.weights, allow_download=False, log=lambda m: print(m, file=sys.stderr))


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``export``: LiteSeg -> ONNX (verified against PyTorch) or a cached TensorRT engine."""
    p = subparsers.add_parser(
        "export", help="export a model to ONNX or build a TensorRT engine",
        description="Export LiteSeg with argmax and confidence inside the graph (outputs: label uint8, "
                    "confidence uint8[, logits]). ONNX files are checked against PyTorch fp32 with ONNX Runtime.")
    _add_model_args(p)
    p.add_argument("--format", choices=("onnx", "tensorrt"), default="onnx", help="default: %(default)s")
    p.add_argument("--size", type=parse_size, default=NETWORK_SIZE, metavar="HxW",
                   help=f"network input size, height x width (default: {_SIZE})")
    p.add_argument("--output", "-o", type=Path, help="output file (default: liteseg_<backbone>_<HxW>.onnx; "
                   "for tensorrt, a copy of the cached engine)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default: %(default)s)")
    p.add_argument("--dynamic", action="store_true", help="ONNX: free height and width (batch is always free)")
    p.add_argument("--with-logits", action="store_true", help="ONNX: also output float32 logits")
    p.add_argument("--no-verify", action="store_true", help="ONNX: skip the ONNX Runtime vs PyTorch check")
    p.add_argument("--precision", choices=("fp32", "fp16"),
                   help="the types in the graph (TensorRT builds what the file says): tensorrt default fp16; onnx "
                        "default fp32, fp16 is the file TensorRT and ONNX Runtime CUDA run (verified against fp32 "
                        "with the fp16 tolerance, labels >= 99 %% equal)")
    p.add_argument("--device", default="cuda", help="tensorrt: cuda or cuda:N (default: %(default)s)")
    p.add_argument("--max-batch", type=int, default=1, help="tensorrt: largest batch (default: %(default)s)")
    p.add_argument("--cache-dir", type=Path, help="tensorrt engine cache (default: $LITESEG_CACHE_DIR or ~/.cache/liteseg_ros/engines)")
    p.add_argument("--rebuild", action="store_true", help="tensorrt: ignore a cached engine")
    p.set_defaults(func=run_export)
    return p


def run_export(args: argparse.Namespace) -> int:
    """Handler of ``liteseg export``."""
    try:
        model = _stage(EXIT_USAGE, lambda: _model(args))
        return _stage(EXIT_FAILURE, lambda: _export(args, model))
    except _Failed as exc:
        return _report("export", exc)


def _export(args: argparse.Namespace, model) -> int:
    h, w = args.size
    if args.format == "tensorrt":
        from liteseg_ros.engines import build_tensorrt_engine

        plan = build_tensorrt_engine(model, (h, w), args.precision or "fp16", args.device, args.max_batch,
                                     args.cache_dir, args.rebuild)
        if args.output:
            shutil.copyfile(plan, args.output)
            print(f"engine: {args.output} (cached as {plan})")
        else:
            print(f"engine: {plan}")
        return EXIT_OK
    from liteseg_ros.engines.export import FP16_MIN_LABEL_AGREEMENT, export_onnx, verify_onnx

    precision = args.precision or "fp32"
    tag = "" if precision == "fp32" else f"_{precision}"
    out = args.output or Path(f"liteseg_{getattr(model, 'backbone', 'model')}_{h}x{w}{tag}.onnx")
    export_onnx(model, out, (h, w), dynamic=args.dynamic, opset=args.opset, with_logits=args.with_logits,
                precision=precision)
    print(f"onnx: {out} ({precision}, opset {args.opset}, {'dynamic' if args.dynamic else 'fixed'} {h}x{w}, "
          f"outputs label, confidence{', logits' if args.with_logits else ''})")
    if not args.no_verify:
        sizes = [(h, w)] + ([(h + 32, w + 64)] if args.dynamic else [])
        # fp16 is held to the fp16 tolerance on labels; its confidence difference is printed, not enforced
        tol = {} if precision == "fp32" else {"min_agreement": FP16_MIN_LABEL_AGREEMENT, "max_conf_diff": 255}
        for rep in verify_onnx(model, out, sizes=sizes, batch=1, **tol):
            logit = "" if rep.logits_max_abs_diff is None else f", logits max |diff| {rep.logits_max_abs_diff:.2e}"
            print(f"verified at {rep.size[0]}x{rep.size[1]}: labels identical on {rep.label_agreement:.4%} "
                  f"of pixels, confidence max diff {rep.confidence_max_diff}{logit}")
    return EXIT_OK


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``bench``: model-only and end-to-end timings per backend, precision and size."""
    p = subparsers.add_parser(
        "bench", help="time engines (model-only and end-to-end)",
        description="Median and p99 latency of each available backend x precision x size, after warm-up; "
                    "prints a table and writes JSON.")
    _add_model_args(p)
    p.add_argument("--backends", default="all",
                   help="comma list of pytorch,onnxruntime,openvino,tensorrt or 'all' available (default: all)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument("--precisions", default="fp32", help="comma list of fp32,fp16,bf16,int8 (default: fp32)")
    p.add_argument("--size", type=parse_size, action="append", metavar="HxW",
                   help=f"network size; repeat for several (default: {_SIZE})")
    p.add_argument("--image-size", default="720x1280", metavar="HxW|none",
                   help="camera frame size for end-to-end rows, or 'none' (default: %(default)s)")
    p.add_argument("--batch", type=int, default=1, help="batch size (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch and ONNX Runtime")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first (default: %(default)s)")
    p.add_argument("--iters", type=int, default=20, help="timed runs (default: %(default)s)")
    p.add_argument("--compile", action="store_true", help="pytorch: torch.compile")
    p.add_argument("--tune-malloc", action="store_true", help="apply cpu_tuning.tune_malloc() first")
    p.add_argument("--cache-dir", type=Path, help="ONNX/TensorRT cache (default: ~/.cache/liteseg_ros/engines)")
    p.add_argument("--json", type=Path, default=Path("/tmp/liteseg_bench.json"), help="default: %(default)s")
    p.set_defaults(func=run_bench)
    return p


def run_bench(args: argparse.Namespace) -> int:
    """Handler of ``liteseg bench``; exit 1 when no backend could be timed."""
    from liteseg_ros.engines import BACKENDS, available_backends

    def inputs():
        names = None if args.backends == "all" else args.backends.split(",")
        for n in names or ():
            if n not in BACKENDS or n == "auto":
                raise EngineError(f"--backends: {n!r} is not one of {', '.join(BACKENDS[1:])}")
        image = None if args.image_size.lower() == "none" else parse_size(args.image_size)
        return _model(args), names, image

    try:
        if args.tune_malloc:
            from liteseg_ros.engines.cpu_tuning import tune_malloc

            print(f"tune_malloc applied: {tune_malloc()}")
        model, names, image = _stage(EXIT_USAGE, inputs)
        if names is None:
            avail = available_backends()
            names = [n for n in avail if avail[n] == "ok"]
        return _stage(EXIT_FAILURE, lambda: _bench(args, model, names, image))
    except _Failed as exc:
        return _report("bench", exc)


def _bench(args: argparse.Namespace, model, names: list[str], image) -> int:
    from liteseg_ros.engines import create_engine
    from liteseg_ros.tools.bench import bench_engine, format_table, write_json

    rows, skipped = [], []
    for size in args.size or [NETWORK_SIZE]:
        for backend in names:
            for precision in args.precisions.split(","):
                unmet: list[str] = []  # e.g. int8 without a cached int8 file: the engine runs another precision
                try:
                    engine = create_engine(model, backend, args.device, precision, size, args.threads,
                                           args.cache_dir, args.compile, log=lambda m: None,
                                           max_batch=args.batch, warmup=False, warn=unmet.append)
                except EngineError as exc:
                    skipped.append(f"{backend} {precision} {size[0]}x{size[1]}: {exc}")
                    continue
                if unmet:
                    skipped.append(f"{backend} {precision} {size[0]}x{size[1]}: {'; '.join(unmet)}")
                    engine.close()
                    continue
                rows += bench_engine(engine, size, args.batch, args.warmup, args.iters, image)
                engine.close()
    if rows:
        print(format_table(rows))
    for s in skipped:
        print(f"skipped: {s}")
    path = write_json(rows, args.json, skipped=skipped, device=args.device, threads=args.threads)
    print(f"json: {path}")
    return EXIT_OK if rows else EXIT_FAILURE


def add_quantize_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``quantize``: int8 QDQ model for ONNX Runtime / OpenVINO plus a label-agreement report."""
    p = subparsers.add_parser(
        "quantize", help="int8 model for the CPU runtimes, with a label-agreement report",
        description="Static int8 quantization (QDQ, per-channel weights) calibrated on your images or on "
                    "generated scenes, checked against PyTorch fp32 on held-out images (label agreement, "
                    "per-class IoU, mIoU). Writes the .onnx and <stem>.<backend>.report.json/.txt. Without "
                    "--out the file goes into the engine cache, where `precision: int8` and `precision: auto` "
                    "find it; with --out, point `weights` at it (backend onnxruntime or openvino).")
    _add_model_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--calib", type=Path, metavar="DIR",
                     help="folder of your camera images; every 5th is held out for the report")
    src.add_argument("--synthetic", type=int, metavar="N", help="calibrate on N generated scenes")
    p.add_argument("--backend", choices=("onnxruntime", "openvino", "all"), default="onnxruntime",
                   help="runtime the report is measured with (the file runs in both; default: %(default)s)")
    p.add_argument("--out", type=Path, help="output .onnx (default: the engine cache entry for these weights)")
    p.add_argument("--size", type=parse_size, default=NETWORK_SIZE, metavar="HxW",
                   help=f"network input size (default: {_SIZE})")
    p.add_argument("--holdout", type=int, default=16, metavar="N",
                   help="generated held-out scenes (seeds 10000..) when --calib has fewer than 5 images or "
                        "with --synthetic (default: %(default)s)")
    p.add_argument("--method", choices=("minmax", "percentile", "entropy"), default="percentile",
                   help="activation range calibration: percentile (99.999) kept 0.3-1.2 points more labels "
                        "than minmax on the demo model but calibrates ~4x slower (default: %(default)s)")
    p.add_argument("--float-input-convs", type=int, default=2, metavar="N",
                   help="leave the first N convolutions from the input in float (default: %(default)s, the "
                        "recipe the per-layer sweep chose on the demo weights; the classifier is always float)")
    p.add_argument("--float-node", action="append", default=[], metavar="NAME",
                   help="also leave this graph node in float (repeatable; names as --sensitivity prints them); "
                        "with --out only, the engine cache holds the default recipe")
    p.add_argument("--sensitivity", action="store_true",
                   help="instead of writing a model, print the per-layer sensitivity: the held-out label "
                        "agreement with each convolution alone left in float (one calibration, ~10 s per layer "
                        "at 360x640 on 2 cores)")
    p.add_argument("--sensitivity-limit", type=int, default=None, metavar="N",
                   help="--sensitivity: sweep only the first N convolutions from the input")
    p.add_argument("--threads", type=int, default=None, help="CPU threads")
    p.add_argument("--cache-dir", type=Path, help="engine cache (default: ~/.cache/liteseg_ros/engines)")
    p.set_defaults(func=run_quantize)
    return p


def run_quantize(args: argparse.Namespace) -> int:
    """Handler of ``liteseg quantize``."""
    from liteseg_ros.engines.cpu_tuning import set_num_threads
    from liteseg_ros.tools.quantize import (
        DEFAULT_FLOAT_INPUT_CONVS,
        HOLDOUT_SEED,
        folder_samples,
        split_folder,
        synthetic_samples,
    )

    def inputs():
        if args.synthetic is not None and args.synthetic < 1:
            raise EngineError(f"--synthetic must be >= 1, got {args.synthetic}")
        if args.holdout < 1:
            raise EngineError(f"--holdout must be >= 1, got {args.holdout}")
        if (args.float_node or args.float_input_convs != DEFAULT_FLOAT_INPUT_CONVS) and args.out is None \
                and not args.sensitivity:
            raise EngineError("--float-node / --float-input-convs change the recipe: write the model with --out "
                              "(the engine cache entry is the default recipe's)")
        size = args.size
        if args.calib is not None:
            calib, held = split_folder(folder_samples(args.calib))
            calib_src, held_src = str(args.calib), f"every 5th image of {args.calib}"
            if not held:
                held, held_src = synthetic_samples(args.holdout, size, HOLDOUT_SEED), "generated scenes"
        else:
            calib, calib_src = synthetic_samples(args.synthetic, size, 0), "generated scenes (seeds 0..)"
            held = synthetic_samples(args.holdout, size, HOLDOUT_SEED)
            held_src = f"generated scenes (seeds {HOLDOUT_SEED}..)"
        return _model(args), (calib, calib_src), (held, held_src)

    try:
        if args.threads:
            set_num_threads(args.threads)
        model, calib, held = _stage(EXIT_USAGE, inputs)
        return _stage(EXIT_FAILURE, lambda: _quantize(args, model, calib, held))
    except _Failed as exc:
        return _report("quantize", exc)


def _quantize(args: argparse.Namespace, model, calib: tuple, held: tuple) -> int:
    from liteseg_ros.tools.quantize import (
        QUANT_BACKENDS,
        format_report,
        format_sensitivity,
        int8_path,
        layer_sensitivity,
        quantize_model,
        report_paths,
    )

    size = args.size
    if args.sensitivity:
        res = layer_sensitivity(model, size, calib[0], held[0], args.method, args.threads, args.float_input_convs,
                                args.float_node, args.sensitivity_limit, log=lambda m: print(m, file=sys.stderr))
        print(format_sensitivity(res), end="")
        return EXIT_OK
    # keyed like the node's look-up: by the checkpoint file when there is one ('demo' and names resolved)
    source = _weights_file(args) or model
    out = args.out or int8_path(source, size, args.cache_dir)
    backends = list(QUANT_BACKENDS) if args.backend == "all" else [args.backend]
    path, reports = quantize_model(model, out, size, calib[0], held[0], backends, args.threads, args.method,
                                   calib[1], held[1], float_input_convs=args.float_input_convs,
                                   float_nodes=args.float_node)
    if not args.out:  # in the engine cache: recorded, so the node's look-up trusts it
        from liteseg_ros.engines.cache import model_key, write_record

        write_record(path, model_key(source))
    for b, rep in reports.items():
        print(format_report(rep), end="")
        jpath, tpath = report_paths(path, b)
        print(f"report: {jpath} and {tpath}\n")
    print(f"int8 model: {path}")
    return EXIT_OK


def add_interleaved_timing_args(ap: argparse.ArgumentParser) -> None:
    """The options every round-robin CPU benchmark takes (``benchmarks/bench_engines.py``,
    ``bench_cpu_paths.py``): --size, --threads, --warmup, --iters and --block (see
    :func:`time_interleaved`)."""
    ap.add_argument("--size", type=parse_size, default=NETWORK_SIZE, metavar="HxW")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--block", type=int, default=3,
                    help="calls per path per round, the first discarded (threads of the previous runtime spin)")
