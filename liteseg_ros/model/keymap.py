"""Lossless key remapping between our LiteSeg ``state_dict`` and the official checkpoint layout.

Ring 1: pure key arithmetic, standard library only; never imports torch, rclpy or message packages.

Our modules use the official names everywhere except in two backbones:

* MobileNetV2: we build on torchvision's ``mobilenet_v2().features`` whose blocks nest
  ``Conv2dNormActivation`` modules; the official (ericsun99) layout is flat. Block 1 maps
  ``conv.{0,1,3,4}`` <-> ``conv.{0.0,0.1,1,2}``, blocks 2..17 map ``conv.{0,1,3,4,6,7}`` <->
  ``conv.{0.0,0.1,1.0,1.1,2,3}``; ``features.0`` and ``features.18`` are identical.
* ShuffleNet: the official model wraps its backbone in ``nn.DataParallel`` (prefix
  ``shuffle_features.module.``); ours does not (prefix ``shuffle_features.``).

The ImageNet classifiers present in official files (never used by the segmentation forward) are
listed in :data:`UNUSED_OFFICIAL_PREFIXES` and dropped on import.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeVar

V = TypeVar("V")

#: Official prefixes -> backbone name, used to recognise a checkpoint's backbone.
OFFICIAL_BACKBONE_PREFIXES: dict[str, str] = {
    "mobile_features.": "mobilenetv2",
    "shuffle_features.module.": "shufflenet",
    "resnet_features.": "darknet19",
}
#: Our (internal) prefixes -> backbone name.
INTERNAL_BACKBONE_PREFIXES: dict[str, str] = {
    "mobile_features.": "mobilenetv2",
    "shuffle_features.": "shufflenet",
    "resnet_features.": "darknet19",
}
#: Official keys under these prefixes are ImageNet classifiers that LiteSeg never uses.
UNUSED_OFFICIAL_PREFIXES: tuple[str, ...] = (
    "mobile_features.classifier.",
    "shuffle_features.module.fc.",
)

# MobileNetV2 inverted-residual blocks: official flat index -> torchvision nested index.
MNV2_BLOCK1_OFFICIAL_TO_TV: dict[str, str] = {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}
MNV2_BLOCK_OFFICIAL_TO_TV: dict[str, str] = {
    "0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3",
}
MNV2_BLOCK1_TV_TO_OFFICIAL: dict[str, str] = {v: k for k, v in MNV2_BLOCK1_OFFICIAL_TO_TV.items()}
MNV2_BLOCK_TV_TO_OFFICIAL: dict[str, str] = {v: k for k, v in MNV2_BLOCK_OFFICIAL_TO_TV.items()}

_MNV2 = "mobile_features.features."
_SHUFFLE_OFFICIAL = "shuffle_features.module."
_SHUFFLE_INTERNAL = "shuffle_features."


class KeyMapError(KeyError):
    """A key that has no counterpart in the other layout (the message names it)."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


def _remap_mnv2_block(rest: str, to_tv: bool) -> str:
    """Remap ``{block}.conv.{idx}.{param}`` (the part after ``features.``) in one direction."""
    parts = rest.split(".")
    if len(parts) < 3 or parts[1] != "conv" or not parts[0].isdigit():
        return rest  # features.0.* / features.18.*: same in both layouts
    block = int(parts[0])
    tail = parts[2:]
    if to_tv:
        table = MNV2_BLOCK1_OFFICIAL_TO_TV if block == 1 else MNV2_BLOCK_OFFICIAL_TO_TV
        idx, param = tail[0], tail[1:]
    else:
        table = MNV2_BLOCK1_TV_TO_OFFICIAL if block == 1 else MNV2_BLOCK_TV_TO_OFFICIAL
        # torchvision indices are "k" or "k.j": try the two-level one first
        if len(tail) >= 3 and f"{tail[0]}.{tail[1]}" in table:
            idx, param = f"{tail[0]}.{tail[1]}", tail[2:]
        else:
            idx, param = tail[0], tail[1:]
    if idx not in table:
        direction = "official -> torchvision" if to_tv else "torchvision -> official"
        raise KeyMapError(f"MobileNetV2 key 'features.{rest}' has no {direction} mapping")
    return ".".join([parts[0], "conv", table[idx], *param])


def official_key_to_internal(key: str) -> str:
    """Our key for an official key (unused-classifier keys are not accepted: filter them first)."""
    if key.startswith(_MNV2):
        return _MNV2 + _remap_mnv2_block(key[len(_MNV2):], to_tv=True)
    if key.startswith(_SHUFFLE_OFFICIAL):
        return _SHUFFLE_INTERNAL + key[len(_SHUFFLE_OFFICIAL):]
    return key


def internal_key_to_official(key: str) -> str:
    """The official key for one of our keys."""
    if key.startswith(_MNV2):
        return _MNV2 + _remap_mnv2_block(key[len(_MNV2):], to_tv=False)
    if key.startswith(_SHUFFLE_INTERNAL) and not key.startswith(_SHUFFLE_OFFICIAL):
        return _SHUFFLE_OFFICIAL + key[len(_SHUFFLE_INTERNAL):]
    return key


def is_unused_official_key(key: str) -> bool:
    """True for the ImageNet-classifier keys of official files."""
    return key.startswith(UNUSED_OFFICIAL_PREFIXES)


def official_to_internal(state_dict: Mapping[str, V]) -> tuple[dict[str, V], list[str]]:
    """(our state dict, dropped unused-classifier keys) for an official state dict; order kept."""
    out: dict[str, V] = {}
    dropped: list[str] = []
    for k, v in state_dict.items():
        if is_unused_official_key(k):
            dropped.append(k)
        else:
            out[official_key_to_internal(k)] = v
    return out, dropped


def internal_to_official(state_dict: Mapping[str, V]) -> dict[str, V]:
    """The official-layout state dict for one of ours (without the unused classifiers); order kept."""
    return {internal_key_to_official(k): v for k, v in state_dict.items()}


def detect_backbone(keys: Iterable[str], official: bool = True) -> str | None:
    """The backbone whose prefix most keys carry, or None when no key has a known backbone prefix."""
    table = OFFICIAL_BACKBONE_PREFIXES if official else INTERNAL_BACKBONE_PREFIXES
    counts: dict[str, int] = {}
    for k in keys:
        for prefix, name in table.items():
            if k.startswith(prefix):
                counts[name] = counts.get(name, 0) + 1
                break
    return max(counts, key=lambda n: counts[n]) if counts else None
