"""nginx: where the image's nginx serves precompressed files (``gzip_static``, ``brotli_static``).

The configuration (``nginx.conf`` and what it includes, or every file under the configuration directory when
there is no ``nginx.conf``) is tokenized and parsed into directives; ``.gz`` files under the ``root``/``alias``
of a context with ``gzip_static`` on (``.br`` with ``brotli_static``) are served. When a context with it on has
no root we can read (none set, variables, relative), every such file is kept, with a note.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from optimizer.filesystem import FileSystem

from .files import node_at

__all__ = ["NginxStatic", "nginx_static"]

_NGINX_CONF_DIRS = (
    "etc/nginx",
    "usr/local/nginx/conf",
    "usr/local/openresty/nginx/conf",
    "opt/bitnami/nginx/conf",
)
_TOKEN = re.compile(
    r"""\s+|#[^\n]*|"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)'|([{};])|((?:[^\s{};"'\\]|\\.)+)"""
)
_MAX_INCLUDE_DEPTH = 16


@dataclass
class _Directive:
    name: str
    args: list[str]
    block: list[_Directive] | None = None


@dataclass
class NginxStatic:
    """What the image's nginx serves precompressed: the roots per suffix, and suffixes kept everywhere."""

    roots: dict[str, set[str]] = field(default_factory=lambda: {".gz": set(), ".br": set()})
    keep_all: set[str] = field(default_factory=set)  # suffixes kept everywhere (roots we cannot tell)
    files: list[str] = field(default_factory=list)  # configuration files read
    notes: list[str] = field(default_factory=list)

    def keeps(self, path: str, suffix: str) -> str | None:
        """The reason to keep ``path`` (with ``suffix``), or None."""
        if suffix in self.keep_all:
            return f"nginx {_STATIC[suffix]} is on and its root cannot be told"
        for root in sorted(self.roots.get(suffix, ())):
            if not root or path == root or path.startswith(root + "/"):
                return f"served by nginx {_STATIC[suffix]} from /{root}"
        return None


_STATIC = {".gz": "gzip_static", ".br": "brotli_static"}


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    for match in _TOKEN.finditer(text):
        double, single, punct, word = match.groups()
        if double is not None:
            out.append(double)
        elif single is not None:
            out.append(single)
        elif punct is not None:
            out.append(punct)
        elif word is not None:
            out.append(word)
    return out


def _parse(tokens: list[str], position: int = 0, depth: int = 0) -> tuple[list[_Directive], int]:
    directives: list[_Directive] = []
    words: list[str] = []
    while position < len(tokens):
        token = tokens[position]
        position += 1
        if token == ";":
            if words:
                directives.append(_Directive(words[0], words[1:]))
            words = []
        elif token == "{":
            if depth > 64:
                raise ValueError("blocks nested too deep")
            block, position = _parse(tokens, position, depth + 1)
            directives.append(_Directive(words[0] if words else "", words[1:], block))
            words = []
        elif token == "}":
            return directives, position
        else:
            words.append(token)
    return directives, position


def _read_text(fs: FileSystem, path: str) -> str | None:
    node = node_at(fs, path)
    if node is None or node.content is None or node.content.size > 4 << 20:
        return None
    return node.content.read_bytes().decode("utf-8", errors="replace")


def _expand_includes(
    fs: FileSystem, directives: list[_Directive], conf_dir: str, result: NginxStatic, depth: int
) -> list[_Directive]:
    out: list[_Directive] = []
    for directive in directives:
        if directive.name == "include" and directive.block is None and directive.args:
            pattern = (
                directive.args[0].lstrip("/")
                if directive.args[0].startswith("/")
                else posixpath.join(conf_dir, directive.args[0])
            )
            pattern = posixpath.normpath(pattern)
            matches = sorted(p for p in _config_paths(fs, pattern) if fnmatch.fnmatchcase(p, pattern))
            for path in matches:
                if depth >= _MAX_INCLUDE_DEPTH:
                    result.notes.append(f"/{path}: includes nested too deep; not read")
                    continue
                out.extend(_load(fs, path, conf_dir, result, depth + 1))
            continue
        if directive.block is not None:
            directive = _Directive(
                directive.name, directive.args, _expand_includes(fs, directive.block, conf_dir, result, depth)
            )
        out.append(directive)
    return out


