"""Helpers for tests: build small OCI images from entry lists, read outputs independently of the library."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from optimizer.mediatypes import OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_MANIFEST
from optimizer.model import Entry, EntryKind
from optimizer.output import CompressionSpec, LayerWriter, canonical_json, write_oci_archive

LayerSpec = Sequence[tuple[Entry, bytes | None]]


def entry(
    path: str, kind: EntryKind = EntryKind.FILE, data: bytes = b"", **fields: Any
) -> tuple[Entry, bytes | None]:
    defaults: dict[str, Any] = {"mode": 0o755 if kind is EntryKind.DIR else 0o644, "mtime": 1_600_000_000}
    defaults.update(fields)
    size = len(data) if kind is EntryKind.FILE else 0
    return Entry(path, kind, size=size, **defaults), (data if kind is EntryKind.FILE else None)


def build_image(
    path: Path,
    layers: Sequence[LayerSpec],
    config_extra: dict[str, Any] | None = None,
    manifest_annotations: dict[str, str] | None = None,
    gzip_level: int | None = None,
) -> Path:
    """Write an OCI archive with the given layers (gzip, at ``gzip_level`` when given), one linux/amd64 image,
    tag ``test:latest``."""
    workdir = path.parent / (path.name + ".parts")
    workdir.mkdir(parents=True, exist_ok=True)
    blobs: dict[str, Any] = {}
    descriptors = []
    diff_ids = []
    for number, files in enumerate(layers):
        layer_path = str(workdir / f"layer{number}")
        writer = LayerWriter(layer_path, CompressionSpec(level=gzip_level), None)
        for item, data in files:
            writer.add(item, io.BytesIO(data) if data is not None else None)
        blob = writer.close()
        blobs[blob.digest] = (blob.digest, blob.size, (lambda p=layer_path: open(p, "rb")))  # noqa: SIM115
        descriptors.append({"mediaType": OCI_LAYER_GZIP, "digest": blob.digest, "size": blob.size})
        diff_ids.append(blob.diff_id)
    config: dict[str, Any] = {
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [
            {"created": "2024-01-01T00:00:00Z", "created_by": f"layer {i}"} for i in range(len(layers))
        ],
    }
    config.update(config_extra or {})
    config_bytes = canonical_json(config)
    config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": descriptors,
    }
    if manifest_annotations:
        manifest["annotations"] = manifest_annotations
    manifest_bytes = canonical_json(manifest)
    manifest_digest = "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
    for data, digest in ((config_bytes, config_digest), (manifest_bytes, manifest_digest)):
        blobs[digest] = (digest, len(data), (lambda d=data: io.BytesIO(d)))
    index = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": manifest_digest,
                    "size": len(manifest_bytes),
                    "annotations": {"org.opencontainers.image.ref.name": "latest"},
                }
            ],
        }
    )
    write_oci_archive(str(path), index, None, blobs)
    return path


class Layout:
    """An OCI archive or layout directory read with tarfile/json only (not with the library under test)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.files: dict[str, bytes] = {}
        if path.is_dir():
            for root, _dirs, names in os.walk(path):
                for name in names:
                    full = Path(root) / name
                    self.files[str(full.relative_to(path))] = full.read_bytes()
        else:
            with tarfile.open(path) as tar:
                for member in tar:
                    if member.isfile():
                        reader = tar.extractfile(member)
                        assert reader is not None
                        name = member.name[2:] if member.name.startswith("./") else member.name
                        self.files[name] = reader.read()

    def blob(self, digest: str) -> bytes:
        return self.files["blobs/" + digest.replace(":", "/")]

    def json(self, digest: str) -> Any:
        return json.loads(self.blob(digest))

    @property
    def index(self) -> Any:
        return json.loads(self.files["index.json"])

    def manifests(self) -> list[tuple[str, Any]]:
        """Every image manifest reachable from index.json whose blob is present: (digest, manifest)."""
        out: list[tuple[str, Any]] = []
        pending = [d for d in self.index.get("manifests") or []]
        seen = set()
        while pending:
            descriptor = pending.pop(0)
            digest = descriptor["digest"]
            if digest in seen or "blobs/" + digest.replace(":", "/") not in self.files:
                continue
            seen.add(digest)
            document = self.json(digest)
            if "manifests" in document:
                pending.extend(document["manifests"])
            elif "layers" in document:
                out.append((digest, document))
        return out

    def layer_digests(self) -> list[list[str]]:
        return [[layer["digest"] for layer in manifest["layers"]] for _, manifest in self.manifests()]

    def merged_files(self) -> dict[str, bytes]:
        """path -> bytes of every regular file the first image shows, its layers applied naively in order
        (whiteouts delete, nothing else is interpreted)."""
        (_, manifest), *_ = self.manifests()
        files: dict[str, bytes] = {}
        for layer in manifest["layers"]:
            with tarfile.open(fileobj=io.BytesIO(self.blob(layer["digest"]))) as tar:
                for member in tar:
                    name = member.name.removeprefix("./")
                    if "/.wh." in "/" + name:
                        files.pop(name.replace(".wh.", ""), None)
                    elif member.isfile():
                        reader = tar.extractfile(member)
                        assert reader is not None
                        files[name] = reader.read()
        return files


