"""``docker://HOST/REPO[:TAG][@DIGEST]`` inputs: an image read from a registry as it is needed.

The root manifest is fetched at once (by digest when the reference has one: a tag may move); every other
manifest when the tree is read; a blob only when something opens it, streamed to a cache file in the work
directory and verified before it is used, once per run. Layers that nothing reads (a pure repack to the same
registry, protected layers pushed back) are never downloaded: their ``origin`` lets a push mount them.
Layers that will be read are fetched ahead, several at once (``prefetch``).
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

from ..digest import short
from ..documents import parse_object
from ..errors import RegistryError
from ..model import Descriptor
from ..registry.access import Clients
from ..registry.client import RegistryClient
from ..registry.copy import root_index_bytes
from ..registry.reference import Reference, parse_registry_ref
from .base import Source
from .blobs import MAX_DOCUMENT, read_verified

__all__ = ["RegistryBlobs", "open_registry"]

MANIFEST_ROLES = frozenset({"manifest", "index", "base manifest"})


@dataclass(frozen=True)
class RepositoryOrigin:
    registry: str
    repository: str


class RegistryBlobs:
    """The blobs of one repository, fetched on demand and cached (verified) under ``cache_dir``."""

    def __init__(self, client: RegistryClient, repository: str, cache_dir: str, name: str) -> None:
        self.client = client
        self.repository = repository
        self.cache_dir = cache_dir
        self.name = name
        self._manifests: dict[str, bytes] = {}
        self._fetching: dict[str, Future[None]] = {}
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self.bytes_downloaded = 0
        os.makedirs(cache_dir, exist_ok=True)

    def has(self, digest: str) -> bool:
        return True  # the registry is asked when the blob is opened; a missing one is a registry error

    def stored_size(self, digest: str) -> int | None:
        return None

    def origin(self, digest: str) -> RepositoryOrigin:
        return RepositoryOrigin(self.client.registry, self.repository)

    def add_manifest(self, digest: str, data: bytes) -> None:
        self._manifests[digest] = data

    def open(self, descriptor: Descriptor, role: str = "blob") -> BinaryIO:
        if role in MANIFEST_ROLES:
            return io.BytesIO(self._manifest(descriptor))
        self._fetch(descriptor, role).result()
        return open(self._path(descriptor.digest), "rb")

    def read(self, descriptor: Descriptor, role: str = "blob", limit: int = MAX_DOCUMENT) -> bytes:
        if role in MANIFEST_ROLES:
            return self._manifest(descriptor)
        return read_verified(self, descriptor, role, limit)

    def prefetch(self, descriptors: Sequence[Descriptor]) -> None:
        """Start downloading blobs that will be read (``client.concurrency`` at once)."""
        for descriptor in descriptors:
            self._fetch(descriptor, "layer")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _manifest(self, descriptor: Descriptor) -> bytes:
        data = self._manifests.get(descriptor.digest)
        if data is None:
            manifest = self.client.get_manifest(self.repository, descriptor.digest, descriptor.digest)
            data = manifest.data
            if descriptor.size and len(data) != descriptor.size:
                raise RegistryError(
                    f"{self.name}: manifest {short(descriptor.digest)} has {len(data)} bytes, "
                    f"its descriptor says {descriptor.size}"
                )
            self._manifests[descriptor.digest] = data
        return data

    def _path(self, digest: str) -> str:
        return os.path.join(self.cache_dir, digest.replace(":", "-"))

    def _fetch(self, descriptor: Descriptor, role: str) -> Future[None]:
        with self._lock:
            future = self._fetching.get(descriptor.digest)
            if future is None:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.client.concurrency, thread_name_prefix="pull")
                future = self._pool.submit(self._download, descriptor, role)
                self._fetching[descriptor.digest] = future
            return future

    def _download(self, descriptor: Descriptor, role: str) -> None:
        got = self.client.download_blob(
            self.repository, descriptor.digest, descriptor.size, role, self._path(descriptor.digest)
        )
        with self._lock:
            self.bytes_downloaded += max(0, got)


def open_registry(text: str, workdir: str, clients: Clients) -> Source:
    """Open a ``docker://`` reference as a ``Source`` (one root: the manifest the reference names)."""
    ref = parse_registry_ref(text)
    client = clients.get(ref.registry, source=True)
    root = client.get_manifest(ref.repository, ref.reference, ref.digest)
    blobs = RegistryBlobs(client, ref.repository, os.path.join(workdir, "registry-blobs"), str(ref))
    blobs.add_manifest(root.digest, root.data)
    index_bytes = root_index_bytes(root, ref.tag)
    return Source(text, "registry", blobs, parse_object(index_bytes, text), index_bytes)


def reference_of(source: Source) -> Reference | None:
    """The repository a registry source came from (for mounts), or None for local inputs."""
    if isinstance(source.blobs, RegistryBlobs):
        return Reference(source.blobs.client.registry, source.blobs.repository)
    return None
