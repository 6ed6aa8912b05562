"""Base detection: each rule decides the layers that stay byte-identical, the report says which, and the warm
node's pull never grows under the default run."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pytest

from optimizer import Options, optimize
from optimizer.base import history_base, provenance_materials
from optimizer.mediatypes import OCI_CONFIG, OCI_INDEX, OCI_LAYER_ZSTD, OCI_MANIFEST
from optimizer.output import CompressionSpec, LayerWriter, canonical_json, write_oci_archive
from optimizer.registry import RegistryAccess

from .imagetools import Layout, build_image, entry
from .registry_fixtures import RunningRegistry, registry, skopeo_copy

__all__ = ["registry"]  # the fixture, imported for pytest

DAY = "2024-01-01T00:00:00Z"
LATER = "2024-03-01T00:00:00Z"


def cmd(at: str = DAY) -> dict[str, Any]:
    return {"created": at, "created_by": '/bin/sh -c #(nop)  CMD ["bash"]', "empty_layer": True}


def step(text: str, at: str = LATER) -> dict[str, Any]:
    return {"created": at, "created_by": text}


@pytest.mark.parametrize(
    ("history", "layers", "expected"),
    [
        ([step("ADD rootfs /", DAY), cmd(), step("RUN apt-get install x"), step("COPY . /app")], 3, 1),
        # two bases deep: the last CMD that layer-creating steps follow ends the base
        ([step("ADD /", DAY), cmd(), step("RUN a", DAY), cmd(), step("COPY app /")], 3, 2),
        # a CMD at the end (the app's own) does not end a base
        ([step("ADD /", DAY), step("COPY app /", DAY), cmd()], 2, None),
        # no CMD: the last jump of more than an hour in created between layers
        ([step("ADD /", DAY), step("RUN b", DAY), step("COPY app /"), step("COPY more /")], 4, 2),
        # the history does not describe every layer: it decides nothing
        ([step("ADD /", DAY), cmd(), step("COPY app /")], 3, None),
        ([step("ADD /", DAY), step("COPY app /", DAY)], 2, None),
    ],
)
def test_history_rule(history: list[dict[str, Any]], layers: int, expected: int | None) -> None:
    found = history_base({"history": history}, layers)
    assert (found[0] if found else None) == expected


def test_provenance_materials_v02_and_v1() -> None:
    v02 = {
        "predicate": {
            "materials": [
                {"uri": "pkg:docker/docker/dockerfile@1.5", "digest": {"sha256": "a" * 64}},
                {
                    "uri": "pkg:docker/127.0.0.1%3A5000/base@v1?platform=linux%2Famd64",
                    "digest": {"sha256": "b" * 64},
                },
                {"uri": "https://example.com/x.tar.gz", "digest": {"sha256": "c" * 64}},
            ]
        }
    }
    v1 = {
        "predicate": {
            "buildDefinition": {
                "resolvedDependencies": [{"uri": "pkg:docker/debian@12", "digest": {"sha256": "d" * 64}}]
            }
        }
    }
    assert provenance_materials(v02) == [
        ("docker/dockerfile", "sha256:" + "a" * 64),
        ("127.0.0.1:5000/base", "sha256:" + "b" * 64),
    ]
    assert provenance_materials(v1) == [("debian", "sha256:" + "d" * 64)]
    assert provenance_materials({"predicate": "nonsense"}) == []


BASE_LAYER = [
    entry("etc/os-release", data=b"ID=test\n"),
    entry("var/lib/dpkg/status", data=b"Package: a\n" * 50),
]


def fleet_member(path: Path, app: bytes, **more: Any) -> Path:
    """An image on BASE_LAYER whose package layer replaces the base's dpkg status (dead data below)."""
    return build_image(
        path,
        [BASE_LAYER, [entry("var/lib/dpkg/status", data=b"Package: b\n" * 60)], [entry("app", data=app)]],
        config_extra={
            "history": [step("ADD base /", DAY), cmd(), step("RUN apt-get install b"), step("COPY app /")]
        },
        **more,
    )


def test_default_keeps_the_base_and_never_grows_the_warm_pull(tmp_path: Path) -> None:
    image = fleet_member(tmp_path / "in.tar", b"app\n" * 1000)
    out = tmp_path / "out.tar"
    report = optimize(str(image), str(out), Options(skip=("inject",)))
    (image_report,) = report.images
    assert image_report.base["rule"] == "history" and image_report.base["protected"] == 1
    assert Layout(out).layer_digests()[0][0] == Layout(image).layer_digests()[0][0]
    assert report.pull.warm_after <= report.pull.warm_before
    dead = next(p for p in image_report.passes if p.name == "dead-data")
    assert any(f.action == "reclaimable" for f in dead.findings), (
        "the base's dead data is reported, not taken"
    )

    opted_out = optimize(str(image), str(tmp_path / "none.tar"), Options(base="none", skip=("inject",)))
    (none_report,) = opted_out.images
    assert none_report.base["protected"] == 0 and none_report.base["rule"] == "history"
    assert Layout(tmp_path / "none.tar").layer_digests()[0][0] != Layout(image).layer_digests()[0][0]
    assert opted_out.pull.warm_after > opted_out.pull.warm_before, "a rewritten base is pulled again"


