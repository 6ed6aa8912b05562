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
``oci_optimizer.schema_version`` and ``_MIGRATIONS[n]`` takes it from n to n+1, under an advisory lock so that
replicas starting together migrate once. Nothing here ever logs the DSN: it holds the password.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, TypeVar

from ..errors import RequiredToolNotFound, UsageError
from .queue import (
    INSERT_COLUMNS,
    SUMMARY_COLUMNS,
    Job,
    JobSpec,
    LeaseLost,
    Owner,
    QueueSettings,
    QueueUnavailable,
    SubmitResult,
    encode,
    full_registries,
    insert_values,
    job_from_row,
    joined_event_ids,
    owner_gone,
)

try:
    import psycopg
    from psycopg.rows import dict_row
except ImportError as error:  # the optional dependency (or Debian's libpq5 under it) is missing
    raise RequiredToolNotFound(
        "psycopg",
        "oci-optimizer[postgres] Python extra (psycopg) and Debian libpq5",
        "use the PostgreSQL queue",
    ) from error

__all__ = ["CHANNEL", "SCHEMA", "SCHEMA_VERSION", "PostgresQueue", "describe_dsn"]

SCHEMA = "oci_optimizer"
CHANNEL = "oci_optimizer_jobs"
INTAKE_PATIENCE = 3.0
WORKER_PATIENCE = 900.0
START_PATIENCE = 30.0
_LOCK_CLASS = 0x6F63  # advisory lock namespace: ("oc", hash of a name)
_MIGRATION_LOCK = 1

_V1 = f"""
CREATE TABLE {SCHEMA}.jobs (
    id BIGSERIAL PRIMARY KEY,
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
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION,
    next_attempt_at DOUBLE PRECISION NOT NULL,
    error TEXT,
    outcome TEXT,
    result_digest TEXT,
    timings TEXT,
    report TEXT,
    lease_token TEXT,
    lease_owner TEXT,
    lease_expires_at DOUBLE PRECISION
);
CREATE UNIQUE INDEX jobs_active_key ON {SCHEMA}.jobs (dedupe_key) WHERE status IN ('queued', 'running');
CREATE INDEX jobs_due ON {SCHEMA}.jobs (next_attempt_at, id) WHERE status = 'queued';
CREATE INDEX jobs_leases ON {SCHEMA}.jobs (lease_expires_at, id) WHERE status = 'running';
CREATE INDEX jobs_key ON {SCHEMA}.jobs (dedupe_key);
CREATE INDEX jobs_status ON {SCHEMA}.jobs (status);
CREATE TABLE {SCHEMA}.events (
    event_key TEXT PRIMARY KEY,
    received_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE {SCHEMA}.pushed (
    digest TEXT PRIMARY KEY,
    job_id BIGINT NOT NULL,
    reference TEXT NOT NULL,
    recorded_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE {SCHEMA}.image_layers (
    registry TEXT NOT NULL,
    layer TEXT NOT NULL,
    manifest TEXT NOT NULL,
    repository TEXT NOT NULL,
    recorded_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (registry, layer, manifest, repository)
);
CREATE TABLE {SCHEMA}.singletons (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
)
"""

_MIGRATIONS = (_V1,)
SCHEMA_VERSION = len(_MIGRATIONS)
_NOW = "SELECT extract(epoch FROM clock_timestamp())::float8 AS now"

T = TypeVar("T")
Connection = psycopg.Connection[dict[str, Any]]


def describe_dsn(dsn: str) -> str:
    """``host:port/dbname`` of a DSN, for messages (never the password); the DSN itself if it does not parse."""
    try:
        parts = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as error:
        raise UsageError(f"queue.dsn: not a PostgreSQL connection string: {error}") from None
    host = parts.get("host") or parts.get("hostaddr") or "localhost"
    return f"{host}:{parts.get('port') or 5432}/{parts.get('dbname') or parts.get('user') or ''}"


