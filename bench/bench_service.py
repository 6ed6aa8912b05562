"""Service benchmark (issue 7): push event -> optimized tag on loopback, and the service's memory over 100 jobs.

Starts Debian's ``docker-registry`` on a free 127.0.0.1 port, configured to notify a real service process
(``python -m optimizer.service``), then:

1. latency: ``--runs`` times, push the small bench image (``bench/out/small-image.tar``, built by
   ``bench/build_bench_image.py --only small``) with ``skopeo copy`` to a new repository. For each job, from the
   service's own records: *event -> done* (the event's arrival to the job's end, the optimized tag pushed),
   the phases (pull, optimize, push) and what the service adds beyond the optimization (event -> done minus
   the optimize phase). Also, from outside: *skopeo returned -> tag visible* (``HEAD`` polled every 5 ms).
   For comparison, the optimizer alone on the same image: ``optimize()`` timed in a fresh process.
2. memory: ``--jobs`` more jobs (synthetic distribution events for new tags of the pushed image, POSTed 10 at a
   time), sampling the RSS of the service's main process (and of its whole process tree) after every 10 jobs.

Targets: the service adds < 1 s beyond the optimization; RSS flat over 100 jobs (the last sample within
``--rss-slack`` MiB of the sample after the first 10 jobs, which includes the one-time imports and caches).

Usage: .venv/bin/python bench/bench_service.py [--runs 10] [--jobs 100] [--passes LIST] [--compression zstd]
       [--json FILE]
Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import requests
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import SMALL_IMAGE, _descendants, _rss, human  # noqa: E402

TOKEN = "bench-hook-token"
OPTIMIZE_ALONE = """
import sys, time
from optimizer import CompressionSpec, Options, optimize
passes = tuple(p for p in sys.argv[3].split(",") if p) or None
options = Options(passes=passes, output_format="oci-dir", compression=CompressionSpec.parse(sys.argv[4]),
                  recompress=True)
started = time.monotonic()
optimize(sys.argv[1], sys.argv[2], options)
print(time.monotonic() - started)
"""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=1).status_code in (200, 401):
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


def start_registry(workdir: Path, notify_port: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = {
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(workdir / "storage")}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": uuid.uuid4().hex},
        "notifications": {
            "events": {"includereferences": True},
            "endpoints": [
                {
                    "name": "bench",
                    "url": f"http://127.0.0.1:{notify_port}/hook",
                    "headers": {"Authorization": [f"Bearer {TOKEN}"]},
                    "timeout": "2s",
                    "threshold": 5,
                    "backoff": "1s",
                    "ignore": {"mediatypes": ["application/x-placeholder"], "actions": ["pull"]},
                }
            ],
        },
    }
    (workdir / "registry.yml").write_text(yaml.safe_dump(config))
    log = open(workdir / "registry.log", "wb")  # noqa: SIM115  (lives as long as the process)
    process = subprocess.Popen(
        ["docker-registry", "serve", str(workdir / "registry.yml")], stdout=log, stderr=log
    )
    host = f"127.0.0.1:{port}"
    wait_http(f"http://{host}/v2/")
    return process, host


def start_service(
    workdir: Path, port: int, registry: str, passes: list[str], compression: str
) -> subprocess.Popen[bytes]:
    config: dict[str, Any] = {
        "listen": f"127.0.0.1:{port}",
        "state_dir": str(workdir / "state"),
        "concurrency": 2,
        "registries": {"local": {"url": f"http://{registry}"}},
        "sources": {"registry": {"registry": "local", "bearer_token": TOKEN}},
        "rules": [
            {
                "name": "bench",
                "registry": "local",
                "repositories": ["*", "*/*"],
                "destination": {"tag_suffix": "-opt"},
                "options": {"passes": passes, "compression": compression, "recompress": True},
            }
        ],
        "log_level": "WARNING",
    }
    (workdir / "service.yaml").write_text(yaml.safe_dump(config))
    log = open(workdir / "service.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "optimizer.service", "--config", str(workdir / "service.yaml")],
        stdout=log,
        stderr=log,
        cwd=str(ROOT),
    )
    wait_http(f"http://127.0.0.1:{port}/healthz")
    return process


def jobs_of(service: str) -> list[dict[str, Any]]:
    return list(requests.get(f"{service}/jobs", params={"limit": 1000}, timeout=10).json()["jobs"])


def wait_done(service: str, count: int, timeout: float = 600) -> None:
    """Poll the cheap /healthz counts (not /jobs, whose listing of hundreds of reports would be measured)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = requests.get(f"{service}/healthz", timeout=10).json()["jobs"]
        if counts["queued"] == counts["running"] == 0 and counts["done"] + counts["failed"] >= count:
            return
        time.sleep(0.02)
    raise RuntimeError(f"jobs did not finish: {jobs_of(service)[:3]}")


