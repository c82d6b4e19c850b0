"""Background int8 on a real node: time to the first label, time until int8 is in use, its agreement.

Starts ``liteseg_node`` (its own process; demo weights, ``precision: auto``, a fresh engine cache
unless ``--cache-dir``) and feeds it generated demo scenes (``synthetic.drive``) at ``--rate`` Hz
with every frame's stamp fresh. Reads ~/label (arrival), the latched ~/info (which precision runs:
the node republishes it when the background int8 engine is swapped in) and ~/stats (per-stage
times). Reports, from the node process's start: the first label, the moment ~/info says int8; the
label agreement with fp32 the node measured on received frames (the report it stored in the engine
cache); the node's forward and pre + forward + post medians while it only collects frames and after
the swap; then, with the node stopped, that int8 model end to end (``Pipeline.run``, as
``bench_cpu_paths.py`` measures it) against the eager PyTorch fp32 forward, interleaved in this
process. Then a second start on the same cache: its first label and the precision it starts with
(the cached int8 model, picked without waiting).

The camera size defaults to the network size, as ``bench_cpu_paths.py``'s end-to-end figure.

    .venv/bin/python benchmarks/bench_background_int8.py --size 360x640 --rate 10 --json /tmp/bench_background_int8.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "test"))
sys.path.insert(0, str(REPO))


def run_node(cache: Path, args, frames: list[np.ndarray], until_int8: bool) -> dict:
    """One node start on ``cache``: feed frames until int8 runs (plus ``--after`` s), or ``--after`` s."""
    from conftest import NodeProcess, RosHarness, ros_env
    from rclpy.qos import DurabilityPolicy, QoSProfile, QoSReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from liteseg_ros import wire
    from liteseg_ros.msg import FrameStats, SegmentationInfo

    h, w = args.size
    tmp = Path(tempfile.mkdtemp(prefix="bench_bg_int8_"))
    pf = tmp / "p.yaml"
    pf.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        "network_width": w, "network_height": h, "weights": "demo", "precision": "auto",
        "engine_cache_dir": str(cache)}}}))
    ros = RosHarness("bench_background_int8")
    events: dict[str, float] = {}
    precisions: list[tuple[float, str]] = []
    stats: list[tuple[float, FrameStats]] = []
    labels: list[float] = []
    lock = threading.Lock()
    qos = QoSProfile(depth=5, reliability=QoSReliabilityPolicy.RELIABLE)
    latched = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    ros.node.create_subscription(Image, "/liteseg/label", lambda _m: labels.append(time.monotonic()), qos, raw=True)
    ros.node.create_subscription(SegmentationInfo, "/liteseg/info",
                                 lambda m: precisions.append((time.monotonic(), f"{m.backend} {m.precision}")),
                                 latched)
    ros.node.create_subscription(FrameStats, "/liteseg/stats", lambda m: stats.append((time.monotonic(), m)), qos)
    pub = ros.node.create_publisher(Image, "/image", QoSProfile(depth=1, reliability=QoSReliabilityPolicy.BEST_EFFORT))
    t_start = time.monotonic()
    node = NodeProcess(["--ros-args", "--params-file", str(pf)], env=ros_env(LITESEG_BACKGROUND_INT8="1"),
                       log_path=tmp / "node.log")
    header = Header(frame_id="cam")
    sent = 0
    try:
        deadline = t_start + args.timeout
        t_stop = None
        while time.monotonic() < deadline:
            if not node.alive():
                raise RuntimeError(node.output()[-3000:])
            if pub.get_subscription_count() > 0:
                header.stamp.sec, header.stamp.nanosec = divmod(time.time_ns(), 10**9)
                wire.send_image(pub, frames[sent % len(frames)], "bgr8", header)
                sent += 1
            with lock:
                if labels and "first_label" not in events:
                    events["first_label"] = labels[0] - t_start
                int8 = next((t for t, p in precisions if p.endswith("int8")), None)
            if int8 is not None and "int8" not in events:
                events["int8"] = int8 - t_start
            if t_stop is None and (("int8" in events) or not until_int8) and "first_label" in events:
                t_stop = time.monotonic() + args.after
            if t_stop is not None and time.monotonic() > t_stop:
                break
            time.sleep(1.0 / args.rate)
        log = node.output()
    finally:
        node.stop()
        ros.close()
    swap = t_start + events["int8"] if "int8" in events else None

    def medians(rows):
        rows = rows[len(rows) // 5:]  # allocations settle in the first few
        if not rows:
            return {}
        return {"frames": len(rows), "infer_ms": statistics.median(s.infer_ms for s in rows),
                "e2e_ms": statistics.median(s.preprocess_ms + s.infer_ms + s.postprocess_ms for s in rows)}

    # before: the path it started on while it only collects frames (no quantization running yet)
    t_first = t_start + events.get("first_label", 0.0)
    before = medians([s for t, s in stats if t_first + 2.0 < t < t_first + args.collect_window])
    after = medians([s for t, s in stats if swap is not None and t > swap + 2.0])
    return {"events_s": events, "precisions": [p for _, p in precisions], "sent": sent, "labels": len(labels),
            "before": before, "after": after,
            "log": [ln for ln in log.splitlines() if "background int8" in ln or "engines: using" in ln][-12:]}


def e2e_vs_eager(cache: Path, backend: str, h: int, w: int, threads: int, iters: int) -> dict:
    """``bench_cpu_paths.py``'s end-to-end figure for the int8 model the node made: ``Pipeline.run`` on a
    generated scene at the network size (label, confidence, colour, overlay, masks) against the eager
    PyTorch fp32 forward, interleaved in blocks in this process (the node stopped)."""
    import torch

    from liteseg_ros.classes import DEFAULT_MASK_GROUPS
    from liteseg_ros.engines import create_engine
    from liteseg_ros.engines.cpu_tuning import set_num_threads
    from liteseg_ros.model import load_checkpoint
    from liteseg_ros.pipeline import Pipeline, PipelineConfig, Wants
    from liteseg_ros.runtime import demo_weights_path
    from liteseg_ros.tools.bench import summarize, time_interleaved
    from liteseg_ros.tools.quantize import HOLDOUT_SEED, synthetic_samples

    set_num_threads(threads)
    model = load_checkpoint(demo_weights_path(), map_location="cpu").eval()
    meta = model.meta
    int8 = sorted((cache / "int8").glob("*.onnx"))[0]
    engine = create_engine(str(int8), backend, "cpu", "int8", (h, w), num_threads=threads, cache_dir=cache,
                           log=lambda m: None)
    cfg = PipelineConfig(network_size=(h, w), mean=tuple(meta.mean), std=tuple(meta.std),
                         mask_groups=meta.classes.resolve_groups({g: list(v) for g, v in DEFAULT_MASK_GROUPS.items()}))
    pipe = Pipeline(engine, meta.classes, cfg)
    frame = synthetic_samples(1, (h, w), HOLDOUT_SEED + 100)[0].image
    wants = Wants(label=True, confidence=True, color=True, overlay=True, masks=None, boundary=False)
    x = torch.from_numpy(pipe.preprocess([frame], "bgr")[0])

    def eager() -> None:
        with torch.inference_mode():
            model(x)

    eager_t, e2e_t = time_interleaved([eager, lambda: pipe.run([frame], "bgr", wants)], 2, iters,
                                      log=lambda m: None, block=3)
    engine.close()
    e, i = summarize(eager_t)["median_ms"], summarize(e2e_t)["median_ms"]
    return {"eager_ms": e, "int8_e2e_ms": i, "e2e_over_eager": e / i, "backend": backend, "file": str(int8)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="360x640", help="network HxW")
    ap.add_argument("--camera", default="", help="camera WxH (default: the network size)")
    ap.add_argument("--rate", type=float, default=10.0, help="camera Hz")
    ap.add_argument("--after", type=float, default=20.0, help="seconds fed after int8 runs (for its timings)")
    ap.add_argument("--timeout", type=float, default=900.0, help="give up after this many seconds")
    ap.add_argument("--cache-dir", type=Path, help="engine cache (default: a fresh one: a first start)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads of the e2e-vs-eager run")
    ap.add_argument("--iters", type=int, default=20, help="timed calls of the e2e-vs-eager run")
    ap.add_argument("--collect-window", type=float, default=14.0,
                    help="seconds after the first label whose stats count as 'before' (the node only collects then)")
    ap.add_argument("--json", default="/tmp/bench_background_int8.json")
    args = ap.parse_args()
    args.size = tuple(int(v) for v in args.size.split("x"))
    os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
    from liteseg_ros.engines.cache import load_report
    from liteseg_ros.synthetic import SceneConfig, drive

    h, w = args.size
    cw, ch = (int(v) for v in args.camera.split("x")) if args.camera else (w, h)
    frames = [s.image for s in drive(11, 30, SceneConfig(height=ch, width=cw))]
    cache = args.cache_dir or Path(tempfile.mkdtemp(prefix="bench_bg_int8_cache_"))
    first = run_node(cache, args, frames, until_int8=True)
    reports = []
    for model in sorted((cache / "int8").glob("*.onnx")):
        for backend in ("openvino", "onnxruntime"):
            rep = load_report(model, backend)
            if rep:
                reports.append({"backend": backend, "label_agreement": rep["label_agreement"],
                                "holdout": rep["holdout"], "calibration": rep["calibration"]})
    second = run_node(cache, args, frames, until_int8=False)
    e2e = e2e_vs_eager(cache, reports[0]["backend"], h, w, args.threads, args.iters) if reports else {}
    ev = first["events_s"]
    print(f"background int8, network {w}x{h}, camera {cw}x{ch} at {args.rate:g} Hz, demo weights, precision auto")
    print(f"first start (fresh cache {cache}): first label {ev.get('first_label', float('nan')):.1f} s, "
          f"int8 in use {ev.get('int8', float('nan')):.1f} s after the process started; "
          f"paths {' -> '.join(dict.fromkeys(first['precisions']))}")
    for r in reports:
        print(f"  agreement with fp32 ({r['backend']}): {r['label_agreement']:.2%} on {r['holdout']['images']} "
              f"{r['holdout']['source']} (calibrated on {r['calibration']['images']} {r['calibration']['source']})")
    for name, m in (("before (collecting)", first["before"]), ("after the swap", first["after"])):
        if m:
            print(f"  in the node {name}: forward {m['infer_ms']:.2f} ms, pre+forward+post {m['e2e_ms']:.2f} ms "
                  f"({m['frames']} frames)")
    if e2e:
        print(f"  that int8 model end to end ({e2e['backend']}, interleaved with eager here): {e2e['int8_e2e_ms']:.2f} ms "
              f"= {e2e['e2e_over_eager']:.2f}x the eager PyTorch fp32 forward ({e2e['eager_ms']:.2f} ms)")
    ev2 = second["events_s"]
    print(f"second start (same cache): first label {ev2.get('first_label', float('nan')):.1f} s, starts on "
          f"{second['precisions'][0] if second['precisions'] else '?'}")
    for ln in first["log"]:
        print(f"  log: {ln[-160:]}")
    Path(args.json).write_text(json.dumps({"first": first, "second": second, "reports": reports,
                                           "e2e_vs_eager": e2e, "network": f"{w}x{h}", "camera": f"{cw}x{ch}"},
                                          indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
