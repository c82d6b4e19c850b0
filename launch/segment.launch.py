"""Start the liteseg node: `ros2 launch liteseg_ros segment.launch.py image:=/camera/image_raw weights:=demo`.

`ros2 launch liteseg_ros segment.launch.py --show-args` lists every argument. The ones named after
node parameters (weights, autostart, backend, device, precision, network_width, network_height)
override the params file only when given; left empty, the params file's value stands.

What this file guarantees, because scripts and service managers rely on it:
- a bad argument, a missing params file or a missing `ros2 bag` stops the launch at once with one
  message and a non-zero exit status, before any process starts;
- if the node exits (a start-up failure, or `ros2 lifecycle set ... shutdown`) the whole launch
  ends, with a non-zero status when the node's was;
- with `bag:=...`, playback starts only once the node is active, so no frame is lost;
- a missing rviz2 is a warning: the node runs without it;
- every process it starts uses the shipped Fast DDS profile unless the environment names one.
"""
import os
import tempfile
from pathlib import Path

import launch
from ament_index_python.packages import PackageNotFoundError, get_package_prefix
from launch import LaunchDescription
from launch.actions import (
    DeclareLaunchArgument,
    ExecuteProcess,
    LogInfo,
    OpaqueFunction,
    RegisterEventHandler,
    SetEnvironmentVariable,
)
from launch.event_handlers import OnProcessExit
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition

from liteseg_ros import node_guards, params
from liteseg_ros.share import share_dir

#: Launch arguments that set the node parameter of the same name when given.
PARAMETER_ARGUMENTS = ("weights", "autostart", "backend", "device", "precision", "network_width",
                       "network_height")
LOG_LEVELS = ("debug", "info", "warn", "error", "fatal")


def _arg(context, name: str) -> str:
    return launch.substitutions.LaunchConfiguration(name).perform(context)


def _is_true(text: str) -> bool:
    return text.strip().lower() in ("true", "1", "yes", "on")


def _parameter_overrides(context) -> dict:
    """The parameter arguments the user gave, typed and checked by the node's own parameter table."""
    out = {}
    for name in PARAMETER_ARGUMENTS:
        text = _arg(context, name)
        if not text:
            continue
        kind = params.PARAMS_BY_NAME[name].type_name
        try:
            value = {"bool": lambda t: {"true": True, "false": False}[t.lower()], "int": int,
                     "string": str}[kind](text)
            out[name] = params.check_value(name, value)
        except (KeyError, ValueError) as exc:
            raise RuntimeError(f"launch argument {name}:={text!r} is not a valid {kind}: {exc}") from None
    return out


def _dds_profile() -> list:
    """Every process this launch starts uses the shipped Fast DDS profile, unless the user chose one.

    With Fast DDS defaults most large camera frames never reach a subscriber in another process; only
    the variable this distro's Fast DDS reads is set (Kilted warns about the old name).
    """
    env = dict(os.environ)
    if node_guards.use_shipped_dds_profile(env) is None:
        return []
    name = node_guards.profile_variable()
    return [SetEnvironmentVariable(name, env[name])]


def rviz_config(namespace: str, name: str) -> str:
    """The shipped RViz view with its topics at this node's resolved names.

    ``config/liteseg.rviz`` names ``/liteseg/...``; with ``namespace:=robot1 node_name:=seg`` the
    topics are ``/robot1/seg/...``, so a copy with those names is handed to RViz instead.
    """
    shipped = share_dir() / "config" / "liteseg.rviz"
    prefix = "/" + "/".join(p for p in (*namespace.strip("/").split("/"), name) if p)
    if prefix == "/liteseg":
        return str(shipped)
    out = Path(tempfile.mkdtemp(prefix="liteseg_rviz_")) / "liteseg.rviz"
    out.write_text(shipped.read_text().replace("Value: /liteseg/", f"Value: {prefix}/"))
    return str(out)


