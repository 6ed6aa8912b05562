"""Spool files: append-only packs of file contents on local disk, addressed by ``Content`` slices."""

from __future__ import annotations

import hashlib
import os
import threading

from .model import HEAD_KEPT, Content

__all__ = ["Spool"]


class Spool:
    """Stores new file contents (a pass's output) in one pack file; identical bytes are stored once."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._known: dict[str, Content] = {}
        with open(path, "ab"):
            pass

    def store(self, data: bytes) -> Content:
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            known = self._known.get(digest)
            if known is not None:
                return known
            with open(self.path, "ab") as pack:
                offset = pack.tell()
                pack.write(data)
            content = Content(self.path, offset, len(data), digest, data[:HEAD_KEPT])
            self._known[digest] = content
            return content

    def store_file(self, source: str) -> Content:
        """Copy a file's bytes into the pack (streamed)."""
        digest = hashlib.sha256()
        with self._lock, open(self.path, "ab") as pack, open(source, "rb") as reader:
            offset = pack.tell()
            size = 0
            while chunk := reader.read(1 << 20):
                digest.update(chunk)
                pack.write(chunk)
                size += len(chunk)
        return Content(self.path, offset, size, digest.hexdigest())

    @property
    def size(self) -> int:
        return os.path.getsize(self.path)
