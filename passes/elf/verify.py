"""Checking that a stripped ELF file is a faithful strip of the original (every result is checked).

The result must parse (``parse`` and pyelftools' ``cross_check``), keep the ELF header but for the section
table fields, keep the program headers and every byte a segment maps, keep the dynamic section, keep every
allocated section's header and bytes and every other section's bytes unless rewritten, and be no larger.
"""

from __future__ import annotations

from .parse import ET_REL, PT_NULL, ElfLayout, ElfSkipped, Section, cross_check, parse

__all__ = ["ElfVerificationError", "verify_stripped"]


class ElfVerificationError(ElfSkipped):
    """A stripped result failed verification; the original is kept."""


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


def verify_stripped(
    original: bytes,
    stripped: bytes,
    layout: ElfLayout | None = None,
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
        layout = parse(original)
    try:
        new = parse(stripped)
        cross_check(stripped, new)
    except ElfSkipped as error:
        raise ElfVerificationError(f"stripped result does not parse: {error}") from error
    if len(stripped) > len(original):
        raise ElfVerificationError("stripped result is larger than the original")
    _check_headers(original, stripped, layout, new)
    _check_segments(original, stripped, layout, new)
    _check_sections(original, stripped, layout, new, unchanged)


def _check_headers(original: bytes, stripped: bytes, layout: ElfLayout, new: ElfLayout) -> None:
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


def _check_segments(original: bytes, stripped: bytes, layout: ElfLayout, new: ElfLayout) -> None:
    ehsize = layout.ehsize
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


def _check_sections(
    original: bytes, stripped: bytes, layout: ElfLayout, new: ElfLayout, unchanged: set[int] | None
) -> None:
    old_by_name: dict[str, list[Section]] = {}
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
