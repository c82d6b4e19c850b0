"""The surfaces ROS tools touch, walked by enumeration: lifecycle requests, parameter round trips, params files.

A lifecycle manager (Nav2's, or a script) sends raw ``ChangeState`` requests, in any state; ``ros2
param dump`` writes files users load back; launch_ros writes list parameters with ``!!python/tuple``.
Each test drives the real node process over real DDS with the request or file those tools produce,
and checks it is answered and the node lives on. The expected lifecycle answers come from the ROS 2
lifecycle design (written out below), not from the node.
"""
from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest
import yaml
from conftest import Lifecycle, NodeProcess, RosWorkspace, ros_env
from lifecycle_msgs.msg import Transition

from liteseg_ros import node_guards, params

pytestmark = pytest.mark.ros

NET = {"network_width": 96, "network_height": 64}
T = Transition
#: The primary states' transitions, from the ROS 2 managed-node design: id -> the state it leads to.
#: Every other id (CREATE, DESTROY, the ON_* and CALLBACK_* results, an unknown number) must be refused.
ALLOWED = {
    "unconfigured": {T.TRANSITION_CONFIGURE: "inactive", T.TRANSITION_UNCONFIGURED_SHUTDOWN: "finalized"},
    "inactive": {T.TRANSITION_CLEANUP: "unconfigured", T.TRANSITION_ACTIVATE: "active",
                 T.TRANSITION_INACTIVE_SHUTDOWN: "finalized"},
    "active": {T.TRANSITION_DEACTIVATE: "inactive", T.TRANSITION_ACTIVE_SHUTDOWN: "finalized"},
}
ALL_IDS = sorted({v for k, v in vars(Transition).items() if k.startswith("TRANSITION_") and isinstance(v, int)})
UNKNOWN_IDS = (9, 200)  # not transitions at all
LABELS = ("configure", "cleanup", "activate", "deactivate", "shutdown", "no_such_transition")
LABEL_ALLOWED = {"unconfigured": {"configure", "shutdown"}, "inactive": {"cleanup", "activate", "shutdown"},
                 "active": {"deactivate", "shutdown"}}


def _node_params(tiny_checkpoint, **extra) -> dict:
    return {"weights": str(tiny_checkpoint), "backend": "pytorch", "precision": "fp32", **NET, **extra}


def test_a_lifecycle_manager_drives_an_autostarted_node(start_node, ros, tiny_checkpoint):
    """What Nav2's lifecycle manager does to a node that autostarted: requests the state does not allow
    are answered success=False and the node keeps serving; then a full reset cycle and shutdown."""
    node = start_node(_node_params(tiny_checkpoint), name="lc_manager")
    ros.wait_for(lambda: "active: segmenting" in node.output(), 120, "the autostarted node")
    lc = Lifecycle(ros, "lc_manager")
    steps = [("configure", T.TRANSITION_CONFIGURE, False, "active"),  # already configured: refused
             ("activate", T.TRANSITION_ACTIVATE, False, "active"),  # already active: refused
             ("deactivate", T.TRANSITION_DEACTIVATE, True, "inactive"),
             ("cleanup", T.TRANSITION_CLEANUP, True, "unconfigured"),
             ("activate", T.TRANSITION_ACTIVATE, False, "unconfigured"),  # not configured: refused
             ("configure", T.TRANSITION_CONFIGURE, True, "inactive"),
             ("activate", T.TRANSITION_ACTIVATE, True, "active")]
    for what, tid, ok, state in steps:
        assert lc.set(tid) is ok, (what, node.output()[-3000:])
        assert lc.state() == state, what
        assert node.alive(), node.output()[-3000:]
    assert lc.set(T.TRANSITION_ACTIVE_SHUTDOWN) is True
    node.proc.wait(30)
    assert node.proc.returncode == 0, node.output()[-3000:]
    out = node.output()
    assert "'configure' is not allowed in state active" not in out  # ids are named by number, not label
    # the first refusal is logged; the ones within 5 s after it are held back and counted in the next line
    assert "request 1 is not allowed in state active" in out and "answered success=False" in out
    assert "Traceback" not in out and "shut down (finalized): exiting" in out


