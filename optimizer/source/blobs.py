"""Blob stores: open any blob of an input by descriptor, verifying its digest and size as it is read."""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from typing import BinaryIO, Protocol

from ..digest import VerifyingReader, sha256_digest, short
from ..errors import FormatError, MissingBlobError
from ..model import Descriptor, Window

__all__ = ["BlobStore", "Blobs", "Origin"]

MAX_DOCUMENT = 64 << 20  # the largest JSON document (manifest, config) read whole into memory


class Origin(Protocol):
    """Where a blob can be fetched again without its bytes passing through us (a registry repository)."""

    @property
    def registry(self) -> str: ...

    @property
    def repository(self) -> str: ...


class Blobs(Protocol):
    """What the rest of the code needs of an input's blobs. ``role`` names the blob in messages and tells a
    registry which endpoint serves it ("manifest" and "index" come from ``/manifests/``)."""

    name: str

    def has(self, digest: str) -> bool: ...

    def stored_size(self, digest: str) -> int | None: ...

    def open(self, descriptor: Descriptor, role: str = "blob") -> BinaryIO: ...

    def read(self, descriptor: Descriptor, role: str = "blob", limit: int = MAX_DOCUMENT) -> bytes: ...

    def origin(self, digest: str) -> Origin | None: ...

    def prefetch(self, descriptors: Sequence[Descriptor]) -> None: ...


class BlobStore:
    """Opens blobs by digest from files on disk (whole files or slices of a tar) and from memory."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._slices: dict[str, tuple[str, int, int]] = {}
        self._memory: dict[str, bytes] = {}

    def add_slice(self, digest: str, path: str, offset: int, size: int) -> None:
        self._slices.setdefault(digest, (path, offset, size))

    def add_bytes(self, data: bytes) -> str:
        digest = sha256_digest(data)
        self._memory[digest] = data
        return digest

    def has(self, digest: str) -> bool:
        return digest in self._slices or digest in self._memory

    def stored_size(self, digest: str) -> int | None:
        if digest in self._memory:
            return len(self._memory[digest])
        if digest in self._slices:
            return self._slices[digest][2]
        return None

    def origin(self, digest: str) -> Origin | None:
        return None

    def prefetch(self, descriptors: Sequence[Descriptor]) -> None:
        pass  # local blobs are read where they are

    def open(self, descriptor: Descriptor, role: str = "blob") -> BinaryIO:
        """A reader over the blob that raises ``DigestMismatchError`` at the end if its digest or size is wrong."""
        digest = descriptor.digest
        what = f"{self.name}: {role} {short(digest)}"
        raw: io.RawIOBase | io.BufferedReader
        if digest in self._memory:
            raw = io.BufferedReader(io.BytesIO(self._memory[digest]))  # type: ignore[arg-type,unused-ignore]
        elif digest in self._slices:
            path, offset, size = self._slices[digest]
            handle = open(path, "rb")  # noqa: SIM115 - owned by the returned reader
            handle.seek(offset)
            raw = Window(handle, size)
        else:
            raise MissingBlobError(f"{what} is missing from the input ({descriptor.media_type})", digest)
        return io.BufferedReader(VerifyingReader(raw, digest, descriptor.size, what), 1 << 20)

    def read(self, descriptor: Descriptor, role: str = "blob", limit: int = MAX_DOCUMENT) -> bytes:
        """The whole blob, verified. Only for small documents (manifests, configs)."""
        return read_verified(self, descriptor, role, limit)

    def digests(self) -> Iterator[str]:
        yield from self._slices
        yield from self._memory


def read_verified(store: Blobs, descriptor: Descriptor, role: str, limit: int) -> bytes:
    """A small blob read whole through ``store.open`` (so its digest and size are checked)."""
    if descriptor.size > limit:
        raise FormatError(
            f"{store.name}: {role} {short(descriptor.digest)} is {descriptor.size} bytes, "
            f"more than the {limit} allowed for a JSON document"
        )
    with store.open(descriptor, role) as reader:
        data = reader.read()
        reader.read()  # reach EOF so the digest is checked
    assert isinstance(data, bytes)
    return data
