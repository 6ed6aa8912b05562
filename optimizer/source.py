"""Sources: where an image's blobs and its top-level index come from.

Every input form ends up as a ``Source``: a root OCI index (parsed, plus its exact bytes) and a ``BlobStore``
that opens any blob by descriptor, verifying digest and size as it is read. Docker archives have no manifests;
their manifests are synthesised here (OCI media types, as Docker 25 writes them) and kept in memory.

Forms read: an OCI image layout directory; a tar of one (an "OCI archive"); ``docker save`` tarballs, legacy
(``<id>/layer.tar``) and hybrid (Docker 25+ and containerd: ``index.json`` + ``manifest.json`` + ``blobs/``);
any of these tars gzip- or zstd-compressed. Member names may start with ``./``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from . import mediatypes as mt
from .digest import VerifyingReader, parse_digest, sha256_digest, short
from .errors import DigestMismatchError, FormatError, InputError, MissingBlobError
from .model import Descriptor

__all__ = ["BlobStore", "Source", "open_source", "parse_json"]

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"


def parse_json(data: bytes, what: str) -> Any:
    """Strict JSON: UTF-8, no NaN/Infinity, no duplicate keys."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise FormatError(f"{what}: duplicate key {key!r}")
            out[key] = value
        return out

    def no_constants(name: str) -> Any:
        raise FormatError(f"{what}: invalid JSON constant {name}")

    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FormatError(f"{what}: not valid JSON: {error}") from error


