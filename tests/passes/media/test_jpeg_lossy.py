"""``passes.media.jpeg``'s opt-in lossy re-encoding: only above the target quality, with the original's chroma
subsampling and metadata, the combined SSIM (6 Y + Cb + Cr) / 8 at or above the floor and each chroma plane's at
or above the chroma floor, and only where ``--media-reduce`` allows a reduction (files under a web server's
document root by default)."""

from __future__ import annotations

import dataclasses
import io
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from passes.media import Media, MediaOptions
from passes.media import optimize as optimize_media
from passes.media.jpeg import estimate_jpeg_quality
from passes.media.verify import jpeg_ssim
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


def _downsampled(plane: np.ndarray, across: int, down: int) -> np.ndarray:
    """Each down x across block averaged, the image first grown to whole blocks by repeating its last row and
    column (libjpeg's encoder: edge expansion, then a box average)."""
    grown = np.pad(plane, ((0, -plane.shape[0] % down), (0, -plane.shape[1] % across)), mode="edge")
    blocks = grown.reshape(grown.shape[0] // down, down, grown.shape[1] // across, across)
    return blocks.mean(axis=(1, 3))


def _oracle_scores(before: bytes, after: bytes, chroma: tuple[int, int]) -> list[float]:
    """Y, Cb, Cr SSIM from the paper's formulas: Y at full resolution, Cb and Cr at ``chroma``'s."""
    first, second = _planes(before), _planes(after)
    return [naive_ssim(first[..., 0], second[..., 0])] + [
        naive_ssim(_downsampled(first[..., c], *chroma), _downsampled(second[..., c], *chroma))
        for c in (1, 2)
    ]


def _combined(scores: list[float]) -> float:
    return (6 * scores[0] + scores[1] + scores[2]) / 8


def _channels(details: object) -> dict[str, float]:
    words = str(details).split()
    return {name: float(score) for name, score in zip(words[::2], words[1::2], strict=True)}


def test_lossy_reencodes_above_the_target_quality_within_the_floor() -> None:
    data = read("pillow/hopper.jpg")
    options = MediaOptions(lossy=True, reduce="always", jpeg_quality=70, ssim_floor=0.9)
    result = optimize_media(data, options)
    assert result.data is not None and result.details["estimated_quality"] > 70
    assert result.details["reduction"] == "lossy, quality 70"
    lossless = result_of("pillow/hopper.jpg").data
    assert lossless is not None and len(result.data) < len(lossless)
    assert jpeg_segments(result.data) == jpeg_segments(data)
    scores = _oracle_scores(data, result.data, (2, 2))  # hopper.jpg is 4:2:0
    assert _combined(scores) >= 0.9 and min(scores[1:]) >= 0.95
    assert float(result.details["ssim"]) == pytest.approx(_combined(scores), abs=1e-4)
    assert estimate_jpeg_quality(Image.open(io.BytesIO(result.data)).quantization) == 70  # type: ignore[attr-defined]


def test_lossy_falls_back_to_lossless_when_the_floor_fails_or_quality_is_low() -> None:
    data = read("pillow/hopper.jpg")
    lossless = result_of("pillow/hopper.jpg").data
    strict = optimize_media(
        data, MediaOptions(lossy=True, reduce="always", jpeg_quality=70, ssim_floor=0.9999)
    )
    assert strict.data == lossless and float(strict.details["ssim"]) < 0.9999
    assert strict.details["lossy"] == (
        f"combined SSIM {strict.details['ssim']:.4f} ((6 Y + Cb + Cr) / 8) below the floor 0.9999"
    )
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
    """Flat luma, fine chroma detail of moderate saturation (a fabric's two-hue weave): a checkerboard in Cb and
    stripes in Cr, +-32 around grey, all at Y = 128 (no RGB clipping)."""
    rows, cols = np.mgrid[0:size, 0:size]
    cb = 128 + 32 * np.where((cols // 2 + rows // 3) % 2, 1, -1)
    cr = 128 + 32 * np.where((cols // 3) % 2, 1, -1)
    planes = np.stack([np.full((size, size), 128), cb, cr], axis=-1).astype(np.uint8)
    return Image.fromarray(planes, "YCbCr").convert("RGB")


def test_chroma_damage_with_luma_kept_is_refused() -> None:
    """Quality 60 keeps the flat luma but smears the chroma detail (the oracle: Y 0.994, Cb 0.937, Cr 0.992).
    Luma weighs six of eight, so the combined score (0.987) passes the floor: the chroma floor refuses it,
    and the reason says so; the file is optimized losslessly instead."""
    data = _jpeg(_equal_luma_colours(), subsampling=0)
    options = MediaOptions(lossy=True, reduce="always", jpeg_quality=60, ssim_floor=0.98)
    # what the encoder makes of it, scored by the oracle, channel by channel (4:4:4: all at full resolution)
    scores = _oracle_scores(data, _jpeg_at(Image.open(io.BytesIO(data)), 60, subsampling=0), (1, 1))
    assert scores[0] >= 0.98 and _combined(scores) >= 0.98, (
        scores
    )  # what the combined score alone lets through
    assert scores[1] < 0.95 <= scores[2], scores  # Cb damaged
    result = optimize_media(data, options)
    assert result.data == optimize_media(data, MediaOptions()).data and result.data is not None
    assert result.reason.startswith("optimized losslessly")
    assert float(result.details["ssim"]) == pytest.approx(_combined(scores), abs=1e-4)
    assert result.details["lossy"] == f"SSIM {scores[1]:.4f} of Cb below the chroma floor 0.95"
    assert _channels(result.details["ssim_channels"]) == pytest.approx(
        dict(zip(("Y", "Cb", "Cr"), scores, strict=True)), abs=1e-4
    )


@pytest.mark.parametrize("name", ["pillow/rgb.jpg", "pillow/app13-multiple.jpg"])
def test_a_colour_photo_at_quality_85_is_reencoded(name: str) -> None:
    """At the defaults (quality 85, floor 0.98, chroma floor 0.95) a colour photo is re-encoded: its chroma
    planes score under 0.98, which the worst-plane gate refused, and the combined score is over it.
    rgb.jpg is 4:4:4 (Y 0.987, Cb 0.979, Cr 0.977), app13-multiple.jpg 4:2:0 (Y 0.993, Cb 0.972, Cr 0.970)."""
    data = read(name)
    result = optimize_media(data, MediaOptions(lossy=True, reduce="always"))
    assert result.data is not None and result.reason.startswith("re-encoded at quality 85"), result.reason
    assert "lossy" not in result.details and len(result.data) < len(result_of(name).data or data)
    channels = _channels(result.details["ssim_channels"])
    assert list(channels) == ["Y", "Cb", "Cr"]
    assert 0.95 <= min(channels["Cb"], channels["Cr"]) < 0.98  # the worst plane: refused before
    combined = float(result.details["ssim"])
    assert combined >= 0.98 and combined == pytest.approx(_combined(list(channels.values())), abs=1e-5)
    assert result.reason.endswith(f"SSIM {combined:.4f} >= 0.98, Cb and Cr >= 0.95)")


def test_grey_jpegs_are_scored_on_their_one_channel() -> None:
    result = optimize_media(read("pillow/hopper_gray.jpg"), FLOOR_OFF)
    assert result.data is not None and Image.open(io.BytesIO(result.data)).mode == "L"
    (name, score) = str(result.details["ssim_channels"]).split()
    assert name == "Y" and float(score) == pytest.approx(float(result.details["ssim"]), abs=1e-5)
    grey = np.asarray(Image.open(io.BytesIO(read("pillow/hopper_gray.jpg"))), dtype=np.float64)
    after = np.asarray(Image.open(io.BytesIO(result.data)), dtype=np.float64)
    assert float(score) == pytest.approx(naive_ssim(grey, after), abs=1e-5)
    strict = optimize_media(read("pillow/hopper_gray.jpg"), dataclasses.replace(FLOOR_OFF, ssim_floor=0.9999))
    assert strict.details["lossy"] == f"SSIM {float(score):.4f} below the floor 0.9999"


@pytest.mark.parametrize(
    ("subsampling", "chroma", "box"),
    [(2, (2, 2), (0, 0, 128, 128)), (1, (2, 1), (3, 5, 64, 50)), (2, (2, 2), (3, 5, 64, 50))],
)
def test_plane_scores_match_the_formula_per_channel(
    subsampling: int, chroma: tuple[int, int], box: tuple[int, int, int, int]
) -> None:
    """Y at full resolution, Cb and Cr at the file's own chroma resolution (odd sizes: 61x45, the last block
    edge-replicated), float32 as the gate computes them, against the paper's formulas in float64."""
    image = _hopper().crop(box)
    data = _jpeg(image, subsampling=subsampling)
    worse = _jpeg_at(Image.open(io.BytesIO(data)), 30, subsampling=subsampling)
    scores = jpeg_ssim(Image.open(io.BytesIO(data)), Image.open(io.BytesIO(worse)), chroma)
    assert list(scores) == ["Y", "Cb", "Cr"] and max(scores.values()) < 0.99
    reference = _oracle_scores(data, worse, chroma)
    assert list(scores.values()) == pytest.approx(reference, abs=1e-6)  # float32: 1.5e-7 to 2.1e-7 off
    # float64 is off by the T.871 matrix's six decimals against the oracle's exact fractions (up to 4.5e-8)
    in_float64 = jpeg_ssim(Image.open(io.BytesIO(data)), Image.open(io.BytesIO(worse)), chroma, np.float64)
    assert list(in_float64.values()) == pytest.approx(reference, abs=1e-7)


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
