from __future__ import annotations

from pathlib import Path

from passes.slim import docs

from .rules import removed, verdict


def test_docs_go_and_notices_and_directory_links_stay(tmp_path: Path) -> None:
    found = verdict(
        tmp_path,
        docs.find,
        [
            {
                "usr/share/doc/bash/README.gz": b"r",
                "usr/share/doc/bash/copyright": b"(c)",
                "usr/share/doc/bash/examples/x.sh": b"x",
                "usr/share/doc/lib/LICENSE.txt": b"l",
                "usr/share/doc/lib/COPYING": b"c",
                "usr/share/doc/libfoo": "->bash",  # a package pointing at another's notices
                "usr/share/doc/bash/NEWS": "->README.gz",
                "usr/share/doc/bash/legal": "->copyright",
                "usr/share/docs-of-something-else/README": b"kept",
                "usr/bin/bash": b"\x7fELF",
            }
        ],
    )
    assert removed(found) == [
        "usr/share/doc/bash/NEWS",
        "usr/share/doc/bash/README.gz",
        "usr/share/doc/bash/examples/x.sh",
    ]
