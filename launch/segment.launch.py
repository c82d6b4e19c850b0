"""Start the liteseg node: `ros2 launch liteseg_ros segment.launch.py image:=/camera/image_raw`.

Arguments: params_file, image, camera_info, namespace, node_name, use_sim_time, rviz, log_level,
bag (play a rosbag with --clock and use sim time). The equivalent without `launch` (machines with no
ROS install) is printed by `liteseg launch-cmd` and documented in the README.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node


def generate_launch_description():
    share = get_package_share_directory("liteseg_ros")
    params_file = LaunchConfiguration("params_file")
    bag = LaunchConfiguration("bag")
    have_bag = PythonExpression(["'", bag, "' != ''"])
    sim_time = PythonExpression(["'", LaunchConfiguration("use_sim_time"), "' == 'true' or ", have_bag])
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
        Node(
            package="liteseg_ros",
            executable="liteseg_node",
            name=LaunchConfiguration("node_name"),
            namespace=LaunchConfiguration("namespace"),
            output="screen",
            emulate_tty=True,
            parameters=[params_file, {"use_sim_time": sim_time}],
            remappings=[
                ("image", LaunchConfiguration("image")),
                ("image/compressed", [LaunchConfiguration("image"), "/compressed"]),
                ("camera_info", LaunchConfiguration("camera_info")),
            ],
            arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")],
        ),
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
