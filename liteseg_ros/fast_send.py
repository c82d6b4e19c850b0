"""The fast send path: a serialized message handed to rcl in place, and all the package's ctypes code.

Ring 3 (ROS edge): imports rclpy (a private context for the self-check) and ctypes; no node, no
pipeline, no message layout (``wire`` builds the bytes, this module only sends them).

Why: rclpy's ``Publisher.publish(bytes)`` hands the buffer to C++ as a ``std::string`` *by value*:
pybind11 copies the whole serialized message (22 MB per 1080p frame of the node's seven images)
before rcl sees it, and the call keeps the GIL for the whole DDS write, so the worker thread cannot
decode or post-process the next frame meanwhile. :func:`send` calls the function rclpy ends in,
``rcl_publish_serialized_message``, through ctypes: rcl reads the Python buffer in place, and ctypes
releases the GIL during the call. The rmw copies the sample into a DDS payload inside ``write``,
before the call returns, so a buffer may be reused once the call is back: :func:`send_parts` keeps
one buffer per publisher and copies the pixels into it with the GIL released too.

Why it is contained: the call uses hand-copied C structs and rclpy's internal ``handle.pointer``, so
an ABI change would corrupt memory rather than raise. So it runs only when all of these hold, decided
once per process (:func:`status`), and otherwise every send is rclpy's ``publish(bytes)``:

1. the environment does not turn it off (``LITESEG_FAST_SEND=0``);
2. the installed rclpy is a release it was checked on (:data:`CHECKED_RCLPY`, read with
   ``importlib.metadata``; a release pins its rcl);
3. ``rcl_publish_serialized_message`` is found in the librcl that rclpy loaded;
4. a loopback self-check passes: a message sent this way on a private topic of a private context
   comes back byte for byte to a subscriber of the same process.

A lifecycle publisher that is not activated goes through its own ``publish``, which drops the
message as rclpy's lifecycle gating says.
"""
from __future__ import annotations

import ctypes
import importlib.metadata
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

#: The environment switch: ``0``/``false``/``no``/``off`` sends every message through rclpy's ``publish``.
ENV = "LITESEG_FAST_SEND"
#: rclpy releases (version prefixes) whose publisher handle and rcl structs this module was checked
#: against: Jazzy's rclpy 7.1.x. Another release falls back until it is checked and added here.
CHECKED_RCLPY = ("7.1.",)
_OFF_WORDS = ("0", "false", "no", "off")
#: How long the self-check waits for its own subscriber to match and for the message to come back.
SELF_CHECK_TIMEOUT_S = 5.0


class _Allocator(ctypes.Structure):
    """``rcutils_allocator_t``: four function pointers and a state pointer (unused by rcl here)."""

    _fields_ = [(name, ctypes.c_void_p) for name in ("allocate", "deallocate", "reallocate", "zero_allocate", "state")]


class _SerializedMessage(ctypes.Structure):
    """``rcl_serialized_message_t`` (``rcutils_uint8_array_t``): buffer, length, capacity, allocator."""

    _fields_ = [("buffer", ctypes.c_void_p), ("buffer_length", ctypes.c_size_t),
                ("buffer_capacity", ctypes.c_size_t), ("allocator", _Allocator)]


#: (publisher handle pointer, serialized message, allocator) -> rcl return code
PublishFunction = Callable[[Any, Any, Any], int]

_status: str | None = None
_function: Any = None
_lock = threading.Lock()


def rclpy_version() -> str:
    """The installed rclpy's version ('' when its distribution metadata is missing)."""
    try:
        return importlib.metadata.version("rclpy")
    except importlib.metadata.PackageNotFoundError:
        return ""


def gate(environ: Mapping[str, str] | None = None, version: str | None = None) -> str:
    """'ok', or why the environment or the rclpy release rules the fast path out (checks 1 and 2)."""
    env = os.environ if environ is None else environ
    value = env.get(ENV, "").strip().lower()
    if value in _OFF_WORDS:
        return f"off: {ENV}={env.get(ENV)}"
    version = rclpy_version() if version is None else version
    if not version.startswith(CHECKED_RCLPY):
        return (f"off: rclpy {version or '(version unknown)'} is not a release the fast path was checked on "
                f"({', '.join(v + 'x' for v in CHECKED_RCLPY)})")
    return "ok"


