"""Blob bytes in motion: downloads and uploads hashed as they go, never whole in memory."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

import requests

from ..errors import RegistryError

__all__ = ["CHUNK", "StreamingFile", "TransientError", "file_digest", "receive", "write_atomically"]

CHUNK = 1 << 20


class TransientError(Exception):
    """A failure worth trying again (network, 5xx, 429) inside one blob transfer."""


def receive(response: requests.Response, out: IO[bytes], size: int, where: str) -> tuple[int, str]:
    """Copy a blob download to ``out``: (bytes seen, sha256 digest); never more than ``size`` bytes."""
    hasher = hashlib.sha256()
    seen = 0
    try:
        for piece in response.iter_content(chunk_size=CHUNK):
            seen += len(piece)
            if seen > size:
                raise RegistryError(f"{where}: the registry sent more than the {size} bytes declared")
            hasher.update(piece)
            out.write(piece)
    except requests.RequestException as error:
        raise TransientError(f"download interrupted at byte {seen}: {error}") from error
    return seen, "sha256:" + hasher.hexdigest()


@contextmanager
def write_atomically(path: str, prefix: str) -> Iterator[IO[bytes]]:
    """A file to write that appears at ``path`` (mode 0644) only once the ``with`` body ends without an error;
    until then it is a temporary file named ``prefix...`` beside it, removed if the body fails."""
    handle, temporary = tempfile.mkstemp(prefix=prefix, dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(handle, "wb") as out:
            yield out
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


class StreamingFile:
    """A file object for requests' ``data=``: read in pieces (never whole), known length.

    It hashes what it sends, so a blob is verified by its upload itself (no second read). It can rewind only
    before anything was read, or when the file under it can seek.
    """

    def __init__(self, handle: IO[bytes], size: int) -> None:
        self._handle = handle
        self.len = size  # requests uses it for Content-Length
        self._hash = hashlib.sha256()
        self._sent = 0

    def read(self, amount: int = -1) -> bytes:
        piece = self._handle.read(CHUNK if amount is None or amount < 0 else amount)
        self._hash.update(piece)
        self._sent += len(piece)
        return piece

    def tell(self) -> int:
        return self._sent

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence != 0 or offset != 0:
            raise OSError("only a rewind to the start is supported")
        if self._sent:
            self._handle.seek(-self._sent, 1)
        self._hash = hashlib.sha256()
        self._sent = 0
        return 0

    def digest(self) -> tuple[str, int]:
        """(sha256 digest, bytes) of what was read since the last rewind."""
        return "sha256:" + self._hash.hexdigest(), self._sent

    def __iter__(self) -> Iterator[bytes]:
        while piece := self.read(CHUNK):
            yield piece


def file_digest(path: str) -> tuple[str, int]:
    hasher = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while piece := handle.read(CHUNK):
            hasher.update(piece)
            size += len(piece)
    return "sha256:" + hasher.hexdigest(), size
