"""The README, executed: every command in its ```bash blocks runs here, so an example that rots fails CI.

The commands are read from README.md (never copied into this file). Before running, the placeholders a
reader replaces (``<this repo>``, ``/data/...``, ``my.yaml``, ...) are filled from :data:`FILL`, and every
command runs in a shell that sourced the session's colcon workspace (the real ``ros2``/``colcon`` of
../shared/ros2-cli and the venv's ``liteseg``/``liteseg_node``), with ``HOME`` and the working directory
in a scratch folder that holds ``config -> <checkout>/config`` (the README assumes the checkout as the
working directory). Registered weight names are served by a real HTTP server on 127.0.0.1 (the README's
``liteseg weights fetch`` downloads, verifies and caches exactly as it would from the authors' site).

A command that keeps running (a node, a launch) is started, must come up (its "active" line), and is
stopped with Ctrl-C (SIGINT to its process group), which must end it with 0. A command ending in ``&``
stays up while the next one runs (the README's node + ``liteseg play``). A command that cannot run here
is listed in :data:`NOT_RUN` with the reason; a README command that is neither run nor listed, or a
listed entry that matches no README command any more, fails :func:`test_every_readme_command_is_run_or_listed`.
"""
from __future__ import annotations

import re
import shlex
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import LaunchedProcess

pytestmark = pytest.mark.ros

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

#: Commands that cannot run inside the suite, by the start of the command line, with the reason.
NOT_RUN: dict[str, str] = {
    "make demo": "runs `make setup` and the full demo (minutes); test_demo.py runs the demo's own code path",
    "make test": "the suite itself (recursion); test_ci_runs_exactly_make_test checks .ci/run calls exactly it",
    "cd ~/ros2_ws && rosdep install": "needs rosdep and apt with a system ROS install (the kit here is wheels "
                                      "in a venv); test_pip_line_names_what_the_venv_has checks the rest",
    "pip install --user --break-system-packages": "network and the user's site-packages; "
                                                  "test_pip_line_names_what_the_venv_has imports each package",
    "colcon test --packages-select liteseg_ros": "runs the whole suite under colcon (recursion, time); "
                                                 "test_launch.py runs `colcon test` on the install tests",
    "liteseg train --config config/train_cityscapes.yaml": "the paper's recipe: hours on Cityscapes",
    "torchrun --nproc_per_node 4": "four processes for hours of training",
    "liteseg train --config config/train_synthetic.yaml": "trains the demo weights (hours on a CPU); "
                                                           "test_train.py trains the same code for a few steps",
    "liteseg quantize --weights my.pt --synthetic 64 --backend all": "every backend on 64 scenes (minutes); the "
                                                                     "--calib line above runs the same command",
}

#: Placeholders a reader fills, in the order applied (README text -> what this run uses; {..} from the run).
FILL: dict[str, str] = {
    "<this repo>": "{repo}",
    "/data/my_labelled": "{data}/my_labelled",
    "/data/cityscapes": "{data}/cityscapes",
    "/data/calib": "{data}/calib",
    "params_file:=my.yaml": "params_file:={work}/my.yaml",
    "drive.db3": "{bag}",  # the .db3 inside a bag folder (what `ros2 bag record` writes)
}

#: Commands that keep running: how each shows it is up (regexes on its output, all must appear).
UP: dict[str, tuple[str, ...]] = {
    "ros2 launch liteseg_ros segment.launch.py": (r"active: segmenting",),
    "liteseg_node ": (r"active: segmenting",),
    "ros2 run liteseg_ros liteseg_free_space": (r"active: \S+ \+ ",),
}
#: ... and what a launch with ``free_space:=true`` shows as well
UP_EXTRA = {"free_space:=true": r"active: \S+ \+ "}

#: Commands that belong to the ROS install section and run in the session's colcon workspace (the one
#: ``ros_ws`` built: this README step is that build; run again there it is incremental).
IN_WORKSPACE = ("colcon build", "source install/setup.bash")


# ------------------------------------------------------------------------------------------ the README
@dataclass(frozen=True)
class Command:
    line: int
    text: str  # as in the README, continuation lines joined, the trailing comment removed

    @property
    def background(self) -> bool:
        return self.text.endswith("&")


def readme_commands(text: str | None = None) -> list[Command]:
    """Every command line of README.md's ```bash blocks, in order."""
    lines = (text if text is not None else README.read_text()).splitlines()
    out: list[Command] = []
    inside = False
    pending, start = "", 0
    for n, raw in enumerate(lines, 1):
        if raw.startswith("```"):
            inside = raw.strip() == "```bash" and not inside
            continue
        if not inside:
            continue
        code = _strip_comment(raw).rstrip()
        if not code and not pending:
            continue
        if not pending:
            start = n
        if code.endswith("\\"):
            pending += code[:-1].rstrip() + " "
            continue
        out.append(Command(start, re.sub(r"\s+", " ", (pending + code).strip())))
        pending = ""
    return out


