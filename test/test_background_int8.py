"""background_int8: int8 made from received frames in a background thread, swapped in between batches.

The policy tests give BackgroundInt8 small real callables (files in a temporary engine cache,
engines that answer with a fixed class); the last test runs the node's real wiring
(``for_node``: ONNX Runtime quantization of a small random-weight LiteSeg, fp32 reference, report,
engine) on generated frames and watches what is written where.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from liteseg_ros.background_int8 import BackgroundInt8, Int8Model, for_node, int8_pays
from liteseg_ros.classes import ClassTable
from liteseg_ros.engines.base import Engine, EngineInfo, EngineOutput
from liteseg_ros.pipeline import Pipeline, PipelineConfig, Wants

NET = (24, 32)


class ClassEngine(Engine):
    """Labels every pixel with one class; ``hold`` (a callable) runs inside the forward."""

    num_classes = 19

    def __init__(self, cls: int, precision: str = "fp32", hold=None) -> None:
        self.cls, self.hold, self.closed = cls, hold, False
        self.info = EngineInfo("onnxruntime", "cpu", precision)

    def _infer(self, batch, want_confidence, want_logits):
        if self.hold is not None:
            self.hold()
        n, _, h, w = batch.shape
        label = np.full((n, h, w), self.cls, np.uint8)
        return EngineOutput(label, np.full((n, h, w), 255, np.uint8) if want_confidence else None)

    def close(self) -> None:
        self.closed = True


class Cache:
    """A temporary engine cache with the three callables BackgroundInt8 takes, counting calls."""

    def __init__(self, root: Path, figure: float) -> None:
        self.root, self.figure = root, figure
        self.path = root / "int8" / "model_int8.onnx"
        self.calls = {"quantize": 0, "agreement": 0, "store": 0, "build": 0}
        self.calibration: list[np.ndarray] = []
        self.holdout: list[np.ndarray] = []

    def quantize(self, frames):
        self.calls["quantize"] += 1
        self.calibration = frames
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_bytes(b"int8 model made from %d frames" % len(frames))
        return self.path

    def agreement(self, path, frames):
        self.calls["agreement"] += 1
        self.holdout = frames
        return self.figure, {"label_agreement": self.figure, "holdout": {"images": len(frames)}}

    def store(self, path, report):
        self.calls["store"] += 1
        Path(f"{path}.report.json").write_text(json.dumps(report))

    def cached(self):
        rep = Path(f"{self.path}.report.json")
        if not rep.is_file():
            return None
        r = json.loads(rep.read_text())
        return Int8Model(self.path, r["label_agreement"], r["holdout"]["images"], "engine cache")

    def build(self, model):
        self.calls["build"] += 1
        return ClassEngine(7, "int8")


def background(cache: Cache, min_agreement: float = 0.99, **kw) -> BackgroundInt8:
    return BackgroundInt8(quantize=cache.quantize, agreement=cache.agreement, store=cache.store, build=cache.build,
                          cached=cache.cached, min_agreement=min_agreement, network_size=NET,
                          calib_frames=4, holdout_frames=2, stride=2, log=lambda m: None, **kw)


def frames(n: int, size=(48, 64), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]


def wait_state(bg: BackgroundInt8, states: tuple[str, ...], timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while bg.state not in states:
        assert time.monotonic() < end, f"still {bg.state}: {bg.reason}"
        time.sleep(0.01)


def test_the_engine_changes_only_between_batches_on_the_worker(tmp_path):
    """The int8 engine becomes ready *during* a forward; that batch still runs wholly on fp32 and the
    pipeline keeps its engine until the worker's own apply() between batches."""
    cache = Cache(tmp_path, figure=0.995)
    bg = background(cache)
    during: list[str] = []

    def hold():  # the background finishes while this forward is running
        if bg.state == "collecting":
            return
        wait_state(bg, ("ready",))
        during.append(bg.state)

    fp32 = ClassEngine(3, hold=hold)
    pipe = Pipeline(fp32, ClassTable.cityscapes(), PipelineConfig(network_size=NET))
    labels, swapped = [], []
    for batch in [frames(2, seed=i) for i in range(8)]:
        swapped.append(bg.apply(pipe))  # the worker's between-batches point
        bg.offer(batch)
        segs = pipe.run(batch, wants=Wants.only_label())
        labels.append({int(v) for s in segs for v in np.unique(s.label)})
    assert during == ["ready"]  # it was ready mid-forward ...
    first_int8 = swapped.index(True)
    assert labels[:first_int8] == [{3}] * first_int8  # ... and every batch until apply() ran on fp32 alone
    assert labels[first_int8:] == [{7}] * (len(labels) - first_int8)
    assert pipe.engine.info.precision == "int8" and fp32.closed and bg.state == "in use"
    assert "99.50%" in bg.reason
    # the calibration and held-out frames are different received frames, at the network size
    assert len(cache.calibration) == 4 and len(cache.holdout) == 2
    assert all(f.shape == (*NET, 3) for f in cache.calibration + cache.holdout)
    assert not any(np.array_equal(a, b) for a in cache.calibration for b in cache.holdout)


