"""Apache httpd: ``RewriteRule`` recipes that send ``FILE.gz``/``FILE.br`` for ``FILE``.

httpd has no directive that sends precompressed files by itself; the mod_deflate documentation's recipe (and
its many copies) rewrites a request to ``FILE.gz`` when the client accepts gzip and the file exists. A
``RewriteRule`` whose substitution ends in ``.gz``, ``.br`` or ``.zst`` (``$1.gz``, ``%{REQUEST_FILENAME}.br``)
is such a recipe; it serves its ``<Directory>``, the directory of its ``.htaccess``, or the ``DocumentRoot``
around it. The main file is ``apache2.conf``/``httpd.conf``; ``Include``/``IncludeOptional`` are followed
(relative to ``ServerRoot``); a configuration whose includes go past the bound (``files.Includes``) serves
every suffix from a root that cannot be told, and has no root for ``roots``. ``.htaccess`` files are read
wherever the image has them, when it has httpd, within the same bound as a whole (``MAX_INCLUDES`` files,
``MAX_INCLUDED_TEXT`` bytes): past it, httpd serves every suffix from a root that cannot be told (what the
files read before it said is no evidence either). ``roots`` lists every ``DocumentRoot`` and ``Alias`` target.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from optimizer.filesystem import FileSystem

from .files import MAX_INCLUDED_TEXT, MAX_INCLUDES, IncludeLimit, Includes, node_at, read_text
from .serving import DocumentRoot, Serving, image_path

__all__ = ["MAIN_FILES", "find", "roots"]

MAIN_FILES = (
    ("etc/apache2/apache2.conf", "etc/apache2"),
    ("etc/apache2/httpd.conf", "var/www"),  # Alpine (its ServerRoot)
    ("etc/httpd/conf/httpd.conf", "etc/httpd"),
    ("usr/local/apache2/conf/httpd.conf", "usr/local/apache2"),
    ("opt/bitnami/apache/conf/httpd.conf", "opt/bitnami/apache"),
)
_SUBSTITUTION = re.compile(r"\.(gz|br|zst)(?:$|[\]\[?\s])", re.IGNORECASE)
_MAX_INCLUDE_DEPTH = 16
_ALL = frozenset({".gz", ".br", ".zst"})


@dataclass
class _Scope:
    """A <Directory> (its path), a <VirtualHost> or the main server (their DocumentRoot, set anywhere in it)."""

    kind: str
    root: str | None = None


@dataclass
class _State:
    server_root: str
    rules: list[tuple[_Scope, frozenset[str], str]] = field(default_factory=list)
    documents: list[tuple[str, str, str]] = field(default_factory=list)  # (directive, path, source)


def _lines(text: str) -> list[str]:
    joined = re.sub(r"\\\n", " ", text)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def _words(line: str) -> list[str]:
    try:
        return shlex.split(line, posix=True)
    except ValueError:
        return line.split()


def _suffixes(words: list[str]) -> frozenset[str]:
    """The precompressed suffixes a RewriteRule's substitution sends, if any."""
    if len(words) < 3 or words[0].lower() != "rewriterule":
        return frozenset()
    return frozenset("." + m.group(1).lower() for m in _SUBSTITUTION.finditer(words[2] + " "))


