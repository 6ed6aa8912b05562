"""``passes.servers.nginx``: gzip_static/brotli_static roots are kept, roots we cannot tell keep
everything, includes and quotes are followed."""

from __future__ import annotations

from pathlib import Path

from passes.compressed_duplicates import CompressedDuplicatesOptions
from passes.servers import nginx
from tests.passes import kit
from tests.passes.compressed import COMPRESSORS, TEXT, deleted_paths, outcomes, run_duplicates
from tests.passes.kit import Files
from tests.passes.servers.helpers import including_each_other

NGINX_CONF = b"""
user  nginx;
worker_processes  auto;
events { worker_connections 1024; }
http {
    include       /etc/nginx/mime.types;
    gzip_static   on;   # serve FILE.gz when the client accepts gzip
    include /etc/nginx/conf.d/*.conf;
}
"""


DEFAULT_CONF = b"""
server {
    listen 80;
    server_name "localhost";
    location / {
        root   /usr/share/nginx/html;
        index  index.html;
    }
    location /static/ {
        alias /srv/static/;
        brotli_static always;
    }
}
"""


def _nginx_image(conf: bytes = NGINX_CONF, default: bytes = DEFAULT_CONF) -> Files:
    gz, br = COMPRESSORS[".gz"], COMPRESSORS[".br"]
    return {
        "etc/nginx/nginx.conf": conf,
        "etc/nginx/mime.types": b"types { text/html html; }\n",
        "etc/nginx/conf.d/default.conf": default,
        "usr/share/nginx/html/app.js": TEXT,
        "usr/share/nginx/html/app.js.gz": gz(TEXT),
        "usr/share/nginx/html/app.js.br": br(TEXT),
        "srv/static/site.css": TEXT,
        "srv/static/site.css.br": br(TEXT),
        "srv/static/site.css.gz": gz(TEXT),
        "usr/share/doc/pkg/changelog": TEXT,
        "usr/share/doc/pkg/changelog.gz": gz(TEXT),
    }


def test_nginx_gzip_static_roots_are_kept(tmp_path: Path) -> None:
    ctx = run_duplicates(tmp_path, [_nginx_image()])
    # gzip_static is on everywhere (http level); brotli_static only under /static/ (alias /srv/static).
    assert deleted_paths(ctx) == ["usr/share/doc/pkg/changelog.gz", "usr/share/nginx/html/app.js.br"]
    found = outcomes(ctx)
    assert found["usr/share/nginx/html/app.js.gz"][1].endswith(
        "served by nginx (gzip_static) from /usr/share/nginx/html"
    )
    assert found["srv/static/site.css.gz"][1].endswith("served by nginx (gzip_static) from /srv/static")
    assert found["srv/static/site.css.br"][1].endswith("served by nginx (brotli_static) from /srv/static")
    assert ctx.report.warnings == []
    # Asked to ignore the servers, every duplicate goes.
    ctx = run_duplicates(tmp_path, [_nginx_image()], CompressedDuplicatesOptions(servers=False))
    assert len(deleted_paths(ctx)) == 5


def test_nginx_root_we_cannot_tell_keeps_everything(tmp_path: Path) -> None:
    default = DEFAULT_CONF.replace(b"root   /usr/share/nginx/html;", b"root $app_root;")
    ctx = run_duplicates(tmp_path, [_nginx_image(default=default)])
    assert "usr/share/doc/pkg/changelog.gz" not in deleted_paths(ctx)
    assert not any(p.endswith(".gz") for p in deleted_paths(ctx))
    (warning,) = ctx.report.warnings
    assert warning == (
        "nginx: /etc/nginx/nginx.conf: gzip_static with a root that cannot be told (root $app_root): "
        "every .gz twin is kept"
    )
    reason = outcomes(ctx)["usr/share/nginx/html/app.js.gz"][1]
    assert reason.endswith("nginx gzip_static is on and its root cannot be told (root $app_root)")


