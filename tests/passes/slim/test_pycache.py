from __future__ import annotations

from pathlib import Path

from passes.slim import pycache

from .rules import removed, verdict

MAGIC = b"\xa7\r\r\n"


def pyc(flags: int) -> bytes:
    return MAGIC + flags.to_bytes(4, "little") + b"\0" * 8 + b"\xe3code"


def test_caches_with_their_source_go_sourceless_and_unchecked_ones_stay(tmp_path: Path) -> None:
    found = verdict(
        tmp_path,
        pycache.find,
        [
            {
                "lib/pkg/mod.py": b"x = 1\n",
                "lib/pkg/__pycache__/mod.cpython-311.pyc": pyc(0),  # timestamp-based
                "lib/pkg/__pycache__/mod.cpython-311.opt-1.pyc": pyc(0b11),  # checked hash
                "lib/pkg/__pycache__/mod.cpython-39.pyc": pyc(0),  # another interpreter's: still a cache
                "lib/pkg/__init__.py": "->mod.py",  # a symlinked source counts
                "lib/pkg/__pycache__/__init__.cpython-311.pyc": pyc(0),
                "lib/pkg/__pycache__/gone.cpython-311.pyc": pyc(0),  # sourceless: the .pyc is the module
                "lib/pkg/other.py": b"y = 2\n",
                "lib/pkg/__pycache__/other.cpython-311.pyc": pyc(0b01),  # unchecked hash
                "lib/pkg/mod.pyc": pyc(0),  # not in __pycache__
                "lib/pkg/__pycache__/notes.cpython-311.pyc": b"not bytecode",
                "lib/pkg/notes.py": b"",
            }
        ],
    )
    assert removed(found) == [
        "lib/pkg/__pycache__/__init__.cpython-311.pyc",
        "lib/pkg/__pycache__/mod.cpython-311.opt-1.pyc",
        "lib/pkg/__pycache__/mod.cpython-311.pyc",
        "lib/pkg/__pycache__/mod.cpython-39.pyc",
    ]
    assert found.kept == [("", "1 unchecked-hash .pyc file(s): Python runs them without the source")]
