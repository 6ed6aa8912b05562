"""The ``media`` pass: re-encode PNG, JPEG, GIF and WebP files losslessly, proven pixel-identical.

The pass (``Media``) and its worker entry point (``optimize``) live here; the formats live in one module each
(``png``, ``jpeg``, ``gif``, ``webp``), what they share in ``codec`` and the pixel proofs in ``verify``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from optimizer.changes import ChangeRefused
from optimizer.errors import UsageError
from optimizer.filesystem import Node
from optimizer.model import Content
from optimizer.pipeline import PassContext
from optimizer.settings import setting
from passes import packages

from .codec import FORMATS, CodecOptions, MediaResult, sniff
from .cost import estimated_seconds
from .gif import optimize_gif
from .jpeg import optimize_jpeg
from .png import optimize_png
from .webp import optimize_webp

if TYPE_CHECKING:
    from passes.servers import WebRoots

__all__ = ["Media", "MediaOptions", "MediaResult", "optimize", "sniff"]

_MAX_FILE_BYTES = 256 << 20  # larger image files are left alone without being read


def _png_level(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"media: --media-png-level must be auto or 0 to 6, not {text!r}") from None


@dataclass(frozen=True)
class MediaOptions:
    strip_metadata: bool = setting(
        False, "drop text/time chunks, EXIF (unless it rotates the image), XMP, IPTC and comments"
    )
    png_interlace: Literal["keep", "off"] = setting(
        "keep", "keep PNG interlacing (default) or write non-interlaced PNGs"
    )
    # auto keeps within 0.2% of optipng -o2 file by file on the fixtures (test_png); level 2 alone does not
    png_level: int | Literal["auto"] = setting(
        "auto",
        "oxipng preset to start from; auto (default): level 2, with libdeflate 12 for decoded rows of 256 KiB "
        "and more (passes/media/cost.py)",
        metavar="auto|0-6",
        parse=_png_level,
    )
    # 5: the estimate runs up to 3x high on large flat images; at 2, fixtures went larger than optipng -o2
    budget: float = setting(
        5.0,
        "estimated PNG encoding seconds a file may take: one over it gets a cheaper oxipng effort; 0: no budget",
        metavar="SECONDS",
    )
    min_gain: int = setting(
        0, "leave PNGs whose expected gain is under BYTES alone, unread (default 0: off)", metavar="BYTES"
    )
    png_engine: Literal["auto", "oxipng", "pillow"] = setting(
        "auto", "PNG encoder (default auto: oxipng, Pillow when oxipng is absent or fails)"
    )
    lossy: bool = setting(
        False,
        "allow lossy JPEG re-encoding at --jpeg-quality when the SSIM floor holds, where --media-reduce allows "
        "reductions",
    )
    jpeg_quality: int = setting(
        85,
        "target JPEG quality for --media-lossy",
        flag="--jpeg-quality",
        aliases=("--media-jpeg-quality",),
        metavar="Q",
    )
    # mean SSIM over 7x7 windows against the original, of each plane (Y, Cb, Cr; grey: one), combined 6:1:1
    ssim_floor: float = setting(
        0.98, "lowest combined SSIM, (6 Y + Cb + Cr) / 8, a lossy JPEG may have", metavar="S"
    )
    # at quality 85 the colour fixtures' chroma scores 0.970-0.985; a smeared colour pattern 0.94 (test_jpeg_lossy)
    ssim_chroma_floor: float = setting(
        0.95, "lowest SSIM a lossy JPEG may have on either chroma plane (Cb, Cr)", metavar="S"
    )
    max_pixels: int = setting(
        40_000_000, "leave files with more decoded pixels (all frames) alone", metavar="N"
    )
    formats: tuple[str, ...] = setting(FORMATS, "formats to optimize, comma-separated", metavar="LIST")
    reduce: Literal["web", "always", "never"] = setting(
        "web",
        "when a file may lose its native form (bit depth, colour type, channels, palette order) to get smaller: "
        "web (default: only under a web server's document root, where only a browser reads it), always, never",
    )

    def __post_init__(self) -> None:
        if self.png_interlace not in ("keep", "off"):
            raise UsageError(f"media: --media-png-interlace must be keep or off, not {self.png_interlace!r}")
        if self.png_engine not in ("auto", "oxipng", "pillow"):
            raise UsageError(
                f"media: --media-png-engine must be auto, oxipng or pillow, not {self.png_engine!r}"
            )
        if self.png_level != "auto" and (
            isinstance(self.png_level, bool)
            or not isinstance(self.png_level, int)
            or not 0 <= self.png_level <= 6
        ):
            raise UsageError(f"media: --media-png-level must be auto or 0 to 6, not {self.png_level!r}")
        if not 0 <= self.budget < float("inf"):
            raise UsageError(
                f"media: --media-budget must be 0 (no budget) or more seconds, not {self.budget}"
            )
        if self.min_gain < 0:
            raise UsageError(f"media: --media-min-gain must be 0 (off) or more bytes, not {self.min_gain}")
        if not 1 <= self.jpeg_quality <= 100:
            raise UsageError(f"media: --jpeg-quality must be 1 to 100, not {self.jpeg_quality}")
        if not 0.0 < self.ssim_floor <= 1.0:
            raise UsageError(f"media: --media-ssim-floor must be in (0, 1], not {self.ssim_floor}")
        if not 0.0 < self.ssim_chroma_floor <= 1.0:
            raise UsageError(
                f"media: --media-ssim-chroma-floor must be in (0, 1], not {self.ssim_chroma_floor}"
            )
        if self.max_pixels < 1:
            raise UsageError(f"media: --media-max-pixels must be positive, not {self.max_pixels}")
        if self.reduce not in ("web", "always", "never"):
            raise UsageError(f"media: --media-reduce must be web, always or never, not {self.reduce!r}")
        unknown = sorted(set(self.formats) - set(FORMATS))
        if unknown or not self.formats:
            raise UsageError(
                f"media: --media-formats takes some of {', '.join(FORMATS)}, not {unknown or 'nothing'}"
            )


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


@dataclass
class _Group:
    """Files with the same bytes and the same freedom to reduce: optimized once, replaced everywhere."""

    format: str
    head: bytes  # the first bytes of the content (its cost estimate reads them)
    # path, node, and why it may be reduced (None: it keeps its native form)
    nodes: list[tuple[str, Node, str | None]] = field(default_factory=list)


class _Reductions:
    """Why a file may lose its native form (``--media-reduce``), or None when it keeps it.

    With "web", a file may be reduced when it lies under a document root of one of the image's web servers
    (``passes.servers.web_roots``), where only a browser reads it, and every other name of it does too (its
    hardlinks here; a symlink from outside every root into one makes ``web_roots`` hold nothing below its
    target): the roots are read once, the first time a file asks."""

    def __init__(self, ctx: PassContext, mode: str) -> None:
        self._ctx = ctx
        self._mode = mode
        self._roots: WebRoots | None = None
        self._links: dict[int, list[str]] | None = None

    def why(self, path: str, node: Node) -> str | None:
        if self._mode != "web":
            return "--media-reduce always" if self._mode == "always" else None
        roots = self._web_roots()
        reasons = [roots.holding(p) for p in self._names(path, node)]
        return reasons[0] if all(reasons) else None

    def why_not(self, path: str, node: Node) -> str:
        """Why a file ``why`` gives None for may not be reduced, in words."""
        if self._mode != "web":
            return f"--media-reduce {self._mode}"
        from passes.servers.files import under

        roots = self._web_roots()
        if not roots.roots:
            return "--media-reduce web, and the image has no web server document root"
        outside = next((p for p in self._names(path, node) if roots.holding(p) is None), path)
        link = next((link for t, link in roots.entrances.items() if under(outside, t)), None)
        if link is not None:
            return (
                f"--media-reduce web, and /{outside} is reached through /{link}, outside every document root"
            )
        name = "it" if outside == path else f"its hardlink /{outside}"
        return f"--media-reduce web, and {name} is outside every web server document root"

    def _web_roots(self) -> WebRoots:
        if self._roots is None:
            from passes.servers import web_roots  # the server parsers, only when a file asks

            self._roots = web_roots(self._ctx.fs, self._ctx.image.config)
        return self._roots

    def _names(self, path: str, node: Node) -> list[str]:
        fs = self._ctx.fs
        if fs.holder(node.inode) is None:
            return [path]
        if self._links is None:
            self._links = {}
            for other, linked in fs.files():
                if fs.holder(linked.inode) is not None:
                    self._links.setdefault(linked.inode, []).append(other)
        return self._links.get(node.inode, [path])


def _form(result: MediaResult, why: str | None) -> str:
    """The finding's word on the native form: kept, or reduced and why that was allowed."""
    reduction = result.details.get("reduction")
    if why is None:
        return "native mode kept"
    if reduction and result.data is not None:
        return f"reduced ({reduction}): {why}"
    return f"native mode kept (reductions allowed: {why})"


