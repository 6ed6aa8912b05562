"""The ``media`` pass: every fixture stays pixel-identical and never grows, metadata policy, hostile input,
lossy mode, determinism, the pass on a FileSystem and end to end, and the Debian reference optimizers."""

from __future__ import annotations

import argparse
import hashlib
import io
import struct
import subprocess
import tarfile
import zlib
from collections import Counter
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from optimizer import Options, optimize
from optimizer.changes import Changes
from optimizer.cli import build_parser
from optimizer.errors import UsageError
from optimizer.filesystem import build_filesystem
from optimizer.layer import IndexedEntry
from optimizer.model import Entry, EntryKind
from optimizer.pipeline import ImageInfo, PassContext, WorkerPool
from optimizer.report import PassReport
from optimizer.spool import Spool
from passes.media import Media, MediaOptions
from passes.media_codecs import (
    MediaResult,
    estimate_jpeg_quality,
    png_pixels,
    sniff,
    ssim,
)
from passes.media_codecs import (
    optimize as optimize_media,
)
from tests.conftest import FIXTURE_NOT_FOUND, fixture, fixture_names, fixtures_dir, missing, require_tool
from tests.imagetools import Layout, build_image, entry

MEDIA = fixtures_dir() / "media"
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


def read(name: str) -> bytes:
    return fixture(f"media/{name}").read_bytes()


def test_the_media_fixtures_are_there() -> None:
    if len(FILES) < 50:
        missing(f"{FIXTURE_NOT_FOUND}{MEDIA}/*/* (50 files or more)")


@cache
def result_of(name: str, options: MediaOptions = MediaOptions()) -> MediaResult:  # noqa: B008 - frozen
    return optimize_media(read(name), options)


# ------------------------------------------------------------------------------------- independent oracles


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


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.mark.parametrize("name", [n for n in FILES if n not in SLOW])
def test_every_fixture_identical_pixels_never_larger_metadata_kept(name: str) -> None:
    data = read(name)
    result = result_of(name)
    assert result.format == sniff(data)
    if name in HOSTILE:
        assert result.warning and result.data is None, result.reason
        return
    assert not result.warning, result.reason
    assert result.reason
    if result.data is None:
        return
    out = result.data
    assert len(out) < len(data)
    assert sniff(out) == sniff(data)
    assert pillow_frames(out) == pillow_frames(data)  # every frame, its timing, the loop count
    if result.format == "png":
        assert png_metadata(out) == png_metadata(data)
        ihdr_in, ihdr_out = png_chunks(data)[0][1], png_chunks(out)[0][1]
        assert ihdr_in[12] == ihdr_out[12]  # interlacing kept
        assert [k for k, _ in png_chunks(out)].count(b"acTL") == [k for k, _ in png_chunks(data)].count(
            b"acTL"
        )
        width, height = struct.unpack(">II", ihdr_in[:8])
        if width * height <= 40_000 and b"acTL" not in dict(png_chunks(data)):
            assert np.array_equal(reference_png(out), reference_png(data))
    elif result.format == "jpeg":
        assert jpeg_segments(out) == jpeg_segments(data)
        assert Image.open(io.BytesIO(out)).tobytes() == Image.open(io.BytesIO(data)).tobytes()


def test_the_fixtures_get_smaller() -> None:
    """Known unoptimized files shrink (uncompressed IDAT, default-Huffman JPEGs, a palette-able RGB PNG)."""
    for name in ("pillow/uncompressed_rgb.png", "pillow/itxt_chunks.png", "pillow/hopper.jpg", "pillow/rgb.jpg",
                 "pillow/pil_sample_cmyk.jpg", "pillow/iss634.apng", "pngsuite/basn6a16.png"):  # fmt: skip
        result = result_of(name)
        assert result.data is not None and len(result.data) < len(read(name)), (name, result.reason)


def small_still_png(name: str) -> bool:
    """Small enough for the pure-Python reference decoder, and not animated."""
    data = (MEDIA / name).read_bytes()
    width, height = struct.unpack(">II", data[16:24])
    return width * height <= 40_000 and b"acTL" not in data[: data.find(b"IDAT")]


