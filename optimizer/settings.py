"""Settings declared once: a frozen dataclass field says its name, type, default and help; the command-line
flags and the configuration keys (the service's YAML) are derived from it.

    @dataclass(frozen=True)
    class StripElfOptions:
        mode: Literal["debug", "unneeded", "all"] = setting("unneeded", "what to strip: debug, unneeded, all")
        keep_debuglink: bool = setting(True, "keep .gnu_debuglink", flag="--strip-drop-debuglink")

``add_arguments(parser, StripElfOptions, "strip")`` adds ``--strip-mode {debug,unneeded,all}`` and
``--strip-drop-debuglink`` (a bool that defaults to True gets a flag that turns it off); ``from_args`` builds
the dataclass from what was given (the rest keep their defaults); ``from_mapping`` builds it from a mapping
such as YAML gives, checking every value against the field's type (``coerce``). Types: bool, int, float,
str, ``Literal[...]`` (choices), ``str`` enums, ``tuple[str, ...]`` (comma-separated on the command line,
a list in YAML), ``X | None``, and any type with a ``parse`` function given in the metadata.

A setting marked ``output_only`` concerns only what a run writes (``--format``): a parser for a command that
writes nothing (``optimize analyze``) is built with ``add_arguments(..., refuse_output=WHY)``, which leaves such
flags out of ``--help`` and makes them a usage error saying WHY (``refuse_argument``), not a silent no-op.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

from .errors import UsageError

__all__ = [
    "Setting",
    "add_arguments",
    "coerce",
    "from_args",
    "from_mapping",
    "output_only_flags",
    "refuse_argument",
    "setting",
    "settings_of",
]

_KEY = "oci-optimizer.setting"


@dataclass(frozen=True)
class Setting:
    """How a dataclass field shows itself to users.

    help: one line for ``--help`` and the docs. flag: the command-line flag (default ``--PREFIX-NAME``);
    aliases: more flags for the same setting. metavar: the placeholder in ``--help``. parse: text (a flag's
    argument, or a string in the config) -> value, for types this module does not know. cli/config: whether
    the setting is offered on the command line / in the config. repeat: a tuple setting whose flag may be
    given several times (instead of one comma-separated list). output_only: it concerns only the output a run
    writes (refused where nothing is written: ``add_arguments(..., refuse_output=...)``).
    """

    help: str
    flag: str | None = None
    aliases: tuple[str, ...] = ()
    metavar: str | None = None
    parse: Callable[[str], Any] | None = None
    cli: bool = True
    config: bool = True
    repeat: bool = False
    output_only: bool = False


def setting(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    aliases: tuple[str, ...] = (),
    metavar: str | None = None,
    parse: Callable[[str], Any] | None = None,
    cli: bool = True,
    config: bool = True,
    repeat: bool = False,
    output_only: bool = False,
    compare: bool = True,
) -> Any:
    """A dataclass field with its user-facing description (see ``Setting``)."""
    metadata = {_KEY: Setting(help, flag, aliases, metavar, parse, cli, config, repeat, output_only)}
    if isinstance(default, (list, dict, set)):
        raise TypeError("settings must default to immutable values (use a tuple or a frozenset)")
    return dataclasses.field(default=default, metadata=metadata, compare=compare)


def settings_of(cls: type[Any]) -> list[tuple[dataclasses.Field[Any], Setting, Any]]:
    """The declared settings of a dataclass: (field, its Setting, its resolved type), in order."""
    hints = typing.get_type_hints(cls)
    out = []
    for field in dataclasses.fields(cls):
        meta = field.metadata.get(_KEY)
        if isinstance(meta, Setting):
            out.append((field, meta, hints[field.name]))
    return out


# ---------------------------------------------------------------------------------------------------------
# Command line


def _dest(prefix: str, name: str) -> str:
    return f"{prefix.replace('-', '_')}__{name}" if prefix else name


def _flag(prefix: str, name: str, meta: Setting) -> str:
    if meta.flag:
        return meta.flag
    stem = name.replace("_", "-")
    return f"--{prefix}-{stem}" if prefix else f"--{stem}"


def _optional(hint: Any) -> Any:
    """``X | None`` -> X (and any other hint unchanged)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return hint


