"""The durable job queue: one SQLite file, no server.

Tables: ``jobs`` (one row per unit of work, with its status, attempts, timings and report), ``events``
(every event id seen, so a redelivered event makes no second job) and ``pushed`` (every manifest digest this
service wrote, recorded *before* the manifest PUT, one of the loop guards).

De-duplication: an event id already seen (per source) is dropped; a job is keyed by rule, source digest and
destination, and while a job with that key is queued or running, another event for it joins it instead of
making a second job (a partial unique index enforces it). A later event with a new id for a finished key is
a new push (registries fire one for every re-push) and makes a new job.

Jobs left ``running`` by a killed service are put back in the queue at start-up; their attempt count is kept,
so a job that kills the service every time still ends ``failed``.

Statuses: ``queued`` -> ``running`` -> ``done`` | ``failed`` (and back to ``queued`` for a retry).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Job", "JobSpec", "Queue", "SubmitResult"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    dedupe_key TEXT NOT NULL,
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
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    next_attempt_at REAL NOT NULL,
    error TEXT,
    outcome TEXT,
    result_digest TEXT,
    timings TEXT,
    report TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_active_key ON jobs(dedupe_key) WHERE status IN ('queued', 'running');
CREATE INDEX IF NOT EXISTS jobs_due ON jobs(status, next_attempt_at);
CREATE TABLE IF NOT EXISTS events (
    event_key TEXT PRIMARY KEY,
    received_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS pushed (
    digest TEXT PRIMARY KEY,
    job_id INTEGER NOT NULL,
    reference TEXT NOT NULL,
    recorded_at REAL NOT NULL
);
"""

ACTIVE = ("queued", "running")
_SUMMARY_COLUMNS = (
    "id, rule, source, event_format, event_ids, registry, repository, tag, digest, media_type, dest_registry,"
    " dest_repository, dest_tag, status, attempts, duplicates, created_at, updated_at, started_at, finished_at,"
    " next_attempt_at, error, outcome, result_digest, timings"
)


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

    def to_json(self, with_report: bool = True) -> dict[str, Any]:
        s = self.spec
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


def _job(row: sqlite3.Row, with_report: bool = True) -> Job:
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
        id=row["id"],
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
    )


