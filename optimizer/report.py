"""The report: one JSON-serialisable object, the same for the CLI, the service and the library.

Its JSON form is described by ``report.schema.json`` (shipped beside this module; ``SCHEMA_VERSION`` names it)
and carries the tool's version. Units are always said: a pass's ``bytes_before``/``bytes_after`` are the
uncompressed bytes of the files it changed; a layer's ``size_before``/``size_after`` are compressed blob bytes,
and ``uncompressed_before``/``uncompressed_after`` its tar's bytes. Layers are numbered from 1 everywhere (a
layer's ``number``, a finding's ``layer``), the added top layer taking the number after the last.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import Enum
from importlib import resources
from typing import Any

from .pull import PullBytes

__all__ = [
    "SCHEMA_VERSION",
    "Finding",
    "ImageReport",
    "LayerReport",
    "PassReport",
    "PassStatus",
    "Report",
    "Summary",
    "report_schema",
    "tool_version",
]

SCHEMA_VERSION = 1


def tool_version() -> str:
    try:
        from importlib.metadata import version

        return version("oci-optimizer")
    except Exception:  # pragma: no cover - not installed
        return "0"


def report_schema() -> dict[str, Any]:
    """The JSON Schema of ``Report.to_json()``."""
    text = resources.files("optimizer").joinpath("report.schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


class PassStatus(str, Enum):
    OK = "ok"  # ran; its changes (possibly none) were kept
    FAILED = "failed"  # raised; its changes were dropped
    SKIPPED = "skipped"  # not run on this image (nothing to do, or not applicable)


@dataclass
class Finding:
    """One file a pass changed, or left alone on purpose, and why. ``layer``: the layer (from 1) that holds
    the path's bytes (the added top layer for additions); None for findings about no single file."""

    path: str
    action: str  # "stripped", "deleted", "dropped", "added", "kept", "reclaimable", "warning", ...
    reason: str = ""
    bytes_before: int = 0
    bytes_after: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    layer: int | None = None


@dataclass
class PassReport:
    name: str
    status: PassStatus = PassStatus.OK
    files_changed: int = 0
    bytes_before: int = 0  # uncompressed bytes of the files it changed
    bytes_after: int = 0
    seconds: float = 0.0
    error: str = ""
    warnings: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # what the pass sums up for its findings (slim)

    @property
    def bytes_saved(self) -> int:
        return self.bytes_before - self.bytes_after


@dataclass
class LayerReport:
    number: int  # from 1; the added top layer takes the number after the last
    digest_before: str
    digest_after: str  # "" when the layer was dropped
    size_before: int  # compressed blob bytes
    size_after: int
    # "unchanged", "rewritten", "dropped", "added", "kept" (protected), "reverted" (a rewrite that was not
    # smaller: the layer kept its bytes), "squashed" (the layer --squash wrote), "merged" (folded into the
    # squashed layer: digest_after names it, size_after is 0)
    status: str
    media_type: str = ""
    files_changed: int = 0
    estimated: bool = False  # a dry run: size_after is an estimate (nothing was compressed)
    uncompressed_before: int = 0  # the layer's tar bytes (estimated from its entries)
    uncompressed_after: int = 0
    media_type_before: str = ""


@dataclass
class Summary:
    """Where the bytes went: the compressed bytes saved split by cause (estimates), what was added, and the
    pull bytes of a cold node and of a node that has the base."""

    bytes_before: int = 0  # compressed layers, distinct blobs
    bytes_after: int = 0
    saved_by_passes: int = 0  # the compressed share of the files the passes shrank or removed
    saved_by_recompression: int = 0  # the rest: the codec and level of the layers written again
    added: int = 0  # compressed bytes of layers holding what passes added (inject)
    added_because: list[str] = field(default_factory=list)  # why, one line per pass and reason
    pull: PullBytes = field(default_factory=PullBytes)


@dataclass
class ImageReport:
    name: str
    platform: str
    manifest_before: str
    manifest_after: str  # "" in a dry run when it would change (its digest is known only once written)
    layers: list[LayerReport] = field(default_factory=list)
    passes: list[PassReport] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    base: dict[str, Any] = field(default_factory=dict)  # the base: layers, rule, detail, protected
    pull: PullBytes = field(default_factory=PullBytes)
    zstd_manifest: str = ""  # --publish gzip+zstd: the manifest of its zstd twin

    @property
    def size_before(self) -> int:
        return sum(layer.size_before for layer in self.layers)

    @property
    def size_after(self) -> int:
        return sum(layer.size_after for layer in self.layers)


@dataclass
class Report:
    input: str
    output: str
    dry_run: bool = False
    images: list[ImageReport] = field(default_factory=list)
    carried: list[str] = field(default_factory=list)  # manifests copied untouched (artifacts, signatures...)
    warnings: list[str] = field(default_factory=list)
    compressors: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    index_digest_before: str = ""
    index_digest_after: str = ""
    bytes_before: int = 0  # compressed layers of the input's images, each distinct blob once
    bytes_after: int = 0
    seconds: float = 0.0
    pushed_digest: str = ""  # the manifest digest pushed, when the output is a registry reference
    pull: PullBytes = field(default_factory=PullBytes)  # every image of the input, distinct blobs
    summary: Summary = field(default_factory=Summary)

    @property
    def changed(self) -> bool:
        return any(i.manifest_before != i.manifest_after for i in self.images)

    def to_json(self) -> dict[str, Any]:
        def convert(value: Any) -> Any:
            if isinstance(value, Enum):
                return value.value
            if isinstance(value, dict):
                return {k: convert(v) for k, v in value.items()}
            if isinstance(value, list):
                return [convert(v) for v in value]
            return value

        data: dict[str, Any] = convert(asdict(self))
        data["schema_version"] = SCHEMA_VERSION
        data["tool"] = {"name": "oci-optimizer", "version": tool_version()}
        data["changed"] = self.changed
        for image, raw in zip(self.images, data["images"], strict=True):
            raw["size_before"] = image.size_before
            raw["size_after"] = image.size_after
        return data
