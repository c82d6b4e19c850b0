"""Static check of launch/segment.launch.py, and the node command line it amounts to.

`launch` and `launch_ros` have no PyPI wheels, so machines without a ROS install cannot execute the
launch file. This module parses it (never imports it) and checks every name it uses against the
package: executables, config files, launch arguments, remapped topics and parameters. It also turns
the launch file's defaults into the argv launch_ros would give ``liteseg_node``, so tests and users
here run exactly what ``ros2 launch`` would. Imports nothing from ROS.
"""
from __future__ import annotations

import ast
import configparser
import re
from dataclasses import dataclass, field
from pathlib import Path

from liteseg_ros import params

PACKAGE = "liteseg_ros"
ALLOWED_IMPORTS = {"os", "launch", "launch_ros", "ament_index_python"}
REQUIRED_ARGUMENTS = ("params_file", "image", "camera_info", "namespace", "node_name", "use_sim_time", "rviz",
                      "log_level", "bag", "cameras")
#: Topics the node subscribes to (relative names, remappable).
NODE_INPUTS = ("image", "image/compressed", "camera_info")


@dataclass
class LaunchFacts:
    """What the launch file declares, as read from its syntax tree."""

    arguments: dict[str, str] = field(default_factory=dict)  # name -> default (as text)
    executables: list[tuple[str, str, int]] = field(default_factory=list)  # (package, executable, line)
    remappings: list[tuple[str, int]] = field(default_factory=list)  # (from, line)
    parameters: list[tuple[str, int]] = field(default_factory=list)  # dict keys in parameters=[...]
    share_paths: list[tuple[tuple[str, ...], int]] = field(default_factory=list)
    used_configs: list[tuple[str, int]] = field(default_factory=list)  # LaunchConfiguration('x')


def _const(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _call_name(call: ast.Call) -> str:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""


def _kw(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def console_scripts(repo: Path) -> set[str]:
    """Console scripts from setup.cfg, intersected with what CMakeLists installs to lib/<pkg>."""
    cfg = configparser.ConfigParser()
    cfg.read(repo / "setup.cfg")
    raw = cfg.get("options.entry_points", "console_scripts", fallback="")
    names = {line.split("=")[0].strip() for line in raw.splitlines() if "=" in line}
    cmake = (repo / "CMakeLists.txt").read_text()
    installed = set(re.findall(r"scripts/([A-Za-z0-9_]+)", cmake))
    return names & installed


def read_facts(text: str, filename: str = "segment.launch.py") -> tuple[LaunchFacts, list[str]]:
    errors: list[str] = []
    tree = ast.parse(text, filename=filename)
    facts = LaunchFacts()
    if "generate_launch_description" not in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}:
        errors.append("no generate_launch_description()")
    for n in ast.walk(tree):
        if isinstance(n, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in n.names] if isinstance(n, ast.Import) else [n.module or ""]
            for m in mods:
                if m.split(".")[0] not in ALLOWED_IMPORTS:
                    errors.append(f"line {n.lineno}: unexpected import {m}")
        if not isinstance(n, ast.Call):
            continue
        name = _call_name(n)
        if name == "DeclareLaunchArgument" and n.args and _const(n.args[0]):
            default = _kw(n, "default_value")
            facts.arguments[_const(n.args[0])] = (
                _const(default) if default is not None and _const(default) is not None else
                ast.unparse(default) if default is not None else "")
        elif name == "LaunchConfiguration" and n.args and _const(n.args[0]):
            facts.used_configs.append((_const(n.args[0]), n.lineno))
        elif name == "Node":
            pkg, exe = _const(_kw(n, "package")), _const(_kw(n, "executable"))
            facts.executables.append((pkg or "?", exe or "?", n.lineno))
            if pkg == PACKAGE:
                rem = _kw(n, "remappings")
                for el in getattr(rem, "elts", []):
                    if isinstance(el, ast.Tuple) and el.elts and _const(el.elts[0]):
                        facts.remappings.append((_const(el.elts[0]), el.lineno))
                for el in getattr(_kw(n, "parameters"), "elts", []):
                    if isinstance(el, ast.Dict):
                        facts.parameters += [(_const(k), k.lineno) for k in el.keys if _const(k)]
        elif name == "join" and n.args:
            parts = tuple(_const(a) for a in n.args[1:])
            if parts and all(parts) and parts[0] in ("config", "launch"):
                facts.share_paths.append((parts, n.lineno))
    for n in ast.walk(tree):  # remappings built in code: remappings = [...] if cameras else [...]
        if isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "remappings" for t in n.targets):
            for el in ast.walk(n.value):
                if isinstance(el, ast.Tuple) and el.elts and _const(el.elts[0]):
                    facts.remappings.append((_const(el.elts[0]), el.lineno))
    for n in ast.walk(tree):  # parameter dicts built in code: overrides["cameras"] = ...
        if isinstance(n, ast.Assign):
            for t in n.targets:
                if isinstance(t, ast.Subscript) and _const(t.slice) and getattr(t.value, "id", "") == "overrides":
                    facts.parameters.append((_const(t.slice), n.lineno))
        if (isinstance(n, ast.Assign) and isinstance(n.value, ast.Dict)
                and any(getattr(t, "id", "") == "overrides" for t in n.targets)):
            facts.parameters += [(_const(k), k.lineno) for k in n.value.keys if _const(k)]
    return facts, errors


