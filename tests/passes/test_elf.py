"""``passes.elf``: differential tests against GNU strip (binutils-multiarch), programs that still run once
stripped, static archives, and arbitrary bytes."""

from __future__ import annotations

import functools
import gzip
import io
import shutil
import struct
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from passes.elf import (
    MODES,
    ElfSkipped,
    is_debug_section,
    section_names,
    strip_archive,
    strip_elf,
    verify_stripped,
)
from passes.strip_elf import StripJob, strip_file
from tests.conftest import fixture, missing, require_tool

ANNOTATIONS = (".comment", ".gnu.build.attributes", ".GCC.command.line")
CORRUPT = {"corrupt_sh.elf", "x64_bad_sections.elf", "section_header_bogus_size.elf"}


def elf_fixtures(fixtures: Path) -> list[Path]:
    folder = fixture("elf")
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


# --- differential: the same sections as GNU strip ----------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_same_sections_as_gnu_strip_on_every_fixture(fixtures: Path, tmp_path: Path, mode: str) -> None:
    strip = multiarch_strip()
    compared = 0
    for path in elf_fixtures(fixtures):
        data = path.read_bytes()
        try:
            result = strip_elf(data, mode)
        except ElfSkipped as error:  # only the files that must be left alone, never a failed verification
            assert path.name in {*CORRUPT, "core_linux64.elf"}, f"{path.name}: {error}"
            continue
        ours = result.data if result else data
        assert len(ours) <= len(data), path.name
        if result is not None:
            verify_stripped(data, result.data)
            assert strip_elf(result.data, mode) is None, path.name  # nothing left to do the second time
        theirs = gnu_strip(strip, data, gnu_flag(mode, data), tmp_path)
        if theirs is None:
            continue  # GNU strip cannot read it (LoongArch in binutils 2.40, files without sections)
        expected = kept_set(theirs)
        if mode == "all" and not is_relocatable(data):
            expected = {name for name in expected if not name.startswith(ANNOTATIONS)}
        assert kept_set(ours) == expected, path.name
        compared += 1
    assert compared >= 28


def test_files_left_alone_say_why(fixtures: Path) -> None:
    folder = fixture("elf")
    with pytest.raises(ElfSkipped, match="core dump"):
        strip_elf((folder / "core_linux64.elf").read_bytes())
    for name in CORRUPT:
        with pytest.raises(ElfSkipped, match="headers do not parse"):
            strip_elf((folder / name).read_bytes())
    # No section headers at all: nothing a section stripper can remove, and no error.
    assert strip_elf((folder / "aarch64_super_stripped.elf").read_bytes()) is None
    # Already stripped distro binaries: nothing to do.
    for path in sorted((folder / "debian").iterdir()):
        assert strip_elf(path.read_bytes()) is None, path.name


def test_appended_data_is_left_alone_but_zero_padding_is_not(fixtures: Path) -> None:
    data = fixture("elf/sample_exe64.elf").read_bytes()
    with pytest.raises(ElfSkipped, match="appended"):
        strip_elf(data + b"PK\x03\x04 a self-extracting payload")
    padded = strip_elf(data + bytes(64))
    plain = strip_elf(data)
    assert padded is not None and plain is not None and padded.data == plain.data


def test_signed_kernel_module_is_left_alone(fixtures: Path) -> None:
    data = fixture("elf/s390x-relocs.o.elf").read_bytes()
    assert strip_elf(data) is not None
    with pytest.raises(ElfSkipped, match="signed kernel module"):
        strip_elf(data + b"\x00" * 40 + b"~Module signature appended~\n")


def test_relocatable_objects_get_debug_at_most(fixtures: Path) -> None:
    data = fixture("elf/s390x-relocs.o.elf").read_bytes()
    for mode in MODES:
        result = strip_elf(data, mode)
        assert result is not None and result.mode == "debug"
        names = section_names(result.data)
        assert ".symtab" in names and ".rela.text" in names
        assert not [n for n in names if is_debug_section(n)]


def test_debuglink_kept_unless_asked(fixtures: Path) -> None:
    data = fixture("elf/debuglink").read_bytes()
    assert strip_elf(data, "all") is not None  # .comment goes in "all"
    kept = strip_elf(data, "all")
    assert kept is not None and ".gnu_debuglink" in section_names(kept.data)
    dropped = strip_elf(data, "unneeded", keep_debuglink=False)
    assert dropped is not None and ".gnu_debuglink" not in section_names(dropped.data)
    assert ".note.gnu.build-id" in section_names(dropped.data)


