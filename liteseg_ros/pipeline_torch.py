"""The pipeline's pre/post-processing in torch, on the engine's device (the GPU path).

Ring 2: imports torch, numpy and OpenCV; never rclpy, message packages or the node. Used by
``pipeline.Pipeline`` when its engine computes on a CUDA device (``Engine.tensor_device``); the
numpy stages in ``pipeline.py`` stay the CPU path. Same contract, same ``Segmentation`` out.

Why: with the forward at a few milliseconds on a GPU, resizing and colouring 1080p frames on the CPU
would take longer than the network. Here the frame is uploaded once as uint8 (a third of the bytes
of float32), resized and normalised on the device, the engine's uint8 label never leaves it, every
product is made there, and only the products someone asked for (``Wants``) are copied back, all
behind one synchronisation.

Exactness against the numpy path, for the same network-size label and confidence: the label, the
colour image, the masks and the boundary are bit-identical. The label is upsampled with the index
maps of OpenCV's own nearest-neighbour resize (``pipeline.nearest_maps``) as a gather, colours and
masks are table lookups of that label, and the boundary is computed by the numpy code on the
network-size mask (a 230 KB download at 360x640). The confidence (bilinear) and the overlay (a
float blend) may differ from OpenCV's fixed-point/rounding by 1. Preprocessing resizes with torch
(area averaging when shrinking, bilinear otherwise), which matches OpenCV's INTER_AREA/INTER_LINEAR
to one grey level at integer scale factors (exactly without a resize) and closely otherwise, so
labels can differ on a few boundary pixels from the CPU path's.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from liteseg_ros.segmentation import (
    BOUNDARY_GROUP,
    LABEL,
    PER_GROUP_PRODUCTS,
    Geometry,
    PipelineConfig,
    Segmentation,
    Wants,
    free_space_boundary,
    nearest_maps,
    upsampled_boundary,
)

if TYPE_CHECKING:
    from liteseg_ros.classes import ClassTable


class TorchStages:
    """Preprocess a batch and post-process each frame with torch on ``device``.

    ``state(cfg)`` makes the per-config tensors (palette, mask tables, normalisation) on the device;
    the pipeline keeps it in the same ``Snapshot`` as its numpy tables, so a live change swaps both at once.
    """

    def __init__(self, device: torch.device | str, classes: ClassTable) -> None:
        self.device = torch.device(device)
        self.classes = classes
        self._maps: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    # ----------------------------------------------------------------- state
    def state(self, cfg: PipelineConfig, scale: np.ndarray, bias: np.ndarray) -> dict:
        dev = self.device
        return {
            "scale": torch.as_tensor(scale, dtype=torch.float32, device=dev).view(3, 1, 1),
            "bias": torch.as_tensor(bias, dtype=torch.float32, device=dev).view(3, 1, 1),
            "palette_rgb": torch.as_tensor(self.classes.palette_lut(bgr=False), device=dev),
            "palette_bgr": torch.as_tensor(self.classes.palette_lut(bgr=True), device=dev),
            "group_luts": {g: torch.as_tensor(self.classes.group_lut(ids), device=dev)
                           for g, ids in cfg.mask_groups.items()},
        }

    def _index_maps(self, src: tuple[int, int], dst: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """OpenCV's nearest-neighbour (rows, cols) maps as device index tensors (cached per size pair)."""
        key = (tuple(src), tuple(dst))
        hit = self._maps.get(key)
        if hit is None:
            rows, cols = nearest_maps(src, dst)
            hit = (torch.from_numpy(rows.astype(np.int64)).to(self.device),
                   torch.from_numpy(cols.astype(np.int64)).to(self.device))
            if len(self._maps) >= 64:
                self._maps.clear()
            self._maps[key] = hit
        return hit

    def upsample_nearest(self, a: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``a`` (h, w[, c]) gathered to ``size`` exactly as ``cv2.resize(..., INTER_NEAREST)`` picks pixels."""
        if tuple(a.shape[:2]) == tuple(size):
            return a
        rows, cols = self._index_maps(tuple(a.shape[:2]), size)
        return a.index_select(0, rows).index_select(1, cols)

    # ----------------------------------------------------------------- stages
    def upload(self, images: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """uint8 (H, W, 3) frames -> device tensors (the overlay reuses them: one upload per frame)."""
        out = []
        for img in images:
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise ValueError(f"expected a (H, W, 3) uint8 image, got {img.shape} {img.dtype}")
            if self.device.type == "cuda":  # one copy into pinned memory, then an asynchronous upload
                staging = torch.empty(img.shape, dtype=torch.uint8, pin_memory=True)
                staging.numpy()[...] = img  # frames may be read-only views of the received message
                t = staging.to(self.device, non_blocking=True)
            else:
                t = torch.from_numpy(img if img.flags.writeable and img.flags.c_contiguous else img.copy())
            out.append(t)
        return out

    def preprocess(self, frames: Sequence[torch.Tensor], color_order: str, cfg: PipelineConfig,
                   st: dict) -> tuple[torch.Tensor, list[Geometry]]:
        """Device uint8 frames -> one float32 (N, 3, h, w) RGB-normalised batch + their geometry."""
        nh, nw = cfg.network_size
        batch = torch.zeros((len(frames), 3, nh, nw), dtype=torch.float32, device=self.device)
        geoms = []
        for i, img in enumerate(frames):
            g = Geometry.fit(tuple(img.shape[:2]), (nh, nw), cfg.resize_mode)
            t, left, ch, cw = g.content
            x = img.permute(2, 0, 1)
            if color_order == "bgr":
                x = x.flip(0)
            x = x.unsqueeze(0).float()
            if (ch, cw) != tuple(img.shape[:2]):
                shrink = ch < img.shape[0] and cw < img.shape[1]
                x = F.interpolate(x, size=(ch, cw), mode="area") if shrink else \
                    F.interpolate(x, size=(ch, cw), mode="bilinear", align_corners=False)
                x = x.round_().clamp_(0, 255)  # OpenCV resizes uint8 to uint8: same quantisation
            # two rounded steps, as the numpy path: x * scale, then + bias
            batch[i, :, t:t + ch, left:left + cw] = x[0].mul_(st["scale"]).add_(st["bias"])
            geoms.append(g)
        return batch, geoms

    def postprocess(self, label: torch.Tensor, confidence: torch.Tensor | None, geom: Geometry,
                    frame: torch.Tensor | None, color_order: str, wants: Wants, cfg: PipelineConfig,
                    st: dict, ignore_label: int) -> dict[str, torch.Tensor]:
        """One frame's network-size device label/confidence -> device products (not yet downloaded).

        Keys: the products' names (``masks:<group>`` per group; the boundary's is the network-size
        drivable mask, scanned on the host). Only what ``wants`` asks for (the label always), each
        made by its registered producer (:data:`PRODUCERS`).
        """
        if cfg.confidence_threshold > 0.0 and confidence is not None:
            label = torch.where(confidence < round(cfg.confidence_threshold * 255),
                                torch.tensor(ignore_label, dtype=label.dtype, device=label.device), label)
        t, left, ch, cw = geom.content
        label_net = label[t:t + ch, left:left + cw]
        out_size = geom.output_size(cfg.output_resolution)
        full = self.upsample_nearest(label_net, out_size)
        f = _Frame(self, st, cfg, geom, label_net, full, full.long(),
                   confidence[t:t + ch, left:left + cw] if confidence is not None else None,
                   frame, color_order, wants, out_size)
        out: dict[str, torch.Tensor] = {}
        for product, make in PRODUCERS.items():  # the label always; the others when wanted
            if product == LABEL or wants.of(product):
                out.update(make(f))
        return out

    def download(self, products: list[dict[str, torch.Tensor]]) -> list[dict[str, np.ndarray]]:
        """Every product of every frame to host numpy arrays, with one synchronisation."""
        if self.device.type != "cuda":
            return [{k: v.contiguous().numpy() for k, v in p.items()} for p in products]
        host = [{k: v.contiguous().to("cpu", non_blocking=True) for k, v in p.items()} for p in products]
        torch.cuda.current_stream(self.device).synchronize()
        return [{k: v.numpy() for k, v in p.items()} for p in host]

    @staticmethod
    def segmentation(host: dict[str, np.ndarray], geom: Geometry, cfg: PipelineConfig) -> Segmentation:
        """Host arrays of one frame -> its Segmentation (a product with a finisher, the boundary, is
        completed here on the host, exactly)."""
        seg = Segmentation(label=host[LABEL], geometry=geom)
        for key, v in host.items():
            product, _, group = key.partition(":")
            if product in PER_GROUP_PRODUCTS:
                getattr(seg, product)[group] = v
            elif product != LABEL:
                setattr(seg, product, FINISHERS.get(product, lambda v, geom, cfg: v)(v, geom, cfg))
        return seg


@dataclass
class _Frame:
    """One frame's device tensors that the producers share."""

    stages: TorchStages
    st: dict
    cfg: PipelineConfig
    geom: Geometry
    label_net: torch.Tensor  # thresholded, letterbox padding cropped, network size
    full: torch.Tensor  # the label at output size
    idx: torch.Tensor  # ``full`` as int64 indices
    confidence: torch.Tensor | None  # cropped, network size
    frame: torch.Tensor | None
    color_order: str
    wants: Wants
    out_size: tuple[int, int]


