"""The package's layering is a fact, not a comment: rings, no import cycles, a ROS-free core.

Reads every module's imports (function-local ones too, since a lazy import is still a dependency)
from its syntax tree. A module may import its own ring and the rings inside it, never an outer one;
no two modules may depend on each other, however indirectly; and rings 0-2 (data, network, running
it) import nothing from ROS, so they work in a notebook, a training job or a bag tool without ROS.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "liteseg_ros"

#: ring of each module or package prefix (longest prefix wins); README "Layout" says the same.
RINGS = {
    "liteseg_ros": 0,  # the package __init__: only extends __path__
    "liteseg_ros.classes": 0, "liteseg_ros.synthetic": 0, "liteseg_ros.share": 0, "liteseg_ros.weights": 0,
    "liteseg_ros.interrupts": 0, "liteseg_ros.defaults": 0, "liteseg_ros.metrics": 0, "liteseg_ros.settings": 0,
    "liteseg_ros.safe_files": 0, "liteseg_ros.throttle": 0,
    "liteseg_ros.segmentation": 2,
    "liteseg_ros.model": 1,
    "liteseg_ros.engines": 2, "liteseg_ros.pipeline": 2, "liteseg_ros.pipeline_torch": 2,
    "liteseg_ros.runtime": 2, "liteseg_ros.tools": 2, "liteseg_ros.free_space": 2,
    "liteseg_ros.background_int8": 2,
    "liteseg_ros.image_codec": 3, "liteseg_ros.params": 3, "liteseg_ros.wire": 3, "liteseg_ros.fast_send": 3,
    "liteseg_ros.node": 3, "liteseg_ros.worker": 3, "liteseg_ros.process": 3, "liteseg_ros.ros_params": 3,
    "liteseg_ros.interfaces": 3,
    "liteseg_ros.node_guards": 3,
    "liteseg_ros.contract": 3, "liteseg_ros.frames": 3, "liteseg_ros.diagnostics": 3,
    "liteseg_ros.bag": 3, "liteseg_ros.msg": 3, "liteseg_ros.free_space_params": 3, "liteseg_ros.free_space_node": 3,
    "liteseg_ros.cli": 4, "liteseg_ros.commands": 4, "liteseg_ros.demo": 4, "liteseg_ros.train": 4,
}
#: ROS-edge modules that must work without ROS, with everything they import: the contract the node
#: and ``liteseg bag`` share, the frame hand-over and /diagnostics wording (unit-tested without
#: DDS), the worker (unit-tested without DDS too), and every part of ``liteseg bag`` except the live player.
ROS_FREE_EDGE = ("liteseg_ros.contract", "liteseg_ros.frames", "liteseg_ros.diagnostics", "liteseg_ros.worker",
                 "liteseg_ros.bag.store",
                 "liteseg_ros.bag.files", "liteseg_ros.bag.segment", "liteseg_ros.free_space_params")
ROS_MODULES = ("rclpy", "sensor_msgs", "std_msgs", "diagnostic_msgs", "vision_msgs", "rcl_interfaces",
               "builtin_interfaces", "lifecycle_msgs", "rosgraph_msgs", "cv_bridge", "launch", "launch_ros",
               "nav_msgs", "geometry_msgs", "tf2_ros", "tf2_msgs")


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def ring(name: str) -> int:
    best = max((p for p in RINGS if name == p or name.startswith(p + ".")), key=len)
    return RINGS[best]


def imports(name: str, path: Path, known: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(our modules ``name`` imports, top-level names of everything else it imports)."""
    ours, other = set(), set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[:len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            # `from pkg import sub` depends on the submodule; `from mod import obj` on the module
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            if t.split(".")[0] == "liteseg_ros":
                while t not in known and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t != name:
                    ours.add(t)
            else:
                other.add(t.split(".")[0])
    return ours, other


def graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    known = modules()
    deps, external = {}, {}
    for name, path in known.items():
        deps[name], external[name] = imports(name, path, known)
    return deps, external


def test_no_module_imports_an_outer_ring():
    deps, _ = graph()
    bad = [f"{m} (ring {ring(m)}) imports {d} (ring {ring(d)})" for m, ds in deps.items() for d in ds
           if ring(d) > ring(m) and not (m.startswith(d + ".") or d == "liteseg_ros")]
    assert not bad, "\n".join(sorted(bad))


def test_no_import_cycles():
    deps, _ = graph()
    # a package's __init__ re-exporting its submodules is how Python packages work, not a cycle
    edges = {m: {d for d in ds if not m.startswith(d + ".")} for m, ds in deps.items()}
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    assert not cycles, "modules that depend on each other: " + "; ".join(" <-> ".join(c) for c in cycles)


#: What the inference library (engines/) must never import, even lazily: it runs a network; the pipeline,
#: the generated scenes, training and the offline tools (quantization, benchmarks) are built on top of it.
ABOVE_ENGINES = ("liteseg_ros.pipeline", "liteseg_ros.pipeline_torch", "liteseg_ros.synthetic", "liteseg_ros.train",
                 "liteseg_ros.tools", "liteseg_ros.runtime")


def test_the_engines_import_nothing_built_on_them():
    deps, _ = graph()
    bad = [f"{m} imports {d}" for m, ds in deps.items() if m == "liteseg_ros.engines" or m.startswith("liteseg_ros.engines.")
           for d in ds if any(d == a or d.startswith(a + ".") for a in ABOVE_ENGINES)]
    assert not bad, "\n".join(sorted(bad))


def test_the_core_imports_no_ros():
    _, external = graph()
    bad = [f"{m} imports {e}" for m, es in external.items() if ring(m) <= 2 for e in es if e in ROS_MODULES]
    assert not bad, "\n".join(sorted(bad))


def test_the_ros_free_edge_needs_no_ros_even_indirectly():
    deps, external = graph()
    bad = []
    for start in ROS_FREE_EDGE:
        seen, todo = set(), [start]
        while todo:
            m = todo.pop()
            if m in seen:
                continue
            seen.add(m)
            bad += [f"{start} -> ... {m} imports {e}" for e in external[m] if e in ROS_MODULES]
            todo += deps[m]
    assert not bad, "\n".join(sorted(bad))


def lifecycle_nodes_outside_the_guarded_base(files: dict[str, Path]) -> list[str]:
    """Classes that name rclpy's lifecycle node as a base, anywhere but in node_guards."""
    bad = []
    for name, path in files.items():
        if name == "liteseg_ros.node_guards":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = [ast.unparse(b) for b in node.bases]
                if any(b.split(".")[-1] in ("LifecycleNode", "LifecycleNodeMixin") for b in bases):
                    bad.append(f"{name}.{node.name}({', '.join(bases)})")
    return bad


def test_every_lifecycle_node_is_a_guarded_one(tmp_path):
    """Every node subclasses node_guards.GuardedLifecycleNode, so none can miss the rules lifecycle managers and
    `ros2 param set` need (a node that subclassed rclpy's directly died on a refused transition)."""
    assert not lifecycle_nodes_outside_the_guarded_base(modules())
    bad = tmp_path / "bad.py"
    bad.write_text("from rclpy.lifecycle import LifecycleNode\nclass N(LifecycleNode):\n    pass\n")
    assert lifecycle_nodes_outside_the_guarded_base({"liteseg_ros.bad": bad}) == ["liteseg_ros.bad.N(LifecycleNode)"]


def test_the_checks_see_a_violation(tmp_path):
    """The reader finds function-local and relative imports (what the rules above rely on)."""
    known = {"liteseg_ros.classes": tmp_path / "classes.py", "liteseg_ros.node": tmp_path / "node.py",
             "liteseg_ros.engines": tmp_path / "engines" / "__init__.py",
             "liteseg_ros.engines.base": tmp_path / "engines" / "base.py"}
    known["liteseg_ros.classes"].write_text("def f():\n    from liteseg_ros.node import X\n    import rclpy\n")
    ours, other = imports("liteseg_ros.classes", known["liteseg_ros.classes"], known)
    assert ours == {"liteseg_ros.node"} and other == {"rclpy"}
    (tmp_path / "engines").mkdir()
    known["liteseg_ros.engines.base"].write_text("from . import X\nfrom ..node import Y\n")
    ours, _ = imports("liteseg_ros.engines.base", known["liteseg_ros.engines.base"], known)
    assert ours == {"liteseg_ros.engines", "liteseg_ros.node"}


def _readme_layout() -> str:
    """The code block under README's "## Layout" heading."""
    text = (PACKAGE.parent / "README.md").read_text()
    section = text.split("\n## Layout\n", 1)[1]
    return section.split("```", 2)[1]


def test_the_readme_layout_names_every_module_and_nothing_else():
    """A newcomer finds every job in the README's Layout: each module and package of liteseg_ros (and each
    module of engines/, the one package listed file by file) is named there, and every liteseg_ros path it
    names exists, so the map cannot drift from the tree."""
    import re

    block = _readme_layout()
    words = set(re.findall(r"[A-Za-z_][\w]*(?:\.py|/)", block))
    wanted = {p.name + ("/" if p.is_dir() else "") for p in PACKAGE.iterdir()
              if (p.is_dir() and not p.name.startswith("__")) or (p.suffix == ".py" and p.name != "__init__.py")}
    wanted |= {p.name for p in (PACKAGE / "engines").glob("*.py") if p.name != "__init__.py"}
    assert not wanted - words, f"modules missing from README's Layout: {sorted(wanted - words)}"
    named = re.findall(r"liteseg_ros/([\w/.]+)", block)
    assert named and all((PACKAGE / n).exists() for n in named), [n for n in named if not (PACKAGE / n).exists()]
