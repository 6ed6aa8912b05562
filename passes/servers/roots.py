"""The document roots of the image's web servers: the directories whose files they send to clients as they are.

Each server module reads its own configuration (the parsers ``served`` uses) and lists the roots it can tell:
nginx ``root``/``alias`` of every context, Apache ``DocumentRoot`` and ``Alias`` targets, the root of every
Caddy ``file_server``, h2o ``file.dir``, lighttpd ``server.document-root`` and ``alias.url``, and the literal
directories of Node.js static middleware (``express.static``, ``serve-static``, ``koa-static``, ``sirv``...).
A root that cannot be told (a variable, a relative path without a base) is no root: what asks (``passes.media``:
may a file lose what only a program would see?) must then answer as for a file no server sends.

Roots are resolved in the image's filesystem as ``served`` resolves them (symlinks followed inside the image,
and the symlinks below a root too). ``/`` itself is never a root: a server configured to send the whole
filesystem says nothing about which files are web assets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from optimizer.filesystem import FileSystem

from . import apache, caddy, h2o, lighttpd, nginx, node
from .files import Symlinks, real_prefixes, under
from .serving import DocumentRoot

__all__ = ["FINDERS", "WebRoots", "web_roots"]

FINDERS: tuple[Callable[[FileSystem, Mapping[str, Any]], list[DocumentRoot]], ...] = (
    nginx.roots,
    apache.roots,
    caddy.roots,
    h2o.roots,
    lighttpd.roots,
    node.roots,
)


@dataclass
class WebRoots:
    """The roots found, and the real path prefixes they send files from (sorted)."""

    roots: list[DocumentRoot] = field(default_factory=list)
    prefixes: list[tuple[str, DocumentRoot]] = field(default_factory=list)

    def holding(self, path: str) -> str | None:
        """Which root sends ``path`` (a real path in the image), as a phrase; None when none does."""
        for prefix, root in self.prefixes:
            if under(path, prefix):
                shown = f"/{root.root}" + (f" (/{prefix})" if prefix != root.root else "")
                return f"under {root.server} {root.how} {shown} ({root.source})"
        return None


def web_roots(
    fs: FileSystem,
    config: Mapping[str, Any] | None = None,
    finders: tuple[Callable[[FileSystem, Mapping[str, Any]], list[DocumentRoot]], ...] = FINDERS,
) -> WebRoots:
    """Every document root of the image's servers, resolved in its filesystem."""
    result = WebRoots()
    links = Symlinks(fs)
    seen: set[tuple[str, str]] = set()
    for find in finders:
        for root in find(fs, config or {}):
            if not root.root or (root.server, root.root) in seen:
                continue
            seen.add((root.server, root.root))
            result.roots.append(root)
            result.prefixes += [(p, root) for p in real_prefixes(fs, root.root, links) if p]
    result.prefixes.sort(key=lambda item: (item[0], item[1].server, item[1].how))
    return result
