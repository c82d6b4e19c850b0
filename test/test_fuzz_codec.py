"""The image codec fuzz target (fuzz/fuzz_codec.py): a short seeded pass in CI, and proof that it can fail.

The long, coverage-guided run is documented in fuzz/README.md; here the seeded mutator runs for
``LITESEG_FUZZ_SECONDS`` (default 30) over raw and compressed inputs, crafted bombs included, with
the reference decoders as oracle and a 1.5 GB peak-RSS ceiling, and must report no finding.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "fuzz"))
import fuzz_codec  # noqa: E402


def test_seeded_fuzz_pass_finds_nothing(tmp_path):
    seconds = float(os.environ.get("LITESEG_FUZZ_SECONDS", "30"))
    res = subprocess.run([sys.executable, str(REPO / "fuzz" / "fuzz_codec.py"), "--seconds", str(seconds),
                          "--seed", "0", "--crash-dir", str(tmp_path / "crashes")],
                         capture_output=True, text=True, timeout=seconds + 120)
    summary = [line for line in res.stdout.splitlines() if line.startswith("seeded fuzz:")]
    assert res.returncode == 0 and summary, res.stdout + res.stderr[-4000:]
    m = re.search(r"(\d+) inputs .*?(\d+) accepted \((\d+) raw, (\d+) compressed\), (\d+) rejected, (\d+) findings",
                  summary[0])
    inputs, accepted, raw, compressed, rejected, findings = (int(v) for v in m.groups())
    assert findings == 0 and not (tmp_path / "crashes").exists()
    assert inputs > 1000 * min(seconds, 30) / 30  # it really ran (thousands per second on one core)
    assert raw > 0 and compressed > 0 and rejected > 0  # both paths reached, accepting and rejecting


def test_every_seed_passes_the_oracle():
    for data in fuzz_codec.seeds():
        fuzz_codec.check_one(data, rss_limit_mb=1e9)


def test_the_oracles_catch_a_wrong_decoder(monkeypatch):
    from liteseg_ros import image_codec

    jpeg = next(s for s in fuzz_codec.seeds() if s[1:4] == b"\xff\xd8\xff")
    raw = next(s for s in fuzz_codec.seeds() if s[0] >= 0x80 and fuzz_codec.parse_input(s)[1].encoding == "bgr8")
    real = image_codec.decode_any

    def off_by_one(msg, want="bgr8", max_pixels=None):
        out = real(msg, want, max_pixels).copy()
        out[0, 0, 0] ^= 1
        return out

    monkeypatch.setattr(image_codec, "decode_any", off_by_one)
    for data in (jpeg, raw):
        with pytest.raises(fuzz_codec.Finding, match="disagrees with the reference"):
            fuzz_codec.check_one(data, rss_limit_mb=1e9)

    def type_error(msg, want="bgr8", max_pixels=None):
        raise TypeError("unexpected")

    monkeypatch.setattr(image_codec, "decode_any", type_error)
    with pytest.raises(fuzz_codec.Finding, match="TypeError"):
        fuzz_codec.check_one(jpeg, rss_limit_mb=1e9)

    def huge(msg, want="bgr8", max_pixels=None):
        return np.zeros((8193, 8192, 3), np.uint8)

    monkeypatch.setattr(image_codec, "decode_any", huge)
    with pytest.raises(fuzz_codec.Finding, match="above max_pixels"):
        fuzz_codec.check_one(jpeg, rss_limit_mb=1e9)


def test_the_memory_ceiling_is_enforced():
    jpeg = next(s for s in fuzz_codec.seeds() if s[1:4] == b"\xff\xd8\xff")
    with pytest.raises(fuzz_codec.Finding, match="peak RSS"):
        fuzz_codec.check_one(jpeg, rss_limit_mb=1.0)
