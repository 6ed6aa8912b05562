"""The distribution protocol for container images: manifests and blobs of one registry.

Built on oras-py's ``oras.provider.Registry`` (its URL building, ``blob_exists`` and ``get_blob``), with its
``do_request`` replaced by ``Transport.request`` (timeouts, bounded retries, our authentication).

- Manifests are fetched and pushed as the exact bytes served (never re-serialised), with their media type
  (OCI and Docker, manifests and indexes/lists), checked against our own sha256 and ``Docker-Content-Digest``.
- Blobs stream between disk and network in 1 MiB pieces, never whole in memory; downloads are verified
  against their digest and size before they are renamed into place; uploads stream from a file object and
  are hashed as they go.
- A blob the destination already has is not uploaded again (``HEAD``); one that another repository of the
  same registry holds is mounted (``mount_from``, or learnt from earlier pulls and pushes of this client).

The exception raised is ``RegistryError`` (exit 8), naming the registry, the repository and the digest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Unpack
from urllib.parse import quote, urljoin

import oras.container
import oras.provider
import requests

from .. import mediatypes as mt
from ..errors import RegistryError, UsageError
from .auth import RegistryAuthError, RegistryUnavailable
from .reference import Reference
from .streams import StreamingFile, TransientError, file_digest, receive, write_atomically
from .transport import RETRY_STATUSES, Transport, TransportOptions, error_text, read_limited, status_error

__all__ = ["MANIFEST_MEDIA_TYPES", "Manifest", "RegistryClient", "TransferStats", "TransientError"]

MANIFEST_MEDIA_TYPES = (mt.OCI_MANIFEST, mt.OCI_INDEX, mt.DOCKER_MANIFEST, mt.DOCKER_MANIFEST_LIST)
ACCEPT = ", ".join(MANIFEST_MEDIA_TYPES)
MAX_MANIFEST = 4 * 1024 * 1024  # distribution's own limit


@dataclass
class TransferStats:
    """What one ``pull`` or ``push`` moved (for reports, tests and metrics)."""

    manifests: int = 0
    blobs_downloaded: int = 0
    bytes_downloaded: int = 0
    blobs_uploaded: int = 0
    bytes_uploaded: int = 0
    blobs_present: int = 0  # HEAD said the destination has it
    blobs_mounted: int = 0  # cross-repository mount
    blobs_skipped_foreign: int = 0
    seconds: float = 0.0


@dataclass
class Manifest:
    """A manifest or index as the registry serves it: exact bytes, digest, media type, parsed document."""

    digest: str
    media_type: str
    data: bytes
    document: dict[str, Any] = field(repr=False)


class _OrasRegistry(oras.provider.Registry):  # type: ignore[misc]
    """oras-py's Registry whose ``do_request`` goes through ``Transport.request``.

    oras-py's own ``do_request`` has no timeouts, a retry decorator that sleeps minutes and ignores
    ``Retry-After``, and token handling that resends a refused token: all replaced here.
    """

    def __init__(self, transport: Transport) -> None:
        super().__init__(
            hostname=transport.api_host,
            insecure=transport.insecure,
            tls_verify=transport.verify,
            auth_backend="token",
        )
        self._transport = transport
        self.session = transport.session

    @property
    def prefix(self) -> str:
        return self._transport.scheme

    @prefix.setter
    def prefix(self, value: str) -> None:
        pass  # the transport probes and owns the scheme

    def do_request(
        self,
        url: str,
        method: str = "GET",
        data: Any = None,
        headers: dict[str, str] | None = None,
        json: Any = None,
        stream: bool = False,
    ) -> requests.Response:
        if json is not None:
            raise RegistryError("internal error: JSON bodies are not sent (manifests go as exact bytes)")
        return self._transport.request(method, url, data=data, headers=headers, stream=stream, what=url)


class RegistryClient:
    """Manifests and blobs of one registry (``host[:port]``); ``pull``/``push`` copy whole images to and from
    OCI layout directories (``copy``). Settings are ``Transport``'s; ``concurrency`` blobs move at once."""

    def __init__(self, registry: str, *, concurrency: int = 4, **options: Unpack[TransportOptions]) -> None:
        self.concurrency = max(1, concurrency)
        self.transport = Transport(registry, connections=self.concurrency * 2, **options)
        self.registry = registry
        self.api_host = self.transport.api_host
        self.insecure = self.transport.insecure
        self.user_agent = self.transport.user_agent
        self._oras = _OrasRegistry(self.transport)
        # Which repositories of this registry hold a blob (learnt from pulls and pushes): mount sources.
        self._known_in: dict[str, set[str]] = {}
        self._known_lock = threading.Lock()
        self.last_stats = TransferStats()

    def __repr__(self) -> str:
        return f"RegistryClient({self.registry!r}, insecure={self.insecure})"

    @property
    def retries(self) -> int:
        return self.transport.retries

    @retries.setter
    def retries(self, value: int) -> None:
        self.transport.retries = max(0, value)

    @property
    def backoff(self) -> float:
        return self.transport.backoff

    @backoff.setter
    def backoff(self, value: float) -> None:
        self.transport.backoff = value

    def close(self) -> None:
        """Close the pooled connections (a long-running process that makes a client per job calls this)."""
        self.transport.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def base_url(self) -> str:
        return self.transport.base_url

    def where(self, repository: str, digest: str | None = None) -> str:
        text = f"{self.registry}/{repository}"
        return f"{text}@{digest}" if digest else text

    def remember(self, digest: str, repository: str) -> None:
        with self._known_lock:
            self._known_in.setdefault(digest, set()).add(repository)

    def known_in(self, digest: str) -> set[str]:
        with self._known_lock:
            return set(self._known_in.get(digest, ()))

    def check_registry(self, ref: Reference) -> None:
        if ref.registry != self.registry:
            raise UsageError(f"{ref}: this client talks to {self.registry}, not {ref.registry}")

    def map(self, function: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
        """Run ``function`` over ``items`` on up to ``concurrency`` threads; the first error wins."""
        if self.concurrency == 1 or len(items) <= 1:
            for item in items:
                yield function(item)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(items))) as pool:
            futures = [pool.submit(function, item) for item in items]
            try:
                for future in futures:
                    yield future.result()
            finally:
                for future in futures:
                    future.cancel()

    def retrying(self, where: str, attempt_once: Callable[[], Any]) -> Any:
        """Run one blob transfer, again after a ``TransientError``, up to ``retries`` more times."""
        attempt = 0
        while True:
            try:
                return attempt_once()
            except TransientError as error:
                if attempt >= self.retries:
                    raise RegistryUnavailable(f"{where}: {error} after {attempt + 1} attempt(s)") from error
                time.sleep(self.transport.delay(attempt, None, where))
                attempt += 1

    # ---------------------------------------------------------------- manifests

    def get_manifest(self, repository: str, reference: str, expected: str | None = None) -> Manifest:
        """The manifest at a tag or digest, exactly as served; ``expected``: the digest it must have."""
        where = f"{self.where(repository)}{'@' if reference.startswith('sha256:') else ':'}{reference}"
        url = f"{self.base_url}/v2/{repository}/manifests/{reference}"
        response = self.transport.request(
            "GET", url, headers={"Accept": ACCEPT}, stream=True, what=f"pulling {where}"
        )
        with response:
            if response.status_code == 404:
                raise RegistryError(f"pulling {where}: manifest not found")
            if response.status_code != 200:
                raise status_error(f"pulling {where}", response)
            data = read_limited(response, MAX_MANIFEST, f"pulling {where}")
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if expected is not None and digest != expected:
            raise RegistryError(f"pulling {where}: the manifest served has digest {digest}, not {expected}")
        served = response.headers.get("Docker-Content-Digest")
        if served and served.startswith("sha256:") and served != digest:
            raise RegistryError(
                f"pulling {where}: Docker-Content-Digest {served} does not match the bytes ({digest})"
            )
        content_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        return parse_manifest(digest, data, content_type, f"pulling {where}")

    def manifest_digest(self, ref: Reference) -> str | None:
        """The digest the registry has for ``ref`` (HEAD), or None when it has no such manifest."""
        self.check_registry(ref)
        url = f"{self.base_url}/v2/{ref.repository}/manifests/{ref.reference}"
        response = self.transport.request("HEAD", url, headers={"Accept": ACCEPT}, what=f"checking {ref}")
        with response:
            if response.status_code == 404:
                return None
            if response.status_code != 200:
                raise status_error(f"checking {ref}", response)
            digest = response.headers.get("Docker-Content-Digest")
        if digest is None:
            # Not every registry sends it on HEAD: fetch the bytes and hash them.
            return self.get_manifest(ref.repository, ref.reference, ref.digest).digest
        return digest

    def put_manifest(self, repository: str, manifest: Manifest, reference: str) -> None:
        tagged = "" if reference == manifest.digest else f":{reference}"
        where = f"pushing {self.where(repository)}{tagged}@{manifest.digest} ({manifest.media_type})"
        url = f"{self.base_url}/v2/{repository}/manifests/{reference}"
        response = self.transport.request(
            "PUT", url, data=manifest.data, headers={"Content-Type": manifest.media_type}, what=where
        )
        with response:
            if not 200 <= response.status_code < 300:
                raise status_error(f"{where}", response)
            served = response.headers.get("Docker-Content-Digest")
        if served and served != manifest.digest:
            raise RegistryError(f"{where}: the registry stored it as {served}")
        self.remember(manifest.digest, repository)

    def list_tags(self, repository: str) -> list[str]:
        """Every tag of ``repository`` (``GET /v2/NAME/tags/list``, following ``Link`` pages); [] when the
        registry has no such repository."""
        where = f"listing the tags of {self.where(repository)}"
        url: str | None = f"{self.base_url}/v2/{repository}/tags/list?n=1000"
        tags: list[str] = []
        while url is not None:
            response = self.transport.request("GET", url, stream=True, what=where)
            with response:
                if response.status_code == 404:
                    return []
                if response.status_code != 200:
                    raise status_error(where, response)
                data = read_limited(response, MAX_MANIFEST, where)
                link = re.search(r'<([^>]+)>\s*;\s*rel="?next"?', response.headers.get("Link", ""))
            try:
                page = json.loads(data).get("tags") or []
            except (ValueError, AttributeError) as error:
                raise RegistryError(f"{where}: not a tag list: {error}") from error
            if not isinstance(page, list) or not all(isinstance(tag, str) for tag in page):
                raise RegistryError(f"{where}: not a tag list")
            tags.extend(page)
            url = urljoin(self.base_url + "/", link.group(1)) if link else None
        return tags

    # ---------------------------------------------------------------- blobs

    def blob_exists(self, repository: str, digest: str) -> bool:
        # oras-py's blob_exists: a HEAD through our do_request (so timeouts, retries and auth apply).
        return bool(self._oras.blob_exists({"digest": digest}, self._container(repository)))

    def download_blob(self, repository: str, digest: str, size: int, what: str, final: str) -> int:
        """Stream one blob to the file ``final``, verified; returns the bytes downloaded (-1: already there)."""
        if os.path.exists(final) and file_digest(final) == (digest, size):
            self.remember(digest, repository)
            return -1
        where = f"pulling {self.where(repository, digest)} ({what})"
        self.retrying(where, lambda: self._download_once(repository, digest, size, where, final))
        self.remember(digest, repository)
        return size

    def _download_once(self, repository: str, digest: str, size: int, where: str, final: str) -> None:
        response = self._oras.get_blob(self._container(repository), digest, stream=True)
        with response:
            if response.status_code == 404:
                raise RegistryError(f"{where}: blob not found")
            if response.status_code != 200:
                raise status_error(f"{where}", response)
            with write_atomically(final, ".pull-") as out:
                seen, actual = receive(response, out, size, where)
                if seen != size:
                    raise TransientError(f"the registry sent {seen} bytes, the descriptor says {size}")
                if actual != digest:
                    raise RegistryError(f"{where}: the bytes served have digest {actual}")

    def ensure_blob(
        self,
        repository: str,
        digest: str,
        size: int,
        opener: Callable[[], BinaryIO],
        mount_sources: Sequence[str],
        where: str,
        stats: TransferStats,
    ) -> None:
        """Make the registry hold the blob in ``repository``: present already, mounted, or uploaded."""
        if self.blob_exists(repository, digest):
            with self._known_lock:
                stats.blobs_present += 1
            self.remember(digest, repository)
            return
        sources = [
            s for s in dict.fromkeys([*mount_sources, *sorted(self.known_in(digest))]) if s != repository
        ]
        mount = sources[0] if sources else None
        mounted = self.retrying(
            where, lambda: self._upload_once(repository, digest, size, opener, mount, where)
        )
        with self._known_lock:
            if mounted:
                stats.blobs_mounted += 1
            else:
                stats.blobs_uploaded += 1
                stats.bytes_uploaded += size
        self.remember(digest, repository)

    def _upload_once(
        self,
        repository: str,
        digest: str,
        size: int,
        opener: Callable[[], BinaryIO],
        mount: str | None,
        where: str,
    ) -> bool:
        """Upload (or mount) one blob; True when it was mounted."""
        location = self._start_upload(repository, digest, mount, where)
        if location is None:
            return True
        location += ("&" if "?" in location else "?") + f"digest={digest}"
        with opener() as body:
            stream = StreamingFile(body, size)
            try:
                response = self.transport.request(
                    "PUT",
                    location,
                    data=stream,
                    headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
                    what=where,
                    retry=False,  # an upload session does not survive a failed PUT: start again from the POST
                )
            except RegistryAuthError:
                raise
            except RegistryError as error:
                raise TransientError(str(error)) from error
        sent = stream.digest()
        with response:
            if sent != (digest, size) and sent[1] == size:
                raise RegistryError(
                    f"{where}: the content read does not match its digest (it hashes to {sent[0]})"
                )
            if response.status_code in RETRY_STATUSES or response.status_code == 404:
                raise TransientError(f"HTTP {response.status_code}{error_text(response)}")
            if not 200 <= response.status_code < 300:
                raise status_error(f"{where}", response)
            served = response.headers.get("Docker-Content-Digest")
        if served and served != digest:
            raise RegistryError(f"{where}: the registry stored the blob as {served}")
        return False

    def _start_upload(self, repository: str, digest: str, mount: str | None, where: str) -> str | None:
        """POST an upload (or a mount): the upload URL, or None when the registry mounted the blob."""
        url = f"{self.base_url}/v2/{repository}/blobs/uploads/"
        if mount is not None:
            url += f"?mount={digest}&from={quote(mount, safe='/')}"
        response = self.transport.request("POST", url, headers={"Content-Length": "0"}, what=where)
        with response:
            if response.status_code == 201 and mount is not None:
                return None
            if response.status_code != 202:
                raise RegistryError(
                    f"{where}: starting the upload: HTTP {response.status_code}{error_text(response)}"
                )
            location = response.headers.get("Location")
        if not location:
            raise RegistryError(f"{where}: the registry gave no upload Location")
        return urljoin(url, location)

    def _container(self, repository: str) -> oras.container.Container:
        container = oras.container.Container(repository, registry=self.api_host)
        # oras-py's own parser would take a first component with a "." for a registry: set the parts directly.
        namespace, _, name = repository.rpartition("/")
        container.namespace = namespace or None
        container.repository = name
        return container

    # ---------------------------------------------------------------- whole images (``copy``)

    def pull(self, ref: Reference, layout_dir: str) -> str:
        """Write ``ref`` as an OCI image layout at ``layout_dir``; return the root manifest digest."""
        from .copy import pull_layout

        return pull_layout(self, ref, layout_dir)

    def push(
        self, layout_dir: str, ref: Reference, *, annotations_ok: bool = True, mount_from: str | None = None
    ) -> str:
        """Push the single root manifest of the layout at ``layout_dir`` (children and blobs too) to ``ref``;
        see ``copy.push_layout``. Returns the digest."""
        from .copy import push_layout

        return push_layout(self, layout_dir, ref, annotations_ok=annotations_ok, mount_from=mount_from)


def parse_manifest(digest: str, data: bytes, content_type: str, where: str) -> Manifest:
    """A manifest's bytes as a ``Manifest``: a JSON object of a manifest or index media type."""
    try:
        document = json.loads(data)
    except ValueError as error:
        raise RegistryError(f"{where}: the manifest is not valid JSON: {error}") from error
    if not isinstance(document, dict):
        raise RegistryError(f"{where}: the manifest is not a JSON object")
    media_type = document.get("mediaType") if isinstance(document.get("mediaType"), str) else None
    if content_type in MANIFEST_MEDIA_TYPES:
        media_type = content_type
    if media_type is None:
        media_type = mt.OCI_INDEX if "manifests" in document else mt.OCI_MANIFEST
    if media_type not in MANIFEST_MEDIA_TYPES:
        raise RegistryError(f"{where}: unsupported manifest media type {media_type!r}")
    return Manifest(digest, media_type, data, document)
