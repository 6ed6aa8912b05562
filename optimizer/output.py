"""Every byte we write goes through this module: determinism lives in one place.

- JSON: sorted keys, no spaces, UTF-8 (``canonical_json``).
- Layer tars: PAX format, entries in the order given, no atime/ctime, mtimes clamped to ``SOURCE_DATE_EPOCH``
  when it is set, numeric ids and names exactly as decided by the caller (``LayerWriter``).
- Compression: gzip with a fixed header (no name, mtime 0, OS 255) at a fixed level, deflated in fixed-size
  blocks on every core (``deflate_block``, pigz-style); zstd at a fixed level without a content-size field, in
  libzstd's multi-threaded mode; or none. The bytes never depend on the number of workers. What byte identity
  depends on (zlib and zstd versions, the block size) is in ``compressor_versions()``.
- The outer OCI archive: members in a fixed order, mtime from ``SOURCE_DATE_EPOCH`` or 0, owner root, fixed modes
  (``write_oci_archive``); or a layout directory (``write_oci_dir``). Both are written beside the destination and
  renamed into place at the end, so a failed run leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
import tarfile
import tempfile
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO

import zstandard

from .errors import OutputError
from .mediatypes import Compression
from .model import Entry, EntryKind

__all__ = [
    "BlobSpec",
    "CompressionSpec",
    "LayerWriter",
    "canonical_json",
    "compressor_versions",
    "source_date_epoch",
    "transcode_layer",
    "write_oci_archive",
    "write_oci_dir",
]

DEFAULT_GZIP_LEVEL = 6
DEFAULT_ZSTD_LEVEL = 3
_CHUNK = 1 << 20


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def source_date_epoch() -> int | None:
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is None or value.strip() == "":
        return None
    try:
        return int(value)
    except ValueError as error:
        from .errors import UsageError

        raise UsageError(f"SOURCE_DATE_EPOCH must be an integer number of seconds, not {value!r}") from error


def compressor_versions() -> dict[str, str]:
    import libarchive.ffi

    return {
        "zlib": zlib.ZLIB_RUNTIME_VERSION,
        "zstd": ".".join(str(x) for x in zstandard.ZSTD_VERSION),
        "python-zstandard": zstandard.__version__,
        "libarchive": str(libarchive.ffi.version_number()),
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


class _Compressor:
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


@dataclass(frozen=True)
class BlobSpec:
    """A blob written to disk: where it is and what names it."""

    path: str
    digest: str
    size: int
    diff_id: str = ""


def transcode_layer(
    reader: BinaryIO, codec: Compression, path: str, spec: CompressionSpec, workers: int = 1
) -> BlobSpec:
    """The same tar stream (``reader``: compressed with ``codec``, gzip or none) compressed anew into ``path``
    with ``spec``: the diff_id stays, the blob is new. Used for the zstd twin of ``--publish gzip+zstd``."""
    if codec not in (Compression.GZIP, Compression.NONE):
        raise ValueError(f"cannot transcode a {codec.value} layer")
    gzip = codec is Compression.GZIP
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    open_member = False  # a gzip member begun and not ended
    with open(path, "wb") as out:
        compressor = _Compressor(out, spec, workers)
        try:
            while chunk := reader.read(_CHUNK):
                if not gzip:
                    compressor.write(chunk)
                    continue
                while chunk:
                    compressor.write(decoder.decompress(chunk))
                    open_member = True
                    chunk = b""
                    if decoder.eof:  # a gzip file may hold several members, one after the other
                        chunk, open_member = decoder.unused_data, False
                        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
            if gzip and open_member:
                raise OutputError(f"{path}: the gzip stream of the layer ends early")
            compressor.finish()
        except BaseException:
            compressor.close()
            raise
    return BlobSpec(
        path,
        "sha256:" + compressor.blob_hash.hexdigest(),
        compressor.blob_size,
        "sha256:" + compressor.diff_hash.hexdigest(),
    )


class LayerWriter:
    """Writes one layer tar, deterministically, compressed into ``path``.

    ``add(entry, reader)`` appends an entry; regular files take their bytes from ``reader`` (exactly
    ``entry.size`` bytes). ``close()`` returns the blob's digest, size and diff_id. ``workers`` threads
    compress; the bytes written are the same for any number of them.
    """

    def __init__(self, path: str, spec: CompressionSpec, clamp_mtime: int | None, workers: int = 1) -> None:
        self._path = path
        self._file = open(path, "wb")  # noqa: SIM115 - closed in close() or abort()
        self._compressor = _Compressor(self._file, spec, workers)
        self._tar = tarfile.TarFile(
            fileobj=self._compressor,  # type: ignore[arg-type]
            mode="w",
            format=tarfile.PAX_FORMAT,
            encoding="utf-8",
        )
        self._clamp = clamp_mtime
        self.count = 0

    def add(self, entry: Entry, reader: BinaryIO | None = None) -> None:
        info = to_tarinfo(entry, self._clamp)
        if entry.kind is EntryKind.FILE:
            if reader is None:
                raise ValueError(f"{entry.path}: a regular file needs its content")
            self._tar.addfile(info, _Exact(reader, entry.size, entry.path))
        else:
            self._tar.addfile(info)
        # tarfile keeps every TarInfo it wrote (for getmember); a layer of 250,000 files would hold them all.
        self._tar.members.clear()  # type: ignore[attr-defined]
        self.count += 1

    def close(self) -> BlobSpec:
        self._tar.close()
        self._compressor.finish()
        self._file.close()
        return BlobSpec(
            self._path,
            "sha256:" + self._compressor.blob_hash.hexdigest(),
            self._compressor.blob_size,
            "sha256:" + self._compressor.diff_hash.hexdigest(),
        )

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._compressor.close()
        with contextlib.suppress(Exception):
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path)


class _Exact:
    """Feeds tarfile exactly ``size`` bytes; a short source is an error, not silent zero padding."""

    def __init__(self, reader: BinaryIO, size: int, path: str) -> None:
        self._reader = reader
        self._left = size
        self._path = path

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > self._left:
            size = self._left
        data = self._reader.read(size)
        if len(data) != size:
            raise OutputError(f"{self._path}: content ended {self._left - len(data)} bytes early")
        self._left -= len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


_TYPES = {
    EntryKind.FILE: tarfile.REGTYPE,
    EntryKind.DIR: tarfile.DIRTYPE,
    EntryKind.SYMLINK: tarfile.SYMTYPE,
    EntryKind.HARDLINK: tarfile.LNKTYPE,
    EntryKind.CHAR: tarfile.CHRTYPE,
    EntryKind.BLOCK: tarfile.BLKTYPE,
    EntryKind.FIFO: tarfile.FIFOTYPE,
}


def to_tarinfo(entry: Entry, clamp: int | None) -> tarfile.TarInfo:
    name = entry.path if entry.path else "."
    if entry.kind is EntryKind.DIR:
        name += "/"
    info = tarfile.TarInfo(name)
    info.type = _TYPES[entry.kind]
    info.mode = entry.mode & 0o7777
    info.uid = entry.uid
    info.gid = entry.gid
    info.uname = entry.uname
    info.gname = entry.gname
    mtime, nanos = entry.mtime, entry.mtime_ns
    if clamp is not None and (mtime > clamp or (mtime == clamp and nanos)):
        mtime, nanos = clamp, 0
    info.mtime = mtime
    info.size = entry.size if entry.kind is EntryKind.FILE else 0
    info.linkname = entry.link if entry.kind in (EntryKind.SYMLINK, EntryKind.HARDLINK) else ""
    info.devmajor = entry.devmajor
    info.devminor = entry.devminor
    pax: dict[str, str] = {}
    if nanos:
        pax["mtime"] = f"{mtime}.{nanos:09d}".rstrip("0")
    elif mtime < 0 or mtime >= 8**11:
        pax["mtime"] = str(mtime)
    for key in sorted(entry.xattrs):
        pax["SCHILY.xattr." + key] = entry.xattrs[key].decode("utf-8", "surrogateescape")
    info.pax_headers = pax
    return info


# ---------------------------------------------------------------------------------------------------------
# The outer layout.

OutputBlob = tuple[str, int, Callable[[], BinaryIO]]  # digest, size, opener


def _layout_members(
    index_bytes: bytes, docker_manifest: bytes | None, blobs: Mapping[str, OutputBlob]
) -> Iterator[tuple[str, int, Callable[[], BinaryIO] | bytes | None]]:
    """The archive's members in their fixed order: name, size, content (None for directories)."""
    yield "oci-layout", 0, canonical_json({"imageLayoutVersion": "1.0.0"})
    yield "index.json", len(index_bytes), index_bytes
    if docker_manifest is not None:
        yield "manifest.json", len(docker_manifest), docker_manifest
    yield "blobs/", 0, None
    algorithms = sorted({d.split(":", 1)[0] for d in blobs})
    for algorithm in algorithms:
        yield f"blobs/{algorithm}/", 0, None
        for digest in sorted(d for d in blobs if d.startswith(algorithm + ":")):
            _, size, opener = blobs[digest]
            yield f"blobs/{algorithm}/{digest.split(':', 1)[1]}", size, opener


