"""The ``compressed-duplicates`` pass: twins by name and by content, every codec, corrupt files and
bombs next to twins, kept globs and layers, links, and end to end."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from optimizer import Options, optimize
from passes.compressed_duplicates import CompressedDuplicates, CompressedDuplicatesOptions
from tests.passes.compressed import (
    CODEC_OF,
    COMPRESSORS,
    TEXT,
    corruptions,
    deleted_paths,
    outcomes,
    run_duplicates,
)
from tests.passes.kit import Files


@pytest.mark.parametrize("suffix", sorted(COMPRESSORS))
def test_same_directory_twin_is_deleted(tmp_path: Path, suffix: str) -> None:
    packed = COMPRESSORS[suffix](TEXT)
    ctx = run_duplicates(tmp_path, [{"usr/share/data/words": TEXT, f"usr/share/data/words{suffix}": packed}])
    assert deleted_paths(ctx) == [f"usr/share/data/words{suffix}"]
    found = outcomes(ctx)[f"usr/share/data/words{suffix}"]
    assert found == ("deleted", "same content as /usr/share/data/words", len(packed), 0)
    assert ctx.report.findings[0].details == {"codec": CODEC_OF[suffix], "twin": "/usr/share/data/words"}


@pytest.mark.parametrize("suffix", sorted(COMPRESSORS))
def test_twin_in_another_directory_needs_any_path(tmp_path: Path, suffix: str) -> None:
    layers: list[Files] = [{"opt/app/words": TEXT}, {f"srv/www/words.txt{suffix}": COMPRESSORS[suffix](TEXT)}]
    assert deleted_paths(run_duplicates(tmp_path, layers)) == []
    ctx = run_duplicates(tmp_path, layers, CompressedDuplicatesOptions(match="any-path"))
    assert deleted_paths(ctx) == [f"srv/www/words.txt{suffix}"]
    assert outcomes(ctx)[f"srv/www/words.txt{suffix}"][1] == "same content as /opt/app/words"
    assert [c.layer for c in ctx.changes] == [1]


@pytest.mark.parametrize("suffix", sorted(COMPRESSORS))
def test_twin_differing_by_one_byte_is_kept(tmp_path: Path, suffix: str) -> None:
    other = TEXT[:1000] + bytes([TEXT[1000] ^ 1]) + TEXT[1001:]
    for options in (CompressedDuplicatesOptions(), CompressedDuplicatesOptions(match="any-path")):
        ctx = run_duplicates(
            tmp_path, [{"a/words": other, f"a/words{suffix}": COMPRESSORS[suffix](TEXT)}], options
        )
        assert deleted_paths(ctx) == []
    # One byte more or less is a difference too.
    ctx = run_duplicates(tmp_path, [{"a/words": TEXT + b"\n", f"a/words{suffix}": COMPRESSORS[suffix](TEXT)}])
    assert deleted_paths(ctx) == [] and outcomes(ctx)[f"a/words{suffix}"][1] == "differs from /a/words"


@pytest.mark.parametrize("suffix", sorted(COMPRESSORS))
def test_corrupt_files_are_left_alone(tmp_path: Path, suffix: str) -> None:
    for what, data in corruptions(suffix).items():
        ctx = run_duplicates(tmp_path, [{"d/words": TEXT, f"d/words{suffix}": data}])
        assert deleted_paths(ctx) == [], what
        action, reason, _, _ = outcomes(ctx)[f"d/words{suffix}"]
        assert action == "kept", what
        assert reason.startswith(("does not decompress", "differs from")), (what, reason)


def test_bomb_next_to_a_small_twin_stops_early(tmp_path: Path) -> None:
    bomb = gzip.compress(bytes(256 << 20), compresslevel=9, mtime=0)
    ctx = run_duplicates(tmp_path, [{"x/data": b"tiny", "x/data.gz": bomb}])
    assert deleted_paths(ctx) == []
    assert outcomes(ctx)["x/data.gz"][1] == "differs from /x/data"
    # With a twin as large as the bomb's output the ratio limit is what stops it.
    ctx = run_duplicates(
        tmp_path,
        [{"x/data": bytes(8 << 20), "x/data.gz": gzip.compress(bytes(8 << 20), mtime=0)}],
        CompressedDuplicatesOptions(max_ratio=50),
    )
    assert deleted_paths(ctx) == []
    assert outcomes(ctx)["x/data.gz"][1].startswith("not decompressed: more than")


def test_keep_glob_and_protected_layers(tmp_path: Path) -> None:
    layers: list[Files] = [
        {"base/words": TEXT, "base/words.gz": COMPRESSORS[".gz"](TEXT)},
        {
            "app/words": TEXT,
            "app/words.xz": COMPRESSORS[".xz"](TEXT),
            "app/words.zst": COMPRESSORS[".zst"](TEXT),
        },
    ]
    ctx = run_duplicates(
        tmp_path, layers, CompressedDuplicatesOptions(keep=("/app/*.zst",)), protected=frozenset({0})
    )
    assert deleted_paths(ctx) == ["app/words.xz"]
    found = outcomes(ctx)
    assert found["base/words.gz"][0:2] == ("kept", "same content as /base/words; protected layer")
    assert found["app/words.zst"][0:2] == ("kept", "same content as /app/words; --keep /app/*.zst")


def test_never_deletes_twins_symlinks_or_hardlinked_files(tmp_path: Path) -> None:
    gz = COMPRESSORS[".gz"](TEXT)
    layers: list[Files] = [
        {
            "a/words": TEXT,
            "a/link.gz": "->words.gz",
            "a/words.gz": gz,
            "a/again.gz": "=>a/words.gz",
            "b/words.gz.gz": COMPRESSORS[".gz"](gz),  # its twin b/words.gz is deleted too: keep it
            "b/words.gz": gz,
            "b/words": TEXT,
        }
    ]
    ctx = run_duplicates(tmp_path, layers)
    assert deleted_paths(ctx) == ["b/words.gz"]
    found = outcomes(ctx)
    assert found["a/words.gz"][1].startswith("same content as /a/words; hardlinked as /a/again.gz")
    assert "b/words.gz.gz" not in deleted_paths(ctx)


def test_twin_through_a_symlink(tmp_path: Path) -> None:
    ctx = run_duplicates(
        tmp_path,
        [{"real/words": TEXT, "a/words": "->../real/words", "a/words.bz2": COMPRESSORS[".bz2"](TEXT)}],
    )
    assert deleted_paths(ctx) == ["a/words.bz2"]


def _tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, data in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.size, info.mtime, info.mode = len(data), 1700000000, 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _oci_layout(root: Path, layers: list[dict[str, bytes]]) -> Path:
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return f"sha256:{digest}"

    descriptors, diff_ids = [], []
    for files in layers:
        raw = _tar(files)
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        blob = gzip.compress(raw, mtime=0)
        descriptors.append(
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": put(blob),
                "size": len(blob),
            }
        )
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "config": {},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": put(config),
                "size": len(config),
            },
            "layers": descriptors,
        }
    ).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": put(manifest),
                "size": len(manifest),
            }
        ],
    }
    (root / "index.json").write_text(json.dumps(index))
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return root


def _output_files(layout: Path) -> dict[str, bytes]:
    index = json.loads((layout / "index.json").read_text())
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_bytes())
    files: dict[str, bytes] = {}
    for layer in manifest["layers"]:
        with tarfile.open(fileobj=io.BytesIO((blobs / layer["digest"].split(":")[1]).read_bytes())) as tar:
            for member in tar:
                name = member.name
                if "/.wh." in "/" + name:
                    files.pop(name.replace(".wh.", ""), None)
                elif member.isfile():
                    reader = tar.extractfile(member)
                    assert reader is not None
                    files[name] = reader.read()
    return files


def test_end_to_end_through_optimize(tmp_path: Path) -> None:
    gz = COMPRESSORS[".gz"](TEXT)
    src = _oci_layout(
        tmp_path / "in",
        [
            {"usr/share/doc/a/NEWS": TEXT, "usr/share/doc/a/NEWS.gz": gz, "etc/motd": b"hi\n"},
            {"srv/words.zst": COMPRESSORS[".zst"](TEXT), "srv/words.txt": b"other"},
        ],
    )
    options = Options(passes=("compressed-duplicates",), output_format="oci-dir", keep_layers=0)
    report = optimize(str(src), str(tmp_path / "out"), options)
    result = report.images[0].passes[0]
    assert (result.name, result.status.value, result.files_changed) == ("compressed-duplicates", "ok", 1)
    assert [(f.path, f.action, f.bytes_before) for f in result.findings if f.action == "deleted"] == [
        ("usr/share/doc/a/NEWS.gz", "deleted", len(gz))
    ]
    files = _output_files(tmp_path / "out")
    assert "usr/share/doc/a/NEWS.gz" not in files
    assert files["usr/share/doc/a/NEWS"] == TEXT and "srv/words.zst" in files
    # any-path finds the same content under another name.
    options = Options(
        passes=("compressed-duplicates",),
        output_format="oci-dir",
        pass_options={"compressed-duplicates": CompressedDuplicatesOptions(match="any-path")},
    )
    report = optimize(str(src), str(tmp_path / "out2"), options)
    assert sorted(f.path for f in report.images[0].passes[0].findings if f.action == "deleted") == [
        "srv/words.zst",
        "usr/share/doc/a/NEWS.gz",
    ]


def test_command_line_options() -> None:
    from optimizer.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(
        ["in.tar", "out.tar", "--duplicates", "any-path", "--keep", "*.svgz", "--keep", "/srv/**"]
    )
    assert CompressedDuplicates.options_from_args(args) == CompressedDuplicatesOptions(
        match="any-path", keep=("*.svgz", "/srv/**")
    )
    args = parser.parse_args(
        ["in.tar", "out.tar", "--duplicates-ignore-nginx", "--duplicates-max-ratio", "50"]
    )
    assert CompressedDuplicates.options_from_args(args) == CompressedDuplicatesOptions(
        nginx=False, max_ratio=50
    )
    assert (
        CompressedDuplicates.options_from_args(parser.parse_args(["a", "b"])) == CompressedDuplicatesOptions()
    )
