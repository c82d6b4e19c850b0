"""Tests of liteseg_ros.model: shapes, official key layout, remap tables, complexity numbers, BN folding."""
from __future__ import annotations

import pytest
import torch
from model_keys import official_keys, random_official_state_dict
from torch import nn

from liteseg_ros.model import (
    BACKBONES,
    LiteSeg,
    count_macs,
    count_parameters,
    describe,
    fold_batchnorm,
    keymap,
    official_state_dict,
)

torch.set_num_threads(1)
ALL = list(BACKBONES)


@pytest.fixture(scope="module")
def models() -> dict[str, LiteSeg]:
    torch.manual_seed(0)
    return {b: LiteSeg(b).eval() for b in ALL}


def _randomise_bn(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)


# ------------------------------------------------------------------------------------------- shapes

@pytest.mark.parametrize("backbone", ["mobilenetv2", "shufflenet"])
@pytest.mark.parametrize("size", [(64, 96), (65, 97), (33, 50)])
def test_any_size_backbones_return_logits_at_input_size(models, backbone, size):
    x = torch.randn(2, 3, *size)
    with torch.inference_mode():
        y = models[backbone](x)
    assert y.shape == (2, 19, *size)
    assert torch.isfinite(y).all()


def test_darknet_output_shape_and_size_error(models):
    with torch.inference_mode():
        assert models["darknet19"](torch.randn(1, 3, 64, 96)).shape == (1, 19, 64, 96)
    with pytest.raises(ValueError, match=r"divisible by 4.*66x97"):
        models["darknet19"](torch.randn(1, 3, 66, 97))


def test_num_classes_and_unknown_backbone():
    with torch.inference_mode():
        assert LiteSeg("mobilenetv2", num_classes=3).eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="valid: mobilenetv2, shufflenet, darknet19"):
        LiteSeg("resnet50")


def test_feature_shapes_match_reference(models):
    x = torch.randn(1, 3, 360, 640)
    expect = {"mobilenetv2": ((24, 90, 160), (1280, 12, 20)), "shufflenet": ((384, 45, 80), (1536, 12, 20))}
    with torch.inference_mode():
        for b, (low, high) in expect.items():
            lo, hi, fused = models[b].forward_features(x)
            assert tuple(lo.shape[1:]) == low and tuple(hi.shape[1:]) == high
            assert fused.shape[1] == 96
    d = describe("darknet19", 360, 640)  # shape-only: the reference's 22x40 high map and 90x160 low map
    assert d["shapes"]["low"] == [128, 90, 160] and d["shapes"]["high"] == [1024, 22, 40]


def test_train_step_runs_and_updates(models):
    model = LiteSeg("shufflenet", num_classes=4).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, t = torch.randn(2, 3, 64, 64), torch.randint(0, 4, (2, 64, 64))
    before = model.last_conv[6].weight.clone()
    loss = nn.functional.cross_entropy(model(x), t)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and not torch.equal(before, model.last_conv[6].weight)


# ------------------------------------------------------------------------------- official key layout

@pytest.mark.parametrize("backbone", ALL)
def test_state_dict_matches_official_layout_exactly(models, backbone):
    """Our state dict, in official naming, equals the official key list minus the unused classifier."""
    ours = official_state_dict(models[backbone])
    ref = {k: v for k, v in official_keys(backbone).items() if not keymap.is_unused_official_key(k)}
    assert list(ours) == list(ref)  # same keys, same order
    for k, (shape, _) in ref.items():
        assert tuple(ours[k].shape) == shape, k


@pytest.mark.parametrize("backbone", ALL)
def test_key_remap_is_lossless_both_ways(models, backbone):
    official = [k for k in official_keys(backbone) if not keymap.is_unused_official_key(k)]
    internal = [keymap.official_key_to_internal(k) for k in official]
    assert internal == list(models[backbone].state_dict())
    assert len(set(internal)) == len(internal)
    assert [keymap.internal_key_to_official(k) for k in internal] == official
    if backbone == "mobilenetv2":
        assert keymap.official_key_to_internal("mobile_features.features.2.conv.6.weight") == \
            "mobile_features.features.2.conv.2.weight"
        assert keymap.official_key_to_internal("mobile_features.features.1.conv.3.weight") == \
            "mobile_features.features.1.conv.1.weight"
        with pytest.raises(keymap.KeyMapError, match="features.2.conv.5"):
            keymap.official_key_to_internal("mobile_features.features.2.conv.5.weight")


