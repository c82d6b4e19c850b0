"""THE per-frame pipeline: uint8 image(s) -> Segmentation (label, confidence, colour, overlay, masks, boundary).

Ring 2: numpy, OpenCV and the engine interface; never rclpy, message packages or the node. The node,
the bag tool, the demo and the benchmarks all call this one implementation, so preprocessing,
argmax, colouring and masking exist exactly once.

Data flows one way: images -> ``preprocess`` (resize/letterbox + normalise into one NCHW batch) ->
``Engine.infer`` (labels and confidence at network size, post-processing inside the graph) ->
``postprocess`` (threshold, map back to the input size, colour, blend, masks, boundary).
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial

import cv2
import numpy as np

from liteseg_ros.classes import ClassTable
from liteseg_ros.engines.base import Engine
from liteseg_ros.segmentation import (  # noqa: F401 - re-exported: the pipeline's own types
    BOUNDARY_GROUP,
    LABEL,
    OUTPUT_RESOLUTIONS,
    RESIZE_MODES,
    Boundary,
    Geometry,
    NearestUpsample,
    PipelineConfig,
    Segmentation,
    Wants,
    _bgra32,
    free_space_boundary,
    nearest_maps,
    upsampled_boundary,
)


@dataclass(frozen=True)
class Snapshot:
    """One config together with every table derived from it, made once per change and never mutated.

    Why one object: a live parameter change must never meet a batch half-way. If the config and its
    tables lived in two attributes, a change landing between the two assignments (or between two
    frames of a batch) would let a frame mix, say, the old confidence threshold with the new mask
    tables, a combination that no configuration ever asked for. The pipeline swaps this whole
    object in one assignment and ``run`` reads it once per batch, so every frame of a batch sees
    exactly one configuration.
    """

    cfg: PipelineConfig
    #: per channel (RGB order): x_norm = x * scale + bias, with x in 0..255
    scale: np.ndarray
    bias: np.ndarray
    #: B, G, R, 255 per label as one uint32 (little-endian byte order = memory order)
    palette_bgra32: np.ndarray
    #: label -> 0/255 lookup table of each mask group
    group_luts: Mapping[str, np.ndarray]
    #: the same tables as device tensors for the torch stages (None on the numpy path)
    torch: dict | None = None


class Pipeline:
    """Runs frames through an engine and turns labels into every published product.

    Thread-safe for one worker thread calling ``run`` while other threads call ``update`` (live
    parameters): each change builds a new :class:`Snapshot` (config + derived tables) that replaces
    the old one in a single assignment, and ``run`` takes the snapshot once per batch.

    ``backend`` picks where pre/post-processing run: ``numpy`` (OpenCV on the host, the CPU path),
    ``torch`` (on the engine's ``tensor_device``, see ``pipeline_torch``; needs an engine that takes
    device tensors: PyTorch, TensorRT), or ``auto``: torch when the engine computes on a CUDA device,
    else numpy. Both give the same Segmentation (see ``pipeline_torch`` for what is bit-identical).
    """

    def __init__(self, engine: Engine, classes: ClassTable, config: PipelineConfig | None = None,
                 backend: str = "auto") -> None:
        self.engine = engine
        self.classes = classes
        self._lock = threading.Lock()
        config = config or PipelineConfig(mask_groups={})
        device = getattr(engine, "tensor_device", None)
        if backend == "auto":
            backend = "torch" if device is not None and getattr(device, "type", "") == "cuda" else "numpy"
        if backend not in ("numpy", "torch"):
            raise ValueError(f"pipeline backend {backend!r} is not one of: auto, numpy, torch")
        self._torch = None
        if backend == "torch":
            if device is None:
                raise ValueError(f"pipeline backend 'torch' needs an engine that runs on torch tensors "
                                 f"(pytorch, tensorrt); {engine.info.backend} does not")
            from liteseg_ros.pipeline_torch import TorchStages

            self._torch = TorchStages(device, classes)
        self.backend = backend
        self._snap = self._snapshot(config)

    # ----------------------------------------------------------------- configuration
    @property
    def config(self) -> PipelineConfig:
        return self._snap.cfg

    @property
    def snapshot(self) -> Snapshot:
        """The current config and its tables, as one consistent object (what the next batch will use)."""
        return self._snap

    def update(self, **changes) -> PipelineConfig:
        """Change live settings (overlay_alpha, confidence_threshold, mask_groups, output_resolution).

        The new snapshot is built completely first (a bad value raises and changes nothing), then
        swapped in with one assignment; a batch already running keeps the snapshot it started with.
        """
        with self._lock:
            snap = self._snapshot(replace(self._snap.cfg, **changes))
            self._snap = snap
            return snap.cfg

    def _snapshot(self, cfg: PipelineConfig) -> Snapshot:
        """``cfg`` and every table derived from it, checked, as one immutable object."""
        for g, ids in cfg.mask_groups.items():
            bad = [i for i in ids if not 0 <= i < len(self.classes)]
            if bad:
                raise ValueError(f"mask group {g!r} has label ids {bad} outside 0..{len(self.classes) - 1}")
        mean = np.asarray(cfg.mean, np.float32)
        std = np.asarray(cfg.std, np.float32)
        # Per channel (RGB order): x_norm = x * scale + bias, with x in 0..255.
        scale = 1.0 / (255.0 * std)
        bias = -mean / std
        return Snapshot(cfg=cfg, scale=scale, bias=bias,
                        palette_bgra32=_bgra32(self.classes.palette_lut(bgr=True)),
                        group_luts={g: self.classes.group_lut(ids) for g, ids in cfg.mask_groups.items()},
                        torch=self._torch.state(cfg, scale, bias) if self._torch is not None else None)

    def swap_engine(self, engine: Engine) -> Engine:
        """Run ``engine`` from the next batch on; returns the engine it replaces (the caller closes it).

        Call it only from the thread that calls ``run``, between batches (``background_int8`` does):
        ``run`` reads the engine once per batch, so a batch never runs on two models.
        """
        if self._torch is not None and getattr(engine, "tensor_device", None) is None:
            raise ValueError(f"this pipeline runs on torch tensors; {engine.info.backend} does not")
        old, self.engine = self.engine, engine
        return old

    # ----------------------------------------------------------------- stages
    def preprocess(self, images: Sequence[np.ndarray], color_order: str = "bgr",
                   snap: Snapshot | None = None) -> tuple[np.ndarray, list[Geometry]]:
        """uint8 (H, W, 3) frames -> one float32 (N, 3, h, w) RGB-normalised batch + their geometry.

        ``snap``: the snapshot to use (``run`` passes the one it took for the batch); default the current.
        """
        snap = snap or self._snap
        cfg = snap.cfg
        nh, nw = cfg.network_size
        batch = np.empty((len(images), 3, nh, nw), np.float32)
        geoms = []
        scale, bias = snap.scale, snap.bias
        # channel c of the batch (R, G, B) comes from source channel src[c]
        src = (2, 1, 0) if color_order == "bgr" else (0, 1, 2)
        for i, img in enumerate(images):
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise ValueError(f"expected a (H, W, 3) uint8 image, got {img.shape} {img.dtype}")
            g = Geometry.fit(img.shape[:2], (nh, nw), cfg.resize_mode)
            t, left, ch, cw = g.content
            if (ch, cw) == img.shape[:2]:
                resized = img
            else:
                interp = cv2.INTER_AREA if ch < img.shape[0] and cw < img.shape[1] else cv2.INTER_LINEAR
                resized = cv2.resize(img, (cw, ch), interpolation=interp)
            if (ch, cw) != (nh, nw):
                batch[i] = 0.0  # letterbox padding = the mean colour (zero after normalisation)
            planes = cv2.split(resized)  # contiguous planes: the multiplies below stream memory
            for c in range(3):
                np.multiply(planes[src[c]], scale[c], out=batch[i, c, t:t + ch, left:left + cw],
                            casting="unsafe")
                batch[i, c, t:t + ch, left:left + cw] += bias[c]
            geoms.append(g)
        return batch, geoms

    def postprocess(self, label: np.ndarray, confidence: np.ndarray | None, geom: Geometry,
                    image: np.ndarray | None, color_order: str = "bgr", wants: Wants = Wants(),
                    snap: Snapshot | None = None) -> Segmentation:
        """Network-size label/confidence of one frame -> every product at the configured resolution.

        Every product but the confidence is a per-pixel function of the label, and a nearest-neighbour
        upsample only copies label pixels, so the two commute: the per-pixel work runs at network
        size and the result is upsampled. The upsample itself is a column step at network height
        (``cv2.merge`` of k copies for a whole factor k) followed by whole-row copies
        (:class:`NearestUpsample`), several times cheaper than OpenCV's per-pixel nearest resize.
        Masks are LUTs of the network-size label; the colours are looked up once at network size (one
        BGRA table, 4 bytes per pixel), taken to the output width once, and shuffled into the RGB
        colour image and the BGR overlay input before their rows are copied; the overlay blend runs
        in row bands. The boundary is computed on the network-size mask and mapped through the same
        index maps, also exactly. Only the confidence is resampled bilinearly, at output resolution,
        as before. From about a megapixel these independent products are made side by side
        (:func:`_share_out`); each is one freshly allocated array, written once, so the bytes do not
        depend on the thread count.

        ``snap``: the snapshot to use (``run`` passes the one it took for the batch); default the current.
        """
        snap = snap or self._snap
        cfg = snap.cfg
        if cfg.confidence_threshold > 0.0 and confidence is not None:
            label = label.copy()
            label[confidence < round(cfg.confidence_threshold * 255)] = self.classes.ignore_label
        label_net = np.ascontiguousarray(geom.crop(label))
        out_size = geom.output_size(cfg.output_resolution)
        # Independent jobs, each writing its own field: _share_out runs them on OpenCV's thread
        # count (the forward is idle meanwhile), largest first; small frames on this thread alone,
        # where handing jobs over would cost more than it saves.
        threads = _threads() if geom.input_size[0] * geom.input_size[1] >= PARALLEL_MIN_PIXELS else 1
        frame = _Frame(snap=snap, seg=Segmentation(label=label_net, geometry=geom), label_net=label_net,
                       confidence=geom.crop(confidence) if confidence is not None else None, image=image,
                       color_order=color_order, wants=wants, out_size=out_size,
                       up=NearestUpsample.of(label_net.shape, out_size), threads=threads)
        for product, make in PRODUCERS.items():  # the label always; the others when wanted
            if product == LABEL or wants.of(product):
                make(frame)
        try:
            _share_out(frame.jobs, threads)
        finally:
            # The jobs close over the frame that holds them: break that cycle now, so the frame's
            # arrays are freed at once (left to the cycle collector, every frame would take fresh
            # megabytes from the OS and the 1080p label copy would run ten times slower).
            frame.jobs.clear()
        return frame.seg

    def run(self, images: Sequence[np.ndarray], color_order: str = "bgr",
            wants: Wants | Sequence[Wants] = Wants()) -> list[Segmentation]:
        """A batch of uint8 frames (any sizes) -> one Segmentation each, with per-stage timings (ms).

        ``wants`` is one Wants for all frames or one per frame (several cameras, each with its own
        subscribers, share one forward).
        """
        if not images:
            return []
        per_frame = [wants] * len(images) if isinstance(wants, Wants) else list(wants)
        if len(per_frame) != len(images):
            raise ValueError(f"{len(images)} images but {len(per_frame)} Wants")
        snap = self._snap  # read once: every frame of the batch uses this one config and its tables
        cfg = snap.cfg
        if self._torch is not None:
            return self._run_torch(images, color_order, per_frame, snap)
        engine = self.engine  # read once: the whole batch runs on one model (see swap_engine)
        t0 = time.perf_counter()
        batch, geoms = self.preprocess(images, color_order, snap)
        t1 = time.perf_counter()
        need_conf = any(w.confidence for w in per_frame) or cfg.confidence_threshold > 0.0
        out = engine.infer(batch, want_confidence=need_conf)
        t2 = time.perf_counter()
        results = []
        for i, (img, g) in enumerate(zip(images, geoms, strict=True)):
            conf = out.confidence[i] if out.confidence is not None else None
            results.append(self.postprocess(out.label[i], conf, g, img, color_order, per_frame[i], snap))
        t3 = time.perf_counter()
        return _with_timings(results, t0, t1, t2, t3)

    def _run_torch(self, images: Sequence[np.ndarray], color_order: str, per_frame: list[Wants],
                   snap: Snapshot) -> list[Segmentation]:
        """``run`` on the engine's device: upload uint8, pre/post-process there, download what is wanted.

        On CUDA each stage ends with a stream synchronisation so the per-stage timings are true
        (the node publishes them); it costs microseconds, the frame has to be complete anyway.
        """
        stages, cfg, tst = self._torch, snap.cfg, snap.torch  # the batch's one snapshot
        sync = stages.device.type == "cuda"
        import torch

        with torch.inference_mode():
            t0 = time.perf_counter()
            frames = stages.upload(images)
            batch, geoms = stages.preprocess(frames, color_order, cfg, tst)
            if sync:
                torch.cuda.current_stream(stages.device).synchronize()
            t1 = time.perf_counter()
            need_conf = any(w.confidence for w in per_frame) or cfg.confidence_threshold > 0.0
            label, conf = self.engine.infer_tensors(batch, want_confidence=need_conf)
            if sync:
                torch.cuda.current_stream(stages.device).synchronize()
            t2 = time.perf_counter()
            products = [stages.postprocess(label[i], conf[i] if conf is not None else None, g, frames[i],
                                           color_order, per_frame[i], cfg, tst, self.classes.ignore_label)
                        for i, g in enumerate(geoms)]
            host = stages.download(products)
            results = [stages.segmentation(h, g, cfg) for h, g in zip(host, geoms, strict=True)]
            t3 = time.perf_counter()
        return _with_timings(results, t0, t1, t2, t3)

    def __call__(self, image: np.ndarray, color_order: str = "bgr", wants: Wants = Wants()) -> Segmentation:
        return self.run([image], color_order, wants)[0]


@dataclass
class _Frame:
    """One frame's post-processing: its network-size label and what the producers share.

    Each producer adds jobs that write one product of ``seg``; products that share work (colour and
    overlay share one palette lookup at network size) share it here, computed on first use.
    """

    snap: Snapshot
    seg: Segmentation
    label_net: np.ndarray  # the (thresholded) label at network size, letterbox padding cropped
    confidence: np.ndarray | None  # at network size, cropped
    image: np.ndarray | None
    color_order: str
    wants: Wants
    out_size: tuple[int, int]
    up: NearestUpsample  # network size -> output size
    threads: int
    jobs: list[Callable[[], None]] = field(default_factory=list)
    _bgra: np.ndarray | None = None

    @property
    def resized(self) -> bool:
        return self.label_net.shape != tuple(self.out_size)

    def bgra_net(self) -> np.ndarray:
        """(h, w) B, G, R, 255 as uint32 at network size: one gather, shared by colour and overlay
        (mode "wrap": a uint8 index into a 256-entry table is always in range, no error pass)."""
        if self._bgra is None:
            self._bgra = np.take(self.snap.palette_bgra32, self.label_net, mode="wrap")
        return self._bgra


#: The numpy backend's producer of each product, by the product's name in the output table, in the
#: order their jobs are queued (the costliest first). Each adds jobs writing its own product.
PRODUCERS: dict[str, Callable[[_Frame], None]] = {}


def _producer(product: str) -> Callable[[Callable[[_Frame], None]], Callable[[_Frame], None]]:
    def register(make: Callable[[_Frame], None]) -> Callable[[_Frame], None]:
        PRODUCERS[product] = make
        return make
    return register


@_producer("overlay")
def _overlay(f: _Frame) -> None:
    """Always at input size, blended in row bands (the costliest product)."""
    if f.image is None:
        return
    geom = f.seg.geometry
    in_up = f.up if geom.input_size == tuple(f.out_size) else NearestUpsample.of(f.label_net.shape, geom.input_size)
    bgr_cols = _shuffled_columns(f.bgra_net(), in_up, cv2.COLOR_BGRA2BGR)
    src = f.image if f.color_order == "bgr" else cv2.cvtColor(f.image, cv2.COLOR_RGB2BGR)
    out = f.seg.overlay = np.empty((*geom.input_size, 3), np.uint8)
    for a, b in _bands(geom.input_size[0], f.threads):
        f.jobs.append(partial(_blend_rows, src[a:b], bgr_cols, in_up.rows[a:b], f.snap.cfg.overlay_alpha, out[a:b]))


@_producer("color")
def _color(f: _Frame) -> None:
    bgra = f.bgra_net()
    f.jobs.append(lambda: setattr(f.seg, "color", f.up.rows_of(_shuffled_columns(bgra, f.up, cv2.COLOR_BGRA2RGB))))


@_producer("confidence")
def _confidence(f: _Frame) -> None:
    """Resampled bilinearly at output resolution (the one product that is not a function of the label)."""
    conf = f.confidence
    if conf is None:
        return
    if f.resized:
        out_h, out_w = f.out_size
        f.jobs.append(lambda: setattr(f.seg, "confidence", cv2.resize(
            np.ascontiguousarray(conf), (out_w, out_h), interpolation=cv2.INTER_LINEAR)))
    else:
        f.seg.confidence = np.ascontiguousarray(conf)


@_producer("masks")
def _masks(f: _Frame) -> None:
    """A mask is a LUT of the label, so it is upsampled like the label."""
    groups = f.snap.group_luts
    for g in f.wants.groups("masks", groups):
        f.seg.masks[g] = f.label_net  # a placeholder keeping the groups' order
        f.jobs.append(lambda g=g: f.seg.masks.__setitem__(g, f.up(cv2.LUT(f.label_net, groups[g]))))


@_producer("boundary")
def _boundary(f: _Frame) -> None:
    """Scanned on the network-size mask and mapped through the upsample's index maps, exactly."""
    lut = f.snap.group_luts.get(BOUNDARY_GROUP)
    if lut is None:
        return
    mask_net = cv2.LUT(f.label_net, lut)
    f.jobs.append(lambda: setattr(f.seg, "boundary", upsampled_boundary(mask_net, f.out_size) if f.resized
                                  else free_space_boundary(mask_net)))


