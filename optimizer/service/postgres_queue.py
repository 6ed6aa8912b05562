"""The fleet queue backend: PostgreSQL (psycopg 3), for several service replicas and worker machines.

Same contract as ``SqliteQueue`` (see ``queue``), with what a fleet needs:

- claims take the oldest due job with ``SELECT ... FOR UPDATE SKIP LOCKED``: concurrent claimers never wait on
  each other's rows and never take the same one. A registry with ``max_concurrent_jobs`` is counted under a
  transaction-level advisory lock per registry, so the limit holds across every process;
- every time (lease expiries, attempts, timings) is the database server's clock: the machines' clocks may
  differ, the leases do not;
- ``submit`` and every finished job send ``NOTIFY oci_optimizer_jobs``; ``listen`` wakes idle workers on other
  machines at once instead of at their next poll;
- a lost connection (the server restarting, a network cut) is retried with backoff: for up to
  ``INTAKE_PATIENCE`` seconds on the HTTP side (then ``QueueUnavailable``, a 503 the registry retries), for up
  to ``WORKER_PATIENCE`` seconds for a worker's fenced writes (a job's result is not thrown away because the
  database restarted). A transaction whose commit was cut off is run again: submitting is idempotent through
  the event ids, fenced writes through the lease token, and a claim whose answer was lost expires like any
  other lease.

Tables live in the schema ``oci_optimizer`` (so the service may share a database); their version is in
``oci_optimizer.schema_version`` and ``MIGRATIONS[n]`` takes it from n to n+1, under an advisory lock so that
replicas starting together migrate once. Nothing here ever logs the DSN: it holds the password.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from ..errors import RequiredToolNotFound
from .queue import INTAKE_PATIENCE, START_PATIENCE, Queue
from .records import QueueSettings, QueueUnavailable
from .sql import Db, Dialect, apply_migrations

try:
    import psycopg
except ImportError as error:  # the optional dependency (or Debian's libpq5 under it) is missing
    raise RequiredToolNotFound(
        "psycopg",
        "oci-optimizer[postgres] Python extra (psycopg) and Debian libpq5",
        "use the PostgreSQL queue",
    ) from error

from .postgres_pool import Connection, Pool, describe_dsn
from .postgres_schema import CHANNEL, LOCK_CLASS, MIGRATION_LOCK, MIGRATIONS, NOW, SCHEMA, SCHEMA_VERSION

__all__ = ["CHANNEL", "SCHEMA", "SCHEMA_VERSION", "PostgresQueue", "describe_dsn"]

T = TypeVar("T")

# Claimers lock the rows they take and pass over those another holds; a list binds as one array.
DIALECT = Dialect(
    lock_rows=" FOR UPDATE",
    skip_locked=" FOR UPDATE SKIP LOCKED",
    share_rows=" FOR SHARE",
    array_binds=True,
    most_items=0,
)


def _marks(query: str) -> str:
    """The queue's SQL (``?`` marks) as psycopg takes it (``%s``, a literal ``%`` doubled)."""
    return query.replace("%", "%%").replace("?", "%s")


class _Db:
    """A pooled psycopg connection that speaks the queue's SQL (``queue.Db``)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def execute(self, query: str, args: Sequence[Any] = ()) -> psycopg.Cursor[dict[str, Any]]:
        return self.connection.execute(_marks(query), args)

    def executemany(self, query: str, rows: Iterable[Sequence[Any]]) -> None:
        with self.connection.cursor() as cursor:
            cursor.executemany(_marks(query), rows)


class PostgresQueue(Queue):
    """The ``Queue`` contract on PostgreSQL; thread-safe (a small pool of connections)."""

    backend = "postgres"
    dialect = DIALECT

    def __init__(self, dsn: str, settings: QueueSettings | None = None, pool_size: int = 8) -> None:
        super().__init__(settings)
        self.where = describe_dsn(dsn)
        self._dsn = dsn
        self._pool = Pool(dsn, pool_size)
        self._closed = threading.Event()
        self._run(self._migrate, START_PATIENCE)

    def _migrate(self, db: _Db) -> None:
        with db.connection.transaction():
            db.execute("SELECT pg_advisory_xact_lock(?, ?)", (LOCK_CLASS, MIGRATION_LOCK))
            db.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
            db.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA}.schema_version (version INTEGER NOT NULL)")
            row = db.execute(f"SELECT max(version) AS version FROM {SCHEMA}.schema_version").fetchone()
            apply_migrations(
                db,
                int(row["version"]) if row and row["version"] is not None else 0,
                MIGRATIONS,
                f"PostgreSQL queue at {self.where}: schema",
                lambda version: db.execute(
                    f"INSERT INTO {SCHEMA}.schema_version (version) VALUES (?)", (version,)
                ),
            )

    def _run(self, work: Callable[[_Db], T], patience: float) -> T:
        """``work`` on a pooled connection; a lost connection or a deadlock is retried for ``patience`` s."""
        deadline = time.monotonic() + patience
        delay = 0.1
        while True:
            try:
                with self._pool.connection(deadline - time.monotonic()) as connection:
                    return work(_Db(connection))
            except (psycopg.OperationalError, psycopg.InterfaceError) as error:
                # OperationalError covers a refused or cut connection, a server shutting down or starting
                # up, a deadlock and a serialisation failure: each is worth running the transaction again.
                if self._closed.is_set() or time.monotonic() + delay > deadline:
                    raise QueueUnavailable(f"PostgreSQL queue at {self.where}: {error}") from error
                self._closed.wait(delay)
                delay = min(2.0, delay * 2)

    def _transaction(self, work: Callable[[Db, float], T], patience: float) -> T:
        def run(db: _Db) -> T:
            with db.connection.transaction():
                return work(db, self._clock(db))

        return self._run(run, patience)

    def _select(self, query: str, args: Sequence[Any], patience: float) -> list[Any]:
        return self._run(lambda db: db.execute(query, args).fetchall(), patience)

    def _clock(self, db: Db) -> float:
        row = db.execute(NOW).fetchone()
        assert row is not None
        return float(row["now"])

    def _wake(self, db: Db) -> None:
        db.execute("SELECT pg_notify(?, '')", (CHANNEL,))

    def _lock_registries(self, db: Db, names: Sequence[str]) -> None:
        for name in names:  # callers pass them sorted: two claimers never wait on each other in a cycle
            db.execute("SELECT pg_advisory_xact_lock(?, hashtext(?))", (LOCK_CLASS, name))

    def close(self) -> None:
        self._closed.set()
        self._pool.close()

    def listen(self, wake: threading.Event, stop: threading.Event) -> None:
        while not stop.is_set() and not self._closed.is_set():
            try:
                with self._pool.connect() as db:
                    db.execute(f"LISTEN {CHANNEL}")
                    wake.set()  # notifications sent while we were not listening are lost: look once
                    while not stop.is_set() and not self._closed.is_set():
                        for _ in db.notifies(timeout=1.0, stop_after=1):
                            wake.set()
            except psycopg.Error:
                stop.wait(1.0)

    def next_due(self) -> float | None:
        rows = self._select(
            "SELECT least((SELECT min(next_attempt_at) FROM jobs WHERE status = 'queued'),"
            " (SELECT min(lease_expires_at) FROM jobs WHERE status = 'running')) AS due, "
            "extract(epoch FROM clock_timestamp())::float8 AS now",
            (),
            INTAKE_PATIENCE,
        )
        if not rows or rows[0]["due"] is None:
            return None
        # As a time of this machine's clock (the caller waits with it).
        return float(rows[0]["due"]) - float(rows[0]["now"]) + time.time()
