"""One job, start to end: the library's ``Optimization`` with the service's checks between its steps.

1. open the source *by digest* (the tag may have moved since the event) from the registry the source is
   configured for (never a host named in an event): ``docker://HOST/REPO@DIGEST``; layers are read as the
   passes need them, and unchanged ones are mounted, never downloaded, when the result goes to that registry;
2. loop guard: a root manifest (or every image manifest of an index) that carries
   ``ANNOTATION_SOURCE_DIGEST`` is our own output: done, ``already-optimized``;
3. shared layers: the layer digests of every image manifest are recorded in the queue, and the layers another
   image of the same registry also has are kept byte-identical (``Options.protect_layers``), like a base
   image's: rewriting them would make every image that shares them pull its own copy;
4. optimize with the rule's options; nothing changed: done, ``unchanged``; a result larger than its source
   is not pushed either (``larger``) unless the rule says ``push_if_larger``;
5. if the destination already points at the result: done, ``already-present`` (a redelivered event);
6. loop guard: every manifest digest of the result is recorded in the queue's ``pushed`` table just before
   the push starts (the registry notifies us of our own push before the manifest PUT returns).

Errors: ``RegistryError`` and ``OSError`` (registry down, disk full) are retried with exponential backoff up
to ``retry.attempts``; any other error (refused credentials, a corrupt image, a policy, a bug) fails the job
at once. The job's error names the image and the phase. A lost lease stops the job at the next step, before
anything is recorded or pushed.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import threading
import time
import traceback
from collections.abc import Sequence
from typing import Any

from ..api import Optimization
from ..documents import ANNOTATION_SOURCE_DIGEST
from ..errors import RegistryError
from ..options import Options
from ..registry import Credentials, Reference, RegistryAccess, RegistryAuthError, RegistryClient
from ..report import Report
from ..tree import Node, NodeKind, iter_nodes
from .config import Config, Rule
from .logs import log
from .metrics import Metrics
from .queue import Job, LeaseLost, Queue

__all__ = ["JobOutcome", "Runner", "already_optimized", "image_layers", "options_for", "registry_access"]

RETRYABLE: tuple[type[BaseException], ...] = (RegistryError, OSError)


class JobOutcome:
    PUSHED = "pushed"
    UNCHANGED = "unchanged"
    ALREADY_PRESENT = "already-present"
    ALREADY_OPTIMIZED = "already-optimized"
    LARGER = "larger"


def options_for(rule: Options, config: Config, workdir: str, workers: int | None) -> Options:
    """A rule's options for one job: its work directory and workers, and how to reach the registries."""
    return dataclasses.replace(rule, workdir=workdir, workers=workers, registry=registry_access(config))


def registry_access(config: Config) -> RegistryAccess:
    """The configured registries: plain HTTP where their URL says so, their credentials, our User-Agent."""
    registries = list(config.registries.values())
    credentials = {
        r.host: Credentials(r.username, r.password.reveal())
        for r in registries
        if r.username is not None and r.password is not None
    }
    return RegistryAccess(
        insecure_registries=frozenset(r.host for r in registries if r.insecure),
        credentials=credentials,
        timeout=max((r.timeout for r in registries), default=30.0),
        retries=2,  # the job-level retry takes over after that, with a longer backoff
        user_agent=config.user_agent,
    )


def already_optimized(roots: Sequence[Node]) -> bool:
    """Whether the root, or every image manifest below an index, says it is our output."""

    def marked(node: Node) -> bool:
        annotations = node.document.get("annotations")
        return isinstance(annotations, dict) and ANNOTATION_SOURCE_DIGEST in annotations

    if not roots:
        return False
    if marked(roots[0]):
        return True
    images = [node for node in iter_nodes(roots) if node.kind is NodeKind.IMAGE]
    return bool(images) and all(marked(node) for node in images)


def image_layers(roots: Sequence[Node]) -> dict[str, list[str]]:
    """Image manifest digest -> its layer digests, for every image manifest of the tree."""
    return {
        node.digest: [layer.digest for layer in node.layers]
        for node in iter_nodes(roots)
        if node.kind is NodeKind.IMAGE
    }


class Runner:
    """Runs one job to an end state (done, failed, or queued again for a retry)."""

    def __init__(
        self, config: Config, queue: Queue, metrics: Metrics, workers_per_job: int | None = None
    ) -> None:
        self.config = config
        self.queue = queue
        self.metrics = metrics
        self.workers_per_job = workers_per_job

    def run(self, job: Job, lost: threading.Event | None = None) -> str:
        """Run ``job``; returns its new status (done, failed or queued), or ``lost`` when its lease was taken
        over (``lost`` is set by the heartbeat, or a fenced write was refused) and nothing more was written."""
        fields: dict[str, Any] = {
            "job_id": job.id,
            "rule": job.spec.rule,
            "repository": job.spec.repository,
            "tag": job.spec.tag,
            "digest": job.spec.digest,
            "attempt": job.attempts,
        }
        try:
            return _Attempt(self, job, lost or threading.Event(), fields).run()
        except LeaseLost as error:
            log(logging.WARNING, "job lease lost: another worker has it now", error=str(error), **fields)
            self.metrics.jobs_finished.labels("lost", "lease-lost").inc()
            return "lost"

    def client(self, name: str) -> RegistryClient:
        registry = self.config.registries[name]
        access = registry_access(self.config)
        return RegistryClient(
            registry.host,
            insecure=registry.insecure,
            credentials=access.credentials.get(registry.host),
            timeout=registry.timeout,
            retries=2,
            user_agent=self.config.user_agent,
        )


