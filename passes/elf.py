"""Removing sections from ELF files, in pure Python, for every class, byte order and machine.

The writer drops sections, rebuilds the section header table and ``.shstrtab``, and never moves or changes a
byte that a segment maps: everything up to the end of the last segment (and every allocated section) is
copied verbatim, the kept non-allocated sections after it are laid out in their original order and alignment,
then the new ``.shstrtab`` and the section header table. Only the ELF header's ``e_shoff``/``e_shnum``/
``e_shstrndx`` change in the mapped bytes, as with GNU strip. Removed sections that a segment follows (files
patchelf edited, as in manylinux wheels) cannot go without moving that segment: their bytes become zeros,
which cost nothing in a compressed layer, and the new section table goes there when it fits. GNU strip
moves such segments instead; we never do.

Modes follow GNU ``strip``:

* ``debug``: debugging sections (``.debug*``, ``.zdebug*`` whether SHF_COMPRESSED or not, ``.stab*``,
  ``.line``, ``.gdb_index``, ``.gnu.linkonce.wi.*``, ``.gnu.debuglto_.debug_*``) and their relocations.
  ``.symtab`` is kept and rewritten only as far as section indices need (symbols defined in dropped sections
  go, the relocations, groups and ``.llvm_addrsig`` that name symbols are renumbered).
* ``unneeded`` (the default, as ``strip --strip-unneeded`` on executables and shared objects): also
  ``.symtab``, its ``.strtab`` and whatever only they referred to.
* ``all``: also the toolchain's annotations, which nothing reads at run time: ``.comment``,
  ``.gnu.build.attributes*`` (annobin) and ``.GCC.command.line``.

Relocatable objects (``.o``, ``.ko``, archive members) get ``debug`` at most: linking needs their symbols.
``.gnu_debuglink``/``.gnu_debugaltlink`` are kept unless asked; notes (build-id, properties) are always kept.

Headers are read with ``struct`` (bounds-checked): most files in an image have nothing to strip and are read
no further. Every result is read again by both, pyelftools reading every section and segment
(``verify_stripped``); pyelftools' construct definitions are built once per kind of file (``_ELFFile``).

``strip_elf`` returns ``None`` when there is nothing to remove, raises ``ElfSkipped`` (with the reason) for
files it deliberately leaves alone, and verifies every result (``verify_stripped``) before returning it.
``strip_archive`` does the same for static archives (``!<arch>``), member by member.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from elftools.elf.elffile import ELFFile
from elftools.elf.structs import ELFStructs

from optimizer.errors import OptimizerError

__all__ = [
    "AR_MAGIC",
    "ELF_MAGIC",
    "MODES",
    "ElfSkipped",
    "ElfVerificationError",
    "StripResult",
    "is_debug_section",
    "section_names",
    "strip_archive",
    "strip_elf",
    "verify_stripped",
]

MODES = ("debug", "unneeded", "all")
ELF_MAGIC = b"\x7fELF"
AR_MAGIC = b"!<arch>\n"
MODULE_SIGNATURE = b"~Module signature appended~\n"

ET_REL, ET_EXEC, ET_DYN, ET_CORE = 1, 2, 3, 4
EM_MIPS = 8
SHT_NULL, SHT_SYMTAB, SHT_STRTAB, SHT_RELA, SHT_NOBITS, SHT_REL = 0, 2, 3, 4, 8, 9
SHT_GROUP, SHT_SYMTAB_SHNDX = 17, 18
SHT_LLVM_ADDRSIG = 0x6FFF4C03
SHF_ALLOC, SHF_INFO_LINK = 0x2, 0x40
SHN_LORESERVE, SHN_XINDEX = 0xFF00, 0xFFFF
PT_NULL = 0

_DEBUG_PREFIXES = (".debug", ".zdebug", ".gnu.debuglto_.debug_", ".gnu.linkonce.wi.", ".line", ".stab")
_ANNOTATIONS = (".comment", ".gnu.build.attributes", ".GCC.command.line")
_DEBUGLINKS = (".gnu_debuglink", ".gnu_debugaltlink")


class ElfSkipped(OptimizerError):
    """The file is deliberately left alone; the message says why (for the report)."""


class ElfVerificationError(ElfSkipped):
    """A stripped result failed verification; the original is kept."""


@dataclass(frozen=True)
class StripResult:
    data: bytes
    mode: str  # the mode applied (relocatable objects get ``debug`` at most)
    removed: tuple[str, ...]  # names of the removed sections (for an archive: member:section)
    zeroed: int = 0  # bytes of removed sections that segments follow, zeroed in place (they compress away)


def is_debug_section(name: str) -> bool:
    """What BFD marks SEC_DEBUGGING in a non-allocated section, by name (as GNU strip decides)."""
    return name.startswith(_DEBUG_PREFIXES) or name == ".gdb_index"


@dataclass
class _Section:
    index: int
    name: str
    sh_name: int
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int
    addralign: int
    entsize: int

    @property
    def alloc(self) -> bool:
        return bool(self.flags & SHF_ALLOC)

    @property
    def file_size(self) -> int:
        return 0 if self.type == SHT_NOBITS else self.size

    def fields(self) -> tuple[int, ...]:
        return (self.sh_name, self.type, self.flags, self.addr, self.offset, self.size, self.link, self.info,
                self.addralign, self.entsize)  # fmt: skip


@dataclass(frozen=True)
class _Layout:
    """The raw facts about one ELF file, read with ``struct`` and checked for consistency."""

    is64: bool
    endian: str  # "<" or ">"
    e_type: int
    machine: int
    ehsize: int
    phoff: int
    phnum: int
    phentsize: int
    shoff: int
    shentsize: int
    shstrndx: int
    segments: tuple[tuple[int, int, int], ...]  # (p_type, p_offset, p_filesz)
    sections: tuple[_Section, ...]

    @property
    def shdr_format(self) -> str:
        return self.endian + ("IIQQQQIIQQ" if self.is64 else "IIIIIIIIII")


def _parse(data: bytes) -> _Layout:
    """Read and sanity-check the headers with ``struct`` (fast: most files have nothing to strip and are only
    read this far); ``ElfSkipped`` when they do not make sense. ``_parse_with_pyelftools`` cross-checks."""
    if len(data) < 52 or data[:4] != ELF_MAGIC:
        raise ElfSkipped("not an ELF file")
    if data[4] not in (1, 2) or data[5] not in (1, 2) or data[6] != 1:
        raise ElfSkipped("headers do not parse: unknown ELF class, byte order or version")
    is64 = data[4] == 2
    endian = "<" if data[5] == 1 else ">"
    try:
        ehdr = struct.unpack_from(endian + ("16sHHIQQQIHHHHHH" if is64 else "16sHHIIIIIHHHHHH"), data, 0)
    except struct.error as error:
        raise ElfSkipped(f"headers do not parse: {error}") from error
    e_type, machine = ehdr[1], ehdr[2]
    phoff, shoff = ehdr[5], ehdr[6]
    ehsize, phentsize, phnum, shentsize, shnum, shstrndx = ehdr[8:14]
    size = len(data)
    expected_eh, expected_ph, expected_sh = (64, 56, 64) if is64 else (52, 32, 40)
    if ehsize != expected_eh:
        raise ElfSkipped("headers do not parse: unexpected ELF header size")
    segments: list[tuple[int, int, int]] = []
    if phnum:
        if phentsize != expected_ph or phoff + phnum * phentsize > size:
            raise ElfSkipped("headers do not parse: program header table out of the file")
        pfmt = endian + ("IIQQQQQQ" if is64 else "IIIIIIII")
        for number in range(phnum):
            fields = struct.unpack_from(pfmt, data, phoff + number * phentsize)
            p_type, p_offset, p_filesz = (
                (fields[0], fields[2], fields[5]) if is64 else (fields[0], fields[1], fields[4])
            )
            if p_type != PT_NULL and p_filesz and p_offset + p_filesz > size:
                raise ElfSkipped(f"headers do not parse: segment {number} extends past the end of the file")
            segments.append((p_type, p_offset, p_filesz))
    sections: list[_Section] = []
    if shoff:
        if shentsize != expected_sh or shoff + expected_sh > size:
            raise ElfSkipped("headers do not parse: section header table out of the file")
        sfmt = endian + ("IIQQQQIIQQ" if is64 else "IIIIIIIIII")
        first = struct.unpack_from(sfmt, data, shoff)
        count = shnum or first[5]  # extended numbering: the count is in section 0's sh_size
        if shstrndx == SHN_XINDEX:
            shstrndx = first[6]
        if count == 0 or shoff + count * shentsize > size:
            raise ElfSkipped("headers do not parse: section header table out of the file")
        raw = [struct.unpack_from(sfmt, data, shoff + n * shentsize) for n in range(count)]
        if not 0 < shstrndx < count or raw[shstrndx][1] != SHT_STRTAB:
            raise ElfSkipped("headers do not parse: no valid section name table")
        names_at, names_size = raw[shstrndx][4], raw[shstrndx][5]
        if names_at + names_size > size:
            raise ElfSkipped("headers do not parse: section name table out of the file")
        names = data[names_at : names_at + names_size]
        for number, f in enumerate(raw):
            sh_name, sh_type, sh_offset, sh_size = f[0], f[1], f[4], f[5]
            if number and sh_type != SHT_NOBITS and sh_type != SHT_NULL and sh_offset + sh_size > size:
                raise ElfSkipped(f"headers do not parse: section {number} extends past the end of the file")
            if number and sh_name >= len(names):
                raise ElfSkipped(f"headers do not parse: section {number} has a name outside the name table")
            end = names.find(b"\0", sh_name)
            name = names[sh_name : end if end >= 0 else len(names)].decode("utf-8", "surrogateescape")
            sections.append(_Section(number, name if number else "", *f))
    return _Layout(
        is64, endian, e_type, machine, ehsize, phoff, phnum, phentsize, shoff, shentsize, shstrndx,
        tuple(segments), tuple(sections),
    )  # fmt: skip


class _ELFFile(ELFFile):
    """``ELFFile`` reusing its construct definitions per byte order, class, type, machine and OS ABI: building
    them is most of the 3 ms pyelftools takes to open a file. Same steps as ``ELFFile.__init__`` otherwise."""

    _structs: ClassVar[dict[tuple[Any, ...], Any]] = {}

    def __init__(self, stream: io.BytesIO) -> None:
        self.stream = stream
        self.stream.seek(0, io.SEEK_END)
        self.stream_len = self.stream.tell()
        self._identify_file()
        basic_key = (self.little_endian, self.elfclass)
        if basic_key not in self._structs:
            basic = ELFStructs(little_endian=self.little_endian, elfclass=self.elfclass)
            basic.create_basic_structs()
            self._structs[basic_key] = basic
        self.structs = self._structs[basic_key]
        self.header = self._parse_elf_header()
        key = (*basic_key, self["e_type"], self["e_machine"], self["e_ident"]["EI_OSABI"])
        if key not in self._structs:
            full = ELFStructs(little_endian=self.little_endian, elfclass=self.elfclass)
            full.create_basic_structs()
            full.create_advanced_structs(key[2], key[3], key[4])
            self._structs[key] = full
        self.structs = self._structs[key]
        self.stream.seek(0)
        self.e_ident_raw = self.stream.read(16)
        self.stream_loader = None


def _open_elf(data: bytes) -> ELFFile:
    try:
        return _ELFFile(io.BytesIO(data))
    except (AttributeError, TypeError):  # a pyelftools whose internals differ: the plain (slower) way
        return ELFFile(io.BytesIO(data))


def _parse_with_pyelftools(data: bytes, layout: _Layout, read_data: bool = True) -> None:
    """pyelftools must read the file as ``_parse`` did: class, byte order, header tables, the section name
    table, every section (name, offset, size; with ``read_data``, the data of the non-allocated ones) and
    every segment."""
    try:
        elf = _open_elf(data)
        header = elf.header
        agree = (
            (elf.elfclass == 64) == layout.is64
            and elf.little_endian == (layout.endian == "<")
            and elf.num_segments() == layout.phnum
            and elf.num_sections() == len(layout.sections)
            and (header["e_phoff"], header["e_shoff"]) == (layout.phoff, layout.shoff)
            and (not layout.sections or elf.get_shstrndx() == layout.shstrndx)
        )
        if not agree:
            raise ElfSkipped("headers do not parse: pyelftools reads them differently")
        for number, section in enumerate(elf.iter_sections()):
            mine = layout.sections[number]
            if (section.name, section["sh_offset"], section["sh_size"]) != (
                mine.name,
                mine.offset,
                mine.size,
            ):
                raise ElfSkipped(f"headers do not parse: pyelftools reads section {number} differently")
            if (
                read_data
                and number
                and section["sh_type"] != "SHT_NOBITS"
                and not section["sh_flags"] & SHF_ALLOC
            ):
                section.data()
        for number, segment in enumerate(elf.iter_segments()):
            if (segment["p_offset"], segment["p_filesz"]) != layout.segments[number][1:]:
                raise ElfSkipped(f"headers do not parse: pyelftools reads segment {number} differently")
    except ElfSkipped:
        raise
    except Exception as error:  # pyelftools on hostile input: ELFError, struct/zlib errors, KeyError...
        raise ElfSkipped(f"headers do not parse: {type(error).__name__}: {error}") from error


def _known_end(layout: _Layout) -> int:
    end = layout.ehsize
    if layout.phnum:
        end = max(end, layout.phoff + layout.phnum * layout.phentsize)
    for p_type, offset, filesz in layout.segments:
        if p_type != PT_NULL and filesz:
            end = max(end, offset + filesz)
    for section in layout.sections[1:]:
        if section.type != SHT_NULL:
            end = max(end, section.offset + section.file_size)
    if layout.sections:
        end = max(end, layout.shoff + len(layout.sections) * layout.shentsize)
    return end


def _check_strippable(data: bytes, layout: _Layout) -> None:
    if layout.e_type == ET_CORE:
        raise ElfSkipped("core dump")
    if layout.e_type not in (ET_REL, ET_EXEC, ET_DYN):
        raise ElfSkipped(
            f"ELF type {layout.e_type:#x} is not an executable, shared object or relocatable object"
        )
    if data.endswith(MODULE_SIGNATURE):
        raise ElfSkipped("signed kernel module (stripping would break the signature)")
    end = _known_end(layout)
    if len(data) > end and data[end:].strip(b"\0"):
        raise ElfSkipped(
            f"{len(data) - end} bytes appended after the last section/segment "
            "(self-extracting archive, PyInstaller, AppImage...)"
        )


def _segment_ranges(layout: _Layout) -> list[tuple[int, int]]:
    return [(off, off + size) for p_type, off, size in layout.segments if p_type != PT_NULL and size]


def _group_members(data: bytes, layout: _Layout, s: _Section) -> tuple[int, ...]:
    raw = data[s.offset : s.offset + s.file_size]
    if len(raw) < 4 or len(raw) % 4:
        raise ElfSkipped(f"{s.name}: malformed section group")
    return struct.unpack(layout.endian + f"{len(raw) // 4}I", raw)[1:]


def _wanted_drops(data: bytes, layout: _Layout, mode: str, keep_debuglink: bool) -> set[int]:
    drops: set[int] = set()
    for s in layout.sections[1:]:
        if s.alloc or s.index == layout.shstrndx:
            continue
        if (
            is_debug_section(s.name)
            or (mode in ("unneeded", "all") and s.type == SHT_SYMTAB)
            or (mode == "all" and s.name.startswith(_ANNOTATIONS))
            or (not keep_debuglink and s.name in _DEBUGLINKS)
        ):
            drops.add(s.index)
    # Whatever only served dropped sections goes too: relocations for them or through their symbols,
    # extended index tables, string tables nobody else refers to.
    changed = True
    while changed:
        changed = False
        for s in layout.sections[1:]:
            if s.index in drops or s.alloc or s.index == layout.shstrndx:
                continue
            gone = False
            if s.type in (SHT_REL, SHT_RELA):
                gone = s.info in drops or s.link in drops
            elif s.type in (SHT_SYMTAB_SHNDX, SHT_LLVM_ADDRSIG):
                gone = s.link in drops
            elif s.type == SHT_GROUP:
                members = _group_members(data, layout, s)
                gone = bool(members) and all(m in drops for m in members)
            elif s.type == SHT_STRTAB:
                users = [u for u in layout.sections[1:] if u.link == s.index and u.type != SHT_NULL]
                gone = bool(users) and all(u.index in drops for u in users)
            if gone:
                drops.add(s.index)
                changed = True
    return drops


def _uleb(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data):
            raise ElfSkipped("malformed .llvm_addrsig")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def _to_uleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


class _Rewriter:
    """New contents for ``.symtab`` and the sections that name its symbols, after sections were dropped."""

    def __init__(self, data: bytes, layout: _Layout, index_map: dict[int, int], drops: set[int]) -> None:
        self.data = data
        self.layout = layout
        self.index_map = index_map
        self.drops = drops
        self.contents: dict[int, bytes] = {}  # section index -> new bytes
        self.infos: dict[int, int] = {}  # section index -> new sh_info
        self.symbol_maps: dict[int, list[int]] = {}  # symtab index -> old symbol index -> new (-1: dropped)

    def _bytes(self, s: _Section) -> bytes:
        return self.data[s.offset : s.offset + s.file_size]

    def symtab(self, s: _Section, debugging_symbols: bool = False) -> None:
        """Renumber section indices and drop symbols defined in removed sections; with
        ``debugging_symbols`` also drop local file and section symbols and rebuild ``.strtab`` (as GNU
        ``strip --strip-debug`` does to executables and shared objects)."""
        e = self.layout.endian
        fmt = e + ("IBBHQQ" if self.layout.is64 else "IIIBBH")
        entry = struct.calcsize(fmt)
        if s.entsize != entry or s.size % entry:
            raise ElfSkipped(f"{s.name}: unexpected symbol entry size {s.entsize}")
        count = s.size // entry
        extended: list[int] | None = None  # SHT_SYMTAB_SHNDX: the real index of symbols marked SHN_XINDEX
        table = next(
            (t for t in self.layout.sections if t.type == SHT_SYMTAB_SHNDX and t.link == s.index), None
        )
        if table is not None:
            if table.size != count * 4:
                raise ElfSkipped(f"{table.name}: does not match {s.name}")
            extended = list(struct.unpack(e + f"{count}I", self._bytes(table)))
        shndx_at, info_at = (3, 1) if self.layout.is64 else (5, 3)
        symbols: list[tuple[int, ...]] = []
        new_extended: list[int] = []
        mapping: list[int] = []
        locals_kept = 0
        kept = 0
        for number, symbol in enumerate(struct.iter_unpack(fmt, self._bytes(s))):
            shndx = symbol[shndx_at]
            real = extended[number] if extended is not None and shndx == SHN_XINDEX else shndx
            x_value = extended[number] if extended is not None else 0
            if debugging_symbols and number and symbol[info_at] >> 4 == 0 and symbol[info_at] & 0xF in (3, 4):
                mapping.append(-1)  # STB_LOCAL STT_SECTION / STT_FILE
                continue
            if number and (0 < shndx < SHN_LORESERVE or (shndx == SHN_XINDEX and extended is not None)):
                if real in self.drops:
                    mapping.append(-1)
                    continue
                new_index = self.index_map.get(real)
                if new_index is None:
                    raise ElfSkipped(f"{s.name}: symbol {number} names a section that does not exist")
                if new_index >= SHN_LORESERVE and extended is None:
                    raise ElfSkipped(f"{s.name}: would need an extended section index table")
                stored, x_value = (SHN_XINDEX, new_index) if new_index >= SHN_LORESERVE else (new_index, 0)
                if stored != shndx:
                    fields = list(symbol)
                    fields[shndx_at] = stored
                    symbol = tuple(fields)
            if number < s.info:
                locals_kept += 1
            mapping.append(kept)
            kept += 1
            symbols.append(symbol)
            new_extended.append(x_value)
        strtab = self.layout.sections[s.link] if 0 < s.link < len(self.layout.sections) else None
        users = [t for t in self.layout.sections if t.link == s.link and t.type != SHT_NULL]
        if debugging_symbols and strtab is not None and strtab.type == SHT_STRTAB and users == [s]:
            if s.link == self.layout.shstrndx:
                raise ElfSkipped(f"{s.name}: its string table also names the sections")
            old_names = self._bytes(strtab)

            def name_of(offset: int) -> str:
                if offset >= len(old_names):
                    raise ElfSkipped(f"{s.name}: a symbol name lies outside {strtab.name}")
                end = old_names.find(b"\0", offset)
                return old_names[offset : end if end >= 0 else len(old_names)].decode(
                    "utf-8", "surrogateescape"
                )

            names = [name_of(symbol[0]) for symbol in symbols]
            new_names, offsets = _string_table(names)
            symbols = [(offsets[name], *symbol[1:]) for name, symbol in zip(names, symbols, strict=True)]
            self.contents[strtab.index] = new_names
        self.contents[s.index] = b"".join(struct.pack(fmt, *symbol) for symbol in symbols)
        self.infos[s.index] = locals_kept
        self.symbol_maps[s.index] = mapping
        if table is not None:
            self.contents[table.index] = struct.pack(e + f"{len(new_extended)}I", *new_extended)

    def _renumber(self, s: _Section, old: int) -> int:
        mapping = self.symbol_maps.get(s.link)
        if mapping is None:
            return old
        if old >= len(mapping) or mapping[old] < 0:
            raise ElfSkipped(f"{s.name}: refers to symbol {old}, which is defined in a removed section")
        return mapping[old]

    def relocations(self, s: _Section) -> None:
        mapping = self.symbol_maps.get(s.link)
        if mapping is None or all(new == old for old, new in enumerate(mapping)):
            return
        e = self.layout.endian
        raw = bytearray(self._bytes(s))
        if not s.entsize or s.size % s.entsize:
            raise ElfSkipped(f"{s.name}: unexpected relocation entry size {s.entsize}")
        word = 8 if self.layout.is64 else 4
        mips64el = self.layout.is64 and self.layout.machine == EM_MIPS and e == "<"
        for at in range(word, len(raw), s.entsize):
            if mips64el:  # r_sym is a 32-bit word first, then four one-byte fields
                (old,) = struct.unpack_from("<I", raw, at)
                struct.pack_into("<I", raw, at, self._renumber(s, old))
            elif self.layout.is64:
                (info,) = struct.unpack_from(e + "Q", raw, at)
                new = self._renumber(s, info >> 32)
                struct.pack_into(e + "Q", raw, at, (new << 32) | (info & 0xFFFFFFFF))
            else:
                (info,) = struct.unpack_from(e + "I", raw, at)
                new = self._renumber(s, info >> 8)
                struct.pack_into(e + "I", raw, at, (new << 8) | (info & 0xFF))
        if raw == self._bytes(s):
            return  # e.g. IRELATIVE relocations of a static executable name no symbol
        if s.alloc:
            raise ElfSkipped(f"{s.name}: lies in a segment and names symbols whose indices would change")
        self.contents[s.index] = bytes(raw)

    def group(self, s: _Section) -> None:
        e = self.layout.endian
        (flags,) = struct.unpack_from(e + "I", self.data, s.offset)
        members = [
            self.index_map[m] for m in _group_members(self.data, self.layout, s) if m in self.index_map
        ]
        self.contents[s.index] = struct.pack(e + f"{1 + len(members)}I", flags, *members)
        if s.link in self.symbol_maps:
            self.infos[s.index] = self._renumber(s, s.info)

    def addrsig(self, s: _Section) -> None:
        mapping = self.symbol_maps.get(s.link)
        if mapping is None:
            return
        raw = self._bytes(s)
        out = bytearray()
        at = 0
        while at < len(raw):
            old, at = _uleb(raw, at)
            if old < len(mapping) and mapping[old] >= 0:
                out += _to_uleb(mapping[old])
        self.contents[s.index] = bytes(out)


def _string_table(names: Iterable[str]) -> tuple[bytes, dict[str, int]]:
    """A string table holding ``names``, sharing tails as GNU ld and strip do (``.rela.text`` / ``.text``)."""
    encoded = {name: name.encode("utf-8", "surrogateescape") for name in set(names) if name}
    table = bytearray(b"\0")
    offsets: dict[str, int] = {"": 0}
    previous: bytes | None = None
    previous_at = 0
    for name in sorted(encoded, key=lambda n: encoded[n][::-1], reverse=True):
        raw = encoded[name]
        if previous is not None and previous.endswith(raw):
            offsets[name] = previous_at + len(previous) - len(raw)
            continue
        offsets[name] = len(table)
        previous, previous_at = raw, len(table)
        table += raw + b"\0"
    return bytes(table), offsets


def _align(value: int, alignment: int) -> int:
    if alignment <= 1:
        return value
    return (value + alignment - 1) // alignment * alignment


def strip_elf(data: bytes, mode: str = "unneeded", keep_debuglink: bool = True) -> StripResult | None:
    """Strip one ELF file; ``None`` when nothing would be removed; ``ElfSkipped`` for files left alone."""
    if mode not in MODES:
        raise ValueError(f"unknown strip mode {mode!r} (expected one of {', '.join(MODES)})")
    layout = _parse(data)
    _check_strippable(data, layout)
    if not layout.sections:
        return None  # no section headers: nothing a section stripper can remove
    if layout.e_type == ET_REL:
        mode = "debug"
    sections = layout.sections
    drops = _wanted_drops(data, layout, mode, keep_debuglink)
    if not drops:
        return None
    _parse_with_pyelftools(
        data, layout, read_data=False
    )  # a file we change must read the same with pyelftools
    ranges = _segment_ranges(layout)

    def pinned(s: _Section) -> bool:
        if s.file_size == 0 or s.type == SHT_NULL:
            return False
        if s.alloc and layout.e_type != ET_REL:
            return True
        return any(s.offset < end and start < s.offset + s.file_size for start, end in ranges)

    if any(pinned(sections[i]) for i in drops):
        raise ElfSkipped("a section to remove lies inside a segment")
    kept = [s for s in sections if s.index not in drops]
    for s in kept:
        # A corrupt alignment would make the writer pad by gigabytes: such a file is not ours to rewrite.
        if s.addralign > 1 and (s.addralign & (s.addralign - 1) or s.addralign > max(1 << 16, len(data))):
            raise ElfSkipped(f"{s.name or s.index}: implausible section alignment {s.addralign}")
    index_map = {s.index: new for new, s in enumerate(kept)}
    if layout.e_type != ET_REL:
        _check_dynamic_symbols(data, layout, index_map)

    rewriter = _Rewriter(data, layout, index_map, drops)
    renumbered = any(old != new for old, new in index_map.items())
    debugging_symbols = mode == "debug" and layout.e_type != ET_REL
    for s in kept:
        if s.type == SHT_SYMTAB and (renumbered or debugging_symbols):
            rewriter.symtab(s, debugging_symbols)
    for s in kept:
        if s.index in rewriter.contents:
            continue
        if s.type in (SHT_REL, SHT_RELA):
            rewriter.relocations(s)
        elif s.type == SHT_GROUP:
            rewriter.group(s)
        elif s.type == SHT_LLVM_ADDRSIG:
            rewriter.addrsig(s)
        elif s.link in rewriter.symbol_maps and s.type != SHT_SYMTAB_SHNDX and s.type != SHT_STRTAB:
            mapping = rewriter.symbol_maps[s.link]
            if any(new != old for old, new in enumerate(mapping)):
                raise ElfSkipped(f"{s.name}: section type {s.type:#x} names symbols and is not rewritten")
    for index in rewriter.contents:
        if pinned(sections[index]):
            raise ElfSkipped(f"{sections[index].name}: would need rewriting but lies inside a segment")

    fixed_end = layout.ehsize
    if layout.phnum:
        fixed_end = max(fixed_end, layout.phoff + layout.phnum * layout.phentsize)
    for _start, end in ranges:
        fixed_end = max(fixed_end, end)
    for s in kept:
        if pinned(s) and s.index not in rewriter.contents:
            fixed_end = max(fixed_end, s.offset + s.file_size)

    def below(s: _Section) -> bool:  # copied verbatim with everything up to the last segment anyway
        return s.file_size > 0 and s.offset + s.file_size <= fixed_end

    shstrtab = sections[layout.shstrndx]
    shared_names = any(s.link == layout.shstrndx for s in kept if s.index != layout.shstrndx)
    if shared_names or pinned(shstrtab) or below(shstrtab):
        names_table, name_offsets = None, {s.name: s.sh_name for s in kept}
    else:
        names_table, name_offsets = _string_table(s.name for s in kept)
    protected = [(0, layout.ehsize), *ranges]
    if layout.phnum:
        protected.append((layout.phoff, layout.phoff + layout.phnum * layout.phentsize))
    protected += [(s.offset, s.offset + s.file_size) for s in kept if s.file_size]
    # Bytes that segments follow cannot go; those of removed sections (and of the old section header table)
    # become zeros, which cost nothing in a compressed layer, and the new section table goes there if it fits.
    spans = [(s.offset, min(fixed_end, s.offset + s.file_size)) for s in (sections[i] for i in drops)]
    spans.append((layout.shoff, layout.shoff + len(sections) * layout.shentsize))
    dead = _merge(
        _subtract([(a, min(b, fixed_end)) for a, b in spans if a < fixed_end], protected), protected
    )
    zeroed = sum(end - start for start, end in dead)
    view = memoryview(data)
    head = bytearray(data[: layout.ehsize])  # the ELF header gets the new section table fields below
    pieces: list[bytes | bytearray | memoryview] = [head]
    middle = bytearray()
    if dead:  # removed sections that segments follow: their bytes cannot go, they become zeros
        middle = bytearray(view[layout.ehsize : fixed_end])
        for start, end in dead:
            middle[start - layout.ehsize : end - layout.ehsize] = bytes(end - start)
        pieces.append(middle)
    else:
        pieces.append(view[layout.ehsize : fixed_end])
    length = max(fixed_end, layout.ehsize)
    headers: list[_Section] = []

    def stays(s: _Section) -> bool:
        if s.index in rewriter.contents:
            return False
        return pinned(s) or (s.alloc and layout.e_type != ET_REL) or below(s)

    moving = sorted((s for s in kept if s.index and not stays(s)), key=lambda s: (s.offset, s.index))
    free = list(dead)  # zeroed spans that moved sections and the section table may reuse

    def carve(size: int, alignment: int) -> int | None:
        for number, (start, end) in enumerate(free):
            at = _align(start, alignment)
            if at + size <= end:
                free[number : number + 1] = [
                    span for span in ((start, at), (at + size, end)) if span[1] > span[0]
                ]
                return at
        return None

    def put(content: bytes | memoryview, alignment: int) -> int:
        nonlocal length, zeroed
        at = carve(len(content), alignment) if content else None
        if at is not None:
            middle[at - layout.ehsize : at - layout.ehsize + len(content)] = content
            zeroed -= len(content)
            return at
        at = _align(length, alignment)
        pieces.extend([bytes(at - length), content])
        length = at + len(content)
        return at

    new_offsets: dict[int, tuple[int, int]] = {}
    for s in moving:
        if s.type == SHT_NOBITS:
            new_offsets[s.index] = (_align(length, s.addralign), s.size)
            continue
        content: bytes | memoryview
        if s.index == layout.shstrndx and names_table is not None:
            content = names_table
        else:
            content = rewriter.contents.get(s.index, view[s.offset : s.offset + s.file_size])
        new_offsets[s.index] = (put(content, s.addralign), len(content))
    for s in kept:
        new = _Section(**vars(s))
        new.sh_name = name_offsets.get(s.name, s.sh_name) if s.index else s.sh_name
        if s.index in new_offsets:
            new.offset, new.size = new_offsets[s.index]
        if s.index:
            new.link = index_map.get(s.link, 0) if 0 < s.link < len(sections) else s.link
            if s.index in rewriter.infos:
                new.info = rewriter.infos[s.index]
            elif (s.type in (SHT_REL, SHT_RELA) or s.flags & SHF_INFO_LINK) and 0 < s.info < len(sections):
                new.info = index_map.get(s.info, 0)
        headers.append(new)
    count = len(headers)
    shstrndx = index_map[layout.shstrndx]
    if count >= SHN_LORESERVE:
        headers[0].size = count
    elif sections[0].size == len(sections):
        headers[0].size = 0
    if shstrndx >= SHN_LORESERVE:
        headers[0].link = shstrndx
    elif sections[0].link == layout.shstrndx and layout.shstrndx >= SHN_LORESERVE:
        headers[0].link = 0
    table = b"".join(struct.pack(layout.shdr_format, *h.fields()) for h in headers)
    shoff = put(table, 8 if layout.is64 else 4)
    if length > len(data) or (length == len(data) and not zeroed):
        return None  # no smaller: keep the original
    e = layout.endian
    at_shoff, at_count = (40, 60) if layout.is64 else (32, 48)
    struct.pack_into(e + ("Q" if layout.is64 else "I"), head, at_shoff, shoff)
    struct.pack_into(
        e + "HH", head, at_count, 0 if count >= SHN_LORESERVE else count,
        SHN_XINDEX if shstrndx >= SHN_LORESERVE else shstrndx,
    )  # fmt: skip
    result = b"".join(pieces)
    pieces.clear()  # the copies made for zeroing go before verification reads the result
    middle = bytearray()
    removed = tuple(sections[i].name for i in sorted(drops))
    verify_stripped(data, result, layout, {s.index for s in kept if s.index not in rewriter.contents})
    return StripResult(result, mode, removed, zeroed)


def _same(a: bytes, a_at: int, b: bytes, b_at: int, size: int, chunk: int = 1 << 20) -> bool:
    """``a[a_at:a_at+size] == b[b_at:b_at+size]``, compared a chunk at a time (big files are not copied)."""
    if size <= 0:
        return True
    if a_at + size > len(a) or b_at + size > len(b):
        return False
    for at in range(0, size, chunk):
        step = min(chunk, size - at)
        if a[a_at + at : a_at + at + step] != b[b_at + at : b_at + at + step]:
            return False
    return True


def _merge(spans: list[tuple[int, int]], holes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Join spans that overlap or are separated only by a little padding that no hole covers."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if out:
            gap = (out[-1][1], start)
            if start <= out[-1][1] or (start - out[-1][1] <= 64 and _subtract([gap], holes) == [gap]):
                out[-1] = (out[-1][0], max(end, out[-1][1]))
                continue
        out.append((start, end))
    return out


def _subtract(spans: Iterable[tuple[int, int]], holes: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of ``spans`` outside every hole (half-open byte ranges)."""
    ordered = sorted((a, b) for a, b in holes if b > a)
    out: list[tuple[int, int]] = []
    for start, end in spans:
        at = start
        for hole_start, hole_end in ordered:
            if hole_end <= at or hole_start >= end:
                continue
            if hole_start > at:
                out.append((at, hole_start))
            at = max(at, hole_end)
            if at >= end:
                break
        if at < end:
            out.append((at, end))
    return out


