"""What keeps the node alive and starting the way ROS tools drive it: params files, lifecycle requests, DDS.

Ring 3 (ROS edge). The node (``liteseg_ros.node``) stays about moving messages; this module holds the
rules that come from the tools around it, each learned from a tool that broke the node:

- params files are parsed by rcl only (what launch_ros writes has ``!!python/tuple`` tags a second
  YAML reader refuses); the node checks that each file exists and is readable, and says in one line
  which file rcl could not parse;
- an empty list (``cameras: []``, as ``ros2 param dump`` writes it) reaches Python as "no value":
  for a list parameter that is the empty list;
- a live parameter change accepts the forms a params file accepts;
- a ``ChangeState`` request the current state does not allow (what a lifecycle manager sends to a
  node that autostarted) is answered ``success=False`` instead of raising inside rclpy; every node
  gets that rule and the next one from :class:`GuardedLifecycleNode`;
- an exception in any callback is logged once and the node goes on serving;
- the node's own DDS participant uses the shipped Fast DDS profile unless the user chose one.
"""
from __future__ import annotations

import os
import re
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rclpy.lifecycle import LifecycleNode

from liteseg_ros import params
from liteseg_ros.defaults import (
    FASTDDS_PROFILE_VARIABLES,
    fastdds_profile_variable,
    fastdds_profile_variable_for,
)
from liteseg_ros.share import share_dir
from liteseg_ros.throttle import ThrottledLog

# ------------------------------------------------------------------------------------------ params files


def params_files(argv: list[str]) -> list[str]:
    """The ``--params-file`` arguments inside ``--ros-args`` sections, in order."""
    out, in_ros_args = [], False
    for i, arg in enumerate(argv):
        if arg == "--ros-args":
            in_ros_args = True
        elif arg == "--":
            in_ros_args = False
        elif in_ros_args and arg == "--params-file" and i + 1 < len(argv):
            out.append(argv[i + 1])
    return out


def params_file_problem(argv: list[str]) -> str | None:
    """A ``--params-file`` that does not exist or cannot be read, said in one line naming it.

    Only existence and readability: parsing is rcl's job, and a second parser would refuse files rcl
    accepts (launch_ros writes list parameters as ``!!python/tuple``, which ``yaml.safe_load`` refuses).
    """
    for name in params_files(argv):
        path = Path(name)
        if not path.is_file():
            return f"params file {name} does not exist"
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            return f"params file {name} cannot be read: {exc.strerror or exc}"
    return None


_RCL_PARAMS_ERROR = re.compile(r"Couldn't parse params file: '--params-file (?P<path>.*?)'\. Error: (?P<why>.*?)"
                               r"(?:, at [^,]*\.c:\d+)*$")


def rcl_init_problem(exc: BaseException) -> str:
    """rcl's start-up error as one line; a params file rcl could not parse is named with rcl's reason."""
    text = " ".join(str(exc).split())
    m = _RCL_PARAMS_ERROR.search(text)
    if m:
        return f"params file {m['path']} is not a valid ROS params file (as rcl reads it): {m['why']}"
    return f"cannot start: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"


def given_value(name: str, value: Any) -> Any:
    """A value as rcl parsed it, in the form ``params.validate`` expects.

    rcl reads an empty YAML list (``cameras: []``, which ``ros2 param dump`` writes) as a parameter
    with no value and no type; for a list parameter that is the empty list, so whatever the node
    dumps, it loads.
    """
    if value is None:
        spec = params.PARAMS_BY_NAME.get(name)
        if name.startswith(params.MASK_GROUPS_PREFIX) or (spec is not None and spec.type_name == "string[]"):
            return []
    if isinstance(value, tuple):
        return list(value)
    return value


def file_forms(changes: list, declared: Callable[[str], Any]) -> list:
    """A live ``ros2 param set`` accepts what a params file accepts (an rclpy pre-set callback).

    ``ros2 param set /liteseg overlay_alpha 1`` sends an integer and ``mask_groups.drivable road`` one
    string; rclpy refuses both against the declared double and string-array types before our
    validation runs, although a params file may say either. They are converted to the declared type
    here, then validated like every other change. ``declared(name)`` gives a parameter's declared
    ``Parameter.Type`` (None when undeclared); a new ``mask_groups.<group>`` (not declared yet) is a
    list of class names too.
    """
    from rclpy.parameter import Parameter

    out = []
    for p in changes:
        want = declared(p.name)
        if want == Parameter.Type.DOUBLE and p.type_ == Parameter.Type.INTEGER:
            p = Parameter(p.name, Parameter.Type.DOUBLE, float(p.value))
        elif p.type_ == Parameter.Type.STRING and (want == Parameter.Type.STRING_ARRAY
                                                   or p.name.startswith(params.MASK_GROUPS_PREFIX)):
            p = Parameter(p.name, Parameter.Type.STRING_ARRAY, [p.value])
        out.append(p)
    return out


