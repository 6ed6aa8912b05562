"""Real registries for tests: Debian's ``docker-registry`` on a free 127.0.0.1 port, and small helpers.

Importable by any test module (``from tests.registry_fixtures import ...``):

- ``start_registry(workdir, htpasswd=..., notify_url=..., notify_token=...)`` -> ``RunningRegistry`` (call
  ``stop()``), or the context manager ``running_registry(...)``; the pytest fixtures ``registry`` (one plain
  registry per test module) and ``registry_factory`` (start registries with options, all stopped at teardown);
- ``skopeo_copy`` / ``skopeo_inspect_raw`` / ``push_layout``: put fixture images in a registry, read them;
- ``FaultProxy``: an HTTP proxy in front of a registry that records every request and can answer the next
  requests itself (429/503 with ``Retry-After``, anything) or demand Bearer tokens it issues at ``/token``
  (token auth with revocation, which Debian's registry cannot do without a token server);
- ``StallServer``: accepts connections and never answers (a hung registry).

The registry needs ``docker-registry``; pushing fixtures needs ``skopeo``; htpasswd files need ``htpasswd``
(``apache2-utils``). Missing programs skip (fail in CI) through ``require_tool``.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import http.server
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.conftest import require_tool

__all__ = [
    "FaultProxy",
    "RecordedRequest",
    "RunningRegistry",
    "StallServer",
    "TokenServer",
    "free_port",
    "push_layout",
    "registry",
    "registry_factory",
    "running_registry",
    "skopeo_copy",
    "skopeo_inspect_raw",
    "start_registry",
]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningRegistry:
    """A ``docker-registry serve`` process on 127.0.0.1."""

    host: str  # "127.0.0.1:PORT"
    root: Path  # storage, config and log live here
    process: subprocess.Popen[bytes]
    log_path: Path
    users: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def port(self) -> int:
        return int(self.host.rsplit(":", 1)[1])

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def creds(self) -> str | None:
        """``user:password`` of the first user (for skopeo's ``--creds``), or None."""
        for user, password in self.users.items():
            return f"{user}:{password}"
        return None


def _htpasswd(users: dict[str, str], path: Path) -> None:
    program = require_tool("htpasswd", "apache2-utils")
    lines = []
    for user, password in users.items():
        done = subprocess.run([program, "-Bbn", user, password], capture_output=True, check=True, text=True)
        lines.append(done.stdout.strip())
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def start_registry(
    workdir: Path,
    *,
    htpasswd: dict[str, str] | None = None,
    notify_url: str | None = None,
    notify_token: str | None = None,
    notify_timeout: str = "2s",
    extra_config: dict[str, Any] | None = None,
    port: int | None = None,
    storage: Path | None = None,
) -> RunningRegistry:
    """Start Debian's registry on ``127.0.0.1:port`` (a free one by default) and wait until it answers.

    ``htpasswd``: users and passwords (bcrypt file, ``auth.htpasswd``). ``notify_url``/``notify_token``: one
    notification endpoint sending ``Authorization: Bearer TOKEN`` (pull events ignored). ``storage``: reuse a
    storage directory (to restart a registry with its content).
    """
    program = require_tool("docker-registry", "docker-registry")
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    root = storage or (workdir / "storage")
    root.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "info", "accesslog": {"disabled": False}},
        "storage": {"filesystem": {"rootdirectory": str(root)}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)},
    }
    if htpasswd:
        path = workdir / "htpasswd"
        _htpasswd(htpasswd, path)
        config["auth"] = {"htpasswd": {"realm": "test-registry", "path": str(path)}}
    if notify_url:
        endpoint: dict[str, Any] = {
            "name": "optimizer",
            "url": notify_url,
            "timeout": notify_timeout,
            "threshold": 5,
            "backoff": "1s",
            # distribution 2.8.2 ignores ignore.actions unless ignore.mediatypes is non-empty.
            "ignore": {"mediatypes": ["application/x-placeholder"], "actions": ["pull"]},
        }
        if notify_token:
            endpoint["headers"] = {"Authorization": [f"Bearer {notify_token}"]}
        config["notifications"] = {"events": {"includereferences": True}, "endpoints": [endpoint]}
    if extra_config:
        config.update(extra_config)
    config_path = workdir / "config.yml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    log_path = workdir / "registry.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [program, "serve", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")},
        )
    running = RunningRegistry(f"127.0.0.1:{port}", workdir, process, log_path, dict(htpasswd or {}))
    deadline = time.monotonic() + 20
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"docker-registry exited with {process.returncode}:\n{running.log_text()[-3000:]}"
            )
        try:
            answer = requests.get(f"{running.url}/v2/", timeout=1)
            if answer.status_code in (200, 401):
                return running
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            running.stop()
            raise RuntimeError(
                f"docker-registry did not answer on {running.host}:\n{running.log_text()[-3000:]}"
            )
        time.sleep(0.05)


