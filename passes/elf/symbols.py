"""Rewriting ``.symtab`` and the sections that name its symbols, after sections were removed.

Symbols defined in removed sections go, section indices are renumbered (with ``SHT_SYMTAB_SHNDX`` for indices
past ``SHN_LORESERVE``), and the relocations, section groups and ``.llvm_addrsig`` that name symbols follow
the new symbol numbers. ``string_table`` builds string tables as GNU ld and strip do (tails shared).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from .parse import (
    EM_MIPS,
    SHN_LORESERVE,
    SHN_XINDEX,
    SHT_NULL,
    SHT_STRTAB,
    SHT_SYMTAB_SHNDX,
    ElfLayout,
    ElfSkipped,
    Section,
    group_members,
)

__all__ = ["SymbolRewriter", "string_table"]


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


class SymbolRewriter:
    """New contents for ``.symtab`` and the sections that name its symbols, after sections were dropped."""

    def __init__(self, data: bytes, layout: ElfLayout, index_map: dict[int, int], drops: set[int]) -> None:
        self.data = data
        self.layout = layout
        self.index_map = index_map
        self.drops = drops
        self.contents: dict[int, bytes] = {}  # section index -> new bytes
        self.infos: dict[int, int] = {}  # section index -> new sh_info
        self.symbol_maps: dict[int, list[int]] = {}  # symtab index -> old symbol index -> new (-1: dropped)

    def _bytes(self, s: Section) -> bytes:
        return self.data[s.offset : s.offset + s.file_size]

    def symtab(self, s: Section, debugging_symbols: bool = False) -> None:
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
            new_names, offsets = string_table(names)
            symbols = [(offsets[name], *symbol[1:]) for name, symbol in zip(names, symbols, strict=True)]
            self.contents[strtab.index] = new_names
        self.contents[s.index] = b"".join(struct.pack(fmt, *symbol) for symbol in symbols)
        self.infos[s.index] = locals_kept
        self.symbol_maps[s.index] = mapping
        if table is not None:
            self.contents[table.index] = struct.pack(e + f"{len(new_extended)}I", *new_extended)

    def _renumber(self, s: Section, old: int) -> int:
        mapping = self.symbol_maps.get(s.link)
        if mapping is None:
            return old
        if old >= len(mapping) or mapping[old] < 0:
            raise ElfSkipped(f"{s.name}: refers to symbol {old}, which is defined in a removed section")
        return mapping[old]

    def relocations(self, s: Section) -> None:
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

    def group(self, s: Section) -> None:
        e = self.layout.endian
        (flags,) = struct.unpack_from(e + "I", self.data, s.offset)
        members = [self.index_map[m] for m in group_members(self.data, self.layout, s) if m in self.index_map]
        self.contents[s.index] = struct.pack(e + f"{1 + len(members)}I", flags, *members)
        if s.link in self.symbol_maps:
            self.infos[s.index] = self._renumber(s, s.info)

    def addrsig(self, s: Section) -> None:
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


def string_table(names: Iterable[str]) -> tuple[bytes, dict[str, int]]:
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
