"""CPU speed knobs for inference processes: glibc malloc thresholds and one thread count for all runtimes.

Ring 2: imports ctypes/os and (lazily) torch; never rclpy, message packages, or the node/bag/codec
modules.

Why malloc: glibc serves every allocation above ``M_MMAP_THRESHOLD`` (dynamic, starting at 128 KiB)
with a fresh ``mmap`` and returns it with ``munmap`` on free; above ``M_TRIM_THRESHOLD`` it gives the
heap top back to the kernel. Eager PyTorch allocates and frees tens of MiB of activations per frame,
so every frame pays page faults and zeroing for the same buffers. Raising the mmap threshold to
32 MiB (glibc's maximum on 64-bit) and the trim threshold to 1 GiB keeps those buffers in the heap
and reuses them: measured 1.6x for eager PyTorch at 640x360 (benchmarks/bench_engines.py). The same effect, for a
process you start, comes from the environment variables ``MALLOC_MMAP_THRESHOLD_=33554432`` and
``MALLOC_TRIM_THRESHOLD_=1073741824`` set before start. Cost: the process keeps up to the peak
working set resident instead of returning it between frames.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys

#: mallopt parameter numbers from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

DEFAULT_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc caps M_MMAP_THRESHOLD at 32 MiB on 64-bit
DEFAULT_TRIM_THRESHOLD = 1024 * 1024 * 1024

_num_threads: int | None = None


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt  # noqa: B018  (attribute lookup: raises AttributeError off glibc)
    except (OSError, AttributeError):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc


def tune_malloc(mmap_threshold: int = DEFAULT_MMAP_THRESHOLD,
                trim_threshold: int = DEFAULT_TRIM_THRESHOLD) -> bool:
    """Set glibc's M_MMAP_THRESHOLD and M_TRIM_THRESHOLD for this process (see module docstring).

    Returns True when both were applied; False (and changes nothing) off glibc, e.g. macOS or musl.
    Affects allocations made after the call, so call it once at start, before loading the model.
    Raises ValueError for a threshold glibc would reject (mmap > 32 MiB or negative values).
    """
    if not 0 <= mmap_threshold <= DEFAULT_MMAP_THRESHOLD:
        raise ValueError(f"mmap_threshold must be in [0, {DEFAULT_MMAP_THRESHOLD}] (glibc's cap), "
                         f"got {mmap_threshold}")
    if not 0 <= trim_threshold < 2**31:
        raise ValueError(f"trim_threshold must be in [0, 2**31), got {trim_threshold}")
    libc = _glibc()
    if libc is None:
        return False
    ok_mmap = libc.mallopt(M_MMAP_THRESHOLD, int(mmap_threshold)) == 1
    ok_trim = libc.mallopt(M_TRIM_THRESHOLD, int(trim_threshold)) == 1
    return ok_mmap and ok_trim


def set_num_threads(n: int | None, import_torch: bool = True) -> int:
    """Use ``n`` intra-op threads in torch and in ONNX Runtime sessions created afterwards.

    ``None`` keeps torch's current setting and only records it. Returns the value in effect.
    ``import_torch=False`` (the engine factory) sets torch's count only when torch is already
    imported: an ONNX Runtime start from a warm cache never needs torch, and whoever imports it
    later for a model (``create_engine``'s lazy model load) sets the count then.
    """
    global _num_threads
    if n is not None and int(n) < 1:
        raise ValueError(f"num_threads must be >= 1, got {n}")
    if not import_torch and "torch" not in sys.modules:
        _num_threads = int(n) if n is not None else get_num_threads()
        return _num_threads
    import torch

    if n is not None:
        torch.set_num_threads(int(n))
    _num_threads = int(n) if n is not None else torch.get_num_threads()
    return _num_threads


def get_num_threads() -> int:
    """The thread count given to ONNX Runtime sessions: the last :func:`set_num_threads` value, else
    torch's when torch is imported (it defaults to the number of physical cores), else the CPUs this
    process may run on (``os.sched_getaffinity``; importing torch just to ask would cost seconds)."""
    if _num_threads is not None:
        return _num_threads
    if "torch" in sys.modules:
        return sys.modules["torch"].get_num_threads()
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def tune_malloc_at_startup() -> bool:
    """What the node and the `liteseg` tools call first: tune_malloc unless LITESEG_MALLOC_TUNING=0.

    Overridable because the tuned process keeps its peak working set resident (see module docstring).
    """
    if os.environ.get("LITESEG_MALLOC_TUNING", "1") == "0":
        return False
    return tune_malloc()


def session_options(num_threads: int | None = None):
    """SessionOptions: full graph optimisation, sequential execution, ``num_threads`` intra-op threads
    (default: ``cpu_tuning.get_num_threads()``, i.e. the same count torch uses), no spinning.

    By default ONNX Runtime's pool threads keep spinning on their cores for a while after ``run``
    returns, waiting for more work. In the node the next work is the frame's post-processing and
    publishing, whose OpenCV steps split across the same cores and then wait for the spinning
    threads. Measured in the node at 1080p (2 cores, alternating runs): post-processing 46-72 ms
    with spinning, 18-33 ms without; publishing 76-93 -> 25-27 ms; the forward itself did not get
    slower (324-416 -> 177-205 ms on that loaded machine).
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = int(num_threads) if num_threads else get_num_threads()
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so
