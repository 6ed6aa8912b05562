"""What the media tests check results against: the fixtures, and decoders and parsers written
independently of ``passes.media`` (a from-the-spec PNG decoder, JPEG and RIFF walkers, a naive SSIM), and the sizes
the Debian reference optimizers reach."""

from __future__ import annotations

import io
import struct
import subprocess
import zlib
from collections import Counter
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

from passes.media import MediaOptions, MediaResult
from passes.media import optimize as optimize_media
from tests.conftest import fixture, fixture_names, fixtures_dir

MEDIA = (
    fixtures_dir() / "media"
)  # read only through read() / media(): a missing file is reported, not a crash

# Every media fixture but the SVGs (an absent tree gives one name, which reports it missing when read).
FILES = [name for name in fixture_names("media", "*/*") if not name.endswith(".svg")]


# Corrupt, truncated or bomb inputs (see the fixture NOTES): left alone with a warning.
HOSTILE = {
    "pillow/truncated_image.png",
    "pillow/truncated_jpeg.jpg",
    "pillow/png_decompression_dos.png",
    "pillow/decompression_bomb.gif",
    "pillow/ultrahdr.jpg",  # its primary image is cut off before EOI (Pillow: "image file is truncated")
}


SLOW = {"pillow/iss634.webp"}  # an animated WebP: a lossless re-encode takes seconds


def media(name: str) -> Path:
    """The media fixture ``name`` (``pillow/hopper.png``); absent, the test skips (fails in CI)."""
    return fixture(f"media/{name}")


def read(name: str) -> bytes:
    return media(name).read_bytes()


