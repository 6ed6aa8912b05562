"""``--slim all`` on the real fleet (``tests/realimages.py``): the images shrink, their own checks still pass.

- python-app (numpy in a venv), base protected: at least 15% fewer compressed bytes from its own layers alone;
  the base layer is kept byte for byte.
- node-app, ``--base none``: its removable bytes are in the Debian base layer (its own layers are Node's
  shared libraries), so the base is slimmed too, and at least 15% goes; nginx-site slimmed the same way gets
  the very same base layer: the fleet still shares one base blob.

Every check observes what it did before, except ``dpkg --verify``, which now lists as missing exactly the
package files the report says were removed or hidden (as it does on an image built with Debian's own
``path-exclude`` for slim images), and the RECORD check, which counts fewer listed files (the lines of
removed files go) and finds no wrong hash that was not wrong before.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from optimizer import Options, Report, optimize
from passes.slim import SlimOptions
from tests.realimages import Fleet, Observations, layer_digests

pytestmark = pytest.mark.slow

SLIM_ALL = SlimOptions(categories=("all",))
Observe = Callable[[str, Path], Observations]  # the session's ``observe`` fixture (tests/conftest.py)


def _slimmed(fleet: Fleet, name: str, out: Path, **more: Any) -> Report:
    options = Options(passes=("slim",), pass_options=(SLIM_ALL,), **more)
    return optimize(str(fleet.image(name).path), str(out), options)


def _assert_same_behaviour(before: Observations, after: Observations, report: Report) -> None:
    gone = {
        "/" + finding.path
        for finding in report.images[0].passes[0].findings
        if finding.action in ("removed", "hidden")
    }
    differences = before.differences(after)
    verify = differences.pop("dpkg --verify", ((), ()))
    _assert_records_true(before, after, differences.pop("RECORD hashes", ((), ())), gone)
    assert differences == {}
    only_before, only_after = verify
    assert only_before == ()
    assert after.values["dpkg --verify"][0] == before.values["dpkg --verify"][0]
    missing = [line.removeprefix("out: missing     ") for line in only_after]
    assert missing and all(path in gone for path in missing), [p for p in missing if p not in gone][:5]


def _assert_records_true(
    before: Observations,
    after: Observations,
    changed: tuple[tuple[str, ...], tuple[str, ...]],
    gone: set[str],
) -> None:
    """RECORDs lose the lines of removed files (fewer files listed) and gain no wrong hash: a line wrong
    before may only go with its file."""
    if not changed[0] and not changed[1]:
        return

    def listed(lines: tuple[str, ...]) -> int:
        return next(int(line.split()[1]) for line in lines if line.endswith("files listed with a hash"))

    assert listed(after.values["RECORD hashes"]) < listed(before.values["RECORD hashes"])
    only_before, only_after = ([line for line in lines if "RECORD says" in line] for lines in changed)
    assert only_after == [], only_after
    for line in only_before:  # "out: numpy: numpy/x/__pycache__/y.pyc: RECORD says ..."
        listed = line.split(": ")[2]
        assert any(path.endswith("/" + listed) for path in gone), line


def _saved(report: Report) -> float:
    return 1 - report.bytes_after / report.bytes_before


def test_python_app_loses_15_percent_from_its_own_layers(
    real_fleet_images: Fleet, observe: Observe, tmp_path: Path
) -> None:
    image = real_fleet_images.image("python-app")
    out = tmp_path / "python-app.tar"
    report = _slimmed(real_fleet_images, "python-app", out)
    assert _saved(report) >= 0.15, report.bytes_after
    assert layer_digests(out)[0] == image.base_layer_digest
    categories = report.images[0].passes[0].details["categories"]
    assert categories["pycache"]["removed_bytes"] > 0 and categories["tests"]["removed_bytes"] > 0
    assert categories["docs"]["hidden_bytes"] > 0  # the base's docs: whiteouts, the base blob unchanged
    _assert_same_behaviour(observe("python-app", image.path), observe("python-app", out), report)


def test_node_app_with_its_base_slimmed_loses_15_percent_and_shares_that_base(
    real_fleet_images: Fleet, observe: Observe, tmp_path: Path
) -> None:
    out = tmp_path / "node-app.tar"
    report = _slimmed(real_fleet_images, "node-app", out, base="none")
    assert _saved(report) >= 0.15, report.bytes_after
    nginx = tmp_path / "nginx-site.tar"
    _slimmed(real_fleet_images, "nginx-site", nginx, base="none")
    assert layer_digests(nginx)[0] == layer_digests(out)[0] != real_fleet_images.base.base_layer_digest
    before = observe("node-app", real_fleet_images.image("node-app").path)
    _assert_same_behaviour(before, observe("node-app", out), report)
