"""The job queue: what the HTTP side and the workers share, behind one ``Queue`` protocol with two backends.

    queue = open_queue(config)      # SqliteQueue (default: one file, no server) or PostgresQueue (a fleet)

Neither the webhook handler nor the workers know which backend they have; one contract test suite
(``tests/service/test_queue.py``) runs against both.

What the queue holds: jobs (one per unit of work: status, attempts, timings, report), the event ids seen (a
redelivered event makes no second job), the manifest digests this service pushed (recorded *before* the
manifest PUT: a loop guard), the layer digests of every source image seen (``record_layers``: which layers
other images share) and fleet-wide singleton leases (``hold``: one replica runs the periodic reconcile).

De-duplication: an event id already seen (per source) is dropped; a job is keyed by rule, source digest and
destination, and while a job with that key is queued or running, another event for it joins it instead of
making a second job. A later event with a new id for a finished key is a new push and makes a new job.

Leases: ``claim`` marks a job running for one worker with a fresh random token and an expiry
``lease_seconds`` ahead; the worker renews it (``renew``) every ``heartbeat_seconds``. Every later write of the
job's state (``finish``, ``retry``, ``fail``, ``record_pushed``) names the token and is refused with
``LeaseLost`` once another claim has replaced it (fencing): a worker that stalled past its lease cannot
overwrite the work of the worker that took the job over. A running job whose lease expired is claimed again
(its interrupted attempt counts; with no attempts left it ends ``failed``). At start-up (``recover``) a worker
only takes back jobs whose owner is a process of this host that no longer exists; a job another live
process holds stays with it. ``max_concurrent_jobs`` of a registry bounds the running jobs that pull from or
push to it, across every process sharing the queue.

Statuses: ``queued`` -> ``running`` -> ``done`` | ``failed`` (and back to ``queued`` for a retry).
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..errors import OptimizerError

__all__ = [
    "MAX_JOB_ID",
    "STATUSES",
    "Job",
    "JobSpec",
    "LeaseLost",
    "Owner",
    "Queue",
    "QueueSettings",
    "QueueUnavailable",
    "SubmitResult",
    "open_queue",
]

STATUSES = ("queued", "running", "done", "failed")
ACTIVE = ("queued", "running")
MAX_JOB_ID = (1 << 63) - 1  # job ids are signed 64-bit integers in both backends
MAX_EVENT_IDS = 50  # event ids kept per job (a job joined by thousands of redeliveries keeps the first ones)


class LeaseLost(Exception):
    """This worker's claim on a job was replaced by another one: it must not write the job's state."""


class QueueUnavailable(OptimizerError):
    """The queue's database cannot be reached (PostgreSQL down or restarting): try again later."""


@dataclass(frozen=True)
class JobSpec:
    """What one (event, rule) pair asks for."""

    rule: str
    source: str
    event_format: str
    registry: str
    repository: str
    tag: str
    digest: str
    media_type: str | None
    dest_registry: str
    dest_repository: str
    dest_tag: str

    @property
    def dedupe_key(self) -> str:
        return "\x1f".join(
            (self.rule, self.registry, self.digest, self.dest_registry, self.dest_repository, self.dest_tag)
        )


@dataclass(frozen=True)
class Job:
    id: int
    spec: JobSpec
    status: str
    attempts: int
    duplicates: int
    event_ids: tuple[str, ...]
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    next_attempt_at: float
    error: str | None
    outcome: str | None
    result_digest: str | None
    timings: dict[str, float]
    report: dict[str, Any] | None
    lease: str | None = None  # the current claim's token (only the claimer is handed it)
    owner: str | None = None  # the process holding the claim: "host boot-id pid start-time"
    lease_expires_at: float | None = None

    def to_json(self, with_report: bool = True) -> dict[str, Any]:
        s = self.spec
        running = self.status == "running"
        data: dict[str, Any] = {
            "id": self.id,
            "status": self.status,
            "outcome": self.outcome,
            "rule": s.rule,
            "source": s.source,
            "event_format": s.event_format,
            "event_ids": list(self.event_ids),
            "duplicates": self.duplicates,
            "source_ref": f"{s.registry}/{s.repository}:{s.tag}@{s.digest}",
            "registry": s.registry,
            "repository": s.repository,
            "tag": s.tag,
            "digest": s.digest,
            "media_type": s.media_type,
            "destination": f"{s.dest_registry}/{s.dest_repository}:{s.dest_tag}",
            "result_digest": self.result_digest,
            "attempts": self.attempts,
            "error": self.error,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "next_attempt_at": self.next_attempt_at if self.status == "queued" else None,
            "owner": self.owner if running else None,
            "lease_expires_at": self.lease_expires_at if running else None,
            "timings": self.timings,
        }
        if with_report:
            data["report"] = self.report
        return data


