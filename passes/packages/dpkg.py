"""dpkg's database: which package lists which path (``var/lib/dpkg``).

``dpkg --verify`` checks the files of ``info/PACKAGE.md5sums`` (and the conffiles of ``status``); ownership as
``dpkg -S`` sees it is ``info/PACKAGE.list``. Both are read: ``.list`` for every package that has one (it
names every path, conffiles and directories included), ``.md5sums`` for the others (images whose builders
removed the lists). Distroless images keep one file per package in ``status.d/``, with ``PACKAGE.md5sums``
beside it in newer releases. ``diversions`` moves a packaged file elsewhere: the new place is owned too.
"""

from __future__ import annotations

from collections.abc import Iterator

from optimizer.filesystem import FileSystem

from .database import Database, clean_listed

__all__ = ["DPKG_DIRECTORIES", "parse_diversions", "parse_list", "parse_md5sums", "read_dpkg"]

DPKG_DIRECTORIES = ("var/lib/dpkg",)


def parse_list(data: bytes) -> Iterator[str]:
    """``info/PACKAGE.list``: one absolute path a line (``/.`` for the root)."""
    for line in data.decode("utf-8", "surrogateescape").splitlines():
        path = clean_listed(line)
        if path:
            yield path


def parse_md5sums(data: bytes) -> Iterator[str]:
    """``info/PACKAGE.md5sums``: ``MD5  relative/path`` lines (md5sum's format: two spaces, or `` *``)."""
    for line in data.decode("utf-8", "surrogateescape").splitlines():
        digest, _, rest = line.partition(" ")
        if len(digest) != 32 or not rest:
            continue
        path = clean_listed(rest[1:] if rest[:1] in (" ", "*") else rest)
        if path:
            yield path


def parse_diversions(data: bytes) -> Iterator[tuple[str, str, str]]:
    """``diversions``: triples of lines (diverted path, where it went, the diverting package or ``:``)."""
    lines = data.decode("utf-8", "surrogateescape").splitlines()
    for start in range(0, len(lines) - 2, 3):
        source, target, package = lines[start : start + 3]
        if clean_listed(source) and clean_listed(target):
            yield clean_listed(source), clean_listed(target), package


def _package(name: str, suffix: str) -> str:
    """``libc6:amd64.list`` -> ``libc6``."""
    return name[: -len(suffix)].split(":", 1)[0]


def _files(fs: FileSystem, directory: str, suffix: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for child in fs.children(directory):
        node = fs.get(child)
        if child.endswith(suffix) and node is not None and node.content is not None:
            out[child.rsplit("/", 1)[-1]] = node.content.read_bytes()
    return out


def read_dpkg(fs: FileSystem) -> Database | None:
    """The paths dpkg lists, or None when the image has no dpkg database."""
    for location in DPKG_DIRECTORIES:
        root = fs.resolve(location)
        if root is None or not fs.is_directory(root):
            continue
        owners: dict[str, str] = {}
        found = False
        for directory in (f"{root}/info", f"{root}/status.d"):
            if not fs.is_directory(directory):
                continue
            real = fs.resolve(directory) or directory
            lists = _files(fs, real, ".list")
            listed = {_package(name, ".list") for name in lists}
            found = found or bool(lists)
            for name, data in sorted(lists.items()):
                for path in parse_list(data):
                    owners.setdefault(path, _package(name, ".list"))
            for name, data in sorted(_files(fs, real, ".md5sums").items()):
                found = True
                package = _package(name, ".md5sums")
                if package in listed:
                    continue
                for path in parse_md5sums(data):
                    owners.setdefault(path, package)
        diversions = fs.lookup(f"{root}/diversions")
        if diversions is not None and diversions.content is not None:
            for source, target, package in parse_diversions(diversions.content.read_bytes()):
                owner = owners.get(source, package if package != ":" else "a local diversion")
                owners.setdefault(target, owner)
        if found or fs.lookup(f"{root}/status") is not None:
            return Database("dpkg", root, owners)
    return None
