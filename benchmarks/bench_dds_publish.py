"""What publishing the node's seven camera-size outputs costs in DDS alone, per way of sending and setting.

One subscriber process (raw, reliable KEEP_LAST 5 subscriptions, as bench_node's) and one publisher
process per variant: the publisher sends pre-serialized Images of the node's output sizes (2 colour,
5 mono8) at a low rate and reports, per frame, the wall time of the seven calls, the publishing
thread's CPU time and the whole process's CPU time (Fast DDS's own threads included: an asynchronous
writer moves work there, it does not remove it). The subscriber reports how many samples arrived.

Variants (alternating over ``--rounds``, so load from other processes hits all alike):

- ``send``: ``fast_send.send`` (rcl directly, no extra copy, GIL released) with the shipped profile;
- ``publish``: rclpy's ``publish(bytes)``, shipped profile;
- ``send-async``: ``fast_send.send`` with ``RMW_FASTRTPS_PUBLICATION_MODE=ASYNCHRONOUS``;
- ``send-shm-only``: an SHM-only profile with a 16 MB ``maxMessageSize`` (no UDP transport, so no
  64 KB fragments);
- ``send-no-profile``: Fast DDS's defaults (512 KB shared-memory segment).

    .venv/bin/python benchmarks/bench_dds_publish.py --camera 1920x1080 --frames 15 --rounds 2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "config" / "fastdds_large_shm.xml"
SHM_ONLY = """<?xml version="1.0" encoding="UTF-8" ?>
<dds xmlns="http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles"><profiles>
  <transport_descriptors><transport_descriptor>
    <transport_id>shm_only</transport_id><type>SHM</type>
    <segment_size>67108864</segment_size><maxMessageSize>16777216</maxMessageSize>
  </transport_descriptor></transport_descriptors>
  <participant profile_name="shm_only" is_default_profile="true"><rtps>
    <useBuiltinTransports>false</useBuiltinTransports>
    <userTransports><transport_id>shm_only</transport_id></userTransports>
  </rtps></participant>
