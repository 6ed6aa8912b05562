"""``optimize serve``: a webhook service that optimizes images as they are pushed to a registry.

    serve("service.yaml")                  # runs until SIGINT/SIGTERM; raises UsageError for a bad config
    serve("service.yaml", role="worker")   # one role of a fleet: "all" (default), "http" or "worker"

Roles: ``http`` answers webhooks and ``/jobs`` and only queues; ``worker`` runs jobs (and the reconcile pass)
and serves ``/healthz`` and ``/metrics`` only; ``all`` is both in one process. With the PostgreSQL queue, any
number of each run on any machines; with SQLite, on the machine that has the file.

Modules: ``config`` (service.yaml, strict), ``events`` (every webhook format -> ``Event``), ``auth`` (bearer
token / HMAC, constant time), ``queue`` (the ``Queue`` contract, written once in the SQL of ``sql``;
``sqlite_queue`` and ``postgres_queue`` supply the database, ``records`` what it stores), ``worker`` (pull,
optimize, push, loop guards, leases), ``reconcile`` (missed notifications), ``app`` (Starlette routes),
``metrics`` (Prometheus), ``logs`` (JSON lines).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator, Sequence

from starlette.applications import Starlette

from ..errors import OptimizerError, UsageError
from .app import ROLES, Service, create_app
from .config import Config, load_config
from .job import Runner
from .logs import configure, log
from .reconcile import Reconciler
from .worker import Workers

__all__ = ["ROLES", "build", "main", "serve"]


def build(config: Config, role: str = "all") -> tuple[Service, Workers | None, Starlette]:
    """The service, its workers (none for the ``http`` role) and the ASGI app; workers and the reconcile
    pass start and stop with the app's lifespan."""
    if role not in ROLES:
        raise UsageError(f"--role: expected one of {', '.join(ROLES)}, got {role!r}")
    service = Service.open(config)
    runner = Runner(config, service.queue, service.metrics)
    workers = None
    reconciler = None
    if role in ("all", "worker"):
        workers = Workers(service.queue, runner, config.concurrency, service.wake)
        if config.reconcile is not None:
            reconciler = Reconciler(config, service.queue, runner.client, service.wake)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if workers is not None:
            workers.start()
        if reconciler is not None:
            reconciler.start()
        log(
            logging.INFO,
            "service started",
            role=role,
            listen=f"{config.listen_host}:{config.listen_port}",
            state_dir=str(config.state_dir),
            queue=config.queue.backend,
            concurrency=config.concurrency if workers is not None else 0,
            registries=sorted(config.registries),
            sources=sorted(config.sources),
            rules=[rule.name for rule in config.rules],
            pid=os.getpid(),
        )
        try:
            yield
        finally:
            if reconciler is not None:
                reconciler.stop()
            if workers is not None:
                workers.stop()
            service.queue.close()
            log(logging.INFO, "service stopped", role=role)

    return service, workers, create_app(service, lifespan=lifespan, role=role)


def serve(config_path: str | os.PathLike[str], role: str = "all") -> None:
    """Run the service described by ``config_path`` in ``role`` until SIGINT or SIGTERM."""
    import uvicorn

    config = load_config(config_path)
    configure(config.log_level)
    _, _, app = build(config, role)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.listen_host,
            port=config.listen_port,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=10,
            server_header=False,
        )
    )
    server.run()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="optimize serve", description="Run the webhook service.")
    parser.add_argument("--config", required=True, help="the service.yaml file")
    parser.add_argument(
        "--role",
        choices=ROLES,
        default="all",
        help="http: webhooks and /jobs only; worker: jobs only; all (default): both in one process",
    )
    args = parser.parse_args(argv)
    try:
        serve(args.config, args.role)
    except OptimizerError as error:
        print(f"optimize serve: error: {error}", file=sys.stderr)
        return error.exit_code
    return 0
