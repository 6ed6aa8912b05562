"""Category ``locales``: message catalogs for languages the image is not configured to speak.

Removes: files and symlinks under ``usr/share/locale/LANG/`` and ``usr/local/share/locale/LANG/`` (gettext's
``.mo`` catalogs, mostly) for every LANG whose language is not the one of the config's ``LANG``, ``LANGUAGE``,
``LC_ALL``, ``LC_MESSAGES`` or another ``LC_*`` variable, nor named by ``--slim-keep-locales``: what Debian's
slim images leave out with ``path-exclude /usr/share/locale/*``, less the languages kept.

Why it is safe: a program looks a message up in the catalog of the language its locale names, and prints the
untranslated message when there is none; with the image's own locale settings, the catalogs removed are never
opened. A language is kept whole (``pt`` keeps ``pt``, ``pt_BR`` and ``pt_PT``). A container started with
another ``LANG`` than its image's config prints untranslated (English) messages: keep that language with
``--slim-keep-locales``.

Never removes: the files directly in ``usr/share/locale`` (``locale.alias``), directories, compiled locales
(``usr/lib/locale``: ``C.UTF-8`` and friends, which programs need), ``usr/share/i18n``, catalogs elsewhere
(a Python or Node package's own translations).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from .rule import Subject, Verdict, plain_files

__all__ = ["CATEGORY", "find", "languages"]

CATEGORY = "locales"
REASON = "message catalog of a language the image's locale settings do not name"
ROOTS = ("usr/share/locale", "usr/local/share/locale")
_VARIABLES = ("LANG", "LC_ALL", "LC_MESSAGES")
_SPLIT = re.compile(r"[_.@]")


def language(name: str) -> str:
    """``de_DE.UTF-8@euro`` -> ``de``; the C and POSIX locales name none (``""``)."""
    code = _SPLIT.split(name.strip(), 1)[0]
    return "" if code in ("C", "POSIX", "") else code.lower()


def languages(env: Mapping[str, str], extra: Iterable[str] = ()) -> frozenset[str]:
    """The languages the image speaks: of its locale variables, and of the locales given to keep."""
    names = [env.get(variable, "") for variable in _VARIABLES]
    names += [value for key, value in env.items() if key.startswith("LC_")]
    names += env.get("LANGUAGE", "").split(":")
    names += list(extra)
    return frozenset(code for code in map(language, names) if code)


def find(subject: Subject) -> Verdict:
    kept = languages(subject.env, subject.keep_locales)
    verdict = Verdict()
    for root in ROOTS:
        for path, _node in plain_files(subject.under(root)):
            name, _, rest = path[len(root) + 1 :].partition("/")
            if not rest:
                continue  # locale.alias and the like, directly in the root
            if language(name) in kept:
                continue
            verdict.remove.append((path, REASON))
    if kept:
        verdict.kept.append((ROOTS[0], f"catalogs kept for {', '.join(sorted(kept))} (the config's locale)"))
    return verdict