class Media:
    """Re-encode PNG, JPEG, GIF and WebP files losslessly, and keep a result only if it is proven identical.

    What: PNG and APNG are recompressed by oxipng (Pillow when oxipng is absent or fails), JPEG by MozJPEG's
    lossless transcoder (optimal Huffman tables, progressive scans), GIF and lossless WebP re-encoded losslessly
    by Pillow/libwebp (lossy WebP is left alone: stored losslessly it would grow). Files are found by their first bytes, not their names. A result replaces the file only if
    it is smaller, decodes to the same pixels (every frame, palettes expanded, transparency, 16-bit samples
    at full precision), keeps frame timing and loop count, and keeps the metadata the policy keeps: colour
    information always (PNG iCCP/gAMA/cHRM/sRGB, JPEG ICC/JFIF/Adobe), and text, time, EXIF, XMP, IPTC and
    comments unless ``--media-strip-metadata`` (EXIF that rotates the image is kept even then).
    The native form (bit depth, colour type, channels, palette entries in order and their alpha) is kept too, and
    proven by decoding both files to their native mode and comparing the raw samples: a program reading them
    (a heightmap loader, a segmentation mask's class ids) gets what it got. Reductions of the form, which keep
    only what a browser renders, are made for files under a document root of the image's web servers
    (``--media-reduce web``, ``passes.servers.web_roots``), everywhere (``always``) or nowhere (``never``).
    With ``--media-lossy``, a JPEG that may be reduced (lossy re-encoding is a reduction, so it follows
    ``--media-reduce`` too) and whose estimated quality is above ``--jpeg-quality`` is re-encoded at that
    quality, with its chroma subsampling and kept metadata, if its mean SSIM against the original, combined
    over the planes (6 Y + Cb + Cr) / 8, stays at or above ``--media-ssim-floor`` and neither chroma plane's
    falls under ``--media-ssim-chroma-floor``; each JPEG's finding says in ``lossy`` why it was not re-encoded
    so (which rule refused it).

    Why: web apps ship image assets that were never optimized; on the corpora of ``bench/bench_media.py``
    lossless recompression saves 20-30% of PNG bytes and a few percent of JPEG bytes.

    Never: renames a file or changes its format; touches files in protected layers or files a package manager
    lists (``passes.packages``, unless ``--touch-package-files``); changes interlacing unless
    ``--media-png-interlace off``; keeps a result that is larger, differs by one pixel, or loses kept metadata;
    reduces a file no server sends as it is, by default.
    Truncated, corrupt and oversized files (more than ``--media-max-pixels`` pixels over all frames; Pillow's
    bomb check is held to the same cap) are left untouched with a warning; files with data after their end
    marker, multi-picture JPEGs and animated 16-bit PNGs are left untouched with the reason.
    Deterministic: the same input and library versions (listed in each finding's ``engine``) give the same bytes.

    Needs: Pillow and numpy; pyoxipng and mozjpeg-lossless-optimization (PyPI); no external programs.
    """

    name = "media"
    flag_prefix = "media"
    summary = (
        "Recompress PNG/JPEG/GIF/WebP losslessly (oxipng, MozJPEG), proven pixel-identical; lossy JPEG opt-in"
    )
    Options = MediaOptions

    def __init__(self, options: MediaOptions) -> None:
        self.options = options

    def run(self, ctx: PassContext) -> None:
        reductions = _Reductions(ctx, self.options.reduce)
        groups = self._candidates(ctx, reductions)
        batches: dict[bool, list[tuple[tuple[str, bool], Content]]] = {False: [], True: []}
        for key, group in groups.items():
            content = group.nodes[0][1].content
            assert content is not None
            batches[key[1]].append((key, content))
        first = len(ctx.report.findings)
        # where each file's finding goes: the order of the batches as built, whatever order they run in
        order = [key for reduce in (False, True) for key, _ in batches[reduce]]
        place = {path: n for n, key in enumerate(order) for path, _, _ in groups[key].nodes}
        for reduce, items in batches.items():
            options = dataclasses.replace(self.options, reduce="always" if reduce else "never")
            # dearest first, one file at a time: a worker never ends alone with a run of large files
            items.sort(key=lambda item: -estimated_seconds(groups[item[0]].head, item[1].size, options))
            for key, result in ctx.map(optimize, items, options, chunk=1):
                group = groups[key]
                for path, node, why in group.nodes:
                    self._record(ctx, path, node, group.format, result, why, reductions)
        ctx.report.findings[first:] = sorted(ctx.report.findings[first:], key=lambda f: place.get(f.path, -1))
        packages.update_records(ctx)

    def _candidates(self, ctx: PassContext, reductions: _Reductions) -> dict[tuple[str, bool], _Group]:
        groups: dict[tuple[str, bool], _Group] = {}
        for path, node in ctx.fs.unique_files():
            content = node.content
            if content is None or content.size < 16:
                continue
            head = content.read_head(26)
            kind = sniff(head[:16])
            if kind is None or kind not in self.options.formats:
                continue
            if ctx.fs.is_protected(path):
                ctx.note(path, "kept", "protected layer", content.size, content.size, format=kind)
                continue
            if packaged := packages.kept_reason(ctx, path):
                ctx.note(path, "kept", packaged, content.size, content.size, format=kind)
                continue
            if content.size > _MAX_FILE_BYTES:
                ctx.note(
                    path,
                    "kept",
                    f"larger than {_MAX_FILE_BYTES} bytes",
                    content.size,
                    content.size,
                    format=kind,
                )
                continue
            why = reductions.why(path, node)
            groups.setdefault((content.sha256, why is not None), _Group(kind, head)).nodes.append(
                (path, node, why)
            )
        return groups

    def _record(
        self,
        ctx: PassContext,
        path: str,
        node: Node,
        kind: str,
        result: MediaResult | BaseException,
        why: str | None,
        reductions: _Reductions,
    ) -> None:
        size = node.size
        where = self._where(ctx, path, node)
        if isinstance(result, BaseException):
            ctx.warn(f"{where}: media: {type(result).__name__}: {result}")
            ctx.note(path, "kept", f"error: {type(result).__name__}: {result}", size, size, format=kind)
            return
        details: dict[str, Any] = {"format": kind, **result.details, "form": _form(result, why)}
        details.pop("reduction", None)
        # the codec was handed "never" and says so; the pass knows why this file may not be reduced
        if why is None and "lossy" in details:
            details["lossy"] = f"not tried: {reductions.why_not(path, node)}"
        if result.data is not None and len(result.data) < size:
            try:
                ctx.changes.replace(path, result.data, result.reason)
            except ChangeRefused as error:
                ctx.warn(f"{where}: media: {error}")
                ctx.note(path, "kept", str(error), size, size, **details)
                return
            ctx.note(path, "replaced", result.reason, size, len(result.data), **details)
            return
        if result.warning:
            ctx.warn(f"{where}: media: left untouched: {result.reason}")
        ctx.note(path, "kept", result.reason, size, size, **details)

    @staticmethod
    def _where(ctx: PassContext, path: str, node: Node) -> str:
        digests = ctx.image.layer_digests
        layer = f"layer {node.layer + 1}/{len(digests)}"
        if 0 <= node.layer < len(digests):
            layer += f" {digests[node.layer][:19]}"
        return f"{ctx.image.name}, {layer}: {path}"
