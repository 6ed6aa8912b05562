"""apk's database (Alpine, Wolfi, Chainguard): ``lib/apk/db/installed``.

A text file of records separated by blank lines, one ``K:value`` line per field (apk-tools' "installed
database" format): ``P:`` starts a package, ``F:`` names a directory (relative to the root), and each
``R:`` after it a file in that directory (``Z:`` its checksum, which ``apk audit`` compares).
"""

from __future__ import annotations

from collections.abc import Iterator

from optimizer.filesystem import FileSystem

from .database import Database, clean_listed

__all__ = ["APK_INSTALLED", "parse_installed", "read_apk"]

APK_INSTALLED = "lib/apk/db/installed"


def parse_installed(data: bytes) -> Iterator[tuple[str, str]]:
    """(path, package) for every directory and file the database lists."""
    package = directory = ""
    for line in data.decode("utf-8", "surrogateescape").splitlines():
        if not line.strip():
            package = directory = ""
            continue
        key, _, value = line.partition(":")
        if key == "P":
            package, directory = value, ""
        elif key == "F" and package:
            directory = clean_listed(value)
            if directory:
                yield directory, package
        elif key == "R" and package and value:
            path = clean_listed(f"{directory}/{value}" if directory else value)
            if path:
                yield path, package


def read_apk(fs: FileSystem) -> Database | None:
    node = fs.lookup(APK_INSTALLED)
    if node is None or node.content is None:
        return None
    owners: dict[str, str] = {}
    for path, package in parse_installed(node.content.read_bytes()):
        owners.setdefault(path, package)
    return Database("apk", fs.resolve(APK_INSTALLED) or APK_INSTALLED, owners)
