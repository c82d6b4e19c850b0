"""World model of the synthetic driving scenes: configuration, camera, road, and what stands along it.

Ring 0 (pure data): imports numpy only; never torch, cv2, rclpy or message packages.

A world is a straight-or-gently-curving road seen by a camera that drives along it. Positions are
road coordinates in metres: ``s`` along the road (forward), ``u`` across it (right positive, ``u = 0``
is the line between the two driving directions), ``y`` up from the ground. Everything random is drawn
from ``np.random.default_rng`` seeded by the scene seed (scene-wide look and layout) or by
``(seed, stream, block)`` (the content of each 30 m block of road), so any stretch of road can be
rebuilt on demand and the same seed always gives the same world.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from liteseg_ros.defaults import NETWORK_SIZE

#: Weather names accepted by ``SceneConfig.weather`` (plus ``"random"``).
WEATHERS: tuple[str, ...] = ("clear", "overcast", "rain", "fog", "dusk")
_WEATHER_P = (0.42, 0.22, 0.12, 0.1, 0.14)

#: ``SceneConfig`` fields that scale how many things of a kind a scene holds (``liteseg train``'s
#: ``synthetic_density`` accepts exactly these).
DENSITY_KNOBS: tuple[str, ...] = ("cars", "trucks_buses", "people", "cyclists", "poles", "vegetation")

#: Length of one block of road content (metres); blocks are generated independently.
BLOCK_M = 30.0

# rng stream ids: (seed, stream, block) seeds a block's content.
_STATIC, _MOVING = 1, 2
_BLOCK_OFFSET = 1 << 20  # keeps SeedSequence entropy non-negative for blocks behind the start


@dataclass(frozen=True)
class SceneConfig:
    """What to generate: image size, weather and how busy the street is (all knobs have defaults).

    Densities are multipliers of the default amount (0 = none of that kind).
    """

    height: int = NETWORK_SIZE[0]  # scenes are made at the network size unless told otherwise
    width: int = NETWORK_SIZE[1]
    weather: str = "random"        # clear | overcast | rain | fog | dusk | random
    cars: float = 1.0              # moving and parked cars
    trucks_buses: float = 1.0      # trucks and buses among the moving vehicles
    people: float = 1.0            # pedestrians on sidewalks and terrain
    cyclists: float = 1.0          # riders on bicycles / motorcycles, and parked bicycles
    poles: float = 1.0             # poles, with traffic signs, traffic lights and lamps
    vegetation: float = 1.0        # free-standing trees
    curves: bool = True            # allow curved roads
    camera_jitter: float = 1.0     # spread of camera pitch / yaw / height / focal length
    noise: float = 1.0             # sensor noise and texture strength
    far_m: float = 120.0           # draw distance of objects along the road (metres)

    def __post_init__(self) -> None:
        for key in ("height", "width"):
            v = getattr(self, key)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 8:
                raise ValueError(f"SceneConfig.{key} must be an int >= 8, got {v!r}")
        if self.weather != "random" and self.weather not in WEATHERS:
            raise ValueError(
                f"SceneConfig.weather must be one of {', '.join(WEATHERS)} or random, got {self.weather!r}"
            )
        for key in (*DENSITY_KNOBS, "camera_jitter", "noise"):
            v = getattr(self, key)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"SceneConfig.{key} must be a finite number >= 0, got {v!r}")
        if not (isinstance(self.far_m, (int, float)) and 20.0 <= self.far_m <= 1000.0):
            raise ValueError(f"SceneConfig.far_m must be within 20..1000 metres, got {self.far_m!r}")


class Stream:
    """A buffered view of ``np.random.default_rng``: the same few draws, without per-call numpy overhead.

    Block generation makes hundreds of scalar draws; this takes them from one pre-drawn array of
    uniforms (refilled from the same generator), so results stay a pure function of the seed.
    """

    def __init__(self, rng: np.random.Generator, chunk: int = 512) -> None:
        self._rng, self._chunk = rng, chunk
        self._buf: list[float] = []
        self._i = 0

    def random(self) -> float:
        if self._i >= len(self._buf):
            self._buf = self._rng.random(self._chunk).tolist()
            self._i = 0
        self._i += 1
        return self._buf[self._i - 1]

    def uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * self.random()

    def integers(self, lo: int, hi: int | None = None) -> int:
        if hi is None:
            lo, hi = 0, lo
        return lo + min(int(self.random() * (hi - lo)), hi - lo - 1)

    def normal(self, mu: float, sd: float, n: int) -> np.ndarray:
        out = []
        for _ in range(n):  # Box-Muller
            u1 = max(self.random(), 1e-12)
            out.append(mu + sd * math.sqrt(-2.0 * math.log(u1)) * math.cos(2 * math.pi * self.random()))
        return np.asarray(out)

    def choice(self, options, p=None):
        n = options if isinstance(options, int) else len(options)
        if p is None:
            k = self.integers(n)
        else:
            r, acc, k = self.random(), 0.0, n - 1
            for i, pi in enumerate(p):
                acc += pi
                if r < acc:
                    k = i
                    break
        return k if isinstance(options, int) else options[k]

    def poisson(self, lam: float) -> int:
        lim, k, prod = math.exp(-lam), 0, self.random()  # Knuth; lam is small here
        while prod > lim and k < 100:
            k += 1
            prod *= self.random()
        return k


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _jit(rng: np.random.Generator, rgb, amount: float = 18.0) -> tuple[float, float, float]:
    """An RGB colour with per-channel jitter, clipped to 0..255."""
    c = np.clip(np.asarray(rgb, float) + rng.normal(0.0, amount, 3), 0, 255)
    return (float(c[0]), float(c[1]), float(c[2]))


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


# ----------------------------------------------------------------------------------------------
# Palettes (RGB). The renderer turns them into BGR.
CAR_COLOURS = ((180, 20, 25), (20, 50, 160), (235, 235, 235), (170, 172, 178), (25, 25, 28),
               (20, 30, 70), (230, 190, 20), (30, 120, 50), (220, 100, 20), (110, 110, 115),
               (120, 20, 40), (60, 140, 200), (200, 200, 190))
TRUCK_COLOURS = ((235, 235, 230), (200, 200, 195), (190, 30, 30), (30, 70, 160), (240, 200, 40),
                 (60, 120, 60))
BUS_COLOURS = ((240, 190, 20), (200, 30, 30), (235, 235, 235), (30, 90, 170), (40, 130, 80))
FACADE_COLOURS = ((205, 185, 150), (150, 150, 150), (150, 80, 60), (222, 216, 205), (225, 205, 140),
                  (120, 130, 145), (95, 88, 82), (185, 160, 140), (170, 120, 90))
WALL_COLOURS = ((170, 165, 155), (140, 130, 120), (180, 170, 145), (120, 118, 115), (160, 110, 90))
FENCE_COLOURS = ((130, 130, 135), (60, 100, 70), (130, 90, 55), (90, 90, 95), (170, 170, 175))
POLE_COLOURS = ((130, 130, 135), (150, 150, 150), (45, 60, 50), (40, 40, 42), (100, 100, 104))
SKIN = ((235, 195, 165), (200, 150, 110), (140, 95, 65), (95, 65, 45))
SHIRTS = ((200, 30, 40), (30, 60, 170), (240, 240, 240), (30, 30, 30), (40, 140, 60), (240, 200, 30),
          (120, 60, 150), (230, 120, 30), (100, 100, 100), (160, 200, 230))
PANTS = ((45, 55, 95), (30, 30, 32), (150, 130, 95), (80, 80, 85), (20, 30, 60))
BIKE_COLOURS = ((200, 30, 30), (30, 60, 160), (20, 20, 20), (230, 230, 230), (40, 150, 60), (240, 150, 20))


@dataclass(frozen=True)
class Camera:
    """The camera: focal length as a fraction of the width, height over ground, horizon and yaw."""

    f_rel: float       # focal length / image width
    height_m: float    # above the ground
    horizon_rel: float  # horizon row / image height (pitch)
    yaw: float         # radians, small; shifts the vanishing point
    lane: int          # index of the ego lane among the right-hand lanes
    u_jitter: float    # offset from the lane centre (metres)


@dataclass(frozen=True)
class Road:
    """Cross-section and course of the road, and the ground colours."""

    lanes_left: int
    lanes_right: int
    lane_w: float
    sidewalk_l: float
    sidewalk_r: float
    curb_w: float
    terrain_l: float   # grass/soil strip between sidewalk and the property line
    terrain_r: float
    wiggle: tuple[tuple[float, float, float], ...]  # (amplitude m, wavelength m, phase) of the course
    centre_style: str  # "dashed" | "solid" | "double" | "none"
    centre_yellow: bool
    edge_lines: bool
    asphalt: tuple[float, float, float]
    marking: tuple[float, float, float]
    sidewalk: tuple[float, float, float]
    curb: tuple[float, float, float]
    terrain: tuple[float, float, float]
    style: str         # "urban" | "suburban" | "rural"

    @property
    def left_edge(self) -> float:
        return -self.lanes_left * self.lane_w

    @property
    def right_edge(self) -> float:
        return self.lanes_right * self.lane_w

    def lateral(self, s) -> np.ndarray:
        """Lateral position of the road's centre line at ``s`` (metres, world frame)."""
        s = np.asarray(s, np.float64)
        out = np.zeros_like(s)
        for a, wl, ph in self.wiggle:
            out = out + a * np.sin(s * (2 * math.pi / wl) + ph)
        return out

    def slope(self, s: float) -> float:
        return float(sum(a * (2 * math.pi / wl) * math.cos(s * (2 * math.pi / wl) + ph)
                         for a, wl, ph in self.wiggle))

    def lane_centre(self, lane: int) -> float:
        """Centre ``u`` of lane ``lane``: 0.. are right-hand lanes, -1, -2.. the oncoming ones."""
        return (lane + 0.5) * self.lane_w


