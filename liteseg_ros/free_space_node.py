"""The free-space node: a drivable mask + its camera_info + TF in; ``~/scan`` and ``~/grid`` out, for planners.

Ring 3 (ROS edge). Works with any segmentation source: it subscribes ``mask`` (mono8, nonzero =
drivable, e.g. the segmentation node's ``~/masks/drivable``) and ``camera_info`` (of the mask's
resolution, e.g. its ``~/label/camera_info``), looks the mask's frame up in TF against
``base_frame`` at the mask's stamp, and publishes a LaserScan and an OccupancyGrid in
``base_frame`` with the mask's stamp. The geometry is ``liteseg_ros.free_space`` (pure numpy); the
parameters and the /diagnostics wording are ``liteseg_ros.free_space_params``. This file only
moves messages.
"""
from __future__ import annotations

import array
import sys
import threading
import time
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from nav_msgs.msg import OccupancyGrid
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.duration import Duration
from rclpy.lifecycle import LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import (
    QoSDurabilityPolicy,
    QoSHistoryPolicy,
    QoSProfile,
    QoSReliabilityPolicy,
    qos_profile_sensor_data,
)
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, Image, LaserScan

from liteseg_ros import free_space_params as fsp
from liteseg_ros import interfaces, node_guards, process, ros_params
from liteseg_ros.free_space import CameraModelError, FreeSpace, Intrinsics, Pose
from liteseg_ros.params import ParameterError, is_ros_builtin
from liteseg_ros.throttle import ThrottledLog, ThrottledLogs

#: Mask encodings read as one byte per pixel (nonzero = drivable).
MASK_ENCODINGS = ("mono8", "8UC1")


def _typed(code: str, a: np.ndarray) -> array.array:
    """A numpy array as the array.array a message's sequence field takes without a per-element check."""
    out = array.array(code)
    out.frombytes(np.ascontiguousarray(a).tobytes())
    return out


