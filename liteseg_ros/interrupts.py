"""Ctrl-C while a command starts: one line instead of a traceback from inside a C extension's import.

Ring 0: standard library only. Shared by ``liteseg`` (cli.py) and the bag tool, which both import
heavy libraries (torch, OpenCV, rosbags) after parsing their arguments.
"""
from __future__ import annotations

import contextlib
import signal
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
