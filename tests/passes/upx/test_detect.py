"""``passes.upx.detect`` against real packed files and traps: every packed fixture found with its
format, architecture and size; no false positive on traps, damaged headers or stray ``UPX!`` strings."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from optimizer import Options, optimize
from optimizer.spool import Spool
from passes.upx import UpxOptions
from passes.upx.detect import (
    HEAD_SIZE,
    MAGIC,
    TAIL_SIZE,
    detect_upx,
    detect_upx_many,
    detect_upx_parts,
    looks_like_upx,
)
from tests.conftest import missing

# What `upx -l` (Debian upx-ucl 4.2.2) says about each packed fixture (fixtures/upx/NOTES.md): the OCI
# architecture of its "linux/amd64"-style format and the unpacked size.
from tests.passes.upx.samples import PACKED, corrupt


def test_every_packed_fixture_is_listed(fixtures: Path) -> None:
    assert sorted(p.name for p in (fixtures / "upx" / "packed").iterdir()) == sorted(PACKED)


@pytest.mark.parametrize("name", sorted(PACKED))
def test_packed_fixture_detected(fixtures: Path, name: str) -> None:
    data = (fixtures / "upx" / "packed" / name).read_bytes()
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
    packed = fixtures / "upx" / "packed"
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
    files = sorted((fixtures / "upx" / folder).iterdir())
    assert files
    for path in files:
        data = path.read_bytes()
        assert detect_upx(data) is None, path.name


def test_elf_corpus_has_no_false_positive(fixtures: Path) -> None:
    files = [p for p in sorted((fixtures / "elf").rglob("*")) if p.is_file() and not p.is_symlink()]
    assert files
    flagged = [p.name for p in files if detect_upx(p.read_bytes()) is not None]
    assert flagged == []


def test_damaged_pack_header_is_not_flagged(fixtures: Path) -> None:
    data = (fixtures / "upx" / "packed" / "amd64-linux.elf__upx-3.95").read_bytes()
    at = len(data) - 36
    # A flipped byte breaks the header checksum; a moved magic is not where UPX puts it.
    assert detect_upx(corrupt(data, at + 12)) is None
    assert detect_upx(data[:at] + b"\0" + data[at:-1]) is None


def test_upx_string_near_the_end_of_an_elf_is_not_enough(fixtures: Path) -> None:
    trap = (fixtures / "upx" / "unpacked" / "amd64-linux.elf__upx-3.95.unpacked").read_bytes()
    # "UPX!" exactly where a PackHeader would be, followed by bytes that are not a valid header.
    planted = trap + MAGIC + bytes(range(1, 33))
    assert looks_like_upx(planted[:HEAD_SIZE], planted[-TAIL_SIZE:])
    assert detect_upx(planted) is None


def test_pe_with_upx_string_in_header_area_is_not_flagged(fixtures: Path) -> None:
    trap = (fixtures / "upx" / "unpacked" / "amd64-win64.pe__upx-3.95.exe.unpacked").read_bytes()
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


FIXTURE_IMAGES = (
    "imgutil/oci-layout-busybox",
    "dive/test-docker-image.tar",
    "dive/test-kaniko-image.tar",
    "stereoscope/oci-layout-multiplatform",
    "ggcr/test_bundle.tar",
)


@pytest.mark.parametrize("image", FIXTURE_IMAGES)
def test_no_false_positive_in_fixture_images(fixtures: Path, image: str) -> None:
    path = fixtures / "images" / image
    if not path.exists():
        missing(f"fixture image {path}")
    report = optimize(
        str(path), None, Options(passes=("upx",), dry_run=True, pass_options=(UpxOptions("fail"),))
    )
    runs = [p for i in report.images for p in i.passes if p.name == "upx"]
    assert runs and all(p.status.value == "ok" and p.findings == [] for p in runs)


def test_detect_many_from_spool_matches_detect_upx(fixtures: Path, tmp_path: Path) -> None:
    spool = Spool(str(tmp_path / "files.pack"))
    paths = sorted(p for p in (fixtures / "upx").rglob("*") if p.is_file() and p.name != "NOTES.md")
    stored = [(p.name, spool.store(p.read_bytes())) for p in paths] + [("tiny", spool.store(b"\x7fELF"))]
    expected = {p.name: info for p in paths if (info := detect_upx(p.read_bytes())) is not None}
    assert dict(detect_upx_many(stored)) == expected
    assert sorted(expected) == sorted(PACKED)
