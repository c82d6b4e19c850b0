"""THE per-frame pipeline: uint8 image(s) -> Segmentation (label, confidence, colour, overlay, masks, boundary).

Ring 2: numpy, OpenCV and the engine interface; never rclpy, message packages or the node. The node,
the bag tool, the demo and the benchmarks all call this one implementation, so preprocessing,
argmax, colouring and masking exist exactly once.

Data flows one way: images -> ``preprocess`` (resize/letterbox + normalise into one NCHW batch) ->
``Engine.infer`` (labels and confidence at network size, post-processing inside the graph) ->
``postprocess`` (threshold, map back to the input size, colour, blend, masks, boundary).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from liteseg_ros.classes import IMAGENET_MEAN, IMAGENET_STD, ClassTable
from liteseg_ros.engines.base import Engine

RESIZE_MODES = ("stretch", "letterbox")
OUTPUT_RESOLUTIONS = ("input", "network")
#: The mask group whose free-space boundary is computed (``~/drivable_boundary``).
BOUNDARY_GROUP = "drivable"


@dataclass(frozen=True)
class PipelineConfig:
    """Everything that shapes the outputs. Frozen: live changes swap in a new config atomically."""

    network_size: tuple[int, int] = (360, 640)  # (height, width)
    resize_mode: str = "stretch"
    output_resolution: str = "input"
    overlay_alpha: float = 0.5
    confidence_threshold: float = 0.0
    mask_groups: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        h, w = self.network_size
        if h < 8 or w < 8:
            raise ValueError(f"network_size {self.network_size} is too small (>= 8x8)")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode {self.resize_mode!r} is not one of {RESIZE_MODES}")
        if self.output_resolution not in OUTPUT_RESOLUTIONS:
            raise ValueError(f"output_resolution {self.output_resolution!r} is not one of {OUTPUT_RESOLUTIONS}")
        if not 0.0 <= self.overlay_alpha <= 1.0:
            raise ValueError(f"overlay_alpha {self.overlay_alpha} is not in [0, 1]")
        if not 0.0 <= self.confidence_threshold <= 1.0:
            raise ValueError(f"confidence_threshold {self.confidence_threshold} is not in [0, 1]")


@dataclass(frozen=True)
class Wants:
    """Which outputs to compute. The node sets these from subscriber counts: nothing unused is made."""

    label: bool = True
    confidence: bool = True
    color: bool = True
    overlay: bool = True
    masks: frozenset[str] | None = None  # None = every group
    boundary: bool = True

    @classmethod
    def all(cls) -> Wants:
        return cls()

    @classmethod
    def only_label(cls) -> Wants:
        return cls(confidence=False, color=False, overlay=False, masks=frozenset(), boundary=False)

    def any(self) -> bool:
        return (self.label or self.confidence or self.color or self.overlay or self.boundary
                or self.masks is None or bool(self.masks))


@dataclass(frozen=True)
class Geometry:
    """How one input frame maps into the network input (and back)."""

    input_size: tuple[int, int]  # (h, w) of the frame
    network_size: tuple[int, int]  # (h, w)
    content: tuple[int, int, int, int]  # (top, left, height, width) of the image inside the network input

    @classmethod
    def fit(cls, input_size: tuple[int, int], network_size: tuple[int, int], mode: str) -> Geometry:
        ih, iw = input_size
        nh, nw = network_size
        if mode == "stretch":
            return cls(input_size, network_size, (0, 0, nh, nw))
        s = min(nh / ih, nw / iw)
        ch, cw = max(1, min(nh, round(ih * s))), max(1, min(nw, round(iw * s)))
        return cls(input_size, network_size, ((nh - ch) // 2, (nw - cw) // 2, ch, cw))

    def output_size(self, output_resolution: str) -> tuple[int, int]:
        """Label size: the frame's, or the network's (the letterbox content area, not the padding)."""
        if output_resolution == "input":
            return self.input_size
        return self.content[2], self.content[3]

    def crop(self, a: np.ndarray) -> np.ndarray:
        """The content area of a network-size map (drops letterbox padding)."""
        t, left, h, w = self.content
        return a[t:t + h, left:left + w]

    def scale_xy(self, output_resolution: str) -> tuple[float, float]:
        """(sx, sy) from input pixel coordinates to output pixel coordinates (for camera_info)."""
        oh, ow = self.output_size(output_resolution)
        return ow / self.input_size[1], oh / self.input_size[0]


@dataclass
class Boundary:
    """Free-space boundary: per column the top row of the drivable region touching the bottom row."""

    row: np.ndarray  # (W,) int32, -1 where the bottom pixel is not drivable
    drivable_fraction: float


@dataclass
class Segmentation:
    """All outputs for one frame; fields not asked for (Wants) are None / empty."""

    label: np.ndarray  # (h, w) uint8 trainIds, 255 = ignore; at output resolution
    geometry: Geometry
    confidence: np.ndarray | None = None  # (h, w) uint8, max softmax x 255, output resolution
    color: np.ndarray | None = None  # (h, w, 3) uint8 RGB, output resolution
    overlay: np.ndarray | None = None  # (H, W, 3) uint8 BGR, always input resolution
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # group -> (h, w) uint8 0/255
    boundary: Boundary | None = None
    timings: dict[str, float] = field(default_factory=dict)  # ms: preprocess, infer, postprocess


def free_space_boundary(mask: np.ndarray) -> Boundary:
    """Per column, the top row of the run of mask pixels that starts at the bottom row (-1 if none).

    A column-wise flood from the bottom: what a planner reads as "free up to here" per image column.
    """
    m = mask.astype(bool, copy=False)
    h = m.shape[0]
    blocked_from_bottom = ~m[::-1]  # row 0 = bottom row
    first_blocked = np.where(blocked_from_bottom.any(axis=0), blocked_from_bottom.argmax(axis=0), h)
    row = (h - first_blocked).astype(np.int32)
    row[~m[-1]] = -1
    return Boundary(row=row, drivable_fraction=float(np.count_nonzero(m)) / max(1, m.size))


def _bgra32(palette_bgr: np.ndarray) -> np.ndarray:
    """(256, 3) uint8 BGR table -> (256,) uint32 whose bytes in memory are B, G, R, 255."""
    bgra = np.concatenate([palette_bgr, np.full((len(palette_bgr), 1), 255, np.uint8)], axis=1)
    return np.ascontiguousarray(bgra).view(np.uint32).reshape(-1)


def _resize_nearest(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``a`` nearest-neighbour resampled to ``size`` (h, w); ``a`` itself when it already has that size."""
    if a.shape[:2] == size:
        return a
    return cv2.resize(a, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)


