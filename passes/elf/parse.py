"""Reading an ELF file's headers: the fast bounds-checked reader, and pyelftools as a second opinion.

``parse`` reads the ELF header, the program headers and the section headers with ``struct`` (every offset
checked against the file): most files in an image have nothing to strip and are read no further.
``cross_check`` makes pyelftools read the same file and must find the same class, byte order, tables, sections
and segments (its construct definitions are built once per kind of file: ``_ELFFile``). Any disagreement or
damage is ``ElfSkipped``: the file is left alone, with the reason.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import Any, ClassVar

from elftools.elf.elffile import ELFFile
from elftools.elf.structs import ELFStructs

from optimizer.errors import OptimizerError

__all__ = [
    "ELF_MAGIC",
    "ElfLayout",
    "ElfSkipped",
    "Section",
    "cross_check",
    "group_members",
    "parse",
    "section_names",
    "segment_ranges",
]

ELF_MAGIC = b"\x7fELF"
ET_REL, ET_EXEC, ET_DYN, ET_CORE = 1, 2, 3, 4
EM_MIPS = 8
SHT_NULL, SHT_SYMTAB, SHT_STRTAB, SHT_RELA, SHT_NOBITS, SHT_REL = 0, 2, 3, 4, 8, 9
SHT_GROUP, SHT_SYMTAB_SHNDX = 17, 18
SHT_LLVM_ADDRSIG = 0x6FFF4C03
SHF_ALLOC, SHF_INFO_LINK = 0x2, 0x40
SHN_LORESERVE, SHN_XINDEX = 0xFF00, 0xFFFF
PT_NULL = 0


class ElfSkipped(OptimizerError):
    """The file is deliberately left alone; the message says why (for the report)."""


@dataclass
class Section:
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
class ElfLayout:
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
    sections: tuple[Section, ...]

    @property
    def shdr_format(self) -> str:
        return self.endian + ("IIQQQQIIQQ" if self.is64 else "IIIIIIIIII")


def parse(data: bytes) -> ElfLayout:
    """Read and sanity-check the headers with ``struct`` (fast: most files have nothing to strip and are only
    read this far); ``ElfSkipped`` when they do not make sense. ``cross_check`` cross-checks."""
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
    sections: list[Section] = []
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
            sections.append(Section(number, name if number else "", *f))
    return ElfLayout(
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


def cross_check(data: bytes, layout: ElfLayout, read_data: bool = True) -> None:
    """pyelftools must read the file as ``parse`` did: class, byte order, header tables, the section name
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


def segment_ranges(layout: ElfLayout) -> list[tuple[int, int]]:
    return [(off, off + size) for p_type, off, size in layout.segments if p_type != PT_NULL and size]


def group_members(data: bytes, layout: ElfLayout, s: Section) -> tuple[int, ...]:
    raw = data[s.offset : s.offset + s.file_size]
    if len(raw) < 4 or len(raw) % 4:
        raise ElfSkipped(f"{s.name}: malformed section group")
    return struct.unpack(layout.endian + f"{len(raw) // 4}I", raw)[1:]


def section_names(data: bytes) -> list[str]:
    """The section names of an ELF file, in index order (for tests and reports)."""
    layout = parse(data)
    return [s.name for s in layout.sections[1:]]