def test_compressed_debug_sections_go(fixtures: Path) -> None:
    for name in ("exe_compressed64.elf", "compressed_64.o"):
        result = strip_elf(fixture(f"elf/{name}").read_bytes(), "debug")
        assert result is not None
        assert not [n for n in section_names(result.data) if n.startswith((".zdebug", ".debug"))]


def test_verification_catches_a_changed_mapped_byte(fixtures: Path) -> None:
    data = fixture("elf/sample_exe64.elf").read_bytes()
    result = strip_elf(data)
    assert result is not None
    verify_stripped(data, result.data)
    tampered = bytearray(result.data)
    tampered[0x400] ^= 0xFF  # inside the first PT_LOAD (.text region)
    with pytest.raises(ElfSkipped, match=r"segment|section"):
        verify_stripped(data, bytes(tampered))


def hello_binaries(fixtures: Path) -> Iterator[tuple[str, bytes]]:
    """Every ELF file inside the layers of the fixture images (the static hello binaries, busybox)."""
    folders = [
        fixture("images/sylabs-oci-tools/hello-world-docker-v2-manifest-list"),
        fixture("images/imgutil/oci-layout-busybox"),
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


def test_binaries_inside_fixture_images_match_gnu_strip(fixtures: Path, tmp_path: Path) -> None:
    strip = multiarch_strip()
    seen = 0
    for label, data in hello_binaries(fixtures):
        result = strip_elf(data)
        ours = result.data if result else data
        theirs = gnu_strip(strip, data, "--strip-unneeded", tmp_path)
        assert theirs is not None, label
        assert kept_set(ours) == kept_set(theirs), label
        assert len(ours) <= len(data)
        seen += 1
    assert seen >= 9


# --- stripped programs still run ---------------------------------------------------------------------------

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


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["plain", "pie", "static"])
def test_stripped_programs_still_run(tmp_path: Path, kind: str, mode: str) -> None:
    (tmp_path / "main.c").write_text(PROGRAM)
    (tmp_path / "lib.c").write_text(LIBRARY)
    flags = {"plain": ["-no-pie", "-fno-pie"], "pie": ["-fPIE", "-pie"], "static": ["-static"]}[kind]
    compile_c(tmp_path, *flags, "-o", "prog", "main.c", "lib.c")
    binary = tmp_path / "prog"
    before = run(binary)
    strip_in_place(binary, mode)
    assert run(binary) == before


@pytest.mark.parametrize("mode", MODES)
def test_stripped_shared_library_and_its_user_still_run(tmp_path: Path, mode: str) -> None:
    (tmp_path / "main.c").write_text(PROGRAM)
    (tmp_path / "lib.c").write_text(LIBRARY)
    compile_c(tmp_path, "-shared", "-fPIC", "-o", "libtwice.so", "lib.c")
    compile_c(tmp_path, "-o", "prog", "main.c", "-L.", "-ltwice", "-Wl,-rpath,$ORIGIN")
    binary = tmp_path / "prog"
    before = run(binary)
    strip_in_place(tmp_path / "libtwice.so", mode)
    strip_in_place(binary, mode)
    assert run(binary) == before


@pytest.mark.parametrize("mode", MODES)
def test_sections_that_segments_follow_are_zeroed_in_place(tmp_path: Path, mode: str) -> None:
    """patchelf (auditwheel's manylinux wheels) appends a segment after the debug sections: they cannot go
    without moving it, so their bytes become zeros (free in a compressed layer), and the program still runs."""
    patchelf = require_tool("patchelf", "patchelf")
    (tmp_path / "main.c").write_text(PROGRAM)
    (tmp_path / "lib.c").write_text(LIBRARY)
    compile_c(tmp_path, "-o", "prog", "main.c", "lib.c")
    binary = tmp_path / "prog"
    before = run(binary)
    subprocess.run([patchelf, "--set-rpath", "/opt/" + "x" * 3000, str(binary)], check=True)
    data = binary.read_bytes()
    result = strip_elf(data, mode)
    assert result is not None and result.zeroed > 500 and len(result.data) <= len(data)
    assert ".debug_info" in result.removed and (".symtab" in result.removed) == (mode != "debug")
    verify_stripped(data, result.data)
    assert len(zlib.compress(result.data)) < len(zlib.compress(data)) * 0.9
    binary.write_bytes(result.data)
    assert run(binary) == before
    assert strip_elf(result.data, mode) is None