</profiles></dds>
"""
N_TOPICS = 7


def _qos():
    from rclpy.qos import QoSProfile, QoSReliabilityPolicy

    return QoSProfile(depth=5, reliability=QoSReliabilityPolicy.RELIABLE)


def subscriber(tag: str, quiet_s: float = 4.0) -> int:
    """Count samples per topic until nothing arrived for ``quiet_s``; print them as JSON."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("bench_dds_sub")
    counts = [0] * N_TOPICS
    for k in range(N_TOPICS):
        node.create_subscription(Image, f"/bench_dds/{tag}/t{k}",
                                 lambda _m, k=k: counts.__setitem__(k, counts[k] + 1), _qos(), raw=True)
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    start = last = time.monotonic()
    seen = 0
    while time.monotonic() - start < 300:
        ex.spin_once(timeout_sec=0.1)
        if sum(counts) != seen:
            seen, last = sum(counts), time.monotonic()
        elif seen and time.monotonic() - last > quiet_s:
            break
    print(json.dumps({"received": counts}), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


def publisher(tag: str, method: str, w: int, h: int, frames: int, rate: float) -> int:
    """Publish ``frames`` frames of the seven outputs; print the medians as JSON."""
    import rclpy
    from bench_node import wait_subscribed  # this script's folder is on sys.path (run as a script)
    from sensor_msgs.msg import Image

    from liteseg_ros import fast_send, wire

    rclpy.init()
    node = rclpy.create_node("bench_dds_pub")
    pubs = [node.create_publisher(Image, f"/bench_dds/{tag}/t{k}", _qos()) for k in range(N_TOPICS)]
    wait_subscribed(pubs, "bench_dds_publish")
    blobs = [wire.image_bytes(np.zeros((h, w, 3) if k < 2 else (h, w), np.uint8), "bgr8" if k < 2 else "mono8")
             for k in range(N_TOPICS)]
    fn = fast_send.send if method == "send" else (lambda p, b: p.publish(b))
    wall, cpu, proc = [], [], []
    for _ in range(frames):
        c0, p0, t0 = time.thread_time(), time.process_time(), time.perf_counter()
        for p, b in zip(pubs, blobs, strict=True):
            fn(p, b)
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.thread_time() - c0) * 1e3)
        time.sleep(1.0 / rate)  # Fast DDS's threads finish this frame meanwhile: counted in proc
        proc.append((time.process_time() - p0) * 1e3)
    time.sleep(1.0)
    print(json.dumps({"wall_ms": statistics.median(wall), "thread_cpu_ms": statistics.median(cpu),
                      "process_cpu_ms": statistics.median(proc)}), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


def variants(tmp: Path) -> dict[str, tuple[str, dict[str, str | None]]]:
    shm_only = tmp / "shm_only.xml"
    shm_only.write_text(SHM_ONLY)
    profile = {"FASTRTPS_DEFAULT_PROFILES_FILE": str(SHIPPED), "FASTDDS_DEFAULT_PROFILES_FILE": str(SHIPPED)}
    return {
        "send": ("send", profile),
        "publish": ("publish", profile),
        "send-async": ("send", profile | {"RMW_FASTRTPS_PUBLICATION_MODE": "ASYNCHRONOUS"}),
        "send-shm-only": ("send", {k: str(shm_only) for k in profile}),
        "send-no-profile": ("send", dict.fromkeys(profile)),
    }


def run_variant(tag: str, method: str, env_over: dict[str, str | None], a: argparse.Namespace) -> dict:
    env = dict(os.environ)
    for k, v in env_over.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    me = [sys.executable, __file__]
    sub = subprocess.Popen([*me, "--role", "sub", "--tag", tag], env=env, stdout=subprocess.PIPE, text=True)
    try:
        pub = subprocess.run([*me, "--role", "pub", "--tag", tag, "--method", method, "--camera", a.camera,
                              "--frames", str(a.frames), "--rate", str(a.rate)],
                             env=env, capture_output=True, text=True, timeout=300)
        out, _ = sub.communicate(timeout=120)
    finally:
        if sub.poll() is None:
            sub.kill()
    if pub.returncode != 0:
        raise RuntimeError(f"{tag}: publisher failed: {pub.stderr[-1500:]}")
    res = json.loads([ln for ln in pub.stdout.splitlines() if ln.startswith("{")][-1])
    res["received"] = json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])["received"]
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--camera", default="1920x1080", help="WxH of the outputs")
    ap.add_argument("--frames", type=int, default=15)
    ap.add_argument("--rate", type=float, default=4.0, help="frames per second")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    ap.add_argument("--json", default="/tmp/bench_dds_publish.json")
    ap.add_argument("--role", choices=["sub", "pub"], help=argparse.SUPPRESS)
    ap.add_argument("--tag", default="t", help=argparse.SUPPRESS)
    ap.add_argument("--method", default="send", help=argparse.SUPPRESS)
    a = ap.parse_args()
    w, h = (int(v) for v in a.camera.split("x"))
    if a.role == "sub":
        return subscriber(a.tag)
    if a.role == "pub":
        return publisher(a.tag, a.method, w, h, a.frames, a.rate)
    os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    with tempfile.TemporaryDirectory() as tmp:
        table = variants(Path(tmp))
        names = [n for n in table if not a.only or n in a.only.split(",")]
        runs: dict[str, list[dict]] = {n: [] for n in names}
        for r in range(a.rounds):
            for n in names:
                method, env_over = table[n]
                runs[n].append(run_variant(f"{n.replace('-', '_')}_{r}", method, env_over, a))
    print(f"publishing 7 outputs at {a.camera} ({a.frames} frames x {a.rounds} rounds, medians; "
          f"received = fewest samples on a topic, of {a.frames * a.rounds})")
    print(f"{'variant':>16} {'wall_ms':>9} {'thread_cpu':>11} {'process_cpu':>12} {'received':>9}")
    for n, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("wall_ms", "thread_cpu_ms", "process_cpu_ms")}
        got = sum(min(r["received"]) for r in rs)
        print(f"{n:>16} {med['wall_ms']:9.2f} {med['thread_cpu_ms']:11.2f} {med['process_cpu_ms']:12.2f} {got:>9}")
    Path(a.json).write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
