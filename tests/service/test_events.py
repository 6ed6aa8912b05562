"""Event normalisation: every captured distribution body, and the documented shapes of the other senders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from optimizer.service.events import Event, EventError, detect_format, parse_events
from tests.conftest import FIXTURE_NOT_FOUND, fixture, missing

V1 = {"Content-Type": "application/vnd.docker.distribution.events.v1+json"}
V2 = {"Content-Type": "application/vnd.docker.distribution.events.v2+json"}
OURS = "oci-optimizer-service/0.1"
DIGEST = "sha256:" + "ab" * 32


def captured(fixtures: Path) -> list[Path]:
    folder = fixture("registry-events")
    files = sorted(folder.glob("*.body.json"))
    if not files:
        missing(f"{FIXTURE_NOT_FOUND}{folder}/*.body.json")
    return files


def test_every_captured_body_normalises_to_its_target(fixtures: Path) -> None:
    for path in captured(fixtures):
        body = path.read_bytes()
        raw = json.loads(body)["events"]
        for headers in (V1, V2, {"Content-Type": "application/json"}):
            events = parse_events(body, headers)
            assert len(events) == len(raw), path.name
            for event, source in zip(events, raw, strict=True):
                target = source["target"]
                assert event.format == "distribution"
                assert event.event_id == source["id"]
                assert event.action == source["action"]
                assert event.repository == target["repository"]
                assert event.tag == target.get("tag")
                assert event.digest == target.get("digest")
                assert event.media_type == target.get("mediaType")
                assert event.user_agent == source["request"]["useragent"]
                assert event.actor == (source["actor"].get("name") or None)


def test_only_tagged_manifest_and_index_pushes_are_acted_on(fixtures: Path) -> None:
    acted = set()
    for path in captured(fixtures):
        (event,) = parse_events(path.read_bytes(), V1)
        if event.ignore_reason(OURS) is None:
            acted.add(path.name)
    assert acted == {
        "push-docker-manifest-list-tag.body.json",
        "push-docker-schema2-tag.body.json",
        "push-manifest-with-actor.body.json",
        "push-oci-index-tag.body.json",
        "push-oci-manifest-tag.body.json",
    }


def test_reasons_for_ignored_events(fixtures: Path) -> None:
    folder = fixture("registry-events")
    (blob,) = parse_events((folder / "push-blob.body.json").read_bytes(), V1)
    assert blob.ignore_reason(OURS) == "not tagged (a push by digest)"
    (child,) = parse_events((folder / "push-child-manifest-by-digest.body.json").read_bytes(), V1)
    assert child.ignore_reason(OURS) == "not tagged (a push by digest)"
    (pull,) = parse_events((folder / "pull-manifest.body.json").read_bytes(), V1)
    assert pull.ignore_reason(OURS) == "action pull"
    (delete,) = parse_events((folder / "delete-tag.body.json").read_bytes(), V1)
    assert delete.ignore_reason(OURS) == "action delete"


def test_our_own_user_agent_is_ignored(fixtures: Path) -> None:
    body = json.loads(fixture("registry-events/push-oci-manifest-tag.body.json").read_bytes())
    body["events"][0]["request"]["useragent"] = OURS + " (python-requests)"
    (event,) = parse_events(json.dumps(body).encode(), V1)
    assert event.ignore_reason(OURS) == "pushed by this service (user agent)"


def _harbor_default(tag: str) -> dict[str, Any]:
    return {
        "type": "PUSH_ARTIFACT",
        "occur_at": 1680501893,
        "operator": "admin",
        "event_data": {
            "resources": [{"digest": DIGEST, "tag": tag, "resource_url": f"harbor.example/lib/app:{tag}"}],
            "repository": {
                "name": "app",
                "namespace": "lib",
                "repo_full_name": "lib/app",
                "repo_type": "private",
            },
        },
    }


def test_harbor_default_payload() -> None:
    (event,) = parse_events(json.dumps(_harbor_default("1.2")).encode(), {"Content-Type": "application/json"})
    assert (event.format, event.action, event.repository, event.tag, event.digest) == (
        "harbor",
        "push",
        "lib/app",
        "1.2",
        DIGEST,
    )
    assert event.event_id is None and event.actor == "admin"
    assert event.ignore_reason(OURS) is None


def test_harbor_push_by_digest_has_no_tag() -> None:
    (event,) = parse_events(json.dumps(_harbor_default(DIGEST)).encode(), {})
    assert event.tag is None and event.ignore_reason(OURS) == "not tagged (a push by digest)"


def test_harbor_cloudevents_structured_and_binary() -> None:
    data = _harbor_default("v2")["event_data"]
    structured = {
        "specversion": "1.0",
        "id": "66e18103-09c1-41f6-982f-37df223f3eeb",
        "source": "/projects/2/webhook/policies/15",
        "type": "harbor.artifact.pushed",
        "datacontenttype": "application/json",
        "time": "2023-04-03T06:04:46Z",
        "data": data,
        "operator": "robot$ci",
    }
    (event,) = parse_events(json.dumps(structured).encode(), {"Content-Type": "application/cloudevents+json"})
    assert (event.format, event.event_id, event.repository, event.tag) == (
        "harbor-cloudevents",
        structured["id"],
        "lib/app",
        "v2",
    )
    binary_headers = {"Content-Type": "application/json", "Ce-Type": "harbor.artifact.pushed", "Ce-Id": "x1"}
    (event,) = parse_events(json.dumps(data).encode(), binary_headers)
    assert (event.event_id, event.repository, event.tag, event.digest) == ("x1", "lib/app", "v2", DIGEST)
    pulled = dict(structured, type="harbor.artifact.pulled")
    (event,) = parse_events(json.dumps(pulled).encode(), {})
    assert event.action == "pull" and event.ignore_reason(OURS) == "action pull"


def test_zot_binary_cloudevent() -> None:
    body = {
        "name": "team/app",
        "reference": "v3",
        "digest": DIGEST,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "manifest": "{}",
    }
    headers = {
        "Content-Type": "application/json",
        "Ce-Specversion": "1.0",
        "Ce-Type": "zotregistry.image.updated",
        "Ce-Id": "b5c6",
        "Ce-Source": "zotregistry.dev",
    }
    (event,) = parse_events(json.dumps(body).encode(), headers)
    assert (event.format, event.event_id, event.action, event.repository, event.tag) == (
        "zot",
        "b5c6",
        "push",
        "team/app",
        "v3",
    )
    assert event.ignore_reason(OURS) is None
    by_digest = dict(body, reference=DIGEST)
    (event,) = parse_events(json.dumps(by_digest).encode(), headers)
    assert event.tag is None
    deleted = dict(headers, **{"Ce-Type": "zotregistry.image.deleted"})
    (event,) = parse_events(json.dumps(body).encode(), deleted)
    assert event.action == "delete"
    prefixed = dict(headers, **{"Ce-Type": "com.example.registry.image.updated"})
    (event,) = parse_events(json.dumps(body).encode(), prefixed, "zot")
    assert event.action == "push"


def test_github_registry_package() -> None:
    body = {
        "action": "published",
        "registry_package": {
            "name": "App",
            "namespace": "Octo-Org",
            "package_type": "CONTAINER",
            "package_version": {
                "version": DIGEST,
                "container_metadata": {"tag": {"name": "1.0", "digest": DIGEST}},
                "package_url": "ghcr.io/octo-org/app:1.0",
            },
            "registry": {"host": "ghcr.io", "url": "https://ghcr.io/octo-org"},
        },
        "sender": {"login": "octocat"},
    }
    headers = {
        "X-GitHub-Event": "registry_package",
        "X-GitHub-Delivery": "d-1",
        "Content-Type": "application/json",
    }
    (event,) = parse_events(json.dumps(body).encode(), headers)
    assert (event.format, event.event_id, event.repository, event.tag, event.digest, event.actor) == (
        "github",
        "d-1",
        "octo-org/app",
        "1.0",
        DIGEST,
        "octocat",
    )
    (ping,) = parse_events(
        b'{"zen": "hi", "hook_id": 1}', {"X-GitHub-Event": "ping", "X-GitHub-Delivery": "d-2"}
    )
    assert ping.action == "ping" and ping.ignore_reason(OURS) == "action ping"


def test_acr_bare_event_and_ping() -> None:
    body = {
        "id": "cb8c3971-9adc-488b-0000-43cbb4974ff5",
        "timestamp": "2017-11-17T16:52:01.343145347Z",
        "action": "push",
        "target": {
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "size": 524,
            "digest": DIGEST,
            "length": 524,
            "repository": "hello-world",
            "tag": "v1",
        },
        "request": {
            "id": "r",
            "host": "myregistry.azurecr.io",
            "method": "PUT",
            "useragent": "docker/17.09.0-ce",
        },
    }
    (event,) = parse_events(json.dumps(body).encode(), {"Content-Type": "application/json"})
    assert (event.format, event.event_id, event.repository, event.tag, event.host) == (
        "acr",
        body["id"],
        "hello-world",
        "v1",
        "myregistry.azurecr.io",
    )
    (ping,) = parse_events(json.dumps({"id": "p", "action": "ping"}).encode(), {}, "acr")
    assert ping.action == "ping"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"\xff\xfe{}",
        b'{"events": [], "events": []}',
        b'{"events": [{"id": "x", "action": "push", "target": {"repository": "a", "size": NaN}}]}',
        b"[1, 2]",
        b'{"hello": "world"}',
        b'{"events": "nope"}',
        b'{"events": [17]}',
        b'{"events": [{"action": "push", "target": {"repository": "../../etc", "tag": "v1"}}]}',
        b'{"events": [{"action": "push", "target": {"repository": "a/b", "tag": "v1/../x"}}]}',
        b'{"events": [{"action": "push", "target": {"repository": "a/b", "tag": "v1", "digest": "md5:00"}}]}',
        b'{"events": [{"action": "push", "target": {"repository": "a", "tag": 5}}]}',
    ],
)
def test_malformed_bodies_raise_event_error(body: bytes) -> None:
    with pytest.raises(EventError):
        parse_events(body, V1 if body.startswith(b'{"events"') else {"Content-Type": "application/json"})


def test_a_fixed_format_refuses_other_shapes() -> None:
    with pytest.raises(EventError):
        parse_events(json.dumps(_harbor_default("v1")).encode(), {}, "distribution")
    with pytest.raises(EventError):
        detect_format({"something": "else"}, {})


def test_event_describe_round_trips_fields() -> None:
    event = Event("distribution", "i", "push", "a/b", "t", DIGEST, None)
    assert event.describe()["repository"] == "a/b"
