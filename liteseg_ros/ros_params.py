"""params.py's tables as ROS parameters: rcl descriptors and the declaration workarounds both nodes share.

Ring 3 (ROS edge). Kept apart from params.py so the tables (which ``liteseg bag`` and the demo also
read) stay free of ROS imports, and apart from the nodes so each node only says which table it
declares.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType
from rclpy.parameter import Parameter

from liteseg_ros import params
from liteseg_ros.process import StartupError

_TYPES = {"bool": ParameterType.PARAMETER_BOOL, "int": ParameterType.PARAMETER_INTEGER,
          "float": ParameterType.PARAMETER_DOUBLE, "string": ParameterType.PARAMETER_STRING,
          "string[]": ParameterType.PARAMETER_STRING_ARRAY}


def descriptor(spec: params.Param):
    """The rcl_interfaces ParameterDescriptor of a params.py entry: type, description, choices, range."""
    text = spec.description
    if spec.choices:
        text += f" [{'|'.join(spec.choices)}]"
    d = ParameterDescriptor(name=spec.name, type=_TYPES[spec.type_name], description=text,
                            read_only=spec.read_only, additional_constraints=(
                                f"one of: {', '.join(spec.choices)}" if spec.choices else ""))
    if spec.type_name == "int" and spec.min is not None:
        d.integer_range = [IntegerRange(from_value=int(spec.min), to_value=int(spec.max),
                                        step=int(spec.step or 0))]
    elif spec.type_name == "float" and spec.min is not None:
        d.floating_point_range = [FloatingPointRange(from_value=float(spec.min), to_value=float(spec.max),
                                                     step=0.0)]
    return d


def group_descriptor(name: str):
    """The descriptor of one ``mask_groups.<name>`` parameter (declared per group, not in the table)."""
    return ParameterDescriptor(name=name, type=ParameterType.PARAMETER_STRING_ARRAY,
                               description="class names whose pixels form this mask group's mask "
                                           f"(~/masks/{name[len(params.MASK_GROUPS_PREFIX):]})")


def validated_overrides(node: Any, validate: Callable[[dict[str, Any]], dict[str, Any]],
                        given_value: Callable[[str, Any], Any] = lambda name, v: v) -> dict[str, Any]:
    """Validate what the params files and ``-p`` gave, and hand rclpy the values in their declared type.

    Every bad key is reported in one StartupError before anything loads (instead of rclpy's
    first-exception-wins with a traceback). Values the validation normalises (an integer for a float,
    one class name for a group) replace rcl's parsed overrides, so a file that validates also
    declares; an empty list is left to the declaration (rclpy would re-type ``[]`` as a byte array).
    """
    overrides = node._parameter_overrides  # what rcl parsed from --params-file / -p, by name
    given = {name: given_value(name, p.value) for name, p in overrides.items() if not params.is_ros_builtin(name)}
    try:
        values = validate(given)
    except params.ParameterError as exc:
        raise StartupError(str(exc)) from None
    for name in given:
        if values[name] == []:
            del overrides[name]
        elif values[name] != overrides[name].value or type(values[name]) is not type(overrides[name].value):
            overrides[name] = Parameter(name, value=values[name])
    return values


def declare_table(node: Any, specs: Iterable[params.Param], values: dict[str, Any]) -> None:
    """Declare every entry of a params table with its descriptor (string lists by :func:`declare_string_list`)."""
    for spec in specs:
        if spec.type_name == "string[]" and not spec.default:
            declare_string_list(node, spec, values[spec.name])
        else:
            node.declare_parameter(spec.name, spec.default, descriptor(spec))


def declare_string_list(node: Any, spec: params.Param, value: list[str]) -> None:
    """Declare a string-list parameter that may be empty and still answers every query.

    rclpy takes ``[]`` for a byte array, so an empty default can only be declared as an unset
    typed parameter, and one unset parameter makes every GetParameters request that names it
    fail ("Parameter not set"), which breaks ``ros2 param dump/get``, rqt_reconfigure and
    Foxglove for all parameters. So the list is declared writable, set to its value, and only
    then given its real (read-only) descriptor.
    """
    final = descriptor(spec)
    node.declare_parameter(spec.name, Parameter.Type.STRING_ARRAY,
                           ParameterDescriptor(name=spec.name, type=final.type, description=final.description))
    node.set_parameters([Parameter(spec.name, Parameter.Type.STRING_ARRAY, list(value))])
    node.set_descriptor(spec.name, final)
