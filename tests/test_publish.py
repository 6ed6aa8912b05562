"""``--publish gzip+zstd``: one index, the gzip image first and its zstd twin second, the same config, the base
layers shared as they are; skopeo takes the gzip image (first platform match) and umoci unpacks what skopeo
took; pushed to a real registry, the tag names the index."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
import zstandard

from optimizer import Options, optimize
from optimizer.errors import UsageError
from optimizer.mediatypes import OCI_INDEX, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, Compression
from optimizer.output import CompressionSpec
from optimizer.registry.access import RegistryAccess
from optimizer.settings import from_mapping

from .conftest import require_tool
from .imagetools import Layout, build_image, entry, tree_of, umoci_unpack
from .registry_fixtures import RunningRegistry, registry, skopeo_copy, skopeo_inspect_raw  # noqa: F401

PUBLISH = Options(passes=(), publish="gzip+zstd", base_layers=1, workers=1)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return build_image(
        tmp_path / "in.tar",
        [
            [entry("etc/os-release", data=b"ID=test\n" * 50)],
            [
                entry("app/run", data=b"#!/bin/sh\necho hi\n" * 500),
                entry("app/data", data=bytes(range(256)) * 64),
            ],
        ],
    )


def _twins(layout: Layout) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    (root,) = layout.index["manifests"]
    assert root["mediaType"] == OCI_INDEX
    assert root["annotations"] == {"org.opencontainers.image.ref.name": "latest"}
    index = layout.json(root["digest"])
    return index, [layout.json(child["digest"]) for child in index["manifests"]]


def test_the_index_lists_the_gzip_image_then_its_zstd_twin(image: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.tar"
    report = optimize(str(image), str(out), PUBLISH)
    layout = Layout(out)
    index, (gzip_image, zstd_image) = _twins(layout)
    first, second = index["manifests"]
    assert first["platform"] == second["platform"] == {"architecture": "amd64", "os": "linux"}
    assert second["annotations"] == {"io.github.containers.compression.zstd": "true"}
    assert report.images[0].zstd_manifest == second["digest"]
    assert gzip_image["config"]["digest"] == zstd_image["config"]["digest"]  # zstd keeps every diff_id
    base, upper = gzip_image["layers"], zstd_image["layers"]
    assert base[0]["digest"] == upper[0]["digest"] == Layout(image).layer_digests()[0][0]  # base shared
    assert [layer["mediaType"] for layer in upper] == [OCI_LAYER_GZIP, OCI_LAYER_ZSTD]
    diff_ids = layout.json(zstd_image["config"]["digest"])["rootfs"]["diff_ids"]
    raw = zstandard.ZstdDecompressor().stream_reader(layout.blob(upper[1]["digest"])).read()
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == diff_ids[1]
    again = tmp_path / "again.tar"
    optimize(str(image), str(again), PUBLISH)
    assert again.read_bytes() == out.read_bytes()


def test_skopeo_takes_the_gzip_image_and_umoci_unpacks_it(image: Path, tmp_path: Path) -> None:
    require_tool("skopeo", "skopeo")
    require_tool("umoci", "umoci")
    out = tmp_path / "out.tar"
    optimize(str(image), str(out), PUBLISH)
    _, (gzip_image, _) = _twins(Layout(out))
    copied = tmp_path / "copied"
    skopeo_copy(f"oci-archive:{out}", f"oci:{copied}:latest", all_images=False)
    (chosen,) = json.loads((copied / "index.json").read_text())["manifests"]
    manifest = json.loads((copied / "blobs" / "sha256" / chosen["digest"][7:]).read_bytes())
    assert [layer["digest"] for layer in manifest["layers"]] == [
        layer["digest"] for layer in gzip_image["layers"]
    ]
    archive = tmp_path / "copied.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(copied, arcname=".")
    assert tree_of(umoci_unpack(archive, tmp_path, "gzip")) == tree_of(umoci_unpack(image, tmp_path, "input"))


def test_pushed_to_a_registry_the_tag_names_the_index(
    image: Path,
    tmp_path: Path,
    registry: RunningRegistry,  # noqa: F811
) -> None:
    destination = f"docker://{registry.host}/publish/app:v1"
    access = RegistryAccess(src_insecure=True, dest_insecure=True)
    optimize(str(image), destination, Options(publish="gzip+zstd", base_layers=1, registry=access))
    index = json.loads(skopeo_inspect_raw(destination))
    assert index["mediaType"] == OCI_INDEX
    assert [m.get("annotations", {}) for m in index["manifests"]] == [
        {},
        {"io.github.containers.compression.zstd": "true"},
    ]
    pulled = tmp_path / "pulled"
    skopeo_copy(destination, f"oci:{pulled}:v1", all_images=False)
    (chosen,) = json.loads((pulled / "index.json").read_text())["manifests"]
    assert chosen["digest"] == index["manifests"][0]["digest"]  # an old client's pick: the gzip image


def test_a_service_rule_can_ask_for_it() -> None:
    options = from_mapping(Options, {"publish": "gzip+zstd", "squash": True}, "rules[0].options")
    assert options.publish == "gzip+zstd"
    with pytest.raises(UsageError):
        from_mapping(Options, {"publish": "brotli"}, "rules[0].options")


def test_the_gzip_image_must_be_gzip(image: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="must be gzip"):
        optimize(
            str(image),
            str(tmp_path / "o.tar"),
            Options(publish="gzip+zstd", compression=CompressionSpec(Compression.ZSTD)),
        )
