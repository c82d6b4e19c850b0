"""Tests of liteseg_ros.model.checkpoint: official files, wrappers, our format, encoder init, clear errors."""
from __future__ import annotations

import re
from collections import OrderedDict

import pytest
import torch
from model_keys import official_keys, random_official_state_dict
from torchvision.models import mobilenet_v2

from liteseg_ros.classes import ClassTable
from liteseg_ros.model import (
    CheckpointError,
    CheckpointMeta,
    LiteSeg,
    load_checkpoint,
    load_encoder_weights,
    official_state_dict,
    read_extra,
    save_checkpoint,
)

torch.set_num_threads(1)
ALL = ["mobilenetv2", "shufflenet", "darknet19"]


def _save_legacy(obj, path):
    torch.save(obj, path, _use_new_zipfile_serialization=False)
    return path


@pytest.fixture(scope="module")
def official_files(tmp_path_factory):
    """Legacy-format official-layout files (unused classifiers included) with random weights."""
    d = tmp_path_factory.mktemp("official")
    out = {}
    for b in ALL:
        sd = random_official_state_dict(b, seed=ALL.index(b))
        out[b] = (_save_legacy(sd, d / f"liteseg-{b}-cityscapes.pth"), sd)
    return out


# --------------------------------------------------------------------------------- official files

@pytest.mark.parametrize("backbone", ALL)
def test_official_legacy_file_loads_strictly(official_files, backbone):
    path, sd = official_files[backbone]
    model = load_checkpoint(path)
    assert isinstance(model, LiteSeg) and model.backbone == backbone and model.num_classes == 19
    assert not model.training
    assert model.meta.source == "official" and model.meta.classes == ClassTable.cityscapes()
    assert model.meta.mean == (0.485, 0.456, 0.406)
    exported = official_state_dict(model)
    for k, v in sd.items():  # every used tensor arrives under its official name, bit for bit
        if "classifier" in k or ".fc." in k:
            assert k not in exported
        else:
            assert torch.equal(exported[k], v), k
    size = (64, 96)
    with torch.inference_mode():
        assert model(torch.randn(1, 3, *size)).shape == (1, 19, *size)