class _Attempt:
    """One attempt at a job: its phases, timings and report, and how it ends."""

    def __init__(self, runner: Runner, job: Job, lost: threading.Event, fields: dict[str, Any]) -> None:
        self.runner = runner
        self.config = runner.config
        self.queue = runner.queue
        self.metrics = runner.metrics
        self.job = job
        self.lost = lost
        self.fields = fields
        self.timings: dict[str, float] = {}
        self.started = time.monotonic()
        self.phase = "starting"
        self.report: Report | None = None
        self.shared: set[str] = set()
        self.workdir = (
            self.config.workdir / f"job-{job.id}.{job.attempts}"
        )  # a stalled attempt may still be there

    def check(self) -> None:
        if self.lost.is_set():
            raise LeaseLost(f"job {self.job.id}: the heartbeat found the lease taken over")

    def run(self) -> str:
        log(logging.INFO, "job started", **self.fields)
        try:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir.mkdir(parents=True)
            return self.optimize()
        except LeaseLost:
            raise
        except RegistryAuthError as error:  # wrong credentials do not heal with time: fail now, say why
            return self.failed(error, retry=False)
        except RETRYABLE as error:
            return self.failed(error, retry=True)
        except Exception as error:
            log(logging.ERROR, "job error", phase=self.phase, traceback=traceback.format_exc(), **self.fields)
            return self.failed(error, retry=False)
        finally:
            if not self.config.keep_workdirs:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def optimize(self) -> str:
        spec = self.job.spec
        rule = next(r for r in self.config.rules if r.name == spec.rule)
        source = Reference(self.config.registries[spec.registry].host, spec.repository, None, spec.digest)
        options = options_for(rule.options, self.config, str(self.workdir), self.runner.workers_per_job)
        self.phase = "pull"
        with Optimization(f"docker://{source}", options) as run:
            self.timed("pull")
            if run.source.root_manifests[0].digest != spec.digest:
                raise RegistryError(
                    f"pulling {source}: the registry served {run.source.root_manifests[0].digest}"
                )
            self.check()
            if already_optimized(run.tree):
                return self.done(JobOutcome.ALREADY_OPTIMIZED, None)
            images = image_layers(run.tree)
            self.shared = self.queue.shared_layers(spec.registry, images)
            self.queue.record_layers(spec.registry, spec.repository, images)
            run.options = dataclasses.replace(run.options, protect_layers=frozenset(self.shared))
            self.phase = "optimize"
            self.report = run.execute()
            self.timed("optimize")
            self.check()
            return self.publish(run, rule)

    def publish(self, run: Optimization, rule: Rule) -> str:
        spec, report = self.job.spec, self.report
        assert report is not None and run.output is not None
        result = run.output.root_digest
        if result == spec.digest or not report.changed:
            return self.done(JobOutcome.UNCHANGED, None)
        if report.bytes_after > report.bytes_before and not rule.push_if_larger:
            return self.done(JobOutcome.LARGER, None)
        self.phase = "push"
        destination = Reference(
            self.config.registries[spec.dest_registry].host, spec.dest_repository, spec.dest_tag
        )
        if self.runner.client(spec.dest_registry).manifest_digest(destination) == result:
            self.timed("push")
            return self.done(JobOutcome.ALREADY_PRESENT, result)
        self.check()

        def record(digests: list[str]) -> None:
            self.queue.record_pushed(digests, self.job, str(destination))

        run.store(f"docker://{destination}", before_push=record)
        self.timed("push")
        if report.pushed_digest != result:
            raise RegistryError(f"pushing {destination}: pushed {report.pushed_digest}, expected {result}")
        self.metrics.bytes_saved.inc(max(0, report.bytes_before - report.bytes_after))
        return self.done(JobOutcome.PUSHED, result)

    def timed(self, name: str) -> None:
        """End the phase ``name`` (its time is what passed since the last phase ended)."""
        now = time.monotonic()
        seconds = now - self.started - sum(v for k, v in self.timings.items() if k != "total")
        self.metrics.phase_seconds.labels(name).observe(seconds)
        self.timings[name] = round(seconds, 4)

    def done(self, outcome: str, result: str | None) -> str:
        self.timings["total"] = round(time.monotonic() - self.started, 4)
        self.metrics.phase_seconds.labels("total").observe(self.timings["total"])
        self.queue.finish(self.job, outcome, self.timings, _report_json(self.report, self.shared), result)
        self.metrics.jobs_finished.labels("done", outcome).inc()
        report = self.report
        saved = (report.bytes_before - report.bytes_after) if report else 0
        log(
            logging.INFO,
            "job done",
            outcome=outcome,
            result=result,
            bytes_saved=saved,
            timings=self.timings,
            shared_layers=len(self.shared),
            **self.fields,
        )
        return "done"

    def failed(self, error: BaseException, retry: bool) -> str:
        spec = self.job.spec
        message = (
            f"{self.phase} {spec.registry}/{spec.repository}@{spec.digest}: {type(error).__name__}: {error}"
        )
        self.timings["total"] = round(time.monotonic() - self.started, 4)
        if retry and self.job.attempts < self.config.retry.attempts:
            delay = self.config.retry.delay(self.job.attempts)
            self.queue.retry(self.job, message, delay, self.timings)
            self.metrics.job_retries.inc()
            log(logging.WARNING, "job will be retried", error=message, retry_in=delay, **self.fields)
            return "queued"
        self.queue.fail(self.job, message, self.timings, _report_json(self.report, None))
        self.metrics.jobs_finished.labels("failed", "failed").inc()
        log(logging.ERROR, "job failed", error=message, **self.fields)
        return "failed"


def _report_json(report: Report | None, shared: set[str] | None) -> dict[str, Any] | None:
    """The optimizer's report as the job keeps it, with the layers kept because other images share them."""
    if report is None:
        return None
    data = report.to_json()
    data["shared_layers"] = sorted(shared or ())
    return data
