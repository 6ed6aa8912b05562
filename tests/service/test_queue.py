"""The queue contract, run against both backends (SQLite file, real PostgreSQL): de-duplication, claims,
leases and fencing, recovery, retries, registry limits, shared layers, singletons, schema versions."""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from optimizer.errors import UsageError
from optimizer.service.queue import Job, JobSpec, LeaseLost, Queue, QueueSettings, open_queue

ROOT = Path(__file__).resolve().parents[2]
DIGEST = "sha256:" + "cd" * 32
MakeQueue = Callable[..., Queue]


def spec(tag: str = "v1", rule: str = "r", digest: str = DIGEST, registry: str = "local") -> JobSpec:
    return JobSpec(
        rule, "src", "distribution", registry, "team/app", tag, digest, None, registry, "team/app", tag + "-o"
    )


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """Where a queue of this backend lives: ``open_queue(**backend, settings=...)``."""
    if request.param == "postgres":
        return {"backend": "postgres", "dsn": request.getfixturevalue("postgres_dsn")}
    return {"backend": "sqlite", "path": tmp_path / "q.sqlite3"}


@pytest.fixture
def make_queue(backend: dict[str, Any]) -> Iterator[MakeQueue]:
    """``make_queue(lease_seconds=..., ...)``: another queue object on the same database (another process's
    view), closed at teardown."""
    opened: list[Queue] = []

    def make(**settings: Any) -> Queue:
        queue = open_queue(**backend, settings=QueueSettings(**settings))
        opened.append(queue)
        return queue

    yield make
    for queue in opened:
        queue.close()


