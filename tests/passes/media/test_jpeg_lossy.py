"""``passes.media.jpeg``'s opt-in lossy re-encoding: only above the target quality, with the original's chroma
subsampling and metadata, every channel's SSIM at or above the floor, and only where ``--media-reduce`` allows
a reduction (files under a web server's document root by default)."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from passes.media import Media, MediaOptions
from passes.media import optimize as optimize_media
from passes.media.jpeg import estimate_jpeg_quality
from passes.media.verify import jpeg_planes, ssim_planes
from tests.conftest import require_tool
from tests.passes import kit
from tests.passes.media.oracles import jpeg_segments, media, naive_ssim, read, result_of

# A file given alone (no path, no web root to tell) may be reduced only with "always"
FLOOR_OFF = MediaOptions(lossy=True, reduce="always", jpeg_quality=70, ssim_floor=0.5)


def _hopper() -> Image.Image:
    return Image.open(media("pillow/hopper.png")).convert("RGB")


def _jpeg(image: Image.Image, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95, **params)
    return out.getvalue()


def _sampling(data: bytes) -> list[tuple[int, int]]:
    """Each component's sampling factors, as libjpeg read them (Pillow's ``layer``)."""
    return [(h, v) for _, h, v, _ in Image.open(io.BytesIO(data)).layer]  # type: ignore[attr-defined]


def _planes(data: bytes) -> np.ndarray:
    """Y, Cb, Cr of the decoded image at full resolution, unrounded: ITU-T T.871's equations, written out."""
    rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128 - 0.299 / 1.772 * r - 0.587 / 1.772 * g + 0.886 / 1.772 * b
    cr = 128 + 0.701 / 1.402 * r - 0.587 / 1.402 * g - 0.114 / 1.402 * b
    return np.stack([y, cb, cr], axis=-1)


def test_lossy_reencodes_above_the_target_quality_within_the_floor() -> None:
    data = read("pillow/hopper.jpg")
    options = MediaOptions(lossy=True, reduce="always", jpeg_quality=70, ssim_floor=0.9)
    result = optimize_media(data, options)
    assert result.data is not None and result.details["estimated_quality"] > 70
    assert result.details["reduction"] == "lossy, quality 70"
    lossless = result_of("pillow/hopper.jpg").data
    assert lossless is not None and len(result.data) < len(lossless)
    assert jpeg_segments(result.data) == jpeg_segments(data)
    before, after = _planes(data), _planes(result.data)
    assert min(naive_ssim(before[..., c], after[..., c]) for c in range(3)) >= 0.9
    assert estimate_jpeg_quality(Image.open(io.BytesIO(result.data)).quantization) == 70  # type: ignore[attr-defined]


def test_lossy_falls_back_to_lossless_when_the_floor_fails_or_quality_is_low() -> None:
    data = read("pillow/hopper.jpg")
    lossless = result_of("pillow/hopper.jpg").data
    strict = optimize_media(
        data, MediaOptions(lossy=True, reduce="always", jpeg_quality=70, ssim_floor=0.9999)
    )
    assert strict.data == lossless and float(strict.details["ssim"]) < 0.9999
    assert "below the floor" in str(strict.details["lossy"])
    high = optimize_media(data, MediaOptions(lossy=True, reduce="always", jpeg_quality=99))
    assert high.data == lossless and "ssim" not in high.details
    assert int(high.details["estimated_quality"]) <= 99
    assert high.details["lossy"] == f"estimated quality {high.details['estimated_quality']} is not above 99"


def test_lossy_leaves_cmyk_lossless() -> None:
    options = MediaOptions(lossy=True, reduce="always", jpeg_quality=50)
    result = optimize_media(read("pillow/pil_sample_cmyk.jpg"), options)
    assert result.data == result_of("pillow/pil_sample_cmyk.jpg").data
    assert result.details["lossy"] == "CMYK JPEGs are only optimized losslessly"


@pytest.mark.parametrize(("subsampling", "factors"), [(0, (1, 1)), (1, (2, 1)), (2, (2, 2))])
def test_lossy_keeps_the_subsampling_icc_exif_and_scans(subsampling: int, factors: tuple[int, int]) -> None:
    """4:4:4, 4:2:2 and 4:2:0 originals keep their chroma resolution; the ICC profile and the EXIF block (its
    orientation) are carried verbatim; the scans are progressive, as the lossless path writes them."""
    exif = Image.Exif()
    exif[0x0112] = 6
    icc = Image.open(media("pillow/rgb.jpg")).info["icc_profile"]  # a real profile, 3,144 bytes
    data = _jpeg(_hopper(), subsampling=subsampling, icc_profile=icc, exif=exif.tobytes())
    assert _sampling(data) == [factors, (1, 1), (1, 1)] and any(s[1] == 0xFE for s in jpeg_segments(data))
    for strip in (False, True):
        options = MediaOptions(
            lossy=True, reduce="always", jpeg_quality=70, ssim_floor=0.5, strip_metadata=strip
        )
        result = optimize_media(data, options)
        assert result.data is not None and result.reason.startswith("re-encoded at quality 70"), result.reason
        assert _sampling(result.data) == [factors, (1, 1), (1, 1)]
        # JFIF, EXIF (it rotates), ICC: kept even when stripping; the comment only when not
        assert jpeg_segments(result.data) == [s for s in jpeg_segments(data) if not (strip and s[1] == 0xFE)]
        decoded = Image.open(io.BytesIO(result.data))
        assert decoded.info["icc_profile"] == icc and decoded.getexif()[0x0112] == 6
        lossless = optimize_media(data, MediaOptions(strip_metadata=strip)).data
        assert lossless is not None
        assert (
            decoded.info.get("progressive") == Image.open(io.BytesIO(lossless)).info.get("progressive") == 1
        )


