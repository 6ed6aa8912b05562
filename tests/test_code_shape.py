"""The shape the code keeps (issue 14): no function over 80 lines and no module over 500 lines in the library
(``optimizer/``) and the passes (``passes/``): a longer one is several things that want names of their own."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from .conftest import ROOT

MAX_FUNCTION = 80
MAX_MODULE = 500
SOURCES = sorted(p for folder in ("optimizer", "passes") for p in (ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(ROOT)) for p in SOURCES])
def test_modules_and_functions_stay_small(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_MODULE, f"{path.relative_to(ROOT)}: {len(text.splitlines())} lines"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines, line {node.lineno})"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION
    ]
    assert not long, f"{path.relative_to(ROOT)}: {', '.join(long)}"