def oci_layout_of(archive: Path, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        tar.extractall(directory, filter="data")
    return directory


def tree_of(rootfs: Path) -> dict[str, tuple[Any, ...]]:
    """path -> (type, mode, uid, gid, content digest or link target) for every path under rootfs."""
    out: dict[str, tuple[Any, ...]] = {}
    for root, dirs, files in os.walk(rootfs):
        for name in [*dirs, *files]:
            full = os.path.join(root, name)
            rel = os.path.relpath(full, rootfs)
            info = os.lstat(full)
            if os.path.islink(full):
                out[rel] = ("link", info.st_uid, info.st_gid, os.readlink(full))
            elif os.path.isdir(full):
                out[rel] = ("dir", info.st_mode & 0o7777, info.st_uid, info.st_gid)
            elif os.path.isfile(full):
                with open(full, "rb") as handle:
                    digest = hashlib.sha256(handle.read()).hexdigest()
                out[rel] = (
                    "file",
                    info.st_mode & 0o7777,
                    info.st_uid,
                    info.st_gid,
                    digest,
                    info.st_nlink > 1,
                )
            else:
                out[rel] = ("other", info.st_mode, info.st_uid, info.st_gid, info.st_rdev)
    return out


def umoci_unpack(archive: Path, workdir: Path, name: str) -> Path:
    """Unpack the single image of an OCI archive with umoci; returns the rootfs, with the runtime
    ``config.json`` beside it.

    ``umoci raw unpack`` and ``raw runtime-config`` write the rootfs and config.json that ``umoci unpack`` writes
    (the same layer extraction) without the mtree of every file's sha256 that only ``umoci repack`` reads:
    on the fleet's 100 MB python-app image that mtree was 7 of the 15 s an unpack took."""
    layout = oci_layout_of(archive, workdir / f"{name}-layout")
    index = json.loads((layout / "index.json").read_text())
    descriptor = index["manifests"][0]
    tag = (descriptor.get("annotations") or {}).get("org.opencontainers.image.ref.name")
    if not tag:
        tag = "sel"
        index["manifests"][0] = dict(descriptor, annotations={"org.opencontainers.image.ref.name": tag})
        (layout / "index.json").write_text(json.dumps(index))
    bundle = workdir / f"{name}-bundle"
    bundle.mkdir(mode=0o700, exist_ok=True)
    rootfs = bundle / "rootfs"
    image = f"{layout}:{tag}"
    for command in (
        ["raw", "unpack", "--image", image, str(rootfs)],
        ["raw", "runtime-config", "--image", image, "--rootfs", str(rootfs), str(bundle / "config.json")],
    ):
        subprocess.run(["umoci", *command], check=True, capture_output=True, text=True)
    return rootfs


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def files_in(directory: Path) -> Iterable[Path]:
    return sorted(p for p in directory.rglob("*"))


# ---------------------------------------------------------------------------------------------------------
# Hand-built archives, member by member, so that a test can break any part of them.


def tar_of(members: Sequence[tuple[str, str, bytes | str]]) -> bytes:
    """A plain tar, names exactly as given (``../x`` and ``/x`` too): (name, kind, data or link target), kind
    one of file, dir, symlink, hardlink."""
    types = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE}
    types["hardlink"] = tarfile.LNKTYPE
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            info.type = types[kind]
            info.mtime = 1_600_000_000
            info.mode = 0o755 if kind == "dir" else 0o644
            if kind == "file":
                assert isinstance(payload, bytes)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            else:
                info.linkname = payload if isinstance(payload, str) else ""
                tar.addfile(info)
    return out.getvalue()