@dataclass(frozen=True)
class Look:
    """Weather and lighting of a scene (applied by the renderer)."""

    weather: str
    gain: float                       # global brightness of lit surfaces
    tint: tuple[float, float, float]  # per-channel gain (RGB)
    saturation: float
    sky_top: tuple[float, float, float]
    sky_horizon: tuple[float, float, float]
    clouds: float
    fog_m: float                      # distance at which fog reaches 63 % (aerial haze)
    fog_colour: tuple[float, float, float]
    shadows: float                    # strength of cast shadows (0 = none)
    sun_side: float                   # -1 / +1: which way shadows fall
    rain: float                       # density of rain streaks
    lights_on: bool                   # car lamps, lit windows, street lamps emit
    noise_sigma: float
    blur: float
    gamma: float
    contrast: float
    vignette: float


@dataclass
class Thing:
    """One object along the road: ``kind`` plus its road position, speed and appearance."""

    kind: str                # car truck bus person cyclist motorbike bicycle pole tree bush
    s: float                 # along the road at frame 0 (near face for vehicles)
    u: float                 # across the road (centre)
    v: float = 0.0           # speed along the road, metres per frame (negative: oncoming)
    p: dict = field(default_factory=dict)


@dataclass
class Segment:
    """A stretch of roadside structure parallel to the road: building, wall, fence or tree line."""

    kind: str                # building wall fence treeline hedge
    side: int                # -1 left, +1 right
    s0: float
    s1: float
    u: float                 # lateral position of the face towards the road
    height: float
    colour: tuple[float, float, float]
    p: dict = field(default_factory=dict)


