"""``passes.elf.layout``: the same sections as GNU strip on every fixture, files left alone with the
reason, and programs, shared libraries and objects that still run or link once stripped."""

from __future__ import annotations

import subprocess
import zlib
from pathlib import Path

import pytest

from passes.elf import MODES, ElfSkipped, is_debug_section, section_names, strip_elf, verify_stripped
from tests.conftest import require_tool
from tests.passes.elf.oracles import (
    ANNOTATIONS,
    CORRUPT,
    LIBRARY,
    PROGRAM,
    compile_c,
    elf_fixtures,
    gnu_flag,
    gnu_strip,
    hello_binaries,
    is_relocatable,
    kept_set,
    multiarch_strip,
    run,
    strip_in_place,
)


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


def test_files_left_alone_say_why(fixtures: Path) -> None:
    folder = fixtures / "elf"
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
    data = (fixtures / "elf" / "sample_exe64.elf").read_bytes()
    with pytest.raises(ElfSkipped, match="appended"):
        strip_elf(data + b"PK\x03\x04 a self-extracting payload")
    padded = strip_elf(data + bytes(64))
    plain = strip_elf(data)
    assert padded is not None and plain is not None and padded.data == plain.data


def test_signed_kernel_module_is_left_alone(fixtures: Path) -> None:
    data = (fixtures / "elf" / "s390x-relocs.o.elf").read_bytes()
    assert strip_elf(data) is not None
    with pytest.raises(ElfSkipped, match="signed kernel module"):
        strip_elf(data + b"\x00" * 40 + b"~Module signature appended~\n")


def test_relocatable_objects_get_debug_at_most(fixtures: Path) -> None:
    data = (fixtures / "elf" / "s390x-relocs.o.elf").read_bytes()
    for mode in MODES:
        result = strip_elf(data, mode)
        assert result is not None and result.mode == "debug"
        names = section_names(result.data)
        assert ".symtab" in names and ".rela.text" in names
        assert not [n for n in names if is_debug_section(n)]


def test_debuglink_kept_unless_asked(fixtures: Path) -> None:
    data = (fixtures / "elf" / "debuglink").read_bytes()
    assert strip_elf(data, "all") is not None  # .comment goes in "all"
    kept = strip_elf(data, "all")
    assert kept is not None and ".gnu_debuglink" in section_names(kept.data)
    dropped = strip_elf(data, "unneeded", keep_debuglink=False)
    assert dropped is not None and ".gnu_debuglink" not in section_names(dropped.data)
    assert ".note.gnu.build-id" in section_names(dropped.data)


def test_compressed_debug_sections_go(fixtures: Path) -> None:
    for name in ("exe_compressed64.elf", "compressed_64.o"):
        result = strip_elf((fixtures / "elf" / name).read_bytes(), "debug")
        assert result is not None
        assert not [n for n in section_names(result.data) if n.startswith((".zdebug", ".debug"))]


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
