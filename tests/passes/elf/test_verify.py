"""``passes.elf.verify``: a changed mapped byte fails verification."""

from __future__ import annotations

from pathlib import Path

import pytest

from passes.elf import ElfSkipped, strip_elf, verify_stripped


def test_verification_catches_a_changed_mapped_byte(fixtures: Path) -> None:
    data = (fixtures / "elf" / "sample_exe64.elf").read_bytes()
    result = strip_elf(data)
    assert result is not None
    verify_stripped(data, result.data)
    tampered = bytearray(result.data)
    tampered[0x400] ^= 0xFF  # inside the first PT_LOAD (.text region)
    with pytest.raises(ElfSkipped, match=r"segment|section"):
        verify_stripped(data, bytes(tampered))
