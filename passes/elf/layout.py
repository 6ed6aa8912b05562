"""Stripping one ELF file: which sections go, and laying out the file without them.

Everything up to the end of the last segment (and every allocated section) is copied verbatim, the kept
non-allocated sections after it are laid out in their original order and alignment, then the new
``.shstrtab`` and the section header table. Only the ELF header's ``e_shoff``/``e_shnum``/``e_shstrndx``
change in the mapped bytes, as with GNU strip. Removed sections that a segment follows (files patchelf edited)
cannot go without moving that segment: their bytes become zeros, which cost nothing in a compressed layer,
and moved sections and the new section table go there when they fit. Segments never move.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from .parse import (
    ET_CORE,
    ET_DYN,
    ET_EXEC,
    ET_REL,
    PT_NULL,
    SHF_INFO_LINK,
    SHN_LORESERVE,
    SHN_XINDEX,
    SHT_GROUP,
    SHT_LLVM_ADDRSIG,
    SHT_NOBITS,
    SHT_NULL,
    SHT_REL,
    SHT_RELA,
    SHT_STRTAB,
    SHT_SYMTAB,
    SHT_SYMTAB_SHNDX,
    ElfLayout,
    ElfSkipped,
    Section,
    cross_check,
    group_members,
    parse,
    segment_ranges,
)
from .symbols import SymbolRewriter, string_table
from .verify import verify_stripped

__all__ = ["MODES", "StripResult", "is_debug_section", "strip_elf"]

MODES = ("debug", "unneeded", "all")
MODULE_SIGNATURE = b"~Module signature appended~\n"

_DEBUG_PREFIXES = (".debug", ".zdebug", ".gnu.debuglto_.debug_", ".gnu.linkonce.wi.", ".line", ".stab")
_ANNOTATIONS = (".comment", ".gnu.build.attributes", ".GCC.command.line")
_DEBUGLINKS = (".gnu_debuglink", ".gnu_debugaltlink")


@dataclass(frozen=True)
class StripResult:
    data: bytes
    mode: str  # the mode applied (relocatable objects get ``debug`` at most)
    removed: tuple[str, ...]  # names of the removed sections (for an archive: member:section)
    zeroed: int = 0  # bytes of removed sections that segments follow, zeroed in place (they compress away)


def is_debug_section(name: str) -> bool:
    """What BFD marks SEC_DEBUGGING in a non-allocated section, by name (as GNU strip decides)."""
    return name.startswith(_DEBUG_PREFIXES) or name == ".gdb_index"


def _known_end(layout: ElfLayout) -> int:
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


def _check_strippable(data: bytes, layout: ElfLayout) -> None:
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


def _wanted_drops(data: bytes, layout: ElfLayout, mode: str, keep_debuglink: bool) -> set[int]:
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
                members = group_members(data, layout, s)
                gone = bool(members) and all(m in drops for m in members)
            elif s.type == SHT_STRTAB:
                users = [u for u in layout.sections[1:] if u.link == s.index and u.type != SHT_NULL]
                gone = bool(users) and all(u.index in drops for u in users)
            if gone:
                drops.add(s.index)
                changed = True
    return drops


def _align(value: int, alignment: int) -> int:
    if alignment <= 1:
        return value
    return (value + alignment - 1) // alignment * alignment


def strip_elf(data: bytes, mode: str = "unneeded", keep_debuglink: bool = True) -> StripResult | None:
    """Strip one ELF file; ``None`` when nothing would be removed; ``ElfSkipped`` for files left alone."""
    if mode not in MODES:
        raise ValueError(f"unknown strip mode {mode!r} (expected one of {', '.join(MODES)})")
    layout = parse(data)
    _check_strippable(data, layout)
    if not layout.sections:
        return None  # no section headers: nothing a section stripper can remove
    if layout.e_type == ET_REL:
        mode = "debug"
    drops = _wanted_drops(data, layout, mode, keep_debuglink)
    if not drops:
        return None
    cross_check(data, layout, read_data=False)  # a file we change must read the same with pyelftools
    plan = _plan(data, layout, drops)
    _rewrite_symbols(plan, debugging_symbols=mode == "debug" and layout.e_type != ET_REL)
    plan.fixed_end = _fixed_end(plan)
    out = _Output(data, layout, plan.fixed_end, _dead_spans(plan))
    names_table, name_offsets = _section_names(plan)
    new_offsets = _move_sections(plan, out, names_table)
    table, count, shstrndx = _section_table(plan, new_offsets, name_offsets)
    shoff = out.put(table, 8 if layout.is64 else 4)
    if out.length > len(data) or (out.length == len(data) and not out.zeroed):
        return None  # no smaller: keep the original
    result = out.finish(shoff, count, shstrndx)
    removed = tuple(layout.sections[i].name for i in sorted(drops))
    unchanged = {s.index for s in plan.kept if s.index not in plan.rewriter.contents}
    verify_stripped(data, result, layout, unchanged)
    return StripResult(result, mode, removed, out.zeroed)


@dataclass
class _Plan:
    """What stays, what is pinned in place by a segment, and the new contents of rewritten sections."""

    data: bytes
    layout: ElfLayout
    drops: set[int]
    kept: list[Section]
    index_map: dict[int, int]  # old section index -> new
    ranges: list[tuple[int, int]]  # file bytes that segments map
    rewriter: SymbolRewriter
    fixed_end: int = 0  # everything before this offset is copied verbatim

    def pinned(self, s: Section) -> bool:
        """A segment maps the section's bytes (or, outside relocatable objects, it is allocated)."""
        if s.file_size == 0 or s.type == SHT_NULL:
            return False
        if s.alloc and self.layout.e_type != ET_REL:
            return True
        return any(s.offset < end and start < s.offset + s.file_size for start, end in self.ranges)

    def below(self, s: Section) -> bool:
        """Copied verbatim with everything up to the last segment anyway."""
        return s.file_size > 0 and s.offset + s.file_size <= self.fixed_end

    def stays(self, s: Section) -> bool:
        if s.index in self.rewriter.contents:
            return False
        return self.pinned(s) or (s.alloc and self.layout.e_type != ET_REL) or self.below(s)


