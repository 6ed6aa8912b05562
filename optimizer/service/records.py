"""What the queue stores, the same in both backends: jobs and what asks for them (``JobSpec``), the process
that holds a claim (``Owner``), and the rows, columns and JSON that carry them to and from the database.

``queue`` is the contract these serve; its errors (``LeaseLost``, ``QueueUnavailable``) are here so that the
backends and the workers name one class each.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import OptimizerError

__all__ = [
    "INSERT_COLUMNS",
    "MAX_JOB_ID",
    "STATUSES",
    "SUMMARY_COLUMNS",
    "V1_JOB_COLUMNS",
    "Job",
    "JobSpec",
    "LeaseLost",
    "Owner",
    "QueueSettings",
    "QueueUnavailable",
    "Row",
    "SubmitResult",
    "encode",
    "full_registries",
    "insert_values",
    "job_from_row",
    "joined_event_ids",
    "owner_gone",
]

STATUSES = ("queued", "running", "done", "failed")
ACTIVE = ("queued", "running")
MAX_JOB_ID = (1 << 63) - 1  # job ids are signed 64-bit integers in both backends
MAX_EVENT_IDS = 50  # event ids kept per job (a job joined by thousands of redeliveries keeps the first ones)


class LeaseLost(Exception):
    """This worker's claim on a job was replaced by another one, or the job is no longer running (it ended or
    was queued again): the worker must not write the job's state."""


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


def encode(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


# The jobs table's columns after ``id`` in the first schema of either backend, ``{time}`` the type of a time
# in seconds (SQLite's REAL, PostgreSQL's DOUBLE PRECISION). Part of both backends' first migration: never
# edited (a later change to the table is a new migration).
V1_JOB_COLUMNS = """    dedupe_key TEXT NOT NULL,
    rule TEXT NOT NULL,
    source TEXT NOT NULL,
    event_format TEXT NOT NULL,
    event_ids TEXT NOT NULL DEFAULT '[]',
    registry TEXT NOT NULL,
    repository TEXT NOT NULL,
    tag TEXT NOT NULL,
    digest TEXT NOT NULL,
    media_type TEXT,
    dest_registry TEXT NOT NULL,
    dest_repository TEXT NOT NULL,
    dest_tag TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'queued',
    attempts INTEGER NOT NULL DEFAULT 0,
    duplicates INTEGER NOT NULL DEFAULT 0,
    created_at {time} NOT NULL,
    updated_at {time} NOT NULL,
    started_at {time},
    finished_at {time},
    next_attempt_at {time} NOT NULL,
    error TEXT,
    outcome TEXT,
    result_digest TEXT,
    timings TEXT,
    report TEXT"""
