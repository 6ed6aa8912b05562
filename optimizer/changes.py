"""``Changes``: the only way a pass writes. Replace, delete or add a path, each recorded against its layer.

A replacement is recorded against the entry that holds the bytes (for hardlinks, the first link in its layer),
so every link sees the new bytes and the file is processed once. A deletion is recorded against the layer that
owns the visible path; when a lower layer also carries that path, the writer leaves a whiteout in its place so
the lower copy does not reappear. Additions go in one new top layer. Nothing may be changed in a protected
(kept byte-identical) layer: asking to is a bug in the pass, and raises ``ChangeRefused``; the one exception is
a deletion asked with ``whiteout_protected``, recorded against the new top layer (``layer_count``), which then
holds a whiteout for the path: the protected layer keeps its bytes, and a container no longer sees the path.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum

from .errors import OptimizerError
from .filesystem import FileSystem, Node
from .layer import clean_path
from .model import Content, Entry, EntryKind
from .spool import Spool

__all__ = ["Change", "ChangeRefused", "Changes", "Op"]


class ChangeRefused(OptimizerError):
    """A pass asked for a change that cannot be made (protected layer, missing path, wrong kind)."""


class Op(str, Enum):
    REPLACE = "replace"
    DELETE = "delete"
    ADD = "add"
    DROP = "drop"  # an entry no container can see, removed from the layer that carries it


@dataclass(frozen=True)
class Change:
    op: Op
    path: str  # the path recorded in the layer (the holder's path for a replacement)
    layer: int  # layer index; ``FileSystem.layer_count`` is the new top layer
    pass_name: str
    reason: str
    bytes_before: int
    bytes_after: int
    content: Content | None = None  # new bytes for REPLACE/ADD
    entry: Entry | None = None  # the new entry for ADD
    visible_path: str = ""  # the path the pass named


class Changes:
    """The changes one pass records, validated against the filesystem the pass saw."""

    def __init__(self, fs: FileSystem, pass_name: str, spool: Spool) -> None:
        self._fs = fs
        self._pass = pass_name
        self._spool = spool
        self._items: list[Change] = []

    def __iter__(self) -> Iterator[Change]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def _content(self, data: bytes | Content) -> Content:
        return data if isinstance(data, Content) else self._spool.store(data)

    def _node(self, path: str) -> Node:
        node = self._fs.get(path)
        if node is None:
            raise ChangeRefused(f"{self._pass}: {path}: no such path in the image")
        return node

    def replace(self, path: str, data: bytes | Content, reason: str = "") -> None:
        """New bytes for a regular file (and every hardlink to it); metadata is kept."""
        path = clean_path(path)
        node = self._node(path)
        if node.content is None:
            raise ChangeRefused(f"{self._pass}: {path}: not a regular file")
        if self._fs.is_protected(path):
            raise ChangeRefused(f"{self._pass}: {path}: lives in a layer kept byte-identical")
        content = self._content(data)
        holder = self._fs.holder_of(path)
        if node.layer >= self._fs.layer_count:  # added by an earlier pass in this run
            layer, where = node.layer, path
        elif holder is None:
            raise ChangeRefused(f"{self._pass}: {path}: cannot find the entry that holds its bytes")
        else:
            layer, where = holder.layer, holder.path
        self._items.append(
            Change(Op.REPLACE, where, layer, self._pass, reason, node.size, content.size, content, None, path)
        )

    def delete(self, path: str, reason: str = "", *, whiteout_protected: bool = False) -> None:
        """Remove a path (a directory with everything under it) from the final filesystem.

        A path a protected layer owns is refused, unless ``whiteout_protected``: then a whiteout in the new top
        layer hides it (its bytes stay in the protected layer, so a cold pull saves nothing), and only what
        unprotected layers carry under it is removed from them.
        """
        path = clean_path(path)
        if not path:
            raise ChangeRefused(f"{self._pass}: the root directory cannot be deleted")
        node = self._node(path)
        targets = [path]
        if node.entry.kind is EntryKind.DIR:
            targets += [p for p, _ in self._fs.items() if p.startswith(path + "/")]
        protected = self._fs.protected_layers
        hidden: list[str] = []  # protected paths a whiteout in the top layer hides (with their subtrees)
        removed: list[str] = []  # paths removed from the unprotected layers that own them
        for target in targets:
            current = self._fs.get(target)
            assert current is not None
            if current.layer in protected:
                if not whiteout_protected:
                    raise ChangeRefused(f"{self._pass}: {target}: lives in a layer kept byte-identical")
                if not any(target.startswith(h + "/") for h in hidden):
                    hidden.append(target)
                continue
            if current.entry.kind is EntryKind.FILE:
                other_layers = {layer for layer, _ in self._fs.links(current.inode) if layer != current.layer}
                if other_layers:
                    raise ChangeRefused(
                        f"{self._pass}: {target}: hardlinked from other layers ({sorted(other_layers)}); not deleted"
                    )
            removed.append(target)
        for target in hidden:
            current = self._fs.get(target)
            assert current is not None
            # The bytes stay in the protected layer: the image is no smaller for them.
            size = current.size if current.entry.kind is not EntryKind.HARDLINK else 0
            self._items.append(
                Change(
                    Op.DELETE,
                    target,
                    self._fs.layer_count,
                    self._pass,
                    reason,
                    size,
                    size,
                    visible_path=target,
                )
            )
        for target in removed:
            current = self._fs.get(target)
            assert current is not None
            size = current.size if current.entry.kind is not EntryKind.HARDLINK else 0
            self._items.append(
                Change(Op.DELETE, target, current.layer, self._pass, reason, size, 0, visible_path=target)
            )

    def drop(self, layer: int, path: str, size: int, reason: str = "") -> None:
        """Remove an entry of ``layer`` that the merged view no longer shows (dead data, stale whiteouts).

        The caller (the dead-data pass) decides what is dead; this only refuses protected layers and paths that
        are visible from ``layer`` itself.
        """
        path = clean_path(path)
        if not 0 <= layer < self._fs.layer_count:
            raise ChangeRefused(f"{self._pass}: layer {layer} does not exist")
        if layer in self._fs.protected_layers:
            raise ChangeRefused(f"{self._pass}: {path}: lives in a layer kept byte-identical")
        node = self._fs.get(path)
        if node is not None and node.layer == layer:
            raise ChangeRefused(f"{self._pass}: {path}: visible from layer {layer}; use delete()")
        self._items.append(Change(Op.DROP, path, layer, self._pass, reason, size, 0, visible_path=path))

    def add(self, entry: Entry, data: bytes | Content | None = None, reason: str = "") -> None:
        """A new path in the new top layer. Regular files need ``data``; parents are created as needed."""
        entry = entry.with_path(clean_path(entry.path))
        if not entry.path:
            raise ChangeRefused(f"{self._pass}: cannot add the root directory")
        content = None
        if entry.kind is EntryKind.FILE:
            if data is None:
                raise ChangeRefused(f"{self._pass}: {entry.path}: a regular file needs content")
            content = self._content(data)
            entry = entry.with_size(content.size)
        elif data is not None:
            raise ChangeRefused(f"{self._pass}: {entry.path}: only regular files have content")
        before = self._fs.get(entry.path)
        self._items.append(
            Change(
                Op.ADD,
                entry.path,
                self._fs.layer_count,
                self._pass,
                reason,
                before.size if before else 0,
                content.size if content else 0,
                content,
                entry,
                entry.path,
            )
        )