@contextmanager
def running_registry(workdir: Path, **options: Any) -> Iterator[RunningRegistry]:
    started = start_registry(workdir, **options)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """A plain (no auth) registry shared by the tests of one module."""
    with running_registry(tmp_path_factory.mktemp("registry")) as started:
        yield started


@pytest.fixture
def registry_factory(tmp_path: Path) -> Iterator[Callable[..., RunningRegistry]]:
    """``registry_factory(htpasswd={"u": "p"}, notify_url=..., notify_token=...)``; stopped at teardown."""
    started: list[RunningRegistry] = []

    def start(**options: Any) -> RunningRegistry:
        running = start_registry(tmp_path / f"registry-{len(started)}", **options)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


def skopeo_copy(source: str, destination: str, *, creds: str | None = None, all_images: bool = True) -> None:
    """``skopeo copy`` without TLS verification, keeping digests (``--preserve-digests``)."""
    program = require_tool("skopeo", "skopeo")
    command = [
        program,
        "copy",
        "--quiet",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
    ]
    if all_images:
        command.append("--all")
    if creds:
        if destination.startswith("docker://"):
            command.append(f"--dest-creds={creds}")
        if source.startswith("docker://"):
            command.append(f"--src-creds={creds}")
    done = subprocess.run([*command, source, destination], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"skopeo copy {source} {destination} failed: {done.stderr.strip()}")


def skopeo_inspect_raw(reference: str, *, creds: str | None = None) -> bytes:
    """The exact manifest bytes the registry serves for ``docker://...``."""
    program = require_tool("skopeo", "skopeo")
    command = [program, "inspect", "--raw", "--tls-verify=false"]
    if creds:
        command.append(f"--creds={creds}")
    done = subprocess.run([*command, reference], capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"skopeo inspect {reference} failed: {done.stderr.decode(errors='replace').strip()}"
        )
    return done.stdout


def push_layout(
    layout: Path,
    registry: RunningRegistry | str,
    name: str,
    *,
    image: str | None = None,
    creds: str | None = None,
) -> str:
    """Push an OCI layout directory (``image``: its ref name when it holds several) to ``HOST/name``; returns
    the ``docker://`` reference."""
    host = registry if isinstance(registry, str) else registry.host
    if creds is None and not isinstance(registry, str):
        creds = registry.creds()
    source = f"oci:{layout}" + (f":{image}" if image else "")
    destination = f"docker://{host}/{name}"
    skopeo_copy(source, destination, creds=creds)
    return destination


# ---------------------------------------------------------------- a proxy that records and misbehaves


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    status: int
    authorization: str  # "", "basic", "bearer" (never the secret itself)
    user_agent: str


@dataclass
class _Fault:
    status: int
    headers: dict[str, str]
    match: Callable[[str, str], bool]
    remaining: int


