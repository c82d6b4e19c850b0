"""Service and parameter fuzzer against the live node: lifecycle requests, parameter sets and frames at once.

Starts one of the package's nodes as its own process (as a user or launch_ros does): ``--target
segmentation`` (``liteseg_node``, the default; good frames are camera images, its output ``~/label``)
or ``--target free_space`` (``liteseg_free_space``; good frames are a drivable mask, its camera_info
and the camera's static TF, its output ``~/scan``). Then for ``--seconds`` several client threads,
each with its own rclpy node, send random requests while a camera thread publishes good frames:

* lifecycle ``change_state`` with every transition id (the nine public ones, the internal
  ``on_*`` ids, and random bytes), from whatever state the node is in; ``get_state`` and
  ``get_available_transitions`` in between. Shutdown transitions end the node by design, so they
  are sent once, at the very end (the node must then exit 0);
* ``set_parameters`` / ``set_parameters_atomically`` with every ParameterValue type (bool, int,
  double with NaN, +-inf and huge values, string, byte/bool/int/double/string arrays, empty arrays,
  NOT_SET) on known names, ``mask_groups.*`` names, unknown names and odd strings; ``get_parameters``,
  ``list_parameters`` and ``describe_parameters`` too.

Invariants, checked throughout and at the end:

* the node never exits (until the final shutdown request, after which it must exit 0);
* every request is answered (within ``--answer-timeout`` s; configure builds an engine, so it is long);
* good frames keep being served: after the random phase the node is brought to ``active`` and must
  publish its output for them again within 60 s (``labelled_after``);
* memory is bounded: the node's resident memory grows by less than ``--rss-limit-mb`` past its size
  after the first configure (torch and the engine loaded);
* the log stays readable and honest: at most one refusal line per 5 s, and no line that only a fault
  inside the node writes (``INTERNAL_ERROR_LINES``: a batch or a publish lost to an exception, an
  exception out of a callback, rclpy refusing a changed log throttle).

Prints one summary line (``node fuzz: ...``) with the requests tried per kind and each invariant's
result, and exits 1 on any violation. Seeded: ``--seed`` makes a run's request sequence repeatable
(thread interleaving aside). In CI ``test/test_fuzz_node.py`` runs it for a few seconds; a long run::

    .venv/bin/python fuzz/fuzz_node.py --seconds 1800 --clients 4 --seed 1
    .venv/bin/python fuzz/fuzz_node.py --target free_space --seconds 900 --clients 4 --seed 1
"""
from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from node_load import rss_mb  # noqa: E402 - the node harnesses' one RSS reader

from liteseg_ros.interrupts import stop_child  # noqa: E402

NET = {"network_width": 96, "network_height": 64, "num_threads": 1}
PUBLIC = {"create": 0, "configure": 1, "cleanup": 2, "activate": 3, "deactivate": 4, "destroy": 8}
SHUTDOWN = (5, 6, 7)
#: rclpy's own words when a lifecycle node is asked for a transition not valid from its state. rclpy 7.1's
#: lifecycle service ends the node there; ours answers success=false instead (``node_guards``). Should that
#: ever regress, a run that ends this way names the cause (``KNOWN_INVALID_TRANSITION_CRASH``).
KNOWN_INVALID_TRANSITION_CRASH = "Transition is not registered"
#: What the node logs for a lifecycle request its state does not allow, at most once per period.
REFUSAL_LINE = "is not allowed in state"
REFUSAL_LOG_PERIOD_S = 5.0
#: Lines that only a fault inside the node writes, whatever the requests: the frame worker losing a batch or a
#: publish to an exception, an exception out of a callback that nobody saw (rclpy's executor prints "never
#: retrieved"), rclpy's throttle refusing a changed period. Bad input has its own words ("rejected frame").
INTERNAL_ERROR_LINES = ("batch failed:", "publishing failed:", "was never retrieved",
                        "cannot be changed between calls")
INTERNAL = (10, 11, 12, 20, 21, 22, 30, 31, 32, 40, 41, 42, 50, 51, 52, 60, 61, 62, 97, 98, 99)



