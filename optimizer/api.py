"""``optimize(src, dst, options) -> Report``: the one core every front end calls.

The flow, per run:

1. open the input (``source``), walk its index tree: image manifests are optimized, every other manifest
   (signatures, attestations, artifacts, unknown platforms) is carried over untouched;
2. per image: decode each layer once (``layer.index_layer``: entries + spooled bytes), build the merged view,
   run the passes in order, each recording ``Changes``;
3. fold the changes into per-layer plans, rewrite only the layers that changed (or all, when normalising), put
   added files in one new top layer, update config (diff_ids, history, created) and manifest;
4. rewrite the indexes above changed manifests and write the output atomically.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import itertools
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from . import mediatypes as mt
from .changes import Change, Changes
from .digest import short
from .errors import (
    FormatError,
    OptimizerError,
    PassFailedError,
    PolicyError,
    RequiredToolNotFound,
    UsageError,
)
from .filesystem import FileSystem, build_filesystem
from .layer import LayerIndex, index_layer
from .model import Content, Descriptor, Entry
from .options import Options
from .output import (
    BlobSpec,
    OutputBlob,
    canonical_json,
    compressor_versions,
    source_date_epoch,
    write_oci_archive,
    write_oci_dir,
)
from .pipeline import ImageInfo, Pass, PassContext, WorkerPool
from .rebuild import (
    LayerPlan,
    Plan,
    apply_changes,
    build_plan,
    layer_entries,
    lower_paths_of,
    squash_entries,
    top_layer_entries,
    write_layer,
)
from .report import ImageReport, LayerReport, PassReport, PassStatus, Report
from .source import ANNOTATION_IMAGE_NAME, BlobStore, Source, open_source, parse_json
from .spool import Spool

__all__ = ["ANNOTATION_SOURCE_DIGEST", "optimize", "select_passes"]

ANNOTATION_SOURCE_DIGEST = "dev.oci-optimizer.source.digest"
ANNOTATION_BASE_DIGEST = "org.opencontainers.image.base.digest"
ANNOTATION_BASE_NAME = "org.opencontainers.image.base.name"
SIGNATURE_TAG_SUFFIXES = (".sig", ".att", ".sbom")


def select_passes(options: Options) -> list[tuple[type[Pass], Any]]:
    """The passes to run, in pipeline order, each with its options."""
    from passes import PASSES

    pipeline = options.pass_classes if options.pass_classes is not None else PASSES
    known = {p.name: p for p in pipeline}
    for name in [*(options.passes or ()), *options.skip, *options.pass_options]:
        if name not in known:
            raise UsageError(f"unknown pass {name!r}; known passes: {', '.join(known) or '(none)'}")
    wanted = set(known) if options.passes is None else set(options.passes)
    wanted -= set(options.skip)
    selected = []
    for cls in pipeline:
        if cls.name in wanted:
            pass_options = options.pass_options.get(cls.name)
            selected.append((cls, pass_options if pass_options is not None else cls.Options()))
    return selected


@dataclass
class _Blobs:
    """The output's blobs: digest -> (size, opener)."""

    items: dict[str, OutputBlob] = field(default_factory=dict)

    def from_source(self, store: BlobStore, descriptor: Descriptor, role: str) -> None:
        if descriptor.digest not in self.items:
            self.items[descriptor.digest] = (
                descriptor.digest,
                descriptor.size,
                lambda: store.open(descriptor, role),
            )

    def from_bytes(self, data: bytes, digest: str) -> None:
        import io

        self.items[digest] = (digest, len(data), lambda: io.BytesIO(data))

    def from_file(self, path: str, digest: str, size: int) -> None:
        self.items[digest] = (digest, size, lambda: open(path, "rb"))  # noqa: SIM115


