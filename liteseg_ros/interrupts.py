"""Ctrl-C, both ways: while a command starts, and when we stop a child process of ours.

* While a command starts: one line instead of a traceback from inside a C extension's import.
  Shared by ``liteseg`` (cli.py) and the bag tool, which both import heavy libraries (torch, OpenCV,
  rosbags) after parsing their arguments.
* :func:`stop_child`: how ``liteseg demo``, the benchmarks, the fuzzer and the tests stop a node they
  started, the way an operator would (Ctrl-C, a grace period, then SIGKILL for what did not listen).

Ring 0: standard library only.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading


def quiet_interrupt_hook(previous=sys.excepthook):
    """An excepthook that prints one line for a KeyboardInterrupt and defers everything else."""

    def hook(exc_type, exc, tb):
        if issubclass(exc_type, KeyboardInterrupt):
            print("interrupted", file=sys.stderr)
            return
        previous(exc_type, exc, tb)

    return hook


@contextlib.contextmanager
def deferred_interrupts():
    """Hold SIGINT while importing: yields a list that is non-empty if Ctrl-C came meanwhile.

    A KeyboardInterrupt raised inside the import of a C extension (numpy, torch, OpenCV) does not
    always come out as KeyboardInterrupt: numpy turns it into an ImportError with a long
    "could not import module" traceback. So the seconds a command spends importing are not
    interrupted; the caller checks the list afterwards and stops cleanly.
    """
    pending: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield pending
        return
    old = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield pending
    finally:
        signal.signal(signal.SIGINT, old)


def stop_child(proc: subprocess.Popen, grace: float = 15.0, group: bool = False) -> int | None:
    """Stop a child started with ``start_new_session=True``; returns its exit code (None if it would not die).

    SIGINT first, to the child alone or, with ``group``, to its whole process group as a terminal's
    Ctrl-C does (``ros2 launch`` and its nodes all hear it): a node stops in order and exits 0. After
    ``grace`` seconds the group is killed, so a child that hangs cannot outlive the caller, and neither
    can anything it started.
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(proc.pid, signal.SIGINT)
            else:
                proc.send_signal(signal.SIGINT)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
    return proc.returncode
