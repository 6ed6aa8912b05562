"""What the ELF tests compare against: GNU strip from binutils-multiarch, programs compiled with gcc and
run, the fixture files and the ELF files inside the fixture images."""

from __future__ import annotations

import functools
import gzip
import io
import shutil
import struct
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

from passes.elf import is_debug_section, section_names, strip_elf, verify_stripped
from tests.conftest import fixture, missing, require_tool

ANNOTATIONS = (".comment", ".gnu.build.attributes", ".GCC.command.line")


CORRUPT = {"corrupt_sh.elf", "x64_bad_sections.elf", "section_header_bogus_size.elf"}


def elf_fixtures(fixtures: Path) -> list[Path]:
    folder = fixtures / "elf"
    return sorted(
        p for p in [*folder.iterdir(), *(folder / "debian").iterdir()] if p.is_file() and p.suffix != ".md"
    )


def multiarch_strip() -> str:
    """GNU strip able to read every architecture (binutils-multiarch diverts /usr/bin/strip to it)."""
    strip = require_tool("strip", "binutils-multiarch")
    probe = subprocess.run(["strip", "--help"], capture_output=True, text=True, check=False).stdout
    if "sparc" not in probe or "aarch64" not in probe or "s390" not in probe:
        missing("strip does not support foreign architectures (Debian package binutils-multiarch)")
    return strip


def gnu_strip(strip: str, data: bytes, flag: str, tmp: Path) -> bytes | None:
    source, target = tmp / "in.elf", tmp / "out.elf"
    source.write_bytes(data)
    done = subprocess.run([strip, flag, "-o", str(target), str(source)], capture_output=True, check=False)
    return target.read_bytes() if done.returncode == 0 else None


def kept_set(data: bytes) -> set[str]:
    # GNU strip always writes a separate .shstrtab; LLVM objects share it with .strtab (compared without it).
    return set(section_names(data)) - {".shstrtab"}


def is_relocatable(data: bytes) -> bool:
    order = "<" if data[5] == 1 else ">"
    return bool(struct.unpack_from(order + "H", data, 16)[0] == 1)


def gnu_flag(mode: str, data: bytes) -> str:
    """The GNU strip option that does what ``mode`` does (relocatable objects: debug at most)."""
    if is_relocatable(data):
        return "--strip-debug"
    return {"debug": "--strip-debug", "unneeded": "--strip-unneeded", "all": "--strip-all"}[mode]


PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
extern int twice(int);
static int table[64];
int main(int argc, char **argv) {
    long total = 0;
    for (int i = 0; i < 64; i++) { table[i] = twice(i) ^ argc; total += table[i]; }
    printf("argc=%d total=%ld first=%s\n", argc, total, argv[0] ? "yes" : "no");
    return 0;
}
"""


LIBRARY = r"""
int twice(int x) { return 2 * x + 1; }
"""


def compile_c(tmp: Path, *args: str) -> None:
    require_tool("gcc", "gcc")
    subprocess.run(["gcc", "-g", "-O1", *args], cwd=tmp, check=True, capture_output=True)


def run(binary: Path, env: dict[str, str] | None = None) -> str:
    return subprocess.run([str(binary), "x", "y"], capture_output=True, text=True, check=True, env=env).stdout


def strip_in_place(path: Path, mode: str) -> None:
    data = path.read_bytes()
    result = strip_elf(data, mode)
    assert result is not None, path
    assert len(result.data) < len(data)
    names = section_names(result.data)
    assert not [n for n in names if is_debug_section(n)]
    assert (".symtab" in names) == (mode == "debug")
    verify_stripped(data, result.data)
    path.write_bytes(result.data)


def hello_binaries(fixtures: Path) -> Iterator[tuple[str, bytes]]:
    """Every ELF file inside the layers of the fixture images (the static hello binaries, busybox)."""
    folders = [
        fixtures / "images" / "sylabs-oci-tools" / "hello-world-docker-v2-manifest-list",
        fixtures / "images" / "imgutil" / "oci-layout-busybox",
    ]
    for folder in folders:
        for blob in sorted((folder / "blobs" / "sha256").glob("*")):
            raw = blob.read_bytes()
            if raw[:2] == b"\x1f\x8b":
                raw = gzip.decompress(raw)
            try:
                tar = tarfile.open(fileobj=io.BytesIO(raw))  # noqa: SIM115 - closed by the with below
            except tarfile.TarError:
                continue
            with tar:
                for member in tar:
                    if member.isfile():
                        reader = tar.extractfile(member)
                        assert reader is not None
                        data = reader.read()
                        if data[:4] == b"\x7fELF":
                            yield f"{blob.name[:12]}:{member.name}", data


def damaged(original: bytes, cut: int, flips: list[tuple[int, int]]) -> bytes:
    """``original`` cut at ``cut`` bytes, with the bytes at the given offsets XORed with the given masks."""
    data = bytearray(original[:cut] if cut < len(original) else original)
    for at, value in flips:
        if at < len(data):
            data[at] ^= value
    return bytes(data)


def seed(fixtures_root: Path, name: str) -> bytes:
    return (fixtures_root / "elf" / name).read_bytes()


@functools.cache
def archive_seed() -> bytes:
    """A GNU archive (symbol index, long member names) of two fixture objects, built once."""
    require_tool("ar", "binutils")
    work = Path(tempfile.mkdtemp(prefix="test-elf-ar-"))
    try:
        folder = fixture("elf")
        shutil.copy(folder / "s390x-relocs.o.elf", work / "a-member-with-a-long-name.o")
        shutil.copy(folder / "compressed_64.o", work / "b.o")
        subprocess.run(["ar", "rcs", "lib.a", "a-member-with-a-long-name.o", "b.o"], cwd=work, check=True)
        return (work / "lib.a").read_bytes()
    finally:
        shutil.rmtree(work)


def objdump_relocations(path: Path) -> list[str]:
    text = subprocess.run(["objdump", "-dr", str(path)], capture_output=True, text=True, check=True).stdout
    return [line.split(None, 1)[-1] for line in text.splitlines() if "R_X86_64" in line or "R_386" in line]