def _strip_comment(line: str) -> str:
    """The line without a shell comment (a ``#`` at the start or after whitespace, outside quotes)."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def not_run_reason(cmd: Command) -> str | None:
    return next((why for start, why in NOT_RUN.items() if cmd.text.startswith(start)), None)


COMMANDS = readme_commands()
RUN = [c for c in COMMANDS if not_run_reason(c) is None]


def _id(c: Command) -> str:
    return f"L{c.line}-" + re.sub(r"[^A-Za-z0-9_.:-]+", "_", " ".join(c.text.split()[:3]))[:40]


# ------------------------------------------------------------------------------------------ the checks
def test_every_readme_command_is_run_or_listed():
    """Every README command is either run below or listed with its reason; no listed entry is stale."""
    assert len(COMMANDS) >= 25, [c.text for c in COMMANDS]  # the parser found the blocks
    for start in NOT_RUN:
        assert any(c.text.startswith(start) for c in COMMANDS), f"NOT_RUN entry matches no README command: {start}"
    for key in FILL:
        assert any(key in c.text for c in COMMANDS), f"FILL entry matches no README command: {key}"
    print(f"\n[readme] {len(COMMANDS)} commands: {len(RUN)} run, {len(COMMANDS) - len(RUN)} listed as not runnable")


def test_the_parser_joins_continuations_and_drops_comments():
    text = "x\n```bash\n# only a comment\na --b \\\n  c   # why\nd '#not' &\n```\n```yaml\ne: 1\n```\n"
    assert readme_commands(text) == [Command(4, "a --b c"), Command(6, "d '#not' &")]


def test_ci_runs_exactly_make_test():
    """`make test` is the README's CI command: .ci/run calls it exactly once, as the README writes it (the
    whole suite), and besides it only what the README says CI adds: the ROS-facing tests again with
    `LITESEG_ROS_DISTRO=kilted make test`, and the `make setup` each of those does by itself. No other
    test runner."""
    readme = README.read_text()
    assert "make test   # the whole test suite (what CI runs: .ci/run calls exactly this)" in readme
    code = [ln.split(" #", 1)[0].strip() for ln in (REPO / ".ci" / "run").read_text().splitlines()
            if ln.strip() and not ln.strip().startswith("#")]
    makes = [m.group(0) for ln in code for m in re.finditer(r"(?:LITESEG_ROS_DISTRO=\w+ )?make \S+", ln)]
    assert makes.count("make test") == 1 and "make test" in code, code
    assert set(makes) <= {"make test", "make setup", "LITESEG_ROS_DISTRO=kilted make test",
                          "LITESEG_ROS_DISTRO=kilted make setup"}, makes
    assert ("LITESEG_ROS_DISTRO=kilted make test" in makes) == ("`LITESEG_ROS_DISTRO=kilted make test`" in readme)
    assert not any(re.search(r"\bpytest\b", ln) for ln in code), code


def test_pip_line_names_what_the_venv_has():
    """The README's pip line installs what the package imports: each package it names imports here."""
    import importlib

    line = next(c.text for c in COMMANDS if c.text.startswith("pip install"))
    names = [w for w in shlex.split(line)[2:] if not w.startswith("-")]
    assert names, line
    for name in names:
        importlib.import_module(name)