class _Run:
    """State of one ``optimize`` call."""

    def __init__(self, source: Source, options: Options, workdir: str, report: Report) -> None:
        self.source = source
        self.options = options
        self.workdir = workdir
        self.report = report
        self.blobs = _Blobs()
        self.passes = select_passes(options)
        self.pool = WorkerPool(options.workers)
        self.layer_cache: dict[str, LayerIndex] = {}
        self.done: dict[str, Descriptor] = {}  # manifest digest -> its replacement
        self.changed: set[str] = set()  # digests of manifests that changed
        self.base_layers: list[list[str]] = []
        self.spool = Spool(os.path.join(workdir, "new-content.pack"))
        self.blob_numbers = itertools.count()
        # Layers: mtimes clamped to SOURCE_DATE_EPOCH, or to 0 when normalising without it (content alone
        # decides the digest). The config's times follow SOURCE_DATE_EPOCH only.
        self.config_clamp = source_date_epoch()
        self.clamp = 0 if options.normalize and self.config_clamp is None else self.config_clamp
        self.signature_subjects: list[tuple[Descriptor, str]] = []  # (signing manifest, subject digest)
        self.docker_map: dict[str, tuple[Descriptor, list[Descriptor], list[str]]] = {}

    # -- reading ----------------------------------------------------------------------------------------

    def read_json(self, descriptor: Descriptor, role: str) -> tuple[bytes, dict[str, Any]]:
        data = self.source.blobs.read(descriptor, role)
        value = parse_json(data, f"{self.source.name}: {role} {short(descriptor.digest)}")
        if not isinstance(value, dict):
            raise FormatError(f"{self.source.name}: {role} {short(descriptor.digest)} is not a JSON object")
        return data, value

    def progress(self, what: str, done: int, total: int) -> None:
        if self.options.progress is not None:
            self.options.progress(what, done, total)

    # -- the index tree ---------------------------------------------------------------------------------

    def process(self, descriptor: Descriptor, where: str) -> Descriptor:
        if descriptor.digest in self.done:
            new = self.done[descriptor.digest]
            return (
                descriptor.replace(digest=new.digest, size=new.size)
                if new.digest != descriptor.digest
                else descriptor
            )
        if not self.source.blobs.has(descriptor.digest):
            platform = f" ({descriptor.platform})" if descriptor.platform else ""
            self.report.warnings.append(
                f"{self.source.name}: {where}: manifest {short(descriptor.digest)}{platform} is missing from the "
                f"input (a partial export); its reference is carried over without content"
            )
            self.done[descriptor.digest] = descriptor
            return descriptor
        media_type = descriptor.media_type
        data, document = self.read_json(descriptor, "manifest")
        media_type = (
            media_type
            if media_type in mt.INDEX_TYPES | mt.MANIFEST_TYPES
            else str(document.get("mediaType", ""))
        )
        if media_type in mt.INDEX_TYPES or (not media_type and "manifests" in document):
            new = self.process_index(descriptor, data, document, where)
        elif media_type in mt.MANIFEST_TYPES or (not media_type and "layers" in document):
            new = self.process_manifest(descriptor, data, document, where)
        else:
            self.report.warnings.append(
                f"{self.source.name}: {where}: {short(descriptor.digest)} has media type "
                f"{descriptor.media_type or '(none)'}: carried over untouched"
            )
            self.blobs.from_source(self.source.blobs, descriptor, "blob")
            new = descriptor
        self.done[descriptor.digest] = new
        return new

    def process_index(
        self, descriptor: Descriptor, data: bytes, document: dict[str, Any], where: str
    ) -> Descriptor:
        children = document.get("manifests")
        if not isinstance(children, list):
            raise FormatError(
                f"{self.source.name}: index {short(descriptor.digest)}: 'manifests' is not a list"
            )
        new_children = []
        for number, child in enumerate(children):
            if not isinstance(child, dict) or "digest" not in child:
                raise FormatError(
                    f"{self.source.name}: index {short(descriptor.digest)}: manifests[{number}] is invalid"
                )
            old = Descriptor.from_json(child)
            new = self.process(old, f"{where} > {short(descriptor.digest)}[{number}]")
            new_children.append(new.to_json() if new.digest != old.digest else child)
        if new_children == children:
            self.blobs.from_source(self.source.blobs, descriptor, "index")
            return descriptor
        updated = dict(document, manifests=new_children)
        new_data = canonical_json(updated)
        digest = "sha256:" + hashlib.sha256(new_data).hexdigest()
        self.blobs.from_bytes(new_data, digest)
        self.changed.add(descriptor.digest)
        return descriptor.replace(digest=digest, size=len(new_data))

    def process_manifest(
        self, descriptor: Descriptor, data: bytes, document: dict[str, Any], where: str
    ) -> Descriptor:
        config = document.get("config")
        layers = document.get("layers")
        if not isinstance(config, dict) or not isinstance(layers, list):
            raise FormatError(f"{self.source.name}: manifest {short(descriptor.digest)}: no config or layers")
        config_descriptor = Descriptor.from_json(config)
        layer_descriptors = [Descriptor.from_json(layer) for layer in layers]
        tar_layers = [mt.layer_compression(d.media_type) is not None for d in layer_descriptors]
        is_image = config_descriptor.media_type in mt.IMAGE_CONFIG_TYPES and any(tar_layers)
        name = self.image_name(descriptor)
        if not is_image or not all(tar_layers):
            if is_image:
                odd = sorted(
                    {d.media_type for d, ok in zip(layer_descriptors, tar_layers, strict=True) if not ok}
                )
                self.report.warnings.append(
                    f"{name}: layers of unknown media type {', '.join(odd)}: the image passes through untouched"
                )
            self.carry(descriptor, config_descriptor, layer_descriptors, document, name)
            return descriptor
        return self.optimize_image(descriptor, data, document, config_descriptor, layer_descriptors, name)

    def image_name(self, descriptor: Descriptor) -> str:
        label = descriptor.annotations.get(ANNOTATION_IMAGE_NAME) or descriptor.annotations.get(
            "org.opencontainers.image.ref.name", ""
        )
        platform = f" {descriptor.platform}" if descriptor.platform else ""
        return f"{self.source.name}: image {short(descriptor.digest)}{platform}{' (' + label + ')' if label else ''}"

    def carry(
        self,
        descriptor: Descriptor,
        config: Descriptor,
        layers: Sequence[Descriptor],
        document: Mapping[str, Any],
        name: str,
    ) -> None:
        """Copy a manifest and every blob it names that the input has, untouched."""
        self.blobs.from_source(self.source.blobs, descriptor, "manifest")
        self.report.carried.append(f"{short(descriptor.digest)} {config.media_type}")
        for blob in [config, *layers]:
            if self.source.blobs.has(blob.digest):
                self.blobs.from_source(self.source.blobs, blob, "blob")
            elif not blob.raw.get("data"):
                self.report.warnings.append(
                    f"{name}: blob {short(blob.digest)} ({blob.media_type}) is missing from the input"
                )
        subject = document.get("subject")
        if isinstance(subject, dict):
            self.signature_subjects.append((descriptor, str(subject.get("digest", ""))))

    # -- one image --------------------------------------------------------------------------------------

    def protected_count(
        self, descriptor: Descriptor, document: Mapping[str, Any], layers: Sequence[Descriptor], name: str
    ) -> int:
        count = min(self.options.keep_layers, len(layers))
        digests = [d.digest for d in layers]
        bases = list(self.base_layers)
        annotations = document.get("annotations") if isinstance(document.get("annotations"), dict) else {}
        base_digest = (annotations or {}).get(ANNOTATION_BASE_DIGEST)
        if base_digest and not bases:
            found = self.base_from_input(str(base_digest), descriptor)
            if found is None:
                base_name = (annotations or {}).get(ANNOTATION_BASE_NAME, "")
                self.report.warnings.append(
                    f"{name}: its base image {base_name} {short(str(base_digest))} is named by annotation but not "
                    f"in the input; pass --base to keep its layers byte-identical"
                )
            else:
                bases.append(found)
        for base in bases:
            shared = 0
            for ours, theirs in zip(digests, base, strict=False):
                if ours != theirs:
                    break
                shared += 1
            if shared == len(base):
                count = max(count, shared)
        return count

    def base_from_input(self, digest: str, descriptor: Descriptor) -> list[str] | None:
        if not self.source.blobs.has(digest):
            return None
        return _first_layers(self.source.blobs, digest, descriptor.platform)

    def index_layers(self, layers: Sequence[Descriptor], name: str) -> list[LayerIndex]:
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

    def run_passes(
        self, fs: FileSystem, info: ImageInfo, image_report: ImageReport, layers: Sequence[LayerIndex]
    ) -> tuple[list[Change], FileSystem]:
        accepted: list[Change] = []
        for cls, pass_options in self.passes:
            pass_report = PassReport(cls.name)
            image_report.passes.append(pass_report)
            changes = Changes(fs, cls.name, self.spool)
            ctx = PassContext(fs, changes, info, pass_report, self.pool, self.options.dry_run, layers)
            started = time.monotonic()
            try:
                cls(pass_options).run(ctx)
            except (PolicyError, RequiredToolNotFound):
                raise  # the user asked for something that cannot be done: not a pass bug to shrug off
            except Exception as error:  # a pass failing must not take the run down unless --strict
                pass_report.status = PassStatus.FAILED
                pass_report.error = f"{type(error).__name__}: {error}"
                pass_report.seconds = round(time.monotonic() - started, 3)
                if self.options.strict:
                    raise PassFailedError(f"{info.name}: pass {cls.name} failed: {error}") from error
                continue
            pass_report.seconds = round(time.monotonic() - started, 3)
            recorded = list(changes)
            pass_report.files_changed = len(recorded)
            pass_report.bytes_before = sum(c.bytes_before for c in recorded)
            pass_report.bytes_after = sum(c.bytes_after for c in recorded)
            if recorded:
                accepted.extend(recorded)
                fs = apply_changes(fs, recorded)
        return accepted, fs

    def optimize_image(
        self,
        descriptor: Descriptor,
        data: bytes,
        document: dict[str, Any],
        config_descriptor: Descriptor,
        layers: list[Descriptor],
        name: str,
    ) -> Descriptor:
        _, config = self.read_json(config_descriptor, "config")
        docker_family = mt.is_docker(descriptor.media_type or str(document.get("mediaType", "")))
        image_report = ImageReport(
            name, str(descriptor.platform or _config_platform(config)), descriptor.digest, descriptor.digest
        )
        self.report.images.append(image_report)
        protected = self.protected_count(descriptor, document, layers, name)
        rewrite_all = self.options.normalize or self.options.recompress
        needs_files = bool(self.passes) or rewrite_all or self.options.squash
        non_distributable = {i for i, d in enumerate(layers) if d.media_type in mt.NON_DISTRIBUTABLE}
        # Layers named by digest (shared with other images) are held like non-distributable ones; --squash
        # merges only what lies above the last of them, and keeps everything below as it is.
        shared = {i for i, d in enumerate(layers) if d.digest in self.options.protect_layers}
        non_distributable |= shared
        squash_base = max([protected, *(i + 1 for i in shared)])
        held = set(range(squash_base if self.options.squash else protected)) | non_distributable
        changes: list[Change] = []
        final_fs: FileSystem | None = None
        indexes: list[LayerIndex] = []
        if needs_files:
            indexes = self.index_layers(layers, name)
            for index in indexes:
                image_report.warnings.extend(index.warnings)
        if self.passes or self.options.squash:
            # The merged view is for passes and squashing; a bare re-encode (--normalize, --recompress) only
            # needs each layer's own entries, and skipping the view keeps memory down on many-file images.
            fs = build_filesystem([i.entries for i in indexes], frozenset(held))
            info = ImageInfo(
                name,
                descriptor.digest,
                descriptor.platform or _config_platform(config),
                config,
                [d.digest for d in layers],
            )
            changes, final_fs = self.run_passes(fs, info, image_report, indexes)
        plan = build_plan(changes, len(layers))
        new_layers: list[Descriptor] = []
        diff_ids: list[str] = list((config.get("rootfs") or {}).get("diff_ids") or [])
        if len(diff_ids) != len(layers):
            raise FormatError(f"{name}: the config has {len(diff_ids)} diff_ids for {len(layers)} layers")
        merged = range(squash_base, len(layers))
        if self.options.squash and final_fs is not None and len(merged) >= 2:
            if non_distributable & set(merged):
                image_report.warnings.append(
                    f"{name}: not squashed: layers above the base are non-distributable and stay as they are"
                )
            else:
                return self.squash_image(
                    descriptor,
                    document,
                    config_descriptor,
                    config,
                    layers,
                    diff_ids,
                    indexes,
                    squash_base,
                    plan,
                    final_fs,
                    image_report,
                    docker_family,
                )
        new_diff_ids: list[str] = []
        dropped: list[int] = []
        for number, layer in enumerate(layers):
            layer_plan = plan.layers.get(number)
            must_write = bool(layer_plan) or (
                rewrite_all and number >= protected and number not in non_distributable
            )
            if self.options.recompress and not self.options.normalize and not layer_plan:
                current = mt.layer_compression(layer.media_type)
                must_write = (
                    must_write and current is not None and (current is not self.options.compression.codec)
                )
            if not must_write:
                self.blobs.from_source(self.source.blobs, layer, "layer")
                new_layers.append(layer)
                new_diff_ids.append(diff_ids[number])
                status = "kept" if number < protected or number in shared else "unchanged"
                image_report.layers.append(
                    LayerReport(
                        number, layer.digest, layer.digest, layer.size, layer.size, status, layer.media_type
                    )
                )
                continue
            assert indexes
            items = layer_entries(
                indexes[number],
                layer_plan or _EMPTY_PLAN,
                lower_paths_of(indexes, number, plan),
                self.options.normalize,
            )
            if not items:
                dropped.append(number)
                image_report.layers.append(
                    LayerReport(
                        number,
                        layer.digest,
                        "",
                        layer.size,
                        0,
                        "dropped",
                        layer.media_type,
                        layer_plan.changes if layer_plan else 0,
                    )
                )
                continue
            spec = self.options.compression
            self.progress(f"writing layer {number + 1}/{len(layers)}", number, len(layers))
            blob = self.write_blob(items)
            if blob.digest == layer.digest:
                self.blobs.from_source(self.source.blobs, layer, "layer")
                os.unlink(blob.path)
                new_layers.append(layer)
                new_diff_ids.append(diff_ids[number])
                image_report.layers.append(
                    LayerReport(
                        number,
                        layer.digest,
                        layer.digest,
                        layer.size,
                        layer.size,
                        "unchanged",
                        layer.media_type,
                    )
                )
                continue
            self.blobs.from_file(blob.path, blob.digest, blob.size)
            media_type = mt.layer_media_type(docker_family, spec.codec)
            if layer.media_type in mt.NON_DISTRIBUTABLE:
                media_type = layer.media_type
            new_layers.append(Descriptor(media_type, blob.digest, blob.size, {}))
            new_diff_ids.append(blob.diff_id)
            image_report.layers.append(
                LayerReport(
                    number,
                    layer.digest,
                    blob.digest,
                    layer.size,
                    blob.size,
                    "rewritten",
                    media_type,
                    layer_plan.changes if layer_plan else 0,
                )
            )
        added_layer = False
        if plan.added:
            assert final_fs is not None
            mtime = self.config_clamp if self.config_clamp is not None else _created_epoch(config)
            items = top_layer_entries(plan.added, final_fs, mtime)
            spec = self.options.compression
            blob = self.write_blob(items)
            self.blobs.from_file(blob.path, blob.digest, blob.size)
            media_type = mt.layer_media_type(docker_family, spec.codec)
            new_layers.append(Descriptor(media_type, blob.digest, blob.size, {}))
            new_diff_ids.append(blob.diff_id)
            added_layer = True
            image_report.layers.append(
                LayerReport(len(layers), "", blob.digest, 0, blob.size, "added", media_type, len(plan.added))
            )
        new_config = _update_config(
            config, new_diff_ids, dropped, added_layer, plan.reasons, self.passes, self.config_clamp
        )
        return self.finish_image(
            descriptor, document, config_descriptor, new_config, layers, new_layers, image_report
        )

    def squash_image(
        self,
        descriptor: Descriptor,
        document: dict[str, Any],
        config_descriptor: Descriptor,
        config: dict[str, Any],
        layers: Sequence[Descriptor],
        diff_ids: Sequence[str],
        indexes: Sequence[LayerIndex],
        protected: int,
        plan: Plan,
        final_fs: FileSystem,
        image_report: ImageReport,
        docker_family: bool,
    ) -> Descriptor:
        """``--squash``: the base layers as they are, then one layer holding everything above them."""
        new_layers = list(layers[:protected])
        new_diff_ids = list(diff_ids[:protected])
        for number, layer in enumerate(layers[:protected]):
            self.blobs.from_source(self.source.blobs, layer, "layer")
            image_report.layers.append(
                LayerReport(
                    number, layer.digest, layer.digest, layer.size, layer.size, "kept", layer.media_type
                )
            )
        base_fs = build_filesystem([i.entries for i in indexes[:protected]]) if protected else None
        mtime = self.config_clamp if self.config_clamp is not None else _created_epoch(config)
        added = top_layer_entries(plan.added, final_fs, mtime) if plan.added else []
        self.progress("squashing", protected, len(layers))
        items = squash_entries(base_fs, final_fs, protected, added, indexes)
        blob = None
        media_type = mt.layer_media_type(docker_family, self.options.compression.codec)
        if items:
            blob = self.write_blob(items)
            self.blobs.from_file(blob.path, blob.digest, blob.size)
            new_layers.append(Descriptor(media_type, blob.digest, blob.size, {}))
            new_diff_ids.append(blob.diff_id)
        for number in range(protected, len(layers)):
            layer = layers[number]
            layer_plan = plan.layers.get(number)
            image_report.layers.append(
                LayerReport(
                    number,
                    layer.digest,
                    blob.digest if blob else "",
                    layer.size,
                    0,
                    "merged",
                    layer.media_type,
                    layer_plan.changes if layer_plan else 0,
                )
            )
        if blob is not None:
            image_report.layers.append(
                LayerReport(len(layers), "", blob.digest, 0, blob.size, "squashed", media_type, len(items))
            )
        new_config = _squash_config(config, new_diff_ids, protected, self.passes, self.config_clamp)
        return self.finish_image(
            descriptor, document, config_descriptor, new_config, layers, new_layers, image_report
        )

    def write_blob(self, items: Sequence[tuple[Entry, Content | None]]) -> BlobSpec:
        """Write one layer of the run's codec into the work directory."""
        path = os.path.join(self.workdir, f"out-{next(self.blob_numbers)}.blob")
        return write_layer(items, path, self.options.compression, self.clamp, self.pool.workers)

    def finish_image(
        self,
        descriptor: Descriptor,
        document: dict[str, Any],
        config_descriptor: Descriptor,
        new_config: dict[str, Any],
        layers: Sequence[Descriptor],
        new_layers: list[Descriptor],
        image_report: ImageReport,
    ) -> Descriptor:
        """Write the new config and manifest (unless every layer stayed the same) and return the manifest."""
        if [d.digest for d in new_layers] == [d.digest for d in layers]:
            self.blobs.from_source(self.source.blobs, config_descriptor, "config")
            self.blobs.from_source(self.source.blobs, descriptor, "manifest")
            self.record_docker_entry(descriptor, descriptor, config_descriptor, new_layers)
            return descriptor
        new_config_bytes = canonical_json(new_config)
        new_config_digest = "sha256:" + hashlib.sha256(new_config_bytes).hexdigest()
        self.blobs.from_bytes(new_config_bytes, new_config_digest)
        new_config_descriptor = config_descriptor.replace(
            digest=new_config_digest, size=len(new_config_bytes)
        )
        manifest = dict(document)
        manifest["config"] = new_config_descriptor.to_json()
        manifest["layers"] = [d.to_json() for d in new_layers]
        annotations = dict(manifest.get("annotations") or {})
        annotations.setdefault(ANNOTATION_SOURCE_DIGEST, descriptor.digest)
        manifest["annotations"] = annotations
        manifest_bytes = canonical_json(manifest)
        digest = "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
        self.blobs.from_bytes(manifest_bytes, digest)
        new_descriptor = descriptor.replace(digest=digest, size=len(manifest_bytes))
        image_report.manifest_after = digest
        self.changed.add(descriptor.digest)
        self.record_docker_entry(
            descriptor, new_descriptor, new_config_descriptor, new_layers, config_descriptor
        )
        return new_descriptor

    def record_docker_entry(
        self,
        old: Descriptor,
        new: Descriptor,
        config: Descriptor,
        layers: Sequence[Descriptor],
        old_config: Descriptor | None = None,
    ) -> None:
        tags = list(self.source.repo_tags.get("config:" + (old_config or config).digest, []))
        self.docker_map[old.digest] = (config, list(layers), tags)


