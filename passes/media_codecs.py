"""Re-encoding one image file, and proving that the result shows the same pixels (private to ``passes.media``).

Everything here is a pure function of the file's bytes and the options, so the media pass can run ``optimize``
in worker processes. For each format (PNG, JPEG, GIF, WebP) there are three steps:

1. A structure walker (PNG chunks and CRCs, JPEG marker segments and entropy-coded data, GIF blocks, RIFF
   chunks) checks that the file is complete and that its pixel count (every frame counted) is under the cap
   *before* any decoder sees it. Truncated, corrupt and oversized files stop here: ``Unreadable``, and the pass
   leaves them untouched with a warning. Pillow's own bomb check is tightened to the same cap while we decode.
2. An encoder makes a candidate: oxipng (PNG; Pillow when oxipng is absent or fails), MozJPEG's lossless
   transcoder (JPEG; the original's metadata segments are put back verbatim), Pillow (GIF, lossless WebP).
3. The candidate is kept only if it is smaller and verification passes: every frame decodes to the same RGBA
   (palettes expanded, transparency keys applied, 16-bit samples compared at full precision), frame count,
   durations and loop count are the same, and the metadata the policy keeps is still there. Otherwise the
   result says why and carries no bytes.

Lossy JPEG re-encoding (opt in) keeps a candidate only when the original's estimated quality is above the
target and the structural similarity of the luma stays at or above the floor (``ssim``).
"""

from __future__ import annotations

import io
import multiprocessing
import os
import struct
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFile, JpegImagePlugin
from PIL import __version__ as PILLOW_VERSION

__all__ = [
    "FORMATS",
    "CodecOptions",
    "MediaResult",
    "engine_versions",
    "estimate_jpeg_quality",
    "optimize",
    "optimize_gif",
    "optimize_jpeg",
    "optimize_png",
    "optimize_webp",
    "png_pixels",
    "png_rgba16",
    "sniff",
    "ssim",
]

FORMATS = ("png", "jpeg", "gif", "webp")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ICC_LIMIT = 32 << 20  # larger "profiles" are bombs, not colour information
_JPEG_SCAN_LIMIT = 500  # as libjpeg-turbo's fuzzers: more scans than this is a decoding-time bomb
_BAND_PIXELS = 1 << 22  # compare and score images in bands of about this many pixels (bounded memory)

U16 = npt.NDArray[np.unsignedinteger[Any]]  # uint16 at run time
F64 = npt.NDArray[np.float64]


class CodecOptions(Protocol):
    """What the codecs read from the pass's options (``passes.media.MediaOptions``)."""

    @property
    def strip_metadata(self) -> bool: ...
    @property
    def png_interlace(self) -> str: ...  # "keep" or "off"
    @property
    def png_level(self) -> int: ...
    @property
    def png_engine(self) -> str: ...  # "auto", "oxipng" or "pillow"
    @property
    def lossy(self) -> bool: ...
    @property
    def jpeg_quality(self) -> int: ...
    @property
    def ssim_floor(self) -> float: ...
    @property
    def max_pixels(self) -> int: ...


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


