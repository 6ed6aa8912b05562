"""The JSON documents of an image (indexes, manifests, configs): strict parsing and well-known annotation keys.

Parsing is strict (UTF-8, no NaN or Infinity, no duplicate keys) and bounded: a document nested deeper than
``MAX_DEPTH`` is a ``FormatError`` before the parser sees it (a 100,000-deep array would otherwise end in a
RecursionError, in the parser or in any code that walks the value). OCI documents are a few levels deep;
webhook bodies too (the service parses them here).
"""

from __future__ import annotations

import json
import re
from typing import Any

from .digest import parse_digest
from .errors import FormatError
from .model import Descriptor

__all__ = [
    "ANNOTATION_BASE_DIGEST",
    "ANNOTATION_BASE_NAME",
    "ANNOTATION_IMAGE_NAME",
    "ANNOTATION_REF_NAME",
    "ANNOTATION_SOURCE_DIGEST",
    "MAX_DEPTH",
    "parse_descriptor",
    "parse_json",
    "parse_object",
]

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
ANNOTATION_BASE_DIGEST = "org.opencontainers.image.base.digest"
ANNOTATION_BASE_NAME = "org.opencontainers.image.base.name"
# Every manifest we write carries the digest of the manifest it was made from: the service's loop guard.
ANNOTATION_SOURCE_DIGEST = "dev.oci-optimizer.source.digest"


MAX_DEPTH = 64

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth_exceeds(data: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether arrays and objects nest deeper than ``limit`` (strings, which may hold brackets, aside)."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    brackets = _STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    depth = 0
    for byte in brackets:
        if byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def parse_json(data: bytes, what: str) -> Any:
    """Strict JSON: UTF-8, no NaN/Infinity, no duplicate keys, nested at most ``MAX_DEPTH`` deep."""
    if json_depth_exceeds(data):
        raise FormatError(f"{what}: JSON nested more than {MAX_DEPTH} levels deep")

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
    except RecursionError as error:  # only if the stack was nearly full already: the depth is bounded above
        raise FormatError(f"{what}: JSON nested too deep") from error


def parse_object(data: bytes, what: str) -> dict[str, Any]:
    """Strict JSON that must be an object (every OCI document is one)."""
    value = parse_json(data, what)
    if not isinstance(value, dict):
        raise FormatError(f"{what} is not a JSON object")
    return value


def parse_descriptor(value: Any, what: str) -> Descriptor:
    """An OCI content descriptor from a parsed document, checked: a digest we can verify, a size."""
    if not isinstance(value, dict):
        raise FormatError(f"{what}: not a descriptor object")
    digest = value.get("digest")
    size = value.get("size")
    media_type = value.get("mediaType", "")
    if not isinstance(digest, str):
        raise FormatError(f"{what}: no digest")
    try:
        parse_digest(digest)
    except FormatError as error:
        raise FormatError(f"{what}: {error}") from error
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise FormatError(f"{what}: invalid size {size!r}")
    if not isinstance(media_type, str):
        raise FormatError(f"{what}: invalid mediaType {media_type!r}")
    return Descriptor.from_json(value)
