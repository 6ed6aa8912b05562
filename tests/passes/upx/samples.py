"""The UPX fixtures the tests read: every packed file with what it must be detected as, and the traps."""

from __future__ import annotations

from pathlib import Path

# What `upx -l` (Debian upx-ucl 4.2.2) says about each packed fixture (fixtures/upx/NOTES.md): the OCI
# architecture of its "linux/amd64"-style format and the unpacked size.


# What `upx -l` (Debian upx-ucl 4.2.2) says about each packed fixture (fixtures/upx/NOTES.md): the OCI
# architecture of its "linux/amd64"-style format and the unpacked size.
PACKED = {
    "amd64-linux.elf__upx-3.91": ("elf", "amd64", 1751960),
    "amd64-linux.elf__upx-3.91.ldd": ("elf", "amd64", 1853928),
    "amd64-linux.elf__upx-3.95": ("elf", "amd64", 2025912),
    "amd64-win64.pe__upx-3.95.exe": ("pe", "amd64", 2083840),
    "arm-linux.elf__upx-3.95": ("elf", "arm", 1912332),
    "arm64-linux.elf__upx-3.95": ("elf", "arm64", 2054360),
    "armeb-linux.elf__upx-3.95": ("elf", "armbe", 1912588),
    "i386-linux.elf__upx-3.95": ("elf", "386", 2074340),
    "i386-win32.pe__upx-3.95.exe": ("pe", "386", 2017792),
    "linux-amd64-go-main.compressed": ("elf", "amd64", 1805879),
    "linux-mips-go-main.compressed.lzma": ("elf", "mips", 1951576),
    "linux-ppc64-go-main.compressed": ("elf", "ppc64", 1950315),
    "mips-linux.elf__upx-3.95": ("elf", "mips", 2374520),
    "mipsel-linux.elf__upx-3.95": ("elf", "mipsle", 2373944),
    "powerpc-linux.elf__upx-3.95": ("elf", "ppc", 2165188),
    "powerpc64le-linux.elf__upx-3.95": ("elf", "ppc64le", 2427440),
    "test.sh.compressed": ("elf", "386", 320412),
}


def corrupt(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


def packed_fixture(fixtures: Path, name: str = "amd64-linux.elf__upx-3.95") -> bytes:
    return (fixtures / "upx" / "packed" / name).read_bytes()


def trap(fixtures: Path) -> bytes:
    return (fixtures / "upx" / "unpacked" / "amd64-linux.elf__upx-3.95.unpacked").read_bytes()