def test_map_location_variants(official_files):
    path, sd = official_files["mobilenetv2"]
    for loc in (torch.device("cpu"), lambda storage, _loc: storage, {"cuda:0": "cpu"}):
        model = load_checkpoint(path, map_location=loc)
        assert torch.equal(model.state_dict()["last_conv.6.bias"], sd["last_conv.6.bias"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to write a CUDA-tensor checkpoint")
def test_cuda_saved_file_loads_on_cpu(tmp_path):
    sd = {k: v.cuda() for k, v in random_official_state_dict("shufflenet").items()}
    model = load_checkpoint(_save_legacy(sd, tmp_path / "cuda.pth"), map_location="cpu")
    assert next(model.parameters()).device.type == "cpu"


def test_wrappers_prefix_and_missing_num_batches_tracked(tmp_path):
    sd = random_official_state_dict("darknet19", seed=5)
    ref = load_checkpoint(_save_legacy(sd, tmp_path / "plain.pth")).state_dict()
    variants = {
        "sd.pth": {"state_dict": sd, "epoch": 3},
        "model.pth": {"model": sd},
        "module.pth": OrderedDict(("module." + k, v) for k, v in sd.items()),
        "nbt.pth": OrderedDict((k, v) for k, v in sd.items() if not k.endswith("num_batches_tracked")),
    }
    for name, obj in variants.items():
        got = load_checkpoint(_save_legacy(obj, tmp_path / name)).state_dict()
        for k, v in ref.items():
            if not k.endswith("num_batches_tracked"):
                assert torch.equal(got[k], v), (name, k)


def test_num_classes_comes_from_the_classifier(tmp_path):
    sd = random_official_state_dict("shufflenet", num_classes=5)
    model = load_checkpoint(_save_legacy(sd, tmp_path / "five.pth"))
    assert model.num_classes == 5 and len(model.meta.classes) == 5
    with torch.inference_mode():
        assert model(torch.randn(1, 3, 40, 40)).shape == (1, 5, 40, 40)


def test_plain_state_dict_of_our_model_loads(tmp_path):
    model = LiteSeg("mobilenetv2", num_classes=7).eval()
    torch.save(model.state_dict(), tmp_path / "ours.pth")
    loaded = load_checkpoint(tmp_path / "ours.pth")
    assert loaded.meta.source == "state_dict" and loaded.num_classes == 7
    x = torch.randn(1, 3, 48, 64)
    with torch.inference_mode():
        assert torch.equal(model(x), loaded(x))


# -------------------------------------------------------------------------------------- our format

def test_save_load_round_trip_keeps_outputs_and_metadata(tmp_path):
    torch.manual_seed(3)
    model = LiteSeg("shufflenet", num_classes=3).eval()
    meta = CheckpointMeta(
        backbone="shufflenet", num_classes=3,
        classes=ClassTable(("road", "grass", "obstacle"), ((1, 2, 3), (4, 5, 6), (7, 8, 9))),
        mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), train_size=(96, 160), model_name="yard",
        source="liteseg_ros", notes="synthetic fine-tune",
    )
    path = save_checkpoint(model, tmp_path / "sub" / "yard.pth", meta, extra={"epoch": 4, "miou": 0.5})
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "liteseg_ros" and raw["version"] == 1 and raw["meta"]["train_size"] == [96, 160]
    loaded = load_checkpoint(path)
    assert loaded.meta == meta
    assert read_extra(path) == {"epoch": 4, "miou": 0.5}
    x = torch.randn(2, 3, 50, 70)
    with torch.inference_mode():
        assert torch.equal(model(x), loaded(x))
    # and saving again from the loaded model (meta taken from model.meta) is stable
    again = load_checkpoint(save_checkpoint(loaded, tmp_path / "again.pth"))
    assert again.meta == meta


def test_save_rejects_inconsistent_meta_and_unsafe_extra(tmp_path):
    model = LiteSeg("shufflenet", num_classes=3)
    with pytest.raises(ValueError, match="does not describe the model"):
        save_checkpoint(model, tmp_path / "x.pth", CheckpointMeta(backbone="shufflenet"))
    with pytest.raises(TypeError, match=r"extra\['opt'\] is a object"):
        save_checkpoint(model, tmp_path / "x.pth", extra={"opt": object()})
    with pytest.raises(ValueError, match="num_classes=3 but the class table has 19"):
        CheckpointMeta(backbone="shufflenet", num_classes=3)
    assert not (tmp_path / "x.pth").exists()


def test_saved_file_mode_follows_the_umask_like_a_plain_open(tmp_path):
    """The atomic write goes through a fresh temporary file; the finished file must get the mode a plain
    open() would (0666 less the umask), not stay private to its owner."""
    import os
    import stat

    model = LiteSeg("shufflenet", num_classes=3)
    old = os.umask(0o022)
    try:
        assert stat.S_IMODE(save_checkpoint(model, tmp_path / "shared.pt",
                                            CheckpointMeta.for_model("shufflenet", 3)).stat().st_mode) == 0o644
        os.umask(0o077)
        assert stat.S_IMODE(save_checkpoint(model, tmp_path / "private.pt",
                                            CheckpointMeta.for_model("shufflenet", 3)).stat().st_mode) == 0o600
    finally:
        os.umask(old)
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_meta_dict_round_trip_and_unknown_fields():
    meta = CheckpointMeta.official("darknet19")
    assert CheckpointMeta.from_dict(meta.to_dict()) == meta
    with pytest.raises(ValueError, match="unknown metadata fields"):
        CheckpointMeta.from_dict({**meta.to_dict(), "colour": 1})



def test_colour_order_is_not_stored_and_old_files_load(tmp_path):
    """Every model here takes RGB, so the metadata has no colour-order field: saving writes none, a
    file written when the field existed ("rgb") loads as before, and one that declares BGR input is
    refused with a message saying why, instead of being fed RGB and segmenting wrongly."""
    model = LiteSeg("shufflenet", num_classes=3).eval()
    path = save_checkpoint(model, tmp_path / "new.pt")
    obj = torch.load(path, weights_only=True)
    assert "color_order" not in obj["meta"]
    assert not hasattr(load_checkpoint(path).meta, "color_order")
    obj["meta"]["color_order"] = "rgb"  # what every file written before looks like
    torch.save(obj, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt").meta == load_checkpoint(path).meta
    obj["meta"]["color_order"] = "bgr"
    torch.save(obj, tmp_path / "bgr.pt")
    err = _error(tmp_path / "bgr.pt")
    assert "bgr.pt" in err and "color_order 'bgr'" in err and "RGB" in err


# ----------------------------------------------------------------------------------- encoder init

def test_torchvision_imagenet_file_initialises_the_mobilenet_encoder(tmp_path):
    tv = mobilenet_v2(weights=None)
    path = tmp_path / "mobilenet_v2-imagenet.pth"
    torch.save(tv.state_dict(), path)
    model = load_encoder_weights(LiteSeg("mobilenetv2"), path)
    for k, v in tv.features.state_dict().items():
        assert torch.equal(model.encoder.features.state_dict()[k], v), k
    # it is an encoder init, not a LiteSeg checkpoint: the error says so
    with pytest.raises(CheckpointError, match="load_encoder_weights"):
        load_checkpoint(path)


def test_flat_layout_imagenet_file_initialises_the_mobilenet_encoder(tmp_path):
    sd = random_official_state_dict("mobilenetv2", seed=9)
    flat = {k[len("mobile_features."):]: v for k, v in sd.items() if k.startswith("mobile_features.")}
    model = load_encoder_weights(LiteSeg("mobilenetv2"), _save_legacy({"state_dict": flat}, tmp_path / "e.pth"))
    exported = official_state_dict(model)
    assert torch.equal(exported["mobile_features.features.5.conv.6.weight"],
                       sd["mobile_features.features.5.conv.6.weight"])


def test_encoder_init_errors_name_the_file_and_keys(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save({"layers.1_convbatch.layers.0.weight": torch.zeros(32, 3, 3, 3)}, path)
    with pytest.raises(CheckpointError) as err:
        load_encoder_weights(LiteSeg("shufflenet"), path)
    msg = str(err.value)
    assert str(path) in msg and "missing keys" in msg and "unexpected keys (1)" in msg


# ---------------------------------------------------------------------------------------- errors

def _error(path, **kw) -> str:
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, **kw)
    msg = str(err.value)
    assert str(path) in msg
    assert "Traceback" not in msg
    return msg


def test_missing_empty_and_directory(tmp_path):
    assert "no such checkpoint file" in _error(tmp_path / "nope.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    assert "empty" in _error(tmp_path / "empty.pth")
    assert "not a regular file" in _error(tmp_path)


def test_corrupt_and_truncated_files(tmp_path):
    rnd = tmp_path / "random.pth"
    rnd.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                  dtype=torch.uint8).numpy().tobytes())
    assert re.search(r"corrupt|unreadable", _error(rnd))
    sd = random_official_state_dict("mobilenetv2")
    for name, legacy in (("cut_zip.pth", False), ("cut_legacy.pth", True)):
        full = tmp_path / ("full_" + name)
        torch.save(sd, full, _use_new_zipfile_serialization=not legacy)
        data = full.read_bytes()
        cut = tmp_path / name
        cut.write_bytes(data[: len(data) // 2])
        assert re.search(r"truncated|corrupt|unreadable", _error(cut)), name


def test_pickled_model_object_is_refused_with_advice(tmp_path):
    path = tmp_path / "whole.pth"
    torch.save(LiteSeg("shufflenet", num_classes=2), path)
    assert "state_dict()" in _error(path)


def test_not_a_state_dict(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pth")
    assert "holds a list" in _error(tmp_path / "list.pth")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "noweights.pth")
    assert "no state dict found" in _error(tmp_path / "noweights.pth")
    torch.save({"foo.weight": torch.zeros(3)}, tmp_path / "foreign.pth")
    assert "not a LiteSeg checkpoint" in _error(tmp_path / "foreign.pth")


def test_missing_unexpected_and_mismatched_keys_are_listed(tmp_path):
    sd = random_official_state_dict("mobilenetv2")
    del sd["aspp2.conv1.pointwise.weight"]
    del sd["bn1.running_var"]
    sd["aspp9.bn.weight"] = torch.zeros(96)
    sd["aspp1.bn.weight"] = torch.zeros(95)
    path = _save_legacy(sd, tmp_path / "broken.pth")
    msg = _error(path)
    assert "LiteSeg-mobilenetv2" in msg
    assert "missing keys (2): aspp2.conv1.pointwise.weight, bn1.running_var" in msg
    assert "unexpected keys (1): aspp9.bn.weight" in msg
    assert "shape mismatches (1): aspp1.bn.weight (expected [96], got [95])" in msg


def test_many_missing_keys_are_counted_not_all_listed(tmp_path):
    sd = OrderedDict((k, v) for k, v in random_official_state_dict("shufflenet").items() if "stage3" not in k)
    msg = _error(_save_legacy(sd, tmp_path / "nostage3.pth"))
    n = sum(1 for k in official_keys("shufflenet") if "stage3" in k and "num_batches" not in k)
    assert f"missing keys ({n}):" in msg and f"(+{n - 5} more)" in msg and "LiteSeg-shufflenet" in msg
    assert "shuffle_features.module.stage3.ShuffleUnit_Stage3_0." in msg  # named as in the file


def test_backbone_assertion_meta_mismatch_and_version(tmp_path):
    sd = random_official_state_dict("darknet19")
    path = _save_legacy(sd, tmp_path / "dark.pth")
    assert "expected a LiteSeg-mobilenetv2 checkpoint but it holds LiteSeg-darknet19" in _error(
        path, backbone="mobilenetv2")
    model = LiteSeg("shufflenet", num_classes=2)
    good = save_checkpoint(model, tmp_path / "ours.pth")
    raw = torch.load(good, weights_only=True)
    raw["meta"]["backbone"] = "mobilenetv2"
    torch.save(raw, tmp_path / "badmeta.pth")
    assert "metadata says backbone 'mobilenetv2'" in _error(tmp_path / "badmeta.pth")
    raw["meta"]["backbone"] = "shufflenet"
    raw["version"] = 99
    torch.save(raw, tmp_path / "v99.pth")
    assert "version 99 is not supported" in _error(tmp_path / "v99.pth")


# --------------------------------------------------------------------------------- corruption


def _overwrite_middle(src, dst, n=4096, seed=0):
    data = bytearray(src.read_bytes())
    mid = len(data) // 2
    data[mid:mid + n] = torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed),
                                      dtype=torch.uint8).numpy().tobytes()
    dst.write_bytes(bytes(data))
    return dst


def test_random_bytes_inside_the_demo_weights_are_caught(tmp_path):
    """4 KiB of noise in the middle of the shipped file: torch.load still loads it; we refuse it."""
    from liteseg_ros.runtime import demo_weights_path

    for seed in range(3):
        bad = _overwrite_middle(demo_weights_path(), tmp_path / f"demo_{seed}.pt", seed=seed)
        torch.load(bad, weights_only=True)  # what made this silent: the loader itself does not notice
        assert re.search(r"corrupt", _error(bad)), seed


def test_non_finite_weights_are_refused_in_any_layout(tmp_path):
    torch.manual_seed(0)
    model = LiteSeg("mobilenetv2", 19).eval()
    sd = model.state_dict()
    sd["last_conv.6.weight"][0, 0, 0, 0] = float("nan")
    sd["mobile_features.features.0.0.weight"].view(-1)[3] = float("inf")
    for legacy in (False, True):
        path = tmp_path / f"nan_{legacy}.pth"
        torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
        err = _error(path)
        assert "NaN or infinite" in err and "last_conv.6.weight" in err, err


def test_our_files_carry_a_content_hash_that_load_verifies(tmp_path):
    torch.manual_seed(0)
    model = LiteSeg("mobilenetv2", 19).eval()
    path = save_checkpoint(model, tmp_path / "ours.pt")
    obj = torch.load(path, weights_only=True)
    assert len(obj["content_sha256"]) == 64
    # a change to one weight that keeps it finite, saved with the old hash (a legacy pickle has no zip CRC)
    obj["state_dict"]["last_conv.6.bias"][0] += 0.25
    tampered = tmp_path / "tampered.pt"
    torch.save(obj, tampered, _use_new_zipfile_serialization=False)
    assert "SHA-256" in _error(tampered)
    # files written before the hash existed (and official files) load without the check
    del obj["content_sha256"]
    old = tmp_path / "old_format.pt"
    torch.save(obj, old)
    assert load_checkpoint(old).state_dict()["last_conv.6.bias"][0] == obj["state_dict"]["last_conv.6.bias"][0]


def test_text_file_and_onnx_file_as_checkpoint_say_what_they_are(tmp_path):
    txt = tmp_path / "weights.txt"
    txt.write_text("this is not a checkpoint\n")
    err = _error(txt)
    assert "not a PyTorch checkpoint" in err and "text file" in err and "pop from empty list" not in err
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"\x08\x07\x12\x07pytorch")
    assert "ONNX model" in _error(fake)


