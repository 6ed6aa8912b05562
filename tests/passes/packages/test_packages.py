"""Files a package manager lists are left alone unless --touch-package-files: checked by dpkg and rpm themselves.

Each end-to-end test installs the package ``tool`` (an unstripped ELF, an uncompressed PNG, a text file with
an identical .gz twin: see ``builds``) with the real manager into a tree, makes an image of it, runs every
pass, unpacks the result with umoci and asks the manager to verify it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from optimizer import Options, optimize
from optimizer.report import Report
from tests.conftest import require_tool
from tests.imagetools import umoci_unpack
from tests.passes.packages.builds import APP, PAYLOAD, dpkg_root, dpkg_verify, image_of, rpm_root, rpm_verify

# What the passes change in the payload: the ELF, the PNG, the .gz twin (notes.txt itself stays).
CHANGED = {PAYLOAD[0], PAYLOAD[1], PAYLOAD[3]}
CHANGED_APP = {APP[0], APP[1], APP[3]}


def _changed_paths(report: Report) -> set[str]:
    return {
        finding.path
        for item in report.images[0].passes
        for finding in item.findings
        if finding.action in ("stripped", "replaced", "deleted")
    }


def _kept(report: Report) -> dict[str, str]:
    return {
        finding.path: finding.reason
        for item in report.images[0].passes
        for finding in item.findings
        if finding.action == "kept" and "packaged" in finding.reason
    }


def _run(tmp_path: Path, source: Path, name: str, touch: bool) -> tuple[Report, Path]:
    require_tool("umoci", "umoci")
    out = tmp_path / f"{name}.tar"
    report = optimize(str(source), str(out), Options(base="none", touch_package_files=touch))
    return report, umoci_unpack(out, tmp_path, name)


@pytest.fixture(scope="module")
def dpkg_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("dpkg")
    root = dpkg_root(where)
    assert dpkg_verify(root) == []
    return image_of(root, where / "image.tar")


@pytest.fixture(scope="module")
def rpm_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("rpm")
    root = rpm_root(where)
    assert rpm_verify(root) == []
    return image_of(root, where / "image.tar")


def test_dpkg_verify_finds_nothing_after_the_default_run(tmp_path: Path, dpkg_image: Path) -> None:
    report, rootfs = _run(tmp_path, dpkg_image, "default", touch=False)
    assert dpkg_verify(rootfs) == []
    # The same files outside the package are changed: the passes ran, and kept only what dpkg lists.
    assert _changed_paths(report) == CHANGED_APP
    kept = _kept(report)
    assert set(kept) == CHANGED
    assert all("dpkg lists it (package tool)" in reason for reason in kept.values())
    assert all("--touch-package-files" in reason for reason in kept.values())


def test_touch_package_files_changes_them_and_dpkg_says_so(tmp_path: Path, dpkg_image: Path) -> None:
    report, rootfs = _run(tmp_path, dpkg_image, "touch", touch=True)
    assert _changed_paths(report) == {*CHANGED_APP, *CHANGED}
    assert report.options["touch_package_files"] is True
    verify = dpkg_verify(rootfs)
    assert sorted(line.split()[-1] for line in verify) == sorted("/" + p for p in CHANGED)
    assert any(line.startswith("missing") and line.endswith(PAYLOAD[3]) for line in verify)


def test_rpm_verify_finds_nothing_after_the_default_run(tmp_path: Path, rpm_image: Path) -> None:
    report, rootfs = _run(tmp_path, rpm_image, "default", touch=False)
    assert rpm_verify(rootfs) == []
    assert _changed_paths(report) == CHANGED_APP
    assert all("rpm lists it (package tool)" in reason for reason in _kept(report).values())
    _, rootfs = _run(tmp_path, rpm_image, "touch", touch=True)
    verify = rpm_verify(rootfs)
    assert {line.split()[-1] for line in verify} == {"/" + p for p in CHANGED}