def _config_paths(fs: FileSystem, pattern: str) -> list[str]:
    # Glob only in the pattern's directory: the part before the first wildcard.
    fixed = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
    directory = fixed.rsplit("/", 1)[0] if "/" in fixed else ""
    if fixed == pattern:
        return [pattern] if node_at(fs, pattern) is not None else []
    resolved = fs.resolve(directory) if directory else ""
    if resolved is None:
        return []
    found = []
    for child in fs.children(resolved):
        name = child.rsplit("/", 1)[-1]
        found.append(f"{directory}/{name}" if directory else name)
    return found


def _load(fs: FileSystem, path: str, conf_dir: str, result: NginxStatic, depth: int) -> list[_Directive]:
    text = _read_text(fs, path)
    if text is None:
        return []
    result.files.append("/" + path)
    try:
        directives, _ = _parse(_tokens(text))
    except (ValueError, IndexError) as error:
        result.notes.append(f"/{path}: cannot parse ({error}); precompressed files kept")
        result.keep_all.update(_STATIC)
        return []
    return _expand_includes(fs, directives, conf_dir, result, depth)


@dataclass(frozen=True)
class _Scope:
    root: str | None
    gzip: bool
    brotli: bool


def _flag(directives: Sequence[_Directive], name: str, inherited: bool) -> bool:
    for directive in directives:
        if directive.name == name and directive.block is None and directive.args:
            return directive.args[0].lower() in ("on", "always")
    return inherited


def _walk(
    directives: Sequence[_Directive], scope: _Scope, kind: str, result: NginxStatic, where: str
) -> None:
    root = scope.root
    for directive in directives:
        if directive.block is None and directive.name in ("root", "alias") and directive.args:
            root = directive.args[0]
    here = _Scope(
        root, _flag(directives, "gzip_static", scope.gzip), _flag(directives, "brotli_static", scope.brotli)
    )
    children = [d for d in directives if d.block is not None]
    catch_all = any(d.name == "location" and d.args[-1:] == ["/"] for d in children)
    serves = kind == "location" or (kind == "server" and not catch_all)
    if serves:
        for suffix, on in ((".gz", here.gzip), (".br", here.brotli)):
            if not on:
                continue
            if here.root is None or "$" in here.root or not here.root.startswith("/"):
                result.keep_all.add(suffix)
                result.notes.append(f"{where}: {_STATIC[suffix]} on with root {here.root or '(default)'}")
            else:
                result.roots[suffix].add(posixpath.normpath(here.root).strip("/"))
    for child in children:
        assert child.block is not None
        _walk(child.block, here, child.name, result, where)


def nginx_static(fs: FileSystem) -> NginxStatic:
    """Where the image's nginx serves precompressed ``.gz``/``.br`` files (gzip_static/brotli_static)."""
    result = NginxStatic()
    for conf_dir in _NGINX_CONF_DIRS:
        if not fs.is_directory(conf_dir):
            continue
        main = f"{conf_dir}/nginx.conf"
        if node_at(fs, main) is not None:
            _walk(
                _load(fs, main, conf_dir, result, 0), _Scope(None, False, False), "main", result, "/" + main
            )
            continue
        # No main file: read every file under the directory on its own (snippets meant for an include).
        for path, node in fs.files():
            if path.startswith(conf_dir + "/") and node.size <= 4 << 20:
                text = _read_text(fs, path)
                if text is None or "_static" not in text:
                    continue
                directives = _load(fs, path, conf_dir, result, 0)
                _walk(directives, _Scope(None, False, False), "server", result, "/" + path)
    for suffix in list(result.keep_all):
        result.roots[suffix].clear()
    return result
