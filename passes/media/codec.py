"""What every format of ``passes.media`` shares: the options it reads, the result, the errors, the guards.

Everything in ``passes.media`` is a pure function of a file's bytes and the options, so the pass can run it in
worker processes. Each format module (``png``, ``jpeg``, ``gif``, ``webp``) takes three steps:

1. A structure walker (PNG chunks and CRCs, JPEG marker segments and entropy-coded data, GIF blocks, RIFF
   chunks) checks that the file is complete and that its pixel count (every frame counted) is under the cap
   *before* any decoder sees it. Truncated, corrupt and oversized files stop here: ``Unreadable``, and the pass
   leaves them untouched with a warning. Pillow's own bomb check is tightened to the same cap while we decode
   (``run_guarded``).
2. An encoder makes a candidate: oxipng (PNG; Pillow when oxipng is absent or fails), MozJPEG's lossless
   transcoder (JPEG; the original's metadata segments are put back verbatim), Pillow (GIF, lossless WebP).
3. The candidate is kept only if it is smaller and verification passes (``passes.media.verify``): every frame
   decodes to the same RGBA, frame count, durations and loop count are the same, and the metadata the policy
   keeps is still there. Otherwise the result says why and carries no bytes (``Rejected``).

The native form (bit depth, colour type, channels, palette entries in their order) is kept unless the pass allows
reductions for the file (``reduces``): a program reading samples (a heightmap loader, a segmentation mask's class
ids, ``numpy.asarray(Image.open(p))``) must get what it got before, not only a browser. A native result is also
verified by decoding both files to their native mode and comparing the samples (``verify.compare_native``).
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFile
from PIL import __version__ as PILLOW_VERSION

__all__ = [
    "BAND_PIXELS",
    "DECODE_ERRORS",
    "FORMATS",
    "PILLOW_VERSION",
    "PNG_SIGNATURE",
    "U16",
    "CodecOptions",
    "MediaResult",
    "Rejected",
    "Unreadable",
    "check_pixels",
    "engine_versions",
    "exif_orientation",
    "inflate",
    "open_image",
    "pillow_frames",
    "reduces",
    "reencoded",
    "run_guarded",
    "side_error",
    "sniff",
]

FORMATS = ("png", "jpeg", "gif", "webp")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BAND_PIXELS = 1 << 22  # compare and score images in bands of about this many pixels (bounded memory)

U16 = npt.NDArray[np.unsignedinteger[Any]]  # uint16 at run time


class CodecOptions(Protocol):
    """What the codecs read from the pass's options (``passes.media.MediaOptions``)."""

    @property
    def strip_metadata(self) -> bool: ...
    @property
    def png_interlace(self) -> str: ...  # "keep" or "off"
    @property
    def png_level(self) -> int | str: ...  # 0-6 or "auto" (passes.media.cost)
    @property
    def budget(self) -> float: ...
    @property
    def min_gain(self) -> int: ...
    @property
    def png_engine(self) -> str: ...  # "auto", "oxipng" or "pillow"
    @property
    def lossy(self) -> bool: ...
    @property
    def jpeg_quality(self) -> int: ...
    @property
    def ssim_floor(self) -> float: ...
    @property
    def ssim_chroma_floor(self) -> float: ...
    @property
    def max_pixels(self) -> int: ...
    @property
    def reduce(self) -> str: ...  # "always": reductions allowed; anything else keeps the native form


def reduces(options: CodecOptions) -> bool:
    """May the encoders change how samples are stored (bit depth, colour type, channels, palette order)?

    The pass decides per file (``--media-reduce``) and hands the codecs "always" or "never"; its default, "web",
    reaching a codec directly (a library call on bytes, with no path) keeps the native form."""
    return options.reduce == "always"


@dataclass(frozen=True)
class MediaResult:
    """The outcome for one file: verified smaller bytes (``data``), or None and the reason the file stays."""

    format: str
    data: bytes | None = None
    reason: str = ""
    warning: bool = False  # corrupt, truncated or oversized input: the pass warns
    details: Mapping[str, str | int | float] = field(default_factory=dict)


class Unreadable(Exception):
    """The input itself is corrupt, truncated, hostile or over the pixel cap."""


