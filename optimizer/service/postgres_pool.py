"""Connections to PostgreSQL for the queue: a small pool that never hands out a broken connection."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row

from ..errors import UsageError
from .postgres_schema import SCHEMA

__all__ = ["Connection", "Pool", "describe_dsn"]

Connection = psycopg.Connection[dict[str, Any]]


def describe_dsn(dsn: str) -> str:
    """``host:port/dbname`` of a DSN, for messages (never the password); the DSN itself if it does not parse."""
    try:
        parts = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as error:
        raise UsageError(f"queue.dsn: not a PostgreSQL connection string: {error}") from None
    host = parts.get("host") or parts.get("hostaddr") or "localhost"
    return f"{host}:{parts.get('port') or 5432}/{parts.get('dbname') or parts.get('user') or ''}"


class Pool:
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
