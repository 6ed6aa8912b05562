"""Pass ``strip-elf``: strip ELF files of any architecture, in pure Python (see ``passes.elf``)."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Literal

from optimizer.errors import UsageError
from optimizer.model import Content
from optimizer.pipeline import PassContext
from optimizer.settings import setting
from passes import packages
from passes.elf import (
    AR_MAGIC,
    ELF_MAGIC,
    MODES,
    ElfSkipped,
    ElfVerificationError,
    StripResult,
    strip_archive,
    strip_elf,
)
from passes.upx.detect import detect_upx

__all__ = ["StripElf", "StripElfOptions", "StripJob", "StripOutcome", "strip_file"]

DEBUG_DIRECTORY = "usr/lib/debug/"
SPILL_BYTES = 1024 * 1024  # larger results come back through a file, not a pickle (no copies held per chunk)


@dataclass(frozen=True)
class StripElfOptions:
    """mode: "debug", "unneeded" (default, as ``strip --strip-unneeded``) or "all" (also ``.comment`` and
    build annotations). Relocatable objects always get "debug" at most."""

    mode: Literal["debug", "unneeded", "all"] = setting(
        "unneeded", "debug (DWARF only), unneeded (default: also symbol tables), all (also .comment)"
    )
    keep_debuglink: bool = setting(
        True, "also remove .gnu_debuglink/.gnu_debugaltlink (kept by default)", flag="--strip-drop-debuglink"
    )
    archives: bool = setting(True, "leave static archives (.a) alone", flag="--strip-no-archives")
    max_size: int = setting(
        512 * 1024 * 1024,
        "leave larger files alone (a worker holds about twice a file's size; default 512 MiB)",
        metavar="BYTES",
    )

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"strip-elf: unknown mode {self.mode!r} (expected one of {', '.join(MODES)})")


@dataclass(frozen=True)
class StripJob:
    """What a worker needs besides the bytes: the options, and where to leave large results."""

    options: StripElfOptions = StripElfOptions()
    spill_dir: str = ""


@dataclass(frozen=True)
class StripOutcome:
    """What happened to one file, from a worker; ``data`` is set only when ``action`` is "stripped"."""

    action: Literal["stripped", "kept", "unchanged"]
    reason: str = ""
    data: bytes | None = None
    mode: str = ""
    removed: tuple[str, ...] = ()
    failed_verification: bool = False
    spilled: str = (
        ""  # a large result left in this file (the caller reads and removes it) instead of ``data``
    )


def strip_file(data: bytes, job: StripJob) -> StripOutcome:
    """Strip one ELF file or static archive: a pure function for the worker pool, silent on bad input."""
    options = job.options
    try:
        result: StripResult | None
        if data.startswith(AR_MAGIC):
            if not options.archives:
                return StripOutcome("kept", "static archive (archives not selected)")
            result = strip_archive(data, options.keep_debuglink)
        else:
            info = detect_upx(data)
            if info is not None:
                return StripOutcome("kept", f"UPX-packed ({info.describe()}): stripping would break it")
            result = strip_elf(data, options.mode, options.keep_debuglink)
    except ElfVerificationError as error:
        return StripOutcome("kept", f"verification failed, original kept: {error}", failed_verification=True)
    except ElfSkipped as error:
        return StripOutcome("kept", str(error))
    if result is None:
        return StripOutcome("unchanged", "nothing to strip")
    reason = f"strip {result.mode}"
    if result.zeroed:
        reason += f" ({result.zeroed} bytes of removed sections zeroed in place: segments follow them)"
    if job.spill_dir and len(result.data) > SPILL_BYTES:
        handle, spilled = tempfile.mkstemp(dir=job.spill_dir, suffix=".elf")
        with os.fdopen(handle, "wb") as out:
            out.write(result.data)
        return StripOutcome("stripped", reason, None, result.mode, result.removed, spilled=spilled)
    return StripOutcome("stripped", reason, result.data, result.mode, result.removed)


class StripElf:
    """Strip debugging information and unneeded symbols from every ELF file, whatever its architecture.

    Why: debug sections and symbol tables are often most of a binary's size and nothing in a running
    container reads them. How: files are found by their magic (``\\x7fELF``, ``!<arch>``), never by name, and
    stripped in the worker pool by ``passes.elf``, a pure-Python section stripper on pyelftools (ELF32/64,
    either byte order, any machine: no binutils needed, whatever the image's architecture). Every result is
    verified (it parses, same program headers, every segment-mapped byte and the dynamic section unchanged,
    no larger) before it replaces the file; hardlinked files are stripped once and stay linked; mode, owner
    and xattrs are kept (only the bytes change).

    Executables and shared objects get ``--strip-mode`` (``unneeded`` by default); relocatable objects
    (``.o``, ``.ko``, static archive members) get ``debug`` at most. ``.gnu_debuglink`` and build-id notes are
    kept by default.

    Never touched, each reported with its reason: files in protected layers, files a package manager lists
    (``passes.packages``; ``--touch-package-files`` lifts that), core dumps, files under
    ``/usr/lib/debug``, signed kernel modules, UPX-packed files (``passes.upx.detect``), files with data
    appended after the last section or segment (self-extracting archives, PyInstaller, AppImage), files whose
    headers do not parse, and any result that fails verification. Removed sections that a segment follows
    (patchelf-edited files, manylinux wheels) are zeroed in place instead, as segments never move.

    Needs: nothing outside Python (pyelftools); no binutils, whatever the host's or the image's architecture.
    """

    name = "strip-elf"
    flag_prefix = "strip"
    summary = "Strip debug info and unneeded symbols from ELF files of any architecture (pure Python)"
    Options = StripElfOptions

    def __init__(self, options: StripElfOptions) -> None:
        self.options = options

    def run(self, ctx: PassContext) -> None:
        items: list[tuple[str, Content]] = []
        for path, node in ctx.fs.unique_files():
            content = node.content
            if content is None or content.size < 16:
                continue
            head = content.read_head(len(AR_MAGIC))
            if head[:4] != ELF_MAGIC and head != AR_MAGIC:
                continue
            if path.startswith(DEBUG_DIRECTORY):
                ctx.note(
                    path, "kept", "detached debug information (/usr/lib/debug)", content.size, content.size
                )
            elif ctx.fs.is_protected(path):
                ctx.note(path, "kept", "protected layer", content.size, content.size)
            elif packaged := packages.kept_reason(ctx, path):
                ctx.note(path, "kept", packaged, content.size, content.size)
            elif content.size > self.options.max_size:
                reason = f"larger than --strip-max-size ({self.options.max_size} bytes)"
                ctx.note(path, "kept", reason, content.size, content.size)
            else:
                items.append((path, content))
        if not items:
            return
        spill_dir = tempfile.mkdtemp(prefix="strip-elf-", dir=ctx.workdir)
        try:
            self._collect(ctx, items, StripJob(self.options, spill_dir))
        finally:
            shutil.rmtree(spill_dir, ignore_errors=True)
        packages.update_records(ctx)

    def _collect(self, ctx: PassContext, items: list[tuple[str, Content]], job: StripJob) -> None:
        for (path, content), (_, outcome) in zip(items, ctx.map(strip_file, items, job), strict=True):
            size = content.size
            if isinstance(outcome, BaseException):
                message = f"{type(outcome).__name__}: {outcome}"
                ctx.warn(f"{ctx.image.name}: {path}: strip-elf failed, original kept: {message}")
                ctx.note(path, "kept", f"error, original kept: {message}", size, size)
            elif outcome.action == "stripped":
                data = outcome.data
                if outcome.spilled:
                    with open(outcome.spilled, "rb") as spilled:
                        data = spilled.read()
                    os.unlink(outcome.spilled)
                assert data is not None
                ctx.changes.replace(path, data, outcome.reason)
                ctx.note(
                    path,
                    "stripped",
                    outcome.reason,
                    size,
                    len(data),
                    mode=outcome.mode,
                    removed=list(outcome.removed),
                )
                del data
            elif outcome.action == "kept":
                if outcome.failed_verification:
                    ctx.warn(f"{ctx.image.name}: {path}: {outcome.reason}")
                ctx.note(path, "kept", outcome.reason, size, size)