def compressed(plain: bytes, codec: str) -> bytes:
    """``plain`` gzip- (mtime 0), zstd- or not compressed."""
    import gzip

    import zstandard

    if codec == "gzip":
        return gzip.compress(plain, mtime=0)
    if codec == "zstd":
        return zstandard.ZstdCompressor().compress(plain)
    return plain


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def oci_files(
    layers: Sequence[tuple[str, bytes, str]],
    config_extra: dict[str, Any] | None = None,
    manifest_extra: dict[str, Any] | None = None,
) -> tuple[dict[str, bytes], str]:
    """The members of an OCI archive of one image, and the manifest's digest. ``layers``: (media type, blob,
    diff_id) each, as given (so a test can make them disagree)."""
    files: dict[str, bytes] = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}'}
    config: dict[str, Any] = {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [diff_id for _, _, diff_id in layers]},
    }
    config.update(config_extra or {})
    config_bytes = canonical_json(config)
    descriptors = []
    for media_type, blob, _ in layers:
        files["blobs/sha256/" + digest_of(blob)[7:]] = blob
        descriptors.append({"mediaType": media_type, "digest": digest_of(blob), "size": len(blob)})
    files["blobs/sha256/" + digest_of(config_bytes)[7:]] = config_bytes
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config_bytes), "size": len(config_bytes)},
        "layers": descriptors,
    }
    manifest.update(manifest_extra or {})
    manifest_bytes = canonical_json(manifest)
    files["blobs/sha256/" + digest_of(manifest_bytes)[7:]] = manifest_bytes
    files["index.json"] = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": digest_of(manifest_bytes),
                    "size": len(manifest_bytes),
                    "annotations": {"org.opencontainers.image.ref.name": "latest"},
                }
            ],
        }
    )
    return files, digest_of(manifest_bytes)


def simple_image_files(codec: str = "gzip") -> dict[str, bytes]:
    """A small valid image: two layers (a directory, files, a symlink; then a change and a whiteout)."""
    first = tar_of(
        [
            ("etc", "dir", b""),
            ("etc/hostname", "file", b"box\n"),
            ("bin", "dir", b""),
            ("bin/tool", "file", b"#!/bin/sh\necho hi\n" * 20),
            ("bin/alias", "symlink", "tool"),
            ("var", "dir", b""),
            ("var/cache.txt", "file", b"cache " * 200),
        ]
    )
    second = tar_of([("etc/hostname", "file", b"other\n"), ("var/.wh.cache.txt", "file", b"")])
    media = {"gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_GZIP[:-4] + "zstd", "none": OCI_LAYER_GZIP[:-5]}[codec]
    layers = [(media, compressed(plain, codec), digest_of(plain)) for plain in (first, second)]
    files, _ = oci_files(layers)
    return files


def write_tar(path: Path, files: dict[str, bytes]) -> Path:
    """An archive of ``files`` in the order given (a plain tar of the members, as ``docker save`` writes)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return path
