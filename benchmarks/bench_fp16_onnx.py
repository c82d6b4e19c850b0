"""What the fp16 ONNX export keeps in float32: labels and confidence vs PyTorch fp32, per variant, on the CPU.

TensorRT 11 builds only strongly typed networks, so an fp16 engine runs exactly the types of its fp16
ONNX file (``export_onnx(precision='fp16')``). This measures, with the trained demo weights on held-out
generated scenes (seeds >= 10000), how far each candidate placement of the fp16/fp32 boundary moves the
outputs from PyTorch fp32:

- ``fp16``: the whole network in fp16, logits cast to float32 after the final upsampling; argmax and
  the softmax confidence in float32 (the default export);
- ``fp16+fp32-upsample``: the classifier output cast to float32 before the final bilinear upsampling
  (``fp32_tail='last_conv'``), which then also runs in float32.

The files run in ONNX Runtime on the CPU. The CPU provider has few fp16 kernels, so ONNX Runtime inserts
casts and computes each such node in float32, rounding its output to fp16: every activation is stored
in fp16 as on a GPU, while the accumulation is float32 (as in TensorRT's fp16 convolutions). No timings:
fp16 is a GPU precision (benchmarks/gpu_report.sh times it there).

The last two rows answer whether the post-processing needs float32: the same fp16 logits (PyTorch on the
CPU, so not bit-equal to ONNX Runtime's) with argmax and the softmax confidence in float32, then in fp16.

    .venv/bin/python benchmarks/bench_fp16_onnx.py --size 180x320 --scenes 8 --json /tmp/bench_fp16_onnx.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from liteseg_ros.defaults import parse_size  # noqa: E402


def scenes(n: int, size: tuple[int, int], first_seed: int = 10000) -> np.ndarray:
    """``n`` held-out generated scenes, normalised as the demo weights expect, (n, 3, h, w) float32."""
    from liteseg_ros.classes import IMAGENET_MEAN, IMAGENET_STD
    from liteseg_ros.synthetic import SceneConfig, generate_scene

    cfg = SceneConfig(height=size[0], width=size[1])
    rgb = np.stack([generate_scene(s, cfg).image[:, :, ::-1] for s in range(first_seed, first_seed + n)])
    x = (rgb.astype(np.float32) / 255.0 - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _row(name: str, label: np.ndarray, conf: np.ndarray, ref_label: np.ndarray, ref_conf: np.ndarray,
         file_mb: float) -> dict:
    diff = np.abs(conf.astype(np.int16) - ref_conf.astype(np.int16))
    return {"variant": name, "label_agreement": float(np.mean(label == ref_label)),
            "conf_within_1": float(np.mean(diff <= 1)), "conf_within_3": float(np.mean(diff <= 3)),
            "conf_max_diff": int(diff.max()), "file_mb": file_mb}


def _torch_fp16(model, x: np.ndarray, post: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels and confidence from the fp16 network's logits (PyTorch CPU), post-processed in ``post``."""
    import torch

    from liteseg_ros.engines.export import Fp16Network
    from liteseg_ros.engines.outputs import segmentation_outputs

    with torch.inference_mode():
        z = Fp16Network(model)(torch.from_numpy(x))
        if post == "fp32":
            label, conf = segmentation_outputs(z)
            return label.numpy(), conf.numpy()
        z = z.half()
        zmax, label = torch.max(z, dim=1)
        denom = torch.exp(z - zmax.unsqueeze(1)).sum(dim=1)
        conf = torch.round(torch.tensor(255.0, dtype=torch.float16) / denom).float().clamp_(0, 255)
    return label.to(torch.uint8).numpy(), conf.to(torch.uint8).numpy()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=parse_size, default=(180, 320), metavar="HxW")
    ap.add_argument("--scenes", type=int, default=8, help="held-out generated scenes (seeds 10000..)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=Path("/tmp/bench_fp16_onnx.json"))
    args = ap.parse_args(argv)

    import onnxruntime as ort

    from liteseg_ros.engines.cpu_tuning import set_num_threads
    from liteseg_ros.engines.export import export_onnx, reference_outputs
    from liteseg_ros.engines.onnxruntime import session_options
    from liteseg_ros.model import load_checkpoint
    from liteseg_ros.runtime import demo_weights_path

    set_num_threads(args.threads)
    model = load_checkpoint(demo_weights_path()).eval()
    x = scenes(args.scenes, args.size)
    ref_label, ref_conf, _ = reference_outputs(model, x)
    variants = {"fp32": ("fp32", None), "fp16": ("fp16", None), "fp16+fp32-upsample": ("fp16", "last_conv")}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (precision, tail) in variants.items():
            path = export_onnx(model, Path(tmp) / f"{name}.onnx", args.size, precision=precision, fp32_tail=tail)
            sess = ort.InferenceSession(str(path), session_options(args.threads), providers=["CPUExecutionProvider"])
            outs = [sess.run(["label", "confidence"], {"input": x[i:i + 1]}) for i in range(len(x))]
            label, conf = (np.concatenate(o) for o in zip(*outs, strict=True))
            rows.append(_row(name, label, conf, ref_label, ref_conf, path.stat().st_size / 1e6))
    for post in ("fp32", "fp16"):
        label, conf = _torch_fp16(model, x, post)
        rows.append(_row(f"torch fp16, {post} post", label, conf, ref_label, ref_conf, float("nan")))
    print(f"demo weights, {args.scenes} held-out scenes at {args.size[0]}x{args.size[1]}, ONNX Runtime CPU, "
          f"{args.threads} threads; reference PyTorch fp32")
    print(f"{'variant':<22} {'labels equal':>12} {'conf +-1':>9} {'conf +-3':>9} {'conf max':>8} {'file MB':>8}")
    for r in rows:
        print(f"{r['variant']:<22} {100 * r['label_agreement']:>11.3f}% {100 * r['conf_within_1']:>8.3f}% "
              f"{100 * r['conf_within_3']:>8.3f}% {r['conf_max_diff']:>8} {r['file_mb']:>8.2f}")
    args.json.write_text(json.dumps({"size": list(args.size), "scenes": args.scenes, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
