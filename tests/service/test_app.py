"""The HTTP side on a real socket (uvicorn in a thread, no workers): answers, auth, limits, de-duplication."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from optimizer.service.app import Service, create_app
from optimizer.service.auth import github_signature
from optimizer.service.config import parse_config
from optimizer.service.queue import JobSpec
from tests.conftest import missing
from tests.service.conftest import TOKEN, InProcessServer, hook

V1 = "application/vnd.docker.distribution.events.v1+json"
DIGEST = "sha256:" + "ab" * 32


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Service, str]]:
    config = parse_config(
        {
            "listen": "127.0.0.1:1",
            "state_dir": str(tmp_path / "state"),
            "max_body_bytes": 4096,
            "registries": {"local": {"url": "http://127.0.0.1:9"}, "ghcr": {"url": "https://ghcr.io"}},
            "sources": {
                "registry": {"registry": "local", "bearer_token": TOKEN},
                "github": {"registry": "ghcr", "hmac_secret": "gh-secret"},
            },
            "rules": [
                {
                    "name": "opt",
                    "registry": "local",
                    "repositories": ["tiny/*", "team/*"],
                    "destination": {"tag_suffix": "-opt"},
                },
                {"name": "gh", "registry": "ghcr", "destination": {"tag_suffix": "-slim"}},
            ],
        }
    )
    service = Service.open(config)
    with InProcessServer(create_app(service)) as server:
        yield service, server.url
    service.queue.close()


def body_of(fixtures: Path, name: str) -> bytes:
    path = fixtures / "registry-events" / name
    if not path.exists():
        missing(f"fixture {path} not found")
    return path.read_bytes()


def with_id(body: bytes, event_id: str) -> bytes:
    data = json.loads(body)
    data["events"][0]["id"] = event_id
    return json.dumps(data).encode()


def test_tagged_push_is_queued_once(served: tuple[Service, str], fixtures: Path) -> None:
    _, url = served
    body = body_of(fixtures, "push-oci-manifest-tag.body.json")
    event = json.loads(body)["events"][0]
    answer = hook(url, body)
    assert answer.status_code == 202
    (decided,) = answer.json()["events"]
    assert decided["outcome"] == "queued"
    (job_id,) = decided["jobs"]
    job = requests.get(f"{url}/jobs/{job_id}", timeout=5).json()
    target = event["target"]
    assert (job["status"], job["repository"], job["tag"], job["digest"]) == (
        "queued",
        target["repository"],
        target["tag"],
        target["digest"],
    )
    assert job["destination"] == f"local/{target['repository']}:{target['tag']}-opt"
    # redelivery (same event id): nothing new
    assert hook(url, body).json()["events"][0]["outcome"] == "duplicate"
    # a second push event of the same digest while the job waits: joins it
    again = hook(url, with_id(body, "another-id")).json()["events"][0]
    assert again["outcome"] == "joined" and again["jobs"] == [job_id]
    listing = requests.get(f"{url}/jobs", timeout=5).json()
    assert listing["counts"]["queued"] == 1 and len(listing["jobs"]) == 1


@pytest.mark.parametrize(
    "name",
    [
        "push-blob.body.json",
        "mount-blob.body.json",
        "push-child-manifest-by-digest.body.json",
        "pull-manifest.body.json",
        "delete-tag.body.json",
        "delete-manifest-digest.body.json",
    ],
)
def test_ignored_events_still_get_2xx(served: tuple[Service, str], fixtures: Path, name: str) -> None:
    service, url = served
    answer = hook(url, body_of(fixtures, name))
    assert answer.status_code == 202
    assert [e["outcome"] for e in answer.json()["events"]] == ["ignored"]
    assert service.queue.counts()["queued"] == 0


def test_no_rule_or_our_own_digest_is_ignored(served: tuple[Service, str], fixtures: Path) -> None:
    service, url = served
    body = json.loads(body_of(fixtures, "push-oci-manifest-tag.body.json"))
    body["events"][0]["target"]["repository"] = "elsewhere/app"
    decided = hook(url, body).json()["events"][0]
    assert (decided["outcome"], decided["reason"]) == ("ignored", "no rule matches")
    body["events"][0]["target"]["repository"] = "team/app"
    body["events"][0]["id"] = "new"
    service.queue.submit(
        "other",
        "e",
        [
            JobSpec(
                "opt",
                "registry",
                "distribution",
                "local",
                "team/x",
                "1",
                DIGEST,
                None,
                "local",
                "team/x",
                "1-o",
            )
        ],
    )
    job = service.queue.claim()
    assert job is not None
    service.queue.record_pushed([body["events"][0]["target"]["digest"]], job, "x")
    decided = hook(url, body).json()["events"][0]
    assert (decided["outcome"], decided["reason"]) == ("ignored", "pushed by this service (digest)")


def test_wrong_or_missing_token_is_401_and_makes_no_job(
    served: tuple[Service, str], fixtures: Path, caplog: pytest.LogCaptureFixture
) -> None:
    service, url = served
    body = body_of(fixtures, "push-oci-manifest-tag.body.json")
    caplog.set_level(logging.DEBUG, logger="optimizer")
    for token in ("wrong-token-xyz", None):
        answer = hook(url, body, token=token)
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"].startswith("Bearer")
    answer = requests.post(f"{url}/hook", data=body, headers={"Authorization": f"Basic {TOKEN}"}, timeout=5)
    assert answer.status_code == 401
    assert service.queue.counts()["queued"] == 0
    refused = [r for r in caplog.records if r.getMessage() == "webhook refused"]
    assert len(refused) == 3
    for record in caplog.records:
        text = json.dumps(vars(record), default=str)
        assert TOKEN not in text and "wrong-token-xyz" not in text


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b'{"events": [{"id": "1", "id": "2"}]}',
        b"[]",
        b'{"events": [{"action": "push", "target": 7}]}',
        b'{"events": ' + b"[" * 2000 + b"]" * 2000 + b"}",  # deeper than the parser's recursion limit
    ],
)
def test_malformed_bodies_are_400(served: tuple[Service, str], body: bytes) -> None:
    service, url = served
    answer = hook(url, body)
    assert answer.status_code == 400 and answer.json()["error"]
    assert service.queue.counts()["queued"] == 0


def test_size_limit_and_content_type(served: tuple[Service, str], fixtures: Path) -> None:
    service, url = served
    body = json.loads(body_of(fixtures, "push-oci-manifest-tag.body.json"))
    body["padding"] = "x" * 5000
    assert hook(url, body).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is counted as the body arrives
        for _ in range(10):
            yield b" " * 1000

    streamed = requests.post(
        f"{url}/hook",
        data=chunks(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": V1},
        timeout=5,
    )
    assert streamed.status_code == 413
    assert hook(url, b"events=1", **{"Content-Type": "application/x-www-form-urlencoded"}).status_code == 415
    assert service.queue.counts()["queued"] == 0


def test_github_hmac_source(served: tuple[Service, str]) -> None:
    service, url = served
    digest = "sha256:" + "12" * 32
    payload: dict[str, Any] = {
        "action": "published",
        "registry_package": {
            "name": "app",
            "namespace": "octo",
            "package_type": "CONTAINER",
            "package_version": {
                "version": digest,
                "container_metadata": {"tag": {"name": "2.0", "digest": digest}},
            },
        },
    }
    body = json.dumps(payload).encode()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "registry_package",
        "X-GitHub-Delivery": "gh-1",
        "X-Hub-Signature-256": github_signature("gh-secret", body),
    }
    answer = requests.post(f"{url}/hook", data=body, headers=headers, timeout=5)
    assert answer.status_code == 202 and answer.json()["source"] == "github"
    (job_id,) = answer.json()["events"][0]["jobs"]
    job = service.queue.get(job_id)
    assert job is not None and (job.spec.registry, job.spec.dest_tag) == ("ghcr", "2.0-slim")
    tampered = dict(headers, **{"X-Hub-Signature-256": github_signature("gh-secret", body + b" ")})
    assert requests.post(f"{url}/hook", data=body, headers=tampered, timeout=5).status_code == 401
    # a source named in the path only accepts its own credentials
    assert requests.post(f"{url}/hook/registry", data=body, headers=headers, timeout=5).status_code == 401
    assert requests.post(f"{url}/hook/nope", data=body, headers=headers, timeout=5).status_code == 404


def test_health_metrics_and_missing_jobs(served: tuple[Service, str], fixtures: Path) -> None:
    _, url = served
    hook(url, body_of(fixtures, "push-oci-index-tag.body.json"))
    hook(url, b"{", token="bad")
    health = requests.get(f"{url}/healthz", timeout=5).json()
    assert health == {
        "status": "ok",
        "role": "all",
        "jobs": {"queued": 1, "running": 0, "done": 0, "failed": 0},
    }
    metrics = requests.get(f"{url}/metrics", timeout=5).text
    assert 'optimizer_service_jobs{status="queued"} 1.0' in metrics
    assert 'optimizer_service_hook_requests_total{outcome="unauthorized"} 1.0' in metrics
    assert 'optimizer_service_events_total{format="distribution",outcome="queued"} 1.0' in metrics
    assert requests.get(f"{url}/jobs/999", timeout=5).status_code == 404
    assert requests.get(f"{url}/jobs/abc", timeout=5).status_code == 404
    assert requests.get(f"{url}/jobs", params={"status": "bogus"}, timeout=5).status_code == 400
    assert requests.get(f"{url}/hook", timeout=5).status_code == 405


def test_admin_token_guards_job_listing(tmp_path: Path) -> None:
    config = parse_config(
        {
            "listen": "127.0.0.1:1",
            "state_dir": str(tmp_path / "state"),
            "admin_token": "admin-1",
            "registries": {"local": {"url": "http://127.0.0.1:9"}},
            "sources": {"registry": {"registry": "local", "bearer_token": TOKEN}},
            "rules": [{"name": "opt", "registry": "local", "destination": {"tag_suffix": "-opt"}}],
        }
    )
    service = Service.open(config)
    with InProcessServer(create_app(service)) as server:
        assert requests.get(f"{server.url}/jobs", timeout=5).status_code == 401
        assert requests.get(f"{server.url}/jobs", headers={"Authorization": "Bearer admin-1"}, timeout=5).ok
        assert requests.get(f"{server.url}/healthz", timeout=5).ok
    service.queue.close()


def test_an_envelope_of_several_events(served: tuple[Service, str], fixtures: Path) -> None:
    service, url = served
    blob = json.loads(body_of(fixtures, "push-blob.body.json"))["events"][0]
    manifest = json.loads(body_of(fixtures, "push-oci-manifest-tag.body.json"))["events"][0]
    again = dict(manifest, id="second-delivery-of-a-re-push")
    answer = hook(url, {"events": [blob, manifest, again, manifest]})
    assert answer.status_code == 202
    outcomes = [e["outcome"] for e in answer.json()["events"]]
    assert outcomes == ["ignored", "queued", "joined", "duplicate"]
    assert service.queue.counts()["queued"] == 1