def in_another_process(backend: dict[str, Any], code: str) -> str:
    """Run ``code`` in a new Python process that has ``queue`` open on the same database; its stdout."""
    prelude = (
        "import json, sys\n"
        "from optimizer.service.queue import open_queue, QueueSettings\n"
        "where = json.loads(sys.argv[1])\n"
        "queue = open_queue(**where, settings=QueueSettings(lease_seconds=600))\n"
    )
    where = {k: str(v) for k, v in backend.items()}
    done = subprocess.run(
        [sys.executable, "-c", prelude + code, json.dumps(where)],
        capture_output=True,
        text=True,
        cwd=str(ROOT),
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_same_event_id_makes_one_job(make_queue: MakeQueue) -> None:
    queue = make_queue()
    first = queue.submit("src", "e1", [spec()])
    again = queue.submit("src", "e1", [spec()])
    assert len(first.created) == 1 and again.duplicate_event and not again.created
    assert queue.counts()["queued"] == 1
    # the same id from another source is another event
    other = queue.submit("other", "e1", [spec("v2")])
    assert len(other.created) == 1


def test_same_digest_and_rule_joins_the_active_job(make_queue: MakeQueue) -> None:
    queue = make_queue()
    (job_id,) = queue.submit("src", "e1", [spec()]).created
    joined = queue.submit("src", "e2", [spec()])
    assert joined.joined == (job_id,) and not joined.created
    job = queue.get(job_id)
    assert job is not None and job.duplicates == 1 and job.event_ids == ("e1", "e2")
    # another rule, or another destination tag, is another job
    assert len(queue.submit("src", "e3", [spec(rule="r2")]).created) == 1
    assert len(queue.submit("src", "e4", [spec(tag="v2")]).created) == 1
    # once done, a new push event (new id) of the same digest is new work
    claimed = queue.claim()
    assert claimed is not None and claimed.id == job_id and claimed.lease
    assert queue.submit("src", "e5", [spec()]).joined == (job_id,)  # still running: joins
    queue.finish(claimed, "pushed", {"total": 1.0}, {"a": 1}, DIGEST)
    assert len(queue.submit("src", "e6", [spec()]).created) == 1
    assert queue.known_keys([spec().dedupe_key, spec(tag="nope").dedupe_key]) == {spec().dedupe_key}


def test_claim_retry_fail_and_timings(make_queue: MakeQueue) -> None:
    queue = make_queue()
    (job_id,) = queue.submit("src", None, [spec()]).created
    job = queue.claim()
    assert job is not None and job.status == "running" and job.attempts == 1
    assert job.owner == str(queue.owner) and job.lease_expires_at is not None
    assert queue.claim() is None
    queue.retry(job, "push: registry down", 0.6, {"pull": 0.1})
    assert queue.claim() is None  # not due yet
    due = queue.next_due()
    assert due is not None and 0 < due - time.time() <= 0.7
    time.sleep(0.7)
    again = queue.claim()
    assert again is not None and again.attempts == 2 and again.lease != job.lease
    queue.fail(again, "push: still down", {"pull": 0.2})
    failed = queue.get(job_id)
    assert failed is not None
    assert (failed.status, failed.attempts, failed.error, failed.timings) == (
        "failed",
        2,
        "push: still down",
        {"pull": 0.2},
    )
    assert failed.to_json()["destination"] == "local/team/app:v1-o"
    assert failed.to_json()["owner"] is None  # only a running job shows its owner


def test_a_lost_lease_fences_every_write(make_queue: MakeQueue) -> None:
    stalled, other = make_queue(lease_seconds=1), make_queue(lease_seconds=30)
    (job_id,) = stalled.submit("src", "e1", [spec()]).created
    first = stalled.claim()
    assert first is not None
    assert other.claim() is None  # the lease holds
    time.sleep(1.2)  # no heartbeat: the lease expires
    second = other.claim()
    assert second is not None and second.id == job_id and second.attempts == 2
    assert not stalled.renew(first)
    for write in (
        lambda: stalled.finish(first, "pushed", {}, None, DIGEST),
        lambda: stalled.retry(first, "late", 1.0, {}),
        lambda: stalled.fail(first, "late", {}),
        lambda: stalled.record_pushed(["sha256:" + "ee" * 32], first, "local/team/app:v1-o"),
    ):
        with pytest.raises(LeaseLost):
            write()
    assert not other.was_pushed("sha256:" + "ee" * 32)
    assert other.renew(second)
    other.record_pushed(["sha256:" + "ee" * 32], second, "local/team/app:v1-o")
    other.finish(second, "pushed", {"total": 1.0}, None, DIGEST)
    done = other.get(job_id)
    assert done is not None and (done.status, done.outcome, done.attempts) == ("done", "pushed", 2)
    assert other.was_pushed("sha256:" + "ee" * 32)


def stale_writes(queue: Queue, job: Job) -> list[Callable[[], None]]:
    """Every fenced write of ``job``'s claim, each with values no earlier write of the test used."""
    return [
        lambda: queue.finish(job, "larger", {"stale": 1.0}, {"stale": True}, "sha256:" + "ff" * 32),
        lambda: queue.retry(job, "stale retry", 0.0, {"stale": 1.0}),
        lambda: queue.fail(job, "stale failure", {"stale": 1.0}, {"stale": True}),
        lambda: queue.record_pushed(["sha256:" + "ee" * 32], job, "local/team/app:stale"),
    ]


def assert_refused_and_unchanged(queue: Queue, job: Job) -> None:
    before = queue.get(job.id)
    for write in stale_writes(queue, job):
        with pytest.raises(LeaseLost, match=f"job {job.id}: already "):
            write()
    assert queue.get(job.id) == before
    assert not queue.was_pushed("sha256:" + "ee" * 32)


def test_a_job_no_longer_running_is_not_written_under_its_own_token(
    make_queue: MakeQueue, backend: dict[str, Any]
) -> None:
    """Fencing asks for the running job, not only the claim's token: the token stays on a job that ended or was
    queued again, and a worker still holding it (the attempt that already finished it, one whose lease expired
    on the last attempt, one that ``recover`` took the job back from) writes nothing more."""
    queue = make_queue(lease_seconds=1, max_attempts=1)
    queue.submit("src", "e1", [spec("done")])
    done = queue.claim()
    assert done is not None
    queue.finish(done, "pushed", {"total": 1.0}, {"a": 1}, DIGEST)
    assert_refused_and_unchanged(queue, done)
    finished = queue.get(done.id)
    assert finished is not None and (finished.status, finished.outcome, finished.report) == (
        "done",
        "pushed",
        {"a": 1},
    )

    queue.submit("src", "e2", [spec("requeued")])
    requeued = queue.claim()
    assert requeued is not None
    queue.retry(requeued, "push: registry down", 60.0, {"pull": 0.1})
    assert_refused_and_unchanged(queue, requeued)  # a second retry too: the first one ended this attempt
    waiting = queue.get(requeued.id)
    assert waiting is not None and (waiting.status, waiting.error) == ("queued", "push: registry down")

    queue.submit("src", "e3", [spec("expired")])
    expired = queue.claim()
    assert expired is not None
    time.sleep(1.1)
    assert queue.claim() is None  # the lease expired on the last attempt: the job failed
    assert_refused_and_unchanged(queue, expired)
    failed = queue.get(expired.id)
    assert failed is not None and failed.status == "failed" and "stopped renewing" in (failed.error or "")

    queue.submit("src", "e4", [spec("orphan")])
    claimed = json.loads(
        in_another_process(backend, "job = queue.claim(); print(json.dumps([job.id, job.lease]))")
    )
    assert make_queue().recover() == 1  # its process is gone: the job is queued again, the token left on it
    orphan = queue.get(claimed[0])
    assert orphan is not None and orphan.status == "queued"
    assert_refused_and_unchanged(queue, replace(orphan, lease=claimed[1]))


class CommitCutter:
    """A TCP relay in front of PostgreSQL that, once ``armed``, cuts the connection where the answer to a COMMIT
    would pass (the commit is made, the client never hears of it): a lost connection at the worst moment."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.armed = threading.Event()
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, answers: bool) -> None:
        try:
            while data := source.recv(1 << 16):
                # CommandComplete of a COMMIT carries the tag "COMMIT" and a NUL
                if answers and b"COMMIT\x00" in data and self.armed.is_set():
                    self.armed.clear()
                    self.cuts += 1
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()

    def close(self) -> None:
        self.listener.close()


def test_a_fenced_write_whose_commit_answer_was_lost_is_no_second_write(postgres_dsn: str) -> None:
    """PostgreSQL runs a transaction again when its connection is lost: a fenced write that committed, its
    answer cut off, finds on its second run the job it ended by its first, and is not refused (a later call
    of the same attempt is)."""
    port = urlsplit(postgres_dsn).port
    assert port is not None
    relay = CommitCutter(port)
    queue = open_queue("postgres", dsn=postgres_dsn.replace(f":{port}/", f":{relay.port}/"))
    try:
        writes: dict[str, Callable[[Job], None]] = {
            "done": lambda job: queue.finish(job, "pushed", {"total": 1.0}, {"a": 1}, DIGEST),
            "queued": lambda job: queue.retry(job, "push: registry down", 60.0, {"pull": 0.1}),
            "failed": lambda job: queue.fail(job, "push: refused", {"pull": 0.1}),
        }
        for status, write in writes.items():
            queue.submit("src", None, [spec(status)])
            job = queue.claim()
            assert job is not None
            relay.armed.set()
            write(job)
            assert relay.cuts == 1 and not relay.armed.is_set()
            relay.cuts = 0
            after = queue.get(job.id)
            assert after is not None and after.status == status
            with pytest.raises(LeaseLost, match=f"already {status}"):
                write(job)
    finally:
        queue.close()
        relay.close()


def test_a_renewed_lease_is_never_taken(make_queue: MakeQueue) -> None:
    holder, other = make_queue(lease_seconds=1), make_queue(lease_seconds=1)
    holder.submit("src", "e1", [spec()])
    job = holder.claim()
    assert job is not None
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        assert holder.renew(job)
        assert other.claim() is None
        time.sleep(0.25)
    holder.finish(job, "pushed", {}, None, None)


def test_an_expired_lease_on_the_last_attempt_fails_the_job(make_queue: MakeQueue) -> None:
    queue = make_queue(lease_seconds=1, max_attempts=2)
    (job_id,) = queue.submit("src", "e1", [spec()]).created
    assert queue.claim() is not None
    time.sleep(1.1)
    assert queue.claim() is not None  # attempt 2
    time.sleep(1.1)
    assert queue.claim() is None
    job = queue.get(job_id)
    assert job is not None and (job.status, job.attempts) == ("failed", 2)
    assert job.error is not None and "stopped renewing its lease" in job.error


def test_jobs_of_a_dead_process_resume_and_live_ones_stay(
    make_queue: MakeQueue, backend: dict[str, Any]
) -> None:
    queue = make_queue()
    created = queue.submit("src", "e1", [spec("a"), spec("b"), spec("c")]).created
    ours = queue.claim()  # held by this (live) process
    assert ours is not None
    claimed = in_another_process(backend, "print(queue.claim().id)")  # the process exits: its job is orphaned
    assert int(claimed) == created[1]
    pushed = "sha256:" + "ee" * 32
    queue.record_pushed([pushed], ours, "local/team/app:a-o")
    reopened = make_queue()  # a restarted service
    assert reopened.recover() == 1
    assert reopened.counts() == {"queued": 2, "running": 1, "done": 0, "failed": 0}
    assert reopened.was_pushed(pushed) and not reopened.was_pushed(DIGEST)
    assert reopened.submit("src", "e1", [spec("a")]).duplicate_event  # event ids survive too
    resumed = reopened.claim()
    assert resumed is not None and resumed.id == created[1] and resumed.attempts == 2  # the orphan, first
    assert reopened.claim() is not None and reopened.claim() is None
    queue.finish(ours, "pushed", {}, None, None)  # the live process's claim was never touched


def test_processes_never_claim_the_same_job(make_queue: MakeQueue, backend: dict[str, Any]) -> None:
    queue = make_queue()
    queue.submit_many([("src", f"e{n}", [spec(f"t{n}")]) for n in range(120)])
    code = (
        "ids = []\n"
        "while (job := queue.claim()) is not None:\n"
        "    ids.append(job.id)\n"
        "    queue.finish(job, 'pushed', {}, None, None)\n"
        "print(json.dumps(ids))\n"
    )
    outputs: list[str] = []
    threads = [
        threading.Thread(target=lambda: outputs.append(in_another_process(backend, code))) for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    claimed = [job_id for output in outputs for job_id in json.loads(output)]
    assert len(claimed) == 120 and len(set(claimed)) == 120
    assert queue.counts() == {"queued": 0, "running": 0, "done": 120, "failed": 0}


def test_threads_never_claim_the_same_job(make_queue: MakeQueue) -> None:
    queue = make_queue()
    for number in range(100):
        queue.submit("src", f"e{number}", [spec(f"t{number}")])
    claimed: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        while (job := queue.claim()) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 100


def test_concurrent_deliveries_of_one_push_make_one_job(make_queue: MakeQueue) -> None:
    replicas = [make_queue() for _ in range(4)]
    results = []
    barrier = threading.Barrier(8)

    def deliver(number: int) -> None:
        queue = replicas[number % 4]
        barrier.wait()
        # half redeliver the same event id, half are new events of the same push (same digest)
        event_id = "same" if number % 2 else f"new-{number}"
        results.append(queue.submit("src", event_id, [spec()]))

    threads = [threading.Thread(target=deliver, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(len(r.created) for r in results) == 1
    assert sum(r.duplicate_event for r in results) == 3
    assert replicas[0].counts()["queued"] == 1


def test_a_registry_limit_holds_across_queues(make_queue: MakeQueue) -> None:
    limits = {"slow": 2}
    first, second = make_queue(registry_limits=limits), make_queue(registry_limits=limits)
    first.submit_many([("src", f"s{n}", [spec(f"s{n}", registry="slow")]) for n in range(5)])
    first.submit("src", "f0", [spec("f0", registry="fast")])
    a, b = first.claim(), second.claim()
    assert a is not None and b is not None and {a.spec.registry, b.spec.registry} == {"slow"}
    other = second.claim()
    assert other is not None and other.spec.registry == "fast"  # the limit does not block other registries
    assert first.claim() is None and second.claim() is None
    first.finish(a, "pushed", {}, None, None)
    c = second.claim()
    assert c is not None and c.spec.registry == "slow"
    assert first.claim() is None


def test_shared_layers_are_those_of_other_images(make_queue: MakeQueue) -> None:
    queue = make_queue()
    base, a_top, b_top = ("sha256:" + c * 64 for c in "abc")
    queue.record_layers("local", "team/a", {"sha256:" + "1" * 64: [base, a_top]})
    images = {"sha256:" + "2" * 64: [base, b_top], "sha256:" + "3" * 64: [b_top]}  # an index's children
    assert queue.shared_layers("local", images) == {base}
    queue.record_layers("local", "team/b", images)
    assert queue.shared_layers("local", images) == {base}  # its own children do not count
    assert queue.shared_layers("other", images) == set()  # nor images of another registry
    # the same manifest seen in another repository is the same image, not another one
    queue.record_layers("local", "team/copy", {"sha256:" + "1" * 64: [base, a_top]})
    assert queue.shared_layers("local", {"sha256:" + "1" * 64: [base, a_top]}) == {base}


def test_a_singleton_lease_has_one_holder(make_queue: MakeQueue) -> None:
    first, second = make_queue(), make_queue()
    assert first.hold("reconcile", 1.0)
    assert not second.hold("reconcile", 1.0)
    assert first.hold("reconcile", 1.0)  # the holder renews
    time.sleep(1.1)
    assert second.hold("reconcile", 1.0) and not first.hold("reconcile", 1.0)


def test_a_newer_schema_is_refused(make_queue: MakeQueue, backend: dict[str, Any]) -> None:
    make_queue().close()
    if backend["backend"] == "sqlite":
        with sqlite3.connect(backend["path"]) as db:
            db.execute("PRAGMA user_version = 99")
    else:
        import psycopg

        with psycopg.connect(backend["dsn"], autocommit=True) as db:
            db.execute("INSERT INTO oci_optimizer.schema_version (version) VALUES (99)")
    with pytest.raises(UsageError, match="schema version 99 is newer"):
        make_queue()


def test_an_unversioned_sqlite_file_is_migrated(tmp_path: Path) -> None:
    from optimizer.service.sqlite_queue import _V1, SCHEMA_VERSION

    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:  # the file as the service wrote it before schema versions
        db.executescript(_V1)
        for tag, status in (("a", "running"), ("b", "queued"), ("c", "done")):
            db.execute(
                "INSERT INTO jobs (dedupe_key, rule, source, event_format, registry, repository, tag, digest,"
                " dest_registry, dest_repository, dest_tag, status, attempts, created_at, updated_at,"
                " next_attempt_at) VALUES (?, 'r', 'src', 'distribution', 'local', 'team/app', ?, ?, 'local',"
                " 'team/app', ?, ?, 1, 1, 1, 1)",
                (spec(tag).dedupe_key, tag, DIGEST, tag + "-o", status),
            )
        db.execute("INSERT INTO events VALUES ('src\x1fe1', 1)")
    queue = open_queue("sqlite", path=path)
    try:
        assert queue.counts() == {"queued": 2, "running": 0, "done": 1, "failed": 0}
        assert queue.submit("src", "e1", [spec("x")]).duplicate_event
        job = queue.claim()
        assert job is not None and job.spec.tag == "a" and job.attempts == 2 and job.lease
        queue.finish(job, "pushed", {}, None, None)
    finally:
        queue.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_an_sqlite_without_returning_is_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from optimizer.service.sqlite_queue import SqliteQueue

    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 34, 1))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.34.1")
    with pytest.raises(UsageError, match=r"SQLite 3\.34\.1 is too old, the queue needs 3\.35\.0"):
        SqliteQueue(tmp_path / "jobs.sqlite")
    assert not (tmp_path / "jobs.sqlite").exists()
