"""The small read-only types the rest of the code passes around.

``Descriptor`` names a blob. ``Entry`` is one tar member with its metadata. ``Content`` is a re-openable
handle on a regular file's bytes, spooled to disk while a layer is indexed, so that nothing is held whole in
memory and the same bytes can be read again by a pass, a worker process or the layer writer.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, BinaryIO

__all__ = ["HEAD_KEPT", "Content", "Descriptor", "Entry", "EntryKind", "Platform", "Window"]

HEAD_KEPT = 32  # bytes of each file kept in its Content: every magic number the passes sniff


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Platform | None:
        if not data:
            return None
        return cls(str(data.get("os", "")), str(data.get("architecture", "")), str(data.get("variant", "")))

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def matches(self, wanted: str) -> bool:
        """``linux/amd64`` matches any variant of it; ``linux/arm64/v8`` only that variant."""
        parts = wanted.strip("/").split("/")
        if len(parts) not in (2, 3):
            return False
        mine = (self.os, self.architecture, self.variant)
        return all(want == have for want, have in zip(parts, mine, strict=False))


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor. ``raw`` keeps every field as read, so descriptors we do not change are
    written back exactly (urls, artifactType, data, unknown fields)."""

    media_type: str
    digest: str
    size: int
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Descriptor:
        return cls(str(data.get("mediaType", "")), str(data["digest"]), int(data["size"]), dict(data))

    @property
    def annotations(self) -> Mapping[str, str]:
        value = self.raw.get("annotations")
        return value if isinstance(value, dict) else {}

    @property
    def platform(self) -> Platform | None:
        value = self.raw.get("platform")
        return Platform.from_json(value) if isinstance(value, dict) else None

    def to_json(self) -> dict[str, Any]:
        out = dict(self.raw)
        out["mediaType"] = self.media_type
        out["digest"] = self.digest
        out["size"] = self.size
        return out

    def replace(self, **changes: Any) -> Descriptor:
        """A copy with mediaType/digest/size/annotations changed and every other field kept."""
        raw = dict(self.raw)
        media_type = changes.pop("media_type", self.media_type)
        digest = changes.pop("digest", self.digest)
        size = changes.pop("size", self.size)
        if "annotations" in changes:
            annotations = changes.pop("annotations")
            if annotations:
                raw["annotations"] = dict(annotations)
            else:
                raw.pop("annotations", None)
        if changes:
            raise TypeError(f"unknown descriptor fields: {sorted(changes)}")
        return Descriptor(media_type, digest, size, raw)


class EntryKind(str, Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    CHAR = "char"
    BLOCK = "block"
    FIFO = "fifo"


@dataclass(frozen=True, slots=True)
class Content:
    """A regular file's bytes: a slice of a spool file on local disk. Cheap to pickle into a worker."""

    path: str
    offset: int
    size: int
    sha256: str
    # the first bytes, kept from the reading (at most HEAD_KEPT): most passes sniff a magic number, and
    # opening the spool for each of 15,000 files cost a dry run of the bench image 0.26 s
    head: bytes = field(default=b"", compare=False, repr=False)

    def open(self) -> BinaryIO:
        handle = open(self.path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
        handle.seek(self.offset)
        return io.BufferedReader(Window(handle, self.size), 1 << 16)

    def read_bytes(self) -> bytes:
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read(self.size)
        if len(data) != self.size:
            raise OSError(f"spool file {self.path} is shorter than expected")
        return data

    def read_head(self, count: int) -> bytes:
        if count <= len(self.head) or len(self.head) == self.size:
            return self.head[:count]
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            return handle.read(min(count, self.size))

    def read_tail(self, count: int) -> bytes:
        count = min(count, self.size)
        with open(self.path, "rb") as handle:
            handle.seek(self.offset + self.size - count)
            return handle.read(count)


class Window(io.RawIOBase):
    """A read-only window of ``size`` bytes on an open file, from its current position (a spool slice, a tar
    member's data)."""

    def __init__(self, handle: io.BufferedReader, size: int) -> None:
        self._handle = handle
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._left <= 0:
            return 0
        view = memoryview(buffer)
        want = min(len(view), self._left)
        got = int(self._handle.readinto(view[:want]))
        if not got:
            return 0
        self._left -= got
        return got

    def close(self) -> None:
        self._handle.close()
        super().close()


@dataclass(frozen=True, slots=True)
class Entry:
    """One tar member, as read from a layer (path normalised: no leading ``/`` or ``./``, no ``..``).

    ``link`` is the symlink target (verbatim) or the hardlink target (normalised like ``path``).
    ``mtime`` is in whole seconds and ``mtime_ns`` keeps the sub-second part a PAX header gave, so the value
    written back is exactly the value read.
    """

    path: str
    kind: EntryKind
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    uname: str = ""
    gname: str = ""
    mtime: int = 0
    mtime_ns: int = 0
    size: int = 0
    link: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: Mapping[str, bytes] = field(default_factory=dict, compare=True, hash=False)

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def parent(self) -> str:
        return self.path.rsplit("/", 1)[0] if "/" in self.path else ""

    def with_size(self, size: int) -> Entry:
        return _replace(self, size=size)

    def with_path(self, path: str) -> Entry:
        return _replace(self, path=path)


def _replace(entry: Entry, **changes: Any) -> Entry:
    from dataclasses import replace

    return replace(entry, **changes)
