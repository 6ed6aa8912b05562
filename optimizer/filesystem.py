"""The merged, read-only view of an image's layers: what a container would see.

Built like ``mutate.Extract`` in go-containerregistry and like overlayfs: layers are applied bottom to top; in
each layer, whiteouts (``.wh.NAME``) and opaque-directory markers (``.wh..wh..opq``, wherever they stand in the
layer's stream) delete from the layers below, then the layer's own entries are added. A non-directory that
replaces a directory hides the directory's contents.

Hardlinks share an ``inode`` number: a pass that strips one path strips them all, once, and the change is
recorded against the entry that holds the bytes (``holder``), even when that path itself was deleted above.
Symlinks are resolved only lexically, inside the root, never on the host.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from .layer import OPAQUE_MARKER, WHITEOUT_PREFIX, IndexedEntry, clean_path
from .model import Content, Entry, EntryKind

__all__ = ["FileSystem", "Node", "build_filesystem"]

_SYMLINK_DEPTH = 40


@dataclass(frozen=True, slots=True)
class Node:
    """A visible path: its entry, the layer that owns it, its bytes (for files and hardlinks)."""

    entry: Entry
    layer: int
    content: Content | None
    inode: int

    @property
    def is_file(self) -> bool:
        """A regular file, directly or through a hardlink."""
        return self.content is not None

    @property
    def size(self) -> int:
        return self.content.size if self.content is not None else 0


@dataclass(frozen=True, slots=True)
class Holder:
    """Where an inode's bytes are stored: the layer and the path of the FILE entry."""

    layer: int
    path: str


class FileSystem:
    """path -> Node for every visible path ("" is the root directory)."""

    def __init__(
        self,
        nodes: Mapping[str, Node],
        holders: Mapping[int, Holder],
        links: Mapping[int, Sequence[tuple[int, str]]],
        protected: frozenset[int],
        layer_count: int,
    ) -> None:
        self._nodes = dict(nodes)
        self._holders = holders
        self._links = links
        self.protected_layers = protected
        self.layer_count = layer_count
        self._children: dict[str, list[str]] | None = None
        self._implied: frozenset[str] | None = None

    def __contains__(self, path: object) -> bool:
        return path in self._nodes

    def __len__(self) -> int:
        return len(self._nodes)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._nodes))

    def get(self, path: str) -> Node | None:
        return self._nodes.get(clean_path(path))

    def items(self) -> Iterator[tuple[str, Node]]:
        for path in sorted(self._nodes):
            yield path, self._nodes[path]

    def files(self) -> Iterator[tuple[str, Node]]:
        """Regular files (hardlinks included), in path order."""
        for path, node in self.items():
            if node.content is not None:
                yield path, node

    def unique_files(self) -> Iterator[tuple[str, Node]]:
        """One path per inode (the first in path order): work on each file's bytes once."""
        seen: set[int] = set()
        for path, node in self.files():
            if node.inode not in seen:
                seen.add(node.inode)
                yield path, node

    def paths_of(self, inode: int) -> list[str]:
        return sorted(p for p, n in self._nodes.items() if n.inode == inode)

    def children(self, directory: str) -> list[str]:
        if self._children is None:
            index: dict[str, list[str]] = {}
            for path in sorted(self._nodes):
                if path:
                    parent = path.rsplit("/", 1)[0] if "/" in path else ""
                    index.setdefault(parent, []).append(path)
            self._children = index
        return list(self._children.get(clean_path(directory), []))

    def holder(self, inode: int) -> Holder | None:
        """Where a hardlinked inode's bytes are stored; None for an inode without links (its FILE node holds
        them: use ``holder_of``)."""
        return self._holders.get(inode)

    def holder_of(self, path: str) -> Holder | None:
        """Where the bytes seen at ``path`` are stored (the FILE entry, for a hardlink the one it links to)."""
        node = self.get(path)
        if node is None or node.content is None:
            return None
        known = self._holders.get(node.inode)
        if known is not None:
            return known
        if node.entry.kind is EntryKind.FILE:
            return Holder(node.layer, clean_path(path))
        return None

    def links(self, inode: int) -> Sequence[tuple[int, str]]:
        """Every (layer, path) of a HARDLINK entry that refers to this inode, visible or not."""
        return self._links.get(inode, ())

    def is_protected(self, path: str) -> bool:
        """True when the bytes at ``path`` live in a layer that must stay byte-identical."""
        node = self.get(path)
        if node is None:
            return False
        if node.layer in self.protected_layers:
            return True
        holder = self._holders.get(node.inode)
        return holder is not None and holder.layer in self.protected_layers

    def resolve(self, path: str) -> str | None:
        """Follow symlinks (inside the root) to a visible path; None when dangling, cyclic or too deep."""
        pending = clean_path(path).split("/") if clean_path(path) else []
        resolved: list[str] = []
        hops = 0
        while pending:
            part = pending.pop(0)
            candidate = "/".join([*resolved, part])
            node = self._nodes.get(candidate)
            if node is None:
                if self.implied_directory(candidate):
                    resolved.append(part)  # a directory the layers imply without an entry of its own
                    continue
                return None
            if node.entry.kind is EntryKind.SYMLINK:
                hops += 1
                if hops > _SYMLINK_DEPTH:
                    return None
                target = node.entry.link
                base = [] if target.startswith("/") else resolved
                pending = [p for p in "/".join([*base, target]).split("/") if p] + pending
                pending = clean_path("/".join(pending)).split("/") if pending else []
                resolved = []
                continue
            resolved.append(part)
        return "/".join(resolved)

    def implied_directory(self, path: str) -> bool:
        """True when ``path`` has no entry of its own but paths below it exist: a directory no layer listed
        (``etc/passwd`` without an ``etc`` entry, as some image builders write)."""
        if self._implied is None:
            ancestors: set[str] = set()
            for existing in self._nodes:
                parts = existing.split("/")
                ancestors.update("/".join(parts[:i]) for i in range(1, len(parts)))
            self._implied = frozenset(ancestors - self._nodes.keys())
        return clean_path(path) in self._implied

    def is_directory(self, path: str) -> bool:
        """``path``, symlinks followed, is a directory: listed or implied."""
        target = self.resolve(path)
        if target is None:
            return False
        node = self._nodes.get(target)
        return node.entry.kind is EntryKind.DIR if node is not None else self.implied_directory(target)

    def lookup(self, path: str) -> Node | None:
        """The node at ``path`` after following symlinks."""
        target = self.resolve(path)
        return None if target is None else self._nodes.get(target)


