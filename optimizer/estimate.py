"""What a dry run reports instead of writing: the estimated sizes of the layers a run would write.

No layer is compressed: a rewritten layer's size is its tar size at that layer's own compression ratio (the
image's for an uncompressed layer, ``TYPICAL_RATIO`` when no layer is compressed: a layer of shared libraries
and one of documentation compress very differently); the new top layer, a few small files and whiteouts, is
compressed for real (its headers and contents, zlib), as its ratio is nothing like the image's: 2,080
whiteouts over a protected base are 1 MiB of tar headers and 24 KiB of gzip.
"""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import Iterable

from . import mediatypes as mt
from .layer import LayerIndex
from .model import Content, Entry, EntryKind
from .plan import EMPTY_LAYER_PLAN, ImagePlan, LayerDecision, RunPlan, tar_size
from .pull import ImageBlobs
from .rebuild import layer_entries, lower_paths_of, top_layer_entries
from .report import LayerReport

__all__ = ["TYPICAL_RATIO", "estimate_sizes"]


# gzip/zstd over a typical filesystem tree: the ratio assumed for an input whose layers are not compressed.
TYPICAL_RATIO = 0.4
_SAMPLE = 64 << 10  # bytes of a file deflated to price it
_TAR_TYPES = {
    EntryKind.DIR: tarfile.DIRTYPE,
    EntryKind.SYMLINK: tarfile.SYMTYPE,
    EntryKind.HARDLINK: tarfile.LNKTYPE,
}


def estimate_sizes(run: RunPlan) -> None:
    """Fill in the reports of a plan that is not written (a dry run): the compressed size of each layer the
    run would write: a rewritten layer by what the contents taken out and put in cost deflated
    (``_rewritten_size``), the new top layer deflated for real (``_deflated_size``), a squashed one at the
    image's ratio."""
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
                decision.report.uncompressed_after = tar_size(entry for entry, _ in items)
                decision.report.size_after = _rewritten_size(plan, decision, index, items, ratio)
                decision.report.estimated = True
        extra = _unwritten_layer(plan, ratio)
        if extra is not None:
            plan.report.layers.append(extra)
        if extra is not None or any(d.fate in ("rewrite", "dropped") for d in plan.layers):
            plan.report.manifest_after = ""  # it would change; its digest is not known without writing
        plan.pull_after = _estimated_pull(plan, extra)


def _rewritten_size(
    plan: ImagePlan,
    decision: LayerDecision,
    index: LayerIndex,
    items: list[tuple[Entry, Content | None]],
    ratio: float,
) -> int:
    """A compressed layer loses what the contents taken out cost in it and gains what those put in cost, each
    deflated on its own (the demo's uncompressed PNG, 192 KiB of pixels, is 0.5 KiB of its 13.6 KiB layer: at
    the layer's average ratio its removal left 1.8 KiB where a run writes 5.3). An uncompressed layer, or an
    estimate that comes out below nothing, goes by the tar size at the layer's (or the image's) ratio."""
    tar = decision.report.uncompressed_after
    if not _compressed(decision):
        return round(tar * ratio)
    kept = {id(content) for _, content in items if content is not None}
    taken = sum(
        _deflated(item.content)
        for item in index.entries
        if item.content is not None and id(item.content) not in kept
    )
    known = {id(item.content) for item in index.entries if item.content is not None}
    put = sum(_deflated(content) for _, content in items if content is not None and id(content) not in known)
    size = decision.descriptor.size - taken + put
    return round(size) if size > 0 else round(tar * _compression_ratio(plan, [decision.number]))


def _deflated(content: Content) -> float:
    """What a file's bytes cost deflated (level 6), from its first 64 KiB."""
    head = content.read_head(_SAMPLE)
    return len(zlib.compress(head, 6)) * content.size / len(head) if head else 0.0


def _compressed(decision: LayerDecision) -> bool:
    return mt.layer_compression(decision.descriptor.media_type) not in (None, mt.Compression.NONE)


def _compression_ratio(plan: ImagePlan, numbers: Iterable[int] | None = None) -> float:
    """Compressed bytes per tar byte of the compressed layers among ``numbers`` (default: all of them)."""
    chosen = range(len(plan.layers)) if numbers is None else numbers
    compressed = [n for n in chosen if n < len(plan.indexes) and _compressed(plan.layers[n])]
    raw = sum(tar_size(item.entry for item in plan.indexes[n].entries) for n in compressed)
    packed = sum(plan.layers[n].descriptor.size for n in compressed)
    return packed / raw if raw and packed else TYPICAL_RATIO


def _deflated_size(items: Iterable[tuple[Entry, Content | None]]) -> int:
    """The size of these entries' tar, headers and contents, deflated (level 6, as gzip layers are)."""
    packer = zlib.compressobj(6)
    size = 0
    for entry, content in items:
        header = tarfile.TarInfo(entry.path)
        header.size = content.size if content is not None else 0
        header.mode, header.mtime = entry.mode, entry.mtime
        header.type = _TAR_TYPES.get(entry.kind, tarfile.REGTYPE)
        header.linkname = entry.link
        size += len(packer.compress(header.tobuf(tarfile.PAX_FORMAT)))
        if content is not None:
            data = content.read_bytes()
            size += len(packer.compress(data + b"\0" * (-len(data) % 512)))
    return size + len(packer.compress(b"\0" * 1024)) + len(packer.flush())


def _unwritten_layer(plan: ImagePlan, ratio: float) -> LayerReport | None:
    """The estimated report of the squashed or added layer a dry run does not write."""
    count = len(plan.layers)
    media_type = plan.layers[0].report.media_type if plan.layers else ""
    if plan.squash:
        assert plan.final_fs is not None
        merged = [node.entry for _, node in plan.final_fs.items() if node.layer >= plan.squash_base]
        size = round(tar_size(merged) * ratio)
        return LayerReport(count + 1, "", "", 0, size, "squashed", media_type, len(merged), estimated=True)
    if plan.changes.top_layer:
        assert plan.final_fs is not None
        items = top_layer_entries(plan.changes.added, plan.final_fs, 0, plan.changes.hidden)
        size = _deflated_size(items)
        files = len(plan.changes.added) + len(plan.changes.hidden)
        return LayerReport(count + 1, "", "", 0, size, "added", media_type, files, estimated=True)
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
