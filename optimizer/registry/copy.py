"""Copying whole images between a registry and local storage, or straight from the image model.

- ``pull_layout``: a registry image (every manifest below the root, every blob) into an OCI layout directory.
- ``push_layout``: the single root manifest of an OCI layout directory to a registry.
- ``push_image``: the same from anything that can hand out manifests and blobs (``Pushable``): the run's
  ``write.Output`` pushes this way, blobs streaming from where they are (the input's files, the layers the
  run wrote, or, for blobs that live in a repository of the destination registry, a mount: no bytes move).

Children are pushed before the index that lists them, blobs before the manifest that names them; blobs the
destination has already are not uploaded again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any, BinaryIO, Protocol

from .. import mediatypes as mt
from ..documents import ANNOTATION_REF_NAME
from ..errors import RegistryError
from .client import (
    MANIFEST_MEDIA_TYPES,
    MAX_MANIFEST,
    Manifest,
    RegistryClient,
    TransferStats,
    parse_manifest,
)
from .reference import Reference, valid_tag
from .streams import write_atomically

__all__ = ["LayoutDir", "Pushable", "pull_layout", "push_image", "push_layout"]

log = logging.getLogger("optimizer.registry")
_DIGEST_LENGTH = len("sha256:") + 64


class Pushable(Protocol):
    """An image to push: its root descriptor, its manifests, its blobs."""

    name: str

    def root(self) -> dict[str, Any]: ...

    def manifest(self, descriptor: dict[str, Any]) -> Manifest: ...

    def has_blob(self, digest: str) -> bool: ...

    def opener(self, digest: str, size: int, what: str) -> Callable[[], BinaryIO]: ...

    def mount_sources(self, digest: str, registry: str) -> list[str]: ...


# ---------------------------------------------------------------- pull


def pull_layout(client: RegistryClient, ref: Reference, layout_dir: str) -> str:
    """Write ``ref`` as an OCI image layout at ``layout_dir``; return the root manifest digest."""
    client.check_registry(ref)
    started = time.monotonic()
    stats = TransferStats()
    blobs_dir = os.path.join(layout_dir, "blobs", "sha256")
    os.makedirs(blobs_dir, exist_ok=True)
    repository = ref.repository
    root = client.get_manifest(repository, ref.reference, ref.digest)
    manifests, blobs = _collect(client, repository, root, stats)
    for manifest in manifests:
        _write_file(os.path.join(blobs_dir, manifest.digest[7:]), manifest.data)
        client.remember(manifest.digest, repository)
    stats.manifests = len(manifests)

    def download(item: tuple[str, tuple[int, str]]) -> int:
        digest, (size, what) = item
        return client.download_blob(repository, digest, size, what, os.path.join(blobs_dir, digest[7:]))

    for size in client.map(download, sorted(blobs.items())):
        if size >= 0:
            stats.blobs_downloaded += 1
            stats.bytes_downloaded += size
    _write_file(os.path.join(layout_dir, "oci-layout"), b'{"imageLayoutVersion":"1.0.0"}')
    _write_file(os.path.join(layout_dir, "index.json"), root_index_bytes(root, ref.tag))
    stats.seconds = time.monotonic() - started
    client.last_stats = stats
    log.info(
        "pulled %s (%s): %d manifests, %d blobs, %d bytes in %.2f s",
        ref,
        root.digest,
        stats.manifests,
        stats.blobs_downloaded,
        stats.bytes_downloaded,
        stats.seconds,
    )
    return root.digest


def root_index_bytes(root: Manifest, tag: str | None) -> bytes:
    """The ``index.json`` of a pulled image: one root, ``root``, named ``tag`` if the reference had one."""
    descriptor: dict[str, Any] = {"mediaType": root.media_type, "digest": root.digest, "size": len(root.data)}
    if tag:
        descriptor["annotations"] = {ANNOTATION_REF_NAME: tag}
    index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [descriptor]}
    return json.dumps(index, sort_keys=True).encode()


def _collect(
    client: RegistryClient, repository: str, root: Manifest, stats: TransferStats
) -> tuple[list[Manifest], dict[str, tuple[int, str]]]:
    """Every manifest below ``root`` and every blob they name (digest -> (size, what))."""
    manifests = [root]
    blobs: dict[str, tuple[int, str]] = {}
    seen = {root.digest}
    queue = [root]
    while queue:
        manifest = queue.pop(0)
        where = client.where(repository, manifest.digest)
        for descriptor in children(manifest, where):
            digest, size = descriptor["digest"], descriptor["size"]
            if descriptor["_kind"] == "manifest":
                if digest in seen:
                    continue
                seen.add(digest)
                child = client.get_manifest(repository, digest, digest)
                if len(child.data) != size:
                    raise RegistryError(
                        f"pulling {where}: child manifest {digest} has {len(child.data)} bytes, the index says {size}"
                    )
                manifests.append(child)
                queue.append(child)
            elif is_foreign(descriptor):
                stats.blobs_skipped_foreign += 1  # lives at its URLs, not in the registry
            else:
                blobs.setdefault(digest, (size, f"{where}: {descriptor['_kind']}"))
    return manifests, blobs


def is_foreign(descriptor: dict[str, Any]) -> bool:
    """A non-distributable layer with URLs: it lives there, not in the registry."""
    return bool(descriptor.get("urls")) and descriptor.get("mediaType") in mt.NON_DISTRIBUTABLE


# ---------------------------------------------------------------- push


def push_layout(
    client: RegistryClient,
    layout_dir: str,
    ref: Reference,
    *,
    annotations_ok: bool = True,
    mount_from: str | None = None,
) -> str:
    """Push the single root manifest of the layout at ``layout_dir`` (children and blobs too) to ``ref``.

    ``ref`` may carry a tag (pushed to that tag), a digest (pushed by digest; it must be the layout's), or
    neither: then the tag is the layout's ``org.opencontainers.image.ref.name`` annotation when
    ``annotations_ok``, else the push is by digest. ``mount_from`` names a repository of this registry that
    holds the unchanged blobs (a cross-repository mount instead of an upload). Returns the digest.
    """
    return push_image(client, LayoutDir(layout_dir, mount_from), ref, annotations_ok=annotations_ok)


def push_image(
    client: RegistryClient,
    image: Pushable,
    ref: Reference,
    *,
    annotations_ok: bool = True,
    before_put: Callable[[list[str]], None] | None = None,
) -> str:
    """Push ``image`` to ``ref`` (see ``push_layout`` for the tag); returns the root manifest digest.

    ``before_put`` is called with every manifest digest about to be pushed, before the first manifest PUT
    (the service records them there: the registry notifies it of the push before the PUT returns).
    """
    client.check_registry(ref)
    started = time.monotonic()
    stats = TransferStats()
    root_descriptor = image.root()
    target = ref.tag
    if target is None and ref.digest is None and annotations_ok:
        annotations = root_descriptor.get("annotations") or {}
        name = annotations.get(ANNOTATION_REF_NAME) if isinstance(annotations, dict) else None
        if isinstance(name, str) and valid_tag(name):
            target = name
    root = image.manifest(root_descriptor)
    if ref.digest is not None and ref.digest != root.digest:
        raise RegistryError(
            f"pushing to {ref}: the image's manifest is {root.digest}, not the digest asked for"
        )
    if before_put is not None:
        before_put(_manifest_digests(image, root))
    pusher = _Pusher(client, image, ref.repository, stats)
    client.transport.push_repositories.add(ref.repository)
    try:
        pusher.tree(root, target or root.digest, set())
    finally:
        client.transport.push_repositories.discard(ref.repository)
    stats.seconds = time.monotonic() - started
    client.last_stats = stats
    log.info(
        "pushed %s (%s): %d blobs uploaded (%d bytes), %d present, %d mounted in %.2f s",
        ref,
        root.digest,
        stats.blobs_uploaded,
        stats.bytes_uploaded,
        stats.blobs_present,
        stats.blobs_mounted,
        stats.seconds,
    )
    return root.digest


def _manifest_digests(image: Pushable, root: Manifest) -> list[str]:
    found = [root.digest]
    pending = [root]
    while pending:
        manifest = pending.pop()
        for descriptor in children(manifest, f"{image.name}: {manifest.digest}"):
            if descriptor["_kind"] == "manifest" and descriptor["digest"] not in found:
                found.append(descriptor["digest"])
                pending.append(image.manifest(descriptor))
    return found


class _Pusher:
    def __init__(
        self, client: RegistryClient, image: Pushable, repository: str, stats: TransferStats
    ) -> None:
        self.client = client
        self.image = image
        self.repository = repository
        self.stats = stats

    def tree(self, manifest: Manifest, reference: str, done: set[str]) -> None:
        where = self.client.where(self.repository, manifest.digest)
        blobs: list[dict[str, Any]] = []
        for descriptor in children(manifest, f"{self.image.name}: {manifest.digest}"):
            if descriptor["_kind"] == "manifest":
                if descriptor["digest"] in done:
                    continue
                child = self.image.manifest(descriptor)
                self.tree(child, child.digest, done)
            elif not self.image.has_blob(descriptor["digest"]) and is_foreign(descriptor):
                self.stats.blobs_skipped_foreign += 1
            else:
                blobs.append(descriptor)
        unique = {d["digest"]: d for d in blobs}
        for _ in self.client.map(lambda d: self.blob(d, where), list(unique.values())):
            pass
        self.client.put_manifest(self.repository, manifest, reference)
        self.stats.manifests += 1
        done.add(manifest.digest)

    def blob(self, descriptor: dict[str, Any], owner: str) -> None:
        digest, size = descriptor["digest"], descriptor["size"]
        where = f"pushing {self.client.where(self.repository, digest)} (blob of {owner})"
        opener = self.image.opener(digest, size, where)
        sources = self.image.mount_sources(digest, self.client.registry)
        self.client.ensure_blob(self.repository, digest, size, opener, sources, where, self.stats)


class LayoutDir:
    """An OCI image layout directory being pushed: its root descriptor and verified blobs."""

    def __init__(self, path: str, mount_from: str | None = None) -> None:
        self.path = path
        self.name = path
        self._mount_from = mount_from

    def root(self) -> dict[str, Any]:
        index_path = os.path.join(self.path, "index.json")
        try:
            with open(index_path, "rb") as handle:
                index = json.loads(handle.read())
        except (OSError, ValueError) as error:
            raise RegistryError(f"{self.path}: cannot read index.json: {error}") from error
        return single_root(index, self.path)

    def has_blob(self, digest: str) -> bool:
        return os.path.exists(os.path.join(self.path, "blobs", *digest.split(":", 1)))

    def blob_path(self, digest: str, size: int, what: str) -> str:
        """The blob's file, checked for its size (its digest is checked as it is uploaded)."""
        path = os.path.join(self.path, "blobs", *digest.split(":", 1))
        try:
            actual = os.stat(path).st_size
        except FileNotFoundError:
            raise RegistryError(f"{what}: {path} is missing from the layout") from None
        if actual != size:
            raise RegistryError(f"{what}: {path} has {actual} bytes, its descriptor says {size}")
        return path

    def opener(self, digest: str, size: int, what: str) -> Callable[[], BinaryIO]:
        path = self.blob_path(digest, size, what)
        return lambda: open(path, "rb")

    def mount_sources(self, digest: str, registry: str) -> list[str]:
        return [self._mount_from] if self._mount_from else []

    def manifest(self, descriptor: dict[str, Any]) -> Manifest:
        digest, size = descriptor["digest"], descriptor["size"]
        if size > MAX_MANIFEST:
            raise RegistryError(f"{self.path}: manifest {digest} is {size} bytes, over the 4 MiB limit")
        with open(self.blob_path(digest, size, f"{self.path}: manifest"), "rb") as handle:
            data = handle.read()
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise RegistryError(
                f"{self.path}: manifest: {self.path}/blobs/{digest.replace(':', '/')} does not match its digest"
            )
        return manifest_of(descriptor, data, self.path)


def single_root(index: Any, where: str) -> dict[str, Any]:
    """The one root descriptor of an index (a push sends one image)."""
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list) or len(manifests) != 1 or not isinstance(manifests[0], dict):
        count = len(manifests) if isinstance(manifests, list) else 0
        raise RegistryError(f"{where}: index.json lists {count} manifests; a push needs exactly one")
    descriptor: dict[str, Any] = manifests[0]
    check_descriptor(descriptor, f"{where}: index.json")
    return descriptor


