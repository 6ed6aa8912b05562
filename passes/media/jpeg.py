"""JPEG: the marker walker, MozJPEG's lossless transcoder with the metadata put back, opt-in lossy re-encoding.

``jpeg_structure`` walks every marker segment and the entropy-coded data to EOI before a decoder sees the
file. A lossless candidate must decode to the same pixels and carry the kept metadata segments verbatim; a
lossy one (``--media-lossy``) is made only where the file may be reduced (``--media-reduce``), only above the
target quality, with the original's chroma subsampling, and kept only when it carries the same metadata
segments, its combined SSIM against the original, (6 Y + Cb + Cr) / 8, stays at or above the floor, and
neither chroma plane's falls under the chroma floor.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from PIL import Image, JpegImagePlugin

from .codec import (
    DECODE_ERRORS,
    CodecOptions,
    MediaResult,
    Rejected,
    Unreadable,
    check_pixels,
    engine_versions,
    exif_orientation,
    open_image,
    reduces,
    run_guarded,
    side_error,
)
from .verify import combined_ssim, jpeg_ssim

__all__ = [
    "JpegInfo",
    "JpegSegment",
    "estimate_jpeg_quality",
    "jpeg_structure",
    "optimize_jpeg",
    "ssim_refusals",
]

_JPEG_SCAN_LIMIT = 500  # as libjpeg-turbo's fuzzers: more scans than this is a decoding-time bomb

_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_SOF_TRANSCODABLE = {0xC0, 0xC1, 0xC2, 0xC9, 0xCA}  # DCT, 8-bit, non-hierarchical
_STANDALONE = {0x01, *range(0xD0, 0xD8)}
_SOS, _EOI = 0xDA, 0xD9
# ITU T.81 Annex K, table K.1: the standard luminance quantization table, in row order.
_STD_LUMA_QUANT = (
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip


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

    def form(self, data: bytes) -> tuple[int, int, bytes]:
        """How samples are stored: precision, component count, and each component's id and sampling factors
        (with the JFIF/Adobe segments, kept verbatim, they fix the colour space)."""
        frame = next(s.payload(data) for s in self.segments if s.marker == self.sof)
        specs = frame[6 : 6 + 3 * self.components]
        return self.precision, self.components, b"".join(specs[n : n + 2] for n in range(0, len(specs), 3))

    def sampling(self, data: bytes) -> tuple[tuple[int, int], ...]:
        """Each component's horizontal and vertical sampling factors, in frame order (4:2:0 is
        ((2, 2), (1, 1), (1, 1))); one component has none that matter (its scan is not interleaved)."""
        factors = self.form(data)[2][1::2]
        if len(factors) == 1:
            return ()
        return tuple((f >> 4, f & 15) for f in factors)


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
    check_pixels("JPEG", width, height, 1, max_pixels)
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
            essential = exif_orientation(payload) != 1
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
        image = open_image(data, "jpeg")
        image.load()
        return image
    except DECODE_ERRORS as error:
        raise side_error(side, "JPEG", error) from error


def optimize_jpeg(data: bytes, options: CodecOptions) -> MediaResult:
    """Lossless JPEG optimisation (MozJPEG: optimal Huffman tables, progressive scans), metadata put back
    verbatim; with ``lossy``, a re-encode at ``jpeg_quality`` when the SSIM floor holds."""
    return run_guarded("jpeg", options, lambda: _optimize_jpeg(data, options))


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
        problem = _jpeg_verify_lossless(original, info.form(data), candidate, keep, options)
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
        smallest = best if best is not None else data
        if lossy is not None and len(lossy) < len(smallest):
            details["reduction"] = f"lossy, quality {options.jpeg_quality}"
            return MediaResult(
                "jpeg", lossy, f"re-encoded at quality {options.jpeg_quality} ({why})", details=details
            )
        if lossy is not None:
            why = f"not smaller than the {'lossless result' if best else 'original'} ({len(lossy)} bytes)"
        details["lossy"] = why
        reasons.append(f"lossy: {why}")
    if best is not None:
        return MediaResult(
            "jpeg", best, "optimized losslessly (MozJPEG), pixels and metadata verified", details=details
        )
    return MediaResult("jpeg", None, "; ".join(reasons), details=details)


def _jpeg_verify_lossless(
    original: Image.Image,
    form: tuple[int, int, bytes],
    candidate: bytes,
    keep: Sequence[bytes],
    options: CodecOptions,
) -> str | None:
    """Metadata segments kept, the same colour space and components, the same decoded samples."""
    try:
        new_info = jpeg_structure(candidate, options.max_pixels)
    except Unreadable as error:
        return f"output does not parse: {error}"
    if new_info.metadata(candidate) != list(keep):
        return "metadata segments not kept"
    if new_info.form(candidate) != form:
        return f"components or sampling changed ({form} -> {new_info.form(candidate)})"
    decoded = _jpeg_decode(candidate, "candidate")
    if (decoded.mode, decoded.size) != (original.mode, original.size):
        return f"decodes as {decoded.mode} {decoded.size}, not {original.mode} {original.size}"
    if decoded.tobytes() != original.tobytes():
        return "decoded pixels differ"
    return None


# Pillow's ``subsampling`` values (``JpegImagePlugin.get_sampling``), by the sampling factors they write
_PILLOW_SAMPLINGS = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}


def _not_reducible(options: CodecOptions) -> str:
    if options.reduce == "never":
        return "not tried: --media-reduce never"
    return f"not tried: --media-reduce {options.reduce} with no path to tell a web root by (only 'always' allows it)"


def _jpeg_lossy(
    data: bytes, info: JpegInfo, original: Image.Image, keep: Sequence[bytes], options: CodecOptions
) -> tuple[bytes | None, str, dict[str, str | int | float]]:
    """A lossy candidate at the target quality, or None and why not (the finding's ``lossy``).

    Lossy re-encoding is a reduction: tried only where the file may be reduced (``reduces``: the pass hands
    "always" to files under a web server's document root with ``--media-reduce web``, to every file with
    ``always``, to none with ``never``). The candidate keeps what the lossless path keeps: the metadata
    segments, verbatim and in order (JFIF, Adobe, the ICC profile, EXIF and its orientation, the rest unless
    ``--media-strip-metadata``), the component count and the chroma subsampling of the original (Pillow
    writes 4:4:4, 4:2:2 and 4:2:0; a file sampled otherwise, 4:4:0 or 4:1:1, is not re-encoded rather than
    given other chroma resolution); its scans are progressive, as MozJPEG writes the lossless path's."""
    assert isinstance(original, JpegImagePlugin.JpegImageFile)
    if not reduces(options):
        return None, _not_reducible(options), {}
    quality = estimate_jpeg_quality(original.quantization or {})
    facts: dict[str, str | int | float] = {"estimated_quality": quality if quality is not None else "unknown"}
    if original.mode not in ("L", "RGB"):
        return None, f"{original.mode} JPEGs are only optimized losslessly", facts
    adobe = [
        s.payload(data) for s in info.segments if s.marker == 0xEE and s.payload(data).startswith(b"Adobe")
    ]
    if original.mode == "RGB" and adobe and (len(adobe[0]) < 12 or adobe[0][11] != 1):
        return None, "RGB-coded (not YCbCr) JPEG is only optimized losslessly", facts
    if quality is None or quality <= options.jpeg_quality:
        return None, f"estimated quality {quality} is not above {options.jpeg_quality}", facts
    subsampling = JpegImagePlugin.get_sampling(original)
    if original.mode == "RGB" and subsampling not in _PILLOW_SAMPLINGS:
        factors = ",".join(f"{h}x{v}" for h, v in info.sampling(data))
        writable = ", ".join(_PILLOW_SAMPLINGS.values())
        return None, f"chroma sampling {factors} is not one Pillow writes ({writable})", facts
    out = io.BytesIO()
    try:
        original.save(out, "JPEG", quality=options.jpeg_quality, subsampling=subsampling, optimize=True)
        candidate = _jpeg_with_metadata(_mozjpeg(out.getvalue()), keep, options.max_pixels)
    except Rejected as error:
        return None, str(error), facts
    except DECODE_ERRORS as error:
        return None, f"Pillow JPEG encoder: {error}", facts
    problem = _jpeg_verify_lossy(data, info, original, candidate, keep, options, facts)
    if problem is not None:
        return None, problem, facts
    chroma = f", Cb and Cr >= {options.ssim_chroma_floor}" if original.mode == "RGB" else ""
    return (
        candidate,
        f"estimated quality {quality}, SSIM {facts['ssim']:.4f} >= {options.ssim_floor}{chroma}",
        facts,
    )


def _jpeg_verify_lossy(
    data: bytes,
    info: JpegInfo,
    original: Image.Image,
    candidate: bytes,
    keep: Sequence[bytes],
    options: CodecOptions,
    facts: dict[str, str | int | float],
) -> str | None:
    """What keeps a lossy candidate out, or None: metadata or sampling not kept, another mode or size, a
    combined SSIM under the floor, or a chroma plane's SSIM under the chroma floor (each rule that refuses is
    named). The scores go in ``facts``: ``ssim``, the combined score, and ``ssim_channels``, each plane's.

    The combined score, (6 Y + Cb + Cr) / 8 (``verify.combined_ssim``, the weighting of codec comparisons),
    judges the image as a whole: at quality 85 a photo's chroma planes score a little under its luma (the
    colour fixtures: Cb and Cr 0.970-0.985 where Y is 0.987-0.993), and gating on the worst plane refused
    nearly every colour photo for chroma scores a little under 0.98. The chroma floor keeps what the worst
    plane was for: a chroma plane damaged while luma scores near 1 (colour fringes on text, a fabric's fine
    colour pattern smeared), which the combined score, luma weighing six of eight, would let through."""
    try:
        new_info = jpeg_structure(candidate, options.max_pixels)
        decoded = _jpeg_decode(candidate, "candidate")
    except (Unreadable, Rejected) as error:
        return str(error)
    if new_info.metadata(candidate) != list(keep):
        return "metadata segments not kept"
    sampling, kept = info.sampling(data), new_info.sampling(candidate)
    if kept != sampling:
        return f"sampling changed ({sampling} -> {kept})"
    if (decoded.mode, decoded.size) != (original.mode, original.size):
        return "re-encoded image changed mode or size"
    # Pillow writes Cb and Cr 1x1: Y's factors are the chroma subsampling
    chroma = (
        (sampling[0][0] // sampling[1][0], sampling[0][1] // sampling[1][1]) if len(sampling) == 3 else (1, 1)
    )
    scores = jpeg_ssim(original, decoded, chroma)
    combined = combined_ssim(scores)
    facts["ssim"] = round(combined, 5)
    facts["ssim_channels"] = " ".join(f"{name} {score:.5f}" for name, score in scores.items())
    return "; ".join(ssim_refusals(scores, options.ssim_floor, options.ssim_chroma_floor)) or None


def ssim_refusals(scores: Mapping[str, float], floor: float, chroma_floor: float) -> list[str]:
    """Each rule of the lossy gate that planes scoring ``scores`` (``verify.jpeg_ssim``) fail, in words: the
    combined score under ``floor``, a chroma plane under ``chroma_floor``; none: the candidate passes."""
    refusals = []
    combined = combined_ssim(scores)
    if combined < floor:
        which = "combined SSIM" if len(scores) > 1 else "SSIM"
        weights = " ((6 Y + Cb + Cr) / 8)" if len(scores) > 1 else ""
        refusals.append(f"{which} {combined:.4f}{weights} below the floor {floor}")
    for name, score in scores.items():
        if name != "Y" and score < chroma_floor:
            refusals.append(f"SSIM {score:.4f} of {name} below the chroma floor {chroma_floor}")
    return refusals
