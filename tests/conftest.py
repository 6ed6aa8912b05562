"""Shared test fixtures: where the third-party fixtures live, and tools that must exist in CI.

The third-party fixtures (real images, ELF and UPX files, media, OCI schemas, captured registry events) live
outside the repository, in ``../shared/fixtures`` beside the project root or in ``$OCI_OPTIMIZER_FIXTURES``;
``PROVENANCE.md`` there names the origin of every file. A test reaches them only through ``fixture()`` (or
the ``fixtures`` pytest fixture for the whole tree), so an absent fixture is a skip with its path as the reason,
or a failure when ``CI`` is set, never a crash. At the end of a run, a short summary says how many tests that
cost and how to get the fixtures.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import settings

if TYPE_CHECKING:
    from tests.realimages import Fleet, Observations

# In CI, property tests draw the same examples every run: a red build is reproducible, not a coin toss.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)

ROOT = Path(__file__).resolve().parent.parent
IN_CI = bool(os.environ.get("CI"))
if IN_CI:
    settings.load_profile("ci")

FIXTURES_VARIABLE = "OCI_OPTIMIZER_FIXTURES"
# Every reason for a missing fixture starts with this, which is how the summary finds them among the skips.
FIXTURE_NOT_FOUND = "fixture not found: "


def fixtures_dir() -> Path:
    """``../shared/fixtures`` from the project root, or ``$OCI_OPTIMIZER_FIXTURES``."""
    override = os.environ.get(FIXTURES_VARIABLE)
    return Path(override) if override else (ROOT.parent / "shared" / "fixtures")


def missing(reason: str) -> None:
    """A needed tool or fixture is absent: a failure in CI, a skip elsewhere."""
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def fixture(relative: str) -> Path:
    """The fixture file or folder at ``relative`` (``"images/dive/x.tar"``); absent, it is ``missing()``."""
    path = fixtures_dir() / relative
    if not path.exists():
        missing(FIXTURE_NOT_FOUND + str(path))
    return path


def fixture_names(folder: str, pattern: str, keep: bool = True) -> list[str]:
    """Names (relative to the fixture ``folder``) matching ``pattern``, for ``parametrize`` at collection.

    An absent folder gives the pattern itself as the only name: the test then reaches ``fixture()`` and reports
    the missing fixture, where an empty parameter set would be skipped without a word, even in CI."""
    base = fixtures_dir() / folder
    names = sorted(str(p.relative_to(base)) for p in base.glob(pattern)) if base.is_dir() else []
    return names or [pattern]


def require_tool(program: str, package: str) -> str:
    path = shutil.which(program)
    if path is None:
        missing(f"{program} not found (Debian package {package})")
        raise AssertionError  # unreachable
    return path


@pytest.fixture(scope="session")
def fixtures() -> Path:
    """The root of the fixture tree (tests that list it); one file or folder is ``fixture(relative)``."""
    return fixture("")


def _reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):  # a skip: (path, line, "Skipped: reason")
        return str(longrepr[2])
    return str(longrepr)


@pytest.hookimpl(wrapper=True, tryfirst=True)  # outermost: after pytest's short summary, by the last line
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> Iterator[None]:
    """How many tests the missing fixtures cost, and how to get them."""
    yield
    stats = terminalreporter.stats
    skipped = sum(FIXTURE_NOT_FOUND in _reason(r) for r in stats.get("skipped", []))
    failed = sum(FIXTURE_NOT_FOUND in _reason(r) for r in stats.get("failed", []) + stats.get("error", []))
    if not skipped and not failed:
        return
    source = f"${FIXTURES_VARIABLE}" if os.environ.get(FIXTURES_VARIABLE) else "the default place"
    counted = " and ".join(
        text
        for count, text in ((skipped, f"{skipped} skipped"), (failed, f"{failed} failed (CI is set)"))
        if count
    )
    write = terminalreporter.write_line
    terminalreporter.section("missing fixtures", sep="-")
    write(f"{counted}: their third-party fixtures are not under {fixtures_dir()} ({source}).")
    write(
        "The fixtures are files from public projects and Debian packages (real images, ELF and UPX binaries, media,"
        " OCI schemas, registry events), kept out of this repository; PROVENANCE.md in the tree names the origin"
        " of each file."
    )
    write(
        f"To run these tests, place the tree at {ROOT.parent / 'shared' / 'fixtures'} (../shared/fixtures from"
        f" the project root) or set {FIXTURES_VARIABLE}=/path/to/fixtures; README 'Fixtures' says more."
    )


@pytest.fixture(scope="session")
def real_fleet_images(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    """The fleet of ``tests/realimages.py``: built fresh in CI, from the recipe-keyed cache elsewhere."""
    from tests.realimages import FleetUnavailable, real_fleet

    try:
        return real_fleet(tmp_path_factory.mktemp("fleet") if IN_CI else None)
    except FleetUnavailable as error:
        missing(str(error))
        raise AssertionError from error  # unreachable


# Unpacking a fleet image creates some 12,000 files. Where /tmp is on a disk shared with other jobs (as on the
# project's machines: ext4 with online discard), creating a file costs 0.03 to 0.8 ms depending on what else
# writes at the time: a python-app unpack took 5 to 15 s there, 2 to 4 s on tmpfs.
TMPFS = Path("/dev/shm")
UNPACK_PREFIX = "oci-optimizer-fleet-unpack-"  # then the pid of the session, so a later one knows it dead


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _session_pid(mount_point: str) -> int | None:
    """The pid of the test session a fleet check's mount belongs to (pytest's ``.lock`` in its numbered
    directory, or the pid in a /dev/shm unpack directory's name); 0 when the session ended, None when the mount
    is not one of ours."""
    parts = Path(mount_point).parts
    for n in range(1, len(parts) - 1):
        if parts[n].startswith("pytest-of-"):
            try:
                return int((Path(*parts[: n + 2]) / ".lock").read_text().strip() or 0)
            except (OSError, ValueError):
                return 0
        if Path(*parts[:n]) == TMPFS and parts[n].startswith(UNPACK_PREFIX):
            pid = parts[n][len(UNPACK_PREFIX) :].split("-", 1)[0]
            return int(pid) if pid.isdigit() else 0
    return None


def unmount_stale() -> list[str]:
    """Unmount (lazily) the mounts a killed session left inside its fleet unpacks; the mount points."""
    if os.geteuid() != 0:
        return []  # only root mounts there
    try:
        with open("/proc/self/mounts") as handle:
            points = [line.split()[1].replace("\\040", " ") for line in handle]
    except OSError:
        return []
    gone = []
    for point in sorted(points, key=len, reverse=True):  # the deepest first
        pid = _session_pid(point)
        if pid is not None and not (pid and _alive(pid)):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)
            gone.append(point)
    return gone


def pytest_configure(config: pytest.Config) -> None:
    """A killed session leaves /proc and /dev mounted inside its fleet unpacks, and pytest deletes old numbered
    directories later: a delete that went through the bind mount of /dev would remove the host's devices."""
    unmount_stale()


