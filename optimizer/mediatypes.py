"""Media types of the OCI image spec and of Docker's distribution formats, and what we do with each."""

from __future__ import annotations

from enum import Enum

OCI_LAYOUT_VERSION = "1.0.0"

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_ND_TAR = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_ND_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_ND_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"

DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
IMAGE_CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})


class Compression(str, Enum):
    """How a layer's tar stream is compressed."""

    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"


_LAYER_COMPRESSION: dict[str, Compression] = {
    OCI_LAYER_TAR: Compression.NONE,
    OCI_LAYER_GZIP: Compression.GZIP,
    OCI_LAYER_ZSTD: Compression.ZSTD,
    OCI_LAYER_ND_TAR: Compression.NONE,
    OCI_LAYER_ND_GZIP: Compression.GZIP,
    OCI_LAYER_ND_ZSTD: Compression.ZSTD,
    DOCKER_LAYER_TAR: Compression.NONE,
    DOCKER_LAYER_GZIP: Compression.GZIP,
    DOCKER_LAYER_ZSTD: Compression.ZSTD,
    DOCKER_FOREIGN_LAYER: Compression.GZIP,
}

NON_DISTRIBUTABLE = frozenset({OCI_LAYER_ND_TAR, OCI_LAYER_ND_GZIP, OCI_LAYER_ND_ZSTD, DOCKER_FOREIGN_LAYER})


def layer_compression(media_type: str) -> Compression | None:
    """The compression of a tar layer media type, or None when the media type is not a tar layer we read."""
    return _LAYER_COMPRESSION.get(media_type)


def is_docker(media_type: str) -> bool:
    return media_type.startswith("application/vnd.docker.")


def layer_media_type(family_docker: bool, compression: Compression) -> str:
    """The layer media type to write for a manifest of the given family (Docker or OCI)."""
    if family_docker:
        return {
            Compression.NONE: DOCKER_LAYER_TAR,
            Compression.GZIP: DOCKER_LAYER_GZIP,
            Compression.ZSTD: DOCKER_LAYER_ZSTD,
        }[compression]
    return {
        Compression.NONE: OCI_LAYER_TAR,
        Compression.GZIP: OCI_LAYER_GZIP,
        Compression.ZSTD: OCI_LAYER_ZSTD,
    }[compression]


def sniff_compression(head: bytes) -> Compression:
    """Guess a blob's compression from its first bytes (docker archives do not say)."""
    if head[:2] == b"\x1f\x8b":
        return Compression.GZIP
    if head[:4] == b"\x28\xb5\x2f\xfd" or _zstd_skippable(head):
        return Compression.ZSTD
    return Compression.NONE


def read_as(media_type: str, found: Compression) -> Compression | None:
    """How to decompress a layer of ``media_type`` whose first bytes look ``found`` (``sniff_compression``):
    as declared when they agree; as a plain tar when a plain tar carries Docker's gzip type (Docker and
    containerd detect compression from the bytes, and skopeo writes such layers from docker archives); None
    for any other disagreement, which is refused (umoci and other readers trust the media type)."""
    declared = layer_compression(media_type)
    if declared is None or found is declared:
        return declared
    if media_type == DOCKER_LAYER_GZIP and found is Compression.NONE:
        return Compression.NONE
    return None


def describe_compression(compression: Compression) -> str:
    """For messages: "a plain tar", "gzip-compressed", "zstd-compressed"."""
    return "a plain tar" if compression is Compression.NONE else f"{compression.value}-compressed"


def _zstd_skippable(head: bytes) -> bool:
    """A zstd skippable frame (magic 0x184D2A50-0x184D2A5F, little-endian): zstd streams may start with one."""
    return len(head) >= 4 and head[1:4] == b"\x2a\x4d\x18" and head[0] & 0xF0 == 0x50
