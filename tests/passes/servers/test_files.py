"""``passes.servers.files``: includes globbed in the image and bounded as a whole, roots resolved through the
image's symlinks."""

from __future__ import annotations

from pathlib import Path

import pytest

from passes.servers.files import (
    MAX_INCLUDED_TEXT,
    MAX_INCLUDES,
    IncludeLimit,
    Includes,
    Symlinks,
    config_paths,
    real_prefixes,
)
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


def test_includes_count_every_file_named_and_every_character_read(tmp_path: Path) -> None:
    big = b"#" * (MAX_INCLUDED_TEXT // 2 + 10)
    files = {"etc/app/a.conf": b"a", "etc/app/b.conf": b"bb", "etc/app/big.conf": big}
    includes = Includes(kit.make_filesystem(tmp_path, [files], parents=True), "etc/app/main.conf")
    assert includes.paths("etc/app/[ab].conf") == ["etc/app/a.conf", "etc/app/b.conf"]
    assert includes.paths("etc/app/none-*.conf") == []  # naming nothing still counts
    assert (includes.includes, includes.characters) == (3, 0)
    assert includes.text("etc/app/b.conf") == "bb" and includes.text("etc/app/b.conf") == "bb"
    assert includes.text("etc/app/missing.conf") is None
    assert (includes.includes, includes.characters) == (3, 4)
    includes.text("etc/app/big.conf")
    with pytest.raises(IncludeLimit) as raised:
        includes.text("etc/app/big.conf")  # the same file again counts again
    assert raised.value.source == "etc/app/main.conf"
    assert str(raised.value) == "/etc/app/main.conf and what it includes read more than 4 MiB of text"
    includes = Includes(kit.make_filesystem(tmp_path / "2", [files], parents=True), "etc/app")
    includes.count(MAX_INCLUDES, 0)
    with pytest.raises(IncludeLimit, match=f"^/etc/app and what it includes read more than {MAX_INCLUDES} "):
        includes.paths("etc/app/a.conf")
