"""Fuzz target for liteseg_ros.image_codec: raw Image and CompressedImage, with oracles and a memory ceiling.

One input is a byte string (so libFuzzer/atheris and the seeded mutator share one corpus):

* first byte < 0x80: a CompressedImage; the rest is ``data`` (format "" so the codec sniffs it);
* first byte >= 0x80: a raw Image; then encoding index (1 byte), height and width (2 bytes each,
  big-endian), extra row padding (1 byte), flags (1 byte: bit 0 is_bigendian, bit 1 "fit": height is
  then as many whole rows as the data holds, so most mutated raw inputs are valid images), and the
  rest is ``data``.

What counts as a crash (the harness raises, atheris records the input):

* any exception other than ImageDecodeError (TypeError, ValueError, cv2.error, MemoryError ...);
* an accepted input whose result is not a C-contiguous (H, W, 3) uint8 array of the declared size;
* an accepted input that disagrees with the reference decoder: for raw bgr8/rgb8/bgra8/rgba8/mono8/
  mono16/bgr16/rgb16 an independent numpy decoding written here; for PNG OpenCV's ``imdecode`` (exact);
  for JPEG OpenCV's ``imdecode`` (the same libjpeg-turbo algorithm: exact);
* the process's peak RSS above ``--rss-limit-mb`` (a decompression bomb got through).

Runs coverage-guided with atheris when it is installed (``pip install atheris``)::

    .venv/bin/python fuzz/fuzz_codec.py --atheris fuzz/corpus/seeds fuzz/corpus/bombs -max_total_time=3600 \
        -rss_limit_mb=3072 -timeout=20

and otherwise (and in CI, test/test_fuzz_codec.py) as a seeded random mutation fuzzer::

    .venv/bin/python fuzz/fuzz_codec.py --seconds 60 --seed 0

Crashing inputs are written to ``--crash-dir`` (default fuzz/crashes/) and the exit status is 1.
"""
from __future__ import annotations

import argparse
import os
import random
import resource
import struct
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

ENCODINGS = ("bgr8", "rgb8", "bgra8", "rgba8", "mono8", "mono16", "bgr16", "rgb16", "yuv422", "yuv422_yuy2",
             "bayer_rggb8", "bayer_bggr8", "bayer_gbrg8", "bayer_grbg8", "bayer_rggb16", "8UC3", "nv21")
_BPP = {"bgr8": 3, "rgb8": 3, "bgra8": 4, "rgba8": 4, "mono8": 1, "mono16": 2, "bgr16": 6, "rgb16": 6,
        "yuv422": 2, "yuv422_yuy2": 2}
MAX_PIXELS = 8192 * 8192  # the node's default max_input_pixels


class Finding(AssertionError):
    """An input the codec got wrong (crash, wrong answer, or memory above the ceiling)."""


def parse_input(data: bytes):
    """The message one fuzz input stands for: ('compressed', msg) or ('raw', msg)."""
    if not data or data[0] < 0x80:
        return "compressed", SimpleNamespace(format="", data=data[1:])
    head = data[1:8].ljust(7, b"\0")
    enc = ENCODINGS[head[0] % len(ENCODINGS)]
    height, width = struct.unpack(">HH", head[1:5])
    height, width = height % 2048, width % 2048  # a raw image's data is the input: keep sizes reachable
    bpp = _BPP.get(enc, 1 if "8" in enc[-2:] else 2)
    step = width * bpp + head[5] % 8
    body = data[8:]
    if head[6] & 2 and step > 0:
        height = len(body) // step
        body = body[: height * step]
    return "raw", SimpleNamespace(encoding=enc, height=height, width=width, step=step,
                                  is_bigendian=head[6] & 1, data=body)


def make_input_raw(encoding: str, height: int, width: int, pad: int, big: int, data: bytes) -> bytes:
    return (bytes([0x80, ENCODINGS.index(encoding)]) + struct.pack(">HH", height, width)
            + bytes([pad, big]) + data)


