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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from ..errors import UsageError
from .queue import INTAKE_PATIENCE, Queue
from .records import V1_JOB_COLUMNS, QueueSettings
from .sql import Db, Dialect, apply_migrations

__all__ = ["SCHEMA_VERSION", "SqliteQueue"]

T = TypeVar("T")

_V1 = f"""
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
{V1_JOB_COLUMNS.format(time="REAL")}
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

# One writer at a time (BEGIN IMMEDIATE): no row locks. 400 items a list keeps a statement's marks within the
# 999 of older SQLite builds.
DIALECT = Dialect(lock_rows="", skip_locked="", share_rows="", array_binds=False, most_items=400)


MIN_SQLITE = (3, 35, 0)  # RETURNING


class SqliteQueue(Queue):
    """Thread-safe: one connection, one lock; every write is one short transaction."""

    backend = "sqlite"
    dialect = DIALECT

    def __init__(self, path: str | Path, settings: QueueSettings | None = None) -> None:
        if sqlite3.sqlite_version_info < MIN_SQLITE:  # the claims use UPDATE ... RETURNING
            raise UsageError(
                f"queue {path}: SQLite {sqlite3.sqlite_version} is too old, the queue needs "
                f"{'.'.join(map(str, MIN_SQLITE))} or newer (or the postgres backend)"
            )
        super().__init__(settings)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a job acknowledged to the registry survives power loss
        with self._tx() as db:
            apply_migrations(
                db,
                int(db.execute("PRAGMA user_version").fetchone()[0]),
                _MIGRATIONS,
                f"{self.path}: queue schema",
                lambda version: db.execute(f"PRAGMA user_version = {version}"),
            )

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

    def _transaction(self, work: Callable[[Db, float], T], patience: float) -> T:
        with self._tx() as db:
            return work(db, self._clock(db))

    def _select(self, query: str, args: Sequence[Any], patience: float) -> list[Any]:
        with self._lock:
            return self._db.execute(query, args).fetchall()

    def _clock(self, db: Db) -> float:
        return time.time()  # every process sharing the file is on this machine

    def _wake(self, db: Db) -> None:
        return  # no notifications between processes: workers poll

    def _lock_registries(self, db: Db, names: Sequence[str]) -> None:
        return  # one writer at a time (BEGIN IMMEDIATE): the transaction holds everything already

    def listen(self, wake: threading.Event, stop: threading.Event) -> None:
        return  # no notifications between processes: workers poll

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def next_due(self) -> float | None:
        rows = self._select(
            "SELECT MIN(t) AS due FROM (SELECT MIN(next_attempt_at) AS t FROM jobs WHERE status = 'queued'"
            " UNION ALL SELECT MIN(lease_expires_at) FROM jobs WHERE status = 'running')",
            (),
            INTAKE_PATIENCE,
        )
        return None if not rows or rows[0]["due"] is None else float(rows[0]["due"])
