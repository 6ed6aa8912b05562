"""``Source``: an opened input, its root index and its blobs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..digest import parse_digest
from ..errors import FormatError
from ..model import Descriptor
from .blobs import Blobs

__all__ = ["Source", "check_index"]


@dataclass
class Source:
    """An opened input: its root index (parsed, and its exact bytes) and its blobs."""

    name: str
    kind: str  # "oci-dir", "oci-archive", "docker-archive", "registry"
    blobs: Blobs
    index: Mapping[str, Any]
    index_bytes: bytes
    repo_tags: dict[str, list[str]] = field(default_factory=dict)  # "config:<digest>" -> docker RepoTags
    warnings: list[str] = field(default_factory=list)

    @property
    def root_manifests(self) -> list[Descriptor]:
        return [Descriptor.from_json(d) for d in self.index.get("manifests") or []]


def check_index(index: Mapping[str, Any], what: str) -> None:
    manifests = index.get("manifests")
    if not isinstance(manifests, list):
        raise FormatError(f"{what}: 'manifests' is not a list")
    for i, item in enumerate(manifests):
        if not isinstance(item, dict) or "digest" not in item or "size" not in item:
            raise FormatError(f"{what}: manifests[{i}] is not a descriptor with digest and size")
        parse_digest(str(item["digest"]))
        if not isinstance(item["size"], int) or item["size"] < 0:
            raise FormatError(f"{what}: manifests[{i}] has an invalid size {item['size']!r}")
