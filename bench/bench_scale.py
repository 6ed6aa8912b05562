"""Scale-out benchmark (issue 13): jobs per second on PostgreSQL against 1, 2 and 4 worker processes, and what
the PostgreSQL queue adds to each job's latency compared with SQLite.

Everything is real and on 127.0.0.1: a PostgreSQL server of its own (Debian ``postgresql``, started in a
temporary directory as in the tests), Debian's ``docker-registry``, ``optimize serve`` processes. The image is
small (one layer: an unstripped ELF from the shared fixtures; strip-elf shrinks it), pushed once; jobs are
made by POSTing distribution push events for new tags of it to an HTTP replica (50 events a request), and the
workers pull it by digest, optimize it and push the result under the event's tag + ``-opt``.

1. throughput: one ``--role http`` process and W ``--role worker`` processes (``concurrency: 1`` each), W in
   ``--workers`` (1, 2, 4), a fresh database each time; ``--jobs`` jobs queued at once; jobs/s from the first
   POST to the last job done (``/healthz`` counts), and the CPU seconds the worker processes used.
   ``--delay`` holds every blob download that long in a proxy in front of the registry (a registry across a
   network: the jobs wait on I/O, as real ones mostly do); a second series runs without it (CPU-bound).
2. latency: one ``--role all`` process (``concurrency: 1``), one job at a time, ``--latency-jobs`` times, on
   SQLite and on PostgreSQL; from the service's own records, event received -> job done, and the part of it
   outside the job's own phases (queue wait, claim, heartbeat, recording the result).

Targets: throughput with 2 workers >= 1.7x that with 1 (I/O-bound series, 2 cores); PostgreSQL adds < 50 ms
per job over SQLite (median event -> done). Exit status 1 when a target is missed. Prints the load average:
the machine is shared, compare CPU seconds and repeat when it is loaded.

Usage: .venv/bin/python bench/bench_scale.py [--jobs 40] [--cpu-jobs 120] [--workers 1,2,4] [--delay 0.3]
       [--latency-jobs 20] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import fixtures_dir  # noqa: E402
from tests.registry_fixtures import RunningRegistry, free_port, push_layout, start_registry  # noqa: E402
from tests.service.conftest import TOKEN, ServiceProcess, SlowProxy, single_layout  # noqa: E402
from tests.service.postgres_server import PostgresServer  # noqa: E402

DSN_ENV = "OCI_OPTIMIZER_BENCH_DSN"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
RULE = {
    "name": "bench",
    "registry": "local",
    "repositories": ["bench/*"],
    "destination": {"tag_suffix": "-opt"},
    "options": {"passes": ["strip-elf"]},
}


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (``/proc/PID/stat``), in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def config(state: Path, registry_url: str, queue: dict[str, Any], concurrency: int = 1) -> dict[str, Any]:
    return {
        "listen": f"127.0.0.1:{free_port()}",
        "state_dir": str(state),
        "concurrency": concurrency,
        "registries": {"local": {"url": registry_url, "timeout": 30}},
        "sources": {"registry": {"registry": "local", "bearer_token": TOKEN}},
        "rules": [RULE],
        "queue": queue,
        "log_level": "WARNING",
    }


def post_events(url: str, digest: str, tags: list[str]) -> None:
    for start in range(0, len(tags), 50):
        events = [
            {
                "id": str(uuid.uuid4()),
                "action": "push",
                "target": {"mediaType": MANIFEST, "digest": digest, "repository": "bench/app", "tag": tag},
                "request": {"useragent": "bench"},
            }
            for tag in tags[start : start + 50]
        ]
        answer = requests.post(
            f"{url}/hook",
            data=json.dumps({"events": events}),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            timeout=30,
        )
        answer.raise_for_status()


def wait_done(url: str, count: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = requests.get(f"{url}/healthz", timeout=10).json()["jobs"]
        if counts["queued"] == counts["running"] == 0 and counts["done"] + counts["failed"] >= count:
            if counts["failed"]:
                raise RuntimeError(f"{counts['failed']} jobs failed")
            return
        time.sleep(0.01)
    raise RuntimeError(f"jobs not done after {timeout} s")


@contextmanager
def processes(*started: ServiceProcess) -> Iterator[None]:
    try:
        yield
    finally:
        for process in started:
            process.stop()


def throughput(
    work: Path, server: PostgresServer, registry_url: str, digest: str, workers: int, jobs: int
) -> dict[str, float]:
    dsn = server.create_database(f"b_{uuid.uuid4().hex[:12]}")
    queue = {"backend": "postgres", "dsn": {"env": DSN_ENV}}
    env = {DSN_ENV: dsn}
    run = work / f"run-{uuid.uuid4().hex[:8]}"
    http = ServiceProcess(run / "http", config(run / "http" / "state", registry_url, queue), "http", env)
    backs = [
        ServiceProcess(run / f"w{n}", config(run / f"w{n}" / "state", registry_url, queue), "worker", env)
        for n in range(workers)
    ]
    with processes(http, *backs):
        for process in (http, *backs):
            process.start()
        before = sum(cpu_seconds(p.process.pid) for p in backs if p.process)
        started = time.monotonic()
        post_events(http.url, digest, [f"w{workers}-{n}" for n in range(jobs)])
        wait_done(http.url, jobs)
        seconds = time.monotonic() - started
        cpu = sum(cpu_seconds(p.process.pid) for p in backs if p.process) - before
    return {"seconds": seconds, "jobs_per_second": jobs / seconds, "worker_cpu_seconds": cpu}


def latency(
    work: Path, registry_url: str, digest: str, queue: dict[str, Any], env: dict[str, str], runs: int
) -> dict[str, float]:
    run = work / f"latency-{uuid.uuid4().hex[:8]}"
    service = ServiceProcess(run, config(run / "state", registry_url, queue), "all", env)
    with processes(service):
        service.start()
        post_events(service.url, digest, ["warm-up"])  # imports and first connections are not measured
        wait_done(service.url, 1)
        for n in range(runs):
            post_events(service.url, digest, [f"l{n}"])
            wait_done(service.url, n + 2)
        jobs = requests.get(f"{service.url}/jobs", params={"limit": 1000}, timeout=10).json()["jobs"]
    measured = [j for j in jobs if j["tag"] != "warm-up"]
    to_done = [j["finished_at"] - j["created_at"] for j in measured]
    outside = [j["finished_at"] - j["created_at"] - j["timings"]["total"] for j in measured]
    return {"event_to_done": statistics.median(to_done), "outside_phases": statistics.median(outside)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=40, help="jobs per I/O-bound run")
    parser.add_argument("--cpu-jobs", type=int, default=120, help="jobs per CPU-bound run")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--delay", type=float, default=0.3, help="seconds each blob download is held")
    parser.add_argument("--latency-jobs", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.workers.split(",")]
    results: dict[str, Any] = {"load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as temp:
        work = Path(temp)
        server = PostgresServer.start()
        registry: RunningRegistry = start_registry(work / "registry")
        try:
            layout = single_layout(fixtures_dir(), work / "image")
            push_layout(layout, registry, "bench/app:seed")
            digest = requests.head(
                f"{registry.url}/v2/bench/app/manifests/seed", headers={"Accept": MANIFEST}, timeout=10
            ).headers["Docker-Content-Digest"]
            with SlowProxy(registry.host, args.delay) as proxy:
                results["io_bound"] = {
                    n: throughput(work, server, f"http://{proxy.host}", digest, n, args.jobs) for n in counts
                }
            results["cpu_bound"] = {
                n: throughput(work, server, registry.url, digest, n, args.cpu_jobs) for n in counts
            }
            dsn = server.create_database("latency")
            results["latency"] = {
                "sqlite": latency(work, registry.url, digest, {"backend": "sqlite"}, {}, args.latency_jobs),
                "postgres": latency(
                    work,
                    registry.url,
                    digest,
                    {"backend": "postgres", "dsn": {"env": DSN_ENV}},
                    {DSN_ENV: dsn},
                    args.latency_jobs,
                ),
            }
        finally:
            registry.stop()
            server.close()
    results["load_after"] = os.getloadavg()

    print(
        f"load average before {results['load_before']}, after {results['load_after']} ({os.cpu_count()} cores)"
    )
    for series, label, jobs in (
        ("io_bound", f"I/O-bound (blob downloads held {args.delay} s)", args.jobs),
        ("cpu_bound", "CPU-bound", args.cpu_jobs),
    ):
        rows = results[series]
        base = rows[counts[0]]["jobs_per_second"]
        print(f"throughput, {jobs} jobs, {label}:")
        for n in counts:
            row = rows[n]
            print(
                f"  {n} worker process(es): {row['jobs_per_second']:6.2f} jobs/s ({row['jobs_per_second'] / base:4.2f}x),"
                f" {row['seconds']:6.2f} s, worker CPU {row['worker_cpu_seconds']:6.2f} s"
                f" ({1000 * row['worker_cpu_seconds'] / jobs:5.0f} ms/job)"
            )
    sqlite, postgres = results["latency"]["sqlite"], results["latency"]["postgres"]
    added = postgres["event_to_done"] - sqlite["event_to_done"]
    print(f"latency, one job at a time, {args.latency_jobs} jobs (median):")
    for name, row in (("sqlite", sqlite), ("postgres", postgres)):
        print(
            f"  {name:<9} event -> done {1000 * row['event_to_done']:7.1f} ms,"
            f" outside the job's phases {1000 * row['outside_phases']:6.1f} ms"
        )
    io = results["io_bound"]
    ratio = io[2]["jobs_per_second"] / io[1]["jobs_per_second"] if 1 in io and 2 in io else None
    scaled = ratio is not None and ratio >= 1.7
    fast = added < 0.050
    print(
        f"target: 2 workers >= 1.7x 1 worker (I/O-bound): {'met' if scaled else 'MISSED'} ({ratio or 0:.2f}x)"
    )
    print(f"target: PostgreSQL adds < 50 ms per job: {'met' if fast else 'MISSED'} ({1000 * added:+.1f} ms)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if scaled and fast else 1


if __name__ == "__main__":
    sys.exit(main())