@dataclass(frozen=True)
class World:
    """Everything scene-wide; block contents are made on demand by ``block_static``/``block_moving``."""

    seed: int
    config: SceneConfig
    camera: Camera
    road: Road
    look: Look
    skyline: tuple[tuple[float, float, int, tuple[float, float, float]], ...]  # (angle0, height, cls, rgb)
    style_p: dict
    lane_speed: dict          # lane index -> metres per frame


def make_world(seed: int, config: SceneConfig, speed: float) -> World:
    """Draw the scene-wide parameters of seed ``seed``."""
    rng = Stream(np.random.default_rng([int(seed) & 0xFFFFFFFFFFFF, 0]))
    j = config.camera_jitter
    style = _pick(rng, ("urban", "urban", "suburban", "suburban", "rural"))
    weather = config.weather if config.weather != "random" else \
        WEATHERS[int(rng.choice(len(WEATHERS), p=_WEATHER_P))]

    lanes_right = int(rng.choice([1, 1, 2, 2, 3], p=[0.3, 0.2, 0.25, 0.15, 0.1]))
    lanes_left = int(rng.choice([0, 1, 1, 2])) if style != "rural" else int(rng.choice([0, 1, 1]))
    if lanes_left == 0 and lanes_right == 1:
        lanes_left = 1
    lane_w = _u(rng, 2.9, 3.7)
    if style == "urban":
        sw_l, sw_r = _u(rng, 2.0, 5.0), _u(rng, 2.0, 5.0)
        ter_l = ter_r = 0.0 if rng.random() < 0.7 else _u(rng, 0.5, 2.0)
    elif style == "suburban":
        sw_l, sw_r = _u(rng, 1.5, 3.0), _u(rng, 1.5, 3.0)
        ter_l, ter_r = _u(rng, 0.5, 4.0), _u(rng, 0.5, 4.0)
    else:
        sw_l = 0.0 if rng.random() < 0.6 else _u(rng, 1.0, 2.0)
        sw_r = 0.0 if rng.random() < 0.4 else _u(rng, 1.0, 2.0)
        ter_l, ter_r = _u(rng, 3.0, 12.0), _u(rng, 3.0, 12.0)
    wiggle: tuple = ()
    if config.curves and rng.random() < 0.6:
        wiggle = tuple((_u(rng, 2.0, 14.0) * (1 if rng.random() < 0.5 else -1), _u(rng, 150.0, 400.0),
                        _u(rng, 0, 2 * math.pi)) for _ in range(2))
    grey = _u(rng, 55, 110)
    asphalt = _jit(rng, (grey, grey, grey * _u(rng, 0.95, 1.08)), 4)
    if weather == "rain":
        asphalt = tuple(c * 0.7 for c in asphalt)
    sw_grey = _u(rng, 135, 185)
    sidewalk = _pick(rng, ((sw_grey, sw_grey, sw_grey * 0.97), (sw_grey, sw_grey * 0.93, sw_grey * 0.85),
                           (sw_grey * 0.95, sw_grey * 0.72, sw_grey * 0.66)))
    terrain = _pick(rng, ((105, 140, 60), (125, 150, 70), (150, 140, 90), (130, 110, 80), (95, 125, 55)))
    road = Road(
        lanes_left=lanes_left, lanes_right=lanes_right, lane_w=lane_w,
        sidewalk_l=sw_l, sidewalk_r=sw_r, curb_w=0.25, terrain_l=ter_l, terrain_r=ter_r, wiggle=wiggle,
        centre_style=_pick(rng, ("dashed", "dashed", "solid", "double", "none")) if lanes_left else "none",
        centre_yellow=bool(rng.random() < 0.25), edge_lines=bool(rng.random() < 0.6),
        asphalt=asphalt, marking=_jit(rng, (228, 228, 222), 6), sidewalk=_jit(rng, sidewalk, 6),
        curb=_jit(rng, (190, 190, 188), 8), terrain=_jit(rng, terrain, 12), style=style,
    )
    camera = Camera(
        f_rel=_u(rng, 0.95 - 0.2 * j, 0.95 + 0.2 * j), height_m=_u(rng, 1.45 - 0.2 * j, 1.45 + 0.3 * j),
        horizon_rel=_u(rng, 0.44 - 0.06 * j, 0.44 + 0.05 * j), yaw=_u(rng, -0.03 * j, 0.03 * j),
        lane=int(rng.integers(lanes_right)), u_jitter=_u(rng, -0.35 * j, 0.35 * j),
    )
    look = _make_look(rng, weather, config)
    # Skyline: silhouettes at the horizon, in camera angle (radians) so they stay put as we drive.
    sky: list = []
    a = -1.6
    bg_building = {"urban": 0.8, "suburban": 0.45, "rural": 0.1}[style]
    while a < 1.6:
        is_b = rng.random() < bg_building
        w = _u(rng, 0.03, 0.15) if is_b else _u(rng, 0.02, 0.08)
        h = _u(rng, 0.01, 0.06) if is_b else _u(rng, 0.006, 0.03)
        if rng.random() < 0.15:
            h = 0.0
        rgb = _jit(rng, _pick(rng, FACADE_COLOURS), 10) if is_b else _jit(rng, (60, 95, 45), 10)
        sky.append((a, h, 2 if is_b else 8, rgb))
        a += w
    style_p = {
        "urban": dict(back_building=0.85, back_trees=0.1, front=(0.75, 0.1, 0.1, 0.05), setback=(0.0, 0.5)),
        "suburban": dict(back_building=0.5, back_trees=0.4, front=(0.3, 0.25, 0.3, 0.15),
                         setback=(2.0, 10.0)),
        "rural": dict(back_building=0.12, back_trees=0.6, front=(0.55, 0.05, 0.25, 0.15),
                      setback=(0.0, 25.0)),
    }[style]
    lane_speed = {}
    for lane in range(-lanes_left, lanes_right):
        if lane == camera.lane:
            lane_speed[lane] = float(speed)          # traffic ahead keeps its distance
        elif lane >= 0:
            lane_speed[lane] = float(speed) * _u(rng, 0.6, 1.3)
        else:
            lane_speed[lane] = -_u(rng, 0.6, 1.4)
    return World(seed=int(seed), config=config, camera=camera, road=road, look=look, skyline=tuple(sky),
                 style_p=style_p, lane_speed=lane_speed)


