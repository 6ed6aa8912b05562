"""nginx: where the image's nginx sends precompressed files (``gzip_static``, ``brotli_static``), and its roots.

The configuration (``nginx.conf`` and what it includes, or every file under the configuration directory when
there is no ``nginx.conf``) is parsed into directives; ``.gz`` files under the ``root``/``alias`` of a context
with ``gzip_static`` on (``.br`` with ``brotli_static``) are served. A context with it on whose root we cannot
read (none set, a variable, a relative path) is a serving with an unknown root, and so is every context of a
configuration whose includes go past the bound (``files.Includes``). ``roots`` lists the ``root`` and ``alias``
of every context, whatever it turns on (none of a configuration past the bound).
"""

from __future__ import annotations

import fnmatch
import posixpath
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from optimizer.filesystem import FileSystem

from .blocks import Directive, parse_blocks
from .files import MAX_CONFIG_BYTES, IncludeLimit, Includes, node_at, read_text
from .serving import DocumentRoot, Serving, image_path

__all__ = ["CONF_DIRS", "find", "roots"]

CONF_DIRS = (
    "etc/nginx",
    "usr/local/nginx/conf",
    "usr/local/openresty/nginx/conf",
    "opt/bitnami/nginx/conf",
)
_STATIC = {".gz": "gzip_static", ".br": "brotli_static"}
_MAX_INCLUDE_DEPTH = 16


@dataclass
class _Reading:
    """What one configuration directory gave: the servings, and what its includes read."""

    conf_dir: str
    servings: list[Serving]
    includes: Includes


def _expand_includes(
    directives: list[Directive], reading: _Reading, chain: tuple[str, ...]
) -> list[Directive]:
    out: list[Directive] = []
    for directive in directives:
        if directive.name == "include" and directive.block is None and directive.args:
            target = directive.args[0]
            pattern = target.lstrip("/") if target.startswith("/") else f"{reading.conf_dir}/{target}"
            pattern = posixpath.normpath(pattern)
            for path in reading.includes.paths(pattern):
                # a file already on the chain of includes would include itself forever
                if (
                    fnmatch.fnmatchcase(path, pattern)
                    and path not in chain
                    and len(chain) < _MAX_INCLUDE_DEPTH
                ):
                    out.extend(_load(path, reading, chain))
            continue
        if directive.block is not None:
            block = _expand_includes(directive.block, reading, chain)
            directive = Directive(directive.name, directive.args, block)
        out.append(directive)
    return out


def _load(path: str, reading: _Reading, chain: tuple[str, ...] = ()) -> list[Directive]:
    text = reading.includes.text(path)
    if text is None:
        return []
    try:
        directives = parse_blocks(text)
    except ValueError as error:
        for suffix, how in _STATIC.items():
            why = f"/{path} does not parse: {error}"
            reading.servings.append(Serving("nginx", how, "/" + path, frozenset({suffix}), None, why))
        return []
    return _expand_includes(directives, reading, (*chain, path))


def _flag(directives: Sequence[Directive], name: str, inherited: bool) -> bool:
    for directive in directives:
        if directive.name == name and directive.block is None and directive.args:
            return directive.args[0].lower() in ("on", "always")
    return inherited


def _walk(
    directives: Sequence[Directive],
    inherited: tuple[str | None, bool, bool],
    kind: str,
    reading: _Reading,
    source: str,
) -> None:
    root, gzip, brotli = inherited
    for directive in directives:
        if directive.block is None and directive.name in ("root", "alias") and directive.args:
            root = directive.args[0]
    here = (root, _flag(directives, "gzip_static", gzip), _flag(directives, "brotli_static", brotli))
    children = [d for d in directives if d.block is not None]
    catch_all = any(d.name == "location" and d.args[-1:] == ["/"] for d in children)
    if kind == "location" or (kind == "server" and not catch_all):
        for (suffix, how), on in zip(_STATIC.items(), here[1:], strict=True):
            if on:
                path = image_path(root or "")
                why = "" if path is not None else f"root {root or '(default)'}"
                reading.servings.append(Serving("nginx", how, source, frozenset({suffix}), path, why))
    for child in children:
        assert child.block is not None
        _walk(child.block, here, child.name, reading, source)


def _configs(
    fs: FileSystem, conf_dir: str, reading: _Reading, needle: str
) -> Iterator[tuple[str, str, list[Directive]]]:
    """(source, context kind, directives) of the configuration under ``conf_dir``: ``nginx.conf`` with what it
    includes or, without one, every file under the directory that mentions ``needle``, each on its own."""
    main = f"{conf_dir}/nginx.conf"
    if node_at(fs, main) is not None:
        yield "/" + main, "main", _load(main, reading)
        return
    # No main file: read every file under the directory on its own (snippets meant for an include).
    for path, node in fs.files():
        if path.startswith(conf_dir + "/") and node.size <= MAX_CONFIG_BYTES:
            text = read_text(fs, path)
            if text is not None and needle in text:
                yield "/" + path, "server", _load(path, reading)


def _reading(fs: FileSystem, conf_dir: str) -> _Reading:
    main = f"{conf_dir}/nginx.conf"  # the includes of every file, counted as one configuration's
    return _Reading(conf_dir, [], Includes(fs, main if node_at(fs, main) is not None else conf_dir))


def _read_dir(fs: FileSystem, conf_dir: str) -> list[Serving]:
    reading = _reading(fs, conf_dir)
    try:
        for source, kind, directives in _configs(fs, conf_dir, reading, "_static"):
            _walk(directives, (None, False, False), kind, reading, source)
    except IncludeLimit as limit:
        for suffix, how in _STATIC.items():
            reading.servings.append(
                Serving("nginx", how, "/" + limit.source, frozenset({suffix}), None, str(limit))
            )
    return reading.servings


def find(fs: FileSystem, config: Mapping[str, Any]) -> list[Serving]:
    """Every context of the image's nginx that sends ``.gz`` (gzip_static) or ``.br`` (brotli_static) files."""
    servings: list[Serving] = []
    for conf_dir in CONF_DIRS:
        if fs.is_directory(conf_dir):
            servings += _read_dir(fs, conf_dir)
    return servings


def _root_directives(directives: Sequence[Directive], source: str) -> Iterator[DocumentRoot]:
    for directive in directives:
        if directive.block is not None:
            yield from _root_directives(directive.block, source)
        elif directive.name in ("root", "alias") and directive.args:
            path = image_path(directive.args[0])  # relative (to the prefix) or with a variable: not told
            if path is not None:
                yield DocumentRoot("nginx", directive.name, source, path)


def roots(fs: FileSystem, config: Mapping[str, Any]) -> list[DocumentRoot]:
    """The ``root`` and ``alias`` of every context (http, server, location) of the image's nginx."""
    found: list[DocumentRoot] = []
    for conf_dir in CONF_DIRS:
        if fs.is_directory(conf_dir):
            reading = _reading(fs, conf_dir)
            try:
                found += [
                    root
                    for source, _kind, directives in _configs(fs, conf_dir, reading, "root")
                    for root in _root_directives(directives, source)
                ]
            except IncludeLimit:
                continue  # none of its roots can be told
    return found
