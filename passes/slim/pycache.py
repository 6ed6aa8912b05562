"""Category ``pycache``: compiled Python bytecode that Python makes again from the source beside it.

Removes: ``DIR/__pycache__/NAME.TAG.pyc`` (and ``NAME.TAG.opt-N.pyc``) when ``DIR/NAME.py`` is a regular file
(symlinks followed) and the ``.pyc`` is timestamp-based or checked-hash (PEP 552): Python validates such a
cache against its source on every import and compiles the source when the cache is missing or stale.

Why it is safe: Python's import then runs the same code, compiled from the same source; only the first import
of each module is slower (milliseconds per module), and Python writes the cache back into the container's own
layer when it can (or compiles in memory each time on a read-only root or with ``PYTHONDONTWRITEBYTECODE``).

Never removes: a ``.pyc`` without its ``.py`` (a sourceless module: the ``.pyc`` is the code), an
unchecked-hash ``.pyc`` (Python runs it without looking at the source, which may differ), a file whose header
is not a ``.pyc`` header, bytecode outside ``__pycache__``, anything in zip archives.
"""

from __future__ import annotations

import re

from optimizer.model import EntryKind

from .rule import Subject, Verdict

__all__ = ["CATEGORY", "find"]

CATEGORY = "pycache"
REASON = "bytecode cache with its source beside it (Python compiles the source again)"
_CACHED = re.compile(r"(?:(.*)/)?__pycache__/([^/.]+)\.[A-Za-z]+-?[0-9][^/.]*(?:\.opt-[0-9]+)?\.pyc$")
_HASH_BASED = 0b01
_CHECK_SOURCE = 0b10


def find(subject: Subject) -> Verdict:
    verdict = Verdict()
    unchecked = 0
    for path in subject.paths:
        if "__pycache__/" not in path or not path.endswith(".pyc"):
            continue
        found = _CACHED.match(path)
        node = subject.fs.get(path)
        if found is None or node is None or node.content is None or node.entry.kind is EntryKind.SYMLINK:
            continue
        directory, name = found.group(1), found.group(2)
        source = f"{directory}/{name}.py" if directory else f"{name}.py"
        if not subject.is_file(source):
            continue  # sourceless: the .pyc is the module
        head = node.content.read_head(16)
        if len(head) < 16 or head[2:4] != b"\r\n":
            continue  # not a .pyc header (magic number, then \r\n)
        flags = int.from_bytes(head[4:8], "little")
        if flags & _HASH_BASED and not flags & _CHECK_SOURCE:
            unchecked += 1
            continue
        verdict.remove.append((path, REASON))
    if unchecked:
        verdict.kept.append(
            ("", f"{unchecked} unchecked-hash .pyc file(s): Python runs them without the source")
        )
    return verdict
