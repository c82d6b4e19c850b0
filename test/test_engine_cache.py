"""The engine cache cannot be poisoned: every derived file carries a record (SHA-256, key) made with it.

A cached file replaced or edited after it was made (an ONNX export swapped for another model's, a
metadata file renamed to another model, an agreement figure raised, a TensorRT plan swapped) is
noticed at use, named in the log, and made again; never used. A cache folder others can write to
is warned about.
"""
from __future__ import annotations

import json
import shutil

from conftest import start_runtime

from liteseg_ros.engines import cache
from liteseg_ros.engines.tensorrt import cached_plan, engine_cache_key, engine_cache_path, write_plan
from liteseg_ros.model import save_checkpoint
from liteseg_ros.tools.bench import random_weight_model


def test_a_record_names_a_missing_record_another_key_and_changed_content(tmp_path):
    f = tmp_path / "agreement" / "x.json"
    f.parent.mkdir()
    f.write_text('{"label_agreement": 0.97}')
    logs: list[str] = []
    assert not cache.cached_file_ok(f, "k1", logs.append)
    assert "has no readable record" in logs[-1] and str(f) in logs[-1]
    cache.write_record(f, "k1")
    assert cache.cached_file_ok(f, "k1", logs.append) and cache.record_problem(f, "k1") == ""
    assert "another key" in cache.record_problem(f, "k2")
    f.write_text('{"label_agreement": 1.0}')  # raised by someone else
    assert not cache.cached_file_ok(f, "k1", logs.append)
    assert "changed since it was made" in logs[-1] and str(f) in logs[-1]


def test_a_swapped_onnx_export_and_edited_metadata_are_made_again(tiny_checkpoint, tmp_path):
    """Before: the swapped export was run (other labels) while the metadata still named the model."""
    weights, other = tmp_path / "w.pt", tmp_path / "other.pt"
    shutil.copy(tiny_checkpoint, weights)
    save_checkpoint(random_weight_model(seed=5), other)
    root = tmp_path / "cache"
    cold = start_runtime(weights, root)
    mine = set((root / "onnx").glob("*.onnx"))
    theirs = start_runtime(other, root)
    assert theirs["label"] != cold["label"]
    (target,) = mine
    (foreign,) = set((root / "onnx").glob("*.onnx")) - mine
    shutil.copyfile(foreign, target)  # the cached export of these weights is now another model's
    meta = cache.meta_cache_path(weights, root)
    data = json.loads(meta.read_text())
    meta.write_text(json.dumps(dict(data, name="someone-else")))
    warm = start_runtime(weights, root)
    assert warm["label"] == cold["label"] and warm["name"] == cold["name"], warm["logs"]
    said = "\n".join(warm["logs"])
    assert f"cached file {target} changed since it was made" in said
    assert f"cached file {meta} changed since it was made" in said
    assert cache.record_problem(target, target.name.split("_")[1]) == ""


def test_a_swapped_tensorrt_plan_is_never_loaded(tmp_path):
    key = engine_cache_key("ab" * 32, (96, 160), "fp16", "10.3.0", "GPU", 1)
    path = engine_cache_path(tmp_path, key)
    write_plan(path, key, b"plan-bytes")
    assert cached_plan(path, key) == (b"plan-bytes", "")
    path.write_bytes(b"evil-plans")
    plan, why = cached_plan(path, key)
    assert plan is None and f"cached file {path} changed since it was made" in why


def test_a_cache_others_can_write_is_warned_about(tiny_checkpoint, tmp_path):
    root = tmp_path / "cache"
    root.mkdir()
    root.chmod(0o777)
    weights = tmp_path / "w.pt"
    shutil.copy(tiny_checkpoint, weights)
    out = start_runtime(weights, root)
    assert any("writable by other users" in m and str(root) in m for m in out["logs"]), out["logs"]


def test_an_int8_report_is_trusted_only_for_the_file_it_was_measured_on(tmp_path):
    """Before: a report was matched to its file by modification time, so a swapped int8 file with the
    old time (``cp -p``, an unpacked archive) inherited the old file's label agreement, which lets
    ``precision: auto`` choose int8 without measuring."""
    import os

    from liteseg_ros.tools.quantize import write_report

    q = tmp_path / "int8" / "m.int8.onnx"
    q.parent.mkdir()
    q.write_bytes(b"int8 model, version 1")
    rep = {**cache.report_fields(q), "backend": "onnxruntime", "threads": 1, "input_size": [64, 96],
           "label_agreement": 0.995, "confidence_mean_abs_diff": 0.1, "per_class": [],
           "holdout": {"images": 8, "source": "test"}, "calibration": {"images": 8, "source": "test", "method": "x"}}
    jpath, tpath = write_report(q, "onnxruntime", rep)
    assert cache.load_report(q, "onnxruntime")["label_agreement"] == 0.995 and tpath.is_file()
    assert cache.load_report(q, "openvino") is None  # one report per runtime
    st = q.stat()
    q.write_bytes(b"int8 model, version 2")  # another file at the same path, with the old time
    os.utime(q, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert q.stat().st_mtime_ns == st.st_mtime_ns
    assert cache.load_report(q, "onnxruntime") is None
    for broken in ("[]", '{"label_agreement": "high"}', "{not json"):
        jpath.write_text(broken)
        assert cache.load_report(q, "onnxruntime") is None


def test_a_file_is_hashed_once_per_version_and_again_when_it_changes(tmp_path, monkeypatch):
    """A start-up checks an int8 file's record, then the report of each runtime: one SHA-256 pass, not one
    per question. The memo must never hide a change, even one that keeps the size and sets the old
    modification time back, or one inside a tick of the file clock."""
    import os

    hashed: list[str] = []
    real = cache._sha256
    monkeypatch.setattr(cache, "_sha256", lambda p: hashed.append(str(p)) or real(p))
    q = tmp_path / "int8" / "m.int8.onnx"
    q.parent.mkdir()
    q.write_bytes(b"int8 model, version 1")
    # right after a write, the file is "racy": hashed at every ask until its change time is well past
    first = cache.file_digest(q)
    st = q.stat()
    q.write_bytes(b"int8 model, version 2")  # same size, in the same tick of the file clock
    os.utime(q, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cache.file_digest(q) != first and len(hashed) == 2

    monkeypatch.setattr(cache, "RACY_NS", 0)  # as if the file were written long before this start-up
    monkeypatch.setattr(cache, "_digests", {})  # a new process
    hashed.clear()
    cache.write_record(q, "k")
    rep = {**cache.report_fields(q), "label_agreement": 0.99}
    for backend in ("onnxruntime", "openvino"):
        cache.report_paths(q, backend)[0].write_text(json.dumps(rep))
    assert cache.cached_file_ok(q, "k", print)
    assert cache.load_report(q, "onnxruntime") and cache.load_report(q, "openvino")
    assert hashed == [str(q.resolve())]

    replacement = tmp_path / "other"
    replacement.write_bytes(b"int8 model, version 3")
    os.replace(replacement, q)  # another inode at the same path
    assert cache.load_report(q, "onnxruntime") is None and len(hashed) == 2
