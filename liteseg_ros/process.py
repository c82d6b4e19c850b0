"""The process around a node: signals, exit codes and the spin loop, shared by both console entries.

Ring 3 (ROS edge). ``liteseg_node`` and ``liteseg_free_space`` both start the same way: params files
checked as rcl reads them, rclpy initialised without its signal handlers, the node made, optionally
configured and activated, spun until a signal or a lifecycle shutdown, then stopped, destroyed and
rclpy shut down, in that order. :func:`run` is that once; a node supplies two hooks:
``autostart() -> int | None`` (an exit code to end with at once, or None to spin) and ``stop()``
(unsubscribe and stop its threads before it is destroyed).
"""
from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import Any

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.signals import SignalHandlerOptions

from liteseg_ros import node_guards
from liteseg_ros.defaults import EXIT_USAGE
from liteseg_ros.weights import cancel_downloads


class StartupError(RuntimeError):
    """The node cannot start as configured (bad parameter file, missing weights); exits with code 2."""


class StopOnSignal:
    """SIGINT/SIGTERM -> an orderly stop of the spin loop, never a KeyboardInterrupt.

    rclpy's own handler shuts the context down at once, while the worker may still be publishing
    ("publisher's context is invalid"), and a second Ctrl-C (a terminal and ``ros2 launch`` both
    send one) used to land as a KeyboardInterrupt inside thread joins. Here every signal only sets
    an event; :func:`run` then stops the node, destroys it and shuts rclpy down, in that order.
    A third signal while that hangs exits at once.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.count = 0
        self.install()

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    @staticmethod
    def ignore_from_now_on() -> None:
        """Ignore SIGINT/SIGTERM once everything is stopped. A terminal's Ctrl-C and the one ``ros2
        launch`` forwards can arrive a second apart, and Python's interpreter shutdown (seconds with
        torch loaded) puts Python-set handlers back to the default, which would end the process by
        the signal (exit -2) instead of the 0 it returns; an ignored signal stays ignored there."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)

    def _handle(self, signum, frame) -> None:
        self.count += 1
        self.event.set()
        cancel_downloads()  # a weights download in a service-triggered configure stops too
        if self.count >= 3:
            os._exit(128 + signum)


def run(make_node: Callable[[], Any], name: str, argv: list[str], *, threads: int,
        before_init: Callable[[Any], None] | None = None) -> int:
    """Run one node in this process; the exit code.

    0 after Ctrl-C, SIGTERM, a lifecycle shutdown or an ``autostart`` hook that ends early with 0;
    2 (``EXIT_USAGE``) when it cannot start (a params file rcl cannot parse, bad parameters, a
    StartupError, a failed autostart), with one message. ``before_init(log)`` runs after the signal
    handlers are installed and before ``rclpy.init`` (what must precede the DDS participant).
    """
    log = rclpy.logging.get_logger(name)
    problem = node_guards.params_file_problem(argv)  # parsing the files is rcl's job
    if problem:
        log.fatal(problem)
        return EXIT_USAGE
    stop = StopOnSignal()
    if before_init is not None:
        before_init(log)
    try:
        rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
    except Exception as exc:  # rcl's own errors: a params file it cannot parse, a bad -p, --ros-args syntax
        log.fatal(node_guards.rcl_init_problem(exc))
        return EXIT_USAGE
    node = None
    try:
        try:
            node = make_node()
        except StartupError as exc:
            log.fatal(str(exc))
            return EXIT_USAGE
        code = node.autostart()
        if code is not None:
            return code
        executor = MultiThreadedExecutor(num_threads=threads)
        executor.add_node(node)
        errors = node_guards.CallbackErrors(node.get_logger().error)  # one bad callback never ends the node
        while not stop.event.is_set() and not node.finished.is_set() and rclpy.ok():
            errors.spin_once(executor, 0.1)
        if node.finished.is_set():  # the shutdown request's answer goes out once its callback returns
            node_guards.wait_for_callbacks(executor, timeout_s=2.0)
        if stop.event.is_set():
            node.get_logger().info("stopping (signal received)")
    except ExternalShutdownException:
        pass
    finally:
        if node is not None:
            node.stop()
            node.destroy_node()
        rclpy.try_shutdown()
        stop.ignore_from_now_on()
    return 0