def _loaded_librcl() -> str | None:
    """Path of the librcl rclpy itself loaded (so ctypes binds the very same library), or None."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rsplit(None, 1)[-1] if "/" in line else ""
                if path.rsplit("/", 1)[-1].startswith("librcl.so"):
                    return path
    except OSError:
        pass
    return None


def _find_function() -> Any:
    """``rcl_publish_serialized_message`` from the librcl in this process, or None (check 3)."""
    import rclpy.publisher  # noqa: F401  (rclpy's extension, and with it librcl, is loaded)

    for name in (_loaded_librcl(), "librcl.so"):
        if not name:
            continue
        try:
            fn = ctypes.CDLL(name).rcl_publish_serialized_message
        except (OSError, AttributeError):
            continue
        fn.argtypes = [ctypes.c_void_p, ctypes.POINTER(_SerializedMessage), ctypes.c_void_p]
        fn.restype = ctypes.c_int
        return fn
    return None


def _reset_rcl_error() -> None:
    """Clear the error rcl left in its thread-local state (rclpy resets it after raising, too)."""
    try:
        ctypes.CDLL("librcutils.so").rcutils_reset_error()
    except (OSError, AttributeError):
        pass


def self_check(fn: PublishFunction, timeout: float = SELF_CHECK_TIMEOUT_S) -> str:
    """'ok' when a message sent through ``fn`` comes back byte for byte (check 4), else what went wrong.

    A private context and node (hidden names, so graph tools do not list them), one reliable
    publisher and a raw subscriber on a topic unique to this process, torn down before returning.
    """
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, QoSReliabilityPolicy
    from std_msgs.msg import String

    ctx = Context()
    rclpy.init(context=ctx, args=[])
    node = executor = None
    try:
        node = rclpy.create_node(f"_liteseg_fast_send_check_{os.getpid()}", context=ctx,
                                 start_parameter_services=False, enable_rosout=False)
        qos = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE)
        topic = f"/_liteseg_fast_send_check/p{os.getpid()}_{threading.get_ident()}"
        got: list[bytes] = []
        node.create_subscription(String, topic, got.append, qos, raw=True)
        pub = node.create_publisher(String, topic, qos)
        executor = SingleThreadedExecutor(context=ctx)
        executor.add_node(node)
        deadline = time.monotonic() + timeout
        while pub.get_subscription_count() < 1 and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.01)
        if pub.get_subscription_count() < 1:
            return f"self-check failed: its own subscriber did not match within {timeout:g} s"
        from rclpy.serialization import serialize_message

        data = serialize_message(String(data=f"liteseg fast send self-check {os.getpid()}"))
        buf = ctypes.create_string_buffer(data, len(data))
        msg = _SerializedMessage(ctypes.addressof(buf), len(data), len(data))
        with pub.handle:
            rc = fn(pub.handle.pointer, ctypes.byref(msg), None)
        if rc != 0:
            _reset_rcl_error()
            return f"self-check failed: rcl_publish_serialized_message returned {rc}"
        while not got and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.01)
        if not got:
            return f"self-check failed: the message did not come back within {timeout:g} s"
        if bytes(got[0]) != data:
            return "self-check failed: the message came back changed"
        return "ok"
    finally:
        if executor is not None:
            executor.shutdown()
        if node is not None:
            node.destroy_node()
        ctx.try_shutdown()


def status() -> str:
    """'ok' when :func:`send` and :func:`send_parts` take the fast path in this process, else why they
    do not (decided once, on first use: the self-check costs a private DDS participant)."""
    global _status, _function
    with _lock:
        if _status is None:
            why = gate()
            fn = None
            if why == "ok":
                fn = _find_function()
                why = "ok" if fn is not None else "off: rcl_publish_serialized_message not found in librcl"
            if why == "ok":
                why = self_check(fn)
            _status, _function = why, (fn if why == "ok" else None)
        return _status


def reset() -> None:
    """Forget the decision, so the next send decides again (after changing :data:`ENV`; tests)."""
    global _status, _function
    with _lock:
        _status, _function = None, None


def _usable(publisher: Any) -> Any:
    """The rcl function when ``publisher`` may be sent to through it now, else None."""
    if status() != "ok" or getattr(publisher, "is_activated", True) is False:  # lifecycle gating: rclpy's
        return None
    return _function if hasattr(getattr(publisher, "handle", None), "pointer") else None


def send(publisher: Any, data: bytes) -> None:
    """Publish an already serialized message without the copy and GIL hold of ``publish(bytes)``.

    Same effect as ``publisher.publish(data)``, which it falls back to where the fast path is off
    (:func:`status`), and which it repeats when rcl reports a failure, so the caller gets rclpy's own
    exception and message (rcl did not send the sample then).
    """
    fn = _usable(publisher)
    if fn is None:
        publisher.publish(data)
        return
    handle = publisher.handle
    buf = ctypes.c_char_p(data)  # points at the bytes object's own storage: no copy
    msg = _SerializedMessage(ctypes.cast(buf, ctypes.c_void_p), len(data), len(data))
    with handle:  # rclpy's guard: the publisher cannot be destroyed during the call
        rc = fn(handle.pointer, ctypes.byref(msg), None)
    if rc != 0:
        _reset_rcl_error()
        publisher.publish(data)


class _Outbox:
    """One publisher's reusable send buffer (and the lock that serialises its use)."""

    __slots__ = ("address", "buf", "lock")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.address = 0
        self.lock = threading.Lock()

    def reserve(self, size: int) -> None:
        """Make the buffer exactly ``size`` bytes (a new one only when the message size changes)."""
        if len(self.buf) != size:
            self.buf = bytearray(size)
            self.address = ctypes.addressof((ctypes.c_char * size).from_buffer(self.buf))


_outboxes: weakref.WeakKeyDictionary[Any, _Outbox] = weakref.WeakKeyDictionary()
_outboxes_lock = threading.Lock()


def send_parts(publisher: Any, head: bytes, tail: np.ndarray, fallback: Callable[[], bytes]) -> None:
    """Publish the serialized message ``head + tail's bytes``, with ``tail`` copied once, outside the
    GIL, into a buffer this publisher reuses (one per publisher, the size of its last message, freed
    with the publisher object). Where the fast path is off, ``publisher.publish(fallback())``."""
    fn = _usable(publisher)
    if fn is None:
        publisher.publish(fallback())
        return
    n = tail.nbytes
    size = len(head) + n
    with _outboxes_lock:
        box = _outboxes.get(publisher)
        if box is None:
            box = _outboxes[publisher] = _Outbox()
    handle = publisher.handle
    with box.lock:
        box.reserve(size)
        box.buf[:len(head)] = head
        ctypes.memmove(box.address + len(head), np.ascontiguousarray(tail).ctypes.data, n)  # releases the GIL
        out = _SerializedMessage(box.address, size, size)
        with handle:
            rc = fn(handle.pointer, ctypes.byref(out), None)
        if rc != 0:
            _reset_rcl_error()
            publisher.publish(bytes(box.buf))
