"""The ``compressed-duplicates`` pass: twins by name and by content, every codec, corrupt files and
bombs next to twins, kept globs and layers, links, and end to end."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from optimizer import Options, optimize
from passes.compressed_duplicates import CompressedDuplicates, CompressedDuplicatesOptions
from tests.imagetools import Layout, build_image, entry
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


def test_end_to_end_through_optimize(tmp_path: Path) -> None:
    gz = COMPRESSORS[".gz"](TEXT)
    src = build_image(
        tmp_path / "in.tar",
        [
            [entry("usr/share/doc/a/NEWS", data=TEXT), entry("usr/share/doc/a/NEWS.gz", data=gz),
             entry("etc/motd", data=b"hi\n")],
            [entry("srv/words.zst", data=COMPRESSORS[".zst"](TEXT)), entry("srv/words.txt", data=b"other")],
        ],
    )  # fmt: skip
    options = Options(passes=("compressed-duplicates",), output_format="oci-dir", base_layers=0)
    report = optimize(str(src), str(tmp_path / "out"), options)
    result = report.images[0].passes[0]
    assert (result.name, result.status.value, result.files_changed) == ("compressed-duplicates", "ok", 1)
    assert [(f.path, f.action, f.bytes_before) for f in result.findings if f.action == "deleted"] == [
        ("usr/share/doc/a/NEWS.gz", "deleted", len(gz))
    ]
    files = Layout(tmp_path / "out").merged_files()
    assert "usr/share/doc/a/NEWS.gz" not in files
    assert files["usr/share/doc/a/NEWS"] == TEXT and "srv/words.zst" in files
    # any-path finds the same content under another name.
    options = Options(
        base="none",
        passes=("compressed-duplicates",),
        output_format="oci-dir",
        pass_options=(CompressedDuplicatesOptions(match="any-path"),),
    )
    report = optimize(str(src), str(tmp_path / "out2"), options)
    assert sorted(f.path for f in report.images[0].passes[0].findings if f.action == "deleted") == [
        "srv/words.zst",
        "usr/share/doc/a/NEWS.gz",
    ]


def test_command_line_options() -> None:
    from optimizer.cli import build_parser, options_from_args

    parser = build_parser()
    args = parser.parse_args(
        ["in.tar", "out.tar", "--duplicates", "any-path", "--keep", "*.svgz", "--keep", "/srv/**"]
    )
    assert options_from_args(args).options_for(CompressedDuplicates) == CompressedDuplicatesOptions(
        match="any-path", keep=("*.svgz", "/srv/**")
    )
    args = parser.parse_args(
        ["in.tar", "out.tar", "--duplicates-ignore-servers", "--duplicates-max-ratio", "50"]
    )
    assert options_from_args(args).options_for(CompressedDuplicates) == CompressedDuplicatesOptions(
        servers=False, max_ratio=50
    )
    assert (
        options_from_args(parser.parse_args(["a", "b"])).options_for(CompressedDuplicates)
        == CompressedDuplicatesOptions()
    )
    # The flag of earlier releases still works.
    args = parser.parse_args(["in.tar", "out.tar", "--duplicates-ignore-nginx"])
    assert options_from_args(args).options_for(CompressedDuplicates) == CompressedDuplicatesOptions(
        servers=False
    )