# ------------------------------------------------------------------------------------------ oracles
def _reference_raw(msg) -> np.ndarray | None:
    """Independent decoding of the plain encodings (None for those without a reference here)."""
    enc, h, w, step = msg.encoding, msg.height, msg.width, msg.step
    if enc not in ("bgr8", "rgb8", "bgra8", "rgba8", "mono8", "mono16", "bgr16", "rgb16"):
        return None
    bpp = _BPP[enc]
    rows = np.frombuffer(bytes(msg.data), np.uint8).reshape(h, step)[:, : w * bpp]
    if enc.endswith("16"):  # 16-bit samples, scaled as cv_bridge scales: round(v * 255 / 65535)
        pair = rows.reshape(h, -1, 2).astype(np.uint32)
        v = (pair[..., 0] << 8 | pair[..., 1]) if msg.is_bigendian else (pair[..., 1] << 8 | pair[..., 0])
        rows = ((v * 255 + 32767) // 65535).astype(np.uint8)
    ch = {"mono": 1, "bgr1": 3, "rgb1": 3}.get(enc[:4], 3 if enc in ("bgr8", "rgb8") else 4)
    if enc.startswith("mono"):
        ch = 1
    px = rows.reshape(h, w, ch)
    if ch == 1:
        return np.repeat(px, 3, axis=2)
    order = enc[:3]
    bgr = px[:, :, :3] if order == "bgr" else px[:, :, 2::-1]
    return np.ascontiguousarray(bgr)


def _reference_compressed(data: bytes) -> np.ndarray | None:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        return None
    if img.dtype == np.uint16:
        img = ((img.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] == 2:
        img = img[:, :, :1]
    if img.shape[2] == 1:
        return np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3])


