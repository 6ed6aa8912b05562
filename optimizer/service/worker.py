"""The job runner: pull by digest, optimize, push; and the threads that take jobs from the queue.

One job, in order (``Runner.run``):

1. pull the source *by digest* (the tag may have moved since the event) into ``state_dir/work/job-N/in``,
   from the registry the source is configured for (never a host named in an event);
2. loop guard: a root manifest (or every image manifest of an index) that carries
   ``ANNOTATION_SOURCE_DIGEST`` is our own output: done, ``already-optimized``;
3. ``optimize()`` it into an OCI layout with the rule's options; no layer changed means the output *is* the
   input: done, ``unchanged``, nothing is pushed;
4. if the destination already points at the result: done, ``already-present`` (a redelivered event);
5. loop guard: record every manifest digest of the result in the queue's ``pushed`` table, *then* push (the
   registry notifies us of our own push before the manifest PUT returns), with our User-Agent.

Errors: ``RegistryError`` and ``OSError`` (registry down, disk full) are retried with exponential backoff up
to ``retry.attempts``; any other error (refused credentials, a corrupt image, a policy, a bug) fails the job
at once. The job's
error names the image and the phase.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..api import ANNOTATION_SOURCE_DIGEST, optimize
from ..errors import OptimizerError, RegistryError
from ..mediatypes import INDEX_TYPES, MANIFEST_TYPES
from ..options import Options
from ..output import CompressionSpec
from ..registry import Credentials, Reference, RegistryAuthError, RegistryClient
from ..report import Report
from .config import Config, RuleOptions
from .logs import log
from .metrics import Metrics
from .queue import Job, Queue

__all__ = ["JobOutcome", "Runner", "Workers", "layout_manifests", "options_for"]

RETRYABLE: tuple[type[BaseException], ...] = (RegistryError, OSError)


class JobOutcome:
    PUSHED = "pushed"
    UNCHANGED = "unchanged"
    ALREADY_PRESENT = "already-present"
    ALREADY_OPTIMIZED = "already-optimized"


def options_for(rule: RuleOptions, workdir: Path, workers: int | None) -> Options:
    extra: dict[str, Any] = {}
    if rule.compression is not None:
        extra["compression"] = CompressionSpec.parse(rule.compression)
    return Options(
        passes=rule.passes,
        skip=rule.skip,
        pass_options=dict(rule.pass_options),
        strict=rule.strict,
        normalize=rule.normalize,
        recompress=rule.recompress,
        base_layers=rule.keep_layers or None,
        output_format="oci-dir",
        workdir=str(workdir),
        workers=workers,
        **extra,
    )


def _read_json(path: Path) -> Any:
    with open(path, "rb") as handle:
        return json.loads(handle.read())


def _blob(layout: Path, digest: str) -> Path:
    algorithm, _, hexdigest = digest.partition(":")
    return layout / "blobs" / algorithm / hexdigest


def layout_manifests(layout: Path) -> tuple[dict[str, Any], list[tuple[str, str, dict[str, Any]]]]:
    """The root descriptor of a one-image layout and every manifest under it (digest, type, document)."""
    index = _read_json(layout / "index.json")
    roots = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(roots, list) or len(roots) != 1:
        raise OptimizerError(f"{layout}: expected one root manifest in index.json")
    root: dict[str, Any] = roots[0]
    found: list[tuple[str, str, dict[str, Any]]] = []
    pending = [root]
    while pending:
        descriptor = pending.pop(0)
        digest = str(descriptor["digest"])
        document = _read_json(_blob(layout, digest))
        media_type = str(descriptor.get("mediaType") or document.get("mediaType") or "")
        found.append((digest, media_type, document))
        if media_type in INDEX_TYPES:
            pending.extend(d for d in document.get("manifests", []) if isinstance(d, dict))
    return root, found


def already_optimized(manifests: list[tuple[str, str, dict[str, Any]]]) -> bool:
    """Whether the root, or every image manifest below an index, says it is our output."""

    def marked(document: dict[str, Any]) -> bool:
        annotations = document.get("annotations")
        return isinstance(annotations, dict) and ANNOTATION_SOURCE_DIGEST in annotations

    if marked(manifests[0][2]):
        return True
    images = [doc for _, media_type, doc in manifests[1:] if media_type in MANIFEST_TYPES]
    return bool(images) and all(marked(doc) for doc in images)


class Retry(Exception):
    """Internal: this attempt failed in a way worth another try."""


class Runner:
    """Runs one job to an end state (done, failed, or queued again for a retry)."""

    def __init__(
        self,
        config: Config,
        queue: Queue,
        metrics: Metrics,
        optimize_fn: Callable[[str, str, Options], Report] = optimize,
        workers_per_job: int | None = None,
    ) -> None:
        self.config = config
        self.queue = queue
        self.metrics = metrics
        self.optimize = optimize_fn
        self.workers_per_job = workers_per_job

    def client(self, name: str) -> RegistryClient:
        registry = self.config.registries[name]
        credentials = None
        if registry.username is not None and registry.password is not None:
            credentials = Credentials(registry.username, registry.password.reveal())
        return RegistryClient(
            registry.host,
            insecure=registry.insecure,
            credentials=credentials,
            timeout=registry.timeout,
            retries=2,  # the job-level retry takes over after that, with a longer backoff
            user_agent=self.config.user_agent,
        )

    def run(self, job: Job) -> str:
        """Run ``job``; returns its new status (done, failed or queued)."""
        spec = job.spec
        fields: dict[str, Any] = {
            "job_id": job.id,
            "rule": spec.rule,
            "repository": spec.repository,
            "tag": spec.tag,
            "digest": spec.digest,
            "attempt": job.attempts,
        }
        workdir = self.config.workdir / f"job-{job.id}"
        timings: dict[str, float] = {}
        started = time.monotonic()
        phase = "starting"
        report: Report | None = None
        log(logging.INFO, "job started", **fields)
        try:
            shutil.rmtree(workdir, ignore_errors=True)
            workdir.mkdir(parents=True)
            source_registry = self.config.registries[spec.registry]
            source_ref = Reference(source_registry.host, spec.repository, None, spec.digest)

            phase = "pull"
            t = time.monotonic()
            client = self.client(spec.registry)
            pulled = client.pull(source_ref, str(workdir / "in"))
            timings["pull"] = self._phase("pull", t)
            if pulled != spec.digest:
                raise RegistryError(f"pulling {source_ref}: the registry served {pulled}")
            _, source_manifests = layout_manifests(workdir / "in")
            if already_optimized(source_manifests):
                return self._done(job, JobOutcome.ALREADY_OPTIMIZED, timings, started, None, None, fields)

            phase = "optimize"
            t = time.monotonic()
            (workdir / "tmp").mkdir()
            rule = next(r for r in self.config.rules if r.name == spec.rule)
            options = options_for(rule.options, workdir / "tmp", self.workers_per_job)
            report = self.optimize(str(workdir / "in"), str(workdir / "out"), options)
            timings["optimize"] = self._phase("optimize", t)
            root, manifests = layout_manifests(workdir / "out")
            result = str(root["digest"])
            if result == spec.digest or not report.changed:
                return self._done(job, JobOutcome.UNCHANGED, timings, started, report, None, fields)

            phase = "push"
            t = time.monotonic()
            destination = self.config.registries[spec.dest_registry]
            dest_ref = Reference(destination.host, spec.dest_repository, spec.dest_tag, None)
            dest_client = client if spec.dest_registry == spec.registry else self.client(spec.dest_registry)
            if dest_client.manifest_digest(dest_ref) == result:
                timings["push"] = self._phase("push", t)
                return self._done(job, JobOutcome.ALREADY_PRESENT, timings, started, report, result, fields)
            self.queue.record_pushed([digest for digest, _, _ in manifests], job.id, str(dest_ref))
            mount_from = spec.repository if spec.dest_registry == spec.registry else None
            pushed = dest_client.push(str(workdir / "out"), dest_ref, mount_from=mount_from)
            timings["push"] = self._phase("push", t)
            if pushed != result:
                raise RegistryError(f"pushing {dest_ref}: pushed {pushed}, expected {result}")
            self.metrics.bytes_saved.inc(max(0, report.bytes_before - report.bytes_after))
            return self._done(job, JobOutcome.PUSHED, timings, started, report, result, fields)
        except RegistryAuthError as error:  # wrong credentials do not heal with time: fail now, say why
            return self._failed(job, phase, error, timings, started, report, fields, retry=False)
        except RETRYABLE as error:
            return self._failed(job, phase, error, timings, started, report, fields, retry=True)
        except Exception as error:
            log(logging.ERROR, "job error", phase=phase, traceback=traceback.format_exc(), **fields)
            return self._failed(job, phase, error, timings, started, report, fields, retry=False)
        finally:
            if not self.config.keep_workdirs:
                shutil.rmtree(workdir, ignore_errors=True)

    def _phase(self, name: str, started: float) -> float:
        seconds = time.monotonic() - started
        self.metrics.phase_seconds.labels(name).observe(seconds)
        return round(seconds, 4)

    def _done(
        self,
        job: Job,
        outcome: str,
        timings: dict[str, float],
        started: float,
        report: Report | None,
        result: str | None,
        fields: dict[str, Any],
    ) -> str:
        timings["total"] = self._phase("total", started)
        self.queue.finish(job.id, outcome, timings, report.to_json() if report else None, result)
        self.metrics.jobs_finished.labels("done", outcome).inc()
        saved = (report.bytes_before - report.bytes_after) if report else 0
        log(
            logging.INFO,
            "job done",
            outcome=outcome,
            result=result,
            bytes_saved=saved,
            timings=timings,
            **fields,
        )
        return "done"

    def _failed(
        self,
        job: Job,
        phase: str,
        error: BaseException,
        timings: dict[str, float],
        started: float,
        report: Report | None,
        fields: dict[str, Any],
        retry: bool,
    ) -> str:
        spec = job.spec
        message = f"{phase} {spec.registry}/{spec.repository}@{spec.digest}: {type(error).__name__}: {error}"
        timings["total"] = round(time.monotonic() - started, 4)
        if retry and job.attempts < self.config.retry.attempts:
            delay = self.config.retry.delay(job.attempts)
            self.queue.retry(job.id, message, delay, timings)
            self.metrics.job_retries.inc()
            log(logging.WARNING, "job will be retried", error=message, retry_in=delay, **fields)
            return "queued"
        self.queue.fail(job.id, message, timings, report.to_json() if report else None)
        self.metrics.jobs_finished.labels("failed", "failed").inc()
        log(logging.ERROR, "job failed", error=message, **fields)
        return "failed"


def _malloc_trim() -> Callable[[], None]:
    """glibc's ``malloc_trim(0)``, or a no-op elsewhere.

    A job frees what it allocated (images are streamed, spooled to disk), but glibc keeps freed native memory
    (libarchive, zstd, zlib buffers) in per-thread arenas; without giving it back after each job, the service's
    RSS creeps up by some tens of KiB a job.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    return lambda: trim(0) and None


