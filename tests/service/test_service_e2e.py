"""End to end, with real components on 127.0.0.1: Debian's docker-registry notifying the service (a real
``python -m optimizer.service`` process), images pushed with ``skopeo copy``, results read back with
``skopeo inspect`` and unpacked with ``umoci``."""

from __future__ import annotations

import hashlib
import json
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from optimizer import ANNOTATION_SOURCE_DIGEST
from tests.conftest import fixture, require_tool
from tests.registry_fixtures import FaultProxy, RunningRegistry, free_port, push_layout, skopeo_inspect_raw
from tests.service.conftest import (
    RULE,
    TOKEN,
    ServiceProcess,
    hook,
    layered_layout,
    multi_layout,
    service_config,
    single_layout,
)

pytestmark = pytest.mark.slow

Factory = Callable[..., Any]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def inspect_config(reference: str, creds: str | None = None) -> dict[str, Any]:
    command = [require_tool("skopeo", "skopeo"), "inspect", "--config", "--tls-verify=false"]
    if creds:
        command.append(f"--creds={creds}")
    done = subprocess.run([*command, reference], capture_output=True, check=True)
    return dict(json.loads(done.stdout))


def layer_bytes(manifest: dict[str, Any]) -> int:
    return sum(int(layer["size"]) for layer in manifest["layers"])


def start_pair(
    registry_factory: Factory,
    service_factory: Factory,
    tmp_path: Path,
    *,
    rules: list[dict[str, Any]] | None = None,
    registries: dict[str, dict[str, Any]] | None = None,
    htpasswd: dict[str, str] | None = None,
    notify_token: str = TOKEN,
    **extra: Any,
) -> tuple[RunningRegistry, ServiceProcess]:
    """A registry that notifies a service, and the service, configured for that registry."""
    port = free_port()
    registry = registry_factory(
        notify_url=f"http://127.0.0.1:{port}/hook", notify_token=notify_token, htpasswd=htpasswd
    )
    local: dict[str, Any] = {"url": registry.url}
    if htpasswd:
        user, password = next(iter(htpasswd.items()))
        local["credentials"] = {"username": user, "password": password}
    config = service_config(
        tmp_path / "state", {"local": local, **(registries or {})}, rules or [RULE], port=port, **extra
    )
    return registry, service_factory(config)


def pushed_events_ignored(service: ServiceProcess, tag: str) -> list[dict[str, Any]]:
    return [r for r in service.log_records() if r.get("msg") == "event ignored" and r.get("tag") == tag]