_EMPTY_PLAN = LayerPlan()


def _config_platform(config: Mapping[str, Any]) -> Any:
    from .model import Platform

    return Platform.from_json({k: config.get(k, "") for k in ("os", "architecture", "variant")})


def _created_epoch(config: Mapping[str, Any]) -> int:
    created = config.get("created")
    if isinstance(created, str) and created:
        with contextlib.suppress(ValueError):
            return int(datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp())
    return 0


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _update_config(
    config: Mapping[str, Any],
    diff_ids: list[str],
    dropped: list[int],
    added: bool,
    reasons: list[tuple[str, str, str]],
    passes: Sequence[tuple[type[Pass], Any]],
    clamp: int | None,
) -> dict[str, Any]:
    new = copy.deepcopy(dict(config))
    rootfs = dict(new.get("rootfs") or {"type": "layers"})
    rootfs["diff_ids"] = diff_ids
    new["rootfs"] = rootfs
    history = new.get("history")
    if isinstance(history, list):
        history = [dict(h) if isinstance(h, dict) else h for h in history]
        layer_entries = [h for h in history if isinstance(h, dict) and not h.get("empty_layer")]
        if dropped and len(layer_entries) == len(diff_ids) - (1 if added else 0) + len(dropped):
            for number in dropped:
                layer_entries[number]["empty_layer"] = True
                layer_entries[number]["comment"] = (
                    str(layer_entries[number].get("comment", "")) + " (emptied by oci-optimizer)"
                ).strip()
        new["history"] = history
    if clamp is not None:
        new["created"] = _iso(clamp)
    if added:
        created = new.get("created") if clamp is None else _iso(clamp)
        entry: dict[str, Any] = {
            "created_by": "oci-optimizer: " + ",".join(cls.name for cls, _ in passes),
            "comment": _history_comment(reasons),
        }
        if created:
            entry["created"] = created
        new.setdefault("history", [])
        if isinstance(new["history"], list):
            new["history"].append(entry)
    if clamp is not None and isinstance(new.get("history"), list):
        for item in new["history"]:
            if isinstance(item, dict) and "created" in item:
                item["created"] = _min_iso(item["created"], clamp)
    return new


