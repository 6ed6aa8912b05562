"""Reading layers: one pass over each layer's tar stream with libarchive.

``index_layer`` decodes a layer once, verifying its digest, and returns every entry with its metadata. The
bytes of every regular file are appended to one spool file per layer (a slice of it is the entry's
``Content``), so later stages (passes, worker processes, the layer writer) read them again without decoding the
layer a second time, and nothing is held whole in memory.

Hostile names are neutralised here, once: a leading ``/`` is dropped, ``.`` components are removed and ``..``
cannot climb above the root (as containerd and runc do when they unpack). Each neutralised name is reported.
Nothing is ever written to the host's filesystem under a name from the layer.
"""

from __future__ import annotations

import ctypes
import hashlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import libarchive
import libarchive.ffi as ffi
from libarchive.exception import ArchiveError

from .digest import short
from .errors import InputError, LayerError
from .model import Content, Descriptor, Entry, EntryKind
from .source import Blobs

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


def _bind(name: str, argtypes: list[object], restype: object) -> object | None:
    function: object | None = getattr(ffi.libarchive, "archive_" + name, None)
    if function is None:
        return None
    function.argtypes = argtypes  # type: ignore[attr-defined]
    function.restype = restype  # type: ignore[attr-defined]
    return function


_c_entry = ctypes.c_void_p
_pathname_utf8 = _bind("entry_pathname_utf8", [_c_entry], ctypes.c_char_p)
_symlink_utf8 = _bind("entry_symlink_utf8", [_c_entry], ctypes.c_char_p)
_hardlink_utf8 = _bind("entry_hardlink_utf8", [_c_entry], ctypes.c_char_p)
_uname_utf8 = _bind("entry_uname_utf8", [_c_entry], ctypes.c_char_p)
_gname_utf8 = _bind("entry_gname_utf8", [_c_entry], ctypes.c_char_p)
_xattr_reset = _bind("entry_xattr_reset", [_c_entry], ctypes.c_int)
_xattr_next = _bind(
    "entry_xattr_next",
    [
        _c_entry,
        ctypes.POINTER(ctypes.c_char_p),
        ctypes.POINTER(ctypes.c_void_p),
        ctypes.POINTER(ctypes.c_size_t),
    ],
    ctypes.c_int,
)


def _text(utf8: object | None, fallback: object, pointer: int) -> str:
    value = utf8(pointer) if utf8 is not None else None  # type: ignore[operator]
    if value is None:
        value = fallback(pointer)  # type: ignore[operator]
    if value is None:
        return ""
    return bytes(value).decode("utf-8", "surrogateescape")


_NO_XATTRS: dict[str, bytes] = {}  # shared by every entry without xattrs (never mutated): 64 bytes each


def _xattrs(pointer: int) -> dict[str, bytes]:
    if _xattr_reset is None or _xattr_next is None or not _xattr_reset(pointer):  # type: ignore[operator]
        return _NO_XATTRS
    out: dict[str, bytes] = {}
    name = ctypes.c_char_p()
    value = ctypes.c_void_p()
    size = ctypes.c_size_t()
    while _xattr_next(pointer, ctypes.byref(name), ctypes.byref(value), ctypes.byref(size)) == 0:  # type: ignore[operator]
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


