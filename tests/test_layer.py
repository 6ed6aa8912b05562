"""The tar layer: what we write, we read back identically (hypothesis), and hostile names are neutralised."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optimizer.errors import LayerError
from optimizer.layer import clean_path, index_layer
from optimizer.mediatypes import Compression, layer_media_type
from optimizer.model import Descriptor, Entry, EntryKind
from optimizer.output import CompressionSpec, LayerWriter
from optimizer.source import BlobStore
from tests.conftest import fixture

names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\x00"),
    min_size=1,
    max_size=12,
).filter(lambda n: n not in (".", "..") and not n.startswith(".wh."))


@st.composite
def layer_entries(draw: st.DrawFn) -> list[tuple[Entry, bytes | None]]:
    count = draw(st.integers(0, 12))
    paths = draw(st.lists(names, min_size=count, max_size=count, unique=True))
    out: list[tuple[Entry, bytes | None]] = []
    files: list[str] = []
    for path in paths:
        kind = draw(
            st.sampled_from(
                [EntryKind.FILE, EntryKind.FILE, EntryKind.DIR, EntryKind.SYMLINK, EntryKind.HARDLINK]
            )
        )
        if kind is EntryKind.HARDLINK and not files:
            kind = EntryKind.FILE
        data = draw(st.binary(max_size=3000)) if kind is EntryKind.FILE else None
        common = {
            "mode": draw(st.sampled_from([0o644, 0o755, 0o4755, 0o600, 0o1777])),
            "uid": draw(st.integers(0, 70000)),
            "gid": draw(st.integers(0, 70000)),
            "uname": draw(st.sampled_from(["", "root", "app", "ünïcode"])),
            "gname": draw(st.sampled_from(["", "root", "staff"])),
            "mtime": draw(st.integers(0, 2**33)),
            "mtime_ns": draw(st.sampled_from([0, 0, 500_000_000, 123_456_789])),
        }
        if kind is EntryKind.SYMLINK:
            entry = Entry(
                path, kind, link=draw(st.sampled_from(["../x", "/etc/passwd", "target", "a b/ç"])), **common
            )
        elif kind is EntryKind.HARDLINK:
            entry = Entry(path, kind, link=draw(st.sampled_from(files)), **common)
        else:
            xattrs = draw(
                st.dictionaries(
                    st.sampled_from(["user.a", "security.capability"]), st.binary(max_size=20), max_size=2
                )
            )
            entry = Entry(path, kind, size=len(data or b""), xattrs=xattrs, **common)
            if kind is EntryKind.FILE:
                files.append(path)
        out.append((entry, data))
    return out


def write(path: Path, entries: list[tuple[Entry, bytes | None]], codec: Compression) -> Descriptor:
    writer = LayerWriter(str(path), CompressionSpec(codec), None)
    for entry, data in entries:
        writer.add(entry, io.BytesIO(data) if data is not None else None)
    blob = writer.close()
    return Descriptor(layer_media_type(False, codec), blob.digest, blob.size)


def read(path: Path, descriptor: Descriptor, spool: Path) -> list[tuple[Entry, bytes | None]]:
    store = BlobStore("test")
    store.add_slice(descriptor.digest, str(path), 0, descriptor.size)
    index = index_layer(store, descriptor, str(spool), "test layer")
    return [(item.entry, item.content.read_bytes() if item.content else None) for item in index.entries]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=layer_entries(), codec=st.sampled_from(list(Compression)))
def test_read_of_write_is_identity(
    entries: list[tuple[Entry, bytes | None]], codec: Compression, tmp_path: Path
) -> None:
    blob = tmp_path / f"layer-{codec.value}"
    spool = tmp_path / f"spool-{codec.value}"
    spool.unlink(missing_ok=True)
    descriptor = write(blob, entries, codec)
    assert read(blob, descriptor, spool) == entries


def test_writing_twice_gives_the_same_bytes(tmp_path: Path) -> None:
    entries = [
        (Entry("a", EntryKind.FILE, size=3, mtime=5), b"abc"),
        (Entry("d", EntryKind.DIR, mode=0o755), None),
    ]
    for codec in Compression:
        first = write(tmp_path / "one", entries, codec)
        second = write(tmp_path / "two", entries, codec)
        assert first.digest == second.digest
        assert (tmp_path / "one").read_bytes() == (tmp_path / "two").read_bytes()


def test_gzip_header_has_no_name_no_time_and_unknown_os(tmp_path: Path) -> None:
    write(tmp_path / "layer", [(Entry("a", EntryKind.FILE, size=1), b"x")], Compression.GZIP)
    header = (tmp_path / "layer").read_bytes()[:10]
    assert header == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


def test_mtime_is_clamped_when_asked(tmp_path: Path) -> None:
    writer = LayerWriter(str(tmp_path / "layer"), CompressionSpec(Compression.NONE), 1000)
    writer.add(Entry("new", EntryKind.FILE, size=0, mtime=5000, mtime_ns=7), io.BytesIO(b""))
    writer.add(Entry("old", EntryKind.FILE, size=0, mtime=10), io.BytesIO(b""))
    writer.close()
    with tarfile.open(tmp_path / "layer") as tar:
        assert [m.mtime for m in tar] == [1000, 10]
        assert all("atime" not in m.pax_headers and "ctime" not in m.pax_headers for m in tar)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("/etc/passwd", "etc/passwd"),
        ("./a/./b", "a/b"),
        ("../../x", "x"),
        ("a/../../b", "b"),
        ("/", ""),
        ("a//b/", "a/b"),
    ],
)
def test_clean_path_stays_inside_the_root(raw: str, clean: str) -> None:
    assert clean_path(raw) == clean


def test_hostile_layer_names_are_neutralised_and_reported(fixtures: Path, tmp_path: Path) -> None:
    layer = fixture("images/osv-scalibr/escape-layer.tar")
    import hashlib

    data = layer.read_bytes()
    descriptor = Descriptor(
        "application/vnd.oci.image.layer.v1.tar", "sha256:" + hashlib.sha256(data).hexdigest(), len(data)
    )
    store = BlobStore("escape")
    store.add_slice(descriptor.digest, str(layer), 0, len(data))
    index = index_layer(store, descriptor, str(tmp_path / "spool"), "escape layer 1/1")
    assert all(
        not e.entry.path.startswith("/") and ".." not in e.entry.path.split("/") for e in index.entries
    )
    assert any("unsafe member name neutralised" in w for w in index.warnings)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spool"]


def test_truncated_layer_is_a_layer_error_naming_the_layer(tmp_path: Path) -> None:
    entries = [(Entry("big", EntryKind.FILE, size=100_000), bytes(range(256)) * 390 + b"x" * 160)]
    descriptor = write(tmp_path / "layer", entries, Compression.NONE)
    data = (tmp_path / "layer").read_bytes()[:50_000]
    (tmp_path / "short").write_bytes(data)
    import hashlib

    short = Descriptor(descriptor.media_type, "sha256:" + hashlib.sha256(data).hexdigest(), len(data))
    store = BlobStore("img")
    store.add_slice(short.digest, str(tmp_path / "short"), 0, len(data))
    with pytest.raises(LayerError, match="layer 2/3"):
        index_layer(store, short, str(tmp_path / "spool"), "img, layer 2/3")


def test_a_files_first_bytes_are_kept_and_read_head_agrees_with_the_spool(tmp_path: Path) -> None:
    datas = [b"", b"\x7fELF!", bytes(range(32)), bytes(range(256)) * 40]
    entries = [(Entry(f"f{n}", EntryKind.FILE, size=len(d)), d) for n, d in enumerate(datas)]
    descriptor = write(tmp_path / "layer", entries, Compression.GZIP)
    store = BlobStore("test")
    store.add_slice(descriptor.digest, str(tmp_path / "layer"), 0, descriptor.size)
    index = index_layer(store, descriptor, str(tmp_path / "spool"), "test layer")
    for item, data in zip(index.entries, datas, strict=True):
        assert item.content is not None and item.content.head == data[:32]
        for count in (0, 4, 26, 32, 33, 4096, 1 << 20):
            assert item.content.read_head(count) == data[:count]