def test_a_model_below_the_threshold_is_never_used_nor_made_again(tmp_path):
    cache = Cache(tmp_path, figure=0.97)
    bg = background(cache)
    pipe = Pipeline(ClassEngine(3), ClassTable.cityscapes(), PipelineConfig(network_size=NET))
    for i in range(10):
        assert not bg.apply(pipe)
        bg.offer(frames(2, seed=i))
        pipe.run(frames(1), wants=Wants.only_label())
        if bg.state == "rejected":
            break
    wait_state(bg, ("rejected",))
    for _ in range(3):
        assert not bg.apply(pipe)
    assert pipe.engine.info.precision == "fp32" and cache.calls["build"] == 0
    assert "97.00%" in bg.reason and "below" in bg.reason
    assert cache.calls["store"] == 1  # the figure is kept with the file ...
    again = background(cache)  # ... so the next start neither quantizes nor uses it
    assert again.state == "rejected"
    again.offer(frames(20))
    assert cache.calls["quantize"] == 1 and not again.apply(pipe)


def test_a_restart_reuses_the_cached_model_without_quantizing(tmp_path):
    cache = Cache(tmp_path, figure=0.995)
    first = background(cache)
    first.offer(frames(12))
    wait_state(first, ("ready",))
    first.close()
    assert cache.calls["quantize"] == 1
    pipe = Pipeline(ClassEngine(3), ClassTable.cityscapes(), PipelineConfig(network_size=NET))
    again = background(cache)  # a new start: no frames needed, nothing quantized
    wait_state(again, ("ready",))
    assert again.apply(pipe) and pipe.engine.info.precision == "int8"
    assert cache.calls["quantize"] == 1 and cache.calls["agreement"] == 1


def test_a_failure_leaves_the_node_on_its_path(tmp_path):
    cache = Cache(tmp_path, figure=0.995)

    def broken(_frames):
        raise RuntimeError("calibration ran out of memory")

    bg = BackgroundInt8(quantize=broken, agreement=cache.agreement, store=cache.store, build=cache.build,
                        min_agreement=0.99, network_size=NET, calib_frames=2, holdout_frames=1, stride=1,
                        log=lambda m: None)
    pipe = Pipeline(ClassEngine(3), ClassTable.cityscapes(), PipelineConfig(network_size=NET))
    bg.offer(frames(3))
    wait_state(bg, ("failed",))
    assert not bg.apply(pipe) and "out of memory" in bg.reason and pipe.engine.info.precision == "fp32"


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def test_the_node_wiring_quantizes_received_frames_into_the_engine_cache_only(tiny_checkpoint, tmp_path,
                                                                                 monkeypatch):
    """for_node with the real quantization: an int8 model made from received frames, checked against
    fp32 on others, swapped in between batches, stored in the engine cache with its figure (picked by
    a restart's engine selection), and nothing written anywhere else (home, temp, working folder)."""
    from liteseg_ros import params
    from liteseg_ros.engines.cache import load_report
    from liteseg_ros.runtime import build_pipeline
    from liteseg_ros.synthetic import SceneConfig, drive

    home, tmpdir, work, cache_dir = (tmp_path / n for n in ("home", "tmp", "work", "cache"))
    for d in (home, tmpdir, work):
        d.mkdir()
    monkeypatch.setenv("LITESEG_BACKGROUND_INT8", "1")  # conftest turns it off for the other tests
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr("tempfile.tempdir", str(tmpdir))
    monkeypatch.chdir(work)
    values = {**params.defaults(), "weights": str(tiny_checkpoint), "backend": "onnxruntime", "precision": "auto",
              "network_width": 64, "network_height": 48, "engine_cache_dir": str(cache_dir), "num_threads": 1,
              "min_label_agreement": 0.0}
    pipe, _ = build_pipeline(params.pipeline_settings(values), log=lambda m: None)
    assert pipe.engine.info.precision == "fp32"
    before = {d: files_under(d) for d in (home, tmpdir, work)}
    log: list[str] = []
    bg = for_node(values, str(tiny_checkpoint), pipe, log=log.append, flags=["avx512_vnni"],
                  calib_frames=4, holdout_frames=2, stride=1)
    assert bg is not None
    images = [s.image for s in drive(3, 40, SceneConfig(height=72, width=96))]
    end = time.monotonic() + 600
    i = 0
    while bg.state not in ("in use", "rejected", "failed"):
        assert time.monotonic() < end, bg.describe()
        bg.apply(pipe)
        batch = [images[i % len(images)]]
        bg.offer(batch)
        pipe.run(batch, wants=Wants.only_label())
        i += 1
        time.sleep(0.02)
    assert bg.state == "in use", bg.describe()
    assert pipe.engine.info.precision == "int8" and "received frames" in pipe.engine.info.reason
    assert any("quantizing from 4 received frames" in m for m in log)
    bg.close()
    assert {d: files_under(d) for d in (home, tmpdir, work)} == before
    made = files_under(cache_dir)
    int8 = [p for p in made if p.suffix == ".onnx" and "int8" in p.parts]
    assert len(int8) == 1
    rep = load_report(int8[0], "onnxruntime")
    assert rep["holdout"] == {"images": 2, "source": "received frames"}
    assert rep["calibration"]["source"] == "received frames" and rep["calibration"]["images"] == 4
    # a restart: the engine selection picks the cached int8 model at once, nothing runs in the background
    pipe.engine.close()
    again, _ = build_pipeline(params.pipeline_settings(values), log=lambda m: None)
    assert again.engine.info.precision == "int8"
    assert for_node(values, str(tiny_checkpoint), again, log=log.append, flags=["avx512_vnni"]) is None
    assert "already int8" in log[-1]
    again.engine.close()


