"""Pull-oriented packing (``--pack pull``) and cutting a squashed layer (``--layer-target-size``): the order is
canonical, the parts are whole layers (parents, hardlinks, whiteouts where they belong), and the output unpacks
to the same tree as the input."""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import pytest

from optimizer import Options, optimize
from optimizer.errors import UsageError
from optimizer.model import Content, Entry, EntryKind
from optimizer.packing import SMALL_FILE, pull_order, split_layer
from optimizer.spool import Spool

from .conftest import require_tool
from .imagetools import Layout, build_image, entry, tree_of, umoci_unpack

Item = tuple[Entry, Content | None]


def _items(tmp_path: Path) -> list[Item]:
    spool = Spool(str(tmp_path / "spool"))

    def file(path: str, data: bytes) -> Item:
        return Entry(path, EntryKind.FILE, size=len(data)), spool.store(data)

    big = random.Random(1).randbytes(SMALL_FILE + 1)
    return [
        (Entry("a", EntryKind.DIR, mode=0o700, uid=1000), None),
        file("a/big", big),
        file("a/small", b"s"),
        (Entry("a/link", EntryKind.HARDLINK, link="a/big"), None),
        (Entry("b", EntryKind.DIR), None),
        file("b/copy-of-big", big),
        file("b/other", b"o" * 10),
        (Entry("b/sym", EntryKind.SYMLINK, link="../a/small"), None),
        (Entry(".wh.gone", EntryKind.FILE), None),
        file("c-top", b"t"),
    ]


def test_pull_order_is_canonical_and_puts_small_things_first(tmp_path: Path) -> None:
    items = _items(tmp_path)
    shuffled = list(items)
    random.Random(7).shuffle(shuffled)
    order = [entry.path for entry, _ in pull_order(items)]
    assert order == [entry.path for entry, _ in pull_order(shuffled)]
    assert order == [
        ".wh.gone",  # whiteouts first
        "a",
        "b",  # then directories
        "b/sym",  # then links and the like
        "a/small",
        "b/other",
        "c-top",  # small files in path order
        "a/big",
        "a/link",  # a hardlink right after its file
        "b/copy-of-big",  # the same bytes right after their first copy
    ]


def test_split_parts_carry_their_parents_and_keep_hardlinks_with_their_file(tmp_path: Path) -> None:
    parts = split_layer(pull_order(_items(tmp_path)), SMALL_FILE)
    paths = [[entry.path for entry, _ in part] for part in parts]
    assert paths[0][:3] == [".wh.gone", "a", "b"]  # whiteouts and every directory in the first part
    assert paths[1:] == [["a", "a/big", "a/link"], ["b", "b/copy-of-big"]]
    again = {entry.path: entry for entry, _ in parts[1]}
    assert (again["a"].mode, again["a"].uid) == (0o700, 1000)  # a parent's own metadata, not a made-up one


def _image(tmp_path: Path) -> Path:
    noise = random.Random(3)
    return build_image(
        tmp_path / "in.tar",
        [
            [
                entry("etc", EntryKind.DIR),
                entry("etc/old.conf", data=b"old"),
                entry("srv", EntryKind.DIR, mode=0o750, uid=33, gid=33),
            ],
            [
                entry("srv/data", EntryKind.DIR, mode=0o700, uid=33),
                *[entry(f"srv/data/blob{i}", data=noise.randbytes(700_000)) for i in range(4)],
                entry("srv/data/again", data=b"x" * 100),
                entry("srv/data/hard", EntryKind.HARDLINK, link="srv/data/blob1"),
            ],
            [entry("etc/.wh.old.conf"), entry("srv/data/small", data=b"small")],
            [
                entry("srv/data/blob2", data=noise.randbytes(600_000)),
                entry("srv/link", EntryKind.SYMLINK, link="data"),
            ],
        ],
    )


def test_a_cut_squash_unpacks_to_the_input_tree(tmp_path: Path) -> None:
    require_tool("umoci", "umoci")
    image = _image(tmp_path)
    out = tmp_path / "out.tar"
    options = Options(passes=(), squash=True, packing="pull", layer_target_size=1 << 20, workers=1)
    report = optimize(str(image), str(out), options)
    layers = Layout(out).layer_digests()[0]
    assert layers[0] == Layout(image).layer_digests()[0][0] and len(layers) >= 3
    assert [layer.status for layer in report.images[0].layers].count("squashed") == len(layers) - 1
    assert tree_of(umoci_unpack(out, tmp_path, "out")) == tree_of(umoci_unpack(image, tmp_path, "in"))
    again = tmp_path / "again.tar"
    optimize(str(image), str(again), options)
    assert again.read_bytes() == out.read_bytes()
    layout = Layout(out)
    config = layout.json(layout.manifests()[0][1]["config"]["digest"])
    assert len(config["rootfs"]["diff_ids"]) == len(layers)
    assert len([h for h in config["history"] if not h.get("empty_layer")]) == len(layers)


def test_skopeo_reads_a_pull_packed_cut_squash(tmp_path: Path) -> None:
    skopeo = require_tool("skopeo", "skopeo")
    out = tmp_path / "out.tar"
    optimize(
        str(_image(tmp_path)),
        str(out),
        Options(squash=True, packing="pull", layer_target_size=1 << 20, base="none"),
    )
    done = subprocess.run(
        [skopeo, "inspect", f"oci-archive:{out}"],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ),
    )
    assert len(json.loads(done.stdout)["Layers"]) >= 2


def test_layer_target_size_needs_squash_and_a_sane_size(tmp_path: Path) -> None:
    image = _image(tmp_path)
    with pytest.raises(UsageError, match="needs --squash"):
        optimize(str(image), str(tmp_path / "o.tar"), Options(layer_target_size=1 << 30))
    with pytest.raises(UsageError, match="at least"):
        optimize(str(image), str(tmp_path / "o.tar"), Options(squash=True, layer_target_size=1000))
