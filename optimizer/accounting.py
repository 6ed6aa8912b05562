"""Where the bytes went: the report's summary, from the layers a run kept, rewrote, dropped and added.

The compressed bytes a run saves have two causes that a headline must not mix: the files the passes shrank or
removed, and the codec of the layers written again (a ``docker save`` input has uncompressed layers: any layer
written again is gzip-compressed, which saves most of its bytes whatever the passes did). A layer written again
owes the passes the uncompressed bytes they removed at its new compression ratio (a squashed one: at the merged
layers' ratio), and the rest to recompression; in its own codec, never more than its whole change, the rest
being the encoder's (zlib -6 packed the test fleet's Node.js layer 7% smaller than the Go gzip that built it).
Layers emptied by the passes count wholly for them; layers only recompressed, wholly for recompression. What the passes added
(inject) is counted apart, with the reasons they gave, never as a regression.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .plan import ImagePlan
from .report import ImageReport, LayerReport, Report, Summary

__all__ = ["summarize"]


def _passes_share(layers: Sequence[LayerReport]) -> float:
    """The compressed bytes the passes saved in one image's layers (an estimate, see the module)."""
    saved = 0.0
    merged: list[LayerReport] = []
    squashed: list[LayerReport] = []  # one layer, or its parts (--layer-target-size): priced together
    for layer in layers:
        if layer.status == "dropped":
            saved += layer.size_before
        elif layer.status == "merged":
            merged.append(layer)
        elif layer.status == "rewritten" and layer.files_changed:
            saved += _rewrite_share(layer)
        elif layer.status == "squashed":
            squashed.append(layer)
    return saved + _squash_share(merged, squashed)


def _rewrite_share(layer: LayerReport) -> float:
    """What the passes saved in a layer written again: the uncompressed bytes they removed at the new layer's
    ratio; in the layer's own codec, never more than the layer's whole change (the rest is the encoder's)."""
    if not layer.uncompressed_after:
        return float(layer.size_before - layer.size_after)  # emptied by the passes
    ratio = layer.size_after / layer.uncompressed_after
    priced = max(0, layer.uncompressed_before - layer.uncompressed_after) * ratio
    if layer.media_type != layer.media_type_before:
        return priced
    return _at_most_the_change(priced, layer.size_before - layer.size_after)


def _at_most_the_change(priced: float, change: float) -> float:
    """The passes' share of a change in the same codec: what they removed, priced, up to the change itself;
    a layer that grew owes that to the passes (the codec is the same)."""
    return float(change) if change <= 0 else min(priced, float(change))


def _squash_share(merged: Sequence[LayerReport], squashed: Sequence[LayerReport]) -> float:
    """What the passes (and the merge's dropping of shadowed files) saved in a squashed layer (``squashed``:
    its parts): its whole change when every merged layer had its codec, else the bytes removed at the merged
    layers' own ratio (what those bytes cost before; the new layer's ratio misprices them when the removed
    bytes compressed well)."""
    if not merged:
        return 0.0
    size_before = sum(layer.size_before for layer in merged)
    uncompressed_before = sum(layer.uncompressed_before for layer in merged)
    removed = max(0, uncompressed_before - sum(part.uncompressed_after for part in squashed))
    priced = min(size_before, removed * size_before / uncompressed_before) if uncompressed_before else 0.0
    # No part at all (nothing above the base survived the merge): nothing was recompressed either.
    if all(layer.media_type_before == part.media_type for layer in merged for part in squashed):
        change = size_before - sum(part.size_after for part in squashed)
        return float(change) if not squashed else _at_most_the_change(priced, change)
    return priced


def _reasons(plans: Iterable[ImagePlan]) -> list[str]:
    """One line per pass: how many files it added, and its first reasons ("inject: 41 files: CA ...; ...")."""
    found: dict[str, list[str]] = {}
    for plan in plans:
        for pass_name, _path, reason in plan.changes.reasons:
            found.setdefault(pass_name, []).append(reason or "added")
    lines = []
    for pass_name, reasons in found.items():
        distinct = list(dict.fromkeys(reasons))
        shown = "; ".join(distinct[:3]) + ("; ..." if len(distinct) > 3 else "")
        lines.append(f"{pass_name}: {len(reasons)} file{'s' if len(reasons) > 1 else ''}: {shown}")
    return lines


def _distinct(images: Iterable[ImageReport], after: bool) -> int:
    """The compressed bytes of the distinct layers (a blob shared by images counts once). A dry run's layers
    written again have no digest: each counts, with its estimated size."""
    sizes: dict[str, int] = {}
    for index, image in enumerate(images):
        for layer in image.layers:
            digest = layer.digest_after if after else layer.digest_before
            size = layer.size_after if after else layer.size_before
            if digest:
                sizes[digest] = size
            elif after and layer.status != "dropped":
                sizes[f"unwritten:{index}:{layer.number}"] = size
    return sum(sizes.values())


def _needs(report: Report) -> list[str]:
    """What the added files are for, as the passes said it (``details["need"]`` of their "added" findings)."""
    needs: list[str] = []
    for image in report.images:
        for item in image.passes:
            for finding in item.findings:
                need = finding.details.get("need") if finding.action == "added" else None
                if isinstance(need, str) and need and need not in needs:
                    needs.append(need)
    return needs


def _folded_additions(plan: ImagePlan) -> int:
    """The compressed bytes of the files the passes added that went into a squashed layer (``--squash`` puts
    them there, not in a layer of their own): their tar bytes at the squashed layer's ratio. They count as
    added, and the passes' savings count gross of them, as without a squash."""
    parts = [layer for layer in plan.report.layers if layer.status == "squashed"]
    raw_after = sum(part.uncompressed_after for part in parts)
    if not raw_after or not plan.changes.added:
        return 0
    raw = sum(512 + (c.size + 511) // 512 * 512 if c else 512 for _, c in plan.changes.added.values())
    return round(raw * sum(part.size_after for part in parts) / raw_after)


def summarize(report: Report, plans: Iterable[ImagePlan]) -> Summary:
    """The report's summary (its images' layer reports and pull figures must be final)."""
    plans = list(plans)
    images = report.images
    passes = 0.0
    changed = 0
    added = 0
    for image in images:
        passes += _passes_share(image.layers)
        for layer in image.layers:
            if layer.status == "added":
                added += layer.size_after
            else:
                changed += layer.size_before - layer.size_after
    folded = sum(_folded_additions(plan) for plan in plans)
    return Summary(
        bytes_before=_distinct(images, after=False),
        bytes_after=_distinct(images, after=True),
        saved_by_passes=round(passes) + folded,
        saved_by_recompression=changed - round(passes),
        added=added + folded,
        added_because=_needs(report) or _reasons(plans),
        pull=report.pull,
    )
