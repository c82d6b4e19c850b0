"""Weights by name: the registry, a verified download into the cache, and names in every tool.

No network: a real HTTP server on 127.0.0.1 serves an "official" file made here (random weights in
the official key layout, saved the way the authors' train.py did) and registered, with its git blob
id, through $LITESEG_WEIGHTS_REGISTRY; $LITESEG_WEIGHTS_URL points the downloads at that server.
"""
from __future__ import annotations

import http.server
import json
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from model_keys import random_official_state_dict

from liteseg_ros import weights
from liteseg_ros.cli import main
from liteseg_ros.model import keymap
from liteseg_ros.runtime import ModelLoadError, load_model

NAME = "test-mobilenet-cityscapes"
FILE = "test-mobilenet-cityscapes.pth"


@pytest.fixture(scope="module")
def official(tmp_path_factory) -> tuple[bytes, dict]:
    """The bytes of an official-layout MobileNet checkpoint (legacy pickle, like PyTorch 0.4.1 wrote)."""
    sd = random_official_state_dict("mobilenetv2", seed=3)
    path = tmp_path_factory.mktemp("official") / FILE
    torch.save(sd, path, _use_new_zipfile_serialization=False)
    return path.read_bytes(), sd


class FileServer:
    """A real HTTP server on 127.0.0.1 serving ``files`` with Range support; a file's ``mode`` can make it
    misbehave once: ``abort`` sends half the body of a full-length response and closes the connection."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.mode: dict[str, str] = {}
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                name = self.path.rsplit("/", 1)[-1]
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                body = server.files.get(name)
                if body is None or not self.path.startswith("/mirror/"):
                    self.send_error(404)
                    return
                if server.mode.pop(name, "") == "abort":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                start = 0
                if rng and rng.startswith("bytes=") and rng.endswith("-"):
                    start = int(rng[6:-1])
                    if start >= len(body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                self.wfile.write(body[start:])

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/mirror"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def env(tmp_path, monkeypatch, official):
    """A private cache, a registry file holding the test entry, downloads pointed at the local server."""
    data, _ = official
    server = FileServer()
    server.files[FILE] = data
    reg = tmp_path / "registry.yaml"
    entry = {"kind": "liteseg", "backbone": "mobilenetv2", "file": FILE,
             "url": f"{server.url}/{FILE}", "git_blob": weights.git_blob_id(_write(tmp_path / "ref.pth", data)),
             "size": None, "classes": "cityscapes", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
             "license": "CC-BY-NC-4.0", "license_terms": "personal and research use only",
             "license_url": "https://creativecommons.org/licenses/by-nc/4.0/"}
    reg.write_text(yaml.safe_dump({"version": 1, "weights": {NAME: entry}}))
    cache = tmp_path / "cache"
    monkeypatch.setenv(weights.ENV_DIR, str(cache))
    monkeypatch.setenv(weights.ENV_REGISTRY, str(reg))
    monkeypatch.setenv(weights.ENV_URL, server.url)
    monkeypatch.delenv(weights.ENV_ALLOW, raising=False)
    yield server, cache, entry
    server.close()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _cache_files(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


# ------------------------------------------------------------------------------------------ registry
def test_git_blob_id_is_what_git_computes(tmp_path):
    for i, data in enumerate((b"", b"hello\n", bytes(range(256)) * 1000)):
        path = _write(tmp_path / f"f{i}", data)
        expected = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True,
                                  check=True).stdout.strip()
        assert weights.git_blob_id(path) == expected


def test_bundled_registry_holds_the_authors_checkpoints_and_the_imagenet_encoder(monkeypatch):
    monkeypatch.delenv(weights.ENV_REGISTRY, raising=False)
    reg = weights.registry()
    blobs = {"liteseg-mobilenet-cityscapes": ("mobilenetv2", "52adc4cdbf63e015ae9fc1d3397b0d157d27bf09"),
             "liteseg-shufflenet-cityscapes": ("shufflenet", "0a3dbb7eddb0629e1f5024585526c5873bef9c13"),
             "liteseg-darknet-cityscapes": ("darknet19", "96432dafe28de44f17a3ef68b320b818caa626d1")}
    for name, (backbone, blob) in blobs.items():
        e = reg[name]
        assert (e.kind, e.backbone, e.git_blob, e.classes) == ("liteseg", backbone, blob, "cityscapes")
        assert e.url == f"https://raw.githubusercontent.com/tahaemara/LiteSeg/master/pretrained_models/{e.file}"
        assert e.file == name + ".pth"
        assert e.mean == (0.485, 0.456, 0.406) and e.std == (0.229, 0.224, 0.225)
        assert e.license == "CC-BY-NC-4.0" and "commercial" in e.license_terms
    enc = reg["mobilenetv2-imagenet"]
    assert enc.kind == "encoder" and enc.torchvision == "MobileNet_V2_Weights.IMAGENET1K_V1"
    from torchvision.models import MobileNet_V2_Weights

    assert weights._torchvision_weights(enc) is MobileNet_V2_Weights.IMAGENET1K_V1
    assert enc.file == MobileNet_V2_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    import torch.hub

    assert weights.cached_path(enc) == Path(torch.hub.get_dir()) / "checkpoints" / enc.file


def test_a_bad_registry_file_is_named(tmp_path, monkeypatch):
    bad = _write(tmp_path / "bad.yaml", b"weights:\n  x: {kind: liteseg, backbone: mobilenetv2, file: a.pth}\n")
    monkeypatch.setenv(weights.ENV_REGISTRY, str(bad))
    with pytest.raises(weights.WeightsError, match=r"bad.yaml: x: needs file, url and a 40-hex git_blob"):
        weights.registry()


# ------------------------------------------------------------------------------------------ fetch
def test_fetch_verifies_moves_into_the_cache_and_loads(env, official, capsys):
    server, cache, entry = env
    _, sd = official
    assert main(["weights", "fetch", NAME, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "CC-BY-NC-4.0: personal and research use only" in out
    final = cache / FILE
    assert out.strip().endswith(str(final)) and _cache_files(cache) == [FILE]
    assert weights.git_blob_id(final) == entry["git_blob"]

    model, classes, mean, std, source = load_model(NAME)
    assert (source.name, source.backbone, source.weights) == (NAME, "mobilenetv2", str(final))
    assert source.license.startswith("CC-BY-NC-4.0") and mean == (0.485, 0.456, 0.406) and len(classes) == 19
    ours = keymap.official_to_internal(dict(sd))[0]
    assert torch.equal(model.state_dict()["last_conv.6.weight"], ours["last_conv.6.weight"])

    assert main(["weights", "path", NAME]) == 0
    assert capsys.readouterr().out.strip() == str(final)
    assert main(["weights", "list"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(NAME))
    assert row.split()[-1] == "yes" and "CC-BY-NC-4.0" in row and "MB" in row
    n = len(server.requests)
    assert main(["weights", "fetch", NAME, "--no-progress"]) == 0  # cached and valid: no download
    assert len(server.requests) == n


@pytest.mark.parametrize("bad", ["wrong", "truncated"])
def test_a_wrong_or_truncated_file_is_refused_and_nothing_is_kept(env, official, bad):
    server, cache, entry = env
    data, _ = official
    server.files[FILE] = data[: len(data) // 3] if bad == "truncated" else data[:-8] + b"XXXXXXXX"
    actual = weights.git_blob_id(_write(cache.parent / "served", server.files[FILE]))
    with pytest.raises(weights.IntegrityError) as exc:
        weights.fetch(NAME, log=lambda m: None)
    assert entry["git_blob"] in str(exc.value) and actual in str(exc.value)
    assert _cache_files(cache) == []
    with pytest.raises(ModelLoadError, match="not downloaded yet"):  # and the loader does not find anything
        load_model(NAME)


def test_an_interrupted_download_never_sits_under_the_final_name_and_resumes(env, official):
    server, cache, entry = env
    data, _ = official
    server.mode[FILE] = "abort"
    with pytest.raises(weights.DownloadError, match=f"liteseg weights fetch {NAME}` resumes"):
        weights.fetch(NAME, log=lambda m: None)
    assert not (cache / FILE).exists()
    partial = cache / (FILE + ".partial")
    assert 0 < partial.stat().st_size < len(data)
    with pytest.raises(ModelLoadError, match="not downloaded yet"):
        load_model(NAME)
    have = partial.stat().st_size
    path = weights.fetch(NAME, log=lambda m: None)
    assert server.requests[-1][1] == f"bytes={have}-"  # resumed, not started over
    assert path == cache / FILE and path.read_bytes() == data and _cache_files(cache) == [FILE]


def test_a_failed_download_exits_1_and_an_unknown_name_2(env, capsys):
    """The exit-code convention: the name was fine but the download failed (1) vs bad input (2)."""
    server, cache, entry = env
    server.mode[FILE] = "abort"
    assert main(["weights", "fetch", NAME, "--no-progress"]) == 1
    assert "resumes" in capsys.readouterr().err and not (cache / FILE).exists()
    assert main(["weights", "fetch", "no-such-weights", "--no-progress"]) == 2


def test_two_fetches_at_once_download_once_and_a_mirror_can_be_given(env, official, monkeypatch, capsys):
    server, cache, entry = env
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(weights.fetch(NAME, log=lambda m: None)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [cache / FILE] * 2 and len(server.requests) == 1  # the second found it verified
    (cache / FILE).unlink()
    monkeypatch.setenv(weights.ENV_URL, "http://127.0.0.1:1/nowhere")
    assert main(["weights", "fetch", NAME, "--base-url", server.url + "/", "--no-progress"]) == 0
    assert server.requests[-1][0] == f"/mirror/{FILE}" and (cache / FILE).read_bytes() == official[0]


def test_a_registered_size_is_checked_before_the_download(env, official, monkeypatch, tmp_path):
    server, cache, entry = env
    reg = tmp_path / "sized.yaml"
    reg.write_text(yaml.safe_dump({"weights": {NAME: {**entry, "size": len(official[0]) + 1}}}))
    monkeypatch.setenv(weights.ENV_REGISTRY, str(reg))
    with pytest.raises(weights.DownloadError, match=rf"offers {len(official[0])} bytes.*has {len(official[0]) + 1}"):
        weights.fetch(NAME, log=lambda m: None)
    assert _cache_files(cache) == []


def test_a_cached_file_that_changed_is_refused_and_a_fetch_replaces_it(env, official):
    server, cache, entry = env
    weights.fetch(NAME, log=lambda m: None)
    final = cache / FILE
    changed = bytearray(final.read_bytes())
    changed[-1] ^= 0xFF  # (not "set it to 0": a legacy pickle may end in a num_batches_tracked of 0)
    final.write_bytes(bytes(changed))
    with pytest.raises(ModelLoadError, match=rf"expected {entry['git_blob']}.*liteseg weights fetch {NAME}"):
        load_model(NAME)
    weights.fetch(NAME, log=lambda m: None)
    assert final.read_bytes() == official[0]


# ------------------------------------------------------------------------------------------ names in the tools
def test_offline_a_name_that_is_not_cached_gives_the_fetch_command(env, monkeypatch):
    server, cache, entry = env
    with pytest.raises(ModelLoadError, match=f"run `liteseg weights fetch {NAME}`"):
        load_model(NAME)
    assert server.requests == [] and _cache_files(cache) == []
    monkeypatch.setenv(weights.ENV_URL, "http://127.0.0.1:1/nowhere")  # allowed, but the network is gone
    with pytest.raises(ModelLoadError, match=rf"cannot download http://127.0.0.1:1/nowhere/{FILE}.*"
                                             f"liteseg weights fetch {NAME}"):
        load_model(NAME, allow_download=True, log=lambda m: None)
    assert not (cache / FILE).exists()
    monkeypatch.setenv(weights.ENV_URL, server.url)
    monkeypatch.setenv(weights.ENV_ALLOW, "1")  # the robot-side switch
    assert load_model(NAME, log=lambda m: None)[4].name == NAME


def test_an_unknown_name_lists_the_known_ones(env, capsys):
    with pytest.raises(ModelLoadError, match=rf"unknown weights name 'liteseg-mobilenet-citiscapes'; known: "
                                             rf".*liteseg-mobilenet-cityscapes.*{NAME}"):
        load_model("liteseg-mobilenet-citiscapes")
    assert main(["weights", "fetch", "nope"]) == 2
    assert "known: liteseg-mobilenet-cityscapes" in capsys.readouterr().err
    assert main(["weights", "path", NAME]) == 1
    assert f"run: liteseg weights fetch {NAME}" in capsys.readouterr().err
    with pytest.raises(ModelLoadError, match="ImageNet initialisation for training"):
        load_model("mobilenetv2-imagenet")


def test_eval_and_quantize_take_a_name_and_fetch_it_on_first_use(env, tmp_path, capsys):
    server, cache, entry = env
    assert main(["eval", "--weights", NAME, "--synthetic", "1", "--synthetic-seed", "10000",
                 "--synthetic-size", "48x96", "--size", "48x96", "--device", "cpu"]) == 0
    assert "mIoU" in capsys.readouterr().out and _cache_files(cache) == [FILE]
    assert main(["info", "--weights", NAME, "--json"]) == 0
    assert '"backbone": "mobilenetv2"' in capsys.readouterr().out
    assert main(["weights", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows[NAME]["cached"] and rows[NAME]["size_bytes"] == (cache / FILE).stat().st_size
    assert not rows["liteseg-darknet-cityscapes"]["cached"] and rows["liteseg-darknet-cityscapes"]["approx_mb"] == 82
    out = tmp_path / "q.onnx"
    assert main(["quantize", "--weights", NAME, "--synthetic", "2", "--holdout", "1", "--size", "64x96",
                 "--method", "minmax", "--out", str(out)]) == 0
    assert out.is_file()


def test_bag_downloads_by_default_unless_the_params_say_no(env, tmp_path, capsys):
    pytest.importorskip("rosbags")
    from test_bag import write_bag

    server, cache, entry = env
    bag = tmp_path / "in"
    write_bag(bag, "sqlite3", {"/camera/image_raw": "bgr8"}, n=2, h=48, w=64, chatter=False)
    pf = tmp_path / "p.yaml"
    pf.write_text(yaml.safe_dump({"/**": {"ros__parameters": {"allow_download": False}}}))
    assert main(["bag", str(bag), str(tmp_path / "o1"), "-t", "/camera/image_raw", "-p", f"weights:={NAME}",
                 "--params-file", str(pf), "--no-progress"]) == 2
    assert f"liteseg weights fetch {NAME}" in capsys.readouterr().err
    assert main(["bag", str(bag), str(tmp_path / "o2"), "-t", "/camera/image_raw", "-p", f"weights:={NAME}",
                 "-p", "network_width:=96", "-p", "network_height:=64", "--no-progress"]) == 0
    assert _cache_files(cache) == [FILE]


@pytest.mark.ros
def test_demo_fetches_a_name_then_its_node_runs_it(env, tmp_path):
    import sys

    server, cache, entry = env
    exe = Path(sys.executable).parent / "liteseg"
    proc = subprocess.run([str(exe), "demo", "--weights", NAME, "--frames", "3", "--rate", "4", "--size", "90x160",
                           "--network-size", "64x96", "--out", str(tmp_path / "demo")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{NAME} verified" in proc.stdout and _cache_files(cache) == [FILE]
    assert "weights licence: CC-BY-NC-4.0" in (tmp_path / "demo" / "node.log").read_text()


# ------------------------------------------------------------------------------------------ the node
@pytest.mark.ros
def test_the_node_runs_a_name_from_the_cache_and_publishes_its_licence(env, start_node, ros):
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy

    from liteseg_ros.msg import SegmentationInfo

    server, cache, entry = env
    net = {"network_width": 96, "network_height": 64}
    p = start_node({"weights": NAME, **net})  # not cached, allow_download off: refuses with the command
    assert p.proc.wait(90) != 0
    assert f"liteseg weights fetch {NAME}" in p.output(), p.output()
    assert server.requests == []

    weights.fetch(NAME, log=lambda m: None)
    latched = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE,
                         durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
    infos = ros.collect(SegmentationInfo, "/liteseg/info", latched)
    diags = ros.collect(DiagnosticArray, "/diagnostics")
    node = start_node({"weights": NAME, "diagnostics_period": 0.2, **net})
    ros.wait_for(lambda: infos, 90, "~/info")
    assert infos[0].model_name == NAME and infos[0].license.startswith("CC-BY-NC-4.0: personal and research")
    ros.wait_for(lambda: any(s.values for a in diags for s in a.status), 30, "diagnostics")
    kv = {v.key: v.value for a in diags for s in a.status for v in s.values}
    assert kv["license"] == infos[0].license and kv["model"] == NAME
    assert "weights licence: CC-BY-NC-4.0" in node.output()


# ------------------------------------------------------------------------------------------ training encoder
def test_encoder_weights_imagenet_uses_torchvisions_cache(tmp_path, monkeypatch):
    """``encoder_weights: imagenet`` is torchvision's IMAGENET1K_V1 file in torch's hub cache (placed here by
    hand: no network); missing and not allowed to download, it names the fetch command."""
    import torchvision

    from liteseg_ros.model import LiteSeg, load_encoder_weights
    from liteseg_ros.train.config import ConfigError, load_config

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    enc = weights.get("mobilenetv2-imagenet")
    with pytest.raises(weights.NotCached, match="liteseg weights fetch mobilenetv2-imagenet"):
        weights.encoder_file("imagenet", "mobilenetv2", allow_download=False)
    torch.manual_seed(5)
    tv = torchvision.models.mobilenet_v2(weights=None)
    hub = weights.cached_path(enc)
    hub.parent.mkdir(parents=True)
    torch.save(tv.state_dict(), hub)
    path = weights.encoder_file("imagenet", "mobilenetv2", allow_download=False)
    assert path == hub and weights.fetch("mobilenetv2-imagenet") == hub  # cached: torchvision is not asked
    model = load_encoder_weights(LiteSeg("mobilenetv2"), path)
    assert torch.equal(model.encoder.state_dict()["features.0.0.weight"], tv.state_dict()["features.0.0.weight"])
    cfg = load_config(None, ["dataset=synthetic", "encoder_weights=imagenet"])
    assert cfg.encoder_weights == "imagenet"
    with pytest.raises(ConfigError, match="no registered ImageNet encoder for shufflenet"):
        load_config(None, ["dataset=synthetic", "encoder_weights=imagenet", "backbone=shufflenet"])


def test_every_command_takes_what_the_weights_parameter_takes(tmp_path, capsys):
    """'demo' (and a file) work in `liteseg weights path` and `liteseg quantize --weights` as in `weights:`."""
    from liteseg_ros.runtime import demo_weights_path

    assert main(["weights", "path", "demo"]) == 0
    assert capsys.readouterr().out.strip() == str(demo_weights_path())
    assert main(["weights", "path", str(demo_weights_path())]) == 0
    assert main(["weights", "path", "no-such-weights-name"]) == 2
    cache = tmp_path / "cache"
    assert main(["quantize", "--weights", "demo", "--synthetic", "2", "--holdout", "1", "--size", "64x96",
                 "--method", "minmax", "--cache-dir", str(cache)]) == 0
    assert list((cache / "int8").glob("*_64x96_*.onnx"))


# ------------------------------------------------------------------------------------------ hostile mirrors
class HostileServer:
    """A real HTTP server on 127.0.0.1 that misbehaves on purpose: ``endless`` streams without end and
    without a Content-Length (stopping itself at ``cap`` bytes, so that a download with no bound ends
    too), ``huge`` announces 10**12 bytes, ``trickle`` sends one byte every 0.3 s, ``stall`` sends the
    headers and then nothing. ``sent`` counts the body bytes that left the server."""

    def __init__(self, behaviour: str, cap: int = 64 << 20) -> None:
        self.sent = 0
        self.done = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                if behaviour == "huge":
                    self.send_header("Content-Length", str(10**12))
                elif behaviour in ("trickle", "stall"):
                    self.send_header("Content-Length", "5000")
                self.end_headers()
                block = b"x" * 65536
                try:
                    while server.sent < cap and not server.done.is_set():
                        if behaviour == "stall":
                            time.sleep(0.1)
                            continue
                        data = block[:1] if behaviour == "trickle" else block
                        self.wfile.write(data)
                        self.wfile.flush()
                        server.sent += len(data)
                        if behaviour == "trickle":
                            time.sleep(0.3)
                except OSError:
                    pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/mirror"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.done.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def _hostile_entry(env, monkeypatch, tmp_path, **fields) -> None:
    server, cache, entry = env
    reg = tmp_path / "hostile.yaml"
    reg.write_text(yaml.safe_dump({"weights": {NAME: {**entry, **fields}}}))
    monkeypatch.setenv(weights.ENV_REGISTRY, str(reg))


@pytest.mark.parametrize("behaviour, fields, refusal", [
    ("endless", {"size": 5000}, r"sent more than {bound} bytes \(the registered size"),
    ("endless", {"approx_mb": 0.5}, r"sent more than {bound} bytes \(no registered size: bound 2 x approx_mb 0.5 MB"),
    ("huge", {"approx_mb": 18}, r"offers 1000000000000 bytes, more than {bound} \(no registered size: bound 2 x "
                                r"approx_mb 18 MB"),
], ids=["endless-size", "endless-approx_mb", "announced-length"])
def test_a_hostile_mirror_is_cut_at_the_bound(env, monkeypatch, tmp_path, behaviour, fields, refusal):
    """Before: the whole stream (here capped at 64 MB by the server itself) landed in ``.partial``, and
    an announced length over any sane size was read anyway. Now an endless stream is cut at the bound
    and an announced length over it is refused before reading."""
    server, cache, entry = env
    _hostile_entry(env, monkeypatch, tmp_path, **fields)
    bound = weights.size_bound(weights.get(NAME))[0]
    hostile = HostileServer(behaviour)
    try:
        with pytest.raises(weights.DownloadError, match=refusal.format(bound=bound)):
            weights.fetch(NAME, base_url=hostile.url, log=lambda m: None)
    finally:
        hostile.close()
    read_at_most = bound if behaviour == "endless" else 0
    assert hostile.sent < read_at_most + (16 << 20)  # socket buffers at most, not the stream
    assert _cache_files(cache) == []


@pytest.mark.parametrize("behaviour", ["trickle", "stall"])
def test_a_trickling_or_stalled_mirror_meets_a_deadline(env, behaviour):
    """Before: the 60 s timeout was per read, so one byte every few seconds ran for hours."""
    hostile = HostileServer(behaviour)
    t0 = time.monotonic()
    try:
        with pytest.raises(weights.DownloadError, match="deadline" if behaviour == "trickle" else "stalled"):
            weights.fetch(NAME, base_url=hostile.url, log=lambda m: None, timeout=1.0, deadline=2.0)
    finally:
        hostile.close()
    assert time.monotonic() - t0 < 6


@pytest.mark.ros
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_node_configuring_with_a_stuck_download_stops_on_one_signal(env, start_node, monkeypatch, sig):
    """Before: the node ignored SIGINT and SIGTERM until a third signal while a download trickled."""
    hostile = HostileServer("trickle")
    monkeypatch.setenv(weights.ENV_URL, hostile.url)
    try:
        node = start_node({"weights": NAME, "allow_download": True, "network_width": 96, "network_height": 64})
        deadline = time.monotonic() + 90
        while "downloading" not in node.output() and time.monotonic() < deadline and node.alive():
            time.sleep(0.2)
        assert "downloading" in node.output(), node.output()
        time.sleep(1.0)
        node.proc.send_signal(sig)
        t0 = time.monotonic()
        node.proc.wait(15)
        assert time.monotonic() - t0 < 10, node.output()
    finally:
        hostile.close()


@pytest.mark.parametrize("planted", ["symlink", "hardlink"])
def test_a_planted_partial_is_never_written_through(env, official, tmp_path, planted):
    """Before: a symlink at ``<file>.partial`` was appended to (its target overwritten), and after the
    download verified ``<file>`` itself became that link."""
    server, cache, entry = env
    cache.mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    partial = cache / (FILE + ".partial")
    if planted == "symlink":
        partial.symlink_to(victim)
    else:
        partial.hardlink_to(victim)
    path = weights.fetch(NAME, log=lambda m: None)
    assert victim.read_bytes() == b"precious"
    assert not path.is_symlink() and path.read_bytes() == official[0] and _cache_files(cache) == [FILE]


def test_a_local_file_named_like_a_registered_name_is_not_loaded_in_its_place(env, official, tmp_path,
                                                                             monkeypatch, tiny_checkpoint):
    """Before: ./<registered name> in the working folder was loaded, unverified, with no word."""
    from liteseg_ros.runtime import resolve_weights

    server, cache, entry = env
    work = tmp_path / "work"
    work.mkdir()
    (work / NAME).write_bytes(tiny_checkpoint.read_bytes())  # someone else's weights under the name
    monkeypatch.chdir(work)
    logs: list[str] = []
    path = resolve_weights(NAME, allow_download=True, log=logs.append)
    assert path == cache / FILE and path.read_bytes() == official[0]
    assert any(f"./{NAME} exists but {NAME!r} is a registered name" in m for m in logs), logs
    assert resolve_weights(f"./{NAME}", log=logs.append) == Path(f"./{NAME}")  # asked for explicitly
