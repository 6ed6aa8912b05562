"""``passes.packages`` on hand-made databases: apk, an unreadable rpm database, dpkg's other files, the image's
symlinked directories and hardlinks, and Python RECORD files kept true (checked by ``importlib.metadata``)."""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.metadata
import subprocess
from pathlib import Path
from typing import Any

import pytest

from optimizer import Options, optimize
from optimizer.changes import Op
from optimizer.pipeline import PassContext
from optimizer.spool import Spool
from passes import packages
from passes.compressed_duplicates import CompressedDuplicates, CompressedDuplicatesOptions
from passes.packages.apk import parse_installed
from passes.packages.dpkg import parse_diversions, parse_md5sums
from passes.packages.record import rewrite_record
from passes.strip_elf import StripElf, StripElfOptions
from tests.conftest import require_tool
from tests.imagetools import build_image, entry, umoci_unpack
from tests.passes import kit

SITE = "usr/lib/python3/site-packages"
DIST = f"{SITE}/pkg-1.0.dist-info"


@pytest.fixture(scope="module")
def elves(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """Distinct ELF files built with -g: strip-elf has something to take from each."""
    gcc = require_tool("gcc", "gcc")
    where = tmp_path_factory.mktemp("elf")
    (where / "x.c").write_text("int answer(void) { return N; }\nint main(void) { return answer(); }\n")
    out = []
    for number in range(4):
        subprocess.run([gcc, "-g", f"-DN={number}", "-o", str(where / "x"), str(where / "x.c")], check=True)
        out.append((where / "x").read_bytes())
    return out


@pytest.fixture(scope="module")
def elf(elves: list[bytes]) -> bytes:
    return elves[0]


def strip(tmp_path: Path, layers: list[kit.Layer], **context: Any) -> PassContext:
    return kit.run(tmp_path, StripElf(StripElfOptions()), layers, **context)


def test_apk_database_lists_directories_and_files() -> None:
    data = b"C:Q1abc=\nP:busybox\nV:1.36\nF:bin\nR:busybox\nZ:Q1x=\nF:etc\nR:securetty\n\nP:musl\nF:lib\nR:ld-musl-x86_64.so.1\n"
    assert list(parse_installed(data)) == [
        ("bin", "busybox"),
        ("bin/busybox", "busybox"),
        ("etc", "busybox"),
        ("etc/securetty", "busybox"),
        ("lib", "musl"),
        ("lib/ld-musl-x86_64.so.1", "musl"),
    ]


def test_apk_owned_files_are_kept(tmp_path: Path, elves: list[bytes]) -> None:
    db = b"P:tool\nF:usr/bin\nR:tool\n"
    ctx = strip(tmp_path, [{"lib/apk/db/installed": db, "usr/bin/tool": elves[0], "app/tool": elves[1]}])
    assert kit.changed(ctx) == ["app/tool"]
    assert "apk lists it (package tool)" in kit.findings(ctx)["usr/bin/tool"].reason


def test_dpkg_md5sums_diversions_and_distroless_status_d() -> None:
    md5 = b"d41d8cd98f00b204e9800998ecf8427e  usr/bin/a\nd41d8cd98f00b204e9800998ecf8427e *usr/bin/b c\nbad\n"
    assert list(parse_md5sums(md5)) == ["usr/bin/a", "usr/bin/b c"]
    diversions = b"/usr/bin/x\n/usr/bin/x.distrib\npkg\n/etc/y\n/etc/y.orig\n:\n"
    assert list(parse_diversions(diversions)) == [
        ("usr/bin/x", "usr/bin/x.distrib", "pkg"),
        ("etc/y", "etc/y.orig", ":"),
    ]


def test_dpkg_paths_through_symlinked_directories_and_hardlinks(tmp_path: Path, elves: list[bytes]) -> None:
    """dpkg lists /lib/...: on a merged-/usr image the file is at usr/lib/...; a hardlink shares its fate."""
    layer: kit.Files = {
        "lib": "->usr/lib",
        "var/lib/dpkg/status": b"",
        "var/lib/dpkg/info/libx:amd64.list": b"/.\n/lib\n/lib/libx.so.1\n",
        "var/lib/dpkg/status.d/other.md5sums": b"d41d8cd98f00b204e9800998ecf8427e  usr/bin/other\n",
        "var/lib/dpkg/diversions": b"/usr/bin/other\n/usr/bin/other.real\nother\n",
        "usr/lib/libx.so.1": elves[0],
        "app/libx-copy.so": "=>usr/lib/libx.so.1",
        "usr/bin/other.real": elves[1],
        "app/mine": elves[2],
    }
    ctx = strip(tmp_path, [layer], parents=True)
    assert kit.changed(ctx) == ["app/mine"]
    found = kit.findings(ctx)
    assert "dpkg lists it (package libx)" in found["app/libx-copy.so"].reason
    assert "(as /usr/lib/libx.so.1)" in found["app/libx-copy.so"].reason
    assert "dpkg lists it (package other)" in found["usr/bin/other.real"].reason
    # --touch-package-files: everything goes.
    touched = kit.make_context(tmp_path / "touch", [layer], StripElf.name, parents=True)
    touched.touch_package_files = True
    kit.run_pass(StripElf(StripElfOptions()), touched)
    assert kit.changed(touched) == ["app/libx-copy.so", "app/mine", "usr/bin/other.real"]


def test_an_unreadable_rpm_database_keeps_everything_under_usr(tmp_path: Path, elves: list[bytes]) -> None:
    layer = {"var/lib/rpm/Packages": b"\0" * 4096, "usr/bin/tool": elves[0], "opt/app/tool": elves[1]}
    ctx = strip(tmp_path, [layer])
    assert kit.changed(ctx) == ["opt/app/tool"]
    assert "BerkeleyDB" in kit.findings(ctx)["usr/bin/tool"].reason
    assert any("every file under /usr/" in w for w in ctx.report.warnings)


def test_a_damaged_rpm_sqlite_database_is_unreadable(tmp_path: Path, elf: bytes) -> None:
    ctx = strip(tmp_path, [{"usr/lib/sysimage/rpm/rpmdb.sqlite": b"not sqlite" * 100, "usr/bin/tool": elf}])
    assert kit.changed(ctx) == []
    assert "could not be read" in kit.findings(ctx)["usr/bin/tool"].reason


def test_the_databases_are_read_once_per_image(tmp_path: Path, elf: bytes) -> None:
    ctx = kit.make_context(tmp_path, [{"lib/apk/db/installed": b"P:t\nF:usr/bin\nR:t\n", "usr/bin/t": elf}])
    first = packages.ownership(ctx)
    assert packages.ownership(ctx) is first
    assert first.owner("usr/bin/t") == "apk lists it (package t)"


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}\r\n"