@pytest.mark.parametrize(
    "name",
    # None at all (no fixtures): one name that reaches read() and reports the missing fixtures.
    [n for n in FILES if n.endswith(".png") and n not in HOSTILE and small_still_png(n)] or ["*/*.png"],
)
def test_verification_pixels_match_a_reference_decoder(name: str) -> None:
    """The verification's view of a PNG (16-bit samples, colour keys, palettes, Adam7) is exact."""
    data = read(name)
    assert np.array_equal(png_pixels(data).astype(np.int64), reference_png(data))


def test_apng_stays_animated() -> None:
    data = read("pillow/iss634.apng")
    out = result_of("pillow/iss634.apng").data
    assert out is not None
    frames, durations, loop = pillow_frames(out)
    assert len(frames) == Image.open(io.BytesIO(data)).n_frames > 1
    assert (frames, durations, loop) == pillow_frames(data)


def test_animated_webp_stays_animated_and_lossless() -> None:
    name = "pillow/iss634.webp"
    data, result = read(name), result_of(name)
    assert not result.warning
    if result.data is not None:
        assert len(result.data) < len(data)
        assert pillow_frames(result.data)[0] == pillow_frames(data)[0]
        assert riff_chunks(result.data).keys() >= {b"ANIM", b"ANMF"}


def test_lossy_webp_is_left_alone() -> None:
    result = result_of("pillow/hopper.webp")
    assert result.data is None and "lossy" in result.reason


def test_interlacing_is_kept_unless_turned_off() -> None:
    data = read("pngsuite/ibasn3p08.png")
    kept = result_of("pngsuite/ibasn3p08.png").data
    off = result_of("pngsuite/ibasn3p08.png", MediaOptions(png_interlace="off")).data
    assert kept is not None and off is not None
    assert png_chunks(kept)[0][1][12] == 1 and png_chunks(off)[0][1][12] == 0
    assert np.array_equal(reference_png(off), reference_png(data))
    assert np.array_equal(reference_png(kept), reference_png(data))


# ---------------------------------------------------------------------------------------- metadata policy


def test_png_strip_metadata_drops_text_and_time_keeps_colour() -> None:
    data = read("pillow/exif.png")
    out = result_of("pillow/exif.png", MediaOptions(strip_metadata=True)).data
    assert out is not None
    kinds_in, kinds_out = Counter(k for k, _ in png_chunks(data)), Counter(k for k, _ in png_chunks(out))
    assert kinds_in[b"tEXt"] and kinds_in[b"tIME"]
    assert not kinds_out[b"tEXt"] and not kinds_out[b"tIME"]
    for kind in (b"gAMA", b"cHRM", b"pHYs"):
        assert dict(png_chunks(out))[kind] == dict(png_chunks(data))[kind]
    exif = dict(png_chunks(data))[b"eXIf"]
    assert (b"eXIf" in kinds_out) == (exif_orientation(exif) != 1)
    assert pillow_frames(out) == pillow_frames(data)


def test_png_icc_profile_is_kept() -> None:
    data = read("pillow/icc_profile.png")
    out = result_of("pillow/icc_profile.png", MediaOptions(strip_metadata=True)).data
    assert out is not None
    assert icc(dict(png_chunks(out))[b"iCCP"]) == icc(dict(png_chunks(data))[b"iCCP"])


def test_jpeg_strip_metadata_keeps_colour_markers() -> None:
    data = read("pillow/rgb.jpg")
    out = result_of("pillow/rgb.jpg", MediaOptions(strip_metadata=True)).data
    assert out is not None
    kept = jpeg_segments(out)
    wanted = [
        s for s in jpeg_segments(data)
        if s[4:9] in (b"JFIF\0", b"Adobe", b"ICC_P") or (s[4:10] == b"Exif\0\0" and exif_orientation(s[4:]) != 1)
    ]  # fmt: skip
    assert kept == wanted and len(kept) < len(jpeg_segments(data))
    assert Image.open(io.BytesIO(out)).tobytes() == Image.open(io.BytesIO(data)).tobytes()


def test_jpeg_strip_metadata_keeps_exif_that_rotates() -> None:
    data = read("pillow/hopper_orientation_6.jpg")
    out = result_of("pillow/hopper_orientation_6.jpg", MediaOptions(strip_metadata=True)).data
    assert out is not None
    exif = [s for s in jpeg_segments(data) if s[4:10] == b"Exif\0\0"]
    assert exif and exif_orientation(exif[0][4:]) == 6
    assert exif[0] in jpeg_segments(out)


