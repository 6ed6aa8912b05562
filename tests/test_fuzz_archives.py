"""Fuzzing: a valid archive, mutated, gives a valid image or a documented error, never a traceback.

Three kinds of mutation of a small valid image (two layers): the archive's raw bytes (flips, truncation,
insertions); a layer's plain tar bytes, recompressed with the digests fixed up (and the diff_id sometimes
not), so the mutation reaches the tar reader and the passes; a JSON document's bytes with the digests fixed
up, so it reaches the parsers. Each run ends either with exit 0 and output that skopeo copies and umoci
unpacks (both verify digests; umoci also the diff_ids), or with an ``OptimizerError`` whose exit code is
documented, and nothing at the destination. In CI the examples are the same every run (conftest's "ci"
profile is derandomized).
"""

from __future__ import annotations

import json
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from optimizer import Options, optimize
from optimizer.errors import InputError, OptimizerError, PassFailedError
from optimizer.output import canonical_json

from .conftest import require_tool
from .imagetools import compressed, digest_of, simple_image_files, write_tar

REF = "org.opencontainers.image.ref.name"

CODECS = {"+gzip": "gzip", "+zstd": "zstd"}
OPTION_SETS = {
    "--passes none": Options(passes=(), workers=1),
    "--passes dead-data": Options(passes=("dead-data",), workers=1),
    "--normalize --passes none": Options(passes=(), normalize=True, workers=1),
    "--sanitize": Options(passes=("dead-data", "compressed-duplicates"), sanitize=True, workers=1),
    "--strict": Options(passes=("dead-data",), strict=True, workers=1),
}


class Mutant:
    """A mutated archive, shown by what was done to it (hypothesis prints this, not the bytes)."""

    def __init__(self, what: str, archive: bytes) -> None:
        self.what = what
        self.archive = archive

    def __repr__(self) -> str:
        return f"Mutant({self.what})"


