"""``passes.servers.files``: includes globbed in the image, roots resolved through the image's symlinks."""

from __future__ import annotations

from pathlib import Path

from passes.servers.files import Symlinks, config_paths, real_prefixes
from tests.passes import kit


def test_includes_glob_component_by_component_through_symlinks(tmp_path: Path) -> None:
    fs = kit.make_filesystem(
        tmp_path,
        [
            {
                "etc/app/sites/a/site.conf": b"a",
                "etc/app/sites/b/site.conf": b"b",
                "etc/app/sites/b/other.conf": b"o",
                "etc/app/enabled": "->sites",
            }
        ],
        parents=True,
    )
    assert config_paths(fs, "etc/app/enabled/*/site.conf") == [
        "etc/app/enabled/a/site.conf",
        "etc/app/enabled/b/site.conf",
    ]
    assert config_paths(fs, "etc/app/sites/b/other.conf") == ["etc/app/sites/b/other.conf"]
    assert config_paths(fs, "etc/nowhere/*.conf") == []


def test_real_prefixes_follow_symlinks_below_the_root_and_stop_on_cycles(tmp_path: Path) -> None:
    fs = kit.make_filesystem(
        tmp_path,
        [
            {
                "var/www/current": "->/srv/releases/7",
                "srv/releases/7/index.html": b"i",
                "srv/releases/7/shared": "->../../shared",
                "srv/releases/7/again": "->/var/www/current",
                "srv/shared/logo.svg": b"s",
                "srv/shared/up": "->..",
                "srv/releases/7/gone": "->/nowhere",
            }
        ],
        parents=True,
    )
    assert real_prefixes(fs, "var/www/current", Symlinks(fs)) == ["srv/releases/7", "srv/shared", "srv"]
    assert real_prefixes(fs, "opt/missing", Symlinks(fs)) == ["opt/missing"]