@_producer(LABEL)
def _label(f: _Frame) -> None:
    if f.resized:
        f.jobs.append(lambda: setattr(f.seg, "label", f.up(f.label_net)))


def _shuffled_columns(bgra32: np.ndarray, up: NearestUpsample, code: int) -> np.ndarray:
    """Network-size BGRA (uint32 per pixel) -> its 3-channel ``cvtColor(code)`` at the output width
    and network height: the channel shuffle runs before the row copies, on a fraction of the pixels."""
    cols = up.columns(bgra32)
    return cv2.cvtColor(cols.view(np.uint8).reshape(*cols.shape, 4), code)


def _blend_rows(src: np.ndarray, bgr_cols: np.ndarray, rows: np.ndarray, alpha: float, out: np.ndarray) -> None:
    """Rows of the overlay: ``src`` blended with the colour rows ``rows`` of ``bgr_cols``, into ``out``."""
    bgr = np.take(bgr_cols, rows, axis=0, mode="wrap")  # "wrap": rows are in range, no error pass
    cv2.addWeighted(src, 1.0 - alpha, bgr, alpha, 0.0, dst=out)


def _bands(height: int, n: int) -> list[tuple[int, int]]:
    """``n`` row ranges covering ``height`` rows (fewer when there are fewer rows)."""
    n = max(1, min(n, height))
    cuts = [height * i // n for i in range(n + 1)]
    return [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if b > a]


def _threads() -> int:
    """How many threads post-processing uses: OpenCV's count (``cv2.setNumThreads``), at most 4."""
    return max(1, min(4, cv2.getNumThreads()))


#: Frames from this many pixels (about 1280x820) up make their products on several threads: below,
#: handing jobs to threads costs about as much as it saves (measured with bench_postprocess.py).
PARALLEL_MIN_PIXELS = 1 << 20
_POOL: ThreadPoolExecutor | None = None
_POOL_PID = 0
_POOL_LOCK = threading.Lock()


def _share_out(jobs: list[Callable[[], None]], threads: int | None = None) -> None:
    """Run independent jobs on the calling thread and up to ``threads - 1`` pool threads (default
    ``_threads()``); return when all are done, raising the first error.

    Why threads: between two forwards nothing else computes, and OpenCV and numpy release the GIL
    in all of these (gathers, LUTs, resizes, blends), so on a multi-core CPU the products of a
    frame are made side by side. Each job writes only its own output, so no result depends on the
    order or the number of threads: one thread gives the same bytes.
    """
    helpers = min(threads or _threads(), len(jobs)) - 1
    if helpers <= 0:
        for job in jobs:
            job()
        return
    global _POOL, _POOL_PID
    with _POOL_LOCK:
        if _POOL is None or _POOL_PID != os.getpid():  # a forked child has the object but not its threads
            _POOL, _POOL_PID = ThreadPoolExecutor(max_workers=3, thread_name_prefix="liteseg-post"), os.getpid()
        pool = _POOL
    queue = iter(jobs)
    lock = threading.Lock()

    def drain() -> None:
        while True:
            with lock:
                job = next(queue, None)
            if job is None:
                return
            job()

    futures = [pool.submit(drain) for _ in range(helpers)]
    try:
        drain()
    finally:
        errors = [f.exception() for f in futures]  # waits for every helper, even after an error here
    for exc in errors:
        if exc is not None:
            raise exc


def _with_timings(results: list[Segmentation], t0: float, t1: float, t2: float, t3: float) -> list[Segmentation]:
    """Each frame's share of the batch's preprocess / infer / postprocess times (ms), as FrameStats reports."""
    n = max(1, len(results))
    for seg in results:
        seg.timings = {"preprocess": (t1 - t0) * 1e3 / n, "infer": (t2 - t1) * 1e3 / n,
                       "postprocess": (t3 - t2) * 1e3 / n}
    return results
