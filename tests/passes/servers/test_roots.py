"""``passes.servers.web_roots``: the document roots of every server, whatever they send, resolved in the image."""

from __future__ import annotations

import json
from pathlib import Path

from passes.servers import WebRoots, web_roots
from tests.passes import kit
from tests.passes.kit import Files


def roots_of(tmp_path: Path, files: Files, config: dict[str, object] | None = None) -> WebRoots:
    return web_roots(kit.make_filesystem(tmp_path, [files], parents=True), config or {})


def found(result: WebRoots) -> set[tuple[str, str, str]]:
    return {(r.server, r.how, r.root) for r in result.roots}


def test_no_server_no_root(tmp_path: Path) -> None:
    result = roots_of(tmp_path, {"srv/www/a.png": b"x", "etc/hostname": b"h"})
    assert result.roots == [] and result.holding("srv/www/a.png") is None


def test_nginx_root_and_alias_of_every_context(tmp_path: Path) -> None:
    conf = b"""
    http {
        root /usr/share/nginx/html;
        include /etc/nginx/conf.d/*.conf;
    }
    """
    site = b"""
    server {
        location / { root "/srv/site"; }
        location /media/ { alias /data/media/; }
        location /v/ { root $document_root/v; }
        location /rel/ { root html; }
        location /api/ { proxy_pass http://app; }
    }
    """
    result = roots_of(tmp_path, {"etc/nginx/nginx.conf": conf, "etc/nginx/conf.d/site.conf": site})
    assert found(result) == {
        ("nginx", "root", "usr/share/nginx/html"),
        ("nginx", "root", "srv/site"),
        ("nginx", "alias", "data/media"),
    }
    assert result.holding("data/media/cat.png") == "under nginx alias /data/media (/etc/nginx/nginx.conf)"
    assert result.holding("data/other/cat.png") is None


def test_apache_document_root_and_alias_not_bare_directories(tmp_path: Path) -> None:
    """Debian's apache2.conf grants <Directory /usr/share> and denies <Directory />: neither maps a URL."""
    main = b"""
    <Directory />
        Require all denied
    </Directory>
    <Directory /usr/share>
        Require all granted
    </Directory>
    IncludeOptional sites-enabled/*.conf
    Include conf-enabled/icons.conf
    """
    site = b'<VirtualHost *:80>\n    DocumentRoot "/var/www/html"\n</VirtualHost>\n'
    icons = b'Alias /icons/ "/usr/share/apache2/icons/"\n'
    files: Files = {
        "etc/apache2/apache2.conf": main,
        "etc/apache2/sites-enabled/000-default.conf": site,
        "etc/apache2/conf-enabled/icons.conf": icons,
    }
    result = roots_of(tmp_path, files)
    assert found(result) == {
        ("Apache httpd", "DocumentRoot", "var/www/html"),
        ("Apache httpd", "Alias", "usr/share/apache2/icons"),
    }
    assert result.holding("usr/share/pixmaps/debian.png") is None


def test_caddy_file_server_roots(tmp_path: Path) -> None:
    caddyfile = b"""
    example.com {
        root * /srv/site
        file_server
        handle /docs/* {
            file_server {
                root /srv/docs
            }
        }
    }
    api.example.com {
        root * /srv/api
        reverse_proxy app:8080
    }
    """
    json_config = b"""{"apps": {"http": {"servers": {"s": {"routes": [{"handle": [
        {"handler": "vars", "root": "/srv/json"}, {"handler": "file_server"}]}]}}}}}"""
    files: Files = {"etc/caddy/Caddyfile": caddyfile, "etc/caddy/site.json": json_config}
    assert found(roots_of(tmp_path, files)) == {
        ("Caddy", "file_server", "srv/site"),
        ("Caddy", "file_server", "srv/docs"),
        ("Caddy", "vars root", "srv/json"),
    }


def test_h2o_and_lighttpd_roots(tmp_path: Path) -> None:
    h2o = b"""
    hosts:
      "example.com":
        paths:
          /:
            file.dir: /srv/h2o
          /env:
            file.dir: !env ROOT
    """
    lighttpd = b"""
    server.document-root = "/srv/lighttpd"
    # server.document-root = "/srv/commented-out"
    $HTTP["host"] == "img.example.com" {
        server.document-root = "/srv/img"
    }
    alias.url += ( "/static/" => "/opt/static/" )
    """
    files: Files = {"etc/h2o/h2o.conf": h2o, "etc/lighttpd/lighttpd.conf": lighttpd}
    assert found(roots_of(tmp_path, files)) == {
        ("h2o", "file.dir", "srv/h2o"),
        ("lighttpd", "server.document-root", "srv/lighttpd"),
        ("lighttpd", "server.document-root", "srv/img"),
        ("lighttpd", "alias.url", "opt/static"),
    }


def test_node_static_middleware(tmp_path: Path) -> None:
    server = b"""
    const path = require('path');
    const express = require('express');
    const serveStatic = require('serve-static');
    const app = express();
    app.use('/static', express.static(path.join(__dirname, 'public')));
    app.use(serveStatic('assets'));
    app.use(express.static(process.env.ROOT));
    """
    files: Files = {
        "app/server.js": server,
        "app/node_modules/express/package.json": b"{}",
        "app/node_modules/serve-static/package.json": b"{}",
    }
    result = roots_of(tmp_path, files, {"config": {"WorkingDir": "/app"}})
    assert found(result) == {
        ("Node.js", "express.static", "app/public"),
        ("Node.js", "serve-static", "app/assets"),
    }


