"""The file-writing rule, unit by unit and over every writer of the package.

The rule (``liteseg_ros.safe_files``): a fresh file with an unpredictable name, created with O_EXCL
and O_NOFOLLOW in the target folder, written, fsynced, renamed over the final name; never an existing
path opened for writing. The writer test plants a symlink and a hard link to a file *outside* the
intended folder, and a foreign file, at each path the package writes (weights cache, engine cache,
exports, quantize outputs, TensorRT plans, demo output, bag output, checkpoints, a training run's
folder, evaluation reports, benchmark JSON, generated scenes), runs the real writer, and shows
that nothing outside changed and that no temporary file is left behind.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from liteseg_ros import safe_files

PRECIOUS = b"precious, outside the folder"


# ------------------------------------------------------------------------------------------ the rule
def test_fresh_file_replaces_a_link_never_its_target_and_leaves_no_temporary(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(PRECIOUS)
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "a").symlink_to(victim)
    (folder / "b").hardlink_to(victim)
    safe_files.write_text(folder / "a", "new a")
    safe_files.write_bytes(folder / "b", b"new b")
    assert victim.read_bytes() == PRECIOUS
    assert not (folder / "a").is_symlink() and (folder / "a").read_text() == "new a"
    assert (folder / "b").read_bytes() == b"new b" and sorted(p.name for p in folder.iterdir()) == ["a", "b"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "f"
    target.write_text("old")
    with pytest.raises(RuntimeError), safe_files.fresh_file(target) as f:
        f.write(b"half")
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError), safe_files.fresh_path(target) as p:
        p.write_text("half")
        raise RuntimeError("export failed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f"]


def test_create_fresh_refuses_anything_already_there(tmp_path):
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError):
        safe_files.create_fresh(tmp_path / "link")
    assert not (tmp_path / "nowhere").exists()


def test_resuming_only_appends_to_a_plain_file_of_ours(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(PRECIOUS)
    for name, plant in (("sym", lambda p: p.symlink_to(victim)), ("hard", lambda p: p.hardlink_to(victim))):
        p = tmp_path / name
        plant(p)
        assert safe_files.open_own_for_append(p) is None and not p.exists() and not p.is_symlink()
    own = tmp_path / "own"
    own.write_bytes(b"abc")
    with safe_files.open_own_for_append(own) as f:
        assert f.tell() == 3
        f.write(b"d")
    assert own.read_bytes() == b"abcd" and victim.read_bytes() == PRECIOUS


def test_a_folder_others_can_write_is_warned_about(tmp_path):
    tmp_path.chmod(0o777)
    with pytest.warns(UserWarning, match="writable by other users"):
        assert safe_files.warn_if_shared(tmp_path, "cache")
    tmp_path.chmod(0o755)
    assert safe_files.warn_if_shared(tmp_path, "cache") == ""


# ------------------------------------------------------------------------------------------ every writer
class Planted:
    """Plants a symlink, a hard link (both to files outside) or a foreign file at paths a writer will write."""

    def __init__(self, outside: Path) -> None:
        self.outside = outside
        outside.mkdir(parents=True, exist_ok=True)
        self.paths: list[Path] = []

    def plant(self, path: Path, how: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        victim = self.outside / f"victim{len(self.paths)}"
        victim.write_bytes(PRECIOUS)
        if how == "symlink":
            path.symlink_to(victim)
        elif how == "hardlink":
            path.hardlink_to(victim)
        else:
            path.write_bytes(b"foreign")
        self.paths.append(path)

    def check(self, rewritten: bool = True) -> None:
        """Nothing outside changed; every planted path is now our regular file (or untouched)."""
        for victim in self.outside.iterdir():
            assert victim.read_bytes() == PRECIOUS, f"{victim} was written through"
        if rewritten:
            for p in self.paths:
                assert p.is_file() and not p.is_symlink() and p.stat().st_nlink == 1, p
                assert p.read_bytes() not in (PRECIOUS, b"foreign"), p
        for p in self.paths:
            leftovers = [q.name for q in p.parent.iterdir() if q.name.endswith(".tmp")]
            assert leftovers == [], leftovers


HOW = ["symlink", "hardlink", "foreign"]


@pytest.mark.parametrize("how", HOW)
def test_engine_cache_exports_and_metadata(tiny_checkpoint, tmp_path, how):
    from conftest import start_runtime

    from liteseg_ros.engines import cache

    weights = tmp_path / "w.pt"
    shutil.copy(tiny_checkpoint, weights)
    root = tmp_path / "cache"
    key = cache.checkpoint_key(weights)
    planted = Planted(tmp_path / "outside")
    onnx = cache.onnx_cache_path(key, (96, 160), root)
    meta = cache.meta_cache_path(weights, root)
    for p in (onnx, cache.record_path(onnx), meta, cache.record_path(meta)):
        planted.plant(p, how)
    out = start_runtime(weights, root)
    assert out["engine"] == ["onnxruntime", "fp32"]
    planted.check()


@pytest.mark.parametrize("how", HOW)
def test_quantize_into_the_cache_and_to_out(tiny_checkpoint, tmp_path, how):
    from liteseg_ros.cli import main
    from liteseg_ros.engines import cache

    weights = tmp_path / "w.pt"
    shutil.copy(tiny_checkpoint, weights)
    root = tmp_path / "cache"
    planted = Planted(tmp_path / "outside")
    int8 = cache.int8_cache_path(cache.checkpoint_key(weights), (64, 96), root)
    given = tmp_path / "given" / "q.onnx"
    for p in (int8, cache.record_path(int8), *cache.report_paths(int8, "onnxruntime"), given,
              *cache.report_paths(given, "onnxruntime")):
        planted.plant(p, how)
    base = ["quantize", "--weights", str(weights), "--synthetic", "2", "--holdout", "1", "--size", "64x96",
            "--threads", "1"]
    assert main([*base, "--cache-dir", str(root)]) == 0
    assert main([*base, "--out", str(given)]) == 0
    planted.check()


@pytest.mark.parametrize("how", HOW)
def test_export_out(tiny_checkpoint, tmp_path, how):
    from liteseg_ros.cli import main

    planted = Planted(tmp_path / "outside")
    out = tmp_path / "exports" / "m.onnx"
    planted.plant(out, how)
    assert main(["export", "--weights", str(tiny_checkpoint), "--size", "64x96", "-o", str(out),
                 "--no-verify"]) == 0
    planted.check()


_FULL_DISK = """
import resource, signal, sys
from liteseg_ros.tools.bench import random_weight_model
from liteseg_ros.engines.export import export_onnx
model = random_weight_model(seed=1)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.RLIM_INFINITY))
try:
    export_onnx(model, sys.argv[1], (64, 96))
