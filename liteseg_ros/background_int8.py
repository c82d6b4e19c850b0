"""int8 made in the background from the frames a node receives, swapped in between batches.

Ring 2: numpy, OpenCV and the pipeline; never rclpy, message packages or the node (torch, onnx and
the runtimes only inside :func:`for_node`'s callables, on the background thread).

Why: on a CPU with int8 dot-product instructions (VNNI, AMX) an int8 model runs several times
faster than fp32, but quantizing takes about a minute, and calibrating on generated scenes is a
guess at what the camera sees. So the node starts at once on the best path it already has, and
this object, fed the frames the node receives anyway:

1. keeps a bounded, in-memory set of them, shrunk to the network input exactly as the pipeline's
   preprocessing would (every ``stride``-th frame: ``calib_frames`` to calibrate on, then
   ``holdout_frames`` other ones to check with);
2. on a background thread (lowered priority), quantizes from the first set, measures the label
   agreement with fp32 on the second, and stores the figure with the file in the engine cache;
3. below ``min_agreement`` the model is never used (and, being cached with its figure, is not
   made again on the next start); otherwise it builds the engine and leaves it *ready*;
4. the worker calls :meth:`BackgroundInt8.apply` between batches: only there, on the worker's own
   thread, is the pipeline's engine replaced, so no batch ever runs on two models.

A cached model with its figure (``cached``) is used directly: a restart quantizes nothing again.
What quantizing, checking and storing mean is passed in as callables, so the policy above is
tested with small real models in seconds and the node wires the real quantization in
:func:`for_node`.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from liteseg_ros.engines.selection import DEFAULT_MIN_LABEL_AGREEMENT
from liteseg_ros.segmentation import Geometry

#: Set to 0 to keep the node on the path it starts with (no background quantization).
ENV_SWITCH = "LITESEG_BACKGROUND_INT8"
#: /proc/cpuinfo flags of int8 dot-product instructions: where int8 pays on a CPU.
INT8_CPU_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")

STATES = ("collecting", "quantizing", "checking", "building", "ready", "in use", "rejected", "failed", "stopped")


@dataclass(frozen=True)
class Int8Model:
    """A quantized model file and its label agreement with fp32."""

    path: Path
    agreement: float
    holdout_frames: int
    source: str  # where the figure comes from ("received frames", or the cache's report)


class BackgroundInt8:
    """Collects frames, quantizes and checks in a background thread, hands a ready engine to the worker.

    ``quantize(calibration) -> Path``: an int8 model file made from network-size uint8 BGR frames;
    ``agreement(path, holdout) -> (float, report)``: its label agreement with fp32 on other frames;
    ``store(path, report)``: keep the figure with the file (the engine cache);
    ``build(model) -> Engine``: the engine that runs it;
    ``cached() -> Int8Model | None``: a model made before, with its figure (skips steps 1-2).
    """

    def __init__(self, *, quantize: Callable[[list[np.ndarray]], Path],
                 agreement: Callable[[Path, list[np.ndarray]], tuple[float, Any]],
                 store: Callable[[Path, Any], None], build: Callable[[Int8Model], Any],
                 min_agreement: float, network_size: tuple[int, int], resize_mode: str = "stretch",
                 cached: Callable[[], Int8Model | None] | None = None, calib_frames: int = 24,
                 holdout_frames: int = 8, stride: int = 5, log: Callable[[str], None] = print,
                 nice: int = 10) -> None:
        if calib_frames < 1 or holdout_frames < 1 or stride < 1:
            raise ValueError("calib_frames, holdout_frames and stride must be >= 1")
        self._quantize, self._agreement, self._store, self._build = quantize, agreement, store, build
        self.min_agreement = float(min_agreement)
        self.network_size, self.resize_mode = tuple(network_size), resize_mode
        self.calib_frames, self.holdout_frames, self.stride = calib_frames, holdout_frames, stride
        self._log, self._nice = log, nice
        self._lock = threading.Lock()
        self._frames: list[np.ndarray] = []
        self._seen = 0
        self._ready: Any = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self.model: Int8Model | None = None
        self.state, self.reason = "collecting", "collecting received frames to calibrate on"
        found = cached() if cached is not None else None
        if found is not None:
            self.model = found
            if found.agreement < self.min_agreement:
                self._set("rejected", self._below(found))
            else:
                self._start(partial(self._finish, found))
        else:
            self._set("collecting", f"keeping one received frame in {stride} ({calib_frames} to calibrate on, "
                                    f"{holdout_frames} to check with), at the network size, in memory")

    # ------------------------------------------------------------------ the worker's side
    def offer(self, images: Sequence[np.ndarray]) -> None:
        """Frames the worker received (uint8 BGR, any size): every ``stride``-th is kept until there are
        enough; cheap otherwise (a counter). Starts the background work once the set is complete."""
        if self.state != "collecting":
            return
        need = self.calib_frames + self.holdout_frames
        for img in images:
            self._seen += 1
            if (self._seen - 1) % self.stride:
                continue
            self._frames.append(self._shrink(img))
            if len(self._frames) >= need:
                frames, self._frames = self._frames, []
                self._set("quantizing", f"quantizing from {self.calib_frames} received frames in the background")
                self._start(partial(self._make, frames[:self.calib_frames], frames[self.calib_frames:]))
                return

    def apply(self, pipeline: Any) -> bool:
        """Between batches, on the worker's thread: put a ready int8 engine into ``pipeline``. True if swapped."""
        with self._lock:
            engine, self._ready = self._ready, None
        if engine is None:
            return False
        old = pipeline.swap_engine(engine)
        try:
            old.close()
        finally:
            self._set("in use", f"int8 in use: {self._figure(self.model)}")
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Stop: a model still being made is dropped (its thread ends on its own), a ready engine closed."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            engine, self._ready = self._ready, None
        if engine is not None:
            engine.close()
        if self.state not in ("in use", "rejected", "failed"):
            self._set("stopped", "stopped before int8 was ready")

    def describe(self) -> str:
        """One line for the log and diagnostics: the state and why."""
        return f"background int8: {self.state}: {self.reason}"

    # ------------------------------------------------------------------ the background thread
    def _start(self, work: Callable[[], None]) -> None:
        self._thread = threading.Thread(target=self._guarded, args=(work,), name="liteseg-int8", daemon=True)
        self._thread.start()

    def _guarded(self, work: Callable[[], None]) -> None:
        if self._nice:
            try:  # on Linux a thread's nice value is its own; the runtimes' threads started here inherit it
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self._nice)
            except (AttributeError, OSError):
                pass
        try:
            work()
        except Exception as exc:  # noqa: BLE001 - the node keeps running on its current path whatever happens
            self._set("failed", f"{type(exc).__name__}: {exc}; staying on the current path")

    def _make(self, calibration: list[np.ndarray], holdout: list[np.ndarray]) -> None:
        path = self._quantize(calibration)
        if self._stopped.is_set():
            return
        self._set("checking", f"checking label agreement with fp32 on {len(holdout)} other received frames")
        figure, report = self._agreement(Path(path), holdout)
        self._store(Path(path), report)
        self.model = Int8Model(Path(path), float(figure), len(holdout), "received frames")
        if self.model.agreement < self.min_agreement:
            self._set("rejected", self._below(self.model))
            return
        self._finish(self.model)

    def _finish(self, model: Int8Model) -> None:
        if self._stopped.is_set():
            return
        self._set("building", f"building the int8 engine ({self._figure(model)})")
        engine = self._build(model)
        with self._lock:
            if self._stopped.is_set():
                engine.close()
                return
            self._ready = engine
        self._set("ready", f"int8 ready, swapped in before the next batch ({self._figure(model)})")

    # ------------------------------------------------------------------ helpers
    def _shrink(self, img: np.ndarray) -> np.ndarray:
        """The frame at the network input's content size, resized as ``Pipeline.preprocess`` resizes it,
        so preprocessing the stored frame later gives the same network input (and memory stays bounded)."""
        g = Geometry.fit(img.shape[:2], self.network_size, self.resize_mode)
        _, _, ch, cw = g.content
        if (ch, cw) == img.shape[:2]:
            return img.copy()
        interp = cv2.INTER_AREA if ch < img.shape[0] and cw < img.shape[1] else cv2.INTER_LINEAR
        return cv2.resize(img, (cw, ch), interpolation=interp)

    def _set(self, state: str, reason: str) -> None:
        self.state, self.reason = state, reason
        self._log(self.describe())

    @staticmethod
    def _figure(model: Int8Model | None) -> str:
        if model is None:
            return "no figure"
        return f"{model.agreement:.2%} label agreement with fp32 on {model.holdout_frames} {model.source}"

    def _below(self, model: Int8Model) -> str:
        return f"not used: {self._figure(model)} is below min_label_agreement {self.min_agreement:.2%}"