def write_oci_archive(
    destination: str, index_bytes: bytes, docker_manifest: bytes | None, blobs: Mapping[str, OutputBlob]
) -> None:
    """Write an OCI archive (plus docker's manifest.json) atomically at ``destination``."""
    mtime = source_date_epoch() or 0
    directory = os.path.dirname(os.path.abspath(destination)) or "."
    try:
        handle, temporary = tempfile.mkstemp(prefix=".optimize-", suffix=".tmp", dir=directory)
    except OSError as error:
        raise OutputError(f"cannot write in {directory}: {error}") from error
    try:
        with (
            os.fdopen(handle, "wb") as raw,
            tarfile.open(fileobj=raw, mode="w|", format=tarfile.PAX_FORMAT) as tar,
        ):
            for name, size, content in _layout_members(index_bytes, docker_manifest, blobs):
                info = tarfile.TarInfo(name)
                info.mtime = mtime
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                if content is None:
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o755
                    tar.addfile(info)
                    continue
                info.mode = 0o644
                info.size = size
                if isinstance(content, bytes):
                    import io

                    info.size = len(content)
                    tar.addfile(info, io.BytesIO(content))
                else:
                    with content() as reader:
                        tar.addfile(info, _Exact(reader, size, name))
                        _finish(reader)
        os.chmod(temporary, 0o644 & ~_umask())
        os.replace(temporary, destination)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def write_oci_dir(
    destination: str, index_bytes: bytes, docker_manifest: bytes | None, blobs: Mapping[str, OutputBlob]
) -> None:
    """Write an OCI layout directory atomically (built beside ``destination``, then renamed)."""
    parent = os.path.dirname(os.path.abspath(destination)) or "."
    if os.path.exists(destination) and not (os.path.isdir(destination) and not os.listdir(destination)):
        raise OutputError(f"{destination} exists and is not an empty directory")
    temporary = tempfile.mkdtemp(prefix=".optimize-", dir=parent)
    try:
        for name, _size, content in _layout_members(index_bytes, docker_manifest, blobs):
            target = os.path.join(temporary, name)
            if content is None:
                os.makedirs(target, exist_ok=True)
            elif isinstance(content, bytes):
                with open(target, "wb") as out:
                    out.write(content)
            else:
                with content() as reader, open(target, "wb") as out:
                    shutil.copyfileobj(reader, out, _CHUNK)
                    _finish(reader)
        if os.path.isdir(destination):
            os.rmdir(destination)
        os.replace(temporary, destination)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def _finish(reader: BinaryIO) -> None:
    """Read to EOF so verifying readers check their digest."""
    while reader.read(_CHUNK):
        pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def copy_stream(reader: BinaryIO, writer: Any) -> int:
    total = 0
    while chunk := reader.read(_CHUNK):
        writer.write(chunk)
        total += len(chunk)
    return total


def iter_chunks(reader: BinaryIO) -> Iterable[bytes]:
    while chunk := reader.read(_CHUNK):
        yield chunk