def _plan(data: bytes, layout: ElfLayout, drops: set[int]) -> _Plan:
    sections = layout.sections
    ranges = segment_ranges(layout)
    kept = [s for s in sections if s.index not in drops]
    index_map = {s.index: new for new, s in enumerate(kept)}
    plan = _Plan(data, layout, drops, kept, index_map, ranges, SymbolRewriter(data, layout, index_map, drops))
    if any(plan.pinned(sections[i]) for i in drops):
        raise ElfSkipped("a section to remove lies inside a segment")
    for s in kept:
        # A corrupt alignment would make the writer pad by gigabytes: such a file is not ours to rewrite.
        if s.addralign > 1 and (s.addralign & (s.addralign - 1) or s.addralign > max(1 << 16, len(data))):
            raise ElfSkipped(f"{s.name or s.index}: implausible section alignment {s.addralign}")
    if layout.e_type != ET_REL:
        _check_dynamic_symbols(data, layout, index_map)
    return plan


def _rewrite_symbols(plan: _Plan, debugging_symbols: bool) -> None:
    """New contents for the symbol table and whatever names its symbols; refused where a segment maps them."""
    rewriter = plan.rewriter
    renumbered = any(old != new for old, new in plan.index_map.items())
    for s in plan.kept:
        if s.type == SHT_SYMTAB and (renumbered or debugging_symbols):
            rewriter.symtab(s, debugging_symbols)
    for s in plan.kept:
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
    sections = plan.layout.sections
    for index in rewriter.contents:
        if plan.pinned(sections[index]):
            raise ElfSkipped(f"{sections[index].name}: would need rewriting but lies inside a segment")


def _fixed_end(plan: _Plan) -> int:
    """The end of what is copied verbatim: headers, every segment, every pinned section left as it is."""
    layout = plan.layout
    fixed_end = layout.ehsize
    if layout.phnum:
        fixed_end = max(fixed_end, layout.phoff + layout.phnum * layout.phentsize)
    for _start, end in plan.ranges:
        fixed_end = max(fixed_end, end)
    for s in plan.kept:
        if plan.pinned(s) and s.index not in plan.rewriter.contents:
            fixed_end = max(fixed_end, s.offset + s.file_size)
    return fixed_end


def _section_names(plan: _Plan) -> tuple[bytes | None, dict[str, int]]:
    """A new ``.shstrtab`` with only the kept names, unless it must stay as it is (shared, pinned, below)."""
    layout, kept = plan.layout, plan.kept
    shstrtab = layout.sections[layout.shstrndx]
    shared_names = any(s.link == layout.shstrndx for s in kept if s.index != layout.shstrndx)
    if shared_names or plan.pinned(shstrtab) or plan.below(shstrtab):
        return None, {s.name: s.sh_name for s in kept}
    return string_table(s.name for s in kept)


def _dead_spans(plan: _Plan) -> list[tuple[int, int]]:
    """Bytes before ``fixed_end`` that nothing kept needs: removed sections and the old section table.

    Bytes that segments follow cannot go; these become zeros, which cost nothing in a compressed layer, and
    moved sections and the new section table go there if they fit.
    """
    layout, fixed_end = plan.layout, plan.fixed_end
    sections = layout.sections
    protected = [(0, layout.ehsize), *plan.ranges]
    if layout.phnum:
        protected.append((layout.phoff, layout.phoff + layout.phnum * layout.phentsize))
    protected += [(s.offset, s.offset + s.file_size) for s in plan.kept if s.file_size]
    spans = [(s.offset, min(fixed_end, s.offset + s.file_size)) for s in (sections[i] for i in plan.drops)]
    spans.append((layout.shoff, layout.shoff + len(sections) * layout.shentsize))
    return _merge(
        _subtract([(a, min(b, fixed_end)) for a, b in spans if a < fixed_end], protected), protected
    )


