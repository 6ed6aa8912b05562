"""Reading layers: one pass over each layer's tar stream.

``index_layer`` decodes a layer once and returns every entry with its metadata. The blob is decompressed as
its media type says and hashed as it goes (``tar_reader.LayerStream``): the result carries the layer's
diff_id and uncompressed size, for the caller to check against the config, and the blob's own digest is
verified at its end. The run's ``Limits`` are enforced while reading: uncompressed bytes (the ``Cap`` the
caller computed) and entries. The bytes of every regular file are appended to one spool file per layer (a
slice of it is the entry's ``Content``), so later stages (passes, worker processes, the layer writer) read
them again without decoding the layer a second time, and nothing is held whole in memory.

Hostile names are neutralised here, once: a leading ``/`` is dropped, ``.`` components are removed and ``..``
cannot climb above the root (as containerd and runc do when they unpack). Each neutralised name is reported
and listed in ``LayerIndex.unsafe``; with ``sanitize`` the entry is left out instead (and a hardlink to it),
so that a rewritten layer carries no such name. Nothing is ever written to the host's filesystem under a name
from the layer.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import sys
from dataclasses import dataclass, field
from typing import BinaryIO

from .digest import short
from .errors import InputError, LayerError, LimitError, OutputError, out_of_space
from .limits import Cap, Limits
from .model import HEAD_KEPT, Content, Descriptor, Entry, EntryKind
from .progress import CountingReader, Throttle
from .source import Blobs
from .tar_reader import LayerStream, Library, TarArchive, TarError

__all__ = ["IndexedEntry", "LayerIndex", "clean_path", "index_layer"]

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
_READ_BLOCK = 256 * 1024


@dataclass(frozen=True, slots=True)
class IndexedEntry:
    entry: Entry
    content: Content | None = None


@dataclass
class LayerIndex:
    descriptor: Descriptor
    entries: list[IndexedEntry]
    warnings: list[str] = field(default_factory=list)
    diff_id: str = ""  # sha256 of the uncompressed tar stream, as read
    size: int = 0  # bytes of the uncompressed tar stream
    unsafe: list[str] = field(default_factory=list)  # member names (or link targets) that left the root
    sanitized: bool = False  # entries with unsafe names were left out: the layer must be written again

    @property
    def content_bytes(self) -> int:
        return sum(e.entry.size for e in self.entries if e.entry.kind is EntryKind.FILE)


def clean_path(raw: str) -> str:
    """Normalise a member name lexically inside the root: no leading ``/``, no ``.``, ``..`` stops at root."""
    parts: list[str] = []
    for part in raw.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return "/".join(parts)


def _is_hostile(raw: str) -> bool:
    return raw.startswith("/") or ".." in raw.split("/")


def _text(utf8: object | None, fallback: object, pointer: int) -> str:
    value = utf8(pointer) if utf8 is not None else None  # type: ignore[operator]
    if value is None:
        value = fallback(pointer)  # type: ignore[operator]
    if value is None:
        return ""
    return bytes(value).decode("utf-8", "surrogateescape")


_NO_XATTRS: dict[str, bytes] = {}  # shared by every entry without xattrs (never mutated): 64 bytes each


def _xattrs(lib: Library, pointer: int) -> dict[str, bytes]:
    if lib.xattr_reset is None or lib.xattr_next is None or not lib.xattr_reset(pointer):
        return _NO_XATTRS
    out: dict[str, bytes] = {}
    name = ctypes.c_char_p()
    value = ctypes.c_void_p()
    size = ctypes.c_size_t()
    while lib.xattr_next(pointer, ctypes.byref(name), ctypes.byref(value), ctypes.byref(size)) == 0:
        if name.value is None:
            break
        data = ctypes.string_at(value.value, size.value) if value.value else b""
        out[name.value.decode("utf-8", "surrogateescape")] = data
    return out


_KINDS = {
    0o100000: EntryKind.FILE,
    0o040000: EntryKind.DIR,
    0o120000: EntryKind.SYMLINK,
    0o020000: EntryKind.CHAR,
    0o060000: EntryKind.BLOCK,
    0o010000: EntryKind.FIFO,
}


class _Names:
    """Member names as they are read: neutralised, reported, and (``sanitize``) entries that left the root
    dropped, with every hardlink to a dropped path."""

    def __init__(self, where: str, sanitize: bool) -> None:
        self.where = where
        self.sanitize = sanitize
        self.warnings: list[str] = []
        self.unsafe: list[str] = []
        self.dropped: set[str] = set()

    def unsafe_name(self, raw: str, what: str, clean: str) -> bool:
        """Record an unsafe name; True when its entry is to be left out."""
        self.unsafe.append(raw)
        if self.sanitize:
            self.warnings.append(f"{self.where}: {raw!r}: {what} leaves the root: entry dropped (--sanitize)")
            return True
        self.warnings.append(f"{self.where}: {raw!r}: unsafe {what} neutralised to {clean or '.'!r}")
        return False


def _to_entry(lib: Library, pointer: int, names: _Names) -> Entry | None:
    ffi = lib.ffi
    where, warnings = names.where, names.warnings
    raw = _text(lib.pathname_utf8, ffi.entry_pathname, pointer)
    path = clean_path(raw)
    if _is_hostile(raw) and names.unsafe_name(raw, "member name", path):
        names.dropped.add(path)
        return None
    hardlink = _text(lib.hardlink_utf8, ffi.entry_hardlink, pointer)
    if hardlink:
        kind = EntryKind.HARDLINK
        link = clean_path(hardlink)
        if _is_hostile(hardlink) and names.unsafe_name(hardlink, f"hardlink target of {raw!r}", link):
            names.dropped.add(path)
            return None
        if link in names.dropped:
            warnings.append(f"{where}: {raw!r}: hardlink to the dropped {link!r} dropped (--sanitize)")
            names.dropped.add(path)
            return None
        if not link or link == path:
            warnings.append(f"{where}: {raw!r}: hardlink to itself or to the root dropped")
            return None
    else:
        filetype = ffi.entry_filetype(pointer) & 0o170000
        if filetype == 0o140000:
            warnings.append(f"{where}: {raw!r}: socket entry dropped (sockets cannot be stored in an image)")
            return None
        kind = _KINDS.get(filetype, EntryKind.FILE)
        link = _text(lib.symlink_utf8, ffi.entry_symlink, pointer) if kind is EntryKind.SYMLINK else ""
    if not path and kind is not EntryKind.DIR:
        warnings.append(f"{where}: {raw!r}: a non-directory entry for the root was dropped")
        return None
    return Entry(
        path=path,
        kind=kind,
        mode=ffi.entry_perm(pointer) & 0o7777,
        uid=int(ffi.entry_uid(pointer)),
        gid=int(ffi.entry_gid(pointer)),
        uname=sys.intern(_text(lib.uname_utf8, ffi.entry_uname, pointer)),
        gname=sys.intern(_text(lib.gname_utf8, ffi.entry_gname, pointer)),
        mtime=int(ffi.entry_mtime(pointer)),
        mtime_ns=int(ffi.entry_mtime_nsec(pointer)),
        size=int(ffi.entry_size(pointer)) if kind is EntryKind.FILE else 0,
        link=link,
        devmajor=int(ffi.entry_rdevmajor(pointer)) if kind in (EntryKind.CHAR, EntryKind.BLOCK) else 0,
        devminor=int(ffi.entry_rdevminor(pointer)) if kind in (EntryKind.CHAR, EntryKind.BLOCK) else 0,
        xattrs=_xattrs(lib, pointer),
    )


def index_layer(
    blobs: Blobs,
    descriptor: Descriptor,
    spool_path: str,
    where: str,
    limits: Limits | None = None,
    cap: Cap | None = None,
    sanitize: bool = False,
    progress: Throttle | None = None,
) -> LayerIndex:
    """Decode a layer once: its entries, and every regular file's bytes appended to ``spool_path``.

    ``where`` names the image and layer for messages (``image sha256:ab12, layer 3/7 sha256:cd34``). ``cap``
    bounds the uncompressed bytes (default: ``limits.layer_cap`` for this blob alone); ``sanitize`` leaves
    out entries whose names leave the root. ``progress`` hears of the compressed bytes read.
    """
    limits = limits or Limits()
    cap = cap or limits.layer_cap(descriptor.size, limits.max_image_bytes)
    names = _Names(where, sanitize)
    entries: list[IndexedEntry] = []
    last = ""
    count = 0
    buffer = ctypes.create_string_buffer(_READ_BLOCK)
    try:
        with (
            LayerStream(
                _counted(blobs.open(descriptor, "layer"), progress), descriptor.media_type, cap, where
            ) as stream,
            open(spool_path, "ab") as spool,
            TarArchive(stream, _READ_BLOCK) as archive,
        ):
            offset = spool.tell()
            end = 0  # where the last member (header, data, padding) ends in the tar stream
            for pointer in archive.entries():
                count += 1
                if count > limits.max_layer_entries:
                    raise LimitError(
                        f"{where}: more than {limits.max_layer_entries} entries "
                        f"(--max-layer-entries); raise the limit if the image is trusted"
                    )
                entry = _to_entry(archive.lib, pointer, names)
                if entry is not None:
                    last = entry.path
                    content = None
                    if entry.kind is EntryKind.FILE:
                        content = _spool(archive, buffer, spool, offset, entry, spool_path, where)
                        offset += content.size
                    entries.append(IndexedEntry(entry, content))
                archive.skip_data()
                end = archive.position()
            consumed = archive.position()
            stream.drain()
            if consumed == end + 512 and stream.size > consumed:
                # libarchive ends at one zero block; Go's archive/tar (containerd, umoci) wants the next one
                # zero too, and refuses the layer.
                raise LayerError(
                    f"{where}: bytes that are not zeros in the end-of-archive blocks after {last}"
                )
    except TarError as error:
        at = f" after {last}" if last else ""
        raise LayerError(f"{where}: corrupt tar stream{at}: {error.msg}") from error
    except InputError:
        raise
    except OSError as error:
        if out_of_space(error):
            raise OutputError(f"{where}: the work directory is full: {error}") from error
        raise LayerError(f"{where}: reading failed{' after ' + last if last else ''}: {error}") from error
    warnings = [stream.note, *names.warnings] if stream.note else names.warnings
    index = LayerIndex(descriptor, entries, warnings, stream.diff_id, stream.size, names.unsafe)
    index.sanitized = bool(names.dropped)
    return index


def _spool(
    archive: TarArchive,
    buffer: ctypes.Array[ctypes.c_char],
    spool: BinaryIO,
    offset: int,
    entry: Entry,
    spool_path: str,
    where: str,
) -> Content:
    """Copy the current member's bytes to the spool, hashing them."""
    digest = hashlib.sha256()
    size = 0
    write = spool.write
    view = memoryview(buffer).cast("B")  # written and hashed before the next read: never copied
    head = b""
    while True:
        got = archive.read_data(buffer)
        if not got:
            break
        chunk = view[:got]
        if not size:
            head = bytes(chunk[:HEAD_KEPT])
        digest.update(chunk)
        write(chunk)
        size += got
    if size != entry.size:
        raise LayerError(f"{where}: {entry.path}: truncated ({size} of {entry.size} bytes)")
    return Content(spool_path, offset, size, digest.hexdigest(), head)


def layer_label(image: str, number: int, total: int, descriptor: Descriptor) -> str:
    return f"{image}, layer {number}/{total} {short(descriptor.digest)}"


def _counted(reader: BinaryIO, progress: Throttle | None) -> BinaryIO:
    if progress is None:
        return reader
    return io.BufferedReader(CountingReader(reader, progress), 1 << 20)