class FreeSpaceNode(node_guards.GuardedLifecycleNode):
    """Lifecycle node: configure makes the TF buffer and publishers, activate subscribes."""

    def __init__(self, node_name: str = fsp.NODE_NAME, **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self.values = self._declare_parameters()
        self.counters = fsp.FreeSpaceCounters()
        # rejected masks (errors) and skipped ones (warnings, per reason): one line per error_log_period (read
        # live), the next one counting those held back
        self._rejected_log = ThrottledLog(node_guards.rcl_log(self.get_logger(), "error"), self._error_log_period)
        self._skipped_log = ThrottledLogs(node_guards.rcl_log(self.get_logger(), "warning"), self._error_log_period)
        self._state_name = "unconfigured"
        self._info: CameraInfo | None = None
        self._intr_key: tuple | None = None
        self._intr: Intrinsics | CameraModelError | None = None
        self._fs_key: tuple | None = None
        self._fs: FreeSpace | None = None
        self.tf_buffer = None
        self.tf_listener = None
        self._pubs: dict[str, Any] = {}
        self._subs: list[Any] = []
        self._mask_topic = self.resolve_topic_name("mask")
        self._info_topic = self.resolve_topic_name("camera_info")
        #: masks are handled one at a time (a bounded TF wait may block one); /tf arrives meanwhile on
        #: the TF listener's own reentrant group, so the wait can end early
        self._mask_group = MutuallyExclusiveCallbackGroup()
        self.finished = threading.Event()
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_timer = self.create_timer(float(self.values["diagnostics_period"]), self._publish_diagnostics,
                                             clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.add_on_set_parameters_callback(self._on_set_parameters)

    # ----------------------------------------------------------------------------- parameters
    def _declare_parameters(self) -> dict[str, Any]:
        """Validate what the params file and ``-p`` gave (every bad key at once), then declare the table."""
        values = ros_params.validated_overrides(self, fsp.validate)
        ros_params.declare_table(self, fsp.FREE_SPACE_PARAMS, values)
        return {spec.name: self.get_parameter(spec.name).value for spec in fsp.FREE_SPACE_PARAMS}

    def _on_set_parameters(self, changes: list[Parameter]):
        """Live changes, checked together (range_min < range_max, grid size) and applied at once."""
        from rcl_interfaces.msg import SetParametersResult

        if not hasattr(self, "values"):
            return SetParametersResult(successful=True)  # during declaration
        try:
            new = fsp.validate({p.name: p.value for p in changes if not is_ros_builtin(p.name)}, self.values)
        except ParameterError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self.values = new  # one reference swap; the next mask rebuilds the projection if it changed
        return SetParametersResult(successful=True)

    # ----------------------------------------------------------------------------- lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        from tf2_ros import Buffer, TransformListener

        self.tf_buffer = Buffer(node=self)
        self.tf_listener = TransformListener(self.tf_buffer, self)
        profile = QoSProfile(depth=5, reliability=QoSReliabilityPolicy.RELIABLE,
                             durability=QoSDurabilityPolicy.VOLATILE, history=QoSHistoryPolicy.KEEP_LAST)
        for key, kind in (("scan", LaserScan), ("grid", OccupancyGrid)):
            self._pubs[key] = self.create_publisher(kind, f"~/{key}", profile,
                                                    qos_overriding_options=QoSOverridingOptions.with_default_policies())
        self._state_name = "inactive"
        self.get_logger().info("configured (inactive): activate to start")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Sensor-data QoS in (best effort, newest only): a late mask is worth less than the next one."""
        qos = QoSProfile(depth=1, reliability=qos_profile_sensor_data.reliability,
                         durability=qos_profile_sensor_data.durability, history=QoSHistoryPolicy.KEEP_LAST)
        self._subs = [
            self.create_subscription(Image, "mask", self._on_mask, qos, callback_group=self._mask_group,
                                     qos_overriding_options=QoSOverridingOptions.with_default_policies()),
            self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, qos_profile_sensor_data),
        ]
        self._state_name = "active"
        self.get_logger().info(f"active: {self._mask_topic} + {self._info_topic} -> "
                               f"{self._pubs['scan'].topic_name}, {self._pubs['grid'].topic_name} in "
                               f"{self.values['base_frame']}")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._unsubscribe()
        self._state_name = "inactive"
        self.get_logger().info("deactivated: unsubscribed")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self._state_name = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._unsubscribe()
        self._release()
        self._state_name = "finalized"
        self.get_logger().info("shut down (finalized): exiting")
        self.finished.set()
        return TransitionCallbackReturn.SUCCESS

    def _unsubscribe(self) -> None:
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []

    # ----------------------------------------------------------------------------- process hooks
    def autostart(self) -> int | None:
        """``autostart``: configure and activate before spinning (process.run's hook; never ends early)."""
        if self.values["autostart"]:
            self.trigger_configure()
            self.trigger_activate()
        return None

    def stop(self) -> None:
        self._unsubscribe()

    def _release(self) -> None:
        for pub in self._pubs.values():
            self.destroy_publisher(pub)
        self._pubs = {}
        if self.tf_listener is not None:
            self.tf_listener.unregister()
        self.tf_listener = self.tf_buffer = None

    # ----------------------------------------------------------------------------- per message
    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._info = msg
        self.counters.last_info = time.monotonic()

    def _skip(self, kind: str, why: str) -> None:
        c = self.counters
        c.skipped += 1
        c.problem, c.problem_kind = why, kind
        if kind == "rejected":
            self._rejected_log(f"mask on {self._mask_topic} rejected: {why}")
        else:
            self._skipped_log(kind, f"mask on {self._mask_topic} skipped: {why}")

    def _error_log_period(self) -> float:
        return float(self.values["error_log_period"])

    def _intrinsics(self, info: CameraInfo) -> Intrinsics:
        """camera_info -> Intrinsics, checked once per distinct camera_info (raises CameraModelError)."""
        key = (tuple(info.k), tuple(info.d), info.distortion_model, info.width, info.height)
        if key != self._intr_key:
            try:
                self._intr = Intrinsics.from_camera_info(info.k, info.d, info.distortion_model, info.width,
                                                         info.height)
            except CameraModelError as exc:
                self._intr = exc
            self._intr_key = key
        if isinstance(self._intr, CameraModelError):
            raise self._intr
        return self._intr

    def _on_mask(self, msg: Image) -> None:
        c = self.counters
        c.received += 1
        c.last_mask = time.monotonic()
        values = self.values
        info = self._info
        if info is None:
            self._skip("no_camera_info", f"no camera_info received on {self._info_topic} yet")
            return
        if msg.encoding not in MASK_ENCODINGS:
            self._skip("rejected", f"encoding {msg.encoding!r}: a mask is one of {', '.join(MASK_ENCODINGS)}")
            return
        if (msg.width, msg.height) != (info.width, info.height):
            self._skip("rejected", f"the mask is {msg.width}x{msg.height} but camera_info is "
                                   f"{info.width}x{info.height} (width x height): give the camera_info of the "
                                   "mask's resolution (e.g. the segmentation node's ~/label/camera_info)")
            return
        if msg.step < msg.width or len(msg.data) < msg.step * msg.height:
            self._skip("rejected", f"the mask's step {msg.step} / data size {len(msg.data)} do not hold "
                                   f"{msg.width}x{msg.height} mono8 pixels")
            return
        try:
            intr = self._intrinsics(info)
        except CameraModelError as exc:
            self._skip("rejected", str(exc))
            return
        base = values["base_frame"]
        try:
            tf = self.tf_buffer.lookup_transform(base, msg.header.frame_id, Time.from_msg(msg.header.stamp),
                                                 timeout=Duration(seconds=float(values["tf_timeout"])))
        except Exception as exc:  # tf2's Lookup/Connectivity/Extrapolation/InvalidArgument errors
            self._skip("no_tf", f"{base} <- {msg.header.frame_id!r} at the mask's stamp: "
                                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            return
        t, q = tf.transform.translation, tf.transform.rotation
        try:
            pose = Pose.from_quaternion((t.x, t.y, t.z), (q.x, q.y, q.z, q.w))
            scan_spec, grid_spec = fsp.scan_spec(values), fsp.grid_spec(values)
            key = (intr, pose, scan_spec, grid_spec)
            if key != self._fs_key:
                self._fs, self._fs_key = FreeSpace(intr, pose, scan_spec, grid_spec), key
            fs = self._fs
            mask = np.frombuffer(msg.data, np.uint8, msg.step * msg.height).reshape(msg.height, msg.step)[:, :msg.width]
            ranges, grid = fs.scan(mask), fs.grid(mask)
        except CameraModelError as exc:
            self._skip("rejected", str(exc))
            return
        self._publish(msg.header.stamp, base, scan_spec, grid_spec, ranges, grid)
        c.published += 1
        c.problem = c.problem_kind = ""
        c.times = [*c.times[-49:], time.monotonic()]

    def _publish(self, stamp, base: str, scan_spec, grid_spec, ranges: np.ndarray, grid: np.ndarray) -> None:
        """Both outputs in ``base`` with the mask's stamp (not the node's clock: they describe that frame)."""
        scan = LaserScan()
        scan.header.stamp, scan.header.frame_id = stamp, base
        scan.angle_min, scan.angle_max = float(scan_spec.angle_min), float(scan_spec.angle_max)
        scan.angle_increment = float(scan_spec.angle_increment)
        scan.range_min, scan.range_max = float(scan_spec.range_min), float(scan_spec.range_max)
        scan.ranges = _typed("f", ranges)
        og = OccupancyGrid()
        og.header.stamp, og.header.frame_id = stamp, base
        og.info.map_load_time = stamp
        og.info.resolution = float(grid_spec.resolution)
        og.info.height, og.info.width = grid.shape
        og.info.origin.position.x, og.info.origin.position.y = float(grid_spec.origin_x), float(grid_spec.origin_y)
        og.info.origin.orientation.w = 1.0
        og.data = _typed("b", grid)
        pubs = self._pubs
        if "scan" in pubs:
            pubs["scan"].publish(scan)
            pubs["grid"].publish(og)

    # ----------------------------------------------------------------------------- diagnostics
    def _publish_diagnostics(self) -> None:
        st = fsp.status(self.get_name(), self._state_name, self.counters, self._mask_topic, self._info_topic,
                        self.values["base_frame"])
        self._diagnostics_pub.publish(interfaces.diagnostic_array([st], self.get_clock().now().to_msg()))


def main(args: list[str] | None = None) -> int:
    """Console entry point: ``liteseg_free_space --ros-args -r mask:=/liteseg/masks/drivable ...``.

    Exit codes: 0 after Ctrl-C, SIGTERM or a lifecycle shutdown; 2 when it cannot start (bad
    parameters or params file), with one message naming every bad key. Three executor threads:
    masks (which may wait for TF) apart from /tf and services.
    """
    argv = list(args if args is not None else sys.argv)
    return process.run(FreeSpaceNode, fsp.NODE_NAME, argv, threads=3)


if __name__ == "__main__":
    sys.exit(main())
