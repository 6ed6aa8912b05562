"""``optimize(src, dst, options) -> Report``: the one core every front end calls.

``src`` and ``dst`` are local paths (OCI archive, OCI layout directory, ``docker save`` tarball) or registry
references (``docker://HOST/REPO:TAG``), in any mix. The flow of a run (``Optimization``, for callers that
act between the steps, as the webhook service does):

1. open the input (``source``; a registry input is read as it is needed) and read its index tree (``tree``);
2. decide every layer's fate (``plan``): per image, decode each layer once, build the merged view, run the
   passes in order, fold their changes into per-layer decisions;
3. execute the plan (``write``): rewrite only the layers that changed, put added files in one new top layer,
   update config and manifest, rewrite the indexes above changed manifests;
4. store the result: an archive or layout written atomically (``output``), or a push that streams every blob
   from where it is (``registry.copy``): blobs the destination registry holds are mounted, not uploaded.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO

from .accounting import summarize
from .base import BaseFinder, base_layer_lists, layers_of_document
from .documents import ANNOTATION_SOURCE_DIGEST, parse_object
from .errors import OptimizerError, RegistryError, UsageError
from .estimate import estimate_sizes
from .mediatypes import Compression
from .model import Platform
from .options import Options
from .output import (
    CompressionSpec,
    check_destination,
    compressor_versions,
    source_date_epoch,
    write_oci_archive,
    write_oci_dir,
)
from .pipeline import Pass, WorkerPool
from .pipeline import select_passes as _select
from .plan import Planner, RunPlan, plan_run
from .progress import CountingReader, Throttle, steps
from .pull import pull_bytes
from .registry.access import Clients
from .registry.reference import Reference, is_registry_ref, parse_registry_ref
from .report import Report
from .source import Blobs, Source, open_source
from .spool import Spool
from .tree import Node, read_tree
from .write import Output, WriteSettings, write_run

if TYPE_CHECKING:
    from .registry.client import Manifest

__all__ = ["ANNOTATION_SOURCE_DIGEST", "Optimization", "optimize", "select_passes"]

MIN_LAYER_TARGET = 1 << 20  # smaller parts would make many tiny layers (and runtimes cap a stack near 128)


def select_passes(options: Options) -> list[tuple[type[Pass[Any]], Any]]:
    """The passes to run, in pipeline order, each with its options."""
    from passes import PASSES

    pipeline = options.pass_classes if options.pass_classes is not None else PASSES
    return _select(pipeline, options.passes, options.skip, options.pass_options)


def optimize(src: str, dst: str | None, options: Options | None = None) -> Report:
    """Optimize the image at ``src`` and store the result at ``dst`` (None only with ``dry_run``)."""
    options = options or Options()
    if dst is None and not options.dry_run:
        raise UsageError("an output path is needed unless dry_run is set")
    if dst is not None and os.path.abspath(src) == os.path.abspath(dst):
        raise UsageError("the output must not be the input: nothing the user had is overwritten")
    if dst is not None and not options.dry_run and not is_registry_ref(dst):
        check_destination(dst, options.output_format)  # before any work, not after it
    with Optimization(src, options, dst) as run:
        run.execute()
        if dst is not None and not options.dry_run:
            run.store(dst)
        return run.report


class Optimization:
    """One run, step by step: ``with Optimization(src, options) as run: run.execute(); run.store(dst)``.

    Entering opens the input (and a work directory, removed on exit: nothing is left behind). ``tree`` is the
    input's index tree; ``execute`` plans and (unless ``dry_run``) writes, filling ``report``; ``store``
    writes the output atomically or pushes it. Between the steps a caller can look and decide (the service
    skips its own outputs and images that did not shrink, and sets ``options`` again before ``execute`` to
    protect the layers other images share).
    """

    def __init__(self, src: str, options: Options | None = None, dst: str | None = None) -> None:
        self.src = src
        self.options = options or Options()
        _check_options(self.options)
        self.passes = select_passes(self.options)
        self.report = Report(
            src,
            dst or "",
            self.options.dry_run,
            compressors=compressor_versions(),
            options=self.options.describe(),
        )
        self.output: Output | None = None
        self.plan: RunPlan | None = None
        self._started = time.monotonic()
        self._workdir: str | None = None
        self._clients = Clients(self.options.registry)
        self._lookups = Clients(
            replace(self.options.registry, retries=0, timeout=min(10.0, self.options.registry.timeout))
        )
        self._source: Source | None = None
        self._tree: list[Node] | None = None

    def __enter__(self) -> Optimization:
        self._workdir = tempfile.mkdtemp(prefix="oci-optimizer-", dir=self.options.workdir)
        try:
            self._source = self._open(self.src)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        self.report.warnings.extend(self._source.warnings)
        self.report.index_digest_before = "sha256:" + hashlib.sha256(self._source.index_bytes).hexdigest()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._source is not None and self._source.kind == "registry":
            from .source.registry import RegistryBlobs  # loaded already: the source came from there

            if isinstance(self._source.blobs, RegistryBlobs):
                self._source.blobs.close()
        self._clients.close()
        self._lookups.close()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        self.report.seconds = round(time.monotonic() - self._started, 3)

    @property
    def source(self) -> Source:
        if self._source is None:
            raise UsageError("the optimization is not open: use it in a with statement")
        return self._source

    @property
    def workdir(self) -> str:
        if self._workdir is None:
            raise UsageError("the optimization is not open: use it in a with statement")
        return self._workdir

    @property
    def tree(self) -> list[Node]:
        """The input's index tree (read once)."""
        if self._tree is None:
            self._tree = read_tree(self.source.blobs, self.source.root_manifests, limits=self.options.limits)
        return self._tree

    def execute(self) -> Report:
        """Plan every image and, unless ``dry_run``, write what the plan calls for (a dry run estimates the
        sizes of the layers it would write instead of compressing them)."""
        options = self.options  # a caller may have changed them since (the service adds shared layers)
        self.passes = select_passes(options)
        self.report.options = options.describe()
        pool = WorkerPool(options.workers)
        try:
            spool = Spool(os.path.join(self.workdir, "new-content.pack"))
            bases = self._base_finder()
            planner = Planner(
                self.source, options, self.passes, pool, spool, self.workdir, self.report, bases
            )
            self.plan = plan_run(planner, self.tree)
        finally:
            pool.close()
        if options.dry_run:
            estimate_sizes(self.plan)  # nothing is compressed: sizes after are estimates
        else:
            settings = _settings(options, pool.workers)
            self.output = write_run(self.plan, settings, self.workdir, self.report, options.progress)
        self.report.bytes_before = sum(i.size_before for i in self.report.images)
        self.report.bytes_after = sum(i.size_after for i in self.report.images)
        _pull_figures(self.plan, self.report)
        self.report.summary = summarize(self.report, self.plan.images.values())
        self.report.bytes_before = self.report.summary.bytes_before
        self.report.bytes_after = self.report.summary.bytes_after
        return self.report

    def store(self, dst: str, before_push: Callable[[list[str]], None] | None = None) -> None:
        """Write the output to ``dst`` (archive or layout, atomically) or push it to a ``docker://`` reference;
        ``before_push`` receives every manifest digest about to be pushed, before the first is."""
        if self.output is None:
            raise UsageError("nothing to store: execute() has not run")
        self.report.output = dst
        blobs = self.output.blobs
        storing = steps(self.options.progress, "store", dst, sum(size for _, size, _ in blobs.values()))
        counted = {
            digest: (digest, size, _counting(opener, storing)) for digest, (_, size, opener) in blobs.items()
        }
        output = replace(self.output, blobs=counted)
        if is_registry_ref(dst):
            ref = parse_registry_ref(dst)
            client = self._clients.get(ref.registry, source=False)
            image = _OutputImage(output, self.source, dst)
            from .registry.copy import push_image

            self.report.pushed_digest = push_image(client, image, ref, before_put=before_push)
        else:
            writer = write_oci_dir if self.options.output_format == "oci-dir" else write_oci_archive
            writer(dst, output.index_bytes, output.docker_manifest, output.blobs)
        storing.finish()

    def _base_finder(self) -> BaseFinder:
        options = self.options
        lists: list[list[str]] = []
        if options.base is not None and options.base != "none":
            lists = base_layer_lists(options.base, self._open_tree)
        fetch = self._fetch_layers if self.source.kind == "registry" else None
        return BaseFinder(self.source.blobs, self.tree, options.base, options.base_layers, lists, fetch)

    def _open_tree(self, src: str) -> tuple[Blobs, list[Node]]:
        """Another input (``--base IMAGE``), read in this run's work directory."""
        workdir = tempfile.mkdtemp(prefix="base-", dir=self.workdir)
        if is_registry_ref(src):
            from .source.registry import open_registry

            source = open_registry(src, workdir, self._clients)
        else:
            source = open_source(src, workdir, name=f"base {src}")
        return source.blobs, read_tree(source.blobs, source.root_manifests)

    def _fetch_layers(self, reference: str, digest: str, platform: Platform | None) -> list[str] | None:
        """The layers of a base image named by reference and digest, from its registry (one attempt: a base
        on a registry we cannot reach must not slow every run)."""
        try:
            ref = Reference.parse(reference)
            client = self._lookups.get(ref.registry, source=True)
            document = client.get_manifest(ref.repository, digest, digest).document
            return layers_of_document(
                document,
                platform,
                lambda child: layers_of_document(
                    client.get_manifest(ref.repository, child, child).document, None, lambda _: None
                ),
            )
        except OptimizerError as error:
            self.report.warnings.append(
                f"base image {reference}@{digest}: its layers could not be read: {error}"
            )
            return None

    def _open(self, src: str) -> Source:
        if is_registry_ref(src):
            from .source.registry import open_registry

            return open_registry(src, self.workdir, self._clients)
        return open_source(src, self.workdir, limits=self.options.limits)