def _check_dynamic_symbols(data: bytes, layout: _Layout, index_map: dict[int, int]) -> None:
    """The dynamic symbol table lies in a segment and is never rewritten: refuse when its section indices
    would point elsewhere after sections are removed (GNU strip would rewrite mapped bytes there)."""
    changed = {old for old, new in index_map.items() if old != new}
    first_change = min(changed | {i for i in range(len(layout.sections)) if i not in index_map}, default=None)
    if first_change is None:
        return
    fmt = layout.endian + ("IBBHQQ" if layout.is64 else "IIIBBH")
    shndx_at = 3 if layout.is64 else 5
    for s in layout.sections:
        if s.type != 11 or s.entsize != struct.calcsize(fmt) or s.size % s.entsize:  # SHT_DYNSYM
            continue
        for symbol in struct.iter_unpack(fmt, data[s.offset : s.offset + s.size]):
            shndx = symbol[shndx_at]
            if first_change <= shndx < SHN_LORESERVE:
                raise ElfSkipped(
                    f"{s.name} names section {shndx}, whose index would change (it lies in a segment)"
                )


def verify_stripped(
    original: bytes,
    stripped: bytes,
    layout: _Layout | None = None,
    unchanged: set[int] | None = None,
) -> None:
    """Raise ``ElfVerificationError`` unless ``stripped`` is a faithful strip of ``original``.

    It must parse (our bounds-checked header reader, and pyelftools must read every section and segment the
    same way), keep the ELF header but for the section
    table fields, keep the program headers and every byte that a segment maps, keep the dynamic section, keep
    every allocated section's header and bytes and every other section's bytes unless rewritten, and be no
    larger.
    """
    if layout is None:
        layout = _parse(original)
    try:
        new = _parse(stripped)
        _parse_with_pyelftools(stripped, new)
    except ElfSkipped as error:
        raise ElfVerificationError(f"stripped result does not parse: {error}") from error
    if len(stripped) > len(original):
        raise ElfVerificationError("stripped result is larger than the original")
    same = (layout.is64, layout.endian, layout.e_type, layout.machine, layout.phoff, layout.phnum) == (
        new.is64,
        new.endian,
        new.e_type,
        new.machine,
        new.phoff,
        new.phnum,
    )
    if not same:
        raise ElfVerificationError("ELF header changed")
    ehsize = layout.ehsize
    shoff_at, count_at = (40, 60) if layout.is64 else (32, 48)
    width = 8 if layout.is64 else 4
    masked = [(shoff_at, shoff_at + width), (count_at, count_at + 4)]

    def without_section_fields(blob: bytes) -> bytes:
        head = bytearray(blob[:ehsize])
        for start, end in masked:
            head[start:end] = bytes(end - start)
        return bytes(head)

    if without_section_fields(original) != without_section_fields(stripped):
        raise ElfVerificationError("ELF header changed beyond the section table fields")
    if layout.segments != new.segments:
        raise ElfVerificationError("program headers changed")
    if layout.phnum:
        table = slice(layout.phoff, layout.phoff + layout.phnum * layout.phentsize)
        if original[table] != stripped[table]:
            raise ElfVerificationError("program header table bytes changed")
    for p_type, offset, filesz in layout.segments:
        if p_type == PT_NULL or not filesz:
            continue
        start = offset
        if start < ehsize:  # the ELF header itself was compared above, with its section fields masked
            start = min(ehsize, offset + filesz)
        if not _same(original, start, stripped, start, offset + filesz - start):
            raise ElfVerificationError(
                f"bytes mapped by segment type {p_type:#x} at offset {offset:#x} changed"
            )
    old_by_name: dict[str, list[_Section]] = {}
    for s in layout.sections[1:]:
        old_by_name.setdefault(s.name, []).append(s)
    for s in new.sections[1:]:
        candidates = old_by_name.get(s.name, [])
        if not candidates:
            raise ElfVerificationError(f"section {s.name!r} appeared from nowhere")
        old = candidates.pop(0)
        if (old.type, old.flags, old.addr, old.entsize) != (s.type, s.flags, s.addr, s.entsize):
            raise ElfVerificationError(f"section {s.name!r} header changed")
        if old.alloc and layout.e_type != ET_REL and (old.offset, old.size) != (s.offset, s.size):
            raise ElfVerificationError(f"allocated section {s.name!r} moved")
        compare = unchanged is not None and old.index in unchanged and old.index != layout.shstrndx
        if compare and (
            old.file_size != s.file_size or not _same(original, old.offset, stripped, s.offset, old.file_size)
        ):
            raise ElfVerificationError(f"section {s.name!r} contents changed")
    old_dynamic = [s for s in layout.sections if s.type == 6]
    new_dynamic = [s for s in new.sections if s.type == 6]
    if [(s.offset, s.size, original[s.offset : s.offset + s.size]) for s in old_dynamic] != [
        (s.offset, s.size, stripped[s.offset : s.offset + s.size]) for s in new_dynamic
    ]:
        raise ElfVerificationError("dynamic section changed")
    names = [s.name for s in new.sections]
    if names[new.shstrndx] != layout.sections[layout.shstrndx].name:
        raise ElfVerificationError("section name table lost")


