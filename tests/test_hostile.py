"""Hostile and broken input (issue 12): every case ends with its documented exit code, one line naming the
image, the layer and the path, no traceback, and nothing written at the destination.

The archives are built here, member by member (``imagetools.oci_files``); bombs are sized to stay fast, with
the limits lowered by flag where a default would take long to reach.
"""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard

from optimizer import Options, optimize
from optimizer.cli import main
from optimizer.mediatypes import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_LAYER_TAR,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
)
from optimizer.output import canonical_json

from .conftest import ROOT, missing, require_tool
from .imagetools import (
    Layout,
    compressed,
    digest_of,
    oci_files,
    simple_image_files,
    tar_of,
    umoci_unpack,
    write_tar,
)

MEDIA = {"gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD, "none": OCI_LAYER_TAR}


def run_cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "optimizer", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def refused(
    capsys: pytest.CaptureFixture[str], code: int, argv: list[str], *words: str, out: Path | None = None
) -> str:
    """Run the CLI in-process: it returns ``code`` (a traceback would raise here) with one error line
    holding ``words``, and writes nothing at ``out``."""
    assert main(argv) == code
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("optimize: error:")]
    assert len(errors) == 1, err
    for word in words:
        assert word in errors[0], errors[0]
    if out is not None:
        assert not out.exists()
        assert not [p for p in out.parent.iterdir() if p.name.startswith(".optimize-")]
    return errors[0]


def image_with(tmp_path: Path, layers: list[tuple[str, bytes, str]], **extra: object) -> Path:
    files, _ = oci_files(layers, **extra)  # type: ignore[arg-type]
    return write_tar(tmp_path / "in.tar", files)


def with_manifest(files: dict[str, bytes], digest: str, change: Callable[[dict[str, Any]], None]) -> str:
    """Edit the manifest ``digest`` of ``files`` in place (``change``), re-point index.json at the result."""
    manifest = json.loads(files.pop("blobs/sha256/" + digest[7:]))
    change(manifest)
    data = canonical_json(manifest)
    files["blobs/sha256/" + digest_of(data)[7:]] = data
    media_type = manifest.get("mediaType", OCI_MANIFEST)
    descriptor = {"mediaType": media_type, "digest": digest_of(data), "size": len(data)}
    files["index.json"] = canonical_json({"schemaVersion": 2, "manifests": [descriptor]})
    return digest_of(data)


@functools.cache  # the same bytes every call: the 4 GiB one takes seconds to hash and compress
def zero_file_layer(size: int, codec: str, name: str = "zeros") -> tuple[str, bytes, str]:
    """A layer holding one file of ``size`` zero bytes (compressed as a stream: never whole in memory when
    zstd)."""
    header = tarfile.TarInfo(name)
    header.size = size
    head = header.tobuf(tarfile.PAX_FORMAT)
    tail = bytes(-size % 512) + bytes(1024)
    import hashlib

    plain_hash = hashlib.sha256(head)
    block = bytes(1 << 20)
    out = io.BytesIO()
    if codec == "zstd":
        writer = zstandard.ZstdCompressor(level=1).stream_writer(out, closefd=False)
    else:
        import gzip

        writer = gzip.GzipFile(fileobj=out, mode="wb", compresslevel=1, mtime=0)  # type: ignore[assignment]
    writer.write(head)
    left = size
    while left:
        piece = block[: min(left, len(block))]
        writer.write(piece)
        plain_hash.update(piece)
        left -= len(piece)
    writer.write(tail)
    plain_hash.update(tail)
    if codec == "zstd":
        writer.flush(zstandard.FLUSH_FRAME)
    else:
        writer.close()
    return MEDIA[codec], out.getvalue(), "sha256:" + plain_hash.hexdigest()


def plain_layer(members: list[tuple[str, str, bytes | str]], codec: str = "gzip") -> tuple[str, bytes, str]:
    plain = tar_of(members)
    return MEDIA[codec], compressed(plain, codec), digest_of(plain)


FILES = [
    ("etc", "dir", b""),
    ("etc/motd", "file", b"hello\n" * 50),
    ("bin/sh", "file", b"\x7fELF" + bytes(64)),
]


