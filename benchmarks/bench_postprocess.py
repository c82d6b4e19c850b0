"""Pipeline pre/post-processing at camera resolutions, this tree against a baseline tree, interleaved.

The node's per-frame overhead outside the forward, without ROS: ``Pipeline.preprocess`` and
``Pipeline.postprocess`` per output (label, confidence, colour, overlay, masks, boundary) for a
360x640 network at 640x360, 1280x720, 1920x1080 and 2048x1024 cameras. With ``--baseline DIR`` (a
checkout of an older commit, e.g. ``git worktree add /tmp/base HEAD~3``) the baseline's
``pipeline.py`` runs in the same process, alternating call by call with this tree's, so machine load
hits both alike; the table gives both and their ratio. Best-of-N (min) is the figure to compare on
a shared machine; medians are in the JSON. malloc is tuned as in the node (``tune_malloc``).

    .venv/bin/python benchmarks/bench_postprocess.py --baseline /tmp/base --messages --json /tmp/bench_post.json
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from liteseg_ros.classes import ClassTable  # noqa: E402
from liteseg_ros.engines.base import Engine, EngineInfo, EngineOutput  # noqa: E402
from liteseg_ros.engines.cpu_tuning import tune_malloc  # noqa: E402

CAMERAS = ((360, 640), (720, 1280), (1080, 1920), (1024, 2048))


class FixedEngine(Engine):
    """Returns one fixed network-size label/confidence: the forward is not what is measured here."""

    num_classes = 19
    info = EngineInfo("fixed", "cpu", "fp32")

    def __init__(self, label: np.ndarray, conf: np.ndarray) -> None:
        self.label, self.conf = label, conf

    def _infer(self, batch, want_confidence, want_logits):
        n = len(batch)
        return EngineOutput(np.stack([self.label] * n), np.stack([self.conf] * n) if want_confidence else None)


def load_pipeline(tree: Path):
    """``liteseg_ros/pipeline.py`` of ``tree`` as its own module, with that tree's ``segmentation.py``
    (the pipeline's building blocks live there); the other ring-0 modules are shared."""
    tag = abs(hash(str(tree)))
    mods = {}
    for name in ("segmentation", "pipeline"):
        spec = importlib.util.spec_from_file_location(f"{name}_{tag}", tree / "liteseg_ros" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # dataclasses look their module up there
        saved = sys.modules.get("liteseg_ros.segmentation")
        if "segmentation" in mods:  # the tree's pipeline imports the tree's segmentation
            sys.modules["liteseg_ros.segmentation"] = mods["segmentation"]
        try:
            spec.loader.exec_module(mod)
        finally:
            if saved is not None:
                sys.modules["liteseg_ros.segmentation"] = saved
        mods[name] = mod
    return mods["pipeline"]


def scene(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A blocky label like a real one (regions, road at the bottom): LUTs and scans see real runs."""
    import cv2

    lab = cv2.resize(rng.integers(0, 19, (h // 8, w // 8), dtype=np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    lab[h * 2 // 3:] = np.where(rng.random((h - h * 2 // 3, w)) < 0.8, 0, lab[h * 2 // 3:])
    return lab


def message_rows(pipe, label, conf, classes, repeat: int, nh: int, nw: int) -> list[dict]:
    """Rows 'recv: decode' and 'publish: build 7 msgs': base = the rclpy message path, new = wire."""
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import Image

    from liteseg_ros import contract, image_codec, wire
    from liteseg_ros.interfaces import rclpy_types
    from liteseg_ros.segmentation import Wants

    header = rclpy_types("std_msgs/msg/Header")(frame_id="camera")

    rows = []
    rng = np.random.default_rng(1)
    for cam in CAMERAS:
        img = rng.integers(0, 256, (*cam, 3), dtype=np.uint8)
        raw = serialize_message(image_codec.fill_image(Image(), img, "bgr8"))
        seg = pipe.postprocess(label, conf, pipe_geometry(pipe, cam, nh, nw), img, "bgr")
        outs = [(seg.label, "mono8"), (seg.confidence, "mono8"), (seg.color, "rgb8"), (seg.overlay, "bgr8"),
                *((m, "mono8") for m in seg.masks.values())]
        cases = {
            "recv: decode": {"base": lambda raw=raw: image_codec.decode_any(deserialize_message(raw, Image)),
                             "new": lambda raw=raw: image_codec.decode_any(wire.parse_image(raw))},
            f"publish: build {len(outs)} msgs": {
                "base": lambda outs=outs: [serialize_message(image_codec.fill_image(Image(), a, e)) for a, e in outs],
                "new": lambda outs=outs: [wire.image_bytes(a, e) for a, e in outs]},
            # what the contract adds on top of the bare serializer: base = wire directly, new = the
            # contract's frame_messages with the node's factory (images + boundary, as published)
            "publish: through the contract": {
                "base": lambda outs=outs: [wire.image_bytes(a, e) for a, e in outs],
                "new": lambda seg=seg: contract.frame_messages(rclpy_types, header, seg, Wants.all(),
                                                               wire.image_bytes)},
        }
        for stage, calls in cases.items():
            times = interleaved(calls, repeat)
            rows.append({"camera": f"{cam[1]}x{cam[0]}", "stage": stage,
                         **{f"{k}_min_ms": min(v) for k, v in times.items()},
                         **{f"{k}_median_ms": statistics.median(v) for k, v in times.items()}})
    return rows


def interleaved(calls: dict[str, Callable[[], object]], repeat: int) -> dict[str, list[float]]:
    """Milliseconds per call of each named call, round-robin (``time_interleaved``: one warm-up call each)."""
    from liteseg_ros.tools.bench import time_interleaved

    times = time_interleaved(list(calls.values()), warmup=1, iters=repeat, log=lambda m: None)
    return dict(zip(calls, times, strict=True))


#: the outputs of the throughput target (label, overlay and one mask subscribed)
TARGET = "label+overlay+mask"


def target_wants(none: dict) -> dict:
    return {**none, "overlay": True, "masks": frozenset({"drivable"})}


def forward_rows(pipes, label, conf, repeat: int, nh: int, nw: int, threads: int) -> list[dict]:
    """Pre + post against the ONNX Runtime fp32 forward (demo weights, the network size), interleaved
    call by call in this process so machine load hits the forward and the stages alike."""
    from liteseg_ros import params
    from liteseg_ros.runtime import build_pipeline

    values = {**params.defaults(), "network_width": nw, "network_height": nh, "backend": "onnxruntime",
              "precision": "fp32", "num_threads": threads, "weights": "demo"}
    ort, _ = build_pipeline(params.pipeline_settings(values), log=lambda m: None)
    rows = []
    rng = np.random.default_rng(2)
    none = dict(label=True, confidence=False, color=False, overlay=False, masks=frozenset(), boundary=False)
    for cam in CAMERAS:
        img = rng.integers(0, 256, (*cam, 3), dtype=np.uint8)
        batch, _ = ort.preprocess([img])
        calls = {"forward": lambda b=batch: ort.engine.infer(b)}
        for k, (mod, pipe) in pipes.items():
            g = mod.Geometry.fit(cam, (nh, nw), "stretch")
            calls[f"{k} pre"] = lambda p=pipe, img=img: p.preprocess([img])
            for name, w in (("all", mod.Wants()), (TARGET, mod.Wants(**target_wants(none)))):
                calls[f"{k} post {name}"] = lambda p=pipe, w=w, g=g, img=img: p.postprocess(label, conf, g, img,
                                                                                           "bgr", w)
        times = interleaved(calls, repeat)
        for stat, fn in (("min", min), ("median", statistics.median)):
            fwd = fn(times["forward"])
            for k in pipes:
                for name in ("all", TARGET):
                    pre, post = fn(times[f"{k} pre"]), fn(times[f"{k} post {name}"])
                    rows.append({"camera": f"{cam[1]}x{cam[0]}", "tree": k, "outputs": name, "stat": stat,
                                 "forward_ms": fwd, "pre_ms": pre, "post_ms": post, "share": (pre + post) / fwd})
    return rows


def pipe_geometry(pipe, cam, nh: int, nw: int):
    from liteseg_ros.pipeline import Geometry

    return Geometry.fit(cam, (nh, nw), "stretch")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", type=Path, help="an older source tree to compare with (same process)")
    ap.add_argument("--repeat", type=int, default=25)
    ap.add_argument("--network", default="360x640")
    ap.add_argument("--cameras", default="640x360,1280x720,1920x1080,2048x1024", help="WxH list")
    ap.add_argument("--cv-threads", type=int, default=0,
                    help="cv2.setNumThreads (0 = OpenCV's default, as in the node); 1 gives steadier figures "
                         "on a loaded machine, where a parallel step waits for its slowest thread")
    ap.add_argument("--messages", action="store_true",
                    help="also the message side (needs rclpy): receiving a raw bgr8 frame (old: "
                         "deserialize_message + decode; new: wire.parse_image + decode) and building the 7 "
                         "output messages (old: fill_image + the conversion and serialization publish() does; "
                         "new: wire.image_bytes), interleaved; DDS transport excluded")
    ap.add_argument("--forward", action="store_true",
                    help="also time the ONNX Runtime fp32 forward (demo weights, --network) interleaved with "
                         "preprocess and postprocess, and print (pre + post) / forward per camera")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads for --forward")
    ap.add_argument("--json", default="/tmp/bench_postprocess.json")
    a = ap.parse_args()
    tune_malloc()
    if a.cv_threads:
        import cv2

        cv2.setNumThreads(a.cv_threads)
    global CAMERAS
    CAMERAS = tuple((int(c.split("x")[1]), int(c.split("x")[0])) for c in a.cameras.split(","))
    nh, nw = (int(v) for v in a.network.split("x"))
    rng = np.random.default_rng(0)
    classes = ClassTable.cityscapes()
    groups = classes.resolve_groups({"drivable": ["road"], "walkable": ["sidewalk"], "dynamic": ["car", "person"]})
    label, conf = scene(nh, nw, rng), rng.integers(0, 256, (nh, nw), dtype=np.uint8)
    trees = {"new": REPO} | ({"base": a.baseline.resolve()} if a.baseline else {})
    pipes = {}
    for name, tree in trees.items():
        mod = load_pipeline(tree)
        cfg = mod.PipelineConfig(network_size=(nh, nw), mask_groups=groups)
        pipes[name] = (mod, mod.Pipeline(FixedEngine(label, conf), classes, cfg))
    rows = []
    for cam in CAMERAS:
        img = rng.integers(0, 256, (*cam, 3), dtype=np.uint8)
        none = dict(label=True, confidence=False, color=False, overlay=False, masks=frozenset(), boundary=False)
        stages = {"preprocess": None, "post: all": {}, "post: label only": none,
                  "post: +confidence": {**none, "confidence": True}, "post: +color": {**none, "color": True},
                  "post: +overlay": {**none, "overlay": True}, "post: +masks (3)": {**none, "masks": None},
                  "post: +boundary": {**none, "boundary": True}, "post: " + TARGET: target_wants(none)}
        for stage, wants in stages.items():
            calls = {}
            for k, (mod, pipe) in pipes.items():
                if wants is None:
                    calls[k] = (lambda p=pipe, img=img: p.preprocess([img]))
                else:
                    w = mod.Wants(**wants)
                    g = mod.Geometry.fit(cam, (nh, nw), "stretch")
                    calls[k] = (lambda p=pipe, w=w, g=g, img=img: p.postprocess(label, conf, g, img, "bgr", w))
            times = interleaved(calls, a.repeat)  # its warm-up call fills allocations and map caches
            row = {"camera": f"{cam[1]}x{cam[0]}", "stage": stage,
                   **{f"{k}_min_ms": min(v) for k, v in times.items()},
                   **{f"{k}_median_ms": statistics.median(v) for k, v in times.items()}}
            rows.append(row)
    if a.messages:
        rows += message_rows(pipes["new"][1], label, conf, classes, a.repeat, nh, nw)
    base = "base" in pipes
    print(f"pre/post-processing, network {nw}x{nh}, best of {a.repeat} (ms)" + (", base = " + str(a.baseline) if base else ""))
    print(f"{'camera':>10} {'stage':<26} {'new':>8}" + (f" {'base':>8} {'base/new':>9}" if base else ""))
    for r in rows:
        line = f"{r['camera']:>10} {r['stage']:<26} {r['new_min_ms']:8.2f}"
        if "base_min_ms" in r:
            line += f" {r['base_min_ms']:8.2f} {r['base_min_ms'] / r['new_min_ms']:8.2f}x"
        print(line)
    if a.forward:
        fwd_rows = forward_rows(pipes, label, conf, a.repeat, nh, nw, a.threads)
        print(f"(pre + post) / ONNX Runtime fp32 forward ({a.threads} threads), interleaved, {a.repeat} rounds")
        print(f"{'camera':>10} {'tree':>4} {'outputs':<18} {'stat':>6} {'forward':>8} {'pre':>6} {'post':>6} {'share':>7}")
        for r in fwd_rows:
            print(f"{r['camera']:>10} {r['tree']:>4} {r['outputs']:<18} {r['stat']:>6} {r['forward_ms']:8.2f} "
                  f"{r['pre_ms']:6.2f} {r['post_ms']:6.2f} {r['share']:7.1%}")
        rows += fwd_rows
    Path(a.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
