"""The index tree of an input, read once: the one walker every part of the code uses.

An input's root index names manifests; an index names more manifests; an image manifest names a config and
layers. ``read_tree`` reads every index and manifest reachable from the roots (documents are small; layers
are never read here), classifies each node, and returns the roots. A manifest named twice is read once and
is the same ``Node`` object wherever it appears. Classification:

- ``INDEX``: an OCI index or a Docker manifest list;
- ``IMAGE``: an image manifest whose config is an image config and whose layers are all tars we read;
- ``MANIFEST``: any other manifest (signatures, attestations, SBOMs, artifacts, images with layers of a media
  type we do not read): carried over untouched;
- ``MISSING``: named by an index but absent from the input (a partial export): its reference is kept;
- ``OTHER``: a blob named like a manifest whose media type is not one: carried over untouched.

Nesting is bounded (``MAX_DEPTH``): a deeper chain of indexes is an input error, not a recursion error. So
are the entries of one index and the layers of one manifest (``Limits.max_index_manifests``,
``Limits.max_layers``), checked before any of them is read.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from . import mediatypes as mt
from .digest import short
from .documents import ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, parse_descriptor, parse_object
from .errors import FormatError, LimitError
from .limits import Limits
from .model import Descriptor
from .source import Blobs

__all__ = ["MAX_DEPTH", "Node", "NodeKind", "iter_nodes", "read_tree"]

MAX_DEPTH = 16


class NodeKind(str, Enum):
    INDEX = "index"
    IMAGE = "image"
    MANIFEST = "manifest"
    MISSING = "missing"
    OTHER = "other"


@dataclass(frozen=True, eq=False)
class Node:
    """One manifest of the tree (or the reference to one that is missing)."""

    descriptor: Descriptor
    kind: NodeKind
    where: str  # how the walk reached it, for messages: "index.json > sha256:ab12[0]"
    data: bytes = b""
    document: Mapping[str, Any] = field(default_factory=dict)
    children: tuple[Node, ...] = ()  # an index's manifests, in order
    config: Descriptor | None = None  # a manifest's config
    layers: tuple[Descriptor, ...] = ()  # a manifest's layers
    odd_layer_types: tuple[str, ...] = ()  # an image's layer media types that we do not read
    warnings: tuple[str, ...] = ()

    @property
    def digest(self) -> str:
        return self.descriptor.digest

    @property
    def child_descriptors(self) -> list[Any]:
        """An index's ``manifests`` list as read (unchanged entries are written back verbatim)."""
        value = self.document.get("manifests")
        return list(value) if isinstance(value, list) else []

    def label(self, source_name: str) -> str:
        """``in.tar: image sha256:ab12 linux/amd64 (docker.io/library/x:1)`` for messages and reports."""
        annotations = self.descriptor.annotations
        tag = annotations.get(ANNOTATION_IMAGE_NAME) or annotations.get(ANNOTATION_REF_NAME, "")
        platform = f" {self.descriptor.platform}" if self.descriptor.platform else ""
        return f"{source_name}: image {short(self.digest)}{platform}{' (' + tag + ')' if tag else ''}"


def read_tree(
    blobs: Blobs, roots: Sequence[Descriptor], where: str = "index.json", limits: Limits | None = None
) -> list[Node]:
    """Read and classify every manifest reachable from ``roots``."""
    limits = limits or Limits()
    if len(roots) > limits.max_index_manifests:
        raise LimitError(
            f"{blobs.name}: {where} lists {len(roots)} manifests, more than --max-index-manifests "
            f"{limits.max_index_manifests}"
        )
    reader = _Reader(blobs, limits)
    return [reader.node(descriptor, where, 0) for descriptor in roots]


def iter_nodes(roots: Sequence[Node]) -> Iterator[Node]:
    """Every node once, children before the index that lists them (the order a registry push needs)."""
    seen: set[str] = set()

    def visit(node: Node, depth: int) -> Iterator[Node]:
        if node.digest in seen:
            return
        seen.add(node.digest)
        for child in node.children:
            yield from visit(child, depth + 1)
        yield node

    for root in roots:
        yield from visit(root, 0)


