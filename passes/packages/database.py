"""What one package manager's database says: the paths it lists, each with its package, or why it was not read."""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["Database", "clean_listed"]


@dataclass(frozen=True)
class Database:
    """The paths one package manager lists (root-relative, as listed) -> the package that lists each.

    ``unreadable`` says why a database that is there could not be read; then ``prefixes`` are the paths
    taken as owned in its place (everything under them), so that nothing it may list is changed.
    """

    manager: str  # "dpkg", "rpm", "apk"
    location: str  # the database's path in the image
    owners: Mapping[str, str] = field(default_factory=dict)
    unreadable: str = ""
    prefixes: tuple[str, ...] = ()

    @property
    def packages(self) -> int:
        return len(set(self.owners.values()))


def clean_listed(path: str) -> str:
    """A path as a database lists it (``/usr/bin/x``, ``./usr/bin/x``, ``usr/bin/x``) -> ``usr/bin/x``;
    "" for the root. ``..`` stops at the root, as it does in the kernel."""
    path = path.strip("\n\r")
    if not path or "\0" in path:
        return ""
    return posixpath.normpath("/" + path).lstrip("/")
