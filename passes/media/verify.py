"""Proving that a re-encoded image shows what the original showed (``passes.media``'s verification).

Lossless results are compared frame by frame as RGBA at 16 bits a sample (palettes expanded, transparency
applied), together with each frame's timing facts: the first difference rejects the candidate. Lossy JPEG
results are scored with the mean structural similarity of their luma (``ssim``), computed band by band so that
large images stay within bounded memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image

from .codec import BAND_PIXELS, DECODE_ERRORS, F64, U16, open_image, side_error

__all__ = ["compare_frames", "frames_rgba", "luma", "rgba16_from_pillow", "ssim", "ssim_bands"]


def compare_frames(
    original: Iterator[tuple[U16, object]], candidate: Iterator[tuple[U16, object]]
) -> str | None:
    """Walk two streams of (pixels, frame facts) in step; the first difference, or None."""
    number = 0
    for number, (left, right) in enumerate(zip(original, candidate, strict=False)):
        if left[1] != right[1]:
            return f"frame {number}: timing or geometry differs ({left[1]} != {right[1]})"
        if left[0].shape != right[0].shape or not np.array_equal(left[0], right[0]):
            return f"frame {number}: decoded pixels differ"
    rest_left = sum(1 for _ in original)
    rest_right = sum(1 for _ in candidate)
    if rest_left != rest_right:
        return f"frame count differs after frame {number}"
    return None


def rgba16_from_pillow(image: Image.Image) -> U16:
    """Any 8-bit Pillow image as RGBA at 16-bit scale (Pillow applies palettes and its transparency info)."""
    return np.asarray(image.convert("RGBA"), dtype=np.uint16) * np.uint16(257)


def frames_rgba(data: bytes, kind: str, side: str) -> Iterator[tuple[U16, object]]:
    """Every composited frame (as Pillow shows it) as RGBA at 16-bit scale."""
    try:
        image = open_image(data, kind)
        count = getattr(image, "n_frames", 1)
        for number in range(count):
            image.seek(number)
            image.load()
            yield rgba16_from_pillow(image), None
    except DECODE_ERRORS as error:
        raise side_error(side, kind.upper(), error) from error


def luma(image: Image.Image) -> Callable[[int, int], F64]:
    """Rows [top, bottom) of the image's luma (ITU-R BT.601 weights), read band by band."""

    def rows(top: int, bottom: int) -> F64:
        band = np.asarray(image.crop((0, top, image.width, bottom)), dtype=np.float64)
        if band.ndim == 2:
            return band
        return band[..., 0] * 0.299 + band[..., 1] * 0.587 + band[..., 2] * 0.114

    return rows


def _box_mean(values: F64, window: int) -> F64:
    """Means over every ``window``-square window lying fully inside ``values`` (summed-area table)."""
    table = np.zeros((values.shape[0] + 1, values.shape[1] + 1))
    table[1:, 1:] = values.cumsum(axis=0).cumsum(axis=1)
    sums = (
        table[window:, window:]
        - table[:-window, window:]
        - table[window:, :-window]
        + table[:-window, :-window]
    )
    result: F64 = sums / float(window * window)
    return result


def ssim(first: F64, second: F64, window: int = 7) -> float:
    """Mean structural similarity (Wang, Bovik, Sheikh, Simoncelli 2004) of two greyscale images in 0..255.

    As scikit-image's defaults: a uniform 7x7 window, sample covariances, K1 = 0.01, K2 = 0.03, L = 255, the
    mean taken over the windows lying fully inside the image.
    """
    if first.ndim != 2 or first.shape != second.shape:
        raise ValueError(f"ssim: needs two 2-D arrays of one shape, not {first.shape} and {second.shape}")
    height, width = first.shape
    return ssim_bands(lambda t, b: first[t:b], lambda t, b: second[t:b], height, width, window)


def ssim_bands(
    first: Callable[[int, int], F64],
    second: Callable[[int, int], F64],
    height: int,
    width: int,
    window: int = 7,
) -> float:
    """``ssim`` computed band by band from row readers (bounded memory on large images)."""
    window = max(1, min(window, height, width))
    count = window * window
    norm = count / (count - 1) if count > 1 else 1.0
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    band = max(window, BAND_PIXELS // max(width, 1))
    total, windows = 0.0, 0
    for top in range(0, height - window + 1, band):
        bottom = min(height, top + band + window - 1)
        x, y = first(top, bottom), second(top, bottom)
        mx, my = _box_mean(x, window), _box_mean(y, window)
        vx = (_box_mean(x * x, window) - mx * mx) * norm
        vy = (_box_mean(y * y, window) - my * my) * norm
        vxy = (_box_mean(x * y, window) - mx * my) * norm
        score = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        total += float(score.sum())
        windows += score.size
    return total / windows