#: The torch backend's producer of each product, by the product's name in the output table: each
#: returns device tensors to download, keyed by the product (``product:group`` per group).
PRODUCERS: dict[str, Callable[[_Frame], dict[str, torch.Tensor]]] = {}
#: Host-side completion of a downloaded product (the boundary is scanned by the numpy code).
FINISHERS: dict[str, Callable[[np.ndarray, Geometry, PipelineConfig], object]] = {}


def _producer(product: str):
    def register(make):
        PRODUCERS[product] = make
        return make
    return register


@_producer(LABEL)
def _label(f: _Frame) -> dict[str, torch.Tensor]:
    return {LABEL: f.full}


@_producer("confidence")
def _confidence(f: _Frame) -> dict[str, torch.Tensor]:
    conf = f.confidence
    if conf is None:
        return {}
    if tuple(conf.shape) != tuple(f.out_size):
        up = F.interpolate(conf[None, None].float(), size=f.out_size, mode="bilinear", align_corners=False)
        conf = up[0, 0].round_().clamp_(0, 255).to(torch.uint8)
    return {"confidence": conf}


@_producer("color")
def _color(f: _Frame) -> dict[str, torch.Tensor]:
    return {"color": f.st["palette_rgb"][f.idx]}


@_producer("overlay")
def _overlay(f: _Frame) -> dict[str, torch.Tensor]:
    if f.frame is None:
        return {}
    bgr_net = f.st["palette_bgr"][f.label_net.long()]
    bgr = f.stages.upsample_nearest(bgr_net, f.geom.input_size)
    src = f.frame if f.color_order == "bgr" else f.frame.flip(2)
    a = float(f.cfg.overlay_alpha)
    blend = src.float().mul_(1.0 - a).add_(bgr.float().mul_(a))
    return {"overlay": blend.round_().clamp_(0, 255).to(torch.uint8)}


@_producer("masks")
def _masks(f: _Frame) -> dict[str, torch.Tensor]:
    groups = f.st["group_luts"]
    return {f"masks:{g}": groups[g][f.idx] for g in f.wants.groups("masks", groups)}


@_producer("boundary")
def _boundary(f: _Frame) -> dict[str, torch.Tensor]:
    """The network-size drivable mask (a small download); the boundary is scanned on the host."""
    lut = f.st["group_luts"].get(BOUNDARY_GROUP)
    return {} if lut is None else {"boundary": lut[f.label_net.long()]}


def _finish_boundary(m: np.ndarray, geom: Geometry, cfg: PipelineConfig):
    out_size = geom.output_size(cfg.output_resolution)
    return free_space_boundary(m) if m.shape == tuple(out_size) else upsampled_boundary(m, out_size)


FINISHERS["boundary"] = _finish_boundary