class _Pool:
    """At most ``size`` connections, made when needed; a broken one is dropped, never handed out again."""

    def __init__(self, dsn: str, size: int) -> None:
        self._dsn = dsn
        self._idle: list[Connection] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(size)
        self._closed = False

    def connect(self) -> Connection:
        connection = psycopg.connect(
            self._dsn,
            autocommit=True,
            row_factory=dict_row,
            connect_timeout=5,
            application_name="oci-optimizer",
            keepalives=1,
            keepalives_idle=30,
            keepalives_interval=10,
            keepalives_count=3,
        )
        connection.execute(f"SET search_path TO {SCHEMA}")
        return connection

    @contextmanager
    def connection(self, timeout: float) -> Iterator[Connection]:
        if not self._slots.acquire(timeout=max(0.01, timeout)):
            raise psycopg.OperationalError("no free connection to PostgreSQL in the pool")
        connection: Connection | None = None
        try:
            with self._lock:
                while self._idle and connection is None:
                    candidate = self._idle.pop()
                    if candidate.closed or candidate.broken:
                        candidate.close()
                    else:
                        connection = candidate
            if connection is None:
                connection = self.connect()
            yield connection
        except BaseException:
            if connection is not None and (connection.broken or connection.closed):
                connection.close()
                connection = None
            raise
        finally:
            if connection is not None:
                with self._lock:
                    if self._closed:
                        connection.close()
                    else:
                        self._idle.append(connection)
            self._slots.release()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for connection in self._idle:
                connection.close()
            self._idle.clear()


class _Busy(Exception):
    """Internal: a claim found its registry full once it held the registry's lock; look again."""


