"""What a run checks about an input before it trusts it: the image is whole, its layers are what they say.

- Presence (``missing_blobs``, ``missing_manifest``): every manifest an index names and every blob an image
  names is in the input. A partial export (an index listing platforms whose blobs were not exported) is
  refused, exit 3, unless ``--allow-partial`` carries the references over without content.
- diff_ids (``config_diff_ids``, ``check_diff_ids``): a layer's uncompressed digest, computed as it is read,
  equals the config's ``rootfs.diff_ids`` entry (runtimes and umoci reject an image where they differ).
- Media types (``check_media_types``): a layer that is carried without being read starts like its media type
  says (gzip, zstd or a plain tar): a mislabelled blob is refused rather than copied through, but for a plain
  tar under Docker's gzip type, which Docker itself reads (``mediatypes.read_as``). Read layers are checked as
  they are decompressed (``tar_reader``). Blobs of a registry input are not sniffed: they are only
  downloaded when something reads them.
- Unsafe names (``unsafe_names_kept``): layers that keep, byte for byte, member names that leave the root.

Nothing here writes anything; the only reads are the first bytes of carried layers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .digest import short
from .errors import DigestMismatchError, FormatError, LayerError, MissingBlobError
from .layer import LayerIndex, layer_label
from .mediatypes import describe_compression, layer_compression, read_as, sniff_compression
from .model import Descriptor
from .source import Blobs
from .tar_reader import mislabelled_note
from .tree import Node

__all__ = [
    "check_diff_ids",
    "check_media_types",
    "config_diff_ids",
    "missing_blobs",
    "missing_manifest",
    "unsafe_names_kept",
]

PARTIAL_HINT = "--allow-partial carries its reference over without content"
_SNIFF_BYTES = 8


def missing_manifest(node: Node, source_name: str, allow_partial: bool) -> str:
    """The warning for a manifest an index names and the input lacks; ``MissingBlobError`` unless allowed."""
    if not allow_partial:
        platform = f" ({node.descriptor.platform})" if node.descriptor.platform else ""
        raise MissingBlobError(
            f"{source_name}: {node.where}: manifest {short(node.digest)}{platform} is missing from the input "
            f"(a partial export?); {PARTIAL_HINT}",
            node.digest,
        )
    return "\n".join(node.warnings)


def missing_blobs(
    blobs: Blobs, name: str, blobs_named: Sequence[tuple[str, Descriptor]], allow_partial: bool, read: bool
) -> list[str]:
    """Warnings for the blobs of an image (``(what, descriptor)``: "config", "layer 2/3") that the input
    lacks; ``MissingBlobError`` unless ``allow_partial``, and always when the layers are to be ``read``."""
    warnings = []
    for what, blob in blobs_named:
        if blobs.has(blob.digest) or blob.raw.get("data"):
            continue
        message = f"{name}, {what} {short(blob.digest)} ({blob.media_type}) is missing from the input"
        if not allow_partial or (read and what.startswith("layer")):
            hint = "" if read and allow_partial else f"; {PARTIAL_HINT}"
            raise MissingBlobError(message + hint, blob.digest)
        warnings.append(message)
    return warnings


def config_diff_ids(config: Mapping[str, Any], layer_count: int, name: str) -> list[str]:
    rootfs = config.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise FormatError(f'{name}: the config\'s rootfs.type is not "layers"')
    diff_ids = rootfs.get("diff_ids")
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise FormatError(f"{name}: the config's rootfs.diff_ids is not a list of digests")
    if len(diff_ids) != layer_count:
        raise FormatError(f"{name}: the config has {len(diff_ids)} diff_ids for {layer_count} layers")
    return list(diff_ids)


def check_diff_ids(indexes: Sequence[LayerIndex], diff_ids: Sequence[str], name: str) -> None:
    """Every layer read has the uncompressed digest its config names."""
    total = len(indexes)
    for number, index in enumerate(indexes, 1):
        if index.diff_id != diff_ids[number - 1]:
            where = layer_label(name, number, total, index.descriptor)
            raise DigestMismatchError(
                f"{where}: the uncompressed layer has digest {index.diff_id}, "
                f"the config's diff_id is {diff_ids[number - 1]}",
                diff_ids[number - 1],
            )


def check_media_types(blobs: Blobs, layers: Sequence[Descriptor], name: str) -> list[str]:
    """Every local layer blob starts like its media type says (its first bytes, never the whole blob);
    the warnings for the tolerated exception (``mediatypes.read_as``)."""
    total = len(layers)
    warnings = []
    for number, layer in enumerate(layers, 1):
        declared = layer_compression(layer.media_type)
        if declared is None or not blobs.has(layer.digest) or blobs.origin(layer.digest) is not None:
            continue
        with blobs.open(layer, "layer") as reader:
            head = reader.read(_SNIFF_BYTES)
        if not head:
            continue
        found = sniff_compression(head)
        where = layer_label(name, number, total, layer)
        read = read_as(layer.media_type, found)
        if read is None:
            raise LayerError(
                f"{where}: the blob is {describe_compression(found)} "
                f"but its media type {layer.media_type} says {describe_compression(declared)}"
            )
        if read is not declared:
            warnings.append(mislabelled_note(where, found, layer.media_type))
    return warnings


def unsafe_names_kept(index: LayerIndex, where: str) -> str:
    """The message for a layer that keeps member names leaving the root (or "" when it has none)."""
    if not index.unsafe:
        return ""
    shown = ", ".join(repr(name) for name in index.unsafe[:3])
    more = f" and {len(index.unsafe) - 3} more" if len(index.unsafe) > 3 else ""
    return (
        f"{where}: kept as it is with {len(index.unsafe)} member name(s) or hardlink target(s) that leave "
        f"the root: {shown}{more} (runtimes confine them to the root; --sanitize rewrites the layer without "
        f"them, --strict refuses it)"
    )
