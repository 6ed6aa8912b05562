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

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import mediatypes as mt
from .base import BaseFinder, Protection
from .changes import Change
from .digest import short
from .documents import parse_object
from .errors import FormatError
from .filesystem import FileSystem, build_filesystem
from .history import config_platform
from .layer import LayerIndex, index_layer
from .model import Descriptor, Entry
from .options import Options
from .output import CompressionSpec
from .pipeline import ImageInfo, Pass, PassContext, WorkerPool, run_passes
from .pull import ImageBlobs
from .rebuild import ChangePlan, LayerPlan, build_plan, layer_entries, lower_paths_of, whiteouts_for
from .report import ImageReport, LayerReport, Report
from .source import Source
from .spool import Spool
from .tree import Node, NodeKind

__all__ = ["ImagePlan", "LayerDecision", "RunPlan", "estimate_sizes", "plan_run", "tar_size"]

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


class _Planner:
    def __init__(
        self,
        source: Source,
        options: Options,
        passes: Sequence[tuple[type[Pass[Any]], Any]],
        pool: WorkerPool,
        spool: Spool,
        workdir: str,
        report: Report,
        bases: BaseFinder,
    ) -> None:
        self.source = source
        self.options = options
        self.passes = passes
        self.pool = pool
        self.spool = spool
        self.workdir = workdir
        self.report = report
        self.layer_cache: dict[str, LayerIndex] = {}
        self.bases = bases

    def progress(self, what: str, done: int, total: int) -> None:
        if self.options.progress is not None:
            self.options.progress(what, done, total)

    def image(self, node: Node) -> ImagePlan:
        plan = self.new_plan(node)
        layers = list(node.layers)
        options = self.options
        # Non-distributable layers and layers other images share (``protect_layers``) are held as they are,
        # wherever they stand; --squash merges only what lies above the last of them.
        non_distributable = {i for i, d in enumerate(layers) if d.media_type in mt.NON_DISTRIBUTABLE}
        plan.shared = {i for i, d in enumerate(layers) if d.digest in options.protect_layers}
        plan.held = non_distributable | plan.shared
        if self.passes or options.normalize or options.recompress or options.squash:
            plan.indexes = self.index_layers(layers, plan.name)
            for index in plan.indexes:
                plan.report.warnings.extend(index.warnings)
        changes: list[Change] = []
        if self.passes or options.squash:
            # The merged view is for passes and squashing; a bare re-encode (--normalize, --recompress) only
            # needs each layer's own entries, and skipping the view keeps memory down on many-file images.
            below = plan.squash_base if options.squash else plan.protected
            changes = self.run_pipeline(plan, frozenset(range(below)) | plan.held)
        diff_ids: list[str] = list((plan.config.get("rootfs") or {}).get("diff_ids") or [])
        if len(diff_ids) != len(layers):
            raise FormatError(
                f"{plan.name}: the config has {len(diff_ids)} diff_ids for {len(layers)} layers"
            )
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
        plan.report.layers.extend(decision.report for decision in plan.layers)
        return plan

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
        outcome = run_passes(
            self.passes,
            lambda view, recorder, report: PassContext(
                view, recorder, info, report, self.pool, self.options.dry_run, indexes
            ),
            fs,
            self.spool,
            plan.report.passes,
            self.options.strict,
            plan.name,
        )
        plan.final_fs = outcome.fs
        return outcome.changes

    def decide(
        self, number: int, layer: Descriptor, diff_id: str, plan: ImagePlan, non_distributable: set[int]
    ) -> LayerDecision:
        options = self.options
        layer_plan = plan.changes.layers.get(number)
        must_write = bool(layer_plan) or (
            (options.normalize or options.recompress)
            and number >= plan.protected
            and number not in non_distributable
        )
        spec = layer_spec(options.compression, layer.media_type, options.recompress)
        if options.recompress and not options.normalize and not layer_plan:
            current = mt.layer_compression(layer.media_type)
            must_write = must_write and current is not None and (current is not spec.codec)
        changed = layer_plan.changes if layer_plan else 0
        if not must_write:
            status = "kept" if number < plan.protected or number in plan.held else "unchanged"
            report = LayerReport(
                number, layer.digest, layer.digest, layer.size, layer.size, status, layer.media_type
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
                number, layer.digest, "", layer.size, 0, "dropped", layer.media_type, changed
            )
            return LayerDecision(number, layer, diff_id, "dropped", layer_plan, report)
        media_type = mt.layer_media_type(plan.docker_family, spec.codec)
        if layer.media_type in mt.NON_DISTRIBUTABLE:
            media_type = layer.media_type
        report = LayerReport(
            number, layer.digest, "", layer.size, layer.size, "rewritten", media_type, changed
        )
        return LayerDecision(number, layer, diff_id, "rewrite", layer_plan, report, spec)

    def index_layers(self, layers: Sequence[Descriptor], name: str) -> list[LayerIndex]:
        self.source.blobs.prefetch([layer for layer in layers if layer.digest not in self.layer_cache])
        indexes = []
        for number, layer in enumerate(layers, 1):
            cached = self.layer_cache.get(layer.digest)
            if cached is None:
                where = f"{name}, layer {number}/{len(layers)} {short(layer.digest)}"
                self.progress(f"reading layer {number}/{len(layers)}", number - 1, len(layers))
                spool = os.path.join(self.workdir, f"layer-{layer.digest.replace(':', '-')}.pack")
                cached = index_layer(self.source.blobs, layer, spool, where)
                self.layer_cache[layer.digest] = cached
            indexes.append(cached)
        return indexes


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
                number, layer.digest, layer.digest, layer.size, layer.size, "kept", layer.media_type
            )
            decisions.append(LayerDecision(number, layer, diff_ids[number], "kept", layer_plan, report))
        else:
            changed = layer_plan.changes if layer_plan else 0
            report = LayerReport(number, layer.digest, "", layer.size, 0, "merged", layer.media_type, changed)
            decisions.append(LayerDecision(number, layer, diff_ids[number], "merged", layer_plan, report))
    return decisions


