"""Helpers for the service tests: the service as a real process (or an in-process HTTP server), test images,
and a real PostgreSQL server (one per session, a fresh database per test)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import uvicorn
import yaml

from optimizer.mediatypes import OCI_INDEX
from tests.conftest import fixture, missing
from tests.imagetools import build_image, entry, oci_layout_of
from tests.registry_fixtures import FaultProxy, free_port, registry_factory  # noqa: F401  (a fixture)
from tests.service.postgres_server import PostgresServer, postgres_bin

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "hook-token-for-tests"
# The rule most end-to-end tests use: strip-elf on team/*, results tagged -opt.
RULE: dict[str, Any] = {
    "name": "opt",
    "registry": "local",
    "repositories": ["team/*"],
    "destination": {"tag_suffix": "-opt"},
    "options": {"passes": ["strip-elf"]},
}
REF_NAME = "org.opencontainers.image.ref.name"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session (Debian ``postgresql``; ``make test`` installs it)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        missing("psycopg is not installed (pip install -e '.[test]')")
    if postgres_bin() is None:
        missing("PostgreSQL server not found (Debian package postgresql)")
    server = PostgresServer.start()
    yield server
    server.close()


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> str:
    """A new, empty database on the session's server."""
    return postgres_server.create_database(f"t_{uuid.uuid4().hex[:16]}")


class ServiceProcess:
    """``python -m optimizer serve --config FILE [--role ROLE]`` (the CLI) on a free port; JSON-line logs go
    to a file; ``env`` is added to the process environment (a DSN in ``{env: NAME}``)."""

    def __init__(
        self, workdir: Path, config: dict[str, Any], role: str = "all", env: dict[str, str] | None = None
    ) -> None:
        self.role = role
        self.env = dict(env or {})
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.port = int(str(config["listen"]).rsplit(":", 1)[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / "service.yaml"
        self.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.log_path = workdir / "service.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> ServiceProcess:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "optimizer",
                    "serve",
                    "--config",
                    str(self.config_path),
                    "--role",
                    self.role,
                ],
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=str(ROOT),
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"service exited with {self.process.returncode}:\n{self.log_text()[-3000:]}"
                )
            try:
                if requests.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"service did not answer:\n{self.log_text()[-3000:]}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no clean shutdown at all."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def terminate(self) -> None:
        """SIGTERM, the clean shutdown, without waiting for it (``stop`` waits)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        self.terminate()
        if self.process is not None:
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def log_records(self) -> list[dict[str, Any]]:
        records = []
        for line in self.log_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        return records

    def jobs(self) -> list[dict[str, Any]]:
        answer = requests.get(f"{self.url}/jobs", params={"limit": 1000}, timeout=5)
        answer.raise_for_status()
        return list(answer.json()["jobs"])

    def job(self, job_id: int) -> dict[str, Any]:
        answer = requests.get(f"{self.url}/jobs/{job_id}", timeout=5)
        answer.raise_for_status()
        return dict(answer.json())

    def wait_for(
        self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 60.0, what: str = "jobs"
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            jobs = self.jobs()
            if predicate(jobs):
                return jobs
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {json.dumps(jobs, indent=1)[:4000]}")
            time.sleep(0.1)

    def settled(self, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Wait until ``count`` jobs exist and none is queued or running."""
        return self.wait_for(
            lambda jobs: len(jobs) >= count and all(j["status"] in ("done", "failed") for j in jobs),
            timeout,
            f"{count} finished jobs",
        )


def service_config(
    state_dir: Path,
    registries: dict[str, dict[str, Any]],
    rules: list[dict[str, Any]],
    *,
    port: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "listen": f"127.0.0.1:{port or free_port()}",
        "state_dir": str(state_dir),
        "concurrency": 2,
        "retry": {"attempts": 4, "backoff_seconds": 0.5, "max_backoff_seconds": 2},
        "registries": registries,
        "sources": {"registry": {"registry": next(iter(registries)), "bearer_token": TOKEN}},
        "rules": rules,
        "log_level": "DEBUG",
    }
    config.update(extra)
    return config


