"""The registry client against Debian's real registry on 127.0.0.1, images pushed and read with skopeo.

Faults the registry does not produce on its own (429/503 with Retry-After, token auth with revoked tokens, a
stalled server) come from small local servers (``tests/registry_fixtures.py``) in front of the real registry.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import subprocess
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import requests
from jsonschema import Draft4Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from optimizer import mediatypes as mt
from optimizer.errors import RegistryError, UsageError
from optimizer.registry import (
    Credentials,
    Reference,
    RegistryAuthError,
    RegistryClient,
    RegistryUnavailable,
    credentials_for,
)
from tests.conftest import fixture, require_tool
from tests.imagetools import oci_layout_of, tree_of
from tests.registry_fixtures import (
    FaultProxy,
    RunningRegistry,
    StallServer,
    TokenServer,
    push_layout,
    registry,
    registry_factory,
    skopeo_copy,
    skopeo_inspect_raw,
)

__all__ = ["registry", "registry_factory"]  # fixtures imported for pytest

FIXTURE_IMAGES = [
    # (fixture layout, image name inside it, root media type)
    ("stereoscope/oci-layout-multiplatform", None, mt.OCI_INDEX),
    ("sylabs-oci-tools/hello-world-docker-v2-manifest-list", None, mt.DOCKER_MANIFEST_LIST),
    ("sylabs-oci-tools/hello-world-docker-v2-manifest", None, mt.DOCKER_MANIFEST),
    ("regclient/oci-layout-external", "a3", mt.OCI_MANIFEST),
]


# ---------------------------------------------------------------- an independent layout checker


def _schema_registry() -> tuple[Registry, dict[str, Any]]:
    for needed in ("image-index-schema.json", "image-manifest-schema.json"):
        fixture(f"oci-schema/v1.1.1/{needed}")  # absent: missing(), not a KeyError in the test
    schemas: dict[str, Any] = {}
    registry_: Registry = Registry()
    for path in sorted(fixture("oci-schema/v1.1.1").glob("*.json")):
        document = json.loads(path.read_text())
        schemas[path.name] = document
        resource = Resource.from_contents(document, default_specification=DRAFT4)
        for prefix in ("https://opencontainers.org/schema/", "https://opencontainers.org/schema/image/"):
            registry_ = registry_.with_resource(prefix + path.name, resource)
    return registry_, schemas


def check_layout(layout: Path) -> dict[str, bytes]:
    """Every blob named by its sha256, every referenced blob present with its size, OCI schemas valid.

    Returns the manifests reached (digest -> bytes)."""
    registry_, schemas = _schema_registry()

    def validate(document: Any, schema_name: str) -> None:
        Draft4Validator(schemas[schema_name], registry=registry_).validate(document)

    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout / "index.json").read_text())
    validate(index, "image-index-schema.json")
    blobs = layout / "blobs" / "sha256"
    for blob in blobs.iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name, f"{blob} does not match its name"
    manifests: dict[str, bytes] = {}
    pending = list(index["manifests"])
    while pending:
        descriptor = pending.pop()
        data = (blobs / descriptor["digest"][7:]).read_bytes()
        assert len(data) == descriptor["size"]
        if descriptor["mediaType"] in mt.INDEX_TYPES | mt.MANIFEST_TYPES:
            manifests[descriptor["digest"]] = data
            document = json.loads(data)
            if descriptor["mediaType"] in mt.INDEX_TYPES:
                validate(document, "image-index-schema.json")
                pending.extend(document["manifests"])
            else:
                validate(document, "image-manifest-schema.json")
                pending.append(document["config"])
                pending.extend(document["layers"])
    return manifests


def _pushed(
    registry: RunningRegistry, fixtures: Path, layout: str, image: str | None, name: str
) -> Reference:
    reference = push_layout(fixture(f"images/{layout}"), registry, name, image=image)
    return Reference.parse(reference.removeprefix("docker://"))


# ---------------------------------------------------------------- references


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:5000/a/b:v1", ("127.0.0.1:5000", "a/b", "v1", None)),
        ("localhost/x", ("localhost", "x", None, None)),
        ("registry.example/x/y@sha256:" + "a" * 64, ("registry.example", "x/y", None, "sha256:" + "a" * 64)),
        ("host:5000/x:t@sha256:" + "b" * 64, ("host:5000", "x", "t", "sha256:" + "b" * 64)),
        ("busybox", ("docker.io", "library/busybox", None, None)),
        ("team/app:1.0", ("docker.io", "team/app", "1.0", None)),
        ("notahost/x", ("docker.io", "notahost/x", None, None)),
        ("[::1]:5000/x:latest", ("[::1]:5000", "x", "latest", None)),
    ],
)
def test_reference_parse_and_str(text: str, expected: tuple[str, str, str | None, str | None]) -> None:
    ref = Reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == expected
    assert Reference.parse(str(ref)) == ref


@pytest.mark.parametrize(
    "text",
    [
        "",
        "UPPER/case",
        "host:5000/x:bad tag",
        "x@sha256:abc",
        "host:5000/",
        "a//b",
        " spaced",
        "x:" + "t" * 200,
    ],
)
def test_reference_rejects_malformed(text: str) -> None:
    with pytest.raises(UsageError):
        Reference.parse(text)


# ---------------------------------------------------------------- pull and push, real registry


@pytest.mark.parametrize(("layout", "image", "media_type"), FIXTURE_IMAGES)
def test_pull_then_push_round_trip(
    registry: RunningRegistry, fixtures: Path, tmp_path: Path, layout: str, image: str | None, media_type: str
) -> None:
    name = layout.split("/")[-1]
    ref = _pushed(registry, fixtures, layout, image, f"src/{name}:v1")
    raw = skopeo_inspect_raw(f"docker://{ref}")
    client = RegistryClient(registry.host, insecure=True, anonymous=True)

    digest = client.pull(ref, str(tmp_path / "pulled"))

    assert digest == "sha256:" + hashlib.sha256(raw).hexdigest()
    index = json.loads((tmp_path / "pulled" / "index.json").read_text())
    assert index["manifests"] == [
        {
            "mediaType": media_type,
            "digest": digest,
            "size": len(raw),
            "annotations": {"org.opencontainers.image.ref.name": "v1"},
        }
    ]
    manifests = check_layout(tmp_path / "pulled")
    assert manifests[digest] == raw  # the exact bytes served, not re-serialised
    for child, data in manifests.items():  # every child manifest as the registry serves it (plain HTTP GET)
        served = requests.get(
            f"{registry.url}/v2/src/{name}/manifests/{child}",
            headers={"Accept": ", ".join(sorted(mt.INDEX_TYPES | mt.MANIFEST_TYPES))},
            timeout=10,
        )
        assert served.status_code == 200 and served.content == data
    assert client.manifest_digest(ref) == digest

    # Push back to another repository and tag, with a fresh client (no mount knowledge): uploads.
    target = Reference.parse(f"{registry.host}/dst/{name}:copy")
    pusher = RegistryClient(registry.host, insecure=True, anonymous=True)
    assert pusher.push(str(tmp_path / "pulled"), target) == digest
    assert skopeo_inspect_raw(f"docker://{target}") == raw
    assert pusher.last_stats.manifests == len(manifests)
    assert pusher.last_stats.blobs_uploaded + pusher.last_stats.blobs_mounted > 0


def test_pull_by_digest_and_missing(registry: RunningRegistry, fixtures: Path, tmp_path: Path) -> None:
    ref = _pushed(
        registry, fixtures, "sylabs-oci-tools/hello-world-docker-v2-manifest", None, "bydigest/x:v1"
    )
    client = RegistryClient(registry.host, insecure=True, anonymous=True)
    digest = client.manifest_digest(ref)
    assert digest is not None
    by_digest = Reference(ref.registry, ref.repository, None, digest)
    assert client.pull(by_digest, str(tmp_path / "l")) == digest
    index = json.loads((tmp_path / "l" / "index.json").read_text())
    assert "annotations" not in index["manifests"][0]
    assert client.manifest_digest(Reference.parse(f"{registry.host}/bydigest/x:absent")) is None
    with pytest.raises(RegistryError, match=r"bydigest/nothing:v1.*not found"):
        client.pull(Reference.parse(f"{registry.host}/bydigest/nothing:v1"), str(tmp_path / "m"))


def test_push_by_digest_then_tag_from_annotation(
    registry: RunningRegistry, fixtures: Path, tmp_path: Path
) -> None:
    ref = _pushed(registry, fixtures, "stereoscope/oci-layout-multiplatform", None, "ann/src:v7")
    client = RegistryClient(registry.host, insecure=True, anonymous=True)
    digest = client.pull(ref, str(tmp_path / "l"))
    by_digest = Reference.parse(f"{registry.host}/ann/bydigest@{digest}")
    assert client.push(str(tmp_path / "l"), by_digest) == digest
    assert client.manifest_digest(by_digest) == digest
    # Neither tag nor digest: the layout's ref.name annotation ("v7") is the tag.
    assert client.push(str(tmp_path / "l"), Reference(registry.host, "ann/named")) == digest
    assert client.manifest_digest(Reference.parse(f"{registry.host}/ann/named:v7")) == digest
    wrong = Reference.parse(f"{registry.host}/ann/x@sha256:" + "0" * 64)
    with pytest.raises(RegistryError, match="not the digest asked for"):
        client.push(str(tmp_path / "l"), wrong)


def test_corrupt_blob_in_registry_is_detected(
    registry: RunningRegistry, fixtures: Path, tmp_path: Path
) -> None:
    """The registry serves bytes that do not match the digest (storage corrupted on disk): never written."""
    ref = _pushed(registry, fixtures, "sylabs-oci-tools/hard-link-1", None, "corrupt/x:v1")
    client = RegistryClient(registry.host, insecure=True, anonymous=True, retries=1, backoff=0.01)
    client.pull(ref, str(tmp_path / "good"))
    manifest = json.loads(next(iter(check_layout(tmp_path / "good").values())))
    layer = manifest["layers"][0]["digest"]
    stored = registry.root / "storage" / "docker/registry/v2/blobs/sha256" / layer[7:9] / layer[7:] / "data"
    original = stored.read_bytes()
    try:
        stored.write_bytes(bytes(b ^ 0xFF for b in original))  # same size, other bytes
        with pytest.raises(RegistryError, match=rf"corrupt/x@{layer}.*layer 1/1.*digest"):
            client.pull(ref, str(tmp_path / "bad"))
        assert not (tmp_path / "bad" / "blobs" / "sha256" / layer[7:]).exists()
    finally:
        stored.write_bytes(original)


def test_push_refuses_a_corrupt_layout(registry: RunningRegistry, tmp_path: Path) -> None:
    layout = _big_layout(tmp_path / "layout", 4096)  # random bytes: a blob the registry does not have
    manifest = json.loads(next(iter(check_layout(layout).values())))
    blob = layout / "blobs" / "sha256" / manifest["layers"][0]["digest"][7:]
    data = blob.read_bytes()
    blob.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # a changed last byte (random bytes may end in 0)
    client = RegistryClient(registry.host, insecure=True, anonymous=True)
    with pytest.raises(RegistryError, match="does not match its digest"):
        client.push(str(layout), Reference.parse(f"{registry.host}/corruptpush/x:v1"))
    assert client.manifest_digest(Reference.parse(f"{registry.host}/corruptpush/x:v1")) is None


# ---------------------------------------------------------------- blobs the registry has are not sent again


def test_present_blobs_are_not_uploaded_again(
    registry: RunningRegistry, fixtures: Path, tmp_path: Path
) -> None:
    layout = fixture("images/sylabs-oci-tools/hello-world-docker-v2-manifest-list")
    with FaultProxy(registry.host) as proxy:
        first = RegistryClient(proxy.host, insecure=True, anonymous=True)
        digest = first.push(str(layout), Reference.parse(f"{proxy.host}/dedupe/a:v1"))
        uploaded = first.last_stats.blobs_uploaded
        assert uploaded == 18 and first.last_stats.blobs_present == 0
        assert proxy.count("PUT", "/blobs/uploads/") == uploaded

        # The same image again, to the same repository: HEADs only.
        before = len(proxy.requests)
        second = RegistryClient(proxy.host, insecure=True, anonymous=True)
        assert second.push(str(layout), Reference.parse(f"{proxy.host}/dedupe/a:v2")) == digest
        new = proxy.requests[before:]
        assert not [r for r in new if "/blobs/uploads/" in r.path]
        assert second.last_stats.blobs_present == 18
        assert sum(1 for r in new if r.method == "HEAD" and "/blobs/" in r.path) == 18

        # Another repository with mount_from: cross-repository mounts, no blob bytes sent.
        before = len(proxy.requests)
        assert (
            second.push(str(layout), Reference.parse(f"{proxy.host}/dedupe/b:v1"), mount_from="dedupe/a")
            == digest
        )
        new = proxy.requests[before:]
        assert second.last_stats.blobs_mounted == 18 and second.last_stats.bytes_uploaded == 0
        assert not [r for r in new if r.method in ("PUT", "PATCH") and "/blobs/uploads/" in r.path]
        assert sum(1 for r in new if r.method == "POST" and "mount=" in r.path and r.status == 201) == 18

        # A client that pulled from dedupe/a mounts from there on its own.
        third = RegistryClient(proxy.host, insecure=True, anonymous=True)
        third.pull(Reference.parse(f"{proxy.host}/dedupe/a:v1"), str(tmp_path / "pulled"))
        before = len(proxy.requests)
        third.push(str(tmp_path / "pulled"), Reference.parse(f"{proxy.host}/dedupe/c:v1"))
        assert third.last_stats.blobs_mounted == 18
        assert not [r for r in proxy.requests[before:] if r.method == "PUT" and "/blobs/uploads/" in r.path]
    assert skopeo_inspect_raw(f"docker://{registry.host}/dedupe/c:v1") == skopeo_inspect_raw(
        f"docker://{registry.host}/dedupe/a:v1"
    )


# ---------------------------------------------------------------- authentication


def test_htpasswd_registry_basic_auth_is_preemptive(
    registry_factory: Any, fixtures: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cret-Pa55"
    protected = registry_factory(htpasswd={"alice": secret})
    ref = _pushed(protected, fixtures, "stereoscope/oci-layout-multiplatform", None, "auth/x:v1")
    caplog.set_level(logging.DEBUG)
    with FaultProxy(protected.host) as proxy:
        client = RegistryClient(proxy.host, insecure=True, credentials=Credentials("alice", secret))
        proxied = Reference(proxy.host, ref.repository, ref.tag)
        digest = client.pull(proxied, str(tmp_path / "pulled"))
        client.push(str(tmp_path / "pulled"), Reference(proxy.host, "auth/y", "v2"))
        unauthorized = [r for r in proxy.requests if r.status == 401]
        # Only the first "GET /v2/" that learns the scheme goes without credentials; nothing is sent twice.
        assert [(r.method, r.path) for r in unauthorized] == [("GET", "/v2/")]
        assert all(r.authorization == "basic" for r in proxy.requests if r.path != "/v2/")
        assert all(r.user_agent.startswith("oci-optimizer/") for r in proxy.requests)
    assert (
        digest
        == "sha256:"
        + hashlib.sha256(skopeo_inspect_raw(f"docker://{ref}", creds=protected.creds())).hexdigest()
    )
    check_layout(tmp_path / "pulled")

    # A wrong password fails at once (no retry loop) and the message carries no secret.
    with FaultProxy(protected.host) as proxy:
        wrong = RegistryClient(proxy.host, insecure=True, credentials=Credentials("alice", "wrong-" + secret))
        started = time.monotonic()
        with pytest.raises(RegistryError, match="authentication failed") as failure:
            wrong.pull(Reference(proxy.host, ref.repository, ref.tag), str(tmp_path / "nope"))
        assert time.monotonic() - started < 2
        assert len(proxy.requests) <= 3
        assert secret not in str(failure.value)
        anonymous = RegistryClient(proxy.host, insecure=True, anonymous=True)
        with pytest.raises(RegistryError, match="user name and password"):
            anonymous.manifest_digest(Reference(proxy.host, ref.repository, ref.tag))
    assert secret not in caplog.text
    assert base64.b64encode(f"alice:{secret}".encode()).decode() not in caplog.text
    assert secret not in repr(Credentials("alice", secret))


def test_token_auth_refreshes_a_refused_token(
    registry: RunningRegistry, fixtures: Path, tmp_path: Path
) -> None:
    ref = _pushed(registry, fixtures, "sylabs-oci-tools/hello-world-docker-v2-manifest", None, "token/x:v1")
    with FaultProxy(registry.host, token_auth=True, users={"bob": "pw"}) as proxy:
        client = RegistryClient(proxy.host, insecure=True, credentials=Credentials("bob", "pw"))
        digest = client.pull(Reference(proxy.host, ref.repository, ref.tag), str(tmp_path / "pulled"))
        pulls = len(proxy.token_requests)
        assert pulls >= 1
        assert proxy.token_requests[0]["scope"] == ["repository:token/x:pull"]
        assert proxy.token_requests[0]["service"] == ["fault-proxy"]

        # Every token is revoked (expired, as on a long job): the next request's 401 fetches a new one.
        proxy.revoke_tokens()
        assert client.push(str(tmp_path / "pulled"), Reference(proxy.host, "token/y", "v1")) == digest
        assert len(proxy.token_requests) > pulls
        assert any("repository:token/y:pull,push" in q.get("scope", []) for q in proxy.token_requests)
        assert skopeo_inspect_raw(f"docker://{registry.host}/token/y:v1") == skopeo_inspect_raw(
            f"docker://{ref}"
        )

        # The token service refusing the credentials is an authentication failure, not retried.
        before = len(proxy.requests)
        bad = RegistryClient(proxy.host, insecure=True, credentials=Credentials("bob", "nope"), retries=4)
        with pytest.raises(RegistryError, match=r"authentication failed.*refused user 'bob'"):
            bad.manifest_digest(Reference(proxy.host, ref.repository, ref.tag))
        assert len(proxy.requests) - before <= 3


def test_real_token_auth_refreshes_expired_tokens(
    registry_factory: Any, fixtures: Path, tmp_path: Path
) -> None:
    """Debian's registry with ``auth.token``: JWTs that die before the client expects are fetched again."""
    with TokenServer(
        tmp_path / "token", users={"bob": "pw"}, refresh_tokens={"idtok": "bob"}, lifetime=2, advertised=300
    ) as tokens:
        protected = registry_factory(extra_config=tokens.registry_config())
        source = push_layout(
            fixture("images/sylabs-oci-tools/hello-world-docker-v2-manifest"),
            protected,
            "jwt/x:v1",
            creds="bob:pw",
        )
        ref = Reference.parse(source.removeprefix("docker://"))
        client = RegistryClient(protected.host, insecure=True, credentials=Credentials("bob", "pw"))
        digest = client.pull(ref, str(tmp_path / "pulled"))
        issued = len(tokens.requests)
        time.sleep(2.5)  # every token issued so far is now refused by the registry
        assert client.manifest_digest(ref) == digest
        assert len(tokens.requests) == issued + 1
        assert client.push(str(tmp_path / "pulled"), Reference.parse(f"{protected.host}/jwt/y:v1")) == digest
        assert client.last_stats.blobs_mounted == 2  # the token covered the mount's source repository too
        assert tokens.requests[-1]["scope"] == ["repository:jwt/x:pull", "repository:jwt/y:pull,push"]
        log = protected.log_text()
        assert "oci-optimizer/" in log and "invalid token" in log  # the registry did refuse the stale token

        identity = RegistryClient(protected.host, insecure=True, credentials=Credentials("<token>", "idtok"))
        assert identity.manifest_digest(ref) == digest
        assert tokens.requests[-1]["grant_type"] == ["refresh_token"]
        assert tokens.requests[-1]["scope"] == ["repository:jwt/x:pull"]

        bad = RegistryClient(protected.host, insecure=True, credentials=Credentials("bob", "wrong"))
        started = time.monotonic()
        with pytest.raises(RegistryAuthError, match="refused user 'bob'"):
            bad.pull(ref, str(tmp_path / "never"))
        assert time.monotonic() - started < 2