class Queue:
    """Thread-safe: one connection, one lock; every write is one short transaction."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a job acknowledged to the registry survives power loss
        with self._lock:
            self._db.executescript(SCHEMA)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- intake ---------------------------------------------------------------------------------------------

    def submit(self, source: str, event_id: str | None, specs: Sequence[JobSpec]) -> SubmitResult:
        """Record an event and its jobs in one transaction."""
        return self.submit_many([(source, event_id, specs)])[0]

    def submit_many(self, items: Sequence[tuple[str, str | None, Sequence[JobSpec]]]) -> list[SubmitResult]:
        """Record several events (those of one webhook request) in one transaction: one disk sync."""
        with self._tx() as db:
            return [self._submit(db, source, event_id, specs) for source, event_id, specs in items]

    def _submit(
        self, db: sqlite3.Connection, source: str, event_id: str | None, specs: Sequence[JobSpec]
    ) -> SubmitResult:
        now = time.time()
        created: list[int] = []
        joined: list[int] = []
        if event_id is not None:
            key = f"{source}\x1f{event_id}"
            if db.execute("SELECT 1 FROM events WHERE event_key = ?", (key,)).fetchone():
                return SubmitResult(True, (), ())
            db.execute("INSERT INTO events (event_key, received_at) VALUES (?, ?)", (key, now))
        for spec in specs:
            row = db.execute(
                "SELECT id, event_ids FROM jobs WHERE dedupe_key = ? AND status IN ('queued', 'running')",
                (spec.dedupe_key,),
            ).fetchone()
            if row is not None:
                ids = json.loads(row["event_ids"])
                if event_id is not None and len(ids) < 50:
                    ids.append(event_id)
                db.execute(
                    "UPDATE jobs SET duplicates = duplicates + 1, event_ids = ?, updated_at = ? WHERE id = ?",
                    (json.dumps(ids), now, row["id"]),
                )
                joined.append(row["id"])
                continue
            cursor = db.execute(
                "INSERT INTO jobs (dedupe_key, rule, source, event_format, event_ids, registry,"
                " repository, tag, digest, media_type, dest_registry, dest_repository, dest_tag,"
                " created_at, updated_at, next_attempt_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
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
                ),
            )
            assert cursor.lastrowid is not None
            created.append(cursor.lastrowid)
        return SubmitResult(False, tuple(created), tuple(joined))

    # --- the worker's side ------------------------------------------------------------------------------

    def recover(self) -> int:
        """Put jobs a killed service left running back in the queue; returns how many."""
        with self._tx() as db:
            # next_attempt_at is kept: interrupted jobs resume first, in their original order.
            cursor = db.execute(
                "UPDATE jobs SET status = 'queued', updated_at = ? WHERE status = 'running'", (time.time(),)
            )
            return cursor.rowcount

    def claim(self, now: float | None = None) -> Job | None:
        """Take the oldest due job and mark it running (one more attempt)."""
        now = time.time() if now is None else now
        with self._tx() as db:
            row = db.execute(
                "SELECT id FROM jobs WHERE status = 'queued' AND next_attempt_at <= ?"
                " ORDER BY next_attempt_at, id LIMIT 1",
                (now,),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = ?, updated_at = ?"
                " WHERE id = ?",
                (now, now, row["id"]),
            )
            return _job(db.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone())

    def next_due(self) -> float | None:
        with self._lock:
            row = self._db.execute(
                "SELECT MIN(next_attempt_at) AS t FROM jobs WHERE status = 'queued'"
            ).fetchone()
        return None if row is None or row["t"] is None else float(row["t"])

    def finish(
        self,
        job_id: int,
        outcome: str,
        timings: dict[str, float],
        report: dict[str, Any] | None,
        result_digest: str | None,
    ) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET status = 'done', outcome = ?, timings = ?, report = ?, result_digest = ?,"
                " error = NULL, finished_at = ?, updated_at = ? WHERE id = ?",
                (
                    outcome,
                    json.dumps(timings),
                    json.dumps(report) if report else None,
                    result_digest,
                    now,
                    now,
                    job_id,
                ),
            )

    def retry(self, job_id: int, error: str, delay: float, timings: dict[str, float]) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET status = 'queued', error = ?, timings = ?, next_attempt_at = ?,"
                " updated_at = ? WHERE id = ?",
                (error, json.dumps(timings), now + delay, now, job_id),
            )

    def fail(
        self, job_id: int, error: str, timings: dict[str, float], report: dict[str, Any] | None = None
    ) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET status = 'failed', outcome = 'failed', error = ?, timings = ?, report = ?,"
                " finished_at = ?, updated_at = ? WHERE id = ?",
                (error, json.dumps(timings), json.dumps(report) if report else None, now, now, job_id),
            )

    # --- loop guard -------------------------------------------------------------------------------------

    def record_pushed(self, digests: Sequence[str], job_id: int, reference: str) -> None:
        now = time.time()
        with self._tx() as db:
            db.executemany(
                "INSERT OR IGNORE INTO pushed (digest, job_id, reference, recorded_at) VALUES (?, ?, ?, ?)",
                [(d, job_id, reference, now) for d in digests],
            )

    def was_pushed(self, digest: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM pushed WHERE digest = ?", (digest,)).fetchone() is not None

    # --- reading ----------------------------------------------------------------------------------------

    def get(self, job_id: int) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    def jobs(self, status: str | None = None, limit: int = 100, offset: int = 0) -> list[Job]:
        """The newest jobs first, without their reports (``get`` has them)."""
        query = f"SELECT {_SUMMARY_COLUMNS} FROM jobs"
        args: list[Any] = []
        if status is not None:
            query += " WHERE status = ?"
            args.append(status)
        query += " ORDER BY id DESC LIMIT ? OFFSET ?"
        args += [limit, offset]
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        return [_job(row, with_report=False) for row in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").fetchall()
        counts = {"queued": 0, "running": 0, "done": 0, "failed": 0}
        counts.update({row["status"]: row["n"] for row in rows})
        return counts
