"""Prometheus metrics of the service, in a registry of their own (so tests can run several services)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_PHASE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)


class _QueueCollector(Collector):
    """Reads the queue's counts at scrape time, so the gauge is never stale after a restart."""

    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("optimizer_service_jobs", "Jobs in the queue by status", labels=["status"])
        for status, count in sorted(self._counts().items()):
            family.add_metric([status], count)
        yield family


class Metrics:
    def __init__(self, counts: Callable[[], dict[str, int]] | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.hook_requests = Counter(
            "optimizer_service_hook_requests", "Webhook requests by outcome", ["outcome"], registry=r
        )
        self.events = Counter(
            "optimizer_service_events",
            "Events received, by format and what was done",
            ["format", "outcome"],
            registry=r,
        )
        self.jobs_finished = Counter(
            "optimizer_service_jobs_finished",
            "Jobs finished, by status and outcome",
            ["status", "outcome"],
            registry=r,
        )
        self.job_retries = Counter(
            "optimizer_service_job_retries", "Job attempts that will be retried", registry=r
        )
        self.phase_seconds = Histogram(
            "optimizer_service_job_phase_seconds",
            "Time per job phase",
            ["phase"],
            buckets=_PHASE_BUCKETS,
            registry=r,
        )
        self.bytes_saved = Counter(
            "optimizer_service_bytes_saved", "Bytes saved by pushed results", registry=r
        )
        if counts is not None:
            r.register(_QueueCollector(counts))

    def render(self) -> bytes:
        return generate_latest(self.registry)