def objdump_relocations(path: Path) -> list[str]:
    text = subprocess.run(["objdump", "-dr", str(path)], capture_output=True, text=True, check=True).stdout
    return [line.split(None, 1)[-1] for line in text.splitlines() if "R_X86_64" in line or "R_386" in line]


def test_stripped_object_files_and_archives_still_link(tmp_path: Path) -> None:
    require_tool("ar", "binutils")
    (tmp_path / "main.c").write_text(PROGRAM)
    (tmp_path / "lib.c").write_text(
        LIBRARY + "static int unused(void) { return 3; }\nint other(void) { return 4; }\n"
    )
    compile_c(tmp_path, "-ffunction-sections", "-fdata-sections", "-c", "main.c", "lib.c")
    subprocess.run(["ar", "rcs", "libtwice.a", "lib.o"], cwd=tmp_path, check=True)
    compile_c(tmp_path, "-o", "reference", "main.o", "libtwice.a")
    expected = run(tmp_path / "reference")

    main_o = tmp_path / "main.o"
    relocations = objdump_relocations(main_o)
    result = strip_elf(main_o.read_bytes(), "all")
    assert result is not None and result.mode == "debug"
    main_o.write_bytes(result.data)
    assert objdump_relocations(main_o) == relocations  # the same symbols, through renumbered indices

    archive = tmp_path / "libtwice.a"
    listing = subprocess.run(["ar", "t", str(archive)], capture_output=True, text=True, check=True).stdout
    armap = subprocess.run(["nm", "-s", str(archive)], capture_output=True, text=True, check=True).stdout
    stripped = strip_archive(archive.read_bytes())
    assert stripped is not None and any(name.startswith("lib.o:.debug") for name in stripped.removed)
    archive.write_bytes(stripped.data)
    assert (
        subprocess.run(["ar", "t", str(archive)], capture_output=True, text=True, check=True).stdout
        == listing
    )
    assert (
        subprocess.run(["nm", "-s", str(archive)], capture_output=True, text=True, check=True).stdout.split(
            "\n\n"
        )[0]
        == armap.split("\n\n")[0]
    )
    compile_c(tmp_path, "-o", "prog", "main.o", "libtwice.a")
    assert run(tmp_path / "prog") == expected


def test_archive_matches_gnu_strip_debug(tmp_path: Path) -> None:
    strip = multiarch_strip()
    (tmp_path / "a.c").write_text(LIBRARY)
    (tmp_path / "b.c").write_text("int thrice(int x) { return 3 * x; }\n" * 1)
    compile_c(tmp_path, "-c", "a.c", "b.c")
    subprocess.run(["ar", "rcs", "lib.a", "a.o", "b.o"], cwd=tmp_path, check=True)
    data = (tmp_path / "lib.a").read_bytes()
    result = strip_archive(data)
    assert result is not None and len(result.data) < len(data)
    shutil.copy(tmp_path / "lib.a", tmp_path / "gnu.a")
    subprocess.run([strip, "--strip-debug", str(tmp_path / "gnu.a")], check=True)
    for member in ("a.o", "b.o"):
        for source, name in ((result.data, "ours.a"), ((tmp_path / "gnu.a").read_bytes(), "theirs.a")):
            (tmp_path / name).write_bytes(source)
        ours = subprocess.run(
            ["ar", "p", "ours.a", member], cwd=tmp_path, capture_output=True, check=True
        ).stdout
        theirs = subprocess.run(
            ["ar", "p", "theirs.a", member], cwd=tmp_path, capture_output=True, check=True
        ).stdout
        assert kept_set(ours) == kept_set(theirs)


# --- arbitrary bytes ------------------------------------------------------------------------------------