@dataclass(frozen=True)
class Target:
    """One node the fuzzer can drive: how it starts, what its parameters are, what good input it gets and
    which of its outputs shows that it still serves."""

    exe: str
    node: str
    table: Callable[[], list]  # the node's parameter table (objects with .name and .read_only)
    group_prefix: str  # a family of names the node declares on demand ("" when none)
    start_params: Callable[[Path, str], dict]  # (work folder, weights) -> the params file's ros__parameters
    remaps: tuple[str, ...]
    output: str  # topic under the node's name, published once per good frame
    output_type: Callable[[], type]
    feeder: Callable[..., Callable[[int], None]]  # (rclpy node) -> send(frame number)


def _segmentation_table() -> list:
    from liteseg_ros import params

    return list(params.PARAMS)


def _free_space_table() -> list:
    from liteseg_ros import free_space_params

    return list(free_space_params.FREE_SPACE_PARAMS)


def _image_type() -> type:
    from sensor_msgs.msg import Image

    return Image


def _scan_type() -> type:
    from sensor_msgs.msg import LaserScan

    return LaserScan


def _camera_feeder(main) -> Callable[[int], None]:
    """Random 64x48 colour frames on /fuzz/image."""
    import numpy as np
    from rclpy.qos import QoSProfile, QoSReliabilityPolicy
    from sensor_msgs.msg import Image

    from liteseg_ros import image_codec

    pub = main.create_publisher(Image, "/fuzz/image", QoSProfile(depth=1, reliability=QoSReliabilityPolicy.BEST_EFFORT))

    def send(n: int) -> None:
        m = Image()
        img = np.random.default_rng(n).integers(0, 255, (48, 64, 3), np.uint8)
        image_codec.fill_image(m, img, "bgr8")
        m.header.stamp.sec = n
        pub.publish(m)

    return send


def _mask_feeder(main) -> Callable[[int], None]:
    """A generated scene's drivable mask on /fuzz/mask, its camera_info on /fuzz/camera_info, and the camera's
    mount as a static TF (base_footprint -> fuzz_camera, level, at the scene's camera height)."""
    import numpy as np
    from geometry_msgs.msg import TransformStamped
    from rclpy.qos import QoSProfile, QoSReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image
    from tf2_ros import StaticTransformBroadcaster

    from liteseg_ros.classes import ClassTable
    from liteseg_ros.demo import LEVEL_OPTICAL_QUATERNION, synthetic_camera_info
    from liteseg_ros.synthetic import SceneConfig, generate_scene

    scene = generate_scene(3, SceneConfig(height=90, width=160))
    road = ClassTable().resolve_groups({"drivable": ["road"]})["drivable"]
    mask = np.where(np.isin(scene.label, road), 255, 0).astype(np.uint8)
    cam = scene.meta["camera"]
    mount = TransformStamped()
    mount.header.frame_id, mount.child_frame_id = "base_footprint", "fuzz_camera"
    mount.transform.translation.z = float(cam["height_m"])
    r = mount.transform.rotation
    r.x, r.y, r.z, r.w = LEVEL_OPTICAL_QUATERNION
    main._fuzz_tf = StaticTransformBroadcaster(main)  # kept with the node: its latched /tf_static is the mount
    main._fuzz_tf.sendTransform(mount)
    best_effort = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.BEST_EFFORT)
    info_pub = main.create_publisher(CameraInfo, "/fuzz/camera_info", best_effort)
    mask_pub = main.create_publisher(Image, "/fuzz/mask", best_effort)

    def send(n: int) -> None:
        info = synthetic_camera_info(cam, mask.shape, "fuzz_camera")
        info.header.stamp.sec = n
        info_pub.publish(info)
        m = Image(height=mask.shape[0], width=mask.shape[1], encoding="mono8", step=mask.shape[1])
        m.data = mask.tobytes()
        m.header.frame_id = "fuzz_camera"
        m.header.stamp.sec = n
        mask_pub.publish(m)

    return send


