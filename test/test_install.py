"""The package as a user's tools see it: share files, messages, scripts and the launch file.

Runs in every test run against whatever ``liteseg_ros`` is imported (the checkout under ``make
test``), and under ``colcon test`` against the install (LITESEG_TESTING_INSTALL=1), where it also
checks that nothing is read from the source tree. Seconds, no DDS.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

import liteseg_ros
from liteseg_ros import params, share

INSTALL = os.environ.get("LITESEG_TESTING_INSTALL") == "1"


def test_share_files_resolve_in_this_layout():
    for rel in ("launch/segment.launch.py", "config/liteseg.yaml", "config/fastdds_large_shm.xml",
                "config/liteseg.rviz", "msg/SegmentationInfo.msg"):
        assert share.share_file(rel).is_file(), rel
    with pytest.raises(share.ShareFileError, match="missing"):
        share.share_file("config/no_such_file.yaml")


@pytest.mark.skipif(not INSTALL, reason="checks an install; run by `colcon test` (LITESEG_TESTING_INSTALL=1)")
def test_install_reads_nothing_from_the_source_tree():
    module = Path(liteseg_ros.params.__file__).absolute()  # not resolved: a symlink install links back
    prefixes = [Path(p).absolute() for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    assert any(p in module.parents for p in prefixes), f"liteseg_ros imported from outside the install: {module}"
    if not module.is_symlink():  # a copying install must not reach back into any checkout
        assert share.source_tree() is None
        assert any(p in share.share_dir().parents for p in prefixes), share.share_dir()
    lib = prefixes[0] / "lib" / "liteseg_ros"
    lib = next((p / "lib" / "liteseg_ros" for p in prefixes if (p / "lib" / "liteseg_ros").is_dir()), lib)
    for exe in ("liteseg_node", "liteseg", "liteseg_free_space"):
        assert os.access(lib / exe, os.X_OK), lib / exe


def test_package_data_is_installed_with_the_code():
    """The data files the code reads at run time come with it (pip's package_data, CMake's install)."""
    from importlib import resources

    from liteseg_ros.engines.selection import cpu_path_ranking

    for name in ("weights.yaml", "cpu_paths.yaml", "liteseg_demo_mobilenetv2.pt"):
        assert (resources.files("liteseg_ros") / "data" / name).is_file(), name
    assert cpu_path_ranking(frozenset({"FP32", "INT8"}))[0][1] == "int8"


def test_generated_messages_sit_beside_the_python_code():
    from liteseg_ros.msg import DrivableBoundary, FrameStats, MaskGroup, SegmentationInfo

    assert {f for f in FrameStats.get_fields_and_field_types()} >= {"header", "infer_ms", "dropped"}
    assert DrivableBoundary and MaskGroup and SegmentationInfo


def test_liteseg_tool_runs_from_any_directory(tmp_path):
    out = subprocess.run([sys.executable, "-m", "liteseg_ros.cli", "--help"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "bag" in out.stdout and "quantize" in out.stdout


def test_launch_file_declares_an_argument_for_what_users_set():
    pytest.importorskip("launch_ros", reason="launch_ros is not installed: `bash ../shared/ros2-cli/install.sh "
                                             ".venv` (or a ROS 2 install) brings it")
    spec = importlib.util.spec_from_file_location("segment_launch", share.share_file("launch/segment.launch.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ld = mod.generate_launch_description()
    declared = {a.name for a in ld.get_launch_arguments()}
    assert declared >= {"params_file", "weights", "image", "camera_info", "namespace", "node_name", "use_sim_time",
                        "log_level", "cameras", "rviz", "bag", "autostart", "backend", "device", "precision",
                        "network_width", "network_height", "free_space", "base_frame"}
    assert set(mod.PARAMETER_ARGUMENTS) <= set(params.PARAMS_BY_NAME)
