"""Free-space geometry without DDS: analytic cases, and the synthetic world's own road layout as the truth.

The camera of every analytic case is built from its pitch, yaw and roll as a rotation of the optical
frame into the base frame (x forward, y left, z up); the masks are made by casting each pixel's
ray onto the ground here, independently of ``liteseg_ros.free_space``. The synthetic scenes are the
generator's, their truth the world's road cross-section (``Road.left_edge``/``right_edge`` and its
course), which the renderer itself draws from.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from liteseg_ros.classes import ClassTable
from liteseg_ros.free_space import (
    FREE,
    OCCUPIED,
    UNKNOWN,
    CameraModelError,
    FreeSpace,
    GridSpec,
    Intrinsics,
    Pose,
    ScanSpec,
)
from liteseg_ros.synthetic import SceneConfig, generate_scene
from liteseg_ros.synthetic.world import make_world

W, H = 640, 360
F, CX, CY = 500.0, 319.5, 179.5
SCAN = ScanSpec(math.radians(0.5), 0.1, 30.0)
GRID = GridSpec(0.1, 0.0, -10.0, 20.0, 20.0)


def optical_in_base(pitch: float = 0.0, yaw: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """R with x_base = R @ x_optical: a level forward camera, pitched down, yawed left, rolled about its axis."""
    level = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # columns: optical x, y, z in base
    cp, sp = math.cos(pitch), math.sin(pitch)
    pitch_down = np.array([[cp, 0.0, sp], [0.0, 1.0, 0.0], [-sp, 0.0, cp]])  # about base y: forward tips down
    cy_, sy_ = math.cos(yaw), math.sin(yaw)
    yaw_left = np.array([[cy_, -sy_, 0.0], [sy_, cy_, 0.0], [0.0, 0.0, 1.0]])
    cr, sr = math.cos(roll), math.sin(roll)
    roll_opt = np.array([[cr, -sr, 0.0], [sr, cr, 0.0], [0.0, 0.0, 1.0]])  # about the optical axis
    return yaw_left @ pitch_down @ level @ roll_opt


def pose(h: float, **angles: float) -> Pose:
    return Pose(tuple(optical_in_base(**angles).ravel()), (0.0, 0.0, h))


def intrinsics(d=(), w: int = W, h: int = H) -> Intrinsics:
    return Intrinsics.from_camera_info([F, 0, CX, 0, F, CY, 0, 0, 1], list(d), "plumb_bob", w, h)


def pixel_ground(intr: Intrinsics, p: Pose) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, on_ground) of every pixel centre, by undistorting it with OpenCV and casting its ray."""
    import cv2

    u, v = np.meshgrid(np.arange(intr.width, dtype=np.float64), np.arange(intr.height, dtype=np.float64))
    pts = np.stack([u, v], -1).reshape(-1, 1, 2)
    k = np.asarray(intr.k).reshape(3, 3)
    n = cv2.undistortPoints(pts, k, np.asarray(intr.d or [0.0] * 5)).reshape(-1, 2)
    rays = np.stack([n[:, 0], n[:, 1], np.ones(len(n))])
    d = np.asarray(p.rotation).reshape(3, 3) @ rays
    with np.errstate(divide="ignore", invalid="ignore"):
        s = -p.translation[2] / d[2]
    on = d[2] < 0
    x, y = p.translation[0] + s * d[0], p.translation[1] + s * d[1]
    return x.reshape(intr.height, -1), y.reshape(intr.height, -1), on.reshape(intr.height, -1)


def wall_mask(intr: Intrinsics, p: Pose, x_wall: float) -> np.ndarray:
    """Drivable ground up to the line x = x_wall across the robot's path; beyond it (and sky) not drivable."""
    x, _, on = pixel_ground(intr, p)
    return np.where(on & (x < x_wall), 255, 0).astype(np.uint8)


def bin_bearings(spec: ScanSpec) -> np.ndarray:
    return spec.angle_min + np.arange(spec.count) * spec.angle_increment


def bin_at(spec: ScanSpec, bearing: float) -> int:
    return int(math.floor((bearing - spec.angle_min) / spec.angle_increment))