@pytest.mark.parametrize("backbone", ALL)
def test_official_state_dict_loads_strictly_after_remap(backbone):
    sd = random_official_state_dict(backbone)
    internal, dropped = keymap.official_to_internal(sd)
    model = LiteSeg(backbone)
    model.load_state_dict(internal, strict=True)
    assert len(dropped) == {"mobilenetv2": 2, "shufflenet": 2, "darknet19": 0}[backbone]
    # values land where the official names say: the first and a remapped tensor
    first = next(iter(sd))
    assert torch.equal(official_state_dict(model)[first], sd[first])
    assert torch.equal(model.state_dict()["last_conv.6.weight"], sd["last_conv.6.weight"])


def test_mobilenet_encoder_is_torchvision_features():
    """Low/high maps equal torchvision mobilenet_v2 features[:4] / features[4:] with the same weights."""
    from torchvision.models import mobilenet_v2

    tv = mobilenet_v2(weights=None).eval()
    _randomise_bn(tv)
    model = LiteSeg("mobilenetv2").eval()
    model.encoder.features.load_state_dict(tv.features.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        low, high, _ = model.forward_features(x)
        assert torch.equal(low, tv.features[:4](x))
        assert torch.equal(high, tv.features[4:](tv.features[:4](x)))


# ------------------------------------------------------------------------------------- complexity

@pytest.mark.parametrize(
    ("backbone", "params", "official_g", "conv_g"),
    [("mobilenetv2", 3_101_707, 4.896, 4.305), ("shufflenet", 1_971_451, 2.573, 2.245),
     ("darknet19", 20_545_459, 103.088, 57.130)],
)
def test_params_and_macs_match_the_paper(models, backbone, params, official_g, conv_g):
    assert count_parameters(models[backbone]) == params
    assert round(count_macs(models[backbone], 512, 1024, "official") / 1e9, 3) == official_g
    assert round(count_macs(models[backbone], 512, 1024, "conv") / 1e9, 3) == conv_g


def test_describe_reports_paper_totals_and_parts():
    d = describe("mobilenetv2", 360, 640)
    assert d["params_used"] == 3_101_707 and d["params_total_official"] == 4_382_707
    assert d["params_by_part"] == {"backbone": 2_223_872, "daspp": 682_016, "fusion": 170_912, "head": 24_907}
    assert sum(d["macs_conv_by_part"].values()) == d["macs_conv"]
    assert round(d["macs_conv"] / 1e9, 3) == 1.938 and round(d["macs_official"] / 1e9, 3) == 2.199
    assert d["output_stride"] == 32 and d["low_stride"] == 4
    assert describe("shufflenet", 512, 1024)["params_total_official"] == 3_508_451
    with pytest.raises(ValueError, match="divisible by 4"):
        describe("darknet19", 362, 640)


def test_macs_scale_with_batch_and_reject_unknown_convention(models):
    m = models["shufflenet"]
    assert count_macs(m, 64, 64, batch=2) == 2 * count_macs(m, 64, 64)
    with pytest.raises(ValueError, match="convention"):
        count_macs(m, 64, 64, "flops")


# ---------------------------------------------------------------------------------------- folding

@pytest.mark.parametrize("backbone", ALL)
def test_fold_batchnorm_is_output_equivalent(backbone):
    torch.manual_seed(1)
    model = LiteSeg(backbone)
    _randomise_bn(model, seed=2)
    model.eval()
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # original untouched
    assert count_parameters(folded) < count_parameters(model)
    assert count_macs(folded, 64, 96) < count_macs(model, 64, 96)  # 1x1 depthwise scales are gone
    x = torch.randn(2, 3, 64, 96)
    with torch.inference_mode():
        ref, out = model(x), folded(x)
    assert ref.abs().max() > 1e-2  # a real signal, not all zeros
    assert (ref - out).abs().max().item() < 1e-4
