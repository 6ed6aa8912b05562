"""``optimize serve``: a webhook service that optimizes images as they are pushed to a registry.

    serve("service.yaml")        # runs until SIGINT/SIGTERM; raises UsageError for a bad config

Modules: ``config`` (service.yaml, strict), ``events`` (every webhook format -> ``Event``), ``auth`` (bearer
token / HMAC, constant time), ``queue`` (durable SQLite job queue), ``worker`` (pull, optimize, push, loop
guards), ``app`` (Starlette routes), ``metrics`` (Prometheus), ``logs`` (JSON lines).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator, Sequence

from starlette.applications import Starlette

from ..errors import OptimizerError
from .app import Service, create_app
from .config import Config, load_config
from .logs import configure, log
from .worker import Runner, Workers

__all__ = ["build", "main", "serve"]


def build(config: Config) -> tuple[Service, Workers, Starlette]:
    """The service, its workers and the ASGI app (workers start and stop with the app's lifespan)."""
    service = Service.open(config)
    workers = Workers(
        service.queue, Runner(config, service.queue, service.metrics), config.concurrency, service.wake
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        workers.start()
        log(
            logging.INFO,
            "service started",
            listen=f"{config.listen_host}:{config.listen_port}",
            state_dir=str(config.state_dir),
            concurrency=config.concurrency,
            registries=sorted(config.registries),
            sources=sorted(config.sources),
            rules=[rule.name for rule in config.rules],
            pid=os.getpid(),
        )
        try:
            yield
        finally:
            workers.stop()
            service.queue.close()
            log(logging.INFO, "service stopped")

    return service, workers, create_app(service, lifespan=lifespan)


def serve(config_path: str | os.PathLike[str]) -> None:
    """Run the service described by ``config_path`` until SIGINT or SIGTERM."""
    import uvicorn

    config = load_config(config_path)
    configure(config.log_level)
    _, _, app = build(config)
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
    args = parser.parse_args(argv)
    try:
        serve(args.config)
    except OptimizerError as error:
        print(f"optimize serve: {error}", file=sys.stderr)
        return error.exit_code
    return 0