def whiteout_target(path: str) -> str | None:
    """``a/.wh.b`` -> ``a/b``; None for other names and for the opaque marker."""
    name = path.rsplit("/", 1)[-1]
    if not name.startswith(WHITEOUT_PREFIX) or name == OPAQUE_MARKER:
        return None
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    target = name[len(WHITEOUT_PREFIX) :]
    return f"{parent}/{target}" if parent else target


def opaque_directory(path: str) -> str | None:
    name = path.rsplit("/", 1)[-1]
    if name != OPAQUE_MARKER:
        return None
    return path.rsplit("/", 1)[0] if "/" in path else ""


def _delete_tree(nodes: dict[str, Node], path: str, keep_layer: int | None = None) -> None:
    prefix = path + "/" if path else ""
    for existing in [p for p in nodes if (p == path and path) or p.startswith(prefix)]:
        if keep_layer is not None and nodes[existing].layer == keep_layer:
            continue
        if existing:
            del nodes[existing]


def _note_implicit_parents(path: str, nodes: Mapping[str, Node], implicit: set[str]) -> None:
    parent = path.rpartition("/")[0]
    while parent and parent not in nodes and parent not in implicit:
        implicit.add(parent)
        parent = parent.rpartition("/")[0]


def build_filesystem(
    layers: Sequence[Sequence[IndexedEntry]], protected: frozenset[int] = frozenset()
) -> FileSystem:
    """Apply layers in order (index 0 at the bottom) and return the merged view."""
    nodes: dict[str, Node] = {"": Node(Entry("", EntryKind.DIR, mode=0o755), -1, None, 0)}
    holders: dict[int, Holder] = {}
    links: dict[int, list[tuple[int, str]]] = {}
    # inode of the FILE entry at (layer, path) so that hardlinks in later entries find it even if deleted
    inode_at: dict[str, int] = {}
    next_inode = 1
    # Directories that exist only because paths below them do (a layer without their own entries): a
    # non-directory put there replaces the whole tree, as an extractor removes a directory it meets.
    implicit: set[str] = set()
    for number, entries in enumerate(layers):
        # Whiteouts and opaque markers act on the layers below, wherever they stand in this layer's stream.
        for item in entries:
            opaque = opaque_directory(item.entry.path)
            if opaque is not None:
                for existing in [p for p in nodes if p.startswith(opaque + "/" if opaque else "")]:
                    if existing and nodes[existing].layer < number:
                        del nodes[existing]
                continue
            target = whiteout_target(item.entry.path)
            if target is not None:
                _delete_tree(nodes, target)
        for item in entries:
            entry = item.entry
            if opaque_directory(entry.path) is not None or whiteout_target(entry.path) is not None:
                continue
            previous = nodes.get(entry.path)
            if entry.kind is not EntryKind.DIR and (
                entry.path in implicit or (previous is not None and previous.entry.kind is EntryKind.DIR)
            ):
                _delete_tree(nodes, entry.path)
                implicit.discard(entry.path)
            _note_implicit_parents(entry.path, nodes, implicit)
            if entry.kind is EntryKind.FILE:
                inode = next_inode
                next_inode += 1
                holders[inode] = Holder(number, entry.path)
                inode_at[entry.path] = inode
                nodes[entry.path] = Node(entry, number, item.content, inode)
            elif entry.kind is EntryKind.HARDLINK:
                target_node = nodes.get(entry.link)
                content: Content | None
                if target_node is not None and target_node.content is not None:
                    inode = target_node.inode
                    content = target_node.content
                elif entry.link in inode_at and inode_at[entry.link] in holders:
                    inode = inode_at[entry.link]
                    content = _content_of(layers, holders[inode])
                else:
                    # A link to nothing: extractors fail on it; keep it visible without content.
                    nodes[entry.path] = Node(entry, number, None, 0)
                    continue
                links.setdefault(inode, []).append((number, entry.path))
                inode_at[entry.path] = inode
                nodes[entry.path] = Node(entry, number, content, inode)
            else:
                nodes[entry.path] = Node(entry, number, None, 0)
    # Only hardlinked inodes need a holder on record: a plain file's node is its own holder (see ``holder``).
    linked_holders = {inode: holders[inode] for inode in links if inode in holders}
    return FileSystem(nodes, linked_holders, links, protected, len(layers))


def _content_of(layers: Sequence[Sequence[IndexedEntry]], holder: Holder) -> Content | None:
    for item in layers[holder.layer]:
        if item.entry.path == holder.path and item.entry.kind is EntryKind.FILE:
            return item.content
    return None