def tree_rss(pid: int) -> tuple[int, int]:
    return _rss(pid), sum(_rss(p) for p in _descendants(pid))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument(
        "--passes",
        default="strip-elf,media,compressed-duplicates,upx",
        help="passes the rule runs (comma-separated; inject is left out: it makes small images larger)",
    )
    parser.add_argument("--compression", default="zstd", help="the rule's compression (with recompress)")
    parser.add_argument("--rss-slack", type=float, default=16.0, help="MiB of growth still called flat")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not SMALL_IMAGE.exists():
        print(f"{SMALL_IMAGE} is missing: run bench/build_bench_image.py --only small", file=sys.stderr)
        return 2
    passes = [p for p in args.passes.split(",") if p]
    results: dict[str, Any] = {"image": str(SMALL_IMAGE), "image_bytes": SMALL_IMAGE.stat().st_size}

    with tempfile.TemporaryDirectory(prefix="bench-service-") as temp:
        work = Path(temp)
        layout = work / "layout"
        with tarfile.open(SMALL_IMAGE) as tar:
            tar.extractall(layout, filter="data")
        index = json.loads((layout / "index.json").read_text())
        index["manifests"] = index["manifests"][:1]
        index["manifests"][0]["annotations"] = {"org.opencontainers.image.ref.name": "bench"}
        (layout / "index.json").write_text(json.dumps(index))

        # The optimizer alone, in a fresh process, three times (the fastest is reported).
        alone = []
        for n in range(3):
            done = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    OPTIMIZE_ALONE,
                    str(layout),
                    str(work / f"alone-{n}"),
                    ",".join(passes),
                    args.compression,
                ],
                capture_output=True,
                text=True,
                check=True,
                cwd=str(ROOT),
            )
            alone.append(float(done.stdout.strip().splitlines()[-1]))
        results["optimize_alone_seconds"] = min(alone)

        service_port = free_port()
        registry_process, registry = start_registry(work, service_port)
        service_process = start_service(work, service_port, registry, passes, args.compression)
        service = f"http://127.0.0.1:{service_port}"
        try:
            # 1. latency, event -> optimized tag
            outside = []
            for n in range(args.runs):
                subprocess.run(
                    [
                        "skopeo",
                        "copy",
                        "--quiet",
                        "--dest-tls-verify=false",
                        f"oci:{layout}:bench",
                        f"docker://{registry}/bench/r{n}:v1",
                    ],
                    check=True,
                    capture_output=True,
                )
                returned = time.monotonic()
                url = f"http://{registry}/v2/bench/r{n}/manifests/v1-opt"
                accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"
                while requests.head(url, headers={"Accept": accept}, timeout=5).status_code != 200:
                    if time.monotonic() - returned > 120:
                        raise RuntimeError(f"no optimized tag for run {n}: {jobs_of(service)[:1]}")
                    time.sleep(0.005)
                outside.append(time.monotonic() - returned)
            wait_done(service, args.runs)
            jobs = sorted(jobs_of(service), key=lambda j: j["id"])
            if any(j["outcome"] != "pushed" for j in jobs):
                raise RuntimeError(f"a job did not push: {[j['outcome'] for j in jobs]}")
            rows = []
            for job in jobs:
                timings = job["timings"]
                end_to_end = job["finished_at"] - job["created_at"]
                rows.append(
                    {
                        "event_to_done": end_to_end,
                        "queue_wait": job["started_at"] - job["created_at"],
                        "pull": timings["pull"],
                        "optimize": timings["optimize"],
                        "push": timings["push"],
                        "added": end_to_end - timings["optimize"],
                    }
                )
            report = requests.get(f"{service}/jobs/{jobs[0]['id']}", timeout=10).json()["report"]
            results["bytes_before"], results["bytes_after"] = report["bytes_before"], report["bytes_after"]
            results["latency"] = {
                key: {"median": statistics.median(r[key] for r in rows), "max": max(r[key] for r in rows)}
                for key in rows[0]
            }
            results["skopeo_returned_to_tag_visible"] = {
                "median": statistics.median(outside),
                "max": max(outside),
            }

            # 2. memory over --jobs jobs
            digest = jobs[0]["digest"]
            media_type = jobs[0]["media_type"]
            samples: list[tuple[int, int, int]] = []
            hook_seconds: list[float] = []
            base = args.runs
            for batch in range(0, args.jobs, 10):
                events = [
                    {
                        "id": str(uuid.uuid4()),
                        "action": "push",
                        "target": {
                            "mediaType": media_type,
                            "digest": digest,
                            "repository": "bench/r0",
                            "tag": f"m{batch + i}",
                        },
                        "request": {"useragent": "bench"},
                    }
                    for i in range(min(10, args.jobs - batch))
                ]
                posted = time.monotonic()
                answer = requests.post(
                    f"{service}/hook",
                    data=json.dumps({"events": events}),
                    headers={
                        "Authorization": f"Bearer {TOKEN}",
                        "Content-Type": "application/vnd.docker.distribution.events.v1+json",
                    },
                    timeout=10,
                )
                hook_seconds.append(time.monotonic() - posted)
                answer.raise_for_status()
                base += len(events)
                wait_done(service, base)
                main_rss, all_rss = tree_rss(service_process.pid)
                samples.append((base - args.runs, main_rss, all_rss))
            finished = jobs_of(service)
            results["memory_jobs"] = len(finished) - args.runs
            results["memory_failed"] = sum(1 for j in finished if j["status"] != "done")
            results["rss_samples"] = samples
            results["hook_answer_seconds"] = {
                "median": statistics.median(hook_seconds),
                "max": max(hook_seconds),
            }
        finally:
            service_process.terminate()
            service_process.wait(timeout=30)
            registry_process.terminate()
            registry_process.wait(timeout=30)

    latency = results["latency"]
    print(
        f"image: {SMALL_IMAGE.name}, {human(results['image_bytes'])} archive; passes {','.join(passes)}, "
        f"recompress {args.compression}"
    )
    print(f"  optimized: {human(results['bytes_before'])} -> {human(results['bytes_after'])}")
    print(f"latency over {args.runs} pushes (median / max, seconds):")
    for key, label in (
        ("event_to_done", "event -> optimized tag pushed"),
        ("queue_wait", "  of which waiting in the queue"),
        ("pull", "  pull by digest"),
        ("optimize", "  optimize() in the service"),
        ("push", "  push"),
        ("added", "service adds beyond optimize()"),
    ):
        print(f"  {label:<34} {latency[key]['median']:7.3f} / {latency[key]['max']:7.3f}")
    seen = results["skopeo_returned_to_tag_visible"]
    print(f"  {'skopeo returned -> tag visible':<34} {seen['median']:7.3f} / {seen['max']:7.3f}")
    print(f"  {'optimize() alone, fresh process':<34} {results['optimize_alone_seconds']:7.3f}")
    answered = results["hook_answer_seconds"]
    print(
        f"POST /hook with 10 events, answered in (median / max): {answered['median'] * 1000:.1f} ms / "
        f"{answered['max'] * 1000:.1f} ms"
    )
    print(f"memory over {results['memory_jobs']} jobs (failed: {results['memory_failed']}):")
    for jobs_done, main_rss, all_rss in results["rss_samples"]:
        print(
            f"  after {jobs_done:4d} jobs: service {human(main_rss):>10}, process tree {human(all_rss):>10}"
        )
    first, last = results["rss_samples"][0][1], results["rss_samples"][-1][1]
    growth = (last - first) / (1 << 20)
    added_ok = latency["added"]["median"] < 1.0
    flat = growth <= args.rss_slack and results["memory_failed"] == 0
    print(
        f"target: service adds < 1 s: {'met' if added_ok else 'MISSED'} ({latency['added']['median']:.3f} s)"
    )
    print(
        f"target: memory flat: {'met' if flat else 'MISSED'} ({growth:+.1f} MiB from job 10 to job {args.jobs})"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if added_ok and flat else 1


if __name__ == "__main__":
    sys.exit(main())
