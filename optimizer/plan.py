"""Deciding every layer's fate for the whole input, before a byte is written.

``plan_run`` reads the input's index tree (``tree.read_tree``), and for every image manifest in it: works
out which layers belong to the base (``base``), decodes each layer once (``layer.index_layer``; a layer
shared by several images is decoded once per run), builds the merged view, runs the passes in order
(``pipeline.run_passes``), and folds their changes into one decision per layer:

- ``kept``: protected (the base, ``--keep-layers``, non-distributable): copied byte for byte;
- ``unchanged``: no change touches it: copied byte for byte;
- ``rewrite``: changed (or ``--normalize``/``--recompress``): written again with the run's codec;
- ``dropped``: every entry it had is gone: left out, its history entry marked empty;
- ``merged``: ``--squash`` folds it into one layer above the base.

Added files go into one new top layer. Nothing is compressed here: ``write`` executes the plan, and a dry run
reports it as it is (sizes of rewritten layers are then estimates).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import mediatypes as mt
from .base import BaseFinder, Protection
from .changes import Change
from .digest import short
from .documents import parse_object
from .errors import LayerError
from .filesystem import FileSystem, build_filesystem
from .history import config_platform
from .layer import LayerIndex, index_layer
from .model import Descriptor, Entry
from .options import Options
from .output import CompressionSpec
from .pipeline import ImageInfo, Pass, PassContext, WorkerPool, run_passes
from .progress import steps
from .pull import ImageBlobs
from .reading import LayerRead, read_side_by_side
from .rebuild import ChangePlan, LayerPlan, build_plan, layer_entries, lower_paths_of
from .report import ImageReport, LayerReport, Report
from .source import Source
from .spool import Spool
from .tree import Node, NodeKind
from .verify import (
    check_diff_ids,
    check_media_types,
    config_diff_ids,
    missing_blobs,
    missing_manifest,
    unsafe_names_kept,
)

__all__ = ["ImagePlan", "LayerDecision", "Planner", "RunPlan", "plan_run", "tar_size"]

log = logging.getLogger("oci_optimizer")

EMPTY_LAYER_PLAN = LayerPlan()


@dataclass
class LayerDecision:
    """What becomes of one layer of one image."""

    number: int  # 0-based position in the manifest
    descriptor: Descriptor
    diff_id: str
    fate: str  # "kept", "unchanged", "rewrite", "dropped", "merged"
    plan: LayerPlan | None
    report: LayerReport
    spec: CompressionSpec = field(default_factory=CompressionSpec)  # the codec a rewrite is written with


@dataclass
class ImagePlan:
    """Everything ``write`` needs to produce one image manifest."""

    node: Node
    name: str
    config: dict[str, Any]
    docker_family: bool
    protected: int  # the first layers that stay byte-identical (the base)
    report: ImageReport
    base: Protection  # the base as detected (``protected`` is 0 with --base none)
    pull_after: ImageBlobs | None = None  # what a node pulls for the output image (set once it is written)
    indexes: list[LayerIndex] = field(default_factory=list)  # each layer's entries, when they were read
    layers: list[LayerDecision] = field(default_factory=list)
    changes: ChangePlan = field(default_factory=ChangePlan)
    final_fs: FileSystem | None = None  # the merged view after the passes
    squash: bool = False
    held: set[int] = field(default_factory=set)  # layers kept wherever they stand (non-distributable, shared)
    shared: set[int] = field(default_factory=set)  # layers other images of the registry share

    @property
    def squash_base(self) -> int:
        """The layers --squash keeps as they are: the base, and everything up to the last shared layer."""
        return max([self.protected, *(i + 1 for i in self.shared)])

    @property
    def base_digests(self) -> frozenset[str]:
        return frozenset(d.digest for d in self.node.layers[: self.base.count])

    @property
    def pull_before(self) -> ImageBlobs:
        node = self.node
        assert node.config is not None
        blobs = {node.digest: node.descriptor.size, node.config.digest: node.config.size}
        blobs.update((d.digest, d.size) for d in node.layers)
        return ImageBlobs(blobs, self.base_digests)


@dataclass
class RunPlan:
    """The decisions for a whole input: its tree, and a plan for each image manifest in it."""

    source: Source
    roots: list[Node]
    images: dict[str, ImagePlan] = field(default_factory=dict)  # manifest digest -> plan
    pass_names: tuple[str, ...] = ()


@dataclass(eq=False)
class Planner:
    """What the planning of one run works with: the input, the run's options and passes, the worker pool, the
    spool and work directory for new content, the report, and the base finder (``base``)."""

    source: Source
    options: Options
    passes: Sequence[tuple[type[Pass[Any]], Any]]
    pool: WorkerPool
    spool: Spool
    workdir: str
    report: Report
    bases: BaseFinder
    # (digest, sanitized) -> the layer's entries: a layer several images share is decoded once per run
    layer_cache: dict[tuple[str, bool], LayerIndex] = field(default_factory=dict)

    def selected(self, node: Node) -> bool:
        """Whether ``--platform`` (when given) names this image's platform (the config's, when the index
        does not say)."""
        wanted = self.options.platforms
        if not wanted:
            return True
        platform = node.descriptor.platform
        if platform is None and node.config is not None:
            config = parse_object(
                self.source.blobs.read(node.config, "config"), f"{self.source.name}: config"
            )
            platform = config_platform(config)
        return platform is not None and any(platform.matches(w) for w in wanted)

    def image(self, node: Node) -> ImagePlan:
        plan = self.new_plan(node)
        layers = list(node.layers)
        options = self.options
        # Non-distributable layers and layers other images share (``protect_layers``) are held as they are,
        # wherever they stand; --squash merges only what lies above the last of them.
        non_distributable = {i for i, d in enumerate(layers) if d.media_type in mt.NON_DISTRIBUTABLE}
        plan.shared = {i for i, d in enumerate(layers) if d.digest in options.protect_layers}
        plan.held = non_distributable | plan.shared
        diff_ids = self.read_layers(plan, plan.held)
        changes: list[Change] = []
        if self.passes or options.squash:
            # The merged view is for passes and squashing; a bare re-encode (--normalize, --recompress) only
            # needs each layer's own entries, and skipping the view keeps memory down on many-file images.
            below = plan.squash_base if options.squash else plan.protected
            changes = self.run_pipeline(plan, frozenset(range(below)) | plan.held)
        plan.changes = build_plan(changes, len(layers))
        if options.squash and plan.final_fs is not None and len(layers) - plan.squash_base >= 2:
            if non_distributable & set(range(plan.squash_base, len(layers))):
                plan.report.warnings.append(
                    f"{plan.name}: not squashed: layers above the base are non-distributable and stay as they are"
                )
            else:
                plan.squash = True
                plan.layers = _squash_decisions(layers, diff_ids, plan.squash_base, plan.changes)
        if not plan.squash:
            plan.layers = [
                self.decide(number, layer, diff_ids[number], plan, plan.held)
                for number, layer in enumerate(layers)
            ]
        for decision in plan.layers:
            decision.report.media_type_before = decision.descriptor.media_type
        for decision, index in zip(plan.layers, plan.indexes, strict=False):
            decision.report.uncompressed_before = tar_size(item.entry for item in index.entries)
            if decision.fate in ("kept", "unchanged"):
                decision.report.uncompressed_after = decision.report.uncompressed_before
        plan.report.layers.extend(decision.report for decision in plan.layers)
        self.unsafe_names(plan)
        return plan

    def read_layers(self, plan: ImagePlan, held: set[int]) -> list[str]:
        """Check the image's blobs and, when the run needs them, read its layers into ``plan.indexes``
        (verified against the config's diff_ids, which are returned); layers not read are sniffed."""
        options = self.options
        layers = plan.node.layers
        total = len(layers)
        diff_ids = config_diff_ids(plan.config, total, plan.name)
        if options.base_layers is not None and options.base_layers > total:
            message = (
                f"{plan.name}: --base-layers {options.base_layers} is more than its {total} layers: "
                f"every layer is kept as it is"
            )
            log.warning("warning: %s", message)
            plan.report.warnings.append(message)
        read = bool(self.passes) or options.normalize or options.recompress or options.squash
        read = read or options.sanitize or options.strict
        named = [(f"layer {n}/{total}", layer) for n, layer in enumerate(layers, 1)]
        plan.report.warnings.extend(
            missing_blobs(self.source.blobs, plan.name, named, options.allow_partial, read)
        )
        if not read:
            plan.report.warnings.extend(check_media_types(self.source.blobs, layers, plan.name))
            return diff_ids
        sanitize = frozenset(n for n in range(plan.protected, total) if options.sanitize and n not in held)
        plan.indexes = self.index_layers(layers, plan.name, sanitize)
        check_diff_ids(plan.indexes, diff_ids, plan.name)
        for index in plan.indexes:
            plan.report.warnings.extend(index.warnings)
        return diff_ids

    def unsafe_names(self, plan: ImagePlan) -> None:
        """Layers that keep member names leaving the root, byte for byte: said on stderr, fatal if strict."""
        total = len(plan.indexes)
        for decision in plan.layers:
            if decision.fate not in ("kept", "unchanged") or decision.number >= total:
                continue
            index = plan.indexes[decision.number]
            where = f"{plan.name}, layer {decision.number + 1}/{total} {short(index.descriptor.digest)}"
            message = unsafe_names_kept(index, where)
            if not message:
                continue
            if self.options.strict:
                raise LayerError(message)
            log.warning("warning: %s", message)
            plan.report.warnings.append(message)

    def new_plan(self, node: Node) -> ImagePlan:
        """An image's plan before its layers are read: config, report, protected base."""
        assert node.config is not None
        name = node.label(self.source.name)
        what = f"{self.source.name}: config {short(node.config.digest)}"
        config = parse_object(self.source.blobs.read(node.config, "config"), what)
        descriptor = node.descriptor
        docker_family = mt.is_docker(descriptor.media_type or str(node.document.get("mediaType", "")))
        platform = str(descriptor.platform or config_platform(config))
        report = ImageReport(name, platform, node.digest, node.digest)
        self.report.images.append(report)
        protection = self.bases.protection(node, config, name)
        report.warnings.extend(protection.warnings)
        protected = protection.count if self.options.base != "none" else 0
        report.base = {**protection.describe(), "protected": protected}
        return ImagePlan(node, name, config, docker_family, protected, report, protection)

    def run_pipeline(self, plan: ImagePlan, protected: frozenset[int]) -> list[Change]:
        """Run the passes over the image's merged view; the view they leave is ``plan.final_fs``."""
        node = plan.node
        fs = build_filesystem([i.entries for i in plan.indexes], protected)
        platform = node.descriptor.platform or config_platform(plan.config)
        info = ImageInfo(plan.name, node.digest, platform, plan.config, [d.digest for d in node.layers])
        indexes = plan.indexes
        shared: dict[str, Any] = {}  # one per image: what a pass learns about it, the next passes reuse
        touch = self.options.touch_package_files
        outcome = run_passes(
            self.passes,
            lambda view, recorder, report, tracker: PassContext(
                view,
                recorder,
                info,
                report,
                self.pool,
                self.options.dry_run,
                indexes,
                shared,
                touch,
                workdir=self.workdir,
                progress=tracker,
            ),
            fs,
            self.spool,
            plan.report.passes,
            self.options.strict,
            plan.name,
            self.options.progress,
        )
        plan.final_fs = outcome.fs
        return outcome.changes

    def decide(
        self, number: int, layer: Descriptor, diff_id: str, plan: ImagePlan, non_distributable: set[int]
    ) -> LayerDecision:
        options = self.options
        layer_plan = plan.changes.layers.get(number)
        rewritable = number >= plan.protected and number not in non_distributable
        sanitized = bool(plan.indexes) and plan.indexes[number].sanitized
        must_write = bool(layer_plan) or ((options.normalize or options.recompress) and rewritable)
        spec = layer_spec(options.compression, layer.media_type, options.recompress)
        if options.recompress and not options.normalize and not layer_plan and not sanitized:
            current = mt.layer_compression(layer.media_type)
            must_write = must_write and current is not None and (current is not spec.codec)
        must_write = must_write or (sanitized and rewritable)
        changed = layer_plan.changes if layer_plan else 0
        if not must_write:
            status = "kept" if number < plan.protected or number in plan.held else "unchanged"
            report = LayerReport(
                number + 1, layer.digest, layer.digest, layer.size, layer.size, status, layer.media_type
            )
            return LayerDecision(number, layer, diff_id, status, layer_plan, report)
        items = layer_entries(
            plan.indexes[number],
            layer_plan or EMPTY_LAYER_PLAN,
            lower_paths_of(plan.indexes, number, plan.changes),
            options.normalize,
        )
        if not items:
            report = LayerReport(
                number + 1, layer.digest, "", layer.size, 0, "dropped", layer.media_type, changed
            )
            return LayerDecision(number, layer, diff_id, "dropped", layer_plan, report)
        media_type = mt.layer_media_type(plan.docker_family, spec.codec)
        if layer.media_type in mt.NON_DISTRIBUTABLE:
            media_type = layer.media_type
        report = LayerReport(
            number + 1, layer.digest, "", layer.size, layer.size, "rewritten", media_type, changed
        )
        return LayerDecision(number, layer, diff_id, "rewrite", layer_plan, report, spec)

    def index_layers(
        self, layers: Sequence[Descriptor], name: str, sanitize: frozenset[int] = frozenset()
    ) -> list[LayerIndex]:
        """Each layer's entries, read once per run (``sanitize``: the layers read without unsafe names); the
        layers not read yet are read side by side first (``reading``). The image's uncompressed bytes are
        counted against ``--max-image-bytes`` in layer order, and a layer the side-by-side reading could not
        read is read here, in order, so that a failure names the layer a sequential reading names."""
        limits = self.options.limits
        total = len(layers)
        keys = [(layer.digest, n in sanitize) for n, layer in enumerate(layers)]
        first = {key: n for n, key in reversed(list(enumerate(keys))) if key not in self.layer_cache}
        unread = sorted(first.values())
        self.source.blobs.prefetch([layers[n] for n in unread])
        if len(unread) > 1 and self.pool.workers > 1:
            reads = [self.layer_read(layers[n], n, total, name, keys[n][1]) for n in unread]
            label = f"layers {number_ranges(n + 1 for n in unread)}/{total}"
            reading = steps(self.options.progress, "read", label, sum(layers[n].size for n in unread))
            found = read_side_by_side(self.source.blobs, reads, limits, self.pool.workers, reading)
            if len(found) == len(unread):
                reading.finish()
            self.layer_cache.update((keys[n], index) for n, index in found.items())
        indexes = []
        used = 0
        for number, (layer, key) in enumerate(zip(layers, keys, strict=True)):
            read = self.layer_read(layer, number, total, name, key[1])
            cap = limits.layer_cap(layer.size, limits.max_image_bytes - used)
            cached = self.layer_cache.get(key)
            if cached is None:
                label = f"layer {number + 1}/{total} {short(layer.digest)}"
                reading = steps(self.options.progress, "read", label, layer.size)
                cached = index_layer(
                    self.source.blobs, layer, read.spool, read.where, limits, cap, key[1], reading
                )
                reading.finish()
                self.layer_cache[key] = cached
            elif cached.size > cap.bytes:
                raise cap.exceeded(read.where)
            used += cached.size
            indexes.append(cached)
        return indexes

    def layer_read(self, layer: Descriptor, number: int, total: int, name: str, sanitize: bool) -> LayerRead:
        """Where layer ``number`` (0-based) of image ``name`` is spooled, and how messages name it."""
        suffix = "-sanitized" if sanitize else ""
        spool = os.path.join(self.workdir, f"layer-{layer.digest.replace(':', '-')}{suffix}.pack")
        where = f"{name}, layer {number + 1}/{total} {short(layer.digest)}"
        return LayerRead(number, layer, spool, where, sanitize)


def number_ranges(numbers: Iterable[int]) -> str:
    """``1-5``, ``2-4,6``: ascending numbers, runs shortened."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def layer_spec(chosen: CompressionSpec | None, media_type: str, recompress: bool) -> CompressionSpec:
    """The codec a layer is written with: the one asked for; else its own (gzip or zstd, at our level), so a
    zstd layer does not become a larger gzip one; uncompressed layers (and ``--recompress``) get gzip."""
    if chosen is not None:
        return chosen
    current = mt.layer_compression(media_type)
    if current in (mt.Compression.GZIP, mt.Compression.ZSTD) and not recompress:
        return CompressionSpec(current)
    return CompressionSpec()


def _squash_decisions(
    layers: Sequence[Descriptor], diff_ids: Sequence[str], protected: int, changes: ChangePlan
) -> list[LayerDecision]:
    decisions = []
    for number, layer in enumerate(layers):
        layer_plan = changes.layers.get(number)
        if number < protected:
            report = LayerReport(
                number + 1, layer.digest, layer.digest, layer.size, layer.size, "kept", layer.media_type
            )
            decisions.append(LayerDecision(number, layer, diff_ids[number], "kept", layer_plan, report))
        else:
            changed = layer_plan.changes if layer_plan else 0
            report = LayerReport(
                number + 1, layer.digest, "", layer.size, 0, "merged", layer.media_type, changed
            )
            decisions.append(LayerDecision(number, layer, diff_ids[number], "merged", layer_plan, report))
    return decisions


def plan_run(planner: Planner, roots: list[Node]) -> RunPlan:
    """Decide every image's layers (the passes run here); ``roots``: the input's tree (``tree.read_tree``)."""
    source, options, report = planner.source, planner.options, planner.report
    run = RunPlan(source, roots, pass_names=tuple(cls.name for cls, _ in planner.passes))
    for node in _image_order(roots):
        if node.kind is NodeKind.MISSING:
            report.warnings.append(missing_manifest(node, source.name, options.allow_partial))
            continue
        report.warnings.extend(node.warnings)
        if node.kind is NodeKind.IMAGE and planner.selected(node):
            run.images[node.digest] = planner.image(node)
        elif node.kind is NodeKind.IMAGE:
            report.carried.append(
                f"{short(node.digest)} {node.descriptor.platform or ''}: not a --platform chosen"
            )
        elif node.kind is NodeKind.MANIFEST:
            _carried(source, node, report, options.allow_partial)
    return run


def _image_order(roots: Sequence[Node]) -> list[Node]:
    """Every node once, in the order the old recursive walk met them: an index before its children."""
    seen: set[str] = set()
    order: list[Node] = []

    def visit(node: Node) -> None:
        if node.digest in seen:
            return
        seen.add(node.digest)
        order.append(node)
        for child in node.children:
            visit(child)

    for root in roots:
        visit(root)
    return order


def _carried(source: Source, node: Node, report: Report, allow_partial: bool) -> None:
    """A manifest copied untouched: say so, and refuse (or with ``allow_partial``, warn about) the blobs it
    names that the input lacks."""
    assert node.config is not None
    name = node.label(source.name)
    if node.odd_layer_types:
        message = (
            f"{name}: layers of a media type we do not read ({', '.join(node.odd_layer_types)}): "
            f"the image passes through untouched"
        )
        log.warning("warning: %s", message)
        report.warnings.append(message)
    report.carried.append(f"{short(node.digest)} {node.config.media_type}")
    total = len(node.layers)
    named = [("config", node.config), *((f"layer {n}/{total}", d) for n, d in enumerate(node.layers, 1))]
    report.warnings.extend(missing_blobs(source.blobs, name, named, allow_partial, read=False))


def tar_size(entries: Iterable[Entry]) -> int:
    """The size of a tar of these entries: a 512-byte header each, contents padded to 512 bytes."""
    return sum(512 + (entry.size + 511) // 512 * 512 for entry in entries) + 1024
