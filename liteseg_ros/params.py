"""The node's parameter schema: one table -> ROS descriptors, YAML validation, README/YAML checks.

Ring 3 (ROS edge) but importable without ROS: rclpy types are imported lazily inside the functions
that build descriptors, so the bag tool and the CLI can validate a params file on a machine with no
ROS install. Every parameter name, type, range, default and help text lives here and nowhere else.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from liteseg_ros.classes import DEFAULT_MASK_GROUPS, ClassTable
from liteseg_ros.defaults import BACKBONES, NETWORK_SIZE, finite_problem
from liteseg_ros.engines.selection import (
    BACKENDS,
    DEFAULT_MIN_LABEL_AGREEMENT,
    DEVICE_FORMS,
    MIN_LABEL_AGREEMENT_RANGE,
    PRECISIONS,
)
from liteseg_ros.segmentation import OUTPUTS, TOGGLES
from liteseg_ros.settings import PipelineSettings

#: Mask groups are a map in YAML (``mask_groups: {drivable: [road]}``) which ROS 2 flattens to one
#: string-array parameter per group: ``mask_groups.drivable``.
MASK_GROUPS_PREFIX = "mask_groups."

#: A device parameter: what the engines take, or ``auto`` (CUDA when usable, else the CPU).
_DEVICE_RE = re.compile(rf"^(auto|{DEVICE_FORMS})$")


class ParameterError(ValueError):
    """A parameter value that is not allowed; the message names the key and what is allowed.

    ``errors`` holds one line per bad key, so a caller can report every problem of a file at once.
    """

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or [message]


@dataclass(frozen=True)
class Param:
    """One parameter: what it is, what it may be, and whether it can change while running."""

    name: str
    default: Any
    description: str
    choices: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None
    step: float | None = None
    read_only: bool = False
    pattern: str | None = None

    @property
    def type_name(self) -> str:
        return type_name_of(self.default)


def type_name_of(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "string[]"
    raise TypeError(f"unsupported parameter type {type(value).__name__}")


def _toggle_params() -> list[Param]:
    """One live boolean per ``publish_*`` toggle of the output table, describing the outputs it switches."""
    out = []
    for toggle in TOGGLES:
        rows = [o for o in OUTPUTS if o.toggle == toggle]
        needs = "".join(f" (needs a '{o.group}' mask group)" for o in rows if o.group)
        out.append(Param(toggle, True, "publish " + " and ".join(f"~/{o.suffix}" for o in rows) + needs))
    return out


PARAMS: tuple[Param, ...] = (
    # --- model and engine (need a reload: read-only) ---
    Param("weights", "", "checkpoint file: official LiteSeg .pth, torchvision-style or our own (.pt); "
          "a registered name such as liteseg-mobilenet-cityscapes (`liteseg weights list`); "
          "'demo' for the bundled synthetic-scene demo weights", read_only=True),
    Param("allow_download", False, "fetch registered weights named by 'weights' on first use when they are not "
          "in the weights cache yet (off: fail naming the `liteseg weights fetch` command; env "
          "LITESEG_ALLOW_DOWNLOAD=1 also allows it)", read_only=True),
    Param("allow_random_weights", False, "run with random weights when 'weights' is empty (tests, demos)",
          read_only=True),
    Param("backbone", "auto", "encoder: auto = the checkpoint's (mobilenetv2 for random weights); a named one "
          "must match the checkpoint", choices=("auto", *BACKBONES), read_only=True),
    Param("backend", "auto", "inference backend; auto = TensorRT if usable, else PyTorch CUDA, else the CPU "
          "default", choices=BACKENDS, read_only=True),
    Param("device", "auto", "auto, cpu, cuda or cuda:N", pattern=_DEVICE_RE.pattern, read_only=True),
    Param("precision", "auto", "auto = fp16 on CUDA; on CPU the fastest of fp32/bf16/int8 that meets "
          "min_label_agreement; fp32 on CUDA is IEEE fp32 (TF32 off)", choices=PRECISIONS, read_only=True),
    Param("min_label_agreement", DEFAULT_MIN_LABEL_AGREEMENT, "CPU auto choice: least fraction of labels a "
          "bf16/int8 path must share with fp32 (from the `liteseg quantize` report or a start-up check); above 1 "
          "no bf16/int8 path qualifies", min=MIN_LABEL_AGREEMENT_RANGE[0], max=MIN_LABEL_AGREEMENT_RANGE[1],
          read_only=True),
    Param("num_threads", 0, "CPU threads for inference; 0 = all available cores", min=0, max=256, step=1,
          read_only=True),
    Param("engine_cache_dir", "", "where exported ONNX / int8 / TensorRT engines are cached; '' = "
          "$LITESEG_CACHE_DIR or ~/.cache/liteseg_ros/engines", read_only=True),
    Param("build_only", False, "build/export the engine, then exit (TensorRT/ONNX ahead of time)",
          read_only=True),
    Param("network_width", NETWORK_SIZE[1], "network input width in pixels", min=32, max=4096, step=1,
          read_only=True),
    Param("network_height", NETWORK_SIZE[0], "network input height in pixels", min=32, max=4096, step=1,
          read_only=True),
    Param("resize_mode", "stretch", "how frames are fitted to the network size", choices=("stretch", "letterbox"),
          read_only=True),
    # --- inputs ---
    Param("input_transport", "raw", "subscribe to 'image' (raw) or 'image/compressed'",
          choices=("raw", "compressed"), read_only=True),
    Param("process_all_frames", False, "queue every frame (reliable, no drops) for offline replay instead "
          "of keeping only the newest", read_only=True),
    Param("queue_size", 100, "queue depth when process_all_frames is true", min=1, max=10000, step=1,
          read_only=True),
    Param("max_input_age", 0.0, "drop frames older than this many seconds at pickup (node clock); 0 = off",
          min=0.0, max=3600.0),
    Param("max_input_pixels", 8192 * 8192, "largest input frame (height x width pixels) decoded; bigger ones, "
          "and compressed ones whose header declares more, are rejected before decoding (decompression bombs)",
          min=1, max=16384 * 16384, step=1),
    Param("cameras", [], "camera names for one process serving several cameras: subscribes <cam>/image and "
          "publishes ~/<cam>/...; empty = one camera on `image`", read_only=True),
    Param("batch_window_ms", 5.0, "with several cameras: how long the worker waits for the other cameras' frames "
          "to batch them into one forward", min=0.0, max=1000.0, read_only=True),
    Param("batch_cameras", True, "with several cameras: one batched forward for their pending frames (false: "
          "one forward per frame, round robin)", read_only=True),
    # --- outputs (live) ---
    Param("output_resolution", "input", "publish label/masks at the input or the network resolution",
          choices=("input", "network")),
    Param("overlay_alpha", 0.5, "weight of the class colours in ~/overlay", min=0.0, max=1.0),
    Param("confidence_threshold", 0.0, "pixels whose max softmax is below this become 255 (ignore)",
          min=0.0, max=1.0),
    *_toggle_params(),
    Param("diagnostics_period", 1.0, "seconds between /diagnostics messages (a steady-clock timer, so they flow "
          "in every lifecycle state and with sim time before /clock starts)", min=0.1, max=60.0),
    Param("error_log_period", 5.0, "seconds between repeated log lines about bad input", min=0.0,
          max=3600.0),
    # --- lifecycle ---
    Param("autostart", True, "configure and activate at start-up (a plain launch just works)", read_only=True),
)

PARAMS_BY_NAME: dict[str, Param] = {p.name: p for p in PARAMS}
#: Parameters rclpy declares by itself; allowed in YAML, never declared by us.
BUILTIN_PARAMS = ("use_sim_time", "start_type_description_service")
#: rclpy's QoS override parameters (``qos_overrides./topic.subscription.reliability``).
QOS_OVERRIDES_PREFIX = "qos_overrides."


def is_ros_builtin(name: str) -> bool:
    """Parameters that rclpy itself owns: allowed in a params file, never declared or checked by us."""
    return name in BUILTIN_PARAMS or name.startswith(QOS_OVERRIDES_PREFIX)


def classes_known_before_load(weights: str) -> bool:
    """Whether the class table of ``weights`` is known without loading them (so a mask group's class
    names can be checked at start): empty (random weights), the bundled demo model, the authors'
    official ``.pth`` checkpoints and registered Cityscapes weights all use the Cityscapes classes.
    A checkpoint of ours (``.pt``) carries its own class names, which only loading it reveals."""
    if weights in ("", "demo") or weights.endswith(".pth"):
        return True
    from liteseg_ros import weights as registry

    try:
        entry = registry.lookup(weights) if registry.looks_like_name(weights) else None
    except registry.WeightsError:  # an unreadable extra registry: the loader reports it
        return False
    return entry is not None and entry.classes == "cityscapes"


def check_value(name: str, value: Any, classes: ClassTable | None = None, check_classes: bool = True) -> Any:
    """Validate one parameter value; returns it normalised or raises ParameterError naming the key.

    Mask groups' class names are checked against ``classes`` (default: Cityscapes) unless
    ``check_classes`` is false, for weights whose class names are only known once loaded.
    """
    if name.startswith(MASK_GROUPS_PREFIX):
        group = name[len(MASK_GROUPS_PREFIX):]
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ParameterError(f"{name}: expected a list of class names, got {value!r}")
        if not value:
            raise ParameterError(f"{name} names no class: give at least one class name, or remove the group")
        if not group.isidentifier():
            raise ParameterError(f"{name}: the group name {group!r} must be a plain identifier "
                                 "(it becomes the topic ~/masks/<group>)")
        if not check_classes:
            return list(value)
        try:
            (classes or ClassTable()).resolve_groups({group: list(value)})
        except ValueError as exc:
            raise ParameterError(str(exc)) from None
        return list(value)
    spec = PARAMS_BY_NAME.get(name)
    if spec is None:
        if is_ros_builtin(name):
            return value
        raise ParameterError(f"unknown parameter {name!r}; known: {', '.join(sorted(PARAMS_BY_NAME))}, "
                             f"{MASK_GROUPS_PREFIX}<group>")
    want = spec.type_name
    if want == "float" and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    try:
        got = type_name_of(value)
    except TypeError:  # e.g. None: rcl's reading of an empty list or a key with no value
        got = None
    if got != want:
        raise ParameterError(f"{name}: expected {want}, got {type(value).__name__} {value!r}")
    if finite_problem(value):
        raise ParameterError(f"{name}: {finite_problem(value)}")
    if spec.choices and value not in spec.choices:
        raise ParameterError(f"{name}: {value!r} is not one of {', '.join(spec.choices)}")
    if want == "string[]":
        value = list(value)
        if not all(isinstance(v, str) for v in value):
            raise ParameterError(f"{name}: expected a list of strings, got {value!r}")
        if spec.name == "cameras":
            bad = [v for v in value if not re.match(r"^[A-Za-z][A-Za-z0-9_]*$", v)]
            if bad or len(set(value)) != len(value):
                raise ParameterError(f"cameras: names must be unique identifiers (they become topic names), "
                                     f"got {value!r}")
    if spec.pattern and not re.match(spec.pattern, value):
        raise ParameterError(f"{name}: {value!r} does not match {spec.pattern} (e.g. cpu, cuda, cuda:0)")
    if spec.min is not None and value < spec.min or spec.max is not None and value > spec.max:
        raise ParameterError(f"{name}: {value!r} is out of range [{spec.min}, {spec.max}]")
    return value


def defaults() -> dict[str, Any]:
    """Every parameter's default, mask groups flattened as the node declares them."""
    out: dict[str, Any] = {p.name: p.default for p in PARAMS}
    out.update({MASK_GROUPS_PREFIX + g: list(v) for g, v in DEFAULT_MASK_GROUPS.items()})
    return out


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested YAML maps -> dotted names, as ROS 2 does with a params file."""
    out: dict[str, Any] = {}
    for k, v in mapping.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def read_params_file(path: str | Path, node_name: str = "liteseg", namespace: str = "") -> dict[str, Any]:
    """The parameters a params file gives node ``/<namespace>/<node_name>``, merged as rcl does.

    Sections apply in file order when their key matches: ``/**``, ``node_name``, ``/ns/node_name``,
    wildcards ``/**/node_name``. Raises ParameterError on a malformed file.
    """
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParameterError(f"params file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ParameterError(f"params file {path} is not valid YAML: {exc}") from None
    if not isinstance(doc, Mapping):
        raise ParameterError(f"params file {path}: expected '<node>: {{ros__parameters: ...}}' at the top")
    fq = "/" + "/".join(p for p in (namespace.strip("/"), node_name) if p)
    accepted = {"/**", node_name, fq, "/**/" + node_name, fq.lstrip("/")}
    merged: dict[str, Any] = {}
    for key, section in doc.items():
        if key not in accepted:
            continue
        if not isinstance(section, Mapping) or "ros__parameters" not in section:
            raise ParameterError(f"params file {path}: section {key!r} has no 'ros__parameters'")
        merged.update(flatten(section["ros__parameters"] or {}))
    return merged


def validate(values: Mapping[str, Any], classes: ClassTable | None = None) -> dict[str, Any]:
    """Validate a flat parameter map (from a params file or overrides); returns the full effective set.

    The node, ``liteseg bag`` and the demo all call this one function on what they were given, so they
    accept and refuse exactly the same files, and every bad key is reported at once, before any model
    loads. Defaults fill what is missing. If any ``mask_groups.*`` key is given, those groups replace
    the default groups entirely (a YAML that lists two groups gets two mask topics, not five). Class
    names are checked against ``classes`` if given, else against Cityscapes where the weights are known
    to use it (:func:`classes_known_before_load`); other weights' names are checked once loaded.
    Raises ParameterError whose ``errors`` list every bad key.
    """
    errors = []
    weights = values.get("weights", "")
    check_classes = classes is not None or not isinstance(weights, str) or classes_known_before_load(weights)
    effective = {k: v for k, v in defaults().items() if not k.startswith(MASK_GROUPS_PREFIX)}
    given_groups = {k: v for k, v in values.items() if k.startswith(MASK_GROUPS_PREFIX)}
    if not given_groups:
        effective.update({k: v for k, v in defaults().items() if k.startswith(MASK_GROUPS_PREFIX)})
    for k, v in values.items():
        try:
            effective[k] = check_value(k, v, classes, check_classes)
        except ParameterError as exc:
            errors.append(str(exc))
    if errors:
        raise ParameterError("invalid parameters:\n  " + "\n  ".join(errors), errors)
    return effective


def mask_groups_of(values: Mapping[str, Any]) -> dict[str, list[str]]:
    """``{'mask_groups.drivable': [...]}`` -> ``{'drivable': [...]}`` in declaration order."""
    return {k[len(MASK_GROUPS_PREFIX):]: list(v) for k, v in values.items() if k.startswith(MASK_GROUPS_PREFIX)}


def pipeline_settings(values: Mapping[str, Any], classes: ClassTable | None = None) -> PipelineSettings:
    """What ``runtime.build_pipeline`` takes, from parameter values: checked by :func:`validate` (defaults
    fill the rest, so a partial map is fine) and typed, with the mask groups gathered from their
    ``mask_groups.<group>`` keys. The one place a parameter map becomes pipeline settings (the node,
    ``liteseg bag``, the tests and the benchmarks all come through here)."""
    effective = validate(values, classes)
    names = [f.name for f in fields(PipelineSettings) if f.name != "mask_groups"]
    groups = {group: tuple(names_) for group, names_ in mask_groups_of(effective).items()}
    return PipelineSettings(**{name: effective[name] for name in names}, mask_groups=groups)


def yaml_keys(path: str | Path, node_name: str = "liteseg") -> set[str]:
    """Keys a shipped params file sets (for the config/README consistency test)."""
    return set(read_params_file(path, node_name))