TARGETS: dict[str, Target] = {
    "segmentation": Target(
        exe="liteseg_node", node="liteseg_fuzz", table=_segmentation_table, group_prefix="mask_groups.",
        start_params=lambda work, weights: {"weights": weights, **NET, "engine_cache_dir": str(work / "cache"),
                                            "error_log_period": 1.0, "autostart": False, "diagnostics_period": 0.5},
        remaps=("image:=/fuzz/image",), output="label", output_type=_image_type, feeder=_camera_feeder),
    "free_space": Target(
        exe="liteseg_free_space", node="liteseg_fuzz_free_space", table=_free_space_table, group_prefix="",
        start_params=lambda work, weights: {"autostart": False, "diagnostics_period": 0.5, "error_log_period": 1.0},
        remaps=("mask:=/fuzz/mask", "camera_info:=/fuzz/camera_info"), output="scan", output_type=_scan_type,
        feeder=_mask_feeder),
}

class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tried: Counter = Counter()
        self.unanswered: Counter = Counter()
        self.outcomes: Counter = Counter()

    def add(self, kind: str, answered: bool, outcome: str = "") -> None:
        with self.lock:
            self.tried[kind] += 1
            if not answered:
                self.unanswered[kind] += 1
            if outcome:
                self.outcomes[f"{kind}:{outcome}"] += 1


def random_value(rng: random.Random):
    """A ParameterValue of a random type, with the edge values that break naive validation."""
    from rcl_interfaces.msg import ParameterType, ParameterValue

    floats = [math.nan, math.inf, -math.inf, 1e308, -1e308, 0.0, -0.0, 5e-324, 0.5, 1.5, -1.0, 30.0]
    ints = [0, 1, -1, 2**63 - 1, -(2**63), 7, 100000, 255, 256]
    strings = ["", "auto", "cpu", "cuda:7", "fp16", "onnxruntime", "road", "\x00", "a" * 5000, "../../etc/passwd",
               "demo", "nonexistent.pt", "ünïcödé", "$(reboot)", "sky"]
    v = ParameterValue()
    kind = rng.randrange(10)
    if kind == 0:
        v.type = ParameterType.PARAMETER_NOT_SET
    elif kind == 1:
        v.type, v.bool_value = ParameterType.PARAMETER_BOOL, rng.random() < 0.5
    elif kind == 2:
        v.type, v.integer_value = ParameterType.PARAMETER_INTEGER, rng.choice(ints)
    elif kind == 3:
        v.type, v.double_value = ParameterType.PARAMETER_DOUBLE, rng.choice(floats)
    elif kind == 4:
        v.type, v.string_value = ParameterType.PARAMETER_STRING, rng.choice(strings)
    elif kind == 5:
        v.type, v.byte_array_value = ParameterType.PARAMETER_BYTE_ARRAY, [bytes([rng.randrange(256)])
                                                                          for _ in range(rng.randrange(3))]
    elif kind == 6:
        v.type, v.bool_array_value = ParameterType.PARAMETER_BOOL_ARRAY, [rng.random() < 0.5
                                                                          for _ in range(rng.randrange(3))]
    elif kind == 7:
        v.type, v.integer_array_value = ParameterType.PARAMETER_INTEGER_ARRAY, [rng.choice(ints)
                                                                                for _ in range(rng.randrange(3))]
    elif kind == 8:
        v.type, v.double_array_value = ParameterType.PARAMETER_DOUBLE_ARRAY, [rng.choice(floats)
                                                                              for _ in range(rng.randrange(3))]
    else:
        v.type, v.string_array_value = ParameterType.PARAMETER_STRING_ARRAY, [rng.choice(strings)
                                                                              for _ in range(rng.randrange(4))]
    return v


def random_name(rng: random.Random, known: list[str], group_prefix: str = "mask_groups.") -> str:
    r = rng.random()
    if r < 0.7:
        return rng.choice(known)
    if r < 0.8:
        return (group_prefix or "group.") + rng.choice(["drivable", "x", "1bad", "", "road.sub", "a" * 300])
    if r < 0.9:
        return rng.choice(["use_sim_time", "qos_overrides./image.subscription.depth", "start_type_description_service"])
    return rng.choice(["", "nope", ".", "a..b", "\x00", "x" * 1000, "weights ", "Weights"])


