"""Which engine to build: a request (what was asked, what this machine has) becomes a plan (what to build, and why).

Ring 2, and pure: :func:`plan_engine` reads only the :class:`EngineRequest` it is given and builds
nothing, so every selection rule is a unit test away (``test/test_engines.py``) without a runtime,
a GPU or a checkpoint. What the machine has (installed runtimes, CUDA, CPU capabilities, cached
int8 files) comes in through :class:`Facts`; ``factory.MachineFacts`` answers it lazily in the
node, so a warm start imports only the runtime it ends up using.

The rules, in words:

- device ``cuda[:N]``, backend ``auto``: TensorRT when it is installed, else PyTorch CUDA (an ONNX
  file: ONNX Runtime CUDA). If CUDA is missing, the CPU choice below, saying so in the reason.
- precision ``auto`` on CUDA is fp16 (:func:`requested_precision`, the only place that says so);
  on a CPU under backend ``auto``, fp16 becomes fp32 (with a note); with a named backend it is an
  error, because the caller asked for something this device cannot do.
- device ``cpu``, precision ``auto``: the measured CPU paths (``data/cpu_paths.yaml``) fastest
  first, restricted to the installed runtimes; bf16 only where the CPU reports BF16; int8 only with
  a cached int8 file (``liteseg quantize``), and not when its report says its label agreement with
  fp32 is below ``min_label_agreement``. fp32 is the reference and always qualifies. Candidates
  whose agreement is only known once built (bf16, int8 without a report) are checked by the
  builder, which takes the first that qualifies.
- precision ``int8`` with weights (not an ONNX file) whose int8 file is not in the cache: nothing is
  quantized while an engine is built (that takes most of a minute); the plan is precision ``auto``
  without int8 (the best non-int8 path of the backend asked for) with a warning saying to run
  ``liteseg quantize``.
- an ONNX file as weights runs on an ONNX runtime only (not PyTorch), at the precision its types say.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from typing import Protocol

from .base import EngineError

BACKENDS = ("auto", "pytorch", "onnxruntime", "tensorrt", "openvino")
PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")
#: The runtimes that run an ONNX file on the CPU (and the reduced CPU precisions bf16/int8).
CPU_BACKENDS = ("onnxruntime", "openvino")
#: Label agreement with PyTorch fp32 a reduced-precision CPU path needs before ``auto`` picks it.
DEFAULT_MIN_LABEL_AGREEMENT = 0.99
#: Allowed ``min_label_agreement``: above 1 no bf16/int8 path qualifies (a way to say "fp32 only").
MIN_LABEL_AGREEMENT_RANGE = (0.0, 1.5)
#: What ``precision: auto`` means on a CUDA device: fp16 is the fast GPU precision and keeps the
#: labels of fp32 (>= 99 %, test_engines); every CUDA path reads it from here.
CUDA_AUTO_PRECISION = "fp16"
#: The devices the engines take (a regular expression); parameters also allow ``auto`` (see
#: :func:`resolve_device`).
DEVICE_FORMS = r"cpu|cuda(:\d+)?"
DEVICE_PATTERN = rf"^({DEVICE_FORMS})$"
#: The fp32 CPU backend ``auto`` falls to first: ONNX Runtime with in-graph post-processing measured
#: 2.5x faster than eager PyTorch fp32 and 1.8x faster than PyTorch channels_last+folded BN at 360x640
#: on 2 threads (benchmarks/bench_engines.py); the first fp32 row of both CPU path tables.
CPU_DEFAULT_BACKEND = "onnxruntime"
#: The data file of the measured CPU path order (package data; see its header for how it was made).
CPU_PATHS_FILE = "cpu_paths.yaml"


def parse_device(device: str) -> str:
    """``cpu`` | ``cuda`` | ``cuda:N`` in any case -> lower case; EngineError naming the forms otherwise.

    The one device rule of the engines (PyTorch turns the answer into a ``torch.device``).
    """
    d = str(device).strip().lower()
    if not re.match(DEVICE_PATTERN, d):
        raise EngineError(f"device {device!r} is not one of: cpu, cuda, cuda:N (N = GPU index)")
    return d


def is_cuda(device: str) -> bool:
    return device == "cuda" or device.startswith("cuda:")


def requested_precision(device: str, precision: str) -> str:
    """``auto`` on a CUDA device is :data:`CUDA_AUTO_PRECISION`; on a CPU it stays ``auto`` (the CPU
    choice picks among fp32/bf16/int8 by measurement); anything else is kept."""
    if precision == "auto" and is_cuda(device):
        return CUDA_AUTO_PRECISION
    return precision


def resolve_device(device: str, precision: str, cuda_available=None) -> tuple[str, str]:
    """A settings pair (device may be ``auto``) -> (cpu | cuda[:N], precision per :func:`requested_precision`).

    ``auto`` is CUDA when it is usable, else the CPU; ``cuda_available`` (a no-argument callable)
    answers that, default: a driver is present and torch says so (torch is imported only then).
    """
    if device == "auto":
        if cuda_available is None:
            def cuda_available() -> bool:
                if not cuda_driver_present():
                    return False
                import torch

                return bool(torch.cuda.is_available())

        device = "cuda" if cuda_available() else "cpu"
    return device, requested_precision(device, precision)


def cuda_driver_present() -> bool:
    """False when this Linux machine certainly has no NVIDIA driver (then CUDA cannot be available
    and ``device: auto`` is the CPU without importing torch to ask); True otherwise."""
    import os
    import sys

    if not sys.platform.startswith("linux"):
        return True
    return any(os.path.exists(p) for p in ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/nvidia0"))


def check_min_label_agreement(value: float) -> float:
    lo, hi = MIN_LABEL_AGREEMENT_RANGE
    if not lo <= float(value) <= hi:
        raise EngineError(f"min_label_agreement must be in [{lo:g}, {hi:g}] (above 1 no bf16/int8 path "
                          f"qualifies), got {value}")
    return float(value)


@lru_cache(maxsize=1)
def _cpu_path_tables() -> dict[str, tuple[tuple[str, str, float], ...]]:
    import yaml

    doc = yaml.safe_load((resources.files("liteseg_ros") / "data" / CPU_PATHS_FILE).read_text())
    return {name: tuple((str(b), str(p), float(ms)) for b, p, ms in doc[name]["paths"]) for name in ("bf16", "no_bf16")}


def cpu_path_ranking(caps=None) -> tuple[tuple[str, str, float], ...]:
    """CPU (backend, precision, measured ms) fastest first, for a CPU with capabilities ``caps``
    (OpenVINO names such as ``BF16``, as a set or a comma string; default: this CPU's)."""
    if not isinstance(caps, frozenset):
        from .openvino import cpu_capabilities_for_ranking

        caps = cpu_capabilities_for_ranking(caps)
    return _cpu_path_tables()["bf16" if "BF16" in caps else "no_bf16"]


class Facts(Protocol):
    """What the machine and the files say, as the planner needs it (``factory.MachineFacts`` asks
    lazily; tests pass :class:`StaticFacts`)."""

    def status(self, backend: str) -> str:
        """'ok' or why ``backend`` cannot run here."""

    def cuda_available(self) -> bool: ...

    def ort_cuda(self) -> bool:
        """Whether ONNX Runtime has its CUDA execution provider (onnxruntime-gpu)."""

    def cpu_caps(self) -> frozenset[str]: ...

    def onnx_precision(self) -> str:
        """The given ONNX file's precision by its types: fp32, fp16 or int8 (QDQ)."""

    def int8_file(self) -> bool:
        """Whether the engine cache holds an int8 file of the weights at the network size."""

    def int8_report(self, backend: str) -> tuple[float, str] | None:
        """(label agreement, where it comes from) of that cached int8 file's report for ``backend``."""


@dataclass(frozen=True)
class StaticFacts:
    """:class:`Facts` given as values (tests, and tools that already know the answers)."""

    statuses: Mapping[str, str] = field(default_factory=lambda: {b: "ok" for b in BACKENDS[1:]})
    cuda: bool = False
    ort_gpu: bool = False
    caps: frozenset[str] = frozenset({"FP32", "INT8"})
    file_precision: str = "fp32"
    has_int8_file: bool = False
    reports: Mapping[str, tuple[float, str]] = field(default_factory=dict)

    def status(self, backend: str) -> str:
        return self.statuses.get(backend, f"{backend} not installed")

    def cuda_available(self) -> bool:
        return self.cuda

    def ort_cuda(self) -> bool:
        return self.ort_gpu

    def cpu_caps(self) -> frozenset[str]:
        return self.caps

    def onnx_precision(self) -> str:
        return self.file_precision

    def int8_file(self) -> bool:
        return self.has_int8_file

    def int8_report(self, backend: str) -> tuple[float, str] | None:
        return self.reports.get(backend)


@dataclass(frozen=True)
class EngineRequest:
    """What the caller asked for: backend, device, precision and agreement floor as given (checked by
    :func:`plan_engine`), whether the weights are an ONNX file, and what this machine has."""

    backend: str = "auto"
    device: str = "cpu"
    precision: str = "auto"
    min_label_agreement: float = DEFAULT_MIN_LABEL_AGREEMENT
    is_onnx: bool = False
    facts: Facts = field(default_factory=StaticFacts)
    #: the weights as the caller named them, for messages
    source_name: str = ""
    #: the network size as ``HxW``, for messages
    input_size: str = ""


#: Which file an engine runs: the module itself, the ONNX file given as weights, the cached ONNX
#: export with uint8 outputs (CPU runtimes, ONNX Runtime CUDA), the cached export with int32/float
#: outputs that TensorRT builds from, or the cached int8 (QDQ) file.
FILES = ("module", "given", "onnx", "onnx-trt", "int8")


@dataclass(frozen=True)
class Choice:
    """One engine to build: backend, device, precision, which file (:data:`FILES`) and why.

    ``agreement`` is the label agreement with fp32 known before building (fp32: 1.0, int8: its
    report) with ``agreement_source``; None means the builder measures it once built (or, for a given
    ONNX file, cannot). ``rank`` is the place in the CPU path table (0 outside the CPU choice).
    """

    backend: str
    device: str
    precision: str
    file: str
    reason: str
    agreement: float | None = 1.0
    agreement_source: str = "fp32 reference"
    rank: int = 0


@dataclass(frozen=True)
class EnginePlan:
    """What :func:`plan_engine` decided: the choices in order (the builder uses the first it can; more
    than one only for the CPU choice and for TensorRT under ``auto``, which falls back to PyTorch
    CUDA if it fails to build), and what the CPU choice needs to finish its reason."""

    choices: tuple[Choice, ...]
    #: the CPU choice: compare built candidates' agreement with the floor (precision auto)
    enforce_agreement: bool = False
    min_label_agreement: float = DEFAULT_MIN_LABEL_AGREEMENT
    #: why earlier paths of the CPU table were passed over before building anything
    skipped: tuple[str, ...] = ()
    #: notes every reason starts with (CUDA missing, fp16 made fp32, no BF16, int8 file missing)
    notes: tuple[str, ...] = ()
    #: the CPU choice's reason head: "auto: CPU default" or "backend X requested, precision auto:"
    head: str = ""
    caps: frozenset[str] = frozenset()
    ranking_size: int = 0
    #: what the caller should be warned about (a request the plan could not meet as asked)
    warnings: tuple[str, ...] = ()

    @property
    def first(self) -> Choice:
        return self.choices[0]

    @property
    def is_cpu_choice(self) -> bool:
        return bool(self.head)


def plan_engine(req: EngineRequest) -> EnginePlan:
    """The plan for ``req`` (see the module docstring); EngineError for a request no engine can meet."""
    backend, precision = req.backend, req.precision
    if backend not in BACKENDS:
        raise EngineError(f"backend {backend!r} is not one of: {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise EngineError(f"precision {precision!r} is not one of: {', '.join(PRECISIONS)}")
    dev = parse_device(req.device)
    floor = check_min_label_agreement(req.min_label_agreement)
    if precision == "int8" and backend in ("auto", *CPU_BACKENDS) and not is_cuda(dev) and not req.is_onnx \
            and not req.facts.int8_file():
        return _plan_without_int8_file(req, backend, floor)
    if backend == "auto":
        return _plan_auto(req, dev, floor)
    return _plan_named(req, backend, dev, floor)


def _plan_without_int8_file(req: EngineRequest, backend: str, floor: float) -> EnginePlan:
    """int8 asked for, no int8 file cached: the best non-int8 path (precision auto skips int8 without a
    file), with a warning naming the command that makes the file."""
    size = f" --size {req.input_size}" if req.input_size else ""
    warning = (f"precision int8 requested but the engine cache holds no int8 model of {req.source_name or 'these weights'}"
               f"{' at ' + req.input_size if req.input_size else ''}: running the best non-int8 path; run "
               f"`liteseg quantize --weights {req.source_name or 'WEIGHTS'}{size}` (with --cache-dir when "
               f"engine_cache_dir is set) once to make it")
    auto = EngineRequest(backend, "cpu", "auto", floor, False, req.facts, req.source_name, req.input_size)
    plan = plan_engine(auto)
    return replace(plan, notes=(*plan.notes, "int8 requested but no int8 model in the cache (run `liteseg quantize`)"),
                   warnings=(*plan.warnings, warning))


def _plan_named(req: EngineRequest, backend: str, dev: str, floor: float) -> EnginePlan:
    facts = req.facts
    status = facts.status(backend)
    if status != "ok":
        raise EngineError(f"backend {backend!r} unavailable: {status}")
    precision = requested_precision(dev, req.precision)
    reason = f"backend {backend} requested"
    if precision == "auto":  # a CPU runtime on the CPU: its fastest qualifying path
        if backend in CPU_BACKENDS:
            return _plan_cpu(req, backend, "auto", (), floor)
        precision = "fp32"
    if precision in ("bf16", "int8") and backend not in CPU_BACKENDS:
        raise EngineError(f"precision {precision!r} is a CPU precision of backend openvino (bf16, int8) "
                          f"and onnxruntime (int8), not of {backend!r}")
    if precision == "bf16" and backend == "onnxruntime":
        raise EngineError("precision 'bf16' is not supported by the onnxruntime backend (allowed: fp32, "
                          "int8); use backend openvino for bf16")
    if precision == "fp16" and not is_cuda(dev):
        allowed = {"pytorch": "fp32", "onnxruntime": "fp32, int8", "openvino": "fp32, bf16, int8"}.get(backend, "")
        raise EngineError(f"precision 'fp16' needs a CUDA device with the {backend} backend (CPU fp16 runs "
                          f"through casts, slower than fp32; on cpu allowed: {allowed})")
    if req.is_onnx and is_cuda(dev) and req.precision == "auto":  # a given file's types fix its precision
        precision = facts.onnx_precision()
    if backend == "pytorch":
        if req.is_onnx:
            raise EngineError(f"backend pytorch needs weights (a checkpoint or a module), not an ONNX file: "
                              f"{req.source_name}")
        return EnginePlan((Choice("pytorch", dev, precision, "module", reason),))
    if backend == "openvino" and dev != "cpu":
        raise EngineError(f"backend openvino runs on device cpu here, got device {dev!r}")
    if backend == "onnxruntime" and precision == "int8" and dev != "cpu":
        raise EngineError(f"precision int8 runs on device cpu, got {dev!r}")
    if backend == "tensorrt":
        return EnginePlan((Choice("tensorrt", dev, precision, "given" if req.is_onnx else "onnx-trt", reason),))
    if req.is_onnx:
        file = "given"
    else:
        file = "int8" if precision == "int8" else "onnx"
    return EnginePlan((Choice(backend, dev, precision, file, reason, *_known_agreement(req, backend, precision)),))


def _plan_auto(req: EngineRequest, dev: str, floor: float) -> EnginePlan:
    facts = req.facts
    precision = requested_precision(dev, req.precision)
    notes: list[str] = []
    if is_cuda(dev):
        if facts.cuda_available():
            trt = facts.status("tensorrt")
            file_prec = facts.onnx_precision() if req.is_onnx and precision in ("fp32", "fp16") else precision
            if trt == "ok":
                first = Choice("tensorrt", dev, file_prec, "given" if req.is_onnx else "onnx-trt",
                               "auto: TensorRT available on CUDA")
                if req.is_onnx:
                    return EnginePlan((first,))
                # built only if TensorRT fails (the builder writes the failure into its reason)
                return EnginePlan((first, Choice("pytorch", dev, precision, "module", "auto: PyTorch CUDA")))
            if req.is_onnx:
                if facts.ort_cuda():
                    return EnginePlan((Choice("onnxruntime", dev, file_prec, "given",
                                              f"auto: ONNX file given and TensorRT unavailable ({trt}); "
                                              f"onnxruntime-gpu"),))
                raise EngineError(f"auto: an ONNX file on {dev} needs TensorRT ({trt}) or onnxruntime-gpu; "
                                  f"give the checkpoint to use PyTorch CUDA")
            return EnginePlan((Choice("pytorch", dev, precision, "module",
                                      f"auto: PyTorch CUDA (TensorRT unavailable: {trt})"),))
        notes.append(f"device {dev} requested but CUDA is not available")
    if precision == "fp16":
        notes.append("fp16 is a GPU precision, using fp32 on CPU")
        precision = "fp32"
    # openvino is asked about only when onnxruntime is missing: importing it costs ~0.9 s of a warm start
    if facts.status("onnxruntime") != "ok" and facts.status("openvino") != "ok":
        ort, ov = facts.status("onnxruntime"), facts.status("openvino")
        if req.is_onnx:
            raise EngineError(f"auto: an ONNX file on CPU needs onnxruntime ({ort}) or openvino ({ov})")
        if precision in ("bf16", "int8"):
            raise EngineError(f"precision {precision} needs onnxruntime or openvino, neither is installed")
        why = "; ".join([*notes, f"onnxruntime unavailable ({ort}), openvino unavailable ({ov})"])
        return EnginePlan((Choice("pytorch", "cpu", "fp32", "module", "auto: CPU default pytorch: " + why),))
    return _plan_cpu(req, "any", precision, tuple(notes), floor)


def _known_agreement(req: EngineRequest, backend: str, precision: str) -> tuple[float | None, str]:
    """(agreement, source) known before building: fp32 is the reference; int8 has its report."""
    if precision == "fp32":
        return 1.0, "fp32 reference"
    if precision == "int8" and not req.is_onnx and req.facts.int8_file():
        rep = req.facts.int8_report(backend)
        if rep is not None:
            return rep
    return None, ""


def _plan_cpu(req: EngineRequest, which: str, precision: str, notes: tuple[str, ...], floor: float) -> EnginePlan:
    """The CPU choice: the table's paths fastest first that this request and machine allow."""
    facts = req.facts
    caps = facts.cpu_caps()
    capnames = ",".join(sorted(caps)) or "unknown"
    precisions = ("fp32", "bf16", "int8") if precision == "auto" else (precision,)
    if precision == "bf16" and "BF16" not in caps:
        notes = (*notes, f"bf16 requested but this CPU does not report BF16 (OpenVINO "
                         f"OPTIMIZATION_CAPABILITIES: {', '.join(sorted(caps)) or 'unknown'}); using fp32")
        precisions = ("fp32",)
    enforce = precision == "auto"
    file_prec = facts.onnx_precision() if req.is_onnx else None
    skipped: list[str] = []
    choices: list[Choice] = []
    ranking = cpu_path_ranking(caps)
    for rank, (backend, prec, _ms) in enumerate(ranking, 1):
        tag = f"{backend} {prec}"
        if which != "any" and backend != which or prec not in precisions:
            continue
        if prec == "bf16" and "BF16" not in caps:
            skipped.append(f"{tag}: CPU does not report BF16 ({capnames})")
            continue
        if file_prec is not None and (file_prec == "int8") != (prec == "int8"):
            continue  # the given file fixes the precision
        if file_prec == "fp16" and backend == "onnxruntime":  # its CPU provider refuses fp16 graphs;
            skipped.append(f"{tag}: the given ONNX file is fp16, which onnxruntime runs on CUDA only")
            continue  # OpenVINO reads the fp16 weights and computes at fp32
        agreement, source = _known_agreement(req, backend, prec)
        if prec == "int8" and not req.is_onnx and precision == "auto":
            if not facts.int8_file():
                skipped.append(f"{tag}: no quantized model in the cache (run `liteseg quantize`)")
                continue
            if agreement is not None and agreement < floor:  # the report says no: do not even build it
                skipped.append(f"{tag}: label agreement {agreement:.4f} ({source}) < min_label_agreement {floor}")
                continue
        status = facts.status(backend)  # after the cheap checks: asking may import the runtime
        if status != "ok":
            skipped.append(f"{tag}: {status}")
            continue
        file = "given" if req.is_onnx else ("int8" if prec == "int8" else "onnx")
        choices.append(Choice(backend, "cpu", prec, file, "", agreement, source, rank))
        if agreement is not None and (not enforce or prec == "fp32" or agreement >= floor):
            break  # certain to be taken: the paths after it are never needed (nor their runtimes imported)
    if not choices:
        raise EngineError(f"auto: no CPU path for backend {which} precision {precision}: " + "; ".join(skipped))
    head = "auto: CPU default" if which == "any" else f"backend {which} requested, precision auto:"
    return EnginePlan(tuple(choices), enforce, floor, tuple(skipped), notes, head, caps, len(ranking))
