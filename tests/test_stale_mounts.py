"""A killed test session's mounts inside its fleet unpacks are undone by the next session, never a live one's."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .conftest import missing, unmount_stale


def _mounted(path: Path) -> bool:
    with open("/proc/self/mounts") as handle:
        return any(line.split()[1] == str(path) for line in handle)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_mounts_of_a_dead_session_are_undone_and_a_live_ones_kept() -> None:
    if os.geteuid() != 0:
        missing("mounting a tmpfs needs root (as the fleet's checks do)")
    top = Path(tempfile.mkdtemp(prefix="stale-mounts-"))
    points: dict[str, Path] = {}
    try:
        for name, pid in (("dead", _dead_pid()), ("live", os.getpid())):
            session = top / name / "pytest-of-root" / "pytest-7"
            point = session / "fleet-unpack0" / "rootfs" / "proc"
            point.mkdir(parents=True)
            (session / ".lock").write_text(str(pid))
            subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(point)], check=True)
            points[name] = point
        assert str(points["dead"]) in unmount_stale()
        assert not _mounted(points["dead"]) and _mounted(points["live"])
    finally:
        for point in points.values():
            subprocess.run(["umount", "-l", str(point)], check=False)
        shutil.rmtree(top)