class Rejected(Exception):
    """A candidate failed (encoder error or verification): the original stays."""


DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    struct.error,
    zlib.error,
    MemoryError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)


def sniff(head: bytes) -> str | None:
    """The format named by a file's first bytes (12 are enough), or None."""
    if head.startswith(PNG_SIGNATURE):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


@lru_cache(maxsize=1)
def engine_versions() -> dict[str, str]:
    """Versions of the encoders whose output bytes we promise are reproducible."""
    from importlib import metadata

    from PIL import features

    versions = {"Pillow": PILLOW_VERSION}
    for name, dist in (("oxipng", "pyoxipng"), ("mozjpeg", "mozjpeg-lossless-optimization")):
        try:
            versions[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    for codec, label in (("jpg", "libjpeg"), ("zlib", "zlib"), ("webp", "libwebp")):
        versions[label] = str(features.version(codec) or "absent")
    return versions


@contextmanager
def _limits(max_pixels: int) -> Iterator[None]:
    """Pillow's decompression-bomb check at our cap (a warning is an error here), truncated files refused."""
    saved = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    Image.MAX_IMAGE_PIXELS = max_pixels
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved


def run_guarded(kind: str, options: CodecOptions, body: Callable[[], MediaResult]) -> MediaResult:
    try:
        with _limits(options.max_pixels):
            return body()
    except Unreadable as error:
        return MediaResult(kind, None, str(error), warning=True)
    except Rejected as error:
        return MediaResult(kind, None, str(error))


def check_pixels(kind: str, width: int, height: int, frames: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise Unreadable(f"corrupt {kind}: image size {width}x{height}")
    total = width * height * max(frames, 1)
    if total > max_pixels:
        shape = f"{width}x{height}" + (f" x {frames} frames" if frames > 1 else "")
        raise Unreadable(
            f"{kind} of {shape} = {total} pixels is over the cap of {max_pixels} (--media-max-pixels)"
        )


def open_image(data: bytes, kind: str) -> ImageFile.ImageFile:
    return Image.open(io.BytesIO(data), formats=[kind.upper()])


def side_error(side: str, kind: str, error: BaseException) -> Exception:
    message = f"{kind}: {type(error).__name__}: {error}"
    if side == "original":
        return Unreadable(f"cannot decode {message}")
    return Rejected(f"optimized {message}")


def exif_orientation(exif: bytes) -> int | None:
    """The EXIF orientation tag, 1 when absent, None when the block cannot be read."""
    try:
        parsed = Image.Exif()
        parsed.load(exif)
        value = parsed.get(0x0112, 1)
        return int(value) if isinstance(value, int) else None
    except Exception:  # any parse failure means "unknown": we then keep the block
        return None


def inflate(body: bytes, limit: int, what: str) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(body, limit)
    except zlib.error as error:
        raise Unreadable(f"corrupt {what}: {error}") from error
    if inflater.unconsumed_tail:
        raise Unreadable(f"{what} inflates to more than {limit} bytes")
    return out


def pillow_frames(data: bytes, kind: str) -> list[Image.Image]:
    image = open_image(data, kind)
    frames = []
    for number in range(getattr(image, "n_frames", 1)):
        image.seek(number)
        image.load()
        frames.append(image.copy())
    return frames


def reencoded(
    kind: str,
    data: bytes,
    candidate: bytes,
    engine: str,
    check: Callable[[], str | None],
    reduction: Callable[[], str | None] = lambda: None,
) -> MediaResult:
    """The result of a whole-file re-encoding: kept when smaller and ``check`` (verification) finds nothing;
    ``reduction`` says how a kept result stores its samples differently, if it does."""
    if len(candidate) >= len(data):
        return MediaResult(kind, None, f"{engine}: not smaller ({len(candidate)} bytes)")
    try:
        problem = check()
    except (Unreadable, Rejected) as error:
        problem = str(error)
    if problem is not None:
        return MediaResult(kind, None, f"{engine}: {problem}")
    details = {"engine": engine}
    change = reduction()
    if change is not None:
        details["reduction"] = change
    return MediaResult(
        kind, candidate, f"re-encoded losslessly ({engine}), every frame verified", details=details
    )
