"""``scripts/build_tool_image.py`` without debootstrap: a small tree becomes layers and an image that skopeo and
umoci read back as the same tree, byte-identically whatever the umask; the wheel platforms fit the image's glibc.

The whole build (debootstrap, PyPI, two builds compared, the image run) is ``build_tool_image.py --check``, run by
``.ci/run``: minutes and the network, too slow for the suite.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import ROOT, require_tool
from tests.imagetools import Layout, tree_of, umoci_unpack

EPOCH = 1_700_000_000


@pytest.fixture(scope="module")
def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "build_tool_image", ROOT / "scripts" / "build_tool_image.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def make_tree(root: Path) -> None:
    (root / "lib/pkg").mkdir(parents=True)
    (root / "lib/pkg/__init__.py").write_text("x = 1\n")
    (root / "lib/pkg-1.0.dist-info").mkdir()
    (root / "lib/pkg-1.0.dist-info/METADATA").write_text("Name: pkg\n")
    (root / "bin").mkdir()
    (root / "bin/tool").write_text("#!/bin/sh\necho hi\n")
    (root / "bin/tool").chmod(0o700)  # as a strict umask would leave it: normalised to 0755
    (root / "lib/pkg/data.txt").write_bytes(b"shared")
    os.link(root / "lib/pkg/data.txt", root / "lib/pkg/again.txt")
    os.symlink("../lib/pkg/__init__.py", root / "bin/link")


def write(script: ModuleType, tree: Path, work: Path, output: Path) -> str:
    work.mkdir()
    entries = [script._directory("opt", EPOCH), *script.tree_entries(tree, "opt", normalise=True)]
    layer = script.write_layer(work / "layer.tar.gz", iter(entries), EPOCH)
    config = {"architecture": "amd64", "os": "linux", "config": {}}
    return str(script.write_image(output, [(layer, "a test layer", EPOCH)], config, "localhost/tool:test"))


def test_a_tree_becomes_an_image_that_reads_back_the_same(
    script: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    make_tree(tree)
    digest = write(script, tree, tmp_path / "w1", tmp_path / "one.tar")
    names = [name for name in Layout(tmp_path / "one.tar").files if name.startswith("blobs/")]
    assert len(names) == 3  # one layer, the config, the manifest
    old = os.umask(0o077)
    try:
        monkeypatch.setenv("TZ", "Pacific/Kiritimati")
        again = write(script, tree, tmp_path / "w2", tmp_path / "two.tar")
    finally:
        os.umask(old)
    assert again == digest
    assert (tmp_path / "one.tar").read_bytes() == (tmp_path / "two.tar").read_bytes()

    require_tool("skopeo", "skopeo")
    inspected = subprocess.run(
        ["skopeo", "inspect", f"oci-archive:{tmp_path / 'one.tar'}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(inspected.stdout)["Digest"] == digest
    assert json.loads(inspected.stdout)["Created"] == "2023-11-14T22:13:20Z"  # EPOCH

    require_tool("umoci", "umoci")
    rootfs = umoci_unpack(tmp_path / "one.tar", tmp_path, "one")
    unpacked = tree_of(rootfs)
    assert unpacked["opt/bin/tool"][:2] == ("file", 0o755)
    assert unpacked["opt/lib/pkg/__init__.py"][:2] == ("file", 0o644)
    assert unpacked["opt/lib/pkg/again.txt"][-1] is True  # still a hardlink
    assert unpacked["opt/bin/link"] == ("link", 0, 0, "../lib/pkg/__init__.py")
    assert (rootfs / "opt/lib/pkg/again.txt").read_bytes() == b"shared"
    assert {k[4:] for k in unpacked if k.startswith("opt/")} == {
        str(p.relative_to(tree)) for p in tree.rglob("*")
    }


def test_entries_are_in_path_order_with_hardlinks_after_their_file(
    script: ModuleType, tmp_path: Path
) -> None:
    make_tree(tmp_path)
    (tmp_path / "lib-a").mkdir()
    entries = [entry for entry, _ in script.tree_entries(tmp_path, "", normalise=False)]
    paths = [entry.path for entry in entries]
    assert paths == sorted(paths, key=lambda p: p.split("/"))
    assert paths.index("lib/pkg/__init__.py") < paths.index("lib-a")  # "a/b" before "a-b", as tar tools list
    (hardlink,) = [entry for entry in entries if entry.kind.value == "hardlink"]
    assert (hardlink.path, hardlink.link) == ("lib/pkg/data.txt", "lib/pkg/again.txt")


def test_wheel_platforms_fit_the_image_glibc(script: ModuleType) -> None:
    options = script.Target("3.11.2", "x86_64", (2, 36)).pip_options()
    platforms = [options[i + 1] for i, option in enumerate(options) if option == "--platform"]
    assert platforms[0] == "manylinux_2_36_x86_64" and "manylinux_2_37_x86_64" not in platforms
    assert {"manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"} <= set(platforms)
    assert options[options.index("--python-version") + 1] == "3.11"
    assert [options[i + 1] for i, o in enumerate(options) if o == "--abi"] == ["cp311", "abi3", "none"]
