"""What an ELF file shows about what it needs at run time, read with a few small bounds-checked reads.

``read_program`` reads the ELF header, the program headers, the dynamic section and its string table
(``DT_NEEDED`` libraries; the dynamic symbol names, imported or exported), and the section names (a Go
binary has ``.go.buildinfo``/``.gopclntab``/``.note.go.buildid``). ``contains`` streams a file's bytes in
chunks and says which of some byte strings occur: the last resort for static binaries and Go programs,
whose function names (``crypto/x509.loadSystemRoots``) stay in ``.gopclntab`` even when stripped.
Malformed files give None: they show nothing.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

from optimizer.model import Content

__all__ = ["Handles", "Program", "contains", "is_elf", "read_program"]

ELF_MAGIC = b"\x7fELF"
ET_EXEC, ET_DYN = 2, 3
PT_LOAD, PT_DYNAMIC, PT_INTERP, PT_NOTE = 1, 2, 3, 4
DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ = 0, 1, 5, 10
GO_SECTIONS = (b".go.buildinfo", b".gopclntab", b".note.go.buildid")
GO_NOTE = b"Go\x00\x00"
_MAX_HEADERS = 4096
_MAX_TABLE = 16 << 20  # larger dynamic string tables or section name tables are not read
CHUNK = 4 << 20


@dataclass(frozen=True)
class Program:
    """The facts about one ELF file that say what it may need."""

    needed: tuple[str, ...]  # DT_NEEDED, in order
    symbols: bytes  # the dynamic string table (every imported and exported name, NUL-separated)
    interpreter: bool  # has PT_INTERP: an executable started through the dynamic loader
    dynamic: bool  # has a dynamic section
    go: bool
    kind: int = ET_EXEC  # e_type
    entry: int = 0

    @property
    def static(self) -> bool:
        """A program linked with everything it uses inside (static, or static-pie): DT_NEEDED tells nothing."""
        return not self.needed and not self.interpreter and self.kind in (ET_EXEC, ET_DYN) and self.entry != 0

    @property
    def runs(self) -> bool:
        """A program (not only a library): started by the loader, or static."""
        return self.interpreter or self.kind == ET_EXEC or self.static

    def has_symbol(self, name: bytes) -> bool:
        # Linkers share string tails ("xgetpwnam" holds "getpwnam"): the name's end is what is certain.
        return name + b"\0" in self.symbols


class _Reader:
    def __init__(self, handle: BinaryIO, base: int, size: int) -> None:
        self._handle = handle
        self._base = base
        self.size = size

    def read(self, offset: int, size: int) -> bytes | None:
        if offset < 0 or size < 0 or offset + size > self.size:
            return None
        self._handle.seek(self._base + offset)
        data = self._handle.read(size)
        return data if len(data) == size else None


class Handles:
    """Open spool files, kept open while many files are read (most files of a layer share one spool)."""

    def __init__(self) -> None:
        self._open: dict[str, BinaryIO] = {}

    def __enter__(self) -> Handles:
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._open.values():
            handle.close()
        self._open.clear()

    def get(self, path: str) -> BinaryIO:
        handle = self._open.get(path)
        if handle is None:
            handle = self._open[path] = open(path, "rb")  # noqa: SIM115 - closed by __exit__
        return handle


def is_elf(content: Content, handles: Handles) -> bool:
    if content.size < 52:
        return False
    handle = handles.get(content.path)
    handle.seek(content.offset)
    return handle.read(4) == ELF_MAGIC


def read_program(content: Content, handles: Handles) -> Program | None:
    """The run-time facts of an ELF file, or None when it is not one or does not parse."""
    if content.size < 52:
        return None
    return _parse(_Reader(handles.get(content.path), content.offset, content.size))


def _parse(reader: _Reader) -> Program | None:
    ident = reader.read(0, 64 if reader.size >= 64 else 52)
    if ident is None or not ident.startswith(ELF_MAGIC) or ident[4] not in (1, 2) or ident[5] not in (1, 2):
        return None
    wide, order = ident[4] == 2, "<" if ident[5] == 1 else ">"
    if wide:
        if len(ident) < 64:
            return None
        fields = struct.unpack_from(order + "HHIQQQIHHHHHH", ident, 16)
    else:
        fields = struct.unpack_from(order + "HHIIIIIHHHHHH", ident, 16)
    kind, _, _, entry, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum, shstrndx = fields
    if kind not in (ET_EXEC, ET_DYN):
        return None  # relocatable objects, kernel modules and core dumps run nothing by themselves
    segments = _segments(reader, order, wide, phoff, phentsize, phnum)
    if segments is None:
        return None
    loads = [(vaddr, offset, filesz) for kind, offset, vaddr, filesz in segments if kind == PT_LOAD]
    needed: list[str] = []
    symbols = b""
    dynamic = [s for s in segments if s[0] == PT_DYNAMIC]
    if dynamic:
        _, offset, _, filesz = dynamic[0]
        found = _dynamic(reader, order, wide, offset, filesz, loads)
        if found is not None:
            needed, symbols = found
    go = _is_go(reader, order, wide, shoff, shentsize, shnum, shstrndx, segments)
    interpreter = any(s[0] == PT_INTERP for s in segments)
    return Program(tuple(needed), symbols, interpreter, bool(dynamic), go, kind, entry)


def _segments(
    reader: _Reader, order: str, wide: bool, phoff: int, phentsize: int, phnum: int
) -> list[tuple[int, int, int, int]] | None:
    """(type, file offset, virtual address, file size) of every program header."""
    size = 56 if wide else 32
    if phnum == 0:
        return []
    if phentsize < size or phnum > _MAX_HEADERS:
        return None
    table = reader.read(phoff, phentsize * phnum)
    if table is None:
        return None
    out = []
    for number in range(phnum):
        start = number * phentsize
        if wide:
            kind, _, offset, vaddr, _, filesz, _, _ = struct.unpack_from(order + "IIQQQQQQ", table, start)
        else:
            kind, offset, vaddr, _, filesz, _, _, _ = struct.unpack_from(order + "IIIIIIII", table, start)
        out.append((kind, offset, vaddr, filesz))
    return out


def _file_offset(address: int, loads: list[tuple[int, int, int]]) -> int | None:
    for vaddr, offset, filesz in loads:
        if vaddr <= address < vaddr + filesz:
            return address - vaddr + offset
    return None


def _dynamic(
    reader: _Reader, order: str, wide: bool, offset: int, filesz: int, loads: list[tuple[int, int, int]]
) -> tuple[list[str], bytes] | None:
    entry = 16 if wide else 8
    data = reader.read(offset, min(filesz, _MAX_TABLE))
    if data is None:
        return None
    needed_offsets: list[int] = []
    strtab = strsz = None
    for start in range(0, len(data) - entry + 1, entry):
        tag, value = struct.unpack_from(order + ("qQ" if wide else "iI"), data, start)
        if tag == DT_NULL:
            break
        if tag == DT_NEEDED:
            needed_offsets.append(value)
        elif tag == DT_STRTAB:
            strtab = value
        elif tag == DT_STRSZ:
            strsz = value
    if strtab is None or strsz is None or strsz > _MAX_TABLE:
        return [], b""
    where = _file_offset(strtab, loads)
    strings = reader.read(where, strsz) if where is not None else None
    if strings is None:
        return [], b""
    needed = []
    for start in needed_offsets:
        end = strings.find(b"\0", start)
        if 0 <= start < len(strings) and end > start:
            needed.append(strings[start:end].decode("utf-8", "replace"))
    return needed, strings


def _is_go(
    reader: _Reader,
    order: str,
    wide: bool,
    shoff: int,
    shentsize: int,
    shnum: int,
    shstrndx: int,
    segments: list[tuple[int, int, int, int]],
) -> bool:
    size = 64 if wide else 40
    if shoff and 0 < shnum <= _MAX_HEADERS and shentsize >= size and shstrndx < shnum:
        header = reader.read(shoff + shstrndx * shentsize, size)
        if header is not None:
            if wide:
                _, _, _, _, offset, length, _, _, _, _ = struct.unpack_from(order + "IIQQQQIIQQ", header)
            else:
                _, _, _, _, offset, length, _, _, _, _ = struct.unpack_from(order + "IIIIIIIIII", header)
            names = reader.read(offset, length) if length <= _MAX_TABLE else None
            if names is not None and any(name + b"\0" in names for name in GO_SECTIONS):
                return True
    # Without section headers (sstrip): the Go build ID note in a PT_NOTE segment.
    for kind, offset, _, filesz in segments:
        if kind == PT_NOTE and filesz <= 1 << 16:
            notes = reader.read(offset, filesz)
            if notes is not None and GO_NOTE in notes:
                return True
    return False


def contains(content: Content, needles: Iterable[bytes]) -> set[bytes]:
    """Which of ``needles`` occur in the file's bytes (read in chunks; a needle may cross a chunk edge)."""
    wanted = set(needles)
    found: set[bytes] = set()
    if not wanted:
        return found
    overlap = max(len(n) for n in wanted) - 1
    tail = b""
    with content.open() as stream:
        while wanted - found:
            chunk = stream.read(CHUNK)
            if not chunk:
                break
            window = tail + chunk
            found.update(n for n in wanted - found if n in window)
            tail = window[-overlap:] if overlap else b""
    return found


def count(content: Content, needle: bytes, enough: int) -> int:
    """How many times ``needle`` occurs in the file's bytes, reading no further once ``enough`` are seen."""
    seen = 0
    tail = b""
    overlap = len(needle) - 1
    with content.open() as stream:
        while seen < enough:
            chunk = stream.read(CHUNK)
            if not chunk:
                break
            window = tail + chunk
            seen += window.count(needle)
            # The last ``overlap`` bytes cannot hold a whole needle: kept to find one crossing the edge.
            tail = window[-overlap:] if overlap else b""
    return seen
