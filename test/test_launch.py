"""The launch file: parsed and checked everywhere; executed where launch_ros exists; its argv run for real."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from liteseg_ros import launch_check, params

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch" / "segment.launch.py"


def test_shipped_launch_file_is_consistent_with_the_package():
    assert launch_check.check(LAUNCH, REPO) == []


@pytest.mark.parametrize("old,new,expected", [
    ('executable="liteseg_node"', 'executable="liteseg_nod"', "executable 'liteseg_nod' is not installed"),
    ('"config", "liteseg.yaml"', '"config", "litesge.yaml"', "config/litesge.yaml does not exist"),
    ('"config", "liteseg.rviz"', '"config", "liteseg_view.rviz"', "config/liteseg_view.rviz does not exist"),
    ('{"use_sim_time": sim_time}', '{"use_sim_tme": sim_time}', "unknown parameter 'use_sim_tme'"),
    ('("camera_info", LaunchConfiguration', '("camerainfo", LaunchConfiguration', "remaps 'camerainfo'"),
    ('overrides["cameras"] = cameras', 'overrides["camera_names"] = cameras', "unknown parameter 'camera_names'"),
    ('DeclareLaunchArgument("rviz"', 'DeclareLaunchArgument("rviz2"', "LaunchConfiguration('rviz') has no"),
    ("from launch_ros.actions import Node", "from launch_ros.actions import Node\nimport torch",
     "unexpected import torch"),
])
def test_check_catches_a_broken_name(tmp_path, old, new, expected):
    text = LAUNCH.read_text()
    assert old in text, f"test is stale: {old!r} not in the launch file"
    broken = tmp_path / "segment.launch.py"
    broken.write_text(text.replace(old, new))
    errors = launch_check.check(broken, REPO)
    assert any(expected in e for e in errors), errors


def test_launch_file_declares_every_argument_the_issue_names():
    facts, errors = launch_check.read_facts(LAUNCH.read_text())
    assert not errors
    for name in launch_check.REQUIRED_ARGUMENTS:
        assert name in facts.arguments


def test_launch_file_executes_with_real_launch_ros():
    pytest.importorskip("launch_ros", reason="launch/launch_ros have no PyPI wheels: the launch file was "
                                             "only checked statically here (test above)")
    spec = importlib.util.spec_from_file_location("segment_launch", LAUNCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ld = mod.generate_launch_description()
    assert any(type(e).__name__ == "Node" for e in ld.entities)


def test_shipped_yaml_and_readme_list_exactly_the_parameter_table():
    yaml_keys = launch_check.params.yaml_keys(REPO / "config" / "liteseg.yaml")
    table = set(params.PARAMS_BY_NAME)
    groups = {k for k in yaml_keys if k.startswith(params.MASK_GROUPS_PREFIX)}
    commented = {p.name for p in params.PARAMS if p.default == []}  # rcl cannot parse an empty list
    text = (REPO / "config" / "liteseg.yaml").read_text()
    assert all(f"# {name}:" in text for name in commented)
    assert yaml_keys - groups == table - commented
    assert params.validate(params.read_params_file(REPO / "config" / "liteseg.yaml")) == params.defaults()
    readme = (REPO / "README.md").read_text()
    missing = [name for name in table if f"`{name}`" not in readme]
    assert not missing, f"README does not document {missing}"


def test_launch_equivalent_command_configures_the_node_as_launch_would(start_node, ros, tiny_checkpoint,
                                                                      tmp_path):
    """Run liteseg_node with the argv launch_ros builds (defaults + a namespace) and inspect it over DDS."""
    import yaml
    from rclpy.parameter_client import AsyncParameterClient

    shipped = yaml.safe_load((REPO / "config" / "liteseg.yaml").read_text())
    shipped["/**"]["ros__parameters"].update(weights=str(tiny_checkpoint), network_width=96, network_height=64)
    params_file = tmp_path / "launch_params.yaml"
    params_file.write_text(yaml.safe_dump(shipped))
    argv = launch_check.launch_argv(REPO, namespace="perception", image="/front/image_raw",
                                    params_file=str(params_file))
    node = start_node(extra_args=argv[1:])
    ros.wait_for(lambda: ("liteseg", "/perception") in ros.node.get_node_names_and_namespaces()
                 or not node.alive(), 60, "node /perception/liteseg")
    assert node.alive(), node.output()

    def subscribed():
        subs = ros.node.get_subscriber_names_and_types_by_node("liteseg", "/perception")
        return any(t == "/front/image_raw" for t, _ in subs)

    ros.wait_for(subscribed, 60, "subscription on the remapped /front/image_raw")
    client = AsyncParameterClient(ros.node, "/perception/liteseg")
    assert client.wait_for_services(timeout_sec=20)
    fut = client.get_parameters(["use_sim_time", "network_width", "mask_groups.drivable"])
    ros.wait_for(fut.done, 20, "get_parameters")
    values = fut.result().values
    assert values[0].bool_value is False
    assert values[1].integer_value == 96
    assert list(values[2].string_array_value) == ["road"]
