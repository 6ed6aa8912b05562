"""The job queue: what the HTTP side and the workers share, behind one ``Queue`` class with two backends.

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
``LeaseLost`` once another claim has replaced it or the job is no longer running (fencing): a worker that
stalled past its lease cannot overwrite the work of the worker that took the job over, nor a job that ended
or was queued again under its own token (its lease expired on the last attempt, ``recover`` took it back, the
attempt already finished it); a write run again because its commit's answer was lost finds itself done. A
running job whose lease expired is claimed again (its interrupted attempt counts; with no attempts left it
ends ``failed``). At start-up (``recover``) a worker only takes back jobs whose owner is a process of this
host that no longer exists; a job another live process holds stays with it. ``max_concurrent_jobs`` of a
registry bounds the running jobs that pull from or push to it, across every process sharing the queue.

Statuses: ``queued`` -> ``running`` -> ``done`` | ``failed`` (and back to ``queued`` for a retry).

The contract is written once, here, in SQL that both databases run; a backend supplies its connection and
transactions, its clock and its ``Dialect`` (where the two SQLs differ: row locks, how a list binds), and
tells idle workers elsewhere of new work where it can (``_wake``).
"""

from __future__ import annotations

import os
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from ..errors import OptimizerError
from .records import (
    INSERT_COLUMNS,
    MAX_JOB_ID,
    STATUSES,
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
from .sql import Db, Dialect

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

T = TypeVar("T")

# How long a backend retries a lost connection before it gives up, by who waits: the HTTP side answers soon
# (QueueUnavailable, a 503 the registry retries), a worker's result is worth waiting for (it is not thrown
# away because the database restarted), start-up waits for the database to come up.
INTAKE_PATIENCE = 3.0
WORKER_PATIENCE = 900.0
START_PATIENCE = 30.0
CLAIM_TRIES = 5  # a claim that finds its registry full under the registry's lock looks again this often


class _Busy(Exception):
    """Internal: a claim found its registry full once it held the registry's lock; look again."""


def _held(db: Db, job: Job, lock: str = "") -> Any:
    """The job's row (status, updated_at) if it has the token of ``job``'s claim, whatever its status."""
    query = "SELECT status, updated_at FROM jobs WHERE id = ? AND lease_token = ?"
    return db.execute(query + lock, (job.id, job.lease)).fetchone()


def _lost(job: Job, held: Any) -> LeaseLost:
    why = f"already {held['status']}" if held is not None else "the lease of this attempt was taken over"
    return LeaseLost(f"job {job.id}: {why}")


class Queue(ABC):
    """What the HTTP side and the workers use; thread-safe. ``SqliteQueue`` and ``PostgresQueue`` supply the
    database: the abstract methods below and their ``dialect``."""

    backend: str  # "sqlite" or "postgres"
    dialect: Dialect

    def __init__(self, settings: QueueSettings | None) -> None:
        self.settings = settings or QueueSettings()
        self.owner = Owner.current()  # the claims this process makes carry it
        self._holder = f"{self.owner} {uuid.uuid4().hex}"

    # --- what a backend supplies ----------------------------------------------------------------------

    @abstractmethod
    def _transaction(self, work: Callable[[Db, float], T], patience: float) -> T:
        """``work(db, now)`` in one transaction, ``now`` the backend's clock at its start; a lost connection
        is retried for ``patience`` seconds where the backend can."""

    @abstractmethod
    def _select(self, query: str, args: Sequence[Any], patience: float) -> list[Any]:
        """The rows of one query, outside a transaction."""

    @abstractmethod
    def _clock(self, db: Db) -> float:
        """The time now, in seconds since the epoch, by the clock every process of this queue shares."""

    @abstractmethod
    def _wake(self, db: Db) -> None:
        """Tell idle workers elsewhere that there is work (or a free registry slot) once ``db`` commits."""

    @abstractmethod
    def _lock_registries(self, db: Db, names: Sequence[str]) -> None:
        """Hold the registries ``names`` until ``db`` commits (their running jobs are counted under it)."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def next_due(self) -> float | None:
        """When a job is due next (a queued job's time, or a lease's expiry), by this machine's clock."""

    @abstractmethod
    def listen(self, wake: threading.Event, stop: threading.Event) -> None:
        """Set ``wake`` whenever another process queues work, until ``stop``; returns at once if it cannot."""

    # --- intake (the HTTP side) -----------------------------------------------------------------------

    def submit(self, source: str, event_id: str | None, specs: Sequence[JobSpec]) -> SubmitResult:
        """Record an event and its jobs in one transaction."""
        return self.submit_many([(source, event_id, specs)])[0]

    def submit_many(self, items: Sequence[tuple[str, str | None, Sequence[JobSpec]]]) -> list[SubmitResult]:
        """Record several events (those of one webhook request) in one transaction: one disk sync."""

        def work(db: Db, now: float) -> list[SubmitResult]:
            results = [self._submit(db, now, source, event_id, specs) for source, event_id, specs in items]
            if any(result.created for result in results):
                self._wake(db)
            return results

        return self._transaction(work, INTAKE_PATIENCE)

    def _submit(
        self, db: Db, now: float, source: str, event_id: str | None, specs: Sequence[JobSpec]
    ) -> SubmitResult:
        created: list[int] = []
        joined: list[int] = []
        if event_id is not None:
            fresh = db.execute(
                "INSERT INTO events (event_key, received_at) VALUES (?, ?) ON CONFLICT DO NOTHING"
                " RETURNING 1 AS fresh",
                (f"{source}\x1f{event_id}", now),
            ).fetchone()
            if fresh is None:
                return SubmitResult(True, (), ())
        for spec in specs:
            while True:  # an insert that loses a race with another process joins the winner's job
                row = db.execute(
                    "SELECT id, event_ids FROM jobs WHERE dedupe_key = ? AND status IN ('queued', 'running')"
                    + self.dialect.lock_rows,
                    (spec.dedupe_key,),
                ).fetchone()
                if row is not None:
                    db.execute(
                        "UPDATE jobs SET duplicates = duplicates + 1, event_ids = ?, updated_at = ? WHERE id = ?",
                        (joined_event_ids(row["event_ids"], event_id), now, row["id"]),
                    )
                    joined.append(int(row["id"]))
                    break
                inserted = db.execute(
                    f"INSERT INTO jobs ({INSERT_COLUMNS}) VALUES ({', '.join('?' * 16)})"
                    " ON CONFLICT (dedupe_key) WHERE status IN ('queued', 'running') DO NOTHING RETURNING id",
                    insert_values(spec, event_id, now),
                ).fetchone()
                if inserted is not None:
                    created.append(int(inserted["id"]))
                    break
        return SubmitResult(False, tuple(created), tuple(joined))

    def known_keys(self, keys: Sequence[str]) -> set[str]:
        """The de-duplication keys among ``keys`` that have a job, whatever its status."""
        found: set[str] = set()
        for chunk in self.dialect.chunks(keys):
            where, args = self.dialect.among("dedupe_key", chunk)
            rows = self._select(f"SELECT DISTINCT dedupe_key FROM jobs WHERE {where}", args, INTAKE_PATIENCE)
            found.update(row["dedupe_key"] for row in rows)
        return found

    def was_pushed(self, digest: str) -> bool:
        return bool(self._select("SELECT 1 FROM pushed WHERE digest = ?", (digest,), INTAKE_PATIENCE))

    # --- claims (the workers) -------------------------------------------------------------------------

    def recover(self) -> int:
        """Queue again the running jobs of processes of this host that are gone; returns how many."""

        def work(db: Db, now: float) -> int:
            rows = db.execute(
                "SELECT id, lease_owner FROM jobs WHERE status = 'running'" + self.dialect.skip_locked
            ).fetchall()
            gone = [row["id"] for row in rows if owner_gone(row["lease_owner"], self.owner)]
            for chunk in self.dialect.chunks(gone):
                # next_attempt_at is kept: interrupted jobs resume first, in their original order.
                where, args = self.dialect.among("id", chunk)
                db.execute(
                    "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL,"
                    f" updated_at = ? WHERE {where}",
                    (now, *args),
                )
            return len(gone)

        return self._transaction(work, START_PATIENCE)

    def claim(self) -> Job | None:
        """Take the oldest due job (or a running one whose lease expired) and lease it to this process."""
        for _ in range(CLAIM_TRIES):
            try:
                return self._transaction(self._claim, INTAKE_PATIENCE)
            except _Busy:
                continue
        return None

    def _claim(self, db: Db, now: float) -> Job | None:
        expired = db.execute(
            "UPDATE jobs SET status = 'failed', outcome = 'failed', finished_at = ?, updated_at = ?,"
            " error = 'attempt ' || attempts || ': the worker stopped renewing its lease (killed or hung)"
            " and no attempts are left' WHERE status = 'running' AND lease_expires_at < ?"
            " AND attempts >= ? RETURNING id",
            (now, now, now, self.settings.max_attempts),
        ).fetchall()
        if expired:
            self._wake(db)
        limits = self.settings.registry_limits or {}
        row = self._due(db, now, self._full(db, now, sorted(limits)) if limits else set())
        if row is None:
            return None
        touched = sorted({row["registry"], row["dest_registry"]} & set(limits))
        if touched:
            # Counted again under the registries' locks (held to the commit, taken in name order): two
            # claimers cannot both see the last free slot.
            self._lock_registries(db, touched)
            if self._full(db, now, touched):
                raise _Busy
        token = uuid.uuid4().hex
        # The clock read again, after the locks: a claim that waited is not dated before the finish of the
        # job whose slot it took.
        now = self._clock(db)
        found = db.execute(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = ?, updated_at = ?,"
            " lease_token = ?, lease_owner = ?, lease_expires_at = ? WHERE id = ? RETURNING *",
            (now, now, token, str(self.owner), now + self.settings.lease_seconds, row["id"]),
        ).fetchone()
        return replace(job_from_row(found), lease=token)

    def _touching(self, names: Sequence[str]) -> tuple[str, list[Any]]:
        """The condition that a job pulls from or pushes to one of the registries ``names``."""
        source, source_args = self.dialect.among("registry", names)
        destination, destination_args = self.dialect.among("dest_registry", names)
        return f"({source} OR {destination})", [*source_args, *destination_args]

    def _due(self, db: Db, now: float, full: set[str]) -> Any:
        """The row (id and registries) of the job to claim: an expired lease first, then the oldest due."""
        exclude = ""
        args: list[Any] = []
        if full:
            touching, args = self._touching(sorted(full))
            exclude = f" AND NOT {touching}"
        for waiting in (
            "status = 'running' AND lease_expires_at < ?{} ORDER BY lease_expires_at, id",
            "status = 'queued' AND next_attempt_at <= ?{} ORDER BY next_attempt_at, id",
        ):
            row = db.execute(
                f"SELECT id, registry, dest_registry FROM jobs WHERE {waiting.format(exclude)} LIMIT 1"
                + self.dialect.skip_locked,
                (now, *args),
            ).fetchone()
            if row is not None:
                return row
        return None

    def _full(self, db: Db, now: float, names: Sequence[str]) -> set[str]:
        """Those of the registries ``names`` (each with a limit) whose running jobs are at its limit."""
        touching, args = self._touching(names)
        rows = db.execute(
            f"SELECT registry, dest_registry FROM jobs WHERE status = 'running' AND lease_expires_at >= ?"
            f" AND {touching}",
            (now, *args),
        ).fetchall()
        limits = {
            name: limit for name, limit in (self.settings.registry_limits or {}).items() if name in names
        }
        return full_registries([(r["registry"], r["dest_registry"]) for r in rows], limits)

    def renew(self, job: Job) -> bool:
        """Extend the job's lease; False when the lease is no longer this claim's (the job was taken over)."""

        def work(db: Db, now: float) -> bool:
            cursor = db.execute(
                "UPDATE jobs SET lease_expires_at = ? WHERE id = ? AND lease_token = ? AND status = 'running'",
                (now + self.settings.lease_seconds, job.id, job.lease),
            )
            return cursor.rowcount == 1

        return self._transaction(work, INTAKE_PATIENCE)

    # --- writes fenced by the claim's token: each raises LeaseLost unless this claim holds the running job -

    def _fenced(self, job: Job, becomes: str, query: str, values: Callable[[float], tuple[Any, ...]]) -> None:
        """Run ``query`` (an UPDATE without its WHERE that sets the status to ``becomes`` and ``updated_at`` to
        the queue's time, which ``values`` gets) on the job if this claim holds it and it is still running.
        Wakes idle workers: a finished job may free a registry's slot."""
        tried: list[float] = []  # the times of this write's earlier runs, whose commits may have landed

        def work(db: Db, now: float) -> None:
            cursor = db.execute(
                query + " WHERE id = ? AND lease_token = ? AND status = 'running'",
                (*values(now), job.id, job.lease),
            )
            if cursor.rowcount != 1:
                row = _held(db, job)
                # Unless an earlier run of this write committed (the backend ran it again, the answer lost).
                if not (row is not None and row["status"] == becomes and row["updated_at"] in tried):
                    raise _lost(job, row)
            tried.append(now)
            self._wake(db)

        self._transaction(work, WORKER_PATIENCE)

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
            "done",
            "UPDATE jobs SET status = 'done', outcome = ?, timings = ?, report = ?, result_digest = ?,"
            " error = NULL, finished_at = ?, updated_at = ?",
            lambda now: (outcome, encode(timings), encode(report), result_digest, now, now),
        )

    def retry(self, job: Job, error: str, delay: float, timings: dict[str, float]) -> None:
        self._fenced(
            job,
            "queued",
            "UPDATE jobs SET status = 'queued', error = ?, timings = ?, next_attempt_at = ?, updated_at = ?",
            lambda now: (error, encode(timings), now + delay, now),
        )

    def fail(
        self, job: Job, error: str, timings: dict[str, float], report: dict[str, Any] | None = None
    ) -> None:
        self._fenced(
            job,
            "failed",
            "UPDATE jobs SET status = 'failed', outcome = 'failed', error = ?, timings = ?, report = ?,"
            " finished_at = ?, updated_at = ?",
            lambda now: (error, encode(timings), encode(report), now, now),
        )

    def record_pushed(self, digests: Sequence[str], job: Job, reference: str) -> None:
        def work(db: Db, now: float) -> None:
            held = _held(db, job, self.dialect.share_rows)
            if held is None or held["status"] != "running":
                raise _lost(job, held)
            db.executemany(
                "INSERT INTO pushed (digest, job_id, reference, recorded_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                [(d, job.id, reference, now) for d in digests],
            )

        self._transaction(work, WORKER_PATIENCE)

    # --- what the service has seen of a registry ------------------------------------------------------

    def record_layers(self, registry: str, repository: str, images: Mapping[str, Sequence[str]]) -> None:
        """Remember the layer digests of each image manifest (digest -> layers) pulled from ``registry``."""
        rows = [
            (registry, layer, manifest, repository)
            for manifest, layers in images.items()
            for layer in dict.fromkeys(layers)
        ]

        def work(db: Db, now: float) -> None:
            db.executemany(
                "INSERT INTO image_layers (registry, layer, manifest, repository, recorded_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [(*row, now) for row in rows],
            )

        self._transaction(work, WORKER_PATIENCE)

    def shared_layers(self, registry: str, images: Mapping[str, Sequence[str]]) -> set[str]:
        """The layers of ``images`` that an image manifest not among them, seen in ``registry``, also has."""
        layers = sorted({layer for found in images.values() for layer in found})
        manifest_in, manifest_args = self.dialect.among("manifest", sorted(images))
        shared: set[str] = set()
        for chunk in self.dialect.chunks(layers):
            layer_in, layer_args = self.dialect.among("layer", chunk)
            rows = self._select(
                f"SELECT DISTINCT layer FROM image_layers WHERE registry = ? AND {layer_in} AND NOT ({manifest_in})",
                (registry, *layer_args, *manifest_args),
                WORKER_PATIENCE,
            )
            shared.update(row["layer"] for row in rows)
        return shared

    def hold(self, name: str, seconds: float) -> bool:
        """Take or keep the fleet-wide singleton lease ``name`` for ``seconds``; False if another holds it."""

        def work(db: Db, now: float) -> bool:
            row = db.execute(
                "INSERT INTO singletons (name, holder, expires_at) VALUES (?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at"
                " WHERE singletons.holder = excluded.holder OR singletons.expires_at < ? RETURNING holder",
                (name, self._holder, now + seconds, now),
            ).fetchone()
            return row is not None

        return self._transaction(work, INTAKE_PATIENCE)

    # --- reading --------------------------------------------------------------------------------------

    def get(self, job_id: int) -> Job | None:
        rows = self._select("SELECT * FROM jobs WHERE id = ?", (job_id,), INTAKE_PATIENCE)
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
        rows = self._select(query, args, INTAKE_PATIENCE)
        return [job_from_row(row, with_report=False) for row in rows]

    def counts(self) -> dict[str, int]:
        rows = self._select("SELECT status, count(*) AS n FROM jobs GROUP BY status", (), INTAKE_PATIENCE)
        counts = dict.fromkeys(STATUSES, 0)
        counts.update({row["status"]: int(row["n"]) for row in rows})
        return counts


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
