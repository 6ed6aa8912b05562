"""Registry credentials and authentication: where credentials come from, and how requests carry them.

Credentials are looked up, first match wins, in:

1. an explicit mapping (the service config): either Docker-config shaped (``{"auths": {...}}``) or
   ``{"HOST[:PORT]": {"username": ..., "password": ...}}`` (also ``auth`` base64 or ``identitytoken``);
2. the environment: ``OCI_OPTIMIZER_REGISTRY_USER`` and ``OCI_OPTIMIZER_REGISTRY_PASSWORD`` (both set),
   sent to every registry, or only to the comma-separated ``HOST[:PORT]`` list in
   ``OCI_OPTIMIZER_REGISTRY_HOSTS`` when that is set;
3. ``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``, then ``$REGISTRY_AUTH_FILE`` or
   ``$XDG_RUNTIME_DIR/containers/auth.json`` (podman/skopeo): ``auths`` keyed by bare ``host:port`` or by
   URL (``https://host/v1/``), base64 ``auth`` or ``username``/``password``, ``identitytoken`` (an OAuth2
   refresh token, exchanged at the token endpoint), and ``credHelpers``/``credsStore``
   (``docker-credential-NAME get``).

Authentication follows the registry's challenge. A ``Basic`` registry gets the ``Authorization`` header on
every request from then on (pre-emptively: without it every request, blob bodies included, would be sent
twice). A ``Bearer`` registry gets a token per repository and set of actions, fetched from the challenge's
realm and fetched again when the registry answers 401 to a token we sent (expired or revoked). A rejected
fresh token or password is an authentication failure, never retried. Secrets are never logged, and ``repr``
hides them.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from ..errors import RegistryError

__all__ = [
    "ENV_HOSTS",
    "ENV_PASSWORD",
    "ENV_USER",
    "IDENTITY_TOKEN_USER",
    "Authenticator",
    "Challenge",
    "Credentials",
    "RegistryAuthError",
    "RegistryUnavailable",
    "credentials_for",
    "parse_challenge",
]

ENV_USER = "OCI_OPTIMIZER_REGISTRY_USER"
ENV_PASSWORD = "OCI_OPTIMIZER_REGISTRY_PASSWORD"
ENV_HOSTS = "OCI_OPTIMIZER_REGISTRY_HOSTS"

# Docker's own convention: an identity token is stored with this user name.
IDENTITY_TOKEN_USER = "<token>"
DOCKER_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io")


class RegistryAuthError(RegistryError):
    """Authentication failed (missing or wrong credentials, a refused token): retrying will not help."""


class RegistryUnavailable(RegistryError):
    """The registry (or its token service) could not be reached or kept failing (network, timeout, 429,
    5xx) through every retry: a job may try again later."""


@dataclass(frozen=True)
class Credentials:
    """A user name and password (or token) for one registry.

    ``username == "<token>"`` makes ``password`` an OAuth2 identity (refresh) token, as Docker stores it;
    an empty ``username`` makes ``password`` a registry bearer token sent as it is.
    """

    username: str
    password: str = field(repr=False)

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=<hidden>)"

    @property
    def is_identity_token(self) -> bool:
        return self.username == IDENTITY_TOKEN_USER

    @property
    def is_bearer_token(self) -> bool:
        return self.username == ""

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


def _normalise_key(key: str) -> str:
    """``https://host:port/v1/`` -> ``host:port``."""
    key = key.strip()
    if "://" in key:
        key = key.split("://", 1)[1]
    return key.split("/", 1)[0].lower()


def _keys_for(registry: str) -> tuple[str, ...]:
    registry = registry.lower()
    if registry in DOCKER_HUB_KEYS:
        return tuple(_normalise_key(k) for k in DOCKER_HUB_KEYS)
    return (registry,)


def _from_entry(entry: Any) -> Credentials | None:
    if not isinstance(entry, Mapping):
        return None
    token = entry.get("identitytoken") or entry.get("identity_token")
    if isinstance(token, str) and token:
        return Credentials(IDENTITY_TOKEN_USER, token)
    user, password = entry.get("username"), entry.get("password")
    if isinstance(user, str) and isinstance(password, str) and (user or password):
        return Credentials(user, password)
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        try:
            decoded = base64.b64decode(encoded, validate=False).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        if ":" in decoded:
            user, password = decoded.split(":", 1)
            return Credentials(user, password)
    registry_token = entry.get("registrytoken") or entry.get("token")
    if isinstance(registry_token, str) and registry_token:
        return Credentials("", registry_token)
    return None