def _squash_config(
    config: Mapping[str, Any],
    diff_ids: list[str],
    protected: int,
    passes: Sequence[tuple[type[Pass], Any]],
    clamp: int | None,
) -> dict[str, Any]:
    """The config of a squashed image: the base's history entries, then one entry listing what was merged."""
    new = copy.deepcopy(dict(config))
    rootfs = dict(new.get("rootfs") or {"type": "layers"})
    rootfs["diff_ids"] = diff_ids
    new["rootfs"] = rootfs
    history = [h for h in new.get("history") or [] if isinstance(h, dict)]
    kept: list[dict[str, Any]] = []
    merged: list[dict[str, Any]] = []
    seen_layers = 0
    for item in history:
        if seen_layers < protected:
            kept.append(item)
            if not item.get("empty_layer"):
                seen_layers += 1
        else:
            merged.append(item)
    created = new.get("created") if clamp is None else _iso(clamp)
    for item in reversed(merged):
        if item.get("created"):
            created = item["created"] if clamp is None else _min_iso(item["created"], clamp)
            break
    steps = [str(item.get("created_by") or item.get("comment") or "(no description)") for item in merged]
    entry: dict[str, Any] = {
        "created_by": "oci-optimizer --squash"
        + (": " + ",".join(cls.name for cls, _ in passes) if passes else ""),
        "comment": f"{len(steps)} history entries merged into this layer: " + " | ".join(steps),
    }
    if created:
        entry["created"] = created
    if len(diff_ids) == protected:  # everything above the base was empty
        entry["empty_layer"] = True
    new["history"] = [*kept, entry]
    if clamp is not None:
        new["created"] = _iso(clamp)
        for item in new["history"]:
            if "created" in item:
                item["created"] = _min_iso(item["created"], clamp)
    return new


