"""The UPX detector: is an executable UPX-packed, and what do its UPX headers say (``detect_upx``).

UPX leaves two records in every file it packs (see upx ``src/packhead.cpp`` and ``src/p_lx_elf.cpp``):

- ``l_info`` (12 bytes: checksum, the magic ``UPX!``, loader size, header version, format) just after the
  ELF program headers (Mach-O: at the start of ``__text``), followed by ``p_info`` whose ``p_filesize`` is the
  unpacked size;
- the ``PackHeader`` (32 bytes from the magic ``UPX!``: version, format, method, level, lengths, adlers, the
  unpacked file size, filter and a checksum of the header itself), 36 bytes before the end of an ELF file,
  before some page padding at the end of a Mach-O file, and in the header area of a PE file, right after the
  UPX version string and after the section table that names ``UPX0``/``UPX1``.

A file is flagged only when the header sits where UPX puts it *and* its checksum holds (ELF additionally needs
the ``l_info`` record); a file that merely contains ``UPX!`` somewhere (the UPX program itself does, dozens of
times) is never flagged. Only the first ``HEAD_SIZE`` and last ``TAIL_SIZE`` bytes are ever looked at.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Literal, TypeVar

from optimizer.model import Content

K = TypeVar("K")

__all__ = [
    "HEAD_SIZE",
    "MAGIC",
    "TAIL_SIZE",
    "UpxInfo",
    "detect_upx",
    "detect_upx_content",
    "detect_upx_many",
    "detect_upx_parts",
    "executable_identity",
    "looks_like_upx",
]

HEAD_SIZE = 4096
TAIL_SIZE = 8192

MAGIC = b"UPX!"
_PACKHEADER_SIZE = 32

# UPX executable formats (upx src/conf.h: UPX_F_*); >= 128 are big-endian formats.
_ELF_FORMATS = {
    10: "linux.exec/i386",  # any program, scripts included, behind an i386 loader
    12: "linux/i386",
    13: "linux.sep/i386",
    14: "linux.sh/i386",
    20: "linux.elfi/i386",
    22: "linux/amd64",
    23: "linux/arm",
    24: "bsd/i386",
    25: "bsd.elf/i386",
    26: "bsd.sh/i386",
    30: "linux/mipsel",
    39: "linux/ppc64le",
    42: "linux/arm64",
    130: "solaris/sparc",
    132: "linux/ppc32",
    133: "linux/armeb",
    137: "linux/mips",
    140: "linux/ppc64",
}
# Formats whose l_info does not follow the program headers (the loader comes first).
_ELF_LOADER_FIRST = {10, 13, 14, 26}
_PE_FORMATS = {9: "win32/pe", 21: "wince/arm", 36: "win64/pe", 43: "win64/arm64", 44: "win32/arm64ec"}
_MACHO_FORMATS = {
    29: "macho/i386",
    32: "macho/arm",
    33: "dylib/i386",
    34: "macho/amd64",
    35: "dylib/amd64",
    37: "macho/arm64",
    38: "macho/ppc64le",
    41: "dylib/ppc64le",
    131: "macho/ppc32",
    134: "macho/fat",
    138: "dylib/ppc32",
    139: "macho/ppc64",
    142: "dylib/ppc64",
}
_METHODS = {
    2: "nrv2b",
    3: "nrv2b",
    4: "nrv2b",
    5: "nrv2d",
    6: "nrv2d",
    7: "nrv2d",
    8: "nrv2e",
    9: "nrv2e",
    10: "nrv2e",
    11: "cl1b",
    12: "cl1b",
    13: "cl1b",
    14: "lzma",
    15: "deflate",
    16: "zstd",
}

# Architecture names as in OCI platforms (GOARCH); "armbe" and "ppc" have no GOARCH of their own.
_ELF_MACHINES = {
    2: "sparc",
    3: "386",
    8: "mips",
    18: "sparc",
    20: "ppc",
    21: "ppc64",
    22: "s390x",
    40: "arm",
    43: "sparc64",
    62: "amd64",
    183: "arm64",
    243: "riscv64",
    258: "loong64",
}
_PE_MACHINES = {0x14C: "386", 0x8664: "amd64", 0x1C0: "arm", 0x1C4: "arm", 0xAA64: "arm64", 0x1C2: "arm"}
_MACHO_CPUS = {7: "386", 0x01000007: "amd64", 12: "arm", 0x0100000C: "arm64", 18: "ppc", 0x01000012: "ppc64"}
_MACHO_MAGICS = {
    b"\xce\xfa\xed\xfe": "<",  # MH_MAGIC, little-endian
    b"\xcf\xfa\xed\xfe": "<",  # MH_MAGIC_64
    b"\xfe\xed\xfa\xce": ">",
    b"\xfe\xed\xfa\xcf": ">",
}
_FAT_MAGIC = b"\xca\xfe\xba\xbe"
_ID_STRING = re.compile(rb"\$Id: UPX (\d+\.\d+(?:\.\d+)?)")
_PE_VERSION = re.compile(rb"(\d+\.\d+(?:\.\d+)?)\x00{1,4}$")


@dataclass(frozen=True)
class UpxInfo:
    """What the UPX headers of a packed file say; None where the headers do not give a value."""

    format: Literal["elf", "pe", "macho"]
    architecture: str  # OCI/GOARCH name: amd64, arm64, arm, 386, ppc64le, mips, mipsle, ...
    version: str | None  # the UPX program version ("3.95"), when its identification string is in reach
    header_version: int | None  # PackHeader format version (13: UPX 3.9x, 14: UPX 4.x)
    upx_format: str | None  # UPX's own name of the packed format ("linux/amd64", "win64/pe")
    method: str | None  # "lzma", "nrv2b", "nrv2d", "nrv2e", ...
    level: int | None
    packed_size: int
    unpacked_size: int | None

    def describe(self) -> str:
        parts = [f"{self.format}/{self.architecture}", f"UPX {self.version or '?'}"]
        if self.method:
            parts.append(self.method)
        if self.unpacked_size:
            parts.append(f"{self.unpacked_size} -> {self.packed_size} bytes")
        return ", ".join(parts)


@dataclass(frozen=True)
class _PackHeader:
    version: int
    format: int
    method: int
    level: int
    unpacked_size: int


def _pack_header(buf: bytes, at: int) -> _PackHeader | None:
    """The PackHeader whose magic is at ``buf[at]``, if it is complete and its checksum holds."""
    p = buf[at : at + _PACKHEADER_SIZE]
    if len(p) < _PACKHEADER_SIZE or p[:4] != MAGIC:
        return None
    version, fmt, method, level = p[4], p[5], p[6], p[7]
    if not 10 <= version <= 15 or fmt in (0, 1, 2, 3, 7, 128):  # DOS formats have shorter headers
        return None
    if sum(p[4:31]) % 251 != p[31]:
        return None
    order = ">" if fmt >= 128 else "<"
    (u_file_size,) = struct.unpack_from(order + "I", p, 24)
    return _PackHeader(version, fmt, method, level & 15, u_file_size)


def _last_pack_header(buf: bytes, formats: dict[int, str]) -> _PackHeader | None:
    at = buf.rfind(MAGIC)
    while at >= 0:
        header = _pack_header(buf, at)
        if header is not None and header.format in formats:
            return header
        at = buf.rfind(MAGIC, 0, at)
    return None


def _version_string(*buffers: bytes) -> str | None:
    for buf in buffers:
        match = _ID_STRING.search(buf)
        if match:
            return match.group(1).decode()
    return None


def _info(
    fmt: Literal["elf", "pe", "macho"],
    arch: str,
    header: _PackHeader | None,
    formats: dict[int, str],
    size: int,
    version: str | None,
    unpacked: int | None = None,
) -> UpxInfo:
    if header is None:
        return UpxInfo(fmt, arch, version, None, None, None, None, size, unpacked)
    return UpxInfo(
        fmt,
        arch,
        version,
        header.version,
        formats.get(header.format),
        _METHODS.get(header.method, f"method-{header.method}"),
        header.level,
        size,
        header.unpacked_size or unpacked,
    )


def _elf_program_headers(head: bytes, is64: bool, order: str) -> tuple[int, int, int]:
    if is64:
        phoff = struct.unpack_from(order + "Q", head, 32)[0]
        phentsize, phnum = struct.unpack_from(order + "HH", head, 54)
    else:
        phoff = struct.unpack_from(order + "I", head, 28)[0]
        phentsize, phnum = struct.unpack_from(order + "HH", head, 42)
    return int(phoff), int(phentsize), int(phnum)


def _elf_architecture(head: bytes) -> str:
    is64 = head[4] == 2
    order = "<" if head[5] == 1 else ">"
    machine = struct.unpack_from(order + "H", head, 18)[0]
    arch = _ELF_MACHINES.get(machine, f"elf-machine-{machine}")
    if order == ">" and arch == "arm":
        return "armbe"
    if order == "<" and arch in ("mips", "ppc64"):
        arch += "le"
    if is64 and arch in ("mips", "mipsle"):
        arch = arch.replace("mips", "mips64")
    return arch


def _elf(head: bytes, tail: bytes, size: int) -> UpxInfo | None:
    if len(head) < 64 or head[4] not in (1, 2) or head[5] not in (1, 2):
        return None
    is64 = head[4] == 2
    order = "<" if head[5] == 1 else ">"
    if len(tail) < 36 or tail[-36:-32] != MAGIC:
        return None
    header = _pack_header(tail, len(tail) - 36)
    if header is None or header.format not in _ELF_FORMATS:
        return None
    phoff, phentsize, phnum = _elf_program_headers(head, is64, order)
    l_info = phoff + phentsize * phnum
    unpacked: int | None = None
    if l_info + 24 <= len(head) and head[l_info + 4 : l_info + 8] == MAGIC:
        l_version, l_format = head[l_info + 10], head[l_info + 11]
        if l_format != header.format or l_version != header.version:
            return None
        unpacked = struct.unpack_from(order + "I", head, l_info + 16)[0]
    elif header.format not in _ELF_LOADER_FIRST or MAGIC not in head:
        return None
    arch = _elf_architecture(head)
    return _info("elf", arch, header, _ELF_FORMATS, size, _version_string(tail, head), unpacked)


def _pe(head: bytes, size: int) -> UpxInfo | None:
    if len(head) < 64:
        return None
    pe = struct.unpack_from("<I", head, 0x3C)[0]
    if pe + 24 > len(head) or head[pe : pe + 4] != b"PE\x00\x00":
        return None
    machine, sections = struct.unpack_from("<HH", head, pe + 4)
    optional = struct.unpack_from("<H", head, pe + 20)[0]
    table = pe + 24 + optional
    names = [
        head[table + 40 * i : table + 40 * i + 8].rstrip(b"\x00")
        for i in range(min(sections, 96))
        if table + 40 * i + 8 <= len(head)
    ]
    header = None
    at = head.find(MAGIC, table)
    while at >= 0 and header is None:
        candidate = _pack_header(head, at)
        if candidate is not None and candidate.format in _PE_FORMATS:
            header = candidate
        else:
            at = head.find(MAGIC, at + 1)
    # Sections renamed but header intact (upx -d works), or header scrubbed but sections intact: packed.
    if header is None and not (b"UPX0" in names and b"UPX1" in names):
        return None
    version = None
    if header is not None:
        match = _PE_VERSION.search(head[max(0, at - 16) : at])
        version = match.group(1).decode() if match else None
    arch = _PE_MACHINES.get(machine, f"pe-machine-{machine:#x}")
    return _info("pe", arch, header, _PE_FORMATS, size, version)


def _macho(head: bytes, tail: bytes, size: int) -> UpxInfo | None:
    if head[:4] == _FAT_MAGIC:
        if len(head) < 28:
            return None
        count = struct.unpack_from(">I", head, 4)[0]
        if not 0 < count < 32:  # Java class files share the magic and have a version >= 45 there
            return None
        cputype = struct.unpack_from(">I", head, 8)[0]
        arch = "fat"
    else:
        order = _MACHO_MAGICS.get(head[:4])
        if order is None or len(head) < 32:
            return None
        cputype = struct.unpack_from(order + "I", head, 4)[0]
        arch = _MACHO_CPUS.get(cputype, f"macho-cpu-{cputype:#x}")
        if arch == "ppc64" and order == "<":
            arch = "ppc64le"
    header = _last_pack_header(tail, _MACHO_FORMATS)
    if header is None:
        return None
    # l_info: the magic followed by the loader size, then the same header version and format.
    at = head.find(MAGIC)
    while at >= 0:
        if head[at + 6 : at + 8] == bytes((header.version, header.format)):
            break
        at = head.find(MAGIC, at + 1)
    else:
        return None
    if arch == "fat":
        arch = f"fat:{_MACHO_CPUS.get(cputype, hex(cputype))}"
    return _info("macho", arch, header, _MACHO_FORMATS, size, _version_string(tail, head))


def looks_like_upx(head: bytes, tail: bytes) -> bool:
    """A cheap sniff: False means certainly not UPX-packed; True means ask ``detect_upx_parts``."""
    if head[:4] == b"\x7fELF":
        return len(tail) >= 36 and tail[-36:-32] == MAGIC
    if head[:2] == b"MZ":
        return MAGIC in head or b"UPX0" in head
    if head[:4] in _MACHO_MAGICS or head[:4] == _FAT_MAGIC:
        return MAGIC in head and MAGIC in tail
    return False


def detect_upx_parts(head: bytes, tail: bytes, size: int) -> UpxInfo | None:
    """Detect UPX from the first ``HEAD_SIZE`` bytes, the last ``TAIL_SIZE`` bytes and the file size."""
    if not looks_like_upx(head, tail):
        return None
    if head[:4] == b"\x7fELF":
        return _elf(head, tail, size)
    if head[:2] == b"MZ":
        return _pe(head, size)
    return _macho(head, tail, size)


def detect_upx(data: bytes) -> UpxInfo | None:
    """The UPX headers of a packed executable, or None when ``data`` is not UPX-packed."""
    return detect_upx_parts(data[:HEAD_SIZE], data[-TAIL_SIZE:], len(data))


def _is_executable_magic(magic: bytes) -> bool:
    return magic == b"\x7fELF" or magic[:2] == b"MZ" or magic in _MACHO_MAGICS or magic == _FAT_MAGIC


def detect_upx_content(content: Content) -> UpxInfo | None:
    """``detect_upx`` on spooled content, reading only its head and tail (and only the head of most files)."""
    if content.size < 64:
        return None
    head = content.read_head(HEAD_SIZE)
    if not _is_executable_magic(head[:4]):
        return None
    tail = content.read_tail(TAIL_SIZE)
    return detect_upx_parts(head, tail, content.size)


def detect_upx_many(contents: Iterable[tuple[K, Content]]) -> Iterator[tuple[K, UpxInfo]]:
    """``detect_upx_content`` over many files, keeping each spool file open once: the packed ones only."""
    handles: dict[str, BinaryIO] = {}
    try:
        for key, content in contents:
            if content.size < 64:
                continue
            handle = handles.get(content.path)
            if handle is None:
                handle = handles[content.path] = open(content.path, "rb")  # noqa: SIM115 - closed below
            handle.seek(content.offset)
            head = handle.read(min(HEAD_SIZE, content.size))
            if not _is_executable_magic(head[:4]):
                continue
            tail_size = min(TAIL_SIZE, content.size)
            handle.seek(content.offset + content.size - tail_size)
            info = detect_upx_parts(head, handle.read(tail_size), content.size)
            if info is not None:
                yield key, info
    finally:
        for handle in handles.values():
            handle.close()


def executable_identity(head: bytes) -> tuple[str, str] | None:
    """(format, architecture) of an ELF, PE or thin Mach-O executable from its first bytes; None otherwise."""
    if head[:4] == b"\x7fELF" and len(head) >= 64 and head[4] in (1, 2) and head[5] in (1, 2):
        return "elf", _elf_architecture(head)
    if head[:2] == b"MZ" and len(head) >= 64:
        pe = struct.unpack_from("<I", head, 0x3C)[0]
        if pe + 24 <= len(head) and head[pe : pe + 4] == b"PE\x00\x00":
            machine = struct.unpack_from("<H", head, pe + 4)[0]
            return "pe", _PE_MACHINES.get(machine, f"pe-machine-{machine:#x}")
    order = _MACHO_MAGICS.get(head[:4])
    if order is not None and len(head) >= 32:
        cputype = struct.unpack_from(order + "I", head, 4)[0]
        arch = _MACHO_CPUS.get(cputype, f"macho-cpu-{cputype:#x}")
        return "macho", "ppc64le" if arch == "ppc64" and order == "<" else arch
    return None
