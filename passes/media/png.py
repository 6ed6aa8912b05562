"""PNG and APNG: the chunk walker, canonical 16-bit RGBA pixels, the metadata policy, oxipng and Pillow.

``png_structure`` checks every chunk and CRC before a decoder sees the file; ``optimize_png`` recompresses with
oxipng (Pillow when oxipng is absent or fails) and keeps a candidate only when the metadata policy holds and
every frame (every band of a still image) decodes to the same RGBA at 16 bits a sample. Unless the file may be
reduced, oxipng's reductions are off and the candidate must keep IHDR's bit depth and colour type, the palette
in its order and the other sample chunks (``png_form_change``), and decode to the same native samples.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import struct
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypedDict

import numpy as np
from PIL import Image, ImageFile

from .codec import (
    BAND_PIXELS,
    DECODE_ERRORS,
    PILLOW_VERSION,
    PNG_SIGNATURE,
    U16,
    CodecOptions,
    MediaResult,
    Rejected,
    Unreadable,
    check_pixels,
    engine_versions,
    exif_orientation,
    inflate,
    open_image,
    reduces,
    run_guarded,
    side_error,
)
from .cost import expected_gain, png_effort
from .verify import compare_frames, compare_native, png_form_change, rgba16_from_pillow

__all__ = ["PngChunk", "PngInfo", "optimize_png", "png_pixels", "png_rgba16", "png_structure"]

_ICC_LIMIT = 32 << 20  # larger "profiles" are bombs, not colour information

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
    check_pixels("PNG", width, height, frames, max_pixels)
    for chunk in chunks:
        if chunk.type == b"iCCP":
            _icc_profile(chunk.body)
    return PngInfo(width, height, depth, colour, interlace, tuple(chunks), frames, plays, len(data) - pos)


def _icc_profile(body: bytes) -> bytes:
    _name, _, rest = body.partition(b"\0")
    if not rest or rest[0] != 0:
        raise Unreadable("corrupt PNG: iCCP chunk")
    return inflate(rest[1:], _ICC_LIMIT, "iCCP profile")


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
    image = open_image(data, "png")
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
        return rgba16_from_pillow(part)
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


_Decoded = tuple[Image.Image, Image.Image | None]


def _png_decoded(data: bytes, info: PngInfo) -> _Decoded | None:
    """Decode the original completely before anything else (``Unreadable`` if it cannot be); a still image's
    decoding is returned for the proofs to reuse."""
    if info.frames:
        for _ in _png_frames(data, info, "original"):
            pass
        return None
    try:
        return _png_images(data, info)
    except DECODE_ERRORS as error:
        raise side_error("original", "PNG", error) from error


def _png_frames(
    data: bytes, info: PngInfo, side: str, decoded: _Decoded | None = None
) -> Iterator[tuple[U16, object]]:
    """Canonical RGBA of every frame (of every band of a still image) with its timing."""
    try:
        if not info.frames:
            image, low = decoded or _png_images(data, info)
            rows = max(1, BAND_PIXELS // info.width)
            for top in range(0, info.height, rows):
                box = (0, top, info.width, min(info.height, top + rows))
                yield png_rgba16(info, image, low, box), ("still", box)
            return
        image = open_image(data, "png")
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
    except DECODE_ERRORS as error:
        raise side_error(side, "PNG", error) from error


def _png_strip(info: PngInfo, options: CodecOptions) -> set[bytes]:
    """Chunk types removed on purpose: text and time, and EXIF unless it turns the image."""
    if not options.strip_metadata:
        return set()
    strip = set(_PNG_TEXT)
    if all(exif_orientation(exif) == 1 for exif in info.all(b"eXIf")):
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


class _OxipngReductions(TypedDict):
    bit_depth_reduction: bool
    color_type_reduction: bool
    palette_reduction: bool
    grayscale_reduction: bool


def _reduction_kwargs(reduce: bool) -> _OxipngReductions:
    """oxipng's lossless reductions, all on or all off: bit depth (16 to 8 bits where both bytes of every
    sample are equal; 8 to 4, 2 or 1 bit for grey and palettes), colour type (RGBA -> RGB -> palette, alpha
    dropped when opaque), palette (unused entries dropped, entries sorted: indices renumbered) and grayscale
    (RGB -> grey). Each keeps what a browser renders and changes what a program reads."""
    return {
        "bit_depth_reduction": reduce,
        "color_type_reduction": reduce,
        "palette_reduction": reduce,
        "grayscale_reduction": reduce,
    }


def _png_oxipng(data: bytes, info: PngInfo, options: CodecOptions) -> bytes:
    if multiprocessing.parent_process() is not None:
        # In a pool worker the pool already keeps every core busy: oxipng's own thread pool (one thread per
        # core, created on first use) would only make the workers fight. The output does not depend on it.
        os.environ.setdefault("RAYON_NUM_THREADS", "1")
    import oxipng

    strip = sorted(_png_strip(info, options))
    effort = png_effort(info, options)
    try:
        return oxipng.optimize_from_memory(
            data,
            level=effort.level,
            **effort.deflater(),
            # pyoxipng's default (argument omitted) de-interlaces; None keeps the input's interlacing
            interlace=None if options.png_interlace == "keep" else oxipng.Interlacing.Off,
            strip=oxipng.StripChunks.strip(strip) if strip else oxipng.StripChunks.none(),
            # colour under fully transparent pixels is kept: a program reading samples sees it, and so
            # does the RGBA proof (it compares the colour of transparent pixels too)
            optimize_alpha=False,
            scale_16=False,  # 16 -> 8 bits by dropping the low bytes is lossy
            fix_errors=False,
            **_reduction_kwargs(reduces(options)),
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
    except DECODE_ERRORS as error:
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
    return run_guarded("png", options, lambda: _optimize_png(data, options))


def _optimize_png(data: bytes, options: CodecOptions) -> MediaResult:
    info = png_structure(data, options.max_pixels)
    if info.trailing:
        return MediaResult("png", None, f"{info.trailing} bytes after IEND would be lost: left alone")
    if info.frames and info.bit_depth == 16:
        return MediaResult("png", None, "16-bit animated PNG: frames cannot be verified exactly, left alone")
    if options.min_gain and (gain := expected_gain(info)) < options.min_gain:
        return MediaResult(
            "png", None, f"expected gain {gain} B is under --media-min-gain {options.min_gain} B: left alone"
        )
    decoded = _png_decoded(data, info)
    engines: list[tuple[str, Callable[[bytes, PngInfo, CodecOptions], bytes]]] = []
    if options.png_engine in ("auto", "oxipng"):
        effort = png_effort(info, options).describe()
        engines.append((f"oxipng {engine_versions()['oxipng']} {effort}", _png_oxipng))
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
            problem = _png_verify(data, info, candidate, options, decoded)
            if problem is None:
                details = {"engine": engine}
                change = png_form_change(info, png_structure(candidate, options.max_pixels))
                if change is not None:
                    details["reduction"] = change
                return MediaResult(
                    "png", candidate, f"recompressed losslessly ({engine}), pixels verified", details=details
                )
            reasons.append(f"{engine}: {problem}")
        except Rejected as error:
            reasons.append(f"{engine}: {error}")
    return MediaResult("png", None, "; ".join(reasons) or "no PNG encoder available")


def _png_verify(
    data: bytes, info: PngInfo, candidate: bytes, options: CodecOptions, decoded: _Decoded | None = None
) -> str | None:
    """None when the candidate is good: the metadata policy holds and the pixels are proven the same. A native
    result must also store its samples as the original did, and decode to the same native samples; the RGBA
    proof at 16 bits then runs only where Pillow's native mode holds the high bytes alone (16-bit colour)."""
    try:
        new = png_structure(candidate, options.max_pixels)
    except Unreadable as error:
        return f"output does not parse: {error}"
    problem = _png_policy(info, new, options)
    if problem is not None:
        return problem
    if new.frames and new.bit_depth == 16:
        return "output is a 16-bit animation that cannot be verified"
    if not reduces(options):
        change = png_form_change(info, new)
        if change is not None:
            return f"native form not kept ({change})"
        # the original's decoding is its native frame unless grey+alpha 16-bit (decoded as raw RGBA)
        native = decoded[0] if decoded and not (info.colour_type == 4 and info.bit_depth == 16) else None
        problem = compare_native(data, candidate, "png", native)
        if problem is not None or not (info.bit_depth == 16 and info.colour_type != 0):
            return problem
    return compare_frames(
        _png_frames(data, info, "original", decoded), _png_frames(candidate, new, "candidate")
    )