# ------------------------------------------------------------------------------------------ lifecycle


def rcl_log(logger: Any, severity: str) -> Callable[[str], None]:
    """One severity of an rclpy logger as a plain ``log(text)`` function, for :class:`ThrottledLog`.

    rclpy remembers the severity (and throttle settings) of each source line that calls a logger and
    raises ValueError when that line calls it with another ("Logger severity cannot be changed between
    calls"). The throttle calls every log function from its one line, so handing it ``logger.error``
    in one place and ``logger.warning`` in another raises inside whatever callback logs second; here
    each severity is called from its own line.
    """
    if severity == "error":
        return lambda text: logger.error(text)
    if severity == "warning":
        return lambda text: logger.warning(text)
    if severity == "info":
        return lambda text: logger.info(text)
    raise ValueError(f"severity {severity!r}: one of error, warning, info")


def guard_change_state(node: Any, log: Callable[[str], None], period_s: float = 5.0) -> None:
    """Answer a ChangeState request the current state does not allow with ``success=False``.

    rclpy 7.1 raises inside the service callback for such a request ("Transition is not
    registered"), which leaves the client without an answer and ends the process. A lifecycle
    manager sends exactly that to a node that autostarted (``activate`` while active), and two
    clients can race; both must get a plain "no" while the node keeps serving. The refusals are
    logged through :class:`ThrottledLog` (one line per ``period_s``, with the count held back).
    """
    service = node._service_change_state  # rclpy creates it in LifecycleNodeMixin.__init__
    original = service.callback
    machine = node._state_machine
    log = ThrottledLog(log, period_s)

    def change_state(request, response):
        state_id, state = machine.current_state
        allowed = {t[0]: t[1] for t in machine.available_transitions}
        wanted = request.transition.label or request.transition.id
        ok = wanted in allowed.values() if request.transition.label else wanted in allowed
        if not ok:
            log(f"lifecycle request {wanted!r} is not allowed in state {state} (allowed: "
                f"{', '.join(f'{label} ({tid})' for tid, label in sorted(allowed.items())) or 'none'}); "
                "answered success=False")
            response.success = False
            return response
        try:
            return original(request, response)
        except Exception as exc:  # the state machine refused after all: answer, never end the process
            log(f"lifecycle request {wanted!r} in state {state} failed: {type(exc).__name__}: {exc}")
            response.success = False
            return response

    service.callback = change_state


