"""What the running service (``optimize serve``, a real process) refuses, and with which status: job ids out of
range, unauthenticated requests before anything else about them, query parameters, deeply nested bodies,
destination tags a rule does not allow."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from optimizer.service.events import MAX_JSON_DEPTH
from tests.registry_fixtures import free_port
from tests.service.conftest import ServiceProcess, hook, service_config

pytestmark = pytest.mark.slow

DIGEST = "sha256:" + "ab" * 32
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """One service for the module; its registry is never reached (nothing here needs a job to run)."""
    root = tmp_path_factory.mktemp("checks")
    rule = {
        "name": "opt",
        "registry": "local",
        "repositories": ["team/*"],
        "destination": {"tag_suffix": "-opt", "allowed_tags": ["v*-opt"]},
    }
    config = service_config(
        root / "state",
        {"local": {"url": f"http://127.0.0.1:{free_port()}", "timeout": 1}},
        [rule],
        retry={"attempts": 1},
        max_body_bytes=1 << 20,
    )
    process = ServiceProcess(root / "service", config).start()
    yield process
    process.stop()


def push_event(tag: str, event_id: str) -> dict[str, Any]:
    target = {"mediaType": MANIFEST, "digest": DIGEST, "repository": "team/app", "tag": tag}
    return {"events": [{"id": event_id, "action": "push", "target": target, "request": {"useragent": "t"}}]}


@pytest.mark.parametrize(
    "job_id", ["99999999999999999999", "9223372036854775808", "9223372036854775807", "0", "-1", "1e3", "٣"]
)
def test_job_ids_out_of_range_are_404(service: ServiceProcess, job_id: str) -> None:
    answer = requests.get(f"{service.url}/jobs/{job_id}", timeout=5)
    assert answer.status_code == 404 and answer.json() == {"error": "no such job"}


def test_authentication_comes_before_the_content_type(service: ServiceProcess) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert hook(service.url, b"events=1", token=None, **form).status_code == 401
    assert hook(service.url, b"events=1", token="wrong-token", **form).status_code == 401
    assert hook(service.url, b"events=1", **form).status_code == 415
    assert hook(service.url, b"{", token=None).status_code == 401  # no token: nothing about the body is said


@pytest.mark.parametrize(
    "query",
    [
        "limit=-1",
        "limit=0",
        "limit=1001",
        "limit=abc",
        "limit=1.5",
        "limit=",
        "limit=99999999999999999999999",
        "offset=-1",
        "offset=x",
        "status=bogus",
        "sort=id",
    ],
)
def test_bad_query_parameters_are_400(service: ServiceProcess, query: str) -> None:
    answer = requests.get(f"{service.url}/jobs?{query}", timeout=5)
    assert answer.status_code == 400 and answer.json()["error"]


def test_good_query_parameters(service: ServiceProcess) -> None:
    answer = requests.get(f"{service.url}/jobs?limit=1000&offset=0&status=done", timeout=5)
    assert answer.status_code == 200 and "counts" in answer.json()
    assert requests.get(f"{service.url}/jobs/1?x=1", timeout=5).status_code == 400


def test_deeply_nested_bodies_are_400(service: ServiceProcess) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    answer = hook(service.url, deep)
    assert answer.status_code == 400 and "nested deeper" in answer.json()["error"]
    inside = b'{"events": [' + b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH + b"]}"
    assert hook(service.url, inside).status_code == 400
    assert hook(service.url, deep, token=None).status_code == 401
    # brackets inside strings are text, not nesting
    event = push_event("x" * 10, "in-a-string")
    event["events"][0]["request"]["useragent"] = "[" * 1000
    assert hook(service.url, json.dumps(event).encode()).status_code == 202
    assert requests.get(f"{service.url}/healthz", timeout=5).json()["status"] == "ok"


def test_a_rule_restricts_the_tags_an_event_may_write(service: ServiceProcess) -> None:
    allowed = hook(service.url, push_event("v1", "allowed")).json()["events"][0]
    assert allowed["outcome"] == "queued"
    refused = hook(service.url, push_event("latest", "refused")).json()["events"][0]
    assert refused["outcome"] == "ignored"
    assert refused["reason"] == "rule opt: destination tag latest-opt is not in allowed_tags"
    assert {j["tag"] for j in service.jobs()} >= {"v1"} and "latest" not in {j["tag"] for j in service.jobs()}


def test_the_http_role_serves_no_worker_and_the_worker_role_no_hook(tmp_path: Path) -> None:
    config = service_config(
        tmp_path / "state", {"local": {"url": f"http://127.0.0.1:{free_port()}", "timeout": 1}}, []
    )
    config["rules"] = [{"name": "opt", "registry": "local", "destination": {"tag_suffix": "-opt"}}]
    config["retry"] = {"attempts": 1}
    http = ServiceProcess(tmp_path / "http", config, role="http").start()
    try:
        answer = hook(http.url, push_event("v1", "e1"))
        assert answer.status_code == 202 and answer.json()["events"][0]["outcome"] == "queued"
        assert requests.get(f"{http.url}/healthz", timeout=5).json()["role"] == "http"
        http_records = http.log_records()
        assert not any(r.get("msg") == "job started" for r in http_records)
        assert http.jobs()[0]["status"] == "queued"  # nobody runs it here
    finally:
        http.stop()
    worker_config = dict(config, listen=f"127.0.0.1:{free_port()}")
    worker = ServiceProcess(tmp_path / "worker", worker_config, role="worker").start()
    try:
        assert hook(worker.url, push_event("v2", "e2")).status_code == 404
        assert requests.get(f"{worker.url}/jobs", timeout=5).status_code == 404
        assert requests.get(f"{worker.url}/metrics", timeout=5).status_code == 200
        # the worker took the job the HTTP process queued (the registry is down: it fails, once)
        deadline = time.monotonic() + 30
        while not any(r.get("msg") == "job failed" for r in worker.log_records()):
            assert time.monotonic() < deadline, worker.log_text()[-2000:]
            time.sleep(0.1)
    finally:
        worker.stop()