_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
}


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 in front of ``backend`` (``host:port``) that records and misbehaves.

    ``fail(count, status, headers, match)`` makes the next ``count`` matching requests answer ``status``
    without reaching the backend. ``token_auth=True`` demands ``Bearer`` tokens issued by its own ``/token`` endpoint
    (checking ``users`` with Basic auth there when given); ``revoke_tokens()`` invalidates every token issued.
    """

    def __init__(
        self,
        backend: str,
        *,
        token_auth: bool = False,
        users: dict[str, str] | None = None,
        token_ttl: int = 300,
    ) -> None:
        self.backend = backend
        self.token_auth = token_auth
        self.users = dict(users or {})
        self.token_ttl = token_ttl
        self.requests: list[RecordedRequest] = []
        self.token_requests: list[dict[str, list[str]]] = []
        self._tokens: set[str] = set()
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def handle_one_request(self) -> None:
                try:
                    if (
                        self.rfile.peek(1)[:1] == b"\x16"
                    ):  # a TLS ClientHello: like a plain HTTP server, refuse
                        self.close_connection = True
                        return
                    super().handle_one_request()
                except (ConnectionError, TimeoutError):
                    self.close_connection = True

            def do_GET(self) -> None:
                owner._handle(self)

            do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fail(
        self,
        count: int,
        status: int,
        headers: dict[str, str] | None = None,
        match: Callable[[str, str], bool] | None = None,
    ) -> None:
        with self._lock:
            self._faults.append(_Fault(status, dict(headers or {}), match or (lambda m, p: True), count))

    def revoke_tokens(self) -> None:
        with self._lock:
            self._tokens.clear()

    def count(self, method: str | None = None, contains: str = "", status: int | None = None) -> int:
        with self._lock:
            return sum(
                1
                for r in self.requests
                if (method is None or r.method == method)
                and contains in r.path
                and (status is None or r.status == status)
            )

    # -- internals

    def _record(self, handler: http.server.BaseHTTPRequestHandler, status: int) -> None:
        authorization = handler.headers.get("Authorization", "")
        kind = authorization.split(" ", 1)[0].lower() if authorization else ""
        with self._lock:
            self.requests.append(
                RecordedRequest(
                    handler.command, handler.path, status, kind, handler.headers.get("User-Agent", "")
                )
            )

    def _read_body(self, handler: http.server.BaseHTTPRequestHandler) -> Iterator[bytes]:
        if "chunked" in handler.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = handler.rfile.readline()
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                yield handler.rfile.read(size)
                handler.rfile.readline()
        remaining = int(handler.headers.get("Content-Length") or 0)
        while remaining > 0:
            piece = handler.rfile.read(min(remaining, 1 << 20))
            if not piece:
                return
            remaining -= len(piece)
            yield piece

    def _answer(
        self,
        handler: http.server.BaseHTTPRequestHandler,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> None:
        for _ in self._read_body(handler):
            pass
        self._record(handler, status)  # before the answer, so that the client never sees it unrecorded
        handler.send_response(status)
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)

    def _scope(self, method: str, path: str) -> str:
        parts = path.split("?", 1)[0].split("/")
        for marker in ("blobs", "manifests", "tags"):
            if marker in parts:
                repository = "/".join(parts[2 : parts.index(marker)])
                action = "pull" if method in ("GET", "HEAD") else "pull,push"
                return f"repository:{repository}:{action}"
        return ""

    def _handle(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        method, path = handler.command, handler.path
        with self._lock:
            fault = next((f for f in self._faults if f.remaining > 0 and f.match(method, path)), None)
            if fault is not None:
                fault.remaining -= 1
        if fault is not None:
            body = json.dumps({"errors": [{"code": "TOOMANYREQUESTS", "message": "injected by the test"}]})
            self._answer(
                handler, fault.status, body.encode(), {**fault.headers, "Content-Type": "application/json"}
            )
            return
        if self.token_auth:
            if path.startswith("/token"):
                self._issue_token(handler)
                return
            authorization = handler.headers.get("Authorization", "")
            token = authorization[7:] if authorization.startswith("Bearer ") else None
            with self._lock:
                valid = token is not None and token in self._tokens
            if not valid:
                challenge = f'Bearer realm="http://{self.host}/token",service="fault-proxy"'
                scope = self._scope(method, path)
                if scope:
                    challenge += f',scope="{scope}"'
                body = b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}'
                self._answer(
                    handler, 401, body, {"WWW-Authenticate": challenge, "Content-Type": "application/json"}
                )
                return
        self._forward(handler)

    def _issue_token(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        from urllib.parse import parse_qs, urlsplit

        query = parse_qs(urlsplit(handler.path).query)
        with self._lock:
            self.token_requests.append(query)
        if self.users:
            authorization = handler.headers.get("Authorization", "")
            try:
                user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
            except Exception:
                user, password = "", ""
            if not authorization.startswith("Basic ") or self.users.get(user) != password:
                self._answer(
                    handler, 401, b'{"details":"bad credentials"}', {"Content-Type": "application/json"}
                )
                return
        token = secrets.token_hex(16)
        with self._lock:
            self._tokens.add(token)
        body = json.dumps({"token": token, "access_token": token, "expires_in": self.token_ttl}).encode()
        self._answer(handler, 200, body, {"Content-Type": "application/json"})

    def _forward(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        host, port = self.backend.rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            connection.putrequest(handler.command, handler.path, skip_host=True, skip_accept_encoding=True)
            chunked = "chunked" in handler.headers.get("Transfer-Encoding", "").lower()
            for key, value in handler.headers.items():
                if key.lower() in _HOP_BY_HOP or (self.token_auth and key.lower() == "authorization"):
                    continue
                connection.putheader(key, value)
            if chunked:
                connection.putheader("Transfer-Encoding", "chunked")
            connection.endheaders()
            for piece in self._read_body(handler):
                if chunked:
                    connection.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                else:
                    connection.send(piece)
            if chunked:
                connection.send(b"0\r\n\r\n")
            response = connection.getresponse()
            body_length = response.getheader("Content-Length")
            body: bytes | None = None
            if body_length is None and handler.command != "HEAD" and response.status not in (204, 304):
                body = response.read()
                body_length = str(len(body))
            self._record(handler, response.status)
            handler.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() in _HOP_BY_HOP or key.lower() == "content-length":
                    continue
                handler.send_header(key, value)
            if body_length is not None:
                handler.send_header("Content-Length", body_length)
            handler.end_headers()
            if handler.command != "HEAD":
                if body is not None:
                    handler.wfile.write(body)
                else:
                    while piece := response.read(1 << 20):
                        handler.wfile.write(piece)
        finally:
            connection.close()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class TokenServer:
    """A Docker token service (the ``auth.token`` protocol) for Debian's registry, on 127.0.0.1.

    It makes an RSA key and a self-signed certificate with ``openssl`` (the registry's ``rootcertbundle``) and
    issues RS256 JWTs whose header ``kid`` is the key's libtrust ID, granting every action asked for in the
    ``scope`` parameters (after checking ``users`` with Basic auth, when given). ``lifetime`` is the real
    validity of a token (the registry adds 60 s of leeway to ``exp``, which is allowed for here);
    ``advertised`` is the ``expires_in`` it tells clients, so a test can make tokens die before clients expect.
    ``refresh_tokens`` (identity token -> user) are accepted in the OAuth2 ``POST`` form
    (``grant_type=refresh_token``), as Docker Hub does for ``identitytoken`` credentials.
    Start the registry with ``extra_config=server.registry_config()``.
    """

    service = "test-registry"
    issuer = "test-token-issuer"

    def __init__(
        self,
        workdir: Path,
        *,
        users: dict[str, str] | None = None,
        refresh_tokens: dict[str, str] | None = None,
        lifetime: float = 300,
        advertised: int = 300,
    ) -> None:
        program = require_tool("openssl", "openssl")
        workdir.mkdir(parents=True, exist_ok=True)
        self.key = workdir / "token.key"
        self.cert = workdir / "token.crt"
        subprocess.run(
            [
                program,
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                str(self.key),
                "-out",
                str(self.cert),
                "-days",
                "2",
                "-subj",
                "/CN=test-token-issuer",
            ],
            check=True,
            capture_output=True,
        )
        public = subprocess.run(
            [program, "x509", "-in", str(self.cert), "-pubkey", "-noout"], check=True, capture_output=True
        ).stdout
        der = subprocess.run(
            [program, "pkey", "-pubin", "-outform", "DER"], input=public, check=True, capture_output=True
        ).stdout
        encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode("ascii")
        self.kid = ":".join(encoded[i : i + 4] for i in range(0, 48, 4))
        self.users = dict(users or {})
        self.refresh_tokens = dict(refresh_tokens or {})  # identity token -> user
        self.lifetime = lifetime
        self.advertised = advertised
        self.requests: list[dict[str, list[str]]] = []
        self._openssl = program
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                owner._issue(self)

            def do_POST(self) -> None:
                owner._issue(self)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/token"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def registry_config(self) -> dict[str, Any]:
        return {
            "auth": {
                "token": {
                    "realm": self.url,
                    "service": self.service,
                    "issuer": self.issuer,
                    "rootcertbundle": str(self.cert),
                }
            }
        }

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> TokenServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _sign(self, claims: dict[str, Any]) -> str:
        header = {"typ": "JWT", "alg": "RS256", "kid": self.kid}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = subprocess.run(
            [self._openssl, "dgst", "-sha256", "-sign", str(self.key)],
            input=signing_input.encode(),
            check=True,
            capture_output=True,
        ).stdout
        return f"{signing_input}.{_b64url(signature)}"

    def _issue(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        from urllib.parse import parse_qs, urlsplit

        query = parse_qs(urlsplit(handler.path).query)
        if handler.command == "POST":  # the OAuth2 form: an identity (refresh) token exchanged for a token
            length = int(handler.headers.get("Content-Length") or 0)
            query = parse_qs(handler.rfile.read(length).decode())
            query["scope"] = " ".join(query.get("scope", [])).split()
        self.requests.append(query)
        subject = ""
        if handler.command == "POST":
            if query.get("grant_type") != ["refresh_token"] or query.get("refresh_token", [""])[0] not in (
                self.refresh_tokens
            ):
                handler.send_response(401)
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                return
            subject = self.refresh_tokens[query["refresh_token"][0]]
        elif self.users:
            authorization = handler.headers.get("Authorization", "")
            try:
                user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
            except Exception:
                user, password = "", ""
            if not authorization.startswith("Basic ") or self.users.get(user) != password:
                handler.send_response(401)
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                return
            subject = user
        access = []
        for scope in " ".join(query.get("scope", [])).split():
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            # The registry accepts a token up to 60 s after its exp: take that leeway off.
            "exp": now + int(self.lifetime) - 60,
            "nbf": now - 5,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        token = self._sign(claims)
        issued = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        body = json.dumps({"token": token, "expires_in": self.advertised, "issued_at": issued}).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)


class StallServer:
    """Accepts TCP connections on 127.0.0.1 and never answers (nor closes them) until ``close()``."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(64)
        self.host = f"127.0.0.1:{self._socket.getsockname()[1]}"
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self._socket.settimeout(0.1)
        while not self._closed.is_set():
            try:
                connection, _ = self._socket.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            self._held.append(connection)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2)
        for connection in self._held:
            connection.close()
        self._socket.close()

    def __enter__(self) -> StallServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def copy_tree(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination)
    return destination