@dataclass(frozen=True)
class SubmitResult:
    duplicate_event: bool  # the event id was seen before: nothing was done
    created: tuple[int, ...]  # new jobs
    joined: tuple[int, ...]  # existing active jobs this event joined


@dataclass(frozen=True)
class QueueSettings:
    """How claims behave; the same for every backend."""

    lease_seconds: float = 120.0
    max_attempts: int = 5  # an expired lease on the last attempt ends the job failed
    registry_limits: Mapping[str, int] | None = None  # registry name -> most running jobs touching it


@dataclass(frozen=True)
class Owner:
    """The process that holds a claim, precise enough to tell, on its own host, whether it still runs.

    ``start`` is the process's start time in clock ticks since boot (``/proc/PID/stat``) so that a recycled
    pid, or pid 1 of a restarted container with the same host name, is not mistaken for the old process.
    """

    host: str
    boot: str
    pid: int
    start: str

    def __str__(self) -> str:
        return f"{self.host} {self.boot} {self.pid} {self.start}"

    @classmethod
    def parse(cls, text: str) -> Owner | None:
        parts = text.split(" ")
        if len(parts) != 4 or not parts[2].isdigit():
            return None
        return cls(parts[0], parts[1], int(parts[2]), parts[3])

    @classmethod
    def current(cls) -> Owner:
        pid = os.getpid()
        return cls(socket.gethostname() or "-", _boot_id(), pid, _start_time(pid) or "-")

    def is_gone(self, here: Owner) -> bool:
        """True only when this owner is provably not running: same host and boot, and no such process."""
        if self.host != here.host or self.boot != here.boot or self.boot == "-":
            return False  # another machine (or unknown): only its lease expiring tells
        started = _start_time(self.pid)
        return started is None or started != self.start


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return handle.read().strip() or "-"
    except OSError:
        return "-"


def _start_time(pid: int) -> str | None:
    """Field 22 of ``/proc/PID/stat`` (after the parenthesised command name, which may hold spaces)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else None


def owner_gone(owner: str | None, here: Owner) -> bool:
    """Whether the process recorded as a running job's owner is provably gone (see ``Owner.is_gone``)."""
    if owner is None:
        return True  # claimed before owners were recorded: by a service that has since stopped
    parsed = Owner.parse(owner)
    return parsed is not None and parsed.is_gone(here)


class Row(Protocol):
    """A result row of either backend (``sqlite3.Row``, psycopg's dict rows)."""

    def __getitem__(self, key: str) -> Any: ...


def job_from_row(row: Row, with_report: bool = True) -> Job:
    """A ``Job`` from a row of either backend (same column names, JSON kept as text)."""
    spec = JobSpec(
        rule=row["rule"],
        source=row["source"],
        event_format=row["event_format"],
        registry=row["registry"],
        repository=row["repository"],
        tag=row["tag"],
        digest=row["digest"],
        media_type=row["media_type"],
        dest_registry=row["dest_registry"],
        dest_repository=row["dest_repository"],
        dest_tag=row["dest_tag"],
    )
    return Job(
        id=int(row["id"]),
        spec=spec,
        status=row["status"],
        attempts=row["attempts"],
        duplicates=row["duplicates"],
        event_ids=tuple(json.loads(row["event_ids"])),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        next_attempt_at=row["next_attempt_at"],
        error=row["error"],
        outcome=row["outcome"],
        result_digest=row["result_digest"],
        timings=json.loads(row["timings"]) if row["timings"] else {},
        report=json.loads(row["report"]) if with_report and row["report"] else None,
        lease=None,  # never read back: only ``claim`` hands the token to its claimer
        owner=row["lease_owner"],
        lease_expires_at=row["lease_expires_at"],
    )


SUMMARY_COLUMNS = (
    "id, rule, source, event_format, event_ids, registry, repository, tag, digest, media_type, dest_registry,"
    " dest_repository, dest_tag, status, attempts, duplicates, created_at, updated_at, started_at, finished_at,"
    " next_attempt_at, error, outcome, result_digest, timings, NULL AS report, lease_owner, lease_expires_at"
)
INSERT_COLUMNS = (
    "dedupe_key, rule, source, event_format, event_ids, registry, repository, tag, digest, media_type,"
    " dest_registry, dest_repository, dest_tag, created_at, updated_at, next_attempt_at"
)


def insert_values(spec: JobSpec, event_id: str | None, now: float) -> tuple[Any, ...]:
    return (
        spec.dedupe_key,
        spec.rule,
        spec.source,
        spec.event_format,
        json.dumps([event_id] if event_id else []),
        spec.registry,
        spec.repository,
        spec.tag,
        spec.digest,
        spec.media_type,
        spec.dest_registry,
        spec.dest_repository,
        spec.dest_tag,
        now,
        now,
        now,
    )


