"""A real PostgreSQL server for tests and benchmarks: Debian's ``postgresql`` (``initdb`` + ``pg_ctl``) in a
temporary directory, listening on 127.0.0.1 only (no Unix socket), with a random password (scram-sha-256).

``initdb`` and ``postgres`` refuse to run as root: as root, they run as the ``postgres`` system user the
Debian package creates (``runuser``), in a directory it owns. ``fsync=off``: the tests kill the server
process, never the machine, and the page cache keeps what was committed.

    server = PostgresServer.start()        # or the pytest fixtures in tests/service/conftest.py
    dsn = server.create_database("t1")     # postgresql://postgres:PASSWORD@127.0.0.1:PORT/t1
    server.crash(); server.restart()       # pg_ctl stop -m immediate (no shutdown checkpoint), then start
    server.close()
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["PostgresServer", "postgres_bin"]


def postgres_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/N/bin`` that has ``initdb`` and ``pg_ctl``, or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name)
    )
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    def __init__(self, bindir: Path, root: Path, port: int, password: str) -> None:
        self.bindir = bindir
        self.root = root
        self.data = root / "data"
        self.log_path = root / "postgres.log"
        self.port = port
        self.password = password

    @classmethod
    def start(cls, port: int | None = None) -> PostgresServer:
        bindir = postgres_bin()
        if bindir is None:
            raise FileNotFoundError("PostgreSQL server not found (Debian package postgresql)")
        root = Path(tempfile.mkdtemp(prefix="oci-optimizer-pg-"))
        server = cls(bindir, root, port or _free_port(), secrets.token_hex(16))
        (root / "password").write_text(server.password + "\n")
        if os.geteuid() == 0:
            shutil.chown(root, "postgres", "postgres")
            shutil.chown(root / "password", "postgres", "postgres")
        server._run(
            "initdb",
            "-D",
            str(server.data),
            "-U",
            "postgres",
            f"--pwfile={root / 'password'}",
            "-A",
            "scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
        )
        server.restart()
        return server

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bindir / program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            log = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
            raise RuntimeError(f"{program} {' '.join(args)} failed: {done.stdout}{done.stderr}{log}")

    def restart(self) -> None:
        """Start the server (after ``crash`` or ``stop``) on the same port and data; returns once it accepts."""
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories='' "
            "-c fsync=off -c full_page_writes=off -c max_connections=300 -c shared_buffers=32MB"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-o", options, "-w", "-t", "60", "start"
        )

    def crash(self) -> None:
        """Stop at once, as a crash would: no shutdown checkpoint, connections cut, recovery at next start."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"'.encode())
        return self.dsn(name)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):  # already stopped
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