def test_anonymous_token_and_registry_token(
    registry: RunningRegistry, fixtures: Path, tmp_path: Path
) -> None:
    ref = _pushed(registry, fixtures, "sylabs-oci-tools/hello-world-docker-v2-manifest", None, "anon/x:v1")
    with FaultProxy(registry.host, token_auth=True) as proxy:
        client = RegistryClient(proxy.host, insecure=True, anonymous=True)
        assert client.manifest_digest(Reference(proxy.host, ref.repository, ref.tag)) is not None
        assert len(proxy.token_requests) == 1
        # A pre-issued bearer token that the registry refuses: a clear failure.
        stale = RegistryClient(proxy.host, insecure=True, credentials=Credentials("", "not-a-token"))
        with pytest.raises(RegistryError, match="rejected the configured token"):
            stale.manifest_digest(Reference(proxy.host, ref.repository, ref.tag))


# ---------------------------------------------------------------- timeouts and retries


def test_stalled_registry_times_out() -> None:
    with StallServer() as stall:
        client = RegistryClient(
            stall.host, insecure=True, anonymous=True, timeout=0.3, retries=1, backoff=0.05
        )
        started = time.monotonic()
        with pytest.raises(RegistryError, match=r"timed out after 2 attempt") as failure:
            client.manifest_digest(Reference.parse(f"{stall.host}/x/y:v1"))
        elapsed = time.monotonic() - started
        assert elapsed < 3, elapsed
        assert stall.host in str(failure.value)