def _distribution(elf: bytes, tool: bytes) -> dict[str, bytes | str]:
    data = b"x = 1\n" * 300
    files = {
        "pkg/_ext.so": elf,
        "pkg/__init__.py": b"",
        "pkg/data.txt": data,
        "pkg/data.txt.gz": gzip.compress(data, mtime=0),
        "../../../bin/tool": tool,
    }
    record = "".join(_record_line(p, d) for p, d in files.items()) + "pkg-1.0.dist-info/RECORD,,\r\n"
    layer: dict[str, bytes | str] = {
        f"{SITE}/{p}" if not p.startswith("..") else "usr/bin/tool": d for p, d in files.items()
    }
    layer[f"{DIST}/METADATA"] = b"Metadata-Version: 2.1\nName: pkg\nVersion: 1.0\n"
    layer[f"{DIST}/RECORD"] = record.encode()
    return layer


def test_strip_elf_rewrites_the_record_lines_of_what_it_changed(tmp_path: Path, elves: list[bytes]) -> None:
    ctx = strip(tmp_path, [_distribution(*elves[:2])])
    changes = kit.by_path(ctx)
    assert set(changes) == {f"{SITE}/pkg/_ext.so", "usr/bin/tool", f"{DIST}/RECORD"}
    record = changes[f"{DIST}/RECORD"]
    assert record.op is Op.REPLACE and record.content is not None
    old = kit.findings(ctx)
    assert old[f"{DIST}/RECORD"].action == "updated"
    lines = record.content.read_bytes().decode().splitlines(keepends=True)
    stripped = changes[f"{SITE}/pkg/_ext.so"].content
    tool = changes["usr/bin/tool"].content
    assert stripped is not None and tool is not None
    assert lines[0] == _record_line("pkg/_ext.so", stripped.read_bytes())
    assert lines[4] == _record_line("../../../bin/tool", tool.read_bytes())
    original = _distribution(*elves[:2])[f"{DIST}/RECORD"]
    assert isinstance(original, bytes)
    assert (
        lines[1:4] + lines[5:]
        == original.decode().splitlines(keepends=True)[1:4] + original.decode().splitlines(keepends=True)[5:]
    )


