"""Run-wide options, typed and declared once (``settings``): the CLI flags and the service's rule options are
derived from these fields. Pass options live in each pass's own ``Options`` dataclass."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .limits import Limits
from .output import CompressionSpec
from .registry.access import RegistryAccess
from .settings import setting

__all__ = ["Options", "Progress", "pass_names"]

Progress = Callable[[str, int, int], None]  # (what, done, total)


def pass_names(text: str) -> tuple[str, ...]:
    """``a,b`` -> ``("a", "b")``; ``none`` (or nothing) -> ``()``."""
    if text.strip() in ("none", ""):
        return ()
    return tuple(name.strip() for name in text.split(",") if name.strip())


@dataclass(frozen=True)
class Options:
    """What ``optimize`` does. Each field's help says what it means; ``pass_options`` maps a pass name to
    that pass's ``Options`` instance (absent passes use their defaults); ``progress`` is called with
    (what, done, total) as the run goes; ``pass_classes`` is the pipeline to choose from, in order (default
    ``passes.PASSES``), for your own passes; ``registry`` says how to reach the registries of ``docker://``
    inputs and outputs (TLS, credentials, timeouts); ``limits`` bounds what an input may make the run read
    and hold (``Limits``: its fields are settings of their own, ``--max-layer-bytes`` and so on)."""

    passes: tuple[str, ...] | None = setting(
        None,
        "comma-separated passes to run ('none' for a pure repack; default: every pass)",
        parse=pass_names,
    )
    skip: tuple[str, ...] = setting((), "comma-separated passes not to run", parse=pass_names)
    pass_options: Mapping[str, Any] = field(default_factory=dict)
    strict: bool = setting(
        False,
        "a failing pass fails the run (else its changes are dropped), and so does an unsafe member name "
        "left in a layer that is not rewritten (exit 3); every layer is read and its diff_id checked",
    )
    sanitize: bool = setting(
        False,
        "rewrite layers whose member names or hardlink targets leave the root, without those entries",
    )
    allow_partial: bool = setting(
        False,
        "carry references to manifests and blobs the input lacks (a partial export) instead of failing",
    )
    dry_run: bool = setting(False, "plan and report, write nothing (sizes after are estimates)", config=False)
    normalize: bool = setting(False, "rewrite every layer canonically (reproducible digests)")
    keep_layers: int = setting(0, "keep the first N layers byte-identical", metavar="N")
    base: str | None = setting(None, "keep the layers of this base image byte-identical", metavar="IMAGE")
    output_format: Literal["oci-archive", "oci-dir"] = setting(
        "oci-archive",
        "output form (default: an OCI archive that docker load also takes)",
        flag="--format",
        config=False,
    )
    compression: CompressionSpec = setting(
        CompressionSpec(),
        "codec of rewritten layers: gzip[:1-9] (default gzip:6), zstd[:1-22] (default 3), none",
        metavar="CODEC[:LEVEL]",
        parse=CompressionSpec.parse,
    )
    recompress: bool = setting(False, "recompress unchanged layers with --compression too")
    squash: bool = setting(
        False, "merge every layer above the kept base (--keep-layers, --base) into one layer"
    )
    workers: int | None = setting(
        None, "processes for per-file work (default: all cores)", metavar="N", config=False
    )
    workdir: str | None = setting(None, "directory for temporary files", metavar="DIR", config=False)
    limits: Limits = field(default_factory=Limits)
    progress: Progress | None = field(default=None, compare=False)
    pass_classes: tuple[type[Any], ...] | None = field(default=None, compare=False)
    registry: RegistryAccess = field(default_factory=RegistryAccess, compare=False)

    def describe(self) -> dict[str, Any]:
        """The options as they go in the report (and so in byte-identity comparisons of reports)."""
        return {
            "passes": list(self.passes) if self.passes is not None else None,
            "skip": list(self.skip),
            "strict": self.strict,
            "sanitize": self.sanitize,
            "allow_partial": self.allow_partial,
            "dry_run": self.dry_run,
            "normalize": self.normalize,
            "keep_layers": self.keep_layers,
            "base": self.base,
            "output_format": self.output_format,
            "compression": str(self.compression),
            "recompress": self.recompress,
            "squash": self.squash,
        }