def test_429_and_503_with_retry_after_are_retried(
    registry: RunningRegistry, fixtures: Path, tmp_path: Path
) -> None:
    ref = _pushed(registry, fixtures, "stereoscope/oci-layout-multiplatform", None, "retry/x:v1")
    with FaultProxy(registry.host) as proxy:
        proxy.fail(1, 429, {"Retry-After": "1"}, match=lambda m, p: "/manifests/" in p)
        proxy.fail(1, 503, {}, match=lambda m, p: "/blobs/" in p)
        client = RegistryClient(proxy.host, insecure=True, anonymous=True, backoff=0.05)
        started = time.monotonic()
        digest = client.pull(Reference(proxy.host, ref.repository, ref.tag), str(tmp_path / "pulled"))
        elapsed = time.monotonic() - started
        assert 1.0 <= elapsed < 4, elapsed  # Retry-After: 1 honoured, the 503 retried after a short backoff
        assert proxy.count(status=429) == 1 and proxy.count(status=503) == 1
        check_layout(tmp_path / "pulled")
        assert digest == client.manifest_digest(Reference(proxy.host, ref.repository, ref.tag))

        # Failures beyond the bound: an error after retries + 1 attempts, quickly.
        proxy.fail(3, 503, {"Retry-After": "0"}, match=lambda m, p: "/manifests/" in p)
        bounded = RegistryClient(proxy.host, insecure=True, anonymous=True, retries=2, backoff=0.01)
        before = proxy.count(status=503)
        with pytest.raises(RegistryError, match=r"HTTP 503 after 3 attempt"):
            bounded.manifest_digest(Reference(proxy.host, ref.repository, ref.tag))
        assert proxy.count(status=503) - before == 3

        # A Retry-After longer than we are willing to wait: fail at once rather than hang.
        proxy.fail(1, 429, {"Retry-After": "3600"})
        impatient = RegistryClient(proxy.host, insecure=True, anonymous=True, max_retry_wait=5)
        started = time.monotonic()
        with pytest.raises(RegistryError, match="retry after 3600 s"):
            impatient.manifest_digest(Reference(proxy.host, ref.repository, ref.tag))
        assert time.monotonic() - started < 1


