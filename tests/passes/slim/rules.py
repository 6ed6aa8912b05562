"""Running one slim rule on a filesystem built by the pass kit."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from passes.slim.rule import Subject, Verdict
from tests.passes.kit import Layer, make_filesystem


def verdict(
    tmp_path: Path,
    rule: Callable[[Subject], Verdict],
    layers: Sequence[Layer],
    config: Mapping[str, Any] | None = None,
    keep_locales: Sequence[str] = (),
) -> Verdict:
    fs = make_filesystem(tmp_path, layers, parents=True)
    return rule(Subject(fs, config or {}, keep_locales))


def removed(found: Verdict) -> list[str]:
    return sorted(path for path, _ in found.remove)


def env(**variables: str) -> dict[str, Any]:
    """An image config whose Env sets ``variables``."""
    return {"config": {"Env": [f"{key}={value}" for key, value in variables.items()]}}
