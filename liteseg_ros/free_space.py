"""Free space on the ground: a drivable mask seen by a pinhole camera -> a laser scan and an occupancy grid.

Ring 2 (numpy and OpenCV only; never rclpy or message packages), so the geometry is unit-tested
without DDS and any tool can use it. ``liteseg_ros.free_space_node`` feeds it camera_info, TF and
masks and publishes what it returns.

The model: the ground is the z = 0 plane of the base frame (``base_footprint``), the camera is a
pinhole (camera_info's K, with the ``plumb_bob`` / ``rational_polynomial`` distortion undone), and a
pixel that the mask calls drivable is ground that can be driven on. A pixel ray meets the ground
only if it points below the horizon; rays at or above it never project.

* Scan: per image column, the edge of the drivable region connected to the image bottom (the same
  boundary rule as ``~/drivable_boundary``: :func:`liteseg_ros.segmentation.free_space_boundary`) is
  a ground point; its range from the base frame's origin, per bearing bin, is the nearest such point
  (the min, as pointcloud_to_laserscan bins). REP-117: ``+inf`` where the drivable region reaches
  ``range_max`` or the horizon (nothing within range: a costmap clears the whole ray), ``-inf``
  where the edge is nearer than ``range_min``, NaN where the camera does not look (outside its
  field of view) or cannot tell (the drivable region leaves the top of the image below the horizon).
* Grid: every cell centre within ``range_max`` is projected into the image; inside it, the cell is
  0 where the pixel is drivable and 100 where it is not; cells the camera does not see stay -1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from liteseg_ros.segmentation import free_space_boundary

#: Distortion models whose coefficients OpenCV's pinhole functions take as they are.
PINHOLE_MODELS = ("plumb_bob", "rational_polynomial")
#: OccupancyGrid cell values (nav_msgs): free, occupied, unknown.
FREE, OCCUPIED, UNKNOWN = 0, 100, -1
#: A ray whose downward component (base z, per metre along the ray) is smaller than this is treated
#: as level with the horizon: it would meet the ground further away than any range we report.
_LEVEL = 1e-9


class CameraModelError(ValueError):
    """camera_info or the camera pose cannot give ground geometry; the message says what to fix."""


@dataclass(frozen=True)
class Intrinsics:
    """A pinhole camera at one resolution: K (3x3), distortion coefficients (may be empty) and size."""

    k: tuple[float, ...]  # 9 values, row-major
    d: tuple[float, ...]
    width: int
    height: int

    @classmethod
    def from_camera_info(cls, k, d, distortion_model: str, width: int, height: int) -> Intrinsics:
        """Check a camera_info's K, D and size; raises CameraModelError naming what is wrong."""
        kk = tuple(float(v) for v in k)
        dd = tuple(float(v) for v in d)
        if len(kk) != 9 or not all(math.isfinite(v) for v in kk):
            raise CameraModelError(f"camera_info K must be 9 finite numbers, got {list(kk)}")
        fx, fy = kk[0], kk[4]
        if fx <= 0 or fy <= 0:
            raise CameraModelError(f"camera_info K has focal lengths fx={fx:g}, fy={fy:g}: both must be > 0 "
                                   "(an uncalibrated camera publishes K all zero: calibrate it)")
        if not all(math.isfinite(v) for v in dd):
            raise CameraModelError(f"camera_info D must be finite numbers, got {list(dd)}")
        if any(dd) and distortion_model not in PINHOLE_MODELS:
            raise CameraModelError(f"camera_info distortion model {distortion_model!r} is not supported (use "
                                   f"{' or '.join(PINHOLE_MODELS)}, or rectify the image first)")
        if any(dd) and len(dd) not in (4, 5, 8, 12, 14):
            raise CameraModelError(f"camera_info D has {len(dd)} coefficients; {distortion_model} takes 5 (or 8)")
        if int(width) <= 0 or int(height) <= 0:
            raise CameraModelError(f"camera_info size {width}x{height} is empty")
        return cls(k=kk, d=dd if any(dd) else (), width=int(width), height=int(height))

    @property
    def matrix(self) -> np.ndarray:
        return np.asarray(self.k, np.float64).reshape(3, 3)

    def normalized(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates (OpenCV: pixel centres at integers) -> undistorted normalised (x/z, y/z)."""
        if not self.d:
            k = self.k
            # K may have a skew term k[1]: x = (u - cx - s*y) / fx
            y = (v - k[5]) / k[4]
            return (u - k[2] - k[1] * y) / k[0], y
        pts = np.stack([u, v], -1).reshape(-1, 1, 2).astype(np.float64)
        out = cv2.undistortPoints(pts, self.matrix, np.asarray(self.d, np.float64)).reshape(-1, 2)
        return out[:, 0], out[:, 1]

    def project(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised (x/z, y/z) -> pixel coordinates, with the distortion applied."""
        k = self.k
        if self.d:
            pts = np.stack([x, y, np.ones_like(x)], -1).reshape(-1, 1, 3).astype(np.float64)
            px, _ = cv2.projectPoints(pts, np.zeros(3), np.zeros(3), self.matrix, np.asarray(self.d, np.float64))
            px = px.reshape(-1, 2)
            return px[:, 0], px[:, 1]
        return k[0] * x + k[1] * y + k[2], k[4] * y + k[5]


@dataclass(frozen=True)
class Pose:
    """Where the camera's optical frame is in the base frame: x_base = R @ x_optical + t."""

    rotation: tuple[float, ...]  # 9 values, row-major
    translation: tuple[float, float, float]

    @classmethod
    def from_quaternion(cls, translation, quaternion_xyzw) -> Pose:
        """A TF transform (base <- optical): translation and unit quaternion (x, y, z, w)."""
        x, y, z, w = (float(v) for v in quaternion_xyzw)
        n = math.sqrt(x * x + y * y + z * z + w * w)
        if not math.isfinite(n) or n < 1e-9:
            raise CameraModelError(f"the camera transform's rotation quaternion {quaternion_xyzw} is not a rotation")
        x, y, z, w = x / n, y / n, z / n, w / n
        r = (1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
             2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
             2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y))
        t = tuple(float(v) for v in translation)
        return cls(rotation=r, translation=(t[0], t[1], t[2]))

    @property
    def matrix(self) -> np.ndarray:
        return np.asarray(self.rotation, np.float64).reshape(3, 3)