def _text_parser(hint: Any, meta: Setting, what: str) -> Callable[[str], Any]:
    if meta.parse is not None:
        return meta.parse
    hint = _optional(hint)
    origin = typing.get_origin(hint)
    if origin in (tuple, frozenset) and not meta.repeat:
        item = _text_parser(typing.get_args(hint)[0], Setting(meta.help), what)
        make = frozenset if origin is frozenset else tuple
        return lambda text: make(item(part.strip()) for part in text.split(",") if part.strip())
    if origin in (tuple, frozenset):
        return _text_parser(typing.get_args(hint)[0], Setting(meta.help), what)
    if hint in (int, float, str):
        return hint  # type: ignore[no-any-return]
    if isinstance(hint, type) and issubclass(hint, Enum):
        return hint
    if origin is Literal:
        return str
    raise TypeError(f"{what}: no command-line parser for {hint}; give the setting a parse function")


class _Refused(argparse.Action):
    """A flag accepted only to be refused: a usage error that names it and says why (``refuse_argument``)."""

    def __init__(self, option_strings: Sequence[str], dest: str, why: str = "", **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.why = why

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: Any = None
    ) -> None:
        raise argparse.ArgumentError(self, self.why)


def refuse_argument(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    flags: Sequence[str],
    why: str,
    *,
    takes_value: bool = True,
    dest: str | None = None,
    default: Any = argparse.SUPPRESS,
) -> None:
    """Take ``flags`` (with a value unless ``takes_value`` is False) only to fail with a usage error saying
    ``why`` (exit 2, as argparse's own); left out of ``--help``. ``default`` is what ``dest`` holds meanwhile."""
    parser.add_argument(
        *flags,
        action=_Refused,
        why=why,
        nargs=None if takes_value else 0,
        dest=dest or flags[0].lstrip("-").replace("-", "_"),
        default=default,
        help=argparse.SUPPRESS,
    )


def output_only_flags(cls: type[Any], prefix: str = "") -> list[str]:
    """The flags of the settings of ``cls`` marked ``output_only`` (what a command writing nothing refuses)."""
    return [_flag(prefix, f.name, meta) for f, meta, _ in settings_of(cls) if meta.cli and meta.output_only]


def add_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type[Any],
    prefix: str = "",
    *,
    refuse_output: str | None = None,
) -> None:
    """Add a flag for every setting of ``cls`` that is offered on the command line; with ``refuse_output``,
    those of ``output_only`` settings are refused with that reason (``refuse_argument``)."""
    for field, meta, hint in settings_of(cls):
        if not meta.cli:
            continue
        flags = [_flag(prefix, field.name, meta), *meta.aliases]
        common: dict[str, Any] = {"dest": _dest(prefix, field.name), "default": argparse.SUPPRESS}
        if meta.output_only and refuse_output is not None:
            refuse_argument(
                parser, flags, refuse_output, takes_value=_optional(hint) is not bool, dest=common["dest"]
            )
            continue
        if _optional(hint) is bool:
            turns_off = field.default is True
            parser.add_argument(
                *flags, action="store_false" if turns_off else "store_true", help=meta.help, **common
            )
            continue
        kind = _optional(hint)
        if typing.get_origin(kind) is Literal:
            common["choices"] = typing.get_args(kind)
        elif isinstance(kind, type) and issubclass(kind, Enum):
            common["choices"] = list(kind)
        if meta.repeat:
            common["action"] = "append"
        parser.add_argument(
            *flags,
            type=_text_parser(hint, meta, f"{cls.__name__}.{field.name}"),
            metavar=meta.metavar,
            help=meta.help + ("" if "default" in meta.help else _default_text(field.default)),
            **common,
        )


