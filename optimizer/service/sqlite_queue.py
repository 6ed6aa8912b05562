"""The embedded queue backend: one SQLite file in ``state_dir``, no server (the default).

Every process sharing the file (one ``optimize serve``, or an HTTP process and worker processes on one
machine) has one connection; each write is one ``BEGIN IMMEDIATE`` transaction, so claims are serialised by
SQLite's write lock and two processes never take the same job. WAL journal, ``synchronous=FULL``: a job
acknowledged to the registry survives a power cut. Times are this machine's clock (every process sharing the
file is on it).

Schema versions live in ``PRAGMA user_version``; ``_MIGRATIONS[n]`` takes a file from version n to n+1, in one
transaction. Version 1 is the schema from before versioning, created with ``IF NOT EXISTS`` so an old file
goes through the same steps as a new one.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .queue import (
    INSERT_COLUMNS,
    SUMMARY_COLUMNS,
    Job,
    JobSpec,
    LeaseLost,
    Owner,
    QueueSettings,
    SubmitResult,
    encode,
    full_registries,
    insert_values,
    job_from_row,
    joined_event_ids,
    owner_gone,
)

__all__ = ["SCHEMA_VERSION", "SqliteQueue"]

_V1 = """
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

_V2 = """
ALTER TABLE jobs ADD COLUMN lease_token TEXT;
ALTER TABLE jobs ADD COLUMN lease_owner TEXT;
ALTER TABLE jobs ADD COLUMN lease_expires_at REAL;
-- Jobs an unversioned (single-process) service left running: that service is not running any more.
UPDATE jobs SET status = 'queued' WHERE status = 'running';
CREATE INDEX jobs_key ON jobs(dedupe_key);
CREATE INDEX jobs_leases ON jobs(lease_expires_at) WHERE status = 'running';
CREATE TABLE image_layers (
    registry TEXT NOT NULL,
    layer TEXT NOT NULL,
    manifest TEXT NOT NULL,
    repository TEXT NOT NULL,
    recorded_at REAL NOT NULL,
    PRIMARY KEY (registry, layer, manifest, repository)
) WITHOUT ROWID;
CREATE TABLE singletons (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at REAL NOT NULL
);
"""

_MIGRATIONS = (_V1, _V2)
SCHEMA_VERSION = len(_MIGRATIONS)


def _placeholders(count: int) -> str:
    return ", ".join("?" * count)