class BlobStore:
    """Opens blobs by digest from files on disk (whole files or slices of a tar) and from memory."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._slices: dict[str, tuple[str, int, int]] = {}
        self._memory: dict[str, bytes] = {}

    def add_slice(self, digest: str, path: str, offset: int, size: int) -> None:
        self._slices.setdefault(digest, (path, offset, size))

    def add_bytes(self, data: bytes) -> str:
        digest = sha256_digest(data)
        self._memory[digest] = data
        return digest

    def has(self, digest: str) -> bool:
        return digest in self._slices or digest in self._memory

    def stored_size(self, digest: str) -> int | None:
        if digest in self._memory:
            return len(self._memory[digest])
        if digest in self._slices:
            return self._slices[digest][2]
        return None

    def open(self, descriptor: Descriptor, role: str = "blob") -> BinaryIO:
        """A reader over the blob that raises ``DigestMismatchError`` at the end if its digest or size is wrong."""
        digest = descriptor.digest
        what = f"{self.name}: {role} {short(digest)}"
        raw: io.RawIOBase | io.BufferedReader
        if digest in self._memory:
            raw = io.BufferedReader(io.BytesIO(self._memory[digest]))  # type: ignore[arg-type,unused-ignore]
        elif digest in self._slices:
            path, offset, size = self._slices[digest]
            handle = open(path, "rb")  # noqa: SIM115 - owned by the returned reader
            handle.seek(offset)
            raw = _Window(handle, size)
        else:
            raise MissingBlobError(f"{what} is missing from the input ({descriptor.media_type})", digest)
        return io.BufferedReader(VerifyingReader(raw, digest, descriptor.size, what), 1 << 20)

    def read(self, descriptor: Descriptor, role: str = "blob", limit: int = 64 << 20) -> bytes:
        """The whole blob, verified. Only for small documents (manifests, configs)."""
        if descriptor.size > limit:
            raise FormatError(
                f"{self.name}: {role} {short(descriptor.digest)} is {descriptor.size} bytes, "
                f"more than the {limit} allowed for a JSON document"
            )
        with self.open(descriptor, role) as reader:
            data = reader.read()
            reader.read()  # reach EOF so the digest is checked
        assert isinstance(data, bytes)
        return data

    def digests(self) -> Iterator[str]:
        yield from self._slices
        yield from self._memory


class _Window(io.RawIOBase):
    """A file handle limited to ``size`` bytes from its current position (a tar member's data)."""

    def __init__(self, handle: io.BufferedReader, size: int) -> None:
        self._handle = handle
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._left <= 0:
            return 0
        view = memoryview(buffer)
        got = int(self._handle.readinto(view[: min(len(view), self._left)]))
        self._left -= got
        return got

    def close(self) -> None:
        self._handle.close()
        super().close()


@dataclass
class Source:
    """An opened input: its root index and its blobs."""

    name: str
    kind: str  # "oci-dir", "oci-archive", "docker-archive"
    blobs: BlobStore
    index: Mapping[str, Any]
    index_bytes: bytes
    repo_tags: dict[str, list[str]] = field(default_factory=dict)  # manifest digest -> docker RepoTags
    warnings: list[str] = field(default_factory=list)

    @property
    def root_manifests(self) -> list[Descriptor]:
        return [Descriptor.from_json(d) for d in self.index.get("manifests") or []]


def open_source(path: str, workdir: str, name: str | None = None) -> Source:
    """Open an OCI layout directory, OCI archive or docker archive at ``path``."""
    label = name or path
    p = Path(path)
    if p.is_dir():
        return _open_layout_dir(p, label)
    if not p.exists():
        raise InputError(f"{label}: no such file or directory")
    with open(p, "rb") as handle:
        head = handle.read(6)
    if (
        head[:2] == b"\x1f\x8b"
        or head[:4] == b"\x28\xb5\x2f\xfd"
        or head[:3] == b"BZh"
        or head[:6] == b"\xfd7zXZ\x00"
    ):
        plain = os.path.join(workdir, "input.tar")
        _decompress_file(p, plain, label)
        return _open_tar(plain, label)
    return _open_tar(str(p), label)


def _decompress_file(src: Path, dst: str, label: str) -> None:
    import bz2
    import lzma

    import zstandard

    with open(src, "rb") as raw, open(dst, "wb") as out:
        head = raw.read(6)
        raw.seek(0)
        try:
            if head[:2] == b"\x1f\x8b":
                _gunzip_stream(raw, out)
            elif head[:4] == b"\x28\xb5\x2f\xfd":
                zstandard.ZstdDecompressor().copy_stream(raw, out)
            elif head[:3] == b"BZh":
                with bz2.open(raw) as reader:
                    shutil.copyfileobj(reader, out, 1 << 20)
            else:
                with lzma.open(raw) as reader:
                    shutil.copyfileobj(reader, out, 1 << 20)
        except (OSError, EOFError, zlib.error, lzma.LZMAError, zstandard.ZstdError) as error:
            raise FormatError(f"{label}: the compressed archive is corrupt: {error}") from error


def _gunzip_stream(raw: BinaryIO, out: BinaryIO) -> None:
    decompressor = zlib.decompressobj(31)
    while chunk := raw.read(1 << 20):
        while chunk:
            out.write(decompressor.decompress(chunk))
            if decompressor.eof:  # concatenated gzip members
                chunk = decompressor.unused_data
                decompressor = zlib.decompressobj(31)
            else:
                chunk = b""
    out.write(decompressor.flush())


def _clean_member(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.strip("/")


@dataclass
class _Member:
    offset: int
    size: int
    kind: str  # "file", "dir", "symlink", "hardlink", "other"
    link: str


def _list_tar(path: str, label: str) -> dict[str, _Member]:
    members: dict[str, _Member] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                clean = _clean_member(info.name)
                if info.isreg():
                    kind = "file"
                elif info.isdir():
                    kind = "dir"
                elif info.issym():
                    kind = "symlink"
                elif info.islnk():
                    kind = "hardlink"
                else:
                    kind = "other"
                members[clean] = _Member(info.offset_data, info.size, kind, info.linkname)
    except tarfile.TarError as error:
        raise FormatError(f"{label}: not a tar archive or a corrupt one: {error}") from error
    return members


def _resolve_member(members: dict[str, _Member], name: str, label: str) -> _Member:
    """Follow symlinks and hardlinks between members (docker 1.x de-duplicated layers that way)."""
    seen: set[str] = set()
    current = _clean_member(name)
    while True:
        member = members.get(current)
        if member is None:
            raise InputError(f"{label}: {name} is missing from the archive")
        if member.kind == "file":
            return member
        if member.kind not in ("symlink", "hardlink") or current in seen:
            raise InputError(f"{label}: {name} is not a regular file in the archive")
        seen.add(current)
        if member.kind == "symlink":
            base = current.rsplit("/", 1)[0] if "/" in current else ""
            target = os.path.normpath(os.path.join(base, member.link))
        else:
            target = member.link
        current = _clean_member(target)


def _open_tar(path: str, label: str) -> Source:
    members = _list_tar(path, label)
    blobs = BlobStore(label)
    for name, member in members.items():
        parts = name.split("/")
        if len(parts) == 3 and parts[0] == "blobs" and member.kind == "file":
            digest = f"{parts[1]}:{parts[2]}"
            blobs.add_slice(digest, path, member.offset, member.size)
    index = None
    if "index.json" in members:
        index_bytes = _read_member(path, _resolve_member(members, "index.json", label))
        index = parse_json(index_bytes, f"{label}: index.json")
        if not isinstance(index, dict):
            raise FormatError(f"{label}: index.json is not a JSON object")
        if index.get("manifests"):
            _check_index(index, f"{label}: index.json")
            source = Source(label, "oci-archive", blobs, index, index_bytes)
            if "manifest.json" in members:
                _read_repo_tags(path, members, label, source)
            return source
    if "manifest.json" in members:
        return _open_docker_archive(path, members, blobs, label)
    if index is not None:
        raise FormatError(f"{label}: index.json lists no manifests and there is no manifest.json")
    raise FormatError(
        f"{label}: neither index.json (OCI archive) nor manifest.json (docker save tarball) in the archive"
    )


def _read_member(path: str, member: _Member) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(member.offset)
        return handle.read(member.size)


def _check_index(index: Mapping[str, Any], what: str) -> None:
    manifests = index.get("manifests")
    if not isinstance(manifests, list):
        raise FormatError(f"{what}: 'manifests' is not a list")
    for i, item in enumerate(manifests):
        if not isinstance(item, dict) or "digest" not in item or "size" not in item:
            raise FormatError(f"{what}: manifests[{i}] is not a descriptor with digest and size")
        parse_digest(str(item["digest"]))
        if not isinstance(item["size"], int) or item["size"] < 0:
            raise FormatError(f"{what}: manifests[{i}] has an invalid size {item['size']!r}")


def _open_layout_dir(root: Path, label: str) -> Source:
    index_path = root / "index.json"
    if not index_path.is_file():
        raise FormatError(f"{label}: not an OCI image layout (no index.json)")
    warnings = []
    layout = root / "oci-layout"
    if not layout.is_file():
        warnings.append(f"{label}: the oci-layout file is missing; reading it as an OCI layout anyway")
    index_bytes = index_path.read_bytes()
    index = parse_json(index_bytes, f"{label}: index.json")
    if not isinstance(index, dict):
        raise FormatError(f"{label}: index.json is not a JSON object")
    _check_index(index, f"{label}: index.json")
    blobs = BlobStore(label)
    blob_root = root / "blobs"
    if blob_root.is_dir():
        for algorithm in sorted(os.listdir(blob_root)):
            directory = blob_root / algorithm
            if not directory.is_dir():
                continue
            for hexname in os.listdir(directory):
                file = directory / hexname
                if file.is_file():
                    blobs.add_slice(f"{algorithm}:{hexname}", str(file), 0, file.stat().st_size)
    return Source(label, "oci-dir", blobs, index, index_bytes, warnings=warnings)


def _read_repo_tags(path: str, members: dict[str, _Member], label: str, source: Source) -> None:
    """Keep docker's RepoTags from a hybrid archive's manifest.json, so the output's manifest.json has them."""
    try:
        entries = parse_json(
            _read_member(path, _resolve_member(members, "manifest.json", label)), "manifest.json"
        )
    except (FormatError, InputError):
        return
    if not isinstance(entries, list):
        return
    for entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get("RepoTags"), list):
            config = str(entry.get("Config", ""))
            source.repo_tags.setdefault("config:" + _digest_from_name(config), []).extend(
                str(t) for t in entry["RepoTags"]
            )


def _digest_from_name(name: str) -> str:
    """``blobs/sha256/<hex>``, ``<hex>.json``, ``sha256:<hex>`` -> ``sha256:<hex>`` (or "" when not a digest)."""
    clean = _clean_member(name)
    parts = clean.split("/")
    if len(parts) == 3 and parts[0] == "blobs":
        return f"{parts[1]}:{parts[2]}"
    base = parts[-1]
    for suffix in (".json", ".tar.gz", ".tar", ".gz"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    if base.startswith("sha256:"):
        base = base[7:]
    if len(base) == 64 and all(c in "0123456789abcdef" for c in base):
        return "sha256:" + base
    return ""


def _hash_member(path: str, member: _Member) -> tuple[str, bytes]:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        handle.seek(member.offset)
        left = member.size
        head = b""
        while left:
            chunk = handle.read(min(left, 1 << 20))
            if not chunk:
                break
            if not head:
                head = chunk[:8]
            digest.update(chunk)
            left -= len(chunk)
    return "sha256:" + digest.hexdigest(), head


def _open_docker_archive(path: str, members: dict[str, _Member], blobs: BlobStore, label: str) -> Source:
    data = _read_member(path, _resolve_member(members, "manifest.json", label))
    entries = parse_json(data, f"{label}: manifest.json")
    if not isinstance(entries, list) or not entries:
        raise FormatError(
            f"{label}: manifest.json must be a non-empty list of images, found {type(entries).__name__}"
        )
    descriptors: list[dict[str, Any]] = []
    repo_tags: dict[str, list[str]] = {}
    for number, entry in enumerate(entries):
        what = f"{label}: manifest.json[{number}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str):
            raise FormatError(f"{what}: not an object with a Config path")
        layers = entry.get("Layers")
        if not isinstance(layers, list) or not all(isinstance(x, str) for x in layers):
            raise FormatError(f"{what}: Layers is not a list of paths")
        config_member = _resolve_member(members, entry["Config"], label)
        config_bytes = _read_member(path, config_member)
        config_digest = sha256_digest(config_bytes)
        named = (
            _digest_from_name(entry["Config"]) if entry["Config"].lstrip("./").startswith("blobs/") else ""
        )
        if named and named != config_digest:
            raise DigestMismatchError(
                f"{label}: config {entry['Config']} does not match the digest in its name ({config_digest})",
                named,
            )
        config = parse_json(config_bytes, f"{what}: config {entry['Config']}")
        if not isinstance(config, dict):
            raise FormatError(f"{what}: config is not a JSON object")
        blobs.add_bytes(config_bytes)
        diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
        if len(diff_ids) != len(layers):
            raise FormatError(
                f"{what}: the config lists {len(diff_ids)} diff_ids for {len(layers)} layers in manifest.json"
            )
        layer_descriptors = []
        for i, layer_path in enumerate(layers):
            member = _resolve_member(members, layer_path, label)
            digest, head = _hash_member(path, member)
            named = _digest_from_name(layer_path) if layer_path.startswith("blobs/") else ""
            if named and named != digest:
                raise DigestMismatchError(
                    f"{label}: layer {i + 1}/{len(layers)} {layer_path} does not match its name (actual {digest})",
                    named,
                )
            compression = mt.sniff_compression(head)
            if compression is mt.Compression.NONE and digest != diff_ids[i]:
                raise DigestMismatchError(
                    f"{label}: layer {i + 1}/{len(layers)} {layer_path} has digest {digest}, "
                    f"the config's diff_id is {diff_ids[i]}",
                    str(diff_ids[i]),
                )
            blobs.add_slice(digest, path, member.offset, member.size)
            layer_descriptors.append(
                {"mediaType": mt.layer_media_type(False, compression), "digest": digest, "size": member.size}
            )
        manifest = {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": {"mediaType": mt.OCI_CONFIG, "digest": config_digest, "size": len(config_bytes)},
            "layers": layer_descriptors,
        }
        from .output import canonical_json

        manifest_bytes = canonical_json(manifest)
        manifest_digest = blobs.add_bytes(manifest_bytes)
        tags = [str(t) for t in entry.get("RepoTags") or []]
        repo_tags["config:" + config_digest] = tags
        base: dict[str, Any] = {
            "mediaType": mt.OCI_MANIFEST,
            "digest": manifest_digest,
            "size": len(manifest_bytes),
        }
        platform = {k: config[k] for k in ("os", "architecture", "variant") if isinstance(config.get(k), str)}
        if platform.get("os") and platform.get("architecture"):
            base["platform"] = platform
        if not tags:
            descriptors.append(base)
        for tag in tags:
            descriptors.append(
                dict(
                    base,
                    annotations={ANNOTATION_IMAGE_NAME: _full_name(tag), ANNOTATION_REF_NAME: _tag_of(tag)},
                )
            )
    index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": descriptors}
    from .output import canonical_json

    return Source(label, "docker-archive", blobs, index, canonical_json(index), repo_tags=repo_tags)


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


BlobOpener = Callable[[Descriptor], BinaryIO]