def _default_text(default: Any) -> str:
    if default in (None, dataclasses.MISSING, (), "", frozenset()) or isinstance(default, bool):
        return ""
    if isinstance(default, Enum):
        default = default.value
    if isinstance(default, tuple | frozenset):
        default = ",".join(
            str(item) for item in (sorted(default) if isinstance(default, frozenset) else default)
        )
    return f" (default: {default})"


def from_args(cls: type[Any], args: argparse.Namespace, prefix: str = "", **more: Any) -> Any:
    """An instance of ``cls`` from the flags given (the others keep their defaults); ``more`` overrides."""
    values: dict[str, Any] = {}
    for field, meta, hint in settings_of(cls):
        dest = _dest(prefix, field.name)
        if meta.cli and hasattr(args, dest):
            value = getattr(args, dest)
            if meta.repeat:
                value = (frozenset if typing.get_origin(_optional(hint)) is frozenset else tuple)(value)
            values[field.name] = value
    values.update(more)
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:
        raise UsageError(str(error)) from error


# ---------------------------------------------------------------------------------------------------------
# Configuration (parsed YAML)


def from_mapping(cls: type[Any], data: Mapping[str, Any] | None, at: str, **more: Any) -> Any:
    """An instance of ``cls`` from a mapping (keys: field names, ``-`` or ``_``); unknown keys are errors."""
    data = dict(data or {})
    values: dict[str, Any] = {}
    for field, meta, hint in settings_of(cls):
        if not meta.config:
            continue
        for key in (field.name, field.name.replace("_", "-")):
            if key in data:
                values[field.name] = coerce(data.pop(key), hint, f"{at}.{key}", meta.parse)
                break
    if data:
        known = [f.name for f, meta, _ in settings_of(cls) if meta.config]
        raise UsageError(
            f"{at}: unknown key(s) {', '.join(sorted(map(str, data)))} (known: {', '.join(known)})"
        )
    values.update(more)
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:
        raise UsageError(f"{at}: {error}") from error


def coerce(value: Any, hint: Any, at: str, parse: Callable[[str], Any] | None = None) -> Any:
    """Check a configuration value against a type hint; lists become tuples (frozen dataclasses)."""
    if parse is not None and isinstance(value, str):
        try:
            return parse(value)
        except UsageError as error:
            raise UsageError(f"{at}: {error}") from error
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin is Literal:
        if value not in args:
            raise UsageError(f"{at}: expected one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, args, hint, at, parse)
    if hint is type(None):
        if value is not None:
            raise UsageError(f"{at}: expected nothing, got {value!r}")
        return None
    if origin in (tuple, list, frozenset, set):
        if not isinstance(value, list):
            raise UsageError(f"{at}: expected a list, got {kind_of(value)}")
        item = args[0] if args else Any
        items = [coerce(v, item, f"{at}[{i}]") for i, v in enumerate(value)]
        return frozenset(items) if origin in (frozenset, set) else tuple(items)
    return _coerce_scalar(value, hint, at)


def _coerce_union(
    value: Any, args: Sequence[Any], hint: Any, at: str, parse: Callable[[str], Any] | None
) -> Any:
    for arg in args:
        try:
            return coerce(value, arg, at, parse)
        except UsageError:
            continue
    raise UsageError(f"{at}: {value!r} does not fit {hint}")


def _coerce_scalar(value: Any, hint: Any, at: str) -> Any:
    if hint is bool:
        if not isinstance(value, bool):
            raise UsageError(f"{at}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"{at}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UsageError(f"{at}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise UsageError(f"{at}: expected a string, got {kind_of(value)}")
        return value
    if isinstance(hint, type) and issubclass(hint, Enum):
        try:
            return hint(value)
        except ValueError as error:
            raise UsageError(f"{at}: {value!r} is not one of {[m.value for m in hint]}") from error
    if isinstance(hint, type) and isinstance(value, hint):
        return value
    raise UsageError(f"{at}: a value of type {hint} cannot be set from the configuration")


def kind_of(value: Any) -> str:
    return type(value).__name__ if value is not None else "nothing"