def _credential_helper(helper: str, registry: str) -> Credentials | None:
    program = f"docker-credential-{helper}"
    try:
        done = subprocess.run(
            [program, "get"], input=registry.encode(), capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    try:
        payload = json.loads(done.stdout)
    except ValueError:
        return None
    user, secret = payload.get("Username"), payload.get("Secret")
    if not isinstance(user, str) or not isinstance(secret, str) or not secret:
        return None
    return Credentials(user, secret)


def _from_docker_config(registry: str, config: Mapping[str, Any]) -> Credentials | None:
    wanted = _keys_for(registry)
    auths = config.get("auths")
    if isinstance(auths, Mapping):
        for key, entry in auths.items():
            if isinstance(key, str) and _normalise_key(key) in wanted:
                found = _from_entry(entry)
                if found is not None:
                    return found
    helpers = config.get("credHelpers")
    if isinstance(helpers, Mapping):
        for key, helper in helpers.items():
            if isinstance(key, str) and isinstance(helper, str) and _normalise_key(key) in wanted:
                found = _credential_helper(helper, key)
                if found is not None:
                    return found
    store = config.get("credsStore")
    if isinstance(store, str) and store:
        # Helpers know Docker Hub by its historical URL.
        return _credential_helper(
            store, DOCKER_HUB_KEYS[0] if registry.lower() in DOCKER_HUB_KEYS else registry
        )
    return None


def _config_files() -> list[Path]:
    files: list[Path] = []
    docker_dir = os.environ.get("DOCKER_CONFIG")
    files.append(Path(docker_dir) / "config.json" if docker_dir else Path.home() / ".docker" / "config.json")
    auth_file = os.environ.get("REGISTRY_AUTH_FILE")
    if auth_file:
        files.append(Path(auth_file))
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        files.append(Path(runtime) / "containers" / "auth.json")
    return files


def credentials_for(registry: str, config: Mapping[str, Any] | None = None) -> Credentials | None:
    """The credentials to use for ``registry`` (``host[:port]``), or None for anonymous access.

    See the module docstring for the order of the sources.
    """
    if config is not None:
        if "auths" in config or "credHelpers" in config or "credsStore" in config:
            found = _from_docker_config(registry, config)
        else:
            found = None
            for key, entry in config.items():
                if isinstance(key, str) and _normalise_key(key) in _keys_for(registry):
                    found = _from_entry(entry)
                    if found is not None:
                        break
        if found is not None:
            return found
    user, password = os.environ.get(ENV_USER), os.environ.get(ENV_PASSWORD)
    if user is not None and password is not None:
        hosts = os.environ.get(ENV_HOSTS)
        if not hosts or registry.lower() in {_normalise_key(h) for h in hosts.split(",") if h.strip()}:
            return Credentials(user, password)
    for path in _config_files():
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(document, Mapping):
            found = _from_docker_config(registry, document)
            if found is not None:
                return found
    return None


@dataclass(frozen=True)
class Challenge:
    """A parsed ``WWW-Authenticate`` header."""

    scheme: str  # "basic" or "bearer" (lower case)
    params: Mapping[str, str]

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")


_PARAM = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?')


def parse_challenge(header: str | None) -> Challenge | None:
    """Parse ``Bearer realm="...",service="...",scope="..."`` (or ``Basic realm=...``)."""
    if not header:
        return None
    header = header.strip()
    scheme, _, rest = header.partition(" ")
    params: dict[str, str] = {}
    for match in _PARAM.finditer(rest):
        value = match.group(2) if match.group(2) is not None else (match.group(3) or "")
        params[match.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
    return Challenge(scheme.lower(), params)


@dataclass
class _Token:
    value: str
    expires: float  # time.monotonic() deadline


class Authenticator:
    """Adds the right ``Authorization`` header to each request of one registry client (thread-safe).

    ``header(scope)`` gives the header to send before any challenge is seen (pre-emptive Basic, cached token);
    ``on_unauthorized(response, scope, sent)`` learns from a 401 and says whether the request should be sent
    again (True) or has failed authentication for good (raises ``RegistryError``).
    """

    def __init__(
        self,
        registry: str,
        credentials: Credentials | None,
        session: requests.Session,
        *,
        timeout: float,
        verify: bool | str,
        user_agent: str,
    ) -> None:
        self.registry = registry
        self._credentials = credentials
        self._session = session
        self._timeout = timeout
        self._verify = verify
        self._user_agent = user_agent
        self._lock = threading.Lock()
        self._basic = False  # the registry asked for Basic: send it on every request
        self._tokens: dict[str, _Token] = {}
        self._flights: dict[str, threading.Lock] = {}
        self._bearer_challenge: Challenge | None = None

    @property
    def has_credentials(self) -> bool:
        return self._credentials is not None

    @property
    def scheme_known(self) -> bool:
        return self._basic or self._bearer_challenge is not None

    def header(self, scope: str | None) -> str | None:
        creds = self._credentials
        if creds is not None and creds.is_bearer_token:
            return f"Bearer {creds.password}"
        with self._lock:
            if self._basic and creds is not None:
                return creds.basic_header()
            if scope is None or (self._bearer_challenge is None and scope not in self._tokens):
                return None
            cached = self._cached(scope)
            if cached is not None:
                return f"Bearer {cached}"
            challenge = self._bearer_challenge
            flight = self._flights.setdefault(scope, threading.Lock())
        # A Bearer registry and no valid token for this scope yet: get one now rather than after a 401, once
        # for all the threads that want it.
        with flight:
            with self._lock:
                cached = self._cached(scope)
            if cached is not None:
                return f"Bearer {cached}"
            if challenge is None:
                return None
            return f"Bearer {self._fetch_token(challenge, scope)}"

    def _cached(self, scope: str) -> str | None:
        token = self._tokens.get(scope)
        if token is not None and token.expires > time.monotonic():
            return token.value
        return None

    def learn(self, response: requests.Response) -> None:
        """Record the scheme from an unauthenticated ``GET /v2/`` answer."""
        challenge = parse_challenge(response.headers.get("WWW-Authenticate"))
        if challenge is None:
            return
        with self._lock:
            if challenge.scheme == "basic":
                self._basic = True
            elif challenge.scheme == "bearer":
                self._bearer_challenge = challenge

    def on_unauthorized(
        self, response: requests.Response, scope: str | None, sent: str | None, what: str
    ) -> None:
        """React to a 401 for a request that carried ``sent`` (None: no Authorization header).

        Returns when the request should be sent again with ``header(scope)``; raises ``RegistryError`` when
        authentication failed. The caller allows one such round per request: a second 401 is a failure.
        """
        challenge = parse_challenge(response.headers.get("WWW-Authenticate"))
        creds = self._credentials
        if challenge is None:
            raise RegistryAuthError(f"{what}: 401 Unauthorized without a WWW-Authenticate challenge")
        if challenge.scheme == "basic":
            if creds is None or creds.is_bearer_token or creds.is_identity_token:
                raise RegistryAuthError(
                    f"{what}: the registry asks for a user name and password and none is configured"
                )
            if sent is not None and sent.startswith("Basic "):
                raise RegistryAuthError(
                    f"{what}: authentication failed: the registry rejected user {creds.username!r}"
                )
            with self._lock:
                self._basic = True
            return
        if challenge.scheme != "bearer":
            raise RegistryAuthError(f"{what}: unsupported authentication scheme {challenge.scheme!r}")
        if creds is not None and creds.is_bearer_token:
            raise RegistryAuthError(
                f"{what}: authentication failed: the registry rejected the configured token"
            )
        key = scope or challenge.params.get("scope") or ""
        with self._lock:
            self._bearer_challenge = challenge
            flight = self._flights.setdefault(key, threading.Lock())
        with flight:
            with self._lock:
                cached = self._tokens.get(key)
                if (
                    cached is not None
                    and sent != f"Bearer {cached.value}"
                    and cached.expires > time.monotonic()
                ):
                    return  # another thread has fetched a new token since this request went out
                # The token we sent was refused (expired, revoked, or too narrow): forget it, fetch a new one.
                self._tokens.pop(key, None)
            self._fetch_token(challenge, key, challenge_scope=challenge.params.get("scope"))

    def _fetch_token(self, challenge: Challenge, scope: str, challenge_scope: str | None = None) -> str:
        realm = challenge.realm
        if not realm:
            raise RegistryAuthError(f"{self.registry}: the registry's Bearer challenge names no token realm")
        scopes = sorted(set(scope.split()) | set((challenge_scope or "").split()))
        params: list[tuple[str, str]] = []
        if challenge.params.get("service"):
            params.append(("service", challenge.params["service"]))
        params.extend(("scope", s) for s in scopes)
        creds = self._credentials
        headers = {"User-Agent": self._user_agent, "Accept": "application/json"}
        try:
            if creds is not None and creds.is_identity_token:
                form = dict(params)
                form.update(
                    {
                        "grant_type": "refresh_token",
                        "refresh_token": creds.password,
                        "client_id": "oci-optimizer",
                        "scope": " ".join(scopes),
                    }
                )
                answer = self._session.post(
                    realm, data=form, headers=headers, timeout=self._timeout, verify=self._verify
                )
            else:
                if creds is not None:
                    headers["Authorization"] = creds.basic_header()
                answer = self._session.get(
                    realm, params=params, headers=headers, timeout=self._timeout, verify=self._verify
                )
        except requests.RequestException as error:
            raise RegistryUnavailable(f"{self.registry}: token request to {realm} failed: {error}") from error
        if answer.status_code in (401, 403):
            who = f"user {creds.username!r}" if creds is not None else "anonymous access"
            raise RegistryAuthError(
                f"{self.registry}: authentication failed: the token service {realm} refused {who} "
                f"for scope {' '.join(scopes) or '(none)'} (HTTP {answer.status_code})"
            )
        if answer.status_code != 200:
            raise RegistryUnavailable(
                f"{self.registry}: token service {realm} answered HTTP {answer.status_code}"
            )
        try:
            payload = answer.json()
        except ValueError as error:
            raise RegistryError(f"{self.registry}: token service {realm} sent invalid JSON") from error
        value = payload.get("token") or payload.get("access_token") if isinstance(payload, dict) else None
        if not isinstance(value, str) or not value:
            raise RegistryError(f"{self.registry}: token service {realm} sent no token")
        lifetime = payload.get("expires_in", 60)
        if not isinstance(lifetime, int | float) or lifetime <= 0:
            lifetime = 60
        # Renew a little before the end, so that a long upload does not start with a dying token.
        token = _Token(value, time.monotonic() + max(float(lifetime) - 10.0, float(lifetime) / 2))
        with self._lock:
            self._tokens[scope] = token
        return value
