"""Node.js middleware that sends precompressed files: found by its package, its root read from the app's calls.

A package is there when ``node_modules/NAME/package.json`` is; the application is the directory that holds that
``node_modules``. Its own sources (``.js``/``.mjs``/``.cjs``/``.ts`` outside ``node_modules``) are searched
for the bindings of the package (``require``/``import``) and their calls, and the root argument is read when it
is a literal: a string (relative to the image's ``WorkingDir``), ``path.join(__dirname, ...)``,
``path.resolve(...)``, ``__dirname + "/x"``, `` `${__dirname}/x` `` or ``new URL("./x", import.meta.url)``.
Anything else, or a package with no call found (a bundled or generated server), is a root that cannot be told.
``roots`` reads the same calls of the plain static middleware too (``express.static``, ``serve-static``,
``koa-static``...), whatever they send.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from optimizer.filesystem import FileSystem

from .files import read_text
from .serving import DocumentRoot, Serving

__all__ = ["PACKAGES", "ROOT_PACKAGES", "Package", "call_arguments", "evaluate_root", "roots"]

_SOURCE = re.compile(r"\.(?:js|mjs|cjs|ts|mts|cts)$")
_MAX_SOURCES = 2000
_MAX_SOURCE_BYTES = 1 << 20
_STRING = re.compile(r"""^(?:'([^'\\]*)'|"([^"\\]*)")$""")
_TEMPLATE = re.compile(r"^`\$\{__dirname\}(/[^`$]*)`$")
_CONCAT = re.compile(r"""^__dirname\s*\+\s*(?:'([^'\\]*)'|"([^"\\]*)")$""")
_JOIN = re.compile(r"^(?:path\.)?(join|resolve)\((.*)\)$", re.S)
_URL = re.compile(
    r"""^(?:fileURLToPath\()?new URL\(\s*(?:'([^'\\]*)'|"([^"\\]*)")\s*,\s*import\.meta\.url\s*\)\)?$"""
)


@dataclass(frozen=True)
class Package:
    """A middleware package: the call that sets it up and where its root is in that call."""

    name: str
    why: str
    suffixes: frozenset[str]
    root_option: str = ""  # the root is this key of the options object, not the first argument
    enabled_by: str = ""  # a regex the call must contain to send precompressed files ("" when on by default)
    member: str = ""  # the call is ``binding.member(...)`` (``express.static``), not ``binding(...)``

    def find(self, fs: FileSystem, config: Mapping[str, Any]) -> list[Serving]:
        servings: list[Serving] = []
        index = _index(fs)
        for app in index.installs.get(self.name, []):
            servings += self._in_app(index, app, _working_dir(config))
        return servings

    def _in_app(self, index: _Index, app: str, cwd: str) -> list[Serving]:
        shown = f"/{app}" if app else "/"
        sources = index.sources(app)
        if sources is None:
            return [self._unknown(shown, f"more than {_MAX_SOURCES} source files in {shown}")]
        servings: list[Serving] = []
        for path, text in sources:
            for arguments in _calls(text, self.name, self.root_option != "", self.member):
                servings += self._serving(path, arguments, cwd)
        if not servings:
            return [self._unknown(shown, f"no call of {self.name} found in the sources of {shown}")]
        return servings

    def _serving(self, path: str, arguments: list[str], cwd: str) -> list[Serving]:
        if self.enabled_by and not re.search(self.enabled_by, ",".join(arguments[1:] or arguments)):
            return []
        expression = _root_expression(arguments, self.root_option)
        root = evaluate_root(expression, posixpath.dirname(path), cwd) if expression else None
        why = "" if root is not None else f"root {expression or '(none)'!r}"
        return [Serving(self.name, f"called in /{path}", "/" + path, self.suffixes, root, why)]

    def _unknown(self, where: str, why: str) -> Serving:
        return Serving(self.name, "installed", where, self.suffixes, None, why)