def test_uploads_are_retried_from_the_start(registry: RunningRegistry, fixtures: Path) -> None:
    """A blob PUT answered 503 cannot be resent to the same session: the upload starts again."""
    layout = fixture("images/sylabs-oci-tools/hard-link-1")
    with FaultProxy(registry.host) as proxy:
        proxy.fail(1, 503, {"Retry-After": "0"}, match=lambda m, p: m == "PUT" and "/blobs/uploads/" in p)
        client = RegistryClient(proxy.host, insecure=True, anonymous=True, backoff=0.01)
        digest = client.push(str(layout), Reference(proxy.host, "upretry/x", "v1"))
        assert proxy.count("PUT", "/blobs/uploads/", status=503) == 1
        assert proxy.count("PUT", "/blobs/uploads/", status=201) == client.last_stats.blobs_uploaded
    raw = skopeo_inspect_raw(f"docker://{registry.host}/upretry/x:v1")
    assert digest == "sha256:" + hashlib.sha256(raw).hexdigest()


# ---------------------------------------------------------------- memory: blobs are streamed


def _big_layout(path: Path, size: int) -> Path:
    """An OCI layout whose single layer is ``size`` random bytes (the registry does not look inside)."""
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    hasher = hashlib.sha256()
    temporary = blobs / "tmp"
    with open(temporary, "wb") as out:
        remaining = size
        while remaining:
            piece = os.urandom(min(remaining, 1 << 20))
            hasher.update(piece)
            out.write(piece)
            remaining -= len(piece)
    layer = "sha256:" + hasher.hexdigest()
    temporary.rename(blobs / layer[7:])

    def add(document: dict[str, Any]) -> tuple[str, int]:
        data = json.dumps(document, sort_keys=True).encode()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        (blobs / digest[7:]).write_bytes(data)
        return digest, len(data)

    config, config_size = add(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
    )
    manifest, manifest_size = add(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": {"mediaType": mt.OCI_CONFIG, "digest": config, "size": config_size},
            "layers": [{"mediaType": mt.OCI_LAYER_GZIP, "digest": layer, "size": size}],
        }
    )
    index = {
        "schemaVersion": 2,
        "manifests": [{"mediaType": mt.OCI_MANIFEST, "digest": manifest, "size": manifest_size}],
    }
    (path / "index.json").write_text(json.dumps(index))
    (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return path


def test_blobs_are_streamed_not_held_in_memory(registry: RunningRegistry, tmp_path: Path) -> None:
    size = 24 << 20
    layout = _big_layout(tmp_path / "big", size)
    client = RegistryClient(registry.host, insecure=True, anonymous=True)
    ref = Reference.parse(f"{registry.host}/big/x:v1")
    tracemalloc.start()
    try:
        digest = client.push(str(layout), ref)
        _, push_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        assert client.pull(ref, str(tmp_path / "pulled")) == digest
        _, pull_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert client.last_stats.blobs_downloaded == 2 and size < client.last_stats.bytes_downloaded < size + 4096
    assert push_peak < 8 << 20, push_peak  # a whole-blob read would be 24 MiB
    assert pull_peak < 8 << 20, pull_peak
    for blob in (layout / "blobs" / "sha256").iterdir():
        assert (tmp_path / "pulled" / "blobs" / "sha256" / blob.name).stat().st_size == blob.stat().st_size


# ---------------------------------------------------------------- credentials


def test_credentials_from_docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "OCI_OPTIMIZER_REGISTRY_USER",
        "OCI_OPTIMIZER_REGISTRY_PASSWORD",
        "OCI_OPTIMIZER_REGISTRY_HOSTS",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    config = {
        "auths": {
            "127.0.0.1:5000": {"auth": base64.b64encode(b"user:pa:ss").decode()},
            "https://reg.example:443/v1/": {"username": "u2", "password": "p2"},
            "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:hubpw").decode()},
            "id.example": {"identitytoken": "refresh-me"},
        }
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert credentials_for("127.0.0.1:5000") == Credentials("user", "pa:ss")
    assert credentials_for("reg.example:443") == Credentials("u2", "p2")
    assert credentials_for("docker.io") == Credentials("hub", "hubpw")
    identity = credentials_for("id.example")
    assert identity is not None and identity.is_identity_token and identity.password == "refresh-me"
    assert credentials_for("127.0.0.1:5001") is None

    podman = tmp_path / "runtime" / "containers"
    podman.mkdir(parents=True)
    (podman / "auth.json").write_text(json.dumps({"auths": {"podman.example": {"auth": "cDp3"}}}))
    assert credentials_for("podman.example") == Credentials("p", "w")

    monkeypatch.setenv("OCI_OPTIMIZER_REGISTRY_USER", "envuser")
    monkeypatch.setenv("OCI_OPTIMIZER_REGISTRY_PASSWORD", "envpw")
    assert credentials_for("127.0.0.1:5000") == Credentials("envuser", "envpw")
    monkeypatch.setenv("OCI_OPTIMIZER_REGISTRY_HOSTS", "other:1, 127.0.0.1:5001")
    assert credentials_for("127.0.0.1:5000") == Credentials("user", "pa:ss")
    assert credentials_for("127.0.0.1:5001") == Credentials("envuser", "envpw")

    explicit = {"127.0.0.1:5000": {"username": "svc", "password": "svcpw"}}
    assert credentials_for("127.0.0.1:5000", explicit) == Credentials("svc", "svcpw")
    assert credentials_for(
        "127.0.0.1:5000", {"auths": {"http://127.0.0.1:5000": {"auth": "YTpi"}}}
    ) == Credentials("a", "b")
    assert "svcpw" not in repr(credentials_for("127.0.0.1:5000", explicit))


