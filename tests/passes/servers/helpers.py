"""One image's ``Served`` from a list of files, for the server rule tests."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from passes.servers import Served, served
from tests.passes import kit
from tests.passes.kit import Files


def served_by(tmp_path: Path, files: Files, config: Mapping[str, Any] | None = None) -> Served:
    return served(kit.make_filesystem(tmp_path, [files], parents=True), config or {})


def kept(result: Served, *paths: str) -> dict[str, str | None]:
    """path -> the reason it is kept (None: not served), for paths ending in their suffix."""
    return {p: result.keeps(p, "." + p.rsplit(".", 1)[-1]) for p in paths}