# ------------------------------------------------------------------------------------------ analytic
@pytest.mark.parametrize("h,pitch,v", [(1.5, 0.1, 250), (1.2, 0.0, 300), (0.8, 0.3, 200), (2.0, 0.05, 195)])
def test_a_flat_edge_on_the_optical_axis_is_h_over_tan_pitch_plus_its_angle(h, pitch, v):
    """Drivable from row v down: the edge lies between rows v - 1 and v, at v - 0.5 (OpenCV pixel centres)."""
    fs = FreeSpace(intrinsics(), pose(h, pitch=pitch), SCAN, GRID)
    mask = np.zeros((H, W), np.uint8)
    mask[v:] = 255
    scan = fs.scan(mask)
    want = h / math.tan(pitch + math.atan((v - 0.5 - CY) / F))
    assert scan[bin_at(SCAN, 0.0)] == pytest.approx(want, rel=1e-4)
    # off the axis the same image row is the same line on the ground: range = distance / cos(bearing);
    # a bin holds the nearest of its columns, so it lies between its edges' values
    fov = np.isfinite(scan)
    a = bin_bearings(SCAN)[fov]
    near = np.where((a < 0) & (a + SCAN.angle_increment > 0), 0.0, np.minimum(np.abs(a), np.abs(a + SCAN.angle_increment)))
    far = np.maximum(np.abs(a), np.abs(a + SCAN.angle_increment))
    assert fov.sum() > 60
    assert np.all(scan[fov] >= want / np.cos(near) * (1 - 2e-3))
    assert np.all(scan[fov] <= want / np.cos(far) * (1 + 2e-3))


def test_a_level_camera_with_the_edge_above_the_principal_point_gives_inf():
    fs = FreeSpace(intrinsics(), pose(1.5, pitch=0.0), SCAN, GRID)
    mask = np.zeros((H, W), np.uint8)
    mask[150:] = 255  # above cy = 179.5: the drivable region reaches the horizon
    scan = fs.scan(mask)
    seen = ~np.isnan(scan)
    assert seen.sum() > 60
    assert np.all(np.isposinf(scan[seen]))
    mask[:] = 0
    mask[230:] = 255  # below it: a finite range
    assert np.all(np.isfinite(fs.scan(mask)[seen]))


def test_outside_the_field_of_view_is_nan_and_the_field_of_view_is_the_lens_s():
    fs = FreeSpace(intrinsics(), pose(1.5, pitch=0.1), SCAN, GRID)
    scan = fs.scan(np.full((H, W), 255, np.uint8))
    a = bin_bearings(SCAN)
    half = math.atan(CX / F)  # half the horizontal field of view (the image edge at pixel -0.5 / W - 0.5)
    inside = np.abs(a + SCAN.angle_increment / 2) < half - SCAN.angle_increment
    outside = np.abs(a + SCAN.angle_increment / 2) > half + SCAN.angle_increment
    assert np.all(~np.isnan(scan[inside])) and np.all(np.isnan(scan[outside]))
    # all drivable, the image top still below the horizon: the free space leaves the image, so no
    # column can say where it ends (NaN) unless the top edge is past range_max (+inf)
    short = FreeSpace(intrinsics(), pose(1.5, pitch=0.6), ScanSpec(SCAN.angle_increment, 0.1, 3.0), GRID)
    far = short.scan(np.full((H, W), 255, np.uint8))
    assert np.all(np.isposinf(far[~np.isnan(far)])) and (~np.isnan(far)).sum() > 60
    steep = FreeSpace(intrinsics(), pose(1.5, pitch=1.2), SCAN, GRID)
    assert np.all(np.isnan(steep.scan(np.full((H, W), 255, np.uint8))))


def test_nearer_than_range_min_is_minus_inf_and_beyond_range_max_plus_inf():
    p = pose(1.5, pitch=0.1)
    fs = FreeSpace(intrinsics(), p, ScanSpec(SCAN.angle_increment, 5.0, 8.0), GRID)
    on_axis = bin_at(SCAN, 0.0)
    assert np.isneginf(fs.scan(wall_mask(fs.intr, p, 4.0))[on_axis])
    assert fs.scan(wall_mask(fs.intr, p, 6.0))[on_axis] == pytest.approx(6.0, rel=0.02)
    assert np.isposinf(fs.scan(wall_mask(fs.intr, p, 9.0))[on_axis])
    # nothing drivable: the nearest non-drivable ground is the image's bottom edge
    bottom = 1.5 / math.tan(0.1 + math.atan((H - 0.5 - CY) / F))
    near = FreeSpace(intrinsics(), p, ScanSpec(SCAN.angle_increment, 0.1, 30.0), GRID)
    assert near.scan(np.zeros((H, W), np.uint8))[on_axis] == pytest.approx(bottom, rel=1e-4)


