from __future__ import annotations

from pathlib import Path

from passes.slim import package_tests

from .rules import removed, verdict

SITE = "venv/lib/python3.11/site-packages"


def site(files: dict[str, bytes], recorded: tuple[str, ...] | None = None) -> dict[str, bytes | str]:
    """A site-packages with ``files`` and a RECORD listing them (or only ``recorded``)."""
    listed = [p for p in files if "__pycache__" not in p] if recorded is None else list(recorded)
    record = "".join(f"{p},sha256=x,1\n" for p in listed).encode()
    return {f"{SITE}/{p}": data for p, data in {**files, "pkg-1.0.dist-info/RECORD": record}.items()}


PACKAGE = {
    "pkg/__init__.py": b"from . import core\n",
    "pkg/core.py": b"import os\n",
    "pkg/tests/__init__.py": b"",
    "pkg/tests/test_core.py": b"import pkg.core\n",
    "pkg/tests/__pycache__/test_core.cpython-311.pyc": b"cache",
    # imported by a public module, which keeps what it imports in turn
    "pkg/testing.py": b"from pkg.sub.tests import helpers\n",
    "pkg/sub/__init__.py": b"",
    "pkg/sub/tests/__init__.py": b"",
    "pkg/sub/tests/helpers.py": b"from ...deep.tests.data import TABLE\n",
    "pkg/deep/__init__.py": b"",
    "pkg/deep/tests/data.py": b"TABLE = 1\n",
    # named in a string (importlib), and relatively
    "pkg/dyn/__init__.py": b"import importlib\nplugin = importlib.import_module('pkg.dyn.tests.plugin')\n",
    "pkg/dyn/tests/plugin.py": b"",
    "pkg/rel/__init__.py": b"from .test import fixture\n",
    "pkg/rel/test/fixture.py": b"",
    # a data directory, not a package
    "pkg/data-files/test/sample.txt": b"",
}


def test_test_suites_nothing_imports_go(tmp_path: Path) -> None:
    files = {**PACKAGE, "tests/__init__.py": b"", "tests/test_top.py": b""}
    found = verdict(tmp_path, package_tests.find, [site(files), {"app/main.py": b"import pkg\n"}])
    assert removed(found) == [f"{SITE}/pkg/tests"]
    kept = dict(found.kept)
    assert kept[f"{SITE}/pkg/sub/tests"] == f"imported by {SITE}/pkg/testing.py"
    assert kept[f"{SITE}/pkg/deep/tests"] == f"imported by {SITE}/pkg/sub/tests/helpers.py"
    assert kept[f"{SITE}/pkg/dyn/tests"] == f"imported by {SITE}/pkg/dyn/__init__.py"
    assert kept[f"{SITE}/pkg/rel/test"] == f"imported by {SITE}/pkg/rel/__init__.py"


def test_the_application_importing_a_test_suite_keeps_it(tmp_path: Path) -> None:
    found = verdict(
        tmp_path, package_tests.find, [site(PACKAGE), {"app/main.py": b"from pkg.tests import test_core\n"}]
    )
    assert f"{SITE}/pkg/tests" not in removed(found)


def test_files_no_record_lists_stay(tmp_path: Path) -> None:
    recorded = tuple(p for p in PACKAGE if p != "pkg/tests/test_core.py")
    found = verdict(tmp_path, package_tests.find, [site(PACKAGE, recorded)])
    assert removed(found) == []
    assert dict(found.kept)[f"{SITE}/pkg/tests"].startswith("not every file is in a RECORD")


def test_a_module_this_python_cannot_parse_keeps_its_package_tests(tmp_path: Path) -> None:
    files = {**PACKAGE, "pkg/legacy.py": b'print "runs the tests"\n'}
    assert removed(verdict(tmp_path, package_tests.find, [site(files)])) == []


def test_from_package_import_star_imports_what_all_lists(tmp_path: Path) -> None:
    files = {**PACKAGE, "pkg/__init__.py": b"__all__ = ['core', 'tests']\n"}
    assert removed(verdict(tmp_path, package_tests.find, [site(files)])) == []