def _seed(name: str) -> bytes:
    return fixture(f"elf/{name}").read_bytes()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    junk=st.binary(max_size=512),
    prefix=st.sampled_from([b"", b"\x7fELF", b"\x7fELF\x02\x01\x01", b"!<arch>\n"]),
)
def test_arbitrary_bytes_never_crash(junk: bytes, prefix: bytes) -> None:
    outcome = strip_file(prefix + junk, StripJob())
    assert outcome.action in ("kept", "unchanged")
    assert outcome.data is None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=st.sampled_from(
        ["sample_exe64.elf", "s390x-relocs.o.elf", "aarch64_be_gnu_hash.so.elf", "tls.so.elf"]
    ),
    cut=st.integers(min_value=0, max_value=20000),
    flips=st.lists(st.tuples(st.integers(min_value=0, max_value=20000), st.integers(1, 255)), max_size=6),
)
def test_truncated_or_corrupted_files_never_crash(
    fixtures: Path, name: str, cut: int, flips: list[tuple[int, int]]
) -> None:
    original = _seed(name)
    data = bytearray(original[: min(cut, len(original))] if cut < len(original) else original)
    for at, value in flips:
        if at < len(data):
            data[at] ^= value
    outcome = strip_file(bytes(data), StripJob())
    assert outcome.action in ("kept", "unchanged", "stripped")
    if outcome.action == "stripped":
        assert outcome.data is not None and len(outcome.data) <= len(data)
        verify_stripped(bytes(data), outcome.data)
    else:
        assert outcome.data is None


def test_upx_packed_files_are_left_alone(fixtures: Path) -> None:
    packed = fixture("upx/packed/amd64-linux.elf__upx-3.95")
    outcome = strip_file(packed.read_bytes(), StripJob())
    assert outcome.action == "kept" and "UPX" in outcome.reason


def test_object_with_extended_section_numbering(tmp_path: Path) -> None:
    """Over 65279 sections: e_shnum/e_shstrndx live in section 0 and symbols go through SHT_SYMTAB_SHNDX."""
    count = 65400
    source = "\n".join(f'.section .text.f{i},"ax",@progbits\n.globl f{i}\nf{i}: ret' for i in range(count))
    (tmp_path / "many.s").write_text(source + '\n.section .debug_str,"MS",@progbits,1\n.string "debug"\n')
    compile_c(tmp_path, "-c", "many.s")
    data = (tmp_path / "many.o").read_bytes()
    result = strip_elf(data, "debug")
    assert result is not None and ".debug_str" in result.removed
    assert all(is_debug_section(n.removeprefix(".rela")) for n in result.removed)
    verify_stripped(data, result.data)
    assert section_names(result.data) == [n for n in section_names(data) if n not in result.removed]
    assert len(section_names(result.data)) > 0xFF00
    stripped = tmp_path / "stripped.o"
    stripped.write_bytes(result.data)
    symbols = subprocess.run(
        ["nm", str(tmp_path / "many.o")], capture_output=True, text=True, check=True
    ).stdout
    assert subprocess.run(["nm", str(stripped)], capture_output=True, text=True, check=True).stdout == symbols
    (tmp_path / "main.c").write_text(
        "extern void f65399(void), f7(void);\nint main(void) { f65399(); f7(); return 0; }\n"
    )
    compile_c(tmp_path, "-o", "prog", "main.c", "stripped.o", "-Wl,-z,noexecstack")
    subprocess.run([str(tmp_path / "prog")], check=True)


@functools.cache
def _archive_seed() -> bytes:
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


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cut=st.integers(min_value=0, max_value=12000),
    flips=st.lists(st.tuples(st.integers(min_value=0, max_value=12000), st.integers(1, 255)), max_size=4),
)
def test_corrupted_archives_never_crash(fixtures: Path, cut: int, flips: list[tuple[int, int]]) -> None:
    original = _archive_seed()
    data = bytearray(original[:cut] if cut < len(original) else original)
    for at, value in flips:
        if at < len(data):
            data[at] ^= value
    outcome = strip_file(bytes(data), StripJob())
    assert outcome.action in ("kept", "unchanged", "stripped")
    if outcome.action == "stripped":
        assert outcome.data is not None and len(outcome.data) < len(data)


def test_archive_seed_is_stripped(fixtures: Path) -> None:
    outcome = strip_file(_archive_seed(), StripJob())
    assert outcome.action == "stripped" and any(
        n.startswith("b.o:.zdebug") or n.startswith("b.o:.debug") for n in outcome.removed
    )
    assert any(n.startswith("a-member-with-a-long-name.o:.debug") for n in outcome.removed)