def test_registry_down_then_back_is_retried(registry_factory: Any, fixtures: Path, tmp_path: Path) -> None:
    """The registry stops (connection refused) and comes back a moment later: the pull waits and succeeds."""
    first = registry_factory()
    ref = _pushed(first, fixtures, "stereoscope/oci-layout-multiplatform", None, "down/x:v1")
    expected = "sha256:" + hashlib.sha256(skopeo_inspect_raw(f"docker://{ref}")).hexdigest()
    first.stop()
    restarted: list[RunningRegistry] = []

    def restart() -> None:
        time.sleep(1.0)
        restarted.append(registry_factory(port=first.port, storage=first.root / "storage"))

    client = RegistryClient(first.host, insecure=True, anonymous=True, retries=6, backoff=0.25)
    thread = threading.Thread(target=restart)
    thread.start()
    try:
        started = time.monotonic()
        assert client.pull(ref, str(tmp_path / "pulled")) == expected
        assert time.monotonic() - started >= 0.9
    finally:
        thread.join()
    check_layout(tmp_path / "pulled")

    restarted[0].stop()
    quick = RegistryClient(first.host, insecure=True, anonymous=True, retries=2, backoff=0.01, timeout=1)
    with pytest.raises(RegistryUnavailable, match=r"connection failed after 3 attempt"):
        quick.pull(ref, str(tmp_path / "never"))
    # Known to be up once, then down: the requests themselves retry and give up the same way.
    client.retries, client.backoff = 2, 0.01
    with pytest.raises(RegistryUnavailable, match=r"connection failed after 3 attempt"):
        client.pull(ref, str(tmp_path / "never"))