def wall_misses(scan: np.ndarray, x_wall: float) -> np.ndarray:
    """Per seen bin, how far (relative) its range is outside x_wall / cos(bearing) over the bin's bearings."""
    seen = ~np.isnan(scan)
    a = bin_bearings(SCAN)[seen]
    b = a + SCAN.angle_increment
    near = np.where((a < 0) & (b > 0), 0.0, np.minimum(np.abs(a), np.abs(b)))
    lo, hi = x_wall / np.cos(near), x_wall / np.cos(np.maximum(np.abs(a), np.abs(b)))
    r = scan[seen]
    return np.maximum(lo - r, r - hi) / hi


@pytest.mark.parametrize("angles", [dict(pitch=0.12), dict(pitch=0.12, roll=0.15), dict(pitch=0.2, roll=-0.3),
                                    dict(pitch=0.1, yaw=0.4, roll=0.1)])
def test_a_wall_across_the_path_is_seen_where_it_is_by_a_pitched_rolled_or_yawed_camera(angles):
    """The wall x = 6 m: each bin's range is 6 / cos(bearing) (to the nearest cell or 2 %)."""
    p = pose(1.4, **angles)
    fs = FreeSpace(intrinsics(), p, SCAN, GRID)
    misses = wall_misses(fs.scan(wall_mask(fs.intr, p, 6.0)), 6.0)
    assert misses.size > 50
    assert misses.max() <= 0.02, misses.max()


def test_a_yawed_camera_rotates_the_scan():
    k = 30  # bins: the yaw is a whole number of them, so the scan shifts by exactly k bins
    p0, p1 = pose(1.4, pitch=0.12), pose(1.4, pitch=0.12, yaw=k * SCAN.angle_increment)
    fs0, fs1 = FreeSpace(intrinsics(), p0, SCAN, GRID), FreeSpace(intrinsics(), p1, SCAN, GRID)
    mask = np.zeros((H, W), np.uint8)
    mask[220:, 100:500] = 255
    mask[260:] = 255
    s0, s1 = np.roll(fs0.scan(mask), k), fs1.scan(mask)
    both = ~np.isnan(s0) & ~np.isnan(s1)
    assert both.sum() > 60 and np.sum(np.isnan(s0) != np.isnan(s1)) <= 2
    np.testing.assert_allclose(s1[both], s0[both], rtol=1e-3)
    assert not np.allclose(np.nan_to_num(fs0.scan(mask)), np.nan_to_num(s1))  # it did move


def test_plumb_bob_distortion_is_undone():
    d = (-0.28, 0.07, 0.001, -0.0015, 0.0)
    intr = intrinsics(d)
    p = pose(1.4, pitch=0.1)
    mask = wall_mask(intr, p, 7.0)
    undone = wall_misses(FreeSpace(intr, p, SCAN, GRID).scan(mask), 7.0)
    assert undone.size > 50 and undone.max() <= 0.02, undone.max()
    ignored = wall_misses(FreeSpace(intrinsics(), p, SCAN, GRID).scan(mask), 7.0)  # the mask read as undistorted
    assert ignored.max() > 0.05


def test_the_grid_marks_seen_free_seen_occupied_and_unseen():
    p = pose(1.4, pitch=0.12, roll=0.05)
    intr = intrinsics((-0.1, 0.02, 0.0, 0.0, 0.0))
    fs = FreeSpace(intr, p, ScanSpec(SCAN.angle_increment, 0.1, 15.0), GRID)
    grid = fs.grid(wall_mask(intr, p, 6.0))
    assert grid.shape == (200, 200) and grid.dtype == np.int8
    rows, cols = np.mgrid[0:200, 0:200]
    cx = GRID.origin_x + (cols + 0.5) * GRID.resolution
    cy = GRID.origin_y + (rows + 0.5) * GRID.resolution
    seen = grid != UNKNOWN
    truth = np.where(cx < 6.0, FREE, OCCUPIED)
    assert seen.sum() > 5000
    assert np.mean(grid[seen] == truth[seen]) > 0.99
    assert np.all(grid[np.hypot(cx, cy) > 15.0] == UNKNOWN)  # beyond range_max
    assert np.all(grid[np.abs(cy) > cx * math.tan(math.atan(CX / F) + 0.1)] == UNKNOWN)  # outside the view
    assert set(np.unique(grid)) == {UNKNOWN, FREE, OCCUPIED}