def test_a_record_in_a_protected_layer_keeps_its_files(tmp_path: Path, elves: list[bytes]) -> None:
    layer = _distribution(*elves[:2])
    base = {k: v for k, v in layer.items() if k.endswith("RECORD") or k.endswith("METADATA")}
    upper = {k: v for k, v in layer.items() if k not in base}
    ctx = strip(tmp_path, [base, upper], protected=frozenset({0}))
    assert kit.changed(ctx) == []
    assert "protected layer" in kit.findings(ctx)[f"{SITE}/pkg/_ext.so"].reason


def test_a_deleted_file_leaves_its_record(tmp_path: Path, elves: list[bytes]) -> None:
    ctx = kit.run(tmp_path, CompressedDuplicates(CompressedDuplicatesOptions()), [_distribution(*elves[:2])])
    assert kit.changed(ctx) == [f"{DIST}/RECORD", f"{SITE}/pkg/data.txt.gz"]
    record = kit.by_path(ctx)[f"{DIST}/RECORD"].content
    assert record is not None and b"data.txt.gz" not in record.read_bytes()


def test_rewrite_keeps_other_algorithms_quoting_and_line_endings(tmp_path: Path) -> None:
    content = Spool(str(tmp_path / "new.pack")).store(b"new")
    data = b'"odd,name.py",sha512=abc,3\r\nplain.py,sha256=x,1\n'
    new = rewrite_record(data, f"{DIST}/RECORD", {f"{SITE}/odd,name.py": content})
    digest = base64.urlsafe_b64encode(hashlib.sha512(b"new").digest()).rstrip(b"=").decode()
    assert new == f'"odd,name.py",sha512={digest},3\r\nplain.py,sha256=x,1\n'.encode()


def test_importlib_metadata_verifies_the_output(tmp_path: Path, elves: list[bytes]) -> None:
    """End to end: every file importlib.metadata lists has the hash and size its RECORD says."""
    layer = [
        entry(path, data=d if isinstance(d, bytes) else b"") for path, d in _distribution(*elves[:2]).items()
    ]
    source = build_image(tmp_path / "in.tar", [layer], {"config": {}})
    out = tmp_path / "out.tar"
    report = optimize(str(source), str(out), Options(base="none"))
    assert report.changed
    require_tool("umoci", "umoci")
    rootfs = umoci_unpack(out, tmp_path, "out")
    [dist] = list(importlib.metadata.distributions(path=[str(rootfs / SITE)]))
    files = dist.files or []
    assert len(files) == 5  # data.txt.gz deleted, its line with it; RECORD lists itself
    for file in files:
        located = Path(str(file.locate()))
        if file.hash is None:
            continue
        data = located.read_bytes()
        assert file.size == len(data), file
        digest = base64.urlsafe_b64encode(hashlib.new(file.hash.mode, data).digest()).rstrip(b"=").decode()
        assert file.hash.value == digest, file
