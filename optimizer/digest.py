"""Digests and readers that verify them as the bytes go by."""

from __future__ import annotations

import hashlib
import io
import re
from typing import Any

from .errors import DigestMismatchError, FormatError

__all__ = ["VerifyingReader", "parse_digest", "sha256_digest"]

_DIGEST = re.compile(r"^(sha256|sha512):([a-f0-9]+)$")
_LENGTH = {"sha256": 64, "sha512": 128}


def parse_digest(digest: str) -> tuple[str, str]:
    """Split ``sha256:<hex>`` into algorithm and hex, refusing anything we cannot verify."""
    match = _DIGEST.match(digest)
    if not match or len(match.group(2)) != _LENGTH[match.group(1)]:
        raise FormatError(f"unsupported or malformed digest {digest!r}")
    return match.group(1), match.group(2)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def short(digest: str) -> str:
    """``sha256:ab12cd34ef56`` for messages."""
    return digest[: digest.find(":") + 13] if ":" in digest else digest[:12]


class VerifyingReader(io.RawIOBase):
    """Reads exactly ``size`` bytes from ``raw`` and checks the digest at the end.

    A blob longer or shorter than its descriptor, or with other bytes, raises ``DigestMismatchError`` that
    names ``what`` (the blob's role and where it was read from).
    """

    def __init__(
        self, raw: io.RawIOBase | io.BufferedReader, digest: str, size: int | None, what: str
    ) -> None:
        algorithm, self._hex = parse_digest(digest)
        self._raw = raw
        self._hash = hashlib.new(algorithm)
        self._digest = digest
        self._size = size
        self._seen = 0
        self._what = what
        self._checked = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = len(view)
        if self._size is not None:
            # Read one byte past the declared size, so that a longer blob is caught.
            want = min(want, self._size - self._seen + 1)
        if want <= 0:
            self._check()
            return 0
        got = int(self._raw.readinto(view[:want]) or 0)
        if not got:
            self._check()
            return 0
        self._hash.update(view[:got])
        self._seen += got
        if self._size is not None and self._seen > self._size:
            raise DigestMismatchError(
                f"{self._what}: blob {self._digest} is larger than its declared size {self._size}",
                self._digest,
            )
        return got

    def _check(self) -> None:
        if self._checked:
            return
        self._checked = True
        if self._size is not None and self._seen != self._size:
            raise DigestMismatchError(
                f"{self._what}: blob {self._digest} has {self._seen} bytes, its descriptor says {self._size}",
                self._digest,
            )
        if self._hash.hexdigest() != self._hex:
            raise DigestMismatchError(
                f"{self._what}: blob content does not match its digest {self._digest} "
                f"(actual {self._hash.name}:{self._hash.hexdigest()})",
                self._digest,
            )

    def close(self) -> None:
        self._raw.close()
        super().close()