# --- static archives -------------------------------------------------------------------------------------

_AR_HEADER = 60


def _ar_members(data: bytes) -> list[tuple[bytes, int, int]]:
    """(header, data offset, size) of every member; ``ElfSkipped`` when the archive is malformed."""
    members = []
    at = len(AR_MAGIC)
    while at < len(data):
        if at + _AR_HEADER > len(data):
            raise ElfSkipped("malformed archive: truncated member header")
        header = data[at : at + _AR_HEADER]
        if header[58:60] != b"`\n":
            raise ElfSkipped("malformed archive: bad member header")
        try:
            size = int(header[48:58].decode("ascii").strip() or "0")
        except (UnicodeDecodeError, ValueError) as error:
            raise ElfSkipped("malformed archive: bad member size") from error
        start = at + _AR_HEADER
        if start + size > len(data):
            raise ElfSkipped("malformed archive: member extends past the end")
        members.append((header, start, size))
        at = start + size + (size & 1)
    return members


def strip_archive(data: bytes, keep_debuglink: bool = True) -> StripResult | None:
    """Strip debugging sections from every ELF member of a GNU/SysV static archive (``!<arch>``).

    Members keep their order and headers (only the size field changes); the symbol index (``/`` and
    ``/SYM64/``) has its member offsets rewritten, its symbols do not change since only debugging sections
    (and their section symbols, never in the index) go. BSD-style archives (``#1/`` names, ``__.SYMDEF``) and
    thin archives are left alone.
    """
    if not data.startswith(AR_MAGIC):
        raise ElfSkipped("not a static archive")
    members = _ar_members(data)
    new_members: list[tuple[bytes, bytes]] = []
    removed: list[str] = []
    longnames = b""
    for header, start, size in members:
        name = header[:16].rstrip(b" ")
        body = data[start : start + size]
        if name.startswith(b"#1/") or name.startswith(b"__.SYMDEF"):
            raise ElfSkipped("BSD-style archive")
        if name == b"//":
            longnames = body
        if body.startswith(ELF_MAGIC) and name not in (b"/", b"/SYM64/", b"//"):
            label = _member_name(name, longnames)
            try:
                stripped = strip_elf(body, "debug", keep_debuglink)
            except ElfSkipped:
                stripped = None  # that member stays as it is; the others are still stripped
            if stripped is not None:
                body = stripped.data
                removed += [f"{label}:{section}" for section in stripped.removed]
        new_members.append((header, body))
    if not removed:
        return None
    # Old member offset -> new member offset, for the symbol index.
    offsets: dict[int, int] = {}
    old_at = new_at = len(AR_MAGIC)
    for (_, _start, size), (_, body) in zip(members, new_members, strict=True):
        offsets[old_at] = new_at
        old_at += _AR_HEADER + size + (size & 1)
        new_at += _AR_HEADER + len(body) + (len(body) & 1)
    out = bytearray(AR_MAGIC)
    for header, body in new_members:
        name = header[:16].rstrip(b" ")
        if name in (b"/", b"/SYM64/"):
            body = _rewrite_armap(body, offsets, 8 if name == b"/SYM64/" else 4)
        size_field = str(len(body)).encode("ascii").ljust(10)
        out += header[:48] + size_field + header[58:60] + body
        if len(body) & 1:
            out += b"\n"
    result = bytes(out)
    if len(result) >= len(data):
        return None
    _verify_archive(data, result)
    return StripResult(result, "debug", tuple(removed))


