"""``passes.media.cost``: the effort chosen from a file's size, the budget's step-down, the min-gain skip, the
old bytes with explicit flags, determinism, and every effort's result proven pixel-identical."""

from __future__ import annotations

import io
import math
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from optimizer.cli import build_parser, main, options_from_args
from optimizer.errors import UsageError
from passes.media import Media, MediaOptions
from passes.media import optimize as optimize_media
from passes.media.cost import AUTO_LARGE, LADDER, expected_gain, png_effort, raw_bytes
from passes.media.png import PngChunk, PngInfo, png_structure
from tests.passes import kit
from tests.passes.media.oracles import read, reference_png


def info(width: int, height: int, depth: int = 8, colour: int = 6, frames: int = 0) -> PngInfo:
    """The header facts the cost model reads (no pixels behind them)."""
    ihdr = PngChunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
    return PngInfo(width, height, depth, colour, 0, (ihdr, PngChunk(b"IDAT", b"x\x9c")), frames, 0, 0)


def noisy_png(width: int, height: int, level: int, seed: int = 1) -> bytes:
    """An RGB PNG of smooth noise, written by Pillow at zlib ``level`` (compressible, not trivially)."""
    rng = np.random.default_rng(seed)
    pixels = np.cumsum(rng.integers(0, 3, size=(height, width, 3)), axis=1).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, "PNG", compress_level=level)
    return out.getvalue()


def test_raw_bytes_are_the_decoded_rows_of_every_frame() -> None:
    assert raw_bytes(info(10, 4)) == 4 * (1 + 40)  # RGBA 8-bit
    assert raw_bytes(info(9, 3, depth=1, colour=0)) == 3 * (1 + 2)  # 9 one-bit samples: 2 bytes a row
    assert raw_bytes(info(5, 2, depth=16, colour=2)) == 2 * (1 + 30)
    assert raw_bytes(info(10, 4, frames=3)) == 3 * 4 * 41


def test_the_default_effort_grows_with_the_file() -> None:
    options = MediaOptions()
    small, large = info(64, 64), info(512, 512)
    assert raw_bytes(small) < AUTO_LARGE <= raw_bytes(large)
    assert (png_effort(small, options).level, png_effort(small, options).deflate) == (2, None)
    assert (png_effort(large, options).level, png_effort(large, options).deflate) == (2, 12)
    assert png_effort(info(200, 200), MediaOptions(png_level=5)).level == 5  # an explicit level is the start


def test_the_ladder_is_dearest_first() -> None:
    for raw in (1, 10_000, 10_000_000):
        costs = [effort.seconds(raw) for effort in LADDER]
        assert costs == sorted(costs, reverse=True)


def test_a_file_over_the_budget_steps_down_to_the_first_effort_within_it() -> None:
    big = info(4000, 3000)  # 48 MB of rows: over 5 s at level 2 + libdeflate 12
    raw = raw_bytes(big)
    chosen = png_effort(big, MediaOptions())
    start = LADDER.index(png_effort(big, MediaOptions(budget=0)))
    at = LADDER.index(chosen)
    budget = MediaOptions().budget
    assert at > start and chosen.seconds(raw) <= budget
    assert all(effort.seconds(raw) > budget for effort in LADDER[start:at])
    assert png_effort(big, MediaOptions(budget=1e-9)) == LADDER[-1]  # nothing fits: the cheapest
    assert png_effort(big, MediaOptions(png_level=4, budget=0)).level == 4  # 0: no budget
    assert (
        png_effort(info(16, 16), MediaOptions(png_level=4)).level == 4
    )  # a small file stays where it starts


def test_the_budget_changes_effort_not_pixels() -> None:
    data = noisy_png(300, 300, 9)
    full = optimize_media(data, MediaOptions(png_level=3, budget=0))
    cheap = optimize_media(data, MediaOptions(png_level=3, budget=1e-6))
    assert full.data is not None and cheap.data is not None
    assert "level 3" in str(full.details["engine"]) and "level 0" in str(cheap.details["engine"])
    assert np.array_equal(reference_png(full.data), reference_png(data))
    assert np.array_equal(reference_png(cheap.data), reference_png(data))


@pytest.mark.parametrize("level", ["auto", 0, 1, 2, 3, 4])
@pytest.mark.parametrize("name", ["pillow/hopper.png", "pillow/rgb_trns.png", "pngsuite/basn3p08.png"])
def test_every_effort_is_verified_pixel_identical(name: str, level: int | str) -> None:
    data = read(name)
    for reduce in ("never", "always"):
        result = optimize_media(data, MediaOptions(png_level=level, budget=0, reduce=reduce))
        if result.data is not None:
            assert len(result.data) < len(data)
            assert np.array_equal(reference_png(result.data), reference_png(data))


