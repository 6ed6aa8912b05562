"""``passes.media.png``: exact pixels against a reference decoder, animation, interlacing, the metadata
policy, both engines, hostile files, and no larger than optipng."""

from __future__ import annotations

import io
import struct
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from passes.media import MediaOptions
from passes.media import optimize as optimize_media
from passes.media.png import png_pixels
from tests.conftest import require_tool
from tests.passes.media.oracles import (
    FILES,
    HOSTILE,
    exif_orientation,
    icc,
    media,
    ours,
    pillow_frames,
    png,
    png_chunks,
    read,
    reference_png,
    reference_size,
    result_of,
)


def small_still_png(name: str) -> bool:
    """Small enough for the pure-Python reference decoder, and not animated."""
    data = (media(name)).read_bytes()
    width, height = struct.unpack(">II", data[16:24])
    return width * height <= 40_000 and b"acTL" not in data[: data.find(b"IDAT")]


@pytest.mark.parametrize(
    "name", [n for n in FILES if n.endswith(".png") and n not in HOSTILE and small_still_png(n)]
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


def test_interlacing_is_kept_unless_turned_off() -> None:
    data = read("pngsuite/ibasn3p08.png")
    kept = result_of("pngsuite/ibasn3p08.png").data
    off = result_of("pngsuite/ibasn3p08.png", MediaOptions(png_interlace="off")).data
    assert kept is not None and off is not None
    assert png_chunks(kept)[0][1][12] == 1 and png_chunks(off)[0][1][12] == 0
    assert np.array_equal(reference_png(off), reference_png(data))
    assert np.array_equal(reference_png(kept), reference_png(data))


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


def test_png_with_data_after_iend_is_left_alone() -> None:
    result = result_of("pillow/tRNS_null_1x1.png")
    assert result.data is None and "after IEND" in result.reason


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


@pytest.mark.parametrize(
    ("reduce", "flags"), [("never", ["-nx"]), ("always", [])], ids=["native-vs-nx", "reduced-vs-o2"]
)
def test_no_larger_than_optipng(tmp_path: Path, reduce: str, flags: list[str]) -> None:
    """Native results against optipng without reductions (-nx), reduced results against optipng -o2."""
    optipng = require_tool("optipng", "optipng")
    options = MediaOptions(reduce=reduce)  # type: ignore[arg-type]
    names = [n for n in FILES if n.endswith(".png") and n not in HOSTILE]
    theirs = {n: reference_size([optipng, "-quiet", "-o2", *flags, "-out"], read(n), tmp_path) for n in names}
    assert sum(ours(n, options) for n in names) <= sum(theirs.values())
    larger = {n: (ours(n, options), t) for n, t in theirs.items() if ours(n, options) > t}
    assert sum(o - t for o, t in larger.values()) <= 0.002 * sum(theirs.values()), larger
