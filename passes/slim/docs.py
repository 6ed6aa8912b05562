"""Category ``docs``: package documentation under ``/usr/share/doc``.

Removes: every file and symlink under ``usr/share/doc/`` (READMEs, changelogs, NEWS, examples), the set Debian's
own slim images leave out with ``path-exclude /usr/share/doc/*``.

Why it is safe: Debian Policy 12.3 forbids a package to need anything in ``/usr/share/doc`` to work, and the
FHS gives the directory to documentation for people. ``dpkg --verify`` then lists the files as missing, exactly
as it does on an image built with Debian's ``path-exclude`` (dpkg does not hide excluded files there either).

Never removes: copyright and licence notices (``copyright``, ``COPYING*``, ``LICENSE*``, ``NOTICE*``...: the
image must still carry them), symlinks that lead to a directory or to a notice kept (``/usr/share/doc/PKG ->
OTHER`` is how a package points at the notices of another), any directory (a package's maintainer script may
write into its own), anything outside ``usr/share/doc``.
"""

from __future__ import annotations

from optimizer.model import EntryKind

from .rule import Subject, Verdict, is_legal_notice, plain_files

__all__ = ["CATEGORY", "find"]

CATEGORY = "docs"
ROOT = "usr/share/doc"
REASON = "documentation (Debian Policy 12.3: no package needs /usr/share/doc to work)"


def find(subject: Subject) -> Verdict:
    verdict = Verdict()
    for path, node in plain_files(subject.under(ROOT)):
        if node.entry.kind is EntryKind.SYMLINK:
            target = subject.fs.resolve(path)
            if target is not None and (subject.fs.is_directory(target) or is_legal_notice(target)):
                continue
        elif is_legal_notice(path):
            continue
        verdict.remove.append((path, REASON))
    return verdict
