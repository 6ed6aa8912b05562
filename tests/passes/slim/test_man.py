from __future__ import annotations

from pathlib import Path

from passes.slim import man

from .rules import removed, verdict


def test_manual_pages_and_info_go_and_their_directories_stay(tmp_path: Path) -> None:
    found = verdict(
        tmp_path,
        man.find,
        [
            {
                "usr/share/man/man1/ls.1.gz": b"m",
                "usr/share/man/de/man1/ls.1.gz": b"m",
                "usr/share/man/man1/dir.1.gz": "->ls.1.gz",
                "usr/share/info/coreutils.info.gz": b"i",
                "usr/local/share/man/man8/tool.8": b"t",
                "var/cache/man/index.db": b"db",
                "usr/share/groff/current/font/devps/R": b"groff font: a program may typeset",
            }
        ],
    )
    assert removed(found) == [
        "usr/local/share/man/man8/tool.8",
        "usr/share/info/coreutils.info.gz",
        "usr/share/man/de/man1/ls.1.gz",
        "usr/share/man/man1/dir.1.gz",
        "usr/share/man/man1/ls.1.gz",
        "var/cache/man/index.db",
    ]
