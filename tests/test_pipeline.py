"""The pipeline with small passes of the tests' own: where changes land, what stays byte-identical."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

from optimizer import Options, optimize
from optimizer.api import ANNOTATION_SOURCE_DIGEST
from optimizer.errors import PassFailedError
from optimizer.model import Entry, EntryKind
from optimizer.pipeline import PassContext, WorkerPool
from optimizer.report import PassStatus

from .conftest import require_tool
from .imagetools import Layout, build_image, entry, tree_of, umoci_unpack


@dataclass(frozen=True)
class NoOptions:
    pass


class _TestPass:
    name: ClassVar[str] = "test"
    summary: ClassVar[str] = "test pass"
    flag_prefix: ClassVar[str] = "test"
    Options: ClassVar[type[Any]] = NoOptions

    def __init__(self, options: Any) -> None:
        self.options = options


def _upper(data: bytes, _arg: None) -> bytes:
    return data.upper()


class Upcase(_TestPass):
    """Upper-cases every *.txt file (through the worker pool), except in protected layers."""

    name = "upcase"

    def run(self, ctx: PassContext) -> None:
        items = []
        for path, node in ctx.fs.unique_files():
            if not path.endswith(".txt") or node.content is None:
                continue
            if ctx.fs.is_protected(path):
                ctx.note(path, "kept", "protected layer")
                continue
            items.append((path, node.content))
        for path, result in ctx.map(_upper, items, None):
            assert isinstance(result, bytes)
            if result != ctx.fs.get(path).content.read_bytes():  # type: ignore[union-attr]
                ctx.changes.replace(path, result, "upper-cased")


class DeleteLogs(_TestPass):
    name = "delete-logs"

    def run(self, ctx: PassContext) -> None:
        for path, _ in list(ctx.fs.items()):
            if path.endswith(".log") and not ctx.fs.is_protected(path):
                ctx.changes.delete(path, "log file")


class AddMotd(_TestPass):
    name = "add-motd"

    def run(self, ctx: PassContext) -> None:
        if ctx.fs.get("etc/motd") is None:
            ctx.changes.add(Entry("etc/motd", EntryKind.FILE, mode=0o644), b"welcome\n", "message of the day")


class Explodes(_TestPass):
    name = "explodes"

    def run(self, ctx: PassContext) -> None:
        ctx.changes.add(Entry("partial", EntryKind.FILE), b"half done", "never kept")
        raise RuntimeError("boom")


PIPELINE = (Upcase, DeleteLogs, AddMotd, Explodes)


def opts(*names: str, **more: Any) -> Options:
    """Options for the test pipeline; the test images are synthetic, with no base unless a test names one."""
    if "base" not in more and "base_layers" not in more:
        more["base"] = "none"
    return Options(passes=names, pass_classes=PIPELINE, workers=2, **more)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return build_image(
        tmp_path / "in.tar",
        [
            [
                entry("base", EntryKind.DIR),
                entry("base/readme.txt", data=b"base layer\n"),
                entry("base/bin", data=b"\x7fELF..."),
            ],
            [
                entry("app", EntryKind.DIR),
                entry("app/a.txt", data=b"hello\n"),
                entry("app/debug.log", data=b"x" * 5000),
            ],
            [entry("app/c.bin", data=b"binary")],
        ],
    )


def test_only_changed_layers_are_rewritten(image: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.tar"
    report = optimize(str(image), str(out), opts("upcase"))
    before, after = Layout(image).layer_digests()[0], Layout(out).layer_digests()[0]
    assert before[2] == after[2], "a layer no pass changed keeps its digest"
    assert before[0] != after[0] and before[1] != after[1]
    statuses = [layer.status for layer in report.images[0].layers]
    assert statuses == ["rewritten", "rewritten", "unchanged"]
    assert report.images[0].passes[0].files_changed == 2


def test_config_and_manifest_stay_consistent(image: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.tar"
    optimize(str(image), str(out), opts("upcase", "add-motd"))
    layout = Layout(out)
    ((digest, manifest),) = layout.manifests()
    config = layout.json(manifest["config"]["digest"])
    assert len(config["rootfs"]["diff_ids"]) == len(manifest["layers"]) == 4
    assert len([h for h in config["history"] if not h.get("empty_layer")]) == 4
    assert "add-motd" in config["history"][-1]["comment"] or "motd" in config["history"][-1]["comment"]
    assert manifest["annotations"][ANNOTATION_SOURCE_DIGEST] == Layout(image).manifests()[0][0]
    assert layout.index["manifests"][0]["digest"] == digest


def test_changes_reach_the_unpacked_tree(image: Path, tmp_path: Path) -> None:
    require_tool("umoci", "umoci")
    out = tmp_path / "out.tar"
    optimize(str(image), str(out), opts("upcase", "delete-logs", "add-motd"))
    rootfs = umoci_unpack(out, tmp_path, "after")
    assert (rootfs / "app/a.txt").read_bytes() == b"HELLO\n"
    assert (rootfs / "base/readme.txt").read_bytes() == b"BASE LAYER\n"
    assert not (rootfs / "app/debug.log").exists()
    assert (rootfs / "etc/motd").read_bytes() == b"welcome\n"
    assert (rootfs / "etc").stat().st_mode & 0o777 == 0o755


def test_a_failing_pass_is_reported_and_its_changes_dropped(image: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.tar"
    report = optimize(str(image), str(out), opts("upcase", "explodes"))
    passes = {p.name: p for p in report.images[0].passes}
    assert passes["explodes"].status is PassStatus.FAILED and "boom" in passes["explodes"].error
    assert passes["upcase"].status is PassStatus.OK
    assert len(Layout(out).layer_digests()[0]) == 3, "the failed pass's added file made no new layer"


def test_strict_makes_a_failing_pass_fatal_and_writes_nothing(image: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.tar"
    with pytest.raises(PassFailedError, match="explodes"):
        optimize(str(image), str(out), opts("explodes", strict=True))
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tar", "in.tar.parts"]


def test_a_layer_left_empty_is_dropped_and_history_says_so(tmp_path: Path) -> None:
    image = build_image(tmp_path / "in.tar", [[entry("keep.txt", data=b"k")], [entry("only.log", data=b"l")]])
    out = tmp_path / "out.tar"
    report = optimize(str(image), str(out), opts("delete-logs"))
    layout = Layout(out)
    ((_, manifest),) = layout.manifests()
    config = layout.json(manifest["config"]["digest"])
    assert len(manifest["layers"]) == 1 == len(config["rootfs"]["diff_ids"])
    assert config["history"][1]["empty_layer"] is True
    assert [layer.status for layer in report.images[0].layers] == ["unchanged", "dropped"]


def test_deleting_a_path_a_lower_layer_also_has_leaves_a_whiteout(tmp_path: Path) -> None:
    require_tool("umoci", "umoci")
    image = build_image(
        tmp_path / "in.tar",
        [[entry("x.log", data=b"old")], [entry("x.log", data=b"new"), entry("y", data=b"y")]],
    )
    out = tmp_path / "out.tar"
    optimize(str(image), str(out), opts("delete-logs"))
    assert not (umoci_unpack(out, tmp_path, "after") / "x.log").exists()


def test_keep_layers_keeps_the_first_layers_byte_identical(image: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.tar"
    report = optimize(str(image), str(out), opts("upcase", base_layers=1))
    before, after = Layout(image).layer_digests()[0], Layout(out).layer_digests()[0]
    assert before[0] == after[0] and before[1] != after[1]
    findings = report.images[0].passes[0].findings
    assert any(f.path == "base/readme.txt" and f.action == "kept" for f in findings)


def test_base_image_layers_stay_byte_identical(tmp_path: Path) -> None:
    base_layer = [entry("etc", EntryKind.DIR), entry("etc/os.txt", data=b"debian\n")]
    base = build_image(tmp_path / "base.tar", [base_layer])
    image = build_image(tmp_path / "in.tar", [base_layer, [entry("app.txt", data=b"app\n")]])
    out = tmp_path / "out.tar"
    optimize(str(image), str(out), opts("upcase", base=str(base)))
    before, after = Layout(image).layer_digests()[0], Layout(out).layer_digests()[0]
    assert before[0] == after[0] and before[1] != after[1]


def test_base_annotation_in_the_same_layout_is_honoured(tmp_path: Path) -> None:
    base_layer = [entry("etc/os.txt", data=b"debian\n")]
    base = build_image(tmp_path / "base.tar", [base_layer])
    base_digest = Layout(base).manifests()[0][0]
    image = build_image(
        tmp_path / "in.tar",
        [base_layer, [entry("app.txt", data=b"app\n")]],
        manifest_annotations={"org.opencontainers.image.base.digest": base_digest},
    )
    report = optimize(str(image), str(tmp_path / "out.tar"), opts("upcase"))
    (image_report,) = report.images
    assert any("named by annotation but its layers could not be read" in w for w in image_report.warnings)


def test_hardlinked_files_change_once_and_stay_linked(tmp_path: Path) -> None:
    require_tool("umoci", "umoci")
    image = build_image(
        tmp_path / "in.tar",
        [[entry("a.txt", data=b"shared\n"), (Entry("b.txt", EntryKind.HARDLINK, link="a.txt"), None)]],
    )
    out = tmp_path / "out.tar"
    report = optimize(str(image), str(out), opts("upcase"))
    assert report.images[0].passes[0].files_changed == 1
    tree = tree_of(umoci_unpack(out, tmp_path, "after"))
    assert tree["a.txt"] == tree["b.txt"] and tree["a.txt"][-1] is True
    assert (tmp_path / "after-bundle/rootfs/b.txt").read_bytes() == b"SHARED\n"


def test_deleting_a_hardlink_holder_promotes_the_link(tmp_path: Path) -> None:
    require_tool("umoci", "umoci")
    image = build_image(
        tmp_path / "in.tar",
        [[entry("a.log", data=b"content"), (Entry("b.txt", EntryKind.HARDLINK, link="a.log"), None)]],
    )
    out = tmp_path / "out.tar"
    optimize(str(image), str(out), opts("delete-logs"))
    rootfs = umoci_unpack(out, tmp_path, "after")
    assert not (rootfs / "a.log").exists() and (rootfs / "b.txt").read_bytes() == b"content"


def test_optimizing_an_optimized_image_changes_nothing(image: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "1.tar", tmp_path / "2.tar"
    optimize(str(image), str(first), opts("upcase", "delete-logs", "add-motd"))
    report = optimize(str(first), str(second), opts("upcase", "delete-logs", "add-motd"))
    assert not report.changed
    assert first.read_bytes() == second.read_bytes()


def test_normalize_gives_equal_digests_for_equal_content(tmp_path: Path) -> None:
    one = build_image(
        tmp_path / "one.tar", [[entry("b", data=b"2", mtime=100), entry("a", data=b"1", mtime=50)]]
    )
    two = build_image(
        tmp_path / "two.tar", [[entry("a", data=b"1", mtime=999), entry("b", data=b"2", mtime=7)]]
    )
    assert Layout(one).layer_digests() != Layout(two).layer_digests()
    outs = []
    for source in (one, two):
        out = tmp_path / (source.stem + "-out.tar")
        optimize(str(source), str(out), Options(passes=(), normalize=True, base="none"))
        outs.append(Layout(out).layer_digests())
    assert outs[0] == outs[1]


def test_dry_run_reports_but_writes_nothing(image: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.tar"
    report = optimize(str(image), str(out), opts("upcase", dry_run=True))
    assert report.changed and not out.exists()
    json.dumps(report.to_json())


def test_worker_pool_keeps_input_order(tmp_path: Path) -> None:
    from optimizer.spool import Spool

    spool = Spool(str(tmp_path / "pack"))
    items = [(i, spool.store(f"item {i}".encode())) for i in range(40)]
    pool = WorkerPool(2)
    try:
        results = list(pool.map(_upper, items, None))
    finally:
        pool.close()
    assert results == [(i, f"ITEM {i}".encode()) for i in range(40)]
