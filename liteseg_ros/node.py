"""The segmentation node: camera in; label, colour, overlay, confidence, masks, boundary, info, stats out.

Ring 3 (ROS edge). Reads top to bottom as its life goes: declare -> configure (load the model, make
publishers) -> activate (subscribe, start the worker) -> callback (only hands the serialized message
to the newest-frame slot) -> worker (deserialize, decode, Pipeline.run) -> publisher thread (publish,
while the worker runs the next frame) -> deactivate.
All per-frame work lives in ``liteseg_ros.pipeline``; what is published, under which names and in
which messages, is ``liteseg_ros.contract`` (shared with ``liteseg bag``); the frame hand-over and
counters are ``liteseg_ros.frames``, the /diagnostics wording ``liteseg_ros.diagnostics``. This file
only moves messages.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
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
from rclpy.serialization import deserialize_message
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from liteseg_ros import contract, diagnostics, fast_send, node_guards, params, process, ros_params, wire
from liteseg_ros.defaults import EXIT_USAGE
from liteseg_ros.frames import FrameSlot
from liteseg_ros.interfaces import (
    HAVE_CUSTOM_MSGS,
    HAVE_MATCHED_EVENTS,
    HAVE_VISION_MSGS,
    LabelInfo,
    PublisherEventCallbacks,
    SubscriptionEventCallbacks,
    UnsupportedEventTypeError,
    diagnostic_array,
    rclpy_types,
)
from liteseg_ros.process import StartupError
from liteseg_ros.segmentation import Segmentation
from liteseg_ros.throttle import ThrottledLogs
from liteseg_ros.worker import Camera, Hooks, Job, Worker

__all__ = ["NODE_NAME", "LiteSegNode", "StartupError", "main"]


NODE_NAME = "liteseg"


# ------------------------------------------------------------------------------------------ node
class LiteSegNode(node_guards.GuardedLifecycleNode):
    """rclpy lifecycle node serving one camera, or several through one engine with batching."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self.values = self._declare_parameters()
        self.pipeline = None
        self.source = None
        self._int8 = None  # background_int8.for_node: int8 from received frames, swapped in by the worker
        self._pubs: dict[str, Any] = {}  # node-wide: info, label_info
        self.cameras: list[Camera] = []
        self._cv = threading.Condition()
        self._worker: Worker | None = None
        self._state_name = "unconfigured"
        #: image callbacks run apart from services and timers: a lossless queue that waits for room
        #: (process_all_frames) then never holds up parameter, lifecycle or diagnostics callbacks.
        self._input_group = MutuallyExclusiveCallbackGroup()
        #: set when the lifecycle reaches finalized (``ros2 lifecycle set ... shutdown``): main() exits.
        self.finished = threading.Event()
        # frames lost in DDS, per camera: an error per error_log_period (read live) when every frame counts,
        # else a warning each 30 s; the next line counts the ones held back
        self._lost_errors = ThrottledLogs(node_guards.rcl_log(self.get_logger(), "error"),
                                          lambda: float(self.values["error_log_period"]))
        self._lost_warnings = ThrottledLogs(node_guards.rcl_log(self.get_logger(), "warning"), 30.0)
        # /diagnostics lives as long as the node, in every lifecycle state, on a steady-clock timer:
        # a node waiting for /clock (sim time) or for its configure transition still reports why.
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_timer = self._make_diagnostics_timer()
        self.add_on_set_parameters_callback(self._on_set_parameters)

    def _make_diagnostics_timer(self):
        return self.create_timer(float(self.values["diagnostics_period"]), self._publish_diagnostics,
                                 clock=Clock(clock_type=ClockType.STEADY_TIME))

    # ----------------------------------------------------------------------------- parameters
    def _declare_parameters(self) -> dict[str, Any]:
        """Validate what the params files and ``-p`` gave, then declare every parameter of params.PARAMS.

        The given values go through ``params.validate`` first, the same function ``liteseg bag`` and
        the demo use, so all three accept and refuse the same files and every bad key is reported in
        one message before any model loads.
        """
        values = ros_params.validated_overrides(self, params.validate, node_guards.given_value)
        ros_params.declare_table(self, params.PARAMS, values)
        for name, classes in params.mask_groups_of(values).items():
            self.declare_parameter(params.MASK_GROUPS_PREFIX + name, list(classes),
                                   ros_params.group_descriptor(params.MASK_GROUPS_PREFIX + name))
        return {name: (list(v) if isinstance(v, (list, tuple)) else v)
                for name, v in ((n, self.get_parameter(n).value) for n in values)}

    def _on_set_parameters(self, changes: list[Parameter]) -> SetParametersResult:
        """Validate live changes and apply them atomically (rclpy's Humble-compatible hook)."""
        if not hasattr(self, "values"):
            return SetParametersResult(successful=True)  # during declaration
        new = dict(self.values)
        for p in changes:
            if params.is_ros_builtin(p.name):
                continue
            try:
                classes = self.pipeline.classes if self.pipeline else None
                new[p.name] = params.check_value(p.name, p.value, classes)
            except params.ParameterError as exc:
                return SetParametersResult(successful=False, reason=str(exc))
        if self.pipeline is not None:
            try:
                groups = self.pipeline.classes.resolve_groups(params.mask_groups_of(new))
                self.pipeline.update(overlay_alpha=float(new["overlay_alpha"]),
                                     confidence_threshold=float(new["confidence_threshold"]),
                                     output_resolution=new["output_resolution"], mask_groups=groups)
            except ValueError as exc:
                return SetParametersResult(successful=False, reason=str(exc))
        old = self.values
        self.values = new  # one reference swap: readers (the worker) see the old or the new dict, never a mix
        if new["diagnostics_period"] != old["diagnostics_period"]:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = self._make_diagnostics_timer()
        latched = any(p.name.startswith(params.MASK_GROUPS_PREFIX) or p.name == "confidence_threshold"
                      for p in changes)
        if self.pipeline is not None and latched:  # ~/info and ~/label_info describe the groups and threshold
            self._make_camera_publishers()
            self._publish_info()
        return SetParametersResult(successful=True)

    # ----------------------------------------------------------------------------- lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load the model and build the engine (slow: logged), then create the publishers."""
        from liteseg_ros.runtime import ModelLoadError, build_pipeline

        self.get_logger().info("configuring: loading model and building the inference engine")
        t0 = time.monotonic()
        settings = params.pipeline_settings(self.values)
        self.get_logger().debug(f"settings: {settings}")
        try:
            self.pipeline, self.source = build_pipeline(settings, log=self.get_logger().info,
                                                        max_batch=max(1, len(self.values["cameras"])),
                                                        warn=self.get_logger().warning)
        except (ModelLoadError, ValueError) as exc:
            self.get_logger().error(f"cannot configure: {exc}")
            return TransitionCallbackReturn.FAILURE
        except Exception as exc:  # an engine that fails to build must not kill the process
            self.get_logger().error(f"cannot configure: {type(exc).__name__}: {exc}")
            return TransitionCallbackReturn.FAILURE
        info = self.pipeline.engine.info
        for key, got in (("device", info.device), ("precision", info.precision)):
            asked = str(self.values[key])
            if asked != "auto" and not got.startswith(asked.split(":")[0]):  # a fallback the user should see
                self.get_logger().warning(f"{key} {asked} requested but the engine runs {got}: {info.reason}")
        if self.source.random:
            self.get_logger().warning("running with RANDOM weights (allow_random_weights): outputs are noise")
        self.get_logger().info(
            f"model {self.source.name} ({self.source.backbone}) on {info.backend}/{info.device}/{info.precision}"
            f" at {self.values['network_width']}x{self.values['network_height']}"
            f" ready in {time.monotonic() - t0:.1f} s; backend choice: {info.reason}")
        self.get_logger().info(f"weights licence: {self.source.license or 'unknown (not a registered name)'}")
        self.get_logger().info(f"fast send path: {fast_send.status()}")  # its self-check now, not at the 1st frame
        from liteseg_ros import background_int8

        self._int8 = background_int8.for_node(self.values, self.source.weights, self.pipeline,
                                              self.get_logger().info)
        lossless = bool(self.values["process_all_frames"])
        cap = int(self.values["queue_size"]) if lossless else 1
        self.cameras = [Camera(name, FrameSlot(cap, self._cv, lossless))
                        for name in (self.values["cameras"] or [""])]
        self._create_publishers()
        self._state_name = "inactive"
        self.get_logger().info("configured (inactive): activate to start segmenting")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Enable the camera outputs (lifecycle publishers), subscribe, start the worker; ~/info goes out first."""
        self._publish_info()
        result = super().on_activate(state)  # before any frame can arrive: an inactive output drops it
        for cam in self.cameras:
            cam.slot.open()
        hooks = Hooks(deserialise=self._deserialise, age_ms=self._age_ms, wants=self._wants, send=self._publish,
                      send_stats=self._publish_stats, engine_changed=self._publish_info)
        self._worker = Worker(self.cameras, self._cv, lambda: self.values, self.pipeline, hooks,
                              node_guards.rcl_log(self.get_logger(), "error"), self._int8)
        self._worker.start()
        self._subscribe()
        self._warn_unmatched_qos_overrides()
        self._state_name = "active"
        self.get_logger().info(f"active: segmenting {', '.join(c.input_topic for c in self.cameras)}")
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._unsubscribe()
        self._stop_worker()
        self._state_name = "inactive"
        self.get_logger().info("deactivated: unsubscribed, worker stopped (the engine stays loaded)")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self._state_name = "unconfigured"
        self.get_logger().info("cleaned up: engine and publishers released")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._unsubscribe()
        self._stop_worker()
        self._release()
        self._state_name = "finalized"
        self.get_logger().info("shut down (finalized): exiting")
        self.finished.set()
        return TransitionCallbackReturn.SUCCESS

    def _release(self) -> None:
        """Free the engine (device memory) and every publisher."""
        for pub in self._pubs.values():
            self.destroy_publisher(pub)
        for pub in (p for c in self.cameras for p in c.pubs.values()):
            self.destroy_lifecycle_publisher(pub)
        self._pubs.clear()
        self.cameras = []
        if self._int8 is not None:
            self._int8, int8 = None, self._int8
            int8.close()
        if self.pipeline is not None:
            self.pipeline.engine.close()
        self.pipeline = None

    def _warn_unmatched_qos_overrides(self) -> None:
        ours = {c.input_topic for c in self.cameras} | {c.info_sub.topic_name for c in self.cameras if c.info_sub}
        ours |= {p.topic_name for c in self.cameras for p in c.pubs.values()} | {p.topic_name for p in self._pubs.values()}
        for warning in node_guards.unmatched_qos_overrides(self._parameter_overrides, ours, self.cameras[0].input_topic):
            self.get_logger().warning(warning)

    # ----------------------------------------------------------------------------- topics
    def _create_publishers(self) -> None:
        """Reliable publishers (REP-2003), each overridable via qos_overrides.<topic>.publisher.*.

        Every output of the contract gets its publisher, whatever the ``publish_*`` toggles say now:
        the toggles change live, and an output nobody listens to costs nothing (it is not computed).
        """
        latched = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE,
                             durability=QoSDurabilityPolicy.TRANSIENT_LOCAL, history=QoSHistoryPolicy.KEEP_LAST)
        self._pubs = {}
        if HAVE_CUSTOM_MSGS:
            self._pubs["info"] = self._pub(rclpy_types(contract.INFO), f"~/{contract.INFO_SUFFIX}", latched)
        else:
            self.get_logger().warning(
                "liteseg_ros messages are not built: ~/info, ~/stats and ~/drivable_boundary are disabled "
                "(build the package with colcon, or run scripts/setup_venv.sh)")
        if HAVE_VISION_MSGS:
            self._pubs["label_info"] = self._pub(LabelInfo, f"~/{contract.LABEL_INFO_SUFFIX}", latched)
        self._make_camera_publishers()

    def _pub(self, kind, topic: str, profile: QoSProfile | None = None, matched=None, lifecycle: bool = False):
        profile = profile or QoSProfile(depth=5, reliability=QoSReliabilityPolicy.RELIABLE,
                                        durability=QoSDurabilityPolicy.VOLATILE, history=QoSHistoryPolicy.KEEP_LAST)
        events = PublisherEventCallbacks(matched=matched) if matched is not None else None
        pub = (self.create_lifecycle_publisher if lifecycle else self.create_publisher)(
            kind, topic, profile, event_callbacks=events, qos_overriding_options=QoSOverridingOptions.with_default_policies())
        if lifecycle and self._state_name == "active":  # a mask group added live: enabled like its siblings
            pub.on_activate(None)
        return pub

    def _make_camera_publishers(self) -> None:
        """The contract's outputs of every camera that do not exist yet (new mask groups arrive live).

        Whether an output is computed depends on its subscribers; each publisher's "matched" event
        keeps that count on the Camera as subscribers come and go, so the worker reads a number
        instead of asking rmw for every output on every frame. Where rclpy or the rmw has no such
        event, the count is asked when needed (Camera.listening). They are lifecycle publishers: they
        send only while the node is active (ros2/demos' lifecycle_py), the fast send path included.
        """
        for cam in self.cameras:
            for out in contract.camera_outputs(self.pipeline.config.mask_groups, HAVE_CUSTOM_MSGS):
                if out.suffix in cam.pubs:
                    continue
                kind, topic = rclpy_types(out.msgtype), cam.output(out.suffix)
                if HAVE_MATCHED_EVENTS:
                    try:
                        cam.matched[out.suffix] = 0  # before the publisher exists: its first event comes after
                        cam.pubs[out.suffix] = self._pub(kind, topic, lifecycle=True, matched=lambda info, cam=cam,
                                                         s=out.suffix: cam.on_matched(s, info.current_count))
                        continue
                    except UnsupportedEventTypeError:
                        del cam.matched[out.suffix]
                cam.pubs[out.suffix] = self._pub(kind, topic, lifecycle=True)

    def _subscribe(self) -> None:
        """Sensor-data QoS (best effort, depth 1) receives from best-effort cameras and reliable bag players."""
        compressed = self.values["input_transport"] == "compressed"
        kind = CompressedImage if compressed else Image
        if self.values["process_all_frames"]:
            # KEEP_ALL: DDS keeps every sample until the node takes it, and a reliable KEEP_ALL writer
            # waits for room instead of overwriting; the FrameSlot waits likewise (see FrameSlot).
            qos = QoSProfile(depth=int(self.values["queue_size"]), reliability=QoSReliabilityPolicy.RELIABLE,
                             history=QoSHistoryPolicy.KEEP_ALL)
        else:
            qos = QoSProfile(depth=1, reliability=qos_profile_sensor_data.reliability,
                             durability=qos_profile_sensor_data.durability, history=QoSHistoryPolicy.KEEP_LAST)
        self._msg_type = kind
        for cam in self.cameras:
            topic = cam.input("image/compressed" if compressed else "image")
            events = SubscriptionEventCallbacks(message_lost=lambda info, cam=cam: self._on_message_lost(cam, info))
            cam.sub = self.create_subscription(kind, topic, cam.on_image, qos, raw=True,
                                               callback_group=self._input_group, event_callbacks=events,
                                               qos_overriding_options=QoSOverridingOptions.with_default_policies())
            cam.input_topic = cam.sub.topic_name
            info_topic = node_guards.camera_info_topic(self, cam.input("camera_info"), cam.input("image"))
            cam.info_sub = self.create_subscription(CameraInfo, info_topic, cam.on_camera_info,
                                                    qos_profile_sensor_data)

    def _on_message_lost(self, cam: Camera, info) -> None:
        """DDS reports samples that never reached this subscription (a publisher overwrote them)."""
        cam.counters.lost_in_dds = int(info.total_count)
        lossless = bool(self.values["process_all_frames"])
        text = node_guards.frames_lost_text(cam.input_topic, info.total_count_change, info.total_count, lossless)
        (self._lost_errors if lossless else self._lost_warnings)(cam.input_topic, text)

    def _unsubscribe(self) -> None:
        for cam in self.cameras:
            cam.slot.close()  # a lossless put waiting for room must not block the executor now
            for s in (cam.sub, cam.info_sub):
                if s is not None:
                    self.destroy_subscription(s)
            cam.sub = cam.info_sub = None

    # ----------------------------------------------------------------------------- worker hooks
    def _stop_worker(self) -> None:
        if self._worker is not None:
            self._worker.stop()
        self._worker = None

    def _wants(self, cam: Camera):
        return contract.wants(self.values, self.pipeline.config.mask_groups, HAVE_CUSTOM_MSGS, cam.listening)

    def _deserialise(self, raw: bytes):
        """Raw Images: the pixels stay in ``raw`` (a numpy view), only the fields before them are parsed."""
        try:
            return wire.parse_image(raw) if self._msg_type is Image else deserialize_message(raw, self._msg_type)
        except Exception as exc:
            raise ValueError(f"a {self._msg_type.__name__}: {exc}") from exc

    def _age_ms(self, msg) -> float:
        now = self.get_clock().now()
        return (now - Time.from_msg(msg.header.stamp, clock_type=now.clock_type)).nanoseconds / 1e6

    # ----------------------------------------------------------------------------- publishing
    def _publish(self, job: Job, seg: Segmentation) -> None:
        """Every output carries the input header unchanged (stamp and frame_id).

        The messages are the contract's, the same ones ``liteseg bag`` writes. Images are not built
        as messages at all: the contract hands back what to send, and ``wire.send_image`` serializes
        the pixels into a buffer the publisher reuses and sends it through rcl with the GIL released.
        """
        cam, header, wants = job.camera, job.msg.header, job.wants
        for suffix, msg in contract.frame_messages(rclpy_types, header, seg, wants, wire.ImageToSend):
            pub = cam.pubs.get(suffix)
            if pub is None:
                continue
            if isinstance(msg, wire.ImageToSend):
                wire.send_image(pub, msg.pixels, msg.encoding, msg.header)
            else:
                pub.publish(msg)
        if wants.label and cam.camera_info is not None and cam.listening("label/camera_info"):
            cam.pubs["label/camera_info"].publish(contract.label_camera_info(rclpy_types, cam.camera_info, header, seg))

    def _publish_info(self) -> None:
        if self.pipeline is None:
            return
        now_ns = self.get_clock().now().nanoseconds
        if "info" in self._pubs:
            self._pubs["info"].publish(contract.info_message(rclpy_types, now_ns, self.pipeline, self.source))
        if "label_info" in self._pubs:
            self._pubs["label_info"].publish(contract.label_info_message(rclpy_types, now_ns, self.pipeline))

    def _publish_stats(self, job: Job, seg: Segmentation, decode_ms: float, publish_ms: float) -> None:
        cam, header, age_ms = job.camera, job.msg.header, job.age_ms
        c = cam.counters
        counts = contract.FrameCounts(received=c.received, processed=c.processed, dropped=cam.dropped,
                                      rejected=c.rejected)
        cam.pubs["stats"].publish(contract.stats_message(rclpy_types, header, cam.name, seg, decode_ms,
                                                         publish_ms, age_ms, counts))

    def _publish_diagnostics(self) -> None:
        """One status per camera (one for the node while it has none: unconfigured, finalized)."""
        info = self.pipeline.engine.info if self.pipeline else None
        statuses = []
        for cam in self.cameras or [None]:
            st = diagnostics.camera_status(self.get_name(), self._state_name, cam.view() if cam else None,
                                           info, self.source)
            if cam is not None:
                cam.reported = cam.counters.totals()
            statuses.append(st)
        self._diagnostics_pub.publish(diagnostic_array(statuses, self.get_clock().now().to_msg()))


    # ----------------------------------------------------------------------------- process hooks
    def autostart(self) -> int | None:
        """``autostart``/``build_only``: configure (and activate) before spinning; an exit code ends early."""
        if not (self.values["autostart"] or self.values["build_only"]):
            return None
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            self.get_logger().fatal("configuration failed (see the error above); exiting")
            return EXIT_USAGE
        if self.values["build_only"]:
            self.get_logger().info("build_only: engine ready; exiting")
            return 0
        self.trigger_activate()
        return None

    def stop(self) -> None:
        self._unsubscribe()
        self._stop_worker()


def main(args: list[str] | None = None) -> int:
    """Console entry point: ``liteseg_node --ros-args --params-file config/liteseg.yaml -r image:=/cam``.

    Exit codes: 0 after Ctrl-C, SIGTERM, ``build_only`` or a lifecycle shutdown; 2 when the node
    cannot start (bad parameters or params file, weights that do not load), with one message.
    Image callbacks run apart from services on a second executor thread (see ``_input_group``).
    """
    argv = list(args if args is not None else sys.argv)
    return process.run(LiteSegNode, NODE_NAME, argv, threads=2, before_init=node_guards.before_rclpy_init)


if __name__ == "__main__":
    sys.exit(main())
