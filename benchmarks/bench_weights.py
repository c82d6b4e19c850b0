"""Benchmark what a registered name costs at start-up: checking the cached file against its git blob id.

``weights: NAME`` checks the cached file on every use (so a file changed after its download is never
loaded). This times that check (``weights.resolve``: registry read + SHA-1 over the file) against
``load_checkpoint`` of the same file, and a local download (``weights.fetch`` from a file:// mirror:
copy + verify + rename), for random-weight files in the official layout of each backbone (the same
keys and shapes as the authors' files, saved as legacy pickles like theirs). Each is timed --repeat
times; the fastest counts. Prints one table; writes JSON to --json.

    .venv/bin/python benchmarks/bench_weights.py [--backbones mobilenetv2,shufflenet,darknet19] [--repeat 5]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))
from model_keys import random_official_state_dict  # noqa: E402

from liteseg_ros import weights  # noqa: E402
from liteseg_ros.model import load_checkpoint  # noqa: E402


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", default="mobilenetv2,shufflenet,darknet19")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", type=Path, default=Path("/tmp/liteseg_bench_weights.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mirror = tmp / "mirror"
        mirror.mkdir()
        reg = {}
        for b in args.backbones.split(","):
            path = mirror / f"bench-{b}.pth"
            torch.save(random_official_state_dict(b), path, _use_new_zipfile_serialization=False)
            reg[f"bench-{b}"] = {"kind": "liteseg", "backbone": b, "file": path.name, "url": f"http://unused/{path.name}",
                                 "git_blob": weights.git_blob_id(path)}
        (tmp / "reg.yaml").write_text(yaml.safe_dump({"weights": reg}))
        os.environ.update({weights.ENV_REGISTRY: str(tmp / "reg.yaml"), weights.ENV_DIR: str(tmp / "cache"),
                           weights.ENV_URL: mirror.as_uri()})
        quiet = lambda m: None  # noqa: E731

        def fetch_fresh(name: str) -> None:
            weights.cached_path(weights.get(name)).unlink(missing_ok=True)
            weights.fetch(name, log=quiet)

        for name, entry in reg.items():
            size = (mirror / entry["file"]).stat().st_size
            t_fetch = best(lambda n=name: fetch_fresh(n), args.repeat)
            t_verify = best(lambda n=name: weights.resolve(n), args.repeat)
            cached = weights.resolve(name)
            t_load = best(lambda p=cached: load_checkpoint(p), args.repeat)
            rows.append({"weights": name, "mb": size / 1e6, "fetch_file_mirror_ms": 1e3 * t_fetch,
                         "verify_ms": 1e3 * t_verify, "load_checkpoint_ms": 1e3 * t_load,
                         "verify_over_load": t_verify / t_load})
    print(f"{'weights':<22} {'MB':>6} {'fetch(file://) ms':>18} {'verify ms':>10} {'load ms':>9} {'verify/load':>12}")
    for r in rows:
        print(f"{r['weights']:<22} {r['mb']:>6.1f} {r['fetch_file_mirror_ms']:>18.1f} {r['verify_ms']:>10.1f} "
              f"{r['load_checkpoint_ms']:>9.1f} {r['verify_over_load']:>12.2f}")
    args.json.write_text(json.dumps({"rows": rows, "machine": platform.processor() or platform.machine(),
                                     "repeat": args.repeat}, indent=2))
    print(f"json: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
