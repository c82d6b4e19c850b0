"""Shared fixtures: an isolated DDS domain, a tiny checkpoint, generated scenes, the node as a process.

Every ROS test runs real rclpy over real Fast DDS, isolated by a per-session ROS_DOMAIN_ID and
localhost-only discovery, with the large shared-memory profile so best-effort delivery is lossless.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from liteseg_ros.defaults import FASTDDS_PROFILE_VARIABLES, fastdds_profile_variable
from liteseg_ros.interrupts import stop_child

REPO = Path(__file__).resolve().parents[1]
FASTDDS_XML = REPO / "config" / "fastdds_large_shm.xml"


def _domain_id() -> int:
    # 1..100, different for parallel sessions (pid) and xdist workers; never 0 (the default domain).
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return 1 + (os.getpid() * 7 + int(worker[2:] or 0)) % 100


os.environ.setdefault("ROS_DOMAIN_ID", str(_domain_id()))
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
# Only the profile variable this distro's Fast DDS reads (Kilted warns about the old name in every process).
for _name in FASTDDS_PROFILE_VARIABLES:
    os.environ.pop(_name, None)
os.environ[fastdds_profile_variable()] = str(FASTDDS_XML)
os.environ.setdefault("RCUTILS_LOGGING_BUFFERED_STREAM", "0")
os.environ.setdefault("PYTHONUNBUFFERED", "1")
# Nodes under test stay on the engine they start with: many tests compare labels with fp32, and a
# background quantization would swap int8 in under them (test_background_int8.py turns it back on).
os.environ.setdefault("LITESEG_BACKGROUND_INT8", "0")


def ros_env(**extra: str) -> dict[str, str]:
    """Environment for a child process in the same isolated domain."""
    env = dict(os.environ)
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random-weight LiteSeg-MobileNetV2 saved in our format with Cityscapes metadata."""
    import torch

    from liteseg_ros.classes import ClassTable
    from liteseg_ros.model import CheckpointMeta, LiteSeg, save_checkpoint

    torch.manual_seed(0)
    model = LiteSeg("mobilenetv2", 19).eval()
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    save_checkpoint(model, path, CheckpointMeta(backbone="mobilenetv2", num_classes=19,
                                                classes=ClassTable.cityscapes(), model_name="tiny-random"))
    return path



# ------------------------------------------------------------------------------------------ engine tests
# Shared by test_engines.py and test_cpu_paths.py: both judge every backend against one seeded random-weight
# LiteSeg-MobileNetV2 on the same smooth-noise batch at the module's own H x W.
@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread for a module (``pytest.mark.usefixtures``), so engine agreement and timing do not
    depend on how busy the machine is; opt-in, because the node and training tests want every core."""
    import torch

    from liteseg_ros.engines.cpu_tuning import set_num_threads

    old = torch.get_num_threads()
    set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def model():
    """A seeded random-weight LiteSeg-MobileNetV2 whose BN statistics make labels vary over the image."""
    from liteseg_ros.tools.bench import random_weight_model

    return random_weight_model("mobilenetv2", 19, seed=0)


@pytest.fixture(scope="module")
def batch(request):
    """Two smooth-noise images of the requesting module's ``H`` x ``W`` (float32 NCHW)."""
    import torch

    from liteseg_ros.tools.bench import smooth_noise

    return smooth_noise(2, request.module.H, request.module.W, torch.Generator().manual_seed(1)).numpy()

# ------------------------------------------------------------------------------------------ rclpy helpers
class RosHarness:
    """An rclpy context + node in the test process, spun in a background thread."""

    def __init__(self, name: str = "liteseg_test") -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        self.rclpy = rclpy
        self.context = Context()
        rclpy.init(context=self.context, args=["liteseg_test"])
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._stop = False
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop and self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # shutdown races
                if self._stop:
                    return
                raise

    def collect(self, msg_type, topic: str, qos=None) -> list:
        """Subscribe and return the list that fills with received messages."""
        from rclpy.qos import QoSProfile, QoSReliabilityPolicy

        got: list = []
        qos = qos or QoSProfile(depth=50, reliability=QoSReliabilityPolicy.RELIABLE)
        self.node.create_subscription(msg_type, topic, got.append, qos)
        return got

    def wait_for(self, cond: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cond():
                return
            time.sleep(0.02)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")

    def parameter_setter(self, node_name: str) -> ParameterSetter:
        """A live node's parameter service, set the way ``ros2 param set`` sets (see ParameterSetter)."""
        return ParameterSetter(self, node_name)

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=5)
        self.executor.shutdown()
        self.node.destroy_node()
        self.rclpy.shutdown(context=self.context)


