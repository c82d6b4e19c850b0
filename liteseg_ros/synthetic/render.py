"""Rasterise one frame of a synthetic world: exact trainId labels first, then the image from them.

Ring 0: imports numpy and OpenCV only; never torch, rclpy or message packages.

Every drawn primitive gets a *part*: (class, colour, depth, texture, emissive, instance). Geometry is
filled far to near (painter's order) into a part-id map with ``cv2.fillPoly``; the label is the class
of each pixel's part and the image is that part's colour with texture, shading, fog, rain, noise. So
image pixels always come from the class the label says, and occlusion is the same in both.
"""
from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np

from liteseg_ros.classes import CITYSCAPES_CLASSES

from .world import Segment, Thing, World

_ID = {name: i for i, name in enumerate(CITYSCAPES_CLASSES)}
ROAD, SIDEWALK, BUILDING, WALL, FENCE = (_ID[n] for n in ("road", "sidewalk", "building", "wall", "fence"))
POLE, LIGHT, SIGN, VEG, TERRAIN, SKY = (_ID[n] for n in ("pole", "traffic_light", "traffic_sign",
                                                          "vegetation", "terrain", "sky"))
PERSON, RIDER, CAR, TRUCK, BUS = (_ID[n] for n in ("person", "rider", "car", "truck", "bus"))
MOTORCYCLE, BICYCLE = _ID["motorcycle"], _ID["bicycle"]
#: Curbs are labelled sidewalk (Cityscapes counts the curb as part of the sidewalk).
CURB_LABEL = SIDEWALK
_GROUND = (ROAD, SIDEWALK, TERRAIN)


# texture profiles: (amplitude of blotchy noise, amplitude of per-pixel grain)
TEX = {"flat": (0.03, 0.03), "asphalt": (0.07, 0.09), "paving": (0.05, 0.07), "grass": (0.2, 0.2),
       "leaves": (0.34, 0.3), "facade": (0.06, 0.04), "concrete": (0.12, 0.07), "metal": (0.02, 0.03),
       "glass": (0.05, 0.03), "cloth": (0.05, 0.06), "sky": (0.0, 0.01), "wood": (0.1, 0.08)}
_TEX_NAMES = tuple(TEX)
_NEAR = 0.8          # near clipping distance (m)
_SKY_DEPTH = 1.0e4
_CIRCLE = np.stack([np.cos(np.linspace(0, 2 * np.pi, 16, endpoint=False)),
                    np.sin(np.linspace(0, 2 * np.pi, 16, endpoint=False))], 1)


class _Pending:
    """A primitive waiting for projection: road coords s, u, heights y; ``poly`` once resolved."""

    __slots__ = ("s", "u", "y", "hull", "poly")

    def __init__(self, s, u, y, hull: bool) -> None:
        self.s, self.u, self.y, self.hull = s, u, y, hull
        self.poly = None


def _scale(rgb, k: float) -> tuple[float, float, float]:
    return (rgb[0] * k, rgb[1] * k, rgb[2] * k)


