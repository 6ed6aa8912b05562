"""The ``strip-elf`` pass: on a hand-built filesystem, and end to end through ``optimizer.optimize``."""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

from optimizer import Options, optimize, settings
from optimizer.changes import Op
from optimizer.errors import UsageError
from optimizer.model import Entry, EntryKind
from passes import PASSES
from passes.elf import is_debug_section, section_names
from passes.strip_elf import SPILL_BYTES, StripElf, StripElfOptions, StripJob, strip_file
from tests.conftest import missing, require_tool
from tests.imagetools import Layout, build_image, entry
from tests.passes import kit

PROGRAM = r"""
#include <stdio.h>
int main(void) { puts("hello from a stripped binary"); return 0; }
"""


@pytest.fixture(scope="module")
def debug_binary(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    require_tool("gcc", "gcc")
    work = tmp_path_factory.mktemp("gcc")
    (work / "hello.c").write_text(PROGRAM)
    subprocess.run(["gcc", "-g", "-O0", "-o", "hello", "hello.c"], cwd=work, check=True, capture_output=True)
    return (work / "hello").read_bytes()


def file(path: str, data: bytes) -> tuple[Entry, bytes]:
    return Entry(path, EntryKind.FILE, mode=0o755, size=len(data)), data


def test_pass_is_registered_before_the_passes_that_follow_it() -> None:
    names = [p.name for p in PASSES]
    assert StripElf in PASSES
    assert all(
        names.index("strip-elf") < names.index(later)
        for later in ("media", "upx", "inject")
        if later in names
    )


def test_pass_strips_once_per_inode_and_says_why_it_left_files_alone(
    tmp_path: Path, debug_binary: bytes, fixtures: Path
) -> None:
    elf = fixtures / "elf"
    core = (elf / "core_linux64.elf").read_bytes()
    corrupt = (elf / "corrupt_sh.elf").read_bytes()
    packed = fixtures / "upx" / "packed" / "amd64-linux.elf__upx-3.95"
    if not packed.exists():
        missing(f"{packed} not found")
    ctx = kit.run(
        tmp_path,
        StripElf(StripElfOptions()),
        [
            [file("usr/bin/protected", debug_binary)],
            [
                file("usr/bin/hello", debug_binary),
                (Entry("usr/bin/hello-again", EntryKind.HARDLINK, link="usr/bin/hello"), None),
                file("usr/lib/debug/.build-id/ab/cdef.debug", (elf / "debuglink.debug").read_bytes()),
                file("core", core),
                file("usr/bin/corrupt", corrupt),
                file("usr/bin/packed", packed.read_bytes()),
                file("usr/bin/selfextract", debug_binary + b"PAYLOAD" * 10),
                file("usr/bin/already-stripped", (elf / "debian" / "hello.amd64").read_bytes()),
                file("usr/bin/script", b"#!/bin/sh\necho not an ELF file at all\n"),
                file("usr/lib/s390x.o", (elf / "s390x-relocs.o.elf").read_bytes()),
            ],
        ],
        protected=frozenset({0}),
        workers=2,
    )
    changes = {c.visible_path: c for c in ctx.changes}
    assert sorted(changes) == ["usr/bin/hello", "usr/lib/s390x.o"]
    assert all(c.op is Op.REPLACE for c in changes.values())
    hello = changes["usr/bin/hello"]
    assert hello.content is not None and hello.bytes_after < hello.bytes_before == len(debug_binary)
    names = section_names(hello.content.read_bytes())
    assert ".symtab" not in names and not [n for n in names if is_debug_section(n)]
    reasons = {f.path: (f.action, f.reason) for f in ctx.report.findings}
    assert reasons["usr/bin/hello"][0] == "stripped"
    assert reasons["usr/bin/protected"] == ("kept", "protected layer")
    assert "usr/lib/debug" in reasons["usr/lib/debug/.build-id/ab/cdef.debug"][1]
    assert reasons["core"] == ("kept", "core dump")
    assert "headers do not parse" in reasons["usr/bin/corrupt"][1]
    assert "UPX" in reasons["usr/bin/packed"][1]
    assert "appended" in reasons["usr/bin/selfextract"][1]
    assert "usr/bin/already-stripped" not in reasons and "usr/bin/script" not in reasons
    assert "usr/bin/hello-again" not in reasons  # one path per inode; the change reaches every link


def test_files_over_the_size_limit_are_left_alone(tmp_path: Path, debug_binary: bytes) -> None:
    ctx = kit.run(
        tmp_path,
        StripElf(StripElfOptions(max_size=len(debug_binary) - 1)),
        [[file("app", debug_binary)]],
        workers=2,
    )
    assert not list(ctx.changes)
    ((path, action, reason),) = [(f.path, f.action, f.reason) for f in ctx.report.findings]
    assert (path, action) == ("app", "kept") and "--strip-max-size" in reason


def test_debug_mode_keeps_symbols(tmp_path: Path, debug_binary: bytes) -> None:
    ctx = kit.run(tmp_path, StripElf(StripElfOptions(mode="debug")), [[file("app", debug_binary)]], workers=2)
    (change,) = list(ctx.changes)
    assert change.content is not None
    names = section_names(change.content.read_bytes())
    assert ".symtab" in names and ".debug_info" not in names


def test_cli_flags_round_trip() -> None:
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser, StripElfOptions, StripElf.flag_prefix)
    assert (
        settings.from_args(StripElfOptions, parser.parse_args([]), StripElf.flag_prefix) == StripElfOptions()
    )
    options = settings.from_args(
        StripElfOptions,
        parser.parse_args(
            [
                "--strip-mode",
                "all",
                "--strip-drop-debuglink",
                "--strip-no-archives",
                "--strip-max-size",
                "1000",
            ]
        ),
        StripElf.flag_prefix,
    )
    assert options == StripElfOptions(mode="all", keep_debuglink=False, archives=False, max_size=1000)
    with pytest.raises(UsageError, match="unknown mode"):  # exit 2 from the library too, not a ValueError
        StripElfOptions(mode="everything")  # type: ignore[arg-type]


