"""The Fast DDS profile variable: one name per distro, and it is the one the installed Fast DDS reads.

Fast DDS 2.x (Jazzy) reads only FASTRTPS_DEFAULT_PROFILES_FILE; 3.x (Kilted) reads
FASTDDS_DEFAULT_PROFILES_FILE and warns about the old name at every start. Setting both would make every
Kilted process warn; setting the wrong one would lose big frames silently. Checked against the real Fast
DDS of this venv (run with LITESEG_ROS_DISTRO=kilted make test for Kilted's).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import FASTDDS_XML, ros_env

from liteseg_ros.defaults import (
    FASTDDS_PROFILE_VARIABLES,
    fastdds_profile_variable,
    fastdds_profile_variable_for,
)

OLD, NEW = FASTDDS_PROFILE_VARIABLES


@pytest.mark.parametrize(("distro", "rclpy_version", "expected"), [
    ("humble", "", OLD), ("jazzy", "", OLD), ("Jazzy", "9.1.2", OLD),  # ROS_DISTRO decides when set
    ("kilted", "", NEW), ("rolling", "", NEW), ("lyrical", "", NEW), ("kilted", "7.1.6", NEW),
    ("", "7.1.6", OLD), ("", "3.3.16", OLD), ("", "9.1.2", NEW), ("", "10.0.1", NEW),  # else rclpy's version
    ("", "", OLD), ("", "unknown", OLD),  # unknown: the name both read (3.x with a warning)
])
def test_one_variable_per_distro(distro, rclpy_version, expected):
    assert fastdds_profile_variable_for(distro, rclpy_version) == expected


def test_ros_distro_wins_over_the_installed_rclpy():
    assert fastdds_profile_variable({"ROS_DISTRO": "kilted"}) == NEW
    assert fastdds_profile_variable({"ROS_DISTRO": "jazzy"}) == OLD


def test_the_test_environment_sets_only_that_variable():
    assert os.environ.get(fastdds_profile_variable()) == str(FASTDDS_XML)
    assert [v for v in FASTDDS_PROFILE_VARIABLES if v in os.environ] == [fastdds_profile_variable()]


_PARTICIPANT = "import rclpy; rclpy.init(); n = rclpy.create_node('profile_probe'); n.destroy_node(); rclpy.shutdown()"
_FASTDDS_LOG = re.compile(r"\[\w+ (Error|Warning)\]")


def _participant_log(env: dict[str, str]) -> str:
    """What a process that starts one DDS participant prints (Fast DDS logs to stdout), colours removed."""
    run = subprocess.run([sys.executable, "-c", _PARTICIPANT], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    return re.sub(r"\x1b\[[0-9;]*m", "", run.stdout + run.stderr)


@pytest.mark.ros
def test_the_chosen_variable_is_read_and_nothing_warns(tmp_path):
    """A broken profile under the chosen name is reported by Fast DDS (so it reads that name); the shipped
    profile under it starts a participant with no Fast DDS warning (none about the old name on Kilted)."""
    name = fastdds_profile_variable()
    broken = tmp_path / "broken_profile.xml"
    broken.write_text("<?xml version='1.0'?><dds><profiles><oops")
    env = ros_env()
    for v in FASTDDS_PROFILE_VARIABLES:
        env.pop(v, None)
    read = _participant_log({**env, name: str(broken)})
    assert "XMLPARSER" in read and str(broken) in read, f"Fast DDS did not read {name}:\n{read}"
    clean = _participant_log({**env, name: str(FASTDDS_XML)})
    assert not _FASTDDS_LOG.search(clean) and "[WARN]" not in clean and OLD not in clean, f"Fast DDS complained:\n{clean}"