_DECODE_ERRORS = (
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


def optimize(data: bytes, options: CodecOptions) -> MediaResult:
    """The worker entry point: sniff, then the format's optimizer. Never raises for bad input."""
    kind = sniff(data[:16])
    if kind == "png":
        return optimize_png(data, options)
    if kind == "jpeg":
        return optimize_jpeg(data, options)
    if kind == "gif":
        return optimize_gif(data, options)
    if kind == "webp":
        return optimize_webp(data, options)
    return MediaResult("", None, "not a PNG, JPEG, GIF or WebP file")


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


def _run(kind: str, options: CodecOptions, body: Callable[[], MediaResult]) -> MediaResult:
    try:
        with _limits(options.max_pixels):
            return body()
    except Unreadable as error:
        return MediaResult(kind, None, str(error), warning=True)
    except Rejected as error:
        return MediaResult(kind, None, str(error))


def _check_pixels(kind: str, width: int, height: int, frames: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise Unreadable(f"corrupt {kind}: image size {width}x{height}")
    total = width * height * max(frames, 1)
    if total > max_pixels:
        shape = f"{width}x{height}" + (f" x {frames} frames" if frames > 1 else "")
        raise Unreadable(
            f"{kind} of {shape} = {total} pixels is over the cap of {max_pixels} (--media-max-pixels)"
        )


def _open(data: bytes, kind: str) -> ImageFile.ImageFile:
    return Image.open(io.BytesIO(data), formats=[kind.upper()])


def _side_error(side: str, kind: str, error: BaseException) -> Exception:
    message = f"{kind}: {type(error).__name__}: {error}"
    if side == "original":
        return Unreadable(f"cannot decode {message}")
    return Rejected(f"optimized {message}")


def _compare_frames(
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


def _rgba16_from_pillow(image: Image.Image) -> U16:
    """Any 8-bit Pillow image as RGBA at 16-bit scale (Pillow applies palettes and its transparency info)."""
    return np.asarray(image.convert("RGBA"), dtype=np.uint16) * np.uint16(257)


def _exif_orientation(exif: bytes) -> int | None:
    """The EXIF orientation tag, 1 when absent, None when the block cannot be read."""
    try:
        parsed = Image.Exif()
        parsed.load(exif)
        value = parsed.get(0x0112, 1)
        return int(value) if isinstance(value, int) else None
    except Exception:  # any parse failure means "unknown": we then keep the block
        return None


def _inflate(body: bytes, limit: int, what: str) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(body, limit)
    except zlib.error as error:
        raise Unreadable(f"corrupt {what}: {error}") from error
    if inflater.unconsumed_tail:
        raise Unreadable(f"{what} inflates to more than {limit} bytes")
    return out


# ---------------------------------------------------------------------------------------------------------- PNG

_PNG_MODES = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_PNG_COLOUR = (b"iCCP", b"gAMA", b"cHRM", b"sRGB", b"cICP", b"mDCV", b"cLLI")  # kept always
_PNG_TEXT = (b"tEXt", b"zTXt", b"iTXt", b"tIME")  # kept unless --media-strip-metadata
# Ancillary chunks an optimizer legitimately rewrites when it changes the colour encoding (checked by pixels).
_PNG_ENCODING = (b"tRNS", b"bKGD", b"sBIT", b"hIST", b"sPLT", b"acTL", b"fcTL", b"fdAT")
_PNG_CRITICAL = (b"IHDR", b"PLTE", b"IDAT", b"IEND")


def _pillow_mode(colour: int, depth: int) -> tuple[str, ...]:
    """The modes Pillow decodes a still PNG of this colour type and bit depth to (as ``_png_images`` asks)."""
    if colour == 0:
        return ("I;16",) if depth == 16 else ("1", "L")
    return {2: ("RGB",), 3: ("P",), 4: ("RGBA",) if depth == 16 else ("LA",), 6: ("RGBA",)}[colour]


@dataclass(frozen=True)
class PngChunk:
    type: bytes
    body: bytes


@dataclass(frozen=True)
class PngInfo:
    width: int
    height: int
    bit_depth: int
    colour_type: int
    interlace: int
    chunks: tuple[PngChunk, ...]
    frames: int  # acTL frame count; 0 for a still image
    plays: int
    trailing: int  # bytes after IEND

    def first(self, ctype: bytes) -> bytes | None:
        return next((c.body for c in self.chunks if c.type == ctype), None)

    def all(self, ctype: bytes) -> list[bytes]:
        return [c.body for c in self.chunks if c.type == ctype]


def png_structure(data: bytes, max_pixels: int) -> PngInfo:
    """Walk the chunks (CRCs checked); ``Unreadable`` for anything truncated, corrupt or over the cap."""
    if not data.startswith(PNG_SIGNATURE):
        raise Unreadable("not a PNG file")
    chunks: list[PngChunk] = []
    pos = len(PNG_SIGNATURE)
    while True:
        if pos + 12 > len(data):
            raise Unreadable(f"truncated PNG: no IEND chunk ({len(data)} bytes)")
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 12 + length
        if not ctype.isalpha() or length > 0x7FFFFFFF:
            raise Unreadable(f"corrupt PNG: bad chunk header at offset {pos}")
        if end > len(data):
            raise Unreadable(f"truncated PNG: chunk {ctype.decode()} at offset {pos} runs past the end")
        body = data[pos + 8 : pos + 8 + length]
        if zlib.crc32(ctype + body) != int.from_bytes(data[end - 4 : end], "big"):
            raise Unreadable(f"corrupt PNG: bad CRC in chunk {ctype.decode()} at offset {pos}")
        chunks.append(PngChunk(ctype, body))
        pos = end
        if ctype == b"IEND":
            break
    if chunks[0].type != b"IHDR" or len(chunks[0].body) != 13:
        raise Unreadable("not a standard PNG: the first chunk is not IHDR (Apple CgBI?)")
    width, height, depth, colour, method, filtering, interlace = struct.unpack(">IIBBBBB", chunks[0].body)
    if depth not in _PNG_MODES.get(colour, ()) or method or filtering or interlace > 1:
        raise Unreadable(
            f"corrupt PNG: bit depth {depth}, colour type {colour}, methods {method}/{filtering}/{interlace}"
        )
    unknown = sorted(
        {c.type.decode() for c in chunks if c.type[:1].isupper() and c.type not in _PNG_CRITICAL}
    )
    if unknown:
        raise Unreadable(f"PNG with unknown critical chunks {unknown}")
    if not any(c.type == b"IDAT" for c in chunks):
        raise Unreadable("corrupt PNG: no IDAT chunk")
    frames, plays = 0, 0
    actl = next((c.body for c in chunks if c.type == b"acTL"), None)
    if actl is not None:
        if len(actl) != 8:
            raise Unreadable("corrupt APNG: acTL chunk")
        frames, plays = struct.unpack(">II", actl)
    _check_pixels("PNG", width, height, frames, max_pixels)
    for chunk in chunks:
        if chunk.type == b"iCCP":
            _icc_profile(chunk.body)
    return PngInfo(width, height, depth, colour, interlace, tuple(chunks), frames, plays, len(data) - pos)


def _icc_profile(body: bytes) -> bytes:
    _name, _, rest = body.partition(b"\0")
    if not rest or rest[0] != 0:
        raise Unreadable("corrupt PNG: iCCP chunk")
    return _inflate(rest[1:], _ICC_LIMIT, "iCCP profile")


def _png_bytes(chunks: Sequence[PngChunk]) -> bytes:
    out = [PNG_SIGNATURE]
    for chunk in chunks:
        out.append(struct.pack(">I4s", len(chunk.body), chunk.type))
        out.append(chunk.body)
        out.append(struct.pack(">I", zlib.crc32(chunk.type + chunk.body)))
    return b"".join(out)


def _png_key16(info: PngInfo) -> tuple[int, ...] | None:
    """The tRNS colour key of a grey or RGB image, at 16-bit scale (what ``png_rgba16`` compares against)."""
    trns = info.first(b"tRNS")
    if trns is None or info.colour_type not in (0, 2):
        return None
    count = 1 if info.colour_type == 0 else 3
    if len(trns) < 2 * count:
        return None
    top = (1 << info.bit_depth) - 1
    values = struct.unpack(f">{count}H", trns[: 2 * count])
    if any(v > top for v in values):
        return (-1,) * count  # out of range: matches no pixel (as libpng)
    return tuple(v * (0xFFFF // top) for v in values)


def _png_decode(data: bytes, rawmode: str | None = None) -> ImageFile.ImageFile:
    image = _open(data, "png")
    if rawmode is not None:
        image.tile = [tile._replace(args=rawmode) for tile in image.tile]
    image.load()
    return image


def _png_images(data: bytes, info: PngInfo) -> tuple[Image.Image, Image.Image | None]:
    """The decoded still image, plus the low bytes of 16-bit colour samples (Pillow keeps only the high ones).

    Pillow's PNG decoder unfilters by the raw mode's bits per pixel, so decoding the same stream with the
    little-endian raw mode (same size) yields the low byte of every sample, exactly; grey+alpha 16-bit is read
    as four raw bytes per pixel.
    """
    if info.bit_depth == 16 and info.colour_type == 2:
        return _png_decode(data), _png_decode(data, "RGB;16L")
    if info.bit_depth == 16 and info.colour_type == 6:
        return _png_decode(data), _png_decode(data, "RGBA;16L")
    if info.bit_depth == 16 and info.colour_type == 4:
        return _png_decode(data, "RGBA"), None
    return _png_decode(data), None


def png_rgba16(
    info: PngInfo, image: Image.Image, low: Image.Image | None, box: tuple[int, int, int, int] | None = None
) -> U16:
    """Canonical pixels of a decoded PNG (or a band of it): RGBA, 16 bits a sample, keys and palettes applied.

    ``image``/``low`` are as ``_png_images`` returns them; every bit depth is scaled exactly to 16 bits.
    """
    part = image.crop(box) if box is not None else image
    colour, depth = info.colour_type, info.bit_depth
    scale = np.uint16(257)
    samples: U16
    if colour == 3 or part.mode not in _pillow_mode(colour, depth):  # palettes; frames Pillow composited
        return _rgba16_from_pillow(part)
    if colour == 4 and depth == 16:
        raw = np.asarray(part, dtype=np.uint16)
        grey = raw[..., 0] * np.uint16(256) + raw[..., 1]
        return np.stack([grey, grey, grey, raw[..., 2] * np.uint16(256) + raw[..., 3]], axis=-1)
    if colour == 4:
        raw = np.asarray(part.convert("LA"), dtype=np.uint16) * scale
        return np.stack([raw[..., 0], raw[..., 0], raw[..., 0], raw[..., 1]], axis=-1)
    if colour in (2, 6) and depth == 16:
        assert low is not None
        lows = low.crop(box) if box is not None else low
        channels = 3 if colour == 2 else 4
        mode = "RGB" if colour == 2 else "RGBA"
        high_bytes = np.asarray(part.convert(mode), dtype=np.uint16)[..., :channels]
        low_bytes = np.asarray(lows.convert(mode), dtype=np.uint16)[..., :channels]
        samples = high_bytes * np.uint16(256) + low_bytes
        if colour == 6:
            return samples
    elif colour == 6:
        return np.asarray(part.convert("RGBA"), dtype=np.uint16) * scale
    elif colour == 2:
        samples = np.asarray(part.convert("RGB"), dtype=np.uint16) * scale
    elif depth == 16:
        grey16 = np.asarray(part, dtype=np.uint16)
        samples = np.stack([grey16, grey16, grey16], axis=-1)
    else:  # grey at 1, 2, 4 or 8 bits: Pillow scales the samples to 8 bits
        grey = np.asarray(part.convert("L"), dtype=np.uint16) * scale
        samples = np.stack([grey, grey, grey], axis=-1)
    key = _png_key16(info)
    if key is None:
        alpha = np.full(samples.shape[:2], 0xFFFF, dtype=np.uint16)
    else:
        matched = samples[..., 0] == key[0] if len(key) == 1 else np.all(samples == np.array(key), axis=-1)
        alpha = np.where(matched, 0, 0xFFFF).astype(np.uint16)
    return np.concatenate([samples[..., :3], alpha[..., None]], axis=-1)


def png_pixels(data: bytes, max_pixels: int = 1 << 26) -> U16:
    """The pixels of a still PNG as the verification sees them: RGBA, 16 bits a sample (for tests and tools)."""
    info = png_structure(data, max_pixels)
    if info.frames:
        raise ValueError("png_pixels: an animated PNG")
    image, low = _png_images(data, info)
    return png_rgba16(info, image, low)


def _png_frames(data: bytes, info: PngInfo, side: str) -> Iterator[tuple[U16, object]]:
    """Canonical RGBA of every frame (of every band of a still image) with its timing."""
    try:
        if not info.frames:
            image, low = _png_images(data, info)
            rows = max(1, _BAND_PIXELS // info.width)
            for top in range(0, info.height, rows):
                box = (0, top, info.width, min(info.height, top + rows))
                yield png_rgba16(info, image, low, box), ("still", box)
            return
        image = _open(data, "png")
        count = getattr(image, "n_frames", 1)
        for number in range(count):
            image.seek(number)
            image.load()
            facts = (
                image.info.get("duration"),
                image.info.get("loop"),
                image.info.get("default_image", False),
            )
            yield png_rgba16(info, image, None), facts
    except (Unreadable, Rejected):
        raise
    except _DECODE_ERRORS as error:
        raise _side_error(side, "PNG", error) from error


def _png_strip(info: PngInfo, options: CodecOptions) -> set[bytes]:
    """Chunk types removed on purpose: text and time, and EXIF unless it turns the image."""
    if not options.strip_metadata:
        return set()
    strip = set(_PNG_TEXT)
    if all(_exif_orientation(exif) == 1 for exif in info.all(b"eXIf")):
        strip.add(b"eXIf")
    return strip


def _png_policy(original: PngInfo, candidate: PngInfo, options: CodecOptions) -> str | None:
    """What the candidate lost or changed that the metadata policy keeps, or None."""
    strip = _png_strip(original, options)
    want_interlace = 0 if options.png_interlace == "off" else original.interlace
    if candidate.interlace != want_interlace:
        return f"interlacing changed ({original.interlace} -> {candidate.interlace})"
    if (original.width, original.height) != (candidate.width, candidate.height):
        return "image size changed"
    if (original.frames, original.plays) != (candidate.frames, candidate.plays):
        return "animation frame or play count changed"
    for ctype in _PNG_COLOUR:
        left, right = original.all(ctype), candidate.all(ctype)
        if ctype == b"iCCP":
            left, right = [_icc_profile(b) for b in left], [_icc_profile(b) for b in right]
        if left != right:
            return f"colour chunk {ctype.decode()} not kept"
    kept_types = (
        {c.type for c in original.chunks} - set(_PNG_COLOUR) - set(_PNG_ENCODING) - set(_PNG_CRITICAL)
    )
    for ctype in sorted(kept_types | set(_PNG_TEXT) | {b"eXIf"}):
        before, after = Counter(original.all(ctype)), Counter(candidate.all(ctype))
        if ctype in strip:
            if after:
                return f"{ctype.decode()} chunk not stripped"
        elif before != after:
            return f"chunk {ctype.decode()} not kept"
    extra = {c.type for c in candidate.chunks} - {c.type for c in original.chunks} - set(_PNG_ENCODING)
    extra -= set(_PNG_CRITICAL)
    if extra:
        return f"chunks added: {sorted(t.decode() for t in extra)}"
    return None


def _png_oxipng(data: bytes, info: PngInfo, options: CodecOptions) -> bytes:
    if multiprocessing.parent_process() is not None:
        # In a pool worker the pool already keeps every core busy: oxipng's own thread pool (one thread per
        # core, created on first use) would only make the workers fight. The output does not depend on it.
        os.environ.setdefault("RAYON_NUM_THREADS", "1")
    import oxipng

    strip = sorted(_png_strip(info, options))
    try:
        return bytes(
            oxipng.optimize_from_memory(
                data,
                level=options.png_level,
                # pyoxipng's default (argument omitted) de-interlaces; None keeps the input's interlacing
                interlace=None if options.png_interlace == "keep" else oxipng.Interlacing.Off,
                strip=oxipng.StripChunks.strip(strip) if strip else oxipng.StripChunks.none(),
                optimize_alpha=False,  # colour under transparent pixels is kept: pixels stay identical
                scale_16=False,
                fix_errors=False,
            )
        )
    except oxipng.PngError as error:
        raise Rejected(f"oxipng: {error}") from error


def _png_pillow(data: bytes, info: PngInfo, options: CodecOptions) -> bytes:
    """Pillow fallback: re-deflate the image data at level 9 with adaptive filters and splice the new IDAT
    into the original chunk list, so that every other chunk is kept byte for byte."""
    if info.frames:
        raise Rejected("the Pillow fallback does not re-encode animated PNGs")
    if info.interlace and options.png_interlace == "keep":
        raise Rejected("the Pillow fallback does not write interlaced PNGs")
    image = _png_decode(data)
    if info.bit_depth == 16 and info.colour_type != 0:
        raise Rejected("Pillow cannot write 16-bit colour PNGs")
    out = io.BytesIO()
    params: dict[str, object] = {"optimize": True}
    if image.mode == "P":
        params["bits"] = info.bit_depth
    try:
        image.save(out, "PNG", **params)
    except _DECODE_ERRORS as error:
        raise Rejected(f"Pillow PNG encoder: {error}") from error
    written = png_structure(out.getvalue(), options.max_pixels)
    same_header = written.chunks[0].body[:12] == info.chunks[0].body[:12]
    if not same_header or written.first(b"PLTE") != info.first(b"PLTE"):
        raise Rejected("the Pillow fallback would change the colour encoding")
    idat = [c for c in written.chunks if c.type == b"IDAT"]
    chunks: list[PngChunk] = []
    for chunk in info.chunks:
        if chunk.type == b"IHDR":
            chunks.append(PngChunk(b"IHDR", chunk.body[:12] + b"\0"))
        elif chunk.type != b"IDAT":
            chunks.append(chunk)
        elif not any(c.type == b"IDAT" for c in chunks):
            chunks.extend(idat)
    strip = _png_strip(info, options)
    return _png_bytes([c for c in chunks if c.type not in strip])


def optimize_png(data: bytes, options: CodecOptions) -> MediaResult:
    """Lossless PNG/APNG recompression (oxipng, Pillow fallback), verified pixel for pixel."""
    return _run("png", options, lambda: _optimize_png(data, options))


def _optimize_png(data: bytes, options: CodecOptions) -> MediaResult:
    info = png_structure(data, options.max_pixels)
    if info.trailing:
        return MediaResult("png", None, f"{info.trailing} bytes after IEND would be lost: left alone")
    if info.frames and info.bit_depth == 16:
        return MediaResult("png", None, "16-bit animated PNG: frames cannot be verified exactly, left alone")
    for _ in _png_frames(data, info, "original"):  # the original must decode completely before anything else
        pass
    engines: list[tuple[str, Callable[[bytes, PngInfo, CodecOptions], bytes]]] = []
    if options.png_engine in ("auto", "oxipng"):
        engines.append((f"oxipng {engine_versions()['oxipng']} level {options.png_level}", _png_oxipng))
    if options.png_engine in ("auto", "pillow"):
        engines.append((f"Pillow {PILLOW_VERSION}", _png_pillow))
    reasons: list[str] = []
    for engine, encode in engines:
        try:
            if encode is _png_oxipng and engine_versions()["oxipng"] == "absent":
                raise Rejected("oxipng is not installed (PyPI pyoxipng)")
            candidate = encode(data, info, options)
            if len(candidate) >= len(data):
                reasons.append(f"{engine}: not smaller ({len(candidate)} bytes)")
                if encode is _png_oxipng:
                    break  # oxipng worked and found nothing: Pillow will not do better
                continue
            problem = _png_verify(data, info, candidate, options)
            if problem is None:
                return MediaResult(
                    "png",
                    candidate,
                    f"recompressed losslessly ({engine}), pixels verified",
                    details={"engine": engine},
                )
            reasons.append(f"{engine}: {problem}")
        except Rejected as error:
            reasons.append(f"{engine}: {error}")
    return MediaResult("png", None, "; ".join(reasons) or "no PNG encoder available")


def _png_verify(data: bytes, info: PngInfo, candidate: bytes, options: CodecOptions) -> str | None:
    try:
        new = png_structure(candidate, options.max_pixels)
    except Unreadable as error:
        return f"output does not parse: {error}"
    problem = _png_policy(info, new, options)
    if problem is not None:
        return problem
    if new.frames and new.bit_depth == 16:
        return "output is a 16-bit animation that cannot be verified"
    return _compare_frames(_png_frames(data, info, "original"), _png_frames(candidate, new, "candidate"))


# --------------------------------------------------------------------------------------------------------- JPEG

_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_SOF_TRANSCODABLE = {0xC0, 0xC1, 0xC2, 0xC9, 0xCA}  # DCT, 8-bit, non-hierarchical
_STANDALONE = {0x01, *range(0xD0, 0xD8)}
_SOS, _EOI = 0xDA, 0xD9
_STD_LUMA_QUANT = (
    16,
    11,
    10,
    16,
    24,
    40,
    51,
    61,
    12,
    12,
    14,
    19,
    26,
    58,
    60,
    55,
    14,
    13,
    16,
    24,
    40,
    57,
    69,
    56,
    14,
    17,
    22,
    29,
    51,
    87,
    80,
    62,
    18,
    22,
    37,
    56,
    68,
    109,
    103,
    77,
    24,
    35,
    55,
    64,
    81,
    104,
    113,
    92,
    49,
    64,
    78,
    87,
    103,
    121,
    120,
    101,
    72,
    92,
    95,
    98,
    112,
    100,
    103,
    99,
)  # ITU T.81 Annex K, table K.1


@dataclass(frozen=True)
class JpegSegment:
    marker: int
    start: int
    end: int  # marker, length and payload: data[start:end]

    def payload(self, data: bytes) -> bytes:
        return data[self.start + 4 : self.end]

    @property
    def is_metadata(self) -> bool:
        return 0xE0 <= self.marker <= 0xEF or self.marker == 0xFE


@dataclass(frozen=True)
class JpegInfo:
    segments: tuple[JpegSegment, ...]
    sof: int
    precision: int
    width: int
    height: int
    components: int
    scans: int
    end: int  # offset just past EOI
    trailing: int

    def metadata(self, data: bytes) -> list[bytes]:
        return [data[s.start : s.end] for s in self.segments if s.is_metadata]


def _skip_entropy(data: bytes, pos: int) -> int:
    """Offset of the first marker after entropy-coded data (stuffed zeros and restart markers skipped)."""
    while True:
        at = data.find(b"\xff", pos)
        if at < 0 or at + 1 >= len(data):
            raise Unreadable("truncated JPEG: entropy-coded data runs to the end of the file (no EOI)")
        following = data[at + 1]
        if following == 0 or 0xD0 <= following <= 0xD7:
            pos = at + 2
        elif following == 0xFF:
            pos = at + 1
        else:
            return at


def jpeg_structure(data: bytes, max_pixels: int) -> JpegInfo:
    """Walk every marker segment to EOI; ``Unreadable`` for anything truncated, corrupt or over the cap."""
    if not data.startswith(b"\xff\xd8"):
        raise Unreadable("not a JPEG file")
    segments: list[JpegSegment] = []
    pos, sof, frame, scans = 2, 0, (0, 0, 0, 0), 0
    while True:
        if pos + 2 > len(data):
            raise Unreadable("truncated JPEG: no EOI marker")
        if data[pos] != 0xFF:
            raise Unreadable(f"corrupt JPEG: no marker at offset {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker == _EOI:
            segments.append(JpegSegment(marker, pos, pos + 2))
            pos += 2
            break
        if marker in _STANDALONE:
            pos += 2
            continue
        if pos + 4 > len(data):
            raise Unreadable("truncated JPEG: marker segment cut off")
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        end = pos + 2 + length
        if length < 2 or end > len(data):
            raise Unreadable(f"truncated JPEG: segment {marker:#04x} at offset {pos} runs past the end")
        segments.append(JpegSegment(marker, pos, end))
        if marker in _SOF_MARKERS:
            if sof or length < 8:
                raise Unreadable("corrupt JPEG: more than one frame header")
            sof = marker
            frame = struct.unpack(">BHHB", data[pos + 4 : pos + 10])
        pos = end
        if marker == _SOS:
            if not sof:
                raise Unreadable("corrupt JPEG: scan before the frame header")
            scans += 1
            if scans > _JPEG_SCAN_LIMIT:
                raise Unreadable(f"JPEG with more than {_JPEG_SCAN_LIMIT} scans (a decoding-time bomb)")
            pos = _skip_entropy(data, pos)
    if not sof or not scans:
        raise Unreadable("corrupt JPEG: no frame header or no scan")
    precision, height, width, components = frame
    if height == 0:
        raise Unreadable("JPEG whose height is given by a DNL marker: not handled")
    _check_pixels("JPEG", width, height, 1, max_pixels)
    return JpegInfo(tuple(segments), sof, precision, width, height, components, scans, pos, len(data) - pos)


def _jpeg_keep(data: bytes, info: JpegInfo, options: CodecOptions) -> list[bytes]:
    """The metadata segments (APPn, COM) the output carries, verbatim and in their order.

    Kept always: JFIF (APP0) and Adobe (APP14), which say how to convert colours, and the ICC profile (APP2).
    Kept unless --media-strip-metadata: everything else; when stripping, EXIF stays only if it turns the image.
    """
    kept = []
    for segment in info.segments:
        if not segment.is_metadata:
            continue
        raw = data[segment.start : segment.end]
        payload = segment.payload(data)
        essential = (
            (segment.marker == 0xE0 and payload.startswith(b"JFIF\0"))
            or (segment.marker == 0xEE and payload.startswith(b"Adobe"))
            or (segment.marker == 0xE2 and payload.startswith(b"ICC_PROFILE\0"))
        )
        if segment.marker == 0xE1 and payload.startswith(b"Exif\0\0") and options.strip_metadata:
            essential = _exif_orientation(payload) != 1
        if essential or not options.strip_metadata:
            kept.append(raw)
    return kept


def _jpeg_with_metadata(encoded: bytes, keep: Sequence[bytes], max_pixels: int) -> bytes:
    """``encoded`` with its own APPn/COM segments replaced by ``keep`` (right after SOI)."""
    try:
        info = jpeg_structure(encoded, max_pixels)
    except Unreadable as error:
        raise Rejected(f"encoder output does not parse: {error}") from error
    parts = [b"\xff\xd8", *keep]
    pos = 2
    for segment in info.segments:
        if segment.is_metadata:
            parts.append(encoded[pos : segment.start])
            pos = segment.end
    parts.append(encoded[pos : info.end])
    return b"".join(parts)


def estimate_jpeg_quality(tables: Mapping[int, Sequence[int]]) -> int | None:
    """The IJG quality (1-100) whose scaled standard luminance table is closest to table 0, or None."""
    table = tables.get(0)
    if table is None or len(table) != 64:
        return None
    total = sum(table)
    limit = 255 if max(table) <= 255 else 32767

    def scaled(quality: int) -> int:
        factor = 5000 // quality if quality < 50 else 200 - 2 * quality
        return sum(min(max((v * factor + 50) // 100, 1), limit) for v in _STD_LUMA_QUANT)

    return min(range(1, 101), key=lambda q: (abs(scaled(q) - total), -q))


def _mozjpeg(data: bytes) -> bytes:
    import mozjpeg_lossless_optimization as mozjpeg

    try:
        return bytes(mozjpeg.optimize(data, mozjpeg.COPY_MARKERS.NONE))
    except ValueError as error:
        raise Rejected(f"MozJPEG: {error}") from error


def _jpeg_decode(data: bytes, side: str) -> Image.Image:
    try:
        image = _open(data, "jpeg")
        image.load()
        return image
    except _DECODE_ERRORS as error:
        raise _side_error(side, "JPEG", error) from error


def optimize_jpeg(data: bytes, options: CodecOptions) -> MediaResult:
    """Lossless JPEG optimisation (MozJPEG: optimal Huffman tables, progressive scans), metadata put back
    verbatim; with ``lossy``, a re-encode at ``jpeg_quality`` when the SSIM floor holds."""
    return _run("jpeg", options, lambda: _optimize_jpeg(data, options))


def _optimize_jpeg(data: bytes, options: CodecOptions) -> MediaResult:
    info = jpeg_structure(data, options.max_pixels)
    if info.trailing:
        return MediaResult(
            "jpeg",
            None,
            f"{info.trailing} bytes after EOI (appended images or data) would be lost: left alone",
        )
    payloads = [s.payload(data) for s in info.segments if s.marker == 0xE2]
    if any(p.startswith(b"MPF\0") for p in payloads):
        return MediaResult(
            "jpeg", None, "multi-picture JPEG (MPF): offsets to its other images would break: left alone"
        )
    if info.sof not in _SOF_TRANSCODABLE or info.precision != 8:
        return MediaResult(
            "jpeg",
            None,
            f"SOF {info.sof:#04x} with {info.precision}-bit samples cannot be transcoded: left alone",
        )
    original = _jpeg_decode(data, "original")
    if engine_versions()["mozjpeg"] == "absent":
        return MediaResult("jpeg", None, "MozJPEG is not installed (PyPI mozjpeg-lossless-optimization)")
    keep = _jpeg_keep(data, info, options)
    engine = f"mozjpeg-lossless-optimization {engine_versions()['mozjpeg']}"
    reasons: list[str] = []
    best: bytes | None = None
    details: dict[str, str | int | float] = {"engine": engine}
    try:
        candidate = _jpeg_with_metadata(_mozjpeg(data), keep, options.max_pixels)
        problem = _jpeg_verify_lossless(original, candidate, keep, options)
        if problem is not None:
            reasons.append(f"{engine}: {problem}")
        elif len(candidate) >= len(data):
            reasons.append(f"{engine}: not smaller ({len(candidate)} bytes)")
        else:
            best = candidate
    except Rejected as error:
        reasons.append(str(error))
    if options.lossy:
        lossy, why, facts = _jpeg_lossy(data, info, original, keep, options)
        details.update(facts)
        if lossy is not None and len(lossy) < len(best if best is not None else data):
            return MediaResult(
                "jpeg", lossy, f"re-encoded at quality {options.jpeg_quality} ({why})", details=details
            )
        reasons.append(why)
    if best is not None:
        return MediaResult(
            "jpeg", best, "optimized losslessly (MozJPEG), pixels and metadata verified", details=details
        )
    return MediaResult("jpeg", None, "; ".join(reasons), details=details)


def _jpeg_verify_lossless(
    original: Image.Image, candidate: bytes, keep: Sequence[bytes], options: CodecOptions
) -> str | None:
    try:
        new_info = jpeg_structure(candidate, options.max_pixels)
    except Unreadable as error:
        return f"output does not parse: {error}"
    if new_info.metadata(candidate) != list(keep):
        return "metadata segments not kept"
    decoded = _jpeg_decode(candidate, "candidate")
    if (decoded.mode, decoded.size) != (original.mode, original.size):
        return f"decodes as {decoded.mode} {decoded.size}, not {original.mode} {original.size}"
    if decoded.tobytes() != original.tobytes():
        return "decoded pixels differ"
    return None


def _jpeg_lossy(
    data: bytes, info: JpegInfo, original: Image.Image, keep: Sequence[bytes], options: CodecOptions
) -> tuple[bytes | None, str, dict[str, str | int | float]]:
    """A lossy candidate at the target quality, or None and why not."""
    assert isinstance(original, JpegImagePlugin.JpegImageFile)
    quality = estimate_jpeg_quality(original.quantization or {})
    facts: dict[str, str | int | float] = {"estimated_quality": quality if quality is not None else "unknown"}
    if original.mode not in ("L", "RGB"):
        return None, f"lossy: {original.mode} JPEGs are only optimized losslessly", facts
    adobe = [
        s.payload(data) for s in info.segments if s.marker == 0xEE and s.payload(data).startswith(b"Adobe")
    ]
    if original.mode == "RGB" and adobe and (len(adobe[0]) < 12 or adobe[0][11] != 1):
        return None, "lossy: RGB-coded (not YCbCr) JPEG is only optimized losslessly", facts
    if quality is None or quality <= options.jpeg_quality:
        return None, f"lossy: estimated quality {quality} is not above {options.jpeg_quality}", facts
    out = io.BytesIO()
    sampling = "keep" if JpegImagePlugin.get_sampling(original) != -1 else -1
    try:
        original.save(out, "JPEG", quality=options.jpeg_quality, subsampling=sampling, optimize=True)
        candidate = _jpeg_with_metadata(_mozjpeg(out.getvalue()), keep, options.max_pixels)
    except Rejected as error:
        return None, f"lossy: {error}", facts
    except _DECODE_ERRORS as error:
        return None, f"lossy: Pillow JPEG encoder: {error}", facts
    try:
        decoded = _jpeg_decode(candidate, "candidate")
    except Rejected as error:
        return None, f"lossy: {error}", facts
    if (decoded.mode, decoded.size) != (original.mode, original.size):
        return None, "lossy: re-encoded image changed mode or size", facts
    score = _ssim_bands(_luma(original), _luma(decoded), original.height, original.width)
    facts["ssim"] = round(score, 5)
    if score < options.ssim_floor:
        return None, f"lossy: SSIM {score:.4f} below the floor {options.ssim_floor}", facts
    return candidate, f"estimated quality {quality}, SSIM {score:.4f} >= {options.ssim_floor}", facts


def _luma(image: Image.Image) -> Callable[[int, int], F64]:
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
    return _ssim_bands(lambda t, b: first[t:b], lambda t, b: second[t:b], height, width, window)


def _ssim_bands(
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
    band = max(window, _BAND_PIXELS // max(width, 1))
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


# ---------------------------------------------------------------------------------------------------------- GIF


@dataclass(frozen=True)
class GifInfo:
    width: int
    height: int
    frames: int
    delays: tuple[int, ...]  # centiseconds, from each frame's graphic control extension (0 when it has none)
    loop: int | None
    interlaced: bool  # the first image
    comments: tuple[bytes, ...]
    applications: tuple[bytes, ...]  # application extension identifiers other than the loop ones
    plain_text: int
    trailing: int


def _gif_blocks(data: bytes, pos: int) -> tuple[list[bytes], int]:
    blocks: list[bytes] = []
    while True:
        if pos >= len(data):
            raise Unreadable("truncated GIF: data sub-blocks run past the end")
        size = data[pos]
        if size == 0:
            return blocks, pos + 1
        if pos + 1 + size > len(data):
            raise Unreadable("truncated GIF: data sub-block runs past the end")
        blocks.append(data[pos + 1 : pos + 1 + size])
        pos += 1 + size


def gif_structure(data: bytes, max_pixels: int) -> GifInfo:
    """Walk the GIF blocks to the trailer; ``Unreadable`` when truncated, corrupt or over the cap."""
    if len(data) < 13 or data[:6] not in (b"GIF87a", b"GIF89a"):
        raise Unreadable("not a GIF file")
    width, height, packed = struct.unpack("<HHB", data[6:11])
    pos = 13 + (3 << ((packed & 7) + 1) if packed & 0x80 else 0)
    frames, pixels, delays, loop, interlaced = 0, 0, [], None, False
    comments: list[bytes] = []
    applications: list[bytes] = []
    plain_text, delay = 0, 0
    while True:
        if pos >= len(data):
            raise Unreadable("truncated GIF: no trailer")
        introducer = data[pos]
        if introducer == 0x3B:
            pos += 1
            break
        if introducer == 0x21:
            if pos + 2 > len(data):
                raise Unreadable("truncated GIF: extension cut off")
            label = data[pos + 1]
            blocks, pos = _gif_blocks(data, pos + 2)
            if label == 0xF9 and blocks and len(blocks[0]) >= 4:
                delay = struct.unpack("<H", blocks[0][1:3])[0]
            elif label == 0xFE:
                comments.append(b"".join(blocks))
            elif label == 0x01:
                plain_text += 1
            elif label == 0xFF and blocks:
                if (
                    blocks[0] in (b"NETSCAPE2.0", b"ANIMEXTS1.0")
                    and len(blocks) > 1
                    and blocks[1][:1] == b"\x01"
                ):
                    loop = struct.unpack("<H", blocks[1][1:3])[0] if len(blocks[1]) >= 3 else None
                else:
                    applications.append(blocks[0])
            continue
        if introducer != 0x2C:
            raise Unreadable(f"corrupt GIF: unexpected byte {introducer:#04x} at offset {pos}")
        if pos + 11 > len(data):
            raise Unreadable("truncated GIF: image descriptor cut off")
        left, top, frame_width, frame_height, flags = struct.unpack("<HHHHB", data[pos + 1 : pos + 10])
        if not frames:
            interlaced = bool(flags & 0x40)
        pos += 10 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
        pixels += max(width * height, (left + frame_width) * (top + frame_height))
        if pixels > max_pixels:
            raise Unreadable(
                f"GIF frame {frames} of {frame_width}x{frame_height} brings the pixels to {pixels}, over the cap "
                f"of {max_pixels} (--media-max-pixels)"
            )
        _, pos = _gif_blocks(data, pos + 1)  # LZW minimum code size, then the image data
        frames += 1
        delays.append(delay)
        delay = 0
    if not frames:
        raise Unreadable("corrupt GIF: no image")
    _check_pixels("GIF", width or 1, height or 1, 1, max_pixels)
    return GifInfo(
        width,
        height,
        frames,
        tuple(delays),
        loop,
        interlaced,
        tuple(comments),
        tuple(applications),
        plain_text,
        len(data) - pos,
    )


def _frames_rgba(data: bytes, kind: str, side: str) -> Iterator[tuple[U16, object]]:
    """Every composited frame (as Pillow shows it) as RGBA at 16-bit scale."""
    try:
        image = _open(data, kind)
        count = getattr(image, "n_frames", 1)
        for number in range(count):
            image.seek(number)
            image.load()
            yield _rgba16_from_pillow(image), None
    except _DECODE_ERRORS as error:
        raise _side_error(side, kind.upper(), error) from error


def _pillow_frames(data: bytes, kind: str) -> list[Image.Image]:
    image = _open(data, kind)
    frames = []
    for number in range(getattr(image, "n_frames", 1)):
        image.seek(number)
        image.load()
        frames.append(image.copy())
    return frames


def optimize_gif(data: bytes, options: CodecOptions) -> MediaResult:
    """Lossless GIF re-encoding with Pillow, kept only when smaller and every frame, delay and the loop count
    are unchanged."""
    return _run("gif", options, lambda: _optimize_gif(data, options))


def _optimize_gif(data: bytes, options: CodecOptions) -> MediaResult:
    info = gif_structure(data, options.max_pixels)
    if info.trailing:
        return MediaResult(
            "gif", None, f"{info.trailing} bytes after the GIF trailer would be lost: left alone"
        )
    for _ in _frames_rgba(data, "gif", "original"):
        pass
    if not options.strip_metadata and (info.applications or info.plain_text):
        names = sorted({a.decode("latin-1") for a in info.applications})
        return MediaResult(
            "gif", None, f"GIF extensions Pillow does not write ({names or 'plain text'}): left alone"
        )
    engine = f"Pillow {PILLOW_VERSION}"
    try:
        frames = _pillow_frames(data, "gif")
        out = io.BytesIO()
        params: dict[str, object] = {"optimize": True, "interlace": info.interlaced}
        if info.loop is not None:
            params["loop"] = info.loop
        if info.comments and not options.strip_metadata:
            params["comment"] = info.comments[0]
        if len(frames) > 1:
            params.update(
                save_all=True, append_images=frames[1:], duration=[f.info.get("duration", 0) for f in frames]
            )
        elif "transparency" in frames[0].info:
            params["transparency"] = frames[0].info["transparency"]
        frames[0].save(out, "GIF", **params)
        candidate = out.getvalue()
    except _DECODE_ERRORS as error:
        return MediaResult("gif", None, f"{engine}: GIF encoder: {error}")
    if len(candidate) >= len(data):
        return MediaResult("gif", None, f"{engine}: not smaller ({len(candidate)} bytes)")
    try:
        new = gif_structure(candidate, options.max_pixels)
        want_comments = () if options.strip_metadata else info.comments
        if (new.frames, new.delays, new.loop) != (info.frames, info.delays, info.loop):
            problem: str | None = "frame count, delays or loop count changed"
        elif new.comments != want_comments:
            problem = "comments not kept"
        else:
            problem = _compare_frames(
                _frames_rgba(data, "gif", "original"), _frames_rgba(candidate, "gif", "candidate")
            )
    except (Unreadable, Rejected) as error:
        problem = str(error)
    if problem is not None:
        return MediaResult("gif", None, f"{engine}: {problem}")
    return MediaResult(
        "gif",
        candidate,
        f"re-encoded losslessly ({engine}), every frame verified",
        details={"engine": engine},
    )


# --------------------------------------------------------------------------------------------------------- WebP

# libwebp's lossless effort (cwebp -lossless -q 100 -m 4): method 6 at quality 100 is an exhaustive search,
# 15x slower for well under 2% smaller output on the fixtures.
_WEBP_METHOD = 4


@dataclass(frozen=True)
class WebpInfo:
    width: int
    height: int
    chunks: tuple[tuple[bytes, bytes], ...]  # top-level (fourcc, payload)
    frames: int  # ANMF count; 0 for a still image
    durations: tuple[int, ...]
    loop: int | None
    lossless: bool  # every image bitstream is VP8L
    trailing: int

    def all(self, fourcc: bytes) -> list[bytes]:
        return [body for kind, body in self.chunks if kind == fourcc]


def _riff_chunks(data: bytes, start: int, end: int) -> list[tuple[bytes, bytes]]:
    chunks = []
    pos = start
    while pos < end:
        if pos + 8 > end:
            raise Unreadable("truncated WebP: chunk header cut off")
        fourcc, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if pos + 8 + size > end:
            raise Unreadable(f"truncated WebP: chunk {fourcc!r} runs past the end")
        chunks.append((fourcc, data[pos + 8 : pos + 8 + size]))
        pos += 8 + size + (size & 1)
    return chunks


def _webp_bitstream_size(fourcc: bytes, body: bytes) -> tuple[int, int]:
    if fourcc == b"VP8 " and len(body) >= 10 and body[3:6] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", body[6:10])
        return width & 0x3FFF, height & 0x3FFF
    if fourcc == b"VP8L" and len(body) >= 5 and body[0] == 0x2F:
        bits = int.from_bytes(body[1:5], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    raise Unreadable(f"corrupt WebP: bad {fourcc.decode('latin-1').strip()} bitstream header")


def webp_structure(data: bytes, max_pixels: int) -> WebpInfo:
    """Walk the RIFF chunks; ``Unreadable`` when truncated, corrupt or over the cap."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise Unreadable("not a WebP file")
    end = 8 + struct.unpack("<I", data[4:8])[0]
    if end > len(data):
        raise Unreadable(f"truncated WebP: RIFF says {end} bytes, the file has {len(data)}")
    chunks = _riff_chunks(data, 12, end)
    if not chunks:
        raise Unreadable("corrupt WebP: no chunks")
    frames, durations, loop, lossless = 0, [], None, True
    first, body = chunks[0]
    if first == b"VP8X":
        if len(body) < 10:
            raise Unreadable("corrupt WebP: VP8X chunk")
        width = int.from_bytes(body[4:7], "little") + 1
        height = int.from_bytes(body[7:10], "little") + 1
    else:
        width, height = _webp_bitstream_size(first, body)
    for fourcc, payload in chunks:
        if fourcc == b"ANIM" and len(payload) >= 6:
            loop = struct.unpack("<H", payload[4:6])[0]
        elif fourcc == b"ANMF":
            if len(payload) < 16:
                raise Unreadable("corrupt WebP: ANMF chunk")
            frames += 1
            durations.append(int.from_bytes(payload[12:15], "little"))
            inner = _riff_chunks(payload, 16, len(payload))
            lossless &= all(kind != b"VP8 " for kind, _ in inner)
        elif fourcc == b"VP8 ":
            lossless = False
    _check_pixels("WebP", width, height, frames, max_pixels)
    return WebpInfo(width, height, tuple(chunks), frames, tuple(durations), loop, lossless, len(data) - end)


def optimize_webp(data: bytes, options: CodecOptions) -> MediaResult:
    """Lossless WebP re-encoding of the decoded pixels (libwebp through Pillow, effort 4), kept only when
    smaller and every frame, duration, the loop count and the ICC/EXIF/XMP chunks are unchanged."""
    return _run("webp", options, lambda: _optimize_webp(data, options))


def _optimize_webp(data: bytes, options: CodecOptions) -> MediaResult:
    info = webp_structure(data, options.max_pixels)
    if info.trailing > 1:
        return MediaResult(
            "webp", None, f"{info.trailing} bytes after the RIFF chunk would be lost: left alone"
        )
    if not info.lossless:
        # The decoded pixels of a lossy (VP8) WebP, stored losslessly, take several times the bytes.
        return MediaResult("webp", None, "lossy WebP: only lossless WebP is re-encoded")
    for _ in _frames_rgba(data, "webp", "original"):
        pass
    engine = f"libwebp {engine_versions()['libwebp']} lossless (Pillow {PILLOW_VERSION})"
    keep = {kind: (info.all(kind)[:1] or [b""])[0] for kind in (b"ICCP", b"EXIF", b"XMP ")}
    if options.strip_metadata:
        if _exif_orientation(keep[b"EXIF"]) == 1:
            keep[b"EXIF"] = b""
        keep[b"XMP "] = b""
    try:
        frames = _pillow_frames(data, "webp")
        out = io.BytesIO()
        params: dict[str, object] = {
            "lossless": True,
            "quality": 100,
            "method": _WEBP_METHOD,
            "exact": True,
            "icc_profile": keep[b"ICCP"],
            "exif": keep[b"EXIF"],
            "xmp": keep[b"XMP "],
        }
        if info.frames:
            params.update(
                save_all=True,
                append_images=frames[1:],
                duration=list(info.durations),
                loop=info.loop or 0,
                minimize_size=False,
                allow_mixed=False,
            )
        frames[0].save(out, "WEBP", **params)
        candidate = out.getvalue()
    except _DECODE_ERRORS as error:
        return MediaResult("webp", None, f"{engine}: WebP encoder: {error}")
    if len(candidate) >= len(data):
        return MediaResult("webp", None, f"{engine}: not smaller ({len(candidate)} bytes)")
    try:
        new = webp_structure(candidate, options.max_pixels)
        new_meta = {kind: (new.all(kind)[:1] or [b""])[0] for kind in (b"ICCP", b"EXIF", b"XMP ")}
        if (new.width, new.height, new.frames, new.durations) != (
            info.width,
            info.height,
            info.frames,
            info.durations,
        ):
            problem: str | None = "canvas, frame count or durations changed"
        elif info.frames and new.loop != info.loop:
            problem = "loop count changed"
        elif new_meta != keep:
            problem = "ICC, EXIF or XMP chunk not kept"
        else:
            problem = _compare_frames(
                _frames_rgba(data, "webp", "original"), _frames_rgba(candidate, "webp", "candidate")
            )
    except (Unreadable, Rejected) as error:
        problem = str(error)
    if problem is not None:
        return MediaResult("webp", None, f"{engine}: {problem}")
    return MediaResult(
        "webp",
        candidate,
        f"re-encoded losslessly ({engine}), every frame verified",
        details={"engine": engine},
    )