# -- 1. Resource limits --------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["zstd", "gzip"])
def test_a_decompression_bomb_stops_at_the_expansion_limit(
    codec: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 72 MiB of zeros in a few hundred KB: past the 64M floor, far past 200 times its size.
    source = image_with(tmp_path, [zero_file_layer(72 << 20, codec)])
    work = tmp_path / "work"
    work.mkdir()
    out = tmp_path / "out.tar"
    argv = [str(source), str(out), "--passes", "dead-data", "--workdir", str(work)]
    refused(capsys, 3, argv, "layer 1/1 sha256:", "--max-expansion-ratio 200", out=out)
    assert list(work.iterdir()) == []  # the spooled part is gone with the work directory


def test_layer_and_image_byte_limits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    layers = [zero_file_layer(600 << 10, "gzip", "a"), zero_file_layer(600 << 10, "gzip", "b")]
    source = image_with(tmp_path, layers)
    out = tmp_path / "out.tar"
    refused(
        capsys,
        3,
        [str(source), str(out), "--normalize", "--max-layer-bytes", "512K"],
        "--max-layer-bytes 512K",
    )
    refused(
        capsys,
        3,
        [str(source), str(out), "--normalize", "--max-image-bytes", "1M"],
        "layer 2/2",
        "--max-image-bytes 1M",
    )
    assert main([str(source), str(out), "--normalize", "-q", "--max-image-bytes", "2M"]) == 0


def test_entries_per_layer_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = image_with(tmp_path, [plain_layer([(f"f{i}", "file", b"x") for i in range(20)])])
    argv = [str(source), str(tmp_path / "out.tar"), "--normalize", "--max-layer-entries", "10"]
    refused(capsys, 3, argv, "layer 1/1", "more than 10 entries (--max-layer-entries)")


def test_300000_layers_naming_one_blob_are_refused_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layer = plain_layer(FILES)
    source = image_with(tmp_path, [layer] * 300_000)
    started = time.monotonic()
    refused(capsys, 3, [str(source), str(tmp_path / "out.tar")], "300000 layers", "--max-layers 1000")
    assert time.monotonic() - started < 60


def test_docker_archive_with_too_many_layers_is_refused_before_hashing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = canonical_json({"rootfs": {"type": "layers", "diff_ids": []}, "os": "linux"})
    files = {
        "manifest.json": json.dumps([{"Config": "config.json", "Layers": ["layer.tar"] * 5000}]).encode(),
        "config.json": config,
        "layer.tar": tar_of(FILES),
    }
    source = write_tar(tmp_path / "docker.tar", files)
    refused(capsys, 3, [str(source), str(tmp_path / "out.tar")], "5000 layers", "--max-layers 1000")


def test_manifests_per_index_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = simple_image_files()
    index = json.loads(files["index.json"])
    index["manifests"] = index["manifests"] * 11
    files["index.json"] = canonical_json(index)
    source = write_tar(tmp_path / "in.tar", files)
    argv = [str(source), str(tmp_path / "out.tar"), "--max-index-manifests", "10"]
    refused(capsys, 3, argv, "index.json lists 11 manifests", "--max-index-manifests 10")


def test_a_compressed_archive_bomb_stops_at_the_expansion_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inner = write_tar(tmp_path / "inner.tar", {"padding": bytes(72 << 20)})
    source = tmp_path / "in.tar.gz"
    import gzip

    source.write_bytes(gzip.compress(inner.read_bytes(), compresslevel=1, mtime=0))
    refused(
        capsys,
        3,
        [str(source), str(tmp_path / "out.tar")],
        "decompressed archive exceeds",
        "--max-expansion-ratio",
    )


@pytest.mark.parametrize("codec", ["gzip", "zstd", "xz"])
def test_a_damaged_compressed_archive_is_a_format_error(
    codec: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import lzma

    plain = write_tar(tmp_path / "inner.tar", simple_image_files()).read_bytes()
    packed = bytearray(
        lzma.compress(plain)
        if codec == "xz"
        else compressed(plain, "zstd")
        if codec == "zstd"
        else compressed(plain, "gzip")
    )
    packed[len(packed) // 2 : len(packed) // 2 + 32] = bytes(32)  # a damaged block in the middle
    source = tmp_path / f"in.tar.{codec}"
    source.write_bytes(bytes(packed))
    out = tmp_path / "out.tar"
    refused(capsys, 3, [str(source), str(out)], str(source), "the compressed archive is corrupt", out=out)


def test_limits_are_settings_with_config_keys() -> None:
    from optimizer import settings
    from optimizer.errors import UsageError
    from optimizer.limits import Limits

    limits = settings.from_mapping(Limits, {"max_layer_bytes": "10G", "max-layers": 5}, "limits")
    assert (limits.max_layer_bytes, limits.max_layers) == (10 << 30, 5)
    with pytest.raises(UsageError, match="--max-layers must be a positive integer"):
        Limits(max_layers=0)
    with pytest.raises(UsageError, match="not a size"):
        settings.from_mapping(Limits, {"max_image_bytes": "lots"}, "limits")


def _in_tmpfs(mountpoint: Path, size: str, script: str) -> subprocess.CompletedProcess[str]:
    """``script`` (sh) with a ``size`` tmpfs mounted at ``mountpoint``, in a private mount namespace."""
    unshare = shutil.which("unshare")
    if unshare is None:
        missing("unshare not found (Debian package util-linux)")
    mountpoint.mkdir(exist_ok=True)
    command = f"mount -t tmpfs -o size={size} tmpfs {mountpoint} || exit 99\n{script}"
    done = subprocess.run(
        [str(unshare), "--mount", "--map-root-user", "sh", "-c", command],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    if done.returncode == 99 or "unshare:" in done.stderr:
        missing(f"cannot mount a tmpfs in a private namespace: {done.stderr.strip()}")
    return done


def test_a_full_work_directory_is_exit_6(tmp_path: Path) -> None:
    source = image_with(tmp_path, [plain_layer([("data", "file", os.urandom(3 << 20))])])
    work = tmp_path / "work"
    done = _in_tmpfs(
        work,
        "1m",
        f"{sys.executable} -m optimizer {source} {tmp_path / 'out.tar'} --normalize --workdir {work}\n"
        f"code=$?; ls -A {work}; exit $code",
    )
    assert done.returncode == 6, done.stderr
    assert "Traceback" not in done.stderr and "full" in done.stderr and "layer 1/1" in done.stderr
    assert done.stdout.strip() == ""  # the work directory was emptied
    assert not (tmp_path / "out.tar").exists()


def test_a_full_destination_is_exit_6_and_leaves_nothing(tmp_path: Path) -> None:
    source = image_with(tmp_path, [plain_layer([("data", "file", os.urandom(3 << 20))])])
    target = tmp_path / "target"
    done = _in_tmpfs(
        target,
        "1m",
        f"{sys.executable} -m optimizer {source} {target / 'out.tar'} --passes none\n"
        f"code=$?; ls -A {target}; exit $code",
    )
    assert done.returncode == 6, done.stderr
    assert "Traceback" not in done.stderr and "disk is full" in done.stderr
    assert done.stdout.strip() == ""


# -- 2. diff_ids and media types -------------------------------------------------------------------------


def test_a_diff_id_that_does_not_match_is_exit_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    media, blob, _ = plain_layer(FILES)
    source = image_with(tmp_path, [(media, blob, digest_of(b"something else"))])
    out = tmp_path / "out.tar"
    refused(capsys, 3, [str(source), str(out)], "layer 1/1", "the config's diff_id is", out=out)
    # --strict reads (and checks) every layer even when no pass would
    refused(capsys, 3, [str(source), str(out), "--passes", "none", "--strict"], "diff_id", out=out)


@pytest.mark.parametrize(("declared", "actual"), [("none", "zstd"), ("zstd", "gzip"), ("gzip", "zstd")])
@pytest.mark.parametrize("passes", ["none", "dead-data"])
def test_a_layer_that_is_not_its_media_type_is_exit_3(
    declared: str, actual: str, passes: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = tar_of(FILES)
    source = image_with(tmp_path, [(MEDIA[declared], compressed(plain, actual), digest_of(plain))])
    out = tmp_path / "out.tar"
    refused(
        capsys, 3, [str(source), str(out), "--passes", passes], "layer 1/1", "but its media type", out=out
    )


def test_junk_in_the_end_of_archive_blocks_is_exit_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # libarchive stops at the first zero block; Go's archive/tar (containerd, umoci) refuses a second that is not
    plain = bytearray(tar_of([("etc", "dir", b""), ("etc/motd", "file", b"hi\n")]))
    plain[2048] = 7  # headers at 0 and 512, data at 1024, end-of-archive blocks at 1536 and 2048
    source = image_with(tmp_path, [(OCI_LAYER_TAR, bytes(plain), digest_of(bytes(plain)))])
    argv = [str(source), str(tmp_path / "out.tar"), "--passes", "dead-data"]
    refused(capsys, 3, argv, "layer 1/1", "end-of-archive blocks after etc/motd")


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_a_compressed_layer_cut_short_is_exit_3(
    codec: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = tar_of([("data", "file", os.urandom(200_000))])
    blob = compressed(plain, codec)[:-1000]  # a consistent blob (its digest is its own), cut mid-stream
    source = image_with(tmp_path, [(MEDIA[codec], blob, digest_of(plain))])
    refused(
        capsys, 3, [str(source), str(tmp_path / "out.tar"), "--passes", "dead-data"], "layer 1/1", "truncated"
    )


def test_a_plain_tar_under_dockers_gzip_type_is_read_with_a_warning(tmp_path: Path) -> None:
    plain = tar_of(FILES)
    files, digest = oci_files([(DOCKER_LAYER_GZIP, plain, digest_of(plain))])

    def docker(manifest: dict[str, Any]) -> None:
        manifest["mediaType"] = DOCKER_MANIFEST
        manifest["config"]["mediaType"] = DOCKER_CONFIG

    with_manifest(files, digest, docker)
    source = write_tar(tmp_path / "in.tar", files)
    for passes in ("none", "dead-data"):
        report = optimize(
            str(source),
            str(tmp_path / f"{passes}.tar"),
            Options(passes=(passes,) if passes != "none" else ()),
        )
        warnings = report.warnings + report.images[0].warnings
        assert any("a plain tar under the media type" in w for w in warnings), warnings


# -- 3. Deep JSON -----------------------------------------------------------------------------------------

DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize("document", ["index.json", "manifest", "config"])
def test_a_100000_deep_document_is_exit_3(
    document: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = simple_image_files()
    index = json.loads(files["index.json"])
    if document == "index.json":
        files["index.json"] = b'{"schemaVersion":2,"manifests":[],"x":' + DEEP + b"}"
    else:
        manifest_digest = index["manifests"][0]["digest"]
        manifest = json.loads(files["blobs/sha256/" + manifest_digest[7:]])
        if document == "manifest":
            new_manifest = DEEP
        else:
            files["blobs/sha256/" + digest_of(DEEP)[7:]] = DEEP
            manifest["config"].update(digest=digest_of(DEEP), size=len(DEEP))
            new_manifest = canonical_json(manifest)
        files["blobs/sha256/" + digest_of(new_manifest)[7:]] = new_manifest
        index["manifests"][0].update(digest=digest_of(new_manifest), size=len(new_manifest))
        files["index.json"] = canonical_json(index)
    source = write_tar(tmp_path / "in.tar", files)
    refused(capsys, 3, [str(source), str(tmp_path / "out.tar")], "nested more than 64 levels")


def test_a_3000_deep_chain_of_indexes_is_exit_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = simple_image_files()
    child = json.loads(files["index.json"])["manifests"][0]
    for _ in range(3000):
        data = canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [child]})
        files["blobs/sha256/" + digest_of(data)[7:]] = data
        child = {"mediaType": OCI_INDEX, "digest": digest_of(data), "size": len(data)}
    files["index.json"] = canonical_json({"schemaVersion": 2, "manifests": [child]})
    source = write_tar(tmp_path / "in.tar", files)
    refused(capsys, 3, [str(source), str(tmp_path / "out.tar")], "indexes nested more than 16 deep")


def test_an_index_entry_whose_media_type_contradicts_its_document_is_exit_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = simple_image_files()
    index = json.loads(files["index.json"])
    index["manifests"][0]["mediaType"] = "application/vnd.oci.image.index.v1+json"
    files["index.json"] = canonical_json(index)
    source = write_tar(tmp_path / "in.tar", files)
    refused(capsys, 3, [str(source), str(tmp_path / "out.tar")], "is named as", "but is a document of type")


# -- 4. Truncated and incomplete archives ----------------------------------------------------------------


def test_an_archive_missing_its_only_manifest_is_exit_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = simple_image_files()
    digest = json.loads(files["index.json"])["manifests"][0]["digest"]
    del files["blobs/sha256/" + digest[7:]]
    source = write_tar(tmp_path / "in.tar", files)
    out = tmp_path / "out.tar"
    refused(capsys, 3, [str(source), str(out)], f"manifest {digest[:19]}", "--allow-partial", out=out)
    assert main([str(source), str(out), "-q", "--allow-partial"]) == 0  # carried as a reference, on request


def test_a_truncated_archive_is_exit_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    whole_path = write_tar(tmp_path / "whole.tar", simple_image_files())
    whole = whole_path.read_bytes()
    with tarfile.open(whole_path) as tar:
        # inside every member's data, and between two members (the rest is lost)
        cuts = [m.offset_data + m.size // 2 for m in tar if m.size > 1] + [tar.getmembers()[3].offset]
    for cut in cuts:
        source = tmp_path / "in.tar"
        source.write_bytes(whole[:cut])
        out = tmp_path / "out.tar"
        refused(capsys, 3, [str(source), str(out), "--passes", "none"], str(source), out=out)


def test_a_missing_layer_is_exit_3_even_for_a_pure_repack(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layer = plain_layer(FILES)
    files, _ = oci_files([layer])
    del files["blobs/sha256/" + digest_of(layer[1])[7:]]
    source = write_tar(tmp_path / "in.tar", files)
    out = tmp_path / "out.tar"
    refused(
        capsys, 3, [str(source), str(out), "--passes", "none"], "layer 1/1", "missing from the input", out=out
    )
    # with --allow-partial a pure repack carries the reference; a run that must read the layer cannot
    assert main([str(source), str(out), "-q", "--passes", "none", "--allow-partial"]) == 0
    out.unlink()
    refused(capsys, 3, [str(source), str(out), "--allow-partial"], "layer 1/1", "missing", out=out)


# -- 5. Unsafe names in layers that are not rewritten ----------------------------------------------------

HOSTILE = [
    ("etc", "dir", b""),
    ("etc/shadow", "file", b"root:*:1::::::\n"),
    ("../../escape", "file", b"out\n"),
    ("/abs/file", "file", b"abs\n"),
    ("etc/link", "hardlink", "/etc/shadow"),
    ("ok", "file", b"fine\n"),
]


def test_unsafe_names_kept_in_an_unchanged_layer_are_said_on_stderr(tmp_path: Path) -> None:
    media, blob, diff_id = plain_layer(HOSTILE)
    source = image_with(tmp_path, [(media, blob, diff_id)])
    out = tmp_path / "out.tar"
    done = run_cli(str(source), str(out), "--passes", "dead-data")
    assert done.returncode == 0, done.stderr
    assert "leave the root" in done.stderr and "'../../escape'" in done.stderr and "--sanitize" in done.stderr
    with tarfile.open(out) as tar:
        names = tar.getnames()
    assert "blobs/sha256/" + digest_of(blob)[7:] in names  # the layer kept as it is
    strict = run_cli(str(source), str(tmp_path / "strict.tar"), "--passes", "dead-data", "--strict")
    assert strict.returncode == 3 and "Traceback" not in strict.stderr
    assert "leave the root" in strict.stderr and not (tmp_path / "strict.tar").exists()


def test_sanitize_rewrites_the_layer_without_unsafe_names(tmp_path: Path) -> None:
    require_tool("umoci", "umoci")
    source = image_with(tmp_path, [plain_layer(FILES), plain_layer(HOSTILE)])
    out = tmp_path / "out.tar"
    report = optimize(str(source), str(out), Options(base="none", passes=(), sanitize=True))
    assert [layer.status for layer in report.images[0].layers] == ["unchanged", "rewritten"]
    layout = Layout(out)
    ((_, manifest),) = layout.manifests()
    with tarfile.open(fileobj=io.BytesIO(layout.blob(manifest["layers"][1]["digest"]))) as layer:
        names = layer.getnames()
    assert names == ["etc", "etc/shadow", "ok"]
    rootfs = umoci_unpack(out, tmp_path, "sanitized")
    assert (rootfs / "ok").read_text() == "fine\n" and not (rootfs / "escape").exists()


# -- 6. Errors inside libarchive's read callback ---------------------------------------------------------


@pytest.mark.parametrize("fault", ["digest", "size"])
def test_a_blob_fault_inside_the_tar_reader_is_reported_as_itself(fault: str, tmp_path: Path) -> None:
    media, blob, diff_id = plain_layer(FILES, "none")
    files, digest = oci_files([(media, blob, diff_id)])

    def break_layer(manifest: dict[str, Any]) -> None:
        layer = manifest["layers"][0]
        if fault == "digest":
            wrong = "sha256:" + "ab" * 32
            files["blobs/sha256/" + wrong[7:]] = files.pop("blobs/sha256/" + layer["digest"][7:])
            layer["digest"] = wrong
        else:
            layer["size"] -= 100

    with_manifest(files, digest, break_layer)
    source = write_tar(tmp_path / "in.tar", files)
    done = run_cli(str(source), str(tmp_path / "out.tar"), "--passes", "dead-data")
    assert done.returncode == 3, done.stderr
    expected = "does not match its digest" if fault == "digest" else "larger than its declared size"
    assert expected in done.stderr
    for noise in ("Traceback", "Exception ignored", "Unrecognized archive format"):
        assert noise not in done.stderr


def _long_read(tmp_path: Path) -> tuple[Path, Path]:
    """An image whose only layer takes seconds to read and writes nothing to disk meanwhile: 4 GiB of zeros
    under an unsafe name, which --sanitize skips (libarchive reads past it through the read callback)."""
    source = image_with(tmp_path, [zero_file_layer(4 << 30, "zstd", "../big")])
    work = tmp_path / "work"
    work.mkdir()
    return source, work


@pytest.mark.parametrize(
    ("signum", "code", "word"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
def test_a_signal_during_a_layer_read_exits_cleanly(
    signum: int, code: int, word: str, tmp_path: Path
) -> None:
    source, work = _long_read(tmp_path)
    out = tmp_path / "out.tar"
    argv = [sys.executable, "-m", "optimizer", str(source), str(out), "--sanitize", "--passes", "none"]
    argv += ["--workdir", str(work), "--max-expansion-ratio", "1000000"]
    process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not list(work.glob("*/layer-*.pack")):  # the spool file is opened as the read starts
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.2)
        process.send_signal(signum)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == code, err
    assert word in err and "Traceback" not in err and "Exception ignored" not in err
    assert list(work.iterdir()) == [] and not out.exists()


# -- 7. Output faults ---------------------------------------------------------------------------------


def test_a_directory_as_archive_destination_is_exit_6_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_tar(tmp_path / "in.tar", simple_image_files())
    target = tmp_path / "existing"
    target.mkdir()
    refused(capsys, 6, [str(source), str(target)], "is a directory")
    assert list(target.iterdir()) == []


def test_an_unwritable_report_path_is_exit_6_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_tar(tmp_path / "in.tar", simple_image_files())
    out = tmp_path / "out.tar"
    refused(
        capsys,
        6,
        [str(source), str(out), "--report", str(tmp_path / "nowhere" / "r.json")],
        "--report",
        out=out,
    )


def test_a_missing_libarchive_is_exit_7_naming_the_package(tmp_path: Path) -> None:
    source = write_tar(tmp_path / "in.tar", simple_image_files())
    env = {"LIBARCHIVE": str(tmp_path / "no-such-libarchive.so")}
    done = run_cli(str(source), str(tmp_path / "out.tar"), env=env)
    assert done.returncode == 7, done.stderr
    assert "libarchive13" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out.tar").exists()
    assert run_cli(str(source), str(tmp_path / "out.tar"), "--passes", "none", "-q", env=env).returncode == 0


def test_strip_elf_and_upx_work_in_the_run_work_directory(
    tmp_path: Path, fixtures: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from passes.upx import UpxOptions

    require_tool("upx", "upx-ucl")
    elf = fixtures / "elf" / "dwarfv5_basic.elf"
    packed = fixtures / "upx" / "packed" / "test.sh.compressed"
    for path in (elf, packed):
        if not path.exists():
            missing(f"fixture {path} not found")
    members: list[tuple[str, str, bytes | str]] = [
        ("usr/bin/app", "file", elf.read_bytes()),
        ("usr/bin/script", "file", packed.read_bytes()),
    ]
    source = image_with(tmp_path, [plain_layer(members)])
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-directory"))  # no default temp dir
    options = Options(
        base="none",
        passes=("strip-elf", "upx"),
        pass_options=(UpxOptions(mode="unpack"),),
        strict=True,
        workers=1,
        workdir=str(work),
    )
    report = optimize(str(source), str(tmp_path / "out.tar"), options)
    (image,) = report.images
    assert [(p.name, p.status.value, p.files_changed) for p in image.passes] == [
        ("strip-elf", "ok", 1),
        ("upx", "ok", 1),
    ]
    assert list(work.iterdir()) == []


def test_oci_dir_output_replaces_its_own_earlier_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_tar(tmp_path / "in.tar", simple_image_files())
    out = tmp_path / "layout"
    assert main([str(source), str(out), "--format", "oci-dir", "--passes", "none", "-q"]) == 0
    first = json.loads((out / "index.json").read_text())
    assert (
        main([str(source), str(out), "--format", "oci-dir", "--passes", "dead-data", "--base", "none", "-q"])
        == 0
    )
    second = json.loads((out / "index.json").read_text())
    assert first != second and (out / "oci-layout").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".optimize")] == []
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"meow")
    refused(capsys, 6, [str(source), str(other), "--format", "oci-dir"], "not an OCI layout")
    assert (other / "cat.jpg").read_bytes() == b"meow"


# -- 9. Options --------------------------------------------------------------------------------------


def test_keep_layers_past_the_layer_count_is_said(tmp_path: Path) -> None:
    source = write_tar(tmp_path / "in.tar", simple_image_files())
    done = run_cli(str(source), str(tmp_path / "out.tar"), "--keep-layers", "5")
    assert done.returncode == 0 and "--base-layers 5 is more than its 2 layers" in done.stderr


def test_zero_workers_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_tar(tmp_path / "in.tar", simple_image_files())
    refused(
        capsys, 2, [str(source), str(tmp_path / "out.tar"), "--workers", "0"], "--workers must be at least 1"
    )


def test_an_image_of_squashfs_layers_passes_through_with_a_warning(tmp_path: Path) -> None:
    squashfs = b"hsqs" + bytes(200)
    files, _ = oci_files(
        [("application/vnd.sylabs.sif.layer.v1.squashfs", squashfs, digest_of(squashfs))],
        config_extra={},
    )
    source = write_tar(tmp_path / "in.tar", files)
    out = tmp_path / "out.tar"
    done = run_cli(str(source), str(out))
    assert done.returncode == 0, done.stderr
    assert "media type we do not read" in done.stderr and "squashfs" in done.stderr
    with tarfile.open(out) as tar:
        assert "blobs/sha256/" + digest_of(squashfs)[7:] in tar.getnames()
    assert OCI_CONFIG  # the config keeps its OCI type: it is an image, carried untouched