class Client(threading.Thread):
    """One client node sending random requests until ``stop`` is set."""

    def __init__(self, ctx, k: int, seed: int, stats: Stats, stop: threading.Event, answer_timeout: float,
                 known: list[str], valid_only: bool = False, target: Target = TARGETS["segmentation"]) -> None:
        super().__init__(name=f"fuzz-client-{k}", daemon=True)
        import rclpy
        from lifecycle_msgs.srv import ChangeState, GetAvailableTransitions, GetState
        from rcl_interfaces.srv import (
            DescribeParameters,
            GetParameters,
            ListParameters,
            SetParameters,
            SetParametersAtomically,
        )

        self.rng = random.Random(seed * 1000 + k)
        self.stats, self.stop, self.timeout, self.known = stats, stop, answer_timeout, known
        self.k, self.valid_only, self.group_prefix = k, valid_only, target.group_prefix
        self.node = rclpy.create_node(f"liteseg_fuzz_client_{k}", context=ctx)
        ns = f"/{target.node}"
        self.clients = {
            "change_state": self.node.create_client(ChangeState, f"{ns}/change_state"),
            "get_state": self.node.create_client(GetState, f"{ns}/get_state"),
            "get_available_transitions": self.node.create_client(GetAvailableTransitions,
                                                                 f"{ns}/get_available_transitions"),
            "set_parameters": self.node.create_client(SetParameters, f"{ns}/set_parameters"),
            "set_parameters_atomically": self.node.create_client(SetParametersAtomically,
                                                                 f"{ns}/set_parameters_atomically"),
            "get_parameters": self.node.create_client(GetParameters, f"{ns}/get_parameters"),
            "list_parameters": self.node.create_client(ListParameters, f"{ns}/list_parameters"),
            "describe_parameters": self.node.create_client(DescribeParameters, f"{ns}/describe_parameters"),
        }

    def call(self, kind: str, request, timeout: float | None = None):
        """The response, or None when none came within the timeout (counted as unanswered)."""
        future = self.clients[kind].call_async(request)
        done = threading.Event()
        future.add_done_callback(lambda f: done.set())
        answered = done.wait(timeout or self.timeout)
        response = future.result() if answered else None
        if not answered:
            self.clients[kind].remove_pending_request(future)
        return response, answered

    def one(self) -> None:
        from lifecycle_msgs.srv import ChangeState, GetAvailableTransitions, GetState
        from rcl_interfaces.msg import Parameter
        from rcl_interfaces.srv import (
            DescribeParameters,
            GetParameters,
            ListParameters,
            SetParameters,
            SetParametersAtomically,
        )

        rng = self.rng
        r = rng.random()
        if r < 0.3 and self.valid_only and self.k != 0:
            r = 0.3 + rng.random() * 0.7  # one lifecycle client only: no races between query and request
        if r < 0.3:
            req = ChangeState.Request()
            pick = rng.random()
            if self.valid_only:
                avail, ok = self.call("get_available_transitions", GetAvailableTransitions.Request())
                self.stats.add("get_available_transitions", ok)
                ids = [t.transition.id for t in (avail.available_transitions if avail else [])
                       if t.transition.id not in SHUTDOWN]
                if not ids:
                    return
                req.transition.id = rng.choice(ids)
            else:
                req.transition.id = (rng.choice(list(PUBLIC.values())) if pick < 0.6 else
                                     rng.choice(INTERNAL) if pick < 0.8 else
                                     rng.choice([b for b in range(256) if b not in SHUTDOWN]))
            if rng.random() < 0.2:
                req.transition.label = rng.choice(["configure", "activate", "cleanup", "", "bogus"])  # never shutdown
            resp, ok = self.call("change_state", req, max(self.timeout, 120.0))
            self.stats.add("change_state", ok, "" if resp is None else ("ok" if resp.success else "refused"))
        elif r < 0.4:
            resp, ok = self.call("get_state", GetState.Request())
            self.stats.add("get_state", ok)
        elif r < 0.45:
            resp, ok = self.call("get_available_transitions", GetAvailableTransitions.Request())
            self.stats.add("get_available_transitions", ok)
        elif r < 0.85:
            params = []
            for _ in range(rng.choice([0, 1, 1, 1, 2, 3])):
                p = Parameter()
                p.name, p.value = random_name(rng, self.known, self.group_prefix), random_value(rng)
                params.append(p)
            if rng.random() < 0.7:
                resp, ok = self.call("set_parameters", SetParameters.Request(parameters=params))
                self.stats.add("set_parameters", ok, "" if resp is None else
                               ",".join(sorted({"ok" if x.successful else "refused" for x in resp.results})))
            else:
                resp, ok = self.call("set_parameters_atomically", SetParametersAtomically.Request(parameters=params))
                self.stats.add("set_parameters_atomically", ok, "" if resp is None else
                               ("ok" if resp.result.successful else "refused"))
        elif r < 0.92:
            names = [random_name(rng, self.known, self.group_prefix) for _ in range(rng.randrange(4))]
            resp, ok = self.call("get_parameters", GetParameters.Request(names=names))
            self.stats.add("get_parameters", ok)
        elif r < 0.96:
            resp, ok = self.call("list_parameters", ListParameters.Request(depth=rng.choice([0, 1, 5])))
            self.stats.add("list_parameters", ok)
        else:
            names = [random_name(rng, self.known, self.group_prefix) for _ in range(rng.randrange(4))]
            resp, ok = self.call("describe_parameters", DescribeParameters.Request(names=names))
            self.stats.add("describe_parameters", ok)

    def run(self) -> None:
        for c in self.clients.values():
            c.wait_for_service(timeout_sec=30.0)
        while not self.stop.is_set():
            try:
                self.one()
            except Exception as exc:  # a client-side error is a harness bug: say so, keep going
                self.stats.add("client_error", True, type(exc).__name__)


