"""Start the liteseg node: `ros2 launch liteseg_ros segment.launch.py image:=/camera/image_raw`.

Arguments: params_file, image, camera_info, namespace, node_name, use_sim_time, rviz, log_level,
bag (play a rosbag with --clock and use sim time), cameras (comma-separated names: one process
serves several cameras; their inputs are <cam>/image relative to the namespace). The equivalent
without `launch` (machines with no ROS install) is printed by `liteseg launch-cmd`.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node


def _segmentation_node(context):
    """The node, built at launch time so `cameras:=a,b` becomes a string list parameter."""
    cameras = [c.strip() for c in LaunchConfiguration("cameras").perform(context).split(",") if c.strip()]
    bag = LaunchConfiguration("bag").perform(context)
    sim_time = LaunchConfiguration("use_sim_time").perform(context).lower() == "true" or bool(bag)
    overrides = {"use_sim_time": sim_time}
    if cameras:
        overrides["cameras"] = cameras
    image = LaunchConfiguration("image").perform(context)
    remappings = [] if cameras else [
        ("image", image),
        ("image/compressed", image + "/compressed"),
        ("camera_info", LaunchConfiguration("camera_info").perform(context)),
    ]
    return [Node(
        package="liteseg_ros",
        executable="liteseg_node",
        name=LaunchConfiguration("node_name"),
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        emulate_tty=True,
        parameters=[LaunchConfiguration("params_file"), overrides],
        remappings=remappings,
        arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")],
    )]


def generate_launch_description():
    share = get_package_share_directory("liteseg_ros")
    bag = LaunchConfiguration("bag")
    sim_time = PythonExpression(["'", LaunchConfiguration("use_sim_time"), "' == 'true' or '", bag, "' != ''"])
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "liteseg.yaml"),
                              description="node parameters (YAML)"),
        DeclareLaunchArgument("image", default_value="/camera/image_raw",
                              description="input image topic (its /compressed sibling with input_transport)"),
        DeclareLaunchArgument("camera_info", default_value="/camera/camera_info",
                              description="input camera_info topic"),
        DeclareLaunchArgument("namespace", default_value="", description="node namespace"),
        DeclareLaunchArgument("node_name", default_value="liteseg", description="node name"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="follow /clock"),
        DeclareLaunchArgument("rviz", default_value="false", description="start rviz2 with the shipped view"),
        DeclareLaunchArgument("log_level", default_value="info", description="debug|info|warn|error"),
        DeclareLaunchArgument("bag", default_value="",
                              description="play this rosbag (ros2 bag play --clock) and use sim time"),
        DeclareLaunchArgument("cameras", default_value="",
                              description="comma-separated camera names for one process serving several "
                                          "cameras (inputs <cam>/image); empty = one camera on `image`"),
        OpaqueFunction(function=_segmentation_node),
        Node(
            package="rviz2",
            executable="rviz2",
            name="liteseg_rviz",
            arguments=["-d", os.path.join(share, "config", "liteseg.rviz")],
            parameters=[{"use_sim_time": sim_time}],
            condition=IfCondition(LaunchConfiguration("rviz")),
        ),
        ExecuteProcess(
            cmd=["ros2", "bag", "play", bag, "--clock"],
            output="screen",
            condition=UnlessCondition(PythonExpression(["'", bag, "' == ''"])),
        ),
    ])
