"""The SQLite job queue: de-duplication, claims, retries, failure, and surviving a restart."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from optimizer.service.queue import JobSpec, Queue

DIGEST = "sha256:" + "cd" * 32


def spec(tag: str = "v1", rule: str = "r", digest: str = DIGEST) -> JobSpec:
    return JobSpec(
        rule, "src", "distribution", "local", "team/app", tag, digest, None, "local", "team/app", tag + "-o"
    )


def test_same_event_id_makes_one_job(tmp_path: Path) -> None:
    queue = Queue(tmp_path / "q.sqlite3")
    first = queue.submit("src", "e1", [spec()])
    again = queue.submit("src", "e1", [spec()])
    assert len(first.created) == 1 and again.duplicate_event and not again.created
    assert queue.counts()["queued"] == 1
    # the same id from another source is another event
    other = queue.submit("other", "e1", [spec("v2")])
    assert len(other.created) == 1


def test_same_digest_and_rule_joins_the_active_job(tmp_path: Path) -> None:
    queue = Queue(tmp_path / "q.sqlite3")
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
    assert claimed is not None and claimed.id == job_id
    assert queue.submit("src", "e5", [spec()]).joined == (job_id,)  # still running: joins
    queue.finish(job_id, "pushed", {"total": 1.0}, {"a": 1}, DIGEST)
    assert len(queue.submit("src", "e6", [spec()]).created) == 1


def test_claim_retry_fail_and_timings(tmp_path: Path) -> None:
    queue = Queue(tmp_path / "q.sqlite3")
    (job_id,) = queue.submit("src", None, [spec()]).created
    job = queue.claim()
    assert job is not None and job.status == "running" and job.attempts == 1
    assert queue.claim() is None
    queue.retry(job_id, "push: registry down", 60.0, {"pull": 0.1})
    assert queue.claim() is None  # not due yet
    assert queue.claim(time.time() + 61) is not None
    queue.fail(job_id, "push: still down", {"pull": 0.2})
    failed = queue.get(job_id)
    assert failed is not None
    assert (failed.status, failed.attempts, failed.error, failed.timings) == (
        "failed",
        2,
        "push: still down",
        {"pull": 0.2},
    )
    assert failed.to_json()["destination"] == "local/team/app:v1-o"


def test_running_jobs_resume_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    queue = Queue(path)
    created = queue.submit("src", "e1", [spec("a"), spec("b")]).created
    assert queue.claim() is not None
    queue.record_pushed(["sha256:" + "ee" * 32], created[0], "local/team/app:a-o")
    del queue  # the process dies: nothing is closed cleanly
    reopened = Queue(path)
    assert reopened.recover() == 1
    assert reopened.counts() == {"queued": 2, "running": 0, "done": 0, "failed": 0}
    assert reopened.was_pushed("sha256:" + "ee" * 32) and not reopened.was_pushed(DIGEST)
    assert reopened.submit("src", "e1", [spec("a")]).duplicate_event  # event ids survive too
    resumed = reopened.claim()
    assert resumed is not None and resumed.attempts == 2  # the interrupted attempt counts


def test_threads_never_claim_the_same_job(tmp_path: Path) -> None:
    queue = Queue(tmp_path / "q.sqlite3")
    for number in range(200):
        queue.submit("src", f"e{number}", [spec(f"t{number}")])
    claimed: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        while (job := queue.claim()) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 200
