"""Catching up on missed notifications: a periodic pass over the tags of the configured repositories.

A registry keeps undelivered notifications in memory only: the events of pushes made while it restarts, or
while the service is down for longer than the registry retries, are lost. With ``reconcile`` configured, the
worker side lists the tags of the named repositories every ``interval_seconds`` (and once at start-up), and
queues a job for every tag a rule matches whose image was never handled: each tag becomes a push event of
format ``reconcile`` (id ``REPOSITORY:TAG@DIGEST``, so a tag is offered once per digest) and goes through the
same planning as a webhook event (loop guards, ``allowed_tags``), minus the jobs already made for it, whatever
their outcome.

One replica of a fleet reconciles at a time: the one holding the queue's ``reconcile`` singleton lease.
Never touched: repositories that are not listed (no registry catalog is read), tags no rule matches.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from ..registry import Reference, RegistryClient
from .app import plan_event
from .config import Config, SourceConfig
from .events import Event
from .logs import log
from .queue import Queue

__all__ = ["ReconcileResult", "Reconciler"]

SOURCE = "reconcile"


@dataclass(frozen=True)
class ReconcileResult:
    tags: int  # tags listed
    queued: tuple[int, ...]  # jobs made


class Reconciler:
    """Runs ``run_once`` in a thread every ``config.reconcile.interval_seconds``, on one replica at a time."""

    def __init__(
        self,
        config: Config,
        queue: Queue,
        client: Callable[[str], RegistryClient],
        wake: threading.Event,
    ) -> None:
        assert config.reconcile is not None
        self.config = config
        self.settings = config.reconcile
        self.queue = queue
        self.client = client
        self.wake = wake
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="optimizer-reconcile", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        interval = self.settings.interval_seconds
        while not self._stop.is_set():
            try:
                # Held for two intervals and renewed every interval: the holder keeps it while it lives.
                if self.queue.hold("reconcile", 2 * interval):
                    self.run_once()
            except Exception:
                log(logging.ERROR, "reconcile failed", traceback=traceback.format_exc())
            self._stop.wait(interval)

    def run_once(self) -> ReconcileResult:
        """List every configured repository's tags and queue what was never handled."""
        listed = 0
        queued: list[int] = []
        for registry, repositories in sorted(self.settings.repositories.items()):
            client = self.client(registry)
            host = self.config.registries[registry].host
            source = SourceConfig(SOURCE, registry)
            try:
                for repository in repositories:
                    tags = client.list_tags(repository)
                    listed += len(tags)
                    for tag in tags:
                        if self._stop.is_set():
                            break
                        if not any(rule.matches(registry, repository, tag) for rule in self.config.rules):
                            continue
                        digest = client.manifest_digest(Reference(host, repository, tag, None))
                        if digest is not None:
                            queued += self._offer(source, repository, tag, digest)
            finally:
                client.close()
        if queued:
            self.wake.set()
        log(logging.INFO, "reconcile done", tags=listed, job_ids=queued)
        return ReconcileResult(listed, tuple(queued))

    def _offer(self, source: SourceConfig, repository: str, tag: str, digest: str) -> list[int]:
        event = Event(SOURCE, f"{repository}:{tag}@{digest}", "push", repository, tag, digest, None)
        decision = plan_event(self.config, source, event, self.queue)
        if decision.reason is not None:
            return []
        known = self.queue.known_keys([spec.dedupe_key for spec in decision.specs])
        specs = [spec for spec in decision.specs if spec.dedupe_key not in known]
        if not specs:
            return []
        result = self.queue.submit(SOURCE, event.event_id, specs)
        if result.created:
            log(
                logging.INFO,
                "event queued",
                source=SOURCE,
                event_id=event.event_id,
                repository=repository,
                tag=tag,
                digest=digest,
                job_ids=list(result.created),
            )
        return list(result.created)
