"""``passes.media.gif``: extensions Pillow cannot write, and a verified smaller re-encoding."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from passes.media import MediaOptions
from passes.media import optimize as optimize_media
from tests.passes.media.oracles import pillow_frames, read, result_of


def test_gif_with_xmp_is_left_alone_unless_stripping() -> None:
    assert "XMP" in result_of("pillow/transparent.gif").reason
    stripped = result_of("pillow/transparent.gif", MediaOptions(strip_metadata=True))
    if stripped.data is not None:
        assert pillow_frames(stripped.data)[0] == pillow_frames(read("pillow/transparent.gif"))[0]


def test_gif_palette_is_shrunk_only_when_reductions_are_allowed() -> None:
    """A GIF written with a 256-entry palette for 3 colours: Pillow's optimized palette is smaller, but it
    renumbers the indices, so by default the file keeps its palette (and is then no smaller)."""
    canvas = Image.new("P", (64, 48))
    canvas.putpalette([v for i in range(256) for v in (i, 255 - i, (i * 7) % 256)])
    canvas.paste(5, (0, 0, 32, 48))
    canvas.paste(200, (10, 10, 50, 30))
    buffer = io.BytesIO()
    canvas.save(buffer, "GIF", optimize=False, interlace=False)
    data = buffer.getvalue()
    native = optimize_media(data, MediaOptions())
    assert native.data is None and "not smaller" in native.reason
    result = optimize_media(data, MediaOptions(reduce="always"))
    assert result.data is not None and len(result.data) < len(data), result.reason
    assert pillow_frames(result.data) == pillow_frames(data)
    assert str(result.details["reduction"]).startswith("frame 0: palette changed (256 -> ")
    assert np.asarray(Image.open(io.BytesIO(result.data))).max() < 5  # indices renumbered