def _make_look(rng: np.random.Generator, weather: str, config: SceneConfig) -> Look:
    n = config.noise
    if weather == "clear":
        top = _jit(rng, (75, 130, 210), 15)
        hor = _jit(rng, (185, 210, 238), 8)
        return Look(weather, _u(rng, 0.95, 1.15), (_u(rng, 0.95, 1.08), 1.0, _u(rng, 0.92, 1.05)),
                    _u(rng, 0.9, 1.15), top, hor, _u(rng, 0.0, 45.0), _u(rng, 250, 700), hor,
                    _u(rng, 0.3, 0.55), 1.0 if rng.random() < 0.5 else -1.0, 0.0, False,
                    _u(rng, 2.0, 5.0) * n, _u(rng, 0.0, 0.6), _u(rng, 0.9, 1.1), _u(rng, 0.9, 1.15),
                    _u(rng, 0.0, 0.25))
    if weather == "overcast":
        g = _u(rng, 150, 195)
        top = _jit(rng, (g, g + 3, g + 10), 5)
        hor = _jit(rng, (g + 30, g + 32, g + 35), 4)
        return Look(weather, _u(rng, 0.78, 0.95), (1.0, 1.0, _u(rng, 1.0, 1.06)), _u(rng, 0.6, 0.85),
                    top, hor, _u(rng, 10.0, 30.0), _u(rng, 150, 350), hor, 0.0, 1.0, 0.0, False,
                    _u(rng, 2.0, 5.0) * n, _u(rng, 0.2, 0.7), _u(rng, 0.95, 1.15), _u(rng, 0.8, 1.0),
                    _u(rng, 0.0, 0.2))
    if weather == "rain":
        g = _u(rng, 115, 155)
        top = _jit(rng, (g, g + 2, g + 8), 5)
        hor = _jit(rng, (g + 35, g + 37, g + 40), 4)
        return Look(weather, _u(rng, 0.6, 0.8), (1.0, 1.0, _u(rng, 1.02, 1.1)), _u(rng, 0.55, 0.8),
                    top, hor, _u(rng, 10.0, 30.0), _u(rng, 70, 150), hor, 0.0, 1.0, _u(rng, 0.6, 1.0),
                    bool(rng.random() < 0.5), _u(rng, 3.0, 6.0) * n, _u(rng, 0.4, 0.9), _u(rng, 1.0, 1.2),
                    _u(rng, 0.75, 0.95), _u(rng, 0.1, 0.3))
    if weather == "fog":
        g = _u(rng, 190, 225)
        fogc = _jit(rng, (g, g + 2, g + 4), 3)
        return Look(weather, _u(rng, 0.8, 0.95), (1.0, 1.0, 1.02), _u(rng, 0.6, 0.85), fogc, fogc,
                    0.0, _u(rng, 25, 60), fogc, 0.0, 1.0, 0.0, bool(rng.random() < 0.4),
                    _u(rng, 2.0, 4.0) * n, _u(rng, 0.3, 0.8), _u(rng, 0.9, 1.05), _u(rng, 0.8, 1.0),
                    _u(rng, 0.0, 0.15))
    # dusk
    top = _jit(rng, (45, 50, 100), 10)
    hor = _jit(rng, (235, 145, 85), 15)
    return Look(weather, _u(rng, 0.4, 0.6), (_u(rng, 1.05, 1.2), _u(rng, 0.9, 1.0), _u(rng, 0.75, 0.9)),
                _u(rng, 0.8, 1.05), top, hor, _u(rng, 0.0, 25.0), _u(rng, 250, 600),
                tuple(0.5 * np.asarray(hor) + 0.5 * np.asarray(top)), _u(rng, 0.0, 0.3),
                1.0 if rng.random() < 0.5 else -1.0, 0.0, True, _u(rng, 3.0, 6.0) * n,
                _u(rng, 0.2, 0.6), _u(rng, 1.0, 1.2), _u(rng, 0.9, 1.1), _u(rng, 0.15, 0.4))