# --------------------------------------------------------------------------------- weights parameter


def _settings(**kw):
    from liteseg_ros import params

    return params.pipeline_settings({"network_width": 96, "network_height": 64, "num_threads": 1, **kw})


def test_weights_directory_and_text_file_get_clear_messages(tmp_path):
    from liteseg_ros.runtime import ModelLoadError, build_pipeline

    with pytest.raises(ModelLoadError, match="is a directory") as exc_info:
        build_pipeline(_settings(weights=str(tmp_path)), log=lambda m: None)
    assert "does not exist" not in str(exc_info.value)
    txt = tmp_path / "notes.txt"
    txt.write_text("hello\n")
    with pytest.raises(ModelLoadError, match="not a PyTorch checkpoint") as exc_info:
        build_pipeline(_settings(weights=str(txt)), log=lambda m: None)
    assert "pop from empty list" not in str(exc_info.value)


@pytest.fixture(scope="module")
def onnx_weights(tmp_path_factory):
    """A tiny model saved as a checkpoint and exported to ONNX at 64x96 (as `liteseg export` does)."""
    from liteseg_ros.engines.export import export_onnx

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("onnxw")
    ckpt = save_checkpoint(LiteSeg("mobilenetv2", 19).eval(), d / "tiny.pt",
                           CheckpointMeta(backbone="mobilenetv2", num_classes=19, classes=ClassTable.cityscapes(),
                                          model_name="tiny"))
    return ckpt, export_onnx(load_checkpoint(ckpt), d / "tiny.onnx", (64, 96))


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "auto"])
def test_onnx_file_as_weights_runs_and_agrees_with_the_checkpoint(onnx_weights, backend):
    import numpy as np

    from liteseg_ros.engines import available_backends
    from liteseg_ros.runtime import build_pipeline

    if backend != "auto" and available_backends()[backend] != "ok":
        pytest.skip(f"{backend}: {available_backends()[backend]}")
    ckpt, onnx_path = onnx_weights
    pipe, source = build_pipeline(_settings(weights=str(onnx_path), backend=backend, device="cpu",
                                            precision="fp32" if backend != "auto" else "auto"),
                                  log=lambda m: None)
    ref, _ = build_pipeline(_settings(weights=str(ckpt), backend="pytorch", device="cpu", precision="fp32"),
                            log=lambda m: None)
    img = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    got, want = pipe.run([img])[0].label, ref.run([img])[0].label
    assert source.weights == str(onnx_path) and not source.random
    assert list(pipe.classes.names) == list(ClassTable.cityscapes().names)
    assert np.mean(got == want) > 0.99