@pytest.mark.parametrize("sample", ["1x2", "4x1", "1x1,1x1,2x2"])
def test_lossy_leaves_a_sampling_pillow_cannot_write(tmp_path: Path, sample: str) -> None:
    """4:4:0, 4:1:1 and a subsampled Cr alone: Pillow would write them 4:2:0. The lossy re-encode is not tried
    (the reason says why) and the file is optimized losslessly, its sampling as it was."""
    cjpeg = require_tool("cjpeg", "libjpeg-turbo-progs")
    _hopper().save(tmp_path / "in.ppm")
    data = subprocess.run(
        [cjpeg, "-quality", "95", "-sample", sample, str(tmp_path / "in.ppm")],
        capture_output=True,
        check=True,
    ).stdout
    original = _sampling(data)
    assert original not in ([(1, 1)] * 3, [(2, 1), (1, 1), (1, 1)], [(2, 2), (1, 1), (1, 1)])
    result = optimize_media(data, FLOOR_OFF)
    assert result.data is not None and result.reason.startswith("optimized losslessly"), result.reason
    assert _sampling(result.data) == original
    written = ",".join(f"{h}x{v}" for h, v in original)
    assert (
        result.details["lossy"] == f"chroma sampling {written} is not one Pillow writes (4:4:4, 4:2:2, 4:2:0)"
    )
    assert Image.open(io.BytesIO(result.data)).tobytes() == Image.open(io.BytesIO(data)).tobytes()


