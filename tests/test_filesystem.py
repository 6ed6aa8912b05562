"""The merged view equals what umoci builds when it unpacks the same layers (random whiteouts, opaque
directories, hardlinks, symlinks), and the fixture cases behave as documented."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optimizer.filesystem import FileSystem, build_filesystem
from optimizer.layer import IndexedEntry
from optimizer.model import Entry, EntryKind
from optimizer.spool import Spool

from .conftest import require_tool
from .imagetools import build_image, tree_of, umoci_unpack

NAMES = ["a", "b", "c"]


@st.composite
def layer_stack(draw: st.DrawFn) -> list[list[tuple[Entry, bytes | None]]]:
    layers: list[list[tuple[Entry, bytes | None]]] = []
    existing: dict[str, str] = {}  # path -> "file" | "dir" | "link" (as seen so far, approximately)
    for _ in range(draw(st.integers(1, 4))):
        layer: list[tuple[Entry, bytes | None]] = []
        here: set[str] = set()
        files_here: list[str] = []

        def ensure_parents(path: str) -> None:
            parts = path.split("/")
            for i in range(1, len(parts)):
                parent = "/".join(parts[:i])
                if parent not in here:
                    here.add(parent)
                    layer.append((Entry(parent, EntryKind.DIR, mode=0o755), None))
                    existing[parent] = "dir"

        for _ in range(draw(st.integers(1, 6))):
            depth = draw(st.integers(1, 3))
            path = "/".join(draw(st.sampled_from(NAMES)) for _ in range(depth))
            if path in here or any(p in here and existing.get(p) != "dir" for p in _parents(path)):
                continue
            if any(existing.get(p) not in (None, "dir") for p in _parents(path)):
                continue
            op = draw(st.sampled_from(["file", "file", "dir", "symlink", "whiteout", "opaque", "hardlink"]))
            if op == "whiteout":
                if path not in existing or path in here:
                    continue
                ensure_parents(path)
                parent, _, name = path.rpartition("/")
                layer.append(
                    (Entry(f"{parent}/.wh.{name}" if parent else f".wh.{name}", EntryKind.FILE), b"")
                )
                for gone in [p for p in existing if p == path or p.startswith(path + "/")]:
                    del existing[gone]
                here.add(path)
                continue
            if op == "opaque":
                if existing.get(path) != "dir" or path in here:
                    continue
                ensure_parents(path)
                here.add(path)
                layer.append((Entry(path, EntryKind.DIR, mode=0o750), None))
                # the marker may stand anywhere in the layer's stream: put it at the end or right here
                marker = (Entry(f"{path}/.wh..wh..opq", EntryKind.FILE), b"")
                layer.insert(draw(st.integers(0, len(layer))), marker) if draw(
                    st.booleans()
                ) else layer.append(marker)
                for gone in [p for p in existing if p.startswith(path + "/")]:
                    del existing[gone]
                continue
            if existing.get(path) == "dir" and op != "dir":
                continue  # replacing a directory by a file is legal but umoci then keeps order-dependent leftovers
            ensure_parents(path)
            here.add(path)
            if op == "file":
                data = draw(st.binary(min_size=0, max_size=64))
                layer.append(
                    (
                        Entry(
                            path,
                            EntryKind.FILE,
                            mode=draw(st.sampled_from([0o644, 0o755, 0o600])),
                            size=len(data),
                            uid=draw(st.sampled_from([0, 1000])),
                        ),
                        data,
                    )
                )
                existing[path] = "file"
                files_here.append(path)
            elif op == "dir":
                layer.append((Entry(path, EntryKind.DIR, mode=draw(st.sampled_from([0o755, 0o700]))), None))
                existing[path] = "dir"
            elif op == "symlink":
                layer.append(
                    (
                        Entry(
                            path,
                            EntryKind.SYMLINK,
                            link=draw(st.sampled_from(["a", "../b", "/c/a", "nowhere"])),
                        ),
                        None,
                    )
                )
                existing[path] = "link"
            elif op == "hardlink" and files_here:
                layer.append((Entry(path, EntryKind.HARDLINK, link=draw(st.sampled_from(files_here))), None))
                existing[path] = "file"
        layers.append(layer)
    return layers


def _parents(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def merged_tree(fs: FileSystem, layers: list[list[tuple[Entry, bytes | None]]]) -> dict[str, tuple[Any, ...]]:
    links: dict[int, int] = {}
    for _, node in fs.files():
        links[node.inode] = links.get(node.inode, 0) + 1
    out: dict[str, tuple[Any, ...]] = {}
    for path, node in fs.items():
        if not path:
            continue
        entry = node.entry
        if entry.kind is EntryKind.SYMLINK:
            out[path] = ("link", entry.uid, entry.gid, entry.link)
        elif entry.kind is EntryKind.DIR:
            out[path] = ("dir", entry.mode, entry.uid, entry.gid)
        elif node.content is not None:
            holder = fs.holder(node.inode)
            if entry.kind is EntryKind.HARDLINK and holder is not None:
                # a hardlink shares the inode: extractors show the file entry's metadata, even when that path
                # itself was deleted above
                entry = next(
                    e for e, _ in layers[holder.layer] if e.path == holder.path and e.kind is EntryKind.FILE
                )
            digest = hashlib.sha256(node.content.read_bytes()).hexdigest()
            out[path] = ("file", entry.mode, entry.uid, entry.gid, digest, links[node.inode] > 1)
    return out


def indexed(layers: list[list[tuple[Entry, bytes | None]]], spool: Spool) -> list[list[IndexedEntry]]:
    out = []
    for layer in layers:
        items = []
        for entry, data in layer:
            content = spool.store(data) if entry.kind is EntryKind.FILE and data is not None else None
            items.append(IndexedEntry(entry.with_size(len(data)) if data is not None else entry, content))
        out.append(items)
    return out


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(layers=layer_stack())
def test_merged_view_equals_umoci_unpack(
    layers: list[list[tuple[Entry, bytes | None]]], tmp_path_factory: Any
) -> None:
    require_tool("umoci", "umoci")
    tmp = tmp_path_factory.mktemp("fs")
    archive = build_image(tmp / "image.tar", layers)
    expected = tree_of(umoci_unpack(archive, tmp, "unpacked"))
    fs = build_filesystem(indexed(layers, Spool(str(tmp / "spool"))))
    assert merged_tree(fs, layers) == expected


def _fs(layers: list[list[tuple[Entry, bytes | None]]], tmp_path: Path) -> FileSystem:
    return build_filesystem(indexed(layers, Spool(str(tmp_path / "spool"))))


def f(path: str, data: bytes = b"x") -> tuple[Entry, bytes | None]:
    return Entry(path, EntryKind.FILE, size=len(data)), data


def d(path: str) -> tuple[Entry, bytes | None]:
    return Entry(path, EntryKind.DIR, mode=0o755), None


def test_hardlink_survives_the_whiteout_of_its_target(tmp_path: Path) -> None:
    fs = _fs(
        [[f("foo", b"data"), (Entry("bar", EntryKind.HARDLINK, link="foo"), None)], [f(".wh.foo", b"")]],
        tmp_path,
    )
    assert fs.get("foo") is None
    bar = fs.get("bar")
    assert bar is not None and bar.content is not None and bar.content.read_bytes() == b"data"
    holder = fs.holder(bar.inode)
    assert holder is not None and (holder.layer, holder.path) == (0, "foo")


def test_opaque_marker_after_a_sibling_keeps_the_sibling(tmp_path: Path) -> None:
    fs = _fs([[d("a"), f("a/foo")], [d("a"), f("a/bar"), f("a/.wh..wh..opq", b"")]], tmp_path)
    assert fs.get("a/foo") is None and fs.get("a/bar") is not None


def test_a_file_replacing_a_directory_hides_its_children(tmp_path: Path) -> None:
    fs = _fs([[d("a"), f("a/x")], [f("a")]], tmp_path)
    assert fs.get("a/x") is None and fs.get("a") is not None


@pytest.mark.parametrize(
    "upper",
    [
        [(Entry("a", EntryKind.SYMLINK, link="elsewhere"), None)],
        [f("a")],
        [f("a/b")],  # a directory made only by the path below it, one level down
    ],
    ids=["symlink", "file", "nested"],
)
def test_a_non_directory_replacing_an_implicit_directory_hides_its_children(
    upper: list[tuple[Entry, bytes | None]], tmp_path: Path
) -> None:
    # The lower layer has no entries of its own for a or a/b: the extractor made them for a/b/x.
    layers = [[f("a/b/x"), f("keep")], upper]
    fs = _fs(layers, tmp_path)
    assert fs.get("a/b/x") is None and fs.get("keep") is not None
    require_tool("umoci", "umoci")
    expected = tree_of(umoci_unpack(build_image(tmp_path / "image.tar", layers), tmp_path, "unpacked"))
    # The view has no node for a directory no layer has an entry for (a, in the nested case).
    assert merged_tree(fs, layers) == {p: v for p, v in expected.items() if fs.get(p) or v[0] != "dir"}
    assert "a/b/x" not in expected


def test_symlinks_resolve_inside_the_root(tmp_path: Path) -> None:
    fs = _fs(
        [
            [
                d("etc"),
                f("etc/real"),
                (Entry("etc/up", EntryKind.SYMLINK, link="../../../etc/real"), None),
                (Entry("loop", EntryKind.SYMLINK, link="loop"), None),
                (Entry("abs", EntryKind.SYMLINK, link="/etc/up"), None),
            ]
        ],
        tmp_path,
    )
    assert fs.resolve("etc/up") == "etc/real"
    assert fs.resolve("abs") == "etc/real"
    assert fs.resolve("loop") is None


def test_unique_files_visit_each_inode_once(tmp_path: Path) -> None:
    fs = _fs([[f("x", b"1"), (Entry("y", EntryKind.HARDLINK, link="x"), None), f("z", b"2")]], tmp_path)
    assert [p for p, _ in fs.unique_files()] == ["x", "z"]


def test_spool_round_trip(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path / "pack"))
    first = spool.store(b"hello")
    again = spool.store(b"hello")
    assert first == again and first.read_bytes() == b"hello"
    with first.open() as reader:
        assert io.BufferedReader(reader).read() == b"hello"  # type: ignore[arg-type]