def layer_files(layout: Layout, digest: str) -> dict[str, tuple[tarfile.TarInfo, bytes | None]]:
    raw = layout.blob(digest)
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    out: dict[str, tuple[tarfile.TarInfo, bytes | None]] = {}
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        for member in tar:
            reader = tar.extractfile(member) if member.isfile() else None
            out[member.name.lstrip("./")] = (member, reader.read() if reader else None)
    return out


def test_end_to_end_through_optimize(tmp_path: Path, debug_binary: bytes) -> None:
    source = build_image(
        tmp_path / "in.tar",
        [
            [
                entry("usr", EntryKind.DIR),
                entry("usr/bin", EntryKind.DIR),
                entry("usr/bin/hello", data=debug_binary, mode=0o4711, uid=12, gid=34),
                entry("usr/bin/hi", EntryKind.HARDLINK, link="usr/bin/hello"),
                entry("etc", EntryKind.DIR),
                entry("etc/motd", data=b"not an ELF\n"),
            ]
        ],
    )
    out = tmp_path / "out.tar"
    report = optimize(str(source), str(out), Options(base="none", passes=("strip-elf",)))
    (image,) = report.images
    (strip_report,) = image.passes
    assert strip_report.status.value == "ok" and strip_report.files_changed == 1
    assert strip_report.bytes_after < strip_report.bytes_before
    layout = Layout(out)
    ((_, manifest),) = layout.manifests()
    files = layer_files(layout, manifest["layers"][0]["digest"])
    member, data = files["usr/bin/hello"]
    assert data is not None and len(data) < len(debug_binary)
    assert (member.mode, member.uid, member.gid) == (0o4711, 12, 34)
    link, _ = files["usr/bin/hi"]
    assert link.islnk() and link.linkname.lstrip("./") == "usr/bin/hello"
    assert files["etc/motd"][1] == b"not an ELF\n"
    binary = tmp_path / "hello"
    binary.write_bytes(data)
    os.chmod(binary, 0o755)
    assert subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout == (
        "hello from a stripped binary\n"
    )
    findings = json.loads(json.dumps(report.to_json()))["images"][0]["passes"][0]["findings"]
    assert [f["path"] for f in findings if f["action"] == "stripped"] == ["usr/bin/hello"]


def test_large_results_come_back_through_a_file(tmp_path: Path) -> None:
    require_tool("gcc", "gcc")
    (tmp_path / "big.c").write_text(
        '#include <stdio.h>\nchar big[6 << 20] = {1};\nint main(void) { printf("%d\\n", big[0]); return 0; }\n'
    )
    subprocess.run(["gcc", "-g", "-o", "big", "big.c"], cwd=tmp_path, check=True, capture_output=True)
    data = (tmp_path / "big").read_bytes()
    assert len(data) > SPILL_BYTES
    before = set(os.listdir(tempfile.gettempdir()))
    ctx = kit.run(
        tmp_path, StripElf(StripElfOptions()), [[file("big", data)], [file("big2", data + b"\0")]], workers=2
    )
    changes = sorted(ctx.changes, key=lambda c: c.visible_path)
    assert [c.visible_path for c in changes] == ["big", "big2"]
    for change in changes:
        assert change.content is not None
        stripped = change.content.read_bytes()
        assert SPILL_BYTES < len(stripped) < len(data) and ".symtab" not in section_names(stripped)
    assert not [n for n in set(os.listdir(tempfile.gettempdir())) - before if n.startswith("strip-elf-")]


def test_cli_strip_mode_debug(tmp_path: Path, debug_binary: bytes) -> None:
    source = build_image(tmp_path / "in.tar", [[entry("app", data=debug_binary, mode=0o755)]])
    out, report_path = tmp_path / "out.tar", tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "optimizer", str(source), str(out), "--passes", "strip-elf", "--strip-mode", "debug",
         "--base", "none", "--report", str(report_path)],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2], check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(report_path.read_text())
    (finding,) = [f for f in report["images"][0]["passes"][0]["findings"] if f["action"] == "stripped"]
    assert finding["path"] == "app" and finding["details"]["mode"] == "debug"
    assert ".symtab" not in finding["details"]["removed"] and ".debug_info" in finding["details"]["removed"]


def test_upx_packed_files_are_left_alone(fixtures: Path) -> None:
    packed = fixtures / "upx" / "packed" / "amd64-linux.elf__upx-3.95"
    if not packed.exists():
        missing(f"{packed} not found")
    outcome = strip_file(packed.read_bytes(), StripJob())
    assert outcome.action == "kept" and "UPX" in outcome.reason
