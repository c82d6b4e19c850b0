"""Start-up of the real node: process start -> lifecycle ``active`` (first frame accepted), cold and warm.

Starts ``python -m liteseg_ros.node`` (autostart: configure + activate) as its own process, the way
``ros2 run`` / launch start it, and times from just before the process is spawned to the moment its
``active: segmenting ...`` log line arrives (the subscription exists from then on, so a frame sent
now is accepted). The first run uses an empty engine cache (cold: the node loads the checkpoint with
torch and exports ONNX, and says so in its log); the next ``--warm`` runs reuse that cache. One more
warm run under ``python -X importtime`` lists the slowest imports and proves whether torch was
imported. ``--int8`` first fills the cache with the default int8 recipe (``liteseg quantize``),
so that the CPU ``auto`` choice can take it, as a user who ran it would see.

Runs are sequential (each process alone); on the shared 2-core machine other users' load still
adds noise, so read the median of the warm runs. Prints one table and writes JSON.

    .venv/bin/python benchmarks/bench_startup.py --warm 5 --json /tmp/bench_startup.json
    LITESEG_CPU_CAPS=FP32,INT8 .venv/bin/python benchmarks/bench_startup.py   # CPU ranking without bf16
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from liteseg_ros.defaults import FASTDDS_PROFILE_VARIABLES, fastdds_profile_variable
from liteseg_ros.interrupts import stop_child

REPO = Path(__file__).resolve().parents[1]
FASTDDS_XML = REPO / "config" / "fastdds_large_shm.xml"


def node_env() -> dict[str, str]:
    """An isolated DDS domain, localhost only, unbuffered logs (the test harness's settings)."""
    env = dict(os.environ)
    env.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
    for name in FASTDDS_PROFILE_VARIABLES:  # only the one this distro reads, set below
        env.pop(name, None)
    env.update({"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "RCUTILS_LOGGING_BUFFERED_STREAM": "0",
                "PYTHONUNBUFFERED": "1", fastdds_profile_variable(): str(FASTDDS_XML)})
    return env


def start_once(args: argparse.Namespace, cache: Path, importtime: bool = False) -> dict:
    """One node process from spawn to ``active``; returns the timing and what its log said."""
    cmd = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "liteseg_ros.node",
           "--ros-args", "-r", "__node:=liteseg_startup_bench", "-p", f"weights:={args.weights}",
           "-p", f"engine_cache_dir:={cache}", "-p", f"network_height:={args.size[0]}",
           "-p", f"network_width:={args.size[1]}", "-p", f"backend:={args.backend}",
           "-p", f"precision:={args.precision}", "-p", f"num_threads:={args.threads}"]
    lines: list[tuple[float, str]] = []
    active = threading.Event()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=node_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((time.perf_counter() - t0, line.rstrip("\n")))
            if "active: segmenting" in line:
                active.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    ok = active.wait(args.timeout)
    t_active = next((t for t, s in lines if "active: segmenting" in s), None)
    stop_child(proc)
    reader.join(5)
    text = "\n".join(s for _, s in lines)
    if not ok:
        raise SystemExit(f"node did not become active within {args.timeout} s (exit {proc.returncode}):\n{text}")
    using = re.search(r"engines: using (\S+) on (\S+) \((\S+)\)", text)
    ready = re.search(r"ready in ([0-9.]+) s", text)
    imports = [ln for ln in text.splitlines() if ln.startswith("import time:")]
    return {"s_to_active": round(t_active, 3), "engine": f"{using[1]} {using[3]}" if using else "?",
            "configure_s": float(ready[1]) if ready else None,
            "exported": "exporting" in text, "quantized": "quantizing" in text,
            "checkpoint_from_cache": "metadata from the engine cache" in text,
            # at any depth: torch is usually imported by another module, not by the node itself
            "torch_imported": any(ln.split("|")[-1].strip() == "torch" for ln in imports) if imports else None,
            "imports": imports, "log": text}