TMPFS_ROOM = 2 << 30  # the largest image unpacked, its layout and its plain-tar copy, with room to spare


def _room(directory: Path) -> int:
    try:
        stats = os.statvfs(directory)
    except OSError:
        return 0
    return stats.f_bavail * stats.f_frsize


@pytest.fixture(scope="session")
def observe(
    real_fleet_images: Fleet, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str, Path], Observations]]:
    """``observe(name, archive)``: the checks of fleet image ``name`` on that archive, computed once per session
    (the fleet tests and the slim pass's fleet tests both observe the images as built: each unpack of a fleet
    image and its checks cost 5 to 15 s). Images are unpacked on /dev/shm when it has 2 GiB free, else in
    pytest's temporary directory."""
    from bench.imagebuild import mounted_under
    from tests.realimages import unpacked

    on_tmpfs = TMPFS.is_dir() and _room(TMPFS) >= TMPFS_ROOM
    if on_tmpfs:
        scratch = Path(tempfile.mkdtemp(prefix=f"{UNPACK_PREFIX}{os.getpid()}-", dir=TMPFS))
    else:
        scratch = tmp_path_factory.mktemp("fleet-unpack")
    seen: dict[tuple[str, Path], Observations] = {}

    def run(name: str, archive: Path) -> Observations:
        if (name, archive) not in seen:
            with unpacked(archive, scratch) as rootfs:
                seen[name, archive] = real_fleet_images.image(name).check(rootfs)
        return seen[name, archive]

    yield run
    # Never through a /proc or /dev mount a failed check left behind (unpacked() has said so already).
    if on_tmpfs and not mounted_under(scratch):
        shutil.rmtree(scratch)