def plan_run(
    source: Source,
    roots: list[Node],
    options: Options,
    passes: Sequence[tuple[type[Pass[Any]], Any]],
    pool: WorkerPool,
    spool: Spool,
    workdir: str,
    report: Report,
    bases: BaseFinder,
) -> RunPlan:
    """Decide every image's layers (the passes run here); ``roots``: the input's tree (``tree.read_tree``)."""
    planner = _Planner(source, options, passes, pool, spool, workdir, report, bases)
    run = RunPlan(source, roots, pass_names=tuple(cls.name for cls, _ in passes))
    for node in _image_order(roots):
        report.warnings.extend(node.warnings)
        if node.kind is NodeKind.IMAGE:
            run.images[node.digest] = planner.image(node)
        elif node.kind is NodeKind.MANIFEST:
            _carried(source, node, report)
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


def _carried(source: Source, node: Node, report: Report) -> None:
    """A manifest copied untouched: say so, and warn about the blobs it names that the input lacks."""
    assert node.config is not None
    name = node.label(source.name)
    if node.odd_layer_types:
        report.warnings.append(
            f"{name}: layers of unknown media type {', '.join(node.odd_layer_types)}: the image passes through untouched"
        )
    report.carried.append(f"{short(node.digest)} {node.config.media_type}")
    for blob in [node.config, *node.layers]:
        if not source.blobs.has(blob.digest) and not blob.raw.get("data"):
            report.warnings.append(
                f"{name}: blob {short(blob.digest)} ({blob.media_type}) is missing from the input"
            )


def estimate_sizes(run: RunPlan) -> None:
    """Fill in the reports of a plan that is not written (a dry run): the compressed size of each layer the
    run would write, estimated from its tar size and the image's own compression ratio. Nothing is compressed."""
    for plan in run.images.values():
        ratio = _compression_ratio(plan)
        for decision in plan.layers:
            if decision.fate == "rewrite":
                index = plan.indexes[decision.number]
                items = layer_entries(
                    index,
                    decision.plan or EMPTY_LAYER_PLAN,
                    lower_paths_of(plan.indexes, decision.number, plan.changes),
                    False,
                )
                decision.report.size_after = round(tar_size(entry for entry, _ in items) * ratio)
                decision.report.estimated = True
        extra = _unwritten_layer(plan, ratio)
        if extra is not None:
            plan.report.layers.append(extra)
        if extra is not None or any(d.fate in ("rewrite", "dropped") for d in plan.layers):
            plan.report.manifest_after = ""  # it would change; its digest is not known without writing
        plan.pull_after = _estimated_pull(plan, extra)


def tar_size(entries: Iterable[Entry]) -> int:
    """The size of a tar of these entries: a 512-byte header each, contents padded to 512 bytes."""
    return sum(512 + (entry.size + 511) // 512 * 512 for entry in entries) + 1024


def _compression_ratio(plan: ImagePlan) -> float:
    raw = sum(tar_size(item.entry for item in index.entries) for index in plan.indexes)
    packed = sum(d.descriptor.size for d in plan.layers[: len(plan.indexes)])
    return packed / raw if raw else 1.0


def _unwritten_layer(plan: ImagePlan, ratio: float) -> LayerReport | None:
    """The estimated report of the squashed or added layer a dry run does not write."""
    count = len(plan.layers)
    media_type = plan.layers[0].report.media_type if plan.layers else ""
    if plan.squash:
        assert plan.final_fs is not None
        merged = [node.entry for _, node in plan.final_fs.items() if node.layer >= plan.squash_base]
        size = round(tar_size(merged) * ratio)
        return LayerReport(count, "", "", 0, size, "squashed", media_type, len(merged), estimated=True)
    if plan.changes.top_layer:
        added = [entry for entry, _ in plan.changes.added.values()]
        added += whiteouts_for(plan.changes.hidden, 0)
        size = round(tar_size(added) * ratio)
        return LayerReport(count, "", "", 0, size, "added", media_type, len(added), estimated=True)
    return None


def _estimated_pull(plan: ImagePlan, extra: LayerReport | None) -> ImageBlobs:
    """What a node would pull for the output of a dry run: new layers under made-up names, estimated sizes."""
    before = plan.pull_before
    blobs = {k: v for k, v in before.blobs.items() if k not in {d.descriptor.digest for d in plan.layers}}
    for decision in plan.layers:
        report = decision.report
        if decision.fate in ("kept", "unchanged"):
            blobs[decision.descriptor.digest] = decision.descriptor.size
        elif decision.fate == "rewrite":
            blobs[f"estimate:{plan.node.digest}:{decision.number}"] = report.size_after
    if extra is not None:
        blobs[f"estimate:{plan.node.digest}:{extra.status}"] = extra.size_after
    return ImageBlobs(blobs, before.base)
