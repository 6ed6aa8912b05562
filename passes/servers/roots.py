"""The document roots of the image's web servers: the directories whose files they send to clients as they are.

Each server module reads its own configuration (the parsers ``served`` uses) and lists the roots it can tell:
nginx ``root``/``alias`` of every context, Apache ``DocumentRoot`` and ``Alias`` targets, the root of every
Caddy ``file_server``, h2o ``file.dir``, lighttpd ``server.document-root`` and ``alias.url``, and the literal
directories of Node.js static middleware (``express.static``, ``serve-static``, ``koa-static``, ``sirv``...).
A root that cannot be told (a variable, a relative path without a base) is no root: what asks (``passes.media``:
may a file lose what only a program would see?) must then answer as for a file no server sends.

A root is resolved in the image's filesystem (symlinks followed inside the image). Unlike ``served``, the
symlinks below a root are not followed out of it, and a root is not held where a symlink from outside the roots
leads into it: a file reached that way has a name outside every root (``/srv/www/maps -> /opt/game/maps``,
``/opt/app/static -> /srv/www/img``), which any program may open, as a hardlink's other name may
(``passes.media`` refuses those too). ``/`` itself is never a root: a server configured to send the whole
filesystem says nothing about which files are web assets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from optimizer.filesystem import FileSystem

from . import apache, caddy, h2o, lighttpd, nginx, node
from .files import Symlinks, under
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
    """The roots found, the real path prefixes they send files from (sorted), and the real paths under them
    that a symlink from outside every root also names (``entrances``: symlink target -> the symlink)."""

    roots: list[DocumentRoot] = field(default_factory=list)
    prefixes: list[tuple[str, DocumentRoot]] = field(default_factory=list)
    entrances: dict[str, str] = field(default_factory=dict)

    def holding(self, path: str) -> str | None:
        """Which root sends ``path`` (a real path in the image), as a phrase; None when none does, or when
        ``path`` has a name outside every root too (a symlink from outside leads to it)."""
        if any(under(path, target) for target in self.entrances):
            return None
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
    seen: set[tuple[str, str]] = set()
    for find in finders:
        for root in find(fs, config or {}):
            if not root.root or (root.server, root.root) in seen:
                continue
            seen.add((root.server, root.root))
            result.roots.append(root)
            real = fs.resolve(root.root)
            if real != "":  # "/" through a symlink is no root either
                result.prefixes.append((root.root if real is None else real, root))
    result.prefixes.sort(key=lambda item: (item[0], item[1].server, item[1].how))
    result.entrances = _entrances(fs, result)
    return result


def _entrances(fs: FileSystem, found: WebRoots) -> dict[str, str]:
    """The symlinks outside every root that lead into one (target -> symlink). A symlink on a configured root's
    own path (Capistrano's ``/var/www/current``) is how the server names the root, not another name."""
    if not found.prefixes:
        return {}
    configured = [root.root for root in found.roots]
    out: dict[str, str] = {}
    for link in Symlinks(fs).below(""):
        if any(under(link, p) for p, _ in found.prefixes) or any(under(c, link) for c in configured):
            continue
        target = fs.resolve(link)
        if target and any(under(target, p) for p, _ in found.prefixes):
            out.setdefault(target, link)
    return out