def slowest_imports(imports: list[str], n: int = 8) -> list[tuple[str, float]]:
    """The top-level imports (no leading spaces in the name column) with the largest cumulative time."""
    top = []
    for ln in imports:
        parts = ln.split("|")
        if len(parts) == 3 and parts[2].startswith(" ") and not parts[2].startswith("  "):
            try:
                top.append((parts[2].strip(), int(parts[1]) / 1e6))
            except ValueError:
                continue
    return sorted(top, key=lambda t: -t[1])[:n]


def main(argv: list[str] | None = None) -> int:
    from liteseg_ros.defaults import NETWORK_SIZE, parse_size

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default="demo", help="the node's weights parameter (default: demo)")
    ap.add_argument("--size", type=parse_size, default=NETWORK_SIZE, metavar="HxW", help="network size")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="num_threads parameter (0 = all cores)")
    ap.add_argument("--warm", type=int, default=3, help="warm runs after the cold one")
    ap.add_argument("--int8", action="store_true", help="quantize into the cache first (liteseg quantize)")
    ap.add_argument("--cache-dir", type=Path, help="engine cache (default: a fresh temporary folder; must be "
                    "empty or absent for the cold run to be cold)")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--json", type=Path, default=Path("/tmp/bench_startup.json"))
    args = ap.parse_args(argv)
    cache = args.cache_dir or Path(tempfile.mkdtemp(prefix="bench_startup_"))
    if cache.exists() and any(cache.iterdir()):
        raise SystemExit(f"--cache-dir {cache} is not empty: the first run would not be cold")
    caps = os.environ.get("LITESEG_CPU_CAPS", "")
    print(f"weights {args.weights}, network {args.size[0]}x{args.size[1]}, backend {args.backend}, precision "
          f"{args.precision}, cache {cache}, LITESEG_CPU_CAPS={caps or '(unset: what the CPU reports)'}")
    rows = []
    if args.int8:
        from liteseg_ros.runtime import resolve_weights

        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "liteseg_ros.cli", "quantize", "--weights",
                        str(resolve_weights(args.weights)), "--synthetic", "32", "--size",
                        f"{args.size[0]}x{args.size[1]}", "--cache-dir", str(cache)], check=True,
                       stdout=subprocess.DEVNULL)
        print(f"int8 file quantized into the cache in {time.perf_counter() - t:.0f} s (not part of any run)")
    kinds = ["cold" if not args.int8 else "cold (int8 cached)"] + ["warm"] * args.warm + ["warm, -X importtime"]
    for i, kind in enumerate(kinds):
        r = start_once(args, cache, importtime=kind.endswith("importtime"))
        r["run"], r["kind"] = i, kind
        rows.append(r)
        print(f"run {i} ({kind}): {r['s_to_active']:.2f} s to active", flush=True)
    head = (f"{'run':>3} {'kind':<20} {'s to active':>11} {'configure s':>11} {'engine':<18} {'exported':>8} "
            f"{'ckpt loaded':>11} {'torch':>6}")
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        torch_col = "-" if r["torch_imported"] is None else ("yes" if r["torch_imported"] else "no")
        print(f"{r['run']:>3} {r['kind']:<20} {r['s_to_active']:>11.2f} {r['configure_s'] or 0:>11.2f} "
              f"{r['engine']:<18} {'yes' if r['exported'] else 'no':>8} "
              f"{'no' if r['checkpoint_from_cache'] else 'yes':>11} {torch_col:>6}")
    warm = [r["s_to_active"] for r in rows if r["kind"] == "warm"]
    if warm:
        print(f"warm median {statistics.median(warm):.2f} s (min {min(warm):.2f}, max {max(warm):.2f}) over "
              f"{len(warm)} runs; cold {rows[0]['s_to_active']:.2f} s")
    last = rows[-1]
    print("slowest top-level imports of the importtime run (cumulative s): " + ", ".join(
        f"{name} {s:.2f}" for name, s in slowest_imports(last["imports"])))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"context": {"weights": args.weights, "size": list(args.size), "caps": caps,
                                                 "cpus": os.cpu_count()},
                                     "rows": [{k: v for k, v in r.items() if k not in ("imports", "log")}
                                              for r in rows],
                                     "logs": {str(r["run"]): r["log"] for r in rows if r["run"] < 2}}, indent=1))
    print(f"json: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
