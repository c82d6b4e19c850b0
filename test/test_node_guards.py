"""node_guards: the rules that come from the tools around the node, checked without starting it.

Params files and rcl's errors, rcl's empty-list values, the Fast DDS profile choice per distro, and the
spin loop that survives a raising callback (with the real rclpy executor).
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from liteseg_ros import node_guards


def test_params_files_are_only_checked_to_exist_and_be_readable(tmp_path):
    tagged = tmp_path / "launch_params.yaml"  # what launch_ros writes for a list parameter
    tagged.write_text("/**:\n  ros__parameters:\n    cameras: !!python/tuple\n    - front\n")
    argv = ["liteseg_node", "--ros-args", "--params-file", str(tagged)]
    assert node_guards.params_file_problem(argv) is None
    missing = str(tmp_path / "missing.yaml")
    assert node_guards.params_file_problem([*argv, "--params-file", missing]) == f"params file {missing} does not exist"
    assert node_guards.params_file_problem(["x", "--params-file", missing]) is None  # not a ROS argument
    assert node_guards.params_files(["x", "--ros-args", "--params-file", "a", "--", "--params-file", "b"]) == ["a"]


def test_rcl_parse_errors_name_the_file_in_one_line():
    exc = RuntimeError("failed to initialize rcl: Couldn't parse params file: '--params-file /tmp/p.yaml'. "
                       "Error: Cannot have a value before ros__parameters at line 2, at /project/src/parse.c:818, "
                       "at /project/src/rcl/arguments.c:415")
    assert node_guards.rcl_init_problem(exc) == ("params file /tmp/p.yaml is not a valid ROS params file (as rcl "
                                                 "reads it): Cannot have a value before ros__parameters at line 2")
    assert node_guards.rcl_init_problem(RuntimeError("bad -p\nmore")) == "cannot start: bad -p"


@pytest.mark.parametrize("name,value,expected", [
    ("cameras", None, []),  # rcl's reading of `cameras: []` (what ros2 param dump writes)
    ("mask_groups.drivable", None, []),  # refused later by validation: a group names at least one class
    ("mask_groups.drivable", ("road", "sidewalk"), ["road", "sidewalk"]),
    ("overlay_alpha", None, None),  # not a list: validation says "expected float"
    ("overlay_alpha", 0.5, 0.5),
])
def test_given_values_read_rcl_empty_lists_as_empty(name, value, expected):
    assert node_guards.given_value(name, value) == expected


def test_the_shipped_dds_profile_unless_the_user_chose(monkeypatch):
    assert node_guards.profile_variable("jazzy") == "FASTRTPS_DEFAULT_PROFILES_FILE"
    assert node_guards.profile_variable("humble") == "FASTRTPS_DEFAULT_PROFILES_FILE"
    assert node_guards.profile_variable("kilted") == "FASTDDS_DEFAULT_PROFILES_FILE"
    monkeypatch.setenv("ROS_DISTRO", "jazzy")
    env: dict[str, str] = {}
    path = node_guards.use_shipped_dds_profile(env)
    assert path and path.endswith("config/fastdds_large_shm.xml") and env == {"FASTRTPS_DEFAULT_PROFILES_FILE": path}
    monkeypatch.setenv("ROS_DISTRO", "kilted")  # only the variable the distro reads (Kilted warns about the other)
    env = {}
    assert node_guards.use_shipped_dds_profile(env) and list(env) == ["FASTDDS_DEFAULT_PROFILES_FILE"]
    for chosen in ({"FASTRTPS_DEFAULT_PROFILES_FILE": "/mine.xml"}, {"FASTDDS_DEFAULT_PROFILES_FILE": "/mine.xml"},
                   {"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"}):
        env = dict(chosen)
        assert node_guards.use_shipped_dds_profile(env) is None and env == chosen


def test_an_exception_in_a_callback_is_logged_once_and_spinning_goes_on():
    """The node's spin loop survives a callback that raises (the real rclpy executor re-raises it)."""
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import MultiThreadedExecutor

    context = Context()
    rclpy.init(context=context, args=["guard_test"])
    try:
        test_node = rclpy.create_node("guard_test", context=context)
        executor = MultiThreadedExecutor(num_threads=2, context=context)
        executor.add_node(test_node)
        ticks, logged = [], []
        test_node.create_timer(0.01, lambda: (_ for _ in ()).throw(ValueError("bad tick")))
        test_node.create_timer(0.01, lambda: ticks.append(1))
        errors = node_guards.CallbackErrors(logged.append)
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            errors.spin_once(executor, 0.05)
        assert sum(errors.counts.values()) >= 5 and len(ticks) >= 5
        assert len(logged) == 1 and "ValueError: bad tick" in logged[0] and "the node goes on" in logged[0]
        executor.shutdown()
        test_node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