def test_roots_are_resolved_through_symlinks_and_slash_is_no_root(tmp_path: Path) -> None:
    """Capistrano's current -> releases/N: the files are under the real path."""
    conf = b"http { server { root /var/www/current; } server { root /; } }"
    files: Files = {
        "etc/nginx/nginx.conf": conf,
        "var/www/current": "->/srv/releases/42",
        "srv/releases/42/img/logo.png": b"png",
        "srv/releases/41/img/logo.png": b"png",
    }
    result = roots_of(tmp_path, files)
    assert found(result) == {("nginx", "root", "var/www/current")}
    assert result.holding("srv/releases/42/img/logo.png") == (
        "under nginx root /var/www/current (/srv/releases/42) (/etc/nginx/nginx.conf)"
    )
    assert result.holding("srv/releases/41/img/logo.png") is None
    assert result.holding("etc/nginx/nginx.conf") is None


def test_a_symlink_out_of_a_root_is_not_followed(tmp_path: Path) -> None:
    """A file reached through a symlink below the root keeps its real name outside every root: a program opens
    it there (the game reads its maps), as it may open a hardlink's other name."""
    files: Files = {
        "etc/nginx/nginx.conf": b"http { server { root /srv/www; } }",
        "srv/www/maps": "->/opt/game/maps",
        "srv/www/self": "->/srv/www/img",
        "srv/www/img/logo.png": b"png",
        "opt/game/maps/height.png": b"png",
    }
    result = roots_of(tmp_path, files)
    assert result.holding("opt/game/maps/height.png") is None
    assert result.holding("srv/www/img/logo.png") == "under nginx root /srv/www (/etc/nginx/nginx.conf)"


def test_a_symlink_from_outside_into_a_root_is_another_name(tmp_path: Path) -> None:
    """``/opt/app/static -> /srv/www/img``: the application reads the files by that name; the rest of the root
    is still held, and a symlink on the configured root's own path (``current``) is the server's name for it."""
    files: Files = {
        "etc/nginx/nginx.conf": b"http { server { root /var/www/current; } }",
        "var/www/current": "->/srv/www",
        "opt/app/static": "->/srv/www/img",
        "opt/app/logo.png": "->/srv/www/css/logo.png",
        "srv/www/img/mask.png": b"png",
        "srv/www/css/logo.png": b"png",
        "srv/www/css/bg.png": b"png",
    }
    result = roots_of(tmp_path, files)
    assert result.entrances == {"srv/www/img": "opt/app/static", "srv/www/css/logo.png": "opt/app/logo.png"}
    assert result.holding("srv/www/img/mask.png") is None
    assert result.holding("srv/www/css/logo.png") is None
    assert result.holding("srv/www/css/bg.png") == (
        "under nginx root /var/www/current (/srv/www) (/etc/nginx/nginx.conf)"
    )


def test_alpine_lighttpd_and_apache_roots(tmp_path: Path) -> None:
    """Alpine's defaults: lighttpd builds its root from a variable; apache2's main file is httpd.conf."""
    lighttpd = b"""
    var.basedir  = "/var/www/localhost"
    var.logdir   = "/var/log/lighttpd"
    server.document-root = var.basedir + "/htdocs"   # the default
    $HTTP["host"] == "x" { server.document-root = env.ROOT + "/x" }
    $HTTP["host"] == "y" { server.document-root = var.unset + "/y" }
    """
    apache = b'ServerRoot /var/www\nDocumentRoot "/var/www/localhost/htdocs"\nAlias /i/ "/srv/icons/"\n'
    files: Files = {"etc/lighttpd/lighttpd.conf": lighttpd, "etc/apache2/httpd.conf": apache}
    assert found(roots_of(tmp_path, files)) == {
        ("lighttpd", "server.document-root", "var/www/localhost/htdocs"),
        ("Apache httpd", "DocumentRoot", "var/www/localhost/htdocs"),
        ("Apache httpd", "Alias", "srv/icons"),
    }


def _subroute(*handlers: dict[str, object]) -> dict[str, object]:
    """Directives as ``caddy adapt`` writes them: each in a route of its own, in order, inside a subroute."""
    return {"handler": "subroute", "routes": [{"handle": [h]} for h in handlers]}


def _site(host: str, *handlers: dict[str, object]) -> dict[str, object]:
    return {"match": [{"host": [host]}], "handle": [_subroute(*handlers)], "terminal": True}


def test_caddy_json_vars_root_counts_where_a_file_server_follows_it(tmp_path: Path) -> None:
    proxy = {"handler": "reverse_proxy", "upstreams": [{"dial": "app:8080"}]}
    serve = {"handler": "file_server", "hide": ["./Caddyfile"]}
    api, site, late = ({"handler": "vars", "root": f"/srv/{n}"} for n in ("api", "site", "late"))
    # handle /api/* { root * /srv/handled-api; reverse_proxy ... }  handle { root * /srv/handled; file_server }
    handled = [
        {"group": "group0", "handle": [_subroute({"handler": "vars", "root": "/srv/handled-api"}, proxy)]},
        {"group": "group0", "handle": [_subroute({"handler": "vars", "root": "/srv/handled"}, serve)]},
    ]
    routes = [
        _site("api.example.com", api, proxy),  # a proxy only: its root sends nothing
        _site("example.com", site, serve),
        _site("late.example.com", serve, late),  # set after the file_server ran
        _site("both.example.com", {"handler": "subroute", "routes": handled}),
    ]
    document = {"apps": {"http": {"servers": {"srv0": {"listen": [":443"], "routes": routes}}}}}
    result = roots_of(tmp_path, {"etc/caddy/caddy.json": json.dumps(document).encode()})
    assert found(result) == {("Caddy", "vars root", "srv/site"), ("Caddy", "vars root", "srv/handled")}