def test_onnx_file_with_another_backend_or_size_is_a_clear_error(onnx_weights):
    from liteseg_ros.runtime import ModelLoadError, build_pipeline

    _, onnx_path = onnx_weights
    with pytest.raises(ModelLoadError, match="ONNX model: it runs with backend onnxruntime or openvino") as exc_info:
        build_pipeline(_settings(weights=str(onnx_path), backend="pytorch"), log=lambda m: None)
    assert "pickled" not in str(exc_info.value)
    with pytest.raises(ModelLoadError, match="exported for a 96x64 input"):
        build_pipeline(_settings(weights=str(onnx_path), backend="onnxruntime", network_width=128),
                       log=lambda m: None)


def test_backbone_parameter_is_checked_against_the_checkpoint_even_when_it_names_the_default(tmp_path):
    """``backbone: auto`` takes the file's; any named backbone, mobilenetv2 included, must match it."""
    from liteseg_ros.model import CheckpointMeta, LiteSeg, save_checkpoint
    from liteseg_ros.runtime import ModelLoadError, load_model

    path = tmp_path / "shuffle.pt"
    save_checkpoint(LiteSeg("shufflenet", 19).eval(), path,
                    CheckpointMeta(backbone="shufflenet", num_classes=19, classes=ClassTable.cityscapes()))
    assert load_model(str(path), backbone="auto")[4].backbone == "shufflenet"
    assert load_model(str(path), backbone="shufflenet")[4].backbone == "shufflenet"
    with pytest.raises(ModelLoadError, match="backbone='mobilenetv2' but .* holds a shufflenet model"):
        load_model(str(path), backbone="mobilenetv2")
    random = load_model("", allow_random_weights=True, backbone="auto")
    assert random[4].backbone == "mobilenetv2" and random[4].random
