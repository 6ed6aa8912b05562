"""Shared test fixtures: where the third-party fixtures live, and tools that must exist in CI."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import settings

if TYPE_CHECKING:
    from tests.realimages import Fleet

# In CI, property tests draw the same examples every run: a red build is reproducible, not a coin toss.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)

ROOT = Path(__file__).resolve().parent.parent
IN_CI = bool(os.environ.get("CI"))
if IN_CI:
    settings.load_profile("ci")


def fixtures_dir() -> Path:
    """``../shared/fixtures`` from the project root, or ``$OCI_OPTIMIZER_FIXTURES``."""
    override = os.environ.get("OCI_OPTIMIZER_FIXTURES")
    return Path(override) if override else (ROOT.parent / "shared" / "fixtures")


def missing(reason: str) -> None:
    """A needed tool or fixture is absent: a failure in CI, a skip elsewhere."""
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def require_tool(program: str, package: str) -> str:
    path = shutil.which(program)
    if path is None:
        missing(f"{program} not found (Debian package {package})")
        raise AssertionError  # unreachable
    return path


@pytest.fixture(scope="session")
def fixtures() -> Path:
    path = fixtures_dir()
    if not path.is_dir():
        missing(f"fixtures directory {path} not found (set OCI_OPTIMIZER_FIXTURES)")
    return path


@pytest.fixture(scope="session")
def real_fleet_images(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    """The fleet of ``tests/realimages.py``: built fresh in CI, from the recipe-keyed cache elsewhere."""
    from tests.realimages import FleetUnavailable, real_fleet

    try:
        return real_fleet(tmp_path_factory.mktemp("fleet") if IN_CI else None)
    except FleetUnavailable as error:
        missing(str(error))
        raise AssertionError from error  # unreachable