def _read(
    includes: Includes, path: str, state: _State, scopes: list[_Scope], chain: tuple[str, ...] = ()
) -> None:
    text = includes.text(path)
    if text is None:
        return
    for line in _lines(text):
        words = _words(line)
        name = words[0].lower() if words else ""
        if name in ("include", "includeoptional") and len(words) > 1 and len(chain) < _MAX_INCLUDE_DEPTH:
            target = words[1] if words[1].startswith("/") else f"/{state.server_root}/{words[1]}"
            for included in includes.paths(posixpath.normpath(target).lstrip("/")):
                if included not in chain and included != path:  # a file including itself: once is enough
                    _read(includes, included, state, scopes, (*chain, path))
        elif name == "serverroot" and len(words) > 1:
            state.server_root = image_path(words[1]) or state.server_root
        elif name == "documentroot" and len(words) > 1:
            next(s for s in reversed(scopes) if s.kind != "directory").root = words[1]
            state.documents.append(("DocumentRoot", words[1], "/" + path))
        elif name == "alias" and len(words) > 1:  # Alias URL-path file-path (file-path alone in <Location>)
            state.documents.append(("Alias", words[-1], "/" + path))
        elif name.startswith("<directory") and len(words) > 1:
            scopes.append(_Scope("directory", words[1].rstrip(">") if not name.endswith("match") else None))
        elif name == "<virtualhost":
            scopes.append(_Scope("host", scopes[0].root))
        elif name in ("</directory>", "</directorymatch>", "</virtualhost>") and len(scopes) > 1:
            scopes.pop()
        elif suffixes := _suffixes(words):
            state.rules.append((scopes[-1], suffixes, "/" + path))


def _servings(state: _State) -> list[Serving]:
    out = []
    for scope, suffixes, source in state.rules:
        path = image_path(scope.root) if scope.root else None
        why = "" if path is not None else f"root {scope.root or '(none)'}"
        out.append(Serving("Apache httpd", "RewriteRule", source, suffixes, path, why))
    return out


def _htaccess(fs: FileSystem) -> list[Serving]:
    """The recipes of every ``.htaccess``; past the bound on them all, one serving with a root that cannot be told
    (sizes counted before a file is read: one over the bound is not read)."""
    state = _State("")
    files = size = 0
    for path, node in fs.files():
        if path.rsplit("/", 1)[-1] != ".htaccess":
            continue
        files += 1
        size += node.content.size if node.content is not None else 0
        if files > MAX_INCLUDES or size > MAX_INCLUDED_TEXT:
            why = (
                f"the image has more than {MAX_INCLUDES} .htaccess files"
                if files > MAX_INCLUDES
                else f"the image's .htaccess files up to /{path} hold more than {MAX_INCLUDED_TEXT >> 20} MiB"
            )
            return [Serving("Apache httpd", "RewriteRule", "/" + path, _ALL, None, why)]
        directory = _Scope("directory", "/" + (path.rsplit("/", 1)[0] if "/" in path else ""))
        for line in _lines(read_text(fs, path) or ""):
            if suffixes := _suffixes(_words(line)):
                state.rules.append((directory, suffixes, "/" + path))
    return _servings(state)


def _configuration(fs: FileSystem, main: str, server_root: str) -> _State:
    """The main file read with its includes; ``IncludeLimit`` past the bound."""
    state = _State(server_root)
    _read(Includes(fs, main), main, state, [_Scope("main")])
    return state


def find(fs: FileSystem, config: Mapping[str, Any]) -> list[Serving]:
    """Every RewriteRule of the image's httpd (main configuration and .htaccess) that sends FILE.gz/.br/.zst."""
    servings: list[Serving] = []
    present = False
    for main, server_root in MAIN_FILES:
        if node_at(fs, main) is None:
            continue
        present = True
        try:
            servings += _servings(_configuration(fs, main, server_root))
        except IncludeLimit as limit:
            servings.append(Serving("Apache httpd", "RewriteRule", "/" + main, _ALL, None, str(limit)))
    return servings + (_htaccess(fs) if present else [])


def roots(fs: FileSystem, config: Mapping[str, Any]) -> list[DocumentRoot]:
    """Every ``DocumentRoot`` and ``Alias`` target of the image's httpd. A ``<Directory>`` alone maps no URL to
    its files (Debian grants ``/usr/share`` and denies ``/`` in every install): it is not a root."""
    found: list[DocumentRoot] = []
    for main, server_root in MAIN_FILES:
        if node_at(fs, main) is None:
            continue
        try:
            state = _configuration(fs, main, server_root)
        except IncludeLimit:
            continue  # none of its roots can be told
        for how, value, source in state.documents:
            path = image_path(value, state.server_root)  # a relative DocumentRoot is relative to ServerRoot
            if path is not None:
                found.append(DocumentRoot("Apache httpd", how, source, path))
    return found
