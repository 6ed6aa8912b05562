"""Compressed samples for the tests of ``compressed-duplicates`` and ``passes.decompression`` (every
codec's compressor, realistic text several chunks long, damaged streams), and one run of the pass."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
from collections.abc import Callable
from pathlib import Path

import brotli
import lz4.frame
import zstandard

from optimizer.pipeline import PassContext
from passes.compressed_duplicates import CompressedDuplicates, CompressedDuplicatesOptions
from tests.passes import kit
from tests.passes.kit import Files

COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    ".gz": lambda d: gzip.compress(d, mtime=0),
    ".bz2": bz2.compress,
    ".xz": lambda d: lzma.compress(d, format=lzma.FORMAT_XZ),
    ".lzma": lambda d: lzma.compress(d, format=lzma.FORMAT_ALONE),
    ".zst": lambda d: zstandard.ZstdCompressor(write_checksum=True).compress(d),
    ".br": brotli.compress,
    ".lz4": lz4.frame.compress,
}


CODEC_OF = {
    ".gz": "gzip",
    ".bz2": "bzip2",
    ".xz": "xz",
    ".lzma": "lzma",
    ".zst": "zstd",
    ".br": "brotli",
    ".lz4": "lz4",
}


# Realistic, compressible content a few hundred KiB long (several chunks and frames of every codec).
TEXT = b"".join(
    b"line %06d: the quick brown fox jumps over the lazy dog %s\n" % (i, os.urandom(4).hex().encode())
    for i in range(6000)
)


def corruptions(suffix: str) -> dict[str, bytes]:
    packed = COMPRESSORS[suffix](TEXT)
    middle = len(packed) // 2
    return {
        "truncated": packed[: len(packed) - 7],
        "trailing garbage": packed + b"garbage after the stream",
        "flipped byte": packed[:middle] + bytes([packed[middle] ^ 0x55]) + packed[middle + 1 :],
        "plain text": TEXT,
    }


def run_duplicates(
    tmp_path: Path,
    layers: list[Files],
    options: CompressedDuplicatesOptions | None = None,
    protected: frozenset[int] = frozenset(),
) -> PassContext:
    pass_ = CompressedDuplicates(options or CompressedDuplicatesOptions())
    return kit.run(tmp_path, pass_, layers, protected=protected, workers=2, parents=True)


def deleted_paths(ctx: PassContext) -> list[str]:
    return kit.changed(ctx)


def outcomes(ctx: PassContext) -> dict[str, tuple[str, str, int, int]]:
    return {p: (f.action, f.reason, f.bytes_before, f.bytes_after) for p, f in kit.findings(ctx).items()}