def _block_rng(world: World, stream: int, block: int) -> Stream:
    return Stream(np.random.default_rng([world.seed & 0xFFFFFFFFFFFF, stream, block + _BLOCK_OFFSET]))


def _person_p(rng: np.random.Generator, rider: bool = False) -> dict:
    return dict(height=_u(rng, 1.55, 1.92), skin=_jit(rng, _pick(rng, SKIN), 6),
                shirt=_jit(rng, _pick(rng, SHIRTS), 15), pants=_jit(rng, _pick(rng, PANTS), 10),
                hair=_jit(rng, (40, 30, 25), 10), phase=_u(rng, 0, 2 * math.pi),
                heading=_u(rng, -math.pi, math.pi), helmet=rider and rng.random() < 0.6,
                bag=(not rider) and rng.random() < 0.3, bag_rgb=_jit(rng, (60, 50, 45), 20))


def block_static(world: World, block: int) -> tuple[list[Segment], list[Thing]]:
    """Roadside structures and static objects of the 30 m block ``block`` (deterministic)."""
    rng = _block_rng(world, _STATIC, block)
    road, cfg, sp = world.road, world.config, world.style_p
    b0, b1 = block * BLOCK_M, (block + 1) * BLOCK_M
    segs: list[Segment] = []
    things: list[Thing] = []
    for side in (-1, 1):
        edge = road.left_edge if side < 0 else road.right_edge
        sw = road.sidewalk_l if side < 0 else road.sidewalk_r
        ter = road.terrain_l if side < 0 else road.terrain_r
        line = edge + side * (sw + ter)          # property line
        s = b0
        while s < b1 - 0.5:
            length = min(b1 - s, _u(rng, 8.0, 30.0))
            if b1 - (s + length) < 4.0:
                length = b1 - s
            e = s + length
            # front layer (at the property line)
            fk = ("none", "wall", "fence", "hedge")[int(rng.choice(4, p=sp["front"]))]
            back_u = line + side * _u(rng, *sp["setback"])
            if fk == "wall":
                segs.append(Segment("wall", side, s, e, line + side * 0.1, _u(rng, 0.8, 2.6),
                                    _jit(rng, _pick(rng, WALL_COLOURS), 10),
                                    dict(bricks=rng.random() < 0.4, coping=rng.random() < 0.6)))
            elif fk == "fence":
                segs.append(Segment("fence", side, s, e, line + side * 0.1, _u(rng, 1.0, 2.0),
                                    _jit(rng, _pick(rng, FENCE_COLOURS), 10),
                                    dict(style=_pick(rng, ("mesh", "pickets", "rails")),
                                         post_gap=_u(rng, 2.0, 3.0))))
            elif fk == "hedge":
                segs.append(Segment("hedge", side, s, e, line + side * 0.4, _u(rng, 0.7, 1.8),
                                    _jit(rng, (55, 95, 40), 12), dict(seed=int(rng.integers(1 << 30)))))
            if fk in ("wall", "fence", "hedge") and sp["setback"][1] < 1.0:
                back_u = line + side * _u(rng, 2.0, 6.0)
            r = rng.random()
            if r < sp["back_building"]:
                floors = int(rng.integers(1, 8 if road.style == "urban" else 4))
                fh = _u(rng, 2.9, 3.5)
                segs.append(Segment("building", side, s + (0.0 if rng.random() < 0.7 else _u(rng, 0, 3)),
                                    e, back_u, floors * fh + _u(rng, 0.5, 2.0),
                                    _jit(rng, _pick(rng, FACADE_COLOURS), 14),
                                    dict(floor_h=fh, win_gap=_u(rng, 2.4, 3.6), win_w=_u(rng, 0.9, 1.5),
                                         win_h=_u(rng, 1.2, 1.8), shop=rng.random() < 0.5,
                                         win_rgb=_jit(rng, (55, 65, 85), 12),
                                         frame_rgb=_jit(rng, (230, 230, 225), 10),
                                         lit=_u(rng, 0.1, 0.6), roof=rng.random() < 0.5,
                                         seed=int(rng.integers(1 << 30)))))
            elif r < sp["back_building"] + sp["back_trees"]:
                segs.append(Segment("treeline", side, s, e, back_u + side * _u(rng, 0, 4),
                                    _u(rng, 5.0, 14.0), _jit(rng, (50, 90, 38), 12),
                                    dict(seed=int(rng.integers(1 << 30)))))
            s = e
        # poles (with signs / lights / lamps) near the curb
        n_poles = int(rng.poisson(1.1 * cfg.poles))
        for _ in range(n_poles):
            pu = edge + side * min(max(sw, 0.0) * 0.8, max(0.5, sw - 0.3)) if sw > 0 else edge + side * 0.6
            kind = rng.choice(4, p=[0.3, 0.35, 0.2, 0.15])   # plain/lamp, sign, light, light over road
            things.append(Thing("pole", _u(rng, b0, b1), pu, 0.0, dict(
                side=side, height=_u(rng, 3.0, 8.0) if kind != 3 else _u(rng, 5.5, 7.0),
                width=_u(rng, 0.1, 0.25), rgb=_jit(rng, _pick(rng, POLE_COLOURS), 8),
                lamp=bool(kind == 0 and rng.random() < 0.7), sign=bool(kind == 1 or rng.random() < 0.2),
                light=bool(kind >= 2), overhead=bool(kind == 3),
                sign_shape=_pick(rng, ("circle", "circle", "triangle", "square", "rect", "octagon", "diamond")),
                sign_style=int(rng.integers(4)), sign_h=_u(rng, 2.0, 2.8), sign_size=_u(rng, 0.55, 0.9),
                light_h=_u(rng, 2.6, 3.6), light_state=int(rng.integers(3)),
                light_yellow=bool(rng.random() < 0.3),
            )))
        # free-standing trees on terrain / sidewalk edge
        n_trees = int(rng.poisson((1.4 if road.style != "urban" else 0.7) * cfg.vegetation))
        for _ in range(n_trees):
            if ter > 1.0:
                tu = edge + side * (sw + _u(rng, 0.5, ter - 0.3))
            elif sw > 2.0:
                tu = edge + side * (sw - 0.8)
            else:
                continue
            things.append(Thing("tree", _u(rng, b0, b1), tu, 0.0, dict(
                trunk_h=_u(rng, 1.5, 3.0), trunk_w=_u(rng, 0.15, 0.35), crown=_u(rng, 1.2, 3.0),
                blobs=[(_u(rng, -0.5, 0.5), _u(rng, -0.7, 0.7), _u(rng, -0.5, 0.6), _u(rng, 0.55, 0.85),
                        _u(rng, 0.75, 1.1)) for _ in range(int(rng.integers(3, 7)))],
                rgb=_jit(rng, (55, 100, 40), 15), trunk_rgb=_jit(rng, (85, 65, 50), 10))))
        # pedestrians (standing or walking along the sidewalk / terrain)
        n_people = int(rng.poisson(1.3 * cfg.people * (1.5 if road.style == "urban" else 0.7)))
        for _ in range(n_people):
            if sw > 0.8:
                pu = edge + side * _u(rng, 0.6, sw - 0.3)
            else:
                pu = edge + side * _u(rng, 0.5, 2.0)
            walking = rng.random() < 0.6
            pp = _person_p(rng)
            if walking:
                pp["heading"] = 0.0 if rng.random() < 0.5 else math.pi
            things.append(Thing("person", _u(rng, b0, b1), pu,
                                (0.13 if pp["heading"] == 0.0 else -0.13) if walking else 0.0,
                                dict(pp, walking=walking)))
        # parked bicycles on sidewalks
        if sw > 1.5 and rng.random() < 0.25 * cfg.cyclists:
            things.append(Thing("bicycle", _u(rng, b0, b1), edge + side * _u(rng, 0.7, sw - 0.4), 0.0, dict(
                heading=_u(rng, 0.9, 2.2) * (1 if rng.random() < 0.5 else -1),
                rgb=_jit(rng, _pick(rng, BIKE_COLOURS), 10))))
        # parked cars at the road edge
        # (in the outer lane when the ego car is not driving there, else half up on a wide sidewalk)
        lanes = road.lanes_left if side < 0 else road.lanes_right
        outer_free = lanes >= 2 and (side < 0 or world.camera.lane < road.lanes_right - 1)
        park_u = edge - side * 1.1 if outer_free else (edge + side * 0.25 if sw >= 2.0 else None)
        if road.style != "rural" and park_u is not None and rng.random() < 0.45 * cfg.cars:
            cs = b0 + _u(rng, 0, 8)
            while cs < b1 - 4:
                things.append(_vehicle(rng, "car", cs, park_u, 0.0, oncoming=side < 0))
                cs += _u(rng, 5.0, 12.0) if rng.random() < 0.7 else _u(rng, 12.0, 20.0)
    return segs, things


