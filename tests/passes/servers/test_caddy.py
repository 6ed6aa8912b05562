"""``passes.servers.caddy``: ``precompressed`` in a Caddyfile (snippets and imports) and in JSON."""

from __future__ import annotations

import json
from pathlib import Path

from passes.servers import served, web_roots
from tests.passes import kit
from tests.passes.servers.helpers import deadline, kept, served_by


def test_caddyfile_site_root_and_formats(tmp_path: Path) -> None:
    caddyfile = b"""
(assets) {
    file_server {
        precompressed br gzip
    }
}
example.com {
    root * /srv/www
    import assets
}
:8080 {
    root /srv/other
    file_server
}
"""
    result = served_by(tmp_path, {"etc/caddy/Caddyfile": caddyfile})
    assert kept(result, "srv/www/a.js.br", "srv/www/a.js.gz", "srv/www/a.js.zst", "srv/other/a.js.gz") == {
        "srv/www/a.js.br": "served by Caddy (precompressed) from /srv/www",
        "srv/www/a.js.gz": "served by Caddy (precompressed) from /srv/www",
        "srv/www/a.js.zst": None,  # not among the formats listed
        "srv/other/a.js.gz": None,  # file_server without precompressed
    }


def test_bare_precompressed_means_every_format_and_placeholders_keep_everything(tmp_path: Path) -> None:
    caddyfile = b":80 {\n root * {env.SITE}\n file_server {\n precompressed\n }\n}\n"
    result = served_by(tmp_path, {"etc/caddy/Caddyfile": caddyfile})
    assert set(result.everywhere) == {".br", ".gz", ".zst"}
    assert "root {env.SITE}" in result.notes[0]


def test_json_config(tmp_path: Path) -> None:
    handler = {
        "handler": "file_server",
        "root": "/usr/share/caddy",
        "precompressed": {"gzip": {}, "zstd": {}},
    }
    document = {"apps": {"http": {"servers": {"srv0": {"routes": [{"handle": [handler]}]}}}}}
    result = served_by(tmp_path, {"config/caddy/autosave.json": json.dumps(document).encode()})
    assert result.keeps("usr/share/caddy/index.html.zst", ".zst") == (
        "served by Caddy (precompressed) from /usr/share/caddy"
    )
    assert result.keeps("usr/share/caddy/index.html.br", ".br") is None


def test_import_cycles_stop(tmp_path: Path) -> None:
    caddyfile = b"(a) {\n import a\n import a\n file_server {\n precompressed gzip\n }\n}\n"
    caddyfile += b":80 {\n root * /srv\n import a\n import Caddyfile\n}\n"
    result = served_by(tmp_path, {"etc/caddy/Caddyfile": caddyfile})
    assert result.keeps("srv/x.gz", ".gz") == "served by Caddy (precompressed) from /srv"


def test_snippets_importing_each_other_keep_everything(tmp_path: Path) -> None:
    imports = "".join(f" import s{n}\n" for n in range(10))
    caddyfile = "".join(f"(s{n}) {{\n{imports}}}\n" for n in range(10))
    caddyfile += ":80 {\n root * /srv\n import s0\n file_server {\n precompressed gzip\n }\n}\n"
    with deadline(1.0):  # about 10! imports without a bound on the whole
        result = served_by(tmp_path, {"etc/caddy/Caddyfile": caddyfile.encode()})
    assert result.keeps("srv/x.gz", ".gz") == (
        "Caddy precompressed is on and its root cannot be told (/etc/caddy/Caddyfile and what it includes "
        "read more than 1000 includes (files that include each other?))"
    )


def test_json_that_does_not_parse_or_nests_too_deep_keeps_every_twin_and_gives_no_root(
    tmp_path: Path,
) -> None:
    handler = {"handler": "file_server", "root": "/srv/www", "precompressed": {"gzip": {}}}
    document = json.dumps({"apps": {"http": {"servers": {"srv0": {"routes": [{"handle": [handler]}]}}}}})
    files = {
        "etc/caddy/cut.json": document[:-3].encode(),  # a config cut short
        "etc/caddy/lists.json": b"[" * 5000 + b"]" * 5000,  # json.loads: RecursionError
        "etc/caddy/objects.json": b'{"a": ' * 900 + b"null" + b"}" * 900,  # parses; our walks recurse
        "srv/www/app.js": b"a",
        "srv/www/app.js.gz": b"z",
    }
    fs = kit.make_filesystem(tmp_path, [files], parents=True)
    found = served(fs, {})
    deep = "nests lists and objects more than 64 levels deep"
    assert [(s.source, s.root, s.why) for s in found.servings] == [
        ("/etc/caddy/cut.json", None, "/etc/caddy/cut.json does not parse: Expecting ',' delimiter: line 1 "
         f"column {len(document) - 2} (char {len(document) - 3})"),
        ("/etc/caddy/lists.json", None, f"/etc/caddy/lists.json {deep}"),
        ("/etc/caddy/objects.json", None, f"/etc/caddy/objects.json {deep}"),
    ]  # fmt: skip
    assert set(found.everywhere) == {".br", ".gz", ".zst"}
    assert found.keeps("srv/www/app.js.gz", ".gz") == (
        "Caddy precompressed is on and its root cannot be told (/etc/caddy/cut.json does not parse: "
        f"Expecting ',' delimiter: line 1 column {len(document) - 2} (char {len(document) - 3}))"
    )
    roots = web_roots(fs, {})
    assert roots.roots == [] and roots.holding("srv/www/app.js") is None  # no media reduction either
