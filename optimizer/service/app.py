"""The HTTP side: ``POST /hook``, ``GET /healthz``, ``GET /jobs``, ``GET /jobs/{id}``, ``GET /metrics``.

``POST /hook`` (or ``/hook/{source}`` to name the source) answers within milliseconds: it checks the size,
authenticates the sender, parses the body strictly, decides per event, records the jobs in the queue and
answers ``202``, also for the events it ignores: a non-2xx answer makes Docker's registry retry the same event
forever and hold back every later one. Only a request that is not acceptable as such gets an error status,
checked in this order (nothing about the body is judged before its sender is known):

    413  larger than ``max_body_bytes``
    401  no valid bearer token / HMAC signature (logged with the reason, never the secret)
    415  a content type that is not JSON
    400  not strict JSON, nested deeper than ``MAX_JSON_DEPTH``, or not a webhook body of any registry we read
    503  the queue's database cannot be reached: the registry delivers the event again later

Which routes a process serves depends on its role (``optimize serve --role``): ``all`` and ``http`` serve
every route; ``worker`` only ``/healthz`` and ``/metrics`` (probes and scraping of a worker machine).

Starlette because it is a small, well-kept ASGI toolkit (routing, requests, responses; no ORM, no templating)
that runs on uvicorn, both already dependencies; everything slow happens in the worker threads.
"""

from __future__ import annotations

import hmac
import logging
import threading
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .auth import authenticate, bearer_of
from .config import Config, Rule, SourceConfig
from .events import Event, EventError, parse_events, valid_reference
from .logs import log
from .metrics import CONTENT_TYPE, Metrics
from .queue import MAX_JOB_ID, STATUSES, JobSpec, Queue, QueueSettings, QueueUnavailable, open_queue

__all__ = ["ROLES", "Service", "create_app", "open_service_queue", "plan_event"]

ROLES = ("all", "http", "worker")
_JOBS_PARAMETERS = frozenset({"status", "limit", "offset"})


def open_service_queue(config: Config) -> Queue:
    """The queue the configuration names, with the claim settings of the configuration."""
    settings = QueueSettings(
        lease_seconds=config.queue.lease_seconds,
        max_attempts=config.retry.attempts,
        registry_limits=config.registry_limits,
    )
    if config.queue.backend == "postgres":
        assert config.queue.dsn is not None
        return open_queue(
            "postgres", dsn=config.queue.dsn.reveal(), settings=settings, connections=config.concurrency + 6
        )
    return open_queue("sqlite", path=config.database, settings=settings)


@dataclass
class Service:
    """Everything a running service holds; the app and the workers share it."""

    config: Config
    queue: Queue
    metrics: Metrics
    wake: threading.Event

    @classmethod
    def open(cls, config: Config) -> Service:
        config.state_dir.mkdir(parents=True, exist_ok=True)
        queue = open_service_queue(config)
        return cls(config, queue, Metrics(queue.counts), threading.Event())


@dataclass(frozen=True)
class Decision:
    event: Event
    specs: tuple[JobSpec, ...]
    reason: str | None  # why nothing is queued


def _destination_of(rule: Rule, event: Event) -> tuple[str, str] | str:
    assert event.tag is not None
    repository, tag = rule.destination.render(event.repository, event.tag)
    if not valid_reference(repository, tag):
        return f"rule {rule.name}: destination {repository}:{tag} is not a valid reference"
    if not rule.destination.allows(tag):
        return f"rule {rule.name}: destination tag {tag} is not in allowed_tags"
    return repository, tag


