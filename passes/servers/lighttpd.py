"""lighttpd: a ``mod_magnet`` Lua script that sends ``FILE.gz``/``FILE.br``, and the document root it serves.

lighttpd 1.4 compresses on the fly (``mod_deflate``, with an optional cache of its own) and does not look for
precompressed twins; sites that ship them attract a Lua script (``magnet.attract-physical-path-to``,
``magnet.attract-raw-url-to``) that rewrites the path to the twin. Such a script (one that names ``.gz``,
``.br`` or ``.zst``) serves ``server.document-root``. Includes are followed; ``include_shell`` is not run; a
configuration whose includes go past the bound (``files.Includes``) may attract any script: every suffix is
served from a root that cannot be told, and it has no root for ``roots``.
``roots`` lists every ``server.document-root`` and ``alias.url`` target. A root may be built from ``var.``
variables (Alpine's ``server.document-root = var.basedir + "/htdocs"``); one that names any other value
(``env.``, an unknown variable) cannot be told.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from typing import Any

from optimizer.filesystem import FileSystem

from .files import IncludeLimit, Includes, read_text
from .serving import DocumentRoot, Serving, image_path

__all__ = ["CONFIGS", "find", "roots"]

CONFIGS = ("etc/lighttpd/lighttpd.conf", "usr/local/etc/lighttpd/lighttpd.conf")
_INCLUDE = re.compile(r"""^\s*include\s+"([^"]+)"|^\s*include\s+'([^']+)'""", re.M)
_ASSIGN = re.compile(r"""^\s*(var\.[\w.-]+|server\.document-root)\s*=\s*(.*)$""", re.M)
_TERM = re.compile(r"""\s*(?:"([^"]*)"|(var\.[\w.-]+))\s*(\+|#.*|$)""")
_MAGNET = re.compile(r"""magnet\.attract-[\w-]+\s*\+?=\s*\(([^)]*)\)""")
_SCRIPT = re.compile(r'"([^"]+\.lua)"')
_TWIN = re.compile(r"""["']\.(gz|br|zst)["']""")
_ALIAS = re.compile(r"""^\s*alias\.url\s*\+?=\s*\(([^)]*)\)""", re.M)
_ALIAS_TARGET = re.compile(r'"[^"]*"\s*=>\s*"([^"]+)"')
_MAX_INCLUDE_DEPTH = 16
_ALL = frozenset({".gz", ".br", ".zst"})


def _text(includes: Includes, path: str, chain: tuple[str, ...] = ()) -> str:
    text = includes.text(path) or ""
    base = posixpath.dirname(path)
    parts = [text]
    for match in _INCLUDE.finditer(text):
        target = match.group(1) or match.group(2)
        pattern = posixpath.normpath(target if target.startswith("/") else f"/{base}/{target}").lstrip("/")
        if len(chain) < _MAX_INCLUDE_DEPTH:
            chained = (*chain, path)
            parts += [_text(includes, p, chained) for p in includes.paths(pattern) if p not in chained]
    return "\n".join(parts)


def _value(expression: str, variables: Mapping[str, str]) -> str | None:
    """A string expression: quoted strings and known ``var.`` variables joined by ``+``; None otherwise."""
    parts: list[str] = []
    pos = 0
    while True:
        term = _TERM.match(expression, pos)
        if term is None or (term.group(2) is not None and term.group(2) not in variables):
            return None
        parts.append(term.group(1) if term.group(1) is not None else variables[term.group(2)])
        if term.group(3) != "+":
            return "".join(parts)
        pos = term.end()


def _document_roots(text: str) -> list[str | None]:
    """Every ``server.document-root`` value in order (conditional blocks' too); None where it cannot be told."""
    variables: dict[str, str] = {}
    found: list[str | None] = []
    for assignment in _ASSIGN.finditer(text):
        value = _value(assignment.group(2), variables)
        if assignment.group(1) == "server.document-root":
            found.append(value)
        elif value is not None:
            variables[assignment.group(1)] = value
    return found


def find(fs: FileSystem, config: Mapping[str, Any]) -> list[Serving]:
    """The document root of an image's lighttpd whose mod_magnet scripts send precompressed twins."""
    servings: list[Serving] = []
    twins: dict[str, frozenset[str]] = {}  # script -> the suffixes it names, each script read once
    for path in CONFIGS:
        if read_text(fs, path) is None:
            continue
        try:
            text = _text(Includes(fs, path), path)
        except IncludeLimit as limit:
            servings.append(Serving("lighttpd", "mod_magnet", "/" + path, _ALL, None, str(limit)))
            continue
        roots = _document_roots(text)
        for attract in _MAGNET.finditer(text):
            for script in _SCRIPT.findall(attract.group(1)):
                if script not in twins:
                    found = _TWIN.findall(read_text(fs, script.lstrip("/")) or "")
                    twins[script] = frozenset("." + s for s in found)
                suffixes = twins[script]
                if not suffixes:
                    continue
                value = roots[-1] if roots else "(none)"
                root = image_path(value or "")
                why = "" if root is not None else f"server.document-root {value or '(an expression)'}"
                servings.append(Serving("lighttpd", f"mod_magnet {script}", "/" + path, suffixes, root, why))
    return servings


def roots(fs: FileSystem, config: Mapping[str, Any]) -> list[DocumentRoot]:
    """Every ``server.document-root`` of the image's lighttpd (global and conditional), and ``alias.url``
    targets."""
    found: list[DocumentRoot] = []
    for path in CONFIGS:
        if read_text(fs, path) is None:
            continue
        try:
            text = _text(Includes(fs, path), path)
        except IncludeLimit:
            continue  # none of its roots can be told
        values = [("server.document-root", v) for v in _document_roots(text) if v is not None]
        for aliases in _ALIAS.finditer(text):
            values += [("alias.url", v) for v in _ALIAS_TARGET.findall(aliases.group(1))]
        for how, value in values:
            root = image_path(value)
            if root is not None:
                found.append(DocumentRoot("lighttpd", how, "/" + path, root))
    return found