except OSError as exc:
    print("failed:", exc.errno)
    sys.exit(1)
"""


def test_a_failed_export_leaves_no_temporary_file(tmp_path):
    """Before: the export's ``.<name>.<pid>.tmp`` stayed behind when writing it failed (a full disk)."""
    out = tmp_path / "exports" / "m.onnx"
    out.parent.mkdir()
    proc = subprocess.run([sys.executable, "-c", _FULL_DISK, str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "failed: 27" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize("how", HOW)
def test_tensorrt_plan_and_sidecar(tmp_path, how):
    from liteseg_ros.engines import cache
    from liteseg_ros.engines.tensorrt import cached_plan, engine_cache_key, engine_cache_path, write_plan

    key = engine_cache_key("ab" * 32, (96, 160), "fp16", "10.3.0", "GPU", 1)
    path = engine_cache_path(tmp_path / "trt", key)
    planted = Planted(tmp_path / "outside")
    for p in (path, path.with_suffix(".json"), cache.record_path(path)):
        planted.plant(p, how)
    write_plan(path, key, b"plan-bytes")
    planted.check()
    assert cached_plan(path, key) == (b"plan-bytes", "")


def test_checkpoint(tiny_checkpoint, tmp_path):
    from liteseg_ros.model import load_checkpoint, save_checkpoint

    model = load_checkpoint(tiny_checkpoint)
    for i, how in enumerate(HOW):
        planted = Planted(tmp_path / f"outside{i}")
        path = tmp_path / "ckpt" / f"{how}.pt"
        planted.plant(path, how)
        save_checkpoint(model, path, model.meta)
        planted.check()
        assert load_checkpoint(path).meta.num_classes == model.meta.num_classes


def test_training_run_folder(tmp_path):
    """A short synthetic run writes its config, log, plots, checkpoints and summary into ``out_dir``."""
    import torch

    from liteseg_ros.train.config import load_config
    from liteseg_ros.train.trainer import train

    out = tmp_path / "run"
    names = ("config.yaml", "metrics.csv", "summary.json", "class_weights.json", "loss.png", "lr.png", "miou.png",
             "checkpoints/last.pt", "checkpoints/best.pt", "checkpoints/epoch_001.pt")
    planted = Planted(tmp_path / "outside")
    for i, name in enumerate(names):
        planted.plant(out / name, HOW[i % 3])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = load_config(Path(__file__).parents[1] / "config" / "train_synthetic.yaml",
                          {"synthetic_size": [32, 64], "synthetic_train": 2, "synthetic_val": 1, "crop_size": [32, 64],
                           "batch_size": 2, "epochs": 1, "num_workers": 0, "device": "cpu", "progress": False,
                           "plots": True, "val_every": 1, "checkpoint_every": 1, "class_weights": "enet",
                           "amp": False, "out_dir": str(out)})
        result = train(cfg)
    finally:
        torch.set_num_threads(threads)
    assert result.steps == 1
    planted.check()


def test_evaluation_benchmark_and_generated_scene_outputs(tmp_path, capsys):
    from liteseg_ros.synthetic.__main__ import main as synthetic_main
    from liteseg_ros.tools.bench import write_json
    from liteseg_ros.train.cli import main as train_main

    planted = Planted(tmp_path / "outside")
    evals, scenes = tmp_path / "eval", tmp_path / "scenes"
    paths = (evals / "eval.json", evals / "eval.txt", evals / "confusion.png", tmp_path / "bench" / "rows.json",
             scenes / "000007_image.png", scenes / "000007_label.png", scenes / "000007_color.png",
             tmp_path / "sheet.png")
    for i, p in enumerate(paths):
        planted.plant(p, HOW[i % 3])
    assert train_main(["eval", "--weights", "demo", "--synthetic", "1", "--synthetic-size", "32x64",
                       "--device", "cpu", "--out", str(evals)]) == 0
    write_json([{"ms": 1.0}], tmp_path / "bench" / "rows.json", what="test")
    assert synthetic_main(["--out", str(scenes), "--n", "1", "--seed", "7", "--size", "32x64",
                           "--sheet", str(tmp_path / "sheet.png")]) == 0
    capsys.readouterr()
    planted.check()


def test_private_folder_refuses_a_link_and_closes_a_shared_folder(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    link = tmp_path / "cache" / "openvino"
    link.parent.mkdir()
    link.symlink_to(outside)
    with pytest.raises(safe_files.UnsafeFileError, match="is a link"):
        safe_files.private_folder(link)
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)
    assert safe_files.private_folder(shared) == shared and (shared.stat().st_mode & 0o777) == 0o700
    made = safe_files.private_folder(tmp_path / "new" / "openvino")
    assert made.is_dir() and (made.stat().st_mode & 0o777) == 0o700


def test_openvino_compiled_model_cache_is_never_written_through_a_link(tmp_path):
    """OpenVINO writes its compiled blobs by itself: a link planted at its folder turns the cache off."""
    pytest.importorskip("openvino")
    from liteseg_ros.engines.export import export_onnx
    from liteseg_ros.engines.openvino import OpenVinoEngine
    from liteseg_ros.tools.bench import random_weight_model

    onnx = tmp_path / "m.onnx"
    export_onnx(random_weight_model(seed=1), onnx, (64, 96))
    outside = tmp_path / "outside"
    outside.mkdir()
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "openvino").symlink_to(outside)
    logs: list[str] = []
    eng = OpenVinoEngine(onnx, "fp32", 1, log=logs.append, cache_dir=cache)
    eng.infer(np.zeros((1, 3, 64, 96), np.float32))
    assert list(outside.iterdir()) == []
    assert any("compiled-model cache is off" in m and "is a link" in m for m in logs), logs
    (cache / "openvino").unlink()
    eng = OpenVinoEngine(onnx, "fp32", 1, log=logs.append, cache_dir=cache)
    eng.infer(np.zeros((1, 3, 64, 96), np.float32))
    assert ((cache / "openvino").stat().st_mode & 0o777) == 0o700 and list((cache / "openvino").iterdir())


def test_bag_output_that_is_a_link_is_refused(tmp_path):
    from liteseg_ros.cli import main

    src = tmp_path / "in"
    src.mkdir()
    out = tmp_path / "out"
    out.symlink_to(tmp_path / "outside_bag")  # dangling: exists() is False, the link is still there
    assert main(["bag", str(src), str(out), "-t", "/x", "--no-progress"]) == 2
    assert not (tmp_path / "outside_bag").exists()


@pytest.mark.ros
def test_demo_output(tmp_path, tiny_checkpoint):
    out = tmp_path / "demo"
    planted = Planted(tmp_path / "outside")
    for i, name in enumerate(("demo_params.yaml", "node.log", "overlay.mp4", "contact_sheet.png", "free_space.log")):
        planted.plant(out / name, HOW[i % 3])
    maybe = Planted(tmp_path / "outside_maybe")  # written only when the grid of the last frame came in time
    maybe.plant(out / "free_space.png", "symlink")
    exe = Path(sys.executable).parent / "liteseg"
    proc = subprocess.run([str(exe), "demo", "--weights", str(tiny_checkpoint), "--frames", "3", "--rate", "4",
                           "--size", "90x160", "--network-size", "64x96", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    planted.check()
    maybe.check(rewritten=not (out / "free_space.png").is_symlink())
