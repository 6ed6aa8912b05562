"""``passes.servers``: every rule says what it detects and why; an image without servers keeps nothing."""

from __future__ import annotations

from pathlib import Path

from passes.servers import RULES
from tests.passes.servers.helpers import served_by


def test_every_rule_says_what_it_detects_and_why() -> None:
    names = [rule.server for rule in RULES]
    assert len(names) == len(set(names))
    assert {"nginx", "Apache httpd", "Caddy", "h2o", "lighttpd", "express-static-gzip"} <= set(names)
    assert all(len(rule.detects) > 20 and len(rule.why) > 20 for rule in RULES)


def test_no_server_keeps_nothing(tmp_path: Path) -> None:
    result = served_by(tmp_path, {"usr/share/doc/a/changelog.gz": b"x", "etc/hostname": b"h"})
    assert result.servings == [] and result.notes == []
    assert result.keeps("usr/share/doc/a/changelog.gz", ".gz") is None
