"""Benchmark of the CPU fast paths: every backend x precision, model-only and end to end.

Baseline: PyTorch eager fp32 forward alone (logits, no post-processing), in the same process with the
same allocator settings (``tune_malloc`` first, for every path) and the same thread count. Then for
PyTorch (channels_last + folded BN), ONNX Runtime fp32/int8 and OpenVINO fp32/bf16/int8:

- model: ``engine.infer`` on a ready normalised batch (network + in-graph argmax/confidence);
- e2e: ``Pipeline.run`` on a uint8 BGR generated scene at the network size: preprocess, infer,
  label, confidence, colour, overlay and every default mask group out;
- agreement: share of labels equal to PyTorch fp32 on held-out generated scenes (seeds >= 10000).

All paths are timed round-robin in blocks (``bench.time_interleaved``, ``--block``) so load on the shared
machine hits each alike and no path pays for the previous runtime's spinning threads; ratios are
within this one run. int8 comes from ``quantize.quantize_model`` (generated
calibration scenes). Prints one table and writes JSON.

    .venv/bin/python benchmarks/bench_cpu_paths.py --size 360x640 --threads 2 --json /tmp/bench_cpu_paths.json
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from liteseg_ros.commands.engines import add_interleaved_timing_args  # noqa: E402
from liteseg_ros.engines import EngineError, create_engine  # noqa: E402
from liteseg_ros.engines.cpu_tuning import set_num_threads, tune_malloc  # noqa: E402
from liteseg_ros.tools.bench import (  # noqa: E402
    random_weight_model,
    summarize,
    time_interleaved,
    write_json,
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, help="checkpoint (default: the demo weights, else random weights)")
    add_interleaved_timing_args(ap)
    ap.add_argument("--calib", type=int, default=32, help="generated calibration scenes for int8")
    ap.add_argument("--holdout", type=int, default=8, help="generated held-out scenes for the agreement")
    ap.add_argument("--cache-dir", type=Path, help="engine cache (default: a fresh temporary folder)")
    ap.add_argument("--recipe", type=int, action="append", default=[], metavar="N",
                    help="also time ONNX Runtime int8 made with the first N convolutions float (0 = the recipe "
                         "before the per-layer sweep), in the same round-robin; repeatable")
    ap.add_argument("--only-onnxruntime", action="store_true", help="skip the OpenVINO paths (shorter run)")
    ap.add_argument("--json", type=Path, default=Path("/tmp/bench_cpu_paths.json"))
    args = ap.parse_args(argv)

    malloc = tune_malloc()
    set_num_threads(args.threads)
    from liteseg_ros.classes import DEFAULT_MASK_GROUPS, ClassTable
    from liteseg_ros.engines.openvino import cpu_capabilities
    from liteseg_ros.model import load_checkpoint
    from liteseg_ros.pipeline import Pipeline, PipelineConfig, Wants
    from liteseg_ros.runtime import demo_weights_path
    from liteseg_ros.tools.quantize import (
        HOLDOUT_SEED,
        compare_on_samples,
        quantize_model,
        reference_pipeline,
        synthetic_samples,
    )

    weights = args.weights or (demo_weights_path() if demo_weights_path().is_file() else None)
    model = load_checkpoint(weights, map_location="cpu").eval() if weights else random_weight_model()
    h, w = args.size
    cache = args.cache_dir or Path(tempfile.mkdtemp(prefix="bench_cpu_paths_"))
    caps = cpu_capabilities()
    print(f"weights: {weights or 'random (demo weights absent)'}; CPU caps {','.join(sorted(caps))}; "
          f"threads {args.threads}; tune_malloc {malloc}; cache {cache}")

    t0 = time.perf_counter()
    q, _ = quantize_model(model, cache / "int8.onnx", (h, w), synthetic_samples(args.calib, (h, w), 0),
                          synthetic_samples(2, (h, w), HOLDOUT_SEED), ["onnxruntime"], args.threads,
                          calib_source="generated scenes", holdout_source="generated scenes", log=lambda m: None)
    print(f"int8 file made in {time.perf_counter() - t0:.1f} s")
    extra_q = []
    for n in args.recipe:
        qn, _ = quantize_model(model, cache / f"int8_first{n}.onnx", (h, w), synthetic_samples(args.calib, (h, w), 0),
                               synthetic_samples(2, (h, w), HOLDOUT_SEED), ["onnxruntime"], args.threads,
                               calib_source="generated scenes", holdout_source="generated scenes",
                               log=lambda m: None, float_input_convs=n)
        extra_q.append((f"onnxruntime int8 first {n} float", qn))

    paths = [("pytorch", "fp32", model), ("onnxruntime", "fp32", model), ("onnxruntime", "int8", q),
             ("openvino", "fp32", model), ("openvino", "bf16", model), ("openvino", "int8", q)]
    if args.only_onnxruntime:
        paths = [p for p in paths if p[0] != "openvino"]
    paths += [("onnxruntime", "int8", qn) for _, qn in extra_q]
    labels = {str(qn): name for name, qn in extra_q}
    engines, skipped = [], []
    for backend, precision, src in paths:
        if precision == "bf16" and "BF16" not in caps:
            skipped.append(f"openvino bf16: CPU does not report BF16 ({','.join(sorted(caps))})")
            continue
        try:
            engines.append(create_engine(src, backend, "cpu", precision, (h, w), num_threads=args.threads,
                                         cache_dir=cache, log=lambda m: None, warmup=False))
        except EngineError as exc:
            skipped.append(f"{backend} {precision}: {exc}")

    num_classes = int(getattr(model, "num_classes", 19))
    meta = getattr(model, "meta", None)
    classes = getattr(meta, "classes", None) or ClassTable.cityscapes()
    groups = classes.resolve_groups({g: list(v) for g, v in DEFAULT_MASK_GROUPS.items()})
    cfg = PipelineConfig(network_size=(h, w), mask_groups=groups,
                         **({"mean": tuple(meta.mean), "std": tuple(meta.std)} if meta is not None else {}))
    frame = synthetic_samples(1, (h, w), HOLDOUT_SEED + 100)[0].image
    wants = Wants(label=True, confidence=True, color=True, overlay=True, masks=None, boundary=False)
    pipes = [Pipeline(e, classes, cfg) for e in engines]
    batch, _ = pipes[0].preprocess([frame], "bgr") if pipes else (None, None)
    x = torch.from_numpy(batch)

    def eager() -> None:
        with torch.inference_mode():
            model(x)

    fns = [eager]
    stage_times: list[list[dict]] = [[] for _ in engines]
    for e in engines:
        fns.append(lambda e=e: e.infer(batch))
    for i, p in enumerate(pipes):
        def run(p=p, i=i) -> None:
            stage_times[i].append(p.run([frame], "bgr", wants)[0].timings)
        fns.append(run)
    times = time_interleaved(fns, args.warmup, args.iters, log=lambda m: None, block=args.block)
    eager_ms = summarize(times[0])["median_ms"]

    ref = reference_pipeline(model, (h, w))
    held = synthetic_samples(args.holdout, (h, w), HOLDOUT_SEED)
    rows = [{"name": "pytorch eager fp32 forward (logits only)", "backend": "pytorch", "precision": "fp32",
             "mode": "model", **summarize(times[0])}]
    n = len(engines)
    for i, e in enumerate(engines):
        m, e2e = summarize(times[1 + i]), summarize(times[1 + n + i])
        st = stage_times[i][args.warmup:]
        pre = float(np.median([s["preprocess"] for s in st]))
        post = float(np.median([s["postprocess"] for s in st]))
        infer = float(np.median([s["infer"] for s in st]))
        agree = compare_on_samples(e, ref, held)
        name = labels.get(e.info.extra.get("file", ""), f"{e.info.backend} {e.info.precision}")
        rows.append({"name": name, "backend": e.info.backend,
                     "precision": e.info.precision, "model": m, "e2e": e2e,
                     "e2e_speedup_vs_eager_forward": round(eager_ms / e2e["median_ms"], 2),
                     "model_speedup_vs_eager_forward": round(eager_ms / m["median_ms"], 2),
                     "preprocess_ms": round(pre, 3), "postprocess_ms": round(post, 3), "infer_ms": round(infer, 3),
                     "pre_plus_post_share_of_infer": round((pre + post) / infer, 3),
                     "label_agreement": agree["label_agreement"],
                     "miou_drop_points": agree.get("miou_drop_points"), "threads": e.info.extra.get("threads")})

    head = (f"{'path':<32} {'model ms':>8} {'e2e ms':>8} {'e2e fps':>8} {'e2e/eager':>9} {'pre ms':>6} "
            f"{'post ms':>7} {'(pre+post)/infer':>16} {'agree':>8} {'dmIoU':>6}")
    print(f"size {h}x{w}, {args.threads} threads; eager PyTorch fp32 forward alone: {eager_ms:.2f} ms "
          f"({1e3 / eager_ms:.1f} fps)")
    print(head)
    print("-" * len(head))
    for r in rows[1:]:
        dm = "-" if r["miou_drop_points"] is None else f"{r['miou_drop_points']:+.2f}"
        print(f"{r['name']:<32} {r['model']['median_ms']:>8.2f} {r['e2e']['median_ms']:>8.2f} {r['e2e']['fps']:>8.1f} "
              f"{r['e2e_speedup_vs_eager_forward']:>8.2f}x {r['preprocess_ms']:>6.2f} {r['postprocess_ms']:>7.2f} "
              f"{100 * r['pre_plus_post_share_of_infer']:>15.1f}% {100 * r['label_agreement']:>7.2f}% {dm:>6}")
    for s in skipped:
        print(f"skipped: {s}")
    path = write_json(rows, args.json, size=f"{h}x{w}", threads=args.threads, weights=str(weights or "random"),
                      cpu_caps=sorted(caps), tune_malloc=malloc, skipped=skipped, num_classes=num_classes)
    print(f"json: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
