"""Run-wide options, typed and declared once (``settings``): the CLI flags and the service's rule options are
derived from these fields. Pass options live in each pass's own ``Options`` dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from .limits import Limits, parse_size
from .output import CompressionSpec
from .progress import Progress
from .registry.access import RegistryAccess
from .settings import setting

if TYPE_CHECKING:
    from .pipeline import Pass

OptionsT = TypeVar("OptionsT")

__all__ = ["Options", "Progress", "pass_names"]


def pass_names(text: str) -> tuple[str, ...]:
    """``a,b`` -> ``("a", "b")``; ``none`` (or nothing) -> ``()``."""
    if text.strip() in ("none", ""):
        return ()
    return tuple(name.strip() for name in text.split(",") if name.strip())


@dataclass(frozen=True)
class Options:
    """What ``optimize`` does. Each field's help says what it means; ``pass_options`` maps a pass name to
    that pass's ``Options`` instance (absent passes use their defaults); ``progress`` is called with a
    ``progress.Step`` as the run goes; ``pass_classes`` is the pipeline to choose from, in order (default
    ``passes.PASSES``), for your own passes; ``registry`` says how to reach the registries of ``docker://``
    inputs and outputs (TLS, credentials, timeouts); ``limits`` bounds what an input may make the run read
    and hold (``Limits``: its fields are settings of their own, ``--max-layer-bytes`` and so on). Settings
    marked ``output_only`` (``--format``, ``--pack``, ``--layer-target-size``, ``--publish``) shape only the
    image a run writes: a dry run's estimates do not depend on them, and ``optimize analyze`` refuses them.

    ``pass_options`` holds passes' ``Options`` instances (``(StripElfOptions(mode="debug"),)``): each names its
    pass by its type, so options cannot go to the wrong pass; ``options_for(StripElf)`` reads them back."""

    passes: tuple[str, ...] | None = setting(
        None,
        "comma-separated passes to run ('none' for a pure repack; default: every pass)",
        parse=pass_names,
    )
    skip: tuple[str, ...] = setting((), "comma-separated passes not to run", parse=pass_names)
    pass_options: tuple[object, ...] = ()
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
    base: str | None = setting(
        None,
        "the base image whose layers stay byte-identical (a file, a directory or docker://...); 'none' lets "
        "passes rewrite every layer (default: detected from annotations, provenance and history)",
        metavar="IMAGE|none",
    )
    base_layers: int | None = setting(
        None, "the first N layers are the base (kept byte-identical)", metavar="N", aliases=("--keep-layers",)
    )
    platforms: tuple[str, ...] = setting(
        (),
        "optimize only images of this platform (os/arch[/variant], repeatable; default: every platform); "
        "the others are carried over untouched",
        flag="--platform",
        metavar="OS/ARCH",
        repeat=True,
    )
    protect_layers: frozenset[str] = setting(
        frozenset(),
        "keep this layer byte-identical wherever it is (a digest; repeatable): the service passes the layers "
        "other images of the registry share",
        flag="--protect-layer",
        metavar="DIGEST",
        repeat=True,
    )
    output_format: Literal["oci-archive", "oci-dir"] = setting(
        "oci-archive",
        "output form (default: an OCI archive that docker load also takes)",
        flag="--format",
        config=False,
        output_only=True,
    )
    compression: CompressionSpec | None = setting(
        None,
        "codec of the layers the run writes: gzip[:1-9] (level 6 by default), zstd[:1-22] (3), none "
        "(default: a rewritten layer keeps its codec; uncompressed and new layers get gzip:6)",
        metavar="CODEC[:LEVEL]",
        parse=CompressionSpec.parse,
    )
    recompress: bool = setting(False, "recompress unchanged layers with --compression (default gzip:6) too")
    squash: bool = setting(
        False, "merge every layer above the kept base (--keep-layers, --base) into one layer"
    )
    touch_package_files: bool = setting(
        False,
        "let passes change and delete files that dpkg, rpm or apk list (dpkg --verify, rpm -V, apk audit and "
        "scanners then report them; default: such files are kept and reported)",
    )
    packing: Literal["path", "pull"] = setting(
        "path",
        "entry order of the layers the run writes: path (a rewritten layer keeps its order unless --normalize, "
        "squashed and added layers are in path order) or pull (directories and small files first, identical "
        "files side by side: extraction starts early, the codec sees duplicates together)",
        flag="--pack",
        output_only=True,
    )
    layer_target_size: int | None = setting(
        None,
        "with --squash: cut the squashed layer into layers of about SIZE of tar each (e.g. 64M), which clients "
        "pull in parallel",
        metavar="SIZE",
        parse=parse_size,
        output_only=True,
    )
    publish: Literal["single", "gzip+zstd"] = setting(
        "single",
        "gzip+zstd: write each image twice in one index, gzip first (every client takes the first entry of its "
        "platform) and a zstd twin second (same config, the base layers shared as they are)",
        metavar="single|gzip+zstd",
        output_only=True,
    )
    workers: int | None = setting(
        None,
        "processes for per-file work, and threads reading layers (default: all cores)",
        metavar="N",
        config=False,
    )
    workdir: str | None = setting(None, "directory for temporary files", metavar="DIR", config=False)
    limits: Limits = field(default_factory=Limits)
    progress: Progress | None = field(default=None, compare=False)
    pass_classes: tuple[type[Any], ...] | None = field(default=None, compare=False)
    registry: RegistryAccess = field(default_factory=RegistryAccess, compare=False)

    def options_for(self, cls: type[Pass[OptionsT]]) -> OptionsT:
        """The options given for the pass ``cls``, or its defaults."""
        from .pipeline import options_for

        return options_for(self.pass_options, cls)

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
            "base": self.base,
            "base_layers": self.base_layers,
            "protect_layers": sorted(self.protect_layers),
            "platforms": list(self.platforms),
            "output_format": self.output_format,
            "compression": str(self.compression) if self.compression is not None else "keep",
            "recompress": self.recompress,
            "squash": self.squash,
            "touch_package_files": self.touch_package_files,
            "packing": self.packing,
            "layer_target_size": self.layer_target_size,
            "publish": self.publish,
        }