def test_cmyk_jpeg_keeps_its_own_adobe_marker() -> None:
    """MozJPEG writes its own APP14 for CMYK (other flags); the original one is put back verbatim."""
    data = read("pillow/pil_sample_cmyk.jpg")
    out = result_of("pillow/pil_sample_cmyk.jpg").data
    assert out is not None
    adobe = [s for s in jpeg_segments(data) if s[4:9] == b"Adobe"]
    assert adobe and [s for s in jpeg_segments(out) if s[4:9] == b"Adobe"] == adobe
    assert Image.open(io.BytesIO(out)).tobytes() == Image.open(io.BytesIO(data)).tobytes()


def test_jpeg_with_data_after_eoi_is_left_alone() -> None:
    result = optimize_media(read("pillow/hopper.jpg") + b"appended payload", MediaOptions())
    assert result.data is None and not result.warning and "after EOI" in result.reason


def test_png_with_data_after_iend_is_left_alone() -> None:
    result = result_of("pillow/tRNS_null_1x1.png")
    assert result.data is None and "after IEND" in result.reason


def test_gif_with_xmp_is_left_alone_unless_stripping() -> None:
    assert "XMP" in result_of("pillow/transparent.gif").reason
    stripped = result_of("pillow/transparent.gif", MediaOptions(strip_metadata=True))
    if stripped.data is not None:
        assert pillow_frames(stripped.data)[0] == pillow_frames(read("pillow/transparent.gif"))[0]


def test_gif_reencoding_is_verified_and_smaller() -> None:
    """A GIF written with a 256-entry palette for 3 colours: Pillow's optimized palette is smaller."""
    canvas = Image.new("P", (64, 48))
    canvas.putpalette([v for i in range(256) for v in (i, 255 - i, (i * 7) % 256)])
    canvas.paste(5, (0, 0, 32, 48))
    canvas.paste(200, (10, 10, 50, 30))
    buffer = io.BytesIO()
    canvas.save(buffer, "GIF", optimize=False, interlace=False)
    data = buffer.getvalue()
    result = optimize_media(data, MediaOptions())
    assert result.data is not None and len(result.data) < len(data), result.reason
    assert pillow_frames(result.data) == pillow_frames(data)


# -------------------------------------------------------------------------------------------------- engines


def test_pillow_fallback_keeps_every_other_chunk() -> None:
    data = read("pillow/uncompressed_rgb.png")
    out = result_of("pillow/uncompressed_rgb.png", MediaOptions(png_engine="pillow")).data
    assert out is not None and len(out) < len(data)
    assert [c for c in png_chunks(out) if c[0] != b"IDAT"] == [c for c in png_chunks(data) if c[0] != b"IDAT"]
    assert pillow_frames(out) == pillow_frames(data)


def test_png_level_changes_effort_not_pixels() -> None:
    data = read("pngsuite/basn3p08.png")
    for level in (0, 6):
        out = result_of("pngsuite/basn3p08.png", MediaOptions(png_level=level)).data
        if out is not None:
            assert np.array_equal(reference_png(out), reference_png(data))


# -------------------------------------------------------------------------------------------------- hostile


def png(width: int, height: int, extra: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = zlib.compress(b"\0" * (width + 1) * min(height, 4))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + b"".join(chunk(k, v) for k, v in extra)
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))  # fmt: skip


def test_dimension_bomb_is_refused_before_decoding() -> None:
    result = optimize_media(png(100_000, 100_000), MediaOptions())
    assert result.warning and result.data is None and "--media-max-pixels" in result.reason


def test_pixel_cap_is_an_option() -> None:
    result = optimize_media(read("pillow/hopper.png"), MediaOptions(max_pixels=128 * 128 - 1))
    assert result.warning and "over the cap" in result.reason


def test_icc_profile_bomb_is_refused() -> None:
    bomb = b"sRGB\0\0" + zlib.compress(b"\0" * (64 << 20), 9)
    result = optimize_media(png(8, 8, ((b"iCCP", bomb),)), MediaOptions())
    assert result.warning and "iCCP" in result.reason


def test_bad_crc_is_refused() -> None:
    data = bytearray(read("pillow/hopper.png"))
    data[data.index(b"IDAT") + 100] ^= 0xFF
    result = optimize_media(bytes(data), MediaOptions())
    assert result.warning and "CRC" in result.reason


