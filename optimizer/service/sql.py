"""The SQL that both queue backends speak: a connection as ``Queue`` sees it (``Db``), where the two
dialects differ (``Dialect``), and schema migrations numbered from 1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from ..errors import UsageError

__all__ = ["Cursor", "Db", "Dialect", "apply_migrations"]

V = TypeVar("V")


class Cursor(Protocol):
    """What ``Db.execute`` returns."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Db(Protocol):
    """A connection that speaks the queue's SQL: ``?`` marks (never a ``?`` in a literal), rows read by column
    name. ``sqlite3.Connection`` is one as it is; a psycopg connection through ``postgres_queue._Db``."""

    def execute(self, query: str, args: Sequence[Any] = (), /) -> Cursor: ...

    def executemany(self, query: str, rows: Iterable[Sequence[Any]], /) -> object: ...


@dataclass(frozen=True)
class Dialect:
    """Where the SQL of the two backends differs, as data."""

    lock_rows: str  # ends a SELECT of rows the transaction will change: " FOR UPDATE", or "" (one writer)
    skip_locked: str  # the same, passing over rows that another transaction holds
    share_rows: str  # ends a SELECT of a row that must stay as read until the commit
    array_binds: bool  # a list binds as one array (``= ANY(?)``), else as one mark per item
    most_items: int  # without arrays: the most items in one list (SQLite bounds a statement's marks)

    def among(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        """The condition that ``column`` is one of ``values``, and its arguments."""
        if self.array_binds:
            return f"{column} = ANY(?)", [list(values)]
        return f"{column} IN ({', '.join('?' * len(values))})", list(values)

    def chunks(self, values: Sequence[V]) -> list[Sequence[V]]:
        """``values`` in pieces small enough for ``among``."""
        size = max(1, len(values) if self.array_binds else self.most_items)
        return [values[start : start + size] for start in range(0, len(values), size)]


def apply_migrations(
    db: Db, version: int, migrations: Sequence[str], what: str, record: Callable[[int], object]
) -> None:
    """Take a schema from ``version`` to ``len(migrations)``, statement by statement, ``record``-ing each
    version reached; ``what`` names the schema in the error that refuses a newer one."""
    if version > len(migrations):
        raise UsageError(
            f"{what} version {version} is newer than this service knows ({len(migrations)}): "
            "run a newer oci-optimizer"
        )
    for number in range(version, len(migrations)):
        for statement in migrations[number].split(";"):
            if statement.strip():
                db.execute(statement)
        record(number + 1)
