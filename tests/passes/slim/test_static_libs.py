from __future__ import annotations

from pathlib import Path

from optimizer.model import Entry, EntryKind
from passes.slim import static_libs

from .rules import removed, verdict

FILES = {
    "usr/lib/x86_64-linux-gnu/libz.a": b"!<arch>\nobjects",
    "usr/lib/x86_64-linux-gnu/libz.so.1": b"\x7fELF",
    "usr/lib/x86_64-linux-gnu/libltdl-user.la": b"# libtool archive: read at run time",
    "srv/data/table.a": b"not an ar archive",
    "usr/include/zlib.h": b"/* zlib */",
    "usr/include/python3.11/pyconfig.h": b"/* sysconfig reads it */",
    "venv/lib/python3.11/site-packages/numpy/_core/include/numpy/ndarraytypes.h": b"/* numpy */",
    "srv/app/config.h": b"not under include/",
}


def test_without_a_compiler_static_libraries_and_headers_go(tmp_path: Path) -> None:
    found = verdict(tmp_path, static_libs.find, [FILES])
    assert removed(found) == [
        "usr/include/zlib.h",
        "usr/lib/x86_64-linux-gnu/libz.a",
        "venv/lib/python3.11/site-packages/numpy/_core/include/numpy/ndarraytypes.h",
    ]


def test_with_a_compiler_or_linker_nothing_goes(tmp_path: Path) -> None:
    for tool in (
        "usr/bin/x86_64-linux-gnu-gcc-12",
        "usr/bin/ld.bfd",
        "usr/lib/x86_64-linux-gnu/libclang-14.so.1",
    ):
        layer = [(Entry(tool, EntryKind.FILE, mode=0o755, size=4), b"\x7fELF")]
        found = verdict(tmp_path / tool.replace("/", "_"), static_libs.find, [FILES, layer])
        assert removed(found) == [], tool
        assert found.kept == [
            (tool, "a compiler or linker is in the image: static libraries and headers kept")
        ]
