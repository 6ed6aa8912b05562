"""``passes.upx.unpack``: ``upx -d`` output verified against the headers, for every packed fixture."""

from __future__ import annotations

from pathlib import Path

import pytest

from passes.upx.detect import detect_upx
from passes.upx.unpack import UnpackFailed, unpack_upx, verify_unpacked
from tests.conftest import require_tool

# What `upx -l` (Debian upx-ucl 4.2.2) says about each packed fixture (fixtures/upx/NOTES.md): the OCI
# architecture of its "linux/amd64"-style format and the unpacked size.
from tests.passes.upx.samples import PACKED, packed_fixture, trap


def test_unpack_every_fixture_verifies(fixtures: Path, tmp_path: Path) -> None:
    upx = require_tool("upx", "upx-ucl")
    for name in ("armeb-linux.elf__upx-3.95", "i386-win32.pe__upx-3.95.exe", "test.sh.compressed"):
        data = packed_fixture(fixtures, name)
        info = detect_upx(data)
        assert info is not None
        output = unpack_upx(data, upx)
        verify_unpacked(info, output)
        assert len(output) == PACKED[name][2]
    # The shell script wrapped in an ELF comes back as the original script.
    original = (fixtures / "upx" / "original" / "test.sh").read_bytes()
    assert unpack_upx(packed_fixture(fixtures, "test.sh.compressed"), upx) == original
    arm64 = detect_upx(packed_fixture(fixtures, "arm64-linux.elf__upx-3.95"))
    assert arm64 is not None
    with pytest.raises(UnpackFailed, match="expected elf/arm64"):
        verify_unpacked(arm64, trap(fixtures))
    with pytest.raises(UnpackFailed, match="left a packed file"):
        verify_unpacked(arm64, packed_fixture(fixtures, "arm64-linux.elf__upx-3.95"))