def test_every_transition_id_from_every_state_is_answered(start_node, ros, tiny_checkpoint):
    """Every Transition id (and each label) from each primary state through the raw service: the allowed
    ones move the node where the lifecycle design says, every other one is refused, and the node lives.
    The three shutdown transitions each end a node, so three nodes take one each."""
    names = ("lc_enum", "lc_enum_u", "lc_enum_i")
    nodes = {n: start_node(_node_params(tiny_checkpoint, autostart=False), name=n) for n in names}
    clients = {n: Lifecycle(ros, n) for n in names}
    lc, node = clients["lc_enum"], nodes["lc_enum"]
    assert lc.state() == "unconfigured"

    def refuse_all_but_allowed(state: str) -> None:
        for tid in [*ALL_IDS, *UNKNOWN_IDS]:
            if tid in ALLOWED[state]:
                continue
            assert lc.set(tid) is False, (state, tid)
            assert lc.state() == state, (state, tid)
        for label in LABELS:
            if label not in LABEL_ALLOWED[state]:
                assert lc.set(label=label) is False, (state, label)
        assert node.alive(), node.output()[-3000:]

    refuse_all_but_allowed("unconfigured")
    assert lc.set(T.TRANSITION_CONFIGURE) and lc.state() == "inactive"
    refuse_all_but_allowed("inactive")
    assert lc.set(T.TRANSITION_CLEANUP) and lc.state() == "unconfigured"
    assert lc.set(label="configure") and lc.state() == "inactive"
    assert lc.set(T.TRANSITION_ACTIVATE) and lc.state() == "active"
    refuse_all_but_allowed("active")
    assert lc.set(T.TRANSITION_DEACTIVATE) and lc.state() == "inactive"
    assert lc.set(label="activate") and lc.state() == "active"
    assert lc.set(T.TRANSITION_ACTIVE_SHUTDOWN) is True
    # the other two shutdowns, each from its own state, on its own node
    u, i = clients["lc_enum_u"], clients["lc_enum_i"]
    assert u.set(T.TRANSITION_INACTIVE_SHUTDOWN) is False and u.set(T.TRANSITION_UNCONFIGURED_SHUTDOWN) is True
    assert i.set(T.TRANSITION_CONFIGURE) is True
    assert i.set(T.TRANSITION_UNCONFIGURED_SHUTDOWN) is False and i.set(T.TRANSITION_INACTIVE_SHUTDOWN) is True
    for name, p in nodes.items():
        assert p.proc.wait(30) == 0, (name, p.output()[-3000:])
        assert "Traceback" not in p.output() and "shut down (finalized)" in p.output(), name
    total = sum(c.requests for c in clients.values())
    print(f"\n[lifecycle] {total} ChangeState requests answered over 3 nodes")
    assert total >= 3 * len(ALL_IDS)


# ------------------------------------------------------------------------------------------ parameters
def non_default_values(weights: str, cache_dir: str) -> dict:
    """A value other than the default for every parameter of the table, derived from it (so a new
    parameter is round-tripped without editing this test); build_only stays false (the node would exit)."""
    out: dict = {}
    for spec in params.PARAMS:
        d, kind = spec.default, spec.type_name
        if spec.name == "build_only":
            continue
        if kind == "bool":
            v = not d
        elif spec.choices:
            v = next(c for c in reversed(spec.choices) if c != d and c not in ("tensorrt", "openvino", "fp16"))
        elif kind == "int":
            v = int(spec.min) if int(spec.min) != d else int(spec.max)
        elif kind == "float":
            v = round(spec.min + 0.3 * (spec.max - spec.min), 6)
            v = v if v != d else round(spec.min + 0.7 * (spec.max - spec.min), 6)
        elif kind == "string[]":
            v = ["front", "left"]
        else:
            v = {"weights": weights, "device": "cpu", "engine_cache_dir": cache_dir}[spec.name]
        out[spec.name] = params.check_value(spec.name, v)
    out["network_width"], out["network_height"] = 96, 64  # small, yet not the defaults
    out["mask_groups"] = {"drivable": ["road", "sidewalk"], "sky_only": ["sky"]}
    return out