PACKAGES: tuple[Package, ...] = (
    Package(
        "express-static-gzip",
        "expressStaticGzip(root, options) sends FILE.br (enableBrotli, or version 2+) and FILE.gz found under "
        "root when the client accepts them; it lists root's compressed files when it starts",
        frozenset({".gz", ".br"}),
    ),
    Package(
        "serve-static-gzip",
        "a serve-static wrapper like express-static-gzip: serveStaticGzip(root) sends FILE.gz/FILE.br",
        frozenset({".gz", ".br"}),
    ),
    Package(
        "connect-gzip-static",
        "gzipStatic(root, options) sends FILE.br and FILE.gz when they exist and the client accepts them",
        frozenset({".gz", ".br"}),
    ),
    Package(
        "@fastify/static",
        "fastify.register(fastifyStatic, { root, preCompressed: true }) sends FILE.br and FILE.gz",
        frozenset({".gz", ".br"}),
        root_option="root",
        enabled_by=r"preCompressed\s*:\s*(?!false\b)",
    ),
    Package(
        "koa-static",
        "serve(root, options) sends FILE.br and FILE.gz through koa-send, both on by default",
        frozenset({".gz", ".br"}),
    ),
    Package(
        "sirv",
        "sirv(dir, { gzip: true, brotli: true }) sends FILE.gz and FILE.br (SvelteKit's adapter-node does)",
        frozenset({".gz", ".br"}),
        enabled_by=r"\b(?:gzip|brotli)\s*:\s*(?!false\b)",
    ),
)


# Every package that serves a directory's files as they are, for ``roots``: the ones above whatever they send,
# and the plain static middleware.
ROOT_PACKAGES: tuple[Package, ...] = (
    *(dataclasses.replace(p, enabled_by="") for p in PACKAGES),
    Package("express", "express.static(root) serves the files under root", frozenset(), member="static"),
    Package("serve-static", "serveStatic(root) serves the files under root", frozenset()),
)


def roots(fs: FileSystem, config: Mapping[str, Any]) -> list[DocumentRoot]:
    """The literal roots of every static-file middleware call in the image's Node.js applications."""
    found: list[DocumentRoot] = []
    for package in ROOT_PACKAGES:
        for serving in package.find(fs, config):
            if serving.root is not None:
                shown = f"{package.name}.{package.member}" if package.member else package.name
                found.append(DocumentRoot("Node.js", shown, serving.source, serving.root))
    return found


class _Index:
    """Per filesystem, listed once for every package: where the packages are installed, and the sources of
    each application (both need a walk over every file)."""

    def __init__(self, fs: FileSystem) -> None:
        self.fs = fs
        self.installs: dict[str, list[str]] = {}
        wanted = {p.name for p in ROOT_PACKAGES}
        for path, _node in fs.files():
            if not path.endswith("/package.json") or "node_modules/" not in path:
                continue
            app, _, rest = path.partition("node_modules/")
            name = rest[: -len("/package.json")]
            if name in wanted and app.rstrip("/") not in self.installs.setdefault(name, []):
                self.installs[name].append(app.rstrip("/"))
        self._sources: dict[str, list[tuple[str, str]] | None] = {}

    def sources(self, app: str) -> list[tuple[str, str]] | None:
        if app not in self._sources:
            self._sources[app] = _sources(self.fs, app)
        return self._sources[app]


_INDEXES: weakref.WeakKeyDictionary[FileSystem, _Index] = weakref.WeakKeyDictionary()


def _index(fs: FileSystem) -> _Index:
    index = _INDEXES.get(fs)
    if index is None:
        index = _INDEXES[fs] = _Index(fs)
    return index


def _working_dir(config: Mapping[str, Any]) -> str:
    inner = config.get("config") or {}
    value = inner.get("WorkingDir") if isinstance(inner, Mapping) else None
    return posixpath.normpath("/" + value).strip("/") if isinstance(value, str) and value else ""


def _sources(fs: FileSystem, app: str) -> list[tuple[str, str]] | None:
    """The application's own source files and their text; None when there are too many to read."""
    out: list[tuple[str, str]] = []
    prefix = app + "/" if app else ""
    for path, node in fs.files():
        if not path.startswith(prefix) or "node_modules/" in path[len(prefix) :] or not _SOURCE.search(path):
            continue
        if node.size > _MAX_SOURCE_BYTES:
            continue
        if len(out) >= _MAX_SOURCES:
            return None
        text = read_text(fs, path)
        if text is not None:
            out.append((path, text))
    return out


