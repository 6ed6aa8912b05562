"""``passes.servers.h2o``: ``file.send-compressed`` inherited from the global, host and path levels."""

from __future__ import annotations

from pathlib import Path

from tests.passes.servers.helpers import kept, served_by

CONF = b"""
file.send-compressed: ON
hosts:
  "example.com:80":
    paths:
      /:
        file.dir: /var/www/html
      /legacy:
        file.dir: /srv/legacy
        file.send-compressed: OFF
        file.send-gzip: ON
      /api:
        proxy.reverse.url: http://127.0.0.1:9000/
"""


def test_paths_inherit_the_flag(tmp_path: Path) -> None:
    result = served_by(tmp_path, {"etc/h2o/h2o.conf": CONF})
    assert kept(result, "var/www/html/a.css.br", "srv/legacy/a.css.gz", "srv/legacy/a.css.br") == {
        "var/www/html/a.css.br": "served by h2o (file.send-compressed) from /var/www/html",
        "srv/legacy/a.css.gz": "served by h2o (file.send-compressed) from /srv/legacy",
        "srv/legacy/a.css.br": None,
    }


def test_unreadable_config_keeps_everything(tmp_path: Path) -> None:
    result = served_by(tmp_path, {"etc/h2o/h2o.conf": b"hosts: [unclosed"})
    assert set(result.everywhere) == {".br", ".gz"}


def test_file_includes_are_read_from_the_image_and_env_values_are_unknown(tmp_path: Path) -> None:
    main = b"file.send-compressed: ON\nhosts: !file /etc/h2o/hosts.yaml\n"
    hosts = b'"a:80":\n  paths:\n    /:\n      file.dir: /srv/a\n"b:80":\n  paths:\n    /:\n      file.dir: !env ROOT\n'
    result = served_by(tmp_path, {"etc/h2o/h2o.conf": main, "etc/h2o/hosts.yaml": hosts})
    assert result.keeps("srv/a/x.js.br", ".br") == "served by h2o (file.send-compressed) from /srv/a"
    assert [s.why for s in result.servings if s.root is None] == ["file.dir '$ROOT'"]


def test_include_cycles_keep_everything(tmp_path: Path) -> None:
    files = {"etc/h2o/h2o.conf": b"file.send-gzip: ON\nhosts: !file /etc/h2o/h2o.conf\n"}
    assert set(served_by(tmp_path, files).everywhere) == {".br", ".gz"}