class ParameterSetter:
    """``set_params(Parameter(...), ...)`` against a live node: one (successful, reason) per parameter, as
    ``ros2 param set`` reports them; ``client`` is the parameter client, for describe/get/list calls."""

    def __init__(self, ros: RosHarness, node_name: str) -> None:
        from rclpy.parameter_client import AsyncParameterClient

        self.ros = ros
        self.client = AsyncParameterClient(ros.node, node_name)
        assert self.client.wait_for_services(timeout_sec=30), f"no parameter services of {node_name}"

    def __call__(self, *ps) -> list[tuple[bool, str]]:
        fut = self.client.set_parameters(list(ps))
        self.ros.wait_for(fut.done, 20, "set_parameters")
        return [(r.successful, r.reason) for r in fut.result().results]


@pytest.fixture
def ros() -> Iterator[RosHarness]:
    h = RosHarness()
    try:
        yield h
    finally:
        h.close()


class Lifecycle:
    """A client that behaves like a lifecycle manager: raw ChangeState / GetState requests by id or label."""

    def __init__(self, ros, node_name: str) -> None:
        from lifecycle_msgs.srv import ChangeState, GetState

        self.ros = ros
        self.change = ros.node.create_client(ChangeState, f"/{node_name}/change_state")
        self.get = ros.node.create_client(GetState, f"/{node_name}/get_state")
        self.requests = 0

    def _call(self, client, request, timeout: float = 90.0):
        assert client.wait_for_service(timeout_sec=timeout), f"{client.srv_name} not offered"
        future = client.call_async(request)
        self.ros.wait_for(future.done, timeout, f"an answer from {client.srv_name}")
        return future.result()

    def set(self, transition_id: int = 0, label: str = "") -> bool:
        from lifecycle_msgs.srv import ChangeState

        request = ChangeState.Request()
        request.transition.id = transition_id
        request.transition.label = label
        self.requests += 1
        return self._call(self.change, request).success

    def state(self) -> str:
        from lifecycle_msgs.srv import GetState

        return self._call(self.get, GetState.Request()).current_state.label