def test_credentials_from_a_credential_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``credHelpers``/``credsStore`` run ``docker-credential-NAME get`` with the server on stdin."""
    for name in ("OCI_OPTIMIZER_REGISTRY_USER", "OCI_OPTIMIZER_REGISTRY_PASSWORD", "REGISTRY_AUTH_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "runtime"))
    helper = tmp_path / "bin" / "docker-credential-fake"
    helper.parent.mkdir()
    helper.write_text(
        "#!/bin/sh\n"
        '[ "$1" = get ] || exit 2\n'
        "read server\n"
        'case "$server" in\n'
        '  helper.example) echo \'{"ServerURL":"helper.example","Username":"hu","Secret":"hs"}\' ;;\n'
        '  https://index.docker.io/v1/) echo \'{"Username":"<token>","Secret":"refresh"}\' ;;\n'
        '  *) echo "credentials not found in native keychain"; exit 1 ;;\n'
        "esac\n"
    )
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{helper.parent}:{os.environ['PATH']}")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"credHelpers": {"helper.example": "fake"}}))
    assert credentials_for("helper.example") == Credentials("hu", "hs")
    assert credentials_for("other.example") is None
    (tmp_path / "config.json").write_text(json.dumps({"auths": {"docker.io": {}}, "credsStore": "fake"}))
    hub = credentials_for("docker.io")
    assert hub is not None and hub.is_identity_token and hub.password == "refresh"
    assert credentials_for("other.example") is None
    (tmp_path / "config.json").write_text(json.dumps({"credsStore": "missing-helper"}))
    assert credentials_for("helper.example") is None


def test_pulled_oci_image_unpacks_with_umoci(
    registry: RunningRegistry, fixtures: Path, tmp_path: Path
) -> None:
    """The layout we write is one umoci accepts, and it unpacks to the same tree as the fixture itself."""
    umoci = require_tool("umoci", "umoci")
    archive = fixture("images/dive/test-oci-gzip-image.tar")
    skopeo_copy(f"oci-archive:{archive}", f"docker://{registry.host}/umoci/x:v1")
    client = RegistryClient(registry.host, insecure=True, anonymous=True)
    client.pull(Reference.parse(f"{registry.host}/umoci/x:v1"), str(tmp_path / "pulled"))
    for name, layout in (
        ("pulled", tmp_path / "pulled"),
        ("fixture", oci_layout_of(archive, tmp_path / "fx")),
    ):
        index = json.loads((layout / "index.json").read_text())
        tag = index["manifests"][0].get("annotations", {}).get("org.opencontainers.image.ref.name")
        if tag is None:
            tag = "sel"
            index["manifests"][0]["annotations"] = {"org.opencontainers.image.ref.name": tag}
            (layout / "index.json").write_text(json.dumps(index))
        done = subprocess.run(
            [umoci, "unpack", "--rootless", "--image", f"{layout}:{tag}", str(tmp_path / f"{name}-bundle")],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    pulled = tree_of(tmp_path / "pulled-bundle" / "rootfs")
    assert pulled and pulled == tree_of(tmp_path / "fixture-bundle" / "rootfs")
