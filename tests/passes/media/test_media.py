"""The ``media`` pass: every fixture stays pixel-identical and never grows, hostile input never crashes,
determinism, the pass on a FileSystem and end to end, its options."""

from __future__ import annotations

import argparse
import hashlib
import io
import re
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from optimizer import Options, optimize
from optimizer.cli import build_parser, options_from_args
from optimizer.errors import UsageError
from optimizer.model import EntryKind
from optimizer.pipeline import PassContext
from optimizer.settings import from_mapping
from passes.media import Media, MediaOptions, sniff
from passes.media import optimize as optimize_media
from tests.conftest import fixture
from tests.imagetools import Layout, build_image, entry
from tests.passes import kit
from tests.passes.media.oracles import (
    FILES,
    HOSTILE,
    MEDIA,
    SLOW,
    jpeg_segments,
    pillow_frames,
    png_chunks,
    png_metadata,
    read,
    reference_png,
    result_of,
)


def test_the_media_fixtures_are_there() -> None:
    fixture("media")
    assert len(FILES) >= 50, f"only {len(FILES)} media fixtures under {MEDIA}"


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


def make_context(
    tmp_path: Path,
    layers: list[dict[str, bytes | str]],
    workers: int,
    protected: frozenset[int] = frozenset(),
) -> PassContext:
    return kit.make_context(tmp_path, layers, Media.name, protected, workers)


def run_pass(ctx: PassContext, options: MediaOptions = MediaOptions()) -> PassContext:  # noqa: B008
    return kit.run_pass(Media(options), ctx)


def test_pass_on_a_filesystem(tmp_path: Path) -> None:
    logo, photo = read("pillow/hopper.png"), read("pillow/rgb.jpg")
    layers: list[dict[str, bytes | str]] = [
        {"usr/share/base.png": read("pillow/uncompressed_rgb.png")},
        {
            "app/logo.png": logo,
            "app/copy-of-logo.png": logo,
            "app/hard.png": "=>app/logo.png",
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
                {"max_pixels": 0}, {"formats": ("bmp",)}, {"png_engine": "zopfli"}, {"ssim_chroma_floor": 0.0}):  # fmt: skip
        with pytest.raises(UsageError):
            MediaOptions(**bad)  # type: ignore[arg-type]


def test_cli_flags_reach_the_options() -> None:
    args = build_parser().parse_args(
        ["in.tar", "out.tar", "--media-strip-metadata", "--media-lossy", "--jpeg-quality", "70",
         "--media-ssim-floor", "0.97", "--media-ssim-chroma-floor", "0.9",
         "--media-png-interlace", "off", "--media-max-pixels", "1000", "--media-formats", "png,jpeg"]
    )  # fmt: skip
    assert options_from_args(args).options_for(Media) == MediaOptions(
        strip_metadata=True,
        lossy=True,
        jpeg_quality=70,
        ssim_floor=0.97,
        ssim_chroma_floor=0.9,
        png_interlace="off",
        max_pixels=1000,
        formats=("png", "jpeg"),
    )
    defaults = build_parser().parse_args(["in.tar", "out.tar"])
    assert options_from_args(defaults).options_for(Media) == MediaOptions()
    assert isinstance(defaults, argparse.Namespace)


def test_the_ssim_floors_parse_from_the_configuration() -> None:
    """A service rule's ``pass_options: {media: {...}}`` (``optimizer.service.config``), either key spelling."""
    at = "rules[0].options.pass_options.media"
    got = from_mapping(MediaOptions, {"ssim-chroma-floor": 0.9, "ssim_floor": 0.97, "lossy": True}, at)
    assert got == MediaOptions(lossy=True, ssim_floor=0.97, ssim_chroma_floor=0.9)
    with pytest.raises(UsageError, match=re.escape(f"{at}.ssim_chroma_floor: expected a number, got 'high'")):
        from_mapping(MediaOptions, {"ssim_chroma_floor": "high"}, at)
    with pytest.raises(UsageError, match=r"--media-ssim-chroma-floor must be in \(0, 1\], not 1.5"):
        from_mapping(MediaOptions, {"ssim_chroma_floor": 1.5}, at)


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
    report = optimize(str(source), str(out), Options(base="none", passes=("media",)))
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