def _history_comment(reasons: Sequence[tuple[str, str, str]], limit: int = 4000) -> str:
    """What the new top layer holds, grouped by pass and reason: "inject: zoneinfo (tzdata 2026a): 38 files
    (usr/share/zoneinfo/UTC, ...)"."""
    groups: dict[tuple[str, str], list[str]] = {}
    for pass_name, path, reason in reasons:
        groups.setdefault((pass_name, reason), []).append(path)
    parts = []
    for (pass_name, reason), paths in groups.items():
        shown = ", ".join(paths[:3]) + (", ..." if len(paths) > 3 else "")
        count = f"{len(paths)} files" if len(paths) > 1 else "1 file"
        parts.append(f"{pass_name}: {reason or 'added'}: {count} ({shown})")
    text = "; ".join(parts) or "files added by oci-optimizer"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _min_iso(value: Any, clamp: int) -> str:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            if datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() <= clamp:
                return value
    return _iso(clamp)


def _first_layers(store: BlobStore, digest: str, platform: Any) -> list[str] | None:
    """The layer digests of the image a base digest names (choosing ``platform`` in an index)."""
    try:
        data = store.read(Descriptor("", digest, store.stored_size(digest) or 0), "base manifest")
        document = parse_json(data, "base manifest")
    except OptimizerError:
        return None
    if isinstance(document, dict) and isinstance(document.get("manifests"), list):
        for child in document["manifests"]:
            descriptor = Descriptor.from_json(child)
            if platform is None or descriptor.platform == platform:
                return _first_layers(store, descriptor.digest, None)
        return None
    if isinstance(document, dict) and isinstance(document.get("layers"), list):
        return [str(layer.get("digest")) for layer in document["layers"]]
    return None


