"""HTTP to one registry: scheme, timeouts, bounded retries with backoff, and authentication.

oras-py 0.2.43 as it is cannot be trusted with images (see ``notes/registry.md``), so every request goes
through ``Transport.request``:

- every request has a timeout (connect and each read), so a stalled registry is an error, not a hang;
- retries are bounded (``retries``) with exponential backoff, honour ``429``/``503`` and ``Retry-After``,
  retry connection errors and ``500``/``502``/``504``, and never retry an authentication failure;
- authentication follows the challenge (``auth.Authenticator``): Basic is sent pre-emptively, Bearer tokens
  are fetched per repository and fetched again when a token we sent is refused.

``insecure``: talk to a registry without verified TLS, as skopeo's ``--tls-verify=false`` does: HTTPS without
certificate checks if the registry speaks it, else plain HTTP.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import re
import threading
import time
from typing import Any, TypedDict
from urllib.parse import unquote

import requests
import requests.adapters

from ..errors import RegistryError, UsageError
from .access import DEFAULT_USER_AGENT
from .auth import Authenticator, Credentials, RegistryAuthError, RegistryUnavailable, credentials_for
from .reference import DOCKER_HUB, DOCKER_HUB_API, valid_host

__all__ = [
    "DEFAULT_USER_AGENT",
    "RETRY_STATUSES",
    "Transport",
    "TransportOptions",
    "error_text",
    "read_limited",
    "status_error",
]

log = logging.getLogger("optimizer.registry")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class TransportOptions(TypedDict, total=False):
    """``Transport``'s settings by keyword, for what makes one (``RegistryClient``); unset ones keep
    ``Transport``'s defaults."""

    insecure: bool
    credentials: Credentials | None
    timeout: float
    retries: int
    user_agent: str
    backoff: float
    max_retry_wait: float
    tls_verify: bool | str
    anonymous: bool


class Transport:
    """Requests to one registry (``host[:port]``), with the settings every request obeys.

    ``timeout`` bounds the connection and every read; ``retries`` bounds the extra attempts of a request
    (network errors, 429, 5xx); ``backoff`` is the first wait in seconds (doubled each time, with jitter),
    ``max_retry_wait`` the longest ``Retry-After`` we honour. ``credentials`` default to
    ``credentials_for(registry)``; pass ``Credentials`` or ``anonymous=True``.
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
        connections: int = 10,
    ) -> None:
        if not valid_host(registry):
            raise UsageError(f"invalid registry host {registry!r} (want HOST[:PORT])")
        self.registry = registry
        self.api_host = DOCKER_HUB_API if registry in (DOCKER_HUB, "index.docker.io") else registry
        self.insecure = insecure
        self.timeout = timeout
        self.retries = max(0, retries)
        self.user_agent = user_agent
        self.backoff = backoff
        self.max_retry_wait = max_retry_wait
        self.verify: bool | str = False if insecure else tls_verify
        if credentials is None and not anonymous:
            credentials = credentials_for(registry)
        self.session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=max(10, connections))
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self._auth = Authenticator(
            registry, credentials, self.session, timeout=timeout, verify=self.verify, user_agent=user_agent
        )
        self._scheme: str | None = None if insecure else "https"
        self._setup_lock = threading.Lock()
        self._pinged = False
        # Repositories a push is under way to: their tokens ask for push as well as pull.
        self.push_repositories: set[str] = set()

    @property
    def scheme(self) -> str:
        self._setup()
        assert self._scheme is not None
        return self._scheme

    def close(self) -> None:
        self.session.close()

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
            if not self._pinged and self._auth.has_credentials:
                self._pinged = True
                try:
                    probe = self.session.get(
                        f"{self._scheme}://{self.api_host}/v2/",
                        timeout=self.timeout,
                        verify=self.verify,
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
                probe = self.session.get(
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
                    probe = self.session.get(
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
                    time.sleep(self.delay(attempt, None, self.registry))
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

    def scope(self, url: str, method: str) -> str | None:
        match = re.search(r"/v2/(.+?)/(?:blobs|manifests|tags|referrers)/", url)
        if match is None:
            return None
        repository = match.group(1)
        push = method not in ("GET", "HEAD") or repository in self.push_repositories
        scope = f"repository:{repository}:{'pull,push' if push else 'pull'}"
        mount = re.search(r"[?&]from=([^&]+)", url)
        if mount is not None and method == "POST":
            scope += f" repository:{unquote(mount.group(1))}:pull"
        return scope

    def delay(self, attempt: int, response: requests.Response | None, what: str) -> float:
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

    def request(
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
        scope = self.scope(url, method)
        start = data.tell() if hasattr(data, "seek") and hasattr(data, "tell") else None
        attempt = 0
        auth_rounds = 0
        while True:
            if start is not None:
                data.seek(start)
            authorization = self._auth.header(scope)
            log.debug("%s %s", method, url)
            try:
                response = self.session.request(
                    method,
                    url,
                    data=data,
                    headers=self._headers(headers, authorization),
                    stream=stream,
                    timeout=(self.timeout, self.timeout),
                    verify=self.verify,
                )
            except requests.exceptions.SSLError as error:
                raise RegistryError(
                    f"{what}: TLS error (an insecure / --tls-verify=false setting skips the checks): {error}"
                ) from error
            except (requests.ConnectionError, requests.Timeout) as error:
                self._wait_after(error, None, attempt, f"{method} {url}", what, give_up=not retry)
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
            if response.status_code in RETRY_STATUSES and retry:
                self._wait_after(None, response, attempt, f"{method} {url}", what)
                attempt += 1
                continue
            return response

    def _headers(self, headers: dict[str, str] | None, authorization: str | None) -> dict[str, str]:
        send = {"User-Agent": self.user_agent}
        if headers:
            send.update(
                {k: v for k, v in headers.items() if k.lower() not in ("authorization", "user-agent")}
            )
        if authorization:
            send["Authorization"] = authorization
        return send

    def _wait_after(
        self,
        error: Exception | None,
        response: requests.Response | None,
        attempt: int,
        request: str,
        what: str,
        give_up: bool = False,
    ) -> None:
        """Sleep before retrying a failed exchange, or raise ``RegistryUnavailable`` when retries are spent."""
        if response is not None:
            if attempt >= self.retries:
                message = error_text(response)
                response.close()
                raise RegistryUnavailable(
                    f"{what}: HTTP {response.status_code} after {attempt + 1} attempt(s){message}"
                )
            wait = self.delay(attempt, response, what)
            response.close()
            log.info("%s: HTTP %d, retrying in %.1f s", request, response.status_code, wait)
        else:
            kind = (
                "timed out"
                if isinstance(error, requests.Timeout) or "timed out" in str(error)
                else "connection failed"
            )
            if give_up or attempt >= self.retries:
                raise RegistryUnavailable(
                    f"{what}: {kind} after {attempt + 1} attempt(s): {error}"
                ) from error
            wait = self.delay(attempt, None, what)
            log.info("%s: %s, retrying in %.1f s", request, kind, wait)
        time.sleep(wait)


def status_error(where: str, response: requests.Response) -> RegistryError:
    """The error for an unexpected answer: 401/403 are authentication failures, 429/5xx unavailability."""
    message = f"{where}: HTTP {response.status_code}{error_text(response)}"
    if response.status_code in (401, 403):
        return RegistryAuthError(message)
    if response.status_code in RETRY_STATUSES:
        return RegistryUnavailable(message)
    return RegistryError(message)


def error_text(response: requests.Response) -> str:
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


def read_limited(response: requests.Response, limit: int, what: str) -> bytes:
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