def test_explicit_level_4_without_budget_gives_the_bytes_of_before() -> None:
    """``--media-png-level 4 --media-budget 0``: oxipng's level 4 with its own deflater, as the pass called it
    before the cost model, byte for byte."""
    import oxipng

    flags = {"bit_depth_reduction", "color_type_reduction", "palette_reduction", "grayscale_reduction"}
    for name in ("pillow/hopper.png", "pillow/uncompressed_rgb.png", "pngsuite/basn3p08.png"):
        data = read(name)
        for reduce in (False, True):
            result = optimize_media(
                data, MediaOptions(png_level=4, budget=0, reduce="always" if reduce else "never")
            )
            before = oxipng.optimize_from_memory(
                data,
                level=4,
                interlace=None,
                strip=oxipng.StripChunks.none(),
                optimize_alpha=False,
                scale_16=False,
                fix_errors=False,
                **dict.fromkeys(flags, reduce),
            )
            assert result.data == (before if len(before) < len(data) else None), name


def test_the_default_output_is_reproducible() -> None:
    data = noisy_png(700, 400, 6)  # over AUTO_LARGE: libdeflate 12
    first, second = optimize_media(data, MediaOptions()), optimize_media(data, MediaOptions())
    assert first.data is not None and first.data == second.data
    assert first.details["engine"] == second.details["engine"] and "libdeflate 12" in str(
        first.details["engine"]
    )


def test_effort_and_skips_are_the_same_with_one_and_two_workers(tmp_path: Path) -> None:
    files: dict[str, bytes | str] = {f"www/{n}.png": noisy_png(120 + 40 * n, 90, n % 10, n) for n in range(6)}
    files["www/big.png"] = noisy_png(600, 500, 1)
    gains = sorted(expected_gain(png_structure(data, 1 << 26)) for data in files.values())  # type: ignore[arg-type]
    options = MediaOptions(budget=0.05, min_gain=gains[len(gains) // 2])  # about half are skipped
    runs = []
    for workers in (1, 2):
        workdir = tmp_path / str(workers)
        workdir.mkdir()
        ctx = kit.run_pass(
            Media(options), kit.make_context(workdir, [files], Media.name, frozenset(), workers)
        )
        outcomes = {f.path: (f.action, f.reason, f.details.get("engine")) for f in ctx.report.findings}
        digests = {c.visible_path: c.content.sha256 for c in ctx.changes if c.content is not None}
        runs.append((outcomes, digests))
    assert runs[0] == runs[1]
    outcomes, digests = runs[0]
    big = png_structure(files["www/big.png"], 1 << 26)  # type: ignore[arg-type]
    stepped = png_effort(big, options)
    assert stepped != png_effort(big, MediaOptions(budget=0))  # the budget stepped it down
    assert str(outcomes["www/big.png"][2]).endswith(stepped.describe())
    assert any("--media-min-gain" in reason for _, reason, _ in outcomes.values())
    assert "--media-min-gain" not in outcomes["www/big.png"][1]
    assert digests


def test_min_gain_skips_files_expected_to_gain_little() -> None:
    loose = noisy_png(200, 200, 6)  # zlib's default level, as most tools write
    tight = optimize_media(loose, MediaOptions()).data  # the same image, already optimized
    assert tight is not None
    assert expected_gain(png_structure(loose, 1 << 26)) > expected_gain(png_structure(tight, 1 << 26))
    threshold = expected_gain(png_structure(tight, 1 << 26)) + 1
    skipped = optimize_media(tight, MediaOptions(min_gain=threshold))
    assert skipped.data is None and "--media-min-gain" in skipped.reason and not skipped.warning
    assert optimize_media(loose, MediaOptions(min_gain=threshold)).data is not None
    assert "--media-min-gain" not in optimize_media(tight, MediaOptions()).reason  # off by default


def test_min_gain_counts_idat_framing() -> None:
    one = info(8, 8)
    split = PngInfo(8, 8, 8, 6, 0, (*one.chunks, PngChunk(b"IDAT", b""), PngChunk(b"IDAT", b"")), 0, 0, 0)
    assert expected_gain(split) == expected_gain(one) + 24


@pytest.mark.parametrize(
    "bad",
    [
        {"png_level": 7},
        {"png_level": -1},
        {"png_level": "fast"},
        {"png_level": True},
        {"budget": -1.0},
        {"budget": math.inf},
        {"budget": math.nan},
        {"min_gain": -5},
    ],
)
def test_bad_values_are_usage_errors(bad: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        MediaOptions(**bad)  # type: ignore[arg-type]


def test_cli_flags_reach_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(
        ["in.tar", "out.tar", "--media-png-level", "4", "--media-budget", "0", "--media-min-gain", "300"]
    )
    assert options_from_args(args).options_for(Media) == MediaOptions(png_level=4, budget=0.0, min_gain=300)
    auto = build_parser().parse_args(["in.tar", "out.tar", "--media-png-level", "auto"])
    assert options_from_args(auto).options_for(Media).png_level == "auto"
    assert main(["in.tar", "out.tar", "--media-png-level", "fast"]) == 2
    assert "--media-png-level must be auto or 0 to 6" in capsys.readouterr().err