_MAPS_CACHE: dict[tuple[tuple[int, int], tuple[int, int]], tuple[np.ndarray, np.ndarray]] = {}
_MAPS_LOCK = threading.Lock()


def nearest_maps(src_size: tuple[int, int], dst_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols): the source row of every output row and the source column of every output column
    of ``cv2.resize(..., INTER_NEAREST)`` from ``src_size`` to ``dst_size`` (both (h, w)).

    OpenCV picks each output row's source row from the heights alone and each column's from the
    widths alone, so resizing an index ramp reproduces its exact choices (rounding included) and
    ``a[rows][:, cols]`` equals ``cv2.resize(a, ...)``. Cached per size pair (a camera has one).
    """
    key = (tuple(src_size), tuple(dst_size))
    with _MAPS_LOCK:
        hit = _MAPS_CACHE.get(key)
    if hit is not None:
        return hit
    (sh, sw), (dh, dw) = key
    cols = cv2.resize(np.arange(sw, dtype=np.int32)[None, :], (dw, 1), interpolation=cv2.INTER_NEAREST)
    rows = cv2.resize(np.arange(sh, dtype=np.int32)[:, None], (1, dh), interpolation=cv2.INTER_NEAREST)
    maps = (rows.reshape(dh).copy(), cols.reshape(dw).copy())
    for m in maps:
        m.setflags(write=False)
    with _MAPS_LOCK:
        if len(_MAPS_CACHE) >= 64:  # bounded: a handful of cameras and live resolution changes
            _MAPS_CACHE.clear()
        _MAPS_CACHE[key] = maps
    return maps


def upsampled_boundary(mask: np.ndarray, out_size: tuple[int, int]) -> Boundary:
    """``free_space_boundary`` of the nearest-neighbour upsample of ``mask`` to ``out_size``, exactly,
    without making the upsampled mask.

    The upsampled column x is the source column ``cols[x]`` with source row ``rows[y]`` at output
    row y, and ``rows`` never decreases. So the run from the bottom in the output is the run in the
    source (restricted to the rows that are sampled), and its top output row is the first output
    row that samples the run's top source row. The drivable fraction counts each source pixel as
    many times as it is copied (integers, then the same division as on the full mask).
    """
    rows, cols = nearest_maps(mask.shape[:2], out_size)
    used, first, counts = np.unique(rows, return_index=True, return_counts=True)
    sub = mask[used]  # the sampled source rows, in order (all of them when upsampling)
    b = free_space_boundary(sub)
    top = np.where(b.row >= 0, first[np.maximum(b.row, 0)], -1).astype(np.int32)
    col_counts = np.bincount(cols, minlength=mask.shape[1]).astype(np.int64)
    drivable = int(counts.astype(np.int64) @ (sub.astype(bool) @ col_counts))
    h, w = out_size
    return Boundary(row=np.ascontiguousarray(top[cols]), drivable_fraction=float(drivable) / max(1, h * w))


class Pipeline:
    """Runs frames through an engine and turns labels into every published product.

    Thread-safe for one worker thread calling ``run`` while other threads call ``update`` (live
    parameters): the config is swapped atomically and read once per batch.

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
        self._config = config or PipelineConfig(mask_groups={})
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
        self._apply(self._config)

    # ----------------------------------------------------------------- configuration
    @property
    def config(self) -> PipelineConfig:
        return self._config

    def update(self, **changes) -> PipelineConfig:
        """Change live settings (overlay_alpha, confidence_threshold, mask_groups, output_resolution)."""
        with self._lock:
            cfg = replace(self._config, **changes)
            self._apply(cfg)
            return cfg

    def _apply(self, cfg: PipelineConfig) -> None:
        for g, ids in cfg.mask_groups.items():
            bad = [i for i in ids if not 0 <= i < len(self.classes)]
            if bad:
                raise ValueError(f"mask group {g!r} has label ids {bad} outside 0..{len(self.classes) - 1}")
        mean = np.asarray(cfg.mean, np.float32)
        std = np.asarray(cfg.std, np.float32)
        # Per channel (RGB order): x_norm = x * scale + bias, with x in 0..255.
        scale = 1.0 / (255.0 * std)
        bias = -mean / std
        state = {
            "scale": scale,
            "bias": bias,
            # B, G, R, 255 per label as one uint32 (little-endian byte order = memory order)
            "palette_bgra32": _bgra32(self.classes.palette_lut(bgr=True)),
            "group_luts": {g: self.classes.group_lut(ids) for g, ids in cfg.mask_groups.items()},
        }
        if self._torch is not None:
            state["torch"] = self._torch.state(cfg, scale, bias)
        self._state = state
        self._config = cfg

    # ----------------------------------------------------------------- stages
    def preprocess(self, images: Sequence[np.ndarray], color_order: str = "bgr",
                   cfg: PipelineConfig | None = None) -> tuple[np.ndarray, list[Geometry]]:
        """uint8 (H, W, 3) frames -> one float32 (N, 3, h, w) RGB-normalised batch + their geometry."""
        cfg = cfg or self._config
        nh, nw = cfg.network_size
        batch = np.empty((len(images), 3, nh, nw), np.float32)
        geoms = []
        scale, bias = self._state["scale"], self._state["bias"]
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
                    cfg: PipelineConfig | None = None) -> Segmentation:
        """Network-size label/confidence of one frame -> every product at the configured resolution.

        Every product is a per-pixel function of the label, and a nearest-neighbour upsample only
        copies label pixels, so the two commute: colouring the small network-size label and then
        upsampling gives exactly the pixels of colouring the upsampled label, for a fraction of the
        work at camera resolution. So the colours are looked up once at network size (one BGRA
        table, 4 bytes per pixel, which OpenCV resizes much faster than 3-byte pixels), upsampled
        once, and split into the RGB colour image and the BGR overlay input by channel shuffles. The
        boundary is computed on the network-size mask and its rows mapped through the same nearest
        index maps (:func:`nearest_maps`), also exactly. The masks are one LUT each on the
        upsampled label (as cheap as upsampling a network-size mask). Only the confidence is
        resampled bilinearly, at output resolution, as before.
        """
        cfg = cfg or self._config
        st = self._state
        if cfg.confidence_threshold > 0.0 and confidence is not None:
            label = label.copy()
            label[confidence < round(cfg.confidence_threshold * 255)] = self.classes.ignore_label
        label_net = np.ascontiguousarray(geom.crop(label))
        conf = geom.crop(confidence) if confidence is not None else None
        out_h, out_w = geom.output_size(cfg.output_resolution)
        resized = label_net.shape != (out_h, out_w)
        label = cv2.resize(label_net, (out_w, out_h), interpolation=cv2.INTER_NEAREST) if resized else label_net
        seg = Segmentation(label=label, geometry=geom)
        if wants.confidence and conf is not None:
            if resized:
                conf = cv2.resize(np.ascontiguousarray(conf), (out_w, out_h), interpolation=cv2.INTER_LINEAR)
            seg.confidence = np.ascontiguousarray(conf)
        want_overlay = wants.overlay and image is not None
        if wants.color or want_overlay:
            # (h, w, 4) B, G, R, 255 at network size; np.take on the uint32 view is one gather.
            bgra_net = np.take(st["palette_bgra32"], label_net).view(np.uint8).reshape(*label_net.shape, 4)
            bgra = _resize_nearest(bgra_net, (out_h, out_w)) if wants.color else None
            if wants.color:
                seg.color = cv2.cvtColor(bgra, cv2.COLOR_BGRA2RGB)
            if want_overlay:
                ih, iw = geom.input_size
                if bgra is None or bgra.shape[:2] != (ih, iw):  # the overlay is always at input size
                    bgra = _resize_nearest(bgra_net, (ih, iw))
                bgr = cv2.cvtColor(bgra, cv2.COLOR_BGRA2BGR)
                src = image if color_order == "bgr" else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
                seg.overlay = cv2.addWeighted(src, 1.0 - cfg.overlay_alpha, bgr, cfg.overlay_alpha, 0.0)
        groups = st["group_luts"]
        names = groups.keys() if wants.masks is None else [g for g in groups if g in wants.masks]
        for g in names:
            seg.masks[g] = cv2.LUT(label, groups[g])
        if wants.boundary and BOUNDARY_GROUP in groups:
            if not resized:
                m = seg.masks.get(BOUNDARY_GROUP)
                seg.boundary = free_space_boundary(m if m is not None else cv2.LUT(label, groups[BOUNDARY_GROUP]))
            else:
                seg.boundary = upsampled_boundary(cv2.LUT(label_net, groups[BOUNDARY_GROUP]), (out_h, out_w))
        return seg

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
        cfg = self._config  # one consistent config for the whole batch
        if self._torch is not None:
            return self._run_torch(images, color_order, per_frame, cfg)
        t0 = time.perf_counter()
        batch, geoms = self.preprocess(images, color_order, cfg)
        t1 = time.perf_counter()
        need_conf = any(w.confidence for w in per_frame) or cfg.confidence_threshold > 0.0
        out = self.engine.infer(batch, want_confidence=need_conf)
        t2 = time.perf_counter()
        results = []
        for i, (img, g) in enumerate(zip(images, geoms, strict=True)):
            conf = out.confidence[i] if out.confidence is not None else None
            results.append(self.postprocess(out.label[i], conf, g, img, color_order, per_frame[i], cfg))
        t3 = time.perf_counter()
        n = len(images)
        for seg in results:
            seg.timings = {"preprocess": (t1 - t0) * 1e3 / n, "infer": (t2 - t1) * 1e3 / n,
                           "postprocess": (t3 - t2) * 1e3 / n}
        return results

    def _run_torch(self, images: Sequence[np.ndarray], color_order: str, per_frame: list[Wants],
                   cfg: PipelineConfig) -> list[Segmentation]:
        """``run`` on the engine's device: upload uint8, pre/post-process there, download what is wanted.

        On CUDA each stage ends with a stream synchronisation so the per-stage timings are true
        (the node publishes them); it costs microseconds, the frame has to be complete anyway.
        """
        stages, st = self._torch, self._state  # one state for the batch, as cfg
        tst = st["torch"]
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
        n = len(images)
        for seg in results:
            seg.timings = {"preprocess": (t1 - t0) * 1e3 / n, "infer": (t2 - t1) * 1e3 / n,
                           "postprocess": (t3 - t2) * 1e3 / n}
        return results

    def __call__(self, image: np.ndarray, color_order: str = "bgr", wants: Wants = Wants()) -> Segmentation:
        return self.run([image], color_order, wants)[0]
