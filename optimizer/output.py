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
import errno
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

from .codec import CompressionSpec, Compressor, compressor_versions
from .errors import OutputError, out_of_space
from .inflate import gunzip
from .mediatypes import Compression
from .model import Entry, EntryKind

__all__ = [
    "BlobSpec",
    "CompressionSpec",
    "LayerWriter",
    "canonical_json",
    "check_destination",
    "compressor_versions",
    "source_date_epoch",
    "transcode_layer",
    "write_oci_archive",
    "write_oci_dir",
]

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


@dataclass(frozen=True)
class BlobSpec:
    """A blob written to disk: where it is and what names it."""

    path: str
    digest: str
    size: int
    diff_id: str = ""
    raw_size: int = 0  # the uncompressed tar's bytes


def transcode_layer(
    reader: BinaryIO, codec: Compression, path: str, spec: CompressionSpec, workers: int = 1
) -> BlobSpec:
    """The same tar stream (``reader``: compressed with ``codec``, gzip or none) compressed anew into ``path``
    with ``spec``: the diff_id stays, the blob is new. Used for the zstd twin of ``--publish gzip+zstd``."""
    if codec not in (Compression.GZIP, Compression.NONE):
        raise ValueError(f"cannot transcode a {codec.value} layer")
    gzip = codec is Compression.GZIP
    decoder = gunzip()
    open_member = False  # a gzip member begun and not ended
    with open(path, "wb") as out:
        compressor = Compressor(out, spec, workers)
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
                        decoder = gunzip()
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
        self._compressor = Compressor(self._file, spec, workers)
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
            self._compressor.raw_size,
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


def check_destination(destination: str, output_format: str) -> None:
    """Refuse, before any work, a destination the output cannot replace: ``OutputError`` (exit 6)."""
    parent = os.path.dirname(os.path.abspath(destination)) or "."
    if not os.path.isdir(parent):
        raise OutputError(f"{destination}: the directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{destination}: the directory {parent} is not writable")
    if output_format == "oci-dir":
        if os.path.lexists(destination) and not os.path.isdir(destination):
            raise OutputError(f"{destination} exists and is not a directory (--format oci-dir writes one)")
        if os.path.isdir(destination) and not _replaceable_layout(destination):
            raise OutputError(f"{destination} exists and is not an OCI layout: it is not replaced")
    elif os.path.isdir(destination):
        raise OutputError(
            f"{destination} is a directory: an oci-archive output is a file (--format oci-dir writes a layout)"
        )


def _replaceable_layout(directory: str) -> bool:
    """An empty directory, or an OCI layout (an earlier output): what ``write_oci_dir`` may replace."""
    names = os.listdir(directory)
    return not names or "oci-layout" in names or "index.json" in names


def write_oci_archive(
    destination: str, index_bytes: bytes, docker_manifest: bytes | None, blobs: Mapping[str, OutputBlob]
) -> None:
    """Write an OCI archive (plus docker's manifest.json) atomically at ``destination``."""
    check_destination(destination, "oci-archive")
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
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        if isinstance(error, OSError):
            raise _write_failed(destination, error) from error
        raise


def write_oci_dir(
    destination: str, index_bytes: bytes, docker_manifest: bytes | None, blobs: Mapping[str, OutputBlob]
) -> None:
    """Write an OCI layout directory atomically: built beside ``destination``, then swapped in for it (an
    empty directory or an earlier layout there is replaced, as an archive is)."""
    check_destination(destination, "oci-dir")
    parent = os.path.dirname(os.path.abspath(destination)) or "."
    try:
        temporary = tempfile.mkdtemp(prefix=".optimize-", dir=parent)
    except OSError as error:
        raise OutputError(f"cannot write in {parent}: {error}") from error
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
        os.chmod(temporary, 0o755 & ~_umask())
        _swap_in(temporary, destination)
    except BaseException as error:
        shutil.rmtree(temporary, ignore_errors=True)
        if isinstance(error, OSError):
            raise _write_failed(destination, error) from error
        raise


def _swap_in(built: str, destination: str) -> None:
    """Put the directory ``built`` at ``destination``. An existing one is exchanged with it in one step
    (renameat2 RENAME_EXCHANGE) and then removed, so ``destination`` is never missing or half written; where
    the filesystem cannot exchange, the old one is renamed aside first."""
    if not os.path.isdir(destination):
        os.replace(built, destination)
        return
    if _exchange(built, destination):
        shutil.rmtree(built)  # now the earlier output
        return
    aside = tempfile.mkdtemp(prefix=".optimize-old-", dir=os.path.dirname(os.path.abspath(destination)))
    os.rmdir(aside)
    os.rename(destination, aside)
    try:
        os.rename(built, destination)
    except BaseException:
        os.rename(aside, destination)
        raise
    shutil.rmtree(aside)


def _exchange(first: str, second: str) -> bool:
    """Atomically swap two paths; False where the C library or the filesystem cannot."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    done = renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange)
    if done == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(code, os.strerror(code), second)


def _write_failed(destination: str, error: OSError) -> OutputError:
    if out_of_space(error):
        return OutputError(f"{destination}: the disk is full: {error}")
    return OutputError(f"{destination}: writing failed: {error}")


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