def _node_and_helpers(context):
    """Everything that depends on the argument values, checked before anything starts."""
    params_file = os.path.expanduser(_arg(context, "params_file"))
    if not os.path.isfile(params_file):
        raise RuntimeError(f"params_file {params_file} does not exist (launch argument params_file:=...)")
    bag = _arg(context, "bag")
    if bag:
        if not os.path.exists(bag):
            raise RuntimeError(f"bag {bag} does not exist (launch argument bag:=...)")
        try:
            get_package_prefix("ros2bag")
        except PackageNotFoundError:
            raise RuntimeError(
                f"bag:={bag} needs `ros2 bag` (rosbag2), which is not installed here: install it "
                "(apt install ros-$ROS_DISTRO-rosbag2), or replay without it: start this launch without "
                f"bag:= and use_sim_time:=true, then run `liteseg play {bag} --clock`") from None
    level = _arg(context, "log_level").lower()
    if level not in LOG_LEVELS:
        raise RuntimeError(f"log_level:={level!r} is not one of {', '.join(LOG_LEVELS)}")

    name = _arg(context, "node_name")
    namespace = _arg(context, "namespace").strip("/")
    cameras = [c.strip() for c in _arg(context, "cameras").split(",") if c.strip()]
    overrides = dict(_parameter_overrides(context), use_sim_time=_is_true(_arg(context, "use_sim_time")) or bool(bag))
    if cameras:
        overrides["cameras"] = params.check_value("cameras", cameras)
    image = _arg(context, "image")
    # Relative names resolve inside the namespace (as image_pipeline's nodes do); absolute ones stay.
    remappings = [] if cameras else [("image", image), ("image/compressed", image + "/compressed")]
    if _arg(context, "camera_info") and not cameras:  # else the node takes the image topic's sibling
        remappings.append(("camera_info", _arg(context, "camera_info")))
    # Scope the level to our node's logger, so log_level:=debug does not flood rcl's own loggers.
    logger = ".".join(p for p in (*namespace.split("/"), name) if p)
    node = LifecycleNode(
        package="liteseg_ros",
        executable="liteseg_node",
        name=name,
        namespace=namespace,
        output="screen",
        emulate_tty=True,
        parameters=[params_file, overrides],
        remappings=remappings,
        ros_arguments=["--log-level", f"{logger}:={level}"],
    )

    def on_node_exit(event_context):
        code = event_context.locals.event.returncode
        if event_context.is_shutdown:
            return []
        if code != 0:
            raise RuntimeError(f"{name} exited with code {code} (its message is above); stopping the launch")
        return [launch.actions.Shutdown(reason=f"{name} exited")]

    actions = [*_dds_profile(), node, RegisterEventHandler(OnProcessExit(target_action=node,
                                                        on_exit=[OpaqueFunction(function=on_node_exit)]))]
    if _is_true(_arg(context, "free_space")):
        actions += _free_space_nodes(context, name, namespace, cameras, overrides["use_sim_time"])
    if bag:
        actions.append(RegisterEventHandler(OnStateTransition(
            target_lifecycle_node=node, goal_state="active", handle_once=True,
            entities=[LogInfo(msg=f"{name} is active: playing {bag}"),
                      ExecuteProcess(cmd=["ros2", "bag", "play", bag, "--clock"], output="screen")])))
    if _is_true(_arg(context, "rviz")):
        try:
            get_package_prefix("rviz2")
            actions.append(Node(package="rviz2", executable="rviz2", name="liteseg_rviz",
                                arguments=["-d", rviz_config(namespace, name)],
                                parameters=[{"use_sim_time": overrides["use_sim_time"]}]))
        except PackageNotFoundError:
            launch.logging.get_logger("launch").warning(
                "rviz:=true but rviz2 is not installed (apt install ros-$ROS_DISTRO-rviz2); the node runs without it")
    return actions