class SqliteQueue:
    """Thread-safe: one connection, one lock; every write is one short transaction."""

    backend = "sqlite"

    def __init__(self, path: str | Path, settings: QueueSettings | None = None) -> None:
        self.path = Path(path)
        self.settings = settings or QueueSettings()
        self.owner = Owner.current()
        self._holder = f"{self.owner} {uuid.uuid4().hex}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a job acknowledged to the registry survives power loss
        self._migrate()

    def _migrate(self) -> None:
        with self._tx() as db:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise UsageError(
                    f"{self.path}: queue schema version {version} is newer than this service knows "
                    f"({SCHEMA_VERSION}): run a newer oci-optimizer"
                )
            for number in range(version, SCHEMA_VERSION):
                for statement in _MIGRATIONS[number].split(";"):
                    if statement.strip():
                        db.execute(statement)
            if version != SCHEMA_VERSION:
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

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

    def _read(self, query: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(query, args).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def listen(self, wake: threading.Event, stop: threading.Event) -> None:
        return  # no notifications between processes: workers poll

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
            inserted = db.execute(
                "INSERT INTO events (event_key, received_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
                (f"{source}\x1f{event_id}", now),
            )
            if inserted.rowcount == 0:
                return SubmitResult(True, (), ())
        for spec in specs:
            row = db.execute(
                "SELECT id, event_ids FROM jobs WHERE dedupe_key = ? AND status IN ('queued', 'running')",
                (spec.dedupe_key,),
            ).fetchone()
            if row is not None:
                db.execute(
                    "UPDATE jobs SET duplicates = duplicates + 1, event_ids = ?, updated_at = ? WHERE id = ?",
                    (joined_event_ids(row["event_ids"], event_id), now, row["id"]),
                )
                joined.append(row["id"])
                continue
            cursor = db.execute(
                f"INSERT INTO jobs ({INSERT_COLUMNS}) VALUES ({_placeholders(16)})",
                insert_values(spec, event_id, now),
            )
            assert cursor.lastrowid is not None
            created.append(cursor.lastrowid)
        return SubmitResult(False, tuple(created), tuple(joined))

    def known_keys(self, keys: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(keys), 500):
            chunk = list(keys[start : start + 500])
            rows = self._read(
                f"SELECT DISTINCT dedupe_key FROM jobs WHERE dedupe_key IN ({_placeholders(len(chunk))})",
                chunk,
            )
            found.update(row[0] for row in rows)
        return found

    def was_pushed(self, digest: str) -> bool:
        return bool(self._read("SELECT 1 FROM pushed WHERE digest = ?", (digest,)))

    # --- claims -----------------------------------------------------------------------------------------

    def recover(self) -> int:
        with self._tx() as db:
            rows = db.execute("SELECT id, lease_owner FROM jobs WHERE status = 'running'").fetchall()
            gone = [row for row in rows if owner_gone(row["lease_owner"], self.owner)]
            for row in gone:
                # next_attempt_at is kept: interrupted jobs resume first, in their original order.
                db.execute(
                    "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL,"
                    " updated_at = ? WHERE id = ? AND status = 'running' AND lease_owner IS ?",
                    (time.time(), row["id"], row["lease_owner"]),
                )
            return len(gone)

    def claim(self) -> Job | None:
        lease = self.settings.lease_seconds
        with self._tx() as db:
            now = time.time()
            db.execute(
                "UPDATE jobs SET status = 'failed', outcome = 'failed', finished_at = ?, updated_at = ?,"
                " error = 'attempt ' || attempts || ': the worker stopped renewing its lease (killed or hung)"
                " and no attempts are left' WHERE status = 'running' AND lease_expires_at < ?"
                " AND attempts >= ?",
                (now, now, now, self.settings.max_attempts),
            )
            limits = self.settings.registry_limits
            full: set[str] = set()
            if limits:
                running = db.execute(
                    "SELECT registry, dest_registry FROM jobs WHERE status = 'running' AND lease_expires_at >= ?",
                    (now,),
                ).fetchall()
                full = full_registries([(r[0], r[1]) for r in running], limits)
            exclude, args = "", []
            if full:
                marks = _placeholders(len(full))
                exclude = f" AND registry NOT IN ({marks}) AND dest_registry NOT IN ({marks})"
                args = sorted(full) * 2
            row = db.execute(
                "SELECT id FROM jobs WHERE status = 'running' AND lease_expires_at < ?"
                f"{exclude} ORDER BY lease_expires_at, id LIMIT 1",
                (now, *args),
            ).fetchone()
            if row is None:
                row = db.execute(
                    f"SELECT id FROM jobs WHERE status = 'queued' AND next_attempt_at <= ?{exclude}"
                    " ORDER BY next_attempt_at, id LIMIT 1",
                    (now, *args),
                ).fetchone()
            if row is None:
                return None
            token = uuid.uuid4().hex
            found = db.execute(
                "UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = ?, updated_at = ?,"
                " lease_token = ?, lease_owner = ?, lease_expires_at = ? WHERE id = ? RETURNING *",
                (now, now, token, str(self.owner), now + lease, row["id"]),
            ).fetchone()
            job = job_from_row(found)
        return replace(job, lease=token)

    def renew(self, job: Job) -> bool:
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE jobs SET lease_expires_at = ? WHERE id = ? AND lease_token = ? AND status = 'running'",
                (time.time() + self.settings.lease_seconds, job.id, job.lease),
            )
            return cursor.rowcount == 1

    def next_due(self) -> float | None:
        rows = self._read(
            "SELECT MIN(t) FROM (SELECT MIN(next_attempt_at) AS t FROM jobs WHERE status = 'queued'"
            " UNION ALL SELECT MIN(lease_expires_at) FROM jobs WHERE status = 'running')"
        )
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    # --- fenced writes ----------------------------------------------------------------------------------

    def _fenced(self, db: sqlite3.Connection, job: Job, query: str, args: Sequence[Any]) -> None:
        if db.execute(query + " WHERE id = ? AND lease_token = ?", (*args, job.id, job.lease)).rowcount != 1:
            raise LeaseLost(f"job {job.id}: the lease of this attempt was taken over")

    def finish(
        self,
        job: Job,
        outcome: str,
        timings: dict[str, float],
        report: dict[str, Any] | None,
        result_digest: str | None,
    ) -> None:
        now = time.time()
        with self._tx() as db:
            self._fenced(
                db,
                job,
                "UPDATE jobs SET status = 'done', outcome = ?, timings = ?, report = ?, result_digest = ?,"
                " error = NULL, finished_at = ?, updated_at = ?",
                (outcome, encode(timings), encode(report), result_digest, now, now),
            )

    def retry(self, job: Job, error: str, delay: float, timings: dict[str, float]) -> None:
        now = time.time()
        with self._tx() as db:
            self._fenced(
                db,
                job,
                "UPDATE jobs SET status = 'queued', error = ?, timings = ?, next_attempt_at = ?, updated_at = ?",
                (error, encode(timings), now + delay, now),
            )

    def fail(
        self, job: Job, error: str, timings: dict[str, float], report: dict[str, Any] | None = None
    ) -> None:
        now = time.time()
        with self._tx() as db:
            self._fenced(
                db,
                job,
                "UPDATE jobs SET status = 'failed', outcome = 'failed', error = ?, timings = ?, report = ?,"
                " finished_at = ?, updated_at = ?",
                (error, encode(timings), encode(report), now, now),
            )

    def record_pushed(self, digests: Sequence[str], job: Job, reference: str) -> None:
        now = time.time()
        with self._tx() as db:
            self._fenced(db, job, "UPDATE jobs SET updated_at = ?", (now,))
            db.executemany(
                "INSERT OR IGNORE INTO pushed (digest, job_id, reference, recorded_at) VALUES (?, ?, ?, ?)",
                [(d, job.id, reference, now) for d in digests],
            )

    # --- what the service has seen ----------------------------------------------------------------------

    def record_layers(self, registry: str, repository: str, images: Mapping[str, Sequence[str]]) -> None:
        now = time.time()
        with self._tx() as db:
            db.executemany(
                "INSERT OR IGNORE INTO image_layers (registry, layer, manifest, repository, recorded_at)"
                " VALUES (?, ?, ?, ?, ?)",
                [
                    (registry, layer, manifest, repository, now)
                    for manifest, layers in images.items()
                    for layer in dict.fromkeys(layers)
                ],
            )

    def shared_layers(self, registry: str, images: Mapping[str, Sequence[str]]) -> set[str]:
        layers = sorted({layer for found in images.values() for layer in found})
        manifests = sorted(images)
        shared: set[str] = set()
        for start in range(0, len(layers), 400):
            chunk = layers[start : start + 400]
            rows = self._read(
                f"SELECT DISTINCT layer FROM image_layers WHERE registry = ?"
                f" AND layer IN ({_placeholders(len(chunk))}) AND manifest NOT IN ({_placeholders(len(manifests))})",
                (registry, *chunk, *manifests),
            )
            shared.update(row[0] for row in rows)
        return shared

    def hold(self, name: str, seconds: float) -> bool:
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO singletons (name, holder, expires_at) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE"
                " SET holder = excluded.holder, expires_at = excluded.expires_at"
                " WHERE singletons.holder = excluded.holder OR singletons.expires_at < ?",
                (name, self._holder, now + seconds, now),
            )
            row = db.execute("SELECT holder FROM singletons WHERE name = ?", (name,)).fetchone()
            return bool(row is not None and row[0] == self._holder)

    # --- reading ----------------------------------------------------------------------------------------

    def get(self, job_id: int) -> Job | None:
        rows = self._read("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return job_from_row(rows[0]) if rows else None

    def jobs(self, status: str | None = None, limit: int = 100, offset: int = 0) -> list[Job]:
        """The newest jobs first, without their reports (``get`` has them)."""
        query = f"SELECT {SUMMARY_COLUMNS} FROM jobs"
        args: list[Any] = []
        if status is not None:
            query += " WHERE status = ?"
            args.append(status)
        query += " ORDER BY id DESC LIMIT ? OFFSET ?"
        args += [limit, offset]
        return [job_from_row(row, with_report=False) for row in self._read(query, args)]

    def counts(self) -> dict[str, int]:
        rows = self._read("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status")
        counts = {"queued": 0, "running": 0, "done": 0, "failed": 0}
        counts.update({row["status"]: row["n"] for row in rows})
        return counts
