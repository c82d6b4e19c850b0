"""node_guards: the rules that come from the tools around the node, checked without starting it.

Params files and rcl's errors, rcl's empty-list values, the Fast DDS profile choice per distro, and the
spin loop that survives a raising callback (with the real rclpy executor).
"""
from __future__ import annotations

import time

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
    from liteseg_ros.node_guards import ThrottledLog

    now = [100.0]
    lines: list[str] = []
    log = ThrottledLog(lines.append, period_s=5.0, clock=lambda: now[0])
    for i in range(1000):  # a thousand refusals within one second
        now[0] = 100.0 + i / 1000
        log(f"refused {i}")
    assert lines == ["refused 0"] and log.held == 999
    now[0] = 105.5
    log("refused again")
    assert lines[-1] == "refused again (and 999 more like it in the 5 s before)" and log.held == 0
    now[0] = 200.0
    log("quiet since")
    assert lines[-1] == "quiet since"
