"""Scale-out on PostgreSQL, with real processes: ``optimize serve --role http`` replicas that Debian's registry
notifies, ``--role worker`` processes that run the jobs, one real PostgreSQL server, small images.

Every test reads the outcome from the service (``/jobs``) and from the workers' own logs (what each process
really started and finished), never from the database the service writes alone.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.registry_fixtures import RunningRegistry, free_port, push_layout, skopeo_inspect_raw
from tests.service.conftest import RULE, TOKEN, ServiceProcess, SlowProxy, service_config, single_layout
from tests.service.postgres_server import PostgresServer

pytestmark = pytest.mark.slow

Factory = Callable[..., Any]
DSN_ENV = "OCI_OPTIMIZER_TEST_DSN"


def _endpoint(name: str, port: int) -> dict[str, Any]:
    return {
        "name": name,
        "url": f"http://127.0.0.1:{port}/hook",
        "headers": {"Authorization": [f"Bearer {TOKEN}"]},
        "timeout": "2s",
        "threshold": 5,
        "backoff": "1s",
        "ignore": {"mediatypes": ["application/x-placeholder"], "actions": ["pull"]},
    }


@dataclass
class Fleet:
    registry: RunningRegistry
    http: list[ServiceProcess]
    workers: list[ServiceProcess]
    proxy: SlowProxy | None = None

    @property
    def front(self) -> ServiceProcess:
        return self.http[0]

    def worker_records(self, message: str) -> list[dict[str, Any]]:
        return [r for w in self.workers for r in w.log_records() if r.get("msg") == message]

    def assert_done_once(self, jobs: list[dict[str, Any]], killed: int = 0) -> None:
        """From the workers' own logs: each job finished once in all processes together, and started once
        per attempt, each attempt but the last ending in a retry after an error (a registry answering 500
        under load) or in a worker that was killed (``killed`` attempts in all): never two at once."""
        done = Counter(r["job_id"] for r in self.worker_records("job done"))
        started = Counter(r["job_id"] for r in self.worker_records("job started"))
        retried = Counter(r["job_id"] for r in self.worker_records("job will be retried"))
        assert set(done) == {j["id"] for j in jobs} and set(done.values()) == {1}, done
        assert all(started[j["id"]] == j["attempts"] for j in jobs)
        assert sum(j["attempts"] - 1 - retried[j["id"]] for j in jobs) == killed
        assert not self.worker_records("job lease lost: another worker has it now")

    def worker_of(self, owner: str) -> ServiceProcess:
        pid = int(owner.split(" ")[2])
        (found,) = [w for w in self.workers if w.process is not None and w.process.pid == pid]
        return found


def start_fleet(
    registry_factory: Factory,
    service_factory: Factory,
    tmp_path: Path,
    dsn: str,
    *,
    http: int = 1,
    workers: int = 3,
    queue: dict[str, Any] | None = None,
    delay: float = 0.0,
    limit: int | None = None,
    concurrency: int = 2,
) -> Fleet:
    """A registry notifying ``http`` HTTP replicas (every event goes to each of them), ``workers`` worker
    processes reaching the registry through a ``SlowProxy`` holding blob downloads ``delay`` seconds."""
    ports = [free_port() for _ in range(http)]
    notifications = {
        "events": {"includereferences": True},
        "endpoints": [_endpoint(f"optimizer-{n}", port) for n, port in enumerate(ports)],
    }
    registry = registry_factory(extra_config={"notifications": notifications})
    proxy = SlowProxy(registry.host, delay) if delay else None
    local: dict[str, Any] = {"url": f"http://{proxy.host}" if proxy else registry.url, "timeout": 20}
    if limit is not None:
        local["max_concurrent_jobs"] = limit
    settings = {"backend": "postgres", "dsn": {"env": DSN_ENV}, **(queue or {})}
    env = {DSN_ENV: dsn}

    def config(name: str, port: int | None = None) -> dict[str, Any]:
        return service_config(
            tmp_path / name / "state",
            {"local": local},
            [RULE],
            port=port,
            queue=settings,
            concurrency=concurrency,
        )

    fronts = [
        service_factory(config(f"http-{n}", port), tmp_path / f"http-{n}", role="http", env=env)
        for n, port in enumerate(ports)
    ]
    with ThreadPoolExecutor(workers) as pool:
        backs = list(
            pool.map(
                lambda n: service_factory(config(f"worker-{n}"), tmp_path / f"worker-{n}", "worker", env),
                range(workers),
            )
        )
    return Fleet(registry, fronts, backs, proxy)


def put_tags(registry: RunningRegistry, repository: str, source_tag: str, tags: list[str]) -> None:
    """Tag an image already in the registry under more names (a manifest PUT each: one push event each)."""
    raw = skopeo_inspect_raw(f"docker://{registry.host}/{repository}:{source_tag}")
    media_type = json.loads(raw)["mediaType"]

    def put(tag: str) -> None:
        answer = requests.put(
            f"{registry.url}/v2/{repository}/manifests/{tag}",
            data=raw,
            headers={"Content-Type": media_type},
            timeout=30,
        )
        assert answer.status_code == 201, answer.text

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, tags))


def registry_tags(registry: RunningRegistry, repository: str) -> set[str]:
    answer = requests.get(f"{registry.url}/v2/{repository}/tags/list", params={"n": 10000}, timeout=10)
    answer.raise_for_status()
    return set(answer.json()["tags"])


def test_burst_of_200_events_on_two_http_replicas_and_three_workers(
    registry_factory: Factory, service_factory: Factory, tmp_path: Path, fixtures: Path, postgres_dsn: str
) -> None:
    fleet = start_fleet(registry_factory, service_factory, tmp_path, postgres_dsn, http=2, workers=3)
    push_layout(single_layout(fixtures, tmp_path / "image"), fleet.registry, "team/app:seed")
    tags = [f"t{n}" for n in range(200)]
    started = time.monotonic()
    put_tags(fleet.registry, "team/app", "seed", tags)
    jobs = fleet.front.settled(201, timeout=120)
    elapsed = time.monotonic() - started
    assert len(jobs) == 201, jobs[:3]
    assert sorted(j["tag"] for j in jobs) == sorted([*tags, "seed"])
    assert all((j["status"], j["outcome"]) == ("done", "pushed") for j in jobs), [
        j for j in jobs if (j["status"], j["outcome"]) != ("done", "pushed")
    ][:3]
    # Exactly once, from the workers' side: one finish per job in all processes together, and one start per
    # attempt, where an attempt after the first is a retry after a registry error (the registry answers 500
    # now and then under this load), never a job taken from a live worker.
    fleet.assert_done_once(jobs)
    assert all(any(r.get("msg") == "job done" for r in w.log_records()) for w in fleet.workers)
    # Every event reached both replicas: each of the 201 pushes was recorded once and refused once as seen.
    decided = Counter(
        r["msg"] for h in fleet.http for r in h.log_records() if str(r.get("msg", "")).startswith("event ")
    )
    assert decided["event queued"] == 201, decided
    assert decided["event duplicate"] == 201, decided
    assert {f"{t}-opt" for t in tags} <= registry_tags(fleet.registry, "team/app")
    print(f"200 events -> 201 jobs done in {elapsed:.1f} s")


def test_a_killed_worker_and_a_job_longer_than_its_lease(
    registry_factory: Factory, service_factory: Factory, tmp_path: Path, fixtures: Path, postgres_dsn: str
) -> None:
    lease = {"lease_seconds": 2, "heartbeat_seconds": 0.5}
    fleet = start_fleet(
        registry_factory, service_factory, tmp_path, postgres_dsn, workers=3, queue=lease, delay=3.0
    )
    # 1. A job that runs longer than its lease (its blobs held 3 s, plus the work) while the
    #    heartbeat renews it: no other worker ever starts it.
    push_layout(single_layout(fixtures, tmp_path / "long", salt="long"), fleet.registry, "team/long:v1")
    (job,) = fleet.front.settled(1, timeout=60)
    assert (job["status"], job["outcome"]) == ("done", "pushed")
    assert job["timings"]["total"] > lease["lease_seconds"] + 0.5
    fleet.assert_done_once([job])

    # 2. SIGKILL of the worker running a job, mid-pull: after the lease, another worker runs it; it is
    #    finished and pushed once.
    push_layout(single_layout(fixtures, tmp_path / "killed", salt="killed"), fleet.registry, "team/killed:v1")
    running = fleet.front.wait_for(
        lambda jobs: any(j["tag"] == "v1" and j["repository"] == "team/killed" and j["owner"] for j in jobs),
        30,
        "the second job running",
    )
    (victim_job,) = [j for j in running if j["repository"] == "team/killed"]
    victim = fleet.worker_of(victim_job["owner"])
    time.sleep(0.5)  # mid-pull: the first blob is being held
    victim.kill()
    jobs = fleet.front.settled(2, timeout=60)
    (second,) = [j for j in jobs if j["repository"] == "team/killed"]
    assert (second["status"], second["outcome"]) == ("done", "pushed") and second["attempts"] >= 2
    mine = [r.get("msg") for r in victim.log_records() if r.get("job_id") == second["id"]]
    assert "job started" in mine and "job done" not in mine
    fleet.assert_done_once(jobs, killed=1)
    assert skopeo_inspect_raw(f"docker://{fleet.registry.host}/team/killed:v1-opt")
    assert fleet.front.job(second["id"])["result_digest"]


def test_a_registry_limit_of_two_holds_across_the_fleet(
    registry_factory: Factory, service_factory: Factory, tmp_path: Path, fixtures: Path, postgres_dsn: str
) -> None:
    fleet = start_fleet(
        registry_factory, service_factory, tmp_path, postgres_dsn, workers=3, delay=0.4, limit=2
    )
    push_layout(single_layout(fixtures, tmp_path / "image"), fleet.registry, "team/app:seed")
    fleet.front.settled(1, timeout=60)
    put_tags(fleet.registry, "team/app", "seed", [f"l{n}" for n in range(12)])
    jobs = fleet.front.settled(13, timeout=120)
    assert all(j["status"] == "done" for j in jobs)
    # How many jobs ran at once: from the database's records (claim to finish), and from the workers' own
    # (each attempt's start, plus the time it measured itself: inside the claim, so never more).
    assert peak([(j["started_at"], j["finished_at"]) for j in jobs]) == 2
    spans = []
    for worker in fleet.workers:
        begun: dict[int, float] = {}
        for record in worker.log_records():
            if record.get("msg") == "job started":
                begun[record["job_id"]] = _seconds(record["ts"])
            elif record.get("msg") == "job done":
                spans.append((begun[record["job_id"]], begun[record["job_id"]] + record["timings"]["total"]))
    assert len(spans) == 13
    # 1 ms: the resolution of the log timestamps
    assert peak([(start + 0.001, end - 0.001) for start, end in spans]) == 2
    assert (
        len(
            {w.process.pid for w in fleet.workers if any(r.get("msg") == "job done" for r in w.log_records())}
        )
        >= 2
    )


def peak(spans: list[tuple[float, float]]) -> int:
    """The most spans open at one time (a span ending when another starts does not overlap it)."""
    level, most = 0, 0
    for _, step in sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans]):
        level += step
        most = max(most, level)
    return most


def _seconds(stamp: str) -> float:
    """A log line's ``ts`` (``2024-01-02T03:04:05.678Z``) as seconds since the epoch."""
    import calendar

    whole, _, fraction = stamp.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + int(fraction or 0) / 1000


