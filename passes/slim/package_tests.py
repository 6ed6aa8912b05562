"""Category ``tests``: the test suites that Python packages install into site-packages.

Removes: a directory named ``tests`` or ``test`` inside a package in a ``site-packages`` or ``dist-packages``
directory (``numpy/linalg/tests``), with everything in it, when both hold:

- a ``*.dist-info/RECORD`` of that site-packages lists every file in it (besides bytecode caches): the files
  are what the package shipped, not the application's own;
- no other module imports it, by a static scan of every ``.py`` file of the image outside the standard
  library: ``import``/``from ... import`` statements (relative ones resolved), string constants that name the
  module (``importlib.import_module("pkg.tests")``) or its path (``"pkg/tests/data.csv"``), and the
  ``entry_points.txt`` and ``.pth`` files of the site-packages. A test directory kept because a module imports
  it keeps alive what it imports in turn (``numpy.testing`` imports ``numpy._core.tests._natype``).

Why it is safe: nothing imports the modules removed, so no code path can reach them; what is left of the
package never sees the difference. A package's self-test entry point (``numpy.test()``) then finds no tests.

Never removes: a top-level ``tests`` package (an application may import it by that name), test directories of
Debian's Python packages (no RECORD: dpkg owns them), ``testing`` packages (``numpy.testing`` is public API),
anything another module imports. Not seen by the scan: a module that builds a test module's name or path at run
time from pieces (``"te" + "sts"``): the README says so.
"""

from __future__ import annotations

import ast
import csv
import io
import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from optimizer.model import EntryKind

from .rule import Subject, Verdict

__all__ = ["CATEGORY", "find"]

CATEGORY = "tests"
TEST_NAMES = ("tests", "test")
_ROOT = re.compile(r"(?:.*/)?(?:site|dist)-packages$")
_STDLIB = re.compile(r"usr/(?:local/)?lib/python[23](?:\.\d+)?/(?!(?:site|dist)-packages/)")
_MENTIONS_TEST = re.compile(rb"\btests?\b")


@dataclass
class _Candidate:
    root: str  # the site-packages directory
    directory: str  # the test directory's path in the image
    module: str  # its dotted module name
    files: list[str] = field(default_factory=list)

    @property
    def relative(self) -> str:
        return self.directory[len(self.root) + 1 :]


def _roots(subject: Subject) -> list[str]:
    return [p for p in subject.paths if _ROOT.match(p) and subject.fs.is_directory(p)]


def _recorded(subject: Subject, root: str) -> set[str]:
    """Every path (relative to ``root``) the RECORD files of the site-packages list."""
    listed: set[str] = set()
    for path, node in subject.under(root):
        if path.count("/") != root.count("/") + 2 or not path.endswith(".dist-info/RECORD"):
            continue
        if node.content is None:
            continue
        text = node.content.read_bytes().decode("utf-8", "replace")
        for row in csv.reader(io.StringIO(text)):
            if row:
                listed.add(posixpath.normpath(row[0]))
    return listed


def _candidates(subject: Subject, root: str, verdict: Verdict) -> list[_Candidate]:
    found: list[_Candidate] = []
    listed: set[str] | None = None
    for path, node in subject.under(root):
        name = path.rsplit("/", 1)[-1]
        if name not in TEST_NAMES or node.entry.kind is not EntryKind.DIR:
            continue
        relative = path[len(root) + 1 :]
        if "/" not in relative or any(path.startswith(c.directory + "/") for c in found):
            continue  # a top-level tests package, or inside a test directory already found
        if not all(part.isidentifier() for part in relative.split("/")):
            continue  # not importable as a package (a data directory)
        candidate = _Candidate(root, path, relative.replace("/", "."))
        unlisted = []
        if listed is None:
            listed = _recorded(subject, root)
        for inner, inner_node in subject.under(path):
            if inner_node.entry.kind is EntryKind.DIR:
                continue
            candidate.files.append(inner)
            if inner[len(root) + 1 :] not in listed and "/__pycache__/" not in inner:
                unlisted.append(inner)
        if unlisted:
            verdict.kept.append(
                (path, f"not every file is in a RECORD ({unlisted[0]}, ...): not the package's own")
            )
            continue
        found.append(candidate)
    return found


@dataclass
class _Module:
    path: str
    package: str | None  # its package's dotted name for relative imports (None outside site-packages)
    names: set[str]  # dotted names it imports
    strings: set[str]  # its string constants
    opaque: bool = False  # could not be parsed: it may import anything of its own package