def _bindings(text: str, package: str) -> list[str]:
    quoted = r"""['"]""" + re.escape(package) + r"""['"]"""
    patterns = (
        r"(?:const|let|var)\s+(\w+)\s*=\s*require\(\s*" + quoted + r"\s*\)",
        r"import\s+(\w+)\s*(?:,\s*\{[^}]*\})?\s*from\s*" + quoted,
        r"import\s*\*\s*as\s+(\w+)\s+from\s*" + quoted,
        r"import\s*\{\s*default\s+as\s+(\w+)\s*\}\s*from\s*" + quoted,
    )
    names = [m.group(1) for p in patterns for m in re.finditer(p, text)]
    return [re.escape(n) for n in names] + [r"require\(\s*" + quoted + r"\s*\)"]


def _calls(text: str, package: str, registered: bool, member: str = "") -> list[list[str]]:
    """The argument lists of every call of the package's bindings (``register(binding, options)`` when the
    package is a plugin that is registered rather than called; ``binding.member(...)`` with a member)."""
    if package not in text:
        return []
    out = []
    called = r"\s*\.\s*" + re.escape(member) if member else ""
    for binding in _bindings(text, package):
        opener = (
            r"\bregister\(\s*" + binding + r"\s*,"
            if registered
            else r"(?<![\w.])" + binding + called + r"\s*\("
        )
        for match in re.finditer(opener, text):
            arguments = call_arguments(text, match.end() - 1 if not registered else match.start())
            if arguments is not None:
                out.append(arguments)
    return out


def call_arguments(text: str, at: int) -> list[str] | None:
    """The top-level arguments of the call whose ``(`` is at or after ``at``; None when it does not close."""
    start = text.index("(", at)
    depth, quote, current, arguments = 0, "", [], []
    for position in range(start, min(len(text), start + 4096)):
        char = text[position]
        if quote:
            current.append(char)
            if char == quote and text[position - 1] != "\\":
                quote = ""
            continue
        if char in "'\"`":
            quote = char
        elif char in "([{":
            depth += 1
            if depth == 1:
                continue
        elif char in ")]}":
            depth -= 1
            if depth == 0:
                arguments.append("".join(current).strip())
                return [a for a in arguments if a]
        elif char == "," and depth == 1:
            arguments.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    return None


def _root_expression(arguments: list[str], option: str) -> str:
    if not option:
        return arguments[0] if arguments else ""
    for argument in arguments:
        if argument.startswith("{"):
            fields = call_arguments("(" + argument[1:-1] + ")", 0) or []
            for item in fields:
                key, _, value = item.partition(":")
                if key.strip().strip("'\"") == option:
                    return value.strip()
    return ""


def evaluate_root(expression: str, directory: str, cwd: str) -> str | None:
    """The image path a root expression names; None when it is not a literal we can read."""
    expression = expression.strip()
    literal = _STRING.match(expression)
    if literal:
        return _join(cwd, literal.group(1) if literal.group(1) is not None else literal.group(2))
    for pattern in (_TEMPLATE, _CONCAT, _URL):
        match = pattern.match(expression)
        if match:
            value = next(g for g in match.groups() if g is not None)
            return _join(directory, value.lstrip("/") if pattern is not _URL else value)
    joined = _JOIN.match(expression)
    if joined:
        parts = call_arguments("(" + joined.group(2) + ")", 0) or []
        base = cwd  # a relative result is relative to the working directory, for join as for resolve
        for part in parts:
            value = _part(part, directory, cwd)
            if value is None:
                return None
            base = _join(base, value)
        return base
    return None


def _part(part: str, directory: str, cwd: str) -> str | None:
    if part == "__dirname":
        return "/" + directory
    if part == "process.cwd()":
        return "/" + cwd
    literal = _STRING.match(part)
    if literal:
        return literal.group(1) if literal.group(1) is not None else literal.group(2)
    return None


def _join(base: str, value: str) -> str:
    return posixpath.normpath(posixpath.join("/" + base, value)).strip("/").removeprefix("/")
