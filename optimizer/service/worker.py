"""The job runner: pull by digest, optimize, push; and the threads that take jobs from the queue.

One job, in order (``Runner.run``):

1. pull the source *by digest* (the tag may have moved since the event) into ``state_dir/work/job-N/in``,
   from the registry the source is configured for (never a host named in an event);
2. loop guard: a root manifest (or every image manifest of an index) that carries
   ``ANNOTATION_SOURCE_DIGEST`` is our own output: done, ``already-optimized``;
3. shared layers: the layer digests of every image manifest pulled are recorded in the queue, and the layers
   another image of the same registry also has are kept byte-identical (``Options.protect_layers``), like a
   base image's: rewriting them would make every image that shares them pull its own copy;
4. ``optimize()`` it into an OCI layout with the rule's options; no layer changed means the output *is* the
   input: done, ``unchanged``; a result larger than its source is not pushed either (``larger``) unless the
   rule says ``push_if_larger``;
5. if the destination already points at the result: done, ``already-present`` (a redelivered event);
6. loop guard: record every manifest digest of the result in the queue's ``pushed`` table, *then* push (the
   registry notifies us of our own push before the manifest PUT returns), with our User-Agent.

Errors: ``RegistryError`` and ``OSError`` (registry down, disk full) are retried with exponential backoff up
to ``retry.attempts``; any other error (refused credentials, a corrupt image, a policy, a bug) fails the job
at once. The job's error names the image and the phase.

Leases: a job is claimed with a lease that ``Leases`` renews every ``queue.heartbeat_seconds``. When a renewal
finds the lease gone (this process stalled past it and another worker took the job), the runner stops at the
next phase boundary, before recording or pushing anything, and writes nothing: the job belongs to the other
worker now (the queue refuses this attempt's writes anyway).
"""

from __future__ import annotations

import dataclasses
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
from ..registry import Credentials, Reference, RegistryAuthError, RegistryClient
from ..report import Report
from .config import Config
from .logs import log
from .metrics import Metrics
from .queue import Job, LeaseLost, Queue

__all__ = ["JobOutcome", "Leases", "Runner", "Workers", "image_layers", "layout_manifests", "options_for"]

RETRYABLE: tuple[type[BaseException], ...] = (RegistryError, OSError)


class JobOutcome:
    PUSHED = "pushed"
    UNCHANGED = "unchanged"
    ALREADY_PRESENT = "already-present"
    ALREADY_OPTIMIZED = "already-optimized"
    LARGER = "larger"


