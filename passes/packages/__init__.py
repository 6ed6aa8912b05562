"""What the image's package managers own, so that passes leave it alone; RECORD files kept true.

``dpkg --verify``, ``rpm -V``, ``apk audit`` and the scanners that read the same databases (Trivy, Grype,
Syft, Clair) compare every packaged file with the digest the database recorded: a stripped binary or a
recompressed PNG that a package installed shows up as modified, and a deleted one as missing. By default no
pass changes or deletes a file that dpkg (``passes.packages.dpkg``), rpm (``rpm``) or apk (``apk``) lists;
each such file is reported as kept with its manager and package. ``--touch-package-files``
(``PassContext.touch_package_files``) lets passes change them anyway. An rpm database that is there but cannot
be read (BerkeleyDB, ndb, a damaged SQLite file) makes every file under ``/usr`` count as owned, with a
warning: nothing it may list is changed.

Python distributions installed by pip list their files, with sha256 and size, in ``*.dist-info/RECORD``
(``record``). A pass that changes or deletes such a file calls ``update_records`` at its end, which writes
the RECORDs whose lines changed (a replacement through ``ctx.changes``). A file whose RECORD cannot be
rewritten (in a protected layer, or itself owned by a package manager) is kept like a packaged one.

The passes' side is two calls: ``kept_reason(ctx, path)`` before changing a file (a reason to keep it, or
None), and ``update_records(ctx)`` once when the pass has recorded its changes. The databases are read once
per image, by the first pass that asks, and shared through ``ctx.shared``: passes never change them.
Paths are compared after following the image's symlinked directories (``/lib`` -> ``usr/lib``), as the
package managers' own checks do. This module only reads; it never changes a database.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from optimizer.changes import Op
from optimizer.filesystem import FileSystem
from optimizer.model import Content
from optimizer.pipeline import PassContext

from .apk import read_apk
from .database import Database
from .dpkg import read_dpkg
from .record import RECORD_SUFFIX, record_paths, rewrite_record
from .rpm import read_rpm

__all__ = [
    "Database",
    "Ownership",
    "kept_reason",
    "ownership",
    "read_ownership",
    "record_kept_reason",
    "update_records",
]

_SHARED_KEY = "packages"


class _Locator:
    """Root-relative paths as the image really keeps them: each parent directory's symlinks followed once."""

    def __init__(self, fs: FileSystem) -> None:
        self._fs = fs
        self._parents: dict[str, str] = {}

    def __call__(self, path: str) -> str:
        parent, _, name = path.rpartition("/")
        if not parent:
            return path
        real = self._parents.get(parent)
        if real is None:
            real = self._fs.resolve(parent) or parent
            self._parents[parent] = real
        return f"{real}/{name}" if real else name


@dataclass
class Ownership:
    """Which paths of one image the package managers list (real paths), and the RECORD files that list each."""

    databases: list[Database] = field(default_factory=list)
    owners: dict[str, tuple[str, str]] = field(default_factory=dict)  # path -> (manager, package)
    records: dict[str, list[str]] | None = None  # listed path -> RECORDs listing it (read on first use)
    locate: _Locator | None = None

    def owner(self, path: str) -> str | None:
        """Why ``path`` counts as packaged ("dpkg lists it (package libc6)"), or None."""
        found = self.owners.get(path)
        if found is not None:
            return f"{found[0]} lists it (package {found[1]})"
        for database in self.databases:
            for prefix in database.prefixes:
                if path.startswith(prefix):
                    return f"{database.manager} may list it: {database.unreadable}"
        return None

    def listing_records(self, fs: FileSystem, path: str) -> list[str]:
        if self.records is None:
            self.records = _record_index(fs, self.locate or _Locator(fs))
        return self.records.get(path, [])


def read_ownership(fs: FileSystem) -> Ownership:
    """Read every package database of ``fs`` (dpkg, rpm, apk)."""
    databases = [d for d in (read_dpkg(fs), read_apk(fs)) if d is not None]
    databases += list(read_rpm(fs))
    locate = _Locator(fs)
    owners: dict[str, tuple[str, str]] = {}
    for database in databases:
        for path, package in database.owners.items():
            owners.setdefault(locate(path), (database.manager, package))
    return Ownership(databases, owners, None, locate)