def test_jpeg_scan_bomb_is_refused() -> None:
    sof = b"\xff\xc2\x00\x0b\x08\x00\x10\x00\x10\x01\x01\x11\x00"
    scan = b"\xff\xda\x00\x08\x01\x01\x00\x00\x00\x00" + b"\x12"
    result = optimize_media(b"\xff\xd8" + sof + scan * 600 + b"\xff\xd9", MediaOptions())
    assert result.warning and "scans" in result.reason


SMALL = ["pillow/hopper.png", "pillow/hopper.jpg", "pillow/hopper.gif", "pillow/transparent.webp",
         "pngsuite/basn3p04.png", "pngsuite/ibasn2c16.png", "pillow/dispose_bgnd.gif"]  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(SMALL),
    cut=st.floats(0.0, 1.0),
    flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(1, 255)), max_size=3),
)
def test_corrupt_input_never_crashes(name: str, cut: float, flips: list[tuple[float, int]]) -> None:
    data = bytearray(read(name))
    for where, mask in flips:
        data[int(where * (len(data) - 1))] ^= mask
    data = data[: max(16, int(cut * len(data)))]
    result = optimize_media(bytes(data), MediaOptions())
    if result.data is not None:  # still a valid image: the result must show what the input showed
        assert len(result.data) < len(data)
        assert pillow_frames(result.data)[0] == pillow_frames(bytes(data))[0]


# ------------------------------------------------------------------------------------------------ lossy


def test_lossy_reencodes_above_the_target_quality_within_the_floor() -> None:
    data = read("pillow/hopper.jpg")
    options = MediaOptions(lossy=True, jpeg_quality=70, ssim_floor=0.9)
    result = optimize_media(data, options)
    assert result.data is not None and result.details["estimated_quality"] > 70
    lossless = result_of("pillow/hopper.jpg").data
    assert lossless is not None and len(result.data) < len(lossless)
    assert jpeg_segments(result.data) == jpeg_segments(data)
    before = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float64)
    after = np.asarray(Image.open(io.BytesIO(result.data)).convert("L"), dtype=np.float64)
    assert naive_ssim(before, after) >= 0.9
    assert estimate_jpeg_quality(Image.open(io.BytesIO(result.data)).quantization) == 70  # type: ignore[attr-defined]


def test_lossy_falls_back_to_lossless_when_the_floor_fails_or_quality_is_low() -> None:
    data = read("pillow/hopper.jpg")
    lossless = result_of("pillow/hopper.jpg").data
    strict = optimize_media(data, MediaOptions(lossy=True, jpeg_quality=70, ssim_floor=0.9999))
    assert strict.data == lossless and float(strict.details["ssim"]) < 0.9999
    high = optimize_media(data, MediaOptions(lossy=True, jpeg_quality=99))
    assert high.data == lossless and "ssim" not in high.details
    assert int(high.details["estimated_quality"]) <= 99


def test_lossy_leaves_cmyk_lossless() -> None:
    result = optimize_media(read("pillow/pil_sample_cmyk.jpg"), MediaOptions(lossy=True, jpeg_quality=50))
    assert result.data == result_of("pillow/pil_sample_cmyk.jpg").data


@pytest.mark.parametrize("quality", [20, 50, 75, 90, 95])
def test_quality_estimate_matches_the_encoder(quality: int) -> None:
    buffer = io.BytesIO()
    Image.open(fixture("media/pillow/hopper.png")).convert("RGB").save(buffer, "JPEG", quality=quality)
    assert estimate_jpeg_quality(Image.open(buffer).quantization) == quality  # type: ignore[attr-defined]


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


def test_ssim_matches_the_formula() -> None:
    rng = np.random.default_rng(7)
    base = rng.integers(0, 256, (23, 31)).astype(np.float64)
    noisy = np.clip(base + rng.normal(0, 20, base.shape), 0, 255)
    assert ssim(base, base) == pytest.approx(1.0)
    assert ssim(base, noisy) == pytest.approx(naive_ssim(base, noisy), abs=1e-9)
    assert ssim(base, noisy) < 0.99


# ---------------------------------------------------------------------------------------- the pass itself