def _base_layer_lists(path: str, workdir: str) -> list[list[str]]:
    source = open_source(path, workdir, name=f"base {path}")
    out: list[list[str]] = []
    for descriptor in source.root_manifests:
        layers = _walk_layers(source.blobs, descriptor)
        out.extend(layers)
    if not out:
        raise UsageError(f"--base {path}: no image found in it")
    return out


def _walk_layers(store: BlobStore, descriptor: Descriptor) -> list[list[str]]:
    if not store.has(descriptor.digest):
        return []
    document = parse_json(store.read(descriptor, "base manifest"), "base manifest")
    if not isinstance(document, dict):
        return []
    if isinstance(document.get("manifests"), list):
        out = []
        for child in document["manifests"]:
            out.extend(_walk_layers(store, Descriptor.from_json(child)))
        return out
    if isinstance(document.get("layers"), list):
        return [[str(layer.get("digest")) for layer in document["layers"]]]
    return []


def _docker_manifest(run: _Run, root: Sequence[Descriptor], old_root: Sequence[Descriptor]) -> bytes | None:
    entries: list[dict[str, Any]] = []
    seen: dict[str, dict[str, Any]] = {}
    for old, new in zip(old_root, root, strict=True):
        found = run.docker_map.get(old.digest)
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
    if not entries:
        return None
    return canonical_json(entries)