def test_explicit_rules_win_in_order(tmp_path: Path) -> None:
    base = build_image(tmp_path / "base.tar", [BASE_LAYER, [entry("usr/bin/tool", data=b"t" * 100)]])
    image = fleet_member(tmp_path / "in.tar", b"app\n")
    # --base: the image starts with base.tar's first layer only, so base.tar does not match; it looks further
    report = optimize(str(image), None, Options(base=str(base), dry_run=True))
    (image_report,) = report.images
    assert image_report.base["rule"] == "history"
    assert any("does not start with the layers of --base" in w for w in image_report.warnings)
    two = build_image(
        tmp_path / "two.tar", [BASE_LAYER, [entry("var/lib/dpkg/status", data=b"Package: b\n" * 60)]]
    )
    report = optimize(str(image), None, Options(base=str(two), dry_run=True))
    assert report.images[0].base == {
        "layers": 2,
        "protected": 2,
        "rule": "--base",
        "detail": f"the first 2 layers are {two}'s",
    }
    report = optimize(str(image), None, Options(base_layers=3, dry_run=True))
    assert report.images[0].base["rule"] == "--base-layers" and report.images[0].base["protected"] == 3


def test_first_layer_when_nothing_decides(tmp_path: Path) -> None:
    image = build_image(tmp_path / "in.tar", [BASE_LAYER, [entry("app", data=b"x")]])
    report = optimize(str(image), None, Options(dry_run=True))
    assert report.images[0].base["rule"] == "first-layer" and report.images[0].base["protected"] == 1


def test_annotation_names_a_base_in_the_same_input(tmp_path: Path) -> None:
    base = build_image(tmp_path / "base.tar", [BASE_LAYER])
    base_digest = Layout(base).manifests()[0][0]
    layers = [BASE_LAYER, [entry("app", data=b"a")], [entry("more", data=b"m")]]
    image = build_image(
        tmp_path / "image.tar",
        layers,
        manifest_annotations={"org.opencontainers.image.base.digest": base_digest},
    )
    both = _merge_archives(tmp_path / "both.tar", [base, image])
    report = optimize(str(both), None, Options(dry_run=True))
    (ours,) = [i for i in report.images if i.manifest_before == Layout(image).manifests()[0][0]]
    assert ours.base["rule"] == "annotation" and ours.base["protected"] == 1


def test_annotation_and_provenance_are_read_from_the_registry(
    registry: RunningRegistry, tmp_path: Path
) -> None:
    """docker:// inputs: the base named by annotation or by a provenance material is fetched from its
    registry to learn its layers (two layers here, so neither history nor first-layer could decide)."""
    base_layers = [BASE_LAYER, [entry("usr/lib/libbase.so", data=b"L" * 500)]]
    base = build_image(tmp_path / "base.tar", base_layers)
    base_ref = _push(base, registry, "bases/two:v1")
    base_digest = Layout(base).manifests()[0][0]
    layers = [*base_layers, [entry("app", data=b"a" * 100)]]
    annotated = build_image(
        tmp_path / "annotated.tar",
        layers,
        manifest_annotations={
            "org.opencontainers.image.base.digest": base_digest,
            "org.opencontainers.image.base.name": f"{registry.host}/bases/two:v1",
        },
    )
    source = _push(annotated, registry, "apps/annotated:v1")
    access = RegistryAccess(src_insecure=True, dest_insecure=True)
    report = optimize(source, None, Options(dry_run=True, registry=access))
    assert report.images[0].base["rule"] == "annotation" and report.images[0].base["protected"] == 2

    attested = _with_provenance(
        tmp_path / "attested.tar", build_image(tmp_path / "plain.tar", layers), base_ref, base_digest
    )
    source = _push(attested, registry, "apps/attested:v1")
    report = optimize(source, None, Options(dry_run=True, registry=access))
    image = next(
        i for i in report.images if i.manifest_before == Layout(tmp_path / "plain.tar").manifests()[0][0]
    )
    assert image.base["rule"] == "provenance" and image.base["protected"] == 2
    assert image.base["detail"].startswith(f"BuildKit provenance material {registry.host}/bases/two")


def test_a_rewrite_that_is_not_smaller_keeps_the_layer(tmp_path: Path) -> None:
    """A zstd:19 layer where compressed-duplicates removes a small twin: rewritten at our zstd level 3 it would
    be larger, so it keeps its own bytes and says why; an explicit --compression choice is honoured."""
    words = b" ".join(
        b"%d-%s" % (i, hashlib.sha256(b"%d" % (i % 997)).hexdigest()[:12].encode()) for i in range(20000)
    )
    text = b"\n".join(words[i : i + 80] for i in range(0, len(words), 80))
    image = _one_layer_image(
        tmp_path / "in.tar",
        [("app/words.txt", text), ("app/note.txt", b"n" * 40), ("app/note.txt.gz", _gz(b"n" * 40))],
    )
    options = Options(base="none", passes=("compressed-duplicates",))
    report = optimize(str(image), str(tmp_path / "out.tar"), options)
    (layer,) = report.images[0].layers
    assert layer.status == "reverted" and layer.digest_after == layer.digest_before
    assert any("keeps its own bytes" in w for w in report.images[0].warnings)
    assert Layout(tmp_path / "out.tar").layer_digests() == Layout(image).layer_digests()

    chosen = optimize(
        str(image),
        str(tmp_path / "gz.tar"),
        Options(base="none", passes=("compressed-duplicates",), compression=CompressionSpec.parse("gzip")),
    )
    assert chosen.images[0].layers[0].status == "rewritten"