@pytest.fixture
def service_factory(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """``service_factory(config)`` starts a service process; every one is stopped at teardown."""
    started: list[ServiceProcess] = []

    def start(
        config: dict[str, Any],
        workdir: Path | None = None,
        role: str = "all",
        env: dict[str, str] | None = None,
    ) -> ServiceProcess:
        service = ServiceProcess(workdir or tmp_path / f"service-{len(started)}", config, role, env)
        started.append(service)
        return service.start()

    yield start
    # All told at once: each takes up to a second to drain (its poll and LISTEN loops wake every second).
    for service in started:
        service.terminate()
    for service in started:
        service.stop()


class SlowProxy(FaultProxy):
    """A ``FaultProxy`` that holds each request ``match`` accepts for ``delay`` seconds before forwarding it
    (blob downloads by default): jobs that take long enough to be killed, or to outlive a lease."""

    def __init__(self, backend: str, delay: float, match: Callable[[str, str], bool] | None = None) -> None:
        super().__init__(backend)
        self.delay = delay
        self.slow = match or (lambda method, path: method == "GET" and "/blobs/" in path)

    def _handle(self, handler: Any) -> None:
        if self.slow(handler.command, handler.path):
            time.sleep(self.delay)
        super()._handle(handler)


class InProcessServer:
    """The ASGI app under uvicorn in a thread (no workers): the HTTP side alone, on a real socket."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=self.port, log_config=None, access_log=False, lifespan="off"
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> InProcessServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("in-process server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


# ---------------------------------------------------------------- test images


def elf_payload(fixtures: Path, name: str) -> bytes:
    path = fixture(f"elf/{name}")
    return path.read_bytes()


# Test images are built on a small base layer, with the history a Dockerfile build gives (the base's CMD,
# then the app's steps): the optimizer detects that base and keeps it, and optimizes the app layer.
BASE_LAYER = [entry("etc/os-release", data=b"ID=test\n")]
HISTORY = [
    {"created": "2024-01-01T00:00:00Z", "created_by": "ADD base.tar /"},
    {"created": "2024-01-01T00:00:00Z", "created_by": 'CMD ["sh"]', "empty_layer": True},
    {"created": "2024-02-01T00:00:00Z", "created_by": "COPY app /usr/bin/app"},
]


def single_layout(fixtures: Path, directory: Path, tag: str = "v1", salt: str = "") -> Path:
    """An OCI layout holding one linux/amd64 image with an unstripped ELF (strip-elf makes it smaller)."""
    elf = elf_payload(fixtures, "dwarfv5_basic.elf")
    archive = build_image(
        directory.parent / f"{directory.name}.tar",
        [BASE_LAYER, [entry("usr/bin/app", data=elf, mode=0o755), entry("etc/salt", data=salt.encode())]],
        config_extra={"history": HISTORY},
    )
    layout = oci_layout_of(archive, directory)
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0]["annotations"] = {REF_NAME: tag}
    (layout / "index.json").write_text(json.dumps(index))
    return layout


def layered_layout(fixtures: Path, directory: Path, salt: str, tag: str = "v1") -> Path:
    """An OCI layout of two layers: a base (an unstripped shared library: strip-elf would shrink it) that is
    byte-identical in every image this makes, and a top layer of its own (an unstripped program, ``salt``)."""
    elf = elf_payload(fixtures, "dwarfv5_basic.elf")
    archive = build_image(
        directory.parent / f"{directory.name}.tar",
        [
            [entry("usr/lib/libbase.so", data=elf, mode=0o755)],
            [entry("usr/bin/app", data=elf, mode=0o755), entry("etc/salt", data=salt.encode())],
        ],
    )
    layout = oci_layout_of(archive, directory)
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0]["annotations"] = {REF_NAME: tag}
    (layout / "index.json").write_text(json.dumps(index))
    return layout


def _write_blob(layout: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return f"sha256:{digest}"


def multi_layout(fixtures: Path, directory: Path, tag: str = "v1") -> Path:
    """An OCI layout whose root is an index of linux/amd64 and linux/arm64 images, each with an unstripped ELF."""
    platforms = {"amd64": "dwarfv5_basic.elf", "arm64": "aarch64_be_gnu_hash.so.elf"}
    descriptors = []
    directory.mkdir(parents=True, exist_ok=True)
    for architecture, elf_name in platforms.items():
        archive = build_image(
            directory.parent / f"{directory.name}-{architecture}.tar",
            [BASE_LAYER, [entry("usr/bin/app", data=elf_payload(fixtures, elf_name), mode=0o755)]],
            config_extra={"architecture": architecture, "history": HISTORY},
        )
        part = oci_layout_of(archive, directory.parent / f"{directory.name}-{architecture}")
        for blob in (part / "blobs" / "sha256").iterdir():
            _write_blob(directory, blob.read_bytes())
        (descriptor,) = json.loads((part / "index.json").read_text())["manifests"]
        descriptor = {k: v for k, v in descriptor.items() if k != "annotations"}
        descriptor["platform"] = {"os": "linux", "architecture": architecture}
        descriptors.append(descriptor)
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}
    data = json.dumps(index, sort_keys=True).encode()
    digest = _write_blob(directory, data)
    root = {"mediaType": OCI_INDEX, "digest": digest, "size": len(data), "annotations": {REF_NAME: tag}}
    (directory / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [root]}))
    (directory / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return directory


def hook(
    url: str, body: bytes | dict[str, Any], token: str | None = TOKEN, **headers: str
) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    sent = {"Content-Type": "application/vnd.docker.distribution.events.v1+json", **headers}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    return requests.post(f"{url}/hook", data=data, headers=sent, timeout=10)
