"""Reading the image's own files as a server would: through the image's symlinks, never the host's."""

from __future__ import annotations

from optimizer.filesystem import FileSystem, Node
from optimizer.model import EntryKind

__all__ = ["node_at"]


def node_at(fs: FileSystem, path: str) -> Node | None:
    """The node at ``path``, through symlinks; direct hits first (``lookup`` needs every parent's entry)."""
    node = fs.get(path)
    if node is not None and node.entry.kind is not EntryKind.SYMLINK:
        return node
    return fs.lookup(path)