def make_context(
    tmp_path: Path,
    layers: list[dict[str, bytes | str]],
    workers: int,
    protected: frozenset[int] = frozenset(),
) -> PassContext:
    spool = Spool(str(tmp_path / f"layers{workers}.pack"))
    indexed = []
    for files in layers:
        entries = []
        for path, value in files.items():
            if isinstance(value, str):
                entries.append(IndexedEntry(Entry(path, EntryKind.HARDLINK, link=value)))
            else:
                entries.append(IndexedEntry(Entry(path, EntryKind.FILE, size=len(value)), spool.store(value)))
        indexed.append(entries)
    fs = build_filesystem(indexed, protected)
    info = ImageInfo(
        "test-image", "sha256:" + "0" * 64, None, {}, [f"sha256:{n:064x}" for n in range(len(layers))]
    )
    return PassContext(fs, Changes(fs, Media.name, Spool(str(tmp_path / f"new{workers}.pack"))), info,
                       PassReport(Media.name), WorkerPool(workers))  # fmt: skip


def run_pass(ctx: PassContext, options: MediaOptions = MediaOptions()) -> PassContext:  # noqa: B008
    try:
        Media(options).run(ctx)
    finally:
        ctx.pool.close()
    return ctx


def test_pass_on_a_filesystem(tmp_path: Path) -> None:
    logo, photo = read("pillow/hopper.png"), read("pillow/rgb.jpg")
    layers: list[dict[str, bytes | str]] = [
        {"usr/share/base.png": read("pillow/uncompressed_rgb.png")},
        {
            "app/logo.png": logo,
            "app/copy-of-logo.png": logo,
            "app/hard.png": "app/logo.png",
            "app/photo.dat": photo,  # found by its bytes, not its name
            "app/fake.png": b"not a png at all, just text\n",
            "app/broken.png": read("pillow/truncated_image.png"),
        },
    ]
    ctx = run_pass(make_context(tmp_path, layers, 2, protected=frozenset({0})))
    changed = {c.path: c for c in ctx.changes}  # a hardlinked file is recorded once, against its holder
    assert set(changed) == {"app/logo.png", "app/copy-of-logo.png", "app/photo.dat"}
    assert all(c.op.value == "replace" and c.bytes_after < c.bytes_before for c in changed.values())
    assert changed["app/logo.png"].content == changed["app/copy-of-logo.png"].content
    findings = {f.path: f for f in ctx.report.findings}
    assert (
        findings["usr/share/base.png"].action == "kept"
        and findings["usr/share/base.png"].reason == "protected layer"
    )
    assert findings["app/broken.png"].action == "kept" and "truncated" in findings["app/broken.png"].reason
    assert "app/fake.png" not in findings
    assert len({"app/hard.png", "app/logo.png"} & set(findings)) == 1  # one finding per inode
    assert findings["app/photo.dat"].details["format"] == "jpeg"
    (warning,) = ctx.report.warnings
    assert warning.startswith("test-image, layer 2/2 sha256:") and "app/broken.png" in warning


def test_pass_is_deterministic_across_runs_and_workers(tmp_path: Path) -> None:
    names = [n for n in FILES if len(read(n)) < 40_000]  # every format and hostile case, the small files
    layers: list[dict[str, bytes | str]] = [{f"assets/{n}": read(n) for n in names}]
    runs = []
    for number, workers in enumerate((1, 2)):
        workdir = tmp_path / str(number)
        workdir.mkdir()
        ctx = run_pass(make_context(workdir, layers, workers))
        runs.append({c.visible_path: c.content.sha256 for c in ctx.changes if c.content is not None})
    assert runs[0] == runs[1] and runs[0]
    expected = {
        f"assets/{n}": hashlib.sha256(r.data).hexdigest()
        for n in names
        if (r := result_of(n)).data is not None
    }
    assert runs[0] == expected  # the pass records exactly what the codec verified


def test_options_are_validated() -> None:
    for bad in ({"png_interlace": "on"}, {"jpeg_quality": 0}, {"ssim_floor": 1.5}, {"png_level": 9},
                {"max_pixels": 0}, {"formats": ("bmp",)}, {"png_engine": "zopfli"}):  # fmt: skip
        with pytest.raises(UsageError):
            MediaOptions(**bad)  # type: ignore[arg-type]


