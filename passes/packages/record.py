"""Python's ``*.dist-info/RECORD``: which files an installed distribution lists, and the lines that keep it true.

A RECORD is CSV (PEP 376, the binary distribution format): ``path,sha256=<urlsafe base64, no padding>,size``
per file, paths relative to the directory holding the ``.dist-info`` (``site-packages``; ``../../../bin/x``
for scripts), the RECORD's own line without hash or size. pip, ``importlib.metadata`` and scanners read it;
``pip uninstall`` removes what it lists. A changed file gets its line's hash (same algorithm) and size
rewritten; a deleted file loses its line. Every other line keeps its bytes, line ending included.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import posixpath
from collections.abc import Callable, Iterator, Mapping

from optimizer.model import Content

__all__ = ["RECORD_SUFFIX", "record_hash", "record_paths", "rewrite_record", "site_directory"]

RECORD_SUFFIX = ".dist-info/RECORD"


def site_directory(record: str) -> str:
    """``.../site-packages/numpy-2.2.6.dist-info/RECORD`` -> ``.../site-packages``."""
    return posixpath.dirname(posixpath.dirname(record))


def _rows(data: bytes) -> Iterator[tuple[str, list[str]]]:
    """(the line with its ending, its CSV fields) for every line."""
    text = data.decode("utf-8", "surrogateescape")
    for line in text.splitlines(keepends=True):
        fields = next(csv.reader([line.rstrip("\r\n")]), [])
        yield line, fields


def record_paths(data: bytes, record: str) -> Iterator[str]:
    """The root-relative path of every file ``record`` (its own path in the image) lists, itself excluded."""
    site = site_directory(record)
    for _, fields in _rows(data):
        if not fields or not fields[0]:
            continue
        path = posixpath.normpath("/" + posixpath.join(site, fields[0])).lstrip("/")
        if path and path != record:
            yield path


def record_hash(algorithm: str, content: Content) -> str:
    """``algorithm=<urlsafe base64 of the digest, no padding>`` of ``content``."""
    if algorithm == "sha256":
        digest = bytes.fromhex(content.sha256)
    else:
        digest = hashlib.new(algorithm, content.read_bytes()).digest()
    return f"{algorithm}={base64.urlsafe_b64encode(digest).rstrip(b'=').decode('ascii')}"


def rewrite_record(
    data: bytes,
    record: str,
    changed: Mapping[str, Content | None],
    locate: Callable[[str], str] = lambda path: path,
) -> bytes:
    """``data`` (the RECORD at ``record``) with the lines of ``changed`` files made true again: new hash and
    size for new content, no line for a deleted file (None). ``locate`` maps a listed path (root-relative)
    to the path the image really keeps it at (its directories' symlinks followed)."""
    site = site_directory(record)
    out: list[str] = []
    for line, fields in _rows(data):
        if not fields or not fields[0]:
            out.append(line)
            continue
        path = locate(posixpath.normpath("/" + posixpath.join(site, fields[0])).lstrip("/"))
        if path not in changed:
            out.append(line)
            continue
        content = changed[path]
        if content is None:
            continue
        algorithm = fields[1].partition("=")[0] if len(fields) > 1 and "=" in fields[1] else "sha256"
        if algorithm not in hashlib.algorithms_available:
            algorithm = "sha256"
        ending = line[len(line.rstrip("\r\n")) :]
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator=ending).writerow(
            [fields[0], record_hash(algorithm, content), str(content.size), *fields[3:]]
        )
        out.append(buffer.getvalue())
    return "".join(out).encode("utf-8", "surrogateescape")
