"""What a dry run reports instead of writing: the estimated sizes of the layers a run would write.

No layer is compressed: a rewritten layer's size is its tar size at the image's own compression ratio
(``TYPICAL_RATIO`` for an input whose layers are not compressed); the few small files a pass adds are
compressed (zlib level 1), as their ratio is nothing like the image's.
"""

from __future__ import annotations

import zlib

from . import mediatypes as mt
from .plan import EMPTY_LAYER_PLAN, ImagePlan, RunPlan, tar_size
from .pull import ImageBlobs
from .rebuild import layer_entries, lower_paths_of
from .report import LayerReport

__all__ = ["TYPICAL_RATIO", "estimate_sizes"]


# gzip/zstd over a typical filesystem tree: the ratio assumed for an input whose layers are not compressed.
TYPICAL_RATIO = 0.4


def estimate_sizes(run: RunPlan) -> None:
    """Fill in the reports of a plan that is not written (a dry run): the compressed size of each layer the
    run would write, estimated from its tar size and the image's own compression ratio (``TYPICAL_RATIO`` for
    uncompressed inputs). No layer is compressed; the few small files a pass adds are (zlib level 1), as
    their ratio is nothing like the image's."""
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
                decision.report.size_after = round(decision.report.uncompressed_after * ratio)
                decision.report.estimated = True
        extra = _unwritten_layer(plan, ratio)
        if extra is not None:
            plan.report.layers.append(extra)
        if extra is not None or any(d.fate in ("rewrite", "dropped") for d in plan.layers):
            plan.report.manifest_after = ""  # it would change; its digest is not known without writing
        plan.pull_after = _estimated_pull(plan, extra)


def _compression_ratio(plan: ImagePlan) -> float:
    compressed = [
        (index, d)
        for index, d in zip(plan.indexes, plan.layers, strict=False)
        if mt.layer_compression(d.descriptor.media_type) not in (None, mt.Compression.NONE)
    ]
    raw = sum(tar_size(item.entry for item in index.entries) for index, _ in compressed)
    packed = sum(d.descriptor.size for _, d in compressed)
    return packed / raw if raw and packed else TYPICAL_RATIO


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
        added = list(plan.changes.added.values())
        size = sum(512 + (len(zlib.compress(c.read_bytes(), 1)) if c else 0) for _, c in added) + 1024
        size += 512 * len(plan.changes.hidden)  # whiteouts over protected layers: a header each
        files = len(added) + len(plan.changes.hidden)
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