def optimize(src: str, dst: str | None, options: Options | None = None) -> Report:
    """Optimize the image at ``src`` and write the result to ``dst`` (None only with ``dry_run``)."""
    options = options or Options()
    if dst is None and not options.dry_run:
        raise UsageError("an output path is needed unless dry_run is set")
    if options.output_format not in ("oci-archive", "oci-dir"):
        raise UsageError(f"unknown output format {options.output_format!r}: use oci-archive or oci-dir")
    if options.keep_layers < 0:
        raise UsageError("keep_layers cannot be negative")
    if dst is not None and os.path.abspath(src) == os.path.abspath(dst):
        raise UsageError("the output must not be the input: nothing the user had is overwritten")
    started = time.monotonic()
    report = Report(
        src, dst or "", options.dry_run, compressors=compressor_versions(), options=options.describe()
    )
    with tempfile.TemporaryDirectory(prefix="oci-optimizer-", dir=options.workdir) as workdir:
        source = open_source(src, workdir)
        report.warnings.extend(source.warnings)
        run = _Run(source, options, workdir, report)
        try:
            if options.base:
                run.base_layers = _base_layer_lists(options.base, workdir)
            old_root = source.root_manifests
            new_root = [run.process(d, "index.json") for d in old_root]
        finally:
            run.pool.close()
        for signature, subject in run.signature_subjects:
            if subject in run.changed:
                report.warnings.append(
                    f"{source.name}: {short(signature.digest)} signs or attests {short(subject)}, which was "
                    f"optimized: that signature no longer holds for the new image"
                )
        for old in old_root:
            ref = old.annotations.get("org.opencontainers.image.ref.name", "")
            if ref.endswith(SIGNATURE_TAG_SUFFIXES) and run.changed:
                report.warnings.append(
                    f"{source.name}: {ref} is a signature or attestation tag; signatures over optimized "
                    f"manifests no longer hold"
                )
        if new_root == old_root and source.kind != "docker-archive":
            index_bytes = source.index_bytes
        else:
            index = dict(source.index)
            index["manifests"] = [
                new.to_json() if new.digest != old.digest else raw
                for old, new, raw in zip(old_root, new_root, source.index.get("manifests") or [], strict=True)
            ]
            index.setdefault("schemaVersion", 2)
            index_bytes = canonical_json(index)
        report.index_digest_before = "sha256:" + hashlib.sha256(source.index_bytes).hexdigest()
        report.index_digest_after = "sha256:" + hashlib.sha256(index_bytes).hexdigest()
        docker_manifest = _docker_manifest(run, new_root, old_root)
        report.bytes_before = sum(i.size_before for i in report.images)
        report.bytes_after = sum(i.size_after for i in report.images)
        if not options.dry_run:
            assert dst is not None
            run.progress("writing output", 0, 1)
            writer = write_oci_dir if options.output_format == "oci-dir" else write_oci_archive
            writer(dst, index_bytes, docker_manifest, run.blobs.items)
    report.seconds = round(time.monotonic() - started, 3)
    return report
