"""``Serving``: one place where a server sends precompressed files, as a rule found it; ``DocumentRoot``: one
directory a server sends files from as they are."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

__all__ = ["DocumentRoot", "Serving", "image_path"]


@dataclass(frozen=True)
class Serving:
    """A server context that sends ``FILE`` + one of ``suffixes`` for ``FILE``.

    ``root`` is the directory it serves from, image-relative without the leading ``/`` ("" for ``/``), as
    configured (symlinks are resolved later); None when it cannot be told, and ``why`` then says what stood
    there. ``source`` is the file the rule read it from, for messages.
    """

    server: str
    how: str
    source: str
    suffixes: frozenset[str]
    root: str | None
    why: str = ""


@dataclass(frozen=True)
class DocumentRoot:
    """A directory whose files a server sends to clients as they are (nginx ``root``, Apache ``DocumentRoot``,
    ``express.static(dir)``...): image-relative without the leading ``/``, as configured (symlinks are resolved
    later). ``how`` is the directive or call that names it, ``source`` the file it was read from."""

    server: str
    how: str
    source: str
    root: str


def image_path(value: str, base: str = "") -> str | None:
    """A configured path as an image path ("" for ``/``): absolute, or relative to ``base`` (image-relative)
    when ``base`` is given; None for a relative path without a base, or one with a variable in it."""
    if not value or any(mark in value for mark in ("$", "{", "%{")):
        return None
    if not value.startswith("/"):
        if not base:
            return None
        value = f"/{base}/{value}"
    return posixpath.normpath(value).strip("/").removeprefix("/")
