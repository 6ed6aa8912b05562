"""The report: one JSON-serialisable object, the same for the CLI, the service and the library."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from .pull import PullBytes

__all__ = ["ImageReport", "LayerReport", "PassReport", "PassStatus", "Report"]


class PassStatus(str, Enum):
    OK = "ok"  # ran; its changes (possibly none) were kept
    FAILED = "failed"  # raised; its changes were dropped
    SKIPPED = "skipped"  # not run on this image (nothing to do, or not applicable)


@dataclass
class Finding:
    path: str
    action: str  # "replaced", "deleted", "added", "kept", "warning", ...
    reason: str = ""
    bytes_before: int = 0
    bytes_after: int = 0
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class PassReport:
    name: str
    status: PassStatus = PassStatus.OK
    files_changed: int = 0
    bytes_before: int = 0
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
    index: int
    digest_before: str
    digest_after: str  # "" when the layer was dropped
    size_before: int
    size_after: int
    # "unchanged", "rewritten", "dropped", "added", "kept" (protected), "squashed" (the layer --squash wrote),
    # "merged" (folded into the squashed layer: digest_after names it, size_after is 0)
    status: str
    media_type: str = ""
    files_changed: int = 0
    estimated: bool = False  # a dry run: size_after is an estimate (nothing was compressed)


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
    bytes_before: int = 0  # sum of distinct blob sizes in the input's images
    bytes_after: int = 0
    seconds: float = 0.0
    pushed_digest: str = ""  # the manifest digest pushed, when the output is a registry reference
    pull: PullBytes = field(default_factory=PullBytes)  # every image of the input, distinct blobs

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

        data = convert(asdict(self))
        data["changed"] = self.changed
        for image, raw in zip(self.images, data["images"], strict=True):
            raw["size_before"] = image.size_before
            raw["size_after"] = image.size_after
        return data  # type: ignore[no-any-return]
