"""The ``compressed-duplicates`` pass: twins by name and by content, every codec, bombs, corrupt files, nginx."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import brotli
import lz4.frame
import pytest
import zstandard

from optimizer import Options, optimize
from optimizer.pipeline import PassContext
from passes.compressed_duplicates import (
    CompressedDuplicates,
    CompressedDuplicatesOptions,
    CorruptStream,
    LimitExceeded,
    Limits,
    decompressed_chunks,
    digest_decompressed,
    nginx_static,
)
from tests.passes import kit
from tests.passes.kit import Files

COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    ".gz": lambda d: gzip.compress(d, mtime=0),
    ".bz2": bz2.compress,
    ".xz": lambda d: lzma.compress(d, format=lzma.FORMAT_XZ),
    ".lzma": lambda d: lzma.compress(d, format=lzma.FORMAT_ALONE),
    ".zst": lambda d: zstandard.ZstdCompressor(write_checksum=True).compress(d),
    ".br": brotli.compress,
    ".lz4": lz4.frame.compress,
}
CODEC_OF = {
    ".gz": "gzip",
    ".bz2": "bzip2",
    ".xz": "xz",
    ".lzma": "lzma",
    ".zst": "zstd",
    ".br": "brotli",
    ".lz4": "lz4",
}

# Realistic, compressible content a few hundred KiB long (several chunks and frames of every codec).
TEXT = b"".join(
    b"line %06d: the quick brown fox jumps over the lazy dog %s\n" % (i, os.urandom(4).hex().encode())
    for i in range(6000)
)


def _run(
    tmp_path: Path,
    layers: list[Files],
    options: CompressedDuplicatesOptions | None = None,
    protected: frozenset[int] = frozenset(),
) -> PassContext:
    pass_ = CompressedDuplicates(options or CompressedDuplicatesOptions())
    return kit.run(tmp_path, pass_, layers, protected=protected, workers=2, parents=True)


def _deleted(ctx: PassContext) -> list[str]:
    return kit.changed(ctx)


def _findings(ctx: PassContext) -> dict[str, tuple[str, str, int, int]]:
    return {p: (f.action, f.reason, f.bytes_before, f.bytes_after) for p, f in kit.findings(ctx).items()}


@pytest.mark.parametrize("suffix", sorted(COMPRESSORS))
def test_same_directory_twin_is_deleted(tmp_path: Path, suffix: str) -> None:
    packed = COMPRESSORS[suffix](TEXT)
    ctx = _run(tmp_path, [{"usr/share/data/words": TEXT, f"usr/share/data/words{suffix}": packed}])
    assert _deleted(ctx) == [f"usr/share/data/words{suffix}"]
    found = _findings(ctx)[f"usr/share/data/words{suffix}"]
    assert found == ("deleted", "same content as /usr/share/data/words", len(packed), 0)
    assert ctx.report.findings[0].details == {"codec": CODEC_OF[suffix], "twin": "/usr/share/data/words"}


@pytest.mark.parametrize("suffix", sorted(COMPRESSORS))
def test_twin_in_another_directory_needs_any_path(tmp_path: Path, suffix: str) -> None:
    layers: list[Files] = [{"opt/app/words": TEXT}, {f"srv/www/words.txt{suffix}": COMPRESSORS[suffix](TEXT)}]
    assert _deleted(_run(tmp_path, layers)) == []
    ctx = _run(tmp_path, layers, CompressedDuplicatesOptions(match="any-path"))
    assert _deleted(ctx) == [f"srv/www/words.txt{suffix}"]
    assert _findings(ctx)[f"srv/www/words.txt{suffix}"][1] == "same content as /opt/app/words"
    assert [c.layer for c in ctx.changes] == [1]


@pytest.mark.parametrize("suffix", sorted(COMPRESSORS))
def test_twin_differing_by_one_byte_is_kept(tmp_path: Path, suffix: str) -> None:
    other = TEXT[:1000] + bytes([TEXT[1000] ^ 1]) + TEXT[1001:]
    for options in (CompressedDuplicatesOptions(), CompressedDuplicatesOptions(match="any-path")):
        ctx = _run(tmp_path, [{"a/words": other, f"a/words{suffix}": COMPRESSORS[suffix](TEXT)}], options)
        assert _deleted(ctx) == []
    # One byte more or less is a difference too.
    ctx = _run(tmp_path, [{"a/words": TEXT + b"\n", f"a/words{suffix}": COMPRESSORS[suffix](TEXT)}])
    assert _deleted(ctx) == [] and _findings(ctx)[f"a/words{suffix}"][1] == "differs from /a/words"


def _corruptions(suffix: str) -> dict[str, bytes]:
    packed = COMPRESSORS[suffix](TEXT)
    middle = len(packed) // 2
    return {
        "truncated": packed[: len(packed) - 7],
        "trailing garbage": packed + b"garbage after the stream",
        "flipped byte": packed[:middle] + bytes([packed[middle] ^ 0x55]) + packed[middle + 1 :],
        "plain text": TEXT,
    }


@pytest.mark.parametrize("suffix", sorted(COMPRESSORS))
def test_corrupt_files_are_left_alone(tmp_path: Path, suffix: str) -> None:
    for what, data in _corruptions(suffix).items():
        ctx = _run(tmp_path, [{"d/words": TEXT, f"d/words{suffix}": data}])
        assert _deleted(ctx) == [], what
        action, reason, _, _ = _findings(ctx)[f"d/words{suffix}"]
        assert action == "kept", what
        assert reason.startswith(("does not decompress", "differs from")), (what, reason)


def test_decompressors_reject_damage_themselves() -> None:
    for suffix in sorted(COMPRESSORS):
        for what, data in _corruptions(suffix).items():
            if what == "flipped byte":
                continue  # may or may not decode; the comparison with the twin decides then
            with pytest.raises(CorruptStream):
                b"".join(decompressed_chunks(CODEC_OF[suffix], data))


def test_bombs_are_bounded() -> None:
    zeros = bytes(64 << 20)
    for suffix in (".gz", ".bz2", ".xz", ".zst", ".br", ".lz4"):
        bomb = COMPRESSORS[suffix](zeros)
        assert len(bomb) < (1 << 20)
        codec = CODEC_OF[suffix]
        with pytest.raises(LimitExceeded):
            digest_decompressed(bomb, (codec, Limits(max_output=1 << 20, max_ratio=10**9)))
        with pytest.raises(LimitExceeded):
            digest_decompressed(bomb, (codec, Limits(max_output=1 << 40, max_ratio=100)))
    # Within the limits the same stream decodes to its digest.
    decoded = digest_decompressed(COMPRESSORS[".gz"](zeros), ("gzip", Limits(1 << 30, 10**9)))
    assert (decoded.size, decoded.sha256) == (len(zeros), hashlib.sha256(zeros).hexdigest())


def test_bomb_next_to_a_small_twin_stops_early(tmp_path: Path) -> None:
    bomb = gzip.compress(bytes(256 << 20), compresslevel=9, mtime=0)
    ctx = _run(tmp_path, [{"x/data": b"tiny", "x/data.gz": bomb}])
    assert _deleted(ctx) == []
    assert _findings(ctx)["x/data.gz"][1] == "differs from /x/data"
    # With a twin as large as the bomb's output the ratio limit is what stops it.
    ctx = _run(
        tmp_path,
        [{"x/data": bytes(8 << 20), "x/data.gz": gzip.compress(bytes(8 << 20), mtime=0)}],
        CompressedDuplicatesOptions(max_ratio=50),
    )
    assert _deleted(ctx) == []
    assert _findings(ctx)["x/data.gz"][1].startswith("not decompressed: more than")


def test_keep_glob_and_protected_layers(tmp_path: Path) -> None:
    layers: list[Files] = [
        {"base/words": TEXT, "base/words.gz": COMPRESSORS[".gz"](TEXT)},
        {
            "app/words": TEXT,
            "app/words.xz": COMPRESSORS[".xz"](TEXT),
            "app/words.zst": COMPRESSORS[".zst"](TEXT),
        },
    ]
    ctx = _run(tmp_path, layers, CompressedDuplicatesOptions(keep=("/app/*.zst",)), protected=frozenset({0}))
    assert _deleted(ctx) == ["app/words.xz"]
    found = _findings(ctx)
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
    ctx = _run(tmp_path, layers)
    assert _deleted(ctx) == ["b/words.gz"]
    found = _findings(ctx)
    assert found["a/words.gz"][1].startswith("same content as /a/words; hardlinked as /a/again.gz")
    assert "b/words.gz.gz" not in _deleted(ctx)


def test_twin_through_a_symlink(tmp_path: Path) -> None:
    ctx = _run(
        tmp_path,
        [{"real/words": TEXT, "a/words": "->../real/words", "a/words.bz2": COMPRESSORS[".bz2"](TEXT)}],
    )
    assert _deleted(ctx) == ["a/words.bz2"]


# -- nginx ---------------------------------------------------------------------------------------------------

NGINX_CONF = b"""
user  nginx;
worker_processes  auto;
events { worker_connections 1024; }
http {
    include       /etc/nginx/mime.types;
    gzip_static   on;   # serve FILE.gz when the client accepts gzip
    include /etc/nginx/conf.d/*.conf;
}
"""
DEFAULT_CONF = b"""
server {
    listen 80;
    server_name "localhost";
    location / {
        root   /usr/share/nginx/html;
        index  index.html;
    }
    location /static/ {
        alias /srv/static/;
        brotli_static always;
    }
}
"""


def _nginx_image(conf: bytes = NGINX_CONF, default: bytes = DEFAULT_CONF) -> Files:
    gz, br = COMPRESSORS[".gz"], COMPRESSORS[".br"]
    return {
        "etc/nginx/nginx.conf": conf,
        "etc/nginx/mime.types": b"types { text/html html; }\n",
        "etc/nginx/conf.d/default.conf": default,
        "usr/share/nginx/html/app.js": TEXT,
        "usr/share/nginx/html/app.js.gz": gz(TEXT),
        "usr/share/nginx/html/app.js.br": br(TEXT),
        "srv/static/site.css": TEXT,
        "srv/static/site.css.br": br(TEXT),
        "srv/static/site.css.gz": gz(TEXT),
        "usr/share/doc/pkg/changelog": TEXT,
        "usr/share/doc/pkg/changelog.gz": gz(TEXT),
    }


def test_nginx_gzip_static_roots_are_kept(tmp_path: Path) -> None:
    ctx = _run(tmp_path, [_nginx_image()])
    # gzip_static is on everywhere (http level); brotli_static only under /static/ (alias /srv/static).
    assert _deleted(ctx) == ["usr/share/doc/pkg/changelog.gz", "usr/share/nginx/html/app.js.br"]
    found = _findings(ctx)
    assert found["usr/share/nginx/html/app.js.gz"][1].endswith(
        "served by nginx gzip_static from /usr/share/nginx/html"
    )
    assert found["srv/static/site.css.gz"][1].endswith("served by nginx gzip_static from /srv/static")
    assert found["srv/static/site.css.br"][1].endswith("served by nginx brotli_static from /srv/static")
    assert ctx.report.warnings == []
    # Asked to ignore nginx, every duplicate goes.
    ctx = _run(tmp_path, [_nginx_image()], CompressedDuplicatesOptions(nginx=False))
    assert len(_deleted(ctx)) == 5


def test_nginx_root_we_cannot_tell_keeps_everything(tmp_path: Path) -> None:
    default = DEFAULT_CONF.replace(b"root   /usr/share/nginx/html;", b"root $app_root;")
    ctx = _run(tmp_path, [_nginx_image(default=default)])
    assert "usr/share/doc/pkg/changelog.gz" not in _deleted(ctx)
    assert not any(p.endswith(".gz") for p in _deleted(ctx))
    assert any("gzip_static on with root $app_root" in w for w in ctx.report.warnings)


def test_nginx_without_static_deletes_duplicates(tmp_path: Path) -> None:
    conf = NGINX_CONF.replace(b"gzip_static   on;", b"gzip_static off;")
    default = DEFAULT_CONF.replace(b"brotli_static always;", b"")
    ctx = _run(tmp_path, [_nginx_image(conf, default)])
    assert len(_deleted(ctx)) == 5


def test_nginx_parser_follows_includes_and_quotes(tmp_path: Path) -> None:
    files: Files = {
        "etc/nginx/nginx.conf": b"http { include sites-enabled/*; }",
        "etc/nginx/sites-enabled/site": "->../sites-available/site",
        "etc/nginx/sites-available/site": b"server { gzip_static \"on\"; root '/var/www/my site'; # root /x;\n}",
        "etc/nginx/sites-available/unused": b"server { brotli_static on; root /nowhere; }",
    }
    static = nginx_static(kit.make_context(tmp_path, [files], parents=True).fs)
    assert static.roots == {".gz": {"var/www/my site"}, ".br": set()}
    assert static.keep_all == set()


# -- end to end ----------------------------------------------------------------------------------------------


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
