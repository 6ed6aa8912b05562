from __future__ import annotations

from pathlib import Path

from passes.slim import locales

from .rules import env, removed, verdict

CATALOGS = {
    "usr/share/locale/locale.alias": b"alias",
    "usr/share/locale/de/LC_MESSAGES/coreutils.mo": b"de",
    "usr/share/locale/pt_BR/LC_MESSAGES/coreutils.mo": b"pt_BR",
    "usr/share/locale/pt/LC_MESSAGES/coreutils.mo": b"pt",
    "usr/share/locale/sr@latin/LC_MESSAGES/coreutils.mo": b"sr",
    "usr/lib/locale/C.utf8/LC_CTYPE": b"compiled locale: never touched",
    "usr/lib/python3/dist-packages/app/locale/de/LC_MESSAGES/app.mo": b"a package's own",
}


def test_without_a_locale_every_catalog_goes(tmp_path: Path) -> None:
    found = verdict(tmp_path, locales.find, [CATALOGS], env(LANG="C.UTF-8"))
    assert removed(found) == sorted(
        p for p in CATALOGS if p.startswith("usr/share/locale/") and p.count("/") > 3
    )


def test_the_configured_languages_are_kept_whole(tmp_path: Path) -> None:
    found = verdict(tmp_path, locales.find, [CATALOGS], env(LANG="pt_PT.UTF-8", LANGUAGE="sr@latin:en"))
    assert removed(found) == ["usr/share/locale/de/LC_MESSAGES/coreutils.mo"]


def test_languages_given_to_keep_are_kept(tmp_path: Path) -> None:
    found = verdict(
        tmp_path, locales.find, [CATALOGS], env(LC_MESSAGES="de_DE@euro"), keep_locales=("pt_BR",)
    )
    assert removed(found) == ["usr/share/locale/sr@latin/LC_MESSAGES/coreutils.mo"]


def test_language_of_a_locale_name() -> None:
    assert locales.language("de_DE.UTF-8@euro") == "de"
    assert locales.language("C.UTF-8") == "" and locales.language("POSIX") == ""
    assert locales.languages({"LC_TIME": "fr_FR.UTF-8", "LANG": "C"}) == {"fr"}
