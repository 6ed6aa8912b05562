"""Gzip layers read the same with ISA-L and with zlib: entries, bytes, diff_id, and the errors of broken streams."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import zlib
from pathlib import Path

import pytest

from optimizer import inflate
from optimizer.errors import LayerError
from optimizer.layer import LayerIndex, index_layer
from optimizer.mediatypes import OCI_LAYER_GZIP
from optimizer.model import Descriptor
from optimizer.source import BlobStore

BACKENDS = ["isal", "zlib"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    name: str = request.param
    monkeypatch.setenv("OCI_OPTIMIZER_INFLATE", name)
    assert inflate.backend() == name  # isal is a dependency on this machine: never silently zlib
    return name


def plain_tar() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for n in range(40):
            data = hashlib.sha256(str(n).encode()).digest() * (n * 97 + 1)
            info = tarfile.TarInfo(f"dir/file-{n}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def members(plain: bytes, pieces: int) -> bytes:
    """Several gzip members one after the other, as pigz and others write."""
    step = len(plain) // pieces + 1
    return b"".join(gzip.compress(plain[i : i + step], mtime=0) for i in range(0, len(plain), step))


def read(tmp_path: Path, blob: bytes) -> LayerIndex:
    path = tmp_path / "blob"
    path.write_bytes(blob)
    descriptor = Descriptor(OCI_LAYER_GZIP, "sha256:" + hashlib.sha256(blob).hexdigest(), len(blob))
    store = BlobStore("img")
    store.add_slice(descriptor.digest, str(path), 0, len(blob))
    spool = tmp_path / "spool"
    spool.unlink(missing_ok=True)
    return index_layer(store, descriptor, str(spool), "img, layer 2/3")


@pytest.mark.parametrize("pieces", [1, 3])
def test_a_gzip_layer_reads_the_same_with_either_backend(backend: str, pieces: int, tmp_path: Path) -> None:
    plain = plain_tar()
    index = read(tmp_path, members(plain, pieces))
    assert index.diff_id == "sha256:" + hashlib.sha256(plain).hexdigest()
    assert index.size == len(plain)
    with tarfile.open(fileobj=io.BytesIO(plain)) as tar:
        expected = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    got = {i.entry.path: i.content.read_bytes() for i in index.entries if i.content is not None}
    assert got == expected


def test_a_wrong_crc_is_a_corrupt_stream(backend: str, tmp_path: Path) -> None:
    blob = bytearray(gzip.compress(plain_tar(), mtime=0))
    blob[-6] ^= 0x01  # the CRC-32 in the trailer
    with pytest.raises(LayerError, match=r"img, layer 2/3: corrupt gzip stream"):
        read(tmp_path, bytes(blob))


def test_a_damaged_block_is_a_corrupt_stream(backend: str, tmp_path: Path) -> None:
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    blob = bytearray(compressor.compress(plain_tar()) + compressor.flush())
    blob[40:60] = b"\xff" * 20
    with pytest.raises(LayerError, match=r"img, layer 2/3: corrupt"):
        read(tmp_path, bytes(blob))


def test_a_cut_stream_is_truncated(backend: str, tmp_path: Path) -> None:
    plain = plain_tar()
    blob = gzip.compress(plain + bytes(1 << 16), mtime=0)  # zeros past the tar's end: libarchive stops early
    with pytest.raises(LayerError, match=r"img, layer 2/3: the gzip stream is truncated"):
        read(tmp_path, blob[: len(blob) - 12])


def test_zlib_can_be_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCI_OPTIMIZER_INFLATE", "zlib")
    assert inflate.backend() == "zlib"
    assert isinstance(inflate.gunzip(), type(zlib.decompressobj()))