def _rss_peak_mb() -> float:
    """This process's peak RSS (VmHWM). Not getrusage's ru_maxrss: Linux carries that over from the
    parent across fork and exec, so a child of a big pytest process would start "above the ceiling"."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def check_one(data: bytes, rss_limit_mb: float) -> str:
    """Run one input; 'accepted' / 'rejected', or raise Finding."""
    from liteseg_ros.image_codec import ImageDecodeError, decode_any

    kind, msg = parse_input(data)
    try:
        out = decode_any(msg, want="bgr8", max_pixels=MAX_PIXELS)
    except ImageDecodeError:
        result = "rejected"
        out = None
    except Exception as exc:  # noqa: BLE001 - anything else is the finding
        raise Finding(f"{kind}: {type(exc).__name__}: {exc}") from exc
    if out is not None:
        result = "accepted"
        if not (isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
                and out.flags.c_contiguous):
            raise Finding(f"{kind}: bad result {type(out).__name__} {getattr(out, 'shape', '')}")
        if out.shape[0] * out.shape[1] > MAX_PIXELS:
            raise Finding(f"{kind}: accepted {out.shape} above max_pixels")
        ref = _reference_raw(msg) if kind == "raw" else _reference_compressed(bytes(msg.data))
        if kind == "raw" and (out.shape[:2] != (msg.height, msg.width)):
            raise Finding(f"raw: shape {out.shape} for a {msg.height} x {msg.width} image")
        if kind == "compressed" and ref is None:
            raise Finding("compressed: accepted data the reference decoder cannot decode")
        if ref is not None and (ref.shape != out.shape or not np.array_equal(ref, out)):
            diff = "shape" if ref.shape != out.shape else f"max |diff| {np.abs(ref.astype(int) - out).max()}"
            raise Finding(f"{kind}: disagrees with the reference decoder ({diff}; ours {out.shape}, "
                          f"reference {ref.shape})")
    if _rss_peak_mb() > rss_limit_mb:
        raise Finding(f"{kind}: peak RSS {_rss_peak_mb():.0f} MB above the {rss_limit_mb:.0f} MB ceiling")
    return result


# ------------------------------------------------------------------------------------------ seeds
def seeds() -> list[bytes]:
    """Valid inputs of every kind, plus the crafted bombs: the starting corpus."""
    import bombs

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:24, 0:40]
    smooth = np.stack([xx * 6, yy * 10, 255 - xx * 3 - yy * 4], axis=2).clip(0, 255).astype(np.uint8)
    noise = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    out: list[bytes] = []

    def enc(ext: str, img: np.ndarray, params: list[int] | None = None) -> None:
        ok, buf = cv2.imencode(ext, img, params or [])
        assert ok
        out.append(b"\x00" + buf.tobytes())

    for img in (smooth, noise):
        enc(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        enc(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
        enc(".jpg", img, [cv2.IMWRITE_JPEG_RST_INTERVAL, 1, cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                          cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])
        enc(".jpg", img[:, :, 0])
        enc(".png", img)
        enc(".png", img[:, :, 0])
        enc(".png", (img.astype(np.uint16) * 257))
        enc(".png", np.concatenate([img, img[:, :, :1]], axis=2))
    enc(".png", (smooth[:, :, 0] > 128).astype(np.uint8) * 255, [cv2.IMWRITE_PNG_BILEVEL, 1])
    out.extend(b"\x00" + b for b in bombs.all_bombs().values() if len(b) < 1 << 16)
    for e in ("bgr8", "rgb8", "bgra8", "mono8", "mono16", "bgr16", "yuv422", "bayer_rggb8", "bayer_grbg16"):
        if e not in ENCODINGS:
            continue
        h, w = 6, 8
        bpp = _BPP.get(e, 1 if e.endswith("8") else 2)
        body = rng.integers(0, 256, h * (w * bpp + 2), dtype=np.uint8).tobytes()
        out.append(make_input_raw(e, h, w, 2, 0, body))
        out.append(make_input_raw(e, h, w, 2, 3, body))  # big-endian, height fitted to the data
    return out


# ------------------------------------------------------------------------------------------ seeded mutator
_INTERESTING16 = (0, 1, 2, 7, 8, 9, 255, 256, 4096, 8191, 8192, 8193, 16383, 16384, 16385, 32767, 65535)


def mutate(data: bytes, rng: random.Random, corpus: list[bytes]) -> bytes:
    d = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 3, 6))):
        op = rng.randrange(9)
        n = len(d)
        if op == 0 and n > 1:  # flip a bit
            i = rng.randrange(1, n)
            d[i] ^= 1 << rng.randrange(8)
        elif op == 1 and n > 1:  # set a byte to an interesting value
            d[rng.randrange(1, n)] = rng.choice((0x00, 0x01, 0x7F, 0x80, 0xFF, 0xD8, 0xD9, 0xDA, 0xC0, 0xC2))
        elif op == 2 and n > 2:  # truncate (sometimes keeping the JPEG EOI at the end)
            cut = rng.randrange(1, n)
            d = d[:cut] + (b"\xff\xd9" if rng.random() < 0.5 else b"")
        elif op == 3 and n > 2:  # delete a range
            i = rng.randrange(1, n)
            del d[i:i + rng.randrange(1, 64)]
        elif op == 4:  # insert junk (a stray byte before a marker, fill bytes, random)
            i = rng.randrange(1, max(2, n))
            d[i:i] = rng.choice((b"\x00", b"\xff" * rng.randrange(1, 9), os.urandom(rng.randrange(1, 32))))
        elif op == 5 and n > 6:  # write an interesting 16-bit value (image sizes, segment lengths)
            i = rng.randrange(1, n - 1)
            d[i:i + 2] = struct.pack(">H", rng.choice(_INTERESTING16))
        elif op == 6 and n > 10:  # patch a JPEG SOF / PNG IHDR size
            j = d.find(b"\xff\xc0") if rng.random() < 0.5 else d.find(b"\xff\xc2")
            if j > 0 and j + 9 <= n:
                d[j + 5:j + 9] = struct.pack(">HH", rng.choice(_INTERESTING16), rng.choice(_INTERESTING16))
            k = d.find(b"IHDR")
            if k > 0 and k + 12 <= n:
                d[k + 4:k + 12] = struct.pack(">II", rng.choice(_INTERESTING16), rng.choice(_INTERESTING16))
        elif op == 7 and corpus:  # splice with another input
            other = rng.choice(corpus)
            i, j = rng.randrange(1, max(2, n)), rng.randrange(1, max(2, len(other)))
            d = d[:i] + other[j:]
        elif op == 8 and n > 1:  # duplicate a range
            i = rng.randrange(1, n)
            d[i:i] = d[i:i + rng.randrange(1, 256)]
    return bytes(d[: 1 << 18])


def run_seeded(seconds: float, seed: int, rss_limit_mb: float, crash_dir: Path, max_inputs: int | None) -> int:
    rng = random.Random(seed)
    corpus = seeds()
    stats = {"inputs": 0, "accepted": 0, "rejected": 0, "findings": 0, "accepted_raw": 0}
    t_end = time.monotonic() + seconds
    queue = list(corpus)  # every seed once, unmutated, first
    while time.monotonic() < t_end and (max_inputs is None or stats["inputs"] < max_inputs):
        data = queue.pop() if queue else mutate(rng.choice(corpus), rng, corpus)
        stats["inputs"] += 1
        try:
            result = check_one(data, rss_limit_mb)
            stats[result] += 1
            if result == "accepted" and data[:1] >= b"\x80":
                stats["accepted_raw"] += 1
        except Finding as exc:
            stats["findings"] += 1
            crash_dir.mkdir(parents=True, exist_ok=True)
            path = crash_dir / f"crash-{seed}-{stats['inputs']}.bin"
            path.write_bytes(data)
            print(f"FINDING {path}: {exc}", file=sys.stderr)
            traceback.print_exception(exc.__cause__ or exc, file=sys.stderr)
            if stats["findings"] >= 5:
                break
        if stats["accepted"] and rng.random() < 0.01 and len(corpus) < 2000:
            corpus.append(data)  # keep some accepted variants to mutate further
    rate = stats["inputs"] / max(1e-9, seconds - max(0.0, t_end - time.monotonic()))
    print(f"seeded fuzz: seed {seed}, {stats['inputs']} inputs ({rate:.0f}/s), {stats['accepted']} accepted "
          f"({stats['accepted_raw']} raw, {stats['accepted'] - stats['accepted_raw']} compressed), "
          f"{stats['rejected']} rejected, {stats['findings']} findings, peak RSS {_rss_peak_mb():.0f} MB "
          f"(ceiling {rss_limit_mb:.0f} MB)")
    return 1 if stats["findings"] else 0


def run_atheris(argv: list[str], rss_limit_mb: float) -> None:
    import atheris

    with atheris.instrument_imports():
        import liteseg_ros.image_codec  # noqa: F401 - instrumented for coverage feedback

    def test_one_input(data: bytes) -> None:
        check_one(data, rss_limit_mb)

    atheris.Setup([sys.argv[0], *argv], test_one_input)
    atheris.Fuzz()


def write_corpus(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(seeds()):
        (folder / f"seed-{i:03d}.bin").write_bytes(s)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--atheris", action="store_true", help="coverage-guided with atheris; remaining arguments go "
                    "to libFuzzer (corpus folders, -max_total_time=N, -runs=N ...)")
    ap.add_argument("--seconds", type=float, default=60.0, help="seeded mode: how long to run")
    ap.add_argument("--max-inputs", type=int, help="seeded mode: stop after this many inputs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rss-limit-mb", type=float, default=1500.0, help="peak RSS that counts as a finding")
    ap.add_argument("--crash-dir", type=Path, default=HERE / "crashes")
    ap.add_argument("--write-seeds", type=Path, help="write the seed corpus to this folder and exit")
    a, rest = ap.parse_known_args()
    if a.write_seeds:
        write_corpus(a.write_seeds)
        return 0
    if a.atheris:
        run_atheris(rest, a.rss_limit_mb)
        return 0
    if rest:
        ap.error(f"unknown arguments {rest} (libFuzzer arguments need --atheris)")
    return run_seeded(a.seconds, a.seed, a.rss_limit_mb, a.crash_dir, a.max_inputs)


if __name__ == "__main__":
    sys.exit(main())