def test_postgres_killed_and_restarted_loses_nothing(
    registry_factory: Factory,
    service_factory: Factory,
    tmp_path: Path,
    fixtures: Path,
    postgres_server: PostgresServer,
    postgres_dsn: str,
) -> None:
    fleet = start_fleet(
        registry_factory,
        service_factory,
        tmp_path,
        postgres_dsn,
        workers=2,
        delay=0.5,
        queue={"lease_seconds": 30, "heartbeat_seconds": 2},
    )
    layouts = [single_layout(fixtures, tmp_path / f"image-{n}", salt=str(n)) for n in range(8)]
    for n in range(4):
        push_layout(layouts[n], fleet.registry, f"team/app:a{n}")
    fleet.front.wait_for(lambda jobs: any(j["status"] == "running" for j in jobs), 30, "a running job")
    postgres_server.crash()  # connections cut mid-job, no shutdown checkpoint
    try:
        down = requests.get(f"{fleet.front.url}/healthz", timeout=10)
        assert down.status_code == 503
        for n in range(4, 8):  # the registry's events get 503 now: it keeps them and delivers them again
            push_layout(layouts[n], fleet.registry, f"team/app:a{n}")
        time.sleep(2)
    finally:
        postgres_server.restart()
    jobs = fleet.front.settled(8, timeout=120)
    assert sorted(j["tag"] for j in jobs) == [f"a{n}" for n in range(8)]
    assert all((j["status"], j["outcome"]) == ("done", "pushed") for j in jobs), jobs
    fleet.assert_done_once(jobs)
    refused = [r for r in fleet.front.log_records() if r.get("msg") == "queue unavailable"]
    assert refused, "no webhook met the database down"
    assert requests.get(f"{fleet.front.url}/healthz", timeout=10).json()["status"] == "ok"
    for process in (*fleet.http, *fleet.workers):
        assert postgres_server.password not in process.log_text()
