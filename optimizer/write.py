"""Executing a ``RunPlan``: the layers, configs, manifests and indexes of the output.

Every decision was taken by ``plan``; this module only produces bytes, through ``output`` (the one place
that writes them): rewritten, squashed and added layers are written once into the work directory with the
run's codec; configs and manifests are written again only for images whose layers changed; an index is
written again only when a manifest below it changed. What is unchanged is carried as the input's own bytes.

The result is an ``Output``: the new root index, Docker's ``manifest.json`` (for ``docker load``), and every
blob the output holds, each with a way to open it. Archive, layout directory and registry push all take it.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from . import mediatypes as mt
from .digest import short
from .documents import ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, ANNOTATION_SOURCE_DIGEST
from .errors import OutputError, out_of_space
from .filesystem import build_filesystem
from .history import created_epoch, squash_config, update_config
from .layer import OPAQUE_MARKER, WHITEOUT_PREFIX
from .model import Content, Descriptor, Entry
from .output import BlobSpec, CompressionSpec, OutputBlob, canonical_json
from .packing import pull_order, split_layer
from .plan import EMPTY_LAYER_PLAN, ImagePlan, LayerDecision, RunPlan, tar_size
from .progress import Progress, steps
from .publish import Twins
from .pull import ImageBlobs
from .rebuild import (
    layer_entries,
    lower_paths_of,
    squash_entries,
    top_layer_entries,
    write_layer,
)
from .report import LayerReport, Report
from .source import Blobs
from .tree import Node, NodeKind

__all__ = ["Output", "WriteSettings", "write_run"]

SIGNATURE_TAG_SUFFIXES = (".sig", ".att", ".sbom")


@dataclass
class Output:
    """An image ready to be stored: the root index, docker's manifest.json, and every blob."""

    index_bytes: bytes
    docker_manifest: bytes | None
    blobs: dict[str, OutputBlob] = field(default_factory=dict)
    from_input: frozenset[str] = frozenset()  # digests of the blobs carried from the input as they were

    @property
    def root_digest(self) -> str:
        """The digest of the first (for a push: the only) manifest the root index lists."""
        manifests = json.loads(self.index_bytes).get("manifests") or []
        return str(manifests[0]["digest"]) if manifests else ""


@dataclass(frozen=True)
class WriteSettings:
    compression: CompressionSpec  # of the layers the run adds (a squashed layer, the new top layer)
    normalize: bool
    workers: int
    layer_clamp: int | None  # mtimes of rewritten layers are clamped to this (SOURCE_DATE_EPOCH, or 0)
    config_clamp: int | None  # SOURCE_DATE_EPOCH, for configs and added layers
    keep_smaller: bool = True  # a layer whose rewrite is not smaller keeps its own bytes (when that is safe)
    packing: str = "path"  # entry order of written layers: "path" or "pull" (``rebuild.pull_order``)
    layer_target_size: int | None = None  # cut a squashed layer into parts of about this many tar bytes
    publish: str = "single"  # "gzip+zstd": each image also as a zstd twin, listed after it in an index


