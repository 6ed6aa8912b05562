"""rpm's database: the SQLite ``rpmdb.sqlite`` is read; a BerkeleyDB ``Packages`` or an ndb ``Packages.db`` is
recognised and not read (its files are then taken as everything under ``/usr``: see ``Database.prefixes``).

An ``rpmdb.sqlite`` (rpm 4.16+: Fedora 33+, RHEL 9+, openSUSE's newer releases, Amazon Linux 2023) keeps each
installed package's header in the ``Packages`` table, as rpm stores it: without the 8-byte header magic,
``il`` and ``dl`` (big-endian 32-bit), ``il`` index entries of 16 bytes (tag, type, offset, count), then ``dl``
bytes of data. Files are ``DIRNAMES[DIRINDEXES[i]] + BASENAMES[i]`` (tags 1118, 1116, 1117), or
``OLDFILENAMES`` (1027) in old headers; the package is ``NAME`` (1000). A copy of the database (and of its
write-ahead log, where the image has one) is opened from a private temporary directory: the image's bytes
are never opened for writing.
"""

from __future__ import annotations

import os
import sqlite3
import struct
import tempfile
from collections.abc import Iterator, Mapping

from optimizer.filesystem import FileSystem

from .database import Database, clean_listed

__all__ = ["RPM_DIRECTORIES", "RpmHeaderError", "header_files", "read_rpm"]

RPM_DIRECTORIES = ("var/lib/rpm", "usr/lib/sysimage/rpm", "usr/share/rpm")
# Where an unreadable database may list files: the merged /usr (and the top-level directories that are its
# links on merged systems, real directories on older ones).
UNREAD_PREFIXES = ("usr/", "bin/", "sbin/", "lib/", "lib64/")

TAG_NAME, TAG_OLDFILENAMES, TAG_DIRINDEXES, TAG_BASENAMES, TAG_DIRNAMES = 1000, 1027, 1116, 1117, 1118
TYPE_INT32, TYPE_STRING, TYPE_STRING_ARRAY, TYPE_I18NSTRING = 4, 6, 8, 9
_MAX_ENTRIES = 1 << 20


class RpmHeaderError(ValueError):
    """A header blob that does not parse (the database is then treated as unreadable)."""


def _strings(data: bytes, offset: int, count: int) -> list[str]:
    out: list[str] = []
    for _ in range(count):
        end = data.find(b"\0", offset)
        if end < 0:
            raise RpmHeaderError(f"a string at {offset} runs past the data")
        out.append(data[offset:end].decode("utf-8", "surrogateescape"))
        offset = end + 1
    return out


def _tags(blob: bytes) -> dict[int, list[str] | list[int]]:
    if len(blob) < 8:
        raise RpmHeaderError(f"{len(blob)} bytes: shorter than a header")
    il, dl = struct.unpack_from(">II", blob)
    start = 8 + 16 * il
    if il > _MAX_ENTRIES or start + dl > len(blob):
        raise RpmHeaderError(f"{il} entries and {dl} bytes of data do not fit in {len(blob)} bytes")
    data = blob[start : start + dl]
    wanted = (TAG_NAME, TAG_OLDFILENAMES, TAG_DIRINDEXES, TAG_BASENAMES, TAG_DIRNAMES)
    out: dict[int, list[str] | list[int]] = {}
    for number in range(il):
        tag, kind, offset, count = struct.unpack_from(">iIiI", blob, 8 + 16 * number)
        if tag not in wanted:
            continue
        if not 0 <= offset <= dl:
            raise RpmHeaderError(f"tag {tag}: offset {offset} outside the data")
        if kind == TYPE_INT32:
            if offset + 4 * count > dl:
                raise RpmHeaderError(f"tag {tag}: {count} integers run past the data")
            out[tag] = list(struct.unpack_from(f">{count}i", data, offset))
        elif kind in (TYPE_STRING, TYPE_STRING_ARRAY, TYPE_I18NSTRING):
            out[tag] = _strings(data, offset, 1 if kind == TYPE_STRING else count)
        else:
            raise RpmHeaderError(f"tag {tag}: unexpected type {kind}")
    return out


def header_files(blob: bytes) -> tuple[str, list[str]]:
    """(package name, the paths it lists) from one header blob of the database."""
    tags = _tags(blob)
    names = tags.get(TAG_NAME) or ["?"]
    name = str(names[0])
    if TAG_BASENAMES in tags:
        bases = [str(b) for b in tags[TAG_BASENAMES]]
        dirs = [str(d) for d in tags.get(TAG_DIRNAMES, [])]
        indexes = [int(i) for i in tags.get(TAG_DIRINDEXES, [])]
        if len(indexes) != len(bases) or any(not 0 <= i < len(dirs) for i in indexes):
            raise RpmHeaderError(f"{name}: {len(bases)} file names, {len(indexes)} directory indexes")
        return name, [dirs[i] + base for i, base in zip(indexes, bases, strict=True)]
    return name, [str(p) for p in tags.get(TAG_OLDFILENAMES, [])]


def _sqlite_owners(files: Mapping[str, bytes], what: str) -> dict[str, str]:
    with tempfile.TemporaryDirectory(prefix="rpmdb-") as scratch:
        for name, data in files.items():
            with open(os.path.join(scratch, name), "wb") as out:
                out.write(data)
        connection = sqlite3.connect(os.path.join(scratch, "rpmdb.sqlite"))
        try:
            rows = connection.execute("SELECT hnum, blob FROM Packages ORDER BY hnum").fetchall()
        finally:
            connection.close()
    owners: dict[str, str] = {}
    for hnum, blob in rows:
        if not isinstance(blob, bytes):
            raise RpmHeaderError(f"{what}: package {hnum}: the header is not a blob")
        try:
            name, paths = header_files(blob)
        except RpmHeaderError as error:
            raise RpmHeaderError(f"{what}: package {hnum}: {error}") from error
        for path in paths:
            clean = clean_listed(path)
            if clean:
                owners.setdefault(clean, name)
    return owners


def _content(fs: FileSystem, path: str) -> bytes | None:
    node = fs.lookup(path)
    return node.content.read_bytes() if node is not None and node.content is not None else None


def read_rpm(fs: FileSystem) -> Iterator[Database]:
    """Every rpm database of the image (one per real directory), read or marked unreadable with the reason."""
    seen: set[str] = set()
    for location in RPM_DIRECTORIES:
        root = fs.resolve(location)
        if root is None or root in seen or not fs.is_directory(root):
            continue
        seen.add(root)
        sqlite_db = _content(fs, f"{root}/rpmdb.sqlite")
        if sqlite_db is not None:
            what = f"/{root}/rpmdb.sqlite"
            files = {"rpmdb.sqlite": sqlite_db}
            wal = _content(fs, f"{root}/rpmdb.sqlite-wal")
            if wal:
                files["rpmdb.sqlite-wal"] = wal
            try:
                yield Database("rpm", f"{root}/rpmdb.sqlite", _sqlite_owners(files, what))
            except (sqlite3.Error, RpmHeaderError) as error:
                reason = f"{what} could not be read: {error}"
                yield Database("rpm", f"{root}/rpmdb.sqlite", {}, reason, UNREAD_PREFIXES)
            continue
        for name, kind in (("Packages", "BerkeleyDB"), ("Packages.db", "ndb")):
            if _content(fs, f"{root}/{name}") is not None:
                reason = f"/{root}/{name} is a {kind} rpm database, which is not read"
                yield Database("rpm", f"{root}/{name}", {}, reason, UNREAD_PREFIXES)
                break