class _Output:
    """The stripped file as it is laid out: the verbatim part (dead spans zeroed), then what is appended."""

    def __init__(self, data: bytes, layout: ElfLayout, fixed_end: int, dead: list[tuple[int, int]]) -> None:
        self.layout = layout
        self.zeroed = sum(end - start for start, end in dead)
        self.free = list(dead)  # zeroed spans that moved sections and the section table may reuse
        view = memoryview(data)
        self.head = bytearray(data[: layout.ehsize])  # gets the new section table fields in ``finish``
        self.pieces: list[bytes | bytearray | memoryview] = [self.head]
        self.middle = bytearray()
        if dead:  # removed sections that segments follow: their bytes cannot go, they become zeros
            self.middle = bytearray(view[layout.ehsize : fixed_end])
            for start, end in dead:
                self.middle[start - layout.ehsize : end - layout.ehsize] = bytes(end - start)
            self.pieces.append(self.middle)
        else:
            self.pieces.append(view[layout.ehsize : fixed_end])
        self.length = max(fixed_end, layout.ehsize)

    def _carve(self, size: int, alignment: int) -> int | None:
        for number, (start, end) in enumerate(self.free):
            at = _align(start, alignment)
            if at + size <= end:
                self.free[number : number + 1] = [
                    span for span in ((start, at), (at + size, end)) if span[1] > span[0]
                ]
                return at
        return None

    def put(self, content: bytes | memoryview, alignment: int) -> int:
        """Place ``content`` in a free zeroed span, else at the end; its offset."""
        at = self._carve(len(content), alignment) if content else None
        if at is not None:
            ehsize = self.layout.ehsize
            self.middle[at - ehsize : at - ehsize + len(content)] = content
            self.zeroed -= len(content)
            return at
        at = _align(self.length, alignment)
        self.pieces.extend([bytes(at - self.length), content])
        self.length = at + len(content)
        return at

    def finish(self, shoff: int, count: int, shstrndx: int) -> bytes:
        """The file's bytes, with the ELF header's section table fields set."""
        layout = self.layout
        e = layout.endian
        at_shoff, at_count = (40, 60) if layout.is64 else (32, 48)
        struct.pack_into(e + ("Q" if layout.is64 else "I"), self.head, at_shoff, shoff)
        struct.pack_into(
            e + "HH", self.head, at_count, 0 if count >= SHN_LORESERVE else count,
            SHN_XINDEX if shstrndx >= SHN_LORESERVE else shstrndx,
        )  # fmt: skip
        result = b"".join(self.pieces)
        self.pieces.clear()  # the copies made for zeroing go before verification reads the result
        self.middle = bytearray()
        return result


def _move_sections(plan: _Plan, out: _Output, names_table: bytes | None) -> dict[int, tuple[int, int]]:
    """Lay out the kept sections that do not stay where they are; their new (offset, size) by index."""
    layout, rewriter = plan.layout, plan.rewriter
    view = memoryview(plan.data)
    moving = sorted(
        (s for s in plan.kept if s.index and not plan.stays(s)), key=lambda s: (s.offset, s.index)
    )
    new_offsets: dict[int, tuple[int, int]] = {}
    for s in moving:
        if s.type == SHT_NOBITS:
            new_offsets[s.index] = (_align(out.length, s.addralign), s.size)
            continue
        content: bytes | memoryview
        if s.index == layout.shstrndx and names_table is not None:
            content = names_table
        else:
            content = rewriter.contents.get(s.index, view[s.offset : s.offset + s.file_size])
        new_offsets[s.index] = (out.put(content, s.addralign), len(content))
    return new_offsets


def _section_table(
    plan: _Plan, new_offsets: dict[int, tuple[int, int]], name_offsets: dict[str, int]
) -> tuple[bytes, int, int]:
    """The new section header table, the section count and the new ``e_shstrndx``."""
    layout, index_map, rewriter = plan.layout, plan.index_map, plan.rewriter
    sections = layout.sections
    headers: list[Section] = []
    for s in plan.kept:
        new = Section(**vars(s))
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
    # Extended numbering: section 0 carries the count and the name table index when they do not fit.
    if count >= SHN_LORESERVE:
        headers[0].size = count
    elif sections[0].size == len(sections):
        headers[0].size = 0
    if shstrndx >= SHN_LORESERVE:
        headers[0].link = shstrndx
    elif sections[0].link == layout.shstrndx and layout.shstrndx >= SHN_LORESERVE:
        headers[0].link = 0
    table = b"".join(struct.pack(layout.shdr_format, *h.fields()) for h in headers)
    return table, count, shstrndx


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


def _check_dynamic_symbols(data: bytes, layout: ElfLayout, index_map: dict[int, int]) -> None:
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
