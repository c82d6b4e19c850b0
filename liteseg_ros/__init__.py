"""liteseg_ros: LiteSeg semantic segmentation for ROS 2.

The package is split over two directories when built: this source tree, and the messages that
rosidl generates from msg/ (``liteseg_ros.msg``), which land in site-packages. ``extend_path``
joins them under one name, as a colcon build of the ament_cmake package does by installing both
into one directory.
"""
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
__version__ = "0.1.0"