# ---------------------------------------------------------------------------- the node's wiring
def int8_pays(flags: Sequence[str] | None = None) -> bool:
    """Whether the CPU has int8 dot-product instructions (VNNI or AMX), from /proc/cpuinfo."""
    if flags is None:
        try:
            with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
                flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
        except OSError:
            flags = []
    return any(f in flags for f in INT8_CPU_FLAGS)


def for_node(values: Mapping[str, Any], weights: str, pipeline: Any, log: Callable[[str], None] = print,
             flags: Sequence[str] | None = None, **tuning: Any) -> BackgroundInt8 | None:
    """The background int8 of a node, or None where it does not apply (and the log says why).

    Applies with ``precision: auto`` on the CPU, for a checkpoint (not an ONNX file, not random
    weights), on a CPU with VNNI or AMX, when the engine the node started with is not int8 already
    (a cached int8 model with a good figure is picked at start-up by the engine selection itself).
    The int8 model goes where ``liteseg quantize`` puts it (the engine cache), with a report whose
    held-out set is "received frames", so the next start picks it without waiting. ``flags``: CPU
    flags instead of /proc/cpuinfo's; ``tuning``: BackgroundInt8's frame counts (calib_frames, ...).
    """
    info = pipeline.engine.info
    why_not = (
        "off (LITESEG_BACKGROUND_INT8=0)" if os.environ.get(ENV_SWITCH, "1") == "0" else
        "precision is not auto" if values.get("precision") != "auto" else
        f"the engine runs on {info.device}" if info.device != "cpu" else
        "already int8" if info.precision == "int8" else
        f"backend {info.backend} runs no int8" if info.backend not in ("onnxruntime", "openvino") else
        "weights are not a checkpoint" if not weights or str(weights).lower().endswith(".onnx") else
        "the CPU has no VNNI/AMX (int8 would not pay)" if not int8_pays(flags) else "")
    if why_not:
        log(f"background int8: not started: {why_not}")
        return None
    from liteseg_ros.tools import quantize as q  # the one place this module names the quantization module

    size = tuple(pipeline.config.network_size)
    cache_dir = values.get("engine_cache_dir") or None
    threads = int(values.get("num_threads", 0)) or None
    backend = info.backend
    path = q.int8_path(str(weights), size, cache_dir)
    model: list[Any] = []

    def module():
        if not model:
            from liteseg_ros.model import load_checkpoint

            model.append(load_checkpoint(weights, map_location="cpu").eval())
        return model[0]

    def samples(frames: list[np.ndarray]) -> list:
        return [q.Sample(f, None, f"received {i}") for i, f in enumerate(frames)]

    def quantize(frames: list[np.ndarray]) -> Path:
        from liteseg_ros.engines.cache import model_key, write_record

        out, _ = q.quantize_model(module(), path, size, samples(frames), [], backends=[], num_threads=threads,
                                  calib_source="received frames", log=log)
        write_record(out, model_key(str(weights)))  # what the engine cache checks before it trusts the file
        return out

    def agreement(p: Path, frames: list[np.ndarray]) -> tuple[float, dict]:
        rep = q.evaluate_int8(module(), p, backend, samples(frames), threads,
                              {"holdout": {"images": len(frames), "source": "received frames"}}, write=False)
        return float(rep["label_agreement"]), rep

    def store(p: Path, rep: dict) -> None:
        q.write_report(p, backend, rep)

    def cached() -> Int8Model | None:
        from liteseg_ros.engines.cache import cached_file_ok, load_report, model_key

        rep = load_report(path, backend) if cached_file_ok(path, model_key(str(weights)), log) else None
        if rep is None:
            return None
        return Int8Model(path, float(rep["label_agreement"]), int(rep.get("holdout", {}).get("images", 0)),
                         f"{rep.get('holdout', {}).get('source', 'cached')} (engine cache)")

    def build(m: Int8Model):
        from liteseg_ros.engines import create_engine

        engine = create_engine(str(m.path), backend, "cpu", "int8", size, num_threads=threads, cache_dir=cache_dir,
                               log=log)
        engine.info.reason = (f"background int8 from received frames: {m.agreement:.2%} label agreement with "
                              f"fp32 on {m.holdout_frames} {m.source}")
        return engine

    made: list[BackgroundInt8] = []
    started_on = info.reason

    def say(line: str) -> None:
        """The log, and the running engine's reason (what ~/info and /diagnostics show) until int8 runs."""
        log(line)
        if not made or made[0].state != "in use":
            info.reason = f"{started_on}; {line}"

    made.append(BackgroundInt8(
        quantize=quantize, agreement=agreement, store=store, build=build, cached=cached,
        min_agreement=float(values.get("min_label_agreement", DEFAULT_MIN_LABEL_AGREEMENT)), network_size=size,
        resize_mode=str(values.get("resize_mode", "stretch")), log=say, **tuning))
    return made[0]
