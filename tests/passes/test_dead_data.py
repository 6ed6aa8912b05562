"""dead-data: dead entries leave the layers that carry them, and the merged filesystem stays the same."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optimizer import Options, optimize
from optimizer.changes import Op
from optimizer.layer import IndexedEntry
from optimizer.model import Entry, EntryKind
from optimizer.pipeline import PassContext
from optimizer.report import Finding, Report
from optimizer.spool import Spool
from passes import PASSES
from passes.dead_data import DeadData, DeadDataOptions
from tests.conftest import require_tool
from tests.imagetools import LayerSpec, Layout, build_image, entry, tree_of, umoci_unpack
from tests.passes import kit
from tests.test_filesystem import layer_stack

BIG = bytes(range(256)) * 400  # 102400 bytes
DIR = EntryKind.DIR
LINK = EntryKind.HARDLINK
SYMLINK = EntryKind.SYMLINK


def scenario_layers() -> list[LayerSpec]:
    """Whiteouts of files and directories, an opaque directory, replacements (file by file, directory by file,
    file by directory, symlink by file), hardlinks within and across layers, symlinks, owners and modes."""
    base: LayerSpec = [
        entry("bin", DIR),
        entry("bin/tool", data=b"#!/bin/sh\necho tool\n", mode=0o755),
        entry("data", DIR, uid=1000, gid=1000, mode=0o750),
        entry("data/a", data=BIG, uid=1000, gid=1000),
        entry("data/keep", data=b"kept\n", uid=1000, gid=100, mode=0o600),
        entry("data/sub", DIR),
        entry("data/sub/c", data=BIG[:5000] + b"c"),
        entry("opq", DIR),
        entry("opq/old1", data=b"old one" * 100),
        entry("opq/old2", data=b"old two" * 100),
        entry("repl", data=b"first version" * 50),
        entry("dir2file", DIR),
        entry("dir2file/x", data=b"x" * 700),
        entry("file2dir", data=b"f" * 900),
        entry("hl", DIR),
        entry("hl/orig", data=b"linked bytes" * 100, mode=0o640, uid=5, gid=6),
        entry("hl/link", LINK, link="hl/orig", mode=0o640, uid=5, gid=6),
        entry("xl", DIR),
        entry("xl/src", data=b"cross-layer" * 100),
        entry("sym", SYMLINK, link="data/a"),
        entry("symrepl", SYMLINK, link="bin/tool"),
        entry("dup1", data=b"same bytes" * 300),
        entry("dup2", data=b"same bytes" * 300),
    ]
    middle: LayerSpec = [
        entry("data", DIR, uid=1000, gid=1000, mode=0o750),
        entry("data/.wh.a"),
        entry("data/.wh.sub"),
        entry("data/.wh.never-existed"),
        entry("opq", DIR, mode=0o700),
        entry("opq/.wh..wh..opq"),
        entry("opq/new", data=b"new"),
        entry("repl", data=b"second version", mode=0o600),
        entry("dir2file", data=b"now a file"),
        entry("file2dir", DIR),
        entry("file2dir/y", data=b"y"),
        entry("hl/.wh.orig"),
        entry("xl/copy", LINK, link="xl/src"),
        entry("symrepl", data=b"was a symlink"),
        entry("dup3", data=b"same bytes" * 300),
    ]
    top: LayerSpec = [
        entry("xl/.wh.src"),
        entry("etc", DIR),
        entry("etc/conf", data=b"conf"),
    ]
    return [base, middle, top]


def layer_members(layout: Layout, digest: str) -> dict[str, tarfile.TarInfo]:
    data = layout.blob(digest)
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name.rstrip("/"): m for m in tar.getmembers()}


def findings(report: Report, action: str | None = None) -> list[Finding]:
    (image,) = report.images
    (dead,) = [p for p in image.passes if p.name == "dead-data"]
    return [f for f in dead.findings if action is None or f.action == action]


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_image(tmp_path_factory.mktemp("dead") / "in.tar", scenario_layers())


def test_registered_first() -> None:
    assert PASSES[0] is DeadData


def test_dead_entries_leave_their_layers(scenario: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.tar"
    report = optimize(str(scenario), str(out), Options(base="none", passes=("dead-data",)))
    layout = Layout(out)
    (digests,) = layout.layer_digests()
    assert len(digests) == 3
    base, middle, top = (layer_members(layout, d) for d in digests)
    for gone in ("data/a", "data/sub", "data/sub/c", "opq/old1", "opq/old2", "repl", "dir2file", "file2dir"):
        assert gone not in base, gone
    for gone in ("dir2file/x", "symrepl", "hl/orig"):
        assert gone not in base, gone
    # the hardlink that survived its holder's deletion now holds the bytes itself
    assert base["hl/link"].isfile() and base["hl/link"].size == len(b"linked bytes" * 100)
    # the cross-layer link still needs its target when layer 2 is applied: kept, reported
    assert base["xl/src"].isfile()
    kept = {f.path: f for f in findings(report, "kept")}
    assert "xl/src" in kept and "layer 2" in kept["xl/src"].reason
    # whiteouts over dropped entries hide nothing any more; the opaque marker too
    for stale in ("data/.wh.a", "data/.wh.sub", "data/.wh.never-existed", "opq/.wh..wh..opq", "hl/.wh.orig"):
        assert stale not in middle, stale
    assert "xl/.wh.src" in top  # it still hides xl/src
    assert {"data/keep", "bin/tool", "sym", "dup1", "dup2"} <= set(base)
    dropped = {f.path for f in findings(report, "dropped")}
    assert {"data/a", "data/sub/c", "repl", "hl/orig"} <= dropped
    summary = {f.layer - 1: f for f in findings(report, "layer") if f.layer}
    # data/a, data/sub/c, opq/old1, opq/old2, repl, dir2file/x, file2dir
    removed = len(BIG) + 5001 + 700 + 700 + 650 + 700 + 900
    # dead but not removed: the cross-layer link's target (kept), hl/orig (its bytes stay on hl/link)
    assert summary[0].details["dead_bytes"] == removed + len(b"cross-layer" * 100) + len(
        b"linked bytes" * 100
    )
    assert summary[0].details["removed_bytes"] == removed
    # nothing dead above the base; layer 2 only loses its five stale whiteouts
    assert summary[1].details["dead_bytes"] == 0 and summary[1].details["stale_whiteouts"] == 5
    assert 2 not in summary
    assert report.images[0].passes[0].bytes_saved == removed


def test_merged_filesystem_is_the_same_as_umoci_builds_it(scenario: Path, tmp_path: Path) -> None:
    require_tool("umoci", "umoci")
    out = tmp_path / "out.tar"
    optimize(str(scenario), str(out), Options(base="none", passes=("dead-data",)))
    before = tree_of(umoci_unpack(scenario, tmp_path, "before"))
    after = tree_of(umoci_unpack(out, tmp_path, "after"))
    assert before == after
    assert "hl/link" in after and "data/a" not in after and "opq/new" in after


def test_protected_layers_are_reported_not_rewritten(scenario: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.tar"
    report = optimize(str(scenario), str(out), Options(passes=("dead-data",), base_layers=1))
    (before,) = Layout(scenario).layer_digests()
    (after,) = Layout(out).layer_digests()
    assert after[0] == before[0]
    reclaimable = {f.path for f in findings(report, "reclaimable")}
    assert {"data/a", "data/sub/c", "repl", "opq/old1"} <= reclaimable
    summary = {f.layer - 1: f for f in findings(report, "layer") if f.layer}
    assert summary[0].details["removed_bytes"] == 0
    assert summary[0].details["reclaimable_bytes"] == summary[0].details["dead_bytes"] > len(BIG)
    middle = layer_members(Layout(out), after[1])
    # the base still carries what these whiteouts hide: they stay; the one that never hid anything goes
    assert {"data/.wh.a", "data/.wh.sub", "opq/.wh..wh..opq", "hl/.wh.orig"} <= set(middle)
    assert "data/.wh.never-existed" not in middle


def test_duplicates_count_only_the_copies_beyond_the_first(scenario: Path) -> None:
    report = optimize(str(scenario), None, Options(base="none", passes=("dead-data",), dry_run=True))
    (group,) = findings(report, "duplicate")
    size = len(b"same bytes" * 300)
    assert sorted(group.details["copies"]) == ["dup1", "dup2", "dup3"]
    assert group.details["reclaimable_bytes"] == 2 * size
    (summary,) = findings(report, "duplicates")
    assert summary.details["reclaimable_bytes"] == 2 * size
    assert summary.details["every_copy_bytes"] == 3 * size
    # hl/link and bin/tool are single inodes: not duplicates of anything
    none = optimize(
        str(scenario),
        None,
        Options(
            base="none",
            passes=("dead-data",),
            dry_run=True,
            pass_options=(DeadDataOptions(duplicates=False),),
        ),
    )
    assert not findings(none, "duplicate") and not findings(none, "duplicates")


def test_keep_whiteouts_option(scenario: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.tar"
    options = Options(base="none", passes=("dead-data",), pass_options=(DeadDataOptions(whiteouts=False),))
    optimize(str(scenario), str(out), options)
    layout = Layout(out)
    middle = layer_members(layout, layout.layer_digests()[0][1])
    assert {"data/.wh.a", "data/.wh.never-existed", "opq/.wh..wh..opq"} <= set(middle)


def test_second_run_changes_nothing(scenario: Path, tmp_path: Path) -> None:
    once = tmp_path / "once.tar"
    twice = tmp_path / "twice.tar"
    optimize(str(scenario), str(once), Options(base="none", passes=("dead-data",)))
    report = optimize(str(once), str(twice), Options(base="none", passes=("dead-data",)))
    assert Layout(once).layer_digests() == Layout(twice).layer_digests()
    assert not findings(report, "dropped")


def test_layer_emptied_by_dead_data_is_dropped(tmp_path: Path) -> None:
    layers: list[LayerSpec] = [
        [entry("keep", data=b"k")],
        [entry("lists", DIR), entry("lists/big", data=BIG)],
        [entry(".wh.lists")],
    ]
    image = build_image(tmp_path / "in.tar", layers)
    out = tmp_path / "out.tar"
    report = optimize(str(image), str(out), Options(base="none", passes=("dead-data",)))
    (digests,) = Layout(out).layer_digests()
    assert len(digests) == 1 and digests[0] == Layout(image).layer_digests()[0][0]
    assert [layer.status for layer in report.images[0].layers] == ["unchanged", "dropped", "dropped"]
    ((_, manifest),) = Layout(out).manifests()
    config = Layout(out).json(manifest["config"]["digest"])
    assert len(config["rootfs"]["diff_ids"]) == 1
    assert [bool(h.get("empty_layer")) for h in config["history"]] == [False, True, True]


def test_links_named_from_above_keep_their_target_through_a_chain(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path / "content"))
    content = spool.store(b"bytes" * 10)

    def item(path: str, kind: EntryKind = EntryKind.FILE, link: str = "") -> IndexedEntry:
        e, _ = entry(path, kind, b"bytes" * 10 if kind is EntryKind.FILE else b"", link=link)
        return IndexedEntry(e, content if kind is EntryKind.FILE else None)

    layers = [
        [item("f"), item("g", LINK, "f")],  # f and g dead (deleted above); h (above) names g
        [item("h", LINK, "g")],
        [item(".wh.f"), item(".wh.g")],
    ]
    ctx = kit.run(tmp_path, DeadData(DeadDataOptions()), layers)
    dropped = [(c.layer, c.path) for c in ctx.changes if c.op is Op.DROP]
    assert (0, "g") not in dropped  # the upper link h names it: kept
    assert (0, "f") in dropped  # g (kept) links to it: the writer promotes g, the bytes stay
    (f_change,) = [c for c in ctx.changes if c.path == "f"]
    assert f_change.bytes_before == 0
    assert (2, ".wh.g") not in dropped  # g is still below
    assert (2, ".wh.f") in dropped  # f is gone from below


def test_nothing_to_do_without_layer_entries(tmp_path: Path) -> None:
    ctx = kit.make_context(tmp_path, [[IndexedEntry(entry("d", DIR)[0])]], DeadData.name)
    ctx.layers = []
    kit.run_pass(DeadData(DeadDataOptions()), ctx)
    assert not list(ctx.changes) and ctx.report.warnings


class _DeleteRepl:
    """A later pass that deletes a path whose lower copy dead-data dropped."""

    name = "delete-repl"
    summary = "test pass"
    Options = DeadDataOptions

    flag_prefix = "delete-repl"

    def __init__(self, options: DeadDataOptions) -> None:
        pass

    def run(self, ctx: PassContext) -> None:
        ctx.changes.delete("repl", "test")


def test_no_whiteout_for_a_lower_copy_that_was_dropped(scenario: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.tar"
    options = Options(base="none", pass_classes=(DeadData, _DeleteRepl))
    optimize(str(scenario), str(out), options)
    layout = Layout(out)
    middle = layer_members(layout, layout.layer_digests()[0][1])
    assert "repl" not in middle and ".wh.repl" not in middle
    again = optimize(str(out), str(tmp_path / "again.tar"), Options(base="none", passes=("dead-data",)))
    assert not again.changed


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(layers=layer_stack(), keep=st.integers(0, 1))
def test_random_layer_stacks_keep_the_tree_umoci_builds(
    layers: list[list[tuple[Entry, bytes | None]]], keep: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    require_tool("umoci", "umoci")
    tmp = tmp_path_factory.mktemp("random")
    image = build_image(tmp / "in.tar", layers)
    out = tmp / "out.tar"
    optimize(str(image), str(out), Options(passes=("dead-data",), base_layers=keep))
    assert tree_of(umoci_unpack(image, tmp, "before")) == tree_of(umoci_unpack(out, tmp, "after"))
