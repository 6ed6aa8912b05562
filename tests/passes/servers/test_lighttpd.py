"""``passes.servers.lighttpd``: a mod_magnet script that sends twins serves the document root; mod_deflate
alone sends nothing precompressed."""

from __future__ import annotations

from pathlib import Path

from tests.passes.servers.helpers import served_by

LUA = b"""
local accept = lighty.r.req_header["Accept-Encoding"] or ""
if accept:find("br") and lighty.c.stat(lighty.r.req_attr["physical.path"] .. ".br") then
  lighty.r.req_attr["physical.path"] = lighty.r.req_attr["physical.path"] .. ".br"
end
"""


def test_magnet_script_serves_the_document_root(tmp_path: Path) -> None:
    conf = b'server.document-root = "/var/www/html"\ninclude "conf-enabled/*.conf"\n'
    magnet = b'server.modules += ("mod_magnet")\nmagnet.attract-physical-path-to = ("/etc/lighttpd/br.lua")\n'
    files = {
        "etc/lighttpd/lighttpd.conf": conf,
        "etc/lighttpd/conf-enabled/10-magnet.conf": magnet,
        "etc/lighttpd/br.lua": LUA,
    }
    result = served_by(tmp_path, files)
    assert result.keeps("var/www/html/a.css.br", ".br") == (
        "served by lighttpd (mod_magnet /etc/lighttpd/br.lua) from /var/www/html"
    )
    assert result.keeps("var/www/html/a.css.gz", ".gz") is None


def test_mod_deflate_alone_sends_nothing_precompressed(tmp_path: Path) -> None:
    conf = b'server.document-root = "/var/www/html"\nserver.modules += ("mod_deflate")\n'
    assert served_by(tmp_path, {"etc/lighttpd/lighttpd.conf": conf}).servings == []


def test_a_root_built_from_variables_is_told(tmp_path: Path) -> None:
    magnet = b'magnet.attract-physical-path-to = ("/etc/lighttpd/br.lua")\n'
    told = b'var.basedir = "/var/www/localhost"\nserver.document-root = var.basedir + "/htdocs"\n' + magnet
    files = {"etc/lighttpd/lighttpd.conf": told, "etc/lighttpd/br.lua": LUA}
    result = served_by(tmp_path, files)
    assert result.keeps("var/www/localhost/htdocs/a.css.br", ".br") == (
        "served by lighttpd (mod_magnet /etc/lighttpd/br.lua) from /var/www/localhost/htdocs"
    )
    assert result.keeps("srv/a.css.br", ".br") is None
    files["etc/lighttpd/lighttpd.conf"] = b'server.document-root = env.ROOT + "/htdocs"\n' + magnet
    unknown = served_by(tmp_path, files)
    assert unknown.keeps("srv/a.css.br", ".br") == (
        "lighttpd mod_magnet /etc/lighttpd/br.lua is on and its root cannot be told "
        "(server.document-root (an expression))"
    )