def byte_edits(draw: st.DrawFn, data: bytes, log: list[str]) -> bytes:
    """``data`` with one to four edits: a byte changed, a range removed, bytes inserted, the end cut off."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        if not out:
            break
        at = draw(st.integers(0, len(out) - 1))
        kind = draw(st.sampled_from(["set", "flip", "delete", "insert", "truncate"]))
        if kind == "set":
            out[at] = draw(st.integers(0, 255))
        elif kind == "flip":
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "delete":
            del out[at : at + draw(st.integers(1, 64))]
        elif kind == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=64))
        else:
            del out[at:]
        log.append(f"{kind}@{at}")
    return bytes(out)


def _documents(files: dict[str, bytes]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    index = json.loads(files["index.json"])
    manifest_digest = index["manifests"][0]["digest"]
    manifest = json.loads(files["blobs/sha256/" + manifest_digest[7:]])
    config = json.loads(files["blobs/sha256/" + manifest["config"]["digest"][7:]])
    return manifest_digest, manifest, config


def _store(files: dict[str, bytes], data: bytes) -> dict[str, Any]:
    files["blobs/sha256/" + digest_of(data)[7:]] = data
    return {"digest": digest_of(data), "size": len(data)}


def _relink(files: dict[str, bytes], old_manifest: str, manifest: dict[str, Any], config: bytes) -> None:
    """Store ``config`` and ``manifest`` (pointing at it) and point index.json at the manifest."""
    del files["blobs/sha256/" + old_manifest[7:]]
    manifest["config"].update(_store(files, config))
    manifest_bytes = canonical_json(manifest)
    index = json.loads(files["index.json"])
    index["manifests"][0].update(_store(files, manifest_bytes))
    files["index.json"] = canonical_json(index)


@st.composite
def mutated_archive(draw: st.DrawFn) -> Mutant:
    codec = draw(st.sampled_from(["gzip", "zstd", "none"]))
    files = simple_image_files(codec)
    kind = draw(st.sampled_from(["raw", "layer", "layer", "document"]))
    log = [codec, kind]
    if kind == "raw":
        archive = byte_edits(draw, write_tar_bytes(files), log)
        return Mutant(" ".join(log), archive)
    manifest_digest, manifest, config = _documents(files)
    if kind == "layer":
        number = draw(st.integers(0, len(manifest["layers"]) - 1))
        layer = manifest["layers"][number]
        blob = files.pop("blobs/sha256/" + layer["digest"][7:])
        plain = _plain(blob, codec)
        log.append(f"layer {number + 1}")
        changed = byte_edits(draw, plain, log)
        layer.update(_store(files, compressed(changed, codec)))
        if draw(st.booleans()):  # the config follows the change (else its diff_id no longer matches)
            config["rootfs"]["diff_ids"][number] = digest_of(changed)
            log.append("diff_id fixed")
        _relink(files, manifest_digest, manifest, canonical_json(config))
    elif draw(st.booleans()):
        log.append("config")
        _relink(files, manifest_digest, manifest, byte_edits(draw, canonical_json(config), log))
    else:
        log.append("manifest")
        changed = byte_edits(draw, files.pop("blobs/sha256/" + manifest_digest[7:]), log)
        index = json.loads(files["index.json"])
        index["manifests"][0].update(_store(files, changed))
        files["index.json"] = canonical_json(index)
    return Mutant(" ".join(log), write_tar_bytes(files))


def _plain(blob: bytes, codec: str) -> bytes:
    import gzip

    import zstandard

    if codec == "gzip":
        return gzip.decompress(blob)
    if codec == "zstd":
        return zstandard.ZstdDecompressor().decompress(blob)
    return blob


def write_tar_bytes(files: dict[str, bytes]) -> bytes:
    import io

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _accepted_by_skopeo_and_umoci(out: Path, work: Path, every_layer_read: bool) -> None:
    """skopeo copies the output (verifying every blob); umoci unpacks it (verifying diff_ids too) when every
    layer was read, none is zstd (umoci 0.4.7 reads none) and the config says linux (the only OS it unpacks). A run that reads no layer copies them as they
    came, digests intact: what is inside them was not looked at, and umoci may refuse it."""
    skopeo = require_tool("skopeo", "skopeo")
    work.mkdir(exist_ok=True)
    copied = subprocess.run(
        [skopeo, "copy", "-q", f"oci-archive:{out}", f"dir:{work / 'copy'}"], capture_output=True, text=True
    )
    assert copied.returncode == 0, copied.stderr
    manifest = json.loads((work / "copy" / "manifest.json").read_text())
    try:
        config = json.loads((work / "copy" / manifest["config"]["digest"][7:]).read_bytes())
    except ValueError:  # an artifact's config need not be JSON
        config = None
    linux = isinstance(config, dict) and config.get("os") == "linux"  # umoci unpacks linux images only
    zstd = any("zstd" in str(layer.get("mediaType")) for layer in manifest["layers"])
    if every_layer_read and linux and not zstd:
        umoci = require_tool("umoci", "umoci")
        layout = work / "layout"
        with tarfile.open(out) as tar:
            tar.extractall(layout, filter="data")
        index = json.loads((layout / "index.json").read_text())
        index["manifests"] = [dict(index["manifests"][0], annotations={REF: "fuzz"})]
        (layout / "index.json").write_text(json.dumps(index))
        unpacked = subprocess.run(
            [umoci, "unpack", "--image", f"{layout}:fuzz", str(work / "bundle")],
            capture_output=True,
            text=True,
        )
        assert unpacked.returncode == 0, unpacked.stderr


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(mutant=mutated_archive(), flags=st.sampled_from(sorted(OPTION_SETS)))
def test_a_mutated_archive_gives_a_valid_image_or_a_documented_error(
    mutant: Mutant, flags: str, tmp_path: Path
) -> None:
    options = OPTION_SETS[flags]
    work = Path(tempfile.mkdtemp(dir=tmp_path))
    source = work / "in.tar"
    source.write_bytes(mutant.archive)
    out = work / "out.tar"
    try:
        report = optimize(str(source), str(out), options)
    except OptimizerError as error:
        event(f"exit {error.exit_code} {type(error).__name__}")
        assert isinstance(error, InputError | PassFailedError), error  # exit 3, or 4 under --strict
        assert str(error) and "\n" not in str(error).strip()
        assert not out.exists()
        assert [p.name for p in work.iterdir()] == ["in.tar"]
        return
    # umoci unpacks images whose layers were all read (an artifact or an unread layer is carried as it came)
    layers = [layer for image in report.images for layer in image.layers]
    read = bool(layers) and (
        options.strict or bool(options.passes) or all(x.status != "unchanged" for x in layers)
    )
    event("accepted, umoci too" if read else "accepted")
    _accepted_by_skopeo_and_umoci(out, work, read)


def test_the_unmutated_archive_is_accepted(tmp_path: Path) -> None:
    """The fuzzer's starting point is valid for every option set (else every mutation would fail)."""
    for codec in ("gzip", "zstd", "none"):
        source = write_tar(tmp_path / f"{codec}.tar", simple_image_files(codec))
        for number, options in enumerate(OPTION_SETS.values()):
            out = tmp_path / f"{codec}-{number}.tar"
            optimize(str(source), str(out), options)
            _accepted_by_skopeo_and_umoci(out, tmp_path / f"{codec}-{number}", True)


# An exception lost in a C callback ("Exception ignored ...") fails the test instead of passing as a warning.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
