"""What every slim rule shares: the ``Subject`` a rule looks at and the ``Verdict`` it returns.

A rule is a function ``find(subject) -> Verdict`` in its own module, whose docstring says what it removes, why
that is safe and what it never removes. It only decides: the pass records the deletions (or, for a category
the user did not ask for, reports what they would save).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from optimizer.filesystem import FileSystem, Node
from optimizer.model import EntryKind

__all__ = ["Rule", "Subject", "Verdict", "environment", "is_legal_notice"]


@dataclass
class Verdict:
    """``remove``: (path, reason) of each path to delete; ``kept``: (path, reason) of candidates left on purpose,
    one line per group (a package, a directory), so a user sees why the rule stopped short."""

    remove: list[tuple[str, str]] = field(default_factory=list)
    kept: list[tuple[str, str]] = field(default_factory=list)


class Subject:
    """The merged view (paths sorted once, for prefix scans) and the facts of the image config rules need."""

    def __init__(
        self, fs: FileSystem, config: Mapping[str, object], keep_locales: Sequence[str] = ()
    ) -> None:
        self.fs = fs
        self.env = environment(config)
        self.keep_locales = tuple(keep_locales)
        self._paths = [path for path in fs]  # sorted

    def under(self, directory: str) -> Iterator[tuple[str, Node]]:
        """Every visible path below ``directory`` (not the directory itself), in path order."""
        prefix = directory.rstrip("/") + "/"
        start = bisect.bisect_left(self._paths, prefix)
        for path in self._paths[start:]:
            if not path.startswith(prefix):
                break
            node = self.fs.get(path)
            if node is not None:
                yield path, node

    def matching(self, pattern: re.Pattern[str]) -> Iterator[tuple[str, Node]]:
        """Every visible path that ``pattern`` matches (from its start)."""
        for path in self._paths:
            if pattern.match(path):
                node = self.fs.get(path)
                if node is not None:
                    yield path, node

    @cached_property
    def paths(self) -> Sequence[str]:
        return self._paths

    def exists(self, path: str) -> bool:
        """``path`` resolves (symlinks followed) to something visible."""
        return self.fs.lookup(path) is not None or self.fs.is_directory(path)

    def is_file(self, path: str) -> bool:
        node = self.fs.lookup(path)
        return node is not None and node.content is not None

    def any_program(self, names: Sequence[str]) -> str | None:
        """The first of ``names`` found as an executable file in a usual bin directory, or None."""
        for name in names:
            for directory in ("usr/local/bin", "usr/bin", "bin", "usr/local/sbin", "usr/sbin", "sbin"):
                node = self.fs.lookup(f"{directory}/{name}")
                if node is not None and node.content is not None and node.entry.mode & 0o111:
                    return f"{directory}/{name}"
        return None


Rule = Callable[[Subject], Verdict]

_LEGAL = re.compile(r"(copyright|copying|licen[cs]e|notice|legal|patents)", re.IGNORECASE)


def is_legal_notice(path: str) -> bool:
    """A file that carries a copyright or licence notice: never removed, whatever the category."""
    return bool(_LEGAL.search(path.rsplit("/", 1)[-1]))


def environment(config: Mapping[str, object]) -> dict[str, str]:
    """The image config's ``Env`` as a mapping (later entries win, as in a container)."""
    inner = config.get("config")
    values = inner.get("Env") if isinstance(inner, dict) else None
    env: dict[str, str] = {}
    for item in values if isinstance(values, list) else ():
        if isinstance(item, str) and "=" in item:
            key, _, value = item.partition("=")
            env[key] = value
    return env


def plain_files(items: Iterator[tuple[str, Node]]) -> Iterator[tuple[str, Node]]:
    """The non-directories among ``items``: what a rule deletes (directories stay, see the rules)."""
    for path, node in items:
        if node.entry.kind is not EntryKind.DIR:
            yield path, node