def test_cli_flags_reach_the_options() -> None:
    args = build_parser().parse_args(
        ["in.tar", "out.tar", "--media-strip-metadata", "--media-lossy", "--jpeg-quality", "70",
         "--media-png-interlace", "off", "--media-max-pixels", "1000", "--media-formats", "png,jpeg"]
    )  # fmt: skip
    assert Media.options_from_args(args) == MediaOptions(
        strip_metadata=True,
        lossy=True,
        jpeg_quality=70,
        png_interlace="off",
        max_pixels=1000,
        formats=("png", "jpeg"),
    )
    defaults = build_parser().parse_args(["in.tar", "out.tar"])
    assert Media.options_from_args(defaults) == MediaOptions()
    assert isinstance(defaults, argparse.Namespace)


def test_end_to_end_through_optimize(tmp_path: Path) -> None:
    logo, photo, broken = (
        read("pillow/hopper.png"),
        read("pillow/hopper.jpg"),
        read("pillow/truncated_jpeg.jpg"),
    )
    source = build_image(
        tmp_path / "in.tar",
        [[entry("srv", EntryKind.DIR), entry("srv/static", EntryKind.DIR),
          entry("srv/static/logo.png", data=logo, mode=0o640, uid=33, gid=33),
          entry("srv/static/photo.jpg", data=photo), entry("srv/static/broken.jpg", data=broken)]],
    )  # fmt: skip
    out = tmp_path / "out.tar"
    report = optimize(str(source), str(out), Options(passes=("media",)))
    (image,) = report.images
    (media,) = image.passes
    assert media.status.value == "ok" and media.files_changed == 2 and media.bytes_after < media.bytes_before
    assert any("srv/static/broken.jpg" in w for w in media.warnings)
    layout = Layout(out)
    ((_, manifest),) = layout.manifests()
    with tarfile.open(fileobj=io.BytesIO(layout.blob(manifest["layers"][0]["digest"]))) as tar:
        members = {m.name.lstrip("./"): m for m in tar.getmembers()}
        files = {n: tar.extractfile(m).read() for n, m in members.items() if m.isfile()}  # type: ignore[union-attr]
    assert set(files) == {"srv/static/logo.png", "srv/static/photo.jpg", "srv/static/broken.jpg"}
    assert (members["srv/static/logo.png"].mode, members["srv/static/logo.png"].uid) == (0o640, 33)
    assert files["srv/static/broken.jpg"] == broken
    for name, original in (("srv/static/logo.png", logo), ("srv/static/photo.jpg", photo)):
        assert len(files[name]) < len(original)
        assert pillow_frames(files[name]) == pillow_frames(original)


# ------------------------------------------------------------------------------ Debian reference optimizers


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


def ours(name: str) -> int:
    result = result_of(name)
    return len(result.data) if result.data is not None else len(read(name))


def test_no_larger_than_optipng(tmp_path: Path) -> None:
    optipng = require_tool("optipng", "optipng")
    names = [n for n in FILES if n.endswith(".png") and n not in HOSTILE]
    theirs = {n: reference_size([optipng, "-quiet", "-o2", "-out"], read(n), tmp_path) for n in names}
    assert sum(ours(n) for n in names) <= sum(theirs.values())
    larger = {n: (ours(n), t) for n, t in theirs.items() if ours(n) > t}
    assert sum(o - t for o, t in larger.values()) <= 0.002 * sum(theirs.values()), larger


def test_no_larger_than_jpegtran_and_jpegoptim(tmp_path: Path) -> None:
    jpegtran = require_tool("jpegtran", "libjpeg-turbo-progs")
    jpegoptim = require_tool("jpegoptim", "jpegoptim")
    names = [n for n in FILES if n.endswith(".jpg") and n not in HOSTILE]
    for argv, in_place in (([jpegtran, "-optimize", "-copy", "all", "-outfile"], False),
                           ([jpegtran, "-optimize", "-progressive", "-copy", "all", "-outfile"], False),
                           ([jpegoptim, "-q", "--all-normal"], True)):  # fmt: skip
        theirs = {n: reference_size(argv, read(n), tmp_path, in_place) for n in names}
        assert sum(ours(n) for n in names) <= sum(theirs.values()), argv
        larger = {n: (ours(n), t) for n, t in theirs.items() if ours(n) > t}
        # MozJPEG always writes progressive scans: on a tiny image an optimized baseline can be a few bytes smaller
        assert all(o - t <= 0.05 * t and t < 4096 for o, t in larger.values()), (argv, larger)
