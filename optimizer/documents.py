"""The JSON documents of an image (indexes, manifests, configs): strict parsing and well-known annotation keys."""

from __future__ import annotations

import json
from typing import Any

from .errors import FormatError

__all__ = [
    "ANNOTATION_BASE_DIGEST",
    "ANNOTATION_BASE_NAME",
    "ANNOTATION_IMAGE_NAME",
    "ANNOTATION_REF_NAME",
    "ANNOTATION_SOURCE_DIGEST",
    "parse_json",
    "parse_object",
]

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
ANNOTATION_BASE_DIGEST = "org.opencontainers.image.base.digest"
ANNOTATION_BASE_NAME = "org.opencontainers.image.base.name"
# Every manifest we write carries the digest of the manifest it was made from: the service's loop guard.
ANNOTATION_SOURCE_DIGEST = "dev.oci-optimizer.source.digest"


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


def parse_object(data: bytes, what: str) -> dict[str, Any]:
    """Strict JSON that must be an object (every OCI document is one)."""
    value = parse_json(data, what)
    if not isinstance(value, dict):
        raise FormatError(f"{what} is not a JSON object")
    return value
