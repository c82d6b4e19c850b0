"""The service and parameter fuzzer (fuzz/fuzz_node.py) against the live node, briefly, in CI.

``LITESEG_NODE_FUZZ_SECONDS`` (default 6) sets the random phase; the long run is in fuzz/README.md.
Three runs: lifecycle requests restricted to transitions valid from the node's state (one lifecycle
client, two parameter clients), which must break no invariant; and every transition id from every
state with concurrent lifecycle clients, where a transition the state does not allow must be answered
with success=false while the node keeps serving (rclpy 7.1's own lifecycle service would end the node:
the fuzzer names that ``KNOWN_INVALID_TRANSITION_CRASH`` in its report, and here it fails the test); and the
latter against the free-space node.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ros_env

REPO = Path(__file__).resolve().parents[1]
SECONDS = float(os.environ.get("LITESEG_NODE_FUZZ_SECONDS", "6"))
pytestmark = pytest.mark.ros


def run_fuzzer(tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / "fuzz.json"
    proc = subprocess.run([sys.executable, str(REPO / "fuzz" / "fuzz_node.py"), "--seconds", str(SECONDS),
                           "--seed", "0", "--json", str(out), "--log", str(tmp_path / "node.log"), *extra],
                          env=ros_env(), capture_output=True, text=True, timeout=SECONDS + 400)
    assert out.is_file(), proc.stdout + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    res["stdout"] = proc.stdout
    res["node_log"] = (tmp_path / "node.log").read_text(errors="replace")[-3000:]
    return res


def test_valid_lifecycle_requests_and_random_parameters_break_no_invariant(tmp_path):
    res = run_fuzzer(tmp_path, "--valid-transitions-only", "--clients", "3")
    assert res["violations"] == [], res["stdout"] + res["node_log"]
    tried = res["tried"]
    assert tried.get("change_state", 0) > 0 and tried.get("set_parameters", 0) > 0, tried
    assert res["labelled_after"] and res["exit_after_shutdown"] == 0


def test_every_transition_id_from_every_state_with_concurrent_clients(tmp_path):
    res = run_fuzzer(tmp_path, "--clients", "3")
    assert res["violations"] == [], res["stdout"] + res["node_log"]
    assert sum(res["tried"].values()) > 10
    assert res["refusal_log_lines"] <= SECONDS / 5 + 5, res["node_log"]


def test_the_free_space_node_under_every_transition_id_and_random_parameters(tmp_path):
    """The free-space node gets the same treatment: its own parameter table, a mask with camera_info and TF
    as good input, and ``~/scan`` must come back after the fuzz."""
    res = run_fuzzer(tmp_path, "--target", "free_space", "--clients", "3")
    assert res["violations"] == [], res["stdout"] + res["node_log"]
    assert res["target"] == "liteseg_free_space" and sum(res["tried"].values()) > 10
    assert res["labelled_after"] and res["exit_after_shutdown"] == 0


def test_the_invariants_catch_what_they_are_for():
    """The fuzzer's judgement on made-up results: a flooded log, an exit, a lost answer, memory growth."""
    sys.path.insert(0, str(REPO / "fuzz"))
    from fuzz_node import violations

    good = {"seconds": 60, "refusal_log_lines": 12, "labelled_after": True, "exit_after_shutdown": 0,
            "rss_baseline_mb": 900, "rss_peak_mb": 950, "rss_limit_mb": 400, "outcomes": {}}
    assert violations(good) == []
    for change, words in (({"refusal_log_lines": 43000}, "refusal lines"), ({"exited_during_fuzz": 1}, "exited"),
                          ({"unanswered": {"change_state": 1}}, "unanswered"), ({"rss_peak_mb": 1400}, "RSS grew"),
                          ({"labelled_after": False}, "not labelled"), ({"exit_after_shutdown": 1}, "status 1"),
                          ({"internal_error_lines": 382, "internal_error_example": ["batch failed: ValueError"]},
                           "faults inside the node")):
        found = violations({**good, **change})
        assert any(words in v for v in found), (change, found)
