"""The free-space node's parameters and /diagnostics wording: one table, checked without ROS.

Ring 3 (ROS edge) but imports no ROS package, like ``params`` and ``diagnostics``: the node declares
what this table says (descriptors, ranges, which change live), validation reports every bad key in
one message, and every status a user can read in ``rqt_robot_monitor`` is a pure function tested
without DDS. Entries are ``params.Param``, the same record the segmentation node's table uses.
"""
from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from liteseg_ros.diagnostics import OK, STALE_S, WARN, Status
from liteseg_ros.free_space import GridSpec, ScanSpec
from liteseg_ros.params import Param, ParameterError, is_ros_builtin, type_name_of

NODE_NAME = "liteseg_free_space"
#: A grid larger than this many cells is refused (a typo in an extent should not take gigabytes).
MAX_GRID_CELLS = 4000 * 4000

FREE_SPACE_PARAMS: tuple[Param, ...] = (
    Param("base_frame", "base_footprint", "frame of ~/scan and ~/grid; its z = 0 plane is the ground the mask "
          "shows (REP-105 base_footprint)", pattern=r"^[^/\s][^\s]*$"),
    Param("range_min", 0.1, "~/scan range_min (m): drivable-region edges nearer than this are -inf (REP-117)",
          min=0.0, max=100.0),
    Param("range_max", 20.0, "~/scan range_max (m): beyond it the drivable region counts as open (+inf); "
          "grid cells further than this stay unknown. A one-pixel step of the mask's edge grows with the range "
          "squared, so keep it where a pixel is a few percent of the range", min=0.5, max=1000.0),
    Param("angle_increment", math.radians(0.5), "~/scan bin width (rad); the scan covers all bearings round "
          "base_frame's origin, NaN where the camera does not look", min=math.radians(0.05), max=math.radians(10.0)),
    Param("grid_resolution", 0.1, "~/grid cell size (m)", min=0.01, max=10.0),
    Param("grid_size_x", 20.0, "~/grid extent along base_frame x (m)", min=0.1, max=2000.0),
    Param("grid_size_y", 20.0, "~/grid extent along base_frame y (m)", min=0.1, max=2000.0),
    Param("grid_origin_x", 0.0, "~/grid lower-left corner's x in base_frame (m)", min=-1000.0, max=1000.0),
    Param("grid_origin_y", -10.0, "~/grid lower-left corner's y in base_frame (m)", min=-1000.0, max=1000.0),
    Param("tf_timeout", 0.1, "how long to wait for the camera's transform at a mask's stamp (s) before the mask "
          "is skipped", min=0.0, max=10.0),
    Param("diagnostics_period", 1.0, "seconds between /diagnostics messages (steady clock)", min=0.1, max=60.0,
          read_only=True),
    Param("error_log_period", 5.0, "seconds between repeated log lines about skipped masks", min=0.0, max=3600.0),
    Param("autostart", True, "configure and activate at start-up (a plain launch just works)", read_only=True),
)
FREE_SPACE_PARAMS_BY_NAME: dict[str, Param] = {p.name: p for p in FREE_SPACE_PARAMS}


def check_value(name: str, value: Any) -> Any:
    """One value against its table entry; returns it normalised (int -> float) or raises naming the key."""
    spec = FREE_SPACE_PARAMS_BY_NAME.get(name)
    if spec is None:
        if is_ros_builtin(name):
            return value
        raise ParameterError(f"unknown parameter {name!r}; known: {', '.join(sorted(FREE_SPACE_PARAMS_BY_NAME))}")
    want = spec.type_name
    if want == "float" and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type_name_of(value) != want:
        raise ParameterError(f"{name}: expected {want}, got {type(value).__name__} {value!r}")
    if spec.pattern and not re.match(spec.pattern, value):
        raise ParameterError(f"{name}: {value!r} is not a frame name (non-empty, no leading '/', no spaces)")
    if want == "float" and not math.isfinite(value):
        raise ParameterError(f"{name}: {value!r} is not a finite number")
    if spec.min is not None and value < spec.min or spec.max is not None and value > spec.max:
        raise ParameterError(f"{name}: {value!r} is out of range [{spec.min}, {spec.max}]")
    return value