def _to_entry(item: libarchive.ArchiveEntry, warnings: list[str], where: str) -> Entry | None:
    pointer = item._entry_p
    raw = _text(_pathname_utf8, ffi.entry_pathname, pointer)
    path = clean_path(raw)
    if _is_hostile(raw):
        warnings.append(f"{where}: {raw!r}: unsafe member name neutralised to {path or '.'!r}")
    hardlink = _text(_hardlink_utf8, ffi.entry_hardlink, pointer) if item.islnk else ""
    if hardlink:
        kind = EntryKind.HARDLINK
        link = clean_path(hardlink)
        if _is_hostile(hardlink):
            warnings.append(f"{where}: {raw!r}: hardlink target {hardlink!r} neutralised to {link!r}")
        if not link or link == path:
            warnings.append(f"{where}: {raw!r}: hardlink to itself or to the root dropped")
            return None
    else:
        filetype = ffi.entry_filetype(pointer) & 0o170000
        if filetype == 0o140000:
            warnings.append(f"{where}: {raw!r}: socket entry dropped (sockets cannot be stored in an image)")
            return None
        kind = _KINDS.get(filetype, EntryKind.FILE)
        link = _text(_symlink_utf8, ffi.entry_symlink, pointer) if kind is EntryKind.SYMLINK else ""
    if not path and kind is not EntryKind.DIR:
        warnings.append(f"{where}: {raw!r}: a non-directory entry for the root was dropped")
        return None
    return Entry(
        path=path,
        kind=kind,
        mode=ffi.entry_perm(pointer) & 0o7777,
        uid=int(ffi.entry_uid(pointer)),
        gid=int(ffi.entry_gid(pointer)),
        uname=sys.intern(_text(_uname_utf8, ffi.entry_uname, pointer)),
        gname=sys.intern(_text(_gname_utf8, ffi.entry_gname, pointer)),
        mtime=int(ffi.entry_mtime(pointer)),
        mtime_ns=int(ffi.entry_mtime_nsec(pointer)),
        size=int(ffi.entry_size(pointer)) if kind is EntryKind.FILE else 0,
        link=link,
        devmajor=int(ffi.entry_rdevmajor(pointer)) if kind in (EntryKind.CHAR, EntryKind.BLOCK) else 0,
        devminor=int(ffi.entry_rdevminor(pointer)) if kind in (EntryKind.CHAR, EntryKind.BLOCK) else 0,
        xattrs=_xattrs(pointer),
    )


def index_layer(blobs: Blobs, descriptor: Descriptor, spool_path: str, where: str) -> LayerIndex:
    """Decode a layer once: its entries, and every regular file's bytes appended to ``spool_path``.

    ``where`` names the image and layer for messages (``image sha256:ab12, layer 3/7 sha256:cd34``).
    """
    warnings: list[str] = []
    entries: list[IndexedEntry] = []
    last = ""
    reader = blobs.open(descriptor, "layer")
    buffer = ctypes.create_string_buffer(_READ_BLOCK)
    try:
        with (
            reader,
            open(spool_path, "ab") as spool,
            libarchive.stream_reader(reader, format_name="tar", block_size=_READ_BLOCK) as archive,
        ):
            offset = spool.tell()
            for item in archive:
                entry = _to_entry(item, warnings, where)
                if entry is None:
                    continue
                last = entry.path
                content = None
                if entry.kind is EntryKind.FILE:
                    digest = hashlib.sha256()
                    size = 0
                    for chunk in _blocks(archive._pointer, buffer):
                        digest.update(chunk)
                        spool.write(chunk)
                        size += len(chunk)
                    if size != entry.size:
                        raise LayerError(f"{where}: {entry.path}: truncated ({size} of {entry.size} bytes)")
                    content = Content(spool_path, offset, size, digest.hexdigest())
                    offset += size
                entries.append(IndexedEntry(entry, content))
            while reader.read(1 << 20):  # the tail after the end-of-archive blocks: verify the digest
                pass
    except ArchiveError as error:
        at = f" after {last}" if last else ""
        raise LayerError(f"{where}: corrupt tar stream{at}: {error.msg}") from error
    except InputError:
        raise
    except OSError as error:
        raise LayerError(f"{where}: reading failed{' after ' + last if last else ''}: {error}") from error
    return LayerIndex(descriptor, entries, warnings)


def _blocks(archive_p: int, buffer: ctypes.Array[ctypes.c_char]) -> Iterator[bytes]:
    read = ffi.read_data
    while True:
        got = read(archive_p, buffer, len(buffer))
        if got == 0:
            return
        yield buffer.raw[:got]


def layer_label(image: str, number: int, total: int, descriptor: Descriptor) -> str:
    return f"{image}, layer {number}/{total} {short(descriptor.digest)}"
