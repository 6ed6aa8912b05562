"""The threads that take jobs from the queue (``Workers``), and the lease heartbeat (``Leases``).

Each job runs in ``job.Runner``: the library's ``Optimization`` reads the source by digest from its registry,
optimizes it, and pushes the result, with the service's checks between the steps.

Leases: a job is claimed with a lease that ``Leases`` renews every ``queue.heartbeat_seconds``. When a renewal
finds the lease gone (this process stalled past it and another worker took the job), the runner stops at the
next phase boundary, before recording or pushing anything, and writes nothing: the job belongs to the other
worker now (the queue refuses this attempt's writes anyway).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import traceback
from collections.abc import Callable

from .job import Runner
from .logs import log
from .queue import Job, Queue

__all__ = ["Leases", "Workers"]


def _malloc_trim() -> Callable[[], None]:
    """glibc's ``malloc_trim(0)``, or a no-op elsewhere.

    A job frees what it allocated (images are streamed, spooled to disk), but glibc keeps freed native memory
    (libarchive, zstd, zlib buffers) in per-thread arenas; without giving it back after each job, the service's
    RSS creeps up by some tens of KiB a job.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    return lambda: trim(0) and None


class Leases:
    """The leases of the jobs this process runs, renewed by one thread every ``heartbeat`` seconds.

    A renewal the queue refuses means another worker took the job over: its ``lost`` event is set and the
    runner stops. A renewal that fails (the database unreachable) is tried again every second until it goes
    through: the lease is still ours unless someone claimed the job meanwhile, which the next renewal tells.
    """

    def __init__(self, queue: Queue, heartbeat: float) -> None:
        self.queue = queue
        self.heartbeat = heartbeat
        self._held: dict[int, tuple[Job, threading.Event]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="optimizer-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def hold(self, job: Job) -> threading.Event:
        lost = threading.Event()
        with self._lock:
            self._held[job.id] = (job, lost)
        return lost

    def release(self, job: Job) -> None:
        with self._lock:
            self._held.pop(job.id, None)

    def renew_all(self) -> bool:
        """Renew every held lease once; False when the queue could not be reached for one of them."""
        with self._lock:
            held = list(self._held.values())
        reached = True
        for job, lost in held:
            try:
                if not self.queue.renew(job):
                    lost.set()
                    log(logging.WARNING, "job lease lost at renewal", job_id=job.id, attempt=job.attempts)
            except Exception as error:
                reached = False
                log(logging.WARNING, "cannot renew a job lease", job_id=job.id, error=str(error))
        return reached

    def _loop(self) -> None:
        wait = self.heartbeat
        while not self._stop.wait(wait):
            wait = self.heartbeat if self.renew_all() else min(1.0, self.heartbeat)


class Workers:
    """``concurrency`` threads, each taking the oldest due job from the queue and running it, one heartbeat
    thread renewing their leases, and (PostgreSQL) one thread listening for work queued elsewhere."""

    POLL_SECONDS = 1.0  # an idle worker looks at the queue at least this often

    def __init__(
        self,
        queue: Queue,
        runner: Runner,
        concurrency: int,
        wake: threading.Event,
        heartbeat: float | None = None,
    ) -> None:
        self.queue = queue
        self.runner = runner
        self.concurrency = concurrency
        self.wake = wake
        self.leases = Leases(queue, heartbeat or runner.config.queue.heartbeat_seconds)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.busy = 0
        self._busy_lock = threading.Lock()
        self._trim = _malloc_trim()

    def start(self) -> None:
        recovered = self.queue.recover()
        if recovered:
            log(logging.INFO, "jobs resumed after a restart", count=recovered)
        self._remove_leftovers()
        self.leases.start()
        listener = threading.Thread(
            target=self.queue.listen, args=(self.wake, self._stop), name="optimizer-listen", daemon=True
        )
        listener.start()
        self._threads.append(listener)
        for number in range(self.concurrency):
            thread = threading.Thread(target=self._loop, name=f"optimizer-worker-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _remove_leftovers(self) -> None:
        """Remove the job folders a killed process left, but not those of jobs another live process runs
        (worker processes of one machine may share ``state_dir``)."""
        work = self.runner.config.workdir
        if not work.is_dir() or self.runner.config.keep_workdirs:
            return
        for leftover in work.iterdir():
            number = leftover.name.removeprefix("job-").partition(".")[0]
            job = self.queue.get(int(number)) if number.isdigit() and len(number) < 19 else None
            if job is None or job.status != "running":
                shutil.rmtree(leftover, ignore_errors=True)

    def stop(self, grace: float = 10.0) -> None:
        """Stop taking jobs; wait up to ``grace`` seconds for running ones (the rest resume at next start)."""
        self._stop.set()
        self.wake.set()
        deadline = time.monotonic() + grace
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.leases.stop()

    def _idle(self) -> None:
        """Wait for work: until the next job is due, a wake-up, or the poll interval."""
        due = self.queue.next_due()
        now = time.time()
        # A due job we could not claim is held back by a registry's limit (or another worker won it): a
        # finishing job wakes us, else the poll interval.
        wait = self.POLL_SECONDS if due is None or due <= now else min(self.POLL_SECONDS, due - now)
        if self.wake.wait(wait):
            self.wake.clear()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                job = self.queue.claim()
                if job is None:
                    self._idle()
                    continue
            except Exception:
                log(logging.ERROR, "cannot read the queue", traceback=traceback.format_exc())
                self._stop.wait(1.0)
                continue
            with self._busy_lock:
                self.busy += 1
            lost = self.leases.hold(job)
            try:
                self.runner.run(job, lost)
            except Exception:  # the queue unreachable for longer than a worker waits: the lease will expire
                log(logging.ERROR, "job result not recorded", job_id=job.id, traceback=traceback.format_exc())
            finally:
                self.leases.release(job)
                with self._busy_lock:
                    self.busy -= 1
                self.wake.set()  # a slot of a limited registry may be free: let idle threads look again
                self._trim()