class Frame:
    """One camera pose over a world: collects parts and polygons, then renders label and image."""

    def __init__(self, world: World, s0: float, t: float, height: int, width: int,
                 sway: float = 0.0, bob: float = 0.0) -> None:
        cam, road = world.camera, world.road
        self.world, self.road, self.look = world, road, world.look
        self.H, self.W = int(height), int(width)
        self.f = cam.f_rel * self.W
        self.cx = self.W / 2.0 + self.f * cam.yaw
        self.yh = cam.horizon_rel * self.H + bob * self.H
        self.hc = cam.height_m
        self.s0, self.t = float(s0), float(t)
        self.c0, self.k0 = float(road.lateral(self.s0)), road.slope(self.s0)
        self.u_ego = road.lane_centre(cam.lane) + cam.u_jitter + sway
        self.far = world.config.far_m
        self.cls: list[int] = []
        self.rgb: list[tuple[float, float, float]] = []
        self.depth: list[float] = []
        self.tex: list[int] = []
        self.emis: list[bool] = []
        self.inst: list[int] = []
        self.items: list[tuple[float, int, list]] = []
        self.shadows: list[np.ndarray] = []
        self.objects: list[dict] = []
        self._cur_inst = -1
        self.pending: list[_Pending] = []
        self.part(SKY, (0, 0, 0), _SKY_DEPTH, "sky")  # part 0: whatever nothing covers above the horizon

    # ------------------------------------------------------------------ parts and projection
    def part(self, cls: int, rgb, depth: float, tex: str = "flat", emissive: bool = False) -> int:
        self.cls.append(cls)
        self.rgb.append(tuple(float(c) for c in rgb))
        self.depth.append(float(depth))
        self.tex.append(_TEX_NAMES.index(tex))
        self.emis.append(bool(emissive))
        self.inst.append(self._cur_inst)
        return len(self.cls) - 1

    def begin_object(self, kind: str, depth: float) -> int:
        self._cur_inst = len(self.objects)
        self.objects.append({"kind": kind, "depth": float(depth)})
        return self._cur_inst

    def end_object(self) -> None:
        self._cur_inst = -1

    def to_cam(self, s, u):
        """Road coordinates -> camera lateral X and forward Z (metres)."""
        s = np.asarray(s, np.float64)
        z = s - self.s0
        x = (u - self.u_ego - self.c0) - self.k0 * z
        if self.road.wiggle:
            x = x + self.road.lateral(s)
        return x, z

    def project(self, s, u, y, hull: bool = False) -> _Pending:
        """Queue (n,) road coords + heights for projection; resolved for the whole frame at once.

        The polygon (``.poly``, (n, 2) pixels) is None if any point is behind the near plane; with
        ``hull`` it is the convex hull of the projected points.
        """
        s = np.asarray(s, np.float64)
        n = s.size if s.ndim else np.size(y)
        if s.ndim == 0:
            s = np.full(n, float(s))
        u = np.asarray(u, np.float64)
        if u.ndim == 0:
            u = np.full(n, float(u))
        y = np.asarray(y, np.float64)
        if y.ndim == 0:
            y = np.full(n, float(y))
        p = _Pending(s, u, y, hull)
        self.pending.append(p)
        return p

    def resolve(self) -> None:
        """Project every queued primitive in one vectorised pass."""
        if not self.pending:
            return
        ns = [len(p.s) for p in self.pending]
        S = np.concatenate([p.s for p in self.pending])
        U = np.concatenate([p.u for p in self.pending])
        Y = np.concatenate([p.y for p in self.pending])
        x, z = self.to_cam(S, U)
        starts = np.concatenate([[0], np.cumsum(ns)[:-1]])
        ok = np.minimum.reduceat(z, starts) >= _NEAR
        zc = np.maximum(z, _NEAR)
        pts = np.empty((len(S), 2))
        pts[:, 0] = self.cx + self.f * x / zc
        pts[:, 1] = self.yh + self.f * (self.hc - Y) / zc
        for p, st, n, good in zip(self.pending, starts.tolist(), ns, ok.tolist()):
            if not good:
                continue
            q = pts[st:st + n]
            p.poly = cv2.convexHull(q.astype(np.float32))[:, 0, :].astype(np.float64) if p.hull else q
        self.pending = []

    def rects_along(self, sa, sb, u: float, y0, y1) -> list:
        """Many small faces parallel to the road at once (arrays of equal length); drops clipped ones."""
        sa, sb, y0, y1 = np.broadcast_arrays(*(np.asarray(v, np.float64) for v in (sa, sb, y0, y1)))
        if sa.size == 0:
            return []
        ss = np.stack([sa, sb, sb, sa], 1)
        yy = np.stack([y0, y0, y1, y1], 1)
        x, z = self.to_cam(ss, u)
        ok = z.min(1) >= _NEAR
        if not ok.any():
            return []
        x, z, yy = x[ok], z[ok], yy[ok]
        out = np.empty(z.shape + (2,))
        out[..., 0] = self.cx + self.f * x / z
        out[..., 1] = self.yh + self.f * (self.hc - yy) / z
        return list(out)

    def add(self, key: float, ops: list) -> None:
        if ops:
            self.items.append((float(key), len(self.items), ops))

    def dist(self, s: float, u: float) -> float:
        x, z = self.to_cam(s, u)
        return float(math.hypot(float(x), float(z)))

    # ------------------------------------------------------------------ geometry helpers
    def face_along(self, sa: float, sb: float, u: float, y0: float, y1, n: int = 2) -> np.ndarray | None:
        """A vertical face parallel to the road (clipped at the near plane); y1 may be an array of n."""
        sa = max(sa, self.s0 + _NEAR)
        if sb <= sa:
            return None
        s = np.linspace(sa, sb, n)
        top = np.broadcast_to(np.asarray(y1, np.float64), s.shape)
        ss = np.concatenate([s, s[::-1]])
        yy = np.concatenate([np.full(n, y0), top[::-1]])
        return self.project(ss, np.full(2 * n, u), yy)

    def face_across(self, s: float, ua: float, ub: float, y0: float, y1: float) -> np.ndarray | None:
        """A vertical rectangle facing the camera (perpendicular to the road) at ``s``."""
        return self.project(np.full(4, s), np.array([ua, ub, ub, ua]), np.array([y0, y0, y1, y1]))

    def ground_quad(self, sa: float, sb: float, ua: float, ub: float, y: float = 0.0) -> np.ndarray | None:
        sa = max(sa, self.s0 + _NEAR)
        if sb <= sa:
            return None
        return self.project(np.array([sa, sb, sb, sa]), np.array([ua, ua, ub, ub]), np.full(4, y))

    def local(self, t: Thing, pts: np.ndarray, heading: float, hull: bool = False) -> _Pending:
        """Points (n,3) in a thing's frame (a forward, p right, y up), queued for projection."""
        c, s_ = math.cos(heading), math.sin(heading)
        ds = pts[:, 0] * c - pts[:, 1] * s_
        du = pts[:, 0] * s_ + pts[:, 1] * c
        return self.project(t.s + ds, t.u + du, pts[:, 2], hull)

    def limb(self, t: Thing, heading: float, p0, p1, ta: float, tp: float) -> np.ndarray | None:
        """Convex hull of a box around the segment p0-p1 (local coords) with half-thicknesses ta, tp."""
        base = np.array([p0, p1], np.float64)
        pts = (base[:, None, :] + np.array([[-ta, -tp, 0.0], [-ta, tp, 0.0], [ta, -tp, 0.0], [ta, tp, 0.0]])
               ).reshape(8, 3)
        return self.local(t, pts, heading, hull=True)

    def disc(self, t: Thing, heading: float, a: float, y: float, r: float, width: float) -> np.ndarray | None:
        """A wheel: a disc in the thing's (a, y) plane with some width along p."""
        n = len(_CIRCLE)
        pts = np.zeros((2 * n, 3))
        pts[:n, 0] = pts[n:, 0] = a + r * _CIRCLE[:, 0]
        pts[:n, 2] = pts[n:, 2] = y + r * _CIRCLE[:, 1]
        pts[:n, 1], pts[n:, 1] = -width, width
        return self.local(t, pts, heading, hull=True)

    def ball(self, s: float, u: float, y: float, r: float) -> _Pending:
        """A sphere (head, crown blob): a circle of radius r facing the camera."""
        return self.project(np.full(len(_CIRCLE), s), u + r * _CIRCLE[:, 0], y + r * _CIRCLE[:, 1])

    # ------------------------------------------------------------------ scene content
    def draw_skyline(self) -> None:
        d = self.far * 3.0
        ops = []
        entries = self.world.skyline
        for i, (a0, h, cls, rgb) in enumerate(entries):
            if h <= 0:
                continue
            a1 = entries[i + 1][0] if i + 1 < len(entries) else a0 + 0.1
            x0, x1 = self.cx + self.f * a0, self.cx + self.f * a1
            if x1 < 0 or x0 > self.W:
                continue
            yb = self.yh + 0.6
            if cls == BUILDING:
                pts = np.array([[x0, yb], [x1, yb], [x1, self.yh - self.f * h], [x0, self.yh - self.f * h]])
            else:
                xs = np.linspace(x0, x1, 6)
                bump = h * (0.6 + 0.4 * np.sin(np.linspace(0, np.pi, 6)) * (0.7 + 0.3 * math.sin(i * 1.7)))
                pts = np.concatenate([[[x0, yb], [x1, yb]], np.stack([xs[::-1], self.yh - self.f * bump[::-1]], 1)])
            ops.append((self.part(cls, rgb, d, "facade" if cls == BUILDING else "leaves"), [pts]))
        self.add(d, ops)

    def draw_segment(self, g: Segment) -> None:
        sa, sb = max(g.s0, self.s0 + _NEAR), min(g.s1, self.s0 + self.far)
        if sb <= sa:
            return
        edges = [sa]
        while edges[-1] < sb - 1e-6:
            edges.append(min(sb, edges[-1] + min(25.0, max(5.0, 0.25 * (edges[-1] - self.s0)))))
        if len(edges) > 2 and edges[-1] - edges[-2] < 1.0:
            edges.pop(-2)
        xa, za = self.to_cam(np.asarray(edges), g.u)
        xp = self.cx + self.f * xa / za
        for i, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
            if (xp[i] < 0 and xp[i + 1] < 0) or (xp[i] > self.W and xp[i + 1] > self.W):
                continue
            z = 0.5 * (a + b) - self.s0
            a, b = float(a), float(b)
            ops = getattr(self, "_seg_" + g.kind)(g, float(a), float(b), z)
            if ops:
                self.add(self.dist(a, g.u), ops)
        # the end face towards the camera (buildings and walls have depth)
        if g.kind in ("building", "wall") and g.s0 >= self.s0 + _NEAR and g.s0 < self.s0 + self.far:
            depth = 10.0 if g.kind == "building" else 0.3
            q = self.face_across(g.s0, g.u, g.u + g.side * depth, 0.0, g.height)
            if q is not None:
                cls = BUILDING if g.kind == "building" else WALL
                p = self.part(cls, _scale(g.colour, 0.72), g.s0 - self.s0, "facade")
                self.add(self.dist(g.s0, g.u + g.side * depth * 0.5), [(p, [q])])

    def _seg_building(self, g: Segment, a: float, b: float, z: float) -> list:
        q = self.face_along(a, b, g.u, 0.0, g.height)
        if q is None:
            return []
        P = g.p
        ops = [(self.part(BUILDING, g.colour, z, "facade"), [q])]
        cq = self.face_along(a, b, g.u, g.height - 0.45, g.height)
        if cq is not None:
            ops.append((self.part(BUILDING, _scale(g.colour, 0.8), z, "facade"), [cq]))
        floor_px = self.f * P["floor_h"] / max(z, 1.0)
        if floor_px < 3.0:
            return ops
        floors = int((g.height - 0.6) // P["floor_h"])
        gap, ww, wh = P["win_gap"], P["win_w"], P["win_h"]
        k0 = int(math.ceil((a - g.s0 - gap / 2) / gap))
        k1 = int(math.floor((b - g.s0 - gap / 2) / gap))
        ks = np.arange(k0, k1 + 1)
        sc = g.s0 + gap / 2 + ks * gap
        sc = sc[(sc - ww / 2 >= a - 0.01) & (sc + ww / 2 <= b + 0.01)]
        frames: list = []
        glass: list = []
        lit: list = []
        if sc.size == 0 or floors <= 0:
            return ops
        fl = np.arange(floors)
        S, F = np.meshgrid(sc, fl, indexing="ij")
        S, F = S.ravel(), F.ravel()
        y0 = F * P["floor_h"] + (P["floor_h"] - wh) * 0.6
        y1 = y0 + wh
        half = np.full(S.shape, ww / 2)
        if P["shop"]:
            shop = F == 0
            y0, y1 = np.where(shop, 0.4, y0), np.where(shop, 2.6, y1)
            half = np.where(shop, min(gap * 0.42, ww * 1.1), half)
        if floor_px > 10:
            frames = self.rects_along(S - half - 0.1, S + half + 0.1, g.u, y0 - 0.1, y1 + 0.1)
        kidx = np.round((S - g.s0 - gap / 2) / gap).astype(np.int64)
        hsh = ((P["seed"] * 2654435761 + kidx * 97 + F * 13) % 1000) / 1000.0
        on = (hsh < P["lit"]) if self.look.lights_on else np.zeros(S.shape, bool)
        glass = self.rects_along(S[~on] - half[~on], S[~on] + half[~on], g.u, y0[~on], y1[~on])
        lit = self.rects_along(S[on] - half[on], S[on] + half[on], g.u, y0[on], y1[on])
        if frames:
            ops.append((self.part(BUILDING, P["frame_rgb"], z, "flat"), frames))
        if glass:
            ops.append((self.part(BUILDING, P["win_rgb"], z, "glass"), glass))
        if lit:
            ops.append((self.part(BUILDING, (250, 210, 130), z, "glass", emissive=True), lit))
        return ops

    def _seg_wall(self, g: Segment, a: float, b: float, z: float) -> list:
        q = self.face_along(a, b, g.u, 0.0, g.height)
        if q is None:
            return []
        ops = [(self.part(WALL, g.colour, z, "concrete"), [q])]
        if g.p.get("coping"):
            c = self.face_along(a, b, g.u - g.side * 0.05, g.height - 0.12, g.height + 0.05)
            if c is not None:
                ops.append((self.part(WALL, _scale(g.colour, 1.15), z, "concrete"), [c]))
        if g.p.get("bricks") and self.f * 0.25 / max(z, 1.0) > 3.0:
            ys = np.arange(0.25, g.height - 0.1, 0.25)
            lines = self.rects_along(np.full(ys.shape, a), b, g.u, ys, ys + 0.03)
            if lines:
                ops.append((self.part(WALL, _scale(g.colour, 0.75), z, "concrete"), lines))
        return ops

    def _seg_fence(self, g: Segment, a: float, b: float, z: float) -> list:
        P, h, u = g.p, g.height, g.u
        ops: list = []
        style = P["style"]
        if style in ("mesh", "pickets"):
            q = self.face_along(a, b, u, 0.05, h)
            if q is None:
                return []
            ops.append((self.part(FENCE, g.colour, z, "metal" if style == "mesh" else "wood"), [q]))
            if self.f * 0.3 / max(z, 1.0) > 2.5:
                dark = self.part(FENCE, _scale(g.colour, 0.55), z, "metal")
                if style == "mesh":
                    st = np.arange(a - h, b, 0.35)
                    p0, p1 = np.maximum(st, a), np.minimum(st + h, b)
                    keep = p1 - p0 > 0.05
                    st, p0, p1 = st[keep], p0[keep], p1[keep]
                    ss = np.stack([p0, p1], 1)
                    yy = np.stack([0.05 + p0 - st, 0.05 + p1 - st], 1)
                    x, zz = self.to_cam(ss, u)
                    ok = zz.min(1) >= _NEAR
                    segs = []
                    if ok.any():
                        pts = np.empty(zz[ok].shape + (2,))
                        pts[..., 0] = self.cx + self.f * x[ok] / zz[ok]
                        pts[..., 1] = self.yh + self.f * (self.hc - yy[ok]) / zz[ok]
                        segs = list(pts)
                    ops.append((dark, segs, "lines"))
                else:
                    xs = np.arange(max(a, self.s0 + _NEAR), b - 0.03, 0.16)
                    ops.append((dark, self.rects_along(xs, xs + 0.03, u, 0.1, h - 0.05)))
        else:  # rails: see-through
            ys = np.array([h * 0.35, h * 0.7, h - 0.1])
            ops.append((self.part(FENCE, g.colour, z, "metal"),
                        self.rects_along(np.full(3, max(a, self.s0 + _NEAR)), b, u, ys, ys + 0.1)))
        gap = P["post_gap"]
        xs = np.arange(g.s0 + math.ceil((a - g.s0) / gap) * gap, b, gap)
        posts = self.rects_along(xs, xs + 0.09, u - g.side * 0.02, 0.0, h + 0.05)
        if posts:
            ops.append((self.part(FENCE, _scale(g.colour, 0.8), z, "metal"), posts))
        return ops

    def _treeline_top(self, g: Segment, s: np.ndarray, rough: float) -> np.ndarray:
        ph = (g.p["seed"] % 1000) * 0.01
        return g.height * (1.0 - rough * (0.5 + 0.25 * np.sin(s * 0.9 + ph) + 0.25 * np.sin(s * 2.3 + 2 * ph)))

    def _seg_treeline(self, g: Segment, a: float, b: float, z: float, rough: float = 0.35) -> list:
        n = max(2, int((b - a) / 1.2) + 1)
        q = self.face_along(a, b, g.u, 0.0, self._treeline_top(g, np.linspace(max(a, self.s0 + _NEAR), b, n),
                                                             rough), n)
        if q is None:
            return []
        return [(self.part(VEG, g.colour, z, "leaves"), [q])]

    def _seg_hedge(self, g: Segment, a: float, b: float, z: float) -> list:
        return self._seg_treeline(g, a, b, z, rough=0.12)

    # ------------------------------------------------------------------ things
    def in_view(self, s: float, u: float, margin_m: float) -> bool:
        """Whether a point (with a lateral margin in metres) may be inside the image horizontally."""
        x, z = self.to_cam(s, u)
        z = float(z)
        if z < _NEAR:
            return True
        xp = self.cx + self.f * float(x) / z
        m = self.f * margin_m / z
        return -m <= xp <= self.W + m

    def draw_thing(self, t: Thing) -> None:
        z = t.s - self.s0
        if z > self.far or z < -20.0:
            return
        reach = t.p.get("l", 0.0) + 4.0 if t.kind in ("car", "truck", "bus") else 4.0
        if z > _NEAR and not (self.in_view(t.s, t.u, reach) or (reach > 4.0 and self.in_view(t.s + reach, t.u, 3.0))):
            return
        getattr(self, "_thing_" + t.kind)(t, z)

    def _shadow(self, sa: float, sb: float, ua: float, ub: float, height: float) -> None:
        if self.look.shadows <= 0:
            return
        d = self.look.sun_side * min(height * 0.35, 2.0)
        q = self.ground_quad(sa - 0.1, sb + 0.1 + height * 0.1, min(ua, ua + d), max(ub, ub + d))
        if q is not None:
            self.shadows.append(q)

    def _thing_car(self, t: Thing, z: float) -> None:
        self._vehicle(t, z, CAR)

    def _thing_truck(self, t: Thing, z: float) -> None:
        self._vehicle(t, z, TRUCK)

    def _thing_bus(self, t: Thing, z: float) -> None:
        self._vehicle(t, z, BUS)

    def _vehicle(self, t: Thing, z: float, cls: int) -> None:
        P = t.p
        w, h, L = P["w"], P["h"], P["l"]
        if z + L < _NEAR:
            return
        ul, ur, s, rgb = t.u - w / 2, t.u + w / 2, t.s, P["rgb"]
        zd = max(z, _NEAR)
        self.begin_object(CITYSCAPES_CLASSES[cls], zd)
        lights = self.look.lights_on
        tyre = self.part(cls, (28, 28, 30), zd, "flat")
        glass = self.part(cls, (38, 45, 55), zd, "glass")
        body = self.part(cls, rgb, zd, "metal")
        side_body = self.part(cls, _scale(rgb, 0.78), zd, "metal")
        ops: list = []
        xl, _ = self.to_cam(s, ul)
        xr, _ = self.to_cam(s, ur)
        side_u = ul if xl > 0 else (ur if xr < 0 else None)
        belt = 0.85 if cls == CAR else 1.1
        if cls == TRUCK:
            belt = 1.0
        oncoming = P["oncoming"]
        # side face
        if side_u is not None:
            if cls == CAR:
                ops.append((side_body, [q for q in [self.face_along(s, s + L, side_u, 0.25, belt)] if q is not None]))
                cab = self.face_along(s + 0.12 * L, s + 0.8 * L, side_u, belt, h)
                if cab is not None:
                    ops.append((side_body, [cab]))
                win = self.face_along(s + 0.17 * L, s + 0.76 * L, side_u, belt + 0.06, h - 0.07)
                if win is not None:
                    ops.append((glass, [win]))
            elif cls == TRUCK:
                box0, box1 = (s, s + 0.72 * L) if not oncoming else (s + 0.28 * L, s + L)
                cab0, cab1 = (s + 0.75 * L, s + L) if not oncoming else (s, s + 0.25 * L)
                cab_side = self.part(cls, _scale(P["cab_rgb"], 0.8), zd, "metal")
                for q, prt in ((self.face_along(box0, box1, side_u, 0.9, h), side_body),
                               (self.face_along(cab0, cab1, side_u, 0.5, 2.9), cab_side),
                               (self.face_along(box0, box1, side_u, 0.5, 0.9), tyre)):
                    if q is not None:
                        ops.append((prt, [q]))
                wq = self.face_along(cab0 + 0.3, cab1 - 0.4, side_u, 1.8, 2.6)
                if wq is not None:
                    ops.append((glass, [wq]))
            else:  # bus
                q = self.face_along(s, s + L, side_u, 0.3, h)
                if q is not None:
                    ops.append((side_body, [q]))
                wq = self.face_along(s + 0.6, s + L - 0.6, side_u, 1.1, h - 0.35)
                if wq is not None:
                    ops.append((glass, [wq]))
                    pillars = [self.face_along(x, x + 0.12, side_u, 1.1, h - 0.35)
                               for x in np.arange(s + 2.0, s + L - 1.0, 1.6)]
                    ops.append((side_body, [p for p in pillars if p is not None]))
            wheels = []
            for wa in ((0.18, 0.82) if cls == CAR else (0.15, 0.55, 0.85)):
                ws = s + wa * L
                if ws - self.s0 > _NEAR + 0.4:
                    r = 0.33 if cls == CAR else 0.5
                    wheels.append(self.project(ws + r * _CIRCLE[:, 0], np.full(16, side_u), r + r * _CIRCLE[:, 1]))
            ops.append((tyre, [q for q in wheels if q is not None]))
        # top surfaces visible from above
        if z > _NEAR and cls == CAR:
            top = self.ground_quad(s, s + L, ul, ur, belt)
            if top is not None:
                ops.append((body, [top]))
            if self.hc > h:
                roof = self.ground_quad(s + 0.15 * L, s + 0.78 * L, ul + 0.12, ur - 0.12, h)
                if roof is not None:
                    ops.append((self.part(cls, _scale(rgb, 1.12), zd, "metal"), [roof]))
        # near face
        if z > _NEAR:
            if cls == CAR:
                cab_s = s + (0.15 if not oncoming else 0.3) * L
                cab = self.project(np.full(4, cab_s), np.array([ul + 0.08, ur - 0.08, ur - 0.2, ul + 0.2]),
                                   np.array([belt, belt, h, h]))
                if cab is not None:
                    ops.append((body, [cab]))
                    win = self.project(np.full(4, cab_s), np.array([ul + 0.18, ur - 0.18, ur - 0.26, ul + 0.26]),
                                       np.array([belt + 0.06, belt + 0.06, h - 0.06, h - 0.06]))
                    ops.append((glass, [win]))
                q = self.face_across(s, ul, ur, 0.25, belt)
                if q is not None:
                    ops.append((body, [q]))
                ops.append((tyre, [q for q in (self.face_across(s + 0.3, ul + 0.02, ul + 0.28, 0.0, 0.3),
                                               self.face_across(s + 0.3, ur - 0.28, ur - 0.02, 0.0, 0.3),
                                               self.face_across(s, ul, ur, 0.22, 0.4)) if q is not None]))
                plate = self.face_across(s, t.u - 0.26, t.u + 0.26, 0.45, 0.57)
                if plate is not None:
                    ops.append((self.part(cls, (225, 225, 220), zd, "flat"), [plate]))
                lamp_rgb = (255, 250, 225) if oncoming else (210, 25, 20)
                lamps = [self.face_across(s, ul + 0.06, ul + 0.38, belt - 0.2, belt - 0.05),
                         self.face_across(s, ur - 0.38, ur - 0.06, belt - 0.2, belt - 0.05)]
                ops.append((self.part(cls, lamp_rgb, zd, "flat", emissive=lights),
                            [q for q in lamps if q is not None]))
            elif cls == TRUCK:
                if oncoming:
                    box = self.face_across(s + 0.28 * L, ul, ur, 2.9, h) if h > 3.0 else None
                    if box is not None:
                        ops.append((body, [box]))
                    cab = self.face_across(s, ul + 0.05, ur - 0.05, 0.5, 2.9)
                    if cab is not None:
                        ops.append((self.part(cls, P["cab_rgb"], zd, "metal"), [cab]))
                        ops.append((glass, [self.face_across(s, ul + 0.2, ur - 0.2, 1.8, 2.7)]))
                        lamps = [self.face_across(s, ul + 0.15, ul + 0.45, 0.75, 0.95),
                                 self.face_across(s, ur - 0.45, ur - 0.15, 0.75, 0.95)]
                        ops.append((self.part(cls, (255, 250, 225), zd, "flat", emissive=lights), lamps))
                    ops.append((tyre, [q for q in (self.face_across(s + 0.6, ul + 0.02, ul + 0.4, 0.0, 0.5),
                                                   self.face_across(s + 0.6, ur - 0.4, ur - 0.02, 0.0, 0.5))
                                       if q is not None]))
                else:
                    ops.append((tyre, [q for q in (self.face_across(s + 0.4, ul + 0.02, ul + 0.55, 0.0, 1.0),
                                                   self.face_across(s + 0.4, ur - 0.55, ur - 0.02, 0.0, 1.0),
                                                   self.face_across(s + 0.2, ul, ur, 0.55, 0.95)) if q is not None]))
                    box = self.face_across(s, ul, ur, 0.95, h)
                    if box is not None:
                        ops.append((body, [box]))
                        ops.append((self.part(cls, _scale(rgb, 0.6), zd, "metal"),
                                    [self.face_across(s, t.u - 0.02, t.u + 0.02, 1.0, h - 0.1)]))
                        ops.append((self.part(cls, (210, 25, 20), zd, "flat", emissive=lights),
                                    [self.face_across(s, ul + 0.05, ul + 0.3, 1.0, 1.15),
                                     self.face_across(s, ur - 0.3, ur - 0.05, 1.0, 1.15)]))
            else:  # bus
                q = self.face_across(s, ul, ur, 0.3, h)
                if q is not None:
                    ops.append((tyre, [q for q in (self.face_across(s + 0.5, ul + 0.05, ul + 0.45, 0.0, 0.6),
                                                   self.face_across(s + 0.5, ur - 0.45, ur - 0.05, 0.0, 0.6))
                                       if q is not None]))
                    ops.append((body, [q]))
                    ops.append((glass, [self.face_across(s, ul + 0.15, ur - 0.15, 1.1 if oncoming else 1.6,
                                                         h - 0.3)]))
                    ops.append((tyre, [self.face_across(s, ul, ur, 0.3, 0.55)]))
                    lamp_rgb = (255, 250, 225) if oncoming else (210, 25, 20)
                    ops.append((self.part(cls, lamp_rgb, zd, "flat", emissive=lights),
                                [self.face_across(s, ul + 0.1, ul + 0.4, 0.65, 0.85),
                                 self.face_across(s, ur - 0.4, ur - 0.1, 0.65, 0.85)]))
        self._shadow(s, s + L, ul, ur, h)
        self.end_object()
        self.add(self.dist(s, t.u) if z > _NEAR else abs(float(self.to_cam(self.s0 + 1, t.u if side_u is None else side_u)[0])), ops)

    def _figure(self, t: Thing, cls: int, heading: float, riding: bool) -> list:
        """A person (standing / walking) or a seated rider as limbs in the thing's local frame."""
        P = t.p
        H = P["height"]
        zd = max(t.s - self.s0, _NEAR)
        skin = self.part(cls, P["skin"], zd, "flat")
        shirt = self.part(cls, P["shirt"], zd, "cloth")
        pants = self.part(cls, P["pants"], zd, "cloth")
        ops: list = []

        def add(prt, poly):
            if poly is not None:
                ops.append((prt, [poly]))

        if not riding:
            ph = P["phase"] + (self.t * 0.9 if P.get("walking") else 0.0)
            sw = 0.13 * H * math.sin(ph) if P.get("walking") else 0.03 * H
            hip, sh, head_y = 0.5 * H, 0.81 * H, 0.92 * H
            for sgn in (-1, 1):
                add(pants, self.limb(t, heading, (0, sgn * 0.055 * H, hip), (sgn * sw, sgn * 0.06 * H, 0.03 * H),
                                     0.045 * H, 0.04 * H))
                add(self.part(cls, (30, 28, 28), zd), self.limb(t, heading, (sgn * sw, sgn * 0.06 * H, 0.0),
                                                               (sgn * sw + 0.05 * H, sgn * 0.06 * H, 0.02 * H),
                                                               0.03 * H, 0.035 * H))
            add(shirt, self.limb(t, heading, (0, 0, hip - 0.02 * H), (0, 0, sh), 0.07 * H, 0.125 * H))
            for sgn in (-1, 1):
                add(shirt, self.limb(t, heading, (0, sgn * 0.15 * H, sh - 0.02 * H),
                                     (-sgn * sw * 0.8, sgn * 0.17 * H, 0.46 * H), 0.03 * H, 0.028 * H))
            if P.get("bag"):
                add(self.part(cls, P["bag_rgb"], zd, "cloth"),
                    self.limb(t, heading, (-0.1 * H, 0, 0.55 * H), (-0.1 * H, 0, 0.75 * H), 0.05 * H, 0.09 * H))
        else:
            ped = P["phase"] + self.t * 1.2
            hip, sh, head_y = (-0.15, 0, 1.0), (0.15, 0, 1.42), 1.6
            for sgn in (-1, 1):
                pedal = (0.17 * math.cos(ped + (sgn > 0) * math.pi), sgn * 0.12,
                         0.32 + 0.17 * math.sin(ped + (sgn > 0) * math.pi))
                knee = ((hip[0] + pedal[0]) / 2 + 0.17, sgn * 0.11, (hip[2] + pedal[2]) / 2 + 0.12)
                add(pants, self.limb(t, heading, (hip[0], sgn * 0.1, hip[2]), knee, 0.06, 0.06))
                add(pants, self.limb(t, heading, knee, pedal, 0.05, 0.05))
            add(shirt, self.limb(t, heading, hip, sh, 0.11, 0.18))
            for sgn in (-1, 1):
                add(shirt, self.limb(t, heading, (0.15, sgn * 0.19, 1.38), (0.45, sgn * 0.23, 1.03), 0.035, 0.035))
        # head: a ball at the figure's head position
        c, s_ = math.cos(heading), math.sin(heading)
        ha = 0.0 if not riding else 0.25
        hs, hu = t.s + ha * c, t.u + ha * s_
        r = 0.065 * H if not riding else 0.11
        add(skin, self.ball(hs, hu, head_y, r))
        if riding and P.get("helmet"):
            add(self.part(cls, P["shirt"], zd, "metal"), self.ball(hs, hu, head_y + 0.04, r * 1.05))
        else:
            add(self.part(cls, P["hair"], zd, "cloth"), self.ball(hs - 0.02 * c, hu - 0.02 * s_, head_y + 0.25 * r,
                                                                 r * 0.85))
        return ops

    def _thing_person(self, t: Thing, z: float) -> None:
        if z < 1.2:
            return
        self.begin_object("person", z)
        ops = self._figure(t, PERSON, t.p["heading"], riding=False)
        self._shadow(t.s - 0.2, t.s + 0.2, t.u - 0.2, t.u + 0.2, t.p["height"])
        self.end_object()
        self.add(self.dist(t.s, t.u), ops)

    def _bike(self, t: Thing, heading: float, cls: int, motor: bool) -> list:
        zd = max(t.s - self.s0, _NEAR)
        frame = self.part(cls, t.p["rgb"], zd, "metal")
        tyre = self.part(cls, (25, 25, 27), zd, "flat")
        ops: list = []
        r = 0.34 if not motor else 0.32
        wa = 0.52 if not motor else 0.7
        for a in (-wa, wa):
            q = self.disc(t, heading, a, r, r, 0.03 if not motor else 0.07)
            if q is not None:
                ops.append((tyre, [q]))
                if not motor:
                    hub = self.disc(t, heading, a, r, r * 0.82, 0.02)
                    if hub is not None:
                        ops.append((self.part(cls, (95, 95, 100), zd, "metal"), [hub]))
        if motor:
            tubes = [((-0.55, 0, 0.5), (0.5, 0, 0.85), 0.12, 0.2), ((0.5, 0, 0.85), (0.7, 0, 0.32), 0.05, 0.06),
                     ((0.55, -0.35, 1.0), (0.55, 0.35, 1.0), 0.03, 0.03), ((-0.55, 0, 0.5), (-0.7, 0, 0.32), 0.04, 0.05)]
        else:
            bb, seat, head = (0.0, 0, 0.3), (-0.12, 0, 0.88), (0.42, 0, 0.9)
            tubes = [((-wa, 0, r), bb, 0.02, 0.02), (bb, seat, 0.025, 0.025), (seat, head, 0.025, 0.025),
                     (bb, head, 0.03, 0.03), (head, (wa, 0, r), 0.02, 0.02), (seat, (-wa, 0, r), 0.02, 0.02),
                     ((0.42, -0.25, 1.0), (0.42, 0.25, 1.0), 0.02, 0.02), ((-0.22, 0, 0.92), (-0.04, 0, 0.92), 0.03, 0.06)]
        polys = [self.limb(t, heading, a, b, ta, tp) for a, b, ta, tp in tubes]
        ops.append((frame, [q for q in polys if q is not None]))
        return ops

    def _thing_bicycle(self, t: Thing, z: float) -> None:
        if z < 1.2:
            return
        self.begin_object("bicycle", z)
        ops = self._bike(t, t.p["heading"], BICYCLE, False)
        self.end_object()
        self.add(self.dist(t.s, t.u), ops)

    def _thing_cyclist(self, t: Thing, z: float, motor: bool = False) -> None:
        if z < 1.5:
            return
        self.begin_object("motorcycle" if motor else "bicycle", z)
        ops = self._bike(t, t.p["heading"], MOTORCYCLE if motor else BICYCLE, motor)
        self.end_object()
        self.begin_object("rider", z)
        ops += self._figure(t, RIDER, t.p["heading"], riding=True)
        self.end_object()
        self._shadow(t.s - 0.5, t.s + 0.5, t.u - 0.3, t.u + 0.3, 1.6)
        self.add(self.dist(t.s, t.u), ops)

    def _thing_motorbike(self, t: Thing, z: float) -> None:
        self._thing_cyclist(t, z, motor=True)

    def _thing_pole(self, t: Thing, z: float) -> None:
        if z < 1.0:
            return
        P = t.p
        H, w, side = P["height"], P["width"], P["side"]
        self.begin_object("pole", z)
        pole = self.part(POLE, P["rgb"], z, "metal")
        ops: list = []
        q = self.limb(t, 0.0, (0, 0, 0), (0, 0, H), w / 2, w / 2)
        if q is not None:
            ops.append((pole, [q]))
        reach = -side * (P["height"] * 0.55 if P["overhead"] else 1.4)
        if P["lamp"] or P["overhead"]:
            arm = self.limb(t, 0.0, (0, 0, H - 0.1), (0, reach, H - 0.1), 0.05, 0.05)
            if arm is not None:
                ops.append((pole, [arm]))
        if P["lamp"]:
            head = self.limb(t, 0.0, (0, reach * 0.85, H - 0.2), (0, reach, H - 0.2), 0.15, 0.1)
            if head is not None:
                ops.append((self.part(POLE, (245, 230, 180) if self.look.lights_on else _scale(P["rgb"], 0.8), z,
                                      "flat", emissive=self.look.lights_on), [head]))
        self.end_object()
        if P["sign"]:
            self.begin_object("traffic_sign", z)
            ops += self._sign(t, z, w, side)
            self.end_object()
        if P["light"]:
            self.begin_object("traffic_light", z)
            if P["overhead"]:
                ops += self._traffic_light(t, z, reach * 0.9, H - 1.15)
            else:
                ops += self._traffic_light(t, z, 0.0, P["light_h"])
            self.end_object()
        self._shadow(t.s - 0.1, t.s + 0.1, t.u - 0.1, t.u + 0.1, H)
        self.add(self.dist(t.s, t.u), ops)

    def _sign(self, t: Thing, z: float, w: float, side: int) -> list:
        P = t.p
        r, y, shape, style = P["sign_size"] / 2, P["sign_h"] + P["sign_size"] / 2, P["sign_shape"], P["sign_style"]
        sa = t.s - w / 2 - 0.03
        n = {"circle": 16, "triangle": 3, "square": 4, "rect": 4, "octagon": 8, "diamond": 4}[shape]
        ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
        if shape == "triangle":
            ang = ang + np.pi / 2
        elif shape in ("square", "rect"):
            ang = ang + np.pi / 4
        elif shape == "octagon":
            ang = ang + np.pi / 8
        pu, py = np.cos(ang) * r, np.sin(ang) * r
        if shape == "rect":
            pu = pu * 1.6
        off = -side * 0.0

        def poly(k: float):
            return self.project(np.full(n, sa), t.u + off + pu * k, y + py * k)

        outer_rgb, inner_rgb = {0: ((200, 30, 30), (240, 240, 240)), 1: ((30, 80, 180), (30, 80, 180)),
                                2: ((235, 200, 40), (235, 200, 40)), 3: ((240, 240, 240), (25, 25, 25))}[style]
        if shape == "triangle":
            outer_rgb, inner_rgb = (200, 30, 30), (240, 240, 240)
        if shape == "octagon":
            outer_rgb, inner_rgb = (200, 30, 30), (200, 30, 30)
        ops: list = []
        o = poly(1.0)
        if o is None:
            return ops
        ops.append((self.part(SIGN, outer_rgb, z, "flat"), [o]))
        if inner_rgb != outer_rgb:
            ops.append((self.part(SIGN, inner_rgb, z, "flat"), [poly(0.75)]))
        sym = self.project(np.full(4, sa), t.u + np.array([-0.3, 0.3, 0.3, -0.3]) * r,
                           y + np.array([-0.12, -0.12, 0.12, 0.12]) * r)
        sym_rgb = (240, 240, 240) if style in (1, 2) or shape == "octagon" else (30, 30, 30)
        ops.append((self.part(SIGN, sym_rgb, z, "flat"), [sym]))
        return ops

    def _traffic_light(self, t: Thing, z: float, p_off: float, y0: float) -> list:
        P = t.p
        housing = (200, 165, 35) if P["light_yellow"] else (35, 35, 38)
        box = self.limb(t, 0.0, (-0.05, p_off, y0), (-0.05, p_off, y0 + 0.95), 0.14, 0.17)
        if box is None:
            return []
        ops = [(self.part(LIGHT, housing, z, "metal"), [box])]
        lamps_on = ((230, 40, 30), (245, 170, 20), (40, 225, 120))
        for i in range(3):
            on = i == P["light_state"]
            rgb = lamps_on[i] if on else _scale(lamps_on[i], 0.25)
            c = self.ball(t.s - 0.2, t.u + p_off, y0 + 0.8 - 0.3 * i, 0.1)
            if c is not None:
                ops.append((self.part(LIGHT, rgb, z, "flat", emissive=on), [c]))
        return ops

    def _thing_tree(self, t: Thing, z: float) -> None:
        if z < 1.5:
            return
        P = t.p
        ops: list = []
        trunk = self.limb(t, 0.0, (0, 0, 0), (0, 0, P["trunk_h"] + P["crown"] * 0.5), P["trunk_w"] / 2,
                          P["trunk_w"] / 2)
        if trunk is not None:
            ops.append((self.part(VEG, P["trunk_rgb"], z, "wood"), [trunk]))
        cy, cr = P["trunk_h"] + P["crown"], P["crown"]
        for ds, du, dy, r, k in P["blobs"]:
            b = self.ball(t.s + ds * cr, t.u + du * cr, cy + dy * cr, cr * r)
            ops.append((self.part(VEG, _scale(P["rgb"], k), z, "leaves"), [b]))
        self._shadow(t.s - P["crown"] * 0.6, t.s + P["crown"] * 0.6, t.u - P["crown"] * 0.6,
                     t.u + P["crown"] * 0.6, 1.0)
        self.add(self.dist(t.s, t.u), ops)

    # ------------------------------------------------------------------ ground
    def draw_ground(self) -> None:
        """Terrain, sidewalks, curbs, road and its markings as polygons bounded by lines of constant u."""
        H, W, road = self.H, self.W, self.road
        yc = np.arange(H) + 0.5
        dy = yc - self.yh
        r0 = int(np.searchsorted(dy, 0.25, side="right"))  # first ground row
        self.zrow = np.full(H, _SKY_DEPTH, np.float64)
        if r0 >= H:
            return
        z = np.minimum(self.f * self.hc / dy[r0:], 5.0e3)
        self.zrow[r0:] = z
        off = road.lateral(self.s0 + z) - self.c0 - self.k0 * z - self.u_ego if road.wiggle else \
            -self.c0 - self.k0 * z - self.u_ego
        ys = np.concatenate([[r0], yc[r0:], [H + 2.0]])
        le, re = road.left_edge, road.right_edge
        cl = road.curb_w if road.sidewalk_l > 0 else 0.0
        cr = road.curb_w if road.sidewalk_r > 0 else 0.0
        ter = self.part(TERRAIN, road.terrain, -1, "grass")
        swp = self.part(SIDEWALK, road.sidewalk, -1, "paving")
        curb = self.part(CURB_LABEL, road.curb, -1, "concrete")
        rd = self.part(ROAD, road.asphalt, -1, "asphalt")
        ops = [(ter, [np.array([[-10.0, r0], [W + 10.0, r0], [W + 10.0, H + 2.0], [-10.0, H + 2.0]])])]
        for b, prt in ((le - road.sidewalk_l, swp), (le - cl, curb), (le, rd), (re, curb), (re + cr, swp),
                       (re + road.sidewalk_r, ter)):
            x = np.clip(self.cx + self.f * (b + off) / z, -1.0e5, 1.0e5)
            xs = np.concatenate([[x[0]], x, [x[-1]]])
            ops.append((prt, [np.concatenate([np.stack([xs, ys], 1), [[W + 10.0, H + 2.0], [W + 10.0, r0]]])]))
        self.add(1.0e12, ops)
        # markings (road class): dashes anchored to the road so they scroll when driving
        z_min = max(_NEAR, float(z[-1]) * 0.8)
        z_max = min(150.0, self.far * 1.25)
        white = self.part(ROAD, road.marking, -1, "paving")
        yellow = self.part(ROAD, (225, 185, 50), -1, "paving") if road.centre_yellow else white
        lines = []
        if road.lanes_left:
            cs = road.centre_style
            if cs == "double":
                lines += [(-0.12, 0.06, False, yellow), (0.12, 0.06, False, yellow)]
            elif cs in ("dashed", "solid"):
                lines.append((0.0, 0.07, cs == "dashed", yellow))
        lines += [(k * road.lane_w, 0.07, True, white) for k in range(1, road.lanes_right)]
        lines += [(-k * road.lane_w, 0.07, True, white) for k in range(1, road.lanes_left)]
        if road.edge_lines:
            lines += [(le + 0.3, 0.08, False, white), (re - 0.3, 0.08, False, white)]
        sa, sb = self.s0 + z_min, self.s0 + z_max
        d0 = math.floor(sa / 9.0) * 9.0
        dashes = np.arange(d0, sb, 9.0)
        solid_s = self.s0 + np.geomspace(z_min, z_max, 24)
        mops = []
        for uc, hw, dashed, prt in lines:
            if dashed:
                a = np.maximum(dashes, sa)
                b = np.minimum(dashes + 3.0, sb)
                keep = b > a
                polys = [self.project(np.array([p, q, q, p]), np.array([uc - hw, uc - hw, uc + hw, uc + hw]),
                                      np.zeros(4)) for p, q in zip(a[keep], b[keep])]
            else:
                ss = np.concatenate([solid_s, solid_s[::-1]])
                uu = np.concatenate([np.full(24, uc - hw), np.full(24, uc + hw)])
                polys = [self.project(ss, uu, np.zeros(48))]
            mops.append((prt, polys))
        self.add(1.0e12 - 1, mops)
        # paving joints on the sidewalks, near rows only
        if road.sidewalk_l > 0 or road.sidewalk_r > 0:
            near = min(18.0, z_max)
            js = np.arange(math.ceil((self.s0 + z_min) / 0.6) * 0.6, self.s0 + near, 0.6)
            joint = self.part(SIDEWALK, _scale(road.sidewalk, 0.75), -1, "paving")
            polys = []
            for lo, hi in ((le - road.sidewalk_l, le - cl), (re + cr, re + road.sidewalk_r)):
                if hi - lo < 0.3:
                    continue
                polys += [self.project(np.array([j, j, j + 0.04, j + 0.04]), np.array([lo, hi, hi, lo]), np.zeros(4))
                          for j in js]
                for uj in np.arange(math.ceil(lo / 0.6) * 0.6, hi, 0.6):
                    polys.append(self.project(np.array([sa, sa + near, sa + near, sa]),
                                              np.array([uj, uj, uj + 0.04, uj + 0.04]), np.zeros(4)))
            self.add(1.0e12 - 2, [(joint, polys)])

    # ------------------------------------------------------------------ rasterisation
    def rasterise(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ground pass then all items far to near. Returns (part map, ground depth per row, shadow mask)."""
        H, W, lk = self.H, self.W, self.look
        self.resolve()
        pm = np.zeros((H, W), np.uint16)
        zrow = self.zrow
        # objects, far to near
        for _, _, ops in sorted(self.items, key=lambda it: (-it[0], it[1])):
            for op in ops:
                prt = op[0]
                polys = [p.poly if isinstance(p, _Pending) else p for p in op[1]]
                polys = [p for p in polys if p is not None]
                if not polys:
                    continue
                pts = [np.rint(p * 16.0 - 8.0).astype(np.int32) for p in polys]  # centres at .5 -> OpenCV
                if len(op) > 2:
                    thick = 1
                    cv2.polylines(pm, pts, False, int(prt), thick, cv2.LINE_8, 4)
                else:
                    cv2.fillPoly(pm, pts, int(prt), cv2.LINE_8, 4)
                inst = self.inst[prt]
                if inst >= 0:
                    allp = np.concatenate(polys)
                    bb = (float(allp[:, 0].min()), float(allp[:, 1].min()), float(allp[:, 0].max()),
                          float(allp[:, 1].max()))
                    key = ("_bb", self.cls[prt])
                    o = self.objects[inst]
                    if key in o:
                        a = o[key]
                        o[key] = (min(a[0], bb[0]), min(a[1], bb[1]), max(a[2], bb[2]), max(a[3], bb[3]))
                    else:
                        o[key] = bb
        shadow = None
        if self.shadows and lk.shadows > 0:
            shadow = np.zeros((H, W), np.uint8)
            pts = [np.rint(p.poly * 16.0 - 8.0).astype(np.int32) for p in self.shadows if p.poly is not None]
            cv2.fillPoly(shadow, pts, 1, cv2.LINE_8, 4)
        return pm, zrow, shadow

    def object_meta(self, pm: np.ndarray) -> list[dict]:
        """Per object and class: amodal bbox [x0, y0, x1, y1] (pixels, clipped) and visible pixel count."""
        counts = np.bincount(pm.ravel(), minlength=len(self.cls))
        per = {}
        inst = np.asarray(self.inst)
        cls = np.asarray(self.cls)
        sel = inst >= 0
        for i, c, n in zip(inst[sel], cls[sel], counts[: len(self.cls)][sel]):
            per[(int(i), int(c))] = per.get((int(i), int(c)), 0) + int(n)
        out = []
        for i, o in enumerate(self.objects):
            for key, bb in o.items():
                if not (isinstance(key, tuple) and key[0] == "_bb"):
                    continue
                c = key[1]
                x0, y0 = max(0, int(math.floor(bb[0]))), max(0, int(math.floor(bb[1])))
                x1, y1 = min(self.W - 1, int(math.ceil(bb[2]))), min(self.H - 1, int(math.ceil(bb[3])))
                if x1 < x0 or y1 < y0:
                    continue
                out.append({"class": CITYSCAPES_CLASSES[c], "train_id": int(c), "instance": i,
                            "bbox": [x0, y0, x1, y1], "depth_m": round(o["depth"], 3),
                            "pixels": per.get((i, c), 0)})
        return out

    # ------------------------------------------------------------------ appearance
    def shade(self, pm: np.ndarray, zrow: np.ndarray, shadow, fields: dict, rng: np.random.Generator) -> np.ndarray:
        """The BGR uint8 image of a part map (lighting, textures, sky, shadows, fog, rain, noise)."""
        lk, H, W = self.look, self.H, self.W
        P = len(self.cls)
        pi = pm.astype(np.intp)
        rgb = np.asarray(self.rgb, np.float32).reshape(P, 3)
        emis = np.asarray(self.emis, bool)
        lit = rgb * np.float32(lk.gain) * np.asarray(lk.tint, np.float32)
        grey = lit.mean(1, keepdims=True)
        lit = grey + np.float32(lk.saturation) * (lit - grey)
        lit[emis] = rgb[emis]
        tex = np.asarray(self.tex)
        nz = float(self.world.config.noise)
        amp_b = np.asarray([TEX[_TEX_NAMES[k]][0] for k in range(len(TEX))], np.float32)[tex] * nz
        amp_f = np.asarray([TEX[_TEX_NAMES[k]][1] for k in range(len(TEX))], np.float32)[tex] * nz
        t = 1.0 + np.take(amp_b, pi) * fields["blotch"] + np.take(amp_f, pi) * fields["grain"]
        depth = np.take(np.asarray(self.depth, np.float32), pi)
        depth = np.where(depth < 0, zrow.astype(np.float32)[:, None], depth)
        fog = None
        if lk.fog_m > 0:
            fog = 1.0 - cv2.exp(-depth / np.float32(lk.fog_m))
            if lk.weather != "fog":
                fog *= np.float32(0.85)
        factor = t
        if shadow is not None:
            ground = np.zeros(P, np.float32)
            ground[np.isin(np.asarray(self.cls), _GROUND)] = np.float32(lk.shadows)
            factor = factor * (1.0 - np.take(ground, pi) * shadow)
        if lk.vignette > 0:
            factor = factor * (1.0 - np.float32(lk.vignette) * _radius2(H, W))
        rs = int(np.searchsorted(np.arange(H) + 0.5 - self.yh, 0.25, side="right"))
        sky_m = pm[:rs] == 0
        ty = np.clip((np.arange(rs) + 0.5) / max(self.yh, 1.0), 0, 1) ** 0.8
        cloud = None
        if lk.clouds > 0 and rs > 0:
            cloud = np.maximum(fields["blotch"][:rs], 0) * np.float32(lk.clouds)
        planes = []
        fogc = np.asarray(lk.fog_colour, np.float32)
        for ch in (2, 1, 0):  # BGR
            p = np.take(lit[:, ch], pi) * factor
            if rs > 0:
                grad = (lk.sky_top[ch] + (lk.sky_horizon[ch] - lk.sky_top[ch]) * ty).astype(np.float32)[:, None]
                skyv = grad + (cloud if cloud is not None else 0.0)
                p[:rs] = np.where(sky_m, skyv, p[:rs])
            if fog is not None:
                p += fog * (fogc[ch] - p)
            planes.append(p)
        noise = fields["sensor"] * np.float32(lk.noise_sigma)
        if lk.rain > 0:
            streak = _rain(rng, H, W, lk.rain)
            noise = noise + streak
        out = [cv2.convertScaleAbs(cv2.threshold(p + noise, 0, 0, cv2.THRESH_TOZERO)[1]) for p in planes]
        img = cv2.merge(out)
        if lk.gamma != 1.0 or lk.contrast != 1.0:
            x = np.arange(256, dtype=np.float32) / 255.0
            y = np.clip(0.5 + (x ** (1.0 / lk.gamma) - 0.5) * lk.contrast, 0, 1)
            img = cv2.LUT(img, (y * 255 + 0.5).astype(np.uint8))
        if lk.blur > 0.3 * (min(H, W) / 360.0) and min(H, W) >= 48:
            img = cv2.GaussianBlur(img, (0, 0), lk.blur * min(H, W) / 360.0)
        return img


def _rain(rng: np.random.Generator, H: int, W: int, density: float) -> np.ndarray:
    """Bright slanted streaks (float32, added to all channels)."""
    m = np.zeros((H, W), np.uint8)
    n = int(density * H * W / 900)
    if n == 0:
        return np.zeros((H, W), np.float32)
    x = rng.uniform(0, W, n)
    y = rng.uniform(0, H, n)
    ln = rng.uniform(0.03, 0.08, n) * H
    slant = rng.uniform(0.1, 0.25)
    pts = np.stack([np.stack([x, y], 1), np.stack([x + ln * slant, y + ln], 1)], 1)
    cv2.polylines(m, list(np.round(pts).astype(np.int32)), False, 1, 1, cv2.LINE_8)
    return m.astype(np.float32) * np.float32(45.0)


@lru_cache(maxsize=8)
def _radius2(H: int, W: int) -> np.ndarray:
    """Squared distance from the image centre, 1 at the corners (for vignetting); read-only."""
    y = (np.arange(H, dtype=np.float32) + 0.5) / H - 0.5
    x = (np.arange(W, dtype=np.float32) + 0.5) / W - 0.5
    r2 = ((y[:, None] ** 2 + x[None, :] ** 2) * 2.0).astype(np.float32)
    r2.setflags(write=False)
    return r2


def noise_fields(rng: np.random.Generator, H: int, W: int) -> dict:
    """Zero-mean texture fields for one camera: ``blotch`` (smooth, two octaves) and ``grain`` (per pixel)."""
    def smooth(cells_h: int) -> np.ndarray:
        ch = max(2, cells_h)
        cw = max(2, int(round(ch * W / H)))
        small = rng.standard_normal((ch, cw), dtype=np.float32)
        return cv2.resize(small, (W, H), interpolation=cv2.INTER_LINEAR)

    blotch = 0.6 * smooth(max(2, H // 40)) + 0.8 * smooth(max(2, H // 5))
    grain = (np.frombuffer(rng.bytes(H * W), np.uint8).reshape(H, W).astype(np.float32) - 127.5) / 73.6
    return {"blotch": blotch.astype(np.float32), "grain": grain}


def sensor_field(rng: np.random.Generator, H: int, W: int) -> np.ndarray:
    return (np.frombuffer(rng.bytes(H * W), np.uint8).reshape(H, W).astype(np.float32) - 127.5) / 73.6


def render_frame(world: World, s0: float, t: float, statics, movers, fields: dict,
                 rng: np.random.Generator, sway: float = 0.0, bob: float = 0.0) -> tuple[np.ndarray, np.ndarray, dict]:
    """Render one frame; ``statics`` is a list of (segments, things), ``movers`` a list of Things at frame 0."""
    cfg = world.config
    fr = Frame(world, s0, t, cfg.height, cfg.width, sway=sway, bob=bob)
    fr.draw_ground()
    fr.draw_skyline()
    for segs, things in statics:
        for g in segs:
            fr.draw_segment(g)
        for th in things:
            fr.draw_thing(_moved(th, t) if th.v else th)
    for th in movers:
        fr.draw_thing(_moved(th, t))
    pm, zrow, shadow = fr.rasterise()
    label = np.asarray(fr.cls, np.uint8)[pm.astype(np.intp)]
    fields = dict(fields, sensor=sensor_field(rng, cfg.height, cfg.width))
    image = fr.shade(pm, zrow, shadow, fields, rng)
    meta = {
        "objects": fr.object_meta(pm),
        "camera": {"f_px": fr.f, "cx": fr.cx, "horizon_y": fr.yh, "height_m": fr.hc},
        "s_m": fr.s0,
    }
    return image, label, meta


def _moved(th: Thing, t: float) -> Thing:
    if not th.v and not th.p.get("moving_lat"):
        return th
    return Thing(th.kind, th.s + th.v * t, th.u + th.p.get("moving_lat", 0.0) * t, th.v, th.p)