def free_space_wiring(name: str, cameras: list[str]) -> list[tuple[str, str, str]]:
    """(node name, mask topic, camera_info topic) of each free-space node: one per camera, on the segmentation
    node ``name``'s drivable mask and label camera_info (relative names: they resolve in the namespace)."""
    from liteseg_ros import contract
    from liteseg_ros.free_space_params import NODE_NAME
    from liteseg_ros.segmentation import BOUNDARY_GROUP

    return [(f"{NODE_NAME}_{cam}" if cam else NODE_NAME,
             f"{contract.camera_prefix(name, cam)}/{contract.MASK_PREFIX}{BOUNDARY_GROUP}",
             f"{contract.camera_prefix(name, cam)}/label/camera_info") for cam in cameras or [""]]


def _free_space_nodes(context, name: str, namespace: str, cameras: list[str], use_sim_time: bool) -> list:
    """liteseg_free_space beside the segmentation node (same namespace), one per camera, wired to its
    drivable mask and the camera_info of the mask's resolution; it ends the launch like the node does."""
    from liteseg_ros.free_space_params import check_value

    base_frame = _arg(context, "base_frame")
    try:
        check_value("base_frame", base_frame)
    except ValueError as exc:
        raise RuntimeError(f"launch argument base_frame:={base_frame!r}: {exc}") from None
    actions = []
    for node_name, mask, camera_info in free_space_wiring(name, cameras):
        node = LifecycleNode(package="liteseg_ros", executable="liteseg_free_space", name=node_name,
                             namespace=namespace, output="screen", emulate_tty=True,
                             parameters=[{"base_frame": base_frame, "use_sim_time": use_sim_time}],
                             remappings=[("mask", mask), ("camera_info", camera_info)])

        def on_exit(event_context, node_name=node_name):
            if not event_context.is_shutdown and event_context.locals.event.returncode != 0:
                raise RuntimeError(f"{node_name} exited with code {event_context.locals.event.returncode} "
                                   "(its message is above); stopping the launch")
            return []

        actions += [node, RegisterEventHandler(OnProcessExit(target_action=node,
                                                             on_exit=[OpaqueFunction(function=on_exit)]))]
    return actions


def generate_launch_description():
    args = [
        DeclareLaunchArgument("params_file", default_value=str(share_dir() / "config" / "liteseg.yaml"),
                              description="node parameters (YAML)"),
        DeclareLaunchArgument("image", default_value="camera/image_raw",
                              description="input image topic; relative names resolve in the namespace "
                                          "(its /compressed sibling is used with input_transport: compressed)"),
        DeclareLaunchArgument("camera_info", default_value="",
                              description="input camera_info topic; empty = the image topic's sibling "
                                          "(image:=/cam/image_raw -> /cam/camera_info), as image_transport does"),
        DeclareLaunchArgument("namespace", default_value="", description="node namespace"),
        DeclareLaunchArgument("node_name", default_value="liteseg", description="node name"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="follow /clock"),
        DeclareLaunchArgument("log_level", default_value="info",
                              description=f"level of the node's own logger: {'|'.join(LOG_LEVELS)}"),
        DeclareLaunchArgument("cameras", default_value="",
                              description="comma-separated camera names for one process serving several "
                                          "cameras (inputs <cam>/image); empty = one camera on `image`"),
        DeclareLaunchArgument("rviz", default_value="false", description="start rviz2 with the shipped view"),
        DeclareLaunchArgument("free_space", default_value="false",
                              description="also start liteseg_free_space on the drivable mask: ~/scan "
                                          "(LaserScan) and ~/grid (OccupancyGrid) for Nav2; needs the camera's TF"),
        DeclareLaunchArgument("base_frame", default_value="base_footprint",
                              description="with free_space:=true: the ground frame of its scan and grid"),
        DeclareLaunchArgument("bag", default_value="",
                              description="play this rosbag (ros2 bag play --clock) once the node is active; "
                                          "turns on sim time"),
    ]
    for name in PARAMETER_ARGUMENTS:
        spec = params.PARAMS_BY_NAME[name]
        args.append(DeclareLaunchArgument(name, default_value="",
                                          description=f"node parameter {name} ({spec.description}); "
                                                      "empty = the params file's value"))
    return LaunchDescription([*args, OpaqueFunction(function=_node_and_helpers)])
