"""Every image in ../shared/fixtures/images/: the valid ones round-trip, the broken ones give the documented error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from optimizer import Options, optimize
from optimizer.errors import DigestMismatchError, FormatError, InputError, LayerError, MissingBlobError

from .conftest import ROOT, fixture, require_tool
from .imagetools import Layout, sha256_file, tree_of, umoci_unpack

# Inputs that are images (tar or layout directory), relative to fixtures/images.
VALID = [
    "containers-image/almostempty.tar",
    "containers-image/oci-layout-shared-blobs-dir",
    "dive/test-docker-image.tar",
    "dive/test-kaniko-image.tar",
    "dive/test-oci-estargz-image.tar",
    "dive/test-oci-gzip-image.tar",
    "dive/test-oci-uncompressed-image.tar",
    "dive/test-oci-zstd-image.tar",
    "ggcr/hello-world-v25.tar",
    "ggcr/oci-layout-test_gc_image_unknown_mediatype",
    "ggcr/oci-layout-test_index_media_type",
    "ggcr/oci-layout-test_index_one_image",
    "ggcr/overwritten_file.tar",
    "ggcr/source_image_with_empty_layer_history.tar",
    "ggcr/test_bundle.tar",
    "ggcr/test_image_1.tar",
    "ggcr/test_image_2.tar",
    "ggcr/test_link.tar",
    "ggcr/whiteout_dir.tar",
    "ggcr/whiteout_image.tar",
    "imgutil/oci-layout-busybox",
    "imgutil/oci-layout-busybox-multi-platform",
    "imgutil/oci-layout-index-docker-media-type",
    "oras/hello-world-prefixed-path.tar",
    "oras/hello-world.tar",
    "osv-scalibr/overwrite-file.tar",
    "osv-scalibr/permissions.tar",
    "osv-scalibr/symlink-attack.tar",
    "osv-scalibr/symlink-cycle.tar",
    "osv-scalibr/symlink-dangling.tar",
    "osv-scalibr/symlink-depth-exceeded.tar",
    "osv-scalibr/symlinks.tar",
    "regclient/oci-layout-external",
    "regclient/oci-layout-testrepo",
    "stereoscope/oci-layout-multiplatform",
    "stereoscope/valid-oci.tar",
    "sylabs-oci-tools/hard-link-1",
    "sylabs-oci-tools/hard-link-2",
    "sylabs-oci-tools/hard-link-delete-1",
    "sylabs-oci-tools/hard-link-delete-2",
    "sylabs-oci-tools/hard-link-delete-3",
    "sylabs-oci-tools/hard-link-delete-4",
    "sylabs-oci-tools/hard-link-delete-xattr",
    "sylabs-oci-tools/hello-world-cosign-manifest",
    "sylabs-oci-tools/hello-world-cosign-manifest-list",
    "sylabs-oci-tools/hello-world-docker-v2-manifest",
    "sylabs-oci-tools/hello-world-docker-v2-manifest-list",
    "sylabs-oci-tools/many-layers",
    "sylabs-oci-tools/overlayfs-docker-v2-manifest",
    "sylabs-oci-tools/root-dir-entry",
    "sylabs-oci-tools/whiteout-explicit-dir",
    "sylabs-oci-tools/whiteout-explicit-file",
    "sylabs-oci-tools/whiteout-opaque",
    "sylabs-oci-tools/whiteout-opaque-end",
]

# Partial exports: an index names manifests (other platforms) whose blobs were not exported. Refused unless
# allow_partial (--allow-partial) carries the references over.
PARTIAL = {
    "containers-image/oci-layout-shared-blobs-dir",
    "ggcr/oci-layout-test_gc_image_unknown_mediatype",
    "imgutil/oci-layout-busybox-multi-platform",
    "imgutil/oci-layout-index-docker-media-type",
    "oras/hello-world-prefixed-path.tar",
    "oras/hello-world.tar",
}


def options(name: str, **fields: Any) -> Options:
    """The options of a test run on fixture ``name``: partial exports are carried over as they are."""
    return Options(allow_partial=name in PARTIAL, **fields)


# input -> (exception, words the message must contain)
BROKEN = {
    "distroless/static-debian11-rootfs.tar.gz": (FormatError, "neither index.json"),
    "ggcr/layer-content.tar": (FormatError, "neither index.json"),
    "ggcr/layer-content.tar.zst": (FormatError, "neither index.json"),
    "ggcr/no_manifest.tar": (FormatError, "neither index.json"),
    "ggcr/null_manifest.tar": (FormatError, "manifest.json must be a non-empty list"),
    "osv-scalibr/escape-layer.tar": (FormatError, "neither index.json"),
    "regclient/layer-wh.tar": (FormatError, "neither index.json"),
    "regclient/layer.tar": (FormatError, "neither index.json"),
    "sylabs-oci-tools/aufs-docker-v2-manifest": (DigestMismatchError, "sha256:6c9c1b8d1adb"),
    "imgutil/oci-layout-busybox-sparse": (MissingBlobError, "sha256:405fecb6a2fa"),
    # index.json names a Docker manifest with the media type application/vnd.oci.descriptor.v1+json
    "ggcr/oci-layout-test_index": (FormatError, "is named as 'application/vnd.oci.descriptor.v1+json'"),
    # Their layer blobs are placeholder text labelled tar+gzip: refused before anything is copied through.
    "containers-image/oci-layout-multiple-images": (
        LayerError,
        "layer 1/1 sha256:557ac7d133b7: the blob is a plain tar but its media type",
    ),
    "containers-image/oci-layout-two-identical-refs": (
        LayerError,
        "layer 1/1 sha256:0c8b263642b5: the blob is a plain tar but its media type",
    ),
}

# Single-image outputs with OCI media types at the top: what skopeo's oci-archive transport reads.
SKOPEO_READABLE = [
    "dive/test-docker-image.tar",
    "dive/test-kaniko-image.tar",
    "dive/test-oci-zstd-image.tar",
    "dive/test-oci-estargz-image.tar",
    "ggcr/hello-world-v25.tar",
    "ggcr/whiteout_dir.tar",
    "osv-scalibr/symlinks.tar",
    "stereoscope/valid-oci.tar",
    "stereoscope/oci-layout-multiplatform",
]

# Images whose trees umoci 0.4.7 unpacks (OCI manifests, gzip or plain tar layers: it reads neither Docker
# manifests nor zstd), for tree comparisons. The sylabs hardlink/whiteout cases have Docker manifests; their
# semantics are checked against umoci with images built in tests/test_filesystem.py.
UNPACKABLE = [
    "dive/test-docker-image.tar",
    "dive/test-kaniko-image.tar",
    "ggcr/whiteout_dir.tar",
    "ggcr/whiteout_image.tar",
    "ggcr/overwritten_file.tar",
    "osv-scalibr/symlinks.tar",
    "osv-scalibr/permissions.tar",
    "stereoscope/valid-oci.tar",
]


def image(name: str) -> Path:
    path = fixture(f"images/{name}")
    return path


def test_every_fixture_is_classified(fixtures: Path) -> None:
    images = fixture("images")
    present = {
        str(p.relative_to(images))
        for p in images.glob("*/*")
        if (p.is_dir() and (p / "index.json").exists()) or p.suffix in (".tar", ".gz", ".zst")
    }
    classified = set(VALID) | set(BROKEN)
    assert present - classified == set()


@pytest.mark.parametrize("name", VALID)
def test_empty_pipeline_keeps_every_layer_digest(name: str, tmp_path: Path) -> None:
    source = image(name)
    out = tmp_path / "out.tar"
    report = optimize(str(source), str(out), options(name, base="none", passes=()))
    assert out.exists()
    before = _layers_of_input(source, tmp_path)
    after = Layout(out).layer_digests()
    assert sorted(map(tuple, before)) == sorted(map(tuple, after))
    assert all(layer.status in ("unchanged", "kept") for i in report.images for layer in i.layers)
    if Path(source).is_dir() or "index.json" in Layout(source).files:
        # An OCI input with nothing to change keeps its index.json byte for byte.
        assert report.index_digest_before == report.index_digest_after


def _layers_of_input(source: Path, tmp_path: Path) -> list[list[str]]:
    layout = Layout(source)
    if "index.json" in layout.files and json.loads(layout.files["index.json"]).get("manifests"):
        return layout.layer_digests()
    # docker save: layers are the files manifest.json names, their digest is their sha256
    import hashlib

    out = []
    for entry in json.loads(layout.files["manifest.json"]):
        digests = []
        for name in entry["Layers"]:
            data = layout.files.get(name)
            if data is None:  # de-duplicated through a symlink member
                import tarfile

                with tarfile.open(source) as tar:
                    member = tar.getmember(name)
                    target = os.path.normpath(os.path.join(os.path.dirname(name), member.linkname))
                    data = layout.files[target]
            digests.append("sha256:" + hashlib.sha256(data).hexdigest())
        out.append(digests)
    return out


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_inputs_give_the_documented_error(name: str, tmp_path: Path) -> None:
    error_type, words = BROKEN[name]
    out = tmp_path / "out.tar"
    with pytest.raises(error_type) as caught:
        optimize(str(image(name)), str(out), Options(base="none", passes=()))
    assert words in str(caught.value)
    assert name.split("/")[-1] in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_broken_input_exit_code_and_no_output(tmp_path: Path) -> None:
    out = tmp_path / "out.tar"
    result = subprocess.run(
        [sys.executable, "-m", "optimizer", str(image("sylabs-oci-tools/aufs-docker-v2-manifest")), str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == InputError.exit_code
    assert "does not match" in result.stderr or "larger than its declared size" in result.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def _run_cli(args: list[str], env: dict[str, str], umask: int) -> subprocess.CompletedProcess[str]:
    def set_umask() -> None:
        os.umask(umask)

    return subprocess.run(
        [sys.executable, "-m", "optimizer", *args],
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=set_umask,
        cwd=ROOT,
    )


@pytest.mark.parametrize(
    "name",
    [
        "dive/test-docker-image.tar",
        "stereoscope/oci-layout-multiplatform",
        "sylabs-oci-tools/hard-link-delete-4",
    ],
)
def test_two_runs_are_byte_identical_under_any_tz_umask_locale(name: str, tmp_path: Path) -> None:
    outputs = []
    for number, (tz, umask, lang) in enumerate((("UTC", 0o022, "C.UTF-8"), ("Asia/Kathmandu", 0o077, "C"))):
        env = dict(os.environ, TZ=tz, LANG=lang, LC_ALL=lang)
        out = tmp_path / f"out{number}.tar"
        result = _run_cli([str(image(name)), str(out), "--normalize", "-q"], env, umask)
        assert result.returncode == 0, result.stderr
        outputs.append(sha256_file(out))
    assert outputs[0] == outputs[1]


def test_source_date_epoch_clamps_and_is_recorded(tmp_path: Path) -> None:
    env = dict(os.environ, SOURCE_DATE_EPOCH="1000000000")
    out = tmp_path / "out.tar"
    result = _run_cli(
        [str(image("dive/test-docker-image.tar")), str(out), "--normalize", "--base", "none", "-q"],
        env,
        0o022,
    )
    assert result.returncode == 0, result.stderr
    import tarfile

    layout = Layout(out)
    for _, manifest in layout.manifests():
        config = layout.json(manifest["config"]["digest"])
        assert config["created"] == "2001-09-09T01:46:40Z"
        for layer in manifest["layers"]:
            import io

            with tarfile.open(fileobj=io.BytesIO(layout.blob(layer["digest"]))) as tar:
                assert all(member.mtime <= 1_000_000_000 for member in tar)


def _schema_validators(fixtures: Path) -> dict[str, object]:
    from jsonschema import Draft4Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT4

    directory = fixture("oci-schema/v1.1.1")
    for needed in ("image-layout-schema.json", "image-index-schema.json", "image-manifest-schema.json",
                   "config-schema.json"):  # fmt: skip
        fixture(f"oci-schema/v1.1.1/{needed}")  # absent: missing(), not a KeyError in the test
    registry: Registry = Registry()
    schemas = {}
    for file in directory.glob("*.json"):
        schema = json.loads(file.read_text())
        schemas[file.name] = schema
        resource = Resource.from_contents(schema, default_specification=DRAFT4)
        for base in ("https://opencontainers.org/schema/", "https://opencontainers.org/schema/image/"):
            registry = registry.with_resource(base + file.name, resource)
    return {name: Draft4Validator(schema, registry=registry) for name, schema in schemas.items()}


@pytest.mark.parametrize("name", VALID)
def test_output_validates_against_the_oci_schemas(name: str, tmp_path: Path, fixtures: Path) -> None:
    validators = _schema_validators(fixtures)
    out = tmp_path / "out.tar"
    optimize(str(image(name)), str(out), options(name, base="none", normalize=True))
    layout = Layout(out)
    original = Layout(image(name))
    validators["image-layout-schema.json"].validate(json.loads(layout.files["oci-layout"]))  # type: ignore[attr-defined]
    validators["image-index-schema.json"].validate(layout.index)  # type: ignore[attr-defined]
    for _, manifest in layout.manifests():
        validators["image-manifest-schema.json"].validate(manifest)  # type: ignore[attr-defined]
        if manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json":
            config_blob = "blobs/" + manifest["config"]["digest"].replace(":", "/")
            if config_blob in layout.files and config_blob not in original.files:  # one we wrote
                validators["config-schema.json"].validate(json.loads(layout.files[config_blob]))  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", SKOPEO_READABLE)
def test_skopeo_inspects_and_copies_the_output(name: str, tmp_path: Path) -> None:
    skopeo = require_tool("skopeo", "skopeo")
    out = tmp_path / "out.tar"
    optimize(str(image(name)), str(out), Options(base="none", normalize=True))
    inspected = subprocess.run([skopeo, "inspect", f"oci-archive:{out}"], capture_output=True, text=True)
    assert inspected.returncode == 0, inspected.stderr
    layers = json.loads(inspected.stdout)["Layers"]
    assert layers == Layout(out).layer_digests()[0] or len(Layout(out).layer_digests()) > 1
    copied = subprocess.run(
        [skopeo, "copy", "-q", f"oci-archive:{out}", f"oci:{tmp_path / 'copy'}:x"],
        capture_output=True,
        text=True,
    )
    assert copied.returncode == 0, copied.stderr


@pytest.mark.parametrize("name", UNPACKABLE)
def test_umoci_unpacks_the_same_tree_before_and_after(name: str, tmp_path: Path) -> None:
    require_tool("umoci", "umoci")
    repacked = tmp_path / "repacked.tar"  # same layer bytes as the input, in an OCI archive umoci can open
    optimize(str(image(name)), str(repacked), Options(base="none", passes=()))
    normalized = tmp_path / "normalized.tar"
    optimize(str(image(name)), str(normalized), Options(base="none", passes=(), normalize=True))
    before = tree_of(umoci_unpack(repacked, tmp_path, "before"))
    after = tree_of(umoci_unpack(normalized, tmp_path, "after"))
    assert before == after


def test_hybrid_docker_25_archive_keeps_repo_tags(tmp_path: Path) -> None:
    out = tmp_path / "out.tar"
    optimize(str(image("ggcr/test_bundle.tar")), str(out), Options(base="none", passes=()))
    docker = json.loads(Layout(out).files["manifest.json"])
    tags = sorted(tag for entry in docker for tag in entry["RepoTags"])
    assert len(docker) == 2 and len(tags) >= 2


def test_partial_multi_platform_export_warns_for_each_missing_manifest(tmp_path: Path) -> None:
    report = optimize(
        str(image("oras/hello-world.tar")),
        str(tmp_path / "out.tar"),
        Options(base="none", passes=(), allow_partial=True),
    )
    missing = [w for w in report.warnings if "missing from the input" in w]
    assert len(missing) == 10 and any("linux/arm64" in w for w in missing)


@pytest.mark.parametrize("name", sorted(PARTIAL))
def test_partial_export_is_refused_without_allow_partial(name: str, tmp_path: Path) -> None:
    with pytest.raises(MissingBlobError, match=r"missing from the input.*--allow-partial"):
        optimize(str(image(name)), str(tmp_path / "out.tar"), Options(passes=()))
    assert list(tmp_path.iterdir()) == []


def test_artifacts_and_signatures_are_carried_untouched(tmp_path: Path) -> None:
    source = image("sylabs-oci-tools/hello-world-cosign-manifest-list")
    out = tmp_path / "out.tar"
    report = optimize(str(source), str(out), Options(base="none", passes=(), normalize=True))
    assert report.carried, "cosign signatures and attestations are carried over"
    layout = Layout(out)
    original = Layout(source)
    for name, data in original.files.items():
        if name.startswith("blobs/") and b"cosign" in data[:4096] and b"layers" in data:
            assert layout.files[name] == data
    assert any("signature" in w for w in report.warnings)


@pytest.mark.parametrize(
    "name",
    [
        "osv-scalibr/symlink-attack.tar",
        "osv-scalibr/symlinks.tar",
        "osv-scalibr/symlink-cycle.tar",
        "osv-scalibr/symlink-depth-exceeded.tar",
        "osv-scalibr/symlink-dangling.tar",
        "osv-scalibr/permissions.tar",
    ],
)
def test_hostile_images_write_nothing_outside_the_work_directory(name: str, tmp_path: Path) -> None:
    sandbox = tmp_path / "sandbox"
    work = sandbox / "work"
    work.mkdir(parents=True)
    outside_before = sorted(p.name for p in tmp_path.parent.iterdir())
    out = sandbox / "out.tar"
    optimize(str(image(name)), str(out), Options(base="none", normalize=True, workdir=str(work)))
    assert sorted(str(p.relative_to(sandbox)) for p in sandbox.rglob("*")) == ["out.tar", "work"]
    assert sorted(p.name for p in tmp_path.parent.iterdir()) == outside_before
    for suspicious in (Path("/secret.txt"), Path("/tmp/secret.txt"), tmp_path.parent / "secret.txt"):
        assert not suspicious.exists()


def test_escape_layer_inside_an_image_is_neutralised(tmp_path: Path, fixtures: Path) -> None:
    import hashlib

    from optimizer.output import canonical_json

    layer = fixture("images/osv-scalibr/escape-layer.tar").read_bytes()
    digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = canonical_json(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [digest]},
            "config": {},
        }
    )
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
                "size": len(config),
            },
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": len(layer)}
            ],
        }
    )
    layout = tmp_path / "layout"
    (layout / "blobs/sha256").mkdir(parents=True)
    for data in (layer, config, manifest):
        (layout / "blobs/sha256" / hashlib.sha256(data).hexdigest()).write_bytes(data)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (layout / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": "sha256:" + hashlib.sha256(manifest).hexdigest(),
                        "size": len(manifest),
                    }
                ],
            }
        )
    )
    out = tmp_path / "out.tar"
    report = optimize(str(layout), str(out), Options(base="none", normalize=True, workdir=str(tmp_path)))
    assert any("neutralised" in w for i in report.images for w in i.warnings)
    import io
    import tarfile

    written = Layout(out)
    ((_, new_manifest),) = written.manifests()
    with tarfile.open(fileobj=io.BytesIO(written.blob(new_manifest["layers"][0]["digest"]))) as tar:
        for member in tar:
            assert not member.name.startswith("/") and ".." not in member.name.split("/")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layout", "out.tar"]