def test_nginx_without_static_deletes_duplicates(tmp_path: Path) -> None:
    conf = NGINX_CONF.replace(b"gzip_static   on;", b"gzip_static off;")
    default = DEFAULT_CONF.replace(b"brotli_static always;", b"")
    ctx = run_duplicates(tmp_path, [_nginx_image(conf, default)])
    assert len(deleted_paths(ctx)) == 5


def test_nginx_parser_follows_includes_and_quotes(tmp_path: Path) -> None:
    files: Files = {
        "etc/nginx/nginx.conf": b"http { include sites-enabled/*; }",
        "etc/nginx/sites-enabled/site": "->../sites-available/site",
        "etc/nginx/sites-available/site": b"server { gzip_static \"on\"; root '/var/www/my site'; # root /x;\n}",
        "etc/nginx/sites-available/unused": b"server { brotli_static on; root /nowhere; }",
    }
    found = nginx.find(kit.make_filesystem(tmp_path, [files], parents=True), {})
    assert [(s.how, s.suffixes, s.root) for s in found] == [("gzip_static", {".gz"}, "var/www/my site")]


def test_symlinked_root_capistrano_style(tmp_path: Path) -> None:
    """root /var/www/current, a symlink to the release: the twins under the release are served and stay."""
    gz = COMPRESSORS[".gz"]
    conf = b"http { gzip_static on; server { listen 80; root /var/www/current; } }"
    files: Files = {
        "etc/nginx/nginx.conf": conf,
        "var/www/current": "->/srv/releases/42",
        "srv/releases/42/app.css": TEXT,
        "srv/releases/42/app.css.gz": gz(TEXT),
        "srv/releases/42/vendor": "->../../shared/vendor",
        "srv/shared/vendor/lib.js": TEXT,
        "srv/shared/vendor/lib.js.gz": gz(TEXT),
        "srv/releases/41/app.css": TEXT,
        "srv/releases/41/app.css.gz": gz(TEXT),
    }
    ctx = run_duplicates(tmp_path, [files])
    assert deleted_paths(ctx) == ["srv/releases/41/app.css.gz"]  # the old release is not served
    found = outcomes(ctx)
    assert found["srv/releases/42/app.css.gz"][1].endswith(
        "served by nginx (gzip_static) from /var/www/current (/srv/releases/42)"
    )
    assert found["srv/shared/vendor/lib.js.gz"][1].endswith(
        "served by nginx (gzip_static) from /var/www/current (/srv/shared/vendor)"
    )


def test_include_cycles_stop(tmp_path: Path) -> None:
    files: Files = {
        "etc/nginx/nginx.conf": b"include nginx.conf; include nginx.conf; http { include site; }",
        "etc/nginx/site": b"include site; include site; server { gzip_static on; root /srv; }",
    }
    found = nginx.find(kit.make_filesystem(tmp_path, [files], parents=True), {})
    assert [(s.how, s.root) for s in found] == [("gzip_static", "srv")]


def test_a_conf_d_including_itself_keeps_every_twin(tmp_path: Path) -> None:
    """Ten files of conf.d that each include conf.d/*.conf: the bound on one configuration's includes stops
    the reading, and every twin stays, the report saying why."""
    image = {**_nginx_image(), **including_each_other("nginx", 10)}
    ctx = run_duplicates(tmp_path, [image])
    assert deleted_paths(ctx) == []
    reason = "/etc/nginx/nginx.conf and what it includes read more than 1000 includes (files that include each other?)"
    assert ctx.report.warnings == [
        f"nginx: /etc/nginx/nginx.conf: {how} with a root that cannot be told ({reason}): every {suffix} twin is kept"
        for how, suffix in (("gzip_static", ".gz"), ("brotli_static", ".br"))
    ]
    found = outcomes(ctx)
    assert found["usr/share/doc/pkg/changelog.gz"][1].endswith(
        f"nginx gzip_static is on and its root cannot be told ({reason})"
    )
