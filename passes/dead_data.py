"""Pass ``dead-data``: drop bytes no container can ever see from the lower layers that still carry them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from optimizer.digest import short
from optimizer.filesystem import FileSystem, opaque_directory, whiteout_target
from optimizer.layer import LayerIndex
from optimizer.model import Entry, EntryKind
from optimizer.pipeline import PassContext
from optimizer.settings import setting

__all__ = ["DeadData", "DeadDataOptions", "LayerDeadData", "find_dead_data"]


@dataclass(frozen=True)
class DeadDataOptions:
    """whiteouts: also drop whiteouts and opaque markers that hide nothing once the dead entries are gone.
    duplicates: report files with exactly the same bytes at several paths (report only, nothing changes).
    duplicates_listed: how many duplicate groups (the largest first) are listed one by one in the report."""

    whiteouts: bool = setting(
        True, "keep whiteouts that no longer hide anything", flag="--dead-keep-whiteouts"
    )
    duplicates: bool = setting(
        True, "do not look for files with the same bytes at several paths", flag="--dead-no-duplicates"
    )
    duplicates_listed: int = setting(50, "duplicate groups listed one by one in the report", metavar="N")


@dataclass
class DeadEntry:
    path: str
    kind: EntryKind
    size: int  # bytes of content this entry carries (0 for directories, links, whiteouts)
    reason: str
    keep: str = ""  # why it stays although dead ("" when it is dropped)
    bytes_stay_on: str = ""  # a same-layer hardlink that takes over the bytes (promoted by the layer writer)


@dataclass
class LayerDeadData:
    """What one layer carries that nobody sees."""

    number: int
    digest: str
    protected: bool
    dead: list[DeadEntry] = field(default_factory=list)
    stale_whiteouts: list[str] = field(default_factory=list)

    @property
    def found(self) -> int:
        return sum(d.size for d in self.dead)

    @property
    def removed(self) -> int:
        if self.protected:
            return 0
        return sum(d.size for d in self.dead if not d.keep and not d.bytes_stay_on)


def _ancestors(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _is_marker(path: str) -> bool:
    return opaque_directory(path) is not None or whiteout_target(path) is not None


class _Deletions:
    """Where each path stops being visible: whiteouts, opaque directories and replacements, by layer."""

    def __init__(self, layers: Sequence[LayerIndex]) -> None:
        self.whiteouts: list[set[str]] = []
        self.opaque: list[set[str]] = []
        self.non_dirs: list[set[str]] = []
        for index in layers:
            whiteouts, opaque, non_dirs = set(), set(), set()
            for item in index.entries:
                path = item.entry.path
                directory = opaque_directory(path)
                target = whiteout_target(path)
                if directory is not None:
                    opaque.add(directory)
                elif target is not None:
                    whiteouts.add(target)
                elif item.entry.kind is not EntryKind.DIR:
                    non_dirs.add(path)
            self.whiteouts.append(whiteouts)
            self.opaque.append(opaque)
            self.non_dirs.append(non_dirs)

    def reason(self, path: str, layer: int, fs: FileSystem) -> str:
        node = fs.get(path)
        if node is not None:
            return f"replaced in layer {node.layer + 1}"
        ancestors = _ancestors(path)
        for upper in range(layer + 1, len(self.whiteouts)):
            if path in self.whiteouts[upper]:
                return f"deleted in layer {upper + 1}"
            for parent in ancestors:
                if parent in self.whiteouts[upper]:
                    return f"under /{parent}, deleted in layer {upper + 1}"
                if parent in self.non_dirs[upper]:
                    return f"under /{parent}, replaced by a non-directory in layer {upper + 1}"
            for parent in ["", *ancestors]:
                if parent in self.opaque[upper]:
                    return f"hidden by the opaque directory /{parent} in layer {upper + 1}"
        return "not visible in the merged filesystem"


def find_dead_data(
    fs: FileSystem, layers: Sequence[LayerIndex], whiteouts: bool = True
) -> list[LayerDeadData]:
    """Every layer's dead entries, and which of them can be dropped without changing the merged filesystem.

    An entry of layer L is dead when the merged view at its path is not L's entry: an upper layer deleted it
    (whiteout, opaque directory, a deleted or replaced parent) or replaced it. Dead entries stay when dropping
    them would change what an extractor builds:

    - a directory an upper layer redeclares as a directory (it may still hold live entries of L; 0 bytes);
    - a path a kept hardlink of an upper layer names: the extractor links to it when it applies that layer
      (moving the bytes to the upper layer is not done: the entry is kept and the bytes reported);
    - a non-file a kept hardlink of the same layer names, and any ancestor of an entry that stays.

    A dead regular file that a live hardlink of the same layer names is dropped: the layer writer promotes
    that link to a regular file holding the bytes, so the bytes stay on the live path.
    Whiteouts (and opaque markers) of L that no longer hide any entry of the layers below are stale.
    """
    deletions = _Deletions(layers)
    result = [
        LayerDeadData(number, index.descriptor.digest, number in fs.protected_layers)
        for number, index in enumerate(layers)
    ]
    needed_above: dict[str, int] = {}  # path -> the upper layer whose kept hardlink names it
    for number in reversed(range(len(layers))):
        report = result[number]
        entries = [item.entry for item in layers[number].entries if not _is_marker(item.entry.path)]
        dead: dict[str, DeadEntry] = {}
        for entry in entries:
            if not entry.path:
                continue
            node = fs.get(entry.path)
            if node is not None and node.layer == number:
                continue
            if entry.kind is EntryKind.DIR and node is not None and node.entry.kind is EntryKind.DIR:
                continue
            size = entry.size if entry.kind is EntryKind.FILE else 0
            dead[entry.path] = DeadEntry(
                entry.path, entry.kind, size, deletions.reason(entry.path, number, fs)
            )
        for path, item in dead.items():
            if report.protected:
                item.keep = "protected layer"
            elif path in needed_above:
                item.keep = f"a hardlink in layer {needed_above[path] + 1} names it"
        _settle_same_layer(entries, dead)
        report.dead = list(dead.values())
        own_paths = {e.path for e in entries}
        for entry in entries:
            kept = entry.path not in dead or dead[entry.path].keep
            if entry.kind is EntryKind.HARDLINK and kept and entry.link not in own_paths:
                needed_above.setdefault(entry.link, number)
    if whiteouts:
        _find_stale_whiteouts(layers, result)
    return result


def _settle_same_layer(entries: Sequence[Entry], dead: dict[str, DeadEntry]) -> None:
    """Apply the same-layer rules until nothing changes (chains of links, nested directories)."""
    changed = True
    while changed:
        changed = False
        kept = [e for e in entries if e.path not in dead or dead[e.path].keep]
        named = {e.link: e.path for e in kept if e.kind is EntryKind.HARDLINK}
        needed_dirs = {parent for e in kept for parent in _ancestors(e.path)}
        for path, item in dead.items():
            if item.keep:
                continue
            if path in needed_dirs:
                item.keep = "a live entry of the same layer lies under it"
            elif path in named and item.kind is not EntryKind.FILE:
                item.keep = f"the live hardlink /{named[path]} of the same layer names it"
            else:
                continue
            changed = True
    kept = [e for e in entries if e.path not in dead or dead[e.path].keep]
    links: dict[str, list[str]] = {}
    for entry in kept:
        if entry.kind is EntryKind.HARDLINK:
            links.setdefault(entry.link, []).append(entry.path)
    for path, item in dead.items():
        if not item.keep and item.kind is EntryKind.FILE and path in links:
            item.bytes_stay_on = links[path][0]


def _find_stale_whiteouts(layers: Sequence[LayerIndex], result: list[LayerDeadData]) -> None:
    present: set[str] = set()  # paths of entries kept in the layers below the current one
    under: set[str] = set()  # directories with at least one kept entry below them
    for number, index in enumerate(layers):
        report = result[number]
        if not report.protected:
            for item in index.entries:
                path = item.entry.path
                directory = opaque_directory(path)
                target = whiteout_target(path)
                if directory is not None:
                    hides = directory in under
                elif target is not None:
                    hides = target in present or target in under
                else:
                    continue
                if not hides:
                    report.stale_whiteouts.append(path)
        dropped = {d.path for d in report.dead if not d.keep}
        for item in index.entries:
            path = item.entry.path
            if _is_marker(path) or path in dropped:
                continue
            present.add(path)
            under.update(_ancestors(path))
            under.add("")


class DeadData:
    """Drop, from the layer that carries it, every entry an upper layer deleted or replaced.

    Why: a file deleted in a later layer (``rm -rf /var/lib/apt/lists/*`` after ``apt-get update``) or
    overwritten by one is still downloaded and unpacked on every pull; tools like dive call it wasted space. No
    container can see it, so removing it changes nothing a container sees: the merged filesystem, file for file,
    mode for mode, owner for owner, is the same. Whiteouts and opaque markers that then hide nothing are dropped
    too (``--dead-keep-whiteouts`` keeps them).

    Hardlinks: a dead path whose bytes a live hardlink of the same layer still reaches is dropped and the link
    becomes the regular file; when the live hardlink is in an upper layer, the dead entry is kept (the
    extractor needs it when it applies that layer) and reported. Directories that an upper layer redeclares
    are kept (they may hold live entries and carry no bytes).

    Never touched: protected layers (``--keep-layers``, ``--base``, non-distributable layers), whose dead
    bytes are reported as reclaimable. Also reported, changing nothing: files with exactly the same bytes at
    several paths, counting only the copies beyond the first (dive counts every copy).

    Needs: each layer's own entries (``PassContext.layers``). Runs first, so later passes do not spend time
    on bytes that are going away.
    """

    name = "dead-data"
    flag_prefix = "dead"
    summary = "Drop files that upper layers delete or replace from the lower layers that carry them"
    Options = DeadDataOptions

    def __init__(self, options: DeadDataOptions) -> None:
        if options.duplicates_listed < 0:
            raise ValueError("dead-data: duplicates_listed cannot be negative")
        self.options = options

    def run(self, ctx: PassContext) -> None:
        if len(ctx.layers) != ctx.fs.layer_count:
            ctx.warn(f"{ctx.image.name}: dead-data needs every layer's entries; nothing done")
            return
        total = len(ctx.layers)
        for layer in find_dead_data(ctx.fs, ctx.layers, self.options.whiteouts):
            label = f"layer {layer.number + 1}/{total} {short(layer.digest)}"
            for item in layer.dead:
                if item.keep:
                    action = "reclaimable" if layer.protected else "kept"
                    ctx.note(
                        item.path,
                        action,
                        f"dead ({item.reason}); {item.keep}",
                        item.size,
                        item.size,
                        layer=layer.number,
                    )
                    continue
                ctx.changes.drop(layer.number, item.path, 0 if item.bytes_stay_on else item.size, item.reason)
                reason = item.reason
                if item.bytes_stay_on:
                    reason += f"; its bytes stay on the live hardlink /{item.bytes_stay_on}"
                ctx.note(
                    item.path,
                    "dropped",
                    reason,
                    item.size,
                    item.size if item.bytes_stay_on else 0,
                    layer=layer.number,
                )
            for path in layer.stale_whiteouts:
                ctx.changes.drop(layer.number, path, 0, "whiteout that hides nothing")
                ctx.note(path, "dropped", "whiteout that hides nothing", 0, 0, layer=layer.number)
            if layer.dead or layer.stale_whiteouts:
                ctx.note(
                    "",
                    "layer",
                    f"{label}: {layer.found} dead bytes found, {layer.removed} removed"
                    + (" (protected layer: reclaimable)" if layer.protected else ""),
                    layer.found,
                    layer.found - layer.removed,
                    layer=layer.number,
                    digest=layer.digest,
                    dead_bytes=layer.found,
                    removed_bytes=layer.removed,
                    reclaimable_bytes=layer.found if layer.protected else 0,
                    dead_entries=len(layer.dead),
                    dropped_entries=sum(1 for d in layer.dead if not d.keep),
                    stale_whiteouts=len(layer.stale_whiteouts),
                    protected=layer.protected,
                )
        if self.options.duplicates:
            self._report_duplicates(ctx)

    def _report_duplicates(self, ctx: PassContext) -> None:
        # First path per content, and a list only for contents seen twice: most files are unique, and a
        # list per file would cost tens of MB on a many-file image.
        first: dict[str, str] = {}
        groups: dict[str, tuple[int, list[str]]] = {}
        for path, node in ctx.fs.unique_files():
            if node.content is None or node.content.size == 0:
                continue
            key = node.content.sha256
            if key in groups:
                groups[key][1].append(path)
            elif key in first:
                groups[key] = (node.content.size, [first.pop(key), path])
            else:
                first[key] = path
        del first
        duplicated = list(groups.values())
        duplicated.sort(key=lambda item: (-(item[0] * (len(item[1]) - 1)), item[1][0]))
        reclaimable = sum(size * (len(paths) - 1) for size, paths in duplicated)
        every_copy = sum(size * len(paths) for size, paths in duplicated)
        for size, paths in duplicated[: self.options.duplicates_listed]:
            ctx.note(
                paths[0],
                "duplicate",
                f"the same {size} bytes at {len(paths)} paths (report only)",
                size * len(paths),
                size,
                copies=paths,
                reclaimable_bytes=size * (len(paths) - 1),
            )
        ctx.note(
            "",
            "duplicates",
            f"{len(duplicated)} groups of identical files: {reclaimable} bytes reclaimable beyond one copy each "
            f"({every_copy} counting every copy, as dive does); report only",
            every_copy,
            every_copy - reclaimable,
            groups=len(duplicated),
            reclaimable_bytes=reclaimable,
            every_copy_bytes=every_copy,
            listed=min(len(duplicated), self.options.duplicates_listed),
        )