@pytest.fixture(scope="module")
def readme_run(ros_ws, tiny_checkpoint, tmp_path_factory):
    """The scratch HOME/working folder, the data the placeholders name, the weights server."""
    import cv2
    import numpy as np
    import torch
    import yaml
    from model_keys import random_official_state_dict
    from test_bag import write_bag
    from test_train import make_cityscapes, make_folder
    from test_weights import FileServer

    from liteseg_ros import weights
    from liteseg_ros.classes import ClassTable

    if ros_ws.root is None:
        pytest.skip("under `colcon test` the install is given: the README's workspace steps made it")
    root = tmp_path_factory.mktemp("readme")
    home, work, data = root / "home", root / "work", root / "data"
    for d in (home, work, data):
        d.mkdir()
    (work / "config").symlink_to(REPO / "config")
    names = list(ClassTable.cityscapes().names)
    make_folder(data / "my_labelled", names)
    make_folder(data / "calib", names)
    make_cityscapes(data / "cityscapes", {"val": 2})
    frames = home / "camera_frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        cv2.imwrite(str(frames / f"f{i}.png"), rng.integers(0, 255, (64, 96, 3), np.uint8))
    for run in ("run_a", "run_b"):
        (work / run / "checkpoints").mkdir(parents=True)
        shutil.copy(tiny_checkpoint, work / run / "checkpoints" / "last.pt")
    (work / "runs" / "cityscapes" / "checkpoints").mkdir(parents=True)
    shutil.copy(tiny_checkpoint, work / "runs" / "cityscapes" / "checkpoints" / "best.pt")
    shutil.copy(tiny_checkpoint, work / "my.pt")
    write_bag(work / "drive", "sqlite3", {"/camera/image_raw": "bgr8"}, n=20, chatter=False, distinct=4)
    params = yaml.safe_load((REPO / "config" / "liteseg.yaml").read_text())
    params["/**"]["ros__parameters"].update(network_width=96, network_height=64)
    (work / "my.yaml").write_text(yaml.safe_dump(params))

    # The registered name the README uses, served from 127.0.0.1 (official key layout, random weights).
    name = "liteseg-mobilenet-cityscapes"
    official = root / "official.pth"
    torch.save(random_official_state_dict("mobilenetv2", seed=3), official, _use_new_zipfile_serialization=False)
    bundled = yaml.safe_load((REPO / "liteseg_ros" / "data" / "weights.yaml").read_text())["weights"]
    entry = dict(bundled[name])
    server = FileServer()
    server.files[entry["file"]] = official.read_bytes()
    entry.update(url=f"{server.url}/{entry['file']}", git_blob=weights.git_blob_id(official), size=None)
    registry = root / "registry.yaml"
    registry.write_text(yaml.safe_dump({"version": 1, "weights": {name: entry}}))
    env = dict(ros_ws.env, HOME=str(home))
    env.update({weights.ENV_DIR: str(home / "weights"), weights.ENV_REGISTRY: str(registry),
                weights.ENV_URL: server.url})
    env.pop(weights.ENV_ALLOW, None)
    bag = next((work / "drive").glob("*.db3")).relative_to(work)
    fill = {k: v.format(repo=REPO, data=data, work=work, bag=bag) for k, v in FILL.items()}
    yield {"env": env, "work": work, "fill": fill, "ws": ros_ws}
    server.close()


def _filled(cmd: Command, fill: dict[str, str]) -> str:
    text = cmd.text
    for key, value in fill.items():
        text = text.replace(key, value)
    return text


def _shell(run: dict, text: str) -> list[str]:
    """As a terminal that sourced the workspace runs it (a compound line is not exec'd)."""
    if re.search(r"&&|\|\||;|^(cd|source) ", text):
        return ["bash", "-c", f"{run['ws'].setup}{text}"]
    return run["ws"].shell(text)


def _up_patterns(text: str) -> tuple[str, ...] | None:
    for start, pats in UP.items():
        if text.startswith(start):
            return pats + tuple(p for k, p in UP_EXTRA.items() if k in text)
    return None


def _clean(out: str) -> None:
    for bad in ("Traceback", "process has died", "[ERROR]", "[FATAL]"):
        assert bad not in out, f"{bad!r} in:\n{out[-4000:]}"


def _run_to_end(run: dict, text: str, timeout: float = 600) -> None:
    where = run["ws"].root if text.startswith(IN_WORKSPACE) and run["ws"].root else run["work"]
    proc = subprocess.run(_shell(run, text), env=run["env"], cwd=where, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"{text}\nexit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


# Items in README order (later commands use what earlier ones made: soup.pt, the fetched weights); a
# command ending in `&` is one item with the command after it.
ITEMS: list[tuple[Command, ...]] = []
for _c in RUN:
    if ITEMS and ITEMS[-1][-1].background:
        ITEMS[-1] = (*ITEMS[-1], _c)
    else:
        ITEMS.append((_c,))


@pytest.mark.parametrize("item", ITEMS, ids=[_id(i[0]) for i in ITEMS])
def test_readme_command_runs(item, readme_run, tmp_path):
    started: list[LaunchedProcess] = []
    try:
        for cmd in item:
            text = _filled(cmd, readme_run["fill"])
            if cmd.background:
                text = text[:-1].rstrip()
            pats = _up_patterns(text)
            if pats is None:
                assert not cmd.background, f"README line {cmd.line}: a background command that is not a node"
                _run_to_end(readme_run, text)
                continue
            job = LaunchedProcess(_shell(readme_run, text), readme_run["env"], tmp_path / f"L{cmd.line}.log",
                                  cwd=readme_run["work"])
            started.append(job)
            job.wait_for_patterns(pats, timeout=240)
            if not cmd.background:
                code = job.signal_group(signal.SIGINT, timeout=60)
                assert code == 0, f"{text}: Ctrl-C gave {code}\n{job.output()[-4000:]}"
                _clean(job.output())
        for job in started:
            if job.proc.poll() is None:
                code = job.signal_group(signal.SIGINT, timeout=60)
                assert code == 0, f"Ctrl-C gave {code}\n{job.output()[-4000:]}"
                _clean(job.output())
    finally:
        for job in started:
            job.kill()
