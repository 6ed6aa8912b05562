"""``passes.servers.apache``: the mod_deflate precompressed recipe in the configuration and in .htaccess."""

from __future__ import annotations

from pathlib import Path

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
