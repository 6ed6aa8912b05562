"""h2o: ``file.send-compressed: ON`` (``file.send-gzip`` before 2.1) in ``/etc/h2o/h2o.conf`` (YAML).

The flag applies at the global, host or path level and is inherited downwards; every path mapped to a
``file.dir`` where it is on sends ``FILE.br`` and ``FILE.gz`` (``FILE.gz`` alone with ``file.send-gzip``).
``!file`` includes are read from the image; an ``!env`` value is a root that cannot be told, and so is every
path of a configuration whose includes go past the bound (``files.Includes``). ``roots`` lists the ``file.dir``
of every path, whatever it sends. A level reached again through YAML aliases is walked once (``&a`` in
``paths: {x: *a, y: *a}`` doubles at every level: 2**depth paths).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from optimizer.filesystem import FileSystem

from .files import IncludeLimit, Includes
from .serving import DocumentRoot, Serving, image_path

__all__ = ["CONFIGS", "find", "roots"]

CONFIGS = ("etc/h2o/h2o.conf", "etc/h2o.conf", "usr/local/etc/h2o/h2o.conf")
_MAX_INCLUDE_DEPTH = 16


def _flags(level: Mapping[str, Any], inherited: frozenset[str]) -> frozenset[str]:
    suffixes = set(inherited)
    for key, sends in (("file.send-compressed", {".br", ".gz"}), ("file.send-gzip", {".gz"})):
        value = level.get(key)
        if value is None:
            continue
        on = value is True or str(value).upper() == "ON"
        suffixes = suffixes | sends if on else suffixes - sends
    return frozenset(suffixes)


def _walk(
    level: Any, inherited: frozenset[str], source: str, seen: set[tuple[int, frozenset[str]]]
) -> Iterator[Serving]:
    if not isinstance(level, Mapping) or (id(level), inherited) in seen:
        return  # the same level with the same flags sends the same, already yielded
    seen.add((id(level), inherited))
    here = _flags(level, inherited)
    directory = level.get("file.dir")
    if here and directory is not None:
        path = image_path(directory) if isinstance(directory, str) else None
        why = "" if path is not None else f"file.dir {directory!r}"
        yield Serving("h2o", "file.send-compressed", source, here, path, why)
    for key in ("hosts", "paths"):
        children = level.get(key)
        if isinstance(children, Mapping):
            for child in children.values():
                yield from _walk(child, here, source, seen)


def _documents(fs: FileSystem) -> Iterator[tuple[str, Any]]:
    """Each configuration file's YAML document (``!file`` includes read from the image), or the YAMLError."""
    import yaml  # here: most images have no h2o, and importing YAML costs more than looking for it

    class Loader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML has no type information
        """h2o's ``!file PATH`` includes another YAML file (read from the image); ``!env NAME`` is unknown."""

    reading: list[str] = []  # the files being included, innermost last: a cycle or a deep chain stops

    def include(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        target = str(loader.construct_scalar(node)).lstrip("/")
        if target in reading or len(reading) >= _MAX_INCLUDE_DEPTH:
            raise yaml.YAMLError(f"!file /{target}: included in a cycle or too deep")
        includes.count(1, 0)
        reading.append(target)
        try:
            return yaml.load(includes.text(target) or "", Loader)
        finally:
            reading.pop()

    Loader.add_constructor("!file", include)
    Loader.add_constructor("!env", lambda loader, node: "$" + str(loader.construct_scalar(node)))
    for path in CONFIGS:
        includes = Includes(fs, path)  # what ``include`` counts while this configuration is read
        text = includes.text(path)
        if text is None:
            continue
        try:
            yield path, yaml.load(text, Loader)
        except (yaml.YAMLError, IncludeLimit) as error:
            yield path, error


def find(fs: FileSystem, config: Mapping[str, Any]) -> list[Serving]:
    """Every path of the image's h2o that sends precompressed files."""
    servings: list[Serving] = []
    for path, document in _documents(fs):
        if isinstance(document, Exception):
            bounded = isinstance(document, IncludeLimit)
            why = str(document) if bounded else f"/{path} does not parse: {type(document).__name__}"
            servings.append(
                Serving("h2o", "file.send-compressed", "/" + path, frozenset({".br", ".gz"}), None, why)
            )
            continue
        servings += _walk(document, frozenset(), "/" + path, set())
    return servings


def _dirs(level: Any, source: str, seen: set[int]) -> Iterator[DocumentRoot]:
    if not isinstance(level, Mapping) or id(level) in seen:
        return
    seen.add(id(level))
    directory = level.get("file.dir")
    path = image_path(directory) if isinstance(directory, str) else None
    if path is not None:
        yield DocumentRoot("h2o", "file.dir", source, path)
    for key in ("hosts", "paths"):
        children = level.get(key)
        if isinstance(children, Mapping):
            for child in children.values():
                yield from _dirs(child, source, seen)


def roots(fs: FileSystem, config: Mapping[str, Any]) -> list[DocumentRoot]:
    """The ``file.dir`` of every path of the image's h2o."""
    found: list[DocumentRoot] = []
    for path, document in _documents(fs):
        if not isinstance(document, Exception):
            found += _dirs(document, "/" + path, set())
    return found