def _vehicle(rng: np.random.Generator, kind: str, s: float, u: float, v: float, oncoming: bool) -> Thing:
    if kind == "car":
        p = dict(w=_u(rng, 1.7, 1.95), h=_u(rng, 1.4, 1.65), l=_u(rng, 3.9, 4.9),
                 rgb=_jit(rng, _pick(rng, CAR_COLOURS), 10), shape=_pick(rng, ("sedan", "hatch", "suv", "van")))
        if p["shape"] in ("suv", "van"):
            p["h"] = _u(rng, 1.65, 1.95)
    elif kind == "truck":
        p = dict(w=_u(rng, 2.3, 2.55), h=_u(rng, 2.8, 3.8), l=_u(rng, 6.5, 11.0),
                 rgb=_jit(rng, _pick(rng, TRUCK_COLOURS), 8), cab_rgb=_jit(rng, _pick(rng, TRUCK_COLOURS), 8))
    else:
        p = dict(w=2.55, h=_u(rng, 3.0, 3.3), l=_u(rng, 10.5, 12.5), rgb=_jit(rng, _pick(rng, BUS_COLOURS), 8))
    p["oncoming"] = bool(oncoming)
    return Thing(kind, s, u, v, p)


def block_moving(world: World, block: int) -> list[Thing]:
    """Traffic of block ``block`` at frame 0: vehicles in their lanes and cyclists (deterministic)."""
    rng = _block_rng(world, _MOVING, block)
    road, cfg, cam = world.road, world.config, world.camera
    b0, b1 = block * BLOCK_M, (block + 1) * BLOCK_M
    out: list[Thing] = []
    for lane in range(-road.lanes_left, road.lanes_right):
        v = world.lane_speed[lane]
        s = b0 + _u(rng, 0, 10)
        while s < b1:
            gap = _u(rng, 7.0, 45.0) / max(cfg.cars, 0.05)
            if rng.random() < min(0.9, 0.55 * cfg.cars):
                r = rng.random()
                tb = 0.18 * cfg.trucks_buses
                kind = "truck" if r < tb * 0.55 else ("bus" if r < tb else "car")
                t = _vehicle(rng, kind, s, road.lane_centre(lane) + _u(rng, -0.25, 0.25), v, oncoming=lane < 0)
                # whole vehicles inside the block (no overlap with the next one); ego lane clear ahead
                if s + t.p["l"] <= b1 and not (lane == cam.lane and block == 0 and s < 9.0):
                    out.append(t)
                    s += t.p["l"]
            s += gap
    # cyclists / motorcyclists near the right road edge or crossing
    n = int(rng.poisson(0.35 * cfg.cyclists))
    for _ in range(n):
        motor = rng.random() < 0.25
        crossing = rng.random() < 0.35
        side = 1 if rng.random() < 0.75 else -1
        edge = road.right_edge if side > 0 else road.left_edge
        u = edge - side * _u(rng, 0.6, 1.2)
        heading = _u(rng, 0.35, 0.8) * (1 if rng.random() < 0.5 else -1)
        if crossing:
            u = _u(rng, road.left_edge + 1, road.right_edge - 1)
            heading = _u(rng, 1.2, 1.9) * (1 if rng.random() < 0.5 else -1)
        v = 0.0 if crossing else (_u(rng, 0.3, 0.6) if not motor else _u(rng, 0.8, 1.3)) * (1 if side > 0 else -1)
        s = _u(rng, b0, b1)
        if block == 0 and s < 6.0 and s > -30:
            continue
        out.append(Thing("motorbike" if motor else "cyclist", s, u, v, dict(
            _person_p(rng, rider=True), heading=heading, rgb=_jit(rng, _pick(rng, BIKE_COLOURS), 10),
            moving_lat=(math.sin(heading) * _u(rng, 0.1, 0.4)) if crossing else 0.0)))
    return out