def _counting(opener: Callable[[], BinaryIO], progress: Throttle) -> Callable[[], BinaryIO]:
    """``opener`` whose readers tell ``progress`` of the bytes read (the bytes stored)."""
    return lambda: io.BufferedReader(CountingReader(opener(), progress), 1 << 20)


def _check_options(options: Options) -> None:
    if options.output_format not in ("oci-archive", "oci-dir"):
        raise UsageError(f"unknown output format {options.output_format!r}: use oci-archive or oci-dir")
    if options.base_layers is not None and options.base_layers < 0:
        raise UsageError("--base-layers cannot be negative")
    for platform in options.platforms:
        if len(platform.strip("/").split("/")) not in (2, 3):
            raise UsageError(f"--platform {platform!r}: expected OS/ARCH or OS/ARCH/VARIANT (linux/arm64/v8)")
    if options.workers is not None and options.workers < 1:
        raise UsageError(f"--workers must be at least 1, not {options.workers} (leave it out for all cores)")
    _check_packing(options)


def _check_packing(options: Options) -> None:
    if options.layer_target_size is not None:
        if not options.squash:
            raise UsageError("--layer-target-size cuts the squashed layer: it needs --squash")
        if options.layer_target_size < MIN_LAYER_TARGET:
            raise UsageError(f"--layer-target-size must be at least {MIN_LAYER_TARGET >> 20} MiB")
    if options.publish not in ("single", "gzip+zstd"):
        raise UsageError(f"unknown --publish {options.publish!r}: use single or gzip+zstd")
    compression = options.compression
    if (
        options.publish == "gzip+zstd"
        and compression is not None
        and compression.codec is not Compression.GZIP
    ):
        raise UsageError("--publish gzip+zstd writes the gzip image first: --compression must be gzip")
    if options.packing not in ("path", "pull"):
        raise UsageError(f"unknown packing {options.packing!r}: use path or pull")