def _package_of(path: str, roots: list[str]) -> str | None:
    for root in roots:
        if path.startswith(root + "/"):
            parts = path[len(root) + 1 :].split("/")[:-1]
            return ".".join(parts)
    return None


def _scan(path: str, source: bytes, package: str | None) -> _Module:
    module = _Module(path, package, set(), set())
    try:
        tree = ast.parse(source, filename=path)
    except (SyntaxError, ValueError):
        # Not parseable by this Python (another version's syntax): it may import any test module of its own
        # package, relatively, and any other it names.
        module.opaque = True
        module.names.update(re.findall(r"[A-Za-z_][\w.]*", source.decode("utf-8", "replace")))
        return module
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            module.names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module or "", node.level, package)
            if base is None:
                continue
            module.names.add(base)
            module.names.update(f"{base}.{alias.name}" if base else alias.name for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and len(node.value) < 300:
            module.strings.add(node.value)
    if package is not None and path.endswith("/__init__.py"):
        # ``from package import *`` imports the submodules that ``__all__`` lists.
        module.names.update(f"{package}.{name}" for name in _all_names(tree))
    return module


def _all_names(tree: ast.Module) -> list[str]:
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
            and isinstance(node.value, ast.List | ast.Tuple)
        ):
            return [
                e.value for e in node.value.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)
            ]
    return []


def _absolute(name: str, level: int, package: str | None) -> str | None:
    if level == 0:
        return name
    if package is None:
        return None  # a relative import outside site-packages cannot reach into it
    parts = package.split(".") if package else []
    if level - 1 > len(parts):
        return None
    base = parts[: len(parts) - (level - 1)]
    return ".".join([*base, name] if name else base)


def _references(module: _Module, candidate: _Candidate) -> bool:
    target = candidate.module
    if module.opaque and module.package is not None and module.package.split(".")[0] == target.split(".")[0]:
        return True
    for name in module.names:
        if name == target or name.startswith(target + "."):
            return True
    for text in module.strings:
        if text == target or text.startswith(target + "."):
            return True
        if candidate.relative in text:
            return True
        parent = candidate.directory.rsplit("/", 1)[0]
        base = candidate.directory.rsplit("/", 1)[1]
        if module.path.startswith(parent + "/") and (text.startswith(base + "/") or f"/{base}/" in text):
            return True
    return False


def _modules(subject: Subject, roots: list[str], candidates: list[_Candidate]) -> list[_Module]:
    modules = []
    for path in subject.paths:
        if not path.endswith((".py", ".pth")) and not path.endswith(".dist-info/entry_points.txt"):
            continue
        if _STDLIB.match(path):
            continue
        node = subject.fs.get(path)
        if node is None or node.content is None:
            continue
        data = node.content.read_bytes()
        if not any(c.module.rsplit(".", 1)[-1].encode() in data for c in candidates):
            continue  # cannot name any candidate: every name ends in "test" or "tests"
        if not _MENTIONS_TEST.search(data):
            continue
        if path.endswith(".py"):
            modules.append(_scan(path, data, _package_of(path, roots)))
        else:
            words = set(re.findall(r"[A-Za-z_][\w.]*", data.decode("utf-8", "replace")))
            modules.append(_Module(path, None, words, set()))
    return modules


def _inside(path: str, candidate: _Candidate) -> bool:
    return path.startswith(candidate.directory + "/")


def _needed(candidates: list[_Candidate], modules: Iterable[_Module]) -> dict[str, str]:
    """candidate directory -> the module that keeps it, until nothing changes (kept tests keep their imports)."""
    modules = list(modules)
    kept: dict[str, str] = {}
    live = [m for m in modules if not any(_inside(m.path, c) for c in candidates)]
    while live:
        newly: list[_Candidate] = []
        for candidate in candidates:
            if candidate.directory in kept:
                continue
            for module in live:
                if _references(module, candidate):
                    kept[candidate.directory] = module.path
                    newly.append(candidate)
                    break
        live = [m for m in modules if any(_inside(m.path, c) for c in newly)]
    return kept


def find(subject: Subject) -> Verdict:
    verdict = Verdict()
    roots = _roots(subject)
    candidates = [c for root in roots for c in _candidates(subject, root, verdict)]
    if not candidates:
        return verdict
    kept = _needed(candidates, _modules(subject, roots, candidates))
    for candidate in candidates:
        if candidate.directory in kept:
            verdict.kept.append((candidate.directory, f"imported by {kept[candidate.directory]}"))
            continue
        verdict.remove.append(
            (
                candidate.directory,
                f"test suite of {candidate.module.split('.')[0]} (no other module imports it)",
            )
        )
    return verdict
