"""The pass test kit: build a ``PassContext`` from lists of entries, run one pass, look at what it changed.

Every pass test builds its filesystem here instead of wiring ``build_filesystem``, ``Changes``, ``ImageInfo``,
``PassReport`` and ``WorkerPool`` by hand. A layer is given in whichever form reads best in the test:

- a mapping ``path -> bytes`` (a regular file), ``"->target"`` (a symlink) or ``"=>target"`` (a hardlink);
- a sequence of ``(Entry, bytes | None)`` pairs, as ``tests.imagetools.entry`` makes them;
- a sequence of ``IndexedEntry`` whose content is already spooled.

The context is what the pipeline gives a pass: the merged view, an empty ``Changes``, the image facts (name
``test-image``, one made-up digest per layer), the per-layer indexes dead-data reads, and a worker pool that
``run_pass`` closes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from optimizer.changes import Change, Changes, Op
from optimizer.filesystem import FileSystem, build_filesystem
from optimizer.layer import IndexedEntry, LayerIndex
from optimizer.model import Descriptor, Entry, EntryKind
from optimizer.pipeline import ImageInfo, PassContext, WorkerPool
from optimizer.report import Finding, PassReport
from optimizer.spool import Spool

__all__ = [
    "IMAGE_NAME",
    "Files",
    "Layer",
    "by_path",
    "changed",
    "context_for",
    "findings",
    "indexed_layer",
    "make_context",
    "make_filesystem",
    "run",
    "run_pass",
]

IMAGE_NAME = "test-image"
Files = Mapping[str, bytes | str]  # path -> bytes, "->target" (symlink) or "=>target" (hardlink)
Layer = Files | Sequence[tuple[Entry, bytes | None]] | Sequence[IndexedEntry]


class _Pass(Protocol):
    name: str

    def run(self, ctx: PassContext) -> None: ...


def _from_files(files: Files, spool: Spool, parents: bool) -> list[IndexedEntry]:
    out: list[IndexedEntry] = []
    if parents:  # parent directories first, as real layers have them
        names = sorted({"/".join(p.split("/")[:n]) for p in files for n in range(1, p.count("/") + 1)})
        out += [IndexedEntry(Entry(d, EntryKind.DIR, mode=0o755)) for d in names]
    for path, data in files.items():
        if isinstance(data, str) and data.startswith("->"):
            out.append(IndexedEntry(Entry(path, EntryKind.SYMLINK, link=data[2:])))
        elif isinstance(data, str) and data.startswith("=>"):
            out.append(IndexedEntry(Entry(path, EntryKind.HARDLINK, link=data[2:])))
        elif isinstance(data, str):
            raise ValueError(f"{path}: a link is written '->target' or '=>target', not {data!r}")
        else:
            out.append(IndexedEntry(Entry(path, EntryKind.FILE, size=len(data)), spool.store(data)))
    return out


def indexed_layer(layer: Layer, spool: Spool, parents: bool = False) -> list[IndexedEntry]:
    """One layer's entries with their content in ``spool``; ``parents`` adds the directories of a mapping."""
    if isinstance(layer, Mapping):
        return _from_files(layer, spool, parents)
    out = []
    for item in layer:
        if isinstance(item, IndexedEntry):
            out.append(item)
        else:
            entry, data = item
            out.append(IndexedEntry(entry, spool.store(data) if data is not None else None))
    return out


def _spool(tmp_path: Path, what: str) -> Spool:
    # Several filesystems and contexts may share one tmp_path: each gets packs of its own.
    tmp_path.mkdir(parents=True, exist_ok=True)
    return Spool(str(tmp_path / f"kit-{len(list(tmp_path.glob(f'kit-*-{what}.pack')))}-{what}.pack"))


def _indexed(tmp_path: Path, layers: Sequence[Layer], parents: bool) -> list[list[IndexedEntry]]:
    spool = _spool(tmp_path, "layers")
    return [indexed_layer(layer, spool, parents) for layer in layers]


def make_filesystem(
    tmp_path: Path, layers: Sequence[Layer], protected: frozenset[int] = frozenset(), parents: bool = False
) -> FileSystem:
    """The merged view of ``layers`` (bottom first); contents are spooled under ``tmp_path``."""
    return build_filesystem(_indexed(tmp_path, layers, parents), protected)


def context_for(
    fs: FileSystem,
    tmp_path: Path,
    name: str = "test",
    workers: int = 1,
    config: Mapping[str, Any] | None = None,
    layers: Sequence[Sequence[IndexedEntry]] = (),
) -> PassContext:
    """A context for the pass ``name`` over ``fs``; ``layers`` are the per-layer entries dead-data reads."""
    digests = [f"sha256:{n:064x}" for n in range(fs.layer_count)]
    info = ImageInfo(IMAGE_NAME, "sha256:" + "0" * 64, None, dict(config or {}), digests)
    indexes = [LayerIndex(Descriptor("", d, 0), list(e)) for d, e in zip(digests, layers, strict=False)]
    changes = Changes(fs, name, _spool(tmp_path, "new"))
    return PassContext(fs, changes, info, PassReport(name), WorkerPool(workers), False, indexes)


def make_context(
    tmp_path: Path,
    layers: Sequence[Layer],
    name: str = "test",
    protected: frozenset[int] = frozenset(),
    workers: int = 1,
    config: Mapping[str, Any] | None = None,
    parents: bool = False,
) -> PassContext:
    """A context for the pass ``name`` over ``layers`` (bottom first), every layer's entries included."""
    indexed = _indexed(tmp_path, layers, parents)
    return context_for(build_filesystem(indexed, protected), tmp_path, name, workers, config, indexed)


def run_pass(pass_: _Pass, ctx: PassContext) -> PassContext:
    """Run one pass on ``ctx`` and close its worker pool, whatever happens."""
    try:
        pass_.run(ctx)
    finally:
        ctx.pool.close()
    return ctx


def run(tmp_path: Path, pass_: _Pass, layers: Sequence[Layer], **context: Any) -> PassContext:
    """``make_context`` for ``pass_`` then ``run_pass``: the usual one-liner of a pass test."""
    return run_pass(pass_, make_context(tmp_path, layers, pass_.name, **context))


def changed(ctx: PassContext, op: Op | None = None) -> list[str]:
    """The paths the pass changed (those of one kind of change with ``op``), sorted."""
    return sorted(c.visible_path or c.path for c in ctx.changes if op is None or c.op is op)


def by_path(ctx: PassContext) -> dict[str, Change]:
    return {c.visible_path or c.path: c for c in ctx.changes}


def findings(ctx: PassContext) -> dict[str, Finding]:
    """The report's findings by path (the last one where a path has several)."""
    return {f.path: f for f in ctx.report.findings}
