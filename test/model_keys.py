"""Helpers shared by the model tests: the official key lists (test/data) turned into random state dicts.

Test-only; imports torch only.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parent / "data"
KEY_FILES = {
    "mobilenetv2": DATA / "liteseg_official_keys_mobilenet.txt",
    "shufflenet": DATA / "liteseg_official_keys_shufflenet.txt",
    "darknet19": DATA / "liteseg_official_keys_darknet.txt",
}


def official_keys(backbone: str) -> OrderedDict[str, tuple[tuple[int, ...], str]]:
    """key -> (shape, dtype) in state-dict order, from the official key list of ``backbone``."""
    out: OrderedDict[str, tuple[tuple[int, ...], str]] = OrderedDict()
    for line in KEY_FILES[backbone].read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        cols = line.split("\t")
        dtype = cols[2] if len(cols) > 2 else ("int64" if cols[0].endswith("num_batches_tracked") else "float32")
        out[cols[0]] = (tuple(json.loads(cols[1])), dtype)
    return out


def random_official_state_dict(backbone: str, seed: int = 0, num_classes: int | None = None) -> OrderedDict:
    """A state dict with every official key and shape (unused classifiers included), random values.

    BN running variances are positive; ``num_classes`` optionally resizes the final classifier.
    """
    g = torch.Generator().manual_seed(seed)
    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, (shape, dtype) in official_keys(backbone).items():
        if num_classes is not None and key.startswith("last_conv.6."):
            shape = (num_classes, *shape[1:])
        if dtype == "int64":
            sd[key] = torch.tensor(7, dtype=torch.int64) if shape == () else torch.zeros(shape, dtype=torch.int64)
        elif key.endswith("running_var"):
            sd[key] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[key] = torch.randn(shape, generator=g) * 0.1
    return sd
