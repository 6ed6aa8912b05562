"""--squash: every layer above the kept base merged into one, canonically ordered; the base byte-identical."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optimizer import Options, optimize
from optimizer.model import Entry, EntryKind
from tests.conftest import require_tool
from tests.imagetools import LayerSpec, Layout, build_image, entry, tree_of, umoci_unpack
from tests.passes.test_dead_data import scenario_layers
from tests.test_filesystem import layer_stack


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_image(tmp_path_factory.mktemp("squash") / "in.tar", scenario_layers())


def member_names(layout: Layout, digest: str) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layout.blob(digest)))) as tar:
        return [m.name.rstrip("/") for m in tar.getmembers()]


def config_of(layout: Layout) -> dict[str, object]:
    ((_, manifest),) = layout.manifests()
    value = layout.json(manifest["config"]["digest"])
    assert isinstance(value, dict)
    return value


@pytest.mark.parametrize("keep", [0, 1])
def test_squash_keeps_the_base_and_the_merged_filesystem(scenario: Path, tmp_path: Path, keep: int) -> None:
    require_tool("umoci", "umoci")
    out = tmp_path / "out.tar"
    report = optimize(str(scenario), str(out), Options(passes=(), squash=True, base_layers=keep))
    (before,) = Layout(scenario).layer_digests()
    (after,) = Layout(out).layer_digests()
    assert len(after) == keep + 1
    assert after[:keep] == before[:keep]
    statuses = [layer.status for layer in report.images[0].layers]
    assert statuses == ["kept"] * keep + ["merged"] * (3 - keep) + ["squashed"]
    assert tree_of(umoci_unpack(scenario, tmp_path, "before")) == tree_of(
        umoci_unpack(out, tmp_path, "after")
    )


def test_squashed_layer_is_canonical_and_history_lists_what_was_merged(
    scenario: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.tar"
    optimize(str(scenario), str(out), Options(passes=(), squash=True, base_layers=1))
    layout = Layout(out)
    (digests,) = layout.layer_digests()
    names = member_names(layout, digests[1])
    whiteouts = [n for n in names if n.rsplit("/", 1)[-1].startswith(".wh.")]
    # whiteouts first (they apply before the layer's own entries), then every entry in path order
    assert names[: len(whiteouts)] == whiteouts
    rest = names[len(whiteouts) :]
    assert rest == sorted(rest, key=lambda n: n.split("/"))
    # what layers 2 and 3 removed from the base, and nothing under a whited-out directory
    assert set(whiteouts) == {
        "data/.wh.a",
        "data/.wh.sub",
        "opq/.wh.old1",
        "opq/.wh.old2",
        "hl/.wh.orig",
        "xl/.wh.src",
        ".wh.dir2file",
        ".wh.file2dir",
    }
    # the cross-layer hardlink lost its target in the base: it holds the bytes in the squashed layer
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layout.blob(digests[1])))) as tar:
        copy = tar.getmember("xl/copy")
        assert copy.isfile() and copy.size == len(b"cross-layer" * 100)
    config = config_of(layout)
    history = config["history"]
    assert isinstance(history, list) and len(history) == 2
    assert history[0] == {"created": "2024-01-01T00:00:00Z", "created_by": "layer 0"}
    assert "layer 1 | layer 2" in history[1]["comment"] and "squash" in history[1]["created_by"]
    rootfs = config["rootfs"]
    assert isinstance(rootfs, dict) and len(rootfs["diff_ids"]) == 2


def test_squash_is_byte_identical_run_to_run_and_idempotent(scenario: Path, tmp_path: Path) -> None:
    first, second, again = tmp_path / "1.tar", tmp_path / "2.tar", tmp_path / "3.tar"
    options = Options(passes=(), squash=True, base_layers=1)
    optimize(str(scenario), str(first), options)
    optimize(str(scenario), str(second), Options(passes=(), squash=True, base_layers=1, workers=1))
    assert first.read_bytes() == second.read_bytes()
    report = optimize(str(first), str(again), options)
    assert Layout(again).layer_digests() == Layout(first).layer_digests()
    assert not report.changed


def test_squash_with_passes_and_a_base_hardlink(tmp_path: Path) -> None:
    require_tool("umoci", "umoci")
    layers: list[LayerSpec] = [
        [entry("lib", EntryKind.DIR), entry("lib/real", data=b"real bytes" * 50)],
        [entry("lib/alias", EntryKind.HARDLINK, link="lib/real"), entry("tmp", EntryKind.DIR)],
        [entry("tmp/junk", data=b"junk" * 1000), entry("lib/new", data=b"new")],
        [entry("tmp/.wh.junk")],
    ]
    image = build_image(tmp_path / "in.tar", layers)
    out = tmp_path / "out.tar"
    report = optimize(str(image), str(out), Options(passes=("dead-data",), squash=True, base_layers=1))
    layout = Layout(out)
    (digests,) = layout.layer_digests()
    assert len(digests) == 2
    names = member_names(layout, digests[1])
    assert "tmp/junk" not in names and "tmp/.wh.junk" not in names
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layout.blob(digests[1])))) as tar:
        alias = tar.getmember("lib/alias")
        assert alias.islnk() and alias.linkname == "lib/real"  # the base still has its target
    assert report.images[0].size_after < report.images[0].size_before
    assert tree_of(umoci_unpack(image, tmp_path, "before")) == tree_of(umoci_unpack(out, tmp_path, "after"))


def test_nothing_to_squash_above_the_base(scenario: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.tar"
    report = optimize(str(scenario), str(out), Options(passes=(), squash=True, base_layers=2))
    assert Layout(out).layer_digests() == Layout(scenario).layer_digests()
    assert not report.changed


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(layers=layer_stack(), keep=st.integers(0, 2), dead_data=st.booleans())
def test_random_layer_stacks_squash_to_the_same_tree(
    layers: list[list[tuple[Entry, bytes | None]]],
    keep: int,
    dead_data: bool,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    require_tool("umoci", "umoci")
    tmp = tmp_path_factory.mktemp("random")
    image = build_image(tmp / "in.tar", layers)
    out = tmp / "out.tar"
    passes = ("dead-data",) if dead_data else ()
    optimize(str(image), str(out), Options(passes=passes, squash=True, base_layers=keep))
    (before,) = Layout(image).layer_digests()
    (after,) = Layout(out).layer_digests()
    assert after[:keep] == before[:keep]
    assert len(after) <= max(len(before), keep + 1)
    assert tree_of(umoci_unpack(image, tmp, "before")) == tree_of(umoci_unpack(out, tmp, "after"))
