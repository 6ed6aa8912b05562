"""The media pass's cost model: how hard oxipng works on each PNG, and which PNGs are not worth the work.

Effort is chosen per file from the file's own header, never from a clock, so the output bytes stay the same on
any machine and under any load. The cost of a file is estimated from the bytes of its decoded rows (``raw_bytes``:
height x (1 + width x channels x bit depth / 8), times the frames of an APNG): an effort (an oxipng preset and
its deflater, ``PngEffort``) costs about ``fixed + per_byte x raw_bytes`` seconds on one core of the reference
machine (2 cores; ``bench/bench_media.py --cost`` measures them again). The time per byte varies about 4x with
the content, so the estimate is a scale, not a promise.

- ``--media-png-level auto`` (the default) starts small files (decoded rows under 256 KiB) at oxipng's level 2
  with its own deflater (libdeflate 11) and larger ones at level 2 with libdeflate 12. On a quarter of the
  machine's PNGs (bench/media_cost.py) that keeps 96.8% of level 4's savings in 29% of its oxipng time; level 2
  alone would keep 93.9% in 18%, but then some fixtures end up larger than ``optipng -o2 -nx`` makes them
  (tests/passes/media/test_png.py): libdeflate 12 on the large files is what keeps the pass at least as small
  as optipng, file by file. A level 0-6 starts at that preset, as oxipng defines it.
- ``--media-budget SECONDS`` (default 5): a file whose estimate at its starting effort is over the budget steps
  down the ladder (``LADDER``, dearest first) to the first effort within it, or the cheapest; 0 turns the
  budget off (``--media-png-level 4 --media-budget 0`` is the pass as it was before the cost model). The
  estimate is an average: a flat 2400x2000 RGB fixture estimated at 2.1 s takes 0.7 s, which is why the default
  is 5 s, not 2 (at 2 that file came out 9% larger than ``optipng -o2 -nx`` makes it); at 5 s an RGBA image steps down from about 8 Mpx on.
- ``--media-min-gain BYTES`` (default 0: off): a PNG whose expected gain (``expected_gain``: a share of its
  IDAT bytes set by the level its zlib header records and by its compression ratio) is under BYTES is left alone
  without being decoded or recompressed. A rough guide: rank correlation 0.86 with the real gain.

oxipng hands each candidate image to its rayon pool and then busy-waits on the calling thread until the pool
has taken it (3-4 ms a call on a busy core). Running the calls from a helper thread at ``SCHED_IDLE`` priority
hid that spin (the pass 25% faster on small icons) but starved the pass whenever other programs kept the
cores busy: 400 icons took 120 s instead of 3.3 s beside two busy loops on 2 cores. The calls stay inline.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .codec import CodecOptions
    from .png import PngInfo

__all__ = [
    "AUTO_LARGE",
    "LADDER",
    "PngEffort",
    "estimated_seconds",
    "expected_gain",
    "png_effort",
    "raw_bytes",
]


_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
AUTO_LARGE = 256 << 10  # decoded rows from which the default effort uses libdeflate 12


@dataclass(frozen=True)
class PngEffort:
    """An oxipng preset and its deflater, with its estimated cost on one core."""

    level: int
    deflate: int | None  # libdeflate's level; None: the preset's own
    fixed: float  # seconds a call
    per_byte: float  # seconds a byte of decoded rows

    def seconds(self, raw: int) -> float:
        return self.fixed + self.per_byte * raw

    def deflater(self) -> dict[str, Any]:
        """oxipng's ``deflate`` argument: none for the preset's own (level 4 with its own: the pass before 15)."""
        import oxipng

        return {} if self.deflate is None else {"deflate": oxipng.Deflaters.libdeflater(self.deflate)}

    def describe(self) -> str:
        return f"level {self.level}" + (f", libdeflate {self.deflate}" if self.deflate is not None else "")


# Dearest first. Fitted with bench/media_cost.py --only fit on the machine's 4,260 PNGs (one core, load 2-3.5):
# the median call on files with decoded rows under 16 KiB, and the time per byte over files of 256 KiB and more.
LADDER = (
    PngEffort(6, None, 0.0089, 2.9e-6),
    PngEffort(5, None, 0.0062, 1.5e-6),
    PngEffort(4, None, 0.0046, 0.60e-6),
    PngEffort(3, None, 0.0039, 0.33e-6),
    PngEffort(2, 12, 0.0030, 0.145e-6),
    PngEffort(2, None, 0.0020, 0.090e-6),
    PngEffort(1, None, 0.0009, 0.035e-6),
    PngEffort(0, None, 0.00075, 0.017e-6),
)
_AUTO_SMALL, _AUTO_LARGE = LADDER[5], LADDER[4]


def _rows(width: int, height: int, depth: int, colour: int) -> int:
    return height * (1 + (width * _CHANNELS.get(colour, 4) * depth + 7) // 8)


def raw_bytes(info: PngInfo) -> int:
    """The bytes of the decoded rows (filter byte included) of every frame: what oxipng filters and deflates."""
    return _rows(info.width, info.height, info.bit_depth, info.colour_type) * max(info.frames, 1)


def png_effort(info: PngInfo, options: CodecOptions) -> PngEffort:
    """The effort for this file: the starting one (``--media-png-level``, or by size for ``auto``), stepped
    down the ladder while its estimate is over ``--media-budget`` (unless the budget is 0)."""
    return _effort(raw_bytes(info), options)


def estimated_seconds(head: bytes, size: int, options: CodecOptions) -> float:
    """What optimizing a file is expected to take, from its first 26 bytes (a PNG's IHDR, one frame counted) or,
    for the other formats, its size: the pass hands out its work dearest first, so that no worker is left with
    the large files at the end while the other waits."""
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR" and len(head) >= 26:
        width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
        raw = _rows(width, height, depth, colour)
        return _effort(raw, options).seconds(raw)
    return size * 2e-7  # MozJPEG's lossless transcoding and Pillow's re-encoding: a few MB a second


def _effort(raw: int, options: CodecOptions) -> PngEffort:
    if options.png_level == "auto":
        start = _AUTO_LARGE if raw >= AUTO_LARGE else _AUTO_SMALL
    else:
        start = next(e for e in LADDER if e.level == options.png_level and e.deflate is None)
    if options.budget <= 0:
        return start
    for effort in LADDER[LADDER.index(start) :]:
        if effort.seconds(raw) <= options.budget:
            return effort
    return LADDER[-1]


# Share of the IDAT bytes the default effort saves, by the FLEVEL of the zlib header (0: fastest, 1: fast,
# 2: default, 3: maximum) and, for 1 and 2, by how well the data is already compressed (IDAT / decoded rows under
# 0.2 or not): fitted on the machine's PNGs (bench/media_cost.py --only fit). A FLEVEL of 0 there is mostly
# files an optimizer already wrote. Rank correlation with the gain: 0.86; at 128 B it skips 53% of the files
# and loses 7% of the savings (the fit's own files).
_GAIN_FASTEST, _GAIN_MAXIMUM, _GAIN_DENSE, _GAIN_LOOSE = 0.03, 0.04, 0.33, 0.20
_CHUNK = 12  # length, type and CRC of a chunk: merged IDAT chunks save this each


def expected_gain(info: PngInfo) -> int:
    """Bytes the default effort is expected to save, read from the chunk list alone: a share of the IDAT data
    set by its zlib header's FLEVEL and its compression ratio, and the framing of IDAT chunks beyond the first."""
    idat = [c.body for c in info.chunks if c.type == b"IDAT"]
    data = sum(len(body) for body in idat)
    flevel = idat[0][1] >> 6 if len(idat[0]) >= 2 else 2
    if flevel == 0:
        share = _GAIN_FASTEST
    elif flevel == 3:
        share = _GAIN_MAXIMUM
    else:
        share = _GAIN_DENSE if data < 0.2 * raw_bytes(info) else _GAIN_LOOSE
    return int(data * share) + _CHUNK * (len(idat) - 1)