def options_for(
    rule: Options, workdir: Path, workers: int | None, protect_layers: frozenset[str] = frozenset()
) -> Options:
    """A rule's options for one job: its work directory, its workers, and the layers other images share."""
    return dataclasses.replace(
        rule,
        output_format="oci-dir",
        workdir=str(workdir),
        workers=workers,
        protect_layers=rule.protect_layers | protect_layers,
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


def image_layers(manifests: list[tuple[str, str, dict[str, Any]]]) -> dict[str, list[str]]:
    """Image manifest digest -> its layer digests, for every image manifest of a layout."""
    found: dict[str, list[str]] = {}
    for digest, media_type, document in manifests:
        layers = document.get("layers")
        if media_type in MANIFEST_TYPES and isinstance(layers, list):
            found[digest] = [str(layer["digest"]) for layer in layers if isinstance(layer, dict)]
    return found


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
            return self._run(job, lost or threading.Event(), fields)
        except LeaseLost as error:
            log(logging.WARNING, "job lease lost: another worker has it now", error=str(error), **fields)
            self.metrics.jobs_finished.labels("lost", "lease-lost").inc()
            return "lost"

    def _run(self, job: Job, lost: threading.Event, fields: dict[str, Any]) -> str:
        spec = job.spec
        workdir = self.config.workdir / f"job-{job.id}.{job.attempts}"  # a stalled attempt may still be there
        timings: dict[str, float] = {}
        started = time.monotonic()
        phase = "starting"
        report: Report | None = None
        shared: set[str] = set()
        log(logging.INFO, "job started", **fields)

        def check() -> None:
            if lost.is_set():
                raise LeaseLost(f"job {job.id}: the heartbeat found the lease taken over")

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
            check()
            if already_optimized(source_manifests):
                return self._done(job, JobOutcome.ALREADY_OPTIMIZED, timings, started, None, None, fields)
            images = image_layers(source_manifests)
            shared = self.queue.shared_layers(spec.registry, images)
            self.queue.record_layers(spec.registry, spec.repository, images)

            phase = "optimize"
            t = time.monotonic()
            (workdir / "tmp").mkdir()
            rule = next(r for r in self.config.rules if r.name == spec.rule)
            options = options_for(rule.options, workdir / "tmp", self.workers_per_job, frozenset(shared))
            report = self.optimize(str(workdir / "in"), str(workdir / "out"), options)
            timings["optimize"] = self._phase("optimize", t)
            check()
            root, manifests = layout_manifests(workdir / "out")
            result = str(root["digest"])
            if result == spec.digest or not report.changed:
                return self._done(job, JobOutcome.UNCHANGED, timings, started, report, None, fields, shared)
            if report.bytes_after > report.bytes_before and not rule.push_if_larger:
                return self._done(job, JobOutcome.LARGER, timings, started, report, None, fields, shared)

            phase = "push"
            t = time.monotonic()
            destination = self.config.registries[spec.dest_registry]
            dest_ref = Reference(destination.host, spec.dest_repository, spec.dest_tag, None)
            dest_client = client if spec.dest_registry == spec.registry else self.client(spec.dest_registry)
            if dest_client.manifest_digest(dest_ref) == result:
                timings["push"] = self._phase("push", t)
                return self._done(
                    job, JobOutcome.ALREADY_PRESENT, timings, started, report, result, fields, shared
                )
            check()
            self.queue.record_pushed([digest for digest, _, _ in manifests], job, str(dest_ref))
            mount_from = spec.repository if spec.dest_registry == spec.registry else None
            pushed = dest_client.push(str(workdir / "out"), dest_ref, mount_from=mount_from)
            timings["push"] = self._phase("push", t)
            if pushed != result:
                raise RegistryError(f"pushing {dest_ref}: pushed {pushed}, expected {result}")
            self.metrics.bytes_saved.inc(max(0, report.bytes_before - report.bytes_after))
            return self._done(job, JobOutcome.PUSHED, timings, started, report, result, fields, shared)
        except LeaseLost:
            raise
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
        shared: set[str] | None = None,
    ) -> str:
        timings["total"] = self._phase("total", started)
        self.queue.finish(job, outcome, timings, _report_json(report, shared), result)
        self.metrics.jobs_finished.labels("done", outcome).inc()
        saved = (report.bytes_before - report.bytes_after) if report else 0
        log(
            logging.INFO,
            "job done",
            outcome=outcome,
            result=result,
            bytes_saved=saved,
            timings=timings,
            shared_layers=len(shared or ()),
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
            self.queue.retry(job, message, delay, timings)
            self.metrics.job_retries.inc()
            log(logging.WARNING, "job will be retried", error=message, retry_in=delay, **fields)
            return "queued"
        self.queue.fail(job, message, timings, _report_json(report, None))
        self.metrics.jobs_finished.labels("failed", "failed").inc()
        log(logging.ERROR, "job failed", error=message, **fields)
        return "failed"


def _report_json(report: Report | None, shared: set[str] | None) -> dict[str, Any] | None:
    """The optimizer's report as the job keeps it, with the layers kept because other images share them."""
    if report is None:
        return None
    data = report.to_json()
    data["shared_layers"] = sorted(shared or ())
    return data


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


class Leases:
    """The leases of the jobs this process runs, renewed by one thread every ``heartbeat`` seconds.

    A renewal the queue refuses means another worker took the job over: its ``lost`` event is set and the
    runner stops. A renewal that fails (the database unreachable) is tried again every second until it goes
    through: the lease is still ours unless someone claimed the job meanwhile, which the next renewal tells.
    """

    def __init__(self, queue: Queue, heartbeat: float) -> None:
        self.queue = queue
        self.heartbeat = heartbeat
        self._held: dict[int, tuple[Job, threading.Event]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="optimizer-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def hold(self, job: Job) -> threading.Event:
        lost = threading.Event()
        with self._lock:
            self._held[job.id] = (job, lost)
        return lost

    def release(self, job: Job) -> None:
        with self._lock:
            self._held.pop(job.id, None)

    def renew_all(self) -> bool:
        """Renew every held lease once; False when the queue could not be reached for one of them."""
        with self._lock:
            held = list(self._held.values())
        reached = True
        for job, lost in held:
            try:
                if not self.queue.renew(job):
                    lost.set()
                    log(logging.WARNING, "job lease lost at renewal", job_id=job.id, attempt=job.attempts)
            except Exception as error:
                reached = False
                log(logging.WARNING, "cannot renew a job lease", job_id=job.id, error=str(error))
        return reached

    def _loop(self) -> None:
        wait = self.heartbeat
        while not self._stop.wait(wait):
            wait = self.heartbeat if self.renew_all() else min(1.0, self.heartbeat)


class Workers:
    """``concurrency`` threads, each taking the oldest due job from the queue and running it, one heartbeat
    thread renewing their leases, and (PostgreSQL) one thread listening for work queued elsewhere."""

    POLL_SECONDS = 1.0  # an idle worker looks at the queue at least this often

    def __init__(
        self,
        queue: Queue,
        runner: Runner,
        concurrency: int,
        wake: threading.Event,
        heartbeat: float | None = None,
    ) -> None:
        self.queue = queue
        self.runner = runner
        self.concurrency = concurrency
        self.wake = wake
        self.leases = Leases(queue, heartbeat or runner.config.queue.heartbeat_seconds)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.busy = 0
        self._busy_lock = threading.Lock()
        self._trim = _malloc_trim()

    def start(self) -> None:
        recovered = self.queue.recover()
        if recovered:
            log(logging.INFO, "jobs resumed after a restart", count=recovered)
        self._remove_leftovers()
        self.leases.start()
        listener = threading.Thread(
            target=self.queue.listen, args=(self.wake, self._stop), name="optimizer-listen", daemon=True
        )
        listener.start()
        self._threads.append(listener)
        for number in range(self.concurrency):
            thread = threading.Thread(target=self._loop, name=f"optimizer-worker-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _remove_leftovers(self) -> None:
        """Remove the job folders a killed process left, but not those of jobs another live process runs
        (worker processes of one machine may share ``state_dir``)."""
        work = self.runner.config.workdir
        if not work.is_dir() or self.runner.config.keep_workdirs:
            return
        for leftover in work.iterdir():
            number = leftover.name.removeprefix("job-").partition(".")[0]
            job = self.queue.get(int(number)) if number.isdigit() and len(number) < 19 else None
            if job is None or job.status != "running":
                shutil.rmtree(leftover, ignore_errors=True)

    def stop(self, grace: float = 10.0) -> None:
        """Stop taking jobs; wait up to ``grace`` seconds for running ones (the rest resume at next start)."""
        self._stop.set()
        self.wake.set()
        deadline = time.monotonic() + grace
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.leases.stop()

    def _idle(self) -> None:
        """Wait for work: until the next job is due, a wake-up, or the poll interval."""
        due = self.queue.next_due()
        now = time.time()
        # A due job we could not claim is held back by a registry's limit (or another worker won it): a
        # finishing job wakes us, else the poll interval.
        wait = self.POLL_SECONDS if due is None or due <= now else min(self.POLL_SECONDS, due - now)
        if self.wake.wait(wait):
            self.wake.clear()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                job = self.queue.claim()
                if job is None:
                    self._idle()
                    continue
            except Exception:
                log(logging.ERROR, "cannot read the queue", traceback=traceback.format_exc())
                self._stop.wait(1.0)
                continue
            with self._busy_lock:
                self.busy += 1
            lost = self.leases.hold(job)
            try:
                self.runner.run(job, lost)
            except Exception:  # the queue unreachable for longer than a worker waits: the lease will expire
                log(logging.ERROR, "job result not recorded", job_id=job.id, traceback=traceback.format_exc())
            finally:
                self.leases.release(job)
                with self._busy_lock:
                    self.busy -= 1
                self.wake.set()  # a slot of a limited registry may be free: let idle threads look again
                self._trim()