def _member_name(name: bytes, longnames: bytes) -> str:
    if name.startswith(b"/") and name[1:].isdigit():
        at = int(name[1:])
        end = longnames.find(b"/\n", at)
        name = longnames[at : end if end >= 0 else len(longnames)]
    return name.rstrip(b"/").decode("utf-8", "surrogateescape")


def _rewrite_armap(body: bytes, offsets: dict[int, int], width: int) -> bytes:
    code = ">Q" if width == 8 else ">I"
    if len(body) < width:
        raise ElfSkipped("malformed archive symbol index")
    (count,) = struct.unpack_from(code, body, 0)
    if width + count * width > len(body):
        raise ElfSkipped("malformed archive symbol index")
    out = bytearray(body)
    for number in range(count):
        at = width + number * width
        (old,) = struct.unpack_from(code, body, at)
        if old not in offsets:
            raise ElfSkipped("archive symbol index points between members")
        struct.pack_into(code, out, at, offsets[old])
    return bytes(out)


def _verify_archive(original: bytes, stripped: bytes) -> None:
    old = _ar_members(original)
    new = _ar_members(stripped)
    if len(old) != len(new):
        raise ElfVerificationError("archive member count changed")
    for (old_header, old_start, old_size), (new_header, new_start, new_size) in zip(old, new, strict=True):
        if old_header[:48] != new_header[:48]:
            raise ElfVerificationError("archive member header changed")
        if old_header[:16].rstrip(b" ") in (b"/", b"/SYM64/"):
            continue  # the symbol index: only its offsets were rewritten
        old_body = original[old_start : old_start + old_size]
        new_body = stripped[new_start : new_start + new_size]
        if old_body == new_body:
            continue
        if not old_body.startswith(ELF_MAGIC):
            raise ElfVerificationError("a non-ELF archive member changed")
        verify_stripped(old_body, new_body)


def section_names(data: bytes) -> list[str]:
    """The section names of an ELF file, in index order (for tests and reports)."""
    layout = _parse(data)
    return [s.name for s in layout.sections[1:]]
