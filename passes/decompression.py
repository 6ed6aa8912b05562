"""Streamed, bounded decompression of gzip, bzip2, xz, lzma, zstd, brotli and lz4 files.

``decompressed_chunks`` yields a file's decompressed content in chunks of at most ``CHUNK`` bytes and raises
``CorruptStream`` unless the whole file is clean: right magic, every stream complete, nothing after the last one
(but another valid stream, or xz stream padding). ``digest_decompressed`` and ``same_decompressed`` stop with
``LimitExceeded`` past a size or a ratio to the compressed size, so that bombs cost little. Nothing is held
whole but the compressed input. Needs ``zstandard``, ``brotli`` (1.2+, for bounded output) and ``lz4``.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import brotli
import lz4.frame
import zstandard

from optimizer.model import Content

__all__ = [
    "CHUNK",
    "CODECS",
    "CorruptStream",
    "Decoded",
    "LimitExceeded",
    "Limits",
    "decompressed_chunks",
    "digest_decompressed",
    "same_decompressed",
]

CHUNK = 1 << 16
# suffix -> codec; the codec checks its own magic where the format has one.
CODECS: dict[str, str] = {
    ".gz": "gzip",
    ".bz2": "bzip2",
    ".xz": "xz",
    ".lzma": "lzma",
    ".zst": "zstd",
    ".br": "brotli",
    ".lz4": "lz4",
}
_MAGICS: dict[str, tuple[bytes, ...]] = {
    "gzip": (b"\x1f\x8b",),
    "bzip2": (b"BZh",),
    "xz": (b"\xfd7zXZ\x00",),
    "lzma": (b"\x5d\x00\x00",),
    "zstd": (b"\x28\xb5\x2f\xfd",),
    "lz4": (b"\x04\x22\x4d\x18",),
    "brotli": (b"",),
}


class CorruptStream(Exception):
    """The file does not decompress cleanly."""


class LimitExceeded(Exception):
    """Decompressing would go past the size or ratio limit (a bomb, or simply larger than any twin)."""


@dataclass(frozen=True)
class Decoded:
    size: int
    sha256: str


@dataclass(frozen=True)
class Limits:
    max_output: int  # bytes of decompressed output, at most
    max_ratio: int  # decompressed bytes per compressed byte, at most


def _reader_chunks(reader: io.BufferedIOBase | lz4.frame.LZ4FrameFile) -> Iterator[bytes]:
    while chunk := reader.read(CHUNK):
        yield chunk


class _Decompressor(Protocol):
    @property
    def eof(self) -> bool: ...
    @property
    def needs_input(self) -> bool: ...
    @property
    def unused_data(self) -> bytes: ...

    def decompress(self, data: bytes, max_length: int = -1) -> bytes: ...


def _stream_chunks(make: Callable[[], _Decompressor], data: bytes, padding: bool) -> Iterator[bytes]:
    # One decompressor per concatenated stream; bytes after the last one must be another valid stream
    # (or, for xz, stream padding of zero bytes). The file readers of bz2 and lzma ignore trailing garbage.
    pending = data
    while True:
        decoder = make()
        out = decoder.decompress(pending, max_length=CHUNK)
        while True:
            if out:
                yield out
            if decoder.eof:
                break
            if decoder.needs_input:
                raise CorruptStream("truncated stream")
            out = decoder.decompress(b"", max_length=CHUNK)
        pending = decoder.unused_data
        if not pending or (padding and not pending.strip(b"\0") and len(pending) % 4 == 0):
            return


def _zstd_chunks(data: bytes) -> Iterator[bytes]:
    # Small input steps bound the output of each call; every frame must reach its end (else: truncated).
    view = memoryview(data)
    position = 0
    while position < len(view):
        decoder = zstandard.ZstdDecompressor().decompressobj(write_size=CHUNK)
        while not decoder.eof:
            if position >= len(view):
                raise CorruptStream("truncated zstd frame")
            step = bytes(view[position : position + 512])
            position += len(step)
            out = decoder.decompress(step)
            if out:
                yield out
        position -= len(decoder.unused_data)


def _brotli_chunks(data: bytes) -> Iterator[bytes]:
    decoder = brotli.Decompressor()
    view = memoryview(data)
    position = 0
    while not decoder.is_finished():
        step = b""
        if position < len(view) and decoder.can_accept_more_data():
            step = bytes(view[position : position + CHUNK])
            position += len(step)
        out = decoder.process(step, output_buffer_limit=CHUNK)
        if out:
            yield out
        elif not step:
            raise CorruptStream("truncated brotli stream")
    if position < len(view):
        raise CorruptStream("data after the end of the brotli stream")


def decompressed_chunks(codec: str, data: bytes) -> Iterator[bytes]:
    """The decompressed content of ``data`` in bounded chunks; ``CorruptStream`` when it is not clean."""
    if not any(data.startswith(magic) for magic in _MAGICS[codec]):
        raise CorruptStream(f"not a {codec} stream (magic bytes)")
    try:
        if codec == "gzip":
            yield from _reader_chunks(gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb"))
        elif codec == "bzip2":
            yield from _stream_chunks(bz2.BZ2Decompressor, data, padding=False)
        elif codec == "xz":
            yield from _stream_chunks(lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ), data, padding=True)
        elif codec == "lzma":
            yield from _stream_chunks(lambda: lzma.LZMADecompressor(lzma.FORMAT_ALONE), data, padding=False)
        elif codec == "zstd":
            yield from _zstd_chunks(data)
        elif codec == "brotli":
            yield from _brotli_chunks(data)
        elif codec == "lz4":
            yield from _reader_chunks(lz4.frame.LZ4FrameFile(io.BytesIO(data), mode="rb"))
        else:
            raise CorruptStream(f"unknown codec {codec}")
    except (
        OSError,
        EOFError,
        lzma.LZMAError,
        zstandard.ZstdError,
        brotli.error,
        RuntimeError,
        ValueError,
    ) as error:
        raise CorruptStream(f"{codec}: {error}") from error


def _bounded(codec: str, data: bytes, limits: Limits) -> Iterator[bytes]:
    bound = min(limits.max_output, limits.max_ratio * max(len(data), 1))
    total = 0
    for chunk in decompressed_chunks(codec, data):
        total += len(chunk)
        if total > bound:
            raise LimitExceeded(f"more than {bound} bytes decompressed")
        yield chunk


def digest_decompressed(data: bytes, job: tuple[str, Limits]) -> Decoded:
    """Size and SHA-256 of the decompressed content (a worker function: nothing is kept in memory)."""
    codec, limits = job[0], job[1]
    digest = hashlib.sha256()
    size = 0
    for chunk in _bounded(codec, data, limits):
        digest.update(chunk)
        size += len(chunk)
    return Decoded(size, digest.hexdigest())


def same_decompressed(codec: str, compressed: Content, twin: Content, limits: Limits) -> bool:
    """Byte-for-byte comparison of the decompressed stream with the twin's bytes, both streamed."""
    with twin.open() as reader:
        for chunk in _bounded(codec, compressed.read_bytes(), limits):
            if reader.read(len(chunk)) != chunk:
                return False
        return reader.read(1) == b""
