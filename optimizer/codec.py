"""Compressed layer streams, whose bytes never depend on the number of workers.

gzip: a fixed header (no name, mtime 0, OS 255) at a fixed level, the stream cut into fixed-size blocks deflated
on every core (``deflate_block``, pigz-style); zstd: a fixed level without a content-size field, in libzstd's
multi-threaded mode; or none. What byte identity depends on (zlib and zstd versions, the block size) is in
``compressor_versions()``, which every report carries.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO

import zstandard

from .mediatypes import Compression

__all__ = [
    "DEFAULT_GZIP_LEVEL",
    "DEFAULT_ZSTD_LEVEL",
    "GZIP_BLOCK",
    "CompressionSpec",
    "Compressor",
    "compressor_versions",
    "deflate_block",
]

DEFAULT_GZIP_LEVEL = 6
DEFAULT_ZSTD_LEVEL = 3


def compressor_versions() -> dict[str, str]:
    from .errors import RequiredToolNotFound
    from .tar_reader import library

    try:
        libarchive = library().version()
    except RequiredToolNotFound:
        libarchive = "missing"  # only runs that read a layer need it; they fail with exit 7
    return {
        "zlib": zlib.ZLIB_RUNTIME_VERSION,
        "zstd": ".".join(str(x) for x in zstandard.ZSTD_VERSION),
        "python-zstandard": zstandard.__version__,
        "libarchive": libarchive,
        "gzip-mode": (
            f"{GZIP_BLOCK}-byte deflate blocks, each primed with the previous {_DEFLATE_WINDOW} bytes and "
            "sync-flushed, memLevel 9, CRC-32 over the whole stream: independent of the worker count"
        ),
        "zstd-mode": (
            "libzstd multi-threaded mode (nbWorkers >= 1, default job size), checksum on, no content size: "
            "independent of the worker count"
        ),
    }


@dataclass(frozen=True)
class CompressionSpec:
    codec: Compression = Compression.GZIP
    level: int | None = None

    @property
    def effective_level(self) -> int:
        if self.level is not None:
            return self.level
        return DEFAULT_ZSTD_LEVEL if self.codec is Compression.ZSTD else DEFAULT_GZIP_LEVEL

    def __str__(self) -> str:
        return (
            self.codec.value
            if self.codec is Compression.NONE
            else f"{self.codec.value}:{self.effective_level}"
        )

    @classmethod
    def parse(cls, text: str) -> CompressionSpec:
        from .errors import UsageError

        name, _, level = text.partition(":")
        try:
            codec = Compression(name)
        except ValueError as error:
            raise UsageError(
                f"unknown compression {name!r}: use gzip[:LEVEL], zstd[:LEVEL] or none"
            ) from error
        if not level:
            return cls(codec)
        if codec is Compression.NONE:
            raise UsageError("compression 'none' takes no level")
        try:
            number = int(level)
        except ValueError as error:
            raise UsageError(f"compression level must be a number, not {level!r}") from error
        limits = (1, 9) if codec is Compression.GZIP else (1, 22)
        if not limits[0] <= number <= limits[1]:
            raise UsageError(f"{codec.value} level must be between {limits[0]} and {limits[1]}")
        return cls(codec, number)


GZIP_BLOCK = 256 * 1024  # raw bytes per independently deflated block (part of what byte identity depends on)
_DEFLATE_WINDOW = 32 * 1024
_MEM_LEVEL = 9


def deflate_block(block: bytes, dictionary: bytes, level: int, last: bool) -> bytes:
    """One block of a gzip stream: raw deflate primed with the 32 KiB before it, ending byte-aligned.

    Blocks that are not the last end with a sync flush (no BFINAL bit), so the concatenation of every block's
    output, in order, is one valid deflate stream; matches may reach into the previous block through the
    dictionary, as pigz does. The result depends on the block, its dictionary and the level only, never on
    which thread ran it or how many ran: that is what makes parallel gzip byte-identical to serial gzip.
    """
    if dictionary:
        compressor = zlib.compressobj(
            level, zlib.DEFLATED, -zlib.MAX_WBITS, _MEM_LEVEL, zlib.Z_DEFAULT_STRATEGY, dictionary
        )
    else:
        compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, _MEM_LEVEL)
    return compressor.compress(block) + compressor.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


class Compressor:
    """Streams bytes into a compressed file, hashing both sides, compressing on ``workers`` threads.

    gzip: the raw stream is cut into ``GZIP_BLOCK``-byte blocks deflated in a thread pool (zlib releases the
    GIL) and written in order; the CRC-32 and the digests are computed serially over the stream meanwhile.
    zstd: libzstd's own multi-threaded mode, always with at least one worker thread, whose output does not
    depend on the number of workers. Either way the bytes are the same for 1 or N workers.
    """

    def __init__(self, out: BinaryIO, spec: CompressionSpec, workers: int = 1) -> None:
        self._out = out
        self.codec = spec.codec
        self.diff_hash = hashlib.sha256()
        self.blob_hash = hashlib.sha256()
        self.blob_size = 0
        self.raw_size = 0
        self._crc = 0
        self._level = spec.effective_level
        self._gzip = spec.codec is Compression.GZIP
        self._pending = bytearray()
        self._dictionary = b""
        self._executor: ThreadPoolExecutor | None = None
        self._inflight: deque[Future[bytes]] = deque()
        self._limit = 2 * max(1, workers) + 1
        self._zstd: Any = None
        if self._gzip:
            if workers > 1:
                self._executor = ThreadPoolExecutor(workers, thread_name_prefix="deflate")
            # Fixed header: no FNAME, MTIME 0, XFL 0, OS 255 (unknown), so the host does not leak in.
            self._emit(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")
        elif spec.codec is Compression.ZSTD:
            params = zstandard.ZstdCompressionParameters.from_level(
                self._level, write_content_size=False, write_checksum=True, threads=max(1, workers)
            )
            self._zstd = zstandard.ZstdCompressor(compression_params=params).compressobj()

    def _emit(self, data: bytes) -> None:
        if data:
            self.blob_hash.update(data)
            self.blob_size += len(data)
            self._out.write(data)

    def _submit(self, block: bytes, last: bool) -> None:
        dictionary = self._dictionary
        tail = block if len(block) >= _DEFLATE_WINDOW else dictionary + block
        self._dictionary = tail[-_DEFLATE_WINDOW:]
        if self._executor is None:
            self._emit(deflate_block(block, dictionary, self._level, last))
            return
        self._inflight.append(self._executor.submit(deflate_block, block, dictionary, self._level, last))
        while self._inflight and (len(self._inflight) >= self._limit or self._inflight[0].done()):
            self._emit(self._inflight.popleft().result())

    def write(self, data: bytes | memoryview) -> int:
        self.diff_hash.update(data)
        self.raw_size += len(data)
        if self._gzip:
            self._crc = zlib.crc32(data, self._crc)
            self._pending += data
            while len(self._pending) >= GZIP_BLOCK:
                block = bytes(self._pending[:GZIP_BLOCK])
                del self._pending[:GZIP_BLOCK]
                self._submit(block, last=False)
        elif self._zstd is not None:
            self._emit(self._zstd.compress(data))
        else:
            self._emit(bytes(data))
        return len(data)

    def tell(self) -> int:
        """Bytes of tar written so far (tarfile asks, to keep its offsets)."""
        return self.raw_size

    def finish(self) -> None:
        if self._gzip:
            self._submit(bytes(self._pending), last=True)
            self._pending.clear()
            while self._inflight:
                self._emit(self._inflight.popleft().result())
            self._emit(struct.pack("<II", self._crc & 0xFFFFFFFF, self.raw_size & 0xFFFFFFFF))
        elif self._zstd is not None:
            self._emit(self._zstd.flush())
        self.close()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