def _dump(ros_ws, node: str) -> dict:
    def parsed(out: str) -> dict:
        try:
            doc = yaml.safe_load(out)
        except yaml.YAMLError:
            return {}
        return doc if isinstance(doc, dict) else {}

    out = ros_ws.eventually(f"ros2 param dump --no-daemon --spin-time 3 {node}",
                            lambda text: "ros__parameters" in text, timeout=60)
    doc = parsed(out)
    assert node in doc, out
    return doc[node]["ros__parameters"]


def test_ros2_param_dump_loads_back_with_every_parameter(ros_ws, tiny_checkpoint, tmp_path):
    """`ros2 param dump` -> `--params-file` -> the same values, for the defaults (`cameras: []`) and for a
    value other than the default in every parameter."""
    cases = {"rt_defaults": {"autostart": False},
             "rt_changed": non_default_values(str(tiny_checkpoint), str(tmp_path / "cache"))}
    for name, values in cases.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({"/**": {"ros__parameters": values}}))
    first = {n: ros_ws.start(f"liteseg_node --ros-args -r __node:={n} --params-file {tmp_path / n}.yaml",
                             tmp_path / f"{n}_a.log") for n in cases}
    dumps = {}
    try:
        for n in cases:
            dumps[n] = _dump(ros_ws, f"/{n}")
            (tmp_path / f"{n}_dump.yaml").write_text(yaml.safe_dump({f"/{n}": {"ros__parameters": dumps[n]}}))
    finally:
        for p in first.values():
            p.signal_group(2)
    assert dumps["rt_defaults"]["cameras"] == []
    flat = params.flatten(dumps["rt_changed"])
    for key, value in params.flatten(cases["rt_changed"]).items():
        assert flat[key] == value, key
    assert {k for k in flat if not params.is_ros_builtin(k)} == set(params.flatten(cases["rt_changed"])) | {
        "build_only"}
    second = {n: ros_ws.start(f"liteseg_node --ros-args -r __node:={n} --params-file {tmp_path / n}_dump.yaml",
                              tmp_path / f"{n}_b.log") for n in cases}
    try:
        for n in cases:
            assert _dump(ros_ws, f"/{n}") == dumps[n], (n, second[n].output()[-3000:])
            assert second[n].proc.poll() is None, second[n].output()[-3000:]
    finally:
        codes = {n: p.signal_group(2) for n, p in second.items()}
    assert codes == {n: 0 for n in cases}, {n: p.output()[-2000:] for n, p in second.items()}
    print(f"\n[params] {len(flat)} parameters round-tripped through ros2 param dump")


