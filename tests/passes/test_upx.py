"""The UPX detector against real packed files and traps, and the ``upx`` pass."""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import pytest

from optimizer import Options, optimize
from optimizer.changes import Changes
from optimizer.errors import PolicyError, RequiredToolNotFound
from optimizer.filesystem import build_filesystem
from optimizer.layer import IndexedEntry
from optimizer.model import Entry, EntryKind
from optimizer.pipeline import ImageInfo, PassContext, WorkerPool
from optimizer.report import PassReport
from optimizer.spool import Spool
from passes.upx import (
    HEAD_SIZE,
    MAGIC,
    TAIL_SIZE,
    UnpackFailed,
    Upx,
    UpxOptions,
    detect_upx,
    detect_upx_many,
    detect_upx_parts,
    looks_like_upx,
    unpack_upx,
    verify_unpacked,
)
from tests.conftest import fixture, require_tool

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


def test_every_packed_fixture_is_listed(fixtures: Path) -> None:
    assert sorted(p.name for p in fixture("upx/packed").iterdir()) == sorted(PACKED)


@pytest.mark.parametrize("name", sorted(PACKED))
def test_packed_fixture_detected(fixtures: Path, name: str) -> None:
    data = fixture(f"upx/packed/{name}").read_bytes()
    info = detect_upx(data)
    assert info is not None
    fmt, arch, unpacked = PACKED[name]
    assert (info.format, info.architecture, info.unpacked_size) == (fmt, arch, unpacked)
    assert info.packed_size == len(data)
    assert info.method in {"lzma", "nrv2b", "nrv2e"}
    assert info.header_version in (13, 14)
    # The lzma-named Go fixture says its method in its name.
    if name.endswith(".lzma"):
        assert info.method == "lzma"
    # Head and tail alone give the same answer as the whole file.
    assert detect_upx_parts(data[:HEAD_SIZE], data[-TAIL_SIZE:], len(data)) == info


def test_versions_where_the_file_names_them(fixtures: Path) -> None:
    packed = fixture("upx/packed")
    for name in PACKED:
        info = detect_upx((packed / name).read_bytes())
        assert info is not None
        for version in ("3.91", "3.95"):
            if f"upx-{version}" in name and info.version is not None:
                assert info.version == version
    pe = detect_upx((packed / "amd64-win64.pe__upx-3.95.exe").read_bytes())
    assert pe is not None and pe.version == "3.95" and pe.upx_format == "win64/pe"


@pytest.mark.parametrize("folder", ["unpacked", "original"])
def test_traps_are_not_flagged(fixtures: Path, folder: str) -> None:
    files = sorted(fixture(f"upx/{folder}").iterdir())
    assert files
    for path in files:
        data = path.read_bytes()
        assert detect_upx(data) is None, path.name


def test_elf_corpus_has_no_false_positive(fixtures: Path) -> None:
    files = [p for p in sorted(fixture("elf").rglob("*")) if p.is_file() and not p.is_symlink()]
    assert files
    flagged = [p.name for p in files if detect_upx(p.read_bytes()) is not None]
    assert flagged == []


