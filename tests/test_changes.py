"""Deleting what a protected layer owns: refused unless asked for a whiteout, which then goes in the new top
layer; the protected layer keeps its digest, and the output unpacks (umoci) to exactly the merged view
without the deleted paths, with or without --squash."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from optimizer import Options, optimize
from optimizer.changes import ChangeRefused, Op
from optimizer.model import Entry, EntryKind
from optimizer.pipeline import PassContext

from .conftest import require_tool
from .imagetools import Layout, build_image, entry, tree_of, umoci_unpack
from .passes.kit import context_for, make_filesystem
from .test_filesystem import layer_stack


@dataclass(frozen=True)
class DeleteSomeOptions:
    seed: int = 0
    paths: tuple[str, ...] = ()  # deleted as given; when empty, about one visible path in three (by seed)


class DeleteSome:
    """Deletes paths, protected ones through a whiteout; notes each path it deleted."""

    name: ClassVar[str] = "delete-some"
    summary: ClassVar[str] = "test pass"
    flag_prefix: ClassVar[str] = "delete-some"
    Options: ClassVar[type[Any]] = DeleteSomeOptions

    def __init__(self, options: DeleteSomeOptions) -> None:
        self.options = options

    def chosen(self, path: str) -> bool:
        if self.options.paths:
            return path in self.options.paths
        return hashlib.sha256(f"{self.options.seed}:{path}".encode()).digest()[0] % 3 == 0

    def run(self, ctx: PassContext) -> None:
        for path, _ in list(ctx.fs.items()):
            if path and self.chosen(path):
                try:
                    ctx.changes.delete(path, "test", whiteout_protected=True)
                except ChangeRefused:
                    continue
                ctx.note(path, "deleted")


def _without(tree: dict[str, tuple[Any, ...]], deleted: list[str]) -> dict[str, tuple[Any, ...]]:
    def gone(path: str) -> bool:
        return any(path == d or path.startswith(d + "/") for d in deleted)

    return {path: value for path, value in tree.items() if not gone(path)}


def _comparable(tree: dict[str, tuple[Any, ...]]) -> dict[str, tuple[Any, ...]]:
    # A deleted hardlink changes the link count of the paths left: compare files without it.
    return {path: value[:5] if value[0] == "file" else value for path, value in tree.items()}


def _run(image: Path, out: Path, **more: Any) -> tuple[list[str], bool]:
    """The paths deleted, and whether they all were (a layer whose rewrite is not smaller keeps its own bytes
    unless the run normalises: the deletions there are then not applied)."""
    options = Options(passes=("delete-some",), pass_classes=(DeleteSome,), base_layers=1, workers=1, **more)
    report = optimize(str(image), str(out), options)
    applied = all(layer.status != "reverted" for layer in report.images[0].layers)
    return [finding.path for finding in report.images[0].passes[0].findings], applied


def test_deleting_a_protected_path_is_refused_unless_a_whiteout_is_asked(tmp_path: Path) -> None:
    upper = [(Entry("etc/c", EntryKind.FILE, size=1), b"3")]  # no entry of its own for etc: layer 0 owns it
    fs = make_filesystem(tmp_path, [{"etc/a": b"1", "etc/b": b"2"}, upper], frozenset({0}), True)
    ctx = context_for(fs, tmp_path)
    with pytest.raises(ChangeRefused):
        ctx.changes.delete("etc/a")
    ctx.changes.delete("etc", "gone", whiteout_protected=True)
    recorded = sorted((c.path, c.layer, c.op) for c in ctx.changes)
    # One whiteout in the new top layer (layer 2) hides the protected directory; the upper layer's own file
    # is removed from that layer.
    assert recorded == [("etc", 2, Op.DELETE), ("etc/c", 1, Op.DELETE)]
    hidden = next(c for c in ctx.changes if c.layer == 2)
    assert hidden.bytes_before == hidden.bytes_after  # a whiteout saves none of the protected layer's bytes


def test_whiteouts_over_the_base_go_in_a_new_top_layer(tmp_path: Path) -> None:
    require_tool("umoci", "umoci")
    image = build_image(
        tmp_path / "in.tar",
        [
            [
                entry("usr", EntryKind.DIR),
                entry("usr/share", EntryKind.DIR),
                entry("usr/share/doc", EntryKind.DIR),
                entry("usr/share/doc/README", data=b"read me\n"),
                entry("usr/share/doc/copyright", data=b"(c)\n"),
                entry("-first", data=b"sorts before .wh.\n"),
                entry("man", EntryKind.DIR),
                entry("man/x.1", data=b"page"),
            ],
            [entry("app", EntryKind.DIR), entry("app/run", data=b"#!/bin/sh\n"), entry("man/y.1", data=b"y")],
        ],
    )
    out = tmp_path / "out.tar"
    paths = ("usr/share/doc/README", "-first", "man")
    deleted, applied = _run(image, out, pass_options=(DeleteSomeOptions(paths=paths),))
    assert applied
    assert sorted(deleted) == sorted(paths)
    before, after = Layout(image).layer_digests()[0], Layout(out).layer_digests()[0]
    assert after[0] == before[0]  # the base layer is kept byte for byte
    assert len(after) == 3  # the upper layer rewritten (man/y.1 dropped), and a new top layer
    expected = _without(tree_of(umoci_unpack(image, tmp_path, "in")), list(paths))
    assert tree_of(umoci_unpack(out, tmp_path, "out")) == expected
    assert "usr/share/doc/copyright" in expected and "man" not in expected


def test_a_hardlink_sorted_before_its_file_takes_the_file_metadata(tmp_path: Path) -> None:
    """--normalize makes the first path of a hardlink group hold the bytes: that path must carry the inode's
    owner and mode (the file entry's), not its own link header's, which no extractor applies (found by
    hypothesis: a/a/a linked to b/a owned by uid 1000 came out owned by root)."""
    require_tool("umoci", "umoci")
    layers = [
        [entry("a", EntryKind.DIR), entry("a/a", EntryKind.DIR)],
        [
            entry("b", EntryKind.DIR),
            entry("b/a", data=b"x", uid=1000, gid=50, mode=0o640),
            entry("a/a/a", EntryKind.HARDLINK, link="b/a", uid=0, gid=0, mode=0o644),
            entry("c", data=b"deleted"),
        ],
    ]
    image = build_image(tmp_path / "in.tar", layers)
    out = tmp_path / "out.tar"
    deleted, applied = _run(image, out, normalize=True, pass_options=(DeleteSomeOptions(paths=("c",)),))
    assert applied and deleted == ["c"]
    expected = _without(tree_of(umoci_unpack(image, tmp_path, "in")), deleted)
    assert expected["a/a/a"][1:4] == (0o640, 1000, 50)
    assert _comparable(tree_of(umoci_unpack(out, tmp_path, "out"))) == _comparable(expected)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(layers=layer_stack(), seed=st.integers(0, 1000), squash=st.booleans(), normalize=st.booleans())
def test_the_output_unpacks_to_the_view_without_the_deleted_paths(
    layers: list[list[tuple[Entry, bytes | None]]],
    seed: int,
    squash: bool,
    normalize: bool,
    tmp_path_factory: Any,
) -> None:
    require_tool("umoci", "umoci")
    tmp = tmp_path_factory.mktemp("hide")
    image = build_image(tmp / "in.tar", layers)
    out = tmp / "out.tar"
    options = DeleteSomeOptions(seed=seed)
    deleted, applied = _run(image, out, squash=squash, normalize=normalize, pass_options=(options,))
    assume(applied)
    assert Layout(out).layer_digests()[0][0] == Layout(image).layer_digests()[0][0]
    expected = _without(tree_of(umoci_unpack(image, tmp, "in")), deleted)
    assert _comparable(tree_of(umoci_unpack(out, tmp, "out"))) == _comparable(expected)