def _settings(options: Options, workers: int) -> WriteSettings:
    # Layers: mtimes clamped to SOURCE_DATE_EPOCH, or to 0 when normalising without it (content alone decides
    # the digest). The config's times follow SOURCE_DATE_EPOCH only.
    config_clamp = source_date_epoch()
    layer_clamp = 0 if options.normalize and config_clamp is None else config_clamp
    keep_smaller = not (
        options.normalize or options.recompress
    )  # those rewrite on purpose, whatever the size
    return WriteSettings(
        options.compression or CompressionSpec(),
        options.normalize,
        workers,
        layer_clamp,
        config_clamp,
        keep_smaller,
        options.packing,
        options.layer_target_size,
        options.publish,
    )


class _OutputImage:
    """The run's output as an image to push: manifests from memory or the input, blobs streamed from where
    they are; blobs carried from a registry input are mounted when the destination is the same registry."""

    def __init__(self, output: Output, source: Source, name: str) -> None:
        self.output = output
        self.source = source
        self.name = name

    def root(self) -> dict[str, Any]:
        from .registry.copy import single_root

        return single_root(parse_object(self.output.index_bytes, f"{self.name}: index.json"), self.name)

    def manifest(self, descriptor: dict[str, Any]) -> Manifest:
        opener = self.opener(descriptor["digest"], descriptor["size"], f"{self.name}: manifest")
        with opener() as reader:
            data = reader.read()
        from .registry.copy import manifest_of

        return manifest_of(descriptor, data, self.name)

    def has_blob(self, digest: str) -> bool:
        return digest in self.output.blobs

    def opener(self, digest: str, size: int, what: str) -> Callable[[], BinaryIO]:
        found = self.output.blobs.get(digest)
        if found is None:
            raise RegistryError(
                f"{what}: blob {digest} is not in the image (a partial input cannot be pushed)"
            )
        return found[2]

    def mount_sources(self, digest: str, registry: str) -> list[str]:
        origin = self.source.blobs.origin(digest) if digest in self.output.from_input else None
        return [origin.repository] if origin is not None and origin.registry == registry else []


def _pull_figures(run: RunPlan, report: Report) -> None:
    """Cold and warm pull bytes, per image and for every image of the input together."""
    befores, afters = [], []
    for plan in run.images.values():
        after = plan.pull_after or plan.pull_before
        plan.report.pull = pull_bytes([plan.pull_before], [after])
        befores.append(plan.pull_before)
        afters.append(after)
    report.pull = pull_bytes(befores, afters)