class NodeProcess:
    """``liteseg_node`` started as its own process, exactly as a user (or launch_ros) starts it."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, log_path: Path | None = None) -> None:
        exe = Path(sys.executable).parent / "liteseg_node"
        self.cmd = [str(exe), *args]
        self.log_path = log_path
        self._log = open(log_path, "w+") if log_path else subprocess.PIPE  # noqa: SIM115
        self.proc = subprocess.Popen(self.cmd, env=env or ros_env(), stdout=self._log, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)

    def output(self) -> str:
        if self.log_path:
            return Path(self.log_path).read_text()
        return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> int:
        return stop_child(self.proc, timeout)


@pytest.fixture
def start_node(tmp_path) -> Iterator[Callable[..., NodeProcess]]:
    """Factory: start_node(params: dict, extra_args=[...]) writes a params file and starts the node."""
    import yaml

    procs: list[NodeProcess] = []

    def _start(params: dict | None = None, extra_args: list[str] | None = None, name: str = "liteseg",
               params_file: Path | None = None) -> NodeProcess:
        args = ["--ros-args", "-r", f"__node:={name}"]
        if params is not None:
            params_file = tmp_path / f"params_{len(procs)}.yaml"
            params_file.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}))
        if params_file is not None:
            args += ["--params-file", str(params_file)]
        args += extra_args or []
        p = NodeProcess(args, log_path=tmp_path / f"node_{len(procs)}.log")
        procs.append(p)
        return p

    yield _start
    for p in procs:
        p.stop()


# ------------------------------------------------------------------------------------------ the real ROS tools
class RosWorkspace:
    """A colcon workspace with liteseg_ros built in it, and a shell that has sourced its setup.bash.

    ``run``/``start`` execute a command line exactly as a user types it in a terminal that sourced
    ``install/setup.bash`` (``bash -c 'source ... && exec CMD'``), in the session's isolated domain.
    """

    def __init__(self, root: Path | None, env: dict[str, str]) -> None:
        self.root = root
        self.env = env
        self.setup = f"source {root / 'install' / 'setup.bash'} && " if root else ""

    def shell(self, command: str) -> list[str]:
        return ["bash", "-c", f"{self.setup}exec {command}"]

    def run(self, command: str, timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(self.shell(command), env=self.env, cwd=cwd or self.root, capture_output=True,
                              text=True, timeout=timeout)

    def eventually(self, command: str, check: Callable[[str], bool], timeout: float = 30) -> str:
        """Run ``command`` until ``check(stdout)`` holds: a fresh ros2 process discovers the graph over
        DDS for a moment, so one call can miss an endpoint that is there."""
        end = time.monotonic() + timeout
        while True:
            out = self.run(command, timeout=timeout).stdout
            if check(out) or time.monotonic() > end:
                return out
            time.sleep(0.5)

    def start(self, command: str, log_path: Path) -> LaunchedProcess:
        return LaunchedProcess(self.shell(command), self.env, log_path)


class LaunchedProcess:
    """A long-running command (``ros2 launch``, ``ros2 run``) in its own process group, as a terminal runs it."""

    def __init__(self, cmd: list[str], env: dict[str, str], log_path: Path, cwd: Path | None = None) -> None:
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True, stdin=subprocess.DEVNULL)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_output(self, text: str, timeout: float = 90) -> None:
        self.wait_for_patterns((re.escape(text),), timeout)

    def wait_for_patterns(self, patterns: tuple[str, ...], timeout: float = 90) -> None:
        """Until every regular expression in ``patterns`` matches the output (or the process ends)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            out = self.output()
            if all(re.search(p, out) for p in patterns):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{patterns} not in the output after {timeout:.0f} s "
                             f"(exit {self.proc.poll()}):\n{self.output()[-4000:]}")

    def signal_group(self, sig: int, timeout: float = 30) -> int:
        """What a terminal's Ctrl-C does (SIGINT to the whole foreground process group)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
        return self.wait(timeout)

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        self._log.close()


def _ros_cli_missing() -> str | None:
    bindir = Path(sys.executable).parent
    for tool in ("ros2", "colcon"):
        if not (bindir / tool).exists() and not shutil.which(tool):
            return (f"the real ROS 2 command line ({tool}) is not installed: run "
                    "`bash ../shared/ros2-cli/install.sh .venv` (make test does), or source a ROS 2 install")
    return None


@pytest.fixture(scope="session")
def ros_ws(tmp_path_factory) -> Iterator[RosWorkspace]:
    """liteseg_ros built by ``colcon build`` (a copying install) into a fresh workspace, once per run.

    Under ``colcon test`` (LITESEG_TESTING_INSTALL=1) the install being tested is already sourced,
    so that one is used instead of building another.
    """
    env = ros_env()
    if os.environ.get("LITESEG_TESTING_INSTALL") == "1":
        yield RosWorkspace(None, env)
        return
    missing = _ros_cli_missing()
    if missing:
        pytest.skip(missing)
    venv = Path(sys.executable).parent.parent
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    if not os.environ.get("AMENT_PREFIX_PATH"):  # the wheels' venv is the underlay (no /opt/ros here)
        env["AMENT_PREFIX_PATH"] = env["CMAKE_PREFIX_PATH"] = str(venv)
    root = tmp_path_factory.mktemp("colcon_ws")
    (root / "src").mkdir()
    (root / "src" / "liteseg_ros").symlink_to(REPO)
    build = subprocess.run(
        ["colcon", "build", "--event-handlers", "console_direct-", "--cmake-args",
         f"-DPython3_EXECUTABLE={sys.executable}"], cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, f"colcon build failed:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}"
    print(f"\n[ros] colcon build of liteseg_ros into {root}: the real-ROS tests run against it")
    ws = RosWorkspace(root, env)
    yield ws
    ws.run("ros2 daemon stop", timeout=30)


def pytest_terminal_summary(terminalreporter) -> None:
    """Say whether the tests that drive the real ROS 2 tools ran, so a green run that skipped them shows."""
    counts = {}
    for outcome in ("passed", "failed", "skipped", "error"):
        counts[outcome] = sum(1 for r in terminalreporter.stats.get(outcome, [])
                              if getattr(r, "nodeid", "").startswith("test/test_launch.py"))
    total = sum(counts.values())
    if total:
        verdict = "ran" if counts["passed"] else "did NOT run"
        terminalreporter.write_line(
            f"[ros] tests with the real colcon / ros2 launch / ros2 verbs {verdict}: {counts['passed']} of {total} "
            f"passed ({counts['skipped']} skipped, {counts['failed'] + counts['error']} failed)")


# A child process that builds the node's pipeline from settings (runtime.build_pipeline, as the node's
# configure does), runs one generated scene and reports which heavy modules it imported.
_START = """
import hashlib, json, sys
from liteseg_ros import params
from liteseg_ros.runtime import build_pipeline
from liteseg_ros.synthetic import SceneConfig, generate_scene
from liteseg_ros.pipeline import Wants
vals = params.pipeline_settings(dict(weights=sys.argv[1], engine_cache_dir=sys.argv[2], network_height=96,
                                     network_width=160, num_threads=1, min_label_agreement=float(sys.argv[3])))
logs = []
pipe, src = build_pipeline(vals, log=logs.append)
seg = pipe.run([generate_scene(10001, SceneConfig(height=120, width=200)).image], "bgr", Wants.all())[0]
print(json.dumps({"torch": "torch" in sys.modules, "onnx": "onnx" in sys.modules,
                  "openvino": "openvino" in sys.modules, "engine": [pipe.engine.info.backend,
                  pipe.engine.info.precision], "label": hashlib.sha256(seg.label.tobytes()).hexdigest(),
                  "classes": list(pipe.classes.names), "name": src.name, "logs": logs}))
"""


def start_runtime(weights, cache, min_agreement: float = 0.99) -> dict:
    """build_pipeline in a fresh interpreter (so sys.modules shows what the start really imported),
    with the CPU ranking of a machine without bf16 (ONNX Runtime first) whatever this CPU is."""
    import json

    env = dict(os.environ, LITESEG_CPU_CAPS="FP32,INT8")
    out = subprocess.run([sys.executable, "-c", _START, str(weights), str(cache), str(min_agreement)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])
