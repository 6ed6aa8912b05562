"""Caddy: ``file_server { precompressed ... }`` in a Caddyfile, or ``"precompressed"`` in a JSON config.

``precompressed`` with no format means ``br zstd gzip``; the files come from the ``root`` of the site block (or
of the enclosing ``handle``/``route`` block that sets one), and in JSON from the handler's ``"root"``. A
``file_server`` without a readable root (none, a placeholder) is a serving with an unknown root, and so is a
Caddyfile that does not parse or whose imports go past the bound (``files.Includes``), and a JSON config that
does not parse or nests deeper than any Caddy config does. ``roots`` lists the root of every ``file_server``,
precompressed or not (none of a configuration whose servings cannot be told).
"""

from __future__ import annotations

import json
import posixpath
from collections import ChainMap
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from typing import Any

from optimizer.filesystem import FileSystem

from .blocks import Directive, parse_blocks
from .files import IncludeLimit, Includes, config_paths, read_text
from .serving import DocumentRoot, Serving, image_path

__all__ = ["CADDYFILES", "JSON_CONFIGS", "find", "roots"]

CADDYFILES = ("etc/caddy/Caddyfile",)
JSON_CONFIGS = ("etc/caddy/*.json", "config/caddy/autosave.json")
_FORMATS = {"br": ".br", "zstd": ".zst", "gzip": ".gz"}
_MAX_IMPORT_DEPTH = 16
_MAX_JSON_DEPTH = 64  # caddy adapt writes some 15 levels


def _suffixes(formats: Sequence[str]) -> frozenset[str]:
    return frozenset(_FORMATS[f] for f in formats if f in _FORMATS) or frozenset(_FORMATS.values())


def _root(directive: Directive) -> str | None:
    # root [<matcher>] <path>: the path is the last argument
    return directive.args[-1] if directive.args else None


def _size(directives: Sequence[Directive]) -> int:
    """About the characters of ``directives`` as text: what importing a snippet brings, for ``Includes``."""
    return sum(len(d.name) + sum(len(a) + 1 for a in d.args) + 2 + _size(d.block or ()) for d in directives)


def _imports(
    includes: Includes,
    directives: list[Directive],
    base: str,
    snippets: MutableMapping[str, list[Directive]],
    chain: tuple[str, ...] = (),
) -> list[Directive]:
    """``import`` replaced by the snippet or the files it names; ``chain`` (snippets and files being imported)
    stops cycles, ``includes`` counts them all."""
    defined = {
        d.name[1:-1]: d.block or [] for d in directives if d.name.startswith("(") and d.name.endswith(")")
    }
    if defined:
        snippets = ChainMap(defined, snippets)  # not a copy per block: a Caddyfile may define thousands
    out: list[Directive] = []
    for directive in directives:
        if directive.name == "import" and directive.args:
            name = directive.args[0]
            if name in snippets:
                includes.count(1, _size(snippets[name]))
                if name not in chain and len(chain) < _MAX_IMPORT_DEPTH:
                    out += _imports(includes, snippets[name], base, snippets, (*chain, name))
                continue
            target = name if name.startswith("/") else f"/{base}/{name}"
            for path in includes.paths(posixpath.normpath(target).lstrip("/")):
                if path not in chain and len(chain) < _MAX_IMPORT_DEPTH:
                    included = parse_blocks(includes.text(path) or "", newlines=True)
                    out += _imports(includes, included, base, snippets, (*chain, path))
            continue
        if directive.block is not None:
            block = _imports(includes, directive.block, base, snippets, chain)
            directive = Directive(directive.name, directive.args, block)
        out.append(directive)
    return out


def _walk(directives: Sequence[Directive], root: str | None, source: str) -> Iterator[Serving]:
    for directive in directives:
        if directive.name == "root" and directive.block is None:
            root = _root(directive)
    for directive in directives:
        if directive.name == "file_server" and directive.block:
            for inner in directive.block:
                if inner.name == "precompressed":
                    path = image_path(root or "")
                    why = "" if path is not None else f"root {root or '(none)'}"
                    yield Serving("Caddy", "precompressed", source, _suffixes(inner.args), path, why)
        elif directive.block is not None and not directive.name.startswith("("):
            yield from _walk(directive.block, root, source)


def _json_servings(value: Any, source: str) -> Iterator[Serving]:
    if isinstance(value, dict):
        if value.get("handler") == "file_server" and isinstance(value.get("precompressed"), dict):
            root = value.get("root")
            path = image_path(root) if isinstance(root, str) else None
            why = "" if path is not None else f"root {root!r}"
            yield Serving(
                "Caddy", "precompressed", source, _suffixes(list(value["precompressed"])), path, why
            )
        for item in value.values():
            yield from _json_servings(item, source)
    elif isinstance(value, list):
        for item in value:
            yield from _json_servings(item, source)


def _caddyfiles(fs: FileSystem) -> Iterator[tuple[str, list[Directive] | str]]:
    """Each Caddyfile's directives (imports replaced), or why they cannot be told (it does not parse, its
    imports go past the bound)."""
    for path in CADDYFILES:
        includes = Includes(fs, path)
        text = includes.text(path)
        if text is None:
            continue
        try:
            yield path, _imports(includes, parse_blocks(text, newlines=True), path.rsplit("/", 1)[0], {})
        except ValueError as error:
            yield path, f"/{path} does not parse: {error}"
        except IncludeLimit as limit:
            yield path, str(limit)


