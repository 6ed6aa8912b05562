"""A strict reader of the service's YAML: every key is checked and accounted for, and every error names its
key path (``rules[0].options.compression: ...``). Secrets never print themselves."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import UsageError

__all__ = ["Reader", "Secret", "kind_of", "nonempty"]


class Secret:
    """A secret value that does not print itself."""

    __slots__ = ("_value", "origin")

    def __init__(self, value: str, origin: str) -> None:
        self._value = value
        self.origin = origin  # "inline", "env NAME" or "file PATH": safe to log

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret(<{self.origin}>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class Reader:
    """Walks a YAML mapping, remembering the key path for error messages."""

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, dict):
            raise UsageError(f"{path or 'service config'}: expected a mapping, got {kind_of(data)}")
        self.data: dict[str, Any] = data
        self.path = path
        self.seen: set[str] = set()

    def _at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def raw(self, key: str) -> Any:
        self.seen.add(key)
        return self.data.get(key)

    def has(self, key: str) -> bool:
        return key in self.data

    def text(self, key: str, default: str | None = None, *, required: bool = False) -> str:
        value = self.raw(key)
        if value is None:
            if required or default is None:
                raise UsageError(f"{self._at(key)}: required")
            return default
        if not isinstance(value, str) or not value:
            raise UsageError(f"{self._at(key)}: expected a non-empty string, got {kind_of(value)}")
        return value

    def opt_str(self, key: str) -> str | None:
        return self.text(key) if self.raw(key) is not None else None

    def flag(self, key: str, default: bool) -> bool:
        value = self.raw(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise UsageError(f"{self._at(key)}: expected true or false, got {kind_of(value)}")
        return value

    def integer(self, key: str, default: int, minimum: int = 0) -> int:
        value = self.raw(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise UsageError(f"{self._at(key)}: expected an integer >= {minimum}, got {value!r}")
        return value

    def number(self, key: str, default: float, minimum: float = 0.0) -> float:
        value = self.raw(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
            raise UsageError(f"{self._at(key)}: expected a number >= {minimum}, got {value!r}")
        return float(value)

    def str_list(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.raw(key)
        if value is None:
            return default
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise UsageError(f"{self._at(key)}: expected a list of non-empty strings, got {value!r}")
        return tuple(value)

    def mapping(self, key: str) -> Reader | None:
        value = self.raw(key)
        return None if value is None else Reader(value, self._at(key))

    def secret(self, key: str) -> Secret | None:
        value = self.raw(key)
        if value is None:
            return None
        at = self._at(key)
        if isinstance(value, str):
            return nonempty(Secret(value, "inline"), at)
        sub = Reader(value, at)
        keys = [k for k in ("value", "env", "file") if sub.has(k)]
        if len(keys) != 1:
            raise UsageError(f"{at}: give exactly one of value, env or file")
        if keys[0] == "value":
            secret = Secret(sub.text("value"), "inline")
        elif keys[0] == "env":
            name = sub.text("env")
            if name not in os.environ:
                raise UsageError(f"{at}: environment variable {name} is not set")
            secret = Secret(os.environ[name], f"env {name}")
        else:
            file = sub.text("file")
            try:
                text = Path(file).read_text(encoding="utf-8").strip()
            except OSError as error:
                raise UsageError(f"{at}: cannot read secret file {file}: {error.strerror}") from error
            secret = Secret(text, f"file {file}")
        sub.done()
        return nonempty(secret, at)

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise UsageError(f"{self._at(unknown[0])}: unknown key")


def nonempty(secret: Secret, at: str) -> Secret:
    if not secret.reveal():
        raise UsageError(f"{at}: the secret is empty")
    return secret


def kind_of(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__
