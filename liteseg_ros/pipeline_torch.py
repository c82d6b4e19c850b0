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

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from liteseg_ros.segmentation import (
    BOUNDARY_GROUP,
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

        Keys: label, confidence, color, overlay, mask:<group>, boundary_mask (network-size drivable
        mask for the host-side boundary). Only what ``wants`` asks for (the label always).
        """
        if cfg.confidence_threshold > 0.0 and confidence is not None:
            label = torch.where(confidence < round(cfg.confidence_threshold * 255),
                                torch.tensor(ignore_label, dtype=label.dtype, device=label.device), label)
        t, left, ch, cw = geom.content
        label_net = label[t:t + ch, left:left + cw]
        out_size = geom.output_size(cfg.output_resolution)
        full = self.upsample_nearest(label_net, out_size)
        idx = full.long()
        out: dict[str, torch.Tensor] = {"label": full}
        if wants.confidence and confidence is not None:
            conf = confidence[t:t + ch, left:left + cw]
            if tuple(conf.shape) != tuple(out_size):
                up = F.interpolate(conf[None, None].float(), size=out_size, mode="bilinear", align_corners=False)
                conf = up[0, 0].round_().clamp_(0, 255).to(torch.uint8)
            out["confidence"] = conf
        if wants.color:
            out["color"] = st["palette_rgb"][idx]
        if wants.overlay and frame is not None:
            bgr_net = st["palette_bgr"][label_net.long()]
            bgr = self.upsample_nearest(bgr_net, geom.input_size)
            src = frame if color_order == "bgr" else frame.flip(2)
            a = float(cfg.overlay_alpha)
            blend = src.float().mul_(1.0 - a).add_(bgr.float().mul_(a))
            out["overlay"] = blend.round_().clamp_(0, 255).to(torch.uint8)
        groups = st["group_luts"]
        names = groups.keys() if wants.masks is None else [g for g in groups if g in wants.masks]
        for g in names:
            out[f"mask:{g}"] = groups[g][idx]
        if wants.boundary and BOUNDARY_GROUP in groups:
            out["boundary_mask"] = groups[BOUNDARY_GROUP][label_net.long()]
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
        """Host arrays of one frame -> its Segmentation (the boundary is computed here, exactly)."""
        seg = Segmentation(label=host["label"], geometry=geom, confidence=host.get("confidence"),
                           color=host.get("color"), overlay=host.get("overlay"))
        for k, v in host.items():
            if k.startswith("mask:"):
                seg.masks[k[5:]] = v
        m = host.get("boundary_mask")
        if m is not None:
            out_size = geom.output_size(cfg.output_resolution)
            seg.boundary = free_space_boundary(m) if m.shape == tuple(out_size) else upsampled_boundary(m, out_size)
        return seg
