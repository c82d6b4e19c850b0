"""Node throughput at camera resolution against the forward-only rate, on the real node over real DDS.

Starts ``liteseg_node`` (its own process; demo weights, ONNX Runtime fp32 by default: the CPU default
path) with one set of output topics subscribed, and keeps it busy: frames are published (raw
``bgr8``, sent with :func:`liteseg_ros.wire.send_image`) so that one is always waiting in the
node's newest-frame slot while it works on another (a new frame each time a label comes back, two
in flight), for ``--seconds`` after a warm-up. Throughput = labels received per second. The
forward-only rate is the same engine (``runtime.build_pipeline`` with the node's settings, so the
same cached model file and thread count) timed in this process on a ready batch, for the same
time, right after each node run, with the node stopped: the ratio of the two is what everything
besides the forward costs (decode, preprocess, postprocess, publish, DDS), measured in one run so
machine load hits both alike. The node's own ~/stats give its per-stage medians, and the rate its
forward alone would allow inside the node (1000 / infer_ms: the forward slowed by whatever runs
beside it). The load-proof figure is the CPU ratio: the forward's CPU time per call over the node
process's CPU time per frame (all its threads: receiving, decoding, pre/post-processing, the forward,
publishing): on an otherwise idle machine where the node is CPU-bound, its throughput ratio is at
least this (the forward's wall time is at least its CPU time over the cores); wall-clock rates on a
machine others load move by 2x from one run to the next.

Topic sets (``--sets``, ``;``-separated, each a comma list of output topics; ``all`` = every image
output): by default ``label,overlay,masks/drivable`` (the target: >= 0.75x the forward-only rate at
1920x1080) and ``all``. With ``--baseline DIR`` (an older checkout, e.g. ``git worktree add
/tmp/base <commit>``) each set runs that tree's node too (PYTHONPATH), alternating, and the table
gives both.

    .venv/bin/python benchmarks/bench_throughput.py --camera 1920x1080 --seconds 15 --json /tmp/bench_throughput.json
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

#: every image output of a camera (the boundary is not an Image; it follows the drivable mask group)
ALL_TOPICS = ("label", "color", "overlay", "confidence", "masks/drivable", "masks/walkable", "masks/dynamic")
DEFAULT_SETS = "label,overlay,masks/drivable;all"


def node_settings(args) -> dict:
    h, w = args.size
    return {"network_width": w, "network_height": h, "backend": args.backend, "precision": args.precision,
            "weights": args.weights}


def run_node(tree: Path | None, topics: tuple[str, ...], frames: list[np.ndarray], args) -> dict:
    """One node process with ``topics`` subscribed, kept busy for ``args.seconds``; its rate and stats."""
    from conftest import NodeProcess, RosHarness, ros_env
    from rclpy.qos import QoSProfile, QoSReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from liteseg_ros import wire
    from liteseg_ros.msg import FrameStats

    tmp = Path(tempfile.mkdtemp(prefix="bench_throughput_"))
    pf = tmp / "p.yaml"
    pf.write_text(yaml.safe_dump({"/**": {"ros__parameters": node_settings(args)}}))
    env = ros_env(**({"PYTHONPATH": str(tree)} if tree else {}))
    node = NodeProcess(["--ros-args", "--params-file", str(pf)], env=env, log_path=tmp / "node.log")
    ros = RosHarness("bench_throughput")
    labels: list[float] = []
    done = threading.Condition()

    def on_label(_raw) -> None:
        with done:
            labels.append(time.monotonic())
            done.notify_all()

    try:
        stats = ros.collect(FrameStats, "/liteseg/stats")
        qos = QoSProfile(depth=5, reliability=QoSReliabilityPolicy.RELIABLE)
        for t in topics:
            cb = on_label if t == "label" else (lambda _m: None)
            ros.node.create_subscription(Image, f"/liteseg/{t}", cb, qos, raw=True)
        pub = ros.node.create_publisher(Image, "/image", QoSProfile(depth=1,
                                                                    reliability=QoSReliabilityPolicy.BEST_EFFORT))
        ros.wait_for(lambda: pub.get_subscription_count() > 0 or not node.alive(), 300, "node")
        if not node.alive():
            raise RuntimeError(node.output())
        time.sleep(1.0)
        header = Header(frame_id="cam")
        sent = 0

        def send() -> None:
            nonlocal sent
            header.stamp.sec, header.stamp.nanosec = divmod(time.time_ns(), 10**9)
            wire.send_image(pub, frames[sent % len(frames)], "bgr8", header)
            sent += 1

        send()
        send()
        t_start = time.monotonic()
        t_warm = t_start + args.warmup
        t_end = t_warm + args.seconds
        cpu: dict[str, tuple[float, int]] = {}
        while time.monotonic() < t_end:
            if "start" not in cpu and time.monotonic() >= t_warm:
                cpu["start"] = (cpu_seconds(node.proc.pid), len(labels))
            with done:
                seen = len(labels)
                done.wait_for(lambda s=seen: len(labels) > s, timeout=1.0)
            send()  # one per label back (or per second of silence: a best-effort frame may be lost)
        cpu["end"] = (cpu_seconds(node.proc.pid), len(labels))
        with done:
            window = [t for t in labels if t_warm <= t <= t_end]
        node.stop()
    finally:
        node.stop()
        ros.close()
    fps = (len(window) - 1) / (window[-1] - window[0]) if len(window) > 1 else 0.0
    rows = list(stats)[len(stats) // 4:]  # past the warm-up
    med = {k: statistics.median(getattr(s, k) for s in rows) if rows else float("nan")
           for k in ("decode_ms", "preprocess_ms", "infer_ms", "postprocess_ms", "publish_ms", "total_ms")}
    frames_cpu = cpu["end"][1] - cpu["start"][1]
    cpu_ms = (cpu["end"][0] - cpu["start"][0]) * 1e3 / max(1, frames_cpu)
    return {"fps": fps, "labels": len(window), "sent": sent, "dropped": stats[-1].dropped if stats else -1,
            "cpu_ms_per_frame": cpu_ms, **med}


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def forward_rate(pipe, frame: np.ndarray, seconds: float) -> dict:
    """The engine alone on a ready batch in this process: calls per second for ``seconds``."""
    batch, _ = pipe.preprocess([frame], "bgr")
    for _ in range(3):
        pipe.engine.infer(batch)
    times = []
    t_end = time.perf_counter() + seconds
    c0 = time.process_time()
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        pipe.engine.infer(batch)
        times.append(time.perf_counter() - t0)
    cpu_ms = (time.process_time() - c0) * 1e3 / len(times)
    return {"fps": len(times) / sum(times), "median_ms": statistics.median(times) * 1e3, "calls": len(times),
            "cpu_ms_per_call": cpu_ms}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--camera", default="1920x1080", help="camera WxH")
    ap.add_argument("--size", default="360x640", help="network HxW")
    ap.add_argument("--backend", default="onnxruntime", help="default: the CPU default path, ONNX Runtime fp32")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--weights", default="demo")
    ap.add_argument("--sets", default=DEFAULT_SETS, help="';'-separated topic sets, each a comma list ('all')")
    ap.add_argument("--seconds", type=float, default=15.0, help="timed seconds per node run and per forward run")
    ap.add_argument("--warmup", type=float, default=4.0, help="seconds of a node run before timing starts")
    ap.add_argument("--baseline", type=Path, help="an older source tree: run its node too, alternating")
    ap.add_argument("--rounds", type=int, default=1, help="runs per set and tree; the best rate is reported")
    ap.add_argument("--json", default="/tmp/bench_throughput.json")
    args = ap.parse_args()
    args.size = tuple(int(v) for v in args.size.split("x"))
    cw, ch = (int(v) for v in args.camera.split("x"))
    os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))

    from liteseg_ros import params
    from liteseg_ros.engines.cpu_tuning import tune_malloc
    from liteseg_ros.runtime import build_pipeline
    from liteseg_ros.synthetic import SceneConfig, drive

    tune_malloc()  # as the node does
    values = {**params.defaults(), **node_settings(args)}
    pipe, _ = build_pipeline(params.pipeline_settings(values), log=lambda m: None)
    frames = [s.image for s in drive(7, 6, SceneConfig(height=ch, width=cw))]
    sets = [tuple(ALL_TOPICS) if s.strip() == "all" else tuple(t.strip() for t in s.split(","))
            for s in args.sets.split(";")]
    for s in sets:
        if "label" not in s:
            raise SystemExit(f"topic set {s} has no 'label': the rate is counted on ~/label")
    trees = {"new": None} | ({"base": args.baseline.resolve()} if args.baseline else {})
    results: dict[str, dict[str, list]] = {}
    for _ in range(args.rounds):
        for s in sets:
            for name, tree in trees.items():
                node = run_node(tree, s, frames, args)
                fwd = forward_rate(pipe, frames[0], args.seconds)  # right after, same machine load
                runs = results.setdefault(",".join(s), {}).setdefault(name, [])
                runs.append({"node": node, "forward": fwd, "ratio": node["fps"] / fwd["fps"],
                             "cpu_ratio": fwd["cpu_ms_per_call"] / node["cpu_ms_per_frame"]})
    print(f"node throughput, camera {cw}x{ch}, network {args.size[1]}x{args.size[0]}, {pipe.engine.info.backend} "
          f"{pipe.engine.info.precision}; best of {args.rounds} run(s) of {args.seconds:g} s; forward-only = the "
          f"same engine in the benchmark process right after each node run")
    head = (f"{'topics':<34} {'tree':>4} {'node fps':>8} {'fwd fps':>8} {'node/fwd':>8} {'infer':>7} "
            f"{'node/infer':>10} {'cpu ratio':>9} {'pre':>6} {'post':>6} {'publish':>7} {'dropped':>7}")
    print(head)
    out = {}
    for key, by_tree in results.items():
        for name, runs in by_tree.items():
            best = max(runs, key=lambda r: r["node"]["fps"])  # the least disturbed node run
            n = best["node"]
            in_node = n["fps"] * n["infer_ms"] / 1e3
            label = key if len(key) <= 34 else f"all {len(key.split(','))} image outputs"
            print(f"{label:<34} {name:>4} {n['fps']:8.2f} {best['forward']['fps']:8.2f} {best['ratio']:7.2f}x "
                  f"{n['infer_ms']:7.2f} {in_node:9.2f}x {best['cpu_ratio']:8.2f}x "
                  f"{n['preprocess_ms']:6.2f} {n['postprocess_ms']:6.2f} "
                  f"{n['publish_ms']:7.2f} {n['dropped']:7d}")
            out.setdefault(key, {})[name] = {"best": best, "runs": runs, "node_over_infer_in_node": in_node}
    Path(args.json).write_text(json.dumps({"camera": f"{cw}x{ch}", "network": f"{args.size[1]}x{args.size[0]}",
                                           "engine": f"{pipe.engine.info.backend} {pipe.engine.info.precision}",
                                           "results": out}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
