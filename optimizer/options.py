"""Run-wide options, typed. Pass options live in each pass's own ``Options`` dataclass."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .output import CompressionSpec

__all__ = ["Options", "Progress"]

Progress = Callable[[str, int, int], None]  # (what, done, total)


@dataclass(frozen=True)
class Options:
    """What ``optimize`` does.

    passes: names of the passes to run, in any order (they always run in the pipeline's order); None runs the
        default set, ``()`` runs none (a pure repack).
    skip: names of passes not to run.
    pass_options: pass name -> that pass's ``Options`` instance; absent passes use their defaults.
    strict: a pass that fails makes the run fail (otherwise its changes are dropped and the run goes on).
    dry_run: do everything but write the output.
    normalize: rewrite every layer canonically (sorted entries, mtimes clamped) so equal content gives equal digests.
    keep_layers: the first N layers of every image stay byte-identical.
    base: a base image (file or directory) whose layers stay byte-identical where the image starts with them.
    protect_layers: layer digests kept byte-identical wherever they are, like non-distributable layers (the
        service passes the layers other images of the registry share).
    output_format: "oci-archive" (a tar, with docker's manifest.json too) or "oci-dir".
    compression: the codec and level of rewritten and new layers.
    recompress: also recompress layers no pass changed (except protected ones) with ``compression``.
    squash: merge every layer above the kept base (``keep_layers``/``base``) into one layer, canonically ordered;
        the history keeps one entry listing what was merged.
    workers: processes for per-file work and compression (default: every core).
    workdir: where temporary files go (default: the system's temporary directory).
    pass_classes: the pipeline to choose from, in order (default ``passes.PASSES``); for your own passes.
    """

    passes: tuple[str, ...] | None = None
    skip: tuple[str, ...] = ()
    pass_options: Mapping[str, Any] = field(default_factory=dict)
    strict: bool = False
    dry_run: bool = False
    normalize: bool = False
    keep_layers: int = 0
    base: str | None = None
    protect_layers: frozenset[str] = frozenset()
    output_format: Literal["oci-archive", "oci-dir"] = "oci-archive"
    compression: CompressionSpec = field(default_factory=CompressionSpec)
    recompress: bool = False
    squash: bool = False
    workers: int | None = None
    workdir: str | None = None
    progress: Progress | None = field(default=None, compare=False)
    pass_classes: tuple[type[Any], ...] | None = field(default=None, compare=False)

    def describe(self) -> dict[str, Any]:
        """The options as they go in the report (and so in byte-identity comparisons of reports)."""
        return {
            "passes": list(self.passes) if self.passes is not None else None,
            "skip": list(self.skip),
            "strict": self.strict,
            "dry_run": self.dry_run,
            "normalize": self.normalize,
            "keep_layers": self.keep_layers,
            "base": self.base,
            "protect_layers": sorted(self.protect_layers),
            "output_format": self.output_format,
            "compression": str(self.compression),
            "recompress": self.recompress,
            "squash": self.squash,
        }