@cache
def result_of(name: str, options: MediaOptions = MediaOptions()) -> MediaResult:  # noqa: B008 - frozen
    return optimize_media(read(name), options)


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        out.append((kind, data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
        if kind == b"IEND":
            break
    return out


def reference_png(data: bytes) -> np.ndarray:
    """A from-the-spec PNG decoder (zlib, unfiltering, Adam7, palette, tRNS) giving RGBA at 16 bits a sample.

    Slow and simple on purpose: it is the oracle for the verification's 16-bit and colour-key handling."""
    chunks = png_chunks(data)
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    palette = next((body for kind, body in chunks if kind == b"PLTE"), b"")
    trns = next((body for kind, body in chunks if kind == b"tRNS"), None)
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour]
    bits = depth * channels
    step = max(1, bits // 8)
    passes = (
        [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
        if interlace
        else [(0, 0, 1, 1)]
    )
    samples = np.zeros((height, width, channels), dtype=np.int64)
    pos = 0
    for x0, y0, dx, dy in passes:
        columns, rows = len(range(x0, width, dx)), len(range(y0, height, dy))
        if not columns or not rows:
            continue
        stride = (columns * bits + 7) // 8
        previous = bytearray(stride)
        for row in range(rows):
            kind, line = raw[pos], bytearray(raw[pos + 1 : pos + 1 + stride])
            pos += 1 + stride
            for i in range(stride):
                a = line[i - step] if i >= step else 0
                b = previous[i]
                c = previous[i - step] if i >= step else 0
                if kind == 1:
                    line[i] = (line[i] + a) & 0xFF
                elif kind == 2:
                    line[i] = (line[i] + b) & 0xFF
                elif kind == 3:
                    line[i] = (line[i] + (a + b) // 2) & 0xFF
                elif kind == 4:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
            previous = line
            if depth == 16:
                values = [line[2 * k] << 8 | line[2 * k + 1] for k in range(columns * channels)]
            elif depth == 8:
                values = list(line[: columns * channels])
            else:
                per = 8 // depth
                values = [
                    (line[k // per] >> (8 - depth * (k % per + 1))) & ((1 << depth) - 1)
                    for k in range(columns)
                ]
            block = np.array(values, dtype=np.int64).reshape(columns, channels)
            samples[y0 + row * dy, x0 : x0 + columns * dx : dx] = block
    top = (1 << depth) - 1
    out = np.zeros((height, width, 4), dtype=np.int64)
    if colour == 3:
        table = np.array([list(palette[i : i + 3]) for i in range(0, len(palette), 3)], dtype=np.int64)
        alpha = np.full(len(table), 255, dtype=np.int64)
        if trns is not None:
            alpha[: len(trns)] = list(trns)[: len(table)]
        index = samples[..., 0]
        out[..., :3] = table[index] * 257
        out[..., 3] = alpha[index] * 257
        return out
    scale = 65535 // top
    colours = samples[..., :1].repeat(3, axis=-1) if colour in (0, 4) else samples[..., :3]
    out[..., :3] = colours * scale
    if colour in (4, 6):
        out[..., 3] = samples[..., -1] * scale
    else:
        out[..., 3] = 65535
        if trns is not None:
            key = struct.unpack(f">{1 if colour == 0 else 3}H", trns[: 2 if colour == 0 else 6])
            out[..., 3][np.all(samples[..., : len(key)] == np.array(key), axis=-1)] = 0
    return out


def pillow_frames(data: bytes) -> tuple[list[bytes], list[object], object]:
    """Every frame as Pillow composites it (RGBA bytes), each frame's duration, and the loop count."""
    image = Image.open(io.BytesIO(data))
    frames, durations = [], []
    for number in range(getattr(image, "n_frames", 1)):
        image.seek(number)
        image.load()
        frames.append(image.convert("RGBA").tobytes())
        durations.append(image.info.get("duration") or 0)  # no graphic control block: no delay
    return frames, durations, image.info.get("loop")


def jpeg_segments(data: bytes) -> list[bytes]:
    """The APPn and COM segments of a JPEG, verbatim, in order (from the whole file, scans skipped)."""
    out, pos = [], 2
    while pos + 4 <= len(data):
        marker = data[pos + 1]
        if marker == 0xD9:
            break
        if marker == 0xFF or 0xD0 <= marker <= 0xD7:
            pos += 1 if marker == 0xFF else 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if 0xE0 <= marker <= 0xEF or marker == 0xFE:
            out.append(data[pos : pos + 2 + length])
        pos += 2 + length
        if marker == 0xDA:
            while pos + 1 < len(data) and not (
                data[pos] == 0xFF and data[pos + 1] not in (0, *range(0xD0, 0xD8))
            ):
                pos += 1
    return out


def icc(body: bytes) -> bytes:
    return zlib.decompress(body.split(b"\0", 1)[1][1:])


def png_metadata(data: bytes) -> Counter[tuple[bytes, bytes]]:
    """Every ancillary chunk a lossless optimizer must keep as it is (iCCP by its profile)."""
    encoding = {b"tRNS", b"bKGD", b"sBIT", b"hIST", b"sPLT", b"acTL", b"fcTL", b"fdAT"}
    kept: Counter[tuple[bytes, bytes]] = Counter()
    for kind, body in png_chunks(data):
        if kind[:1].islower() and kind not in encoding:
            kept[(kind, icc(body) if kind == b"iCCP" else body)] += 1
    return kept


def riff_chunks(data: bytes) -> dict[bytes, bytes]:
    out, pos = {}, 12
    while pos + 8 <= len(data):
        kind, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        out.setdefault(kind, data[pos + 8 : pos + 8 + size])
        pos += 8 + size + (size & 1)
    return out


def exif_orientation(exif: bytes) -> int:
    parsed = Image.Exif()
    parsed.load(exif)
    return int(parsed.get(0x0112, 1))


def png(width: int, height: int, extra: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = zlib.compress(b"\0" * (width + 1) * min(height, 4))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + b"".join(chunk(k, v) for k, v in extra)
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))  # fmt: skip


def naive_ssim(x: np.ndarray, y: np.ndarray, window: int = 7) -> float:
    """SSIM straight from the paper's formulas, one window at a time (the oracle for ``ssim``)."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    scores = []
    for top in range(x.shape[0] - window + 1):
        for left in range(x.shape[1] - window + 1):
            a = x[top : top + window, left : left + window]
            b = y[top : top + window, left : left + window]
            cov = np.cov(a.ravel(), b.ravel())  # sample (co)variances, N - 1
            mx, my = a.mean(), b.mean()
            scores.append(
                ((2 * mx * my + c1) * (2 * cov[0, 1] + c2))
                / ((mx**2 + my**2 + c1) * (cov[0, 0] + cov[1, 1] + c2))
            )
    return float(np.mean(scores))


def reference_size(argv: list[str], data: bytes, tmp_path: Path, in_place: bool = False) -> int:
    source, target = tmp_path / "in", tmp_path / "out"
    source.write_bytes(data)
    target.unlink(missing_ok=True)
    done = subprocess.run([*argv, str(source)] if in_place else [*argv, str(target), str(source)],
                          capture_output=True, check=False)  # fmt: skip
    produced = source if in_place else target
    return (
        min(len(data), produced.stat().st_size) if done.returncode == 0 and produced.exists() else len(data)
    )


def ours(name: str, options: MediaOptions = MediaOptions()) -> int:  # noqa: B008 - frozen
    result = result_of(name, options)
    return len(result.data) if result.data is not None else len(read(name))
