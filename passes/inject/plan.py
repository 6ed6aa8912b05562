"""Placing the additions of one run: through the image's symlinked directories, recorded sorted at the end."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any

from optimizer.model import Entry, EntryKind
from optimizer.pipeline import PassContext

__all__ = ["Plan", "relative_link"]


def relative_link(link: str, target: str) -> str:
    """The relative symlink text at ``link`` that reaches ``target`` (both root-relative): relative links
    resolve the same in a container, a chroot and an unpacked tree on the host."""
    return posixpath.relpath("/" + target, posixpath.dirname("/" + link))


@dataclass(frozen=True)
class _Addition:
    entry: Entry
    data: bytes | None
    reason: str
    need: str  # what it is for, short: "certs needed by /usr/sbin/nginx" (the report's and summary's words)


class Plan:
    """The additions of one run, collected, then recorded sorted (parent directories first)."""

    def __init__(self, ctx: PassContext) -> None:
        self._ctx = ctx
        self._fs = ctx.fs
        self._items: dict[str, _Addition] = {}

    def __contains__(self, path: str) -> bool:
        return path in self._items

    def __len__(self) -> int:
        return len(self._items)

    def place(self, path: str) -> str | None:
        """Where ``path`` really goes, symlinked parents followed inside the root (the core creates the parent
        directories that do not exist yet); None when a parent leads nowhere or is not a directory, or when a
        directory stands at the path itself."""
        parts = path.split("/")
        real = ""
        for number, part in enumerate(parts[:-1]):
            candidate = f"{real}/{part}" if real else part
            if self._fs.get(candidate) is None and not self._fs.implied_directory(candidate):
                real = "/".join([candidate, *parts[number + 1 : -1]])
                break
            resolved = self._fs.resolve(candidate)
            if resolved is None or not self._fs.is_directory(resolved):
                return None
            real = resolved
        final = f"{real}/{parts[-1]}" if real else parts[-1]
        existing = self._fs.get(final)
        if existing is not None and existing.entry.kind is EntryKind.DIR:
            return None
        return final

    def _record(self, path: str, entry: Entry, data: bytes | None, reason: str, need: str) -> str | None:
        final = self.place(path)
        if final is None:
            self._ctx.warn(
                f"{self._ctx.image.name}: /{path}: not added ({reason}): a parent is not a directory or a "
                "symlink on the way leads nowhere, or a directory stands there"
            )
            return None
        self._items[final] = _Addition(entry.with_path(final), data, reason, need)
        return final

    def file(self, path: str, data: bytes, reason: str, need: str, mode: int = 0o644) -> str | None:
        entry = Entry(path, EntryKind.FILE, mode=mode, uid=0, gid=0, mtime=0)
        return self._record(path, entry, data, reason, need)

    def symlink(self, path: str, target: str, reason: str, need: str) -> str | None:
        """A relative symlink at ``path`` to the root-relative ``target``."""
        final = self.place(path)
        link = relative_link(final or path, target)
        entry = Entry(path, EntryKind.SYMLINK, mode=0o777, uid=0, gid=0, mtime=0, link=link)
        return self._record(path, entry, None, reason, need)

    def commit(self) -> None:
        for path in sorted(self._items):
            item = self._items[path]
            self._ctx.changes.add(item.entry, item.data, item.reason)
            size = len(item.data) if item.data is not None else 0
            details: dict[str, Any] = {"kind": item.entry.kind.value, "need": item.need}
            if item.entry.kind is EntryKind.SYMLINK:
                details["link"] = item.entry.link
            self._ctx.note(path, "added", item.reason, 0, size, **details)