def test_single_platform_image_is_optimized_and_loop_guarded(
    registry_factory: Factory, service_factory: Factory, tmp_path: Path, fixtures: Path
) -> None:
    registry, service = start_pair(registry_factory, service_factory, tmp_path)
    layout = single_layout(fixtures, tmp_path / "image")
    push_layout(layout, registry, "team/app:v1")
    source_raw = skopeo_inspect_raw(f"docker://{registry.host}/team/app:v1")
    (job,) = service.settled(1)
    assert (job["status"], job["outcome"], job["digest"]) == ("done", "pushed", sha256(source_raw))

    result_raw = skopeo_inspect_raw(f"docker://{registry.host}/team/app:v1-opt")
    assert sha256(result_raw) == job["result_digest"]
    source, result = json.loads(source_raw), json.loads(result_raw)
    assert result["annotations"][ANNOTATION_SOURCE_DIGEST] == sha256(source_raw)
    assert layer_bytes(result) < layer_bytes(source)
    before = inspect_config(f"docker://{registry.host}/team/app:v1")
    after = inspect_config(f"docker://{registry.host}/team/app:v1-opt")
    assert (after["os"], after["architecture"]) == (before["os"], before["architecture"])

    detail = service.job(job["id"])
    assert detail["report"]["changed"] and detail["report"]["bytes_after"] < detail["report"]["bytes_before"]
    assert set(detail["timings"]) >= {"pull", "optimize", "push", "total"}

    # The optimized push's own event arrives and is ignored: no second job, ever.
    deadline = time.monotonic() + 10
    while not pushed_events_ignored(service, "v1-opt") and time.monotonic() < deadline:
        time.sleep(0.1)
    (ignored,) = pushed_events_ignored(service, "v1-opt")
    assert ignored["reason"] in ("pushed by this service (user agent)", "pushed by this service (digest)")
    time.sleep(1.0)
    assert len(service.jobs()) == 1

    # Pull the result back and unpack it: the program is there, smaller, and the job logs carry the job id.
    umoci = require_tool("umoci", "umoci")
    subprocess.run(
        [
            require_tool("skopeo", "skopeo"),
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            f"docker://{registry.host}/team/app:v1-opt",
            f"oci:{tmp_path / 'back'}:v1",
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [umoci, "unpack", "--image", f"{tmp_path / 'back'}:v1", str(tmp_path / "bundle")], check=True
    )
    app = tmp_path / "bundle" / "rootfs" / "usr" / "bin" / "app"
    original = fixture("elf/dwarfv5_basic.elf").read_bytes()
    assert app.exists() and 0 < app.stat().st_size < len(original)
    assert app.read_bytes()[:4] == b"\x7fELF"
    done_lines = [r for r in service.log_records() if r.get("msg") == "job done"]
    assert [r["job_id"] for r in done_lines] == [job["id"]]


def test_multi_platform_index_keeps_its_platforms(
    registry_factory: Factory, service_factory: Factory, tmp_path: Path, fixtures: Path
) -> None:
    registry, service = start_pair(registry_factory, service_factory, tmp_path)
    push_layout(multi_layout(fixtures, tmp_path / "multi"), registry, "team/multi:v1")
    (job,) = service.settled(1)
    assert (job["status"], job["outcome"]) == ("done", "pushed")
    source = json.loads(skopeo_inspect_raw(f"docker://{registry.host}/team/multi:v1"))
    result = json.loads(skopeo_inspect_raw(f"docker://{registry.host}/team/multi:v1-opt"))
    assert [m["platform"] for m in result["manifests"]] == [m["platform"] for m in source["manifests"]]
    for old, new in zip(source["manifests"], result["manifests"], strict=True):
        old_child = json.loads(skopeo_inspect_raw(f"docker://{registry.host}/team/multi@{old['digest']}"))
        new_child = json.loads(skopeo_inspect_raw(f"docker://{registry.host}/team/multi@{new['digest']}"))
        assert new_child["annotations"][ANNOTATION_SOURCE_DIGEST] == old["digest"]
        assert layer_bytes(new_child) <= layer_bytes(old_child)
    time.sleep(1.0)
    assert len(service.jobs()) == 1  # neither the children nor the optimized index made a job


def test_htpasswd_registry(
    registry_factory: Factory, service_factory: Factory, tmp_path: Path, fixtures: Path
) -> None:
    users = {"bot": "s3cret-pass"}
    registry, service = start_pair(registry_factory, service_factory, tmp_path, htpasswd=users)
    push_layout(single_layout(fixtures, tmp_path / "image"), registry, "team/private:1.0")
    (job,) = service.settled(1)
    assert (job["status"], job["outcome"]) == ("done", "pushed"), job
    creds = "bot:s3cret-pass"
    result = json.loads(skopeo_inspect_raw(f"docker://{registry.host}/team/private:1.0-opt", creds=creds))
    assert ANNOTATION_SOURCE_DIGEST in result["annotations"]
    assert "s3cret-pass" not in service.log_text()


def test_same_tag_and_annotation_guards(
    registry_factory: Factory, service_factory: Factory, tmp_path: Path, fixtures: Path
) -> None:
    rule = dict(RULE, destination={"same_tag": True})
    registry, service = start_pair(registry_factory, service_factory, tmp_path, rules=[rule])
    push_layout(single_layout(fixtures, tmp_path / "image"), registry, "team/app:v1")
    (job,) = service.settled(1)
    assert job["outcome"] == "pushed"
    now = skopeo_inspect_raw(f"docker://{registry.host}/team/app:v1")
    assert sha256(now) == job["result_digest"]  # the tag moved to the optimized image
    time.sleep(1.0)
    assert len(service.jobs()) == 1

    # A second service knows nothing of the first one's pushes: the annotation alone stops it.
    port = free_port()
    other_registry = registry_factory(notify_url=f"http://127.0.0.1:{port}/hook", notify_token=TOKEN)
    config = service_config(
        tmp_path / "state2",
        {"local": {"url": other_registry.url}},
        [RULE],
        port=port,
        user_agent="other-agent/1",
    )
    other = service_factory(config, tmp_path / "service-other")
    subprocess.run(
        [
            require_tool("skopeo", "skopeo"),
            "copy",
            "--quiet",
            "--preserve-digests",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            f"docker://{registry.host}/team/app:v1",
            f"docker://{other_registry.host}/team/app:copied",
        ],
        check=True,
        capture_output=True,
    )
    (copied,) = other.settled(1)
    assert (copied["status"], copied["outcome"], copied["result_digest"]) == (
        "done",
        "already-optimized",
        None,
    )


def test_burst_of_50_pushes(
    registry_factory: Factory, service_factory: Factory, tmp_path: Path, fixtures: Path
) -> None:
    registry, service = start_pair(registry_factory, service_factory, tmp_path, concurrency=3)
    layouts = [single_layout(fixtures, tmp_path / f"image-{n}", tag="v1", salt=str(n)) for n in range(50)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: push_layout(layouts[n], registry, f"team/app:t{n}"), range(50)))
    jobs = service.settled(50, timeout=120)
    assert len(jobs) == 50
    assert sorted(j["tag"] for j in jobs) == sorted(f"t{n}" for n in range(50))
    assert all((j["status"], j["outcome"]) == ("done", "pushed") for j in jobs)
    assert len({j["digest"] for j in jobs}) == 50
    # The registry redelivers nothing new, and replaying events (same ids) changes nothing.
    time.sleep(1.5)
    assert len(service.jobs()) == 50
    for n in (0, 17, 49):
        raw = skopeo_inspect_raw(f"docker://{registry.host}/team/app:t{n}-opt")
        assert ANNOTATION_SOURCE_DIGEST in json.loads(raw)["annotations"]


