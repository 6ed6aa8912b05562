"""``passes.servers``: every rule says what it detects and why; an image without servers keeps nothing; a
configuration whose includes go past the bound (files that include each other) has roots that cannot be told."""

from __future__ import annotations

from pathlib import Path

import pytest

from passes.servers import RULES, served, web_roots
from passes.servers.files import MAX_INCLUDES
from tests.passes import kit
from tests.passes.servers.helpers import (
    deadline,
    h2o_aliases,
    h2o_including_twice,
    including_each_other,
    served_by,
)

# server -> (its hostile configuration: files read about 10! or 2**16 times, the file named, the suffixes kept)
HOSTILE = {
    "nginx": (including_each_other("nginx", 10), "/etc/nginx/nginx.conf", {".gz", ".br"}),
    "apache": (including_each_other("apache", 10), "/etc/apache2/apache2.conf", {".gz", ".br", ".zst"}),
    "lighttpd": (including_each_other("lighttpd", 10), "/etc/lighttpd/lighttpd.conf", {".gz", ".br", ".zst"}),
    "caddy": (including_each_other("caddy", 10), "/etc/caddy/Caddyfile", {".gz", ".br", ".zst"}),
    "h2o": (h2o_including_twice(16), "/etc/h2o/h2o.conf", {".gz", ".br"}),
}


def test_every_rule_says_what_it_detects_and_why() -> None:
    names = [rule.server for rule in RULES]
    assert len(names) == len(set(names))
    assert {"nginx", "Apache httpd", "Caddy", "h2o", "lighttpd", "express-static-gzip"} <= set(names)
    assert all(len(rule.detects) > 20 and len(rule.why) > 20 for rule in RULES)


def test_no_server_keeps_nothing(tmp_path: Path) -> None:
    result = served_by(tmp_path, {"usr/share/doc/a/changelog.gz": b"x", "etc/hostname": b"h"})
    assert result.servings == [] and result.notes == []
    assert result.keeps("usr/share/doc/a/changelog.gz", ".gz") is None


@pytest.mark.parametrize("server", sorted(HOSTILE))
def test_files_including_each_other_keep_every_twin_and_give_no_root(tmp_path: Path, server: str) -> None:
    files, main, suffixes = HOSTILE[server]
    fs = kit.make_filesystem(tmp_path, [{**files, "srv/site0/app.js": b"a", "srv/site0/app.js.gz": b"z"}])
    with deadline(1.0):  # without a bound on the whole: minutes (k! reads)
        found = served(fs, {})
        roots = web_roots(fs, {})
    assert set(found.everywhere) == suffixes
    reason = (
        f"{main} and what it includes read more than {MAX_INCLUDES} includes (files that include each other?)"
    )
    assert found.keeps("srv/site0/app.js.gz", ".gz") == (
        f"{found.everywhere['.gz'].server} {found.everywhere['.gz'].how} is on and its root cannot be told "
        f"({reason})"
    )
    assert found.prefixes == {}  # what was read before the bound is no evidence either
    assert roots.roots == [] and roots.holding("srv/site0/app.js") is None


def test_yaml_aliases_are_walked_once(tmp_path: Path) -> None:
    fs = kit.make_filesystem(tmp_path, [h2o_aliases(40)])  # 2**40 paths
    with deadline(1.0):
        found = served(fs, {})
        roots = web_roots(fs, {})
    assert [(s.root, s.suffixes) for s in found.servings] == [("srv/www", {".br", ".gz"})]
    assert [(r.how, r.root) for r in roots.roots] == [("file.dir", "srv/www")]


# server -> a configuration that includes one snippet three times, its roots, and the roots it sends twins from
SNIPPET_THRICE: dict[str, tuple[dict[str, bytes], set[str], set[str]]] = {
    "nginx": (
        {
            "etc/nginx/nginx.conf": b"http { gzip_static on;"
            + b"".join(b" server { root /srv/%s; include snippets/s.conf; }" % n for n in (b"a", b"b", b"c"))
            + b" }",
            "etc/nginx/snippets/s.conf": b"location /x/ { alias /srv/x/; }",
        },
        {"srv/a", "srv/b", "srv/c", "srv/x"},
        {"srv/a", "srv/b", "srv/c", "srv/x"},
    ),
    "apache": (
        {
            "etc/apache2/apache2.conf": b"".join(
                b"<VirtualHost *:80>\nDocumentRoot /srv/%s\nInclude s.conf\n</VirtualHost>\n" % n
                for n in (b"a", b"b", b"c")
            ),
            "etc/apache2/s.conf": b"Alias /x /srv/x\nRewriteRule ^(.+)$ $1.gz [L]\n",
        },
        {"srv/a", "srv/b", "srv/c", "srv/x"},
        {"srv/a", "srv/b", "srv/c"},
    ),
    "lighttpd": (
        {
            "etc/lighttpd/lighttpd.conf": b'server.document-root = "/srv/a"\n' + b'include "s.conf"\n' * 3,
            "etc/lighttpd/s.conf": b'alias.url += ( "/x" => "/srv/x" )\n',
        },
        {"srv/a", "srv/x"},
        set(),  # no mod_magnet script: lighttpd sends no twin
    ),
    "caddy": (
        {
            "etc/caddy/Caddyfile": b"".join(
                b"%s.example {\n root * /srv/%s\n import s.caddy\n}\n" % (n, n) for n in (b"a", b"b", b"c")
            ),
            "etc/caddy/s.caddy": b"file_server {\n precompressed gzip\n}\n",
        },
        {"srv/a", "srv/b", "srv/c"},
        {"srv/a", "srv/b", "srv/c"},
    ),
}


@pytest.mark.parametrize("server", sorted(SNIPPET_THRICE))
def test_a_snippet_included_three_times_gives_its_roots(tmp_path: Path, server: str) -> None:
    files, roots, sent = SNIPPET_THRICE[server]
    fs = kit.make_filesystem(tmp_path, [files])
    assert {r.root for r in web_roots(fs, {}).roots} == roots
    found = served(fs, {})
    assert found.notes == [] and found.everywhere == {}
    assert {s.root for s in found.servings} == sent
