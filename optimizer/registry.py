"""A registry client for container images: pull to and push from OCI image layout directories.

Built on oras-py's ``oras.provider.Registry`` (its URL building, ``blob_exists`` and ``get_blob``), with its
``do_request`` replaced, because oras-py 0.2.43 as it is cannot be trusted with images (see
``notes/registry.md``):

- every request has a timeout (connect and each read), so a stalled registry is an error, not a hang;
- retries are bounded (``retries``) with exponential backoff, honour ``429``/``503`` and ``Retry-After``,
  retry connection errors and ``500``/``502``/``504``, and never retry an authentication failure;
- authentication follows the challenge (``registry_auth.Authenticator``): Basic is sent pre-emptively, Bearer
  tokens are fetched per repository and fetched again when a token we sent is refused;
- manifests are fetched and pushed as the exact bytes served (never re-serialised), with their media type
  (OCI and Docker, manifests and indexes/lists), checked against our own sha256 and ``Docker-Content-Digest``;
- blobs stream between disk and network in 1 MiB pieces, never whole in memory; downloads are verified against
  their digest and size before they are renamed into place; uploads stream from the file object.

Blobs the destination already has are not uploaded again: a ``HEAD`` first, or a cross-repository mount when
the blob is known to live in another repository of the same registry (pulled from there by this client, or
``mount_from``). Children are pushed before the index that lists them.

The exception raised is ``RegistryError`` (exit 8), naming the registry, the repository and the digest.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import os
import random
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any
from urllib.parse import quote, unquote, urljoin

import oras.container
import oras.provider
import requests
import requests.adapters

from . import mediatypes as mt
from .errors import RegistryError, UsageError
from .registry_auth import Authenticator, Credentials, RegistryAuthError, RegistryUnavailable, credentials_for

__all__ = [
    "MANIFEST_MEDIA_TYPES",
    "Credentials",
    "Reference",
    "RegistryAuthError",
    "RegistryClient",
    "RegistryUnavailable",
    "TransferStats",
    "credentials_for",
]

log = logging.getLogger("optimizer.registry")

try:
    from importlib.metadata import version as _version

    _VERSION = _version("oci-optimizer")
except Exception:  # pragma: no cover - not installed
    _VERSION = "0"

DEFAULT_USER_AGENT = f"oci-optimizer/{_VERSION}"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
MANIFEST_MEDIA_TYPES = (mt.OCI_MANIFEST, mt.OCI_INDEX, mt.DOCKER_MANIFEST, mt.DOCKER_MANIFEST_LIST)
_ACCEPT = ", ".join(MANIFEST_MEDIA_TYPES)
_MAX_MANIFEST = 4 * 1024 * 1024  # distribution's own limit
_CHUNK = 1 << 20
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_DOCKER_HUB = "docker.io"
_DOCKER_HUB_API = "registry-1.docker.io"

_HOST = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$"
)
_PATH_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")


@dataclass(frozen=True)
class Reference:
    """``HOST[:PORT]/REPO[:TAG][@sha256:...]``.

    The first component is a registry host only if it has a ``.`` or a ``:`` or is ``localhost``; otherwise
    the registry is ``docker.io`` (and a one-component repository there is ``library/NAME``).
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        original = text
        if not text or text != text.strip():
            raise UsageError(f"invalid image reference {original!r}")
        digest: str | None = None
        if "@" in text:
            text, digest = text.split("@", 1)
            if not _DIGEST.match(digest):
                raise UsageError(
                    f"invalid image reference {original!r}: bad digest {digest!r} (want sha256:<64 hex>)"
                )
        first, slash, rest = text.partition("/")
        if slash and ("." in first or ":" in first or first == "localhost"):
            registry, path = first, rest
            if not _HOST.match(registry):
                raise UsageError(f"invalid image reference {original!r}: bad registry host {registry!r}")
        else:
            registry, path = _DOCKER_HUB, text
        tag: str | None = None
        last_slash = path.rfind("/")
        colon = path.rfind(":")
        if colon > last_slash:
            path, tag = path[:colon], path[colon + 1 :]
            if not _TAG.match(tag):
                raise UsageError(f"invalid image reference {original!r}: bad tag {tag!r}")
        if not path or not all(_PATH_COMPONENT.match(part) for part in path.split("/")):
            raise UsageError(
                f"invalid image reference {original!r}: bad repository {path!r} "
                "(lower-case letters, digits and separators . _ __ - between /-separated components)"
            )
        if registry == _DOCKER_HUB and "/" not in path:
            path = f"library/{path}"
        return cls(registry, path, tag, digest)

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/``: the digest if there is one, else the tag, else ``latest``."""
        return self.digest or self.tag or "latest"

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.registry, self.repository, self.tag, digest)


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


class _TransientError(Exception):
    """A failure worth trying again (network, 5xx, 429) inside one blob transfer."""


@dataclass
class _Manifest:
    digest: str
    media_type: str
    data: bytes
    document: dict[str, Any] = field(repr=False)


class _OrasRegistry(oras.provider.Registry):  # type: ignore[misc]
    """oras-py's Registry whose ``do_request`` goes through ``RegistryClient._request``.

    oras-py's own ``do_request`` has no timeouts, a retry decorator that sleeps minutes and ignores
    ``Retry-After``, and token handling that resends a refused token: all replaced here.
    """

    def __init__(self, client: RegistryClient, insecure: bool, tls_verify: bool | str) -> None:
        super().__init__(
            hostname=client.api_host, insecure=insecure, tls_verify=tls_verify, auth_backend="token"
        )
        self._client = client

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
        return self._client._request(method, url, data=data, headers=headers, stream=stream, what=url)


class RegistryClient:
    """Pulls and pushes images of one registry (``host[:port]``) to and from OCI image layout directories.

    ``insecure``: talk to a registry without verified TLS, as skopeo's ``--tls-verify=false`` does: HTTPS
    without certificate checks if the registry speaks it, else plain HTTP. ``timeout`` bounds the connection
    and every read; ``retries`` bounds the extra attempts of a request (network errors, 429, 5xx); ``backoff``
    is the first wait in seconds (doubled each time, with jitter), ``max_retry_wait`` the longest
    ``Retry-After`` we honour. ``credentials`` default to ``credentials_for(registry)``; pass ``Credentials``
    or ``anonymous=True``. ``concurrency`` blobs are transferred at once.
    """

    def __init__(
        self,
        registry: str,
        *,
        insecure: bool = False,
        credentials: Credentials | None = None,
        timeout: float = 30.0,
        retries: int = 4,
        user_agent: str = DEFAULT_USER_AGENT,
        backoff: float = 0.5,
        max_retry_wait: float = 60.0,
        tls_verify: bool | str = True,
        anonymous: bool = False,
        concurrency: int = 4,
    ) -> None:
        if not _HOST.match(registry):
            raise UsageError(f"invalid registry host {registry!r} (want HOST[:PORT])")
        self.registry = registry
        self.api_host = _DOCKER_HUB_API if registry in (_DOCKER_HUB, "index.docker.io") else registry
        self.insecure = insecure
        self.timeout = timeout
        self.retries = max(0, retries)
        self.user_agent = user_agent
        self.backoff = backoff
        self.max_retry_wait = max_retry_wait
        self.concurrency = max(1, concurrency)
        self._verify: bool | str = False if insecure else tls_verify
        if credentials is None and not anonymous:
            credentials = credentials_for(registry)
        self._oras = _OrasRegistry(self, insecure=insecure, tls_verify=self._verify)
        self._session: requests.Session = self._oras.session
        adapter = requests.adapters.HTTPAdapter(
            pool_connections=4, pool_maxsize=max(10, self.concurrency * 2)
        )
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._auth = Authenticator(
            registry, credentials, self._session, timeout=timeout, verify=self._verify, user_agent=user_agent
        )
        self._scheme: str | None = None if insecure else "https"
        self._setup_lock = threading.Lock()
        self._pinged = False
        # Which repositories of this registry hold a blob (learnt from pulls and pushes): mount sources.
        self._known_in: dict[str, set[str]] = {}
        self._known_lock = threading.Lock()
        self._push_repositories: set[str] = set()
        self.last_stats = TransferStats()

    def __repr__(self) -> str:
        return f"RegistryClient({self.registry!r}, insecure={self.insecure})"

    def close(self) -> None:
        """Close the pooled connections (a long-running process that makes a client per job calls this)."""
        self._session.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- HTTP plumbing

    @property
    def base_url(self) -> str:
        self._setup()
        return f"{self._scheme}://{self.api_host}"

    def _setup(self) -> None:
        """Pick the scheme (insecure: unverified HTTPS, else HTTP); learn the auth scheme before secrets."""
        if self._scheme is not None and (self._pinged or not self._auth.has_credentials):
            return
        with self._setup_lock:
            if self._scheme is None:
                self._scheme = self._probe_scheme()
                self._oras.prefix = self._scheme
            if not self._pinged and self._auth.has_credentials:
                self._pinged = True
                try:
                    probe = self._session.get(
                        f"{self._scheme}://{self.api_host}/v2/",
                        timeout=self.timeout,
                        verify=self._verify,
                        headers={"User-Agent": self.user_agent},
                    )
                except requests.RequestException:
                    return  # the real request will report (and retry) the problem
                if probe.status_code == 401:
                    self._auth.learn(probe)
                probe.close()

    def _probe_scheme(self) -> str:
        """Insecure mode: HTTPS (unverified) if the registry speaks it, else plain HTTP; retried while down."""
        attempt = 0
        while True:
            try:
                probe = self._session.get(
                    f"https://{self.api_host}/v2/",
                    # A plain HTTP server may sit on a TLS hello without answering: do not wait long.
                    timeout=min(self.timeout, 5.0),
                    verify=False,
                    headers={"User-Agent": self.user_agent},
                )
            except requests.exceptions.SSLError:
                return "http"  # something answered, and not in TLS
            except requests.RequestException as https_error:
                try:
                    probe = self._session.get(
                        f"http://{self.api_host}/v2/",
                        timeout=self.timeout,
                        headers={"User-Agent": self.user_agent},
                    )
                except requests.RequestException as error:
                    if attempt >= self.retries:
                        kind = (
                            "timed out"
                            if "timed out" in f"{https_error} {error}".lower()
                            else "connection failed"
                        )
                        raise RegistryUnavailable(
                            f"{self.registry}: {kind} after {attempt + 1} attempt(s) (HTTPS and HTTP): {error}"
                        ) from error
                    time.sleep(self._delay(attempt, None, self.registry))
                    attempt += 1
                    continue
                scheme = "http"
            else:
                scheme = "https"
            with probe:
                self._pinged = True
                if probe.status_code == 401:
                    self._auth.learn(probe)
            return scheme

    def _scope(self, url: str, method: str) -> str | None:
        match = re.search(r"/v2/(.+?)/(?:blobs|manifests|tags|referrers)/", url)
        if match is None:
            return None
        repository = match.group(1)
        push = method not in ("GET", "HEAD") or repository in self._push_repositories
        scope = f"repository:{repository}:{'pull,push' if push else 'pull'}"
        mount = re.search(r"[?&]from=([^&]+)", url)
        if mount is not None and method == "POST":
            scope += f" repository:{unquote(mount.group(1))}:pull"
        return scope

    def _delay(self, attempt: int, response: requests.Response | None, what: str) -> float:
        delay = self.backoff * (2**attempt) * (0.75 + random.random() / 2)
        if response is not None:
            value = response.headers.get("Retry-After")
            if value:
                asked: float | None
                try:
                    asked = float(value.strip())
                except ValueError:
                    try:
                        when = email.utils.parsedate_to_datetime(value)
                        asked = when.timestamp() - time.time()
                    except (TypeError, ValueError):
                        asked = None
                if asked is not None:
                    if asked > self.max_retry_wait:
                        raise RegistryUnavailable(
                            f"{what}: HTTP {response.status_code}, the registry asks to retry after "
                            f"{asked:.0f} s "
                            f"(more than the {self.max_retry_wait:.0f} s we wait)"
                        )
                    delay = max(0.0, float(asked))
        return float(min(delay, self.max_retry_wait))

    def _request(
        self,
        method: str,
        url: str,
        *,
        data: Any = None,
        headers: dict[str, str] | None = None,
        stream: bool = False,
        what: str,
        retry: bool = True,
    ) -> requests.Response:
        """One HTTP exchange with timeouts, bounded retries and authentication; returns any non-401 answer
        that is not worth retrying (the caller judges 2xx/4xx); raises ``RegistryError`` otherwise."""
        self._setup()
        if url.startswith("/"):
            url = self.base_url + url
        scope = self._scope(url, method)
        start = data.tell() if hasattr(data, "seek") and hasattr(data, "tell") else None
        attempt = 0
        auth_rounds = 0
        while True:
            if start is not None:
                data.seek(start)
            send = {"User-Agent": self.user_agent}
            if headers:
                send.update(
                    {k: v for k, v in headers.items() if k.lower() not in ("authorization", "user-agent")}
                )
            authorization = self._auth.header(scope)
            if authorization:
                send["Authorization"] = authorization
            log.debug("%s %s", method, url)
            try:
                response = self._session.request(
                    method,
                    url,
                    data=data,
                    headers=send,
                    stream=stream,
                    timeout=(self.timeout, self.timeout),
                    verify=self._verify,
                )
            except requests.exceptions.SSLError as error:
                raise RegistryError(
                    f"{what}: TLS error (an insecure / --tls-verify=false setting skips the checks): {error}"
                ) from error
            except (requests.ConnectionError, requests.Timeout) as error:
                kind = (
                    "timed out"
                    if isinstance(error, requests.Timeout) or "timed out" in str(error)
                    else "connection failed"
                )
                if not retry or attempt >= self.retries:
                    raise RegistryUnavailable(
                        f"{what}: {kind} after {attempt + 1} attempt(s): {error}"
                    ) from error
                wait = self._delay(attempt, None, what)
                log.info("%s %s: %s, retrying in %.1f s", method, url, kind, wait)
                time.sleep(wait)
                attempt += 1
                continue
            if response.status_code == 401:
                response.close()
                if auth_rounds >= 1:
                    raise RegistryAuthError(
                        f"{what}: authentication failed (HTTP 401 with fresh credentials)"
                    )
                self._auth.on_unauthorized(response, scope, authorization, what)
                auth_rounds += 1
                continue
            if response.status_code in _RETRY_STATUSES and retry:
                if attempt >= self.retries:
                    message = _error_text(response)
                    response.close()
                    raise RegistryUnavailable(
                        f"{what}: HTTP {response.status_code} after {attempt + 1} attempt(s){message}"
                    )
                wait = self._delay(attempt, response, what)
                response.close()
                log.info("%s %s: HTTP %d, retrying in %.1f s", method, url, response.status_code, wait)
                time.sleep(wait)
                attempt += 1
                continue
            return response

    def _container(self, repository: str) -> oras.container.Container:
        container = oras.container.Container(repository, registry=self.api_host)
        # oras-py's own parser would take a first component with a "." for a registry: set the parts directly.
        namespace, _, name = repository.rpartition("/")
        container.namespace = namespace or None
        container.repository = name
        return container

    def _where(self, repository: str, digest: str | None = None) -> str:
        text = f"{self.registry}/{repository}"
        return f"{text}@{digest}" if digest else text

    def _remember(self, digest: str, repository: str) -> None:
        with self._known_lock:
            self._known_in.setdefault(digest, set()).add(repository)

    def _check_registry(self, ref: Reference) -> None:
        if ref.registry != self.registry:
            raise UsageError(f"{ref}: this client talks to {self.registry}, not {ref.registry}")

    # ---------------------------------------------------------------- manifests

    def _get_manifest(self, repository: str, reference: str, expected: str | None) -> _Manifest:
        where = f"{self._where(repository)}{'@' if reference.startswith('sha256:') else ':'}{reference}"
        url = f"{self.base_url}/v2/{repository}/manifests/{reference}"
        response = self._request(
            "GET", url, headers={"Accept": _ACCEPT}, stream=True, what=f"pulling {where}"
        )
        with response:
            if response.status_code == 404:
                raise RegistryError(f"pulling {where}: manifest not found")
            if response.status_code != 200:
                raise _status_error(f"pulling {where}", response)
            data = _read_limited(response, _MAX_MANIFEST, f"pulling {where}")
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if expected is not None and digest != expected:
            raise RegistryError(f"pulling {where}: the manifest served has digest {digest}, not {expected}")
        served = response.headers.get("Docker-Content-Digest")
        if served and served.startswith("sha256:") and served != digest:
            raise RegistryError(
                f"pulling {where}: Docker-Content-Digest {served} does not match the bytes ({digest})"
            )
        try:
            document = json.loads(data)
        except ValueError as error:
            raise RegistryError(f"pulling {where}: the manifest is not valid JSON: {error}") from error
        if not isinstance(document, dict):
            raise RegistryError(f"pulling {where}: the manifest is not a JSON object")
        content_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        media_type = document.get("mediaType") if isinstance(document.get("mediaType"), str) else None
        if content_type in MANIFEST_MEDIA_TYPES:
            media_type = content_type
        if media_type is None:
            media_type = mt.OCI_INDEX if "manifests" in document else mt.OCI_MANIFEST
        if media_type not in MANIFEST_MEDIA_TYPES:
            raise RegistryError(f"pulling {where}: unsupported manifest media type {media_type!r}")
        return _Manifest(digest, media_type, data, document)

    def manifest_digest(self, ref: Reference) -> str | None:
        """The digest the registry has for ``ref`` (HEAD), or None when it has no such manifest."""
        self._check_registry(ref)
        url = f"{self.base_url}/v2/{ref.repository}/manifests/{ref.reference}"
        response = self._request("HEAD", url, headers={"Accept": _ACCEPT}, what=f"checking {ref}")
        with response:
            if response.status_code == 404:
                return None
            if response.status_code != 200:
                raise _status_error(f"checking {ref}", response)
            digest = response.headers.get("Docker-Content-Digest")
        if digest is None:
            # Not every registry sends it on HEAD: fetch the bytes and hash them.
            return self._get_manifest(ref.repository, ref.reference, ref.digest).digest
        return digest

    def list_tags(self, repository: str) -> list[str]:
        """Every tag of ``repository`` (``GET /v2/NAME/tags/list``, following ``Link`` pages); [] when the
        registry has no such repository."""
        where = f"listing the tags of {self._where(repository)}"
        url: str | None = f"{self.base_url}/v2/{repository}/tags/list?n=1000"
        tags: list[str] = []
        while url is not None:
            response = self._request("GET", url, stream=True, what=where)
            with response:
                if response.status_code == 404:
                    return []
                if response.status_code != 200:
                    raise _status_error(where, response)
                data = _read_limited(response, _MAX_MANIFEST, where)
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

    # ---------------------------------------------------------------- pull

    def pull(self, ref: Reference, layout_dir: str) -> str:
        """Write ``ref`` as an OCI image layout at ``layout_dir``; return the root manifest digest."""
        self._check_registry(ref)
        started = time.monotonic()
        stats = TransferStats()
        blobs_dir = os.path.join(layout_dir, "blobs", "sha256")
        os.makedirs(blobs_dir, exist_ok=True)
        repository = ref.repository
        root = self._get_manifest(repository, ref.reference, ref.digest)
        manifests: list[_Manifest] = [root]
        blobs: dict[str, tuple[int, str]] = {}  # digest -> (size, what)
        seen = {root.digest}
        queue = [root]
        while queue:
            manifest = queue.pop(0)
            where = self._where(repository, manifest.digest)
            for descriptor in _children(manifest, where):
                digest, size = descriptor["digest"], descriptor["size"]
                if descriptor["_kind"] == "manifest":
                    if digest in seen:
                        continue
                    seen.add(digest)
                    child = self._get_manifest(repository, digest, digest)
                    if len(child.data) != size:
                        raise RegistryError(
                            f"pulling {where}: child manifest {digest} has {len(child.data)} bytes, "
                            f"the index says {size}"
                        )
                    manifests.append(child)
                    queue.append(child)
                elif descriptor.get("urls") and descriptor.get("mediaType") in mt.NON_DISTRIBUTABLE:
                    stats.blobs_skipped_foreign += 1  # lives at its URLs, not in the registry
                else:
                    blobs.setdefault(digest, (size, f"{where}: {descriptor['_kind']}"))
        for manifest in manifests:
            _write_file(os.path.join(blobs_dir, manifest.digest[7:]), manifest.data)
            self._remember(manifest.digest, repository)
        stats.manifests = len(manifests)
        for digest, size in self._map(
            lambda item: self._download_blob(repository, item[0], item[1][0], item[1][1], blobs_dir),
            sorted(blobs.items()),
        ):
            if size >= 0:
                stats.blobs_downloaded += 1
                stats.bytes_downloaded += size
            self._remember(digest, repository)
        root_descriptor: dict[str, Any] = {
            "mediaType": root.media_type,
            "digest": root.digest,
            "size": len(root.data),
        }
        if ref.tag:
            root_descriptor["annotations"] = {ANNOTATION_REF_NAME: ref.tag}
        index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [root_descriptor]}
        _write_file(os.path.join(layout_dir, "oci-layout"), b'{"imageLayoutVersion":"1.0.0"}')
        _write_file(os.path.join(layout_dir, "index.json"), json.dumps(index, sort_keys=True).encode())
        stats.seconds = time.monotonic() - started
        self.last_stats = stats
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

    def _map(self, function: Any, items: list[Any]) -> Iterator[Any]:
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

    def _download_blob(
        self, repository: str, digest: str, size: int, what: str, blobs_dir: str
    ) -> tuple[str, int]:
        """Stream one blob to ``blobs_dir``, verified; returns (digest, bytes downloaded or -1 if present)."""
        final = os.path.join(blobs_dir, digest[7:])
        if os.path.exists(final) and _file_digest(final) == (digest, size):
            return digest, -1
        where = f"pulling {self._where(repository, digest)} ({what})"
        attempt = 0
        while True:
            try:
                self._download_once(repository, digest, size, where, final)
                return digest, size
            except _TransientError as error:
                if attempt >= self.retries:
                    raise RegistryUnavailable(f"{where}: {error} after {attempt + 1} attempt(s)") from error
                time.sleep(self._delay(attempt, None, where))
                attempt += 1

    def _download_once(self, repository: str, digest: str, size: int, where: str, final: str) -> None:
        container = self._container(repository)
        response = self._oras.get_blob(container, digest, stream=True)
        with response:
            if response.status_code == 404:
                raise RegistryError(f"{where}: blob not found")
            if response.status_code != 200:
                raise _status_error(f"{where}", response)
            hasher = hashlib.sha256()
            seen = 0
            handle, temporary = tempfile.mkstemp(prefix=".pull-", dir=os.path.dirname(final))
            try:
                with os.fdopen(handle, "wb") as out:
                    try:
                        for piece in response.iter_content(chunk_size=_CHUNK):
                            seen += len(piece)
                            if seen > size:
                                raise RegistryError(
                                    f"{where}: the registry sent more than the {size} bytes declared"
                                )
                            hasher.update(piece)
                            out.write(piece)
                    except requests.RequestException as error:
                        raise _TransientError(f"download interrupted at byte {seen}: {error}") from error
                actual = "sha256:" + hasher.hexdigest()
                if seen != size:
                    raise _TransientError(f"the registry sent {seen} bytes, the descriptor says {size}")
                if actual != digest:
                    raise RegistryError(f"{where}: the bytes served have digest {actual}")
                os.chmod(temporary, 0o644)
                os.replace(temporary, final)
            except BaseException:
                if os.path.exists(temporary):
                    os.unlink(temporary)
                raise

    # ---------------------------------------------------------------- push

    def push(
        self,
        layout_dir: str,
        ref: Reference,
        *,
        annotations_ok: bool = True,
        mount_from: str | None = None,
    ) -> str:
        """Push the single root manifest of the layout at ``layout_dir`` (children and blobs too) to ``ref``.

        ``ref`` may carry a tag (pushed to that tag), a digest (pushed by digest; it must be the layout's), or
        neither: then the tag is the layout's ``org.opencontainers.image.ref.name`` annotation when
        ``annotations_ok``, else the push is by digest. ``mount_from`` names a repository of this registry
        that holds the unchanged blobs (a cross-repository mount instead of an upload). Returns the digest.
        """
        self._check_registry(ref)
        started = time.monotonic()
        stats = TransferStats()
        layout = _Layout(layout_dir)
        root_descriptor = layout.root()
        repository = ref.repository
        target = ref.tag
        if target is None and ref.digest is None and annotations_ok:
            annotations = root_descriptor.get("annotations") or {}
            name = annotations.get(ANNOTATION_REF_NAME) if isinstance(annotations, dict) else None
            if isinstance(name, str) and _TAG.match(name):
                target = name
        root = layout.manifest(root_descriptor)
        if ref.digest is not None and ref.digest != root.digest:
            raise RegistryError(
                f"pushing to {ref}: the layout's manifest is {root.digest}, not the digest asked for"
            )
        self._push_repositories.add(repository)
        try:
            self._push_tree(layout, repository, root, target or root.digest, stats, mount_from, set())
        finally:
            self._push_repositories.discard(repository)
        stats.seconds = time.monotonic() - started
        self.last_stats = stats
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

    def _push_tree(
        self,
        layout: _Layout,
        repository: str,
        manifest: _Manifest,
        reference: str,
        stats: TransferStats,
        mount_from: str | None,
        done: set[str],
    ) -> None:
        where = self._where(repository, manifest.digest)
        blobs: list[dict[str, Any]] = []
        for descriptor in _children(manifest, f"{layout.path}: {manifest.digest}"):
            if descriptor["_kind"] == "manifest":
                if descriptor["digest"] in done:
                    continue
                child = layout.manifest(descriptor)
                self._push_tree(layout, repository, child, child.digest, stats, mount_from, done)
            elif (
                not layout.has_blob(descriptor["digest"])
                and descriptor.get("urls")
                and (descriptor.get("mediaType") in mt.NON_DISTRIBUTABLE)
            ):
                stats.blobs_skipped_foreign += 1
            else:
                blobs.append(descriptor)
        unique = {d["digest"]: d for d in blobs}
        for _ in self._map(
            lambda d: self._ensure_blob(layout, repository, d, stats, mount_from, where),
            list(unique.values()),
        ):
            pass
        self._put_manifest(repository, manifest, reference)
        stats.manifests += 1
        done.add(manifest.digest)

    def _put_manifest(self, repository: str, manifest: _Manifest, reference: str) -> None:
        tagged = "" if reference == manifest.digest else f":{reference}"
        where = f"pushing {self._where(repository)}{tagged}@{manifest.digest} ({manifest.media_type})"
        url = f"{self.base_url}/v2/{repository}/manifests/{reference}"
        response = self._request(
            "PUT", url, data=manifest.data, headers={"Content-Type": manifest.media_type}, what=where
        )
        with response:
            if not 200 <= response.status_code < 300:
                raise _status_error(f"{where}", response)
            served = response.headers.get("Docker-Content-Digest")
        if served and served != manifest.digest:
            raise RegistryError(f"{where}: the registry stored it as {served}")
        self._remember(manifest.digest, repository)

    def _blob_exists(self, repository: str, digest: str) -> bool:
        # oras-py's blob_exists: a HEAD through our do_request (so timeouts, retries and auth apply).
        return bool(self._oras.blob_exists({"digest": digest}, self._container(repository)))

    def _ensure_blob(
        self,
        layout: _Layout,
        repository: str,
        descriptor: dict[str, Any],
        stats: TransferStats,
        mount_from: str | None,
        owner: str,
    ) -> None:
        digest, size = descriptor["digest"], descriptor["size"]
        where = f"pushing {self._where(repository, digest)} (blob of {owner})"
        path = layout.blob_path(digest, size, where)
        if self._blob_exists(repository, digest):
            with self._known_lock:
                stats.blobs_present += 1
            self._remember(digest, repository)
            return
        with self._known_lock:
            sources = sorted(self._known_in.get(digest, set()) - {repository})
        if mount_from and mount_from != repository:
            sources.insert(0, mount_from)
        attempt = 0
        while True:
            try:
                mounted = self._upload_once(
                    repository, digest, size, path, sources[0] if sources else None, where
                )
                break
            except _TransientError as error:
                if attempt >= self.retries:
                    raise RegistryUnavailable(f"{where}: {error} after {attempt + 1} attempt(s)") from error
                time.sleep(self._delay(attempt, None, where))
                attempt += 1
        with self._known_lock:
            if mounted:
                stats.blobs_mounted += 1
            else:
                stats.blobs_uploaded += 1
                stats.bytes_uploaded += size
        self._remember(digest, repository)

    def _upload_once(
        self, repository: str, digest: str, size: int, path: str, mount: str | None, where: str
    ) -> bool:
        """Upload (or mount) one blob; True when it was mounted."""
        url = f"{self.base_url}/v2/{repository}/blobs/uploads/"
        if mount is not None:
            url += f"?mount={digest}&from={quote(mount, safe='/')}"
        response = self._request("POST", url, headers={"Content-Length": "0"}, what=where)
        with response:
            if response.status_code == 201 and mount is not None:
                return True
            if response.status_code != 202:
                raise RegistryError(
                    f"{where}: starting the upload: HTTP {response.status_code}{_error_text(response)}"
                )
            location = response.headers.get("Location")
        if not location:
            raise RegistryError(f"{where}: the registry gave no upload Location")
        location = urljoin(url, location)
        location += ("&" if "?" in location else "?") + f"digest={digest}"
        with open(path, "rb") as body:
            stream = _StreamingFile(body, size)
            try:
                response = self._request(
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
                raise _TransientError(str(error)) from error
        sent = stream.digest()
        with response:
            if sent != (digest, size) and sent[1] == size:
                raise RegistryError(f"{where}: {path} does not match its digest (it hashes to {sent[0]})")
            if response.status_code in _RETRY_STATUSES or response.status_code == 404:
                raise _TransientError(f"HTTP {response.status_code}{_error_text(response)}")
            if not 200 <= response.status_code < 300:
                raise _status_error(f"{where}", response)
            served = response.headers.get("Docker-Content-Digest")
        if served and served != digest:
            raise RegistryError(f"{where}: the registry stored the blob as {served}")
        return False


class _StreamingFile:
    """A file object for requests' ``data=``: read in pieces (never whole), known length, rewindable.

    It hashes what it sends, so the layout's blob is verified by the upload itself (no second read).
    """

    def __init__(self, handle: IO[bytes], size: int) -> None:
        self._handle = handle
        self._start = handle.tell()
        self.len = size  # requests uses it for Content-Length
        self._hash = hashlib.sha256()
        self._sent = 0

    def read(self, amount: int = -1) -> bytes:
        piece = self._handle.read(_CHUNK if amount is None or amount < 0 else amount)
        self._hash.update(piece)
        self._sent += len(piece)
        return piece

    def tell(self) -> int:
        return self._handle.tell() - self._start

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 0 and offset == 0:
            self._hash = hashlib.sha256()
            self._sent = 0
            return self._handle.seek(self._start) - self._start
        raise OSError("only a rewind to the start is supported")

    def digest(self) -> tuple[str, int]:
        """(sha256 digest, bytes) of what was read since the last rewind."""
        return "sha256:" + self._hash.hexdigest(), self._sent

    def __iter__(self) -> Iterator[bytes]:
        while piece := self.read(_CHUNK):
            yield piece


class _Layout:
    """An OCI image layout directory being pushed: its root descriptor and verified blobs."""

    def __init__(self, path: str) -> None:
        self.path = path

    def root(self) -> dict[str, Any]:
        index_path = os.path.join(self.path, "index.json")
        try:
            with open(index_path, "rb") as handle:
                index = json.loads(handle.read())
        except (OSError, ValueError) as error:
            raise RegistryError(f"{self.path}: cannot read index.json: {error}") from error
        manifests = index.get("manifests") if isinstance(index, dict) else None
        if not isinstance(manifests, list) or len(manifests) != 1 or not isinstance(manifests[0], dict):
            count = len(manifests) if isinstance(manifests, list) else 0
            raise RegistryError(f"{self.path}: index.json lists {count} manifests; a push needs exactly one")
        descriptor: dict[str, Any] = manifests[0]
        _check_descriptor(descriptor, f"{self.path}: index.json")
        return descriptor

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

    def read_manifest(self, digest: str, size: int, what: str) -> bytes:
        with open(self.blob_path(digest, size, what), "rb") as handle:
            data = handle.read()
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise RegistryError(
                f"{what}: {self.path}/blobs/{digest.replace(':', '/')} does not match its digest"
            )
        return data

    def manifest(self, descriptor: dict[str, Any]) -> _Manifest:
        digest, size = descriptor["digest"], descriptor["size"]
        if size > _MAX_MANIFEST:
            raise RegistryError(f"{self.path}: manifest {digest} is {size} bytes, over the 4 MiB limit")
        data = self.read_manifest(digest, size, f"{self.path}: manifest")
        try:
            document = json.loads(data)
        except ValueError as error:
            raise RegistryError(f"{self.path}: manifest {digest} is not valid JSON: {error}") from error
        if not isinstance(document, dict):
            raise RegistryError(f"{self.path}: manifest {digest} is not a JSON object")
        media_type = descriptor.get("mediaType") or document.get("mediaType")
        if media_type not in MANIFEST_MEDIA_TYPES:
            raise RegistryError(f"{self.path}: manifest {digest} has unsupported media type {media_type!r}")
        return _Manifest(digest, str(media_type), data, document)


def _check_descriptor(descriptor: Any, what: str) -> None:
    if not isinstance(descriptor, dict):
        raise RegistryError(f"{what}: a descriptor is not a JSON object")
    digest, size = descriptor.get("digest"), descriptor.get("size")
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise RegistryError(f"{what}: descriptor with unsupported or malformed digest {digest!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise RegistryError(f"{what}: descriptor {digest} has an invalid size {size!r}")


def _children(manifest: _Manifest, where: str) -> list[dict[str, Any]]:
    """The descriptors a manifest needs, with ``_kind``: manifest (an index's child), config, layer."""
    document = manifest.document
    out: list[dict[str, Any]] = []
    if manifest.media_type in mt.INDEX_TYPES:
        children = document.get("manifests")
        if not isinstance(children, list):
            raise RegistryError(f"{where}: the index has no manifests list")
        for child in children:
            _check_descriptor(child, where)
            if child.get("mediaType") not in MANIFEST_MEDIA_TYPES:
                raise RegistryError(
                    f"{where}: child {child['digest']} has unsupported media type {child.get('mediaType')!r}"
                )
            out.append({**child, "_kind": "manifest"})
        return out
    config: Any = document.get("config")
    _check_descriptor(config, where)
    out.append({**config, "_kind": "config"})
    layers = document.get("layers")
    if not isinstance(layers, list):
        raise RegistryError(f"{where}: the manifest has no layers list")
    for number, layer in enumerate(layers, 1):
        _check_descriptor(layer, where)
        out.append({**layer, "_kind": f"layer {number}/{len(layers)}"})
    return out


def _status_error(where: str, response: requests.Response) -> RegistryError:
    """The error for an unexpected answer: 401/403 are authentication failures, 429/5xx unavailability."""
    message = f"{where}: HTTP {response.status_code}{_error_text(response)}"
    if response.status_code in (401, 403):
        return RegistryAuthError(message)
    if response.status_code in _RETRY_STATUSES:
        return RegistryUnavailable(message)
    return RegistryError(message)


def _error_text(response: requests.Response) -> str:
    """``: CODE message`` from a registry's JSON error body, if there is one (small bodies only)."""
    try:
        body = response.content[:65536]
        document = json.loads(body)
        errors = document.get("errors") if isinstance(document, dict) else None
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            return f": {errors[0].get('code', '')} {errors[0].get('message', '')}".rstrip()
    except Exception:
        return ""
    return ""


def _read_limited(response: requests.Response, limit: int, what: str) -> bytes:
    pieces: list[bytes] = []
    total = 0
    try:
        for piece in response.iter_content(chunk_size=65536):
            total += len(piece)
            if total > limit:
                raise RegistryError(f"{what}: the manifest is larger than {limit} bytes")
            pieces.append(piece)
    except requests.RequestException as error:
        raise RegistryError(f"{what}: reading the manifest failed: {error}") from error
    return b"".join(pieces)


def _file_digest(path: str) -> tuple[str, int]:
    hasher = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while piece := handle.read(_CHUNK):
            hasher.update(piece)
            size += len(piece)
    return "sha256:" + hasher.hexdigest(), size


def _write_file(path: str, data: bytes) -> None:
    handle, temporary = tempfile.mkstemp(prefix=".write-", dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