def test_destination_down_mid_job_is_retried_then_done(
    registry_factory: Factory, service_factory: Factory, tmp_path: Path, fixtures: Path
) -> None:
    mirror = registry_factory()
    mirror_port, mirror_storage = mirror.port, mirror.root / "storage"
    mirror.stop()  # down before the job starts: pull and optimize succeed, the push fails
    rule = dict(RULE, destination={"registry": "mirror", "repository": "{repository}", "tag": "{tag}"})
    registry, service = start_pair(
        registry_factory,
        service_factory,
        tmp_path,
        rules=[rule],
        registries={"mirror": {"url": mirror.url, "timeout": 2}},
        retry={"attempts": 8, "backoff_seconds": 0.5, "max_backoff_seconds": 1},
    )
    push_layout(single_layout(fixtures, tmp_path / "image"), registry, "team/app:v1")
    failing = service.wait_for(
        lambda jobs: bool(jobs) and jobs[0]["attempts"] >= 1 and bool(jobs[0]["error"]),
        60,
        "a failed attempt",
    )[0]
    assert failing["status"] in ("queued", "running") and failing["error"].startswith("push ")
    from tests.registry_fixtures import start_registry

    restarted = start_registry(tmp_path / "mirror-again", port=mirror_port, storage=mirror_storage)
    try:
        (job,) = service.settled(1, timeout=60)
        assert (job["status"], job["outcome"]) == ("done", "pushed") and job["attempts"] >= 2
        result = json.loads(skopeo_inspect_raw(f"docker://{restarted.host}/team/app:v1"))
        assert ANNOTATION_SOURCE_DIGEST in result["annotations"]
    finally:
        restarted.stop()