def _one_layer_image(path: Path, files: list[tuple[str, bytes]]) -> Path:
    """A one-layer OCI archive whose layer is zstd:19 (as some build tools write them)."""
    layer_path = path.parent / "layer.zst"
    writer = LayerWriter(str(layer_path), CompressionSpec.parse("zstd:19"), None)
    for name, data in files:
        item, content = entry(name, data=data)
        writer.add(item, io.BytesIO(content or b""))
    blob = writer.close()
    config = canonical_json(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [blob.diff_id]},
            "history": [step("COPY app /")],
        }
    )
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER_ZSTD, "digest": blob.digest, "size": blob.size}],
        }
    )
    manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    blobs = {
        blob.digest: (blob.digest, blob.size, lambda: open(layer_path, "rb")),  # noqa: SIM115
        config_digest: (config_digest, len(config), lambda: io.BytesIO(config)),
        manifest_digest: (manifest_digest, len(manifest), lambda: io.BytesIO(manifest)),
    }
    index = canonical_json(
        {
            "schemaVersion": 2,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": manifest_digest, "size": len(manifest)}],
        }
    )
    write_oci_archive(str(path), index, None, blobs)
    return path


def _push(archive: Path, registry: RunningRegistry, name: str) -> str:
    destination = f"docker://{registry.host}/{name}"
    skopeo_copy(f"oci-archive:{archive}", destination)
    return destination


def _gz(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data, compresslevel=9, mtime=0)


def _merge_archives(path: Path, archives: list[Path]) -> Path:
    """One OCI archive holding the images of several (their blobs and root entries)."""
    blobs: dict[str, Any] = {}
    manifests: list[Any] = []
    for archive in archives:
        layout = Layout(archive)
        for name, data in layout.files.items():
            if name.startswith("blobs/"):
                digest = name[len("blobs/") :].replace("/", ":")
                blobs[digest] = (digest, len(data), (lambda d=data: io.BytesIO(d)))
        manifests.extend(layout.index["manifests"])
    index = canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})
    write_oci_archive(str(path), index, None, blobs)
    return path


def _with_provenance(path: Path, image: Path, base_ref: str, base_digest: str) -> Path:
    """``image`` under an index with a BuildKit-style provenance attestation naming ``base_ref`` as material."""
    layout = Layout(image)
    ((image_digest, _),) = layout.manifests()
    blobs = {}
    for name, data in layout.files.items():
        if name.startswith("blobs/"):
            digest = name[len("blobs/") :].replace("/", ":")
            blobs[digest] = (digest, len(data), (lambda d=data: io.BytesIO(d)))

    def add(data: bytes) -> dict[str, Any]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = (digest, len(data), (lambda d=data: io.BytesIO(d)))
        return {"digest": digest, "size": len(data)}

    name = base_ref.removeprefix("docker://").rsplit(":", 1)[0]
    statement = json.dumps(
        {
            "_type": "https://in-toto.io/Statement/v0.1",
            "predicateType": "https://slsa.dev/provenance/v0.2",
            "subject": [{"name": "x", "digest": {"sha256": image_digest[7:]}}],
            "predicate": {
                "materials": [
                    {"uri": "pkg:docker/docker/dockerfile@1.5", "digest": {"sha256": "e" * 64}},
                    {
                        "uri": f"pkg:docker/{name}@v1?platform=linux%2Famd64",
                        "digest": {"sha256": base_digest[7:]},
                    },
                ]
            },
        }
    ).encode()
    config = add(b"{}")
    layer = add(statement)
    attestation = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, **config},
            "layers": [
                {
                    "mediaType": "application/vnd.in-toto+json",
                    **layer,
                    "annotations": {"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"},
                }
            ],
        }
    )
    image_size = len(layout.blob(image_digest))
    index = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": image_digest,
                    "size": image_size,
                    "platform": {"os": "linux", "architecture": "amd64"},
                },
                {
                    "mediaType": OCI_MANIFEST,
                    **add(attestation),
                    "platform": {"os": "unknown", "architecture": "unknown"},
                    "annotations": {
                        "vnd.docker.reference.type": "attestation-manifest",
                        "vnd.docker.reference.digest": image_digest,
                    },
                },
            ],
        }
    )
    index_entry = add(index)
    root = canonical_json(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [{"mediaType": OCI_INDEX, **index_entry}]}
    )
    write_oci_archive(str(path), root, None, blobs)
    return path