def validate(values: Mapping[str, Any], base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``values`` over ``base`` (default: the defaults), every key and the rules between keys checked.

    Raises ParameterError whose ``errors`` list every bad key, so a start-up or a ``ros2 param set``
    of several keys says everything that is wrong at once.
    """
    effective = dict(base) if base is not None else {p.name: p.default for p in FREE_SPACE_PARAMS}
    errors = []
    for k, v in values.items():
        try:
            effective[k] = check_value(k, v)
        except ParameterError as exc:
            errors.append(str(exc))
    if not errors:
        if effective["range_min"] >= effective["range_max"]:
            errors.append(f"range_min ({effective['range_min']}) must be less than range_max "
                          f"({effective['range_max']})")
        rows, cols = grid_spec(effective).shape
        if rows * cols > MAX_GRID_CELLS:
            errors.append(f"grid_size_x / grid_size_y / grid_resolution give {cols}x{rows} cells, more than "
                          f"{MAX_GRID_CELLS}: make the grid smaller or its cells larger")
    if errors:
        raise ParameterError("invalid parameters:\n  " + "\n  ".join(errors), errors)
    return effective


def scan_spec(values: Mapping[str, Any]) -> ScanSpec:
    return ScanSpec(float(values["angle_increment"]), float(values["range_min"]), float(values["range_max"]))


def grid_spec(values: Mapping[str, Any]) -> GridSpec:
    return GridSpec(float(values["grid_resolution"]), float(values["grid_origin_x"]), float(values["grid_origin_y"]),
                    float(values["grid_size_x"]), float(values["grid_size_y"]))


# ------------------------------------------------------------------------------------------ /diagnostics
@dataclass
class FreeSpaceCounters:
    """What happened to the masks: the node updates these, :func:`status` reads them."""

    received: int = 0
    published: int = 0
    skipped: int = 0
    last_mask: float | None = None       # monotonic time of the last mask received
    last_info: float | None = None       # ... of the last camera_info
    problem: str = ""                    # why the last mask was skipped ("" = it was published)
    problem_kind: str = ""               # no_camera_info | no_tf | rejected
    times: list[float] = field(default_factory=list)  # monotonic times of the last published masks


def status(node_name: str, state: str, c: FreeSpaceCounters, mask_topic: str, info_topic: str,
           base_frame: str, now: float | None = None) -> Status:
    """The node's one DiagnosticStatus: is it working, and if not, the first thing to fix."""
    now = time.monotonic() if now is None else now
    label = f"{node_name}: free space"
    recent = [t for t in c.times if now - t < 5.0]
    rate = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 and recent[-1] > recent[0] else 0.0
    if state != "active":
        level, message = WARN, f"node is {state}"
    elif c.last_mask is None:
        level, message = WARN, (f"no mask received on {mask_topic} yet: is the segmentation node publishing its "
                                f"drivable mask there (remap mask:=..., check `ros2 topic info -v {mask_topic}`)?")
    elif now - c.last_mask > STALE_S:
        level, message = WARN, (f"no mask on {mask_topic} for > {STALE_S:.0f} s (stale): is the segmentation node "
                                "active and its drivable mask group configured?")
    elif c.problem_kind == "no_camera_info":
        level, message = WARN, (f"no camera_info on {info_topic}: remap camera_info:= to the camera_info of the "
                                "mask's resolution (the segmentation node's ~/label/camera_info)")
    elif c.problem_kind == "no_tf":
        level, message = WARN, (f"no transform from the mask's frame to {base_frame}: publish the camera's TF "
                                "(robot_state_publisher, or `ros2 run tf2_ros static_transform_publisher`) or set "
                                f"base_frame; {c.problem}")
    elif c.problem_kind:
        level, message = WARN, f"masks skipped: {c.problem}"
    else:
        level, message = OK, f"{rate:.1f} Hz"
    values = {"state": state, "mask_topic": mask_topic, "camera_info_topic": info_topic, "base_frame": base_frame,
              "received": c.received, "published": c.published, "skipped": c.skipped,
              "output_rate_hz": f"{rate:.2f}", "last_problem": c.problem}
    return Status(level=level, name=label, message=message, values={k: str(v) for k, v in values.items()})
