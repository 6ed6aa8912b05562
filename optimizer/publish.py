"""``--publish gzip+zstd``: each image also as a zstd twin, listed after it in one index.

Old clients (Docker before 23, containerd before 1.5, umoci) take the first entry of their platform: the gzip
image. The twin has the same config (zstd keeps every diff_id), the protected base layers as they are (a node
that has the base pulls nothing more), and every other layer compressed anew with zstd from the same tar
stream (checked: the diff_id must come out the same). A root image with a twin becomes an index of the two.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from typing import Any, BinaryIO, Protocol

from . import mediatypes as mt
from .digest import short
from .documents import ANNOTATION_SOURCE_DIGEST
from .errors import OutputError
from .history import config_platform
from .model import Descriptor
from .output import BlobSpec, CompressionSpec, canonical_json, transcode_layer
from .plan import ImagePlan
from .tree import Node

__all__ = ["ANNOTATION_ZSTD", "Twins"]

ANNOTATION_ZSTD = "io.github.containers.compression.zstd"  # how podman's --add-compression marks the twin


class OutputBlobs(Protocol):
    items: dict[str, tuple[str, int, Callable[[], BinaryIO]]]

    def from_bytes(self, data: bytes) -> str: ...

    def from_file(self, blob: BlobSpec) -> None: ...


class Twins:
    """The zstd twins of one run's images (``finals`` must be told each image's final config and layers)."""

    def __init__(self, blobs: OutputBlobs, workdir: str, numbers: itertools.count[int], workers: int) -> None:
        self.blobs = blobs
        self.workdir = workdir
        self.numbers = numbers
        self.workers = workers
        # manifest digest -> its final (config, layers, diff_ids); -> its twin and platform; layer -> zstd copy
        self.finals: dict[str, tuple[Descriptor, list[Descriptor], list[str]]] = {}
        self.twins: dict[str, tuple[Descriptor, dict[str, Any]]] = {}
        self.transcoded: dict[str, Descriptor] = {}

    def make(self, plan: ImagePlan, manifest: Descriptor, node: Node) -> None:
        """The same image with zstd layers: the same config, the protected (base) layers as they are, every
        other gzip or plain layer compressed anew from the same tar stream."""
        config, layers, diff_ids = self.finals[manifest.digest]
        kept = {d.descriptor.digest for d in plan.layers if d.fate == "kept"}
        twin_layers = []
        for number, layer in enumerate(layers):
            codec = mt.layer_compression(layer.media_type)
            if layer.digest in kept or codec not in (mt.Compression.GZIP, mt.Compression.NONE):
                if codec is None or layer.media_type in mt.NON_DISTRIBUTABLE:
                    twin_layers.append(layer)
                else:  # the same blob, named as an OCI manifest names it
                    twin_layers.append(layer.replace(media_type=mt.layer_media_type(False, codec)))
                continue
            twin_layers.append(self.transcoded_layer(plan, number, layer, codec, diff_ids[number]))
        document = {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": config.replace(media_type=mt.OCI_CONFIG).to_json(),
            "layers": [d.to_json() for d in twin_layers],
            "annotations": {ANNOTATION_SOURCE_DIGEST: plan.node.digest},
        }
        data = canonical_json(document)
        digest = self.blobs.from_bytes(data)
        plan.report.zstd_manifest = digest
        self.twins[manifest.digest] = (
            Descriptor(mt.OCI_MANIFEST, digest, len(data), {}),
            _platform(node, plan),
        )

    def transcoded_layer(
        self, plan: ImagePlan, number: int, layer: Descriptor, codec: mt.Compression, diff_id: str
    ) -> Descriptor:
        done = self.transcoded.get(layer.digest)
        if done is not None:
            return done
        path = os.path.join(self.workdir, f"out-{next(self.numbers)}.blob")
        spec = CompressionSpec(mt.Compression.ZSTD)
        with self.blobs.items[layer.digest][2]() as reader:
            blob = transcode_layer(reader, codec, path, spec, self.workers)
        if blob.diff_id != diff_id:
            raise OutputError(
                f"{plan.name}: layer {number + 1} {short(layer.digest)}: its zstd copy has diff_id "
                f"{short(blob.diff_id)}, not {short(diff_id)}"
            )
        self.blobs.from_file(blob)
        done = Descriptor(mt.OCI_LAYER_ZSTD, blob.digest, blob.size, {})
        self.transcoded[layer.digest] = done
        return done

    def entry(self, digest: str, first: Descriptor) -> dict[str, Any] | None:
        """The index entry of the twin of the manifest ``digest`` (listed as ``first``), if it has one."""
        found = self.twins.get(digest)
        return _twin_entry(found[0], found[1], first) if found is not None else None

    def wrapped(self, root: Descriptor) -> Descriptor:
        """A root image with a zstd twin becomes an index of the two (the root entry's annotations stay)."""
        if root.digest not in self.twins:
            return root
        twin, platform = self.twins[root.digest]
        first: dict[str, Any] = {"mediaType": root.media_type, "digest": root.digest, "size": root.size}
        if platform:
            first["platform"] = platform
        document = {
            "schemaVersion": 2,
            "mediaType": mt.OCI_INDEX,
            "manifests": [first, _twin_entry(twin, platform, root)],
        }
        data = canonical_json(document)
        return root.replace(media_type=mt.OCI_INDEX, digest=self.blobs.from_bytes(data), size=len(data))


def _twin_entry(twin: Descriptor, platform: dict[str, Any], first: Descriptor) -> dict[str, Any]:
    """The index entry of a zstd twin, after the gzip image it copies: old clients take the first entry that
    matches their platform (the gzip one); clients that read the annotation may take this one."""
    entry: dict[str, Any] = {"mediaType": twin.media_type, "digest": twin.digest, "size": twin.size}
    found = first.raw.get("platform")
    if isinstance(found, dict) or platform:
        entry["platform"] = found if isinstance(found, dict) else platform
    entry["annotations"] = {ANNOTATION_ZSTD: "true"}
    return entry


def _platform(node: Node, plan: ImagePlan) -> dict[str, Any]:
    found = node.descriptor.platform or config_platform(plan.config)
    if found is None:
        return {}
    out = {"architecture": found.architecture, "os": found.os}
    if found.variant:
        out["variant"] = found.variant
    return out