def _nested_deeper(value: Any, depth: int) -> bool:
    """``value`` nests lists and objects more than ``depth`` levels deep (looked at level by level, without
    recursion)."""
    level = [value]
    for _ in range(depth):
        level = [v for item in level if isinstance(item, dict | list) for v in _items(item)]
        if not level:
            return False
    return True


def _items(value: dict[str, Any] | list[Any]) -> Iterator[Any]:
    return iter(value.values()) if isinstance(value, dict) else iter(value)


def _json_documents(fs: FileSystem) -> Iterator[tuple[str, Any, str | None]]:
    """Each JSON config: (path, document, None), or (path, None, why its servings cannot be told) for one that
    does not parse or nests deeper than any Caddy config does (the walks here recurse)."""
    for pattern in JSON_CONFIGS:
        for path in config_paths(fs, pattern):
            deep = f"/{path} nests lists and objects more than {_MAX_JSON_DEPTH} levels deep"
            try:
                document = json.loads(read_text(fs, path) or "null")
            except ValueError as error:
                yield path, None, f"/{path} does not parse: {error}"
            except RecursionError:  # json.loads: past ~1000 levels
                yield path, None, deep
            else:
                if _nested_deeper(document, _MAX_JSON_DEPTH):
                    yield path, None, deep
                else:
                    yield path, document, None


def find(fs: FileSystem, config: Mapping[str, Any]) -> list[Serving]:
    """Every Caddy file_server of the image that sends precompressed files."""
    servings: list[Serving] = []
    for path, directives in _caddyfiles(fs):
        if isinstance(directives, str):
            servings.append(Serving("Caddy", "precompressed", "/" + path, _suffixes(()), None, directives))
            continue
        servings += _walk(directives, None, "/" + path)
    for path, document, why in _json_documents(fs):
        if why is not None:
            servings.append(Serving("Caddy", "precompressed", "/" + path, _suffixes(()), None, why))
            continue
        servings += _json_servings(document, "/" + path)
    return servings


def _file_server_roots(
    directives: Sequence[Directive], root: str | None, source: str
) -> Iterator[DocumentRoot]:
    for directive in directives:
        if directive.name == "root" and directive.block is None:
            root = _root(directive)
    for directive in directives:
        if directive.name == "file_server":
            inner = [_root(d) for d in directive.block or () if d.name == "root"]
            path = image_path((inner or [root])[-1] or "")
            if path is not None:
                yield DocumentRoot("Caddy", "file_server", source, path)
        elif directive.block is not None and not directive.name.startswith("("):
            yield from _file_server_roots(directive.block, root, source)


def _chain_roots(value: Any, pending: frozenset[str]) -> tuple[frozenset[str], set[tuple[str, str]]]:
    """Walk a JSON config in the order Caddy runs its handlers. ``pending`` are the roots ``vars`` handlers set
    before (any of them, as matchers decide); returns the roots pending after ``value`` and the (how, root) a
    ``file_server`` sends from: its own ``root``, or the pending ones. A root set in a route that ends the
    chain (``terminal``: a site) or in a route of a ``group`` (``handle``: one of them runs) reaches no later
    route; one set in a route of its own (the Caddyfile adapter puts ``root`` there) reaches the next."""
    served: set[tuple[str, str]] = set()
    if isinstance(value, list):
        for item in value:
            pending, found = _chain_roots(item, pending)
            served |= found
        return pending, served
    if not isinstance(value, dict):
        return pending, served
    handler, root = value.get("handler"), value.get("root")
    if handler == "vars" and isinstance(root, str):
        return pending | {root}, served
    if handler == "file_server":
        if isinstance(root, str) and root != "{http.vars.root}":
            return pending, {("file_server root", root)}
        return pending, {("vars root", r) for r in pending}
    after = pending
    for item in value.values():  # not through a list: one frame per level, as deep as json.loads goes
        after, found = _chain_roots(item, after)
        served |= found
    passes_on = handler is not None or (
        "handle" in value and not value.get("terminal") and "group" not in value
    )
    return (after if passes_on else pending), served


def _json_roots(document: Any, source: str) -> Iterator[DocumentRoot]:
    """The literal roots file_server handlers send from: their own, or one a vars handler before them set
    (where the Caddyfile adapter puts ``root``)."""
    for how, root in sorted(_chain_roots(document, frozenset())[1]):
        path = image_path(root)
        if path is not None:
            yield DocumentRoot("Caddy", how, source, path)


def roots(fs: FileSystem, config: Mapping[str, Any]) -> list[DocumentRoot]:
    """The root of every Caddy ``file_server`` (the site's, or its own ``root`` subdirective)."""
    found: list[DocumentRoot] = []
    for path, directives in _caddyfiles(fs):
        if not isinstance(directives, str):
            found += _file_server_roots(directives, None, "/" + path)
    for path, document, why in _json_documents(fs):
        if why is None:
            found += _json_roots(document, "/" + path)
    return found
