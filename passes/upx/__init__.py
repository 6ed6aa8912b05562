"""Pass ``upx``: find UPX-packed executables, warn about them (or fail, or unpack them).

The detector (``passes.upx.detect``, also used by ``strip-elf`` to leave packed files alone) reads only the head
and tail of files that start like an executable; ``passes.upx.unpack`` runs ``upx -d`` and checks the result.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import shutil
from dataclasses import dataclass
from typing import Literal

from optimizer.errors import PolicyError, RequiredToolNotFound
from optimizer.model import Content
from optimizer.pipeline import PassContext
from optimizer.settings import setting
from passes import packages

from .detect import (
    HEAD_SIZE,
    MAGIC,
    TAIL_SIZE,
    UpxInfo,
    detect_upx,
    detect_upx_many,
    detect_upx_parts,
    looks_like_upx,
)
from .unpack import UPX_PACKAGE, UnpackFailed, unpack_upx, verify_unpacked

__all__ = [
    "HEAD_SIZE",
    "MAGIC",
    "TAIL_SIZE",
    "UnpackFailed",
    "Upx",
    "UpxInfo",
    "UpxOptions",
    "detect_upx",
    "detect_upx_many",
    "detect_upx_parts",
    "looks_like_upx",
    "unpack_upx",
    "verify_unpacked",
]

log = logging.getLogger("oci_optimizer.passes.upx")

COST = (
    "UPX-packed executables decompress their whole program into private memory at every start (slower start, "
    "no page sharing between processes, more RSS), and in an image layer that is compressed anyway packing "
    "gains almost nothing"
)


@dataclass(frozen=True)
class UpxOptions:
    """mode: "warn" (report and stderr), "fail" (PolicyError: exit 5) or "unpack" (``upx -d``, verified)."""

    mode: Literal["warn", "fail", "unpack"] = setting(
        "warn",
        "UPX-packed executables: warn (default), fail (exit 5), unpack (upx -d; needs upx-ucl)",
        flag="--upx",
    )


class Upx:
    """Find UPX-packed executables (ELF, PE, Mach-O) and warn about them, fail the run, or unpack them.

    Why: a packed program decompresses itself into private memory at every start (slower start, no page
    sharing between processes, more RSS), and image layers are compressed already: packing saves little.

    Detection reads only the first 4 KiB and last 8 KiB of files that start like an executable, and needs both
    UPX records where UPX writes them with their checksum (see the module docstring): a file that merely
    contains ``UPX!`` is never flagged. ``--upx warn`` (default) lists each packed file in the report and on
    stderr; ``--upx fail`` raises ``PolicyError`` (exit 5, fatal even without ``--strict``); ``--upx unpack``
    runs ``upx -d`` (Debian ``upx-ucl``; ``RequiredToolNotFound`` when absent) and replaces the file only when
    ``upx -t`` accepted it and the output is the same kind of executable with the size the header records.

    It never touches files in protected layers or files a package manager lists (``passes.packages``, unless
    ``--touch-package-files``): both reported as kept. It never repacks, and changes nothing in warn and fail
    modes.
    """

    name = "upx"
    flag_prefix = "upx"
    summary = "Warn about UPX-packed executables (or fail, or unpack them with upx -d)"
    Options = UpxOptions

    def __init__(self, options: UpxOptions) -> None:
        self.options = options

    def run(self, ctx: PassContext) -> None:
        files = {path: node.content for path, node in ctx.fs.unique_files() if node.content is not None}
        packed = [(path, files[path], info) for path, info in detect_upx_many(files.items())]
        if not packed:
            return
        if self.options.mode == "fail":
            for path, _, info in packed:
                _note(ctx, path, "packed", "UPX-packed", info)
            listing = "; ".join(f"{self._where(ctx, path)} ({info.describe()})" for path, _, info in packed)
            raise PolicyError(
                f"{ctx.image.name}: {len(packed)} UPX-packed executable(s) (--upx fail): {listing}"
            )
        if self.options.mode == "warn":
            for path, _, info in packed:
                _note(ctx, path, "warning", "UPX-packed", info)
                message = f"{self._where(ctx, path)}: UPX-packed ({info.describe()})"
                ctx.warn(message)
                log.warning("%s: %s", ctx.image.name, message)
            log.warning("%s: %s; --upx unpack stores them unpacked", ctx.image.name, COST)
            ctx.warn(COST + "; --upx unpack stores them unpacked")
            return
        self._unpack(ctx, packed)

    def _where(self, ctx: PassContext, path: str) -> str:
        node = ctx.fs.get(path)
        layer = node.layer + 1 if node is not None else 0
        return f"layer {layer}/{ctx.fs.layer_count} {path}"

    def _unpack(self, ctx: PassContext, packed: list[tuple[str, Content, UpxInfo]]) -> None:
        upx = shutil.which("upx") or shutil.which("upx-ucl")
        if upx is None:
            raise RequiredToolNotFound(
                "upx", UPX_PACKAGE, f"unpack {len(packed)} UPX-packed file(s) (--upx unpack)"
            )
        jobs: list[tuple[tuple[str, UpxInfo], Content]] = []
        for path, content, info in packed:
            if ctx.fs.is_protected(path):
                _note(ctx, path, "kept", "protected layer", info)
                continue
            if packaged := packages.kept_reason(ctx, path):
                _note(ctx, path, "kept", packaged, info)
                continue
            jobs.append(((path, info), content))
        unpack = functools.partial(unpack_upx, workdir=ctx.workdir)  # picklable, for the worker pool
        for (path, info), result in ctx.map(unpack, jobs, upx):
            if not isinstance(result, BaseException):
                try:
                    verify_unpacked(info, result)
                except UnpackFailed as error:
                    result = error
            if isinstance(result, BaseException):
                ctx.note(path, "kept", f"not unpacked: {result}", info.packed_size, info.packed_size)
                ctx.warn(f"{self._where(ctx, path)}: UPX-packed, not unpacked: {result}")
                continue
            ctx.changes.replace(path, result, "unpacked with upx -d")
            ctx.note(
                path,
                "replaced",
                "unpacked with upx -d",
                info.packed_size,
                len(result),
                **dataclasses.asdict(info),
            )
        packages.update_records(ctx)


def _note(ctx: PassContext, path: str, action: str, reason: str, info: UpxInfo) -> None:
    """A finding about a packed file left as it is, with everything its UPX headers say."""
    ctx.note(path, action, reason, info.packed_size, info.packed_size, **dataclasses.asdict(info))
