"""Static archives (``!<arch>``): debugging sections stripped from every ELF member, the symbol index kept.

Members keep their order and headers (only the size field changes); the symbol index (``/`` and ``/SYM64/``) has
its member offsets rewritten. BSD-style and thin archives are left alone.
"""

from __future__ import annotations

import struct

from .layout import StripResult, strip_elf
from .parse import ELF_MAGIC, ElfSkipped
from .verify import ElfVerificationError, verify_stripped

__all__ = ["AR_MAGIC", "strip_archive"]

AR_MAGIC = b"!<arch>\n"
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