def test_a_job_that_keeps_failing_ends_failed_with_its_error(
    registry_factory: Factory, service_factory: Factory, tmp_path: Path, fixtures: Path
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    rule = dict(RULE, destination={"registry": "dead", "repository": "{repository}", "tag": "{tag}"})
    registry, service = start_pair(
        registry_factory,
        service_factory,
        tmp_path,
        rules=[rule],
        registries={"dead": {"url": dead, "timeout": 1}},
        retry={"attempts": 2, "backoff_seconds": 0.2},
    )
    push_layout(single_layout(fixtures, tmp_path / "image"), registry, "team/app:v1")
    (job,) = service.settled(1, timeout=60)
    assert (job["status"], job["attempts"]) == ("failed", 2)
    assert job["error"].startswith("push local/team/app@") and "Connection refused" in job["error"]
    metrics = requests.get(f"{service.url}/metrics", timeout=5).text
    assert 'optimizer_service_jobs_finished_total{outcome="failed",status="failed"} 1.0' in metrics


def test_service_killed_mid_queue_resumes_after_restart(
    registry_factory: Factory, service_factory: Factory, tmp_path: Path, fixtures: Path
) -> None:
    port = free_port()
    registry = registry_factory(notify_url=f"http://127.0.0.1:{port}/hook", notify_token=TOKEN)
    release = threading.Event()
    # The service reaches the registry through a proxy that holds every request until released: the first
    # job stays "running" (stuck in its pull) and the others "queued" when the service is killed.
    with FaultProxy(registry.host) as proxy:
        proxy.fail(1, 599, match=lambda method, path: not release.wait(60))
        config = service_config(
            tmp_path / "state",
            {"local": {"url": f"http://{proxy.host}", "timeout": 60}},
            [RULE],
            port=port,
            concurrency=1,
        )
        service = ServiceProcess(tmp_path / "service", config).start()
        try:
            for n in range(3):
                push_layout(
                    single_layout(fixtures, tmp_path / f"image-{n}", salt=str(n)), registry, f"team/app:k{n}"
                )
            service.wait_for(
                lambda jobs: (
                    len(jobs) == 3 and sorted(j["status"] for j in jobs) == ["queued", "queued", "running"]
                ),
                30,
                "one running and two queued jobs",
            )
            service.kill()
            release.set()
            service.start()
            jobs = service.settled(3, timeout=60)
            assert all((j["status"], j["outcome"]) == ("done", "pushed") for j in jobs), jobs
            assert max(j["attempts"] for j in jobs) == 2  # the interrupted one ran again
            assert any(r.get("msg") == "jobs resumed after a restart" for r in service.log_records())
            for n in range(3):
                skopeo_inspect_raw(f"docker://{registry.host}/team/app:k{n}-opt")
        finally:
            release.set()
            service.stop()


def test_wrong_token_gets_401_and_no_job(
    registry_factory: Factory, service_factory: Factory, tmp_path: Path, fixtures: Path
) -> None:
    registry, service = start_pair(registry_factory, service_factory, tmp_path, notify_token="not-the-token")
    push_layout(single_layout(fixtures, tmp_path / "image"), registry, "team/app:v1")
    deadline = time.monotonic() + 10
    while not any(r.get("msg") == "webhook refused" for r in service.log_records()):
        assert time.monotonic() < deadline, service.log_text()[-2000:]
        time.sleep(0.1)
    assert service.jobs() == []
    refused = [r for r in service.log_records() if r.get("msg") == "webhook refused"]
    assert refused[0]["reason"] == "bearer token does not match any source"
    assert "not-the-token" not in service.log_text() and TOKEN not in service.log_text()


def test_malformed_bodies_on_the_running_service(
    registry_factory: Factory, service_factory: Factory, tmp_path: Path
) -> None:
    _, service = start_pair(registry_factory, service_factory, tmp_path)
    for body in (b"{", b'{"events": [1]}', b"\x00" * 10, b'{"a": 1, "a": 2}'):
        assert hook(service.url, body).status_code == 400
    assert hook(service.url, b'{"events": []}').status_code == 202
    assert hook(service.url, b"[" * (2 << 20)).status_code == 413
    assert service.jobs() == []
    assert requests.get(f"{service.url}/healthz", timeout=5).json()["status"] == "ok"


def test_refused_registry_credentials_fail_at_once(
    registry_factory: Factory, service_factory: Factory, tmp_path: Path, fixtures: Path
) -> None:
    port = free_port()
    registry = registry_factory(
        notify_url=f"http://127.0.0.1:{port}/hook", notify_token=TOKEN, htpasswd={"bot": "right-password"}
    )
    local = {"url": registry.url, "credentials": {"username": "bot", "password": "wrong-password"}}
    service = service_factory(service_config(tmp_path / "state", {"local": local}, [RULE], port=port))
    push_layout(
        single_layout(fixtures, tmp_path / "image"), registry, "team/app:v1", creds="bot:right-password"
    )
    (job,) = service.settled(1)
    assert (job["status"], job["attempts"]) == ("failed", 1)
    assert job["error"].startswith("pull ") and "RegistryAuthError" in job["error"]
    assert "wrong-password" not in service.log_text() and "right-password" not in service.log_text()


def test_a_layer_other_images_share_is_kept_byte_identical(
    registry_factory: Factory, service_factory: Factory, tmp_path: Path, fixtures: Path
) -> None:
    # base: none, so that only the registry's sharing protects a layer (no detected base does)
    rule = dict(RULE, repositories=["team/*", "other/*"], options={"passes": ["strip-elf"], "base": "none"})
    registry, service = start_pair(registry_factory, service_factory, tmp_path, rules=[rule])
    first = layered_layout(fixtures, tmp_path / "first", salt="first")
    push_layout(first, registry, "team/first:v1")
    (job_a,) = service.settled(1)
    source_a = json.loads(skopeo_inspect_raw(f"docker://{registry.host}/team/first:v1"))
    result_a = json.loads(skopeo_inspect_raw(f"docker://{registry.host}/team/first:v1-opt"))
    base = source_a["layers"][0]["digest"]
    # Alone in the registry, the base layer is the first image's own: strip-elf rewrites it.
    assert job_a["outcome"] == "pushed" and result_a["layers"][0]["digest"] != base
    assert service.job(job_a["id"])["report"]["shared_layers"] == []

    push_layout(layered_layout(fixtures, tmp_path / "second", salt="second"), registry, "other/second:v1")
    jobs = service.settled(2)
    (job_b,) = [j for j in jobs if j["repository"] == "other/second"]
    source_b = json.loads(skopeo_inspect_raw(f"docker://{registry.host}/other/second:v1"))
    result_b = json.loads(skopeo_inspect_raw(f"docker://{registry.host}/other/second:v1-opt"))
    assert source_b["layers"][0]["digest"] == base  # the two images share their base
    assert job_b["outcome"] == "pushed"
    assert result_b["layers"][0]["digest"] == base  # kept: both images keep pulling one copy
    assert result_b["layers"][1]["digest"] != source_b["layers"][1]["digest"]  # its own layer was optimized
    report = service.job(job_b["id"])["report"]
    assert report["shared_layers"] == [base]
    assert report["options"]["protect_layers"] == [base]
    assert report["images"][0]["layers"][0]["status"] == "kept"


def test_an_image_the_optimizer_only_grows_is_not_pushed(
    registry_factory: Factory, service_factory: Factory, tmp_path: Path, fixtures: Path
) -> None:
    # Adds CA certificates, zones and passwd to an image that has none (and nothing needing them: unneeded).
    grow = {"passes": ["inject"], "pass_options": {"inject": {"needed_only": False}}}
    rules = [
        dict(RULE, name="grows", repositories=["team/*"], options=grow),
        dict(RULE, name="wanted", repositories=["certs/*"], options=grow, push_if_larger=True),
    ]
    registry, service = start_pair(registry_factory, service_factory, tmp_path, rules=rules)
    layout = single_layout(fixtures, tmp_path / "image")
    push_layout(layout, registry, "team/app:v1")
    push_layout(layout, registry, "certs/app:v1")
    jobs = {j["rule"]: j for j in service.settled(2)}
    assert (jobs["grows"]["status"], jobs["grows"]["outcome"], jobs["grows"]["result_digest"]) == (
        "done",
        "larger",
        None,
    )
    report = service.job(jobs["grows"]["id"])["report"]
    assert report["bytes_after"] > report["bytes_before"]
    answer = requests.head(
        f"{registry.url}/v2/team/app/manifests/v1-opt",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        timeout=5,
    )
    assert answer.status_code == 404
    assert jobs["wanted"]["outcome"] == "pushed"  # the rule asked for it
    assert skopeo_inspect_raw(f"docker://{registry.host}/certs/app:v1-opt")


def test_missed_notifications_are_caught_up_by_reconcile(
    registry_factory: Factory, service_factory: Factory, tmp_path: Path, fixtures: Path
) -> None:
    registry = registry_factory()  # notifies nobody: every event is lost
    push_layout(single_layout(fixtures, tmp_path / "image-1", salt="1"), registry, "team/app:v1")
    push_layout(single_layout(fixtures, tmp_path / "image-x", salt="x"), registry, "elsewhere/app:v1")
    reconcile = {"interval_seconds": 1, "repositories": {"local": ["team/app", "team/never-pushed"]}}
    config = service_config(tmp_path / "state", {"local": {"url": registry.url}}, [RULE], reconcile=reconcile)
    service = service_factory(config)
    (job,) = service.settled(1, timeout=60)
    assert (job["status"], job["outcome"], job["event_format"], job["tag"]) == (
        "done",
        "pushed",
        "reconcile",
        "v1",
    )
    assert skopeo_inspect_raw(f"docker://{registry.host}/team/app:v1-opt")
    time.sleep(2.5)  # more passes: the handled tag and our own -opt tag make no job
    assert len(service.jobs()) == 1
    passes = [r for r in service.log_records() if r.get("msg") == "reconcile done"]
    assert len(passes) >= 2 and passes[-1]["tags"] == 2 and passes[-1]["job_ids"] == []
    push_layout(single_layout(fixtures, tmp_path / "image-2", salt="2"), registry, "team/app:v2")
    jobs = service.settled(2, timeout=60)
    assert sorted(j["tag"] for j in jobs) == ["v1", "v2"] and all(j["outcome"] == "pushed" for j in jobs)
