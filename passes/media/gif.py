"""GIF: the block walker and lossless re-encoding with Pillow, every frame, delay and the loop count verified.

Unless the file may be reduced, the colour tables (entries in their order) and transparent indices stay as they
are: palette indices are data to a program (class ids of a segmentation mask), not only colours.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field

from .codec import (
    DECODE_ERRORS,
    PILLOW_VERSION,
    CodecOptions,
    MediaResult,
    Unreadable,
    check_pixels,
    pillow_frames,
    reduces,
    reencoded,
    run_guarded,
)
from .verify import compare_frames, compare_native, frames_rgba, palette_change

__all__ = ["GifInfo", "gif_structure", "optimize_gif"]


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
    palettes: tuple[bytes, ...]  # each frame's colour table (its own or the global one), entries in order
    transparency: tuple[int | None, ...]  # each frame's transparent index (graphic control extension)


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


@dataclass
class _Extensions:
    """What the extensions read so far say."""

    comments: list[bytes] = field(default_factory=list)
    applications: list[bytes] = field(default_factory=list)
    plain_text: int = 0
    loop: int | None = None
    control: tuple[int, int | None] = (0, None)  # the next image's delay and transparent index (from its GCE)

    def read(self, label: int, blocks: list[bytes]) -> None:
        if label == 0xF9 and blocks and len(blocks[0]) >= 4:
            delay = struct.unpack("<H", blocks[0][1:3])[0]
            self.control = (delay, blocks[0][3] if blocks[0][0] & 1 else None)
        elif label == 0xFE:
            self.comments.append(b"".join(blocks))
        elif label == 0x01:
            self.plain_text += 1
        elif label == 0xFF and blocks:
            if blocks[0] in (b"NETSCAPE2.0", b"ANIMEXTS1.0") and len(blocks) > 1 and blocks[1][:1] == b"\x01":
                self.loop = struct.unpack("<H", blocks[1][1:3])[0] if len(blocks[1]) >= 3 else None
            else:
                self.applications.append(blocks[0])


def gif_structure(data: bytes, max_pixels: int) -> GifInfo:
    """Walk the GIF blocks to the trailer; ``Unreadable`` when truncated, corrupt or over the cap."""
    if len(data) < 13 or data[:6] not in (b"GIF87a", b"GIF89a"):
        raise Unreadable("not a GIF file")
    width, height, packed = struct.unpack("<HHB", data[6:11])
    pos = 13 + (3 << ((packed & 7) + 1) if packed & 0x80 else 0)
    frames, pixels, interlaced = 0, 0, False
    palette = data[13:pos]
    palettes: list[bytes] = []
    controls: list[tuple[int, int | None]] = []
    extensions = _Extensions()
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
            blocks, end = _gif_blocks(data, pos + 2)
            extensions.read(data[pos + 1], blocks)
            pos = end
            continue
        if introducer != 0x2C:
            raise Unreadable(f"corrupt GIF: unexpected byte {introducer:#04x} at offset {pos}")
        if pos + 11 > len(data):
            raise Unreadable("truncated GIF: image descriptor cut off")
        left, top, frame_width, frame_height, flags = struct.unpack("<HHHHB", data[pos + 1 : pos + 10])
        if not frames:
            interlaced = bool(flags & 0x40)
        start = pos + 10
        pos += 10 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
        palettes.append(data[start:pos] if flags & 0x80 else palette)
        pixels += max(width * height, (left + frame_width) * (top + frame_height))
        if pixels > max_pixels:
            raise Unreadable(
                f"GIF frame {frames} of {frame_width}x{frame_height} brings the pixels to {pixels}, over the cap "
                f"of {max_pixels} (--media-max-pixels)"
            )
        _, pos = _gif_blocks(data, pos + 1)  # LZW minimum code size, then the image data
        frames += 1
        controls.append(extensions.control)
        extensions.control = (0, None)
    if not frames:
        raise Unreadable("corrupt GIF: no image")
    check_pixels("GIF", width or 1, height or 1, 1, max_pixels)
    return GifInfo(
        width,
        height,
        frames,
        tuple(delay for delay, _ in controls),
        extensions.loop,
        interlaced,
        tuple(extensions.comments),
        tuple(extensions.applications),
        extensions.plain_text,
        len(data) - pos,
        tuple(palettes),
        tuple(index for _, index in controls),
    )


def optimize_gif(data: bytes, options: CodecOptions) -> MediaResult:
    """Lossless GIF re-encoding with Pillow, kept only when smaller and every frame, delay and the loop count
    are unchanged."""
    return run_guarded("gif", options, lambda: _optimize_gif(data, options))


def _optimize_gif(data: bytes, options: CodecOptions) -> MediaResult:
    info = gif_structure(data, options.max_pixels)
    if info.trailing:
        return MediaResult(
            "gif", None, f"{info.trailing} bytes after the GIF trailer would be lost: left alone"
        )
    for _ in frames_rgba(data, "gif", "original"):
        pass
    if not options.strip_metadata and (info.applications or info.plain_text):
        names = sorted({a.decode("latin-1") for a in info.applications})
        return MediaResult(
            "gif", None, f"GIF extensions Pillow does not write ({names or 'plain text'}): left alone"
        )
    engine = f"Pillow {PILLOW_VERSION}"
    try:
        candidate = _encode(data, info, options)
    except DECODE_ERRORS as error:
        return MediaResult("gif", None, f"{engine}: GIF encoder: {error}")
    return reencoded(
        "gif",
        data,
        candidate,
        engine,
        lambda: _verify(data, info, candidate, options),
        lambda: _form_change(info, gif_structure(candidate, options.max_pixels)),
    )


def _encode(data: bytes, info: GifInfo, options: CodecOptions) -> bytes:
    frames = pillow_frames(data, "gif")
    out = io.BytesIO()
    # Pillow's optimize drops unused colours and renumbers the indices: a reduction
    params: dict[str, object] = {"optimize": reduces(options), "interlace": info.interlaced}
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
    return out.getvalue()


def _form_change(info: GifInfo, new: GifInfo) -> str | None:
    """How the candidate's colour tables or transparent indices differ, in words, or None."""
    for number, (old, now) in enumerate(zip(info.palettes, new.palettes, strict=False)):
        if old != now:
            return f"frame {number}: {palette_change(old, now, 3)}"
    if info.transparency != new.transparency:
        return "transparent index changed"
    return None


def _verify(data: bytes, info: GifInfo, candidate: bytes, options: CodecOptions) -> str | None:
    """Frames, delays, loop count and comments kept, and the same RGBA in every frame; unless the file may be
    reduced, also the same colour tables (entries in order), transparent indices and native samples."""
    new = gif_structure(candidate, options.max_pixels)
    want_comments = () if options.strip_metadata else info.comments
    if (new.frames, new.delays, new.loop) != (info.frames, info.delays, info.loop):
        return "frame count, delays or loop count changed"
    if new.comments != want_comments:
        return "comments not kept"
    if not reduces(options):
        change = _form_change(info, new)
        if change is not None:
            return f"native form not kept ({change})"
        problem = compare_native(data, candidate, "gif")
        if problem is not None:
            return problem
    return compare_frames(frames_rgba(data, "gif", "original"), frames_rgba(candidate, "gif", "candidate"))