class _Reader:
    def __init__(self, blobs: Blobs, limits: Limits) -> None:
        self.blobs = blobs
        self.limits = limits
        self.known: dict[str, Node] = {}

    def node(self, descriptor: Descriptor, where: str, depth: int) -> Node:
        known = self.known.get(descriptor.digest)
        if known is not None:
            return known
        if depth > MAX_DEPTH:
            raise FormatError(
                f"{self.blobs.name}: {where}: indexes nested more than {MAX_DEPTH} deep ({short(descriptor.digest)})"
            )
        node = self._read(descriptor, where, depth)
        self.known[descriptor.digest] = node
        return node

    def _read(self, descriptor: Descriptor, where: str, depth: int) -> Node:
        name = self.blobs.name
        if not self.blobs.has(descriptor.digest):
            platform = f" ({descriptor.platform})" if descriptor.platform else ""
            warning = (
                f"{name}: {where}: manifest {short(descriptor.digest)}{platform} is missing from the "
                f"input (a partial export); its reference is carried over without content"
            )
            return Node(descriptor, NodeKind.MISSING, where, warnings=(warning,))
        data = self.blobs.read(descriptor, "manifest")
        document = parse_object(data, f"{name}: manifest {short(descriptor.digest)}")
        media_type = descriptor.media_type
        own = document.get("mediaType")
        known = mt.INDEX_TYPES | mt.MANIFEST_TYPES
        if media_type and isinstance(own, str) and own and _contradict(media_type, own):
            raise FormatError(
                f"{name}: {where}: {short(descriptor.digest)} is named as {media_type!r} "
                f"but is a document of type {own!r}"
            )
        if media_type not in known:
            media_type = str(own or "")
        if media_type in mt.INDEX_TYPES or (not media_type and "manifests" in document):
            return self._index(descriptor, where, data, document, depth)
        if media_type in mt.MANIFEST_TYPES or (not media_type and "layers" in document):
            return _manifest(descriptor, where, data, document, name, self.limits)
        warning = (
            f"{name}: {where}: {short(descriptor.digest)} has media type "
            f"{descriptor.media_type or '(none)'}: carried over untouched"
        )
        return Node(descriptor, NodeKind.OTHER, where, data, document, warnings=(warning,))

    def _index(
        self, descriptor: Descriptor, where: str, data: bytes, document: Mapping[str, Any], depth: int
    ) -> Node:
        name = self.blobs.name
        children = document.get("manifests")
        if not isinstance(children, list):
            raise FormatError(f"{name}: index {short(descriptor.digest)}: 'manifests' is not a list")
        if len(children) > self.limits.max_index_manifests:
            raise LimitError(
                f"{name}: {where}: index {short(descriptor.digest)} lists {len(children)} manifests, more than "
                f"--max-index-manifests {self.limits.max_index_manifests}"
            )
        nodes = []
        for number, child in enumerate(children):
            below = f"{where} > {short(descriptor.digest)}[{number}]"
            what = f"{name}: index {short(descriptor.digest)}: manifests[{number}]"
            nodes.append(self.node(parse_descriptor(child, what), below, depth + 1))
        return Node(descriptor, NodeKind.INDEX, where, data, document, tuple(nodes))


def _contradict(named: str, own: str) -> bool:
    """Whether an index's media type for a document and the document's own cannot both be right: an index
    and a manifest, or a known type and an unknown one (an OCI name for a Docker manifest is common: ggcr)."""
    kinds = [
        "index" if t in mt.INDEX_TYPES else "manifest" if t in mt.MANIFEST_TYPES else t for t in (named, own)
    ]
    return kinds[0] != kinds[1]


def _manifest(
    descriptor: Descriptor, where: str, data: bytes, document: Mapping[str, Any], name: str, limits: Limits
) -> Node:
    config = document.get("config")
    layers = document.get("layers")
    what = f"{name}: {where}: manifest {short(descriptor.digest)}"
    if not isinstance(config, dict) or not isinstance(layers, list):
        raise FormatError(f"{what}: no config or layers")
    if len(layers) > limits.max_layers:
        raise LimitError(f"{what} has {len(layers)} layers, more than --max-layers {limits.max_layers}")
    config_descriptor = parse_descriptor(config, f"{what}: config")
    layer_descriptors = tuple(
        parse_descriptor(layer, f"{what}: layers[{number}]") for number, layer in enumerate(layers)
    )
    readable = [mt.layer_compression(d.media_type) is not None for d in layer_descriptors]
    # An image whose layers are all of types we do not read (squashfs) is an image all the same: say so.
    is_image = config_descriptor.media_type in mt.IMAGE_CONFIG_TYPES
    odd = tuple(sorted({d.media_type for d, ok in zip(layer_descriptors, readable, strict=True) if not ok}))
    kind = NodeKind.IMAGE if is_image and not odd and layer_descriptors else NodeKind.MANIFEST
    return Node(
        descriptor,
        kind,
        where,
        data,
        document,
        config=config_descriptor,
        layers=layer_descriptors,
        odd_layer_types=odd if is_image else (),
    )
