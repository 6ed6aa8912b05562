"""Which layers of an image belong to its base and so stay byte-identical.

A base layer that a run rewrote would no longer be shared with the other images built on that base: every
node would pull it again. The layers kept are the longest prefix that one of these names:

- ``--keep-layers N``: the first N layers;
- ``--base IMAGE``: an image (file or directory) whose layer list the image starts with;
- the ``org.opencontainers.image.base.digest`` annotation, when the image it names is in the input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .digest import short
from .documents import ANNOTATION_BASE_DIGEST, ANNOTATION_BASE_NAME, parse_json
from .errors import OptimizerError, UsageError
from .model import Descriptor, Platform
from .source import Blobs, open_source
from .tree import NodeKind, iter_nodes, read_tree

__all__ = ["Protection", "base_layer_lists", "protected_count"]


@dataclass(frozen=True)
class Protection:
    """How many layers at the bottom of an image stay byte-identical, and why."""

    count: int
    warnings: tuple[str, ...] = field(default=())


def base_layer_lists(path: str, workdir: str) -> list[list[str]]:
    """The layer digests of every image in the input at ``path`` (the ``--base`` option)."""
    source = open_source(path, workdir, name=f"base {path}")
    roots = read_tree(source.blobs, source.root_manifests)
    out = [
        [layer.digest for layer in node.layers]
        for node in iter_nodes(roots)
        if node.kind in (NodeKind.IMAGE, NodeKind.MANIFEST)
    ]
    if not out:
        raise UsageError(f"--base {path}: no image found in it")
    return out


def protected_count(
    layers: Sequence[Descriptor],
    manifest: Mapping[str, Any],
    platform: Platform | None,
    keep_layers: int,
    bases: Sequence[Sequence[str]],
    blobs: Blobs,
    name: str,
) -> Protection:
    """The number of layers to keep: the longest of ``keep_layers`` and each base's layers that the image
    starts with (``bases``, else the base the manifest's annotation names, when the input has it)."""
    count = min(keep_layers, len(layers))
    candidates = [list(base) for base in bases]
    warnings: list[str] = []
    annotations = manifest.get("annotations") if isinstance(manifest.get("annotations"), dict) else {}
    base_digest = (annotations or {}).get(ANNOTATION_BASE_DIGEST)
    if base_digest and not candidates:
        found = _layers_of(blobs, str(base_digest), platform)
        if found is None:
            base_name = (annotations or {}).get(ANNOTATION_BASE_NAME, "")
            warnings.append(
                f"{name}: its base image {base_name} {short(str(base_digest))} is named by annotation but not "
                f"in the input; pass --base to keep its layers byte-identical"
            )
        else:
            candidates.append(found)
    digests = [d.digest for d in layers]
    for base in candidates:
        if len(base) <= len(digests) and digests[: len(base)] == base:
            count = max(count, len(base))
    return Protection(count, tuple(warnings))


def _layers_of(blobs: Blobs, digest: str, platform: Platform | None) -> list[str] | None:
    """The layer digests of the image a base digest names in the input (choosing ``platform`` in an index)."""
    if not blobs.has(digest):
        return None
    try:
        data = blobs.read(Descriptor("", digest, blobs.stored_size(digest) or 0), "base manifest")
        document = parse_json(data, "base manifest")
    except OptimizerError:
        return None
    if isinstance(document, dict) and isinstance(document.get("manifests"), list):
        for child in document["manifests"]:
            descriptor = Descriptor.from_json(child)
            if platform is None or descriptor.platform == platform:
                return _layers_of(blobs, descriptor.digest, None)
        return None
    if isinstance(document, dict) and isinstance(document.get("layers"), list):
        return [str(layer.get("digest")) for layer in document["layers"]]
    return None
