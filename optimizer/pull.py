"""What a node downloads to run an image: cold (nothing cached) and warm (the image's base already cached).

A fleet shares base layers: a node that runs one image built on a base has that base's layers, and pulls only
the rest of the next image built on it. The warm figure is what a release costs such a node, and what the
default run must never make larger; the cold figure is a new node's first pull. Both count distinct blobs:
the manifest, the config and the layers, each once however many images name it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["ImageBlobs", "PullBytes", "pull_bytes"]


@dataclass(frozen=True)
class ImageBlobs:
    """The blobs a node pulls for one image (digest -> size), and the digests its base provides."""

    blobs: Mapping[str, int]
    base: frozenset[str]


@dataclass
class PullBytes:
    cold_before: int = 0
    cold_after: int = 0
    warm_before: int = 0
    warm_after: int = 0


def _sizes(images: Iterable[ImageBlobs]) -> tuple[int, int]:
    blobs: dict[str, int] = {}
    base: set[str] = set()
    for image in images:
        blobs.update(image.blobs)
        base.update(image.base)
    cold = sum(blobs.values())
    return cold, cold - sum(size for digest, size in blobs.items() if digest in base)


def pull_bytes(before: Iterable[ImageBlobs], after: Iterable[ImageBlobs]) -> PullBytes:
    """Cold and warm pull bytes of a set of images, before and after a run."""
    cold_before, warm_before = _sizes(before)
    cold_after, warm_after = _sizes(after)
    return PullBytes(cold_before, cold_after, warm_before, warm_after)