class Workers:
    """``concurrency`` threads, each taking the oldest due job from the queue and running it."""

    def __init__(self, queue: Queue, runner: Runner, concurrency: int, wake: threading.Event) -> None:
        self.queue = queue
        self.runner = runner
        self.concurrency = concurrency
        self.wake = wake
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.busy = 0
        self._busy_lock = threading.Lock()
        self._trim = _malloc_trim()

    def start(self) -> None:
        recovered = self.queue.recover()
        if recovered:
            log(logging.INFO, "jobs resumed after a restart", count=recovered)
        work = self.runner.config.workdir
        if work.is_dir() and not self.runner.config.keep_workdirs:
            for leftover in work.iterdir():
                shutil.rmtree(leftover, ignore_errors=True)
        for number in range(self.concurrency):
            thread = threading.Thread(target=self._loop, name=f"optimizer-worker-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, grace: float = 10.0) -> None:
        """Stop taking jobs; wait up to ``grace`` seconds for running ones (the rest resume at next start)."""
        self._stop.set()
        self.wake.set()
        deadline = time.monotonic() + grace
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                job = self.queue.claim()
            except Exception:
                log(logging.ERROR, "cannot read the queue", traceback=traceback.format_exc())
                self._stop.wait(1.0)
                continue
            if job is None:
                due = self.queue.next_due()
                wait = 1.0 if due is None else min(1.0, max(0.0, due - time.time()))
                if self.wake.wait(wait):
                    self.wake.clear()
                continue
            with self._busy_lock:
                self.busy += 1
            try:
                self.runner.run(job)
            finally:
                with self._busy_lock:
                    self.busy -= 1
                self._trim()
