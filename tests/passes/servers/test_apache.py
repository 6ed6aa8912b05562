"""``passes.servers.apache``: the mod_deflate precompressed recipe in the configuration and in .htaccess."""

from __future__ import annotations

from pathlib import Path

from passes.servers.files import MAX_INCLUDED_TEXT, MAX_INCLUDES
from tests.passes.servers.helpers import kept, served_by

RECIPE = b"""
    RewriteEngine On
    RewriteCond "%{HTTP:Accept-encoding}" "gzip"
    RewriteCond "%{REQUEST_FILENAME}\\.gz" -s
    RewriteRule "^(.*)\\.(css|js)" "$1\\.$2\\.gz" [QSA]
"""


def test_directory_recipe_serves_its_directory(tmp_path: Path) -> None:
    conf = b"ServerRoot /etc/apache2\nIncludeOptional sites-enabled/*.conf\n"
    site = b"<VirtualHost *:80>\nDocumentRoot /var/www/html\n<Directory /var/www/html/assets>\n" + RECIPE
    site += b"</Directory>\n</VirtualHost>\n"
    files = {
        "etc/apache2/apache2.conf": conf,
        "etc/apache2/sites-enabled/000-default.conf": site,
        "var/www/html/assets/a.js.gz": b"x",
    }
    result = served_by(tmp_path, files)
    assert kept(
        result, "var/www/html/assets/a.js.gz", "var/www/html/other.js.gz", "var/www/html/a.js.br"
    ) == {
        "var/www/html/assets/a.js.gz": "served by Apache httpd (RewriteRule) from /var/www/html/assets",
        "var/www/html/other.js.gz": None,
        "var/www/html/a.js.br": None,
    }


def test_virtual_host_recipe_serves_its_document_root_and_variables_keep_everything(tmp_path: Path) -> None:
    site = b"<VirtualHost *:80>\n" + RECIPE + b"DocumentRoot /srv/site\n</VirtualHost>\n"
    result = served_by(tmp_path, {"etc/httpd/conf/httpd.conf": site})
    assert result.keeps("srv/site/x.css.gz", ".gz") == "served by Apache httpd (RewriteRule) from /srv/site"
    assert result.keeps("opt/x.css.gz", ".gz") is None
    unknown = site.replace(b"/srv/site", b"${APACHE_DOCUMENT_ROOT}")
    result = served_by(tmp_path / "2", {"etc/httpd/conf/httpd.conf": unknown})
    assert "root cannot be told (root ${APACHE_DOCUMENT_ROOT})" in (result.keeps("opt/x.css.gz", ".gz") or "")


def test_htaccess_serves_its_directory_only_where_httpd_is(tmp_path: Path) -> None:
    files = {"var/www/html/.htaccess": RECIPE.replace(b".gz", b".br"), "var/www/html/a.css.br": b"x"}
    assert served_by(tmp_path, files).servings == []  # no httpd in the image
    files["usr/local/apache2/conf/httpd.conf"] = b"DocumentRoot /usr/local/apache2/htdocs\n"
    result = served_by(tmp_path / "2", files)
    assert (
        result.keeps("var/www/html/a.css.br", ".br")
        == "served by Apache httpd (RewriteRule) from /var/www/html"
    )
    assert result.keeps("var/www/html/a.css.gz", ".gz") is None


def test_include_cycles_stop(tmp_path: Path) -> None:
    conf = b"Include apache2.conf\nInclude apache2.conf\n<Directory /srv/www>\n" + RECIPE + b"</Directory>\n"
    result = served_by(tmp_path, {"etc/apache2/apache2.conf": conf})
    assert result.keeps("srv/www/a.css.gz", ".gz") == "served by Apache httpd (RewriteRule) from /srv/www"


def test_htaccess_files_past_the_bound_keep_every_twin(tmp_path: Path) -> None:
    """The .htaccess files are bounded as a whole like an include walk (``MAX_INCLUDES`` files,
    ``MAX_INCLUDED_TEXT`` bytes): past it, httpd's root cannot be told; a file past it was left unread."""
    httpd = {"usr/local/apache2/conf/httpd.conf": b"DocumentRoot /usr/local/apache2/htdocs\n"}
    many = {f"srv/d{n:04}/.htaccess": b"Options -Indexes\n" for n in range(MAX_INCLUDES - 1)}
    many["srv/z/.htaccess"] = RECIPE  # the last in path order
    at_bound = served_by(tmp_path / "1", {**httpd, **many})
    assert at_bound.keeps("srv/z/a.css.gz", ".gz") == "served by Apache httpd (RewriteRule) from /srv/z"
    assert at_bound.keeps("srv/d0000/a.css.gz", ".gz") is None

    many["srv/d9999/.htaccess"] = b"Options -Indexes\n"  # one more before it
    past = served_by(tmp_path / "2", {**httpd, **many})
    assert set(past.everywhere) == {".gz", ".br", ".zst"} and past.prefixes == {}
    assert past.keeps("srv/z/a.css.gz", ".gz") == (
        f"Apache httpd RewriteRule is on and its root cannot be told (the image has more than {MAX_INCLUDES} "
        ".htaccess files)"
    )

    large = {**httpd, "srv/big/.htaccess": RECIPE + b"# padding\n" * (MAX_INCLUDED_TEXT // 10)}
    result = served_by(tmp_path / "3", large)
    assert result.keeps("srv/big/a.css.gz", ".gz") == (
        "Apache httpd RewriteRule is on and its root cannot be told (the image's .htaccess files up to "
        f"/srv/big/.htaccess hold more than {MAX_INCLUDED_TEXT >> 20} MiB)"
    )
