"""``passes.decompression``: damaged streams are refused by the decompressors themselves; bombs stop
at the size and ratio limits."""

from __future__ import annotations

import hashlib

import pytest

from passes.decompression import (
    CorruptStream,
    LimitExceeded,
    Limits,
    decompressed_chunks,
    digest_decompressed,
)
from tests.passes.compressed import CODEC_OF, COMPRESSORS, corruptions


def test_decompressors_reject_damage_themselves() -> None:
    for suffix in sorted(COMPRESSORS):
        for what, data in corruptions(suffix).items():
            if what == "flipped byte":
                continue  # may or may not decode; the comparison with the twin decides then
            with pytest.raises(CorruptStream):
                b"".join(decompressed_chunks(CODEC_OF[suffix], data))


def test_bombs_are_bounded() -> None:
    zeros = bytes(64 << 20)
    for suffix in (".gz", ".bz2", ".xz", ".zst", ".br", ".lz4"):
        bomb = COMPRESSORS[suffix](zeros)
        assert len(bomb) < (1 << 20)
        codec = CODEC_OF[suffix]
        with pytest.raises(LimitExceeded):
            digest_decompressed(bomb, (codec, Limits(max_output=1 << 20, max_ratio=10**9)))
        with pytest.raises(LimitExceeded):
            digest_decompressed(bomb, (codec, Limits(max_output=1 << 40, max_ratio=100)))
    # Within the limits the same stream decodes to its digest.
    decoded = digest_decompressed(COMPRESSORS[".gz"](zeros), ("gzip", Limits(1 << 30, 10**9)))
    assert (decoded.size, decoded.sha256) == (len(zeros), hashlib.sha256(zeros).hexdigest())