def _equal_luma_colours(size: int = 64) -> Image.Image:
    """Flat luma, fine chroma detail: a checkerboard in Cb and stripes in Cr, all at Y = 128 (no RGB clipping)."""
    rows, cols = np.mgrid[0:size, 0:size]
    cb = 128 + 40 * np.where((cols // 2 + rows // 3) % 2, 1, -1)
    cr = 128 + 40 * np.where((cols // 3) % 2, 1, -1)
    planes = np.stack([np.full((size, size), 128), cb, cr], axis=-1).astype(np.uint8)
    return Image.fromarray(planes, "YCbCr").convert("RGB")


def test_chroma_damage_with_luma_kept_is_refused() -> None:
    """Quality 60 keeps the flat luma but smears the chroma detail: a luma-only score let it through; the
    worst channel (Cb) is under the floor and the file is optimized losslessly instead."""
    data = _jpeg(_equal_luma_colours(), subsampling=0)
    options = MediaOptions(lossy=True, reduce="always", jpeg_quality=60, ssim_floor=0.98)
    # what the encoder makes of it, scored by the oracle, channel by channel
    before, after = _planes(data), _planes(_jpeg_at(Image.open(io.BytesIO(data)), 60, subsampling=0))
    scores = [naive_ssim(before[..., c], after[..., c]) for c in range(3)]
    assert scores[0] >= 0.98 > scores[1], scores  # luma kept, Cb damaged
    result = optimize_media(data, options)
    assert result.data == optimize_media(data, MediaOptions()).data and result.data is not None
    assert float(result.details["ssim"]) < 0.98
    assert result.reason.startswith("optimized losslessly")
    assert str(result.details["lossy"]).startswith("SSIM") and str(result.details["lossy"]).endswith(
        "of Cb below the floor 0.98"
    )
    assert str(result.details["ssim_channels"]).startswith("Y 0.99")


def test_grey_jpegs_are_scored_on_their_one_channel() -> None:
    result = optimize_media(read("pillow/hopper_gray.jpg"), FLOOR_OFF)
    assert result.data is not None and Image.open(io.BytesIO(result.data)).mode == "L"
    (name, score) = str(result.details["ssim_channels"]).split()
    assert name == "Y" and float(score) == pytest.approx(float(result.details["ssim"]), abs=1e-5)
    grey = np.asarray(Image.open(io.BytesIO(read("pillow/hopper_gray.jpg"))), dtype=np.float64)
    after = np.asarray(Image.open(io.BytesIO(result.data)), dtype=np.float64)
    assert float(score) == pytest.approx(naive_ssim(grey, after), abs=1e-5)


def test_plane_scores_match_the_formula_per_channel() -> None:
    data = read("pillow/hopper.jpg")
    before = Image.open(io.BytesIO(data))
    worse = _jpeg_at(before, 30)
    names, first = jpeg_planes(before)
    scores = ssim_planes(first, jpeg_planes(Image.open(io.BytesIO(worse)))[1], 128, 128, len(names))
    assert names == ("Y", "Cb", "Cr") and max(scores) < 0.99
    planes_before, planes_worse = _planes(data), _planes(worse)
    for channel, score in enumerate(scores):
        reference = naive_ssim(planes_before[..., channel], planes_worse[..., channel])
        assert score == pytest.approx(reference, abs=1e-4)


def _jpeg_at(image: Image.Image, quality: int, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality, **params)
    return out.getvalue()


NGINX_CONF = b"events {}\nhttp { server { listen 80; root /srv/www; } }\n"


@pytest.mark.parametrize("reduce", ["web", "always", "never"])
def test_lossy_follows_media_reduce(tmp_path: Path, reduce: str) -> None:
    """Lossy is a reduction: with "web" only under a web server's document root (and not a file with a name
    outside it), with "always" everywhere, with "never" nowhere; each JPEG left lossless says why."""
    photo, shared = read("pillow/hopper.jpg"), _jpeg(_hopper())
    files: kit.Files = {
        "etc/nginx/nginx.conf": NGINX_CONF,
        "srv/www/photo.jpg": photo,
        "data/photo.jpg": photo,
        "srv/www/shared.jpg": shared,
        "data/shared.jpg": "=>srv/www/shared.jpg",
    }
    options = MediaOptions(lossy=True, reduce=reduce, jpeg_quality=70, ssim_floor=0.9)  # type: ignore[arg-type]
    findings = kit.findings(kit.run(tmp_path, Media(options), [files]))
    link = next(p for p in ("srv/www/shared.jpg", "data/shared.jpg") if p in findings)
    lossy = {path: f.reason.startswith("re-encoded at quality 70") for path, f in findings.items()}
    assert lossy == {"srv/www/photo.jpg": reduce != "never", "data/photo.jpg": reduce == "always",
                     link: reduce == "always"}  # fmt: skip
    assert all(f.action == "replaced" for f in findings.values())
    web = findings["srv/www/photo.jpg"].details
    if reduce == "web":
        assert web["form"] == "reduced (lossy, quality 70): under nginx root /srv/www (/etc/nginx/nginx.conf)"
        assert findings["data/photo.jpg"].details["lossy"] == (
            "not tried: --media-reduce web, and it is outside every web server document root"
        )
        name = "it" if link == "data/shared.jpg" else "its hardlink /data/shared.jpg"
        assert findings[link].details["lossy"] == (
            f"not tried: --media-reduce web, and {name} is outside every web server document root"
        )
    elif reduce == "always":
        assert web["form"] == "reduced (lossy, quality 70): --media-reduce always"
    else:
        assert all(f.details["lossy"] == "not tried: --media-reduce never" for f in findings.values())
        assert web["form"] == "native mode kept" and "ssim" not in web


def test_lossy_without_a_web_server_is_not_tried(tmp_path: Path) -> None:
    ctx = kit.run(
        tmp_path, Media(MediaOptions(lossy=True)), [{"srv/www/photo.jpg": read("pillow/hopper.jpg")}]
    )
    (finding,) = ctx.report.findings
    assert finding.reason.startswith("optimized losslessly") and finding.details["lossy"] == (
        "not tried: --media-reduce web, and the image has no web server document root"
    )


def test_a_symlink_into_the_root_keeps_a_file_lossless(tmp_path: Path) -> None:
    files: kit.Files = {
        "etc/nginx/nginx.conf": NGINX_CONF,
        "srv/www/img/photo.jpg": read("pillow/hopper.jpg"),
        "data/img": "->/srv/www/img",
    }
    options = MediaOptions(lossy=True, jpeg_quality=70, ssim_floor=0.9)
    (finding,) = kit.run(tmp_path, Media(options), [files]).report.findings
    assert finding.reason.startswith("optimized losslessly") and finding.details["lossy"] == (
        "not tried: --media-reduce web, and /srv/www/img/photo.jpg is reached through /data/img, outside every "
        "document root"
    )


def test_a_file_given_alone_is_reduced_only_with_always() -> None:
    data = read("pillow/hopper.jpg")
    for reduce in ("web", "never"):
        result = optimize_media(data, MediaOptions(lossy=True, reduce=reduce, jpeg_quality=70))  # type: ignore[arg-type]
        assert result.data == result_of("pillow/hopper.jpg").data
        assert str(result.details["lossy"]).startswith(f"not tried: --media-reduce {reduce}")