def manifest_of(descriptor: dict[str, Any], data: bytes, where: str) -> Manifest:
    """A manifest to push, with the media type its descriptor (or document) gives."""
    digest = descriptor["digest"]
    manifest = parse_manifest(
        digest, data, str(descriptor.get("mediaType") or ""), f"{where}: manifest {digest}"
    )
    media_type = descriptor.get("mediaType") or manifest.document.get("mediaType")
    if media_type not in MANIFEST_MEDIA_TYPES:
        raise RegistryError(f"{where}: manifest {digest} has unsupported media type {media_type!r}")
    return manifest


def check_descriptor(descriptor: Any, what: str) -> None:
    if not isinstance(descriptor, dict):
        raise RegistryError(f"{what}: a descriptor is not a JSON object")
    digest, size = descriptor.get("digest"), descriptor.get("size")
    if not isinstance(digest, str) or not digest.startswith("sha256:") or len(digest) != _DIGEST_LENGTH:
        raise RegistryError(f"{what}: descriptor with unsupported or malformed digest {digest!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise RegistryError(f"{what}: descriptor {digest} has an invalid size {size!r}")


def children(manifest: Manifest, where: str) -> list[dict[str, Any]]:
    """The descriptors a manifest needs, with ``_kind``: manifest (an index's child), config, layer."""
    document = manifest.document
    out: list[dict[str, Any]] = []
    if manifest.media_type in mt.INDEX_TYPES:
        entries = document.get("manifests")
        if not isinstance(entries, list):
            raise RegistryError(f"{where}: the index has no manifests list")
        for child in entries:
            check_descriptor(child, where)
            if child.get("mediaType") not in MANIFEST_MEDIA_TYPES:
                raise RegistryError(
                    f"{where}: child {child['digest']} has unsupported media type {child.get('mediaType')!r}"
                )
            out.append({**child, "_kind": "manifest"})
        return out
    config: Any = document.get("config")
    check_descriptor(config, where)
    out.append({**config, "_kind": "config"})
    layers = document.get("layers")
    if not isinstance(layers, list):
        raise RegistryError(f"{where}: the manifest has no layers list")
    for number, layer in enumerate(layers, 1):
        check_descriptor(layer, where)
        out.append({**layer, "_kind": f"layer {number}/{len(layers)}"})
    return out


def _write_file(path: str, data: bytes) -> None:
    with write_atomically(path, ".write-") as out:
        out.write(data)