def test_params_files_launch_ros_writes_and_list_parameters(ros_ws, launch_params, tmp_path):
    """The README's multi-camera line (launch_ros writes `cameras` as !!python/tuple), and a user's own
    launch file with a list parameter, both start the node. (An empty list cannot come from a launch
    file: launch_ros itself refuses `[]`; test_ros2_param_dump_loads_back_with_every_parameter loads one
    from YAML.)"""
    weights = yaml.safe_load(launch_params.read_text())["/**"]["ros__parameters"]["weights"]
    user_launch = tmp_path / "mine.launch.py"
    user_launch.write_text(
        "from launch import LaunchDescription\nfrom launch_ros.actions import LifecycleNode\n"
        "def generate_launch_description():\n"
        "    return LaunchDescription([LifecycleNode(package='liteseg_ros', executable='liteseg_node', "
        f"name='mine', namespace='', output='screen', parameters=[{str(launch_params)!r}, "
        "{'autostart': False, 'mask_groups.drivable': ['road', 'sidewalk']}])])\n")
    # launched from a shell that names no Fast DDS profile: the launch gives its processes the shipped one
    plain = RosWorkspace(ros_ws.root, {k: v for k, v in ros_ws.env.items() if k not in node_guards.PROFILE_VARIABLES})
    multi = plain.start(f"ros2 launch liteseg_ros segment.launch.py weights:={weights} cameras:=front,left "
                        f"params_file:={launch_params}", tmp_path / "multi.log")
    mine = ros_ws.start(f"ros2 launch {user_launch}", tmp_path / "mine.log")
    try:
        multi.wait_for_output("active: segmenting /front/image, /left/image", 180)
        got = ros_ws.eventually("ros2 param get --no-daemon --spin-time 3 /mine mask_groups.drivable",
                                lambda out: "String values are" in out)
        assert "['road', 'sidewalk']" in got, (got, mine.output()[-3000:])
        assert "'front', 'left'" in ros_ws.run("ros2 param get --no-daemon --spin-time 3 /liteseg cameras").stdout
        pid = int(re.search(r"liteseg_node-1\]: process started with pid \[(\d+)\]", multi.output())[1])
        environ = dict(kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv)
        assert environ[node_guards.profile_variable()].endswith("config/fastdds_large_shm.xml"), environ
        assert [v for v in node_guards.PROFILE_VARIABLES if v in environ] == [node_guards.profile_variable()]
    finally:
        codes = [multi.signal_group(2), mine.signal_group(2)]
    for p in (multi, mine):
        assert "Traceback" not in p.output() and "is not valid YAML" not in p.output(), p.output()[-3000:]
    assert codes == [0, 0], (multi.output()[-2000:], mine.output()[-2000:])


@pytest.fixture(scope="module")
def launch_params(tiny_checkpoint, tmp_path_factory):
    """The shipped params file with the test's weights and a small network (as test_launch.py's)."""
    from test_launch import REPO

    shipped = yaml.safe_load((REPO / "config" / "liteseg.yaml").read_text())
    tmp = tmp_path_factory.mktemp("surfaces")
    shipped["/**"]["ros__parameters"].update(weights=str(tiny_checkpoint), backend="pytorch", precision="fp32",
                                             engine_cache_dir=str(tmp / "cache"), **NET)
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(shipped))
    return path



def test_camera_info_follows_the_image_remap(start_node, ros, tiny_checkpoint, tmp_path):
    """image_transport's convention: the camera_info beside the remapped image; an explicit remap wins."""
    # started from a shell that names no Fast DDS profile: the node takes the shipped one and says so
    pf = tmp_path / "ci.yaml"
    pf.write_text(yaml.safe_dump({"/**": {"ros__parameters": _node_params(tiny_checkpoint)}}))
    env = {k: v for k, v in ros_env().items() if k not in node_guards.PROFILE_VARIABLES}
    sibling = NodeProcess(["--ros-args", "-r", "__node:=ci_sibling", "--params-file", str(pf), "-r",
                           "image:=/cam_a/image_raw"], env=env, log_path=tmp_path / "ci_sibling.log")
    start_node(_node_params(tiny_checkpoint), name="ci_explicit",
               extra_args=["-r", "image:=/cam_b/image_raw", "-r", "camera_info:=/elsewhere/info"])

    def subscribers(topic: str) -> set[str]:
        return {i.node_name for i in ros.node.get_subscriptions_info_by_topic(topic)}

    ros.wait_for(lambda: "ci_sibling" in subscribers("/cam_a/camera_info")
                 and "ci_explicit" in subscribers("/elsewhere/info"), 120, "camera_info subscriptions")
    assert "ci_sibling" in subscribers("/cam_a/image_raw") and "ci_explicit" in subscribers("/cam_b/image_raw")
    assert not subscribers("/camera_info") & {"ci_sibling", "ci_explicit"}
    assert "ci_explicit" not in subscribers("/cam_b/camera_info")
    assert "this node uses the shipped Fast DDS profile" in sibling.output()
    assert sibling.stop() == 0, sibling.output()[-3000:]