def plan_event(config: Config, source: SourceConfig, event: Event, queue: Queue) -> Decision:
    """Which jobs an event asks for, or why none: the loop guards that need no registry run here."""
    reason = event.ignore_reason(config.user_agent)
    if reason is not None:
        return Decision(event, (), reason)
    assert event.digest is not None and event.tag is not None
    if queue.was_pushed(event.digest):
        return Decision(event, (), "pushed by this service (digest)")
    specs: list[JobSpec] = []
    reasons: list[str] = []
    for rule in config.rules:
        if not rule.matches(source.registry, event.repository, event.tag):
            continue
        destination = _destination_of(rule, event)
        if isinstance(destination, str):
            reasons.append(destination)
            continue
        specs.append(
            JobSpec(
                rule=rule.name,
                source=source.name,
                event_format=event.format,
                registry=source.registry,
                repository=event.repository,
                tag=event.tag,
                digest=event.digest,
                media_type=event.media_type,
                dest_registry=rule.destination.registry,
                dest_repository=destination[0],
                dest_tag=destination[1],
            )
        )
    if not specs:
        return Decision(event, (), "; ".join(reasons) or "no rule matches")
    return Decision(event, tuple(specs), None)


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None when larger than ``limit`` (counted as it arrives, whatever Content-Length says)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def _client(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "-"


def _job_id(text: str) -> int | None:
    """A job id from a URL: digits only, within the range the database stores (else no such job)."""
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        return None
    number = int(text)
    return number if 1 <= number <= MAX_JOB_ID else None


def _query_int(request: Request, name: str, default: int, low: int, high: int) -> int | str:
    text = request.query_params.get(name)
    if text is None:
        return default
    if not text.isascii() or not text.isdigit() or len(text) > 19 or not low <= int(text) <= high:
        return f"{name} must be an integer from {low} to {high}"
    return int(text)


def _unavailable(error: QueueUnavailable) -> JSONResponse:
    log(logging.ERROR, "queue unavailable", error=str(error))
    return _error(503, "the job queue is unavailable; try again later", **{"Retry-After": "5"})


def create_app(service: Service, lifespan: Any = None, role: str = "all") -> Starlette:
    config = service.config
    metrics = service.metrics

    async def hook(request: Request) -> Response:
        named = request.path_params.get("source")
        if named is not None and named not in config.sources:
            metrics.hook_requests.labels("unknown-source").inc()
            return _error(404, "no such source")
        body = await _read_body(request, config.max_body_bytes)
        if body is None:
            metrics.hook_requests.labels("too-large").inc()
            log(
                logging.WARNING,
                "webhook body too large",
                client=_client(request),
                limit=config.max_body_bytes,
            )
            return _error(413, f"body larger than {config.max_body_bytes} bytes")
        candidates = [config.sources[named]] if named is not None else list(config.sources.values())
        headers = dict(request.headers)
        auth = authenticate(candidates, headers, body)
        if auth.source is None:
            metrics.hook_requests.labels("unauthorized").inc()
            log(
                logging.WARNING,
                "webhook refused",
                reason=auth.reason,
                client=_client(request),
                user_agent=request.headers.get("user-agent", ""),
                path=request.url.path,
            )
            return _error(401, auth.reason, **{"WWW-Authenticate": 'Bearer realm="optimizer"'})
        source = auth.source
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type and "json" not in content_type:
            metrics.hook_requests.labels("unsupported-media-type").inc()
            return _error(415, "expected a JSON body")
        try:
            events = parse_events(body, headers, source.format)
        except EventError as error:
            metrics.hook_requests.labels("malformed").inc()
            log(
                logging.WARNING,
                "webhook body refused",
                source=source.name,
                reason=str(error),
                client=_client(request),
            )
            return _error(400, str(error))
        try:
            answers = await run_in_threadpool(_accept, service, source, events)
        except QueueUnavailable as error:
            metrics.hook_requests.labels("unavailable").inc()
            return _unavailable(error)
        metrics.hook_requests.labels("accepted").inc()
        if any(a["outcome"] == "queued" for a in answers):
            service.wake.set()
        return JSONResponse({"source": source.name, "events": answers}, status_code=202)

    async def healthz(request: Request) -> Response:
        try:
            counts = await run_in_threadpool(service.queue.counts)
        except Exception as error:  # the database is unusable: say so, with a status a probe understands
            return JSONResponse({"status": "error", "error": str(error)}, status_code=503)
        return JSONResponse({"status": "ok", "role": role, "jobs": counts})

    def _admin(request: Request) -> Response | None:
        if config.admin_token is None:
            return None
        token = bearer_of(dict(request.headers)) or ""
        if not hmac.compare_digest(token.encode(), config.admin_token.reveal().encode()):
            return _error(401, "this endpoint needs the admin token", **{"WWW-Authenticate": "Bearer"})
        return None

    async def jobs(request: Request) -> Response:
        refused = _admin(request)
        if refused is not None:
            return refused
        unknown = sorted(set(request.query_params) - _JOBS_PARAMETERS)
        if unknown:
            return _error(400, f"unknown query parameter {unknown[0]!r} (status, limit, offset)")
        status = request.query_params.get("status")
        if status is not None and status not in STATUSES:
            return _error(400, "status must be queued, running, done or failed")
        limit = _query_int(request, "limit", 100, 1, 1000)
        offset = _query_int(request, "offset", 0, 0, MAX_JOB_ID)
        for checked in (limit, offset):
            if isinstance(checked, str):
                return _error(400, checked)
        assert isinstance(limit, int) and isinstance(offset, int)
        try:
            found = await run_in_threadpool(service.queue.jobs, status, limit, offset)
            counts = await run_in_threadpool(service.queue.counts)
        except QueueUnavailable as error:
            return _unavailable(error)
        return JSONResponse({"jobs": [job.to_json(with_report=False) for job in found], "counts": counts})

    async def job(request: Request) -> Response:
        refused = _admin(request)
        if refused is not None:
            return refused
        if request.query_params:
            return _error(400, "this endpoint takes no query parameters")
        job_id = _job_id(request.path_params["job_id"])
        if job_id is None:
            return _error(404, "no such job")
        try:
            found = await run_in_threadpool(service.queue.get, job_id)
        except QueueUnavailable as error:
            return _unavailable(error)
        if found is None:
            return _error(404, "no such job")
        return JSONResponse(found.to_json())

    async def metrics_endpoint(request: Request) -> Response:
        return Response(await run_in_threadpool(metrics.render), media_type=CONTENT_TYPE)

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]
    if role in ("all", "http"):
        routes += [
            Route("/hook", hook, methods=["POST"]),
            Route("/hook/{source}", hook, methods=["POST"]),
            Route("/jobs", jobs, methods=["GET"]),
            Route("/jobs/{job_id}", job, methods=["GET"]),
        ]
    return Starlette(routes=routes, lifespan=lifespan)


