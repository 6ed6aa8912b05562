"""The ``upx`` pass: warn, fail and unpack on a hand-built filesystem, and end to end through the CLI."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from optimizer import Options, optimize
from optimizer.errors import PolicyError, RequiredToolNotFound
from optimizer.pipeline import PassContext
from passes.upx import Upx, UpxOptions
from passes.upx.detect import detect_upx
from tests.conftest import require_tool
from tests.imagetools import Layout, build_image, entry
from tests.passes import kit

# What `upx -l` (Debian upx-ucl 4.2.2) says about each packed fixture (fixtures/upx/NOTES.md): the OCI
# architecture of its "linux/amd64"-style format and the unpacked size.
from tests.passes.upx.samples import corrupt, packed_fixture, trap


def _context(
    tmp_path: Path, layers: list[dict[str, bytes]], protected: frozenset[int] = frozenset()
) -> PassContext:
    return kit.make_context(tmp_path, layers, Upx.name, protected, workers=2)


def test_warn_reports_each_packed_file(
    fixtures: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ctx = _context(
        tmp_path,
        [
            {"usr/bin/packed": packed_fixture(fixtures), "usr/bin/upx-itself": trap(fixtures)},
            {
                "app/server.exe": packed_fixture(fixtures, "i386-win32.pe__upx-3.95.exe"),
                "app/readme": b"UPX!" * 40,
            },
        ],
    )
    with caplog.at_level(logging.WARNING, logger="oci_optimizer.passes.upx"):
        kit.run_pass(Upx(UpxOptions()), ctx)
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


def test_clean_image_has_no_findings(fixtures: Path, tmp_path: Path) -> None:
    elf = fixtures / "elf"
    files = {
        f"bin/{p.name}": p.read_bytes() for p in sorted(elf.rglob("*")) if p.is_file() and not p.is_symlink()
    }
    ctx = _context(tmp_path, [files, {"usr/bin/upx": trap(fixtures)}])
    kit.run_pass(Upx(UpxOptions()), ctx)
    assert ctx.report.findings == [] and ctx.report.warnings == []


def test_fail_raises_policy_error(fixtures: Path, tmp_path: Path) -> None:
    ctx = _context(tmp_path, [{"usr/bin/packed": packed_fixture(fixtures)}])
    with pytest.raises(PolicyError, match=r"test-image: .*layer 1/1 usr/bin/packed \(elf/amd64, UPX 3.95"):
        kit.run_pass(Upx(UpxOptions(mode="fail")), ctx)


def test_fail_passes_a_clean_image(fixtures: Path, tmp_path: Path) -> None:
    ctx = _context(tmp_path, [{"usr/bin/upx": trap(fixtures)}])
    kit.run_pass(Upx(UpxOptions(mode="fail")), ctx)
    assert ctx.report.findings == []


def test_unpack_without_upx_names_the_package(
    fixtures: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    ctx = _context(tmp_path, [{"usr/bin/packed": packed_fixture(fixtures)}])
    with pytest.raises(RequiredToolNotFound, match="upx-ucl"):
        kit.run_pass(Upx(UpxOptions(mode="unpack")), ctx)


def test_unpack_matches_upx_d(fixtures: Path, tmp_path: Path) -> None:
    require_tool("upx", "upx-ucl")
    packed = packed_fixture(fixtures)
    ctx = _context(
        tmp_path,
        [{"usr/bin/base": packed_fixture(fixtures, "arm64-linux.elf__upx-3.95")}, {"usr/bin/app": packed}],
        frozenset({0}),
    )
    kit.run_pass(Upx(UpxOptions(mode="unpack")), ctx)
    changes = list(ctx.changes)
    assert [(c.path, c.layer) for c in changes] == [("usr/bin/app", 1)]
    assert changes[0].content is not None
    # The fixture's unpacked file was made with upx -d (NOTES.md): the same bytes.
    assert changes[0].content.read_bytes() == trap(fixtures)
    actions = sorted((f.path, f.action, f.reason) for f in ctx.report.findings)
    assert actions == [
        ("usr/bin/app", "replaced", "unpacked with upx -d"),
        ("usr/bin/base", "kept", "protected layer"),
    ]


def test_unpack_keeps_a_damaged_file(fixtures: Path, tmp_path: Path) -> None:
    require_tool("upx", "upx-ucl")
    packed = packed_fixture(fixtures)
    damaged = corrupt(packed, len(packed) // 2)
    assert detect_upx(damaged) is not None  # head and tail intact: still detected
    ctx = _context(tmp_path, [{"usr/bin/app": damaged}])
    kit.run_pass(Upx(UpxOptions(mode="unpack")), ctx)
    assert len(ctx.changes) == 0
    assert [(f.action, f.reason.split(":")[0]) for f in ctx.report.findings] == [("kept", "not unpacked")]
    assert any("not unpacked" in w for w in ctx.report.warnings)


def _image_with(fixtures: Path, root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    return build_image(
        root / "image.tar",
        [
            [entry("etc/hostname", data=b"box\n")],
            [
                entry("usr/local/bin/app", data=packed_fixture(fixtures), mode=0o755),
                entry("usr/local/bin/upx", data=trap(fixtures), mode=0o755),
            ],
        ],
    )


def test_end_to_end_unpack(fixtures: Path, tmp_path: Path) -> None:
    require_tool("upx", "upx-ucl")
    src = _image_with(fixtures, tmp_path / "in")
    options = Options(
        base="none", passes=("upx",), output_format="oci-dir", pass_options=(UpxOptions("unpack"),)
    )
    report = optimize(str(src), str(tmp_path / "out"), options)
    result = report.images[0].passes[0]
    assert (result.status.value, result.files_changed) == ("ok", 1)
    files = Layout(tmp_path / "out").merged_files()
    assert files["usr/local/bin/app"] == trap(fixtures)  # what upx -d gives (fixtures/upx/NOTES.md)
    assert files["usr/local/bin/upx"] == trap(fixtures)
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
