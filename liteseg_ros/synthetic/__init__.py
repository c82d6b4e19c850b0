"""Procedural driving scenes with exact Cityscapes trainId labels: the demo world and the test data.

Ring 0: imports numpy and OpenCV only; never torch, rclpy, message packages or liteseg_ros.node/bag.

``generate_scene(seed)`` gives one independent image/label pair; ``drive(seed, n)`` moves a camera along
one generated road so consecutive frames are coherent (the road scrolls, traffic moves). Same seed and
config give byte-identical output. Labels are trainIds (``liteseg_ros.classes``); curbs are labelled
sidewalk, lane markings road; nothing is left void, but ``IGNORE_LABEL`` is allowed in the label type.
Images are uint8 BGR (OpenCV order).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from .render import CURB_LABEL, noise_fields, render_frame
from .world import BLOCK_M, DENSITY_KNOBS, WEATHERS, SceneConfig, block_moving, block_static, make_world

__all__ = ["DENSITY_KNOBS", "SceneConfig", "SceneSample", "WEATHERS", "generate_scene", "drive", "dataset"]

#: ``SceneConfig()``: the default of every function here (frozen, so sharing it is safe).
DEFAULT_CONFIG = SceneConfig()
#: Default camera speed of ``drive`` in metres per frame (10 m/s at 10 frames/s).
DEFAULT_SPEED = 1.0
_WALK = 0.13    # fastest pedestrian (m/frame)
_RIDE = 1.3     # fastest cyclist / motorcyclist (m/frame)


@dataclass
class SceneSample:
    """One rendered frame: BGR image, trainId label, the seed it came from and what is in it."""

    image: np.ndarray   # (H, W, 3) uint8 BGR
    label: np.ndarray   # (H, W) uint8 trainIds (255 = void)
    seed: int
    meta: dict = field(default_factory=dict)


def _check_seed(seed) -> int:
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {seed!r}")
    return int(seed)


def generate_scene(seed: int, config: SceneConfig = DEFAULT_CONFIG) -> SceneSample:
    """One independent scene of seed ``seed`` (the first frame of ``drive(seed, ...)``)."""
    return next(drive(seed, 1, config))


def drive(seed: int, n_frames: int, config: SceneConfig = DEFAULT_CONFIG,
          speed: float = DEFAULT_SPEED) -> Iterator[SceneSample]:
    """``n_frames`` frames of a camera driving ``speed`` metres per frame along the road of ``seed``."""
    seed = _check_seed(seed)
    if not isinstance(config, SceneConfig):
        raise TypeError(f"config must be a SceneConfig, got {type(config).__name__}")
    if not isinstance(n_frames, numbers.Integral) or n_frames < 0:
        raise ValueError(f"n_frames must be an int >= 0, got {n_frames!r}")
    if not (isinstance(speed, numbers.Real) and math.isfinite(speed) and 0.0 <= speed <= 10.0):
        raise ValueError(f"speed must be within 0..10 metres per frame, got {speed!r}")
    return _drive(seed, int(n_frames), config, float(speed))


def _drive(seed: int, n_frames: int, config: SceneConfig, speed: float) -> Iterator[SceneSample]:
    world = make_world(seed, config, speed)
    key = seed & 0xFFFFFFFFFFFF
    fields = noise_fields(np.random.default_rng([key, 4]), config.height, config.width)
    phase = (key % 997) * 0.01
    speeds = list(world.lane_speed.values()) + [_RIDE, -_RIDE]
    vmax, vmin = max(speeds), min(speeds)
    statics: dict[int, tuple] = {}
    movers: dict[int, list] = {}
    far = config.far_m
    for i in range(n_frames):
        t = float(i)
        s0 = speed * t
        lo = int(math.floor((s0 - 20.0 - _WALK * t) / BLOCK_M))
        hi = int(math.floor((s0 + far + _WALK * t) / BLOCK_M))
        for b in [b for b in statics if b < lo]:
            del statics[b]
        for b in range(lo, hi + 1):
            if b not in statics:
                statics[b] = block_static(world, b)
        st = [statics[b] for b in range(lo, hi + 1)]
        mlo = int(math.floor((s0 - 20.0 - vmax * t) / BLOCK_M))
        mhi = int(math.floor((s0 + far - vmin * t) / BLOCK_M))
        mv = []
        for b in range(mlo, mhi + 1):
            if b not in movers:
                movers[b] = block_moving(world, b)
            mv.extend(movers[b])
        sway = 0.15 * config.camera_jitter * math.sin(0.05 * t + phase) if i else 0.0
        bob = 0.003 * config.camera_jitter * math.sin(0.9 * t + phase) if i else 0.0
        rng = np.random.default_rng([key, 3, i])
        image, label, meta = render_frame(world, s0, t, st, mv, fields, rng, sway=sway, bob=bob)
        meta.update(seed=seed, frame=i, weather=world.look.weather, style=world.road.style,
                    curb_label=int(CURB_LABEL), speed_m_per_frame=speed)
        yield SceneSample(image=image, label=label, seed=seed, meta=meta)


def dataset(seeds: Iterable[int], config: SceneConfig = DEFAULT_CONFIG) -> Iterator[SceneSample]:
    """``generate_scene`` for each seed in ``seeds``."""
    for seed in seeds:
        yield generate_scene(seed, config)
