"""pip entry point for machines without a ROS install (dev boxes, CI); colcon uses CMakeLists.txt.

ROS packages (rclpy, message packages) are deliberately absent from install_requires: on a real
ROS 2 install they come from apt/rosdep, and here from requirements/ros-jazzy.txt.
"""
from setuptools import find_packages, setup

setup(
    name="liteseg_ros",
    version="0.1.0",
    description="Real-time LiteSeg semantic segmentation node for ROS 2",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["liteseg_ros", "liteseg_ros.*"]),
    package_data={"liteseg_ros": ["data/*", "data/**/*"]},
    install_requires=["numpy", "pyyaml", "opencv-python-headless<5", "simplejpeg", "torch", "torchvision"],
    extras_require={
        "onnx": ["onnx", "onnxruntime"],
        "bags": ["rosbags"],
        "tensorrt": ["tensorrt>=10,<12", "onnx"],  # the majors engines/tensorrt.py supports; onnx: the export
        "openvino": ["openvino", "onnx"],
    },
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/liteseg_ros"]),
        ("share/liteseg_ros", ["package.xml"]),
        ("share/liteseg_ros/launch", ["launch/segment.launch.py"]),
        ("share/liteseg_ros/config", ["config/liteseg.yaml", "config/liteseg.rviz", "config/nav2_free_space.yaml",
                                      "config/fastdds_large_shm.xml"]),
    ],
    entry_points={
        "console_scripts": [
            "liteseg_node = liteseg_ros.node:main",
            "liteseg_free_space = liteseg_ros.free_space_node:main",
            "liteseg = liteseg_ros.cli:main",
        ],
    },
)