def test_rays_above_the_horizon_never_project():
    """A camera tipped up sees only sky in its top half: the grid gets nothing from there."""
    p = pose(1.4, pitch=-0.2)
    fs = FreeSpace(intrinsics(), p, SCAN, GRID)
    mask = np.full((H, W), 255, np.uint8)
    _, _, on = pixel_ground(fs.intr, p)
    assert not on[: H // 2].any()  # the case is what it claims
    grid = fs.grid(mask)
    scan = fs.scan(mask)
    assert np.all(grid == UNKNOWN) or np.all(grid[grid != UNKNOWN] == FREE)
    assert np.all(np.isposinf(scan[~np.isnan(scan)]))


def test_bad_camera_models_are_refused_naming_the_problem():
    with pytest.raises(CameraModelError, match="fx=0"):
        Intrinsics.from_camera_info([0.0] * 9, [], "plumb_bob", W, H)
    with pytest.raises(CameraModelError, match="finite"):
        Intrinsics.from_camera_info([F, 0, CX, 0, float("nan"), CY, 0, 0, 1], [], "plumb_bob", W, H)
    with pytest.raises(CameraModelError, match="equidistant"):
        Intrinsics.from_camera_info([F, 0, CX, 0, F, CY, 0, 0, 1], [0.1, 0, 0, 0], "equidistant", W, H)
    Intrinsics.from_camera_info([F, 0, CX, 0, F, CY, 0, 0, 1], [0.0] * 4, "equidistant", W, H)  # D zero: fine
    with pytest.raises(CameraModelError, match="above the ground"):
        FreeSpace(intrinsics(), Pose(pose(1.0).rotation, (0.0, 0.0, -0.2)), SCAN, GRID)
    fs = FreeSpace(intrinsics(), pose(1.4, pitch=0.1), SCAN, GRID)
    with pytest.raises(CameraModelError, match="320x180 but camera_info is 640x360"):
        fs.scan(np.zeros((180, 320), np.uint8))


def test_a_tf_quaternion_gives_the_same_rotation():
    def quat(axis, angle):
        s = math.sin(angle / 2)
        return np.array([axis[0] * s, axis[1] * s, axis[2] * s, math.cos(angle / 2)])

    def mul(a, b):  # Hamilton product, (x, y, z, w)
        ax, ay, az, aw = a
        bx, by, bz, bw = b
        return np.array([aw * bx + ax * bw + ay * bz - az * by, aw * by - ax * bz + ay * bw + az * bx,
                         aw * bz + ax * by - ay * bx + az * bw, aw * bw - ax * bx - ay * by - az * bz])

    level = mul(quat((0, 0, 1), -math.pi / 2), quat((1, 0, 0), -math.pi / 2))  # REP-103 optical frame
    q = mul(quat((0, 0, 1), 0.3), mul(quat((0, 1, 0), 0.2), mul(level, quat((0, 0, 1), 0.1))))
    got = Pose.from_quaternion((0.1, 0.2, 1.3), q * 2.0).matrix  # not normalised: TF may send that
    np.testing.assert_allclose(got, optical_in_base(pitch=0.2, yaw=0.3, roll=0.1), atol=1e-12)


# ------------------------------------------------------------------------------------------ synthetic world
#: Scenes with nothing on the road: the drivable mask is the road layout, so the layout is the truth.
#: Straight roads: on curves the renderer draws the sidewalks' lengthwise paving joints as straight
#: 18 m chords, which cut into the road's label by up to ~0.7 m, so there the label is not the layout.
EMPTY_STREET = SceneConfig(cars=0, trucks_buses=0, people=0, cyclists=0, poles=0, vegetation=0, curves=False)
ROAD_IDS = ClassTable().resolve_groups({"drivable": ["road"]})["drivable"]
#: 15 m: at 640x360 (f ~ 570 px, camera ~1.3 m up) one pixel row is ~1.5 % of the range at 15 m and
#: ~2.8 % at 20 m; the 2 % bound holds out to where half a row of the mask's edge stays under it.
TRUTH_SCAN = ScanSpec(math.radians(0.5), 0.1, 15.0)


def synthetic_camera(meta: dict) -> tuple[Intrinsics, Pose]:
    """The renderer's camera: level, pixel centres at +0.5 (so K's centre is 0.5 less), at height_m."""
    cam = meta["camera"]
    k = [cam["f_px"], 0.0, cam["cx"] - 0.5, 0.0, cam["f_px"], cam["horizon_y"] - 0.5, 0.0, 0.0, 1.0]
    return Intrinsics.from_camera_info(k, [], "", W, H), Pose(tuple(optical_in_base().ravel()), (0.0, 0.0, cam["height_m"]))


def on_road(world, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Whether ground point (x forward, y left) of the first frame is road, from the world's layout."""
    road, cam = world.road, world.camera
    s0 = 0.0
    c0, k0 = float(road.lateral(s0)), road.slope(s0)
    u_ego = road.lane_centre(cam.lane) + cam.u_jitter
    u = -y + u_ego + c0 + k0 * x - (road.lateral(s0 + x) if road.wiggle else 0.0)
    return (u >= road.left_edge) & (u < road.right_edge)


@pytest.mark.parametrize("seed", [0, 3, 5, 7, 11, 19])
def test_scan_and_grid_match_the_synthetic_world_s_road(seed):
    sample = generate_scene(seed, EMPTY_STREET)
    world = make_world(seed, EMPTY_STREET, 1.0)
    intr, p = synthetic_camera(sample.meta)
    mask = np.where(np.isin(sample.label, ROAD_IDS), 255, 0).astype(np.uint8)
    fs = FreeSpace(intr, p, TRUTH_SCAN, GRID)
    scan, grid = fs.scan(mask), fs.grid(mask)

    # truth along the bearing of every image column (what the camera samples): from the first ground
    # the image shows (its bottom edge) outwards in 1 cm steps, the first point off the road; a bin's
    # truth is the nearest of its columns' (a bin holds the nearest edge, as the scan does)
    cam = sample.meta["camera"]
    f, cx, hc, cy = cam["f_px"], cam["cx"] - 0.5, cam["height_m"], cam["horizon_y"] - 0.5
    a = np.arctan((cx - np.arange(W)) / f)  # column c looks along bearing a[c] (left positive)
    r = f * hc / (H - 0.5 - cy) / np.cos(a)[:, None] + np.arange(0.0, TRUTH_SCAN.range_max + 1.0, 0.01)[None, :]
    off = ~on_road(world, r * np.cos(a)[:, None], r * np.sin(a)[:, None])
    first = np.where(off.any(1), r[np.arange(W), off.argmax(1)], np.inf)
    bins = np.floor((a - TRUTH_SCAN.angle_min) / TRUTH_SCAN.angle_increment).astype(int)
    truth_scan = np.full(TRUTH_SCAN.count, np.nan)
    np.fmin.at(truth_scan, bins, first)
    checked = 0
    for i in np.unique(bins):
        truth = truth_scan[i]
        tol = max(GRID.resolution, 0.02 * min(truth, TRUTH_SCAN.range_max))
        if truth > TRUTH_SCAN.range_max + tol:
            assert np.isposinf(scan[i]), (i, scan[i], truth)
        elif truth >= TRUTH_SCAN.range_max - tol:
            assert scan[i] >= truth - tol, (i, scan[i], truth)
        else:
            assert abs(scan[i] - truth) <= tol, (i, scan[i], truth)
        checked += 1
    assert checked > 80 and np.isfinite(truth_scan).sum() > 10  # road edges seen, not only open road
    looked = np.unique(np.concatenate([bins - 1, bins, bins + 1]))  # a pixel's edges reach a bin further
    assert np.all(np.isnan(np.delete(scan, looked)))  # nothing where no column looks

    rows, cols_ = np.mgrid[0:GRID.shape[0], 0:GRID.shape[1]]
    gx = GRID.origin_x + (cols_ + 0.5) * GRID.resolution
    gy = GRID.origin_y + (rows + 0.5) * GRID.resolution
    seen = grid != UNKNOWN
    truth_grid = np.where(on_road(world, gx, gy), FREE, OCCUPIED)
    assert seen.sum() > 5000 and (grid[seen] == FREE).sum() > 1000
    assert np.mean(grid[seen] == truth_grid[seen]) >= 0.98


# ------------------------------------------------------------------------------------------ parameters, status
def test_parameters_are_checked_together_and_every_bad_key_is_named():
    from liteseg_ros import free_space_params as fsp
    from liteseg_ros.params import ParameterError

    assert fsp.validate({})["base_frame"] == "base_footprint"
    assert fsp.validate({"range_max": 30})["range_max"] == 30.0  # an int for a float is fine
    with pytest.raises(ParameterError) as err:
        fsp.validate({"range_max": -1.0, "base_frame": "/odom", "grid_resolution": "fine", "tf_timout": 1.0})
    assert len(err.value.errors) == 4 and "tf_timout" in str(err.value) and "base_frame" in str(err.value)
    with pytest.raises(ParameterError, match="range_min .* must be less than range_max"):
        fsp.validate({"range_min": 5.0, "range_max": 5.0})
    with pytest.raises(ParameterError, match="more than"):
        fsp.validate({"grid_resolution": 0.01, "grid_size_x": 2000.0, "grid_size_y": 2000.0})
    with pytest.raises(ParameterError, match="finite"):
        fsp.validate({"range_max": float("nan")})
    # a live change is checked against the values in force, not the defaults
    live = fsp.validate({"range_max": 8.0})
    with pytest.raises(ParameterError, match=r"range_min \(9.0\) must be less than range_max \(8.0\)"):
        fsp.validate({"range_min": 9.0}, live)


def test_diagnostics_say_what_to_fix_first():
    from liteseg_ros import free_space_params as fsp
    from liteseg_ros.diagnostics import OK, WARN

    def say(state="active", now=100.0, **kw):
        c = fsp.FreeSpaceCounters(**kw)
        return fsp.status("fs", state, c, "/seg/masks/drivable", "/seg/label/camera_info", "base_footprint", now)

    assert say("inactive").message == "node is inactive"
    assert "no mask received on /seg/masks/drivable" in say().message and say().level == WARN
    assert "(stale)" in say(last_mask=90.0).message
    assert "remap camera_info:=" in say(last_mask=99.0, problem_kind="no_camera_info").message
    no_tf = say(last_mask=99.0, problem_kind="no_tf", problem="LookupException: camera_optical")
    assert no_tf.level == WARN and "static_transform_publisher" in no_tf.message and "camera_optical" in no_tf.message
    assert "320x180" in say(last_mask=99.0, problem_kind="rejected", problem="the mask is 320x180").message
    ok = say(last_mask=99.9, times=[99.0, 99.5, 99.9], published=3, received=3)
    assert ok.level == OK and ok.message == "2.2 Hz" and ok.values["published"] == "3"


def test_the_nav2_example_names_the_node_s_real_topic_frame_and_ranges():
    """config/nav2_free_space.yaml: an obstacle layer observing ~/scan, marking and clearing, inf valid."""
    from pathlib import Path

    import yaml

    from liteseg_ros import free_space_params as fsp

    doc = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "nav2_free_space.yaml").read_text())
    costmap = doc["local_costmap"]["local_costmap"]["ros__parameters"]
    defaults = fsp.validate({})
    assert costmap["robot_base_frame"] == defaults["base_frame"]
    layers = {name: costmap[name] for name in costmap["plugins"]}
    obstacle = [lay for lay in layers.values() if lay["plugin"] == "nav2_costmap_2d::ObstacleLayer"]
    assert len(obstacle) == 1
    layer = obstacle[0]
    sources = [layer[s] for s in layer["observation_sources"].split()]
    assert len(sources) == 1
    src = sources[0]
    assert src["topic"] == f"/{fsp.NODE_NAME}/scan" and src["data_type"] == "LaserScan"
    assert src["marking"] is True and src["clearing"] is True and src["inf_is_valid"] is True
    # +inf becomes a ray of range_max: it must clear (raytrace reaches it) and not mark (obstacle range below it)
    assert src["obstacle_max_range"] < defaults["range_max"] <= src["raytrace_max_range"]
    # the scan's points lie at z = 0 of base_frame
    assert src["min_obstacle_height"] < 0 < src["max_obstacle_height"] and layer["min_obstacle_height"] < 0


def test_the_readme_documents_every_free_space_parameter():
    from pathlib import Path

    from liteseg_ros import free_space_params as fsp

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Free space for planners"):readme.index("## Bags")]
    missing = [p.name for p in fsp.FREE_SPACE_PARAMS if f"`{p.name}`" not in section]
    assert not missing, f"README's free-space section does not document {missing}"
