"""`liteseg`: the command-line face of the package (thin: parse, call, print).

Ring 4. Each subcommand lives with the code it drives (model, engines, bag, train, demo) and is
registered here; heavy imports happen inside the handlers so ``liteseg --help`` stays instant.
"""
from __future__ import annotations

import signal
import sys

from liteseg_ros.defaults import EXIT_FAILURE, EXIT_USAGE
from liteseg_ros.interrupts import deferred_interrupts, quiet_interrupt_hook

_CONSOLE = bool(sys.argv) and sys.argv[0].endswith("liteseg")  # the console script, not an import by tests
if _CONSOLE:
    # Until main() takes over, a Ctrl-C only prints one line (module imports here are pure Python).
    sys.excepthook = quiet_interrupt_hook()

import argparse  # noqa: E402
import json  # noqa: E402
from collections.abc import Callable  # noqa: E402

#: subcommand -> (one-line help, "module:function" that adds its parser to the subparsers)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "info": ("parameters, MACs and feature sizes of a LiteSeg variant (compare with the paper)",
             "liteseg_ros.cli:add_info_parser"),
    "demo": ("run the real node on a generated drive (or your images/video/bag) and write a video, "
             "a contact sheet and a latency table", "liteseg_ros.demo:add_demo_parser"),
    "bag": ("segment every image of a rosbag offline into a new bag", "liteseg_ros.bag.cli:add_bag_parser"),
    "play": ("publish a rosbag's messages with their timing and /clock (ros2 bag play stand-in)",
             "liteseg_ros.bag.cli:add_play_parser"),
    "train": ("train LiteSeg (paper recipe; Cityscapes, folder or synthetic data; torchrun for DDP)",
              "liteseg_ros.train.cli:add_train_parser"),
    "eval": ("mIoU of a checkpoint (or a folder of predictions) with the Cityscapes protocol",
             "liteseg_ros.train.cli:add_eval_parser"),
    "average": ("average the weights of checkpoints fine-tuned from the same weights (a model soup)",
                "liteseg_ros.train.average:add_average_parser"),
    "calibrate": ("fit one logit offset per class on a labelled set to maximise mIoU, folded into the weights",
                  "liteseg_ros.train.calibrate:add_calibrate_parser"),
    "export": ("export ONNX / build a TensorRT engine", "liteseg_ros.commands.engines:add_export_parser"),
    "bench": ("time backends model-only and end to end (paper-style)", "liteseg_ros.commands.engines:add_bench_parser"),
    "quantize": ("int8 model for ONNX Runtime / OpenVINO with a label-agreement report",
                 "liteseg_ros.commands.engines:add_quantize_parser"),
    "weights": ("list, fetch (verified, into the cache) and locate the registered weights, such as the authors' "
                "Cityscapes models", "liteseg_ros.cli:add_weights_parser"),
}


# ------------------------------------------------------------------------------------------ info
def add_info_parser(sub) -> None:
    from liteseg_ros.defaults import BACKBONES, parse_size

    p = sub.add_parser("info", help=SUBCOMMANDS["info"][0], description=SUBCOMMANDS["info"][0])
    p.add_argument("--backbone", default=BACKBONES[0], choices=BACKBONES)
    p.add_argument("--size", type=parse_size, default=(512, 1024), help="input HxW (default 512x1024, the paper's)")
    p.add_argument("--weights", help="describe this checkpoint's (or registered name's) network instead")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_run_info)


def _run_info(args) -> int:
    from liteseg_ros.model import describe

    backbone = args.backbone
    if args.weights:
        from liteseg_ros.model import CheckpointError, load_checkpoint
        from liteseg_ros.runtime import ModelLoadError, resolve_weights

        try:
            path = resolve_weights(args.weights, allow_download=True, progress=True,
                                   log=lambda m: print(m, file=sys.stderr))
            backbone = load_checkpoint(path).meta.backbone
        except (CheckpointError, ModelLoadError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    d = describe(backbone, *args.size)
    if args.json:
        print(json.dumps(d, indent=2, default=str))
        return 0
    width = max(len(k) for k in d)
    for k, v in d.items():
        print(f"{k:<{width}}  {v}")
    return 0


# ------------------------------------------------------------------------------------------ weights
def add_weights_parser(sub) -> None:
    desc = ("Registered weights (liteseg_ros/data/weights.yaml, plus $LITESEG_WEIGHTS_REGISTRY files) by name. "
            "fetch downloads into the cache ($LITESEG_WEIGHTS_DIR, default ~/.cache/liteseg_ros/weights), "
            "checks the file's git blob id, and only then moves it under its final name; an interrupted "
            "fetch resumes. `weights: NAME` then works in the node, bag, eval, demo, quantize, export, bench.")
    p = sub.add_parser("weights", help=SUBCOMMANDS["weights"][0], description=desc)
    wsub = p.add_subparsers(dest="weights_command", metavar="ACTION", required=True)
    ls = wsub.add_parser("list", help="name, backbone, size, licence and whether it is cached")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=_run_weights_list)
    fe = wsub.add_parser("fetch", help="download, verify and cache weights by name; prints the licence")
    fe.add_argument("names", nargs="+", metavar="NAME", help="registered name(s), see `liteseg weights list`")
    fe.add_argument("--base-url", help=f"mirror: URL the file names are appended to (default ${_WEIGHTS_URL_ENV} "
                    "or each entry's own URL)")
    fe.add_argument("--no-progress", action="store_true", help="no progress bar")
    fe.set_defaults(func=_run_weights_fetch)
    pa = wsub.add_parser("path", help="print the verified cached file of NAME (exit 1 if not fetched yet)")
    pa.add_argument("name", metavar="NAME")
    pa.set_defaults(func=_run_weights_path)


