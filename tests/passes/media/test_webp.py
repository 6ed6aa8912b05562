"""``passes.media.webp``: animations stay animated and lossless; lossy WebP is left alone."""

from __future__ import annotations

from tests.passes.media.oracles import pillow_frames, read, result_of, riff_chunks


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