def check(launch_file: Path, repo: Path) -> list[str]:
    """Every inconsistency between the launch file and the package, as 'line N: ...' messages."""
    facts, errors = read_facts(launch_file.read_text(), str(launch_file))
    scripts = console_scripts(repo)
    ours = [e for e in facts.executables if e[0] == PACKAGE]
    if not ours:
        errors.append(f"no launch_ros Node(package={PACKAGE!r})")
    for _pkg, exe, line in ours:
        if exe not in scripts:
            errors.append(f"line {line}: executable {exe!r} is not installed by the package ({sorted(scripts)})")
    for parts, line in facts.share_paths:
        if not repo.joinpath(*parts).exists():
            errors.append(f"line {line}: {'/'.join(parts)} does not exist in the package")
    for name in REQUIRED_ARGUMENTS:
        if name not in facts.arguments:
            errors.append(f"launch argument {name!r} is missing")
    for name, line in facts.used_configs:
        if name not in facts.arguments:
            errors.append(f"line {line}: LaunchConfiguration({name!r}) has no DeclareLaunchArgument")
    for topic, line in facts.remappings:
        if topic not in NODE_INPUTS:
            errors.append(f"line {line}: remaps {topic!r}, which the node does not subscribe ({NODE_INPUTS})")
    for key, line in facts.parameters:
        try:
            params.check_value(key, params.defaults().get(key, False))
        except params.ParameterError as exc:
            errors.append(f"line {line}: {exc}")
    return errors


def launch_argv(repo: Path, launch_file: Path | None = None, **overrides: str) -> list[str]:
    """The argv launch_ros builds for our Node from the launch file's defaults (+ overrides).

    launch_ros (jazzy, actions/node.py) runs ``<exe> --ros-args -r __node:=<name> -r __ns:=<ns>
    --params-file <yaml> -p use_sim_time:=<v> -r <from>:=<to> ... --log-level <lvl>``.
    """
    launch_file = launch_file or repo / "launch" / "segment.launch.py"
    facts, _ = read_facts(launch_file.read_text())
    args = dict(facts.arguments)
    args["params_file"] = str(repo / "config" / "liteseg.yaml")
    args.update(overrides)
    argv = ["--ros-args", "-r", f"__node:={args['node_name']}"]
    if args.get("namespace"):
        argv += ["-r", f"__ns:=/{args['namespace'].strip('/')}"]
    argv += ["--params-file", args["params_file"]]
    sim = args.get("use_sim_time", "false").lower() == "true" or bool(args.get("bag"))
    argv += ["-p", f"use_sim_time:={'true' if sim else 'false'}"]
    cameras = [c.strip() for c in args.get("cameras", "").split(",") if c.strip()]
    if cameras:
        argv += ["-p", f"cameras:=[{','.join(cameras)}]"]
    else:
        argv += ["-r", f"image:={args['image']}", "-r", f"image/compressed:={args['image']}/compressed",
                 "-r", f"camera_info:={args['camera_info']}"]
    argv += ["--log-level", args.get("log_level", "info")]
    return argv
