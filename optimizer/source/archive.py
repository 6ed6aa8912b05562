"""Tar inputs: an OCI archive (a tar of an OCI layout) or a ``docker save`` tarball, either one possibly
gzip-, zstd-, bzip2- or xz-compressed as a whole. Member names may start with ``./``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import BinaryIO

from ..documents import parse_object
from ..errors import FormatError, LimitError, OutputError, out_of_space
from ..inflate import INFLATE_ERRORS, gunzip
from ..limits import RATIO_FLOOR, Limits
from .base import Source, check_index
from .blobs import BlobStore
from .docker import open_docker_archive, read_repo_tags
from .members import list_tar, read_member, resolve_member

__all__ = ["is_compressed", "open_archive"]

_MAGIC = (b"\x1f\x8b", b"\x28\xb5\x2f\xfd", b"BZh", b"\xfd7zXZ\x00")


def is_compressed(head: bytes) -> bool:
    return any(head.startswith(magic) for magic in _MAGIC)


def open_archive(path: Path, workdir: str, label: str, limits: Limits | None = None) -> Source:
    """Open a tar input, decompressing a compressed one into ``workdir`` first (at most
    ``--max-expansion-ratio`` times its size, and never less than 64M)."""
    limits = limits or Limits()
    with open(path, "rb") as handle:
        head = handle.read(6)
    if is_compressed(head):
        plain = os.path.join(workdir, "input.tar")
        _decompress_file(path, plain, label, limits)
        return _open_tar(plain, label, limits)
    return _open_tar(str(path), label, limits)


def _decompress_file(src: Path, dst: str, label: str, limits: Limits) -> None:
    import bz2
    import lzma

    import zstandard

    corrupt: tuple[type[Exception], ...] = (EOFError, lzma.LZMAError, zstandard.ZstdError, *INFLATE_ERRORS)
    compressed = os.path.getsize(src)
    cap = max(RATIO_FLOOR, limits.max_expansion_ratio * compressed)
    reason = f"--max-expansion-ratio {limits.max_expansion_ratio} of its {compressed} bytes"
    with open(src, "rb") as raw, open(dst, "wb") as file:
        out = _Capped(file, cap, f"{label}: the decompressed archive exceeds {cap} bytes ({reason})")
        head = raw.read(6)
        raw.seek(0)
        try:
            if head[:2] == b"\x1f\x8b":
                _gunzip_stream(raw, out)
            elif head[:4] == b"\x28\xb5\x2f\xfd":
                zstandard.ZstdDecompressor().copy_stream(raw, out)  # type: ignore[arg-type]
            elif head[:3] == b"BZh":
                with bz2.open(raw) as reader:
                    shutil.copyfileobj(reader, out, 1 << 20)
            else:
                with lzma.open(raw) as reader:
                    shutil.copyfileobj(reader, out, 1 << 20)
        except OSError as error:
            if out_of_space(error):
                raise OutputError(f"{label}: decompressing into the work directory: {error}") from error
            raise FormatError(f"{label}: the compressed archive is corrupt: {error}") from error
        except corrupt as error:
            raise FormatError(f"{label}: the compressed archive is corrupt: {error}") from error


class _Capped:
    """A file that refuses to grow past ``cap`` bytes (``LimitError`` with ``message``)."""

    def __init__(self, file: BinaryIO, cap: int, message: str) -> None:
        self._file = file
        self._left = cap
        self._message = message

    def write(self, data: bytes) -> int:
        self._left -= len(data)
        if self._left < 0:
            raise LimitError(self._message + "; raise the limit if the input is trusted")
        return self._file.write(data)


def _gunzip_stream(raw: BinaryIO, out: _Capped) -> None:
    """Every gzip member in turn, in bounded pieces (a bomb never sits whole in memory)."""
    decompressor = gunzip()
    pending = False  # a member has started and not ended
    while chunk := raw.read(1 << 20):
        while chunk:
            if decompressor.eof:  # concatenated gzip members
                decompressor = gunzip()
            pending = True
            out.write(decompressor.decompress(chunk, 1 << 22))
            while decompressor.unconsumed_tail:
                out.write(decompressor.decompress(decompressor.unconsumed_tail, 1 << 22))
            chunk = decompressor.unused_data if decompressor.eof else b""
            pending = not decompressor.eof
    if pending:
        raise EOFError("the gzip stream ends early (truncated)")


def _open_tar(path: str, label: str, limits: Limits) -> Source:
    members = list_tar(path, label)
    blobs = BlobStore(label)
    for name, member in members.items():
        parts = name.split("/")
        if len(parts) == 3 and parts[0] == "blobs" and member.kind == "file":
            blobs.add_slice(f"{parts[1]}:{parts[2]}", path, member.offset, member.size)
    index = None
    if "index.json" in members:
        index_bytes = read_member(path, resolve_member(members, "index.json", label))
        index = parse_object(index_bytes, f"{label}: index.json")
        if index.get("manifests"):
            check_index(index, f"{label}: index.json")
            source = Source(label, "oci-archive", blobs, index, index_bytes)
            if "manifest.json" in members:
                read_repo_tags(path, members, label, source)
            return source
    if "manifest.json" in members:
        return open_docker_archive(path, members, blobs, label, limits)
    if index is not None:
        raise FormatError(f"{label}: index.json lists no manifests and there is no manifest.json")
    raise FormatError(
        f"{label}: neither index.json (OCI archive) nor manifest.json (docker save tarball) in the archive"
    )
