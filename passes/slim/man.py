"""Category ``man``: manual pages and info manuals, and man-db's index of them.

Removes: every file and symlink under ``usr/share/man/``, ``usr/local/share/man/`` and ``usr/share/info/``,
and man-db's cache ``var/cache/man/`` (``mandb`` rebuilds it): what Debian's slim images leave out with
``path-exclude``.

Why it is safe: these are read by ``man``, ``info`` and ``groff`` on a person's request and by nothing a
service runs. ``dpkg --verify`` lists them as missing, as on an image built with Debian's ``path-exclude``.

Never removes: directories (``update-alternatives`` puts its man page links in ``usr/share/man/man1``; a slim
image without that directory cannot install a JDK), groff's own data (a program may typeset with groff),
anything elsewhere.
"""

from __future__ import annotations

from .rule import Subject, Verdict, plain_files

__all__ = ["CATEGORY", "find"]

CATEGORY = "man"
ROOTS = {
    "usr/share/man": "manual page (read by man only)",
    "usr/local/share/man": "manual page (read by man only)",
    "usr/share/info": "info manual (read by info only)",
    "var/cache/man": "man-db's index of manual pages (mandb rebuilds it)",
}


def find(subject: Subject) -> Verdict:
    verdict = Verdict()
    for root, reason in ROOTS.items():
        verdict.remove += [(path, reason) for path, _ in plain_files(subject.under(root))]
    return verdict