def ownership(ctx: PassContext) -> Ownership:
    """The image's ownership, read by the first pass that asks (which also reports unreadable databases)."""
    found = ctx.shared.get(_SHARED_KEY)
    if isinstance(found, Ownership):
        return found
    found = read_ownership(ctx.fs)
    ctx.shared[_SHARED_KEY] = found
    for database in found.databases:
        if database.unreadable and not ctx.touch_package_files:
            under = ", ".join(f"/{p}" for p in database.prefixes)
            ctx.warn(
                f"{ctx.image.name}: {database.unreadable}: every file under {under} is kept as if it listed "
                "it (--touch-package-files changes them anyway)"
            )
    return found


def _same_file_paths(fs: FileSystem, path: str) -> list[str]:
    node = fs.get(path)
    if node is None or node.content is None or not fs.links(node.inode):
        return [path]
    return fs.paths_of(node.inode)


def kept_reason(ctx: PassContext, path: str) -> str | None:
    """Why a pass must leave the file at ``path`` (and its hardlinks) as it is, or None when it may change it.

    Kept: files a package manager lists (unless ``--touch-package-files``), and files listed in a RECORD
    that cannot be rewritten (a protected layer; packaged itself, unless ``--touch-package-files``)."""
    facts = ownership(ctx)
    touch = ctx.touch_package_files
    for name in _same_file_paths(ctx.fs, path):
        owner = None if touch else facts.owner(name)
        if owner is not None:
            shown = "" if name == path else f" (as /{name})"
            return f"packaged: {owner}{shown}; --touch-package-files changes it"
    return record_kept_reason(ctx, path)


def record_kept_reason(ctx: PassContext, path: str) -> str | None:
    """Why the file at ``path`` (or a hardlink of it) must stay as it is for the RECORD that lists it: that
    RECORD cannot be rewritten (a protected layer; packaged itself, unless ``--touch-package-files``)."""
    facts = ownership(ctx)
    for name in _same_file_paths(ctx.fs, path):
        for record in facts.listing_records(ctx.fs, name):
            if ctx.fs.is_protected(record):
                return f"listed in /{record}, which lies in a protected layer (its hash could not be updated)"
            record_owner = None if ctx.touch_package_files else facts.owner(record)
            if record_owner is not None:
                return f"listed in /{record}, which is packaged ({record_owner}) and so not rewritten"
    return None


def update_records(ctx: PassContext) -> None:
    """Rewrite the RECORD lines of every file this pass has changed or deleted so far (call once, at the end)."""
    changed: dict[str, Content | None] = {}
    for change in ctx.changes:
        if change.op is Op.REPLACE and change.content is not None:
            for name in _same_file_paths(ctx.fs, change.visible_path or change.path):
                changed[name] = change.content
        elif change.op is Op.DELETE:
            changed[change.visible_path or change.path] = None
    if not changed:
        return
    facts = ownership(ctx)
    by_record: dict[str, dict[str, Content | None]] = {}
    for path, content in changed.items():
        for record in facts.listing_records(ctx.fs, path):
            by_record.setdefault(record, {})[path] = content
    locate = facts.locate or _Locator(ctx.fs)
    for record, updates in sorted(by_record.items()):
        node = ctx.fs.get(record)
        if node is None or node.content is None or record in changed:
            continue
        old = node.content.read_bytes()
        new = rewrite_record(old, record, updates, locate)
        if new == old:
            continue
        deleted = sum(1 for content in updates.values() if content is None)
        what = _count(len(updates) - deleted, "changed file") + (
            f" and {_count(deleted, 'deleted file')}" if deleted else ""
        )
        reason = f"RECORD kept true: lines of {what}"
        ctx.changes.replace(record, new, reason)
        ctx.note(record, "updated", reason, len(old), len(new), files=sorted("/" + p for p in updates))


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _record_index(fs: FileSystem, locate: _Locator) -> dict[str, list[str]]:
    """listed path -> the RECORDs that list it, for every ``*.dist-info/RECORD`` of the image."""
    index: dict[str, list[str]] = {}
    for record, node in fs.files():
        if record.endswith(RECORD_SUFFIX) and node.content is not None:
            for listed in record_paths(node.content.read_bytes(), record):
                index.setdefault(locate(listed), []).append(record)
    return index