def _corrupt(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


def test_damaged_pack_header_is_not_flagged(fixtures: Path) -> None:
    data = fixture("upx/packed/amd64-linux.elf__upx-3.95").read_bytes()
    at = len(data) - 36
    # A flipped byte breaks the header checksum; a moved magic is not where UPX puts it.
    assert detect_upx(_corrupt(data, at + 12)) is None
    assert detect_upx(data[:at] + b"\0" + data[at:-1]) is None


def test_upx_string_near_the_end_of_an_elf_is_not_enough(fixtures: Path) -> None:
    trap = fixture("upx/unpacked/amd64-linux.elf__upx-3.95.unpacked").read_bytes()
    # "UPX!" exactly where a PackHeader would be, followed by bytes that are not a valid header.
    planted = trap + MAGIC + bytes(range(1, 33))
    assert looks_like_upx(planted[:HEAD_SIZE], planted[-TAIL_SIZE:])
    assert detect_upx(planted) is None


def test_pe_with_upx_string_in_header_area_is_not_flagged(fixtures: Path) -> None:
    trap = fixture("upx/unpacked/amd64-win64.pe__upx-3.95.exe.unpacked").read_bytes()
    planted = trap[:1000] + MAGIC + b"\x0d\x24\x0e\x0a" + bytes(24) + trap[1032:]
    assert detect_upx(planted) is None


def _pack_header(version: int, fmt: int, method: int, unpacked: int) -> bytes:
    body = bytearray(MAGIC + bytes([version, fmt, method, 9]) + bytes(23))
    struct.pack_into(">I" if fmt >= 128 else "<I", body, 24, unpacked)
    body[28:31] = b"\x49\x00\x00"
    return bytes(body) + bytes([sum(body[4:31]) % 251])


def test_synthetic_macho() -> None:
    # No packed Mach-O fixture exists: this follows upx src/p_mach.cpp (l_info at the start of __text,
    # PackHeader appended then padded to a page) and checks the parser, not UPX itself.
    header = struct.pack("<IiiIIIII", 0xFEEDFACF, 0x01000007, 3, 2, 0, 0, 0, 0)
    l_info = struct.pack("<I4sHBB", 0, MAGIC, 0x1000, 14, 34)
    body = header + bytes(200) + l_info + bytes(5000)
    data = body + _pack_header(14, 34, 14, 123456) + struct.pack("<I", 232) + bytes(4096 - 36)
    info = detect_upx(data)
    assert info is not None
    assert (info.format, info.architecture, info.upx_format, info.method, info.unpacked_size) == (
        "macho",
        "amd64",
        "macho/amd64",
        "lzma",
        123456,
    )
    # Without the l_info record it is not taken for packed.
    assert detect_upx(data.replace(l_info, bytes(len(l_info)))) is None


def test_not_executables() -> None:
    for data in (
        b"",
        b"UPX!" * 100,
        b"\x7fELF",
        b"MZ" + bytes(100),
        b"\xca\xfe\xba\xbe\x00\x00\x00\x34" + bytes(64),
    ):
        assert detect_upx(data) is None


# -- the pass ----------------------------------------------------------------------------------------------


def _context(
    tmp_path: Path, layers: list[dict[str, bytes]], protected: frozenset[int] = frozenset()
) -> PassContext:
    spool = Spool(str(tmp_path / "layers.pack"))
    indexed = [
        [
            IndexedEntry(Entry(path, EntryKind.FILE, mode=0o755, size=len(data)), spool.store(data))
            for path, data in files.items()
        ]
        for files in layers
    ]
    fs = build_filesystem(indexed, protected)
    info = ImageInfo(
        "test-image", "sha256:" + "0" * 64, None, {}, [f"sha256:{n:064x}" for n in range(len(layers))]
    )
    return PassContext(
        fs,
        Changes(fs, Upx.name, Spool(str(tmp_path / "new.pack"))),
        info,
        PassReport(Upx.name),
        WorkerPool(2),
    )


def _packed(fixtures: Path, name: str = "amd64-linux.elf__upx-3.95") -> bytes:
    return fixture(f"upx/packed/{name}").read_bytes()


def _trap(fixtures: Path) -> bytes:
    return fixture("upx/unpacked/amd64-linux.elf__upx-3.95.unpacked").read_bytes()


def test_warn_reports_each_packed_file(
    fixtures: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ctx = _context(
        tmp_path,
        [
            {"usr/bin/packed": _packed(fixtures), "usr/bin/upx-itself": _trap(fixtures)},
            {"app/server.exe": _packed(fixtures, "i386-win32.pe__upx-3.95.exe"), "app/readme": b"UPX!" * 40},
        ],
    )
    with caplog.at_level(logging.WARNING, logger="oci_optimizer.passes.upx"):
        Upx(UpxOptions()).run(ctx)
    flagged = sorted(
        (f.path, f.action, f.details["format"], f.details["architecture"]) for f in ctx.report.findings
    )
    assert flagged == [
        ("app/server.exe", "warning", "pe", "386"),
        ("usr/bin/packed", "warning", "elf", "amd64"),
    ]
    assert len(ctx.changes) == 0
    assert any("layer 1/2 usr/bin/packed" in w for w in ctx.report.warnings)
    assert any("decompress" in w for w in ctx.report.warnings)
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "test-image" in logged and "usr/bin/packed" in logged and "app/server.exe" in logged
    ctx.pool.close()


def test_clean_image_has_no_findings(fixtures: Path, tmp_path: Path) -> None:
    elf = fixture("elf")
    files = {
        f"bin/{p.name}": p.read_bytes() for p in sorted(elf.rglob("*")) if p.is_file() and not p.is_symlink()
    }
    ctx = _context(tmp_path, [files, {"usr/bin/upx": _trap(fixtures)}])
    Upx(UpxOptions()).run(ctx)
    assert ctx.report.findings == [] and ctx.report.warnings == []


def test_fail_raises_policy_error(fixtures: Path, tmp_path: Path) -> None:
    ctx = _context(tmp_path, [{"usr/bin/packed": _packed(fixtures)}])
    with pytest.raises(PolicyError, match=r"test-image: .*layer 1/1 usr/bin/packed \(elf/amd64, UPX 3.95"):
        Upx(UpxOptions(mode="fail")).run(ctx)


def test_fail_passes_a_clean_image(fixtures: Path, tmp_path: Path) -> None:
    ctx = _context(tmp_path, [{"usr/bin/upx": _trap(fixtures)}])
    Upx(UpxOptions(mode="fail")).run(ctx)
    assert ctx.report.findings == []


def test_unpack_without_upx_names_the_package(
    fixtures: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    ctx = _context(tmp_path, [{"usr/bin/packed": _packed(fixtures)}])
    with pytest.raises(RequiredToolNotFound, match="upx-ucl"):
        Upx(UpxOptions(mode="unpack")).run(ctx)


def test_unpack_matches_upx_d(fixtures: Path, tmp_path: Path) -> None:
    require_tool("upx", "upx-ucl")
    packed = _packed(fixtures)
    ctx = _context(
        tmp_path,
        [{"usr/bin/base": _packed(fixtures, "arm64-linux.elf__upx-3.95")}, {"usr/bin/app": packed}],
        frozenset({0}),
    )
    Upx(UpxOptions(mode="unpack")).run(ctx)
    changes = list(ctx.changes)
    assert [(c.path, c.layer) for c in changes] == [("usr/bin/app", 1)]
    assert changes[0].content is not None
    # The fixture's unpacked file was made with upx -d (NOTES.md): the same bytes.
    assert changes[0].content.read_bytes() == _trap(fixtures)
    actions = sorted((f.path, f.action, f.reason) for f in ctx.report.findings)
    assert actions == [
        ("usr/bin/app", "replaced", "unpacked with upx -d"),
        ("usr/bin/base", "kept", "protected layer"),
    ]
    ctx.pool.close()


def test_unpack_every_fixture_verifies(fixtures: Path, tmp_path: Path) -> None:
    upx = require_tool("upx", "upx-ucl")
    for name in ("armeb-linux.elf__upx-3.95", "i386-win32.pe__upx-3.95.exe", "test.sh.compressed"):
        data = _packed(fixtures, name)
        info = detect_upx(data)
        assert info is not None
        output = unpack_upx(data, upx)
        verify_unpacked(info, output)
        assert len(output) == PACKED[name][2]
    # The shell script wrapped in an ELF comes back as the original script.
    original = fixture("upx/original/test.sh").read_bytes()
    assert unpack_upx(_packed(fixtures, "test.sh.compressed"), upx) == original
    arm64 = detect_upx(_packed(fixtures, "arm64-linux.elf__upx-3.95"))
    assert arm64 is not None
    with pytest.raises(UnpackFailed, match="expected elf/arm64"):
        verify_unpacked(arm64, _trap(fixtures))
    with pytest.raises(UnpackFailed, match="left a packed file"):
        verify_unpacked(arm64, _packed(fixtures, "arm64-linux.elf__upx-3.95"))


def test_unpack_keeps_a_damaged_file(fixtures: Path, tmp_path: Path) -> None:
    require_tool("upx", "upx-ucl")
    packed = _packed(fixtures)
    damaged = _corrupt(packed, len(packed) // 2)
    assert detect_upx(damaged) is not None  # head and tail intact: still detected
    ctx = _context(tmp_path, [{"usr/bin/app": damaged}])
    Upx(UpxOptions(mode="unpack")).run(ctx)
    assert len(ctx.changes) == 0
    assert [(f.action, f.reason.split(":")[0]) for f in ctx.report.findings] == [("kept", "not unpacked")]
    assert any("not unpacked" in w for w in ctx.report.warnings)


# -- end to end ----------------------------------------------------------------------------------------------

FIXTURE_IMAGES = (
    "imgutil/oci-layout-busybox",
    "dive/test-docker-image.tar",
    "dive/test-kaniko-image.tar",
    "stereoscope/oci-layout-multiplatform",
    "ggcr/test_bundle.tar",
)


@pytest.mark.parametrize("image", FIXTURE_IMAGES)
def test_no_false_positive_in_fixture_images(fixtures: Path, image: str) -> None:
    path = fixture(f"images/{image}")
    report = optimize(
        str(path), None, Options(passes=("upx",), dry_run=True, pass_options={"upx": UpxOptions("fail")})
    )
    runs = [p for i in report.images for p in i.passes if p.name == "upx"]
    assert runs and all(p.status.value == "ok" and p.findings == [] for p in runs)


def _image_with(fixtures: Path, root: Path) -> Path:
    from tests.passes.test_compressed_duplicates import _oci_layout

    return _oci_layout(
        root,
        [
            {"etc/hostname": b"box\n"},
            {"usr/local/bin/app": _packed(fixtures), "usr/local/bin/upx": _trap(fixtures)},
        ],
    )


def test_end_to_end_unpack(fixtures: Path, tmp_path: Path) -> None:
    require_tool("upx", "upx-ucl")
    from tests.passes.test_compressed_duplicates import _output_files

    src = _image_with(fixtures, tmp_path / "in")
    options = Options(passes=("upx",), output_format="oci-dir", pass_options={"upx": UpxOptions("unpack")})
    report = optimize(str(src), str(tmp_path / "out"), options)
    result = report.images[0].passes[0]
    assert (result.status.value, result.files_changed) == ("ok", 1)
    files = _output_files(tmp_path / "out")
    assert files["usr/local/bin/app"] == _trap(fixtures)  # what upx -d gives (fixtures/upx/NOTES.md)
    assert files["usr/local/bin/upx"] == _trap(fixtures)
    assert detect_upx(files["usr/local/bin/app"]) is None


def test_cli_fail_exits_5_and_warn_exits_0(
    fixtures: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from optimizer.cli import main

    src = _image_with(fixtures, tmp_path / "in")
    assert (
        main([str(src), str(tmp_path / "out.tar"), "--passes", "upx", "--upx", "fail"])
        == PolicyError.exit_code
    )
    assert "usr/local/bin/app" in capsys.readouterr().err
    assert main([str(src), str(tmp_path / "out2.tar"), "--passes", "upx", "-v"]) == 0
    out = capsys.readouterr()
    assert "usr/local/bin/app: UPX-packed (elf/amd64, UPX 3.95, lzma" in out.out + out.err


def test_detect_many_from_spool_matches_detect_upx(fixtures: Path, tmp_path: Path) -> None:
    spool = Spool(str(tmp_path / "files.pack"))
    paths = sorted(p for p in fixture("upx").rglob("*") if p.is_file() and p.name != "NOTES.md")
    stored = [(p.name, spool.store(p.read_bytes())) for p in paths] + [("tiny", spool.store(b"\x7fELF"))]
    expected = {p.name: info for p in paths if (info := detect_upx(p.read_bytes())) is not None}
    assert dict(detect_upx_many(stored)) == expected
    assert sorted(expected) == sorted(PACKED)
