"""``docker save`` tarballs: legacy (``<id>/layer.tar``) and the ``manifest.json`` of hybrid archives.

Docker archives have no manifests; one OCI manifest per image is synthesised here (OCI media types, as
Docker 25 writes them) and kept in memory, so the rest of the code sees every input as an OCI index.
"""

from __future__ import annotations

from typing import Any

from .. import mediatypes as mt
from ..digest import sha256_digest
from ..documents import ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, parse_json
from ..errors import DigestMismatchError, FormatError, InputError, LimitError
from ..limits import Limits
from ..output import canonical_json
from .base import Source
from .blobs import BlobStore
from .members import Member, digest_from_name, hash_member, read_member, resolve_member

__all__ = ["open_docker_archive", "read_repo_tags"]


def read_repo_tags(path: str, members: dict[str, Member], label: str, source: Source) -> None:
    """Keep docker's RepoTags from a hybrid archive's manifest.json, so the output's manifest.json has them."""
    try:
        entries = parse_json(
            read_member(path, resolve_member(members, "manifest.json", label)), "manifest.json"
        )
    except (FormatError, InputError):
        return
    if not isinstance(entries, list):
        return
    for entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get("RepoTags"), list):
            config = str(entry.get("Config", ""))
            source.repo_tags.setdefault("config:" + digest_from_name(config), []).extend(
                str(t) for t in entry["RepoTags"]
            )


def open_docker_archive(
    path: str, members: dict[str, Member], blobs: BlobStore, label: str, limits: Limits | None = None
) -> Source:
    limits = limits or Limits()
    data = read_member(path, resolve_member(members, "manifest.json", label))
    entries = parse_json(data, f"{label}: manifest.json")
    if not isinstance(entries, list) or not entries:
        raise FormatError(
            f"{label}: manifest.json must be a non-empty list of images, found {type(entries).__name__}"
        )
    if len(entries) > limits.max_index_manifests:
        raise LimitError(
            f"{label}: manifest.json lists {len(entries)} images, more than --max-index-manifests "
            f"{limits.max_index_manifests}"
        )
    hashed: dict[tuple[int, int], tuple[str, bytes]] = {}  # a blob named by several layers is hashed once
    descriptors: list[dict[str, Any]] = []
    repo_tags: dict[str, list[str]] = {}
    for number, entry in enumerate(entries):
        what = f"{label}: manifest.json[{number}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str):
            raise FormatError(f"{what}: not an object with a Config path")
        layers = entry.get("Layers")
        if not isinstance(layers, list) or not all(isinstance(x, str) for x in layers):
            raise FormatError(f"{what}: Layers is not a list of paths")
        if len(layers) > limits.max_layers:
            raise LimitError(f"{what} has {len(layers)} layers, more than --max-layers {limits.max_layers}")
        config_digest, config_size, config = _config(path, members, blobs, entry["Config"], label, what)
        rootfs = config.get("rootfs")
        diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
        if not isinstance(diff_ids, list):
            raise FormatError(f"{what}: the config's rootfs.diff_ids is not a list")
        if len(diff_ids) != len(layers):
            raise FormatError(
                f"{what}: the config lists {len(diff_ids)} diff_ids for {len(layers)} layers in manifest.json"
            )
        layer_descriptors = [
            _layer(path, members, blobs, layer_path, i, diff_ids, label, hashed)
            for i, layer_path in enumerate(layers)
        ]
        manifest = {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": {"mediaType": mt.OCI_CONFIG, "digest": config_digest, "size": config_size},
            "layers": layer_descriptors,
        }
        manifest_bytes = canonical_json(manifest)
        manifest_digest = blobs.add_bytes(manifest_bytes)
        tags = [str(t) for t in entry.get("RepoTags") or []]
        repo_tags["config:" + config_digest] = tags
        descriptors.extend(_root_descriptors(manifest_digest, len(manifest_bytes), config, tags))
    index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": descriptors}
    return Source(label, "docker-archive", blobs, index, canonical_json(index), repo_tags=repo_tags)


def _config(
    path: str, members: dict[str, Member], blobs: BlobStore, name: str, label: str, what: str
) -> tuple[str, int, dict[str, Any]]:
    config_bytes = read_member(path, resolve_member(members, name, label))
    config_digest = sha256_digest(config_bytes)
    named = digest_from_name(name) if name.lstrip("./").startswith("blobs/") else ""
    if named and named != config_digest:
        raise DigestMismatchError(
            f"{label}: config {name} does not match the digest in its name ({config_digest})", named
        )
    config = parse_json(config_bytes, f"{what}: config {name}")
    if not isinstance(config, dict):
        raise FormatError(f"{what}: config is not a JSON object")
    blobs.add_bytes(config_bytes)
    return config_digest, len(config_bytes), config


def _layer(
    path: str,
    members: dict[str, Member],
    blobs: BlobStore,
    layer_path: str,
    i: int,
    diff_ids: list[Any],
    label: str,
    hashed: dict[tuple[int, int], tuple[str, bytes]],
) -> dict[str, Any]:
    count = len(diff_ids)
    member = resolve_member(members, layer_path, label)
    key = (member.offset, member.size)
    if key not in hashed:
        hashed[key] = hash_member(path, member)
    digest, head = hashed[key]
    named = digest_from_name(layer_path) if layer_path.startswith("blobs/") else ""
    if named and named != digest:
        raise DigestMismatchError(
            f"{label}: layer {i + 1}/{count} {layer_path} does not match its name (actual {digest})", named
        )
    compression = mt.sniff_compression(head)
    if compression is mt.Compression.NONE and digest != diff_ids[i]:
        raise DigestMismatchError(
            f"{label}: layer {i + 1}/{count} {layer_path} has digest {digest}, "
            f"the config's diff_id is {diff_ids[i]}",
            str(diff_ids[i]),
        )
    blobs.add_slice(digest, path, member.offset, member.size)
    return {"mediaType": mt.layer_media_type(False, compression), "digest": digest, "size": member.size}


def _root_descriptors(
    digest: str, size: int, config: dict[str, Any], tags: list[str]
) -> list[dict[str, Any]]:
    """The index.json entries of one image: one per tag (containerd's name annotations), or one untagged."""
    base: dict[str, Any] = {"mediaType": mt.OCI_MANIFEST, "digest": digest, "size": size}
    platform = {k: config[k] for k in ("os", "architecture", "variant") if isinstance(config.get(k), str)}
    if platform.get("os") and platform.get("architecture"):
        base["platform"] = platform
    if not tags:
        return [base]
    return [
        dict(base, annotations={ANNOTATION_IMAGE_NAME: _full_name(tag), ANNOTATION_REF_NAME: _tag_of(tag)})
        for tag in tags
    ]


def _tag_of(reference: str) -> str:
    last = reference.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else "latest"


def _full_name(reference: str) -> str:
    last = reference.rsplit("/", 1)[-1]
    if ":" not in last and "@" not in last:
        reference += ":latest"
    first = reference.split("/", 1)[0]
    if "/" not in reference or ("." not in first and ":" not in first and first != "localhost"):
        reference = "docker.io/" + (reference if "/" in reference else "library/" + reference)
    return reference