def fuzz(seconds: float, seed: int, clients: int, answer_timeout: float, rss_limit_mb: float,
         weights: str, log_path: Path, valid_only: bool = False, target: Target = TARGETS["segmentation"]) -> dict:
    """Run the node and the clients; returns the results (see the module docstring)."""
    import rclpy
    from lifecycle_msgs.srv import ChangeState, GetState
    from rcl_interfaces.msg import Parameter
    from rcl_interfaces.srv import GetParameters, SetParameters
    from rclpy.context import Context
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data

    table = target.table()
    READ_ONLY = {p.name for p in table if p.read_only}  # noqa: N806 - a constant of this run

    work = Path(tempfile.mkdtemp(prefix="liteseg_fuzz_"))
    params_file = work / "params.yaml"
    params_file.write_text(yaml.safe_dump({"/**": {"ros__parameters": target.start_params(work, weights)}}))
    exe = Path(sys.executable).parent / target.exe
    remaps = [a for r in target.remaps for a in ("-r", r)]
    log = open(log_path, "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(exe), "--ros-args", "-r", f"__node:={target.node}", "--params-file", str(params_file),
                             *remaps], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    ctx = Context()
    rclpy.init(context=ctx, args=["liteseg_fuzz"])
    stats, stop = Stats(), threading.Event()
    executor = MultiThreadedExecutor(num_threads=4, context=ctx)
    main = rclpy.create_node("liteseg_fuzz_main", context=ctx)
    executor.add_node(main)
    labels: list[int] = []  # stamps of the outputs that came back (labels, scans)
    main.create_subscription(target.output_type(), f"/{target.node}/{target.output}",
                             lambda m: labels.append(m.header.stamp.sec), qos_profile_sensor_data)
    send = target.feeder(main)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    result: dict = {"target": target.exe, "seconds": seconds, "seed": seed, "clients": clients}
    peak = 0.0
    frame_no = [0]

    def send_frame() -> None:
        frame_no[0] += 1
        send(frame_no[0])

    def camera() -> None:
        while not stop.is_set():
            send_frame()
            time.sleep(0.1)

    try:
        helper = Client(ctx, 99, seed, Stats(), stop, answer_timeout, [], target=target)
        executor.add_node(helper.node)
        for c in helper.clients.values():
            if not c.wait_for_service(timeout_sec=90.0):
                raise RuntimeError(f"the node offers no {c.srv_name} (exit {proc.poll()}); see {log_path}")
        # a first configure builds (and caches) the engine, so later configures in the random phase are fast
        resp, ok = helper.call("change_state", ChangeState.Request(transition=_transition(1)), 300.0)
        if not (ok and resp.success):
            raise RuntimeError(f"the first configure failed; see {log_path}")
        baseline = rss_mb(proc.pid)
        known = [p.name for p in table]
        start_values, _ok = helper.call("get_parameters", GetParameters.Request(names=known))
        workers = [Client(ctx, k, seed, stats, stop, answer_timeout, known, valid_only, target) for k in range(clients)]
        for w in workers:
            executor.add_node(w.node)
        cam = threading.Thread(target=camera, daemon=True)
        cam.start()
        for w in workers:
            w.start()
        end = time.monotonic() + seconds
        exited_during = None
        while time.monotonic() < end:
            time.sleep(0.5)
            peak = max(peak, rss_mb(proc.pid))
            if proc.poll() is not None:
                exited_during = proc.returncode
                break
        stop.set()
        for w in workers:
            w.join(max(answer_timeout, 120.0) + 5)
        result["exited_during_fuzz"] = exited_during
        node_log = log_path.read_text(errors="replace")
        if exited_during is not None and KNOWN_INVALID_TRANSITION_CRASH in node_log:
            result["known_crash"] = "invalid-transition"
        # refused requests are logged through a throttle: a flood of them must not flood the log
        result["refusal_log_lines"] = node_log.count(REFUSAL_LINE)
        # good frames keep being labelled: bring the node to active, whatever state the fuzz left it in
        labelled = False
        if exited_during is None:
            # the fuzz may have turned outputs off or limits down: put every parameter back as it started
            restore = [Parameter(name=n, value=v) for n, v in zip(known, start_values.values, strict=True)
                       if n not in READ_ONLY]
            resp, ok = helper.call("set_parameters", SetParameters.Request(parameters=restore))
            result["restore_refused"] = ([p.name for p, r in zip(restore, resp.results, strict=True)
                                          if not r.successful] if ok else ["(no answer)"])
            for _ in range(8):
                state, _ok = helper.call("get_state", GetState.Request())
                label = state.current_state.label if state is not None else "?"
                if label == "active":
                    break
                step = {"unconfigured": 1, "inactive": 3}.get(label)
                if step is None:
                    time.sleep(0.5)
                    continue
                helper.call("change_state", ChangeState.Request(transition=_transition(step)), 300.0)
            labels.clear()
            stop.clear()
            cam = threading.Thread(target=camera, daemon=True)
            cam.start()
            t0 = time.monotonic()
            while time.monotonic() - t0 < 60 and len(labels) < 3:
                time.sleep(0.2)
            labelled = len(labels) >= 3
            stop.set()
            peak = max(peak, rss_mb(proc.pid))
            # the final request: a shutdown transition from the current state ends the node with exit 0
            state, _ok = helper.call("get_state", GetState.Request())
            label = state.current_state.label if state is not None else "?"
            sd = {"unconfigured": 5, "inactive": 6, "active": 7}.get(label, 7)
            resp, ok = helper.call("change_state", ChangeState.Request(transition=_transition(sd)), 60.0)
            stats.add("change_state(shutdown)", ok)
            try:
                result["exit_after_shutdown"] = proc.wait(30)
            except subprocess.TimeoutExpired:
                result["exit_after_shutdown"] = None
        # faults inside the node, over the whole run (the fuzz, the return to active, the shutdown)
        internal = [line for line in log_path.read_text(errors="replace").splitlines()
                    if any(w in line for w in INTERNAL_ERROR_LINES)]
        result["internal_error_lines"], result["internal_error_example"] = len(internal), internal[:1]
        result.update(tried=dict(stats.tried), unanswered=dict(stats.unanswered), outcomes=dict(stats.outcomes),
                      labelled_after=labelled, rss_baseline_mb=round(baseline, 1), rss_peak_mb=round(peak, 1),
                      rss_limit_mb=rss_limit_mb)
    finally:
        stop.set()
        stop_child(proc)
        log.close()
        executor.shutdown(timeout_sec=2.0)
        rclpy.try_shutdown(context=ctx)
    return result