class PostgresQueue:
    """The ``Queue`` contract on PostgreSQL; thread-safe (a small pool of connections)."""

    backend = "postgres"

    def __init__(self, dsn: str, settings: QueueSettings | None = None, pool_size: int = 8) -> None:
        self.where = describe_dsn(dsn)
        self.settings = settings or QueueSettings()
        self.owner = Owner.current()
        self._holder = f"{self.owner} {uuid.uuid4().hex}"
        self._dsn = dsn
        self._pool = _Pool(dsn, pool_size)
        self._closed = threading.Event()
        self._run(self._migrate, START_PATIENCE)

    def _migrate(self, db: Connection) -> None:
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_LOCK_CLASS, _MIGRATION_LOCK))
            db.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
            db.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA}.schema_version (version INTEGER NOT NULL)")
            row = db.execute(f"SELECT max(version) AS version FROM {SCHEMA}.schema_version").fetchone()
            version = int(row["version"]) if row and row["version"] is not None else 0
            if version > SCHEMA_VERSION:
                raise UsageError(
                    f"PostgreSQL queue at {self.where}: schema version {version} is newer than this service "
                    f"knows ({SCHEMA_VERSION}): run a newer oci-optimizer"
                )
            for number in range(version, SCHEMA_VERSION):
                for statement in _MIGRATIONS[number].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"INSERT INTO {SCHEMA}.schema_version (version) VALUES (%s)", (number + 1,))

    def _run(self, work: Callable[[Connection], T], patience: float) -> T:
        """``work`` on a pooled connection; a lost connection or a deadlock is retried for ``patience`` s."""
        deadline = time.monotonic() + patience
        delay = 0.1
        while True:
            try:
                with self._pool.connection(deadline - time.monotonic()) as db:
                    return work(db)
            except (psycopg.OperationalError, psycopg.InterfaceError) as error:
                # OperationalError covers a refused or cut connection, a server shutting down or starting
                # up, a deadlock and a serialisation failure: each is worth running the transaction again.
                if self._closed.is_set() or time.monotonic() + delay > deadline:
                    raise QueueUnavailable(f"PostgreSQL queue at {self.where}: {error}") from error
                self._closed.wait(delay)
                delay = min(2.0, delay * 2)

    def close(self) -> None:
        self._closed.set()
        self._pool.close()

    @staticmethod
    def _now(db: Connection) -> float:
        row = db.execute(_NOW).fetchone()
        assert row is not None
        return float(row["now"])

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

    # --- intake ---------------------------------------------------------------------------------------------

    def submit(self, source: str, event_id: str | None, specs: Sequence[JobSpec]) -> SubmitResult:
        return self.submit_many([(source, event_id, specs)])[0]

    def submit_many(self, items: Sequence[tuple[str, str | None, Sequence[JobSpec]]]) -> list[SubmitResult]:
        def work(db: Connection) -> list[SubmitResult]:
            with db.transaction():
                now = self._now(db)
                results = [
                    self._submit(db, now, source, event_id, specs) for source, event_id, specs in items
                ]
                if any(result.created for result in results):
                    db.execute("SELECT pg_notify(%s, '')", (CHANNEL,))
                return results

        return self._run(work, INTAKE_PATIENCE)

    def _submit(
        self, db: Connection, now: float, source: str, event_id: str | None, specs: Sequence[JobSpec]
    ) -> SubmitResult:
        created: list[int] = []
        joined: list[int] = []
        if event_id is not None:
            fresh = db.execute(
                "INSERT INTO events (event_key, received_at) VALUES (%s, %s) ON CONFLICT DO NOTHING"
                " RETURNING 1 AS fresh",
                (f"{source}\x1f{event_id}", now),
            ).fetchone()
            if fresh is None:
                return SubmitResult(True, (), ())
        for spec in specs:
            while True:  # an insert that loses a race with another replica joins the winner's job
                row = db.execute(
                    "SELECT id, event_ids FROM jobs WHERE dedupe_key = %s AND status IN ('queued', 'running')"
                    " FOR UPDATE",
                    (spec.dedupe_key,),
                ).fetchone()
                if row is not None:
                    db.execute(
                        "UPDATE jobs SET duplicates = duplicates + 1, event_ids = %s, updated_at = %s"
                        " WHERE id = %s",
                        (joined_event_ids(row["event_ids"], event_id), now, row["id"]),
                    )
                    joined.append(int(row["id"]))
                    break
                inserted = db.execute(
                    f"INSERT INTO jobs ({INSERT_COLUMNS}) VALUES ({', '.join(['%s'] * 16)})"
                    " ON CONFLICT (dedupe_key) WHERE status IN ('queued', 'running') DO NOTHING RETURNING id",
                    insert_values(spec, event_id, now),
                ).fetchone()
                if inserted is not None:
                    created.append(int(inserted["id"]))
                    break
        return SubmitResult(False, tuple(created), tuple(joined))

    def known_keys(self, keys: Sequence[str]) -> set[str]:
        def work(db: Connection) -> set[str]:
            rows = db.execute(
                "SELECT DISTINCT dedupe_key FROM jobs WHERE dedupe_key = ANY(%s)", (list(keys),)
            ).fetchall()
            return {row["dedupe_key"] for row in rows}

        return self._run(work, INTAKE_PATIENCE)

    def was_pushed(self, digest: str) -> bool:
        def work(db: Connection) -> bool:
            return db.execute("SELECT 1 FROM pushed WHERE digest = %s", (digest,)).fetchone() is not None

        return self._run(work, INTAKE_PATIENCE)

    # --- claims -----------------------------------------------------------------------------------------

    def recover(self) -> int:
        def work(db: Connection) -> int:
            with db.transaction():
                now = self._now(db)
                rows = db.execute(
                    "SELECT id, lease_owner FROM jobs WHERE status = 'running' FOR UPDATE SKIP LOCKED"
                ).fetchall()
                gone = [row["id"] for row in rows if owner_gone(row["lease_owner"], self.owner)]
                if gone:
                    db.execute(
                        "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL,"
                        " updated_at = %s WHERE id = ANY(%s)",
                        (now, gone),
                    )
                return len(gone)

        return self._run(work, START_PATIENCE)

    def claim(self) -> Job | None:
        for _ in range(5):
            try:
                return self._run(self._claim, INTAKE_PATIENCE)
            except _Busy:
                continue
        return None

    def _claim(self, db: Connection) -> Job | None:
        with db.transaction():
            now = self._now(db)
            expired = db.execute(
                "UPDATE jobs SET status = 'failed', outcome = 'failed', finished_at = %s, updated_at = %s,"
                " error = 'attempt ' || attempts || ': the worker stopped renewing its lease (killed or hung)"
                " and no attempts are left' WHERE status = 'running' AND lease_expires_at < %s"
                " AND attempts >= %s RETURNING id",
                (now, now, now, self.settings.max_attempts),
            ).fetchall()
            if expired:
                db.execute("SELECT pg_notify(%s, '')", (CHANNEL,))
            limits = self.settings.registry_limits or {}
            full = self._full(db, now, sorted(limits)) if limits else set()
            exclude = " AND NOT (registry = ANY(%s) OR dest_registry = ANY(%s))" if full else ""
            args: tuple[Any, ...] = (sorted(full), sorted(full)) if full else ()
            row = db.execute(
                f"SELECT id, registry, dest_registry FROM jobs WHERE status = 'running'"
                f" AND lease_expires_at < %s{exclude} ORDER BY lease_expires_at, id LIMIT 1 FOR UPDATE SKIP LOCKED",
                (now, *args),
            ).fetchone()
            if row is None:
                row = db.execute(
                    f"SELECT id, registry, dest_registry FROM jobs WHERE status = 'queued'"
                    f" AND next_attempt_at <= %s{exclude} ORDER BY next_attempt_at, id LIMIT 1"
                    " FOR UPDATE SKIP LOCKED",
                    (now, *args),
                ).fetchone()
            if row is None:
                return None
            touched = sorted({row["registry"], row["dest_registry"]} & set(limits))
            if touched:
                # Counted again under the registries' locks (held to the commit, taken in name order): two
                # claimers cannot both see the last free slot.
                for name in touched:
                    db.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_CLASS, name))
                if self._full(db, now, touched):
                    raise _Busy
            token = uuid.uuid4().hex
            # The clock read again here, after the locks: a claim that waited is not dated before the finish
            # of the job whose slot it took.
            found = db.execute(
                f"WITH now AS ({_NOW}) UPDATE jobs SET status = 'running', attempts = attempts + 1,"
                " started_at = now.now, updated_at = now.now, lease_token = %s, lease_owner = %s,"
                " lease_expires_at = now.now + %s FROM now WHERE id = %s RETURNING jobs.*",
                (token, str(self.owner), self.settings.lease_seconds, row["id"]),
            ).fetchone()
            assert found is not None
            return replace(job_from_row(found), lease=token)

    def _full(self, db: Connection, now: float, names: Sequence[str]) -> set[str]:
        rows = db.execute(
            "SELECT registry, dest_registry FROM jobs WHERE status = 'running' AND lease_expires_at >= %s"
            " AND (registry = ANY(%s) OR dest_registry = ANY(%s))",
            (now, list(names), list(names)),
        ).fetchall()
        limits = {
            name: limit for name, limit in (self.settings.registry_limits or {}).items() if name in names
        }
        return full_registries([(r["registry"], r["dest_registry"]) for r in rows], limits)

    def renew(self, job: Job) -> bool:
        def work(db: Connection) -> bool:
            with db.transaction():
                now = self._now(db)
                cursor = db.execute(
                    "UPDATE jobs SET lease_expires_at = %s WHERE id = %s AND lease_token = %s"
                    " AND status = 'running'",
                    (now + self.settings.lease_seconds, job.id, job.lease),
                )
                return cursor.rowcount == 1

        return self._run(work, INTAKE_PATIENCE)

    def next_due(self) -> float | None:
        def work(db: Connection) -> float | None:
            row = db.execute(
                "SELECT least((SELECT min(next_attempt_at) FROM jobs WHERE status = 'queued'),"
                " (SELECT min(lease_expires_at) FROM jobs WHERE status = 'running')) AS due, "
                "extract(epoch FROM clock_timestamp())::float8 AS now"
            ).fetchone()
            if row is None or row["due"] is None:
                return None
            # As a time of this machine's clock (the caller waits with it).
            return float(row["due"]) - float(row["now"]) + time.time()

        return self._run(work, INTAKE_PATIENCE)

    # --- fenced writes ----------------------------------------------------------------------------------

    def _fenced(self, job: Job, query: str, values: Callable[[float], tuple[Any, ...]]) -> None:
        """Run ``query`` (an UPDATE without its WHERE) on the job if this claim still holds it; ``values``
        gets the database's time. Wakes idle workers: a finished job may free a registry's slot."""

        def work(db: Connection) -> None:
            with db.transaction():
                now = self._now(db)
                cursor = db.execute(
                    query + " WHERE id = %s AND lease_token = %s", (*values(now), job.id, job.lease)
                )
                if cursor.rowcount != 1:
                    raise LeaseLost(f"job {job.id}: the lease of this attempt was taken over")
                db.execute("SELECT pg_notify(%s, '')", (CHANNEL,))

        self._run(work, WORKER_PATIENCE)

    def finish(
        self,
        job: Job,
        outcome: str,
        timings: dict[str, float],
        report: dict[str, Any] | None,
        result_digest: str | None,
    ) -> None:
        self._fenced(
            job,
            "UPDATE jobs SET status = 'done', outcome = %s, timings = %s, report = %s, result_digest = %s,"
            " error = NULL, finished_at = %s, updated_at = %s",
            lambda now: (outcome, encode(timings), encode(report), result_digest, now, now),
        )

    def retry(self, job: Job, error: str, delay: float, timings: dict[str, float]) -> None:
        self._fenced(
            job,
            "UPDATE jobs SET status = 'queued', error = %s, timings = %s, next_attempt_at = %s, updated_at = %s",
            lambda now: (error, encode(timings), now + delay, now),
        )

    def fail(
        self, job: Job, error: str, timings: dict[str, float], report: dict[str, Any] | None = None
    ) -> None:
        self._fenced(
            job,
            "UPDATE jobs SET status = 'failed', outcome = 'failed', error = %s, timings = %s, report = %s,"
            " finished_at = %s, updated_at = %s",
            lambda now: (error, encode(timings), encode(report), now, now),
        )

    def record_pushed(self, digests: Sequence[str], job: Job, reference: str) -> None:
        def work(db: Connection) -> None:
            with db.transaction():
                now = self._now(db)
                owned = db.execute(
                    "SELECT 1 FROM jobs WHERE id = %s AND lease_token = %s FOR SHARE", (job.id, job.lease)
                ).fetchone()
                if owned is None:
                    raise LeaseLost(f"job {job.id}: the lease of this attempt was taken over")
                with db.cursor() as cursor:
                    cursor.executemany(
                        "INSERT INTO pushed (digest, job_id, reference, recorded_at) VALUES (%s, %s, %s, %s)"
                        " ON CONFLICT DO NOTHING",
                        [(d, job.id, reference, now) for d in digests],
                    )

        self._run(work, WORKER_PATIENCE)

    # --- what the service has seen ----------------------------------------------------------------------

    def record_layers(self, registry: str, repository: str, images: Mapping[str, Sequence[str]]) -> None:
        rows = [
            (registry, layer, manifest, repository)
            for manifest, layers in images.items()
            for layer in dict.fromkeys(layers)
        ]

        def work(db: Connection) -> None:
            with db.transaction():
                now = self._now(db)
                with db.cursor() as cursor:
                    cursor.executemany(
                        "INSERT INTO image_layers (registry, layer, manifest, repository, recorded_at)"
                        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                        [(*row, now) for row in rows],
                    )

        self._run(work, WORKER_PATIENCE)

    def shared_layers(self, registry: str, images: Mapping[str, Sequence[str]]) -> set[str]:
        layers = sorted({layer for found in images.values() for layer in found})

        def work(db: Connection) -> set[str]:
            rows = db.execute(
                "SELECT DISTINCT layer FROM image_layers WHERE registry = %s AND layer = ANY(%s)"
                " AND NOT (manifest = ANY(%s))",
                (registry, layers, sorted(images)),
            ).fetchall()
            return {row["layer"] for row in rows}

        return self._run(work, WORKER_PATIENCE)

    def hold(self, name: str, seconds: float) -> bool:
        def work(db: Connection) -> bool:
            with db.transaction():
                now = self._now(db)
                row = db.execute(
                    "INSERT INTO singletons (name, holder, expires_at) VALUES (%s, %s, %s)"
                    " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at"
                    " WHERE singletons.holder = excluded.holder OR singletons.expires_at < %s RETURNING holder",
                    (name, self._holder, now + seconds, now),
                ).fetchone()
                return row is not None

        return self._run(work, INTAKE_PATIENCE)

    # --- reading ----------------------------------------------------------------------------------------

    def get(self, job_id: int) -> Job | None:
        def work(db: Connection) -> Job | None:
            row = db.execute("SELECT * FROM jobs WHERE id = %s", (job_id,)).fetchone()
            return None if row is None else job_from_row(row)

        return self._run(work, INTAKE_PATIENCE)

    def jobs(self, status: str | None = None, limit: int = 100, offset: int = 0) -> list[Job]:
        query = f"SELECT {SUMMARY_COLUMNS} FROM jobs"
        args: list[Any] = []
        if status is not None:
            query += " WHERE status = %s"
            args.append(status)
        query += " ORDER BY id DESC LIMIT %s OFFSET %s"
        args += [limit, offset]

        def work(db: Connection) -> list[Job]:
            return [job_from_row(row, with_report=False) for row in db.execute(query, args).fetchall()]

        return self._run(work, INTAKE_PATIENCE)

    def counts(self) -> dict[str, int]:
        def work(db: Connection) -> dict[str, int]:
            rows = db.execute("SELECT status, count(*) AS n FROM jobs GROUP BY status").fetchall()
            counts = {"queued": 0, "running": 0, "done": 0, "failed": 0}
            counts.update({row["status"]: int(row["n"]) for row in rows})
            return counts

        return self._run(work, INTAKE_PATIENCE)