class GuardedLifecycleNode(LifecycleNode):
    """The lifecycle node every node of this package is: rclpy's, with the rules the tools around it need.

    One base class, so a new node cannot forget a rule (the free-space node once did, and a lifecycle
    manager's ``activate`` after autostart ended it):

    - a ``ChangeState`` request the current state does not allow is answered ``success=False``
      (:func:`guard_change_state`), its refusals logged one line per 5 s;
    - a live parameter change accepts the forms a params file accepts (:func:`file_forms`, against
      the types this node declared).
    """

    def __init__(self, node_name: str, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        guard_change_state(self, rcl_log(self.get_logger(), "warning"))
        if hasattr(self, "add_pre_set_parameters_callback"):  # Jazzy and later
            self.add_pre_set_parameters_callback(self._file_forms)

    def _file_forms(self, changes: list) -> list:
        return file_forms(changes, self._declared_type)

    def _declared_type(self, name: str) -> Any:
        """The type a parameter was declared with (its descriptor's: a declared empty list has no value yet)."""
        from rclpy.parameter import Parameter

        return Parameter.Type(self.describe_parameter(name).type) if self.has_parameter(name) else None


class CallbackErrors:
    """Any exception out of a callback (service, timer, subscription) is logged once and the node goes on.

    The executor re-raises a callback's exception from ``spin_once``; left alone that ends the
    process, taking every camera down for one bad request. Each distinct error (type and where it
    was raised) is logged once with its traceback; repeats are counted, not logged.
    """

    def __init__(self, log: Callable[[str], None]) -> None:
        self._log = log
        self.counts: dict[tuple[str, str], int] = {}

    def spin_once(self, executor: Any, timeout_sec: float) -> None:
        try:
            executor.spin_once(timeout_sec=timeout_sec)
        except Exception as exc:
            if type(exc).__name__ == "ExternalShutdownException":  # rclpy was shut down: end
                raise
            self.report(exc)

    def report(self, exc: BaseException) -> None:
        tb = traceback.extract_tb(exc.__traceback__)
        where = f"{tb[-1].filename}:{tb[-1].lineno}" if tb else "?"
        key = (type(exc).__name__, where)
        self.counts[key] = self.counts.get(key, 0) + 1
        if self.counts[key] == 1:
            lines = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()
            self._log(f"a callback raised {type(exc).__name__}: {exc}; the node goes on (logged once per "
                      f"kind of error)\n{lines}")


def wait_for_callbacks(executor: Any, timeout_s: float) -> None:
    """Let the callbacks a MultiThreadedExecutor is running finish (and send their answers).

    ``ros2 lifecycle set ... shutdown`` ends the node from inside the service callback; destroying
    the node at once could drop the answer the client waits for.
    """
    end = time.monotonic() + timeout_s
    while time.monotonic() < end and any(not f.done() for f in list(getattr(executor, "_futures", []))):
        time.sleep(0.02)


# ------------------------------------------------------------------------------------------ DDS

#: Profile variable names (Jazzy's Fast DDS 2.14 reads the first; Fast DDS 3, Kilted on, the second): the
#: rule lives in ``defaults`` with the other rules every layer shares.
PROFILE_VARIABLES = FASTDDS_PROFILE_VARIABLES
SHIPPED_PROFILE = "fastdds_large_shm.xml"


def profile_variable(distro: str | None = None) -> str:
    """The one Fast DDS profile variable this ROS distro's Fast DDS reads (this process's ROS by default)."""
    return fastdds_profile_variable_for(distro) if distro else fastdds_profile_variable()


def shipped_profile() -> Path:
    return share_dir() / "config" / SHIPPED_PROFILE


def use_shipped_dds_profile(env: dict[str, str] | None = None) -> str | None:
    """Point this process's Fast DDS at the shipped profile unless the user chose a profile or another RMW.

    Must run before ``rclpy.init`` (the participant reads it once). With Fast DDS defaults a
    best-effort camera stream of 1280x720 frames mostly never reaches the node (about 1 frame in 5
    at 15 Hz in a measurement); the shipped profile (large shared-memory segments) delivers them.
    Returns the path set, or None when the user's choice stands.
    """
    env = os.environ if env is None else env
    if any(env.get(v) for v in PROFILE_VARIABLES):
        return None
    if env.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp") not in ("rmw_fastrtps_cpp", "rmw_fastrtps_dynamic_cpp"):
        return None
    path = shipped_profile()
    if not path.is_file():
        return None
    env[profile_variable()] = str(path)
    return str(path)


# ------------------------------------------------------------------------------------------ topics
def unmatched_qos_overrides(override_names: Any, topics: set[str], example_topic: str) -> list[str]:
    """Warnings for ``qos_overrides.<topic>...`` keys naming none of ``topics``.

    A QoS override names the resolved topic (``qos_overrides./camera/image_raw.subscription...``);
    one that matches none of the node's topics is silently ignored by rclpy, so the node says so once.
    """
    out = []
    for name in override_names:
        if not name.startswith(params.QOS_OVERRIDES_PREFIX):
            continue
        topic = name[len(params.QOS_OVERRIDES_PREFIX):].rsplit(".", 2)[0]
        if topic not in topics:
            out.append(f"parameter {name} matches none of this node's topics and has no effect: the key must "
                       f"name the resolved topic, e.g. qos_overrides.{example_topic}"
                       f".subscription.reliability (topics: {', '.join(sorted(topics))})")
    return out


def camera_info_topic(node: Any, info_name: str, image_name: str) -> str:
    """image_transport's convention: camera_info is the sibling of the image topic (``/cam/image_raw``
    -> ``/cam/camera_info``), so remapping the image alone brings its camera_info along; an explicit
    ``camera_info`` remap still wins."""
    resolve = getattr(node, "resolve_topic_name", None)  # Iron and later
    if resolve is None or resolve(info_name) != resolve(info_name, only_expand=True):
        return info_name
    return resolve(image_name).rsplit("/", 1)[0] + "/camera_info"


def before_rclpy_init(log: Any) -> None:
    """What the segmentation process does before the model allocates and the DDS participant exists:
    malloc tuning (``LITESEG_MALLOC_TUNING=0`` turns it off) and the shipped Fast DDS profile (read once)."""
    from liteseg_ros.engines.cpu_tuning import tune_malloc_at_startup

    tune_malloc_at_startup()
    profile = use_shipped_dds_profile()
    if profile:
        log.info(f"DDS: this node uses the shipped Fast DDS profile {profile} (set "
                 f"{profile_variable()} to choose another); camera processes need it too")


def frames_lost_text(topic: str, change: int, total: int, lossless: bool) -> str:
    """What to say when DDS reports frames that never reached the subscription, and how to fix it."""
    if not lossless:
        return (f"{change} frame(s) on {topic} were lost inside DDS before reaching the node ({total} in all): "
                f"with Fast DDS defaults large images mostly do not arrive. Fix: start the camera's process with "
                f"{profile_variable()}={shipped_profile()} (this node uses that profile unless you chose one)")
    return (f"process_all_frames: {change} frame(s) on {topic} were lost before the node received them ({total} "
            "in all): the publisher's history overwrote them; publish with KEEP_ALL (or a deeper reliable history) "
            "to replay every frame")