def test_a_live_set_accepts_what_a_params_file_accepts(ros_ws, tiny_checkpoint, tmp_path):
    """`ros2 param set` with the forms a params file may use: an integer for every live float parameter,
    one class name for a mask group; the node stores them in the declared type."""
    pf = tmp_path / "live.yaml"
    pf.write_text(yaml.safe_dump({"/**": {"ros__parameters": _node_params(tiny_checkpoint, autostart=False)}}))
    node = ros_ws.start(f"liteseg_node --ros-args -r __node:=live_forms --params-file {pf}", tmp_path / "node.log")
    live_floats = [p for p in params.PARAMS if p.type_name == "float" and not p.read_only]
    try:
        for spec in live_floats:
            value = int(spec.max) if int(spec.max) != spec.default else int(spec.min)
            done = ros_ws.eventually(f"ros2 param set --no-daemon --spin-time 3 /live_forms {spec.name} {value}",
                                     lambda out: "Set parameter" in out, timeout=60)
            assert "Set parameter successful" in done, (spec.name, done)
        done = ros_ws.run("ros2 param set --no-daemon --spin-time 3 /live_forms mask_groups.drivable sidewalk")
        assert "Set parameter successful" in done.stdout, done
        values = _dump(ros_ws, "/live_forms")
        # every other live parameter at once, from a file (`ros2 param load`), in file forms
        changed = {k: v for k, v in non_default_values(str(tiny_checkpoint), "").items()
                   if k in params.PARAMS_BY_NAME and not params.PARAMS_BY_NAME[k].read_only
                   and params.PARAMS_BY_NAME[k].type_name != "float"}
        changed["mask_groups"] = {"drivable": "road", "walkable": ["sidewalk", "terrain"]}
        load = tmp_path / "load.yaml"
        load.write_text(yaml.safe_dump({"/live_forms": {"ros__parameters": changed}}))
        done = ros_ws.run(f"ros2 param load --no-daemon --spin-time 3 /live_forms {load}")
        assert done.returncode == 0 and "Failed" not in done.stdout, done
        after = params.flatten(_dump(ros_ws, "/live_forms"))
    finally:
        code = node.signal_group(2)
    for spec in live_floats:
        assert isinstance(values[spec.name], float), spec.name
    assert values["mask_groups"]["drivable"] == ["sidewalk"]
    for key, value in changed.items():
        if key != "mask_groups":
            assert after[key] == value, key
    assert after["mask_groups.drivable"] == ["road"] and after["mask_groups.walkable"] == ["sidewalk", "terrain"]
    assert code == 0, node.output()[-3000:]