def _accept(service: Service, source: SourceConfig, events: list[Event]) -> list[dict[str, Any]]:
    """Decide every event of one request and record them in one transaction (runs in a thread: the database
    blocks)."""
    decisions = [plan_event(service.config, source, event, service.queue) for event in events]
    wanted = [(source.name, d.event.event_id, d.specs) for d in decisions if d.reason is None]
    results = iter(service.queue.submit_many(wanted) if wanted else [])
    answers: list[dict[str, Any]] = []
    for decision in decisions:
        event = decision.event
        answer: dict[str, Any] = {"id": event.event_id, "repository": event.repository, "tag": event.tag}
        if decision.reason is not None:
            answer.update(outcome="ignored", reason=decision.reason)
        else:
            result = next(results)
            if result.duplicate_event:
                answer.update(outcome="duplicate", reason="event id seen before")
            elif result.created:
                answer.update(outcome="queued", jobs=list(result.created + result.joined))
            else:
                answer.update(outcome="joined", jobs=list(result.joined))
        service.metrics.events.labels(event.format, answer["outcome"]).inc()
        level = logging.INFO if answer["outcome"] in ("queued", "joined") else logging.DEBUG
        log(
            level,
            f"event {answer['outcome']}",
            source=source.name,
            event_id=event.event_id,
            action=event.action,
            repository=event.repository,
            tag=event.tag,
            digest=event.digest,
            reason=answer.get("reason"),
            job_ids=answer.get("jobs"),
        )
        answers.append(answer)
    return answers