_WEIGHTS_URL_ENV = "LITESEG_WEIGHTS_URL"


def _run_weights_list(args) -> int:
    from liteseg_ros import weights

    try:
        rows = [weights.describe(e) for e in weights.registry().values()]
    except weights.WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = [("NAME", "KIND", "BACKBONE", "SIZE", "LICENCE", "CACHED")]
    for r in rows:
        cached = "yes" if r["cached"] else (f"partial {r['partial_bytes'] / 1e6:.1f} MB" if r["partial_bytes"] else "no")
        table.append((r["name"], r["kind"], r["backbone"], weights.format_size(r), r["license"], cached))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    print(f"cache: {weights.cache_dir()}; `liteseg weights fetch NAME` downloads one")
    return 0


def _run_weights_fetch(args) -> int:
    from liteseg_ros import weights

    for name in args.names:
        try:
            entry = weights.get(name)
            print(f"{name}: licence {entry.license_line}")
            path = weights.fetch(name, base_url=args.base_url, progress=not args.no_progress,
                                 log=lambda m: print(m, file=sys.stderr))
        except (weights.DownloadError, weights.IntegrityError) as exc:  # the name was fine, the download not
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        except weights.WeightsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        print(path)
    return 0


def _run_weights_path(args) -> int:
    """The file NAME means, taking what the ``weights`` parameter takes: a registered name, 'demo', a file."""
    from liteseg_ros import weights
    from liteseg_ros.runtime import ModelLoadError, resolve_weights

    try:
        path = weights.resolve(args.name, allow_download=False)
    except weights.NotCached:
        print(f"{args.name} is not fetched yet; run: {weights.fetch_command(args.name)}", file=sys.stderr)
        return 1
    except weights.WeightsError as exc:
        try:  # not a registered name: 'demo' or a checkpoint file, as `weights:` takes them
            path = resolve_weights(args.name, allow_download=False)
        except ModelLoadError:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    print(path)
    return 0


# ------------------------------------------------------------------------------------------ main
def _loader(spec: str) -> Callable:
    import importlib

    mod, fn = spec.split(":")
    return getattr(importlib.import_module(mod), fn)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="liteseg", description="LiteSeg semantic segmentation for ROS 2: tools around the liteseg_node. "
        "`liteseg COMMAND --help` explains each command.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, spec) in SUBCOMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=help_text, add_help=False)
            continue
        _loader(spec)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Ctrl-C at any point, the seconds spent importing torch/OpenCV for the subcommand included,
    # ends with one line and exit 130, never a traceback.
    try:
        with deferred_interrupts() as pending:
            ready = _prepare(argv)
        if pending:
            raise KeyboardInterrupt
        if isinstance(ready, int):
            return ready
        return int(ready.func(ready) or 0)
    except KeyboardInterrupt:
        if argv is None:  # the console script: a further Ctrl-C while Python shuts down changes nothing
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        print("interrupted", file=sys.stderr)
        return 130


def _prepare(argv: list[str] | None):
    """The parsed arguments of the command to run, or an exit status (help, usage error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Import only the module of the subcommand being run: `liteseg --help` must not load torch.
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=command if command in SUBCOMMANDS else "")
    args = parser.parse_args(argv)  # --help and usage errors exit here (SystemExit), as argparse does
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    from liteseg_ros.engines.cpu_tuning import tune_malloc_at_startup

    tune_malloc_at_startup()  # LITESEG_MALLOC_TUNING=0 turns it off
    return args


if __name__ == "__main__":
    sys.exit(main())