@dataclass(frozen=True)
class ScanSpec:
    """The scan's bins: all bearings round the base frame's origin, ``angle_increment`` apart."""

    angle_increment: float
    range_min: float
    range_max: float

    @property
    def count(self) -> int:
        return max(1, int(math.ceil(2.0 * math.pi / self.angle_increment - 1e-9)))

    @property
    def angle_min(self) -> float:
        return -math.pi

    @property
    def angle_max(self) -> float:
        """The last bin's start (LaserScan: angle_min + (n - 1) * angle_increment)."""
        return -math.pi + (self.count - 1) * self.angle_increment


@dataclass(frozen=True)
class GridSpec:
    """A grid in the base frame: ``resolution`` m cells, lower-left corner at (origin_x, origin_y)."""

    resolution: float
    origin_x: float
    origin_y: float
    size_x: float  # metres along base x
    size_y: float

    @property
    def shape(self) -> tuple[int, int]:
        """(rows along y, columns along x), as nav_msgs/OccupancyGrid stores them."""
        return (max(1, int(round(self.size_y / self.resolution))), max(1, int(round(self.size_x / self.resolution))))


class FreeSpace:
    """The projection for one camera model, pose and output specs; ``scan``/``grid`` per mask.

    Built once per change of camera_info, TF or parameters (cheap: a few ms); what depends only on
    those (the grid's pixel of every cell) is computed here, the rest per mask, vectorised over the
    image columns.
    """

    def __init__(self, intr: Intrinsics, pose: Pose, scan: ScanSpec, grid: GridSpec) -> None:
        self.intr, self.pose, self.scan_spec, self.grid_spec = intr, pose, scan, grid
        if not pose.translation[2] > 0:
            raise CameraModelError(f"the camera is at z = {pose.translation[2]:g} m in the base frame: it must be "
                                   "above the ground plane (z = 0); check the camera's TF")
        self._r = pose.matrix
        self._t = np.asarray(pose.translation, np.float64)
        w = intr.width
        self._cols = np.arange(w, dtype=np.float64)
        self._grid_cells, self._grid_pixels = self._grid_lookup()

    # ----------------------------------------------------------------------------- rays
    def ground(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pixels -> (x, y, s) on the ground in the base frame; s <= 0 (x, y = direction) above the horizon.

        ``s`` is the ray length to the ground (metres per unit optical z); where the ray does not go
        down (at or above the horizon) s is 0 and (x, y) is the ray's horizontal direction instead.
        """
        xn, yn = self.intr.normalized(u, v)
        r = self._r
        dx = r[0, 0] * xn + r[0, 1] * yn + r[0, 2]
        dy = r[1, 0] * xn + r[1, 1] * yn + r[1, 2]
        dz = r[2, 0] * xn + r[2, 1] * yn + r[2, 2]
        down = dz < -_LEVEL
        s = np.where(down, -self._t[2] / np.where(down, dz, -1.0), 0.0)
        x = np.where(down, self._t[0] + s * dx, dx)
        y = np.where(down, self._t[1] + s * dy, dy)
        return x, y, s

    # ----------------------------------------------------------------------------- scan
    def scan_from_boundary(self, row: np.ndarray) -> np.ndarray:
        """Per-bin ranges (float32, ``ScanSpec.count``) from the per-column boundary rows (-1 = none)."""
        spec, h = self.scan_spec, self.intr.height
        row = np.asarray(row)
        # the edge between the last drivable pixel (row b) and the one above it is at b - 0.5; a column
        # whose bottom pixel is not drivable has its nearest non-drivable ground at the image's bottom edge
        v = np.where(row >= 0, row - 0.5, h - 0.5).astype(np.float64)
        c = self._cols
        n = c.size
        x, y, s = self.ground(np.concatenate([c, c - 0.5, c + 0.5]), np.concatenate([v, v, v]))
        rng = np.hypot(x[:n], y[:n])
        bearing = np.arctan2(y, x)
        seen = s[:n] > 0
        drivable = row >= 0
        ranges = np.where(seen, rng, np.where(drivable, np.inf, np.nan))
        # drivable up to the image's top edge while that edge still looks at the ground: the free
        # space goes on out of view, so this column says nothing (unless it is past range_max anyway)
        ranges = np.where(seen & (row == 0) & (rng < spec.range_max), np.nan, ranges)
        ranges = np.where(ranges > spec.range_max, np.inf, ranges)
        ranges = np.where(ranges < spec.range_min, -np.inf, ranges)
        # a column's range belongs to the bin of its centre's bearing; bins finer than the columns that
        # no centre falls in take the nearest range of the columns whose pixels span them (edge to edge)
        inc, count, keep = spec.angle_increment, spec.count, ~np.isnan(ranges)
        out = np.full(count, np.nan, np.float64)
        centre = np.floor((bearing[:n] - spec.angle_min) / inc).astype(np.int64) % count
        np.fmin.at(out, centre[keep], ranges[keep])
        a0, a1 = bearing[n:2 * n][keep], bearing[2 * n:][keep]
        lo, hi = np.minimum(a0, a1), np.maximum(a0, a1)
        wrap = hi - lo > math.pi  # a column straddling the bearing +-pi (a camera looking backwards)
        lo, hi = np.where(wrap, hi, lo), np.where(wrap, lo + 2 * math.pi, hi)
        i0 = np.floor((lo - spec.angle_min) / inc).astype(np.int64)
        span = np.floor((hi - spec.angle_min) / inc).astype(np.int64) - i0 + 1
        if span.max(initial=1) > 1:
            first = np.repeat(np.cumsum(span) - span, span)
            idx = (np.repeat(i0, span) + np.arange(int(span.sum())) - first) % count
            filled = np.full(count, np.nan, np.float64)
            np.fmin.at(filled, idx, np.repeat(ranges[keep], span))
            out = np.where(np.isnan(out), filled, out)
        return out.astype(np.float32)

    def scan(self, mask: np.ndarray) -> np.ndarray:
        """Per-bin ranges of a drivable mask (nonzero = drivable) at this camera's resolution."""
        return self.scan_from_boundary(free_space_boundary(self._checked(mask)).row)

    # ----------------------------------------------------------------------------- grid
    def _grid_lookup(self) -> tuple[np.ndarray, np.ndarray]:
        """(flat cell indices, flat pixel indices) of the cells the camera sees within range_max."""
        g, intr = self.grid_spec, self.intr
        rows, cols = g.shape
        gx = g.origin_x + (np.arange(cols) + 0.5) * g.resolution
        gy = g.origin_y + (np.arange(rows) + 0.5) * g.resolution
        px, py = np.meshgrid(gx, gy)  # (rows, cols): row-major, x fastest, as OccupancyGrid.data
        px, py = px.ravel(), py.ravel()
        cells = np.flatnonzero(np.hypot(px, py) <= self.scan_spec.range_max)
        p = np.stack([px[cells], py[cells], np.zeros(cells.size)]) - self._t[:, None]
        cam = self._r.T @ p  # base -> optical
        front = cam[2] > 1e-6
        cells, cam = cells[front], cam[:, front]
        xn, yn = cam[0] / cam[2], cam[1] / cam[2]
        if intr.d:
            # a distortion polynomial folds back far outside the calibrated field of view: keep only
            # directions no wider than the image's own border, undistorted
            bu = np.concatenate([np.arange(intr.width), np.arange(intr.width), np.zeros(intr.height),
                                 np.full(intr.height, intr.width - 1)]).astype(np.float64)
            bv = np.concatenate([np.zeros(intr.width), np.full(intr.width, intr.height - 1),
                                 np.arange(intr.height), np.arange(intr.height)]).astype(np.float64)
            bx, by = intr.normalized(bu, bv)
            inside = np.hypot(xn, yn) <= 1.02 * float(np.hypot(bx, by).max())
            cells, xn, yn = cells[inside], xn[inside], yn[inside]
        u, v = intr.project(xn, yn)
        ui, vi = np.rint(u), np.rint(v)
        ok = (ui >= 0) & (ui < intr.width) & (vi >= 0) & (vi < intr.height)
        pix = vi[ok].astype(np.int64) * intr.width + ui[ok].astype(np.int64)
        return cells[ok], pix

    def grid(self, mask: np.ndarray) -> np.ndarray:
        """(rows, cols) int8: 0 seen drivable, 100 seen not drivable, -1 unseen."""
        m = self._checked(mask).reshape(-1)
        out = np.full(self.grid_spec.shape[0] * self.grid_spec.shape[1], UNKNOWN, np.int8)
        out[self._grid_cells] = np.where(m[self._grid_pixels] != 0, FREE, OCCUPIED)
        return out.reshape(self.grid_spec.shape)

    def _checked(self, mask: np.ndarray) -> np.ndarray:
        if mask.shape[:2] != (self.intr.height, self.intr.width) or mask.ndim != 2:
            raise CameraModelError(f"the mask is {mask.shape[1] if mask.ndim > 1 else '?'}x{mask.shape[0]} but "
                                   f"camera_info is {self.intr.width}x{self.intr.height} (width x height): "
                                   "give the camera_info of the mask's resolution (e.g. ~/label/camera_info)")
        return mask