def test_for_node_says_why_it_does_not_start(tiny_checkpoint, monkeypatch):
    monkeypatch.setenv("LITESEG_BACKGROUND_INT8", "1")  # conftest turns it off for the other tests
    pipe = Pipeline(ClassEngine(3), ClassTable.cityscapes(), PipelineConfig(network_size=NET))
    base = {"precision": "auto"}
    cases = [({"precision": "fp32"}, str(tiny_checkpoint), ["avx512_vnni"], "precision is not auto"),
             (base, "", ["avx512_vnni"], "not a checkpoint"),
             (base, "model.onnx", ["avx512_vnni"], "not a checkpoint"),
             (base, str(tiny_checkpoint), ["avx2"], "no VNNI/AMX")]
    for values, weights, flags, why in cases:
        log: list[str] = []
        assert for_node(values, weights, pipe, log=log.append, flags=flags) is None
        assert why in log[-1]
    monkeypatch.setenv("LITESEG_BACKGROUND_INT8", "0")
    log = []
    assert for_node(base, str(tiny_checkpoint), pipe, log=log.append, flags=["avx512_vnni"]) is None
    assert "off" in log[-1]


@pytest.mark.skipif(not int8_pays(), reason="the CPU has no VNNI/AMX: a node does not start background int8")
def test_a_node_swaps_in_int8_made_from_the_frames_it_receives(start_node, ros, tiny_checkpoint, tmp_path,
                                                                monkeypatch):
    """The real node: starts on ONNX Runtime fp32 at once, makes int8 from received frames in the
    background, then ~/info says int8 and labels keep coming; the report in the engine cache names the
    received frames."""
    from rclpy.qos import DurabilityPolicy, QoSProfile, QoSReliabilityPolicy
    from sensor_msgs.msg import Image

    from liteseg_ros import image_codec
    from liteseg_ros.engines.cache import load_report
    from liteseg_ros.msg import SegmentationInfo
    from liteseg_ros.synthetic import SceneConfig, drive

    monkeypatch.setenv("LITESEG_BACKGROUND_INT8", "1")  # conftest turns it off for the other tests
    cache = tmp_path / "cache"
    node = start_node({"weights": str(tiny_checkpoint), "backend": "onnxruntime", "precision": "auto",
                       "network_width": 64, "network_height": 48, "engine_cache_dir": str(cache),
                       "min_label_agreement": 0.0})
    latched = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    infos = ros.collect(SegmentationInfo, "/liteseg/info", latched)
    labels = ros.collect(Image, "/liteseg/label")
    pub = ros.node.create_publisher(Image, "/image", QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE))
    ros.wait_for(lambda: pub.get_subscription_count() > 0 or not node.alive(), 120, "node subscription")
    assert node.alive(), node.output()
    ros.wait_for(lambda: infos, 30, "~/info")
    assert infos[0].precision == "fp32"
    images = [s.image for s in drive(5, 20, SceneConfig(height=72, width=96))]
    end = time.monotonic() + 600
    i = 0
    while not any(m.precision == "int8" for m in infos):
        assert time.monotonic() < end and node.alive(), node.output()[-3000:]
        msg = Image()
        image_codec.fill_image(msg, images[i % len(images)], "bgr8")
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(time.time_ns(), 10**9)
        pub.publish(msg)
        i += 1
        time.sleep(0.03)
    before = len(labels)
    for k in range(5):
        msg = Image()
        image_codec.fill_image(msg, images[k], "bgr8")
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(time.time_ns(), 10**9)
        pub.publish(msg)
        time.sleep(0.1)
    ros.wait_for(lambda: len(labels) > before, 30, "labels after the swap")
    log = node.output()
    assert "background int8: quantizing: quantizing from 24 received frames" in log
    assert "background int8: in use" in log
    rep = load_report(next((cache / "int8").glob("*.onnx")), "onnxruntime")
    assert rep["holdout"] == {"images": 8, "source": "received frames"}
    assert node.alive()
