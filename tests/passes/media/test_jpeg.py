"""``passes.media.jpeg``: the metadata policy, data after EOI, scan bombs, the quality estimate, and no larger
than jpegtran and jpegoptim (lossy re-encoding: ``test_jpeg_lossy``)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from passes.media import MediaOptions
from passes.media import optimize as optimize_media
from passes.media.jpeg import estimate_jpeg_quality, jpeg_structure
from tests.conftest import require_tool
from tests.passes.media.oracles import (
    FILES,
    HOSTILE,
    exif_orientation,
    jpeg_segments,
    media,
    ours,
    read,
    reference_size,
    result_of,
)


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


def test_jpeg_scan_bomb_is_refused() -> None:
    sof = b"\xff\xc2\x00\x0b\x08\x00\x10\x00\x10\x01\x01\x11\x00"
    scan = b"\xff\xda\x00\x08\x01\x01\x00\x00\x00\x00" + b"\x12"
    result = optimize_media(b"\xff\xd8" + sof + scan * 600 + b"\xff\xd9", MediaOptions())
    assert result.warning and "scans" in result.reason


@pytest.mark.parametrize("quality", [20, 50, 75, 90, 95])
def test_quality_estimate_matches_the_encoder(quality: int) -> None:
    buffer = io.BytesIO()
    Image.open(media("pillow/hopper.png")).convert("RGB").save(buffer, "JPEG", quality=quality)
    assert estimate_jpeg_quality(Image.open(buffer).quantization) == quality  # type: ignore[attr-defined]


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


@pytest.mark.parametrize("name", [n for n in FILES if n.endswith(".jpg") and n not in HOSTILE])
def test_lossless_transcoding_keeps_colour_space_and_components(name: str) -> None:
    data, out = read(name), result_of(name).data
    if out is None:
        return
    assert jpeg_structure(out, 1 << 26).form(out) == jpeg_structure(data, 1 << 26).form(data)
    assert Image.open(io.BytesIO(out)).mode == Image.open(io.BytesIO(data)).mode  # L, RGB or CMYK


def test_jpeg_form_tells_subsampling_apart() -> None:
    image = Image.open(io.BytesIO(read("pillow/hopper.jpg")))
    forms = set()
    for subsampling in (0, 2):
        out = io.BytesIO()
        image.save(out, "JPEG", quality=90, subsampling=subsampling)
        forms.add(jpeg_structure(out.getvalue(), 1 << 26).form(out.getvalue()))
    assert len(forms) == 2