def joined_event_ids(current: str, event_id: str | None) -> str:
    ids = json.loads(current)
    if event_id is not None and len(ids) < MAX_EVENT_IDS:
        ids.append(event_id)
    return json.dumps(ids)


def full_registries(running: Sequence[tuple[str, str]], limits: Mapping[str, int] | None) -> set[str]:
    """Registries at their limit, from the (source, destination) registries of the jobs holding live leases."""
    if not limits:
        return set()
    counts: dict[str, int] = {}
    for source, destination in running:
        for name in {source, destination}:
            counts[name] = counts.get(name, 0) + 1
    return {name for name, limit in limits.items() if counts.get(name, 0) >= limit}


def touches(spec_registry: str, spec_dest: str, registries: set[str]) -> bool:
    return spec_registry in registries or spec_dest in registries


def encode(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


class Queue(Protocol):
    """What the HTTP side and the workers use; ``SqliteQueue`` and ``PostgresQueue`` implement it."""

    backend: str  # "sqlite" or "postgres"
    owner: Owner  # the claims this process makes carry it

    def close(self) -> None: ...

    # intake (the HTTP side)
    def submit(self, source: str, event_id: str | None, specs: Sequence[JobSpec]) -> SubmitResult: ...

    def submit_many(
        self, items: Sequence[tuple[str, str | None, Sequence[JobSpec]]]
    ) -> list[SubmitResult]: ...

    def known_keys(self, keys: Sequence[str]) -> set[str]:
        """The de-duplication keys among ``keys`` that have a job, whatever its status."""
        ...

    def was_pushed(self, digest: str) -> bool: ...

    # claims (the workers)
    def recover(self) -> int:
        """Queue again the running jobs of processes of this host that are gone; returns how many."""
        ...

    def claim(self) -> Job | None:
        """Take the oldest due job (or a running one whose lease expired) and lease it to this process."""
        ...

    def renew(self, job: Job) -> bool:
        """Extend the job's lease; False when the lease is no longer this claim's (the job was taken over)."""
        ...

    def next_due(self) -> float | None: ...

    def listen(self, wake: threading.Event, stop: threading.Event) -> None:
        """Set ``wake`` whenever another process queues work, until ``stop``; returns at once if it cannot."""
        ...

    # writes fenced by the claim's token: each raises LeaseLost when another claim replaced it
    def finish(
        self,
        job: Job,
        outcome: str,
        timings: dict[str, float],
        report: dict[str, Any] | None,
        result_digest: str | None,
    ) -> None: ...

    def retry(self, job: Job, error: str, delay: float, timings: dict[str, float]) -> None: ...

    def fail(
        self, job: Job, error: str, timings: dict[str, float], report: dict[str, Any] | None = None
    ) -> None: ...

    def record_pushed(self, digests: Sequence[str], job: Job, reference: str) -> None: ...

    # what the service has seen of a registry
    def record_layers(self, registry: str, repository: str, images: Mapping[str, Sequence[str]]) -> None:
        """Remember the layer digests of each image manifest (digest -> layers) pulled from ``registry``."""
        ...

    def shared_layers(self, registry: str, images: Mapping[str, Sequence[str]]) -> set[str]:
        """The layers of ``images`` that an image manifest not among them, seen in ``registry``, also has."""
        ...

    def hold(self, name: str, seconds: float) -> bool:
        """Take or keep the fleet-wide singleton lease ``name`` for ``seconds``; False if another holds it."""
        ...

    # reading
    def get(self, job_id: int) -> Job | None: ...

    def jobs(self, status: str | None = None, limit: int = 100, offset: int = 0) -> list[Job]: ...

    def counts(self) -> dict[str, int]: ...


def open_queue(
    backend: str,
    *,
    path: str | os.PathLike[str] | None = None,
    dsn: str | None = None,
    settings: QueueSettings | None = None,
    connections: int = 8,
) -> Queue:
    """The configured backend, with its schema created or migrated to this version; ``connections``: most
    connections a PostgreSQL queue opens (the worker threads, the heartbeat and the HTTP side share them)."""
    settings = settings or QueueSettings()
    if backend == "postgres":
        if dsn is None:
            raise OptimizerError("the postgres queue needs a dsn")
        from .postgres_queue import PostgresQueue

        return PostgresQueue(dsn, settings, pool_size=connections)
    if path is None:
        raise OptimizerError("the sqlite queue needs a path")
    from .sqlite_queue import SqliteQueue

    return SqliteQueue(Path(path), settings)
