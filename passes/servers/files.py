"""Reading the image's own files as a server would: through the image's symlinks, never the host's.

Configuration is read from the merged filesystem (size-capped, includes globbed in the image, what one
configuration reads through its includes bounded as a whole: ``Includes``), and a configured root is turned into
the real paths whose files a server sends under it: the root with its symlinks resolved inside the image
(Capistrano's ``/var/www/current -> /srv/releases/42``), plus whatever the symlinks below it lead to.
"""

from __future__ import annotations

import bisect
import fnmatch
import posixpath
import re

from optimizer.filesystem import FileSystem, Node
from optimizer.model import EntryKind

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_INCLUDED_TEXT",
    "MAX_INCLUDES",
    "IncludeLimit",
    "Includes",
    "Symlinks",
    "config_paths",
    "node_at",
    "read_text",
    "real_prefixes",
    "under",
]

MAX_CONFIG_BYTES = 4 << 20  # a larger "configuration file" is not one
# What one configuration may read through its includes, repeats counted each time. Debian's nginx or httpd with
# every module and site enabled includes 20-60 files and some 100 KB; files that include each other are read
# about k! times (10 files: 10 million reads) and stop here instead.
MAX_INCLUDES = 1000
MAX_INCLUDED_TEXT = MAX_CONFIG_BYTES  # characters in all, the top file's too
_MAX_PREFIXES = 256  # symlinked directories followed below one root, at most


def node_at(fs: FileSystem, path: str) -> Node | None:
    """The node at ``path``, through symlinks; direct hits first (``lookup`` needs every parent's entry)."""
    node = fs.get(path)
    if node is not None and node.entry.kind is not EntryKind.SYMLINK:
        return node
    return fs.lookup(path)


def read_text(fs: FileSystem, path: str) -> str | None:
    """A configuration file's text (through symlinks); None when missing, not a file or too large."""
    node = node_at(fs, path)
    if node is None or node.content is None or node.content.size > MAX_CONFIG_BYTES:
        return None
    return node.content.read_bytes().decode("utf-8", errors="replace")


def config_paths(fs: FileSystem, pattern: str) -> list[str]:
    """The paths an include ``pattern`` (root-relative, shell wildcards) names, sorted; globbed in the image."""
    fixed = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
    if fixed == pattern:
        return [pattern] if node_at(fs, pattern) is not None else []
    directory = fixed.rsplit("/", 1)[0] if "/" in fixed else ""
    parts = pattern[len(directory) :].lstrip("/").split("/")
    found = [directory]
    for part in parts:  # one component at a time: "conf.d/*/site.conf" works too
        step = []
        for base in found:
            resolved = fs.resolve(base) if base else ""
            if resolved is None:
                continue
            for child in fs.children(resolved):
                name = child.rsplit("/", 1)[-1]
                if fnmatch.fnmatchcase(name, part):
                    step.append(f"{base}/{name}" if base else name)
        found = step
    return sorted(found)


class IncludeLimit(Exception):
    """A configuration read more than ``MAX_INCLUDES`` includes or ``MAX_INCLUDED_TEXT`` characters: what it
    configures cannot be told. ``source`` is its top file (image-relative), the message says which bound."""

    def __init__(self, source: str, message: str) -> None:
        super().__init__(message)
        self.source = source


class Includes:
    """What one configuration (``source``, its top file or directory) reads through its includes, counted
    against ``MAX_INCLUDES`` and ``MAX_INCLUDED_TEXT``; past either, ``IncludeLimit``. Every include counts
    (a snippet included in three server blocks is three, a file skipped as a cycle is one); each file's text
    is read from the image once."""

    def __init__(self, fs: FileSystem, source: str) -> None:
        self.fs = fs
        self.source = source
        self.includes = 0
        self.characters = 0
        self._texts: dict[str, str | None] = {}

    def paths(self, pattern: str) -> list[str]:
        """The files an include names (``config_paths``), each one include; a pattern naming none is one too."""
        found = config_paths(self.fs, pattern)
        self.count(max(1, len(found)), 0)
        return found

    def text(self, path: str) -> str | None:
        """A file's text (``read_text``), counted whole each time it is read."""
        if path not in self._texts:
            self._texts[path] = read_text(self.fs, path)
        text = self._texts[path]
        self.count(0, len(text or ""))
        return text

    def count(self, includes: int, characters: int) -> None:
        """Count what an include brings (``Includes.paths`` and ``Includes.text`` count themselves)."""
        self.includes += includes
        self.characters += characters
        if self.includes > MAX_INCLUDES:
            bound = f"more than {MAX_INCLUDES} includes (files that include each other?)"
        elif self.characters > MAX_INCLUDED_TEXT:
            bound = f"more than {MAX_INCLUDED_TEXT >> 20} MiB of text"
        else:
            return
        raise IncludeLimit(self.source, f"/{self.source} and what it includes read {bound}")


def under(path: str, prefix: str) -> bool:
    """``path`` is ``prefix`` or below it ("" is the root, above everything)."""
    return not prefix or path == prefix or path.startswith(prefix + "/")


class Symlinks:
    """Every symlink of the image in path order, listed once (on first use) for the roots that need them."""

    def __init__(self, fs: FileSystem) -> None:
        self._fs = fs
        self._paths: list[str] | None = None

    def below(self, directory: str) -> list[str]:
        if self._paths is None:
            self._paths = [p for p, n in self._fs.items() if n.entry.kind is EntryKind.SYMLINK]
        if not directory:
            return list(self._paths)
        start = bisect.bisect_left(self._paths, directory + "/")
        end = bisect.bisect_left(self._paths, directory + "0")  # "0" sorts right after "/"
        return self._paths[start:end]


def real_prefixes(fs: FileSystem, root: str, links: Symlinks) -> list[str]:
    """The real paths whose files are sent under ``root`` (image-absolute): the root resolved in the image,
    and the targets of the symlinks below it, followed the same way."""
    lexical = posixpath.normpath("/" + root).strip("/").removeprefix("/")
    first = fs.resolve(lexical)
    if first is None:
        return [lexical]  # nothing there (yet): the path as written is all a server could send from
    prefixes = [first]
    pending = [first]
    while pending and len(prefixes) < _MAX_PREFIXES:
        for link in links.below(pending.pop()):
            target = fs.resolve(link)
            if target is None or any(under(target, p) for p in prefixes):
                continue
            prefixes.append(target)
            if fs.is_directory(target):
                pending.append(target)
    return prefixes