def test_throttled_log_keeps_one_line_per_period_and_counts_the_rest():
    """Refused requests in a loop make one line per period, and the next line says how many were held."""
    from liteseg_ros.throttle import ThrottledLog

    now = [100.0]
    lines: list[str] = []
    log = ThrottledLog(lines.append, period_s=5.0, clock=lambda: now[0])
    for i in range(1000):  # a thousand refusals within one second
        now[0] = 100.0 + i / 1000
        log(f"refused {i}")
    assert lines == ["refused 0"] and log.held == 999
    now[0] = 105.5
    log("refused again")
    assert lines[-1] == "refused again (and 999 more like it in the 5.5 s before)" and log.held == 0
    now[0] = 200.0
    log("quiet since")
    assert lines[-1] == "quiet since"


def test_throttled_lines_of_every_severity_reach_one_rclpy_logger():
    """rclpy ties a calling line to one severity: handing the throttle ``logger.error`` and ``logger.warning``
    raised inside the callback that logged second. ``rcl_log`` gives each severity its own line, and no
    node hands the throttle a logger method directly (checked over the package's source)."""
    import ast

    import rclpy.logging

    from liteseg_ros.node_guards import rcl_log
    from liteseg_ros.throttle import ThrottledLog

    logger = rclpy.logging.get_logger("liteseg_throttle_test")
    bare = [ThrottledLog(logger.error, 0.0), ThrottledLog(logger.warning, 0.0)]
    bare[0]("an error")
    with pytest.raises(ValueError, match="severity cannot be changed"):
        bare[1]("a warning")  # what rclpy does to a bare logger method: why rcl_log exists
    logger = rclpy.logging.get_logger("liteseg_throttle_test_2")
    for severity in ("error", "warning", "info", "error", "warning"):
        ThrottledLog(rcl_log(logger, severity), 0.0)(f"a line at {severity}")

    package = Path(__file__).resolve().parents[1] / "liteseg_ros"
    log_argument = {"ThrottledLog": 0, "ThrottledLogs": 0, "guard_change_state": 1}  # where the log function goes
    bad = []
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            i = log_argument.get(name)
            if i is None or len(node.args) <= i:
                continue
            arg = node.args[i]
            if isinstance(arg, ast.Attribute) and arg.attr in ("debug", "info", "warning", "error", "fatal"):
                bad.append(f"{path.name}:{node.lineno}: {ast.unparse(arg)}")
    assert not bad, "give the throttle node_guards.rcl_log(logger, severity), not a logger method: " + ", ".join(bad)


def test_throttled_logs_follow_a_live_period_and_keep_cameras_apart():
    """The period is read at each line (a live error_log_period change applies at once, where rclpy's
    throttle raises), 0 logs every line, and one key's flood never hides another key's first line."""
    from liteseg_ros.throttle import ThrottledLogs

    now, period = [0.0], [5.0]
    lines: list[str] = []
    logs = ThrottledLogs(lines.append, lambda: period[0], clock=lambda: now[0])
    for i in range(10):
        now[0] = i * 0.1
        logs("front", f"front bad {i}")
    logs("rear", "rear bad")
    assert lines == ["front bad 0", "rear bad"]
    period[0] = 0.5  # ros2 param set ... error_log_period 0.5
    now[0] = 1.0
    logs("front", "front bad again")
    assert lines[-1] == "front bad again (and 9 more like it in the 1.0 s before)"
    period[0] = 0.0
    for i in range(3):
        logs("front", f"every one {i}")
    assert lines[-3:] == ["every one 0", "every one 1", "every one 2"]
