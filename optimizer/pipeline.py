"""The pass interface and the machinery that runs passes.

A pass is a class in its own module under ``passes/`` (listed once, in order, in ``passes.PASSES``):

    @dataclass(frozen=True)
    class StripElfOptions:               # each field a ``settings.setting``: its flag and config key derive
        mode: Literal["debug", "unneeded", "all"] = setting("unneeded", "what to strip ...")

    class StripElf:                      # a Pass[StripElfOptions]
        name = "strip-elf"
        summary = "Strip debug info and unneeded symbols from ELF files of any architecture"
        flag_prefix = "strip"            # its flags: --strip-mode ...
        Options = StripElfOptions

        def __init__(self, options: StripElfOptions) -> None: ...   # raises UsageError on bad options
        def run(self, ctx: PassContext) -> None: ...

An opt-in pass (``slim``) gives its options an ``enabled`` property: while it is False the pass is not
selected at all (it does not run, and the history of the images written does not name it).

``run`` reads ``ctx.fs`` (the merged filesystem, with the changes of earlier passes applied), decides, and
records changes through ``ctx.changes``. Heavy per-file work is a top-level (picklable) function
``fn(data: bytes, arg) -> result`` handed to ``ctx.map``, which runs it on every core and yields the results in
input order. A pass that raises is reported ``failed`` and its changes are dropped.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from .changes import Change, Changes
from .errors import (
    OutputError,
    PassFailedError,
    PolicyError,
    RequiredToolNotFound,
    UsageError,
    out_of_space,
)
from .filesystem import FileSystem
from .layer import LayerIndex
from .model import Content, Platform
from .progress import Progress, Throttle, steps
from .report import Finding, PassReport, PassStatus
from .spool import Spool

__all__ = [
    "ImageInfo",
    "Pass",
    "PassContext",
    "PipelineRun",
    "WorkerPool",
    "options_by_pass",
    "options_for",
    "run_passes",
    "select_passes",
]

A = TypeVar("A")
K = TypeVar("K")
R = TypeVar("R")
OptionsT = TypeVar("OptionsT")


class Pass(Protocol[OptionsT]):
    """A pass, generic in its options type: ``Options`` is that frozen dataclass, and ``__init__`` takes it."""

    # Plain annotations, not ClassVar: mypy does not accept classes as ``type[Pass]`` against ClassVar members.
    name: str
    summary: str
    flag_prefix: str  # the prefix of its derived command-line flags ("strip" -> --strip-mode)
    Options: type[OptionsT]

    def __init__(self, options: OptionsT) -> None: ...

    def run(self, ctx: PassContext) -> None: ...


@dataclass(frozen=True)
class ImageInfo:
    """What a pass may want to know about the image besides its files."""

    name: str  # for messages: the reference or source name and the manifest digest
    manifest_digest: str
    platform: Platform | None
    config: Mapping[str, Any]  # the image config JSON (read-only)
    layer_digests: Sequence[str]


def _call(fn: Callable[[bytes, A], R], content: Content, arg: A) -> R | BaseException:
    try:
        return fn(content.read_bytes(), arg)
    except Exception as error:  # reported per file by the pass; never kills the pool
        return error


class WorkerPool:
    """A process pool shared by every pass of a run; created on first use."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or os.cpu_count() or 1
        self._executor: Executor | None = None

    def map(
        self,
        fn: Callable[[bytes, A], R],
        items: Sequence[tuple[K, Content]],
        arg: A,
        chunk: int | None = None,
    ) -> Iterator[tuple[K, R | BaseException]]:
        if self.workers <= 1 or len(items) < 2:
            for key, content in items:
                yield key, _call(fn, content, arg)
            return
        if self._executor is None:
            import multiprocessing

            context = multiprocessing.get_context("forkserver")
            # The fork server imports the passes once; every worker forked from it starts warm.
            context.set_forkserver_preload(["optimizer", "passes"])
            self._executor = ProcessPoolExecutor(self.workers, mp_context=context)
        chunk = chunk or max(1, min(16, len(items) // (self.workers * 8)))
        results = self._executor.map(
            _call, [fn] * len(items), [c for _, c in items], [arg] * len(items), chunksize=chunk
        )
        for (key, _), result in zip(items, results, strict=True):
            yield key, result

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(cancel_futures=True)
            self._executor = None


@dataclass
class PassContext:
    fs: FileSystem
    changes: Changes
    image: ImageInfo
    report: PassReport
    pool: WorkerPool
    dry_run: bool = False
    # every layer's own entries, bottom first (for passes about dead data)
    layers: Sequence[LayerIndex] = ()
    # facts about this image that every pass of the run may reuse (one dict per image, shared by its passes),
    # keyed by the module that computes them (``passes.packages``: what the package managers own)
    shared: dict[str, Any] = field(default_factory=dict)
    # --touch-package-files: passes may change files that dpkg, rpm or apk list (see ``passes.packages``)
    touch_package_files: bool = False
    # the run's work directory (--workdir; removed at the end of the run): where temporary files go
    workdir: str | None = None
    # how far the pass is: files handed to ``map`` and done
    progress: Throttle = field(default_factory=lambda: Throttle(None, "pass", "", 0, "files"))

    def map(
        self,
        fn: Callable[[bytes, A], R],
        items: Sequence[tuple[K, Content]],
        arg: A,
        chunk: int | None = None,
    ) -> Iterator[tuple[K, R | BaseException]]:
        """Run ``fn(bytes, arg)`` on each item's content on every core; results in input order. ``chunk``: items
        a worker takes at a time (default up to 16; 1 for items of very unequal cost, the dearest first)."""
        self.progress.total += len(items)
        for result in self.pool.map(fn, items, arg, chunk):
            self.progress.advance(1)
            yield result

    def warn(self, message: str) -> None:
        self.report.warnings.append(message)

    def note(
        self,
        path: str,
        action: str,
        reason: str = "",
        bytes_before: int = 0,
        bytes_after: int = 0,
        *,
        layer: int | None = None,
        **details: Any,
    ) -> None:
        """Record a finding for the report (every change, and every file deliberately left alone).

        ``layer``: the layer's index (from 0) when the path is not where the merged view says (a dead entry);
        by default, the layer that holds the path's bytes, or the new top layer for a path added in this run.
        The report numbers layers from 1."""
        if layer is None:
            layer = self.layer_of(path)
        number = layer + 1 if layer is not None else None
        self.report.findings.append(Finding(path, action, reason, bytes_before, bytes_after, details, number))

    def layer_of(self, path: str) -> int | None:
        """The layer (from 0) that holds the bytes seen at ``path``; None when the view has no such path."""
        if not path:
            return None
        holder = self.fs.holder_of(path)
        if holder is not None:
            return holder.layer
        node = self.fs.get(path)
        if node is not None:
            return node.layer
        return self.fs.layer_count if any(c.visible_path == path for c in self.changes) else None


def select_passes(
    pipeline: Sequence[type[Pass[Any]]],
    passes: Sequence[str] | None,
    skip: Sequence[str],
    pass_options: Sequence[object],
) -> list[tuple[type[Pass[Any]], Any]]:
    """The passes to run, in pipeline order, each with its options (``passes`` None: every pass).

    ``pass_options`` holds passes' ``Options`` instances, each naming its pass by its type; a pass without
    one gets its defaults. Every pass is built once here, so bad options fail before any work starts.
    """
    known = {p.name: p for p in pipeline}
    for name in [*(passes or ()), *skip]:
        if name not in known:
            raise UsageError(f"unknown pass {name!r}; known passes: {', '.join(known) or '(none)'}")
    chosen = options_by_pass(pipeline, pass_options)
    wanted = set(known) if passes is None else set(passes)
    wanted -= set(skip)
    selected: list[tuple[type[Pass[Any]], Any]] = []
    for cls in pipeline:
        if cls.name in wanted:
            options = chosen.get(cls.name) or cls.Options()
            cls(options)
            if getattr(options, "enabled", True):
                selected.append((cls, options))
            elif passes is not None and cls.name in passes:
                raise UsageError(f"pass {cls.name} is opt-in and its options turn nothing on (see --help)")
    return selected


def options_by_pass(pipeline: Sequence[type[Pass[Any]]], pass_options: Sequence[object]) -> dict[str, object]:
    """pass name -> the options instance given for it (by its type); a stranger or a second one is an error."""
    owner = {cls.Options: cls.name for cls in pipeline}
    found: dict[str, object] = {}
    if isinstance(pass_options, Mapping):
        raise UsageError(
            "pass_options takes each pass's Options instances, e.g. (StripElfOptions(mode='debug'),)"
        )
    for value in pass_options:
        name = owner.get(type(value))
        if name is None:
            raise UsageError(
                f"{type(value).__name__} is not the options of any pass ({', '.join(owner.values())})"
            )
        if name in found:
            raise UsageError(f"{type(value).__name__} given twice (one per pass)")
        found[name] = value
    return found


def options_for(pass_options: Sequence[object], cls: type[Pass[OptionsT]]) -> OptionsT:
    """The options given for ``cls`` among ``pass_options``, or its defaults."""
    for value in pass_options:
        if type(value) is cls.Options:
            return value
    return cls.Options()


@dataclass
class PipelineRun:
    """What running the passes over one image gave: the changes kept, in order, and the final view."""

    changes: list[Change]
    fs: FileSystem


def run_passes(
    passes: Sequence[tuple[type[Pass[Any]], Any]],
    ctx_for: Callable[[FileSystem, Changes, PassReport, Throttle], PassContext],
    fs: FileSystem,
    spool: Spool,
    reports: list[PassReport],
    strict: bool,
    image_name: str,
    progress: Progress | None = None,
) -> PipelineRun:
    """Run ``passes`` in order; each sees the view with the changes of the passes before it applied.

    A pass that raises is reported ``failed`` and its changes are dropped, unless ``strict`` (then the run
    fails). A policy violation or a missing required program always ends the run.
    """
    from .rebuild import apply_changes

    accepted: list[Change] = []
    for cls, pass_options in passes:
        report = PassReport(cls.name)
        reports.append(report)
        changes = Changes(fs, cls.name, spool)
        started = time.monotonic()
        tracker = steps(progress, "pass", cls.name, 0, "files")
        try:
            cls(pass_options).run(ctx_for(fs, changes, report, tracker))
        except (PolicyError, RequiredToolNotFound):
            raise  # the user asked for something that cannot be done: not a pass bug to shrug off
        except Exception as error:  # a pass failing must not take the run down unless strict
            if out_of_space(error):  # not the pass's fault, and the next pass would fail the same way
                raise OutputError(
                    f"{image_name}: pass {cls.name}: the work directory is full: {error}"
                ) from error
            report.status = PassStatus.FAILED
            report.error = f"{type(error).__name__}: {error}"
            report.seconds = round(time.monotonic() - started, 3)
            if strict:
                raise PassFailedError(f"{image_name}: pass {cls.name} failed: {error}") from error
            continue
        report.seconds = round(time.monotonic() - started, 3)
        tracker.finish()
        recorded = list(changes)
        report.files_changed = len(recorded)
        report.bytes_before = sum(c.bytes_before for c in recorded)
        report.bytes_after = sum(c.bytes_after for c in recorded)
        if recorded:
            accepted.extend(recorded)
            fs = apply_changes(fs, recorded)
    return PipelineRun(accepted, fs)
