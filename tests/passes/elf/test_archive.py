"""``passes.elf.archive``: stripped objects and archives still link, members match GNU strip, corrupted
archives never crash."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from passes.elf import strip_archive, strip_elf
from passes.strip_elf import StripJob, strip_file
from tests.conftest import require_tool
from tests.passes.elf.oracles import (
    LIBRARY,
    PROGRAM,
    archive_seed,
    compile_c,
    damaged,
    kept_set,
    multiarch_strip,
    objdump_relocations,
    run,
)


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


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cut=st.integers(min_value=0, max_value=12000),
    flips=st.lists(st.tuples(st.integers(min_value=0, max_value=12000), st.integers(1, 255)), max_size=4),
)
def test_corrupted_archives_never_crash(fixtures: Path, cut: int, flips: list[tuple[int, int]]) -> None:
    data = damaged(archive_seed(), cut, flips)
    outcome = strip_file(data, StripJob())
    assert outcome.action in ("kept", "unchanged", "stripped")
    if outcome.action == "stripped":
        assert outcome.data is not None and len(outcome.data) < len(data)


def test_archive_seed_is_stripped(fixtures: Path) -> None:
    outcome = strip_file(archive_seed(), StripJob())
    assert outcome.action == "stripped" and any(
        n.startswith("b.o:.zdebug") or n.startswith("b.o:.debug") for n in outcome.removed
    )
    assert any(n.startswith("a-member-with-a-long-name.o:.debug") for n in outcome.removed)
