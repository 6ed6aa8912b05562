"""WebP: the RIFF walker and lossless re-encoding with libwebp (through Pillow); lossy WebP is left alone.

Unless the file may be reduced, the result must decode to the same native mode (RGB stays RGB, RGBA stays RGBA
even when every pixel is opaque) and samples.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

from .codec import (
    DECODE_ERRORS,
    PILLOW_VERSION,
    CodecOptions,
    MediaResult,
    Unreadable,
    check_pixels,
    engine_versions,
    exif_orientation,
    pillow_frames,
    reduces,
    reencoded,
    run_guarded,
)
from .verify import compare_frames, compare_native, frames_rgba, reduction

__all__ = ["WebpInfo", "optimize_webp", "webp_structure"]

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
    check_pixels("WebP", width, height, frames, max_pixels)
    return WebpInfo(width, height, tuple(chunks), frames, tuple(durations), loop, lossless, len(data) - end)


def optimize_webp(data: bytes, options: CodecOptions) -> MediaResult:
    """Lossless WebP re-encoding of the decoded pixels (libwebp through Pillow, effort 4), kept only when
    smaller and every frame, duration, the loop count and the ICC/EXIF/XMP chunks are unchanged."""
    return run_guarded("webp", options, lambda: _optimize_webp(data, options))


def _optimize_webp(data: bytes, options: CodecOptions) -> MediaResult:
    info = webp_structure(data, options.max_pixels)
    if info.trailing > 1:
        return MediaResult(
            "webp", None, f"{info.trailing} bytes after the RIFF chunk would be lost: left alone"
        )
    if not info.lossless:
        # The decoded pixels of a lossy (VP8) WebP, stored losslessly, take several times the bytes.
        return MediaResult("webp", None, "lossy WebP: only lossless WebP is re-encoded")
    for _ in frames_rgba(data, "webp", "original"):
        pass
    engine = f"libwebp {engine_versions()['libwebp']} lossless (Pillow {PILLOW_VERSION})"
    keep = _metadata(info)
    if options.strip_metadata:
        if exif_orientation(keep[b"EXIF"]) == 1:
            keep[b"EXIF"] = b""
        keep[b"XMP "] = b""
    try:
        candidate = _encode(data, info, keep)
    except DECODE_ERRORS as error:
        return MediaResult("webp", None, f"{engine}: WebP encoder: {error}")
    return reencoded(
        "webp",
        data,
        candidate,
        engine,
        lambda: _verify(data, info, candidate, keep, options),
        lambda: reduction(data, candidate, "webp"),
    )


def _metadata(info: WebpInfo) -> dict[bytes, bytes]:
    """The first ICCP, EXIF and XMP chunks (empty when absent): what the encoder writes back."""
    return {kind: (info.all(kind)[:1] or [b""])[0] for kind in (b"ICCP", b"EXIF", b"XMP ")}


def _encode(data: bytes, info: WebpInfo, keep: dict[bytes, bytes]) -> bytes:
    frames = pillow_frames(data, "webp")
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
    return out.getvalue()


def _verify(
    data: bytes, info: WebpInfo, candidate: bytes, keep: dict[bytes, bytes], options: CodecOptions
) -> str | None:
    new = webp_structure(candidate, options.max_pixels)
    geometry = (new.width, new.height, new.frames, new.durations)
    if geometry != (info.width, info.height, info.frames, info.durations):
        return "canvas, frame count or durations changed"
    if info.frames and new.loop != info.loop:
        return "loop count changed"
    if _metadata(new) != keep:
        return "ICC, EXIF or XMP chunk not kept"
    if not reduces(options):
        # libwebp drops the alpha channel of an image whose alpha is all opaque: RGBA -> RGB is caught here
        problem = compare_native(data, candidate, "webp")
        if problem is not None:
            return problem
    return compare_frames(frames_rgba(data, "webp", "original"), frames_rgba(candidate, "webp", "candidate"))