def _transition(tid: int):
    from lifecycle_msgs.msg import Transition

    t = Transition()
    t.id = tid
    return t


def violations(res: dict) -> list[str]:
    """The invariants a run broke (empty: none)."""
    out = []
    if res.get("known_crash") == "invalid-transition":
        out.append(f"KNOWN_INVALID_TRANSITION_CRASH: the node exited (status {res['exited_during_fuzz']}) on a "
                   f"lifecycle transition that is not valid from its state (rclpy: 'Transition is not registered')")
        return out  # everything after it follows from the exit
    if res.get("exited_during_fuzz") is not None:
        out.append(f"the node exited during the fuzz (status {res['exited_during_fuzz']})")
    if res.get("unanswered"):
        out.append(f"unanswered requests: {res['unanswered']}")
    if res.get("restore_refused"):
        out.append(f"the starting parameter values could not be set back: {res['restore_refused']}")
    if not res.get("labelled_after"):
        out.append("good frames were not labelled after the fuzz")
    growth = res.get("rss_peak_mb", 0) - res.get("rss_baseline_mb", 0)
    if growth > res.get("rss_limit_mb", float("inf")):
        out.append(f"RSS grew {growth:.0f} MB after the first configure, over the {res['rss_limit_mb']} MB limit")
    most = res.get("seconds", 0) / REFUSAL_LOG_PERIOD_S + 5
    if res.get("refusal_log_lines", 0) > most:
        out.append(f"{res['refusal_log_lines']} refusal lines in the node's log in {res.get('seconds')} s: the "
                   f"throttle allows one per {REFUSAL_LOG_PERIOD_S:g} s")
    if res.get("internal_error_lines"):
        out.append(f"{res['internal_error_lines']} lines of faults inside the node, e.g. "
                   f"{(res.get('internal_error_example') or ['?'])[0][:200]!r}")
    if res.get("exit_after_shutdown") != 0:
        out.append(f"the shutdown transition ended the node with status {res.get('exit_after_shutdown')}, not 0")
    if res.get("outcomes", {}).get("client_error"):
        out.append("client-side errors (a harness bug)")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the random phase (default 10)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clients", type=int, default=3, help="concurrent client nodes (default 3)")
    ap.add_argument("--answer-timeout", type=float, default=20.0, help="seconds a request may wait for its answer")
    ap.add_argument("--rss-limit-mb", type=float, default=400.0,
                    help="most the node's RSS may grow past its size after the first configure (default 400)")
    ap.add_argument("--valid-transitions-only", action="store_true",
                    help="one client sends lifecycle requests, only transitions valid from the current state")
    ap.add_argument("--target", choices=sorted(TARGETS), default="segmentation",
                    help="the node to fuzz: segmentation (liteseg_node, default) or free_space (liteseg_free_space)")
    ap.add_argument("--weights", default="demo", help="the segmentation node's weights (default: the bundled demo model)")
    ap.add_argument("--json", type=Path, help="also write the results and violations here")
    ap.add_argument("--log", type=Path, default=Path(tempfile.gettempdir()) / "liteseg_fuzz_node.log",
                    help="the node's output")
    args = ap.parse_args(argv)
    res = fuzz(args.seconds, args.seed, args.clients, args.answer_timeout, args.rss_limit_mb, args.weights, args.log,
               args.valid_transitions_only, TARGETS[args.target])
    bad = violations(res)
    total = sum(res["tried"].values())
    res.setdefault("exit_after_shutdown", None)
    print(f"node fuzz ({res['target']}): {total} requests in {args.seconds:g} s ({', '.join(f'{k} {v}' for k, v in sorted(res['tried'].items()))}); "
          f"unanswered {sum(res['unanswered'].values())}; node exited during fuzz: {res['exited_during_fuzz']}; "
          f"labelled after: {res['labelled_after']}; RSS {res['rss_baseline_mb']} -> peak {res['rss_peak_mb']} MB; "
          f"refusal log lines: {res.get('refusal_log_lines')}; internal error lines: {res.get('internal_error_lines')}; "
          f"exit after shutdown: {res['exit_after_shutdown']}; "
          f"violations: {len(bad)}")
    print("outcomes:", dict(sorted(res["outcomes"].items())))
    for b in bad:
        print("VIOLATION:", b)
    if args.json:
        args.json.write_text(json.dumps({**res, "violations": bad}, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
