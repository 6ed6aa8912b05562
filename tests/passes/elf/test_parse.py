"""``passes.elf.parse``: arbitrary, truncated and corrupted bytes are left alone, never a crash."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from passes.elf import verify_stripped
from passes.strip_elf import StripJob, strip_file
from tests.passes.elf.oracles import damaged, seed


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
    data = damaged(seed(fixtures, name), cut, flips)
    outcome = strip_file(data, StripJob())
    assert outcome.action in ("kept", "unchanged", "stripped")
    if outcome.action == "stripped":
        assert outcome.data is not None and len(outcome.data) <= len(data)
        verify_stripped(data, outcome.data)
    else:
        assert outcome.data is None