def test_rviz_gets_the_resolved_topics():
    """namespace:=robot1 node_name:=seg: the view RViz is given names /robot1/seg/..., not /liteseg/..."""
    import importlib.util

    from liteseg_ros import share

    spec = importlib.util.spec_from_file_location("segment_launch", share.share_file("launch/segment.launch.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    shipped = Path(mod.rviz_config("", "liteseg")).read_text()
    moved = Path(mod.rviz_config("/robot1", "seg")).read_text()
    topics = re.findall(r"Value: (/liteseg/\S+)", shipped)
    assert topics and not re.findall(r"Value: /liteseg/", moved)
    assert re.findall(r"Value: (/robot1/seg/\S+)", moved) == [t.replace("/liteseg/", "/robot1/seg/") for t in topics]


#: Launch argument forms (README "Running the node"), each run through the real `ros2 launch`, several
#: at once: (arguments, node, parameters the node must hold, input topics it must subscribe).
LAUNCH_FORMS = [
    ("namespace:=robot1 node_name:=seg image:=/cam/image_raw", "/robot1/seg", {},
     ["/cam/image_raw", "/cam/camera_info"]),
    ("namespace:=/robot2 image:=front/image_raw camera_info:=/calib/info use_sim_time:=true log_level:=warn",
     "/robot2/liteseg", {"use_sim_time": True}, ["/robot2/front/image_raw", "/calib/info"]),
    ("node_name:=seg3 cameras:=front,left autostart:=true network_width:=64 network_height:=64 backend:=pytorch "
     "device:=cpu precision:=fp32 rviz:=false log_level:=debug",
     "/seg3", {"cameras": ["front", "left"], "network_width": 64, "device": "cpu", "precision": "fp32"},
     ["/front/image", "/left/image", "/front/camera_info"]),
    ("namespace:=r4 cameras:=front autostart:=false weights:=demo use_sim_time:=false", "/r4/liteseg",
     {"autostart": False, "weights": "demo", "cameras": ["front"], "use_sim_time": False}, []),
]


def _running(pid: int) -> bool:
    """A process that has not ended (a zombie nobody reaped yet has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_launch_argument_forms(ros_ws, ros, launch_params, tmp_path):
    launches = [ros_ws.start(f"ros2 launch liteseg_ros segment.launch.py params_file:={launch_params} {args}",
                             tmp_path / f"launch_{k}.log") for k, (args, *_) in enumerate(LAUNCH_FORMS)]

    def subscribers(topic: str) -> set[str]:
        return {f"{i.node_namespace.rstrip('/')}/{i.node_name}" for i in ros.node.get_subscriptions_info_by_topic(topic)}

    try:
        for launch, (args, node, wanted, topics) in zip(launches, LAUNCH_FORMS, strict=True):
            values = params.flatten(_dump(ros_ws, node))
            for key, value in wanted.items():
                assert values[key] == value, (args, key, values[key])
            ros.wait_for(lambda node=node, topics=topics: all(node in subscribers(t) for t in topics), 120,
                         f"{node} subscribed to {topics}: {launch.output()[-2000:]}")
            assert launch.proc.poll() is None, launch.output()[-3000:]
        assert "[DEBUG]" in launches[2].output()  # log_level:=debug
        assert not [line for line in launches[1].output().splitlines() if "[INFO]" in line and "robot2.liteseg" in line]
        # README: SIGTERM to `ros2 launch` alone ends it with 143 and leaves the node running (upstream
        # behaviour); SIGTERM to the node ends the node.
        last = launches.pop()
        node_pid = int(re.search(r"process started with pid \[(\d+)\]", last.output())[1])
        os.kill(last.proc.pid, signal.SIGTERM)
        assert last.wait(60) in (143, -signal.SIGTERM), last.output()[-2000:]
        assert _running(node_pid), "the node ended with the launch: update the README"
        os.kill(node_pid, signal.SIGTERM)
        end = time.monotonic() + 30
        while _running(node_pid) and time.monotonic() < end:
            time.sleep(0.1)
        assert not _running(node_pid)
    finally:
        codes = [launch.signal_group(2) for launch in launches]
    assert codes == [0] * len(launches), [launch.output()[-1500:] for launch in launches]
    print(f"\n[launch] {len(LAUNCH_FORMS)} launches, {sum(len(a.split()) for a, *_ in LAUNCH_FORMS)} argument forms")


def test_a_device_or_precision_fallback_is_a_warning(start_node, tiny_checkpoint):
    """device cuda and precision fp16 on a machine without CUDA run on the CPU in fp32: said at WARN."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here: nothing falls back")
    node = start_node(_node_params(tiny_checkpoint, device="cuda", precision="fp16", backend="auto",
                                   build_only=True), name="fallback")
    assert node.proc.wait(180) == 0, node.output()[-3000:]
    out = node.output()
    for line in ("device cuda requested but the engine runs cpu", "precision fp16 requested but the engine runs fp32"):
        assert any("[WARN]" in x and line in x for x in out.splitlines()), (line, out[-3000:])


#: Each launch argument alone (beside the params file that carries the test's weights): the value given and
#: what shows it took effect: ("param", key, value) in `ros2 param dump`, ("node", name) the node's full
#: name, ("sub", topic) a topic the node subscribes, ("log", regex) a line of the launch's output.
ALONE = {
    "image": ("/alone/image", ("sub", "/alone/image")),
    "camera_info": ("/alone/info", ("sub", "/alone/info")),
    "namespace": ("alone", ("node", "/alone/liteseg")),
    "node_name": ("alone", ("node", "/alone")),
    "use_sim_time": ("true", ("param", "use_sim_time", True)),
    "log_level": ("debug", ("log", r"\[DEBUG\]")),
    "cameras": ("front,left", ("param", "cameras", ["front", "left"])),
    "rviz": ("true", ("log", r"rviz2 is not installed|\[rviz2-\d+\]")),
    "free_space": ("true", ("log", r"active: \S+ \+ ")),
    "weights": ("demo", ("param", "weights", "demo")),
    "autostart": ("false", ("param", "autostart", False)),
    "backend": ("pytorch", ("param", "backend", "pytorch")),
    "device": ("cpu", ("param", "device", "cpu")),
    "precision": ("auto", ("param", "precision", "auto")),  # the params file says fp32
    "network_width": ("128", ("param", "network_width", 128)),  # the params file says 96
    "network_height": ("96", ("param", "network_height", 96)),  # the params file says 64
}
#: Arguments not launched alone, and why.
NOT_ALONE = {
    "params_file": "every launch here carries it (the test's weights); its own tests are in test_launch.py",
    "bag": "needs `ros2 bag`: test_launch.py checks the launch says how to replay without it",
    "base_frame": "read only by the free-space node (free_space:=true): test_free_space_node.py",
}


def test_each_launch_argument_alone(ros_ws, launch_params, tmp_path):
    """Every argument `--show-args` lists, alone, through the real `ros2 launch`: it takes effect. Each launch
    has its own ROS_DOMAIN_ID, so they run at once without sharing a graph (same node names)."""
    shown = ros_ws.run("ros2 launch liteseg_ros segment.launch.py --show-args")
    names = re.findall(r"^\s*'(\w+)':", shown.stdout, re.M)
    assert names and set(names) == set(ALONE) | set(NOT_ALONE), (sorted(names), shown.stdout[-2000:])
    base = int(os.environ["ROS_DOMAIN_ID"])
    items = list(ALONE.items())
    for start in range(0, len(items), 4):  # four launches at a time on a small machine
        batch = items[start:start + 4]
        runs = []
        for k, (name, (value, _)) in enumerate(batch):
            ws = RosWorkspace(ros_ws.root, dict(ros_ws.env, ROS_DOMAIN_ID=str(101 + (base + start + k) % 130)))
            runs.append((name, ws, ws.start(f"ros2 launch liteseg_ros segment.launch.py "
                                            f"params_file:={launch_params} {name}:={value}",
                                            tmp_path / f"alone_{name}.log")))
        try:
            for name, ws, launch in runs:
                kind, *what = ALONE[name][1]
                node = what[0] if kind == "node" else "/liteseg"
                if kind == "log":
                    end = time.monotonic() + 120
                    while not re.search(what[0], launch.output()) and time.monotonic() < end:
                        time.sleep(0.2)
                    assert re.search(what[0], launch.output()), (name, launch.output()[-3000:])
                elif kind == "sub":
                    out = ws.eventually(f"ros2 node info --no-daemon --spin-time 3 {node}",
                                        lambda text, t=what[0]: f"{t}: sensor_msgs/msg" in text, timeout=120)
                    assert f"{what[0]}: sensor_msgs/msg" in out, (name, out, launch.output()[-2000:])
                else:
                    values = params.flatten(_dump(ws, node))
                    if kind == "param":
                        assert values[what[0]] == what[1], (name, values[what[0]])
                assert launch.proc.poll() is None, (name, launch.output()[-3000:])
        finally:
            codes = {name: launch.signal_group(signal.SIGINT) for name, _, launch in runs}
        assert codes == {name: 0 for name, *_ in runs}, [launch.output()[-1500:] for *_, launch in runs]
    print(f"\n[launch] {len(ALONE)} arguments launched alone; not alone: {', '.join(NOT_ALONE)}")