class _Blobs:
    """The output's blobs: digest -> (digest, size, opener)."""

    def __init__(self) -> None:
        self.items: dict[str, OutputBlob] = {}
        self.carried: set[str] = set()

    def from_source(self, store: Blobs, descriptor: Descriptor, role: str) -> None:
        if not store.has(descriptor.digest):
            return  # absent from a partial input: the plan refused it unless --allow-partial, a reference only
        self.carried.add(descriptor.digest)
        if descriptor.digest not in self.items:
            self.items[descriptor.digest] = (
                descriptor.digest,
                descriptor.size,
                lambda: store.open(descriptor, role),
            )

    def from_bytes(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.items[digest] = (digest, len(data), lambda: io.BytesIO(data))
        return digest

    def from_file(self, blob: BlobSpec) -> None:
        path = blob.path
        self.items[blob.digest] = (blob.digest, blob.size, lambda: open(path, "rb"))  # noqa: SIM115


class _Writer:
    def __init__(
        self, run: RunPlan, settings: WriteSettings, workdir: str, report: Report, progress: Progress | None
    ) -> None:
        self.run = run
        self.on_progress = progress
        self.source = run.source
        self.settings = settings
        self.workdir = workdir
        self.report = report
        self.blobs = _Blobs()
        self.done: dict[str, Descriptor] = {}  # manifest digest -> its replacement
        self.changed: set[str] = set()  # digests of manifests that changed
        self.signature_subjects: list[tuple[Descriptor, str]] = []  # (signing manifest, subject digest)
        self.docker_map: dict[str, tuple[Descriptor, list[Descriptor], list[str]]] = {}
        self.numbers = itertools.count()
        self.twins = Twins(self.blobs, workdir, self.numbers, settings.workers)  # --publish gzip+zstd

    # -- the tree ---------------------------------------------------------------------------------------

    def node(self, node: Node, occurrence: Descriptor | None = None) -> Descriptor:
        """The descriptor of ``node``'s replacement, as ``occurrence`` (how an index names it) would be."""
        occurrence = occurrence or node.descriptor
        new = self.done.get(node.digest)
        if new is None:
            new = self.replacement(node)
            self.done[node.digest] = new
        return (
            occurrence.replace(digest=new.digest, size=new.size) if new.digest != node.digest else occurrence
        )

    def replacement(self, node: Node) -> Descriptor:
        descriptor = node.descriptor
        if node.kind is NodeKind.INDEX:
            return self.index(node)
        if node.kind is NodeKind.IMAGE and node.digest in self.run.images:
            plan = self.run.images[node.digest]
            result = self.image(plan)
            if self.settings.publish == "gzip+zstd":
                self.twins.make(plan, result, node)
            return result
        if node.kind in (NodeKind.IMAGE, NodeKind.MANIFEST):
            self.carry(node)  # not an image we read, or not a --platform chosen
        elif node.kind is NodeKind.OTHER:
            self.blobs.from_source(self.source.blobs, descriptor, "blob")
        return descriptor  # carried, or missing from the input (the reference is kept, without content)

    def index(self, node: Node) -> Descriptor:
        children = node.child_descriptors
        new_children = []
        twins = []
        for child, raw in zip(node.children, children, strict=True):
            new = self.node(child, Descriptor.from_json(raw))
            new_children.append(new.to_json() if new.digest != child.digest else raw)
            twin = self.twins.entry(new.digest, Descriptor.from_json(raw))
            if twin is not None:
                twins.append(twin)
        if new_children == children and not twins:
            self.blobs.from_source(self.source.blobs, node.descriptor, "index")
            return node.descriptor
        document = dict(node.document, manifests=new_children + twins)
        media_type = node.descriptor.media_type
        if twins and media_type == mt.DOCKER_MANIFEST_LIST:
            media_type = mt.OCI_INDEX  # it now lists OCI manifests (zstd layers have no Docker media type)
            document["mediaType"] = media_type
        digest = self.blobs.from_bytes(data := canonical_json(document))
        self.changed.add(node.digest)
        return node.descriptor.replace(digest=digest, size=len(data), media_type=media_type)

    def carry(self, node: Node) -> None:
        """Copy a manifest and every blob it names that the input has, untouched."""
        assert node.config is not None
        self.blobs.from_source(self.source.blobs, node.descriptor, "manifest")
        for blob in [node.config, *node.layers]:
            if self.source.blobs.has(blob.digest):
                self.blobs.from_source(self.source.blobs, blob, "blob")
        subject = node.document.get("subject")
        if isinstance(subject, dict):
            self.signature_subjects.append((node.descriptor, str(subject.get("digest", ""))))

    # -- one image --------------------------------------------------------------------------------------

    def image(self, plan: ImagePlan) -> Descriptor:
        if plan.squash:
            return self.squashed(plan)
        new_layers: list[Descriptor] = []
        new_diff_ids: list[str] = []
        dropped: list[int] = []
        for decision in plan.layers:
            if decision.fate == "dropped":
                dropped.append(decision.number)
                continue
            if decision.fate != "rewrite":
                self.blobs.from_source(self.source.blobs, decision.descriptor, "layer")
                new_layers.append(decision.descriptor)
                new_diff_ids.append(decision.diff_id)
                continue
            layer, diff_id = self.rewritten(plan, decision)
            new_layers.append(layer)
            new_diff_ids.append(diff_id)
        added = self.added_layer(plan)
        if added is not None:
            new_layers.append(added[0])
            new_diff_ids.append(added[1])
        new_config = update_config(
            plan.config,
            new_diff_ids,
            dropped,
            added is not None,
            plan.changes.reasons,
            self.run.pass_names,
            self.settings.config_clamp,
        )
        return self.finish(plan, new_config, new_layers)

    def rewritten(self, plan: ImagePlan, decision: LayerDecision) -> tuple[Descriptor, str]:
        """Write one changed layer; a result with the input's own bytes is carried as the input's blob."""
        layer = decision.descriptor
        items = layer_entries(
            plan.indexes[decision.number],
            decision.plan or EMPTY_LAYER_PLAN,
            lower_paths_of(plan.indexes, decision.number, plan.changes),
            self.settings.normalize,
        )
        label = f"layer {decision.number + 1}/{len(plan.layers)} of image {short(plan.node.digest)}"
        blob = self.write_blob(self.packed(items), decision.spec, label)
        report = decision.report
        same_codec = mt.layer_compression(layer.media_type) is decision.spec.codec
        if blob.digest == layer.digest or (
            blob.size >= layer.size and same_codec and self.revertible(plan, decision)
        ):
            self.blobs.from_source(self.source.blobs, layer, "layer")
            os.unlink(blob.path)
            if blob.digest != layer.digest:
                plan.report.warnings.append(
                    f"{plan.name}: layer {decision.number + 1}/{len(plan.layers)} {short(layer.digest)}: rewritten it "
                    f"would be {blob.size - layer.size} bytes larger ({blob.size} vs {layer.size}), so it keeps "
                    f"its own bytes; the {report.files_changed} change(s) the passes made there are not applied"
                )
            report.status = "unchanged" if blob.digest == layer.digest else "reverted"
            report.uncompressed_after = report.uncompressed_before
            report.digest_after, report.size_after = layer.digest, layer.size
            report.media_type, report.files_changed = layer.media_type, 0
            return layer, decision.diff_id
        self.blobs.from_file(blob)
        report.digest_after, report.size_after, report.uncompressed_after = (
            blob.digest,
            blob.size,
            blob.raw_size,
        )
        return Descriptor(report.media_type, blob.digest, blob.size, {}), blob.diff_id

    def revertible(self, plan: ImagePlan, decision: LayerDecision) -> bool:
        """Whether a changed layer can keep its own bytes without changing what upper layers rely on: true
        unless it drops or deletes paths that an upper layer's dropped whiteout used to hide."""
        if not self.settings.keep_smaller or (decision.plan is not None and not decision.plan.savings_only):
            return False
        removed = (decision.plan.delete | decision.plan.drop) if decision.plan else set()
        if not removed:
            return True
        for upper in plan.layers[decision.number + 1 :]:
            for path in upper.plan.drop if upper.plan else ():
                parent, _, name = path.rpartition("/")
                if name == OPAQUE_MARKER:
                    hidden = any(p.startswith(parent + "/") or not parent for p in removed)
                elif name.startswith(WHITEOUT_PREFIX):
                    hidden = _under(f"{parent}/{name[len(WHITEOUT_PREFIX) :]}".lstrip("/"), removed)
                else:
                    continue
                if hidden:
                    return False
        return True

    def added_layer(self, plan: ImagePlan) -> tuple[Descriptor, str] | None:
        """The new top layer with the files passes added and the whiteouts over protected layers, if any."""
        changes = plan.changes
        if not changes.top_layer:
            return None
        assert plan.final_fs is not None
        items = top_layer_entries(changes.added, plan.final_fs, self.added_mtime(plan), changes.hidden)
        blob = self.write_blob(self.packed(items), label=f"new top layer of image {short(plan.node.digest)}")
        self.blobs.from_file(blob)
        media_type = mt.layer_media_type(plan.docker_family, self.settings.compression.codec)
        files = len(changes.added) + len(changes.hidden)
        plan.report.layers.append(
            LayerReport(
                len(plan.layers) + 1,
                "",
                blob.digest,
                0,
                blob.size,
                "added",
                media_type,
                files,
                uncompressed_after=blob.raw_size,
            )
        )
        return Descriptor(media_type, blob.digest, blob.size, {}), blob.diff_id

    def added_mtime(self, plan: ImagePlan) -> int:
        clamp = self.settings.config_clamp
        return clamp if clamp is not None else created_epoch(plan.config)

    def squashed(self, plan: ImagePlan) -> Descriptor:
        """``--squash``: the base layers as they are, then one layer holding everything above them."""
        protected = plan.squash_base
        assert plan.final_fs is not None
        new_layers = [d.descriptor for d in plan.layers[:protected]]
        new_diff_ids = [d.diff_id for d in plan.layers[:protected]]
        for decision in plan.layers[:protected]:
            self.blobs.from_source(self.source.blobs, decision.descriptor, "layer")
        base_fs = build_filesystem([i.entries for i in plan.indexes[:protected]]) if protected else None
        added = (
            top_layer_entries(plan.changes.added, plan.final_fs, self.added_mtime(plan))
            if plan.changes.added
            else []
        )
        items = self.packed(squash_entries(base_fs, plan.final_fs, protected, added, plan.indexes))
        target = self.settings.layer_target_size
        parts = split_layer(items, target) if target and items else [items] if items else []
        media_type = mt.layer_media_type(plan.docker_family, self.settings.compression.codec)
        for number, part in enumerate(parts):
            label = f"squashed layer {number + 1}/{len(parts)} of image {short(plan.node.digest)}"
            blob = self.write_blob(part, label=label)
            self.blobs.from_file(blob)
            new_layers.append(Descriptor(media_type, blob.digest, blob.size, {}))
            new_diff_ids.append(blob.diff_id)
            if number == 0:
                for decision in plan.layers[protected:]:
                    decision.report.digest_after = blob.digest
            plan.report.layers.append(
                LayerReport(
                    len(plan.layers) + 1 + number,
                    "",
                    blob.digest,
                    0,
                    blob.size,
                    "squashed",
                    media_type,
                    len(part),
                    uncompressed_after=blob.raw_size,
                )
            )
        new_config = squash_config(
            plan.config, new_diff_ids, protected, self.run.pass_names, self.settings.config_clamp
        )
        return self.finish(plan, new_config, new_layers)

    def packed(self, items: list[tuple[Entry, Content | None]]) -> list[tuple[Entry, Content | None]]:
        """``items`` in the entry order the run asked for (``--pack``)."""
        return pull_order(items) if self.settings.packing == "pull" else items

    def write_blob(
        self,
        items: Sequence[tuple[Entry, Content | None]],
        spec: CompressionSpec | None = None,
        label: str = "",
    ) -> BlobSpec:
        """Write one layer into the work directory (``spec``: its codec; the run's for the layers it adds)."""
        path = os.path.join(self.workdir, f"out-{next(self.numbers)}.blob")
        settings = self.settings
        writing = steps(self.on_progress, "write", label or "layer", tar_size(entry for entry, _ in items))
        try:
            blob = write_layer(
                items, path, spec or settings.compression, settings.layer_clamp, settings.workers, writing
            )
            writing.finish()
            return blob
        except OSError as error:
            full = "is full" if out_of_space(error) else "cannot be written"
            raise OutputError(f"the work directory {self.workdir} {full}: {error}") from error

    def finish(self, plan: ImagePlan, new_config: dict[str, Any], new_layers: list[Descriptor]) -> Descriptor:
        """Write the new config and manifest (unless every layer stayed the same) and return the manifest."""
        node = plan.node
        assert node.config is not None
        if [d.digest for d in new_layers] == [d.digest for d in node.layers]:
            self.blobs.from_source(self.source.blobs, node.config, "config")
            self.blobs.from_source(self.source.blobs, node.descriptor, "manifest")
            self.record_docker_entry(node.descriptor, node.config, new_layers, node.config)
            plan.pull_after = plan.pull_before
            diff_ids = list((plan.config.get("rootfs") or {}).get("diff_ids") or [])
            self.twins.finals[node.digest] = (node.config, new_layers, diff_ids)
            return node.descriptor
        config_bytes = canonical_json(new_config)
        config = node.config.replace(digest=self.blobs.from_bytes(config_bytes), size=len(config_bytes))
        diff_ids = list(new_config["rootfs"]["diff_ids"])
        manifest = dict(node.document)
        manifest["config"] = config.to_json()
        manifest["layers"] = [d.to_json() for d in new_layers]
        annotations = dict(manifest.get("annotations") or {})
        annotations.setdefault(ANNOTATION_SOURCE_DIGEST, node.digest)
        manifest["annotations"] = annotations
        manifest_bytes = canonical_json(manifest)
        digest = self.blobs.from_bytes(manifest_bytes)
        plan.report.manifest_after = digest
        self.changed.add(node.digest)
        blobs = {digest: len(manifest_bytes), config.digest: config.size}
        blobs.update((d.digest, d.size) for d in new_layers)
        plan.pull_after = ImageBlobs(blobs, plan.base_digests)
        self.record_docker_entry(node.descriptor, config, new_layers, node.config)
        self.twins.finals[digest] = (config, new_layers, diff_ids)
        return node.descriptor.replace(digest=digest, size=len(manifest_bytes))

    def record_docker_entry(
        self, old: Descriptor, config: Descriptor, layers: Sequence[Descriptor], old_config: Descriptor
    ) -> None:
        tags = list(self.source.repo_tags.get("config:" + old_config.digest, []))
        self.docker_map[old.digest] = (config, list(layers), tags)

    # -- the root ---------------------------------------------------------------------------------------

    def root_index(self, new_root: Sequence[Descriptor]) -> bytes:
        source = self.source
        old_root = source.root_manifests
        if new_root == old_root and source.kind != "docker-archive":
            return source.index_bytes
        index = dict(source.index)
        index["manifests"] = [
            new.to_json() if new.digest != old.digest else raw
            for old, new, raw in zip(old_root, new_root, source.index.get("manifests") or [], strict=True)
        ]
        index.setdefault("schemaVersion", 2)
        return canonical_json(index)

    def docker_manifest(self, new_root: Sequence[Descriptor]) -> bytes | None:
        entries: list[dict[str, Any]] = []
        seen: dict[str, dict[str, Any]] = {}
        for old, new in zip(self.source.root_manifests, new_root, strict=True):
            found = self.docker_map.get(old.digest)
            if found is None:
                continue
            config, layers, tags = found
            name = old.annotations.get(ANNOTATION_IMAGE_NAME)
            if name and name not in tags:
                tags = [*tags, name]
            if new.digest in seen:
                for tag in tags:
                    if tag not in seen[new.digest]["RepoTags"]:
                        seen[new.digest]["RepoTags"].append(tag)
                continue
            entry = {
                "Config": "blobs/" + config.digest.replace(":", "/"),
                "RepoTags": list(tags),
                "Layers": ["blobs/" + d.digest.replace(":", "/") for d in layers],
            }
            seen[new.digest] = entry
            entries.append(entry)
        return canonical_json(entries) if entries else None

    def signature_warnings(self) -> list[str]:
        name = self.source.name
        warnings = [
            f"{name}: {short(signature.digest)} signs or attests {short(subject)}, which was "
            f"optimized: that signature no longer holds for the new image"
            for signature, subject in self.signature_subjects
            if subject in self.changed
        ]
        for old in self.source.root_manifests:
            ref = old.annotations.get(ANNOTATION_REF_NAME, "")
            if ref.endswith(SIGNATURE_TAG_SUFFIXES) and self.changed:
                warnings.append(
                    f"{name}: {ref} is a signature or attestation tag; signatures over optimized "
                    f"manifests no longer hold"
                )
        return warnings


def write_run(
    run: RunPlan, settings: WriteSettings, workdir: str, report: Report, progress: Progress | None = None
) -> Output:
    """Write every layer, config, manifest and index the plan calls for; the report gets the results."""
    writer = _Writer(run, settings, workdir, report, progress)
    new_root = [
        writer.twins.wrapped(writer.node(root, old))
        for root, old in zip(run.roots, run.source.root_manifests, strict=True)
    ]
    report.warnings.extend(writer.signature_warnings())
    index_bytes = writer.root_index(new_root)
    report.index_digest_after = "sha256:" + hashlib.sha256(index_bytes).hexdigest()
    blobs = writer.blobs
    return Output(index_bytes, writer.docker_manifest(new_root), blobs.items, frozenset(blobs.carried))


def _under(path: str, paths: set[str]) -> bool:
    parts = path.split("/")
    return any("/".join(parts[:i]) in paths for i in range(1, len(parts) + 1))
